//! Real kernel mounts of the `d2dfs` binary, driven with the shell tools a user would use.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;

use super::cli::{CliProfile, Finished};
use super::users::TestUser;

/// A logged-in profile with its filesystem mounted (in the background, like a user does).
pub struct TestMount {
    pub profile: CliProfile,
    pub user: TestUser,
    dir: TempDir,
    args: Vec<String>,
}

impl TestMount {
    /// Logs `user` in with a fresh profile and mounts it with `args` added.
    pub async fn start(user: &TestUser, args: &[&str]) -> Self {
        Self::start_with(CliProfile::new(), user, args).await
    }

    /// Like [`start`](Self::start), with `profile` (a network namespace, another homeserver).
    pub async fn start_with(profile: CliProfile, user: &TestUser, args: &[&str]) -> Self {
        profile.login(user).await.ok();
        let mount = Self {
            profile,
            user: user.clone(),
            dir: tempfile::tempdir().expect("mount dir"),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        mount.mount().await.ok();
        mount
    }

    /// `d2dfs mount` (again).
    pub async fn mount(&self) -> Finished {
        let mut args = vec!["mount", self.path().to_str().expect("utf-8 path")];
        args.extend(self.args.iter().map(String::as_str));
        self.profile
            .run(&args, &[("RUST_LOG", "d2dfs=debug,warn")])
            .await
    }

    /// `d2dfs unmount`.
    pub async fn unmount(&self) -> Finished {
        self.profile
            .run(&["unmount", self.path().to_str().expect("utf-8 path")], &[])
            .await
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The room's directory in this mount.
    pub fn room(&self, room_id: &str) -> PathBuf {
        self.path().join(room_id)
    }

    /// The mount's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.profile.data_dir().join("mount.log")).unwrap_or_default()
    }

    pub fn is_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let path = self.path().to_str().unwrap_or("");
        mounts
            .lines()
            .any(|line| line.split(' ').nth(1) == Some(path))
    }

    /// Waits (up to a minute) for `path` to exist; panics with the mount's log otherwise.
    pub async fn wait_for(&self, path: &Path) {
        let found = eventually(Duration::from_secs(60), || path.exists()).await;
        assert!(
            found,
            "{} did not appear; log:\n{}",
            path.display(),
            self.log()
        );
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if self.is_mounted() {
            let _ = std::process::Command::new(env!("CARGO_BIN_EXE_d2dfs"))
                .arg("unmount")
                .arg(self.path())
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// Polls `condition` every 100 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a shell command did.
#[derive(Debug)]
pub struct Shell {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `script` with bash (as a user would type it), with a time limit.
pub async fn sh(script: &str) -> Shell {
    let child = tokio::process::Command::new("bash")
        .args(["-c", script])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), child)
        .await
        .unwrap_or_else(|_| panic!("`{script}` hung"))
        .expect("run bash");
    Shell {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `script`, panicking with its output unless it succeeded; returns stdout.
#[track_caller]
pub fn must(shell: Shell) -> String {
    assert!(
        shell.success,
        "command failed:\nstdout: {}\nstderr: {}",
        shell.stdout, shell.stderr
    );
    shell.stdout
}

/// A file of `size` (as `head -c` takes it: `8M`, `1G`) random bytes named `name` in `dir`.
pub async fn random_file(dir: &Path, name: &str, size: &str) -> PathBuf {
    let path = dir.join(name);
    must(
        sh(&format!(
            "head -c {size} /dev/urandom > '{}'",
            path.display()
        ))
        .await,
    );
    path
}

/// `sha256sum` of a file, through whatever filesystem it is on.
pub async fn sha256(path: &Path) -> String {
    let out = must(sh(&format!("sha256sum < '{}'", path.display())).await);
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

/// A user-visible extended attribute via `getfattr`.
pub async fn getfattr(path: &Path, name: &str) -> Option<String> {
    let shell = sh(&format!(
        "getfattr --only-values -n user.d2dfs.{name} '{}'",
        path.display()
    ))
    .await;
    shell.success.then_some(shell.stdout)
}
