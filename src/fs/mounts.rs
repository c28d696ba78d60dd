//! Mount points: is one already (or stale-ly) mounted, unmounting, kernel read-ahead.

use std::path::{Path, PathBuf};

/// Why a directory cannot be mounted on.
#[derive(Debug, thiserror::Error)]
pub enum MountPointError {
    #[error("{0}: no such directory")]
    Missing(PathBuf),
    #[error("{0} is not a directory")]
    NotDirectory(PathBuf),
    #[error(
        "{0} is a stale mount (the d2dfs process behind it is gone: \"Transport endpoint is \
         not connected\"); run `d2dfs unmount {0}` (or `fusermount3 -u {0}`) and mount again"
    )]
    Stale(PathBuf),
    #[error("{0} is already mounted ({1}); run `d2dfs unmount {0}` first")]
    Busy(PathBuf, String),
}

/// The filesystem type mounted at `path`, from `/proc/mounts` (which, unlike `stat`, is
/// right about dead FUSE mounts).
pub fn mounted_type(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let wanted = path.to_str()?;
    mounts.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let _source = fields.next()?;
        let target = unescape(fields.next()?);
        let fstype = fields.next()?;
        (target == wanted).then(|| fstype.to_owned())
    })
}

/// Every d2dfs mount on this machine.
pub fn d2dfs_mounts() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let source = fields.next()?;
            let target = unescape(fields.next()?);
            let fstype = fields.next()?;
            // `fuse.d2dfs` through fusermount3; plain `fuse` when root mounts directly.
            (source == FSNAME && fstype.starts_with("fuse")).then(|| PathBuf::from(target))
        })
        .collect()
}

/// The source d2dfs mounts show in `/proc/mounts`.
pub const FSNAME: &str = "d2dfs";

/// Whether `path` is a d2dfs mount.
pub fn is_d2dfs_mount(path: &Path) -> bool {
    d2dfs_mounts().iter().any(|m| m == path)
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Checks that `path` can be mounted on; returns its absolute form.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, MountPointError> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    if let Some(fstype) = mounted_type(&absolute) {
        return match std::fs::metadata(&absolute) {
            Err(error) if error.raw_os_error() == Some(libc::ENOTCONN) => {
                Err(MountPointError::Stale(absolute))
            }
            _ => Err(MountPointError::Busy(absolute, fstype)),
        };
    }
    match std::fs::metadata(&absolute) {
        Err(error) if error.raw_os_error() == Some(libc::ENOTCONN) => {
            Err(MountPointError::Stale(absolute))
        }
        Err(_) => Err(MountPointError::Missing(absolute)),
        Ok(metadata) if !metadata.is_dir() => Err(MountPointError::NotDirectory(absolute)),
        Ok(_) => std::fs::canonicalize(&absolute).map_err(|_| MountPointError::Missing(absolute)),
    }
}

/// Unmounts `path`: `umount2` as root, `fusermount3 -u` otherwise; lazily when busy (the
/// kernel detaches it now and finishes when the last user lets go).
pub fn unmount(path: &Path) -> std::io::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EBUSY) {
            return Err(error);
        }
        // SAFETY: as above.
        if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
            return Ok(());
        }
        return Err(std::io::Error::last_os_error());
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()?;
    if status.success() {
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(path)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u {} failed",
            path.display()
        )))
    }
}

/// Raises the kernel's read-ahead for the mount to 1 MiB (it offers 128 KiB at init):
/// bigger reads, fewer round trips. Needs root; harmless to skip.
pub fn raise_readahead(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    let dev = metadata.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(error) = std::fs::write(&knob, "1024") {
        tracing::debug!(%error, knob, "read-ahead left at the kernel's default");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_fields_are_unescaped() {
        assert_eq!(unescape("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
    }

    #[test]
    fn a_plain_directory_can_be_mounted_on() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_mountpoint(dir.path()).is_ok());
        assert!(matches!(
            check_mountpoint(&dir.path().join("missing")),
            Err(MountPointError::Missing(_))
        ));
        assert!(matches!(
            check_mountpoint(Path::new("/proc")),
            Err(MountPointError::Busy(..))
        ));
    }
}
