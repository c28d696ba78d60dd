//! The filesystem (SPEC §3), through real kernel mounts of the `d2dfs` binary, driven with
//! `cp`, `cat`, `ls`, `rm`, `getfattr`, `ln -s` and `dd` as a user drives it.

use std::path::Path;
use std::time::Duration;

use matrix_sdk::ruma::api::client::room::create_room;
use serde_json::json;

use crate::harness::mount::{TestMount, eventually, getfattr, must, random_file, sh, sha256};
use crate::harness::pair::{Pair, pair, private};
use crate::harness::users::{RoomSpec, TestUser, create_shared_room};

/// Two mounts, and a random file of `size` copied into alice's room directory and shown
/// in bob's: the pair, the scratch directory, the source and bob's placeholder.
async fn offered(
    name: &str,
    size: &str,
) -> (
    Pair,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let p = pair(private()).await;
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), name, size).await;
    cp(&source, &p.alice.room(&p.room_id)).await;
    let placeholder = p.bob.room(&p.room_id).join(name);
    p.bob.wait_for(&placeholder).await;
    (p, scratch, source, placeholder)
}

/// `cp FROM TO`, which must succeed.
async fn cp(from: &Path, to: &Path) {
    must(sh(&format!("cp '{}' '{}'", from.display(), to.display())).await);
}

/// A private room `creator` made and `joiner` joined.
async fn shared_room(creator: &TestUser, joiner: &TestUser) -> String {
    let (creator, joiner) = (creator.client().await, joiner.client().await);
    create_shared_room(&creator, &[&joiner], private())
        .await
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_goes_in_with_cp_and_comes_out_with_cp() {
    let p = pair(private()).await;
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), "big.iso", "1G").await;
    cp(&source, &p.alice.room(&p.room_id)).await;
    // Own offer: listed, read-only, with its state.
    let own = p.alice.room(&p.room_id).join("big.iso");
    let offered = eventually(Duration::from_secs(60), || {
        std::fs::metadata(&own).is_ok_and(|m| m.len() == 1 << 30 && m.permissions().readonly())
    })
    .await;
    assert!(
        offered,
        "own offer listed read-only; log:\n{}",
        p.alice.log()
    );
    let placeholder = p.bob.room(&p.room_id).join("big.iso");
    p.bob.wait_for(&placeholder).await;
    let ls = must(sh(&format!("ls -l '{}'", p.bob.room(&p.room_id).display())).await);
    assert!(
        ls.contains("-r--r--r--") && ls.contains("1073741824") && ls.contains("big.iso"),
        "{ls}"
    );
    assert_eq!(
        getfattr(&placeholder, "state").await.as_deref(),
        Some("offered")
    );
    assert_eq!(
        getfattr(&placeholder, "sender").await.as_deref(),
        Some(p.alice.user.user_id.as_str())
    );
    let out = scratch.path().join("copied.iso");
    let copy = sh(&format!(
        "cp '{}' '{}'",
        placeholder.display(),
        out.display()
    ))
    .await;
    assert!(
        copy.success,
        "cp out failed: {}\nbob's log:\n{}\nalice's log:\n{}",
        copy.stderr,
        p.bob.log(),
        p.alice.log()
    );
    // Every byte was read and checked against the advertised digest.
    assert_eq!(
        getfattr(&placeholder, "state").await.as_deref(),
        Some("complete")
    );
    assert_eq!(
        getfattr(&placeholder, "sha256").await,
        Some(sha256(&source).await)
    );
    assert_eq!(
        getfattr(&placeholder, "path").await.as_deref(),
        Some("direct")
    );
    let moved: u64 = getfattr(&placeholder, "bytes")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(moved >= 1 << 30, "bytes moved: {moved}");
    let status = must(
        sh(&format!(
            "'{}' status --once '{}'",
            env!("CARGO_BIN_EXE_d2dfs"),
            p.bob.path().display()
        ))
        .await,
    );
    assert!(
        status.contains("big.iso") && status.contains("complete"),
        "{status}"
    );
    assert_eq!(
        sha256(&out).await,
        sha256(&source).await,
        "bob's log:\n{}",
        p.bob.log()
    );
    // The sender learns that it is done.
    let done = eventually(Duration::from_secs(30), || {
        xattr_now(&own, "state").as_deref() == Some("complete")
    })
    .await;
    assert!(done, "sender state: {:?}", xattr_now(&own, "state"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linked_file_is_offered_in_place_and_read_at_random() {
    let p = pair(private()).await;
    let scratch = tempfile::tempdir().unwrap();
    // 2 GiB, mostly a hole, with random bytes 1.5 GiB in.
    let source = scratch.path().join("disk.img");
    must(sh(&format!(
        "truncate -s 2G '{0}' && head -c 4M /dev/urandom | dd of='{0}' bs=1M seek=1536 conv=notrunc status=none",
        source.display()
    ))
    .await);
    must(
        sh(&format!(
            "ln -s '{}' '{}/'",
            source.display(),
            p.alice.room(&p.room_id).display()
        ))
        .await,
    );
    let own = p.alice.room(&p.room_id).join("disk.img");
    let offered = eventually(Duration::from_secs(60), || {
        std::fs::symlink_metadata(&own).is_ok_and(|m| m.is_file())
    })
    .await;
    assert!(offered, "the link became an offer; log:\n{}", p.alice.log());
    let placeholder = p.bob.room(&p.room_id).join("disk.img");
    p.bob.wait_for(&placeholder).await;
    let read = |path: &Path| {
        format!(
            "dd if='{}' bs=1M skip=1537 count=1 status=none | sha256sum",
            path.display()
        )
    };
    let expected = must(sh(&read(&source)).await);
    let got = must(sh(&read(&placeholder)).await);
    assert_eq!(got, expected);
    let moved: u64 = getfattr(&placeholder, "bytes")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1 << 20..=16 << 20).contains(&moved),
        "a 1 MiB read deep into 2 GiB moved {moved} bytes"
    );
    // The sender's side shows the transfer too.
    let state = getfattr(&own, "state").await.unwrap_or_default();
    assert!(
        ["transferring", "complete"].contains(&state.as_str()),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offer_from_a_plain_aiortc_peer_is_read_with_cat() {
    let plain = TestUser::register("fsplain").await;
    let bob_user = TestUser::register("fsbob").await;
    let room_id = shared_room(&plain, &bob_user).await;
    let bob = TestMount::start(&bob_user, &[]).await;
    bob.wait_for(&bob.room(&room_id)).await;
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), "from-aiortc.bin", "3000000").await;
    let sender = {
        let (plain, room_id, source) = (plain.clone(), room_id.clone(), source.clone());
        tokio::spawn(async move {
            crate::harness::aiortc::run_peer(&plain, &room_id, "send", &source).await
        })
    };
    let placeholder = bob.room(&room_id).join("from-aiortc.bin");
    bob.wait_for(&placeholder).await;
    let out = scratch.path().join("got.bin");
    must(
        sh(&format!(
            "cat '{}' > '{}'",
            placeholder.display(),
            out.display()
        ))
        .await,
    );
    assert_eq!(
        sha256(&out).await,
        sha256(&source).await,
        "log:\n{}",
        bob.log()
    );
    assert_eq!(
        getfattr(&placeholder, "mode").await.as_deref(),
        Some("stream")
    );
    sender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_offered_names_are_shown_sanitised() {
    let p = pair(private()).await;
    let room = p
        .bob_client
        .get_room(<&matrix_sdk::ruma::RoomId>::try_from(p.room_id.as_str()).unwrap())
        .expect("room");
    // Bob's harness device (not his mount) offers to the room; alice's mount shows it.
    let long = "L".repeat(4096);
    let names = [
        "../../x",
        "a/b",
        "nul\0byte",
        long.as_str(),
        "..",
        "same",
        "same",
    ];
    for (index, name) in names.iter().enumerate() {
        let content = json!({
            "transfer_id": format!("hostile-{index}"),
            "lifetime": 600_000,
            "filename": name,
            "info": { "mimetype": "application/octet-stream", "size": 10 },
            "offer": { "type": "offer", "sdp": "v=0\r\n" },
            "version": 0,
        });
        room.send_raw("m.d2dfile.invite", content)
            .await
            .expect("send invite");
    }
    let dir = p.alice.room(&p.room_id);
    let all_there = eventually(Duration::from_secs(60), || {
        std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) == names.len()
    })
    .await;
    let listing = must(sh(&format!("ls -1a '{}'", dir.display())).await);
    assert!(all_there, "{listing}\nlog:\n{}", p.alice.log());
    let shown: Vec<&str> = listing.lines().collect();
    for expected in [".._.._x", "a_b", "nul_byte", "__", "same"] {
        assert!(
            shown.contains(&expected),
            "{expected} missing from {shown:?}"
        );
    }
    assert!(shown.iter().any(|n| n.starts_with("same (")), "{shown:?}");
    let long_shown = shown
        .iter()
        .find(|n| n.starts_with("LLLL"))
        .expect("long name");
    assert!(long_shown.len() <= 255);
    // Nothing escaped the room directory.
    assert!(!p.alice.path().join("x").exists());
    assert!(!p.alice.path().parent().unwrap().join("x").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sending_mount_restarts_and_still_serves_the_offer() {
    let (p, scratch, source, placeholder) = offered("kept.bin", "5M").await;
    let first_id = getfattr(&placeholder, "transfer_id")
        .await
        .expect("transfer id");
    p.alice.unmount().await.ok();
    assert!(!p.alice.is_mounted());
    // The unmount cancelled the offer: bob's placeholder goes.
    let gone = eventually(Duration::from_secs(30), || !placeholder.exists()).await;
    assert!(gone, "cancelled offer still listed");
    p.alice.mount().await.ok();
    let own = p.alice.room(&p.room_id).join("kept.bin");
    p.alice.wait_for(&own).await;
    p.bob.wait_for(&placeholder).await;
    assert_ne!(
        getfattr(&placeholder, "transfer_id").await.unwrap(),
        first_id
    );
    let out = scratch.path().join("got.bin");
    cp(&placeholder, &out).await;
    assert_eq!(sha256(&out).await, sha256(&source).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_removed_while_its_offer_is_prepared_is_never_offered() {
    let p = pair(private()).await;
    let scratch = tempfile::tempdir().unwrap();
    // Large enough that hashing it takes a while: the `rm` lands before the invite goes out.
    let source = scratch.path().join("gone.img");
    must(sh(&format!("truncate -s 2G '{}'", source.display())).await);
    let room = p.alice.room(&p.room_id);
    must(
        sh(&format!(
            "ln -s '{}' '{}/' && rm '{}/gone.img'",
            source.display(),
            room.display(),
            room.display()
        ))
        .await,
    );
    let gone = p.bob.room(&p.room_id).join("gone.img");
    let settled = eventually(Duration::from_secs(120), || {
        p.alice.log().contains("removed before its offer went out") || gone.exists()
    })
    .await;
    assert!(settled, "alice's log:\n{}", p.alice.log());
    // A marker offered after that: once bob lists it, any invite sent before it has arrived.
    cp(
        &random_file(scratch.path(), "marker.bin", "1K").await,
        &room,
    )
    .await;
    p.bob
        .wait_for(&p.bob.room(&p.room_id).join("marker.bin"))
        .await;
    assert!(
        !gone.exists(),
        "bob lists a removed file; alice's log:\n{}",
        p.alice.log()
    );
    let records = must(
        sh(&format!(
            "ls '{}'",
            p.alice.profile.data_dir().join("outgoing").display()
        ))
        .await,
    );
    assert_eq!(
        records.matches(".json").count(),
        1,
        "only the marker's record is kept: {records}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rm_cancels_and_rejects_and_bad_operations_get_the_right_errno() {
    let p = pair(private()).await;
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), "doomed.bin", "100000").await;
    let alice_dir = p.alice.room(&p.room_id);
    let bob_dir = p.bob.room(&p.room_id);

    // Writing a placeholder: EACCES.
    cp(&source, &alice_dir).await;
    let placeholder = bob_dir.join("doomed.bin");
    p.bob.wait_for(&placeholder).await;
    let write = sh(&format!("echo x > '{}'", placeholder.display())).await;
    assert!(
        !write.success && write.stderr.contains("Permission denied"),
        "{write:?}"
    );
    let mkdir = sh(&format!("mkdir '{}/sub'", bob_dir.display())).await;
    assert!(!mkdir.success, "{mkdir:?}");

    // rm of a placeholder rejects the offer: the sender sees it cancelled.
    must(sh(&format!("rm '{}'", placeholder.display())).await);
    assert!(!placeholder.exists());
    let own = alice_dir.join("doomed.bin");
    let cancelled = eventually(Duration::from_secs(30), || {
        xattr_now(&own, "state").as_deref() == Some("cancelled")
    })
    .await;
    assert!(cancelled, "state: {:?}", xattr_now(&own, "state"));

    // rm of an own offer cancels it: the placeholder goes, the spool is freed.
    let second = random_file(scratch.path(), "second.bin", "100000").await;
    cp(&second, &alice_dir).await;
    let placeholder = bob_dir.join("second.bin");
    p.bob.wait_for(&placeholder).await;
    must(sh(&format!("rm '{}/second.bin'", alice_dir.display())).await);
    let gone = eventually(Duration::from_secs(30), || !placeholder.exists()).await;
    assert!(gone, "the cancelled offer is still listed at bob's");
    let spool = p.alice.profile.data_dir().join("outgoing");
    let spooled = std::fs::read_dir(&spool).unwrap().count();
    assert_eq!(
        spooled, 2,
        "doomed.bin's record and bytes remain, second.bin's are gone"
    );
}

fn xattr_now(path: &Path, name: &str) -> Option<String> {
    let output = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", &format!("user.d2dfs.{name}")])
        .arg(path)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_room_refuses_offers_with_eperm() {
    let p = pair(RoomSpec {
        name: "public fs",
        encrypted: false,
        public: true,
    })
    .await;
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), "leak.bin", "1000").await;
    let copy = sh(&format!(
        "cp '{}' '{}/'",
        source.display(),
        p.alice.room(&p.room_id).display()
    ))
    .await;
    assert!(
        !copy.success && copy.stderr.contains("Operation not permitted"),
        "{copy:?}"
    );
}

/// Writes the same bytes to each path given, the way editors and downloaders do rather than
/// `cp`: the second half first, then the first, then a page changed through a shared mmap,
/// then the file grown by a short append.
const UNEVEN_WRITER: &str = r#"
import mmap, os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    half = 3 << 20
    os.pwrite(fd, bytes([7]) * half, half)
    os.pwrite(fd, bytes(range(256)) * (half // 256), 0)
    with mmap.mmap(fd, 2 * half) as view:
        view[4096:8192] = b"m" * 4096
        view.flush()
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, b"tail")
    os.close(fd)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_out_of_order_and_through_mmap_is_offered_whole() {
    let p = pair(private()).await;
    let scratch = tempfile::tempdir().unwrap();
    let reference = scratch.path().join("uneven.bin");
    let own = p.alice.room(&p.room_id).join("uneven.bin");
    must(
        sh(&format!(
            "python3 -c '{UNEVEN_WRITER}' '{}' '{}'",
            reference.display(),
            own.display()
        ))
        .await,
    );
    let expected = sha256(&reference).await;
    let placeholder = p.bob.room(&p.room_id).join("uneven.bin");
    p.bob.wait_for(&placeholder).await;
    assert_eq!(getfattr(&own, "sha256").await, Some(expected.clone()));
    assert_eq!(
        getfattr(&placeholder, "sha256").await,
        Some(expected.clone())
    );
    assert_eq!(
        sha256(&placeholder).await,
        expected,
        "bob's log:\n{}",
        p.bob.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_the_write_with_enospc_and_offers_nothing() {
    let alice_user = TestUser::register("fsfull").await;
    let bob_user = TestUser::register("fsbob").await;
    let room_id = shared_room(&alice_user, &bob_user).await;
    let alice = TestMount::start(&alice_user, &[]).await;
    let bob = TestMount::start(&bob_user, &[]).await;
    alice.wait_for(&alice.room(&room_id)).await;
    // The spool directory on a 1 MiB filesystem.
    alice.unmount().await.ok();
    let outgoing = alice.profile.data_dir().join("outgoing");
    must(
        sh(&format!(
            "mount -t tmpfs -o size=1m tmpfs '{}'",
            outgoing.display()
        ))
        .await,
    );
    alice.mount().await.ok();
    alice.wait_for(&alice.room(&room_id)).await;
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), "huge.bin", "4M").await;
    let copy = sh(&format!(
        "cp '{}' '{}/'",
        source.display(),
        alice.room(&room_id).display()
    ))
    .await;
    alice.unmount().await.ok();
    must(sh(&format!("umount '{}'", outgoing.display())).await);
    assert!(
        !copy.success && copy.stderr.contains("No space left on device"),
        "{copy:?}"
    );
    assert!(
        !alice.room(&room_id).join("huge.bin").exists(),
        "the failed file is not listed"
    );
    // No offer went out: bob's mount never shows it.
    bob.wait_for(&bob.room(&room_id)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!bob.room(&room_id).join("huge.bin").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_digest_mismatch_is_eio_with_the_reason_in_an_xattr() {
    let p = pair(private()).await;
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), "changed.bin", "2M").await;
    must(
        sh(&format!(
            "ln -s '{}' '{}/'",
            source.display(),
            p.alice.room(&p.room_id).display()
        ))
        .await,
    );
    let placeholder = p.bob.room(&p.room_id).join("changed.bin");
    p.bob.wait_for(&placeholder).await;
    // The file changes after it was offered (same size, other bytes).
    must(sh(&format!("head -c 2M /dev/urandom > '{}'", source.display())).await);
    let copy = sh(&format!("cat '{}' > /dev/null", placeholder.display())).await;
    assert!(
        !copy.success && copy.stderr.contains("Input/output error"),
        "{copy:?}"
    );
    let error = getfattr(&placeholder, "error").await.unwrap_or_default();
    assert!(error.contains("sha256"), "error xattr: {error:?}");
    assert_eq!(
        getfattr(&placeholder, "state").await.as_deref(),
        Some("failed")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rooms_come_and_go_live_with_alias_symlinks() {
    let alice_user = TestUser::register("fsrooms").await;
    let client = alice_user.client().await;
    let alice = TestMount::start(&alice_user, &[]).await;
    let mut request = create_room::v3::Request::new();
    let alias_local = format!("fs-alias-{}", alice_user.user_id.localpart());
    request.room_alias_name = Some(alias_local.clone());
    request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
    let room = client.create_room(request).await.expect("create room");
    let room_id = room.room_id().to_string();
    alice.wait_for(&alice.room(&room_id)).await;
    let alias = alice.path().join(format!("#{alias_local}:localhost"));
    alice.wait_for(&alias).await;
    assert_eq!(std::fs::read_link(&alias).unwrap(), Path::new(&room_id));
    room.leave().await.expect("leave");
    let gone = eventually(Duration::from_secs(30), || {
        let listing = std::fs::read_dir(alice.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default();
        !listing.iter().any(|n| n.to_str() == Some(room_id.as_str()))
    })
    .await;
    assert!(gone, "the left room is still listed");
    assert!(
        !alice.room(&room_id).exists(),
        "no stale entry in the kernel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_and_recv_work_without_a_mount() {
    let alice_user = TestUser::register("fssend").await;
    let bob_user = TestUser::register("fsrecv").await;
    let room_id = shared_room(&alice_user, &bob_user).await;
    let alice = crate::harness::cli::CliProfile::new();
    alice.login(&alice_user).await.ok();
    let bob = crate::harness::cli::CliProfile::new();
    bob.login(&bob_user).await.ok();
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), "headless.bin", "3M").await;
    let sender = {
        let room_id = room_id.clone();
        let source = source.clone();
        tokio::spawn(async move {
            alice
                .run(&["send", &room_id, source.to_str().unwrap()], &[])
                .await
        })
    };
    let out = tempfile::tempdir().unwrap();
    bob.run(
        &[
            "recv",
            &room_id,
            "--out",
            out.path().to_str().unwrap(),
            "--timeout",
            "60s",
        ],
        &[],
    )
    .await
    .ok();
    let received = out.path().join("headless.bin");
    assert_eq!(sha256(&received).await, sha256(&source).await);
    sender.await.unwrap().ok();
    let leftovers: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_unmount_cleanly_and_a_stale_mount_is_reported() {
    let user = TestUser::register("fssig").await;
    let mount = TestMount::start(&user, &[]).await;
    assert!(mount.is_mounted());
    // One device, one process: the profile is taken while mounted.
    mount
        .profile
        .run(&["recv", "!nowhere:localhost", "--timeout", "1s"], &[])
        .await
        .fails_with("in use by another d2dfs process");
    let pid = getfattr_root(mount.path(), "pid").await;
    must(sh(&format!("kill -TERM {pid}")).await);
    let unmounted = eventually(Duration::from_secs(30), || !mount.is_mounted()).await;
    assert!(unmounted, "SIGTERM did not unmount; log:\n{}", mount.log());

    // A crash leaves a stale mount: reported with the fix, and the fix works.
    mount.mount().await.ok();
    let pid = getfattr_root(mount.path(), "pid").await;
    kill_and_wait(&pid).await;
    mount.mount().await.fails_with("stale mount");
    mount.unmount().await.ok();
    assert!(!mount.is_mounted());
    mount.mount().await.ok();
    assert!(mount.is_mounted());
}

/// SIGKILLs mount process `pid` and waits until every thread of it is gone (the FUSE device
/// is closed only then). Generous: a loaded suite slows exit; the stacks tell if it hangs.
async fn kill_and_wait(pid: &str) {
    must(sh(&format!("kill -KILL {pid}")).await);
    let proc_dir = format!("/proc/{pid}");
    let dead = eventually(Duration::from_secs(30), || !Path::new(&proc_dir).exists()).await;
    if !dead {
        let threads = sh(&format!(
            "for t in {proc_dir}/task/*; do cat $t/stat $t/stack; done"
        ))
        .await;
        panic!("SIGKILL did not end the mount:\n{}", threads.stdout);
    }
}

async fn getfattr_root(path: &Path, name: &str) -> String {
    must(
        sh(&format!(
            "getfattr --only-values -n user.d2dfs.{name} '{}'",
            path.display()
        ))
        .await,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn offers_vanish_when_their_lifetime_ends() {
    let alice_user = TestUser::register("fsshort").await;
    let bob_user = TestUser::register("fsbob").await;
    let room_id = shared_room(&alice_user, &bob_user).await;
    let (alice, bob) = tokio::join!(
        TestMount::start(&alice_user, &["--lifetime", "8s"]),
        TestMount::start(&bob_user, &[])
    );
    alice.wait_for(&alice.room(&room_id)).await;
    let scratch = tempfile::tempdir().unwrap();
    let source = random_file(scratch.path(), "brief.bin", "1000").await;
    cp(&source, &alice.room(&room_id)).await;
    let placeholder = bob.room(&room_id).join("brief.bin");
    bob.wait_for(&placeholder).await;
    let expires: u64 = getfattr(&placeholder, "expires")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(expires > 0);
    let own = alice.room(&room_id).join("brief.bin");
    let gone = eventually(Duration::from_secs(60), || {
        !placeholder.exists() && !own.exists()
    })
    .await;
    assert!(gone, "expired offer still listed");
    // Its spool went with it.
    let outgoing = alice.profile.data_dir().join("outgoing");
    assert_eq!(std::fs::read_dir(outgoing).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_sending_mount_withdraws_its_old_offer_and_offers_again() {
    let (p, scratch, source, placeholder) = offered("survivor.bin", "2M").await;
    let first_id = getfattr(&placeholder, "transfer_id")
        .await
        .expect("transfer id");
    let pid = getfattr_root(p.alice.path(), "pid").await;
    kill_and_wait(&pid).await;
    p.alice.unmount().await.ok(); // the stale mount
    p.alice.mount().await.ok();
    // The dead offer is withdrawn; the new one takes its name.
    let renewed = eventually(Duration::from_secs(60), || {
        xattr_now(&placeholder, "transfer_id").is_some_and(|id| id != first_id)
    })
    .await;
    let listing = must(sh(&format!("ls '{}'", p.bob.room(&p.room_id).display())).await);
    assert!(renewed, "listing: {listing}\nalice:\n{}", p.alice.log());
    assert_eq!(listing.lines().count(), 1, "{listing}");
    let out = scratch.path().join("got.bin");
    cp(&placeholder, &out).await;
    assert_eq!(sha256(&out).await, sha256(&source).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_receiving_mount_shows_the_live_offer_again() {
    let (p, scratch, source, placeholder) = offered("waiting.bin", "1M").await;
    let pid = getfattr_root(p.bob.path(), "pid").await;
    kill_and_wait(&pid).await;
    p.bob.unmount().await.ok();
    p.bob.mount().await.ok();
    p.bob.wait_for(&placeholder).await;
    let out = scratch.path().join("got.bin");
    cp(&placeholder, &out).await;
    assert_eq!(sha256(&out).await, sha256(&source).await);
    // Secrets stay out of the log, even at debug level.
    let session = std::fs::read_to_string(p.bob.profile.session_path()).unwrap();
    let session: serde_json::Value = serde_json::from_str(&session).unwrap();
    let token = session["access_token"].as_str().expect("access token");
    assert!(
        !p.bob.log().contains(token),
        "the access token reached the log"
    );
    assert!(!p.bob.log().contains(&p.bob.user.password));
}
