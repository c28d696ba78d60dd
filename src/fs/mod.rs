//! The filesystem: joined rooms as directories, offers as files (SPEC §3).
//!
//! - [`tree`]: the inode table, plain data.
//! - [`core`]: the logic: follows the engine, carries out what users do; no FUSE types
//!   beyond attributes and errnos.
//! - [`fuse`]: the thin fuser adapter; network waits are answered from tasks.
//! - [`reader`]: reading a placeholder through the chunk cache or the stream spool, with
//!   the digest check.
//! - [`shares`]: own offers on disk, so they survive a restart.
//! - [`digest`]: the SHA-256 of a file being written, computed beside the writes.
//! - [`names`]: hostile file names made safe.
//! - [`mounts`]: mount points: stale ones, unmounting.

pub mod core;
pub mod digest;
pub mod fuse;
pub mod mounts;
pub mod names;
pub mod reader;
pub mod shares;
pub mod tree;

use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

pub use self::core::{Core, FsConfig};

/// A live mount: the kernel session running in its thread.
pub struct Mounted {
    session: fuser::BackgroundSession,
}

impl Mounted {
    /// The kernel ended the session (someone unmounted it).
    pub fn is_finished(&self) -> bool {
        self.session.guard.is_finished()
    }

    /// Unmounts (lazily if busy) and waits for the session thread.
    pub fn unmount(self, mountpoint: &Path) {
        if !self.is_finished()
            && let Err(error) = mounts::unmount(mountpoint)
        {
            tracing::warn!(%error, "unmount failed");
        }
        let _ = self.session.join();
    }
}

/// Mounts `core` at `mountpoint` with `-o` style `options`, and starts following the engine.
pub fn mount(core: Arc<Core>, mountpoint: &Path, options: &[String]) -> std::io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(mounts::FSNAME.to_owned()),
        MountOption::Subtype(mounts::FSNAME.to_owned()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    for option in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        match option {
            "allow_other" => config.acl = SessionACL::All,
            "allow_root" => config.acl = SessionACL::RootAndOwner,
            "ro" => config.mount_options.push(MountOption::RO),
            "noexec" => config.mount_options.push(MountOption::NoExec),
            "exec" => config.mount_options.push(MountOption::Exec),
            "noatime" => config.mount_options.push(MountOption::NoAtime),
            "default_permissions" => config.mount_options.push(MountOption::DefaultPermissions),
            other => config
                .mount_options
                .push(MountOption::CUSTOM(other.to_owned())),
        }
    }
    let session = fuser::Session::new(fuse::D2dFs::new(core.clone()), mountpoint, &config)?;
    let notifier = session.notifier();
    let session = session.spawn()?;
    mounts::raise_readahead(mountpoint);
    let runtime = core.runtime().clone();
    runtime.spawn(async move { core.follow_with(notifier).await });
    Ok(Mounted { session })
}
