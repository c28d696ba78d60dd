//! The transfer engine: runs the sync loop, keeps every transfer's [`Transfer`] state, carries
//! out the [`Action`]s it asks for, and drives one peer task per connected transfer.
//!
//! Nothing here blocks on the network while holding the state lock: signalling events leave
//! through one ordered outbox task (so an answer always precedes its candidates), peers are
//! driven by their own tasks, and callers (the CLI, the filesystem) only ever take short locks.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use matrix_sdk::Client;
use matrix_sdk::ruma::events::room::join_rules::JoinRule;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, RoomId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::lanes::{self, LaneRole};
use super::lifecycle::{Action, OfferInfo, Party, Phase, Role, Transfer};
use super::range::{self, LaneChannel, RangeClient, RangeSource};
use crate::cache::spool::{self, SpoolReader, SpoolWriter};
use crate::hex;
use crate::signalling::events::{
    Answer, Cancel, Candidate, Candidates, D2dEvent, FileInfo, Invite, MAX_LANES, Negotiate,
    SelectAnswer, SessionDescription, limits,
};
use crate::signalling::sync::{self, IncomingEvent, OwnDevice, SyncOutput, now_ms};
use crate::signalling::turn::TurnCache;
use crate::transport::{Channel, Connector, NewPeer, Peer, PeerEvent};

/// Settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Make and show offers in rooms whose join rule is `public` (SPEC §5: off by default).
    pub allow_public_rooms: bool,
    /// Lifetime of the offers this device makes.
    pub lifetime: Duration,
    /// Deal only with devices this account verified (cross-signed by a verified identity, or
    /// our own devices we signed): offers and answers from any other device are ignored.
    pub verified_only: bool,
    /// Extra connections ("lanes") a range-mode transfer may use, offering or answering.
    pub lanes: u8,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            allow_public_rooms: false,
            lifetime: Duration::from_secs(600),
            verified_only: false,
            lanes: DEFAULT_LANES,
        }
    }
}

/// Extra connections per range-mode transfer unless configured: none. Lanes multiply the
/// CPU a transfer takes (DTLS and SCTP per connection): on a loaded two-core machine they
/// starved other transfers in the test suite. `mount --lanes 7` is where the benchmark stops
/// gaining on two cores (contrib/bench/RESULTS.md).
pub const DEFAULT_LANES: u8 = 0;

/// Why an engine call was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("not a joined room: {0}")]
    NoSuchRoom(String),
    #[error("{0} is a public room: d2dfs makes no offers there (see --allow-public-rooms)")]
    PublicRoom(String),
    #[error("no live transfer {0}")]
    NoSuchTransfer(String),
    #[error("transfer {0} can no longer be accepted")]
    NotAcceptable(String),
    #[error("the sender of {0} does not speak the range protocol")]
    NoRangeMode(String),
    #[error("cannot read {path}: {error}")]
    Source {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot send the offer: {0}")]
    Signalling(String),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("the operating system gave no random numbers: {0}")]
    Randomness(String),
}

/// What [`Engine::offer`] offers.
#[derive(Debug, Clone, Copy)]
pub struct OfferRequest<'a> {
    pub room_id: &'a RoomId,
    /// The file whose bytes are served; it must not change while offered.
    pub path: &'a Path,
    /// The name the room sees.
    pub filename: &'a str,
    pub size: u64,
    pub sha256: Option<[u8; 32]>,
    /// How long the offer stays open (capped at the protocol's maximum).
    pub lifetime: Duration,
}

/// A transfer as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSnapshot {
    pub transfer_id: String,
    pub room_id: String,
    pub role: Role,
    pub phase: Phase,
    pub filename: String,
    pub size: u64,
    pub mimetype: String,
    pub sha256: Option<String>,
    /// The offering user.
    pub sender: String,
    /// The other device, once known.
    pub peer: Option<String>,
    pub bytes_moved: u64,
    pub origin_server_ts: u64,
    pub expires_at_ms: u64,
    pub reason: Option<String>,
    /// Range mode is in use (both sides speak it).
    pub range: bool,
    /// The offerer advertised range mode.
    pub offer_range: bool,
    /// Once connected: `direct` or `relay`.
    pub path: Option<String>,
    /// Extra connections ("lanes") open for this transfer so far.
    pub lanes_open: u8,
    /// Times the connection failed and was made again.
    pub reconnects: u32,
}

/// Commands to a transfer's peer task.
enum PeerCommand {
    UseAnswer(String),
    /// (Sending) The receiver offers a new connection for this transfer.
    Reconnect(String),
    AddCandidates(Vec<Candidate>),
    Close,
}

/// What a connected transfer does with its channel.
enum DataJob {
    /// Stream the whole file, in order, then close (MSC2354's baseline).
    SendFile(PathBuf),
    /// Keep what arrives in `part`, renamed to `dest` once complete and checked.
    ReceiveFile { dest: PathBuf },
    /// Ask for ranges on behalf of a [`RangeSource`].
    ReceiveRanges(RangeClient),
    /// Keep what arrives in a spool that readers follow (the filesystem, plain peers).
    ReceiveSpool(SpoolWriter),
}

struct Entry {
    transfer: Transfer,
    commands: Option<mpsc::UnboundedSender<PeerCommand>>,
    bytes_moved: Arc<AtomicU64>,
    /// (Receiving) the offer to answer.
    remote_offer: Option<String>,
    /// (Sending) the file offered, for re-offers.
    source: Option<PathBuf>,
    /// Once connected: `direct` or `relay`.
    path: Option<String>,
    /// Extra connections: (receiving) those the invite offered, then those agreed on
    /// answering; (sending) those agreed with the answer taken.
    lanes: u8,
    /// Extra connections opened so far.
    lanes_open: Arc<AtomicU8>,
    /// Times the connection failed and was made again.
    reconnects: u32,
}

impl Entry {
    fn snapshot(&self) -> TransferSnapshot {
        let t = &self.transfer;
        TransferSnapshot {
            transfer_id: t.transfer_id.clone(),
            room_id: t.room_id.clone(),
            role: t.role,
            phase: t.phase,
            filename: t.offer.filename.clone(),
            size: t.offer.info.size,
            mimetype: t.offer.info.mimetype.clone(),
            sha256: t.offer.sha256.as_ref().map(|d| hex::encode(d)),
            sender: t.offerer.user_id.clone(),
            peer: t.peer.as_ref().map(ToString::to_string),
            bytes_moved: self.bytes_moved.load(Ordering::Relaxed),
            origin_server_ts: t.offer.origin_server_ts,
            expires_at_ms: t.expires_at_ms,
            reason: t.reason.clone(),
            range: t.range,
            offer_range: t.offer.range,
            path: self.path.clone(),
            lanes_open: self.lanes_open.load(Ordering::Relaxed),
            reconnects: self.reconnects,
        }
    }
}

struct State {
    transfers: HashMap<String, Entry>,
    /// Event ids already handled: history reads and sync overlap.
    seen: LruCache<OwnedEventId, ()>,
}

/// A range-mode transfer's connection being made again.
struct Reconnecting {
    /// Past this the transfer fails.
    give_up_at: Instant,
    /// (Receiving) when the next fresh offer goes out.
    next_attempt: Instant,
    attempts: u32,
    /// Why the connection failed.
    reason: String,
}

/// A transfer's data job and the channels that feed it: the connection's own, then its lanes.
struct DataSide {
    /// Waiting for the connection to open.
    job: Option<DataJob>,
    lanes_tx: mpsc::Sender<LaneChannel>,
    lanes_rx: Option<mpsc::Receiver<LaneChannel>>,
    /// The job, once started.
    task: Option<tokio::task::JoinHandle<()>>,
    /// What sets up the lanes, once started.
    lanes_task: Option<tokio::task::JoinHandle<()>>,
}

impl DataSide {
    fn new(job: DataJob) -> Self {
        let (lanes_tx, lanes_rx) = mpsc::channel(usize::from(MAX_LANES) + 1);
        Self {
            job: Some(job),
            lanes_tx,
            lanes_rx: Some(lanes_rx),
            task: None,
            lanes_task: None,
        }
    }

    /// Stops what runs, and starts `job` afresh once the next connection opens.
    fn restart(&mut self, job: DataJob) {
        self.stop();
        *self = Self::new(job);
    }

    /// Stops setting up lanes (their connection is gone); the job goes on.
    fn stop_lanes(&mut self) {
        if let Some(task) = self.lanes_task.take() {
            task.abort();
        }
    }

    fn stop(&mut self) {
        for task in [self.task.take(), self.lanes_task.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// Closes a connection that was replaced, without holding up its replacement.
fn close_in_background(peer: Arc<dyn Peer>) {
    tokio::spawn(async move { peer.close().await });
}

/// What the outbox task is asked to do, in order.
enum Outgoing {
    Event {
        room_id: OwnedRoomId,
        event: Box<D2dEvent>,
    },
    /// Answered once everything queued before it was sent.
    Flush(tokio::sync::oneshot::Sender<()>),
}

struct Inner {
    client: Client,
    me: OwnDevice,
    config: EngineConfig,
    connector: Arc<dyn Connector>,
    turn: TurnCache,
    state: Mutex<State>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    updates: broadcast::Sender<TransferSnapshot>,
    synced: watch::Sender<u64>,
    /// Bumped whenever the joined rooms (or their state) may have changed.
    rooms: watch::Sender<u64>,
    shutdown: CancellationToken,
}

/// The running engine of one account. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// Event ids remembered for de-duplication.
const SEEN_EVENTS: usize = 16_384;
/// How long local candidates are collected into one `m.d2dfile.candidates` event.
const CANDIDATE_BATCH_DELAY: Duration = Duration::from_millis(150);
/// How long a data job may go on after its connection reported failure.
const FAILURE_GRACE: Duration = Duration::from_secs(10);
/// Least time a range-mode transfer whose connection failed keeps trying to connect again
/// (longer while its offer lives).
const RECONNECT_WINDOW: Duration = Duration::from_secs(120);
/// How long one new connection may take before the receiving side offers another.
const RECONNECT_ATTEMPT_WAIT: Duration = Duration::from_secs(20);
/// Pause before the next offer when an attempt failed outright.
const RECONNECT_RETRY: Duration = Duration::from_secs(2);
/// How long an ended transfer is remembered past its offer's lifetime.
const FORGET_AFTER_MS: u64 = 60_000;
/// How long a stream receiver that has every byte waits for the sender's close.
const SENDER_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Message size of the baseline stream (the size every WebRTC stack accepts).
const STREAM_MESSAGE: usize = 16 * 1024;

impl Engine {
    /// Starts the sync loop and the engine's tasks for a logged-in client.
    pub fn start(
        client: Client,
        me: OwnDevice,
        connector: Arc<dyn Connector>,
        config: EngineConfig,
    ) -> Self {
        let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
        let (sync_tx, sync_rx) = mpsc::channel(1024);
        let (updates, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            turn: TurnCache::new(client.clone()),
            client: client.clone(),
            me: me.clone(),
            config,
            connector,
            state: Mutex::new(State {
                transfers: HashMap::new(),
                seen: LruCache::new(NonZeroUsize::new(SEEN_EVENTS).unwrap_or(NonZeroUsize::MIN)),
            }),
            outbox: outbox_tx,
            updates,
            synced: watch::channel(0).0,
            rooms: watch::channel(0).0,
            shutdown: CancellationToken::new(),
        });
        let engine = Self { inner };
        let shutdown = engine.inner.shutdown.clone();
        tokio::spawn(sync::run(client.clone(), me, sync_tx, shutdown.clone()));
        tokio::spawn(engine.clone().event_loop(sync_rx));
        tokio::spawn(run_outbox(client, outbox_rx, shutdown.clone()));
        tokio::spawn(engine.clone().ticker());
        engine
    }

    /// This device as a party of transfers.
    pub fn party(&self) -> Party {
        Party {
            user_id: self.inner.me.user_id.to_string(),
            party_id: Some(self.inner.me.device_id.to_string()),
        }
    }

    /// Waits until the sync loop has finished its first round (history caught up).
    pub async fn wait_synced(&self) {
        let mut synced = self.inner.synced.subscribe();
        let _ = synced.wait_for(|rounds| *rounds > 0).await;
    }

    /// Changes (a counter) whenever the joined rooms or their state may have changed.
    pub fn rooms_changed(&self) -> watch::Receiver<u64> {
        self.inner.rooms.subscribe()
    }

    /// The Matrix client this engine signals with.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Refuses rooms we are not in and, unless allowed, public rooms (SPEC §5).
    pub fn check_offer_room(&self, room_id: &RoomId) -> Result<(), EngineError> {
        self.check_room(room_id)
    }

    /// Every transfer this engine knows, live offers from others and all of our own.
    pub fn transfers(&self) -> Vec<TransferSnapshot> {
        let state = self.lock();
        let mut list: Vec<_> = state
            .transfers
            .values()
            // Offers to us that expired untaken vanish.
            .filter(|entry| {
                entry.transfer.role == Role::Sending || entry.transfer.phase != Phase::Expired
            })
            .map(Entry::snapshot)
            .collect();
        list.sort_by(|a, b| {
            (a.origin_server_ts, &a.transfer_id).cmp(&(b.origin_server_ts, &b.transfer_id))
        });
        list
    }

    /// One transfer.
    pub fn transfer(&self, transfer_id: &str) -> Option<TransferSnapshot> {
        self.lock().transfers.get(transfer_id).map(Entry::snapshot)
    }

    /// Updates as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<TransferSnapshot> {
        self.inner.updates.subscribe()
    }

    /// Waits (up to `timeout`) until some transfer satisfies `predicate`; returns it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&TransferSnapshot) -> bool,
    ) -> Option<TransferSnapshot> {
        let mut updates = self.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.transfers().into_iter().find(|t| predicate(t)) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, updates.recv()).await {
                Err(_) => return None,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Offers the file at `path` to `room_id` under `filename`; returns the transfer id.
    pub async fn offer_file(
        &self,
        room_id: &RoomId,
        path: &Path,
        filename: &str,
    ) -> Result<String, EngineError> {
        self.check_room(room_id)?;
        let source_error = |error| EngineError::Source {
            path: path.to_owned(),
            error,
        };
        let size = tokio::fs::metadata(path).await.map_err(source_error)?.len();
        let sha256 = file_sha256(path).await.map_err(source_error)?;
        self.offer(OfferRequest {
            room_id,
            path,
            filename,
            size,
            sha256: Some(sha256),
            lifetime: self.inner.config.lifetime,
        })
        .await
    }

    /// Offers a file whose size and digest the caller already knows (the filesystem hashes
    /// while it spools); returns the transfer id.
    pub async fn offer(&self, request: OfferRequest<'_>) -> Result<String, EngineError> {
        let OfferRequest {
            room_id,
            path,
            filename,
            size,
            sha256,
            lifetime,
        } = request;
        self.check_room(room_id)?;
        let ice = self.inner.turn.get().await;
        let NewPeer { peer, sdp, events } = self.inner.connector.offer(&ice).await?;
        let transfer_id = new_transfer_id()?;
        let lifetime_ms = lifetime
            .as_millis()
            .min(u128::from(limits::MAX_LIFETIME_MS)) as u64;
        let offer = OfferInfo {
            filename: filename.to_owned(),
            info: FileInfo {
                mimetype: guess_mimetype(filename, &file_head(path).await),
                size,
            },
            sha256,
            range: true,
            origin_server_ts: now_ms(),
            lifetime_ms,
        };
        let invite = D2dEvent::Invite(Invite {
            transfer_id: transfer_id.clone(),
            lifetime_ms,
            filename: filename.to_owned(),
            info: offer.info.clone(),
            offer: SessionDescription {
                kind: "offer".to_owned(),
                sdp,
            },
            party_id: self.party().party_id,
            range: offer.range,
            lanes: self.inner.config.lanes,
            sha256: offer.sha256,
        });
        let transfer = Transfer::new_outgoing(
            transfer_id.clone(),
            room_id.to_string(),
            self.party(),
            offer,
            now_ms(),
        );
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let bytes_moved = Arc::new(AtomicU64::new(0));
        {
            let mut state = self.lock();
            state.transfers.insert(
                transfer_id.clone(),
                Entry {
                    transfer,
                    commands: Some(commands_tx),
                    bytes_moved: bytes_moved.clone(),
                    remote_offer: None,
                    source: Some(path.to_owned()),
                    path: None,
                    lanes: 0,
                    lanes_open: Arc::default(),
                    reconnects: 0,
                },
            );
        }
        self.send(room_id, invite);
        self.publish(&transfer_id);
        tokio::spawn(self.clone().drive_peer(
            transfer_id.clone(),
            room_id.to_owned(),
            peer,
            events,
            commands_rx,
            DataJob::SendFile(path.to_owned()),
            bytes_moved,
        ));
        info!(%transfer_id, %room_id, filename, "offered");
        Ok(transfer_id)
    }

    /// Offers the file of one of our earlier offers again, as a new transfer: one offer reaches
    /// one device, so further devices get further offers. Returns the new transfer id.
    pub async fn reoffer(&self, transfer_id: &str) -> Result<String, EngineError> {
        let (room_id, path, filename) = {
            let state = self.lock();
            let entry = state
                .transfers
                .get(transfer_id)
                .ok_or_else(|| EngineError::NoSuchTransfer(transfer_id.to_owned()))?;
            let path = entry
                .source
                .clone()
                .ok_or_else(|| EngineError::NoSuchTransfer(transfer_id.to_owned()))?;
            (
                entry.transfer.room_id.clone(),
                path,
                entry.transfer.offer.filename.clone(),
            )
        };
        let room_id: OwnedRoomId = room_id
            .as_str()
            .try_into()
            .map_err(|_| EngineError::NoSuchRoom(room_id.clone()))?;
        self.offer_file(&room_id, &path, &filename).await
    }

    /// Accepts an offer made to us and stores the file at `dest` once complete (MSC2354's
    /// stream: works with every peer).
    pub async fn accept_to_file(&self, transfer_id: &str, dest: &Path) -> Result<(), EngineError> {
        let job = DataJob::ReceiveFile {
            dest: dest.to_owned(),
        };
        self.accept(transfer_id, false, job).await
    }

    /// Accepts an offer in stream mode into a spool at `spool_path`: readers follow the
    /// stream as it arrives; the end of the file is released once the digest matched.
    pub async fn accept_to_spool(
        &self,
        transfer_id: &str,
        spool_path: &Path,
    ) -> Result<SpoolReader, EngineError> {
        let size = self
            .transfer(transfer_id)
            .map(|t| t.size)
            .ok_or_else(|| EngineError::NoSuchTransfer(transfer_id.to_owned()))?;
        let (writer, reader) =
            spool::create(spool_path, size).map_err(|error| EngineError::Source {
                path: spool_path.to_owned(),
                error,
            })?;
        self.accept(transfer_id, false, DataJob::ReceiveSpool(writer))
            .await?;
        Ok(reader)
    }

    /// Accepts an offer in range mode: the returned source fetches any byte range on demand.
    /// The transfer completes when every clone of the source is dropped.
    pub async fn accept_ranges(&self, transfer_id: &str) -> Result<RangeSource, EngineError> {
        let (size, offers_range) = self
            .transfer(transfer_id)
            .map(|t| (t.size, t.offer_range))
            .ok_or_else(|| EngineError::NoSuchTransfer(transfer_id.to_owned()))?;
        if !offers_range {
            return Err(EngineError::NoRangeMode(transfer_id.to_owned()));
        }
        let (source, client) = range::client(size);
        self.accept(transfer_id, true, DataJob::ReceiveRanges(client))
            .await?;
        Ok(source)
    }

    async fn accept(
        &self,
        transfer_id: &str,
        range: bool,
        job: DataJob,
    ) -> Result<(), EngineError> {
        // The command channel exists from the moment we answer: candidates that arrive while
        // the peer is being made queue there instead of being lost.
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (room_id, offer_sdp, bytes_moved, lanes) = {
            let mut state = self.lock();
            let entry = state
                .transfers
                .get_mut(transfer_id)
                .ok_or_else(|| EngineError::NoSuchTransfer(transfer_id.to_owned()))?;
            if !entry.transfer.accept(self.party(), range, now_ms()) {
                return Err(EngineError::NotAcceptable(transfer_id.to_owned()));
            }
            let pending = entry.transfer.take_pending_candidates();
            if !pending.is_empty() {
                let _ = commands_tx.send(PeerCommand::AddCandidates(pending));
            }
            entry.commands = Some(commands_tx);
            entry.lanes = if range {
                entry.lanes.min(self.inner.config.lanes)
            } else {
                0
            };
            let offer_sdp = entry.remote_offer.clone().unwrap_or_default();
            (
                entry.transfer.room_id.clone(),
                offer_sdp,
                entry.bytes_moved.clone(),
                entry.lanes,
            )
        };
        self.publish(transfer_id);
        let room_id: OwnedRoomId = room_id
            .as_str()
            .try_into()
            .map_err(|_| EngineError::NoSuchRoom(room_id.clone()))?;
        let ice = self.inner.turn.get().await;
        let NewPeer { peer, sdp, events } =
            match self.inner.connector.answer(&ice, &offer_sdp).await {
                Ok(new_peer) => new_peer,
                Err(error) => {
                    self.apply_to(transfer_id, |t| t.on_failed(&error.to_string()));
                    return Err(error.into());
                }
            };
        let lifetime_ms = self.inner.config.lifetime.as_millis() as u64;
        self.send(
            &room_id,
            D2dEvent::Answer(Answer {
                transfer_id: transfer_id.to_owned(),
                lifetime_ms,
                answer: SessionDescription {
                    kind: "answer".to_owned(),
                    sdp,
                },
                party_id: self.party().party_id,
                range,
                lanes,
            }),
        );
        tokio::spawn(self.clone().drive_peer(
            transfer_id.to_owned(),
            room_id,
            peer,
            events,
            commands_rx,
            job,
            bytes_moved,
        ));
        Ok(())
    }

    /// Cancels (ours) or rejects (theirs) a live transfer.
    pub fn cancel(&self, transfer_id: &str, reason: &str) -> Result<(), EngineError> {
        if self.transfer(transfer_id).is_none() {
            return Err(EngineError::NoSuchTransfer(transfer_id.to_owned()));
        }
        self.apply_to(transfer_id, |t| t.cancel_locally(reason));
        Ok(())
    }

    /// Cancels a transfer this device offered in an earlier run (and so no longer knows):
    /// receivers stop waiting on it. Harmless when it already ended.
    pub fn withdraw(&self, room_id: &RoomId, transfer_id: &str, reason: &str) {
        if self.transfer(transfer_id).is_some() {
            let _ = self.cancel(transfer_id, reason);
            return;
        }
        self.send(
            room_id,
            D2dEvent::Cancel(Cancel {
                transfer_id: transfer_id.to_owned(),
                party_id: self.party().party_id,
                reason: Some(reason.to_owned()),
            }),
        );
    }

    /// Cancels every live transfer, gives the outbox a moment to send the cancels, stops.
    pub async fn shutdown(&self) {
        let live: Vec<String> = self
            .transfers()
            .into_iter()
            .filter(|t| {
                !t.phase.is_final() && (t.role == Role::Sending || t.phase != Phase::Offered)
            })
            .map(|t| t.transfer_id)
            .collect();
        for transfer_id in live {
            self.apply_to(&transfer_id, |t| t.cancel_locally("the device went away"));
        }
        // The outbox works in order: once the flush is answered, the cancels went out.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let _ = self.inner.outbox.send(Outgoing::Flush(done_tx));
        let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        self.inner.shutdown.cancel();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug elsewhere; the state itself stays usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_room(&self, room_id: &RoomId) -> Result<(), EngineError> {
        let room = self
            .inner
            .client
            .get_room(room_id)
            .filter(|room| room.state() == matrix_sdk::RoomState::Joined)
            .ok_or_else(|| EngineError::NoSuchRoom(room_id.to_string()))?;
        if !self.inner.config.allow_public_rooms
            && matches!(room.join_rule(), Some(JoinRule::Public))
        {
            return Err(EngineError::PublicRoom(room_id.to_string()));
        }
        Ok(())
    }

    fn send(&self, room_id: &RoomId, event: D2dEvent) {
        let _ = self.inner.outbox.send(Outgoing::Event {
            room_id: room_id.to_owned(),
            event: Box::new(event),
        });
    }

    fn publish(&self, transfer_id: &str) {
        if let Some(snapshot) = self.transfer(transfer_id) {
            let _ = self.inner.updates.send(snapshot);
        }
    }

    /// Runs `f` on a transfer's state and carries out the actions it returns.
    fn apply_to(&self, transfer_id: &str, f: impl FnOnce(&mut Transfer) -> Vec<Action>) {
        let (actions, room_id, commands) = {
            let mut state = self.lock();
            let Some(entry) = state.transfers.get_mut(transfer_id) else {
                return;
            };
            let actions = f(&mut entry.transfer);
            (
                actions,
                entry.transfer.room_id.clone(),
                entry.commands.clone(),
            )
        };
        self.carry_out(transfer_id, &room_id, actions, commands.as_ref());
        self.publish(transfer_id);
    }

    fn carry_out(
        &self,
        transfer_id: &str,
        room_id: &str,
        actions: Vec<Action>,
        commands: Option<&mpsc::UnboundedSender<PeerCommand>>,
    ) {
        let Ok(room_id) = <&RoomId>::try_from(room_id) else {
            return;
        };
        let to_peer = |command| {
            if let Some(commands) = commands {
                let _ = commands.send(command);
            }
        };
        for action in actions {
            match action {
                Action::UseAnswer { sdp, .. } => to_peer(PeerCommand::UseAnswer(sdp)),
                Action::Reconnect { offer_sdp } => to_peer(PeerCommand::Reconnect(offer_sdp)),
                Action::AddCandidates(candidates) => {
                    to_peer(PeerCommand::AddCandidates(candidates))
                }
                Action::Close => to_peer(PeerCommand::Close),
                Action::SendSelectAnswer {
                    answer_event_id,
                    peer,
                } => self.send(
                    room_id,
                    D2dEvent::SelectAnswer(SelectAnswer {
                        transfer_id: transfer_id.to_owned(),
                        party_id: self.party().party_id,
                        selected_party_id: peer.party_id,
                        selected_answer: answer_event_id,
                    }),
                ),
                Action::SendCancel { reason } => self.send(
                    room_id,
                    D2dEvent::Cancel(Cancel {
                        transfer_id: transfer_id.to_owned(),
                        party_id: self.party().party_id,
                        reason: Some(reason),
                    }),
                ),
            }
        }
    }

    async fn event_loop(self, mut input: mpsc::Receiver<SyncOutput>) {
        while let Some(output) = input.recv().await {
            match output {
                SyncOutput::Event(event) => self.handle_event(*event),
                SyncOutput::RoomsChanged => self.inner.rooms.send_modify(|n| *n += 1),
                SyncOutput::Synced => {
                    self.inner.synced.send_modify(|rounds| *rounds += 1);
                }
                SyncOutput::Stopped(error) => {
                    warn!(%error, "sync stopped");
                    break;
                }
            }
        }
    }

    fn handle_event(&self, incoming: IncomingEvent) {
        if incoming.own_device {
            return;
        }
        if self
            .lock()
            .seen
            .put(incoming.event_id.clone(), ())
            .is_some()
        {
            return;
        }
        let from = Party {
            user_id: incoming.sender.to_string(),
            party_id: incoming.event.party_id().map(str::to_owned),
        };
        let now = now_ms();
        let transfer_id = incoming.event.transfer_id().to_owned();
        let makes_a_connection = matches!(
            incoming.event,
            D2dEvent::Invite(_) | D2dEvent::Answer(_) | D2dEvent::Negotiate(_)
        );
        let verified = incoming.decryption.as_ref().is_some_and(|d| d.verified);
        if self.inner.config.verified_only && makes_a_connection && !verified {
            info!(
                %transfer_id,
                sender = %incoming.sender,
                "ignored an offer, answer or new connection from an unverified device (verified-only)"
            );
            return;
        }
        match incoming.event {
            D2dEvent::Invite(invite) => self.handle_invite(
                &incoming.room_id,
                from,
                invite,
                incoming.origin_server_ts,
                incoming.age_ms,
                now,
            ),
            D2dEvent::Answer(answer) => {
                let event_id = incoming.event_id.to_string();
                let answerer = from.clone();
                self.apply_to(&transfer_id, |t| {
                    t.on_answer(from, &event_id, &answer.answer.sdp, answer.range, now)
                });
                // The answer taken sets how many lanes the transfer gets.
                if let Some(entry) = self.lock().transfers.get_mut(&transfer_id)
                    && entry.transfer.role == Role::Sending
                    && entry.transfer.range
                    && entry.transfer.peer.as_ref() == Some(&answerer)
                {
                    entry.lanes = answer.lanes.min(self.inner.config.lanes);
                }
            }
            D2dEvent::Candidates(candidates) => {
                self.apply_to(&transfer_id, |t| {
                    t.on_candidates(&from, candidates.candidates)
                });
            }
            D2dEvent::Cancel(cancel) => {
                self.apply_to(&transfer_id, |t| {
                    t.on_cancel(&from, cancel.reason.as_deref())
                });
            }
            D2dEvent::SelectAnswer(select) => {
                let me = self.party();
                self.apply_to(&transfer_id, |t| {
                    t.on_select_answer(&from, select.selected_party_id.as_deref(), &me)
                });
            }
            D2dEvent::Negotiate(negotiate) => {
                let SessionDescription { kind, sdp } = negotiate.description;
                self.apply_to(&transfer_id, |t| t.on_negotiate(&from, &kind, &sdp));
            }
        }
    }

    fn handle_invite(
        &self,
        room_id: &RoomId,
        from: Party,
        invite: Invite,
        origin_server_ts: u64,
        age_ms: u64,
        now: u64,
    ) {
        if let Err(refused) = self.check_room(room_id) {
            debug!(transfer_id = %invite.transfer_id, "offer not shown: {refused}");
            return;
        }
        let transfer_id = invite.transfer_id.clone();
        let transfer = Transfer::new_incoming(
            transfer_id.clone(),
            room_id.to_string(),
            from,
            OfferInfo {
                filename: invite.filename,
                info: invite.info,
                sha256: invite.sha256,
                range: invite.range,
                origin_server_ts,
                lifetime_ms: invite.lifetime_ms,
            },
            age_ms,
            now,
        );
        let mut state = self.lock();
        if state.transfers.contains_key(&transfer_id) {
            debug!(%transfer_id, "invite for a transfer already known; ignored");
            return;
        }
        if !transfer.is_live() {
            debug!(%transfer_id, "expired offer not shown");
        }
        state.transfers.insert(
            transfer_id.clone(),
            Entry {
                transfer,
                commands: None,
                bytes_moved: Arc::new(AtomicU64::new(0)),
                remote_offer: Some(invite.offer.sdp),
                source: None,
                path: None,
                lanes: invite.lanes,
                lanes_open: Arc::default(),
                reconnects: 0,
            },
        );
        drop(state);
        self.publish(&transfer_id);
    }

    /// Expires offers nobody took, once a second; forgets transfers long over.
    async fn ticker(self) {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now = now_ms();
            let expired: Vec<String> = {
                let mut state = self.lock();
                state
                    .transfers
                    .values_mut()
                    .filter_map(|entry| {
                        let was_live = entry.transfer.is_live();
                        entry.transfer.tick(now);
                        (was_live && !entry.transfer.is_live())
                            .then(|| entry.transfer.transfer_id.clone())
                    })
                    .collect()
            };
            for transfer_id in expired {
                debug!(%transfer_id, "offer expired");
                self.apply_to(&transfer_id, |_| vec![Action::Close]);
            }
            // Ended and past its lifetime: nobody asks any more. An invite replayed later
            // (history read after a gap) comes back as expired and goes again.
            self.lock().transfers.retain(|_, entry| {
                !(entry.transfer.phase.is_final()
                    && now > entry.transfer.expires_at_ms.saturating_add(FORGET_AFTER_MS))
            });
        }
    }

    /// Owns one transfer's peer: feeds it signalling, sends its candidates, runs the data job.
    /// In range mode it also mends the connection: when it fails, the receiving side offers a
    /// new one (`org.d2dfs.negotiate`) and the sending side answers it, for as long as
    /// [`Engine::reconnecting`] allows; readers only see a pause.
    #[allow(clippy::too_many_arguments)]
    async fn drive_peer(
        self,
        transfer_id: String,
        room_id: OwnedRoomId,
        peer: Box<dyn Peer>,
        mut events: mpsc::Receiver<PeerEvent>,
        mut commands: mpsc::UnboundedReceiver<PeerCommand>,
        job: DataJob,
        bytes_moved: Arc<AtomicU64>,
    ) {
        let mut peer: Arc<dyn Peer> = Arc::from(peer);
        // (Sending) the file, to serve it again over a new connection.
        let serving = match &job {
            DataJob::SendFile(path) => Some(path.clone()),
            _ => None,
        };
        let mut data = DataSide::new(job);
        let mut batch: Vec<Candidate> = Vec::new();
        let mut flush_at: Option<Instant> = None;
        let party_id = self.party().party_id;
        // A peer may stop reporting once connected; the data job goes on regardless.
        let mut events_open = true;
        // A connection that fails while data moves: the data job sees it too and may still
        // finish what it was doing (the last bytes may already be here); it gets a grace
        // period before the failure is final.
        let mut failed: Option<(Instant, String)> = None;
        let mut reconnecting: Option<Reconnecting> = None;
        loop {
            let flush = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let grace_over = async {
                match &failed {
                    Some((at, _)) => tokio::time::sleep_until(*at).await,
                    None => std::future::pending().await,
                }
            };
            let reconnect_due = async {
                match &reconnecting {
                    // The receiving side offers again now and then; both give up at the end.
                    Some(r) if serving.is_none() => {
                        tokio::time::sleep_until(r.next_attempt.min(r.give_up_at)).await;
                    }
                    Some(r) => tokio::time::sleep_until(r.give_up_at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.inner.shutdown.cancelled() => break,
                () = grace_over => {
                    if let Some((_, reason)) = failed.take() {
                        self.apply_to(&transfer_id, |t| t.on_failed(&reason));
                    }
                    break;
                }
                () = reconnect_due => {
                    let Some(r) = reconnecting.as_mut() else { continue };
                    if Instant::now() >= r.give_up_at {
                        let reason = format!("{}; the connection could not be made again", r.reason);
                        self.apply_to(&transfer_id, |t| t.on_failed(&reason));
                        break;
                    }
                    r.attempts += 1;
                    r.next_attempt = Instant::now() + RECONNECT_ATTEMPT_WAIT;
                    debug!(%transfer_id, attempt = r.attempts, "offering a new connection");
                    if let Some(fresh) = self.connect_again(&room_id, &transfer_id, None).await {
                        close_in_background(std::mem::replace(&mut peer, Arc::from(fresh.peer)));
                        events = fresh.events;
                        events_open = true;
                    }
                }
                () = flush => {
                    flush_at = None;
                    self.send_candidates(&room_id, &transfer_id, std::mem::take(&mut batch), party_id.clone());
                }
                command = commands.recv() => match command {
                    Some(PeerCommand::UseAnswer(sdp)) => {
                        if let Err(error) = peer.set_answer(&sdp).await {
                            if serving.is_none() {
                                // (Receiving) answers come only for new connections: one
                                // that does not fit belongs to an earlier attempt.
                                debug!(%transfer_id, %error, "an answer for an earlier attempt; ignored");
                            } else {
                                self.apply_to(&transfer_id, |t| t.on_failed(&error.to_string()));
                            }
                        }
                    }
                    Some(PeerCommand::Reconnect(offer_sdp)) => {
                        let Some(path) = &serving else { continue };
                        if reconnecting.is_none() {
                            // The receiver saw the failure first.
                            reconnecting = Some(self.reconnecting(&transfer_id, "the receiver lost the connection"));
                        }
                        // Whatever ran on the old connection starts again on the new one.
                        data.restart(DataJob::SendFile(path.clone()));
                        if let Some(fresh) = self.connect_again(&room_id, &transfer_id, Some(&offer_sdp)).await {
                            close_in_background(std::mem::replace(&mut peer, Arc::from(fresh.peer)));
                            events = fresh.events;
                            events_open = true;
                        }
                    }
                    Some(PeerCommand::AddCandidates(candidates)) => {
                        if let Err(error) = peer.add_candidates(&candidates).await {
                            debug!(%transfer_id, %error, "remote candidates refused");
                        }
                    }
                    Some(PeerCommand::Close) | None => break,
                },
                event = events.recv(), if events_open => match event {
                    Some(PeerEvent::LocalCandidates(candidates)) => {
                        batch.extend(candidates);
                        flush_at.get_or_insert_with(|| Instant::now() + CANDIDATE_BATCH_DELAY);
                    }
                    Some(PeerEvent::GatheringComplete) => {
                        batch.push(Candidate::end_of_candidates());
                        flush_at = None;
                        self.send_candidates(&room_id, &transfer_id, std::mem::take(&mut batch), party_id.clone());
                    }
                    Some(PeerEvent::Connected(channel)) if channel.label() == lanes::CONTROL_LABEL => {
                        // (Receiving) the sender opens lanes.
                        let count = self.lock().transfers.get(&transfer_id).map_or(0, |e| e.lanes);
                        if count > 0 && data.lanes_task.is_none() {
                            data.lanes_task = Some(tokio::spawn(self.clone().run_lanes(transfer_id.clone(), LaneRole::Answering, None, Some(channel), count, data.lanes_tx.clone(),
                            )));
                        }
                    }
                    Some(PeerEvent::Connected(channel)) => {
                        let path = peer.path().await;
                        let again = reconnecting.take().is_some();
                        if let Some(entry) = self.lock().transfers.get_mut(&transfer_id) {
                            entry.path = path;
                            entry.reconnects += u32::from(again);
                        }
                        if again {
                            info!(%transfer_id, "connection made again; the transfer goes on");
                        }
                        self.apply_to(&transfer_id, |t| { t.on_connected(); Vec::new() });
                        let (sending, count) = self.lock().transfers.get(&transfer_id).map_or(
                            (false, 0),
                            |e| (e.transfer.role == Role::Sending && e.transfer.range, e.lanes),
                        );
                        if sending && count > 0 && data.lanes_task.is_none() {
                            data.lanes_task = Some(tokio::spawn(self.clone().run_lanes(transfer_id.clone(), LaneRole::Offering, Some(peer.clone()), None, count, data.lanes_tx.clone(),
                            )));
                        }
                        let _ = data.lanes_tx.send(LaneChannel { channel, extra: false }).await;
                        if let (Some(job), Some(lanes)) = (data.job.take(), data.lanes_rx.take()) {
                            data.task = Some(tokio::spawn(self.clone().run_data_job(
                                transfer_id.clone(), lanes, job, bytes_moved.clone(),
                            )));
                        }
                    }
                    Some(PeerEvent::Failed(reason)) => {
                        // Made again once both ends agreed on range mode with each other,
                        // whether or not this connection ever opened: a handshake lost on a
                        // bad network is retried like a connection lost later.
                        let chosen_range_peer = self.transfer(&transfer_id).is_some_and(|t| {
                            t.range && matches!(t.phase, Phase::Connecting | Phase::Transferring)
                        });
                        if chosen_range_peer {
                            match reconnecting.as_mut() {
                                // An attempt failed: the next one comes sooner.
                                Some(r) => r.next_attempt = r.next_attempt.min(Instant::now() + RECONNECT_RETRY),
                                None => {
                                    info!(%transfer_id, %reason, "connection failed; making it again");
                                    reconnecting = Some(self.reconnecting(&transfer_id, &reason));
                                    // The old connection's lanes go with it; a sender's job
                                    // starts again with the new connection (left running, it
                                    // would take the closing channel for the receiver's end).
                                    // A receiver's job waits for the new channel.
                                    match &serving {
                                        Some(path) => data.restart(DataJob::SendFile(path.clone())),
                                        None => data.stop_lanes(),
                                    }
                                    // Its channels close: what they owed goes back to the queue.
                                    close_in_background(peer.clone());
                                }
                            }
                            continue;
                        }
                        match &data.task {
                            Some(task) if !task.is_finished() => {
                                debug!(%transfer_id, %reason, "connection failed while data moved");
                                failed = Some((Instant::now() + FAILURE_GRACE, reason));
                            }
                            _ => self.apply_to(&transfer_id, |t| t.on_failed(&reason)),
                        }
                    }
                    None => events_open = false,
                },
            }
        }
        data.stop();
        peer.close().await;
        debug!(%transfer_id, "peer closed");
    }

    /// The reconnection of a transfer whose connection failed for `reason`: attempts go on
    /// while the offer lives, and for [`RECONNECT_WINDOW`] at least.
    fn reconnecting(&self, transfer_id: &str, reason: &str) -> Reconnecting {
        let now = Instant::now();
        let expires_at_ms = self.transfer(transfer_id).map_or(0, |t| t.expires_at_ms);
        let offer_left = Duration::from_millis(expires_at_ms.saturating_sub(now_ms()));
        Reconnecting {
            give_up_at: now + offer_left.max(RECONNECT_WINDOW),
            next_attempt: now,
            attempts: 0,
            reason: reason.to_owned(),
        }
    }

    /// A new connection for a transfer whose connection failed, its description sent to the
    /// peer as `org.d2dfs.negotiate`: (receiving) a fresh offer, or (sending) the answer to
    /// the receiver's `offer_sdp`.
    async fn connect_again(
        &self,
        room_id: &RoomId,
        transfer_id: &str,
        offer_sdp: Option<&str>,
    ) -> Option<NewPeer> {
        let ice = self.inner.turn.get().await;
        let (made, kind) = match offer_sdp {
            None => (self.inner.connector.offer(&ice).await, "offer"),
            Some(offer) => (self.inner.connector.answer(&ice, offer).await, "answer"),
        };
        let mut fresh = match made {
            Ok(fresh) => fresh,
            Err(error) => {
                warn!(%transfer_id, %error, "no new connection");
                return None;
            }
        };
        self.send(
            room_id,
            D2dEvent::Negotiate(Negotiate {
                transfer_id: transfer_id.to_owned(),
                party_id: self.party().party_id,
                description: SessionDescription {
                    kind: kind.to_owned(),
                    sdp: std::mem::take(&mut fresh.sdp),
                },
            }),
        );
        Some(fresh)
    }

    fn send_candidates(
        &self,
        room_id: &RoomId,
        transfer_id: &str,
        candidates: Vec<Candidate>,
        party_id: Option<String>,
    ) {
        if candidates.is_empty() {
            return;
        }
        self.send(
            room_id,
            D2dEvent::Candidates(Candidates {
                transfer_id: transfer_id.to_owned(),
                candidates,
                party_id,
            }),
        );
    }

    /// Runs a range-mode transfer's lanes: the sending side opens the control channel on
    /// `peer`, the receiving side was given it.
    async fn run_lanes(
        self,
        transfer_id: String,
        role: LaneRole,
        peer: Option<Arc<dyn Peer>>,
        control: Option<Box<dyn Channel>>,
        count: u8,
        opened: mpsc::Sender<LaneChannel>,
    ) {
        let control = match (control, peer) {
            (Some(control), _) => control,
            (None, Some(peer)) => match peer.open_channel(lanes::CONTROL_LABEL).await {
                Ok(control) => control,
                Err(error) => {
                    debug!(%error, "no lanes: the control channel did not open");
                    return;
                }
            },
            (None, None) => return,
        };
        let ice = self.inner.turn.get().await;
        // Count the lanes on their way to the data job.
        let counter = self
            .lock()
            .transfers
            .get(&transfer_id)
            .map(|e| e.lanes_open.clone());
        let (counted, mut to_count) = mpsc::channel::<Box<dyn Channel>>(1);
        tokio::spawn(async move {
            while let Some(channel) = to_count.recv().await {
                if let Some(counter) = &counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if opened
                    .send(LaneChannel {
                        channel,
                        extra: true,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        lanes::run(
            role,
            self.inner.connector.clone(),
            ice,
            control,
            count,
            counted,
        )
        .await;
    }

    async fn run_data_job(
        self,
        transfer_id: String,
        mut lanes: mpsc::Receiver<LaneChannel>,
        job: DataJob,
        bytes_moved: Arc<AtomicU64>,
    ) {
        let result = match job {
            DataJob::ReceiveRanges(client) => client.run(lanes, bytes_moved.clone()).await,
            DataJob::SendFile(path) => match self.transfer(&transfer_id) {
                Some(t) if t.range => serve_lanes(lanes, &path, t.size, &bytes_moved).await,
                Some(_) => match lanes.recv().await {
                    Some(mut first) => send_file(&mut *first.channel, &path, &bytes_moved).await,
                    None => return,
                },
                None => return,
            },
            DataJob::ReceiveSpool(writer) => {
                let (Some(t), Some(mut first)) = (self.transfer(&transfer_id), lanes.recv().await)
                else {
                    return;
                };
                receive_spool(
                    &mut *first.channel,
                    writer,
                    t.sha256.as_deref(),
                    &bytes_moved,
                )
                .await
            }
            DataJob::ReceiveFile { dest } => {
                let (Some(t), Some(mut first)) = (self.transfer(&transfer_id), lanes.recv().await)
                else {
                    return;
                };
                let sha256 = t.sha256.as_deref();
                receive_file(&mut *first.channel, &dest, t.size, sha256, &bytes_moved).await
            }
        };
        match result {
            Ok(()) => {
                info!(%transfer_id, "transfer complete");
                self.apply_to(&transfer_id, |t| {
                    t.on_complete();
                    vec![Action::Close]
                });
            }
            Err(reason) => {
                warn!(%transfer_id, %reason, "transfer failed");
                self.apply_to(&transfer_id, |t| t.on_failed(&reason));
            }
        }
    }
}

/// Range mode, sending side: serves the connection's own channel and every lane that opens,
/// until the receiver closes its own (the transfer is over; the lanes go with it).
async fn serve_lanes(
    mut channels: mpsc::Receiver<LaneChannel>,
    path: &Path,
    size: u64,
    moved: &Arc<AtomicU64>,
) -> Result<(), String> {
    let mut lanes = tokio::task::JoinSet::new();
    let mut serve_lane = |mut channel: Box<dyn Channel>| {
        let (path, moved) = (path.to_owned(), moved.clone());
        lanes.spawn(async move {
            if let Err(error) = range::serve(&mut *channel, &path, size, &moved).await {
                debug!(%error, "lane ended");
            }
        });
    };
    let mut own = loop {
        match channels.recv().await {
            Some(LaneChannel {
                channel,
                extra: false,
            }) => break channel,
            Some(LaneChannel { channel, .. }) => serve_lane(channel),
            None => return Err("the connection closed before it was served".to_owned()),
        }
    };
    let served = range::serve(&mut *own, path, size, moved);
    tokio::pin!(served);
    loop {
        tokio::select! {
            result = &mut served => return result,
            Some(LaneChannel { channel, .. }) = channels.recv() => serve_lane(channel),
        }
    }
}

/// MSC2354's baseline, sending side: the whole file in order, then close.
async fn send_file(
    channel: &mut dyn Channel,
    path: &Path,
    moved: &AtomicU64,
) -> Result<(), String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut buffer = vec![0u8; STREAM_MESSAGE];
    loop {
        let n = file
            .read(&mut buffer)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        channel
            .send(Bytes::copy_from_slice(&buffer[..n]))
            .await
            .map_err(|e| e.to_string())?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
    channel.close().await.map_err(|e| e.to_string())
}

/// MSC2354's baseline, receiving side: keep what arrives until the peer closes; then check the
/// size (and digest when advertised) and move the file into place.
async fn receive_file(
    channel: &mut dyn Channel,
    dest: &Path,
    size: u64,
    sha256: Option<&str>,
    moved: &AtomicU64,
) -> Result<(), String> {
    use sha2::Digest;
    let part = part_path(dest);
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut received: u64 = 0;
    let outcome: Result<(), String> = async {
        // Done at `size` bytes: the sender's close may be lost with a connection that fails
        // right after the last byte (seen through TURN relays).
        while received < size
            && let Some(message) = channel.recv().await
        {
            let message = message.map_err(|e| e.to_string())?;
            received += message.len() as u64;
            if received > size {
                return Err(format!("the peer sent more than the offered {size} bytes"));
            }
            hasher.update(&message);
            file.write_all(&message)
                .await
                .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
            moved.store(received, Ordering::Relaxed);
        }
        if received != size {
            return Err(format!(
                "the connection closed after {received} of {size} bytes"
            ));
        }
        await_sender_close(channel).await;
        file.sync_all().await.map_err(|e| e.to_string())?;
        if let Some(expected) = sha256
            && hex::encode(&hasher.finalize()) != expected
        {
            return Err(
                "sha256 mismatch: the received file differs from the offered one".to_owned(),
            );
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| format!("cannot move the file into place: {e}")),
        Err(reason) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err(reason)
        }
    }
}

/// MSC2354's baseline into a spool: like [`receive_file`], but readers follow along.
async fn receive_spool(
    channel: &mut dyn Channel,
    mut spool: SpoolWriter,
    sha256: Option<&str>,
    moved: &AtomicU64,
) -> Result<(), String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    // Done at the offered size, like `receive_file`.
    while spool.written() < spool.size()
        && let Some(message) = channel.recv().await
    {
        let message = message.map_err(|e| e.to_string())?;
        hasher.update(&message);
        spool.append(message).await.map_err(|e| e.0)?;
        moved.store(spool.written(), Ordering::Relaxed);
    }
    if spool.written() == spool.size() {
        await_sender_close(channel).await;
    }
    if let Some(expected) = sha256
        && spool.written() == spool.size()
        && hex::encode(&hasher.finalize()) != expected
    {
        let reason = "sha256 mismatch: the received file differs from the offered one";
        spool.fail(reason);
        return Err(reason.to_owned());
    }
    spool.finish().map_err(|e| e.0)
}

/// Every byte is here: gives the sender a moment to close the channel itself, so that its
/// last data is acknowledged before this side tears the connection down.
async fn await_sender_close(channel: &mut dyn Channel) {
    let _ = tokio::time::timeout(SENDER_CLOSE_WAIT, channel.recv()).await;
}

/// The temporary name a file has until it is complete.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".d2dfs-part");
    dest.with_file_name(name)
}

/// Sends signalling events one at a time, in order.
async fn run_outbox(
    client: Client,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = outbox.recv() => next,
        };
        let (room_id, event) = match next {
            None => return,
            Some(Outgoing::Flush(done)) => {
                let _ = done.send(());
                continue;
            }
            Some(Outgoing::Event { room_id, event }) => (room_id, event),
        };
        let Some(room) = client.get_room(&room_id) else {
            warn!(%room_id, "cannot send to a room we are not in");
            continue;
        };
        let event_type = event.event_type();
        // matrix-sdk encrypts in encrypted rooms and waits out rate limits (M_LIMIT_EXCEEDED).
        match room.send_raw(event_type, event.to_content()).await {
            Ok(response) => {
                debug!(event_type, event_id = %response.response.event_id, "sent");
            }
            Err(error) => warn!(event_type, %error, "cannot send signalling event"),
        }
    }
}

/// SHA-256 of a file, read in 1 MiB blocks.
pub async fn file_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    // Gigabytes of hashing: on a blocking thread, not on a runtime worker.
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Ok(hasher.finalize().into())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A fresh transfer id: 128 random bits, hex.
fn new_transfer_id() -> Result<String, EngineError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| EngineError::Randomness(e.to_string()))?;
    Ok(hex::encode(&bytes))
}

/// The first bytes of a file, for content sniffing (empty when unreadable).
async fn file_head(path: &Path) -> Vec<u8> {
    let mut head = vec![0u8; 8192];
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    let n = file.read(&mut head).await.unwrap_or(0);
    head.truncate(n);
    head
}

/// A mimetype from the file name's extension, else from the content's magic bytes.
pub fn guess_mimetype(filename: &str, head: &[u8]) -> String {
    match mimetype_from_name(filename) {
        "application/octet-stream" => infer::get(head)
            .map_or("application/octet-stream", |kind| kind.mime_type())
            .to_owned(),
        known => known.to_owned(),
    }
}

fn mimetype_from_name(filename: &str) -> &'static str {
    let extension = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("txt" | "md" | "log") => "text/plain",
        Some("html" | "htm") => "text/html",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("gz" | "tgz") => "application/gzip",
        Some("tar") => "application/x-tar",
        Some("iso") => "application/x-iso9660-image",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("mp4") => "video/mp4",
        Some("mkv") => "video/x-matroska",
        Some("mp3") => "audio/mpeg",
        Some("ogg") => "audio/ogg",
        Some("doc") => "application/msword",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mimetypes_come_from_the_name_then_the_content() {
        assert_eq!(guess_mimetype("report.pdf", b""), "application/pdf");
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(guess_mimetype("picture", png), "image/png");
        assert_eq!(guess_mimetype("notes.txt", png), "text/plain");
        assert_eq!(
            guess_mimetype("blob", b"\0\x01"),
            "application/octet-stream"
        );
    }
}
