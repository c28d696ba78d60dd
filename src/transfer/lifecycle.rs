//! The life of one transfer, for both roles, as a pure state machine.
//!
//! `offered → answered → connecting → transferring → complete`, or one of the endings
//! `cancelled`, `expired`, `failed` from any live phase. Inputs are signalling events already
//! judged by [`crate::signalling::sync`] and what the transport reports; outputs are
//! [`Action`]s for the caller to carry out (send an event, start or feed a connection). No
//! clock, no I/O: time comes in as `now_ms`, so every rule is unit-tested.
//!
//! Rules that are MSC2354's or VoIP v1's, and the choices where both are silent:
//! - An offer is live while its age is below its lifetime; an expired offer is never answered.
//! - The sending device takes exactly one answer: the first by timeline order. It says so with
//!   `org.d2dfs.select_answer`; every other answering device learns the offer was taken.
//! - A cancel from the peer ends the transfer. Before an answer is taken, a cancel from any
//!   other device is that device's rejection, and ends the offer (MSC2354: "to cancel a
//!   transfer or reject an offer"); after, only the chosen peer's cancel counts.
//! - A range-mode connection that fails is made again (`org.d2dfs.negotiate`): the receiving
//!   device offers, the chosen peer alone may answer, and only while the transfer is live.
//! - Events of our own device are echoes and change nothing.

use std::fmt;

use crate::signalling::events::{Candidate, FileInfo};

/// Which side of the transfer this device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sending,
    Receiving,
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Offered,
    Answered,
    Connecting,
    Transferring,
    Complete,
    Cancelled,
    Expired,
    Failed,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Complete | Self::Cancelled | Self::Expired | Self::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Answered => "answered",
            Self::Connecting => "connecting",
            Self::Transferring => "transferring",
            Self::Complete => "complete",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device taking part: its user and, when it said, its party id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    pub user_id: String,
    pub party_id: Option<String>,
}

impl Party {
    /// Whether an event from `other` comes from this party. Without party ids (plain MSC2354
    /// peers) the user is all we can compare.
    pub fn matches(&self, other: &Party) -> bool {
        self.user_id == other.user_id
            && match (&self.party_id, &other.party_id) {
                (Some(a), Some(b)) => a == b,
                (None, None) => true,
                _ => false,
            }
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.party_id {
            Some(party) => write!(f, "{} ({party})", self.user_id),
            None => f.write_str(&self.user_id),
        }
    }
}

/// What was offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferInfo {
    pub filename: String,
    pub info: FileInfo,
    pub sha256: Option<[u8; 32]>,
    /// The offerer speaks the range protocol.
    pub range: bool,
    /// The invite's `origin_server_ts`.
    pub origin_server_ts: u64,
    pub lifetime_ms: u64,
}

/// What the caller must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// (Sending) Apply this answer to the peer connection.
    UseAnswer {
        sdp: String,
        peer: Party,
        range: bool,
    },
    /// (Sending) Tell the room which answer was taken.
    SendSelectAnswer {
        answer_event_id: String,
        peer: Party,
    },
    /// (Sending) The receiver makes the failed connection again: answer this offer.
    Reconnect { offer_sdp: String },
    /// Feed the peer's candidates to the connection.
    AddCandidates(Vec<Candidate>),
    /// Send `m.d2dfile.cancel` with this reason.
    SendCancel { reason: String },
    /// Tear the connection down (the transfer ended).
    Close,
}

/// One transfer as this device sees it.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub transfer_id: String,
    pub room_id: String,
    pub role: Role,
    pub phase: Phase,
    pub offer: OfferInfo,
    /// The offering device.
    pub offerer: Party,
    /// (Sending) the device whose answer was taken; (Receiving) us once we answered.
    pub peer: Option<Party>,
    /// Local clock (ms since epoch) at which an unanswered offer expires.
    pub expires_at_ms: u64,
    /// Why it ended, for cancelled / failed / expired.
    pub reason: Option<String>,
    /// Both sides speak the range protocol.
    pub range: bool,
    /// Candidates that arrived before the connection could take them, with their sender.
    pending_candidates: Vec<(Party, Candidate)>,
}

impl Transfer {
    /// A transfer this device offers (its invite was just sent).
    pub fn new_outgoing(
        transfer_id: String,
        room_id: String,
        me: Party,
        offer: OfferInfo,
        now_ms: u64,
    ) -> Self {
        let expires_at_ms = now_ms.saturating_add(offer.lifetime_ms);
        Self {
            transfer_id,
            room_id,
            role: Role::Sending,
            phase: Phase::Offered,
            offer,
            offerer: me,
            peer: None,
            expires_at_ms,
            reason: None,
            range: false,
            pending_candidates: Vec::new(),
        }
    }

    /// A transfer offered to us; `age_ms` is the invite's age when it reached us.
    pub fn new_incoming(
        transfer_id: String,
        room_id: String,
        offerer: Party,
        offer: OfferInfo,
        age_ms: u64,
        now_ms: u64,
    ) -> Self {
        let remaining = offer.lifetime_ms.saturating_sub(age_ms);
        let mut transfer = Self {
            transfer_id,
            room_id,
            role: Role::Receiving,
            phase: Phase::Offered,
            offer,
            offerer,
            peer: None,
            expires_at_ms: now_ms.saturating_add(remaining),
            reason: None,
            range: false,
            pending_candidates: Vec::new(),
        };
        if remaining == 0 {
            transfer.end(Phase::Expired, "the offer expired before it arrived");
        }
        transfer
    }

    pub fn is_live(&self) -> bool {
        !self.phase.is_final()
    }

    fn end(&mut self, phase: Phase, reason: impl Into<String>) {
        self.phase = phase;
        self.reason = Some(reason.into());
    }

    /// Time passes: an offer nobody took expires.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        if self.phase == Phase::Offered && now_ms >= self.expires_at_ms {
            self.end(Phase::Expired, "the offer expired");
        }
        Vec::new()
    }

    /// (Receiving) The user accepts; returns false if the offer can no longer be answered.
    /// The caller then sends the answer.
    pub fn accept(&mut self, me: Party, we_speak_range: bool, now_ms: u64) -> bool {
        self.tick(now_ms);
        if self.role != Role::Receiving || self.phase != Phase::Offered {
            return false;
        }
        self.phase = Phase::Answered;
        self.peer = Some(me);
        self.range = self.offer.range && we_speak_range;
        true
    }

    /// This device ends the transfer (`rm`, Ctrl-C, unmount).
    pub fn cancel_locally(&mut self, reason: &str) -> Vec<Action> {
        self.end_and_tell_peer(Phase::Cancelled, reason)
    }

    /// Ends a live transfer from this side: the peer gets a cancel with `reason`.
    fn end_and_tell_peer(&mut self, phase: Phase, reason: &str) -> Vec<Action> {
        if !self.is_live() {
            return Vec::new();
        }
        self.end(phase, reason);
        vec![
            Action::SendCancel {
                reason: reason.to_owned(),
            },
            Action::Close,
        ]
    }

    /// An answer arrived. Sending: the first live one is taken. Receiving: another device
    /// took an offer this one has not answered (a plain sender serves one device and says no
    /// more), so it goes from the listing.
    pub fn on_answer(
        &mut self,
        from: Party,
        answer_event_id: &str,
        sdp: &str,
        peer_speaks_range: bool,
        now_ms: u64,
    ) -> Vec<Action> {
        self.tick(now_ms);
        if self.role == Role::Receiving {
            if self.phase == Phase::Offered {
                self.end(Phase::Cancelled, "taken by another device");
            }
            return Vec::new();
        }
        if self.phase != Phase::Offered {
            return Vec::new();
        }
        self.phase = Phase::Connecting;
        self.range = self.offer.range && peer_speaks_range;
        self.peer = Some(from.clone());
        let mut actions = vec![
            Action::UseAnswer {
                sdp: sdp.to_owned(),
                peer: from.clone(),
                range: self.range,
            },
            Action::SendSelectAnswer {
                answer_event_id: answer_event_id.to_owned(),
                peer: from,
            },
        ];
        let early = self.take_pending_candidates();
        if !early.is_empty() {
            actions.push(Action::AddCandidates(early));
        }
        actions
    }

    /// (Receiving) The offerer said which answer it took.
    pub fn on_select_answer(
        &mut self,
        from: &Party,
        selected: Option<&str>,
        me: &Party,
    ) -> Vec<Action> {
        if self.role != Role::Receiving || !self.offerer.matches(from) || !self.is_live() {
            return Vec::new();
        }
        let ours = selected.is_some() && selected == me.party_id.as_deref();
        match self.phase {
            Phase::Answered if ours => {
                self.phase = Phase::Connecting;
                Vec::new()
            }
            Phase::Offered | Phase::Answered if !ours => {
                self.end(Phase::Cancelled, "taken by another device");
                vec![Action::Close]
            }
            _ => Vec::new(),
        }
    }

    /// Candidates of another device arrived.
    pub fn on_candidates(&mut self, from: &Party, candidates: Vec<Candidate>) -> Vec<Action> {
        if !self.is_live() {
            return Vec::new();
        }
        let from_peer = match self.role {
            Role::Receiving => self.offerer.matches(from),
            Role::Sending => match &self.peer {
                Some(peer) => peer.matches(from),
                // Before an answer is taken we cannot tell whose they are: keep them with
                // their sender until one is.
                None => {
                    self.keep_candidates(from, candidates);
                    return Vec::new();
                }
            },
        };
        if !from_peer {
            return Vec::new();
        }
        if self.role == Role::Receiving && self.phase == Phase::Offered {
            // We have not answered (yet): the connection does not exist.
            self.keep_candidates(from, candidates);
            return Vec::new();
        }
        vec![Action::AddCandidates(candidates)]
    }

    /// Most candidates kept per transfer before a connection exists (a flood is cut off).
    const MAX_PENDING_CANDIDATES: usize = 512;

    fn keep_candidates(&mut self, from: &Party, candidates: Vec<Candidate>) {
        let room = Self::MAX_PENDING_CANDIDATES.saturating_sub(self.pending_candidates.len());
        self.pending_candidates
            .extend(candidates.into_iter().take(room).map(|c| (from.clone(), c)));
    }

    /// The kept candidates of the peer, now that there is a connection to take them.
    pub fn take_pending_candidates(&mut self) -> Vec<Candidate> {
        let peer = match self.role {
            Role::Receiving => Some(&self.offerer),
            Role::Sending => self.peer.as_ref(),
        };
        let Some(peer) = peer.cloned() else {
            return Vec::new();
        };
        std::mem::take(&mut self.pending_candidates)
            .into_iter()
            .filter(|(from, _)| peer.matches(from))
            .map(|(_, candidate)| candidate)
            .collect()
    }

    /// A cancel from another device arrived.
    pub fn on_cancel(&mut self, from: &Party, reason: Option<&str>) -> Vec<Action> {
        if !self.is_live() {
            return Vec::new();
        }
        let counts = match self.role {
            Role::Receiving => self.offerer.matches(from),
            Role::Sending => match &self.peer {
                Some(peer) => peer.matches(from),
                None => true,
            },
        };
        if !counts {
            return Vec::new();
        }
        let what = if self.role == Role::Sending && self.peer.is_none() {
            "rejected"
        } else {
            "cancelled"
        };
        let reason = match reason {
            Some(reason) => format!("{what} by {from}: {reason}"),
            None => format!("{what} by {from}"),
        };
        self.end(Phase::Cancelled, reason);
        vec![Action::Close]
    }

    /// A fresh description for a connection made again (`org.d2dfs.negotiate`): an offer
    /// from the receiver we serve, or the offerer's answer to ours. Anyone else's, or one
    /// for a transfer that is not connected in range mode, changes nothing.
    pub fn on_negotiate(&mut self, from: &Party, kind: &str, sdp: &str) -> Vec<Action> {
        if !self.range || !matches!(self.phase, Phase::Connecting | Phase::Transferring) {
            return Vec::new();
        }
        match (self.role, kind) {
            (Role::Sending, "offer") if self.peer.as_ref().is_some_and(|p| p.matches(from)) => {
                vec![Action::Reconnect {
                    offer_sdp: sdp.to_owned(),
                }]
            }
            (Role::Receiving, "answer") if self.offerer.matches(from) => vec![Action::UseAnswer {
                sdp: sdp.to_owned(),
                peer: from.clone(),
                range: true,
            }],
            _ => Vec::new(),
        }
    }

    /// The data channel opened.
    pub fn on_connected(&mut self) {
        if matches!(self.phase, Phase::Answered | Phase::Connecting) {
            self.phase = Phase::Transferring;
        }
    }

    /// Every byte arrived (receiving) or the peer has them (sending).
    pub fn on_complete(&mut self) {
        if self.is_live() {
            self.phase = Phase::Complete;
            self.reason = None;
        }
    }

    /// The connection failed for good.
    pub fn on_failed(&mut self, reason: &str) -> Vec<Action> {
        self.end_and_tell_peer(Phase::Failed, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(user: &str, device: Option<&str>) -> Party {
        Party {
            user_id: user.to_owned(),
            party_id: device.map(str::to_owned),
        }
    }

    fn offer(range: bool) -> OfferInfo {
        OfferInfo {
            filename: "f".into(),
            info: FileInfo {
                mimetype: "a/b".into(),
                size: 10,
            },
            sha256: None,
            range,
            origin_server_ts: 0,
            lifetime_ms: 60_000,
        }
    }

    fn outgoing() -> Transfer {
        Transfer::new_outgoing(
            "t".into(),
            "!r".into(),
            party("@a", Some("A")),
            offer(true),
            0,
        )
    }

    fn incoming(age: u64) -> Transfer {
        Transfer::new_incoming(
            "t".into(),
            "!r".into(),
            party("@a", Some("A")),
            offer(true),
            age,
            1000,
        )
    }

    #[test]
    fn sender_takes_the_first_answer_only() {
        let mut t = outgoing();
        let actions = t.on_answer(party("@b", Some("B1")), "$1", "sdp1", true, 10);
        assert_eq!(t.phase, Phase::Connecting);
        assert!(t.range);
        assert!(matches!(&actions[0], Action::UseAnswer { sdp, .. } if sdp == "sdp1"));
        assert!(
            matches!(&actions[1], Action::SendSelectAnswer { answer_event_id, .. } if answer_event_id == "$1")
        );
        assert!(
            t.on_answer(party("@b", Some("B2")), "$2", "sdp2", true, 11)
                .is_empty()
        );
        assert_eq!(t.peer, Some(party("@b", Some("B1"))));
        // The other device's cancel no longer matters; the chosen one's does.
        assert!(t.on_cancel(&party("@b", Some("B2")), None).is_empty());
        assert_eq!(
            t.on_cancel(&party("@b", Some("B1")), Some("bye")),
            vec![Action::Close]
        );
        assert_eq!(t.phase, Phase::Cancelled);
        assert!(t.reason.as_deref().unwrap().contains("bye"));
    }

    #[test]
    fn an_offer_answered_by_another_device_is_gone_here() {
        let mut t = incoming(0);
        assert!(
            t.on_answer(party("@c", None), "$1", "sdp", false, 1000)
                .is_empty()
        );
        assert_eq!(t.phase, Phase::Cancelled);
        assert!(!t.accept(party("@b", Some("B")), true, 1001));
        // An offer this device answered itself is not affected.
        let mut t = incoming(0);
        assert!(t.accept(party("@b", Some("B")), true, 1000));
        t.on_answer(party("@c", None), "$1", "sdp", false, 1001);
        assert_eq!(t.phase, Phase::Answered);
    }

    #[test]
    fn range_needs_both_sides() {
        let mut t = outgoing();
        t.on_answer(party("@b", None), "$1", "sdp", false, 0);
        assert!(!t.range);
        let mut t = incoming(0);
        t.offer.range = false;
        assert!(t.accept(party("@b", Some("B")), true, 1000));
        assert!(!t.range);
    }

    #[test]
    fn answers_after_expiry_are_ignored() {
        let mut t = outgoing();
        assert!(
            t.on_answer(party("@b", None), "$1", "sdp", true, 60_000)
                .is_empty()
        );
        assert_eq!(t.phase, Phase::Expired);
    }

    #[test]
    fn receiver_expiry_counts_the_age() {
        let mut t = incoming(59_000);
        assert_eq!(t.expires_at_ms, 2000);
        assert!(!t.accept(party("@b", Some("B")), true, 2000));
        assert_eq!(t.phase, Phase::Expired);
        let t = incoming(60_000);
        assert_eq!(t.phase, Phase::Expired);
        let mut t = incoming(0);
        assert!(t.accept(party("@b", Some("B")), true, 5000));
        assert!(
            !t.accept(party("@b", Some("B")), true, 5000),
            "answered twice"
        );
    }

    #[test]
    fn receiver_learns_the_offer_was_taken_elsewhere() {
        let me = party("@b", Some("B1"));
        let mut t = incoming(0);
        t.accept(me.clone(), true, 1000);
        // A select from someone who is not the offerer is ignored.
        assert!(
            t.on_select_answer(&party("@evil", Some("A")), Some("B2"), &me)
                .is_empty()
        );
        assert_eq!(
            t.on_select_answer(&party("@a", Some("A")), Some("B2"), &me),
            vec![Action::Close]
        );
        assert_eq!(t.phase, Phase::Cancelled);
        assert_eq!(t.reason.as_deref(), Some("taken by another device"));

        let mut t = incoming(0);
        t.accept(me.clone(), true, 1000);
        t.on_select_answer(&party("@a", Some("A")), Some("B1"), &me);
        assert_eq!(t.phase, Phase::Connecting);
        t.on_connected();
        assert_eq!(t.phase, Phase::Transferring);
        t.on_complete();
        assert_eq!(t.phase, Phase::Complete);
    }

    #[test]
    fn sender_rejection_and_receiver_cancel() {
        let mut t = outgoing();
        assert_eq!(
            t.on_cancel(&party("@b", Some("B")), None),
            vec![Action::Close]
        );
        assert!(
            t.reason
                .as_deref()
                .unwrap()
                .starts_with("rejected by @b (B)")
        );
        let mut t = incoming(0);
        // Only the offerer can cancel the offer for the receiver.
        assert!(t.on_cancel(&party("@c", Some("C")), None).is_empty());
        assert_eq!(
            t.on_cancel(&party("@a", Some("A")), None),
            vec![Action::Close]
        );
        assert_eq!(t.phase, Phase::Cancelled);
    }

    #[test]
    fn early_candidates_wait_for_the_connection() {
        let c = Candidate {
            candidate: "candidate:1".into(),
            sdp_mid: None,
            sdp_mline_index: Some(0),
        };
        let mut t = outgoing();
        assert!(
            t.on_candidates(&party("@b", Some("B")), vec![c.clone()])
                .is_empty()
        );
        let actions = t.on_answer(party("@b", Some("B")), "$1", "sdp", true, 0);
        assert_eq!(
            actions.last(),
            Some(&Action::AddCandidates(vec![c.clone()]))
        );

        let mut t = incoming(0);
        assert!(
            t.on_candidates(&party("@a", Some("A")), vec![c.clone()])
                .is_empty()
        );
        t.accept(party("@b", Some("B")), true, 1000);
        assert_eq!(t.take_pending_candidates(), vec![c.clone()]);
        assert_eq!(
            t.on_candidates(&party("@a", Some("A")), vec![c.clone()]),
            vec![Action::AddCandidates(vec![c])]
        );
    }

    #[test]
    fn local_cancel_and_failure_send_a_cancel_once() {
        let mut t = incoming(0);
        let actions = t.cancel_locally("rejected");
        assert!(matches!(&actions[0], Action::SendCancel { .. }));
        assert!(t.cancel_locally("again").is_empty());
        assert!(t.on_failed("x").is_empty());
        let mut t = outgoing();
        assert_eq!(t.on_failed("ICE failed").len(), 2);
        assert_eq!(t.phase, Phase::Failed);
    }

    #[test]
    fn only_the_peer_of_a_connected_range_transfer_renegotiates() {
        let (bob, mallory) = (party("@b", Some("B")), party("@m", Some("M")));
        let mut t = outgoing();
        // Not connected yet: nothing to make again.
        assert!(t.on_negotiate(&bob, "offer", "sdp").is_empty());
        t.on_answer(bob.clone(), "$answer", "sdp", true, 1);
        t.on_connected();
        assert!(t.on_negotiate(&mallory, "offer", "sdp").is_empty());
        assert!(t.on_negotiate(&bob, "answer", "sdp").is_empty());
        assert_eq!(
            t.on_negotiate(&bob, "offer", "sdp2"),
            vec![Action::Reconnect {
                offer_sdp: "sdp2".into()
            }]
        );
        t.on_complete();
        assert!(t.on_negotiate(&bob, "offer", "sdp").is_empty());

        let alice = party("@a", Some("A"));
        let mut t = incoming(0);
        assert!(t.accept(bob.clone(), true, 1000));
        t.on_select_answer(&alice, Some("B"), &bob);
        assert!(t.on_negotiate(&mallory, "answer", "sdp").is_empty());
        assert!(t.on_negotiate(&alice, "offer", "sdp").is_empty());
        assert!(matches!(
            t.on_negotiate(&alice, "answer", "sdp3")[..],
            [Action::UseAnswer { ref sdp, .. }] if sdp == "sdp3"
        ));

        // Stream mode has no way to go on where it stopped.
        let mut t = incoming(0);
        assert!(t.accept(bob.clone(), false, 1000));
        t.on_select_answer(&alice, Some("B"), &bob);
        assert!(t.on_negotiate(&alice, "answer", "sdp").is_empty());
    }
}
