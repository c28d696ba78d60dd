//! The range protocol's frames: what a receiver asks for and what the sender answers, on the
//! data channel, when both sides advertised `org.d2dfs.range`.
//!
//! Every data-channel message is exactly one frame. All integers are big-endian.
//!
//! ```text
//! header (8 bytes):  version u8 = 1 | kind u8 | flags u8 | reserved u8 = 0 | request_id u32
//! REQUEST  (1):      offset u64 | length u32          receiver → sender: bytes [offset, offset+length)
//! DATA     (2):      offset u64 | payload …           sender → receiver; flag LAST on the final chunk
//! ERROR    (3):      code u16 | message (UTF-8) …     either way; ends that request
//! CANCEL   (4):      (nothing)                        receiver → sender: drop that request
//! ```
//!
//! Request ids are chosen by the receiver and let many requests be in flight at once, over one
//! channel or spread over several: a DATA frame names its request and its own offset, so
//! chunks can be placed wherever they arrive. Lengths are checked against the message (never
//! trusted to size a buffer), a request may ask for at most [`MAX_REQUEST`] bytes, and the
//! sender refuses ranges outside the offered file with [`ErrorCode::OutOfRange`].

use bytes::{BufMut, Bytes, BytesMut};

/// The one version of the frame format.
pub const VERSION: u8 = 1;
/// Bytes of the common header.
pub const HEADER_LEN: usize = 8;
/// Most bytes one REQUEST may ask for.
pub const MAX_REQUEST: u32 = 16 << 20;
/// Largest frame accepted (webrtc-rs's ceiling for one message).
pub const MAX_FRAME: usize = 256 * 1024;
/// Longest error message carried.
pub const MAX_ERROR_MESSAGE: usize = 1024;

const KIND_REQUEST: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_ERROR: u8 = 3;
const KIND_CANCEL: u8 = 4;

/// Flag of a DATA frame: the last chunk of its request.
pub const FLAG_LAST: u8 = 1;

/// Why a request could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The range is not inside the offered file, or is longer than [`MAX_REQUEST`].
    OutOfRange,
    /// The sender cannot read the file any more.
    Unavailable,
    /// Too many requests in flight.
    Busy,
    /// The peer sent something this side cannot parse.
    Malformed,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::OutOfRange => 1,
            Self::Unavailable => 2,
            Self::Busy => 3,
            Self::Malformed => 4,
            Self::Other(code) => code,
        }
    }

    fn from_u16(code: u16) -> Self {
        match code {
            1 => Self::OutOfRange,
            2 => Self::Unavailable,
            3 => Self::Busy,
            4 => Self::Malformed,
            other => Self::Other(other),
        }
    }
}

/// One decoded frame. DATA payloads share the message's buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Request {
        request_id: u32,
        offset: u64,
        length: u32,
    },
    Data {
        request_id: u32,
        offset: u64,
        last: bool,
        payload: Bytes,
    },
    Error {
        request_id: u32,
        code: ErrorCode,
        message: String,
    },
    Cancel {
        request_id: u32,
    },
}

/// Why a message is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame shorter than its header")]
    Truncated,
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unsupported frame version {0}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("{0} frame has the wrong length")]
    Length(&'static str),
    #[error("request of {0} bytes exceeds the limit")]
    RequestTooLarge(u32),
    #[error("range end overflows")]
    Overflow,
    #[error("error message is not UTF-8 or too long")]
    Message,
}

impl Frame {
    /// Parses one data-channel message.
    pub fn decode(message: Bytes) -> Result<Self, FrameError> {
        if message.len() > MAX_FRAME {
            return Err(FrameError::TooLarge(message.len()));
        }
        if message.len() < HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        let version = message[0];
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = message[1];
        let flags = message[2];
        let request_id = u32::from_be_bytes([message[4], message[5], message[6], message[7]]);
        let body = message.slice(HEADER_LEN..);
        match kind {
            KIND_REQUEST => {
                if body.len() != 12 {
                    return Err(FrameError::Length("REQUEST"));
                }
                let offset = be_u64(&body[..8]);
                let length = u32::from_be_bytes([body[8], body[9], body[10], body[11]]);
                if length > MAX_REQUEST {
                    return Err(FrameError::RequestTooLarge(length));
                }
                offset
                    .checked_add(u64::from(length))
                    .ok_or(FrameError::Overflow)?;
                Ok(Self::Request {
                    request_id,
                    offset,
                    length,
                })
            }
            KIND_DATA => {
                if body.len() < 8 {
                    return Err(FrameError::Length("DATA"));
                }
                let offset = be_u64(&body[..8]);
                let payload = body.slice(8..);
                offset
                    .checked_add(payload.len() as u64)
                    .ok_or(FrameError::Overflow)?;
                Ok(Self::Data {
                    request_id,
                    offset,
                    last: flags & FLAG_LAST != 0,
                    payload,
                })
            }
            KIND_ERROR => {
                if body.len() < 2 {
                    return Err(FrameError::Length("ERROR"));
                }
                let code = ErrorCode::from_u16(u16::from_be_bytes([body[0], body[1]]));
                let text = &body[2..];
                if text.len() > MAX_ERROR_MESSAGE {
                    return Err(FrameError::Message);
                }
                let message = std::str::from_utf8(text)
                    .map_err(|_| FrameError::Message)?
                    .to_owned();
                Ok(Self::Error {
                    request_id,
                    code,
                    message,
                })
            }
            KIND_CANCEL => {
                if !body.is_empty() {
                    return Err(FrameError::Length("CANCEL"));
                }
                Ok(Self::Cancel { request_id })
            }
            other => Err(FrameError::Kind(other)),
        }
    }

    /// The frame as one data-channel message.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        let (kind, flags, request_id) = match self {
            Self::Request { request_id, .. } => (KIND_REQUEST, 0, *request_id),
            Self::Data {
                request_id, last, ..
            } => (KIND_DATA, if *last { FLAG_LAST } else { 0 }, *request_id),
            Self::Error { request_id, .. } => (KIND_ERROR, 0, *request_id),
            Self::Cancel { request_id } => (KIND_CANCEL, 0, *request_id),
        };
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u8(0);
        out.put_u32(request_id);
        match self {
            Self::Request { offset, length, .. } => {
                out.put_u64(*offset);
                out.put_u32(*length);
            }
            Self::Data {
                offset, payload, ..
            } => {
                out.put_u64(*offset);
                out.put_slice(payload);
            }
            Self::Error { code, message, .. } => {
                out.put_u16(code.to_u16());
                let mut end = message.len().min(MAX_ERROR_MESSAGE);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                out.put_slice(&message.as_bytes()[..end]);
            }
            Self::Cancel { .. } => {}
        }
        out.freeze()
    }

    fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Self::Request { .. } => 12,
                Self::Data { payload, .. } => 8 + payload.len(),
                Self::Error { message, .. } => 2 + message.len().min(MAX_ERROR_MESSAGE),
                Self::Cancel { .. } => 0,
            }
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_be_bytes(array)
}

/// Checks a REQUEST against the offered file's size: the range the sender may serve.
pub fn check_request(offset: u64, length: u32, file_size: u64) -> Result<(), ErrorCode> {
    let end = offset
        .checked_add(u64::from(length))
        .ok_or(ErrorCode::OutOfRange)?;
    if length == 0 || length > MAX_REQUEST || end > file_size {
        return Err(ErrorCode::OutOfRange);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Request {
                request_id: 7,
                offset: 1 << 40,
                length: MAX_REQUEST,
            },
            Frame::Data {
                request_id: 7,
                offset: 12,
                last: true,
                payload: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                request_id: u32::MAX,
                offset: 0,
                last: false,
                payload: Bytes::new(),
            },
            Frame::Error {
                request_id: 1,
                code: ErrorCode::OutOfRange,
                message: "beyond the end".into(),
            },
            Frame::Error {
                request_id: 1,
                code: ErrorCode::Other(999),
                message: String::new(),
            },
            Frame::Cancel { request_id: 3 },
        ];
        for frame in frames {
            assert_eq!(Frame::decode(frame.encode()), Ok(frame));
        }
    }

    #[test]
    fn the_layout_is_as_documented() {
        let bytes = Frame::Request {
            request_id: 0x0102_0304,
            offset: 5,
            length: 6,
        }
        .encode();
        assert_eq!(
            &bytes[..],
            &[1, 1, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 6]
        );
    }

    #[test]
    fn broken_frames_are_errors() {
        let decode = |b: &[u8]| Frame::decode(Bytes::copy_from_slice(b));
        assert_eq!(decode(&[1, 1, 0]), Err(FrameError::Truncated));
        assert_eq!(
            decode(&[2, 1, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::Version(2))
        );
        assert_eq!(decode(&[1, 9, 0, 0, 0, 0, 0, 1]), Err(FrameError::Kind(9)));
        assert_eq!(
            decode(&[1, 1, 0, 0, 0, 0, 0, 1, 0, 0]),
            Err(FrameError::Length("REQUEST"))
        );
        assert_eq!(
            decode(&[1, 4, 0, 0, 0, 0, 0, 1, 0]),
            Err(FrameError::Length("CANCEL"))
        );
        let mut huge = vec![1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        huge.extend_from_slice(&(MAX_REQUEST + 1).to_be_bytes());
        assert_eq!(
            decode(&huge),
            Err(FrameError::RequestTooLarge(MAX_REQUEST + 1))
        );
        let mut overflow = vec![1, 1, 0, 0, 0, 0, 0, 1];
        overflow.extend_from_slice(&u64::MAX.to_be_bytes());
        overflow.extend_from_slice(&1u32.to_be_bytes());
        assert_eq!(decode(&overflow), Err(FrameError::Overflow));
        assert_eq!(
            decode(&[1, 3, 0, 0, 0, 0, 0, 1, 0, 1, 0xff]),
            Err(FrameError::Message)
        );
        assert!(matches!(
            decode(&vec![1; MAX_FRAME + 1]),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn requests_are_checked_against_the_file() {
        assert_eq!(check_request(0, 10, 10), Ok(()));
        assert_eq!(check_request(5, 5, 10), Ok(()));
        assert_eq!(check_request(5, 6, 10), Err(ErrorCode::OutOfRange));
        assert_eq!(check_request(10, 1, 10), Err(ErrorCode::OutOfRange));
        assert_eq!(check_request(0, 0, 10), Err(ErrorCode::OutOfRange));
        assert_eq!(
            check_request(u64::MAX, 1, u64::MAX),
            Err(ErrorCode::OutOfRange)
        );
        assert_eq!(
            check_request(0, MAX_REQUEST + 1, u64::MAX),
            Err(ErrorCode::OutOfRange)
        );
    }
}
