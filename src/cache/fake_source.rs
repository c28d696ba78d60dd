//! A [`Source`] for tests and benchmarks: deterministic bytes behind a simulated link with
//! latency, shared bandwidth and injectable failures, counting what is asked of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Source, SourceError};

/// The byte at `offset` of every fake file: cheap, and differs between nearby offsets.
pub fn byte_at(offset: u64) -> u8 {
    (offset.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// A fake remote file.
pub struct FakeSource {
    size: u64,
    /// Added to every fetch (round trip).
    pub latency: Duration,
    /// Bytes per second of the link all fetches share; `None` is infinitely fast.
    pub bandwidth: Option<u64>,
    link: tokio::sync::Mutex<()>,
    fail_next: AtomicU64,
    /// Fetches made.
    pub fetches: AtomicU64,
    /// Bytes asked for.
    pub fetched_bytes: AtomicU64,
}

impl FakeSource {
    pub fn new(size: u64) -> Self {
        Self {
            size,
            latency: Duration::ZERO,
            bandwidth: None,
            link: tokio::sync::Mutex::new(()),
            fail_next: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        }
    }

    pub fn with_link(mut self, latency: Duration, bandwidth: Option<u64>) -> Self {
        self.latency = latency;
        self.bandwidth = bandwidth;
        self
    }

    /// The next `count` fetches fail.
    pub fn fail_next(&self, count: u64) {
        self.fail_next.store(count, Ordering::SeqCst);
    }

    /// The expected contents of `[offset, offset + length)`.
    pub fn expected(offset: u64, length: u64) -> Vec<u8> {
        (offset..offset + length).map(byte_at).collect()
    }
}

#[async_trait]
impl Source for FakeSource {
    fn size(&self) -> u64 {
        self.size
    }

    async fn fetch(&self, offset: u64, length: u64) -> Result<Bytes, SourceError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.fetched_bytes.fetch_add(length, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if let Some(bandwidth) = self.bandwidth {
            // One transmission at a time over the shared link.
            let _link = self.link.lock().await;
            tokio::time::sleep(Duration::from_secs_f64(length as f64 / bandwidth as f64)).await;
        }
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(SourceError("injected failure".to_owned()));
        }
        if offset.checked_add(length).is_none_or(|end| end > self.size) {
            return Err(SourceError("outside the file".to_owned()));
        }
        Ok(Bytes::from(Self::expected(offset, length)))
    }
}
