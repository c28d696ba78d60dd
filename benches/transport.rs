//! The transport alone: two webrtc-rs peers on loopback vs raw loopback TCP, in one run.
//!
//!     cargo bench --bench transport            # 1 GiB each
//!     D2DFS_BENCH_BYTES=268435456 cargo bench --bench transport
//!     D2DFS_BENCH_SHAPES="64:1:1 256:4:1:4:1400" cargo bench --bench transport
//!
//! Prints a Markdown table: throughput of raw TCP, then of webrtc-rs data channels in several
//! shapes (message size, connections x channels, SCTP receive window and MTU), each with its
//! ratio to TCP measured in this run and the time to open every channel.

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

/// One way to move `total` bytes over webrtc-rs: message size, SCTP settings, and how many
/// connections and channels per connection share the load.
#[derive(Clone, Copy)]
struct Shape {
    message: usize,
    connections: usize,
    channels: usize,
    receive_buffer: Option<u32>,
    mtu: Option<u32>,
    /// Leave the UDP sockets at the kernel's default buffers, as stock webrtc-rs does.
    stock_sockets: bool,
}

impl Shape {
    fn describe(&self) -> String {
        let mut text = format!(
            "{} KiB msgs, {} conn x {} chan",
            self.message / 1024,
            self.connections,
            self.channels
        );
        if let Some(size) = self.receive_buffer {
            text.push_str(&format!(", rwnd {} MiB", size >> 20));
        }
        if let Some(mtu) = self.mtu {
            text.push_str(&format!(", mtu {mtu}"));
        }
        if self.stock_sockets {
            text.push_str(", stock sockets");
        }
        text
    }
}

/// Moves `total` bytes split evenly over every channel of `shape`; returns the time to open
/// everything and the time to move the bytes.
async fn webrtc(total: u64, shape: Shape) -> (Duration, Duration) {
    let connector = WebRtcConnector::new(WebRtcConfig {
        udp_addrs: vec!["127.0.0.1:0".to_owned()],
        sctp_receive_buffer: shape.receive_buffer,
        sctp_mtu: shape.mtu,
        max_message_size: Some(shape.message.max(64 * 1024) as u32),
        ice_check_interval: std::env::var("D2DFS_BENCH_ICE_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
            .or(WebRtcConfig::default().ice_check_interval),
        udp_buffer: if shape.stock_sockets {
            None
        } else {
            WebRtcConfig::default().udp_buffer
        },
        ..WebRtcConfig::default()
    });
    let opening = Instant::now();
    let mut pairs = Vec::new();
    let mut lanes = Vec::new();
    for _ in 0..shape.connections {
        let mut pair = DirectPair::connect(&connector, &connector).await.unwrap();
        for n in 1..shape.channels {
            lanes.push(pair.open_channel(&format!("lane-{n}")).await.unwrap());
        }
        pairs.push(pair);
    }
    let open_time = opening.elapsed();
    for pair in &mut pairs {
        let offerer = std::mem::replace(&mut pair.offerer, Box::new(Spent));
        let answerer = std::mem::replace(&mut pair.answerer, Box::new(Spent));
        lanes.push((offerer, answerer));
    }
    let per_lane = total / lanes.len() as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut sender, mut receiver) in lanes {
        tasks.push(tokio::spawn(async move {
            let mut received = 0u64;
            while received < per_lane {
                match receiver.recv().await {
                    Some(Ok(m)) => received += m.len() as u64,
                    other => panic!("channel ended early: {other:?}"),
                }
            }
        }));
        let block = Bytes::from(vec![0x5au8; shape.message]);
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < per_lane {
                sender.send(block.clone()).await.unwrap();
                sent += block.len() as u64;
            }
            // Keep the sender alive until everything is read; closing is not measured.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }));
    }
    let mut senders = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if i % 2 == 0 {
            task.await.unwrap();
        } else {
            senders.push(task);
        }
    }
    let elapsed = start.elapsed();
    senders.iter().for_each(|task| task.abort());
    drop(pairs);
    (open_time, elapsed)
}

/// Stands in for a channel moved out of a [`DirectPair`].
struct Spent;

#[async_trait::async_trait]
impl d2dfs::transport::Channel for Spent {
    async fn send(&mut self, _: Bytes) -> Result<(), d2dfs::transport::TransportError> {
        Err(d2dfs::transport::TransportError::Closed)
    }
    async fn recv(&mut self) -> Option<Result<Bytes, d2dfs::transport::TransportError>> {
        None
    }
    async fn close(&mut self) -> Result<(), d2dfs::transport::TransportError> {
        Ok(())
    }
}

/// The shapes to run: `D2DFS_BENCH_SHAPES` as `message_KiB:connections:channels[:rwnd_MiB[:mtu]]`
/// separated by spaces, each optionally ending in `/stock` (the kernel's default socket
/// buffers: one raw webrtc-rs channel), else a sweep over message size, channels and
/// connections beside that raw channel.
fn shapes() -> Vec<Shape> {
    let spec = std::env::var("D2DFS_BENCH_SHAPES")
        .unwrap_or_else(|_| "64:1:1/stock 16:1:1 64:1:1 256:1:1 64:1:4 64:4:1 256:4:1".to_owned());
    spec.split_whitespace()
        .map(|item| {
            let (item, stock_sockets) = match item.strip_suffix("/stock") {
                Some(item) => (item, true),
                None => (item, false),
            };
            let fields: Vec<u64> = item.split(':').map(|f| f.parse().unwrap()).collect();
            Shape {
                message: fields[0] as usize * 1024,
                connections: fields[1] as usize,
                channels: fields[2] as usize,
                receive_buffer: fields.get(3).map(|mib| (*mib as u32) << 20),
                mtu: fields.get(4).map(|mtu| *mtu as u32),
                stock_sockets,
            }
        })
        .collect()
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
        for shape in shapes() {
            let (open, time) = webrtc(total, shape).await;
            let rate = mb_per_s(total, time);
            println!(
                "| webrtc-rs, {} | {rate:.1} | {:.3} | {} ms |",
                shape.describe(),
                rate / tcp_rate,
                open.as_millis()
            );
        }
    });
}
