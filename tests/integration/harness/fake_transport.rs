//! An in-process stand-in for WebRTC, for testing the signalling around it.
//!
//! Offer and answer SDPs carry tokens that name in-process endpoints, and the "connection"
//! opens only once both sides have received each other's candidate through the homeserver and
//! the offerer has applied the answer: every step of the signalling must really happen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use d2dfs::signalling::events::Candidate;
use d2dfs::signalling::turn::IceServers;
use d2dfs::transport::{Connector, NewPeer, Peer, PeerEvent, TransportError, memory};
use tokio::sync::mpsc;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One offer and the answers made to it.
#[derive(Default)]
struct Link {
    offerer_events: Option<mpsc::Sender<PeerEvent>>,
    chosen_answer: Option<u64>,
    /// Candidate ids the offerer received.
    offerer_heard: Vec<String>,
    answers: HashMap<u64, AnswerSide>,
}

struct AnswerSide {
    events: mpsc::Sender<PeerEvent>,
    heard_offerer: bool,
}

static LINKS: Mutex<Option<HashMap<u64, Arc<Mutex<Link>>>>> = Mutex::new(None);

fn link(offer_id: u64) -> Option<Arc<Mutex<Link>>> {
    LINKS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(&offer_id)
        .cloned()
}

/// The connector tests hand to the engine.
pub struct FakeConnector;

/// Reports one local candidate, then the end of gathering.
async fn gather(events: &mpsc::Sender<PeerEvent>, text: String) {
    events
        .send(PeerEvent::LocalCandidates(vec![candidate(text)]))
        .await
        .ok();
    events.send(PeerEvent::GatheringComplete).await.ok();
}

fn candidate(text: String) -> Candidate {
    Candidate {
        candidate: text,
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
    }
}

#[async_trait]
impl Connector for FakeConnector {
    async fn offer(&self, _ice: &IceServers) -> Result<NewPeer, TransportError> {
        let offer_id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16);
        let link = Arc::new(Mutex::new(Link {
            offerer_events: Some(tx.clone()),
            ..Link::default()
        }));
        LINKS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(offer_id, link.clone());
        gather(&tx, format!("candidate:fake offer {offer_id}")).await;
        Ok(NewPeer {
            peer: Box::new(FakePeer {
                offer_id,
                answer_id: None,
            }),
            sdp: format!("v=0\r\na=fake-offer:{offer_id}\r\n"),
            events: rx,
        })
    }

    async fn answer(&self, _ice: &IceServers, offer_sdp: &str) -> Result<NewPeer, TransportError> {
        let offer_id: u64 = offer_sdp
            .split("a=fake-offer:")
            .nth(1)
            .and_then(|rest| rest.trim().parse().ok())
            .ok_or_else(|| TransportError::BadDescription(offer_sdp.to_owned()))?;
        let link =
            link(offer_id).ok_or_else(|| TransportError::BadDescription("unknown offer".into()))?;
        let answer_id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16);
        link.lock().unwrap().answers.insert(
            answer_id,
            AnswerSide {
                events: tx.clone(),
                heard_offerer: false,
            },
        );
        gather(&tx, format!("candidate:fake answer {answer_id}")).await;
        Ok(NewPeer {
            peer: Box::new(FakePeer {
                offer_id,
                answer_id: Some(answer_id),
            }),
            sdp: format!("v=0\r\na=fake-answer:{answer_id}\r\n"),
            events: rx,
        })
    }
}

struct FakePeer {
    offer_id: u64,
    /// `None` on the offering side.
    answer_id: Option<u64>,
}

impl FakePeer {
    /// Opens the channel pair once every piece of signalling arrived.
    fn maybe_connect(&self) {
        let Some(link) = link(self.offer_id) else {
            return;
        };
        let mut link = link.lock().unwrap();
        let Some(chosen) = link.chosen_answer else {
            return;
        };
        if !link.offerer_heard.contains(&format!("answer {chosen}")) {
            return;
        }
        let answerer = match link.answers.get(&chosen) {
            Some(answer) if answer.heard_offerer => answer.events.clone(),
            _ => return,
        };
        let Some(offerer) = link.offerer_events.take() else {
            return;
        };
        let (a, b) = memory::pair(64);
        tokio::spawn(async move {
            offerer.send(PeerEvent::Connected(Box::new(a))).await.ok();
            answerer.send(PeerEvent::Connected(Box::new(b))).await.ok();
        });
    }
}

#[async_trait]
impl Peer for FakePeer {
    async fn set_answer(&self, sdp: &str) -> Result<(), TransportError> {
        let answer_id: u64 = sdp
            .split("a=fake-answer:")
            .nth(1)
            .and_then(|rest| rest.trim().parse().ok())
            .ok_or_else(|| TransportError::BadDescription(sdp.to_owned()))?;
        if let Some(link) = link(self.offer_id) {
            link.lock().unwrap().chosen_answer = Some(answer_id);
        }
        self.maybe_connect();
        Ok(())
    }

    async fn add_candidates(&self, candidates: &[Candidate]) -> Result<(), TransportError> {
        let Some(link) = link(self.offer_id) else {
            return Ok(());
        };
        {
            let mut link = link.lock().unwrap();
            for c in candidates {
                let Some(rest) = c.candidate.strip_prefix("candidate:fake ") else {
                    continue;
                };
                match self.answer_id {
                    None => link.offerer_heard.push(rest.to_owned()),
                    Some(id) => {
                        if rest.starts_with("offer ")
                            && let Some(side) = link.answers.get_mut(&id)
                        {
                            side.heard_offerer = true;
                        }
                    }
                }
            }
        }
        self.maybe_connect();
        Ok(())
    }

    async fn close(&self) {}
}
