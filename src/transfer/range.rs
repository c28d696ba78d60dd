//! Range mode over one data channel: the sending side serves byte ranges of the offered file,
//! the receiving side asks for them (see [`crate::transport::frames`] for the wire format).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::transport::Channel;
use crate::transport::frames::{ErrorCode, Frame, MAX_REQUEST, check_request};

/// Payload of one DATA frame: with its 16 bytes of header and offset, one 64 KiB message,
/// the largest every WebRTC stack accepts by default.
pub const DATA_PAYLOAD: usize = 64 * 1024 - 16;

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
                let _ = channel.send(reply.encode()).await;
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
            channel
                .send(reply.encode())
                .await
                .map_err(|e| e.to_string())?;
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
            channel
                .send(frame.encode())
                .await
                .map_err(|e| e.to_string())?;
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

/// Receiving side: a cheap handle that fetches ranges of the offered file.
#[derive(Clone)]
pub struct RangeSource {
    asks: mpsc::Sender<Ask>,
    size: u64,
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

/// Makes the handle and the task that will own the channel once it is open.
pub fn client(size: u64) -> (RangeSource, RangeClient) {
    let (asks, incoming) = mpsc::channel(256);
    (RangeSource { asks, size }, RangeClient { incoming })
}

/// The receiving side's half that drives the channel.
pub struct RangeClient {
    incoming: mpsc::Receiver<Ask>,
}

impl RangeClient {
    /// Sends requests and places answers until every [`RangeSource`] is dropped (then closes
    /// the channel: the transfer is over) or the connection fails.
    pub async fn run(mut self, channel: &mut dyn Channel, moved: &AtomicU64) -> Result<(), String> {
        let mut pending: HashMap<u32, Pending> = HashMap::new();
        let mut next_id: u32 = 1;
        loop {
            tokio::select! {
                ask = self.incoming.recv() => {
                    let Some((offset, length, reply)) = ask else {
                        return channel.close().await.map_err(|e| e.to_string());
                    };
                    let request_id = next_id;
                    next_id = next_id.wrapping_add(1).max(1);
                    let frame = Frame::Request { request_id, offset, length };
                    if channel.send(frame.encode()).await.is_err() {
                        let _ = reply.send(Err(RangeError::Disconnected));
                        return Err("the connection closed".to_owned());
                    }
                    pending.insert(request_id, Pending {
                        offset,
                        length: length as usize,
                        // Our own request's length, bounded by MAX_REQUEST: not the peer's word.
                        data: BytesMut::with_capacity(length as usize),
                        reply,
                    });
                }
                message = channel.recv() => {
                    let Some(Ok(message)) = message else {
                        for (_, p) in pending.drain() {
                            let _ = p.reply.send(Err(RangeError::Disconnected));
                        }
                        return Err("the connection closed".to_owned());
                    };
                    if let Err(error) = place(&mut pending, message, moved) {
                        warn!(%error, "range protocol error");
                        for (_, p) in pending.drain() {
                            let _ = p.reply.send(Err(error.clone()));
                        }
                        return Err(error.to_string());
                    }
                }
            }
        }
    }
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
