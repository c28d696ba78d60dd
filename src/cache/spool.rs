//! Stream-mode receive: a plain MSC2354 sender pushes the whole file once, in order, and its
//! bytes cannot be asked for again. They go to a sparse file on disk, not to memory; reads
//! behind the stream are served from that file, reads ahead of it wait for it, and the file
//! is removed when the last handle goes away.
//!
//! The last bytes of the file are held back until the writer calls [`SpoolWriter::finish`]:
//! the receiver checks the whole-file digest first, so a reader never sees a complete file
//! whose digest did not match.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::SourceError;

/// How far the stream got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    /// This many bytes are on disk.
    Receiving(u64),
    /// Every byte is on disk.
    Complete,
    /// The stream broke after this many bytes.
    Failed(u64, String),
}

struct Inner {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    progress: watch::Sender<Progress>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The writing end (the data channel's receiver).
pub struct SpoolWriter {
    inner: Arc<Inner>,
    written: u64,
}

/// A reading end; clone freely.
#[derive(Clone)]
pub struct SpoolReader {
    inner: Arc<Inner>,
}

/// Creates the spool for a `size`-byte file at `path` (in the cache directory).
pub fn create(path: &Path, size: u64) -> std::io::Result<(SpoolWriter, SpoolReader)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    file.set_len(size)?; // sparse: no blocks until written
    let (progress, _) = watch::channel(Progress::Receiving(0));
    let inner = Arc::new(Inner {
        path: path.to_owned(),
        file,
        size,
        progress,
    });
    Ok((
        SpoolWriter {
            inner: inner.clone(),
            written: 0,
        },
        SpoolReader { inner },
    ))
}

impl SpoolWriter {
    /// Appends the next bytes of the stream.
    pub async fn append(&mut self, data: Bytes) -> Result<(), SourceError> {
        if self.written + data.len() as u64 > self.inner.size {
            let error = format!(
                "the sender sent more than the offered {} bytes",
                self.inner.size
            );
            self.fail(&error);
            return Err(SourceError(error));
        }
        let inner = self.inner.clone();
        let offset = self.written;
        let result = tokio::task::spawn_blocking(move || {
            inner.file.write_all_at(&data, offset).map(|()| data.len())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match result {
            Ok(n) => {
                self.written += n as u64;
                self.inner
                    .progress
                    .send_replace(Progress::Receiving(self.written));
                Ok(())
            }
            Err(error) => {
                let error = format!("cannot write the spool: {error}");
                self.fail(&error);
                Err(SourceError(error))
            }
        }
    }

    /// Every byte arrived and was checked: release the end of the file to readers.
    pub fn finish(&self) -> Result<(), SourceError> {
        if self.written != self.inner.size {
            let error = format!(
                "the stream ended after {} of {} bytes",
                self.written, self.inner.size
            );
            self.fail(&error);
            return Err(SourceError(error));
        }
        self.inner.progress.send_replace(Progress::Complete);
        Ok(())
    }

    /// The stream ended or broke: readers waiting beyond what arrived get `reason`.
    pub fn fail(&self, reason: &str) {
        self.inner.progress.send_if_modified(|progress| {
            if *progress == Progress::Complete {
                return false;
            }
            *progress = Progress::Failed(self.written, reason.to_owned());
            true
        });
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The offered size.
    pub fn size(&self) -> u64 {
        self.inner.size
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        self.fail("the stream ended early");
    }
}

impl SpoolReader {
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// Bytes on disk so far.
    pub fn received(&self) -> u64 {
        match &*self.inner.progress.borrow() {
            Progress::Receiving(n) | Progress::Failed(n, _) => *n,
            Progress::Complete => self.inner.size,
        }
    }

    /// Every byte arrived and was checked.
    pub fn is_complete(&self) -> bool {
        *self.inner.progress.borrow() == Progress::Complete
    }

    /// Why the stream broke, if it did.
    pub fn failure(&self) -> Option<String> {
        match &*self.inner.progress.borrow() {
            Progress::Failed(_, reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// The bytes `[offset, offset + length)` (cut at the end of the file), once they arrived.
    pub async fn read(&self, offset: u64, length: u64) -> Result<Bytes, SourceError> {
        let end = offset.saturating_add(length).min(self.inner.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let mut progress = self.inner.progress.subscribe();
        let ready = progress
            .wait_for(|p| match p {
                // The file's last byte waits for `finish` (the digest check).
                Progress::Receiving(n) => *n >= end && end < self.inner.size,
                Progress::Complete | Progress::Failed(..) => true,
            })
            .await
            .map_err(|_| SourceError("the spool is gone".to_owned()))?
            .clone();
        if let Progress::Failed(received, reason) = ready
            && received < end
        {
            return Err(SourceError(reason));
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; (end - offset) as usize];
            inner
                .file
                .read_exact_at(&mut buffer, offset)
                .map(|()| Bytes::from(buffer))
        })
        .await
        .map_err(|e| SourceError(e.to_string()))?
        .map_err(|e| SourceError(format!("cannot read the spool: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reads_wait_for_the_stream_and_then_come_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let (mut writer, reader) = create(&path, data.len() as u64).unwrap();
        let ahead = {
            let reader = reader.clone();
            tokio::spawn(async move { reader.read(250_000, 50_000).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!ahead.is_finished(), "a read ahead of the stream waits");
        for block in data.chunks(16_384) {
            writer.append(Bytes::copy_from_slice(block)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!ahead.is_finished(), "the end waits for the digest check");
        writer.finish().unwrap();
        assert_eq!(&ahead.await.unwrap().unwrap()[..], &data[250_000..]);
        assert_eq!(&reader.read(0, 10).await.unwrap()[..], &data[..10]);
        assert_eq!(reader.read(299_990, 100).await.unwrap().len(), 10);
        drop(writer);
        drop(reader);
        assert!(!path.exists(), "the spool is removed with its last handle");
    }

    #[tokio::test]
    async fn a_broken_stream_fails_the_reads_beyond_it_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, reader) = create(&dir.path().join("spool"), 1000).unwrap();
        writer.append(Bytes::from(vec![1u8; 400])).await.unwrap();
        let waiting = {
            let reader = reader.clone();
            tokio::spawn(async move { reader.read(500, 10).await })
        };
        writer.fail("connection lost");
        assert_eq!(
            waiting.await.unwrap(),
            Err(SourceError("connection lost".to_owned()))
        );
        assert_eq!(reader.read(0, 400).await.unwrap().len(), 400);
        assert!(
            writer.append(Bytes::from(vec![0u8; 700])).await.is_err(),
            "too much"
        );
    }
}
