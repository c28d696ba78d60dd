//! Real WebRTC peers (webrtc-rs) on loopback, signalled through the real Synapse.

use std::sync::Arc;
use std::time::Duration;

use d2dfs::signalling::sync::OwnDevice;
use d2dfs::transfer::engine::{Engine, EngineConfig};
use d2dfs::transfer::lifecycle::Phase;
use d2dfs::transport::webrtc::{WebRtcConfig, WebRtcConnector};
use matrix_sdk::Client;

use crate::harness::users::{RoomSpec, TestUser, create_shared_room};

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
        EngineConfig::default(),
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
