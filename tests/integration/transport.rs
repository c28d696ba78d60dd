//! Real WebRTC peers (webrtc-rs) on loopback, signalled through the real Synapse.

use std::sync::Arc;
use std::time::Duration;

use d2dfs::signalling::sync::OwnDevice;
use d2dfs::transfer::engine::{Engine, EngineConfig};
use d2dfs::transfer::lifecycle::Phase;
use d2dfs::transport::webrtc::{WebRtcConfig, WebRtcConnector};
use matrix_sdk::Client;

use crate::harness::users::{RoomSpec, TestUser, create_shared_room};

/// Extra connections the engines here take for range mode (the CLI's default is none).
const LANES: u8 = 7;

fn loopback_engine(client: &Client) -> Engine {
    let me = OwnDevice {
        user_id: client.user_id().expect("logged in").to_owned(),
        device_id: client.device_id().expect("logged in").to_owned(),
    };
    let connector = WebRtcConnector::new(WebRtcConfig {
        udp_addrs: vec!["127.0.0.1:0".to_owned()],
        ..WebRtcConfig::default()
    });
    Engine::start(
        client.clone(),
        me,
        Arc::new(connector),
        EngineConfig {
            lanes: LANES,
            ..EngineConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_mode_between_two_webrtc_peers() {
    let alice = TestUser::register("alice").await.client().await;
    let bob = TestUser::register("bob").await.client().await;
    let room_id = create_shared_room(
        &alice,
        &[&bob],
        RoomSpec {
            name: "webrtc",
            encrypted: true,
            public: false,
        },
    )
    .await;
    let alice_engine = loopback_engine(&alice);
    let bob_engine = loopback_engine(&bob);

    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let path = dir.path().join("payload.bin");
    std::fs::write(&path, &data).unwrap();
    let id = alice_engine
        .offer_file(&room_id, &path, "payload.bin")
        .await
        .unwrap();

    let wait = Duration::from_secs(60);
    bob_engine
        .wait_for(wait, |t| t.transfer_id == id && t.phase == Phase::Offered)
        .await
        .expect("offer seen");
    let dest = dir.path().join("received.bin");
    bob_engine.accept_to_file(&id, &dest).await.unwrap();
    let done = bob_engine
        .wait_for(wait, |t| t.transfer_id == id && t.phase.is_final())
        .await
        .expect("transfer ended");
    assert_eq!(done.phase, Phase::Complete, "{done:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let sent = alice_engine
        .wait_for(wait, |t| t.transfer_id == id && t.phase.is_final())
        .await
        .expect("sender ended");
    assert_eq!(sent.phase, Phase::Complete, "{sent:?}");
}

fn payload(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// A private, unencrypted room (the plain peer does no E2EE) shared by `a` and `b`.
async fn plain_room(a: &Client, b: &Client) -> matrix_sdk::ruma::OwnedRoomId {
    create_shared_room(
        a,
        &[b],
        RoomSpec {
            name: "interop",
            encrypted: false,
            public: false,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_mode_to_a_plain_aiortc_peer() {
    let alice = TestUser::register("alice").await.client().await;
    let plain = TestUser::register("plain").await;
    let room_id = plain_room(&alice, &plain.client().await).await;
    let alice_engine = loopback_engine(&alice);
    alice_engine.wait_synced().await;

    let dir = tempfile::tempdir().unwrap();
    let data = payload(2_000_000);
    let path = dir.path().join("to-aiortc.bin");
    std::fs::write(&path, &data).unwrap();
    let id = alice_engine
        .offer_file(&room_id, &path, "to-aiortc.bin")
        .await
        .unwrap();

    let out = dir.path().join("aiortc-got.bin");
    crate::harness::aiortc::run_peer(&plain, room_id.as_str(), "recv", &out).await;
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let sent = alice_engine
        .wait_for(Duration::from_secs(60), |t| {
            t.transfer_id == id && t.phase.is_final()
        })
        .await
        .expect("sender ended");
    assert_eq!(sent.phase, Phase::Complete, "{sent:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_mode_from_a_plain_aiortc_peer() {
    let bob = TestUser::register("bob").await.client().await;
    let plain = TestUser::register("plain").await;
    let room_id = plain_room(&bob, &plain.client().await).await;
    let bob_engine = loopback_engine(&bob);
    bob_engine.wait_synced().await;

    let dir = tempfile::tempdir().unwrap();
    let data = payload(2_000_000);
    let path = dir.path().join("from-aiortc.bin");
    std::fs::write(&path, &data).unwrap();
    let sender = {
        let plain = plain.clone();
        let room = room_id.to_string();
        let path = path.clone();
        tokio::spawn(
            async move { crate::harness::aiortc::run_peer(&plain, &room, "send", &path).await },
        )
    };
    let offer = bob_engine
        .wait_for(Duration::from_secs(60), |t| {
            t.sender == plain.user_id.as_str() && t.phase == Phase::Offered
        })
        .await
        .expect("the plain peer's offer");
    assert_eq!(
        (offer.filename.as_str(), offer.size),
        ("from-aiortc.bin", 2_000_000)
    );
    assert!(
        offer.sha256.is_none() && !offer.range,
        "a plain peer advertises no extension"
    );
    let dest = dir.path().join("received.bin");
    bob_engine
        .accept_to_file(&offer.transfer_id, &dest)
        .await
        .unwrap();
    let done = bob_engine
        .wait_for(Duration::from_secs(90), |t| {
            t.transfer_id == offer.transfer_id && t.phase.is_final()
        })
        .await
        .expect("transfer ended");
    assert_eq!(done.phase, Phase::Complete, "{done:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    sender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_only_through_a_real_turn_server() {
    let turn = crate::harness::turn::Coturn::start();
    let server = crate::harness::homeserver::OwnHomeserver::start_with_config(
        "synapse-turn",
        &turn.synapse_config(),
    );
    let alice = TestUser::register_on(&server.url, "alice")
        .await
        .client()
        .await;
    let bob = TestUser::register_on(&server.url, "bob")
        .await
        .client()
        .await;
    let room_id = plain_room(&alice, &bob).await;
    let relay_engine = |client: &Client| {
        let me = OwnDevice {
            user_id: client.user_id().unwrap().to_owned(),
            device_id: client.device_id().unwrap().to_owned(),
        };
        let connector = WebRtcConnector::new(WebRtcConfig {
            udp_addrs: vec!["127.0.0.1:0".to_owned()],
            relay_only: true,
            gathering_wait: Duration::from_secs(2),
            ..WebRtcConfig::default()
        });
        Engine::start(
            client.clone(),
            me,
            Arc::new(connector),
            EngineConfig::default(),
        )
    };
    let alice_engine = relay_engine(&alice);
    let bob_engine = relay_engine(&bob);
    bob_engine.wait_synced().await;

    let dir = tempfile::tempdir().unwrap();
    let data = payload(1_000_000);
    let path = dir.path().join("relayed.bin");
    std::fs::write(&path, &data).unwrap();
    let id = alice_engine
        .offer_file(&room_id, &path, "relayed.bin")
        .await
        .unwrap();
    bob_engine
        .wait_for(Duration::from_secs(60), |t| {
            t.transfer_id == id && t.phase == Phase::Offered
        })
        .await
        .expect("offer seen");
    let dest = dir.path().join("out.bin");
    bob_engine.accept_to_file(&id, &dest).await.unwrap();
    let done = bob_engine
        .wait_for(Duration::from_secs(90), |t| {
            t.transfer_id == id && t.phase.is_final()
        })
        .await
        .expect("transfer ended");
    assert_eq!(
        done.phase,
        Phase::Complete,
        "{done:?}\ncoturn log:\n{}",
        turn.log()
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    // Relay-only ICE can only have used TURN allocations; coturn saw them.
    let log = turn.log();
    assert!(
        log.contains("ALLOCATE"),
        "no allocation in coturn's log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn range_mode_between_two_webrtc_peers() {
    use d2dfs::transfer::range::RangeError;

    let alice = TestUser::register("alice").await.client().await;
    let bob = TestUser::register("bob").await.client().await;
    let room_id = plain_room(&alice, &bob).await;
    let alice_engine = loopback_engine(&alice);
    let bob_engine = loopback_engine(&bob);

    let dir = tempfile::tempdir().unwrap();
    let data = payload(5_000_000);
    let path = dir.path().join("ranges.bin");
    std::fs::write(&path, &data).unwrap();
    let id = alice_engine
        .offer_file(&room_id, &path, "ranges.bin")
        .await
        .unwrap();
    let offer = bob_engine
        .wait_for(Duration::from_secs(60), |t| {
            t.transfer_id == id && t.phase == Phase::Offered
        })
        .await
        .expect("offer seen");
    assert!(offer.offer_range, "d2dfs offers advertise range mode");
    let source = bob_engine.accept_ranges(&id).await.unwrap();
    // The transfer's connection comes up with the first fetch; its lanes follow, and the
    // fetches below go out over all of them.
    assert_eq!(&source.fetch(0, 1).await.unwrap()[..], &data[..1]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bob_engine.transfer(&id).unwrap().lanes_open < LANES {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            bob_engine.transfer(&id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Scattered, overlapping and concurrent reads, including the very end of the file.
    let ranges: Vec<(u64, u64)> = vec![
        (3_900_000, 1 << 20),
        (0, 1),
        (123_457, 65_520),
        (123_457, 65_521),
        (4_999_999, 1),
        (2_500_000, 777_777),
        (0, 1 << 20),
    ];
    let fetches = ranges.iter().map(|&(offset, length)| {
        let source = source.clone();
        async move { (offset, length, source.fetch(offset, length).await) }
    });
    for (offset, length, got) in futures_join(fetches).await {
        let got = got.unwrap_or_else(|e| panic!("{offset}+{length}: {e}"));
        assert_eq!(&got[..], &data[offset as usize..(offset + length) as usize]);
    }
    // Outside the file: refused, and the connection goes on.
    assert!(matches!(
        source.fetch(4_999_999, 2).await,
        Err(RangeError::Refused(_))
    ));
    assert!(matches!(
        source.fetch(5_000_000, 1).await,
        Err(RangeError::Refused(_))
    ));
    assert!(matches!(
        source.fetch(u64::MAX, 1).await,
        Err(RangeError::Overflow)
    ));
    assert!(matches!(
        source.fetch(0, 1 << 40).await,
        Err(RangeError::TooLarge(_))
    ));
    assert_eq!(&source.fetch(10, 10).await.unwrap()[..], &data[10..20]);

    let snapshot = bob_engine.transfer(&id).unwrap();
    assert!(snapshot.range, "both sides speak range mode");
    assert_eq!(snapshot.lanes_open, LANES, "{snapshot:?}");
    drop(source);
    let done = bob_engine
        .wait_for(Duration::from_secs(60), |t| {
            t.transfer_id == id && t.phase.is_final()
        })
        .await
        .expect("receiver ended");
    assert_eq!(done.phase, Phase::Complete, "{done:?}");
    let sent = alice_engine
        .wait_for(Duration::from_secs(60), |t| {
            t.transfer_id == id && t.phase.is_final()
        })
        .await
        .expect("sender ended");
    assert_eq!(sent.phase, Phase::Complete, "{sent:?}");
    // Only what was asked for moved: far less than the file.
    let asked: u64 = ranges.iter().map(|r| r.1).sum::<u64>() + 10 + 1;
    assert_eq!(sent.bytes_moved, asked);
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_stops_stops_the_sender() {
    use bytes::Bytes;
    use d2dfs::transport::webrtc::DirectPair;
    use std::sync::atomic::{AtomicU64, Ordering};

    let connector = WebRtcConnector::new(WebRtcConfig {
        udp_addrs: vec!["127.0.0.1:0".to_owned()],
        ..WebRtcConfig::default()
    });
    let pair = DirectPair::connect(&connector, &connector).await.unwrap();
    let (mut sender, mut receiver) = (pair.offerer, pair.answerer);
    const TOTAL: u64 = 64 << 20;
    const MESSAGE: usize = 16 * 1024;
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let block = Bytes::from(vec![7u8; MESSAGE]);
            while sent.load(Ordering::Relaxed) < TOTAL {
                sender.send(block.clone()).await.unwrap();
                sent.fetch_add(MESSAGE as u64, Ordering::Relaxed);
            }
            sender.close().await.unwrap();
        })
    };
    // Nobody reads: the sender must come to a halt, far short of the whole file.
    let mut last = u64::MAX;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sender never stopped ({now} bytes)"
        );
        last = now;
    }
    assert!(
        last < 16 << 20,
        "{last} bytes went out to a reader that read nothing"
    );
    // The reader comes back: everything arrives, in full.
    let mut received = 0u64;
    while let Some(message) = receiver.recv().await {
        received += message.unwrap().len() as u64;
    }
    writer.await.unwrap();
    assert_eq!(received, TOTAL);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_that_goes_away_ends_the_transfer_with_a_reason() {
    use d2dfs::transfer::range::RangeError;

    let alice = TestUser::register("alice").await.client().await;
    let bob = TestUser::register("bob").await.client().await;
    let room_id = plain_room(&alice, &bob).await;
    let alice_engine = loopback_engine(&alice);
    let bob_engine = loopback_engine(&bob);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leaving.bin");
    std::fs::write(&path, payload(1_000_000)).unwrap();
    let id = alice_engine
        .offer_file(&room_id, &path, "leaving.bin")
        .await
        .unwrap();
    bob_engine
        .wait_for(Duration::from_secs(60), |t| {
            t.transfer_id == id && t.phase == Phase::Offered
        })
        .await
        .expect("offer seen");
    let source = bob_engine.accept_ranges(&id).await.unwrap();
    source.fetch(0, 1000).await.unwrap();

    // The sending device shuts down (unmount, Ctrl-C): it cancels and closes its peer.
    alice_engine.shutdown().await;
    let ended = bob_engine
        .wait_for(Duration::from_secs(60), |t| {
            t.transfer_id == id && t.phase.is_final()
        })
        .await
        .expect("the receiver learns the transfer ended");
    assert_ne!(ended.phase, Phase::Complete);
    assert!(ended.reason.is_some(), "{ended:?}");
    assert!(matches!(
        source.fetch(1000, 1000).await,
        Err(RangeError::Disconnected | RangeError::Refused(_))
    ));
}
