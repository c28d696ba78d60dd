//! The SHA-256 of a file being written into a room, computed beside the writes.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::hex;

/// Blocks queued for the hashing thread: at 1 MiB FUSE writes, 8 MiB of memory at most, and
/// what pushes back on the writer when hashing falls behind.
const QUEUED_BLOCKS: usize = 8;

/// Hashes what it is given, in order, on a thread of its own, so that a FUSE write costs a
/// `pwrite` and a copy and not the hash too. Measured with perf during a 1 GiB `cp` into a
/// room: SHA-256 was a third of the FUSE thread's time.
pub struct BackgroundSha256 {
    blocks: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<Sha256>>,
}

impl BackgroundSha256 {
    /// `None` when no thread can be started; the caller then hashes the file afterwards.
    pub fn start() -> Option<Self> {
        let (blocks, queue) = sync_channel::<Vec<u8>>(QUEUED_BLOCKS);
        let thread = std::thread::Builder::new()
            .name("spool-sha256".to_owned())
            .spawn(move || {
                let mut hasher = Sha256::new();
                for block in queue {
                    hasher.update(&block);
                }
                hasher
            })
            .ok()?;
        Some(Self {
            blocks: Some(blocks),
            thread: Some(thread),
        })
    }

    /// Queues the next bytes of the file; `false` if the hashing thread is gone.
    pub fn update(&mut self, data: &[u8]) -> bool {
        self.blocks
            .as_ref()
            .is_some_and(|blocks| blocks.send(data.to_vec()).is_ok())
    }

    /// The hex digest of everything given, once the thread has hashed it all.
    pub fn finish(mut self) -> Option<String> {
        drop(self.blocks.take());
        let hasher = self.thread.take()?.join().ok()?;
        Some(hex::encode(&hasher.finalize()))
    }
}

impl Drop for BackgroundSha256 {
    /// Abandoned (the file was truncated, written out of order, or failed): the thread ends
    /// once its queue is empty; nobody waits for it.
    fn drop(&mut self) {
        drop(self.blocks.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_what_it_was_given_in_order() {
        let mut hasher = BackgroundSha256::start().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for block in data.chunks(1 << 20) {
            assert!(hasher.update(block));
        }
        assert_eq!(
            hasher.finish().unwrap(),
            hex::encode(&Sha256::digest(&data))
        );
    }

    #[test]
    fn an_empty_file_has_the_empty_digest() {
        let hasher = BackgroundSha256::start().unwrap();
        assert_eq!(
            hasher.finish().unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
