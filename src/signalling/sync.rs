//! The sync loop: a long-running service that turns Matrix timelines into judged
//! [`IncomingEvent`]s for the transfer layer.
//!
//! - It never does transfer work itself: events go into a bounded channel and the loop moves on.
//! - It survives homeserver errors and restarts (`Client::sync` gives up on the first error; this
//!   loop retries with backoff) and stops only on a revoked session or on shutdown.
//! - Its position is matrix-sdk's sync token, persisted in the SQLite state store, so a restart
//!   neither loses nor replays timeline events.
//! - At start, and whenever a room's timeline comes back `limited` (a gap), it reads recent room
//!   history, so offers sent while it was offline — or seen before a restart — that are still
//!   inside their lifetime are caught. The transfer layer drops duplicates by event id.
//! - An encrypted event whose room key has not arrived yet (keys travel as to-device messages
//!   and may come a sync later) is kept and decrypted again after every round, for a while.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::{
    EncryptionInfo, TimelineEvent, TimelineEventKind, VerificationState,
};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::filter::FilterDefinition;
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::events::AnySyncTimelineEvent;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId};
use matrix_sdk::{Client, Room, RoomState};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::errors::{MatrixError, RequestKind};
use super::events::{D2dEvent, ParseError, limits};

/// This device, to tell its own echoes from a peer's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnDevice {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

/// What decryption told about an event's sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decryption {
    pub sender_device: Option<OwnedDeviceId>,
    /// The sending device is cross-signed by an identity this account verified.
    pub verified: bool,
}

impl From<&EncryptionInfo> for Decryption {
    fn from(info: &EncryptionInfo) -> Self {
        Self {
            sender_device: info.sender_device.clone(),
            verified: matches!(info.verification_state, VerificationState::Verified),
        }
    }
}

/// A signalling event from a room timeline that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingEvent {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    /// The sender's homeserver's clock, milliseconds since the epoch.
    pub origin_server_ts: u64,
    /// How old the event was when we got it (milliseconds; `unsigned.age`, else from the clock).
    pub age_ms: u64,
    /// Our own device sent it (an echo).
    pub own_device: bool,
    /// `Some` when it arrived encrypted.
    pub decryption: Option<Decryption>,
    pub event: D2dEvent,
}

impl IncomingEvent {
    /// Milliseconds of life an offer or answer with `lifetime_ms` has left (0 when expired).
    /// VoIP v1 semantics: an event is live while its age is below its lifetime.
    pub fn remaining_ms(&self, lifetime_ms: u64) -> u64 {
        lifetime_ms.saturating_sub(self.age_ms)
    }
}

/// Why a timeline event was not passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("not a d2dfile event")]
    NotSignalling,
    #[error("plaintext {0} in an encrypted room (a homeserver could have injected it)")]
    PlaintextInEncryptedRoom(String),
    #[error("{event_type} without the fields every event has")]
    NoEnvelope { event_type: String },
    #[error("{event_type}: {error}")]
    Invalid {
        event_type: String,
        error: ParseError,
    },
}

/// Judges one timeline event (its decrypted JSON, when it was encrypted). Pure: no I/O.
pub fn classify(
    room_id: &OwnedRoomId,
    json: &Value,
    decryption: Option<Decryption>,
    room_encrypted: bool,
    me: &OwnDevice,
    now_ms: u64,
) -> Result<IncomingEvent, Ignored> {
    let event_type = json.get("type").and_then(Value::as_str).unwrap_or("");
    if !D2dEvent::is_d2d_type(event_type) {
        return Err(Ignored::NotSignalling);
    }
    if room_encrypted && decryption.is_none() {
        return Err(Ignored::PlaintextInEncryptedRoom(event_type.to_owned()));
    }
    let no_envelope = || Ignored::NoEnvelope {
        event_type: event_type.to_owned(),
    };
    let sender: OwnedUserId = json
        .get("sender")
        .and_then(Value::as_str)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(no_envelope)?;
    let event_id: OwnedEventId = json
        .get("event_id")
        .and_then(Value::as_str)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(no_envelope)?;
    let origin_server_ts = json
        .get("origin_server_ts")
        .and_then(Value::as_u64)
        .ok_or_else(no_envelope)?;
    let unsigned = json.get("unsigned");
    let age_ms = unsigned
        .and_then(|u| u.get("age"))
        .and_then(Value::as_i64)
        .map(|age| age.max(0) as u64)
        .unwrap_or_else(|| now_ms.saturating_sub(origin_server_ts));
    let content = json.get("content").unwrap_or(&Value::Null);
    let event = D2dEvent::parse(event_type, content).map_err(|error| Ignored::Invalid {
        event_type: event_type.to_owned(),
        error,
    })?;

    // Own echoes are recognised by device, not by user: two devices of one user transfer to
    // each other. Only the sending device sees its transaction id in `unsigned`.
    let own_device = sender == me.user_id
        && (unsigned.and_then(|u| u.get("transaction_id")).is_some()
            || decryption
                .as_ref()
                .and_then(|d| d.sender_device.as_ref())
                .is_some_and(|d| *d == me.device_id)
            || event.party_id() == Some(me.device_id.as_str()));
    Ok(IncomingEvent {
        room_id: room_id.clone(),
        event_id,
        sender,
        origin_server_ts,
        age_ms,
        own_device,
        decryption,
        event,
    })
}

/// What the sync service reports.
#[derive(Debug)]
pub enum SyncOutput {
    /// A signalling event, in timeline order per room.
    Event(Box<IncomingEvent>),
    /// The set of joined rooms (or their state: name, join rule, encryption) may have changed.
    RoomsChanged,
    /// One sync round finished (the first one means: caught up).
    Synced,
    /// The loop stopped for good (the session was revoked).
    Stopped(MatrixError),
}

/// How far back the catch-up reads a room's history: every accepted lifetime fits, but a
/// busy room is read at most this many events deep.
const HISTORY_MAX_EVENTS: usize = 1000;
const HISTORY_PAGE: u32 = 100;

/// Runs the sync loop until `shutdown` fires or the session is revoked.
pub async fn run(
    client: Client,
    me: OwnDevice,
    output: mpsc::Sender<SyncOutput>,
    shutdown: CancellationToken,
) {
    let homeserver = client.homeserver().to_string();
    let filter = Filter::FilterDefinition(FilterDefinition::with_lazy_loading());
    let mut backoff = Backoff::new();
    let mut caught_up = false;
    let mut undecrypted = Undecrypted::default();
    loop {
        let settings = SyncSettings::default()
            .filter(filter.clone())
            .timeout(if caught_up {
                Duration::from_secs(30)
            } else {
                Duration::ZERO
            });
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = client.sync_once(settings) => result,
        };
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let error = MatrixError::from_sdk(&error, &homeserver, RequestKind::Authenticated);
                if matches!(error, MatrixError::TokenRevoked) {
                    let _ = output.send(SyncOutput::Stopped(error)).await;
                    return;
                }
                let delay = backoff.next_delay();
                warn!(%error, ?delay, "sync failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        backoff.reset();
        if !caught_up {
            // Offers from before this run (or before a gap) that are still live.
            for room in client.joined_rooms() {
                if !read_history(&room, None, &me, &output, &mut undecrypted).await {
                    return;
                }
            }
        }
        let membership_changed = !response.rooms.left.is_empty()
            || !response.rooms.invited.is_empty()
            || response.rooms.joined.values().any(|update| {
                has_state(&update.state) || update.timeline.events.iter().any(is_state_event)
            });
        for (room_id, update) in response.rooms.joined {
            let Some(room) = client.get_room(&room_id) else {
                continue;
            };
            if update.timeline.limited && caught_up {
                info!(%room_id, "timeline gap; reading history");
                let from = update.timeline.prev_batch.clone();
                if !read_history(&room, from, &me, &output, &mut undecrypted).await {
                    return;
                }
            }
            for event in &update.timeline.events {
                if !forward(&room, event, &me, &output, &mut undecrypted).await {
                    return;
                }
            }
        }
        if !undecrypted.retry(&me, &output).await {
            return;
        }
        if (membership_changed || !caught_up)
            && output.send(SyncOutput::RoomsChanged).await.is_err()
        {
            return;
        }
        caught_up = true;
        if output.send(SyncOutput::Synced).await.is_err() {
            return;
        }
    }
}

fn has_state(state: &matrix_sdk::sync::State) -> bool {
    match state {
        matrix_sdk::sync::State::Before(events) | matrix_sdk::sync::State::After(events) => {
            !events.is_empty()
        }
    }
}

fn is_state_event(event: &TimelineEvent) -> bool {
    event
        .raw()
        .get_field::<String>("state_key")
        .ok()
        .flatten()
        .is_some()
}

/// Encrypted events that could not be decrypted yet, oldest first.
#[derive(Default)]
struct Undecrypted {
    events: VecDeque<(Room, Raw<AnySyncTimelineEvent>, Instant)>,
}

impl Undecrypted {
    /// Most events kept; beyond it the oldest are given up.
    const MAX: usize = 256;
    /// How long an event waits for its key.
    const WAIT: Duration = Duration::from_secs(600);

    fn keep(&mut self, room: &Room, event: &TimelineEvent) {
        if self.events.len() == Self::MAX {
            self.events.pop_front();
        }
        self.events
            .push_back((room.clone(), event.raw().clone(), Instant::now()));
    }

    /// Decrypts again what waits; passes on what now decrypts. False when the receiver is gone.
    async fn retry(&mut self, me: &OwnDevice, output: &mpsc::Sender<SyncOutput>) -> bool {
        let waiting = std::mem::take(&mut self.events);
        for (room, raw, since) in waiting {
            let encrypted = raw.cast_ref_unchecked::<OriginalSyncRoomEncryptedEvent>();
            match room.decrypt_event(encrypted, None).await {
                Ok(event) if !matches!(event.kind, TimelineEventKind::UnableToDecrypt { .. }) => {
                    debug!(room_id = %room.room_id(), "late room key: event decrypted");
                    if !forward(&room, &event, me, output, self).await {
                        return false;
                    }
                }
                _ if since.elapsed() < Self::WAIT => self.events.push_back((room, raw, since)),
                _ => debug!(room_id = %room.room_id(), "gave up on an undecryptable event"),
            }
        }
        true
    }
}

/// Passes one timeline event on if it is signalling (keeps it for later if it could not be
/// decrypted yet); false when the receiver is gone.
async fn forward(
    room: &Room,
    event: &TimelineEvent,
    me: &OwnDevice,
    output: &mpsc::Sender<SyncOutput>,
    undecrypted: &mut Undecrypted,
) -> bool {
    if matches!(event.kind, TimelineEventKind::UnableToDecrypt { .. }) {
        undecrypted.keep(room, event);
        return true;
    }
    let Ok(json) = serde_json::from_str::<Value>(event.raw().json().get()) else {
        return true;
    };
    let decryption = event
        .encryption_info()
        .map(|info| Decryption::from(info.as_ref()));
    let encrypted = room.encryption_state().is_encrypted();
    match classify(
        &room.room_id().to_owned(),
        &json,
        decryption,
        encrypted,
        me,
        now_ms(),
    ) {
        Ok(incoming) => output
            .send(SyncOutput::Event(Box::new(incoming)))
            .await
            .is_ok(),
        Err(Ignored::NotSignalling) => true,
        Err(ignored) => {
            warn!(room_id = %room.room_id(), event_id = ?event.event_id(), "ignored event: {ignored}");
            true
        }
    }
}

/// Reads a room's recent history backwards from `from` (None: the newest event), then passes
/// the signalling events on in timeline order. Stops at events older than any accepted
/// lifetime or after [`HISTORY_MAX_EVENTS`].
async fn read_history(
    room: &Room,
    from: Option<String>,
    me: &OwnDevice,
    output: &mpsc::Sender<SyncOutput>,
    undecrypted: &mut Undecrypted,
) -> bool {
    if room.state() != RoomState::Joined {
        return true;
    }
    let oldest_wanted = now_ms().saturating_sub(limits::MAX_LIFETIME_MS);
    let mut collected: Vec<TimelineEvent> = Vec::new();
    let mut token = from;
    let mut read = 0;
    'pages: while read < HISTORY_MAX_EVENTS {
        let mut options = MessagesOptions::backward().from(token.as_deref());
        options.limit = HISTORY_PAGE.into();
        let messages = match room.messages(options).await {
            Ok(messages) => messages,
            Err(error) => {
                warn!(room_id = %room.room_id(), %error, "cannot read room history");
                break;
            }
        };
        if messages.chunk.is_empty() {
            break;
        }
        for event in messages.chunk {
            read += 1;
            let ts = event.timestamp_raw().map_or(0, |t| u64::from(t.get()));
            if ts < oldest_wanted {
                break 'pages;
            }
            collected.push(event);
        }
        match messages.end {
            Some(end) => token = Some(end),
            None => break,
        }
    }
    debug!(room_id = %room.room_id(), events = collected.len(), "read history");
    for event in collected.iter().rev() {
        if !forward(room, event, me, output, undecrypted).await {
            return false;
        }
    }
    true
}

/// Milliseconds since the Unix epoch, by the local clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Retry delays: 1 s doubling up to 30 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn me() -> OwnDevice {
        OwnDevice {
            user_id: "@me:localhost".try_into().unwrap(),
            device_id: "MYDEVICE".into(),
        }
    }

    fn room() -> OwnedRoomId {
        "!room:localhost".try_into().unwrap()
    }

    fn cancel_event(sender: &str, unsigned: Value) -> Value {
        json!({
            "type": "m.d2dfile.cancel",
            "sender": sender,
            "event_id": "$e1",
            "origin_server_ts": 1_000_000u64,
            "unsigned": unsigned,
            "content": { "transfer_id": "t", "version": 0 },
        })
    }

    #[test]
    fn own_echoes_are_recognised_by_device() {
        let echo = cancel_event("@me:localhost", json!({ "transaction_id": "txn1" }));
        assert!(
            classify(&room(), &echo, None, false, &me(), 0)
                .unwrap()
                .own_device
        );
        // Same user, another device: not an echo.
        let other_device = cancel_event("@me:localhost", json!({}));
        assert!(
            !classify(&room(), &other_device, None, false, &me(), 0)
                .unwrap()
                .own_device
        );
        let encrypted_other = Decryption {
            sender_device: Some("OTHER".into()),
            verified: false,
        };
        assert!(
            !classify(
                &room(),
                &other_device,
                Some(encrypted_other),
                true,
                &me(),
                0
            )
            .unwrap()
            .own_device
        );
        let encrypted_mine = Decryption {
            sender_device: Some("MYDEVICE".into()),
            verified: true,
        };
        assert!(
            classify(&room(), &other_device, Some(encrypted_mine), true, &me(), 0)
                .unwrap()
                .own_device
        );
        // Another user's transaction id can't make it ours.
        let peer = cancel_event("@peer:localhost", json!({ "transaction_id": "x" }));
        assert!(
            !classify(&room(), &peer, None, false, &me(), 0)
                .unwrap()
                .own_device
        );
    }

    #[test]
    fn plaintext_in_encrypted_rooms_is_ignored() {
        let event = cancel_event("@peer:localhost", json!({}));
        assert!(matches!(
            classify(&room(), &event, None, true, &me(), 0),
            Err(Ignored::PlaintextInEncryptedRoom(_))
        ));
    }

    #[test]
    fn age_comes_from_unsigned_or_the_clock() {
        let event = cancel_event("@peer:localhost", json!({ "age": 1234 }));
        assert_eq!(
            classify(&room(), &event, None, false, &me(), 0)
                .unwrap()
                .age_ms,
            1234
        );
        let event = cancel_event("@peer:localhost", json!({}));
        let incoming = classify(&room(), &event, None, false, &me(), 1_005_000).unwrap();
        assert_eq!(incoming.age_ms, 5000);
        assert_eq!(incoming.remaining_ms(60_000), 55_000);
        assert_eq!(incoming.remaining_ms(1_000), 0);
    }

    #[test]
    fn broken_events_are_ignored_not_fatal() {
        let mut event = cancel_event("@peer:localhost", json!({}));
        event["content"]["version"] = json!(1);
        assert!(matches!(
            classify(&room(), &event, None, false, &me(), 0),
            Err(Ignored::Invalid { .. })
        ));
        let mut event = cancel_event("@peer:localhost", json!({}));
        event["sender"] = json!("not a user id");
        assert!(matches!(
            classify(&room(), &event, None, false, &me(), 0),
            Err(Ignored::NoEnvelope { .. })
        ));
        let other = json!({ "type": "m.room.message", "content": {} });
        assert_eq!(
            classify(&room(), &other, None, false, &me(), 0),
            Err(Ignored::NotSignalling)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..7).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_secs(), 1);
    }
}
