//! Sequential reads through the chunk cache over a fake source with a given bandwidth and
//! latency, against the source's raw bandwidth measured in the same run.
//!
//!     cargo bench --bench cache
//!     D2DFS_BENCH_MBPS=400 D2DFS_BENCH_LATENCY_MS=10 cargo bench --bench cache
//!
//! Shows what read-ahead is for: without it, 128 KiB reads (what the kernel sends) each pay
//! the round trip; with it, the cache keeps many chunks in flight and the link stays busy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use d2dfs::cache::fake_source::FakeSource;
use d2dfs::cache::{CacheConfig, ChunkCache, Source};

const READ: u64 = 128 << 10;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn source(size: u64, latency: Duration, bandwidth: u64) -> Arc<FakeSource> {
    Arc::new(FakeSource::new(size).with_link(latency, Some(bandwidth)))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let bandwidth = env("D2DFS_BENCH_MBPS", 200) * 1_000_000;
    let latency = Duration::from_millis(env("D2DFS_BENCH_LATENCY_MS", 5));
    let size = env("D2DFS_BENCH_MIB", 256) << 20;
    let cache_size = env("D2DFS_BENCH_CACHE_MIB", 64) << 20;
    runtime.block_on(async {
        // The link at its best: large requests back to back.
        let raw = source(size, latency, bandwidth);
        let start = Instant::now();
        let mut offset = 0;
        while offset < size {
            let length = (16 << 20).min(size - offset);
            raw.fetch(offset, length).await.unwrap();
            offset += length;
        }
        let raw_rate = size as f64 / start.elapsed().as_secs_f64() / 1e6;

        // No cache, no read-ahead: every 128 KiB read is a round trip.
        let exact = source(size, latency, bandwidth);
        let start = Instant::now();
        let mut offset = 0;
        while offset < size {
            exact.fetch(offset, READ.min(size - offset)).await.unwrap();
            offset += READ;
        }
        let exact_rate = size as f64 / start.elapsed().as_secs_f64() / 1e6;

        // Through the cache with adaptive read-ahead.
        let cache = ChunkCache::new(CacheConfig::with_capacity(cache_size));
        let file = cache.open(source(size, latency, bandwidth));
        let start = Instant::now();
        let mut offset = 0;
        while offset < size {
            file.read(offset, READ).await.unwrap();
            offset += READ;
        }
        let cached_rate = size as f64 / start.elapsed().as_secs_f64() / 1e6;
        let peak = cache.stats().peak_bytes.load(std::sync::atomic::Ordering::Relaxed);

        println!(
            "cache benchmark: {} MiB read sequentially in 128 KiB reads; link {} MB/s, {} ms latency; cache {} MiB",
            size >> 20,
            bandwidth / 1_000_000,
            latency.as_millis(),
            cache_size >> 20
        );
        println!();
        println!("| path | MB/s | ratio to the raw link |");
        println!("|---|---|---|");
        println!("| raw link, 16 MiB requests | {raw_rate:.0} | 1.00 |");
        println!("| exact 128 KiB reads, no read-ahead | {exact_rate:.0} | {:.2} |", exact_rate / raw_rate);
        println!(
            "| chunk cache with read-ahead | {cached_rate:.0} | {:.2} |",
            cached_rate / raw_rate
        );
        println!();
        println!("peak cache memory: {} MiB of {} MiB", peak >> 20, cache_size >> 20);
    });
}
