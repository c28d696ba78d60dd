//! The chunk cache: reading an offered file on demand, fast and in bounded memory.
//!
//! A [`ChunkCache`] is shared by every open transfer. Files are cut into fixed-size chunks
//! (1 MiB by default) fetched from a [`Source`]; the cache keeps them in least-recently-used
//! order within a byte budget. Its rules:
//!
//! - **One fetch per chunk**: readers that want a chunk already on its way wait for that fetch.
//! - **Nothing is evicted under a reader**: a chunk handed out is an `Arc`; only chunks no one
//!   else holds are evicted.
//! - **Failures are not cached**: a failed fetch reaches every waiting reader as an error and
//!   is forgotten, so the next read tries again (after a reconnect, say).
//! - **The bound always holds**: the budget counts cached chunks *and* the chunks being
//!   fetched, which reserve their space before the fetch starts. A demand read waits for
//!   space; read-ahead never waits, it just doesn't happen.
//!
//! Read-ahead is per open file ([`readahead`]); stream-mode transfers, whose bytes cannot be
//! asked for again, go to a [`spool`] on disk instead.

pub mod fake_source;
pub mod readahead;
pub mod source;
pub mod spool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::{Notify, watch};

use self::readahead::{ReadAhead, ReadAheadConfig};
pub use self::source::{Source, SourceError};

/// Sizes that shape the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The memory budget in bytes, in-flight fetches included.
    pub capacity: u64,
    /// Bytes per chunk (and per fetch).
    pub chunk_size: u64,
    /// Read-ahead tuning.
    pub readahead: ReadAheadConfig,
}

impl CacheConfig {
    /// A cache of `capacity` bytes with 1 MiB chunks and read-ahead up to a quarter of it.
    pub fn with_capacity(capacity: u64) -> Self {
        let chunk_size = 1 << 20;
        // Two chunks at least: a reader holds one while the next is fetched.
        let capacity = capacity.max(2 * chunk_size);
        Self {
            capacity,
            chunk_size,
            readahead: ReadAheadConfig {
                initial: chunk_size,
                max: (capacity / 4).clamp(chunk_size, 64 << 20),
            },
        }
    }
}

type Key = (u64, u64); // (file, chunk index)
type Arrival = Option<Result<Arc<Chunk>, SourceError>>;

/// One chunk's bytes.
#[derive(Debug)]
struct Chunk {
    data: Bytes,
}

#[derive(Default)]
struct State {
    /// Cached chunks, least recently used first out. Unbounded by count; bounded by `used`.
    chunks: Option<LruCache<Key, Arc<Chunk>>>,
    /// Chunks on their way, with the channel their readers wait on.
    in_flight: HashMap<Key, watch::Receiver<Arrival>>,
    /// Bytes of cached chunks plus bytes reserved for fetches in flight.
    used: u64,
    next_file: u64,
}

impl State {
    fn chunks(&mut self) -> &mut LruCache<Key, Arc<Chunk>> {
        self.chunks.get_or_insert_with(LruCache::unbounded)
    }
}

/// Counters, for tests and `d2dfs status`.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Largest `used` ever seen.
    pub peak_bytes: AtomicU64,
    /// Fetches started (demand and read-ahead).
    pub fetches: AtomicU64,
    /// Bytes asked of sources.
    pub fetched_bytes: AtomicU64,
    /// Reads answered without waiting for a fetch.
    pub hits: AtomicU64,
}

struct Shared {
    config: CacheConfig,
    state: Mutex<State>,
    /// Signalled whenever space may have been freed.
    space: Notify,
    stats: CacheStats,
}

/// The cache shared by all open files. Cheap to clone.
#[derive(Clone)]
pub struct ChunkCache {
    shared: Arc<Shared>,
}

impl ChunkCache {
    pub fn new(config: CacheConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::default()),
                space: Notify::new(),
                stats: CacheStats::default(),
            }),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> &CacheStats {
        &self.shared.stats
    }

    /// Bytes held now (cached plus reserved).
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Opens `source` for reading through this cache.
    pub fn open(&self, source: Arc<dyn Source>) -> CachedFile {
        let id = {
            let mut state = self.lock();
            state.next_file += 1;
            state.next_file
        };
        CachedFile {
            cache: self.clone(),
            id,
            source,
            readahead: Mutex::new(ReadAhead::new(self.shared.config.readahead.clone())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes room for `bytes` more by evicting unreferenced chunks; false if it can't.
    fn reserve(&self, state: &mut State, bytes: u64) -> bool {
        let capacity = self.shared.config.capacity;
        while state.used + bytes > capacity {
            let victim = state
                .chunks()
                .iter()
                .rev()
                .find(|(_, chunk)| Arc::strong_count(chunk) == 1)
                .map(|(key, _)| *key);
            let Some(key) = victim else {
                return false;
            };
            if let Some(chunk) = state.chunks().pop(&key) {
                state.used -= chunk.data.len() as u64;
            }
        }
        state.used += bytes;
        self.shared
            .stats
            .peak_bytes
            .fetch_max(state.used, Ordering::Relaxed);
        true
    }

    /// The chunk `index` of `file`: cached, joined in flight, or fetched. `wait_for_space`
    /// is false for read-ahead, which gives up instead of waiting for room.
    async fn chunk(
        &self,
        file: &CachedFile,
        index: u64,
        wait_for_space: bool,
    ) -> Option<Result<Arc<Chunk>, SourceError>> {
        let key = (file.id, index);
        let mut arrival = loop {
            let space = self.shared.space.notified();
            {
                let mut state = self.lock();
                if let Some(chunk) = state.chunks().get(&key) {
                    if wait_for_space {
                        self.shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                    }
                    return Some(Ok(chunk.clone()));
                }
                if let Some(receiver) = state.in_flight.get(&key) {
                    break receiver.clone();
                }
                let length = file.chunk_len(index);
                if self.reserve(&mut state, length) {
                    let (sender, receiver) = watch::channel(None);
                    state.in_flight.insert(key, receiver.clone());
                    drop(state);
                    self.start_fetch(file, index, length, sender);
                    break receiver;
                }
            }
            if !wait_for_space {
                return None;
            }
            space.await;
        };
        if !wait_for_space {
            return None; // read-ahead only starts fetches; it never waits for them
        }
        let arrived = arrival.wait_for(Option::is_some).await;
        match arrived {
            Ok(value) => value.clone(),
            Err(_) => Some(Err(SourceError("the fetch was abandoned".to_owned()))),
        }
    }

    fn start_fetch(
        &self,
        file: &CachedFile,
        index: u64,
        length: u64,
        done: watch::Sender<Arrival>,
    ) {
        let cache = self.clone();
        let source = file.source.clone();
        let key = (file.id, index);
        let offset = index * self.shared.config.chunk_size;
        self.shared.stats.fetches.fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .fetched_bytes
            .fetch_add(length, Ordering::Relaxed);
        tokio::spawn(async move {
            let result = source.fetch(offset, length).await.and_then(|data| {
                if data.len() as u64 == length {
                    Ok(Arc::new(Chunk { data }))
                } else {
                    Err(SourceError(format!(
                        "the source returned {} of {length} bytes",
                        data.len()
                    )))
                }
            });
            {
                let mut state = cache.lock();
                state.in_flight.remove(&key);
                match &result {
                    Ok(chunk) => {
                        state.chunks().put(key, chunk.clone());
                    }
                    Err(_) => state.used -= length,
                }
            }
            cache.shared.space.notify_waiters();
            let _ = done.send(Some(result));
        });
    }

    /// Drops every cached chunk of `file` (it was closed).
    fn forget(&self, file: u64) {
        {
            let mut state = self.lock();
            let keys: Vec<Key> = state
                .chunks()
                .iter()
                .filter(|(key, _)| key.0 == file)
                .map(|(key, _)| *key)
                .collect();
            for key in keys {
                if let Some(chunk) = state.chunks().pop(&key) {
                    state.used -= chunk.data.len() as u64;
                }
            }
        }
        self.shared.space.notify_waiters();
    }
}

/// One file read through the cache.
pub struct CachedFile {
    cache: ChunkCache,
    id: u64,
    source: Arc<dyn Source>,
    readahead: Mutex<ReadAhead>,
}

impl CachedFile {
    pub fn size(&self) -> u64 {
        self.source.size()
    }

    fn chunk_len(&self, index: u64) -> u64 {
        let chunk = self.cache.shared.config.chunk_size;
        (self.size() - index * chunk).min(chunk)
    }

    /// The bytes `[offset, offset + length)`, cut at the end of the file (empty past it).
    pub async fn read(&self, offset: u64, length: u64) -> Result<Bytes, SourceError> {
        self.read_with(offset, length, true).await
    }

    /// Like [`read`](Self::read), but unseen by read-ahead: for a second reader trailing
    /// the first (the digest check) that must not disturb its window.
    pub async fn read_quietly(&self, offset: u64, length: u64) -> Result<Bytes, SourceError> {
        self.read_with(offset, length, false).await
    }

    async fn read_with(
        &self,
        offset: u64,
        length: u64,
        readahead: bool,
    ) -> Result<Bytes, SourceError> {
        let size = self.size();
        let end = offset.saturating_add(length).min(size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let prefetch = readahead
            .then(|| {
                self.readahead
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_read(offset, end - offset)
            })
            .flatten();
        if let Some((from, to)) = prefetch {
            self.prefetch(from, to.min(size)).await;
        }
        let chunk_size = self.cache.shared.config.chunk_size;
        let first = offset / chunk_size;
        if first == (end - 1) / chunk_size {
            // Inside one chunk (every aligned kernel read is): the chunk's own memory, no copy
            // and no allocation. The caller drops it once replied; what it keeps longer it
            // copies (the digest's stash does), or it would pin an evicted chunk.
            let chunk = self.demand(first).await?;
            let to = (end - first * chunk_size).min(chunk.data.len() as u64) as usize;
            let from = ((offset - first * chunk_size) as usize).min(to);
            return Ok(chunk.data.slice(from..to));
        }
        // Across chunks: copied out, so no chunk is referenced once the read is over.
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for index in first..=(end - 1) / chunk_size {
            let chunk = self.demand(index).await?;
            let chunk_start = index * chunk_size;
            let from = offset.max(chunk_start) - chunk_start;
            let to = end.min(chunk_start + chunk.data.len() as u64) - chunk_start;
            out.extend_from_slice(&chunk.data[from as usize..to as usize]);
        }
        Ok(out.freeze())
    }

    async fn demand(&self, index: u64) -> Result<Arc<Chunk>, SourceError> {
        self.cache
            .chunk(self, index, true)
            .await
            .unwrap_or_else(|| Err(SourceError("no room in the cache".to_owned())))
    }

    /// Starts fetches for the chunks covering `[from, to)` that are not there yet.
    async fn prefetch(&self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let chunk_size = self.cache.shared.config.chunk_size;
        for index in from / chunk_size..=(to - 1) / chunk_size {
            // Returns at once: read-ahead neither waits for room nor for data.
            let _ = self.cache.chunk(self, index, false).await;
        }
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        self.cache.forget(self.id);
    }
}

#[cfg(test)]
mod tests;
