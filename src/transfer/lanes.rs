//! Lanes: extra peer connections for one range-mode transfer.
//!
//! One webrtc-rs association moves a few tens of MB/s however it is tuned, and more data
//! channels on it share that ceiling; separate connections do not (see contrib/bench/). So
//! when both sides advertise `lanes` in `org.d2dfs.range`, the sending device opens that many
//! more connections for the transfer, and the receiver spreads its range requests over all of
//! them ([`super::range`]).
//!
//! The extra connections are negotiated *inside* the transfer's first connection, not through
//! the homeserver: the sender opens a data channel labelled [`CONTROL_LABEL`] on it and the
//! two sides trade one JSON object per message:
//!
//! ```text
//! sender → receiver   {"lane": 1, "offer": "<SDP>"}
//! receiver → sender   {"lane": 1, "answer": "<SDP>"}
//! both ways           {"lane": 1, "candidates": [<candidate>, …]}   (empty "candidate": end)
//! ```
//!
//! Lanes are numbered from 1 up to the agreed count. Each lane's connection carries one data
//! channel speaking the range protocol, exactly like the first one. The control channel is as
//! private as the transfer (DTLS) and costs the homeserver nothing. A lane that fails is
//! dropped; its requests go to the others. Messages that do not parse are ignored with a log
//! line.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::signalling::events::{Candidate, MAX_LANES, limits};
use crate::signalling::turn::IceServers;
use crate::transport::{Channel, Connector, NewPeer, Peer, PeerEvent};

/// Label of the control channel on the transfer's first connection.
pub const CONTROL_LABEL: &str = "d2dfs-lanes";

/// Longest control message accepted.
pub const MAX_CONTROL_MESSAGE: usize = 128 * 1024;

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneMessage {
    pub lane: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<Candidate>>,
}

/// Why a control message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneMessageError {
    #[error("control message of {0} bytes is too large")]
    TooLarge(usize),
    #[error("control message is not a lane message: {0}")]
    Malformed(String),
    #[error("lane {0} is out of range")]
    Lane(u8),
    #[error("SDP or candidate list out of bounds")]
    OutOfBounds,
}

impl LaneMessage {
    pub fn encode(&self) -> Bytes {
        // A struct of strings and integers always serialises.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses and bounds-checks a control message from the peer.
    pub fn decode(message: &[u8]) -> Result<Self, LaneMessageError> {
        if message.len() > MAX_CONTROL_MESSAGE {
            return Err(LaneMessageError::TooLarge(message.len()));
        }
        let parsed: Self = serde_json::from_slice(message)
            .map_err(|e| LaneMessageError::Malformed(e.to_string()))?;
        if parsed.lane == 0 || parsed.lane > MAX_LANES {
            return Err(LaneMessageError::Lane(parsed.lane));
        }
        let sdp_too_long = [&parsed.offer, &parsed.answer]
            .iter()
            .any(|sdp| sdp.as_ref().is_some_and(|s| s.len() > limits::MAX_SDP));
        let too_many = parsed
            .candidates
            .as_ref()
            .is_some_and(|c| c.len() > limits::MAX_CANDIDATES);
        if sdp_too_long || too_many {
            return Err(LaneMessageError::OutOfBounds);
        }
        Ok(parsed)
    }
}

/// Which end of the transfer runs the lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneRole {
    /// The sending device: makes the offers.
    Offering,
    /// The receiving device: answers them.
    Answering,
}

/// What happens to the lanes' connections, tagged with the lane.
enum LaneEvent {
    Made(NewPeer),
    MakeFailed(String),
    Peer(PeerEvent),
}

/// Runs `count` lanes over `control` until the control channel closes (the transfer's first
/// connection is gone), handing every lane's open data channel to `opened`. Closes the lanes'
/// connections on the way out.
pub async fn run(
    role: LaneRole,
    connector: Arc<dyn Connector>,
    ice: IceServers,
    mut control: Box<dyn Channel>,
    count: u8,
    opened: mpsc::Sender<Box<dyn Channel>>,
) {
    let count = count.min(MAX_LANES);
    let (events_tx, mut events) = mpsc::channel::<(u8, LaneEvent)>(64);
    let mut peers: HashMap<u8, Box<dyn Peer>> = HashMap::new();
    // Candidates that came before their lane's connection was made.
    let mut early: HashMap<u8, Vec<Candidate>> = HashMap::new();
    if role == LaneRole::Offering {
        for lane in 1..=count {
            let (connector, ice, events_tx) = (connector.clone(), ice.clone(), events_tx.clone());
            tokio::spawn(async move {
                let made = match connector.offer(&ice).await {
                    Ok(new_peer) => LaneEvent::Made(new_peer),
                    Err(error) => LaneEvent::MakeFailed(error.to_string()),
                };
                let _ = events_tx.send((lane, made)).await;
            });
        }
    }
    loop {
        tokio::select! {
            message = control.recv() => {
                let Some(Ok(message)) = message else { break };
                let message = match LaneMessage::decode(&message) {
                    Ok(message) if message.lane <= count => message,
                    Ok(message) => {
                        warn!(lane = message.lane, count, "control message for a lane never agreed; ignored");
                        continue;
                    }
                    Err(error) => {
                        warn!(%error, "control message ignored");
                        continue;
                    }
                };
                let lane = message.lane;
                match (role, message.offer, message.answer) {
                    (LaneRole::Answering, Some(offer), _) if !peers.contains_key(&lane) => {
                        let (connector, ice, events_tx) = (connector.clone(), ice.clone(), events_tx.clone());
                        tokio::spawn(async move {
                            let made = match connector.answer(&ice, &offer).await {
                                Ok(new_peer) => LaneEvent::Made(new_peer),
                                Err(error) => LaneEvent::MakeFailed(error.to_string()),
                            };
                            let _ = events_tx.send((lane, made)).await;
                        });
                    }
                    (LaneRole::Offering, _, Some(answer)) => {
                        if let Some(peer) = peers.get(&lane)
                            && let Err(error) = peer.set_answer(&answer).await
                        {
                            warn!(lane, %error, "lane answer refused");
                            peers.remove(&lane);
                        }
                    }
                    _ => {}
                }
                if let Some(candidates) = message.candidates {
                    match peers.get(&lane) {
                        Some(peer) => {
                            let _ = peer.add_candidates(&candidates).await;
                        }
                        None => early.entry(lane).or_default().extend(candidates),
                    }
                }
            }
            Some((lane, event)) = events.recv() => match event {
                LaneEvent::Made(NewPeer { peer, sdp, events: mut peer_events }) => {
                    let description = match role {
                        LaneRole::Offering => LaneMessage { lane, offer: Some(sdp), answer: None, candidates: None },
                        LaneRole::Answering => LaneMessage { lane, offer: None, answer: Some(sdp), candidates: None },
                    };
                    if control.send(description.encode()).await.is_err() {
                        break;
                    }
                    if let Some(candidates) = early.remove(&lane) {
                        let _ = peer.add_candidates(&candidates).await;
                    }
                    peers.insert(lane, peer);
                    let events_tx = events_tx.clone();
                    tokio::spawn(async move {
                        while let Some(event) = peer_events.recv().await {
                            if events_tx.send((lane, LaneEvent::Peer(event))).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                LaneEvent::MakeFailed(error) => warn!(lane, %error, "lane not made"),
                LaneEvent::Peer(PeerEvent::LocalCandidates(candidates)) => {
                    let message = LaneMessage { lane, offer: None, answer: None, candidates: Some(candidates) };
                    if control.send(message.encode()).await.is_err() {
                        break;
                    }
                }
                LaneEvent::Peer(PeerEvent::GatheringComplete) => {
                    let message = LaneMessage {
                        lane, offer: None, answer: None,
                        candidates: Some(vec![Candidate::end_of_candidates()]),
                    };
                    if control.send(message.encode()).await.is_err() {
                        break;
                    }
                }
                LaneEvent::Peer(PeerEvent::Connected(channel)) => {
                    debug!(lane, "lane open");
                    if opened.send(channel).await.is_err() {
                        break;
                    }
                }
                LaneEvent::Peer(PeerEvent::Failed(reason)) => {
                    warn!(lane, %reason, "lane failed");
                    if let Some(peer) = peers.remove(&lane) {
                        peer.close().await;
                    }
                }
            },
        }
    }
    for peer in peers.values() {
        peer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let message = LaneMessage {
            lane: 3,
            offer: None,
            answer: Some("v=0".to_owned()),
            candidates: Some(vec![Candidate::end_of_candidates()]),
        };
        assert_eq!(LaneMessage::decode(&message.encode()), Ok(message));
    }

    #[test]
    fn hostile_messages_are_refused() {
        let huge_sdp = format!(
            r#"{{"lane":1,"offer":"{}"}}"#,
            "a".repeat(limits::MAX_SDP + 1)
        );
        for (message, expected) in [
            (r#"{"lane":0}"#.to_owned(), "out of range"),
            (r#"{"lane":200}"#.to_owned(), "out of range"),
            (r#"{"lane":-1}"#.to_owned(), "not a lane message"),
            (r#"{"offer":"x"}"#.to_owned(), "not a lane message"),
            (r#"[1,2]"#.to_owned(), "not a lane message"),
            (huge_sdp, "out of bounds"),
            (" ".repeat(MAX_CONTROL_MESSAGE + 1), "too large"),
        ] {
            let error = LaneMessage::decode(message.as_bytes()).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
    }
}
