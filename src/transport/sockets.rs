//! Kernel buffers for webrtc-rs's UDP sockets.
//!
//! webrtc-rs 0.21 leaves its sockets at the kernel's default receive buffer (212992 bytes on
//! Linux). A busy SCTP association overruns that in bursts: the kernel drops datagrams
//! (`UdpRcvbufErrors`), SCTP takes each drop for congestion and halves its window, and one
//! channel crawls at 10-40 MB/s while the CPU idles. With a 4 MiB buffer the same channel moves
//! ~300 MB/s on loopback (contrib/bench/RESULTS.md). The buffer is set through the one hook
//! webrtc-rs offers before it wraps a socket: its [`Runtime`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tracing::{debug, warn};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// webrtc-rs's tokio runtime, with every UDP socket's kernel buffers raised to `buffer` bytes
/// before webrtc-rs starts using it.
pub struct BufferedRuntime {
    inner: TokioRuntime,
    buffer: usize,
}

impl BufferedRuntime {
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: TokioRuntime,
            buffer,
        })
    }
}

impl fmt::Debug for BufferedRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedRuntime")
            .field("buffer", &self.buffer)
            .finish()
    }
}

/// Asks for `wanted` bytes of receive and send buffer on `socket`. The kernel caps the request
/// at `net.core.rmem_max` / `wmem_max` without an error; a cap below the request is logged
/// once per process, since it costs throughput and only the administrator can lift it.
pub fn raise_buffers(socket: &UdpSocket, wanted: usize) {
    static CAPPED_REPORTED: AtomicBool = AtomicBool::new(false);
    let socket = SockRef::from(socket);
    if let Err(error) = socket.set_recv_buffer_size(wanted) {
        debug!(%error, "UDP receive buffer not raised");
    }
    if let Err(error) = socket.set_send_buffer_size(wanted) {
        debug!(%error, "UDP send buffer not raised");
    }
    // Linux reports twice what it grants (the other half is its bookkeeping).
    let granted = socket.recv_buffer_size().map(|size| size / 2).unwrap_or(0);
    if granted < wanted && !CAPPED_REPORTED.swap(true, Ordering::Relaxed) {
        warn!(
            granted,
            wanted,
            "the kernel capped the UDP receive buffer: transfers will be slower; \
             raise it with `sysctl -w net.core.rmem_max={wanted}`"
        );
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Runtime for BufferedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        raise_buffers(&socket, self.buffer);
        self.inner.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(&self, listener: TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> BoxFuture<'a, io::Result<Arc<dyn AsyncTcpStream>>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future);
    }

    fn yield_now(&self) -> BoxFuture<'static, ()> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio (d2dfs socket buffers)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rmem_max() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .expect("rmem_max")
    }

    #[test]
    fn buffers_are_raised_up_to_what_the_kernel_allows() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        raise_buffers(&socket, 1 << 20);
        let after = SockRef::from(&socket).recv_buffer_size().expect("read");
        // Linux doubles what it grants; the grant is the request, or the cap below it.
        assert_eq!(after, 2 * rmem_max().min(1 << 20));
    }

    #[tokio::test]
    async fn the_runtime_raises_every_socket_webrtc_rs_wraps() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // The same kernel socket, to look at it once webrtc-rs's wrapper owns the other handle.
        let observer = socket.try_clone().expect("clone");
        let wanted = 3 << 19;
        let _wrapped = BufferedRuntime::new(wanted)
            .wrap_udp_socket(socket)
            .expect("wrap");
        let granted = SockRef::from(&observer).recv_buffer_size().expect("read");
        assert_eq!(granted, 2 * rmem_max().min(wanted));
    }
}
