//! Range mode over one data channel: the sending side serves byte ranges of the offered file,
//! the receiving side asks for them (see [`crate::transport::frames`] for the wire format).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::transport::Channel;
use crate::transport::frames::{ErrorCode, Frame, MAX_REQUEST, check_request};

/// Payload of one DATA frame: with its 16 bytes of header and offset, one 64 KiB message,
/// the largest every WebRTC stack accepts by default.
pub const DATA_PAYLOAD: usize = 64 * 1024 - 16;

/// Longest a sender waits for the receiver to take a frame: a receiver that stops reading
/// (a dead or hostile peer) is cut off instead of holding the transfer forever.
pub const SEND_STALL_LIMIT: Duration = Duration::from_secs(60);

/// Sends one frame, giving up on a receiver that takes nothing for `stall_limit`.
async fn send_frame(
    channel: &mut dyn Channel,
    frame: Bytes,
    stall_limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(stall_limit, channel.send(frame)).await {
        Ok(sent) => sent.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the receiver took nothing for {} ms",
            stall_limit.as_millis()
        )),
    }
}

/// Why a range could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("the sender refused the range: {0}")]
    Refused(String),
    #[error("range of {0} bytes is larger than one request may be")]
    TooLarge(u64),
    #[error("the range's end lies beyond any file")]
    Overflow,
    #[error("the connection to the sender is gone")]
    Disconnected,
    #[error("the sender broke the range protocol: {0}")]
    Protocol(String),
}

/// Sending side: answers REQUEST frames from `path` until the receiver closes the channel.
/// Requests are served one after the other; the channel's send buffer paces them.
pub async fn serve(
    channel: &mut dyn Channel,
    path: &Path,
    size: u64,
    moved: &AtomicU64,
) -> Result<(), String> {
    serve_with_limit(channel, path, size, moved, SEND_STALL_LIMIT).await
}

/// [`serve`], cutting off a receiver that takes nothing for `stall_limit`.
async fn serve_with_limit(
    channel: &mut dyn Channel,
    path: &Path,
    size: u64,
    moved: &AtomicU64,
    stall_limit: Duration,
) -> Result<(), String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut buffer = vec![0u8; DATA_PAYLOAD];
    while let Some(message) = channel.recv().await {
        let message = message.map_err(|e| e.to_string())?;
        let frame = match Frame::decode(message) {
            Ok(frame) => frame,
            Err(error) => {
                // A peer that speaks garbage is cut off; it harms no other transfer.
                let reply = Frame::Error {
                    request_id: 0,
                    code: ErrorCode::Malformed,
                    message: error.to_string(),
                };
                let _ = send_frame(channel, reply.encode(), stall_limit).await;
                return Err(format!("the receiver broke the range protocol: {error}"));
            }
        };
        let Frame::Request {
            request_id,
            offset,
            length,
        } = frame
        else {
            continue; // CANCEL of a request already served; anything else is not for us
        };
        if let Err(code) = check_request(offset, length, size) {
            debug!(request_id, offset, length, "range refused");
            let reply = Frame::Error {
                request_id,
                code,
                message: format!("range {offset}+{length} is outside the {size}-byte file"),
            };
            send_frame(channel, reply.encode(), stall_limit).await?;
            continue;
        }
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| format!("cannot seek {}: {e}", path.display()))?;
        let end = offset + u64::from(length);
        let mut position = offset;
        while position < end {
            let want = (end - position).min(DATA_PAYLOAD as u64) as usize;
            file.read_exact(&mut buffer[..want])
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let frame = Frame::Data {
                request_id,
                offset: position,
                last: position + want as u64 == end,
                payload: Bytes::copy_from_slice(&buffer[..want]),
            };
            send_frame(channel, frame.encode(), stall_limit).await?;
            position += want as u64;
            moved.fetch_add(want as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

struct Pending {
    offset: u64,
    length: usize,
    data: BytesMut,
    reply: oneshot::Sender<Result<Bytes, RangeError>>,
}

type Ask = (u64, u32, oneshot::Sender<Result<Bytes, RangeError>>);

/// Requests one lane keeps in flight: enough to keep its channel busy while the next answer
/// is on its way, few enough that every lane gets work.
const LANE_DEPTH: usize = 4;

/// Longest an extra lane may owe answers without sending anything: then it is dropped and the
/// other lanes take its requests. (The first lane has no such limit: it is the transfer's own
/// connection, and a reader's wait is bounded above this layer.)
const LANE_STALL_LIMIT: Duration = Duration::from_secs(15);

/// Receiving side: a cheap handle that fetches ranges of the offered file.
#[derive(Clone)]
pub struct RangeSource {
    asks: mpsc::Sender<Ask>,
    size: u64,
    /// Dropped with the last handle: tells a client waiting for a connection that nobody
    /// will read any more.
    _alive: Arc<oneshot::Sender<()>>,
}

impl RangeSource {
    /// Size of the offered file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The bytes `[offset, offset + length)`; many fetches may be in flight at once.
    pub async fn fetch(&self, offset: u64, length: u64) -> Result<Bytes, RangeError> {
        let length32 = u32::try_from(length)
            .ok()
            .filter(|l| *l <= MAX_REQUEST)
            .ok_or(RangeError::TooLarge(length))?;
        // Ranges the frame cannot express never go out; the rest the sender judges.
        offset.checked_add(length).ok_or(RangeError::Overflow)?;
        let (reply, answer) = oneshot::channel();
        self.asks
            .send((offset, length32, reply))
            .await
            .map_err(|_| RangeError::Disconnected)?;
        answer.await.map_err(|_| RangeError::Disconnected)?
    }
}

/// Makes the handle and the task that will own the channels once they are open.
pub fn client(size: u64) -> (RangeSource, RangeClient) {
    let (asks, incoming) = mpsc::channel(256);
    let (alive, sources_gone) = oneshot::channel();
    let retry = asks.downgrade();
    let source = RangeSource {
        asks,
        size,
        _alive: Arc::new(alive),
    };
    let client = RangeClient {
        incoming,
        retry,
        sources_gone,
    };
    (source, client)
}

/// A channel to fetch ranges over.
pub struct LaneChannel {
    pub channel: Box<dyn Channel>,
    /// An extra connection ("lane"), dropped when it stalls. Otherwise the transfer's own
    /// connection: the engine watches that one and makes it again when it fails.
    pub extra: bool,
}

/// The receiving side's half that drives the channels ("lanes").
pub struct RangeClient {
    incoming: mpsc::Receiver<Ask>,
    /// Where a failed lane hands back what it owed (weak: it must not keep the queue open).
    retry: mpsc::WeakSender<Ask>,
    sources_gone: oneshot::Receiver<()>,
}

/// The queue every lane takes requests from: an idle lane takes the next one.
type AskQueue = Arc<tokio::sync::Mutex<mpsc::Receiver<Ask>>>;

/// How a lane ended.
enum LaneEnd {
    /// Every source is gone: the transfer is over.
    Done,
    /// Its connection closed or stalled; what it owed went back to the queue.
    Lost(String),
    /// The sender broke the range protocol; the readers waiting on this lane were told.
    Broken(String),
}

impl RangeClient {
    /// Sends requests and places answers over every channel that comes through `channels`,
    /// until every [`RangeSource`] is dropped (the transfer is over: the channels are closed).
    /// A channel that fails hands its requests to the others, or to the next channel to come
    /// (the engine connects again); requests wait meanwhile. Fails when the sender breaks the
    /// protocol, or when no channel is left and `channels` is closed.
    pub async fn run(
        self,
        mut channels: mpsc::Receiver<LaneChannel>,
        moved: Arc<AtomicU64>,
    ) -> Result<(), String> {
        let queue: AskQueue = Arc::new(tokio::sync::Mutex::new(self.incoming));
        // A lone lane takes every request the cache makes (as many as read-ahead wants in
        // flight); with others beside it, each takes its share.
        let depth = Arc::new(AtomicUsize::new(usize::MAX));
        let mut lanes = tokio::task::JoinSet::new();
        let mut channels_open = true;
        let mut sources_gone = self.sources_gone;
        loop {
            let share = if lanes.len() > 1 {
                LANE_DEPTH
            } else {
                usize::MAX
            };
            depth.store(share, Ordering::Relaxed);
            tokio::select! {
                next = channels.recv(), if channels_open => match next {
                    Some(LaneChannel { channel, extra }) => {
                        let stall_limit = extra.then_some(LANE_STALL_LIMIT);
                        lanes.spawn(lane(
                            channel, queue.clone(), self.retry.clone(), moved.clone(),
                            stall_limit, depth.clone(),
                        ));
                    }
                    None if lanes.is_empty() => {
                        return Err("the connection to the sender is gone".to_owned());
                    }
                    None => channels_open = false,
                },
                _ = &mut sources_gone, if lanes.is_empty() => return Ok(()),
                Some(ended) = lanes.join_next() => match ended {
                    Ok(LaneEnd::Done) => return Ok(()),
                    Ok(LaneEnd::Broken(error)) => return Err(error),
                    Ok(LaneEnd::Lost(error)) if lanes.is_empty() && !channels_open => {
                        return Err(error);
                    }
                    Ok(LaneEnd::Lost(error)) => {
                        debug!(%error, "a lane was lost; its requests wait for another");
                    }
                    Err(error) => return Err(format!("a lane stopped: {error}")),
                },
            }
        }
    }
}

/// One lane: takes requests from the shared queue while it has room, places the answers.
async fn lane(
    mut channel: Box<dyn Channel>,
    queue: AskQueue,
    retry: mpsc::WeakSender<Ask>,
    moved: Arc<AtomicU64>,
    stall_limit: Option<Duration>,
    depth: Arc<AtomicUsize>,
) -> LaneEnd {
    let mut pending: HashMap<u32, Pending> = HashMap::new();
    let mut next_id: u32 = 1;
    let mut last_heard = tokio::time::Instant::now();
    let failure = loop {
        let stalled = async {
            match stall_limit {
                Some(limit) if !pending.is_empty() => {
                    tokio::time::sleep_until(last_heard + limit).await;
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stalled => break "the lane stalled".to_owned(),
            ask = async { queue.lock().await.recv().await }, if pending.len() < depth.load(Ordering::Relaxed) => {
                let Some((offset, length, reply)) = ask else {
                    // Every source is gone: the transfer is over.
                    let _ = channel.close().await;
                    return LaneEnd::Done;
                };
                let request_id = next_id;
                next_id = next_id.wrapping_add(1).max(1);
                pending.insert(request_id, Pending {
                    offset,
                    length: length as usize,
                    // Our own request's length, bounded by MAX_REQUEST: not the peer's word.
                    data: BytesMut::with_capacity(length as usize),
                    reply,
                });
                if pending.len() == 1 {
                    last_heard = tokio::time::Instant::now();
                }
                let frame = Frame::Request { request_id, offset, length };
                if channel.send(frame.encode()).await.is_err() {
                    break "the connection closed".to_owned();
                }
            }
            message = channel.recv() => {
                let Some(Ok(message)) = message else {
                    break "the connection closed".to_owned();
                };
                last_heard = tokio::time::Instant::now();
                if let Err(error) = place(&mut pending, message, &moved) {
                    warn!(%error, "range protocol error");
                    for (_, p) in pending.drain() {
                        let _ = p.reply.send(Err(error.clone()));
                    }
                    return LaneEnd::Broken(error.to_string());
                }
            }
        }
    };
    // Hand what this lane still owed to the others (or to the next lane to come); with the
    // queue gone, the readers learn why.
    for (_, request) in pending.drain() {
        let ask = (request.offset, request.length as u32, request.reply);
        match retry.upgrade() {
            Some(queue) => {
                if let Err(mpsc::error::SendError((_, _, reply))) = queue.send(ask).await {
                    let _ = reply.send(Err(RangeError::Disconnected));
                }
            }
            None => {
                let _ = ask.2.send(Err(RangeError::Disconnected));
            }
        }
    }
    LaneEnd::Lost(failure)
}

/// Puts one answer frame where it belongs.
fn place(
    pending: &mut HashMap<u32, Pending>,
    message: Bytes,
    moved: &AtomicU64,
) -> Result<(), RangeError> {
    match Frame::decode(message).map_err(|e| RangeError::Protocol(e.to_string()))? {
        Frame::Data {
            request_id,
            offset,
            last,
            payload,
        } => {
            let Some(request) = pending.get_mut(&request_id) else {
                return Err(RangeError::Protocol(format!(
                    "DATA for unknown request {request_id}"
                )));
            };
            let expected = request.offset + request.data.len() as u64;
            if offset != expected || request.data.len() + payload.len() > request.length {
                return Err(RangeError::Protocol(format!(
                    "DATA at {offset} does not continue request {request_id}"
                )));
            }
            request.data.extend_from_slice(&payload);
            moved.fetch_add(payload.len() as u64, Ordering::Relaxed);
            if last && let Some(done) = pending.remove(&request_id) {
                if done.data.len() != done.length {
                    return Err(RangeError::Protocol("short answer".to_owned()));
                }
                let _ = done.reply.send(Ok(done.data.freeze()));
            }
            Ok(())
        }
        Frame::Error {
            request_id,
            code,
            message,
        } => {
            match pending.remove(&request_id) {
                Some(request) => {
                    let _ = request
                        .reply
                        .send(Err(RangeError::Refused(format!("{code:?}: {message}"))));
                }
                None if code == ErrorCode::Malformed => {
                    return Err(RangeError::Protocol(message));
                }
                None => {}
            }
            Ok(())
        }
        other => Err(RangeError::Protocol(format!("unexpected frame {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    //! A hostile receiver against the real [`serve`], over in-process channels.
    use super::*;
    use crate::transport::frames::MAX_FRAME;
    use crate::transport::memory;

    fn file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        (file, data)
    }

    fn request(request_id: u32, offset: u64, length: u32) -> Bytes {
        Frame::Request {
            request_id,
            offset,
            length,
        }
        .encode()
    }

    async fn next_frame(channel: &mut memory::MemoryChannel) -> Frame {
        let message = channel.recv().await.unwrap().unwrap();
        Frame::decode(message).unwrap()
    }

    #[tokio::test]
    async fn requests_outside_the_file_are_refused_and_serving_goes_on() {
        let (file, data) = file(100_000);
        let (mut ours, mut theirs) = memory::pair(16);
        let moved = AtomicU64::new(0);
        let peer = async {
            for (id, offset, length) in [(1, 99_999, 2), (2, 100_000, 1), (3, 1 << 40, 1)] {
                theirs.send(request(id, offset, length)).await.unwrap();
                match next_frame(&mut theirs).await {
                    Frame::Error {
                        request_id, code, ..
                    } => assert_eq!((request_id, code), (id, ErrorCode::OutOfRange)),
                    other => panic!("{other:?}"),
                }
            }
            theirs.send(request(4, 10, 5)).await.unwrap();
            match next_frame(&mut theirs).await {
                Frame::Data { payload, last, .. } => {
                    assert!(last);
                    assert_eq!(&payload[..], &data[10..15]);
                }
                other => panic!("{other:?}"),
            }
            theirs.close().await.unwrap();
        };
        let (served, ()) = tokio::join!(serve(&mut ours, file.path(), 100_000, &moved), peer);
        served.unwrap();
        assert_eq!(
            moved.load(Ordering::Relaxed),
            5,
            "only the served bytes count"
        );
    }

    #[tokio::test]
    async fn garbage_cuts_the_peer_off_with_a_reason() {
        let (file, _) = file(1000);
        let (mut ours, mut theirs) = memory::pair(16);
        theirs
            .send(Bytes::from_static(b"\x09garbage"))
            .await
            .unwrap();
        let served = serve(&mut ours, file.path(), 1000, &AtomicU64::new(0)).await;
        assert!(served.unwrap_err().contains("broke the range protocol"));
        assert!(matches!(
            next_frame(&mut theirs).await,
            Frame::Error {
                code: ErrorCode::Malformed,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn oversized_messages_are_refused_not_allocated() {
        let (file, _) = file(1000);
        let (mut ours, mut theirs) = memory::pair(16);
        let mut huge = request(1, 0, 10).to_vec();
        huge.resize(MAX_FRAME + 1, 0);
        theirs.send(Bytes::from(huge)).await.unwrap();
        let served = serve(&mut ours, file.path(), 1000, &AtomicU64::new(0)).await;
        assert!(served.is_err());
    }

    #[tokio::test]
    async fn a_flood_from_a_peer_that_never_reads_is_cut_off() {
        let (file, _) = file(4 << 20);
        let (mut ours, mut theirs) = memory::pair(8);
        // Thousands of requests for the whole file, and not one answer read.
        let flood = tokio::spawn(async move {
            for id in 1..=10_000u32 {
                if theirs.send(request(id, 0, 4 << 20)).await.is_err() {
                    break;
                }
            }
            theirs // kept alive, never read
        });
        let moved = AtomicU64::new(0);
        let limit = Duration::from_millis(300);
        let served = serve_with_limit(&mut ours, file.path(), 4 << 20, &moved, limit).await;
        assert!(served.unwrap_err().contains("took nothing"));
        // What went out is what the channel's queue held: the flood allocated nothing here.
        assert!(moved.load(Ordering::Relaxed) <= 9 * DATA_PAYLOAD as u64);
        drop(ours);
        drop(flood.await.unwrap());
    }

    #[tokio::test]
    async fn one_hostile_peer_does_not_slow_another() {
        let (file, data) = file(1 << 20);
        let (mut bad_ours, mut bad_theirs) = memory::pair(16);
        let (mut good_ours, mut good_theirs) = memory::pair(16);
        let size = data.len() as u64;
        let path = file.path().to_owned();
        let bad = tokio::spawn(async move {
            bad_theirs.send(Bytes::from_static(b"junk")).await.unwrap();
            serve(&mut bad_ours, &path, size, &AtomicU64::new(0)).await
        });
        let path = file.path().to_owned();
        let good =
            tokio::spawn(
                async move { serve(&mut good_ours, &path, size, &AtomicU64::new(0)).await },
            );
        good_theirs.send(request(1, 0, 1 << 20)).await.unwrap();
        let mut received = Vec::new();
        loop {
            match next_frame(&mut good_theirs).await {
                Frame::Data { payload, last, .. } => {
                    received.extend_from_slice(&payload);
                    if last {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(received, data);
        assert!(bad.await.unwrap().is_err());
        good_theirs.close().await.unwrap();
        good.await.unwrap().unwrap();
    }

    /// Hands `channel` to a running client as the connection's own (`extra` false) or a lane.
    async fn give(lanes: &mpsc::Sender<LaneChannel>, channel: memory::MemoryChannel, extra: bool) {
        let channel = Box::new(channel);
        lanes.send(LaneChannel { channel, extra }).await.unwrap();
    }

    /// `count` fetches of `each` bytes, back to back from the start, all at once.
    fn fetch_many(
        source: &RangeSource,
        count: u64,
        each: u64,
    ) -> Vec<tokio::task::JoinHandle<Result<Bytes, RangeError>>> {
        (0..count)
            .map(|i| {
                let source = source.clone();
                tokio::spawn(async move { source.fetch(i * each, each).await })
            })
            .collect()
    }

    /// Serves `path` over `channel` in the background, as the sending side does.
    fn serve_in_background(
        mut channel: memory::MemoryChannel,
        path: &Path,
        size: u64,
    ) -> tokio::task::JoinHandle<Result<(), String>> {
        let path = path.to_owned();
        tokio::spawn(async move { serve(&mut channel, &path, size, &AtomicU64::new(0)).await })
    }

    /// Every fetch of [`fetch_many`] got its bytes of `data`.
    async fn expect_fetched(
        fetches: Vec<tokio::task::JoinHandle<Result<Bytes, RangeError>>>,
        data: &[u8],
        each: usize,
    ) {
        for (i, fetch) in fetches.into_iter().enumerate() {
            let got = fetch.await.unwrap().unwrap();
            assert_eq!(&got[..], &data[i * each..(i + 1) * each]);
        }
    }

    #[tokio::test]
    async fn a_failed_lane_hands_its_requests_to_the_others() {
        let (file, data) = file(1 << 20);
        let size = data.len() as u64;
        let (source, client) = client(size);
        let (first_ours, first_theirs) = memory::pair(64);
        let (second_ours, mut second_theirs) = memory::pair(64);
        let (lanes_tx, lanes_rx) = mpsc::channel(2);
        give(&lanes_tx, first_ours, false).await;
        give(&lanes_tx, second_ours, true).await;
        let run = tokio::spawn(client.run(lanes_rx, Arc::default()));
        let fetches = fetch_many(&source, 8, 1 << 17);
        // The second lane's peer takes a request and vanishes; only then does the first
        // lane's peer start answering.
        let first_request = second_theirs.recv().await.unwrap().unwrap();
        assert!(matches!(
            Frame::decode(first_request),
            Ok(Frame::Request { .. })
        ));
        drop(second_theirs);
        let server = serve_in_background(first_theirs, file.path(), size);
        expect_fetched(fetches, &data, 1 << 17).await;
        drop(source);
        run.await.unwrap().unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn requests_of_a_lost_connection_wait_for_the_next_one() {
        let (file, data) = file(1 << 20);
        let size = data.len() as u64;
        let (source, client) = client(size);
        let (lanes_tx, lanes_rx) = mpsc::channel(2);
        let run = tokio::spawn(client.run(lanes_rx, Arc::default()));
        let (old_ours, mut old_theirs) = memory::pair(64);
        give(&lanes_tx, old_ours, false).await;
        let fetches = fetch_many(&source, 4, 1 << 18);
        // The connection dies with requests on it; nothing fails while no channel is left.
        old_theirs.recv().await.unwrap().unwrap();
        drop(old_theirs);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(fetches.iter().all(|fetch| !fetch.is_finished()));
        assert!(!run.is_finished());
        // The engine connects again: the same requests go over the new channel.
        let (new_ours, new_theirs) = memory::pair(64);
        give(&lanes_tx, new_ours, false).await;
        let server = serve_in_background(new_theirs, file.path(), size);
        expect_fetched(fetches, &data, 1 << 18).await;
        drop(source);
        run.await.unwrap().unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn readers_that_leave_while_no_channel_is_left_end_the_client() {
        let (source, client) = client(1 << 20);
        let (_lanes_tx, lanes_rx) = mpsc::channel(1);
        let run = tokio::spawn(client.run(lanes_rx, Arc::default()));
        drop(source);
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the client ends")
            .unwrap()
            .unwrap();
    }
}
