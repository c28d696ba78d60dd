//! Running the `d2dfs` binary the way a user does, with a profile of its own.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::homeserver::homeserver;
use super::users::TestUser;

/// No single CLI call of a test may take longer: a hang fails the test instead of CI.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// One `--data-dir` profile.
pub struct CliProfile {
    dir: TempDir,
    /// The network namespace its commands run in (`None`: this process's).
    netns: Option<String>,
    /// The homeserver `login` uses.
    homeserver: String,
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Panics with the whole output unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.success,
            "d2dfs failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts that the command failed with exactly one line on stderr containing `needle`.
    #[track_caller]
    pub fn fails_with(self, needle: &str) -> Self {
        assert!(
            !self.success,
            "d2dfs succeeded unexpectedly:\n{}",
            self.stdout
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got:\n{}",
            self.stderr
        );
        assert!(lines[0].starts_with("d2dfs: error: "), "{}", self.stderr);
        assert!(
            lines[0].contains(needle),
            "expected {needle:?} in {:?}",
            lines[0]
        );
        self
    }

    /// The value after `key:` in `whoami`-style output.
    pub fn field(&self, key: &str) -> Option<String> {
        self.stdout.lines().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        })
    }
}

impl CliProfile {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            netns: None,
            homeserver: homeserver().url.clone(),
        }
    }

    /// A profile whose commands run in network namespace `netns` and log in to `homeserver`.
    #[allow(dead_code)] // by the fault tests (tests/faults) only
    pub fn in_netns(netns: &str, homeserver: &str) -> Self {
        Self {
            netns: Some(netns.to_owned()),
            homeserver: homeserver.to_owned(),
            ..Self::new()
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn session_path(&self) -> PathBuf {
        self.dir.path().join("session.json")
    }

    /// Runs `d2dfs --data-dir DIR ARGS…` with `env` added to the environment.
    pub async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Finished {
        let binary = env!("CARGO_BIN_EXE_d2dfs");
        let mut command = match &self.netns {
            // Only the network namespace changes: the mount stays visible to the test.
            Some(netns) => {
                let mut command = tokio::process::Command::new("nsenter");
                command.arg(format!("--net=/run/netns/{netns}")).arg(binary);
                command
            }
            None => tokio::process::Command::new(binary),
        };
        command
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .env_remove("D2DFS_PASSWORD")
            .env_remove("D2DFS_PROFILE")
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let output: Output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("d2dfs {args:?} did not finish within {COMMAND_TIMEOUT:?}"))
            .expect("spawn d2dfs");
        let finished = Finished {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert!(
            !finished.stderr.contains("panicked"),
            "d2dfs panicked:\n{}",
            finished.stderr
        );
        finished
    }

    /// `d2dfs login` as `user` on the test homeserver.
    pub async fn login(&self, user: &TestUser) -> Finished {
        self.run(
            &[
                "login",
                user.user_id.as_str(),
                "--homeserver",
                &self.homeserver,
            ],
            &[("D2DFS_PASSWORD", &user.password)],
        )
        .await
    }
}
