//! The bytes' path: peer connections and data channels, behind a seam.
//!
//! The transfer layer only sees these traits: a [`Connector`] makes peers (one per transfer
//! and side), a [`Peer`] reports what happens to it as [`PeerEvent`]s, and a [`Channel`] moves
//! messages once the data channel is open. The WebRTC implementation lives beside this file;
//! tests plug in an in-process fake.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub mod frames;
pub mod memory;
pub mod sockets;
pub mod webrtc;

use crate::signalling::events::Candidate;
use crate::signalling::turn::IceServers;

/// Why the transport gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("invalid session description: {0}")]
    BadDescription(String),
    #[error("connection failed: {0}")]
    ConnectionFailed(String),
    #[error("the data channel closed")]
    Closed,
    #[error("{0}")]
    Other(String),
}

/// Makes the peer connection of one side of one transfer.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Sending side: a new peer and its SDP offer.
    async fn offer(&self, ice: &IceServers) -> Result<NewPeer, TransportError>;
    /// Receiving side: a new peer answering `offer_sdp`, and its SDP answer.
    async fn answer(&self, ice: &IceServers, offer_sdp: &str) -> Result<NewPeer, TransportError>;
}

/// A peer just made, with its local description and the stream of what happens to it.
pub struct NewPeer {
    pub peer: Box<dyn Peer>,
    pub sdp: String,
    pub events: mpsc::Receiver<PeerEvent>,
}

/// What a peer reports, in order.
pub enum PeerEvent {
    /// Local candidates gathered after the description was made (trickle ICE), in a batch.
    LocalCandidates(Vec<Candidate>),
    /// Gathering is over; no more local candidates will come.
    GatheringComplete,
    /// The data channel is open.
    Connected(Box<dyn Channel>),
    /// The connection is gone for good.
    Failed(String),
}

/// The signalling-facing side of a peer connection.
#[async_trait]
pub trait Peer: Send + Sync {
    /// (Sending side) The answer the offerer took.
    async fn set_answer(&self, sdp: &str) -> Result<(), TransportError>;
    /// Candidates of the remote side; an empty candidate string is end-of-candidates.
    async fn add_candidates(&self, candidates: &[Candidate]) -> Result<(), TransportError>;
    /// Tears the connection down.
    async fn close(&self);
    /// Once connected: `direct` or `relay` (through a TURN server), when known.
    async fn path(&self) -> Option<String> {
        None
    }
    /// (Sending side, once connected) Opens one more data channel on this connection and waits
    /// until it is open; the other side sees it as another [`PeerEvent::Connected`].
    async fn open_channel(&self, label: &str) -> Result<Box<dyn Channel>, TransportError> {
        let _ = label;
        Err(TransportError::Other(
            "this transport has one channel per connection".to_owned(),
        ))
    }
}

/// Label of the data channel every transfer starts with (MSC2354's one channel).
pub const MAIN_LABEL: &str = "d2dfs";

/// An open, reliable, ordered data channel.
#[async_trait]
pub trait Channel: Send {
    /// The label the opening side gave it.
    fn label(&self) -> &str {
        MAIN_LABEL
    }
    /// Sends one message; waits while the channel's send buffer is full (backpressure).
    async fn send(&mut self, message: Bytes) -> Result<(), TransportError>;
    /// The next message; `None` once the peer closed the channel.
    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>>;
    /// Flushes what was sent, then closes.
    async fn close(&mut self) -> Result<(), TransportError>;
}
