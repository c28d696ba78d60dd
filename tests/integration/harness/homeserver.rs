//! One real Synapse per test run, started through `contrib/synapse.sh`.
//!
//! Set `D2DFS_TEST_HOMESERVER=http://127.0.0.1:PORT` to use a homeserver that is already running
//! (it must allow open registration, as `contrib/synapse.sh` configures it). Otherwise the first
//! test that needs one starts it under `target/tmp/`, and it stops when this test process exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running homeserver.
pub struct Homeserver {
    pub url: String,
}

static HOMESERVER: OnceLock<Homeserver> = OnceLock::new();
static STRICT_HOMESERVER: OnceLock<Homeserver> = OnceLock::new();

/// The repository root (where `contrib/` is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The homeserver of this test run (relaxed rate limits), started on first use.
pub fn homeserver() -> &'static Homeserver {
    HOMESERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("D2DFS_TEST_HOMESERVER") {
            return Homeserver { url };
        }
        start("synapse", &[])
    })
}

/// A second homeserver with Synapse's default rate limits (`rc_message`: burst 10, then one
/// event per 5 s), for tests that prove signalling copes with them.
pub fn strict_homeserver() -> &'static Homeserver {
    STRICT_HOMESERVER.get_or_init(|| {
        let options = ["--default-ratelimits"];
        start_with_config("synapse-strict", &options, STRICT_EXTRA_CONFIG).0
    })
}

/// The strict homeserver also hands out TURN credentials (no TURN server runs behind them:
/// they prove discovery, not relaying).
const STRICT_EXTRA_CONFIG: &str = r#"
turn_uris: ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"]
turn_shared_secret: "d2dfs-test-turn-secret"
turn_user_lifetime: 1h
"#;

fn start(name: &str, options: &[&str]) -> Homeserver {
    start_with_config(name, options, "").0
}

/// A homeserver of one test's own, which the test may stop and start again.
pub struct OwnHomeserver {
    pub url: String,
    dir: PathBuf,
}

impl OwnHomeserver {
    pub fn start(name: &str) -> Self {
        Self::start_with_config(name, "")
    }

    /// Starts one with `extra_config` appended to its homeserver.yaml.
    pub fn start_with_config(name: &str, extra_config: &str) -> Self {
        let (Homeserver { url }, dir) = start_with_config(&unique_name(name), &[], extra_config);
        Self { url, dir }
    }

    pub fn stop(&self) {
        synapse_sh("stop", &self.dir, &[], "");
    }

    /// Starts it again with its database and port.
    pub fn restart(&self) {
        let pid = std::process::id().to_string();
        synapse_sh("start", &self.dir, &["--watch-pid", &pid], "");
    }
}

impl Drop for OwnHomeserver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `contrib/synapse.sh COMMAND DIR OPTIONS…`; returns what it printed.
fn synapse_sh(command: &str, dir: &Path, options: &[&str], extra_config: &str) -> String {
    let output = Command::new(repo_root().join("contrib/synapse.sh"))
        .arg(command)
        .arg(dir)
        .args(options)
        .env("D2DFS_SYNAPSE_EXTRA_CONFIG", extra_config)
        .output()
        .expect("run contrib/synapse.sh");
    assert!(
        output.status.success(),
        "contrib/synapse.sh {command} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Starts a homeserver in `CARGO_TARGET_TMPDIR/NAME-PID`; it stops when this process exits.
fn start_with_config(name: &str, options: &[&str], extra_config: &str) -> (Homeserver, PathBuf) {
    init_test_logging();
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pid = std::process::id().to_string();
    let mut all_options = vec!["--watch-pid", pid.as_str()];
    all_options.extend_from_slice(options);
    let url = synapse_sh("start", &dir, &all_options, extra_config);
    assert!(
        url.starts_with("http://"),
        "unexpected synapse.sh output {url:?}"
    );
    (Homeserver { url }, dir)
}

/// A name no other test of this run (or of an earlier run against the same server) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// `RUST_LOG=d2dfs=debug cargo test … -- --nocapture` shows the library's logs.
fn init_test_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}
