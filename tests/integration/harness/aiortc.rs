//! The independent MSC2354 peer (`tests/peers/aiortc_peer.py`, aiortc + plain HTTP calls).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::homeserver::repo_root;
use super::users::TestUser;

/// The venv `contrib/setup.sh` made for aiortc.
fn python() -> PathBuf {
    if let Some(venv) = std::env::var_os("D2DFS_AIORTC_VENV") {
        return PathBuf::from(venv).join("bin/python");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    let python = cache.join("d2dfs/aiortc-venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run contrib/setup.sh",
        python.display()
    );
    python
}

/// Runs the peer as `user` in `room`: `mode` is "send" or "recv", `path` the file.
/// Returns its stderr; panics with it if the peer failed.
pub async fn run_peer(user: &TestUser, room: &str, mode: &str, path: &std::path::Path) -> String {
    let mut command = tokio::process::Command::new(python());
    command
        .arg(repo_root().join("tests/peers/aiortc_peer.py"))
        .args(["--homeserver", &user.homeserver])
        .args(["--user", user.user_id.as_str()])
        .args(["--password", &user.password])
        .args(["--room", room])
        .args(["--timeout", "90"])
        .arg(mode)
        .arg(path)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("aiortc peer hung")
        .expect("spawn the aiortc peer");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "aiortc peer {mode} failed:\n{stderr}"
    );
    stderr
}
