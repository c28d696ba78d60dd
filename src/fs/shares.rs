//! Own offers kept on disk so they survive a restart of the mount.
//!
//! Layout, in the profile's data directory:
//!
//! ```text
//! outgoing/<id>.data   the bytes written into the room directory (spooled offers)
//! outgoing/<id>.json   the record: room, name, size, digest, deadline, where the bytes are
//! ```
//!
//! A record is written once the file is complete (on close) and removed when the offer ends
//! for good (`rm`, taken, expired, rejected). At mount the live records are offered again;
//! data files without a record (a crash mid-write) are removed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// Where an offer's bytes live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bytes {
    /// In the spool, `outgoing/<id>.data`.
    Spool,
    /// In a file of the user's (`ln -s /abs/file ROOMDIR/`).
    Link(PathBuf),
}

/// One own offer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub room_id: String,
    pub name: String,
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
    pub created_ms: u64,
    /// When the offer ends (milliseconds since the epoch).
    pub deadline_ms: u64,
    pub bytes: Bytes,
    /// The transfer it was last offered as: withdrawn (cancelled) when a mount that did not
    /// shut down cleanly offers it again, so receivers do not wait on a dead offer.
    #[serde(default)]
    pub transfer_id: Option<String>,
}

/// The `outgoing/` directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, mode 0700) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = data_dir.join("outgoing");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the spooled bytes of offer `id` go.
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.data"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Where the bytes of `record` are.
    pub fn bytes_path(&self, record: &Record) -> PathBuf {
        match &record.bytes {
            Bytes::Spool => self.data_path(&record.id),
            Bytes::Link(path) => path.clone(),
        }
    }

    /// Stores `record` (atomically: written aside, then renamed).
    pub fn save(&self, record: &Record) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.record_path(&record.id);
        let temporary = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    }

    /// Forgets offer `id`: the record, so it is not offered again.
    pub fn forget(&self, id: &str) {
        let _ = std::fs::remove_file(self.record_path(id));
    }

    /// Frees offer `id`'s spooled bytes.
    pub fn free(&self, id: &str) {
        let _ = std::fs::remove_file(self.data_path(id));
    }

    /// The records of offers still live at `now_ms`; expired ones and orphaned data files
    /// are removed.
    pub fn load_live(&self, now_ms: u64) -> Vec<Record> {
        let mut live = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return live;
        };
        let mut data_files = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => match read_record(&path) {
                    Some(record) if record.deadline_ms > now_ms => live.push(record),
                    Some(record) => {
                        self.forget(&record.id);
                        self.free(&record.id);
                    }
                    None => {
                        warn!(path = %path.display(), "unreadable offer record; removed");
                        let _ = std::fs::remove_file(&path);
                    }
                },
                Some("data") => data_files.push(path),
                _ => {}
            }
        }
        for path in data_files {
            let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if !live.iter().any(|r| r.id == id) {
                let _ = std::fs::remove_file(&path);
            }
        }
        live.sort_by_key(|r| r.created_ms);
        live
    }
}

fn read_record(path: &Path) -> Option<Record> {
    let text = std::fs::read(path).ok()?;
    let record: Record = serde_json::from_slice(&text).ok()?;
    // Ids name files: only what we generate (hex) is accepted back.
    record
        .id
        .chars()
        .all(|c| c.is_ascii_hexdigit())
        .then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, deadline_ms: u64) -> Record {
        Record {
            id: id.to_owned(),
            room_id: "!r:example.org".to_owned(),
            name: "a.txt".to_owned(),
            size: 3,
            sha256: "00".repeat(32),
            created_ms: 1,
            deadline_ms,
            bytes: Bytes::Spool,
            transfer_id: None,
        }
    }

    #[test]
    fn live_records_come_back_and_the_rest_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&record("aa", 2000)).unwrap();
        std::fs::write(store.data_path("aa"), b"abc").unwrap();
        store.save(&record("bb", 500)).unwrap();
        std::fs::write(store.data_path("bb"), b"abc").unwrap();
        std::fs::write(store.data_path("cc"), b"orphan").unwrap();
        std::fs::write(store.dir().join("dd.json"), b"{not json").unwrap();
        let live = store.load_live(1000);
        assert_eq!(live, vec![record("aa", 2000)]);
        assert!(store.data_path("aa").exists());
        assert!(!store.data_path("bb").exists(), "expired: bytes freed");
        assert!(!store.data_path("cc").exists(), "orphan removed");
        assert!(!store.dir().join("dd.json").exists());
    }
}
