//! Where the cache gets bytes from: anything that can fetch a range of one file.

use async_trait::async_trait;
use bytes::Bytes;

/// Why a fetch failed. Cloned to every reader that waited for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// A file whose bytes are fetched on demand (the range protocol implements it; tests use
/// fakes).
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// Size of the file.
    fn size(&self) -> u64;
    /// The bytes `[offset, offset + length)`, all of them, inside the file.
    async fn fetch(&self, offset: u64, length: u64) -> Result<Bytes, SourceError>;
}

#[async_trait]
impl Source for crate::transfer::range::RangeSource {
    fn size(&self) -> u64 {
        crate::transfer::range::RangeSource::size(self)
    }

    async fn fetch(&self, offset: u64, length: u64) -> Result<Bytes, SourceError> {
        crate::transfer::range::RangeSource::fetch(self, offset, length)
            .await
            .map_err(|e| SourceError(e.to_string()))
    }
}
