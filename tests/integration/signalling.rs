//! The MSC2354 lifecycle between engines over a real Synapse (with an in-process stand-in for
//! the WebRTC connection, see `harness::fake_transport`).

use std::sync::Arc;
use std::time::Duration;

use d2dfs::signalling::events;
use d2dfs::signalling::sync::OwnDevice;
use d2dfs::transfer::engine::{Engine, EngineConfig, EngineError, TransferSnapshot};
use d2dfs::transfer::lifecycle::{Phase, Role};
use matrix_sdk::Client;
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomId, RoomId, TransactionId};
use serde_json::{Value, json};

use crate::harness::fake_transport::FakeConnector;
use crate::harness::users::{RoomSpec, TestUser, create_shared_room};

const WAIT: Duration = Duration::from_secs(30);

fn start_engine(client: &Client, config: EngineConfig) -> Engine {
    let me = OwnDevice {
        user_id: client.user_id().expect("logged in").to_owned(),
        device_id: client.device_id().expect("logged in").to_owned(),
    };
    Engine::start(client.clone(), me, Arc::new(FakeConnector), config)
}

/// Two users, a room they share, and an engine each.
struct Pair {
    room_id: OwnedRoomId,
    alice: Client,
    bob: Client,
    alice_engine: Engine,
    bob_engine: Engine,
    dir: tempfile::TempDir,
}

async fn pair(spec: RoomSpec<'_>) -> Pair {
    let alice = TestUser::register("alice").await.client().await;
    let bob = TestUser::register("bob").await.client().await;
    let room_id = create_shared_room(&alice, &[&bob], spec).await;
    let alice_engine = start_engine(&alice, EngineConfig::default());
    let bob_engine = start_engine(&bob, EngineConfig::default());
    alice_engine.wait_synced().await;
    bob_engine.wait_synced().await;
    Pair {
        room_id,
        alice,
        bob,
        alice_engine,
        bob_engine,
        dir: tempfile::tempdir().unwrap(),
    }
}

fn private_room() -> RoomSpec<'static> {
    RoomSpec {
        name: "signalling",
        encrypted: false,
        public: false,
    }
}

fn test_file(dir: &tempfile::TempDir, name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let path = dir.path().join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

async fn wait_phase(engine: &Engine, transfer_id: &str, phase: Phase) -> TransferSnapshot {
    engine
        .wait_for(WAIT, |t| t.transfer_id == transfer_id && t.phase == phase)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{transfer_id} never reached {phase}; now: {:?}",
                engine.transfer(transfer_id)
            )
        })
}

async fn wait_offer(engine: &Engine, transfer_id: &str) -> TransferSnapshot {
    wait_phase(engine, transfer_id, Phase::Offered).await
}

/// Sends `content` as `event_type` without matrix-sdk's help (no encryption, no checks).
async fn send_raw(client: &Client, room_id: &RoomId, event_type: &str, content: Value) {
    let request = send_message_event::v3::Request::new_raw(
        room_id.to_owned(),
        TransactionId::new(),
        event_type.into(),
        Raw::new(&content).unwrap().cast_unchecked(),
    );
    client.send(request).await.expect("send raw event");
}

/// The d2dfile events of a room, oldest first, as (type, content); `from` keeps one sender's.
async fn room_signalling(client: &Client, room_id: &RoomId) -> Vec<(String, Value)> {
    room_signalling_from(client, room_id, None).await
}

async fn room_signalling_from(
    client: &Client,
    room_id: &RoomId,
    from: Option<&str>,
) -> Vec<(String, Value)> {
    let room = client.get_room(room_id).unwrap();
    let mut options = matrix_sdk::room::MessagesOptions::backward();
    options.limit = 100u32.into();
    let messages = room.messages(options).await.unwrap();
    let mut events: Vec<(String, Value)> = messages
        .chunk
        .iter()
        .filter_map(|e| {
            let json: Value = serde_json::from_str(e.raw().json().get()).ok()?;
            let kind = json["type"].as_str()?.to_owned();
            if from.is_some_and(|sender| json["sender"] != sender) {
                return None;
            }
            (kind.starts_with("m.d2dfile.") || kind.starts_with("org.d2dfs."))
                .then(|| (kind, json["content"].clone()))
        })
        .collect();
    events.reverse();
    events
}

fn invite_content(transfer_id: &str, lifetime: u64) -> Value {
    json!({
        "transfer_id": transfer_id,
        "lifetime": lifetime,
        "filename": "injected.bin",
        "info": { "mimetype": "application/octet-stream", "size": 10 },
        "offer": { "type": "offer", "sdp": "v=0\r\n" },
        "version": 0,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn offer_answer_candidates_complete() {
    let p = pair(private_room()).await;
    let (path, data) = test_file(&p.dir, "report.pdf", 300_000);
    let id = p
        .alice_engine
        .offer_file(&p.room_id, &path, "report.pdf")
        .await
        .unwrap();

    let offer = wait_offer(&p.bob_engine, &id).await;
    assert_eq!(offer.role, Role::Receiving);
    assert_eq!(
        (offer.filename.as_str(), offer.size),
        ("report.pdf", 300_000)
    );
    assert_eq!(offer.mimetype, "application/pdf");
    assert_eq!(offer.sender, p.alice.user_id().unwrap().as_str());
    assert!(offer.sha256.is_some());

    let dest = p.dir.path().join("received.pdf");
    p.bob_engine.accept_to_file(&id, &dest).await.unwrap();
    wait_phase(&p.bob_engine, &id, Phase::Complete).await;
    let sent = wait_phase(&p.alice_engine, &id, Phase::Complete).await;
    assert_eq!(sent.bytes_moved, 300_000);
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // On the wire: exactly MSC2354 plus our select_answer, candidates batched with an
    // end-of-candidates marker — one candidates event per side.
    // The offerer's select_answer may still be in its outbox when the bytes are through.
    let deadline = tokio::time::Instant::now() + WAIT;
    let events = loop {
        let events = room_signalling(&p.alice, &p.room_id).await;
        if events.iter().any(|(kind, _)| kind == events::SELECT_ANSWER) {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no select_answer: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == events::INVITE).count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == events::ANSWER).count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == events::SELECT_ANSWER)
            .count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == events::CANDIDATES).count(),
        2,
        "{kinds:?}"
    );
    for (kind, content) in &events {
        assert_eq!(content["version"], 0, "{kind}");
        assert_eq!(content["transfer_id"], id.as_str(), "{kind}");
        if kind == events::CANDIDATES {
            let list = content["candidates"].as_array().unwrap();
            assert_eq!(
                list.last().unwrap()["candidate"],
                "",
                "no end-of-candidates marker"
            );
        }
    }
    assert!(
        kinds.iter().position(|k| *k == events::INVITE)
            < kinds.iter().position(|k| *k == events::ANSWER)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_rejects_with_cancel() {
    let p = pair(private_room()).await;
    let (path, _) = test_file(&p.dir, "a.txt", 10);
    let id = p
        .alice_engine
        .offer_file(&p.room_id, &path, "a.txt")
        .await
        .unwrap();
    wait_offer(&p.bob_engine, &id).await;
    p.bob_engine.cancel(&id, "not wanted").unwrap();
    let ended = wait_phase(&p.alice_engine, &id, Phase::Cancelled).await;
    assert!(ended.reason.unwrap().contains("rejected by"), "reason");
    assert_eq!(p.bob_engine.transfer(&id).unwrap().phase, Phase::Cancelled);
}

#[tokio::test(flavor = "multi_thread")]
async fn sender_cancels_and_the_offer_ends_on_both_sides() {
    let p = pair(private_room()).await;
    let (path, _) = test_file(&p.dir, "b.txt", 10);
    let id = p
        .alice_engine
        .offer_file(&p.room_id, &path, "b.txt")
        .await
        .unwrap();
    wait_offer(&p.bob_engine, &id).await;
    p.alice_engine.cancel(&id, "changed my mind").unwrap();
    let ended = wait_phase(&p.bob_engine, &id, Phase::Cancelled).await;
    assert!(ended.reason.unwrap().contains("changed my mind"));
    let dest = p.dir.path().join("never");
    assert!(matches!(
        p.bob_engine.accept_to_file(&id, &dest).await,
        Err(EngineError::NotAcceptable(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn unanswered_offers_expire() {
    let alice = TestUser::register("alice").await.client().await;
    let bob = TestUser::register("bob").await.client().await;
    let room_id = create_shared_room(&alice, &[&bob], private_room()).await;
    let short = EngineConfig {
        lifetime: Duration::from_secs(6),
        ..EngineConfig::default()
    };
    let alice_engine = start_engine(&alice, short);
    let bob_engine = start_engine(&bob, EngineConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = test_file(&dir, "c.txt", 10);
    let id = alice_engine
        .offer_file(&room_id, &path, "c.txt")
        .await
        .unwrap();
    wait_offer(&bob_engine, &id).await;
    wait_phase(&alice_engine, &id, Phase::Expired).await;
    // The receiver's offer vanishes from the listing and can't be answered.
    bob_engine
        .wait_for(WAIT, |_| {
            bob_engine.transfers().iter().all(|t| t.transfer_id != id)
        })
        .await;
    assert!(bob_engine.transfers().iter().all(|t| t.transfer_id != id));
    assert!(
        bob_engine
            .accept_to_file(&id, &dir.path().join("x"))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offers_older_than_their_lifetime_are_never_shown() {
    let alice = TestUser::register("alice").await.client().await;
    let bob = TestUser::register("bob").await.client().await;
    let room_id = create_shared_room(&alice, &[&bob], private_room()).await;
    send_raw(
        &alice,
        &room_id,
        events::INVITE,
        invite_content("old-offer", 1000),
    )
    .await;
    send_raw(
        &alice,
        &room_id,
        events::INVITE,
        invite_content("live-offer", 600_000),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bob_engine = start_engine(&bob, EngineConfig::default());
    bob_engine.wait_synced().await;
    wait_offer(&bob_engine, "live-offer").await;
    let ids: Vec<String> = bob_engine
        .transfers()
        .into_iter()
        .map(|t| t.transfer_id)
        .collect();
    assert_eq!(ids, ["live-offer"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_wrong_version_events_are_ignored() {
    let p = pair(private_room()).await;
    let mut wrong_version = invite_content("v1", 600_000);
    wrong_version["version"] = json!(1);
    let mut string_version = invite_content("v0s", 600_000);
    string_version["version"] = json!("0");
    let mut no_size = invite_content("nosize", 600_000);
    no_size["info"] = json!({ "mimetype": "a/b" });
    let mut huge = invite_content("huge", 600_000);
    huge["info"]["size"] = json!(9_007_199_254_740_991u64); // 2^53-1: above our 1 PiB cap
    let mut bad_type = invite_content("badtype", 600_000);
    bad_type["lifetime"] = json!("forever");
    for content in [
        wrong_version,
        string_version,
        no_size,
        huge,
        bad_type,
        json!({}),
    ] {
        send_raw(&p.alice, &p.room_id, events::INVITE, content).await;
    }
    send_raw(
        &p.alice,
        &p.room_id,
        events::CANCEL,
        json!({ "transfer_id": 5, "version": 0 }),
    )
    .await;
    // A good offer after the bad ones proves the loop went on.
    send_raw(
        &p.alice,
        &p.room_id,
        events::INVITE,
        invite_content("good", 600_000),
    )
    .await;
    wait_offer(&p.bob_engine, "good").await;
    let ids: Vec<String> = p
        .bob_engine
        .transfers()
        .into_iter()
        .map(|t| t.transfer_id)
        .collect();
    assert_eq!(ids, ["good"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_rooms_get_no_offers() {
    let p = pair(RoomSpec {
        name: "lobby",
        encrypted: false,
        public: true,
    })
    .await;
    let (path, _) = test_file(&p.dir, "d.txt", 10);
    assert!(matches!(
        p.alice_engine.offer_file(&p.room_id, &path, "d.txt").await,
        Err(EngineError::PublicRoom(_))
    ));
    // Offers someone else makes there are not shown either.
    send_raw(
        &p.alice,
        &p.room_id,
        events::INVITE,
        invite_content("public-offer", 600_000),
    )
    .await;
    // ... but a marker sent after it in a private room is, so the invite was processed.
    let private = create_shared_room(&p.alice, &[&p.bob], private_room()).await;
    send_raw(
        &p.alice,
        &private,
        events::INVITE,
        invite_content("marker", 600_000),
    )
    .await;
    wait_offer(&p.bob_engine, "marker").await;
    assert!(p.bob_engine.transfer("public-offer").is_none());

    // With --allow-public-rooms they are.
    let allowed = start_engine(
        &p.bob,
        EngineConfig {
            allow_public_rooms: true,
            ..EngineConfig::default()
        },
    );
    allowed.wait_synced().await;
    wait_offer(&allowed, "public-offer").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_receivers_answer_and_exactly_one_is_selected() {
    let alice = TestUser::register("alice").await.client().await;
    let bob = TestUser::register("bob").await;
    let bob_phone = bob.client().await;
    let bob_laptop = bob.client().await;
    let room_id = create_shared_room(&alice, &[&bob_phone], private_room()).await;
    let alice_engine = start_engine(&alice, EngineConfig::default());
    let phone = start_engine(&bob_phone, EngineConfig::default());
    let laptop = start_engine(&bob_laptop, EngineConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = test_file(&dir, "e.bin", 50_000);
    let id = alice_engine
        .offer_file(&room_id, &path, "e.bin")
        .await
        .unwrap();
    wait_offer(&phone, &id).await;
    wait_offer(&laptop, &id).await;
    let (phone_dest, laptop_dest) = (dir.path().join("phone"), dir.path().join("laptop"));
    phone.accept_to_file(&id, &phone_dest).await.unwrap();
    laptop.accept_to_file(&id, &laptop_dest).await.unwrap();

    wait_phase(&alice_engine, &id, Phase::Complete).await;
    let ended = |engine: &Engine| {
        let engine = engine.clone();
        let id = id.clone();
        async move {
            engine
                .wait_for(WAIT, |t| t.transfer_id == id && t.phase.is_final())
                .await
                .unwrap()
        }
    };
    let (phone_end, laptop_end) = (ended(&phone).await, ended(&laptop).await);
    let mut phases = [phone_end.phase, laptop_end.phase];
    phases.sort_by_key(|p| p.as_str());
    assert_eq!(
        phases,
        [Phase::Cancelled, Phase::Complete],
        "{phone_end:?} {laptop_end:?}"
    );
    let (winner, loser) = if phone_end.phase == Phase::Complete {
        (phone_dest, laptop_end)
    } else {
        (laptop_dest, phone_end)
    };
    assert_eq!(std::fs::read(winner).unwrap(), data);
    assert_eq!(loser.reason.as_deref(), Some("taken by another device"));
}

#[tokio::test(flavor = "multi_thread")]
async fn same_user_devices_transfer_to_each_other() {
    let carol = TestUser::register("carol").await;
    let desktop = carol.client().await;
    let laptop = carol.client().await;
    let other = TestUser::register("dan").await.client().await;
    // Encrypted: the room key must reach the account's other device, not only other users.
    let room_id = create_shared_room(
        &desktop,
        &[&other],
        RoomSpec {
            name: "devices",
            encrypted: true,
            public: false,
        },
    )
    .await;
    let desktop_engine = start_engine(&desktop, EngineConfig::default());
    let laptop_engine = start_engine(&laptop, EngineConfig::default());
    // Both devices' keys are on the homeserver, and the desktop has fetched the laptop's (a
    // device that has run a while knows the account's others), before the room key goes out.
    desktop_engine.wait_synced().await;
    laptop_engine.wait_synced().await;
    // Each side's offer or answer is encrypted for the devices it knows: both must know.
    for (device, other) in [(&desktop, &laptop), (&laptop, &desktop)] {
        let other_id = other.device_id().unwrap().to_owned();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let _ = device
                .encryption()
                .request_user_identity(&carol.user_id)
                .await;
            let known = device
                .encryption()
                .get_device(&carol.user_id, &other_id)
                .await;
            if matches!(known, Ok(Some(_))) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a device never saw the other"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = test_file(&dir, "f.bin", 20_000);
    let id = desktop_engine
        .offer_file(&room_id, &path, "f.bin")
        .await
        .unwrap();
    // The offering device never sees its own offer as a placeholder...
    wait_offer(&laptop_engine, &id).await;
    assert_eq!(desktop_engine.transfer(&id).unwrap().role, Role::Sending);
    // ... and the user's other device can take it.
    let dest = dir.path().join("copy");
    laptop_engine.accept_to_file(&id, &dest).await.unwrap();
    wait_phase(&laptop_engine, &id, Phase::Complete).await;
    assert_eq!(std::fs::read(dest).unwrap(), data);
}

/// The event types of a room as the homeserver stores them (no decryption).
async fn wire_types(client: &Client, room_id: &RoomId) -> Vec<String> {
    use matrix_sdk::ruma::api::client::message::get_message_events;
    let mut request = get_message_events::v3::Request::backward(room_id.to_owned());
    request.limit = 100u32.into();
    let response = client.send(request).await.unwrap();
    response
        .chunk
        .iter()
        .filter_map(|e| e.get_field::<String>("type").ok().flatten())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_rooms_carry_encrypted_signalling_only() {
    let p = pair(RoomSpec {
        name: "secret",
        encrypted: true,
        public: false,
    })
    .await;
    // A plaintext offer in an encrypted room could come from the homeserver itself: ignored.
    send_raw(
        &p.alice,
        &p.room_id,
        events::INVITE,
        invite_content("plaintext", 600_000),
    )
    .await;

    let (path, data) = test_file(&p.dir, "secret.bin", 40_000);
    let id = p
        .alice_engine
        .offer_file(&p.room_id, &path, "secret.bin")
        .await
        .unwrap();
    wait_offer(&p.bob_engine, &id).await;
    assert!(p.bob_engine.transfer("plaintext").is_none());
    let dest = p.dir.path().join("secret.out");
    p.bob_engine.accept_to_file(&id, &dest).await.unwrap();
    wait_phase(&p.bob_engine, &id, Phase::Complete).await;
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // What the homeserver saw: our events only as m.room.encrypted. (The offerer's
    // select_answer may still be on its way when the receiver completes: poll.)
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let types = wire_types(&p.bob, &p.room_id).await;
        let d2d: Vec<&String> = types
            .iter()
            .filter(|t| t.starts_with("m.d2dfile."))
            .collect();
        assert_eq!(
            d2d,
            [events::INVITE],
            "only the injected plaintext invite: {types:?}"
        );
        let encrypted = types.iter().filter(|t| *t == "m.room.encrypted").count();
        // invite, answer, two candidates events, select_answer
        if encrypted >= 5 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{types:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Gives `client`'s account a cross-signing identity (password UIA); it signs this device.
async fn bootstrap_cross_signing(client: &Client, user: &TestUser) {
    use matrix_sdk::ruma::api::client::uiaa;
    if let Err(error) = client.encryption().bootstrap_cross_signing(None).await {
        let info = error
            .as_uiaa_response()
            .expect("cross-signing asks for a password");
        let mut password = uiaa::Password::new(
            uiaa::UserIdentifier::from(&user.user_id),
            user.password.clone(),
        );
        password.session = info.session.clone();
        client
            .encryption()
            .bootstrap_cross_signing(Some(uiaa::AuthData::Password(password)))
            .await
            .expect("bootstrap cross-signing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verified_only_takes_offers_from_verified_devices_only() {
    let users = [
        TestUser::register("alice").await,
        TestUser::register("bob").await,
        TestUser::register("carol").await,
    ];
    let mut clients = Vec::new();
    for user in &users {
        clients.push(user.client().await);
    }
    let [alice, bob, carol] = [&clients[0], &clients[1], &clients[2]];
    let room_id = create_shared_room(
        alice,
        &[bob, carol],
        RoomSpec {
            name: "verified",
            encrypted: true,
            public: false,
        },
    )
    .await;
    let alice_engine = start_engine(alice, EngineConfig::default());
    let bob_engine = start_engine(
        bob,
        EngineConfig {
            verified_only: true,
            ..EngineConfig::default()
        },
    );
    let carol_engine = start_engine(carol, EngineConfig::default());
    for engine in [&alice_engine, &bob_engine, &carol_engine] {
        engine.wait_synced().await;
    }
    // Everyone is cross-signed by their owner; bob verifies alice, not carol.
    for (client, user) in clients.iter().zip(&users) {
        bootstrap_cross_signing(client, user).await;
    }
    let alice_identity = bob
        .encryption()
        .request_user_identity(&users[0].user_id)
        .await
        .unwrap()
        .expect("alice's identity");
    alice_identity.verify().await.expect("bob verifies alice");
    bob.encryption()
        .request_user_identity(&users[2].user_id)
        .await
        .unwrap()
        .expect("carol's identity (cross-signed, not verified)");

    let dir = tempfile::tempdir().unwrap();
    let (carol_path, _) = test_file(&dir, "carol.bin", 1_000);
    let (alice_path, data) = test_file(&dir, "alice.bin", 20_000);
    let from_carol = carol_engine
        .offer_file(&room_id, &carol_path, "carol.bin")
        .await
        .unwrap();
    // Carol's offer is in the timeline before alice's: once bob shows alice's, he has judged
    // carol's.
    wait_offer(&alice_engine, &from_carol).await;
    let from_alice = alice_engine
        .offer_file(&room_id, &alice_path, "alice.bin")
        .await
        .unwrap();
    wait_offer(&bob_engine, &from_alice).await;
    assert!(
        bob_engine.transfer(&from_carol).is_none(),
        "an unverified device's offer was shown"
    );
    let dest = dir.path().join("alice.out");
    bob_engine.accept_to_file(&from_alice, &dest).await.unwrap();
    wait_phase(&bob_engine, &from_alice, Phase::Complete).await;
    assert_eq!(std::fs::read(dest).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_receiver_still_sees_the_offer() {
    use d2dfs::profile::Profile;
    use d2dfs::signalling::session::{self, LoginRequest};

    let alice = TestUser::register("alice").await.client().await;
    let bob = TestUser::register("bob").await;
    let bob_setup = bob.client().await;
    let room_id = create_shared_room(&alice, &[&bob_setup], private_room()).await;
    let alice_engine = start_engine(&alice, EngineConfig::default());

    // Bob's d2dfs device, with a persistent store as the real program has.
    let data = tempfile::tempdir().unwrap();
    let profile = Profile::resolve(None, Some(data.path())).unwrap();
    let homeserver = crate::harness::homeserver::homeserver().url.clone();
    let request = LoginRequest {
        user: bob.user_id.as_str(),
        homeserver: Some(&homeserver),
        password: &bob.password,
        device_name: "restart test",
    };
    let first = session::login(&profile, &request).await.unwrap();
    let first_engine = start_engine(&first.client, EngineConfig::default());
    first_engine.wait_synced().await;

    let dir = tempfile::tempdir().unwrap();
    let (path, contents) = test_file(&dir, "g.bin", 30_000);
    let id = alice_engine
        .offer_file(&room_id, &path, "g.bin")
        .await
        .unwrap();
    wait_offer(&first_engine, &id).await;

    // The receiving process goes away after having seen (and synced past) the offer.
    first_engine.shutdown().await;
    drop(first_engine);
    drop(first);

    let second = session::restore(&profile).await.unwrap();
    let second_engine = start_engine(&second.client, EngineConfig::default());
    second_engine.wait_synced().await;
    wait_offer(&second_engine, &id).await;
    let dest = dir.path().join("g.out");
    second_engine.accept_to_file(&id, &dest).await.unwrap();
    wait_phase(&second_engine, &id, Phase::Complete).await;
    assert_eq!(std::fs::read(dest).unwrap(), contents);
}

#[tokio::test(flavor = "multi_thread")]
async fn default_rate_limits_slow_signalling_but_do_not_stall_it() {
    let url = &crate::harness::homeserver::strict_homeserver().url;
    let alice = TestUser::register_on(url, "alice").await.client().await;
    let bob = TestUser::register_on(url, "bob").await.client().await;
    let room_id = create_shared_room(&alice, &[&bob], private_room()).await;
    let alice_engine = start_engine(&alice, EngineConfig::default());
    let bob_engine = start_engine(&bob, EngineConfig::default());
    let dir = tempfile::tempdir().unwrap();
    // Four offers: the offerer sends 12 events (invite, candidates, select_answer each), past
    // the burst of 10 that a default Synapse allows.
    let mut offers = Vec::new();
    for n in 0..4 {
        let (path, data) = test_file(&dir, &format!("rl{n}.bin"), 5_000 + n);
        let id = alice_engine
            .offer_file(&room_id, &path, &format!("rl{n}.bin"))
            .await
            .unwrap();
        offers.push((id, data));
    }
    for (n, (id, _)) in offers.iter().enumerate() {
        wait_offer(&bob_engine, id).await;
        bob_engine
            .accept_to_file(id, &dir.path().join(format!("out{n}")))
            .await
            .unwrap();
    }
    for (n, (id, data)) in offers.iter().enumerate() {
        bob_engine
            .wait_for(Duration::from_secs(120), |t| {
                &t.transfer_id == id && t.phase == Phase::Complete
            })
            .await
            .unwrap_or_else(|| panic!("{id} stalled: {:?}", bob_engine.transfer(id)));
        assert_eq!(
            &std::fs::read(dir.path().join(format!("out{n}"))).unwrap(),
            data
        );
    }
    // The offerer's events past the burst (select_answer, here) met 429s; they were not lost,
    // only delayed: all twelve arrive.
    let alice_id = alice.user_id().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let sent = room_signalling_from(&alice, &room_id, Some(&alice_id))
            .await
            .len();
        if sent == 12 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {sent} of 12 events arrived"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn turn_servers_come_from_the_homeserver() {
    use d2dfs::signalling::turn::TurnCache;
    // Synapse without TURN answers `{}`: host candidates only, not an error.
    let plain = TestUser::register("erin").await.client().await;
    assert!(TurnCache::new(plain).get().await.is_empty());

    let url = &crate::harness::homeserver::strict_homeserver().url;
    let client = TestUser::register_on(url, "frank").await.client().await;
    let servers = TurnCache::new(client.clone()).get().await;
    assert_eq!(servers.uris.len(), 2, "{servers:?}");
    assert!(
        servers.uris.iter().any(|u| u.ends_with("transport=tcp")),
        "TCP relay offered"
    );
    // Synapse's shared-secret scheme: "EXPIRY:@user:server" and an HMAC as the password.
    let user = client.user_id().unwrap().as_str();
    assert!(
        servers.username.ends_with(&format!(":{user}")),
        "{}",
        servers.username
    );
    assert!(!servers.credential.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offer_can_be_made_again_for_further_devices() {
    let p = pair(private_room()).await;
    let (path, data) = test_file(&p.dir, "again.bin", 10_000);
    let first = p
        .alice_engine
        .offer_file(&p.room_id, &path, "again.bin")
        .await
        .unwrap();
    wait_offer(&p.bob_engine, &first).await;
    p.bob_engine
        .accept_to_file(&first, &p.dir.path().join("one"))
        .await
        .unwrap();
    wait_phase(&p.alice_engine, &first, Phase::Complete).await;

    let second = p.alice_engine.reoffer(&first).await.unwrap();
    assert_ne!(first, second);
    let offer = wait_offer(&p.bob_engine, &second).await;
    assert_eq!((offer.filename.as_str(), offer.size), ("again.bin", 10_000));
    p.bob_engine
        .accept_to_file(&second, &p.dir.path().join("two"))
        .await
        .unwrap();
    wait_phase(&p.bob_engine, &second, Phase::Complete).await;
    assert_eq!(std::fs::read(p.dir.path().join("two")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_survives_a_homeserver_restart() {
    let server = crate::harness::homeserver::OwnHomeserver::start("synapse-restart");
    let alice = TestUser::register_on(&server.url, "alice")
        .await
        .client()
        .await;
    let bob = TestUser::register_on(&server.url, "bob")
        .await
        .client()
        .await;
    let room_id = create_shared_room(&alice, &[&bob], private_room()).await;
    let alice_engine = start_engine(&alice, EngineConfig::default());
    let bob_engine = start_engine(&bob, EngineConfig::default());
    alice_engine.wait_synced().await;
    bob_engine.wait_synced().await;

    // The homeserver goes away long enough for syncs to fail and back off, then returns.
    server.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();

    let dir = tempfile::tempdir().unwrap();
    let (path, data) = test_file(&dir, "after-restart.bin", 8_000);
    let id = alice_engine
        .offer_file(&room_id, &path, "after-restart.bin")
        .await
        .unwrap();
    wait_offer(&bob_engine, &id).await;
    let dest = dir.path().join("out");
    bob_engine.accept_to_file(&id, &dest).await.unwrap();
    bob_engine
        .wait_for(Duration::from_secs(90), |t| {
            t.transfer_id == id && t.phase == Phase::Complete
        })
        .await
        .unwrap_or_else(|| panic!("no completion: {:?}", bob_engine.transfer(&id)));
    assert_eq!(std::fs::read(dest).unwrap(), data);
}
