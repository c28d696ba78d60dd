//! The cache against a fake source: correctness under any reads, and the bounds it promises.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proptest::prelude::*;

use super::fake_source::FakeSource;
use super::*;

const MIB: u64 = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A cache whose read-ahead is off: for tests of what demand reads do.
fn without_readahead(capacity: u64) -> ChunkCache {
    let mut config = CacheConfig::with_capacity(capacity);
    config.readahead = super::readahead::ReadAheadConfig { initial: 0, max: 0 };
    ChunkCache::new(config)
}

fn check(got: &[u8], offset: u64, length: u64, size: u64) {
    let end = (offset + length).min(size);
    let expected = FakeSource::expected(offset.min(end), end.saturating_sub(offset));
    assert!(
        got == expected.as_slice(),
        "wrong bytes for {offset}+{length}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random, sequential, overlapping and concurrent reads all return the source's bytes.
    #[test]
    fn any_reads_return_the_sources_bytes(
        size in 1u64..12 * MIB,
        capacity in 2u64..6,
        batches in prop::collection::vec(
            prop::collection::vec((0u64..13 * MIB, 0u64..3 * MIB), 1..6),
            1..8,
        ),
    ) {
        runtime().block_on(async {
            let cache = ChunkCache::new(CacheConfig::with_capacity(capacity * MIB));
            let source = Arc::new(FakeSource::new(size).with_link(Duration::from_micros(200), None));
            let file = Arc::new(cache.open(source));
            for batch in batches {
                let reads: Vec<_> = batch
                    .into_iter()
                    .map(|(offset, length)| {
                        let file = file.clone();
                        tokio::spawn(async move { (offset, length, file.read(offset, length).await) })
                    })
                    .collect();
                for read in reads {
                    let (offset, length, got) = read.await.unwrap();
                    check(&got.unwrap(), offset, length, size);
                }
            }
            assert!(cache.stats().peak_bytes.load(Ordering::Relaxed) <= cache.config().capacity);
        });
    }
}

#[test]
fn memory_stays_within_the_budget_reading_twenty_times_the_cache() {
    runtime().block_on(async {
        let capacity = 4 * MIB;
        let size = 20 * capacity;
        let cache = ChunkCache::new(CacheConfig::with_capacity(capacity));
        let source = Arc::new(FakeSource::new(size).with_link(Duration::from_millis(1), None));
        let file = cache.open(source.clone());
        let mut offset = 0;
        while offset < size {
            let got = file.read(offset, 128 << 10).await.unwrap();
            if offset % (7 * MIB) < (128 << 10) {
                check(&got, offset, 128 << 10, size);
            }
            offset += 128 << 10;
        }
        let peak = cache.stats().peak_bytes.load(Ordering::Relaxed);
        assert!(
            peak <= capacity,
            "peak {peak} over the {capacity}-byte budget"
        );
        // Read-ahead did not fetch the file twice over.
        assert!(source.fetched_bytes.load(Ordering::Relaxed) < size + 8 * MIB);
    });
}

#[test]
fn a_random_read_far_into_a_large_file_fetches_little_more_than_asked() {
    runtime().block_on(async {
        let size = 4 << 30;
        let cache = ChunkCache::new(CacheConfig::with_capacity(64 * MIB));
        let source = Arc::new(FakeSource::new(size));
        let file = cache.open(source.clone());
        let offset = (3 << 30) + 12_345;
        let got = file.read(offset, MIB).await.unwrap();
        check(&got, offset, MIB, size);
        let fetched = source.fetched_bytes.load(Ordering::Relaxed);
        assert!(
            fetched <= 2 * MIB,
            "{fetched} bytes fetched for a 1 MiB read"
        );
    });
}

#[test]
fn concurrent_readers_of_one_chunk_cause_one_fetch() {
    runtime().block_on(async {
        let cache = without_readahead(16 * MIB);
        let source = Arc::new(FakeSource::new(1 << 30).with_link(Duration::from_millis(50), None));
        let file = Arc::new(cache.open(source.clone()));
        let offset = 500 * MIB;
        let readers: Vec<_> = (0..16)
            .map(|i| {
                let file = file.clone();
                tokio::spawn(async move { file.read(offset + i * 4096, 4096).await })
            })
            .collect();
        for (i, reader) in readers.into_iter().enumerate() {
            check(
                &reader.await.unwrap().unwrap(),
                offset + i as u64 * 4096,
                4096,
                1 << 30,
            );
        }
        assert_eq!(source.fetches.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn a_failed_fetch_reaches_every_waiter_and_the_next_read_retries() {
    runtime().block_on(async {
        let cache = without_readahead(16 * MIB);
        let source = Arc::new(FakeSource::new(1 << 30).with_link(Duration::from_millis(30), None));
        source.fail_next(1);
        let file = Arc::new(cache.open(source.clone()));
        let offset = 300 * MIB;
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let file = file.clone();
                tokio::spawn(async move { file.read(offset, 1000).await })
            })
            .collect();
        for reader in readers {
            assert!(
                reader.await.unwrap().is_err(),
                "every waiter sees the failure"
            );
        }
        assert_eq!(cache.used(), 0, "a failure keeps no space");
        check(
            &file.read(offset, 1000).await.unwrap(),
            offset,
            1000,
            1 << 30,
        );
        assert_eq!(source.fetches.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn closing_a_file_frees_its_chunks() {
    runtime().block_on(async {
        let cache = ChunkCache::new(CacheConfig::with_capacity(16 * MIB));
        let file = cache.open(Arc::new(FakeSource::new(100 * MIB)));
        file.read(50 * MIB, 2 * MIB).await.unwrap();
        assert!(cache.used() > 0);
        drop(file);
        assert_eq!(cache.used(), 0);
    });
}

#[test]
fn reads_past_the_end_are_cut_or_empty() {
    runtime().block_on(async {
        let cache = ChunkCache::new(CacheConfig::with_capacity(4 * MIB));
        let file = cache.open(Arc::new(FakeSource::new(1000)));
        assert_eq!(file.read(990, 100).await.unwrap().len(), 10);
        assert!(file.read(1000, 10).await.unwrap().is_empty());
        assert!(file.read(u64::MAX, u64::MAX).await.unwrap().is_empty());
    });
}

#[test]
fn a_read_inside_one_chunk_shares_its_memory() {
    runtime().block_on(async {
        let cache = without_readahead(16 * MIB);
        let file = cache.open(Arc::new(FakeSource::new(8 * MIB)));
        let whole = file.read(2 * MIB, MIB).await.unwrap();
        let inside = file.read(2 * MIB + 4096, 8192).await.unwrap();
        check(&inside, 2 * MIB + 4096, 8192, 8 * MIB);
        // The same chunk, not a copy of it: no allocation on the kernel's read path.
        assert_eq!(inside.as_ptr(), whole[4096..].as_ptr());

        let across = file.read(3 * MIB - 4096, 8192).await.unwrap();
        check(&across, 3 * MIB - 4096, 8192, 8 * MIB);
    });
}
