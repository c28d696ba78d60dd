//! Where an account's state lives on disk.
//!
//! One profile is one Matrix login on this machine: a session file (user id, device id, access
//! token, homeserver, the passphrase of the local stores) and matrix-sdk's SQLite stores (state,
//! crypto, event cache). They must stay together: restoring a device id against another crypto
//! store breaks end-to-end encryption, so both are created, used and deleted as one directory.
//!
//! Layout (XDG): `$XDG_DATA_HOME/d2dfs/<profile>/` holds `session.json` and `store/`;
//! `$XDG_CACHE_HOME/d2dfs/<profile>/` holds what can be rebuilt (spools of received data).
//! `--data-dir DIR` replaces both with `DIR` and `DIR/cache`.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the profile used when `--profile` is not given.
pub const DEFAULT_PROFILE: &str = "default";

/// Errors about the local profile directory (never about the homeserver).
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "invalid profile name {0:?}: use letters, digits, '-', '_' and '.' (not starting with '.')"
    )]
    InvalidName(String),
    #[error("cannot find a home directory for the data dir; pass --data-dir DIR")]
    NoHome,
    #[error("not logged in (profile {profile}): run `d2dfs login` first")]
    NotLoggedIn { profile: String },
    #[error(
        "the session file {path} is unreadable ({reason}); run `d2dfs logout --force` and log in again"
    )]
    CorruptSession { path: PathBuf, reason: String },
    #[error(
        "profile {profile} is in use by another d2dfs process (pid {pid}): one device, one \
         process; stop it or use another --profile"
    )]
    InUse { profile: String, pid: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError {
    let path = path.to_owned();
    move |source| ProfileError::Io {
        action,
        path,
        source,
    }
}

/// The stored login of one profile. Secret: written with mode 0600.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredSession {
    /// The homeserver base URL the session belongs to (after discovery).
    pub homeserver: String,
    pub user_id: String,
    pub device_id: String,
    pub access_token: String,
    /// Key (64 hex digits) that encrypts matrix-sdk's SQLite stores at rest.
    pub store_key: String,
}

impl std::fmt::Debug for StoredSession {
    /// Never prints the secrets, so a stray `{:?}` cannot leak them into a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSession")
            .field("homeserver", &self.homeserver)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// A profile taken by this process; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct ProfileLock {
    _file: std::fs::File,
}

/// A profile's directories.
#[derive(Debug, Clone)]
pub struct Profile {
    name: String,
    data_dir: PathBuf,
    cache_dir: PathBuf,
}

impl Profile {
    /// Resolves the profile from the command line: `--data-dir` wins over `--profile`.
    pub fn resolve(name: Option<&str>, data_dir: Option<&Path>) -> Result<Self, ProfileError> {
        let name = name.unwrap_or(DEFAULT_PROFILE);
        if !is_valid_profile_name(name) {
            return Err(ProfileError::InvalidName(name.to_owned()));
        }
        if let Some(dir) = data_dir {
            return Ok(Self {
                name: name.to_owned(),
                data_dir: dir.to_owned(),
                cache_dir: dir.join("cache"),
            });
        }
        let dirs = directories::ProjectDirs::from("", "", "d2dfs").ok_or(ProfileError::NoHome)?;
        Ok(Self {
            name: name.to_owned(),
            data_dir: dirs.data_dir().join(name),
            cache_dir: dirs.cache_dir().join(name),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// matrix-sdk's SQLite stores (state, crypto, event cache, media).
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    pub fn session_path(&self) -> PathBuf {
        self.data_dir.join("session.json")
    }

    /// Creates the data directory (mode 0700) if needed.
    pub fn ensure_data_dir(&self) -> Result<(), ProfileError> {
        create_private_dir(&self.data_dir)?;
        create_private_dir(&self.store_dir())
    }

    /// Reads the stored session, or `NotLoggedIn` when there is none.
    pub fn load_session(&self) -> Result<StoredSession, ProfileError> {
        let path = self.session_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProfileError::NotLoggedIn {
                    profile: self.name.clone(),
                });
            }
            Err(e) => return Err(io_error("cannot read", &path)(e)),
        };
        serde_json::from_str(&text).map_err(|e| ProfileError::CorruptSession {
            path,
            reason: e.to_string(),
        })
    }

    /// Whether a session file exists (a login is stored).
    /// Takes the profile for this process (mount, send, recv): two processes driving one
    /// device and one crypto store would corrupt its encryption sessions. Held until the
    /// returned lock is dropped.
    pub fn lock(&self) -> Result<ProfileLock, ProfileError> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        self.ensure_data_dir()?;
        let path = self.data_dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("cannot open", &path))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(ProfileError::InUse {
                profile: self.name.clone(),
                pid: pid.trim().to_owned(),
            });
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(ProfileLock { _file: file })
    }

    pub fn has_session(&self) -> bool {
        self.session_path().exists()
    }

    /// Writes the session atomically with mode 0600.
    pub fn save_session(&self, session: &StoredSession) -> Result<(), ProfileError> {
        self.ensure_data_dir()?;
        let path = self.session_path();
        let tmp = self.data_dir.join(".session.json.tmp");
        let json = serde_json::to_vec_pretty(session).map_err(|e| ProfileError::Io {
            action: "cannot encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error("cannot create", &tmp))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(io_error("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_error("cannot rename", &path))
    }

    /// Makes every file under the store directory private (0600).
    ///
    /// matrix-sdk creates its SQLite files with the process umask; they hold keys and tokens.
    pub fn restrict_store_permissions(&self) -> Result<(), ProfileError> {
        restrict_tree(&self.store_dir())
    }

    /// Deletes the session and the stores (the whole data dir) and the cache dir.
    pub fn forget(&self) -> Result<(), ProfileError> {
        for dir in [&self.data_dir, &self.cache_dir] {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("cannot remove", dir)(e)),
            }
        }
        Ok(())
    }
}

fn is_valid_profile_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn create_private_dir(dir: &Path) -> Result<(), ProfileError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("cannot create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_error("cannot set permissions of", dir))
}

fn restrict_tree(dir: &Path) -> Result<(), ProfileError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("cannot list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("cannot list", dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_error("cannot stat", &path))?;
        if file_type.is_dir() {
            create_private_dir(&path)?;
            restrict_tree(&path)?;
        } else if file_type.is_file() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(io_error("cannot set permissions of", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_are_checked() {
        for ok in ["default", "alice", "work-2", "a.b_c"] {
            assert!(is_valid_profile_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_profile_name(bad), "{bad}");
        }
    }

    #[test]
    fn session_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::resolve(Some("t"), Some(dir.path())).unwrap();
        assert!(matches!(
            profile.load_session(),
            Err(ProfileError::NotLoggedIn { .. })
        ));
        let session = StoredSession {
            homeserver: "http://127.0.0.1:1".into(),
            user_id: "@a:localhost".into(),
            device_id: "DEV".into(),
            access_token: "secret-token".into(),
            store_key: "secret-key".into(),
        };
        profile.save_session(&session).unwrap();
        let mode = fs::metadata(profile.session_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(profile.data_dir())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let loaded = profile.load_session().unwrap();
        assert_eq!(loaded.device_id, "DEV");
        assert_eq!(loaded.access_token, "secret-token");
        let debug = format!("{loaded:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn corrupt_session_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::resolve(None, Some(dir.path())).unwrap();
        profile.ensure_data_dir().unwrap();
        fs::write(profile.session_path(), b"{not json").unwrap();
        let err = profile.load_session().unwrap_err();
        assert!(err.to_string().contains("logout --force"), "{err}");
    }
}
