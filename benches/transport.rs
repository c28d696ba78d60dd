//! The transport alone: two webrtc-rs peers on loopback vs raw loopback TCP, in one run.
//!
//!     cargo bench --bench transport            # 1 GiB each
//!     D2DFS_BENCH_BYTES=268435456 cargo bench --bench transport
//!
//! Prints a Markdown table: channel-open time, then throughput of raw TCP and of one data
//! channel at two message sizes, each with its ratio to TCP measured in this run.

use std::time::{Duration, Instant};

use bytes::Bytes;
use d2dfs::transport::webrtc::{DirectPair, WebRtcConfig, WebRtcConnector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn total_bytes() -> u64 {
    std::env::var("D2DFS_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

/// Raw loopback TCP: one writer task, one reader task, 64 KiB writes.
async fn tcp(total: u64) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = vec![0u8; 1 << 16];
        let mut received = 0u64;
        while received < total {
            let n = socket.read(&mut buffer).await.unwrap();
            assert!(n > 0, "TCP closed early");
            received += n as u64;
        }
    });
    let start = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let block = vec![0x5au8; 1 << 16];
    let mut sent = 0u64;
    while sent < total {
        socket.write_all(&block).await.unwrap();
        sent += block.len() as u64;
    }
    reader.await.unwrap();
    start.elapsed()
}

/// One data channel: messages of `message` bytes until `total` arrived.
async fn webrtc(total: u64, message: usize) -> (Duration, Duration) {
    let connector = WebRtcConnector::new(WebRtcConfig {
        udp_addrs: vec!["127.0.0.1:0".to_owned()],
        ..WebRtcConfig::default()
    });
    let opening = Instant::now();
    let pair = DirectPair::connect(&connector, &connector).await.unwrap();
    let open_time = opening.elapsed();
    let (mut sender, mut receiver) = (pair.offerer, pair.answerer);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut received = 0u64;
        while received < total {
            match receiver.recv().await {
                Some(Ok(m)) => received += m.len() as u64,
                other => panic!("channel ended early: {other:?}"),
            }
        }
    });
    let block = Bytes::from(vec![0x5au8; message]);
    let mut sent = 0u64;
    while sent < total {
        sender.send(block.clone()).await.unwrap();
        sent += message as u64;
    }
    reader.await.unwrap();
    let elapsed = start.elapsed();
    let _ = sender.close().await;
    (open_time, elapsed)
}

fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e6
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let total = total_bytes();
    runtime.block_on(async {
        let tcp_time = tcp(total).await;
        let tcp_rate = mb_per_s(total, tcp_time);
        println!("transport benchmark: {} MiB per run, loopback", total >> 20);
        println!();
        println!("| path | throughput (MB/s) | ratio to TCP | channel open |");
        println!("|---|---|---|---|");
        println!("| raw loopback TCP (64 KiB writes) | {tcp_rate:.0} | 1.000 | - |");
        for message in [16 * 1024, 64 * 1024] {
            let (open, time) = webrtc(total, message).await;
            let rate = mb_per_s(total, time);
            println!(
                "| webrtc-rs data channel, {} KiB messages | {rate:.1} | {:.3} | {} ms |",
                message / 1024,
                rate / tcp_rate,
                open.as_millis()
            );
        }
    });
}
