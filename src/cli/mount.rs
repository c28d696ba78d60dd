//! `mount` and `unmount`.
//!
//! Without `-f` the mount goes to the background like sshfs: the process forks before any
//! thread exists, the child mounts and reports over a pipe, and the parent exits once the
//! mount answers (or with the child's error). The child logs to `mount.log` in the
//! profile's data directory.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tracing::{info, warn};

use super::node::{Node, TrustArgs, parse_duration, parse_size};
use crate::fs::{self, Core, FsConfig, mounts};
use crate::profile::Profile;
use crate::signalling::events::MAX_LANES;
use crate::transfer::engine::{DEFAULT_LANES, EngineConfig};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Directory to mount on (must exist)
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,
    /// Stay in the foreground (log to the terminal); Ctrl-C unmounts
    #[arg(short, long)]
    foreground: bool,
    /// Memory for the chunk cache of files being read (e.g. 256M, 1G)
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    /// How long offers made through this mount stay open (e.g. 10m, 2h)
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = parse_duration)]
    lifetime: Duration,
    #[command(flatten)]
    trust: TrustArgs,
    /// Extra connections per file read in range mode (0: one, as MSC2354; measured on loopback, one moves ~150 MB/s and lanes add nothing)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LANES,
          value_parser = clap::value_parser!(u8).range(0..=i64::from(MAX_LANES)))]
    lanes: u8,
    /// FUSE mount options, comma-separated (allow_other, allow_root, ro, noexec, …)
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// The mount point of a running `d2dfs mount` (or a stale one)
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,
}

/// How long the mount waits for the homeserver before it comes up with what it knows.
const FIRST_SYNC_LIMIT: Duration = Duration::from_secs(30);

/// Whether `mount` sets up logging itself (after going to the background).
pub fn logs_itself(args: &MountArgs) -> bool {
    !args.foreground
}

pub fn mount(profile: &Profile, args: MountArgs, verbose: u8) -> anyhow::Result<()> {
    let mountpoint = mounts::check_mountpoint(&args.mountpoint)?;
    if !profile.has_session() {
        bail!("not logged in: run `d2dfs login` first");
    }
    if args.foreground {
        return serve(profile, &args, &mountpoint, None);
    }
    let log_path = profile.data_dir().join("mount.log");
    let (read_end, write_end) = pipe()?;
    // SAFETY: no thread exists yet (the runtime is built after this), so the child may do
    // anything; both sides go on with ordinary Rust.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("cannot fork"),
        0 => {
            drop(read_end);
            let outcome = daemonize(&log_path).and_then(|()| {
                super::init_logging(verbose);
                serve(profile, &args, &mountpoint, Some(write_end))
            });
            // The parent has long gone when the mount ends; errors before that went
            // through the pipe.
            std::process::exit(if outcome.is_ok() { 0 } else { 1 });
        }
        _child => {
            drop(write_end);
            let mut report = String::new();
            std::fs::File::from(read_end).read_to_string(&mut report)?;
            match report.strip_prefix("ok") {
                Some(_) => Ok(()),
                None if report.is_empty() => bail!(
                    "the mount process ended without a word; see {}",
                    log_path.display()
                ),
                None => bail!("{}", report.trim_end()),
            }
        }
    }
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot make a pipe");
    }
    // SAFETY: both were just opened and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Detaches from the terminal: new session, stdin from /dev/null, output to the log.
fn daemonize(log_path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: plain descriptor calls on descriptors we own.
    unsafe {
        libc::setsid();
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}

/// Runs the mount until a signal or an unmount; reports readiness (or the error that
/// prevented it) on `ready`.
fn serve(
    profile: &Profile,
    args: &MountArgs,
    mountpoint: &Path,
    ready: Option<OwnedFd>,
) -> anyhow::Result<()> {
    let mut ready = ready.map(std::fs::File::from);
    let result = super::runtime()
        .and_then(|runtime| runtime.block_on(run_mounted(profile, args, mountpoint, &mut ready)));
    if let (Err(error), Some(pipe)) = (&result, ready.as_mut()) {
        let _ = write!(pipe, "{error:#}");
    }
    result
}

async fn run_mounted(
    profile: &Profile,
    args: &MountArgs,
    mountpoint: &Path,
    ready: &mut Option<std::fs::File>,
) -> anyhow::Result<()> {
    let node = Node::start(
        profile,
        EngineConfig {
            lanes: args.lanes,
            ..args.trust.engine_config(args.lifetime)
        },
    )
    .await?;
    if !node.synced(FIRST_SYNC_LIMIT).await {
        warn!("the homeserver has not answered yet; mounting with what is known");
    }
    let config = FsConfig {
        data_dir: profile.data_dir().to_owned(),
        cache_dir: profile.cache_dir().to_owned(),
        cache_size: args.cache_size,
        lifetime: args.lifetime,
    };
    let core = Core::new(
        node.engine.clone(),
        &config,
        tokio::runtime::Handle::current(),
    )?;
    core.fill().await;
    let mounted = {
        let core = core.clone();
        let target = mountpoint.to_owned();
        let options = args.options.clone();
        tokio::task::spawn_blocking(move || fs::mount(core, &target, &options))
            .await?
            .with_context(|| format!("cannot mount on {}", mountpoint.display()))?
    };
    info!(mountpoint = %mountpoint.display(), user = node.account.user_id(), "mounted");
    if let Some(mut pipe) = ready.take() {
        let _ = pipe.write_all(b"ok");
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("interrupted; unmounting"); break; }
            _ = terminate.recv() => { info!("terminated; unmounting"); break; }
            _ = poll.tick() => if mounted.is_finished() { info!("unmounted"); break; },
        }
    }
    let mountpoint = mountpoint.to_owned();
    tokio::task::spawn_blocking(move || mounted.unmount(&mountpoint)).await?;
    node.engine.shutdown().await;
    drop(core);
    Ok(())
}

/// `d2dfs unmount`: asks the kernel to unmount, then waits for the mount's process to
/// finish (it sends the cancels of live transfers on the way out).
pub fn unmount(args: UnmountArgs) -> anyhow::Result<()> {
    let path = std::path::absolute(&args.mountpoint)?;
    if mounts::mounted_type(&path).is_none() {
        bail!("{} is not mounted", path.display());
    }
    let pid = read_root_xattr(&path, "user.d2dfs.pid").and_then(|p| p.parse::<i32>().ok());
    mounts::unmount(&path).with_context(|| format!("cannot unmount {}", path.display()))?;
    if let Some(pid) = pid {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// An extended attribute of a path, as text.
pub fn read_root_xattr(path: &Path, name: &str) -> Option<String> {
    super::status::xattr(path, name)
}
