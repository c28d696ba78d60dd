//! Many transfers at once in a crowded room, between two real mounts: every byte right, and
//! the receiving mount's chunk cache within its budget the whole time.

use std::path::Path;
use std::time::Duration;

use crate::harness::mount::{eventually, must, sh, sha256};
use crate::harness::pair::{Pair, pair_with, private};

/// Files copied out of bob's mount at the same time.
const COPIES: usize = 16;
/// Size of each of them.
const COPY_SIZE: &str = "32M";
/// Other live offers in the room meanwhile.
const CROWD: usize = 1000;
/// Bob's chunk cache: a quarter of what the copies move.
const CACHE_SIZE: &str = "128M";

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_copies_at_once_beside_a_thousand_live_offers() {
    let Pair {
        alice,
        bob,
        room_id,
        ..
    } = pair_with(private(), &[], &["--cache-size", CACHE_SIZE]).await;
    let (alice_room, bob_room) = (alice.room(&room_id), bob.room(&room_id));
    let scratch = tempfile::tempdir().unwrap();
    let work = scratch.path();

    // The crowd (small files holding their own names), then the big ones, all offered by alice.
    must(
        sh(&format!(
            "set -e; mkdir '{w}/crowd' '{w}/big' '{w}/out'
             for i in $(seq {CROWD}); do echo \"crowd $i\" > '{w}/crowd/crowd-'$i.txt; done
             for i in $(seq {COPIES}); do head -c {COPY_SIZE} /dev/urandom > '{w}/big/big-'$i.bin; done
             cp '{w}'/crowd/* '{room}/'
             cp '{w}'/big/* '{room}/'",
            w = work.display(),
            room = alice_room.display(),
        ))
        .await,
    );
    let everything = CROWD + COPIES;
    let listed = eventually(Duration::from_secs(600), || {
        std::fs::read_dir(&bob_room).is_ok_and(|dir| dir.count() == everything)
    })
    .await;
    assert!(
        listed,
        "bob lists {:?} of {everything} offers\n{}",
        std::fs::read_dir(&bob_room).map(Iterator::count).ok(),
        bob.log()
    );

    // Sixteen copies at once, each checked.
    let copies = sh(&format!(
        "cd '{room}' || exit 1
         for i in $(seq {COPIES}); do cp big-$i.bin '{out}/' & pids=\"$pids $!\"; done
         failed=0; for pid in $pids; do wait $pid || failed=1; done; exit $failed",
        room = bob_room.display(),
        out = work.join("out").display(),
    ))
    .await;
    assert!(
        copies.success,
        "{}\nbob's log:\n{}\nalice's log:\n{}",
        copies.stderr,
        bob.log(),
        alice.log()
    );
    for i in 1..=COPIES {
        let name = format!("big-{i}.bin");
        assert_eq!(
            sha256(&work.join("out").join(&name)).await,
            sha256(&work.join("big").join(&name)).await,
            "{name}"
        );
    }

    // The crowd is still live and readable: a sample of it, eight at a time.
    let sample: Vec<usize> = (1..=CROWD).step_by(CROWD / 20).collect();
    let names: Vec<String> = sample.iter().map(|i| format!("crowd-{i}.txt")).collect();
    let read = must(
        sh(&format!(
            "cd '{}' && printf '%s\\n' {} | xargs -P 8 -n 1 cat",
            bob_room.display(),
            names.join(" ")
        ))
        .await,
    );
    for i in &sample {
        assert!(
            read.contains(&format!("crowd {i}\n")),
            "crowd {i} missing:\n{read}"
        );
    }

    // The cache held at most its budget.
    let root_attr = |name: &str| root_xattr(bob.path(), name);
    let (budget, peak) = (root_attr("cache_size"), root_attr("cache_peak"));
    assert!(budget > 0 && peak > 0, "cache attributes missing");
    assert!(peak <= budget, "cache peak {peak} over its budget {budget}");
    // Peak memory: the cache, plus what the process needs besides (measured: about 230 MiB in
    // a debug build); a leak of the bytes moved (512 MiB) would go far past this bound.
    let pid = root_attr("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10);
    println!("bob's mount: cache peak {peak} of {budget} bytes; peak RSS {peak_rss} bytes");
    assert!(peak_rss > 0, "no VmHWM for pid {pid}");
    assert!(
        peak_rss <= budget + (384 << 20),
        "peak RSS {peak_rss} is far past the cache's {budget}"
    );
}

/// A numeric `user.d2dfs.*` attribute of a mount's root (0 when absent).
fn root_xattr(mount: &Path, name: &str) -> u64 {
    let output = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", &format!("user.d2dfs.{name}")])
        .arg(mount)
        .output();
    output
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
