//! Faults injected for real: devices in network namespaces that cannot reach each other,
//! links cut under a running copy, a sending process stopped mid-copy.

use crate::harness::cli::CliProfile;
use crate::harness::homeserver::OwnHomeserver;
use crate::harness::mount::{
    Shell, TestMount, eventually, getfattr, must, random_file, sh, sha256,
};
use crate::harness::pair::{pair, private};
use crate::harness::turn::Coturn;
use crate::harness::users::{RoomSpec, TestUser, create_shared_room};
use crate::netns::Split;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Alice's and bob's mounts on two sites that meet only through the TURN relay, sharing a
/// room. (The fields hold what must live as long as the mounts.)
struct Sites {
    split: Split,
    room_id: String,
    alice: TestMount,
    bob: TestMount,
    coturn: Coturn,
    _server: OwnHomeserver,
    scratch: tempfile::TempDir,
}

impl Sites {
    async fn up(name: &str) -> Self {
        let mut split = Split::new();
        let coturn = Coturn::start_on(&split.gateways[0].to_string());
        let (url, listener) = split.homeserver_address().await;
        let config = format!("{}public_baseurl: \"{url}/\"\n", coturn.synapse_config());
        let server = OwnHomeserver::start_with_config(name, &config);
        split.relay_homeserver(listener, &server.url);
        let alice = TestUser::register_on(&server.url, "natalice").await;
        let bob = TestUser::register_on(&server.url, "natbob").await;
        let room_id = create_shared_room(
            &alice.client().await,
            &[&bob.client().await],
            // Unencrypted: what is under test is the network, and a device that logged in a
            // second ago may not have the room key yet (see the encryption tests).
            RoomSpec {
                name,
                encrypted: false,
                public: false,
            },
        )
        .await
        .to_string();
        let (alice, bob) = tokio::join!(
            TestMount::start_with(CliProfile::in_netns(&split.sites[0], &url), &alice, &[]),
            TestMount::start_with(CliProfile::in_netns(&split.sites[1], &url), &bob, &[]),
        );
        alice.wait_for(&alice.room(&room_id)).await;
        bob.wait_for(&bob.room(&room_id)).await;
        Self {
            split,
            room_id,
            alice,
            bob,
            coturn,
            _server: server,
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    /// A random file of `size` offered from alice's mount; (source, bob's placeholder).
    async fn offer(&self, name: &str, size: &str) -> (PathBuf, PathBuf) {
        let source = random_file(self.scratch.path(), name, size).await;
        let room = self.alice.room(&self.room_id);
        must(sh(&format!("cp '{}' '{}/'", source.display(), room.display())).await);
        let placeholder = self.bob.room(&self.room_id).join(name);
        let shown = eventually(Duration::from_secs(60), || placeholder.exists()).await;
        assert!(shown, "the offer never reached bob\n{}", self.logs());
        (source, placeholder)
    }

    fn logs(&self) -> String {
        format!(
            "bob's log:\n{}\nalice's log:\n{}\ncoturn:\n{}",
            self.bob.log(),
            self.alice.log(),
            self.coturn.log()
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_that_cannot_reach_each_other_meet_through_the_turn_relay() {
    let sites = Sites::up("nat-split").await;
    let (source, placeholder) = sites.offer("across.bin", "8M").await;
    let copy = sites.scratch.path().join("copy.bin");
    let copied = sh(&format!(
        "cp '{}' '{}'",
        placeholder.display(),
        copy.display()
    ))
    .await;
    assert!(copied.success, "{}\n{}", copied.stderr, sites.logs());
    assert_eq!(sha256(&copy).await, sha256(&source).await);
    assert_eq!(
        getfattr(&placeholder, "path").await.as_deref(),
        Some("relay"),
        "the only way between the sites is the relay"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lossy_relayed_path_still_gives_the_right_bytes() {
    // Once data moves, 3% of UDP is lost on entering each site, so about 6% between the
    // devices through the relay: SCTP retransmits. (webrtc-rs once sent relayed packets only
    // on its 200 ms timer, and a transfer over a lossy relay crawled until it timed out.)
    // The loss starts after the handshakes: webrtc-rs's DTLS handshake over a lossy relay
    // sometimes gives up, and the connection is then made again (see the next test), which
    // is not what this test is about.
    let sites = Sites::up("lossy").await;
    let (source, placeholder) = sites.offer("lossy.bin", "12M").await;
    let copy = sites.scratch.path().join("copy.bin");
    let copying = copy_in_background(&placeholder, &copy, || sites.logs()).await;
    sites.split.lose_udp(3);
    let copied = copying.await.unwrap();
    assert!(copied.success, "{}\n{}", copied.stderr, sites.logs());
    assert_eq!(sha256(&copy).await, sha256(&source).await);
    assert_eq!(
        getfattr(&placeholder, "path").await.as_deref(),
        Some("relay")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_connection_that_cannot_be_made_is_made_again() {
    // Every UDP datagram is dropped from before bob opens the placeholder until 40 s later:
    // the transfer's first connection never opens and fails; the receiving device then
    // offers new ones (org.d2dfs.negotiate), and one opens once UDP passes again.
    let sites = Sites::up("first-fails").await;
    let (source, placeholder) = sites.offer("first.bin", "8M").await;
    sites.split.lose_udp(100);
    let copy = sites.scratch.path().join("copy.bin");
    let script = format!("cp '{}' '{}'", placeholder.display(), copy.display());
    let copying = tokio::spawn(async move { sh(&script).await });
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(
        !copying.is_finished(),
        "the copy ended with no way through\n{}",
        sites.logs()
    );
    sites.split.stop_losing_udp();
    let copied = copying.await.unwrap();
    assert!(copied.success, "{}\n{}", copied.stderr, sites.logs());
    assert_eq!(sha256(&copy).await, sha256(&source).await);
    let reconnects = reconnects(&placeholder).await;
    assert!(
        reconnects >= 1,
        "reconnects: {reconnects}\n{}",
        sites.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_cut_mid_copy_is_a_pause_and_the_bytes_come_out_right() {
    // Short of ICE's failure timeout (about 30 s): the connection itself survives.
    let (sites, placeholder) = copy_across_a_cut("link-cut", Duration::from_secs(10)).await;
    assert_eq!(reconnects(&placeholder).await, 0, "{}", sites.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_down_past_ice_failure_is_reconnected_and_the_copy_goes_on() {
    // Past ICE's failure timeout: the connection dies and is made again for the same
    // transfer (org.d2dfs.negotiate) once the link is back.
    let (sites, placeholder) = copy_across_a_cut("link-down", Duration::from_secs(40)).await;
    let reconnects = reconnects(&placeholder).await;
    assert!(
        reconnects >= 1,
        "reconnects: {reconnects}\n{}",
        sites.logs()
    );
    assert!(
        sites.bob.log().contains("connection made again"),
        "{}",
        sites.logs()
    );
}

/// Copies a 96 MiB offer out of bob's mount while bob's site is off the network (homeserver
/// and relay too) for `down` once data moves; the copy must succeed with the right bytes.
async fn copy_across_a_cut(name: &str, down: Duration) -> (Sites, PathBuf) {
    let sites = Sites::up(name).await;
    let (source, placeholder) = sites.offer("cut.bin", "96M").await;
    let copy = sites.scratch.path().join("copy.bin");
    let copying = copy_in_background(&placeholder, &copy, || sites.logs()).await;
    sites.split.set_link(1, false);
    tokio::time::sleep(down).await;
    assert!(
        !copying.is_finished(),
        "the copy ended while the link was down\n{}",
        sites.logs()
    );
    sites.split.set_link(1, true);
    let copied = copying.await.unwrap();
    assert!(copied.success, "{}\n{}", copied.stderr, sites.logs());
    assert_eq!(sha256(&copy).await, sha256(&source).await);
    (sites, placeholder)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_paused_past_ice_failure_is_reconnected_and_the_copy_goes_on() {
    // The sending mount's process stopped (SIGSTOP) for 40 s mid-copy: the receiver's ICE
    // gives up on it after about 30 s, and the connection is made again once it runs.
    let p = pair(private()).await;
    let logs = || {
        let (bob, alice) = (p.bob.log(), p.alice.log());
        format!("bob's log:\n{bob}\nalice's log:\n{alice}")
    };
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), "paused.bin", "512M").await;
    let alice_room = p.alice.room(&p.room_id);
    must(
        sh(&format!(
            "cp '{}' '{}/'",
            source.display(),
            alice_room.display()
        ))
        .await,
    );
    let placeholder = p.bob.room(&p.room_id).join("paused.bin");
    p.bob.wait_for(&placeholder).await;
    let alice_pid = getfattr(p.alice.path(), "pid").await.expect("alice's pid");
    let copy = scratch.path().join("copy.bin");
    let copying = copy_in_background(&placeholder, &copy, logs).await;
    must(sh(&format!("kill -STOP {alice_pid}")).await);
    tokio::time::sleep(Duration::from_secs(40)).await;
    let paused_copy_went_on = copying.is_finished();
    must(sh(&format!("kill -CONT {alice_pid}")).await);
    assert!(
        !paused_copy_went_on,
        "the copy ended while the sender was stopped"
    );
    let copied = copying.await.unwrap();
    assert!(copied.success, "{}\n{}", copied.stderr, logs());
    assert_eq!(sha256(&copy).await, sha256(&source).await);
    let reconnects = reconnects(&placeholder).await;
    assert!(reconnects >= 1, "reconnects: {reconnects}\n{}", logs());
}

/// Starts `cp PLACEHOLDER COPY` and returns once data moves (4 MiB arrived).
async fn copy_in_background(
    placeholder: &Path,
    copy: &Path,
    logs: impl Fn() -> String,
) -> tokio::task::JoinHandle<Shell> {
    let script = format!("cp '{}' '{}'", placeholder.display(), copy.display());
    let copying = tokio::spawn(async move { sh(&script).await });
    let moving = eventually(Duration::from_secs(120), || {
        std::fs::metadata(copy).is_ok_and(|m| m.len() > 4 << 20)
    })
    .await;
    assert!(moving, "the copy never started\n{}", logs());
    copying
}

/// Times a placeholder's connection was made again (`user.d2dfs.reconnects`).
async fn reconnects(placeholder: &Path) -> u32 {
    getfattr(placeholder, "reconnects")
        .await
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
