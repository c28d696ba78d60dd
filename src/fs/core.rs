//! The filesystem's logic, apart from the FUSE plumbing: keeps the [`Tree`] in step with the
//! engine (rooms, offers, own offers) and carries out what the user does to it.
//!
//! Calls from FUSE handlers only take short locks and touch local disk; anything that waits
//! on the network (accepting an offer, reading its bytes, making an offer) runs as a task on
//! the runtime and answers the kernel from there.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, Notifier};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use super::digest::BackgroundSha256;
use super::names;
use super::reader::Reader;
use super::shares::{self, Record, Store};
use super::tree::{Node, Offer, ROOT, RoomDir, Share, ShareState, Spooling, Tree};
use crate::cache::{CacheConfig, ChunkCache};
use crate::hex;
use crate::signalling::rooms;
use crate::signalling::sync::now_ms;
use crate::transfer::engine::{Engine, EngineError, OfferRequest, TransferSnapshot, file_sha256};
use crate::transfer::lifecycle::{Phase, Role};

/// How long attributes and names may be cached by the kernel.
pub const TTL: Duration = Duration::from_secs(1);
/// How long an accepted offer keeps its connection after the last close, so that reading
/// it again right away (`cp` then `sha256sum`) works. Short once every byte was read and
/// checked (the sender learns sooner that it is done), longer after partial reads.
const LINGER_MS: u64 = 30_000;
const LINGER_COMPLETE_MS: u64 = 2_000;
/// Block size reported by `stat`. Tools size their reads and writes by it (`cp` does), and
/// each becomes one FUSE request: 1 MiB, the largest the kernel sends here (`max_write`), made
/// `cp` into a room ~35% faster than 128 KiB did (contrib/bench/RESULTS.md).
const BLOCK: u32 = 1 << 20;

/// What a mount needs to know.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Where own offers are spooled and recorded (`outgoing/`).
    pub data_dir: PathBuf,
    /// Where stream-mode offers are spooled while read (`incoming/`).
    pub cache_dir: PathBuf,
    /// Memory for the chunk cache, bytes.
    pub cache_size: u64,
    /// Lifetime of the offers this mount makes.
    pub lifetime: Duration,
}

/// The filesystem's state and logic. Shared by the FUSE adapter and the tasks.
pub struct Core {
    engine: Engine,
    cache: ChunkCache,
    store: Store,
    incoming_dir: PathBuf,
    lifetime: Duration,
    tree: Mutex<Tree>,
    notifier: OnceLock<Notifier>,
    runtime: tokio::runtime::Handle,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    next_fh: AtomicU64,
}

/// Whether a placeholder for `snapshot` is shown; `kept` when the mount still reads it or
/// has received it whole.
fn shown(snapshot: &TransferSnapshot, kept: bool, now: u64) -> bool {
    match snapshot.phase {
        Phase::Offered | Phase::Answered | Phase::Connecting | Phase::Transferring => true,
        // Kept until the offer would have expired: reads give EIO and the reason.
        Phase::Failed => now < snapshot.expires_at_ms,
        // Taken: shown (as complete) until the offer would have expired.
        Phase::Complete => kept && now < snapshot.expires_at_ms,
        Phase::Cancelled | Phase::Expired => false,
    }
}

fn system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn errno_of(error: &std::io::Error) -> Errno {
    Errno::from_i32(error.raw_os_error().unwrap_or(libc::EIO))
}

impl Core {
    /// Makes the core; `start` brings it to life once mounted.
    pub fn new(
        engine: Engine,
        config: &FsConfig,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<Arc<Self>> {
        let store = Store::open(&config.data_dir)?;
        let incoming_dir = config.cache_dir.join("incoming");
        // Stream spools of an earlier run are useless now.
        let _ = std::fs::remove_dir_all(&incoming_dir);
        std::fs::create_dir_all(&incoming_dir)?;
        Ok(Arc::new(Self {
            engine,
            cache: ChunkCache::new(CacheConfig::with_capacity(config.cache_size)),
            store,
            incoming_dir,
            lifetime: config.lifetime,
            tree: Mutex::new(Tree::default()),
            notifier: OnceLock::new(),
            runtime,
            // SAFETY: getuid/getgid cannot fail.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            mounted_at: SystemTime::now(),
            next_fh: AtomicU64::new(1),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Fills the tree: rooms, live offers, own offers from the last run (offered again).
    /// Done before mounting (after the engine's first sync, when the homeserver answers),
    /// so the first `ls` already shows them.
    pub async fn fill(self: &Arc<Self>) {
        self.refresh_rooms().await;
        self.resync_offers();
        self.restore_shares().await;
    }

    /// Keeps the tree in step with the engine for as long as the mount lives; `notifier`
    /// tells the kernel about names that went away.
    pub async fn follow_with(self: Arc<Self>, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
        // What changed between `fill` and now.
        self.refresh_rooms().await;
        self.resync_offers();
        self.follow().await;
    }

    /// The tree follows the engine: transfer updates, room changes, and a tick for
    /// lingering readers and deadlines.
    async fn follow(self: Arc<Self>) {
        let mut updates = self.engine.subscribe();
        let mut rooms = self.engine.rooms_changed();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Ok(snapshot) => self.apply(&snapshot),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync_offers(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                changed = rooms.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.refresh_rooms().await;
                    self.resync_offers();
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    /// Tells the kernel that `name` in `parent` is gone. Done from a blocking task: called
    /// from a FUSE handler (an `rm`, a close), it would wait for the very lock the kernel
    /// holds while that handler runs.
    fn invalidate(&self, entries: Vec<(u64, String)>) {
        let Some(notifier) = self.notifier.get().cloned() else {
            return;
        };
        if entries.is_empty() {
            return;
        }
        self.runtime.spawn_blocking(move || {
            for (parent, name) in entries {
                if let Err(error) = notifier.inval_entry(INodeNo(parent), name.as_ref()) {
                    debug!(%error, name, "kernel entry invalidation failed");
                }
            }
        });
    }

    // ---- keeping the tree in step ------------------------------------------------------

    /// Room directories and alias symlinks from the client's joined rooms.
    async fn refresh_rooms(&self) {
        let client = self.engine.client().clone();
        let mut joined = Vec::new();
        for room in client.joined_rooms() {
            let summary = rooms::summarize(&room).await;
            let refuses = self.engine.check_offer_room(room.room_id()).is_err();
            joined.push((summary, refuses));
        }
        let mut gone = Vec::new();
        {
            let mut tree = self.lock();
            let ids: std::collections::HashSet<&str> =
                joined.iter().map(|(s, _)| s.room_id.as_str()).collect();
            let left: Vec<(String, u64)> = tree
                .rooms
                .iter()
                .filter(|(id, _)| !ids.contains(id.as_str()))
                .map(|(id, ino)| (id.clone(), *ino))
                .collect();
            for (room_id, ino) in left {
                info!(%room_id, "left the room; its directory goes");
                if let Some(Node::Room(room)) = tree.nodes.remove(&ino) {
                    for child in room.children.values() {
                        tree.remove_file(*child);
                    }
                }
                tree.rooms.remove(&room_id);
                gone.push((ROOT, room_id));
            }
            for (summary, refuses) in &joined {
                match tree.rooms.get(&summary.room_id).copied() {
                    Some(ino) => {
                        if let Some(room) = tree.room_mut(ino) {
                            room.refuses_offers = *refuses;
                        }
                    }
                    None => {
                        let ino = tree.allocate();
                        tree.nodes.insert(
                            ino,
                            Node::Room(RoomDir {
                                room_id: summary.room_id.clone(),
                                children: Default::default(),
                                refuses_offers: *refuses,
                            }),
                        );
                        tree.rooms.insert(summary.room_id.clone(), ino);
                    }
                }
            }
            // Aliases: rebuilt from scratch, they are few.
            let wanted: std::collections::BTreeMap<String, String> = joined
                .iter()
                .filter_map(|(s, _)| {
                    let alias = names::sanitize(s.canonical_alias.as_deref()?);
                    (!tree.rooms.contains_key(&alias)).then(|| (alias, s.room_id.clone()))
                })
                .collect();
            let stale: Vec<(String, u64)> = tree
                .aliases
                .iter()
                .filter(|(name, ino)| match tree.nodes.get(ino) {
                    Some(Node::Alias { target }) => wanted.get(*name) != Some(target),
                    _ => true,
                })
                .map(|(name, ino)| (name.clone(), *ino))
                .collect();
            for (name, ino) in stale {
                tree.aliases.remove(&name);
                tree.nodes.remove(&ino);
                gone.push((ROOT, name));
            }
            for (name, target) in wanted {
                if !tree.aliases.contains_key(&name) {
                    let ino = tree.allocate();
                    tree.nodes.insert(ino, Node::Alias { target });
                    tree.aliases.insert(name, ino);
                }
            }
        }
        self.invalidate(gone);
    }

    /// Brings every placeholder in line with the engine's transfers.
    fn resync_offers(&self) {
        let snapshots = self.engine.transfers();
        for snapshot in &snapshots {
            self.apply(snapshot);
        }
        // Placeholders whose transfer the engine no longer lists.
        let known: std::collections::HashSet<&str> =
            snapshots.iter().map(|s| s.transfer_id.as_str()).collect();
        let orphans: Vec<u64> = {
            let tree = self.lock();
            tree.incoming
                .iter()
                .filter(|(id, _)| !known.contains(id.as_str()))
                .map(|(_, ino)| *ino)
                .collect()
        };
        let gone: Vec<_> = {
            let mut tree = self.lock();
            orphans
                .into_iter()
                .filter_map(|ino| tree.remove_file(ino))
                .collect()
        };
        self.invalidate(gone);
    }

    /// One transfer changed.
    fn apply(&self, snapshot: &TransferSnapshot) {
        match snapshot.role {
            Role::Receiving => self.apply_incoming(snapshot),
            Role::Sending => self.apply_outgoing(snapshot),
        }
    }

    fn apply_incoming(&self, snapshot: &TransferSnapshot) {
        let now = now_ms();
        let mut gone = Vec::new();
        {
            let mut tree = self.lock();
            if tree.dismissed.contains(&snapshot.transfer_id) {
                return;
            }
            match tree.incoming.get(&snapshot.transfer_id).copied() {
                Some(ino) => {
                    let Some(Node::Offer(offer)) = tree.nodes.get(&ino) else {
                        return;
                    };
                    *offer.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = snapshot.clone();
                    let kept = offer.verified.load(Ordering::Relaxed)
                        || offer
                            .reader
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .is_some();
                    if !shown(snapshot, kept, now) {
                        gone.extend(tree.remove_file(ino));
                    }
                }
                None => {
                    if snapshot.phase != Phase::Offered || !shown(snapshot, false, now) {
                        return;
                    }
                    let Some(parent) = tree.rooms.get(&snapshot.room_id).copied() else {
                        return; // the room directory comes with the next room refresh
                    };
                    let name = names::unique(&snapshot.filename, &snapshot.transfer_id, |n| {
                        tree.taken(parent, n)
                    });
                    let ino = tree.allocate();
                    let offer = Arc::new(Offer {
                        ino,
                        parent,
                        name: name.clone(),
                        transfer_id: snapshot.transfer_id.clone(),
                        snapshot: Mutex::new(snapshot.clone()),
                        reader: Mutex::new(None),
                        accepting: tokio::sync::Mutex::new(()),
                        opens: AtomicU32::new(0),
                        closed_at_ms: AtomicU64::new(0),
                        verified: std::sync::atomic::AtomicBool::new(false),
                        error: Mutex::new(None),
                    });
                    debug!(transfer_id = %snapshot.transfer_id, name, "offer shown");
                    tree.nodes.insert(ino, Node::Offer(offer));
                    tree.incoming.insert(snapshot.transfer_id.clone(), ino);
                    if let Some(room) = tree.room_mut(parent) {
                        room.children.insert(name, ino);
                    }
                }
            }
        }
        self.invalidate(gone);
    }

    fn apply_outgoing(&self, snapshot: &TransferSnapshot) {
        let share = {
            let tree = self.lock();
            match tree
                .outgoing
                .get(&snapshot.transfer_id)
                .and_then(|ino| tree.nodes.get(ino))
            {
                Some(Node::Share(share)) => share.clone(),
                _ => return,
            }
        };
        match snapshot.phase {
            // Taken: not offered again after a restart; listed (as complete) until the
            // deadline or `rm`.
            Phase::Complete => self.store.forget(&share.id),
            Phase::Expired => self.drop_share(&share, false),
            _ => {}
        }
    }

    /// Once a second: release lingering readers, drop what has ended.
    fn on_tick(&self) {
        let now = now_ms();
        let (offers, shares): (Vec<Arc<Offer>>, Vec<Arc<Share>>) = {
            let tree = self.lock();
            let mut offers = Vec::new();
            let mut shares = Vec::new();
            for node in tree.nodes.values() {
                match node {
                    Node::Offer(offer) => offers.push(offer.clone()),
                    Node::Share(share) => shares.push(share.clone()),
                    _ => {}
                }
            }
            (offers, shares)
        };
        for offer in offers {
            let closed_at = offer.closed_at_ms.load(Ordering::Relaxed);
            let linger = if offer.verified.load(Ordering::Relaxed) {
                LINGER_COMPLETE_MS
            } else {
                LINGER_MS
            };
            if offer.opens.load(Ordering::Relaxed) == 0
                && closed_at != 0
                && now.saturating_sub(closed_at) >= linger
            {
                // Dropping the reader ends the transfer (range mode: the channel closes).
                if offer
                    .reader
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .is_some()
                {
                    debug!(transfer_id = %offer.transfer_id, "reader released");
                }
            }
            self.apply_incoming(&self.current(&offer));
        }
        for share in shares {
            let deadline = match &*share.state.lock().unwrap_or_else(|p| p.into_inner()) {
                ShareState::Offered { deadline_ms, .. } => Some(*deadline_ms),
                _ => None,
            };
            if deadline.is_some_and(|d| now >= d) {
                info!(name = share.name, "offer expired");
                self.drop_share(&share, false);
            }
        }
    }

    /// Forgets an own offer: cancels its transfer (when `cancel`), frees its spool, takes
    /// it out of the listing.
    fn drop_share(&self, share: &Share, cancel: bool) {
        share.removed.store(true, Ordering::Relaxed);
        let transfer_id = match &*share.state.lock().unwrap_or_else(|p| p.into_inner()) {
            ShareState::Offered { transfer_id, .. } => Some(transfer_id.clone()),
            _ => None,
        };
        if cancel && let Some(transfer_id) = &transfer_id {
            let _ = self
                .engine
                .cancel(transfer_id, "the sender removed the file");
        }
        self.store.forget(&share.id);
        if !share.linked {
            self.store.free(&share.id);
        }
        let gone = self.lock().remove_file(share.ino);
        self.invalidate(gone.into_iter().collect());
    }

    // ---- own offers ----------------------------------------------------------------------

    /// Offers again what the last run had on offer.
    async fn restore_shares(self: &Arc<Self>) {
        for record in self.store.load_live(now_ms()) {
            let Some(parent) = self.lock().rooms.get(&record.room_id).copied() else {
                warn!(
                    room_id = record.room_id,
                    name = record.name,
                    "no longer in the room; offer dropped"
                );
                self.store.forget(&record.id);
                self.store.free(&record.id);
                continue;
            };
            let path = self.store.bytes_path(&record);
            let share = {
                let mut tree = self.lock();
                if tree.taken(parent, &record.name) {
                    continue;
                }
                let ino = tree.allocate();
                let share = Arc::new(Share {
                    ino,
                    parent,
                    room_id: record.room_id.clone(),
                    name: record.name.clone(),
                    id: record.id.clone(),
                    path,
                    linked: matches!(record.bytes, shares::Bytes::Link(_)),
                    created_ms: record.created_ms,
                    state: Mutex::new(ShareState::Preparing {
                        size: record.size,
                        sha256: Some(record.sha256.clone()),
                    }),
                    removed: AtomicBool::new(false),
                });
                tree.nodes.insert(ino, Node::Share(share.clone()));
                if let Some(room) = tree.room_mut(parent) {
                    room.children.insert(record.name.clone(), ino);
                }
                share
            };
            info!(
                name = record.name,
                room_id = record.room_id,
                "offering again"
            );
            self.clone().offer_share(share, Some(record)).await;
        }
    }

    /// Hashes (unless known) and offers a closed share; records it for restarts.
    async fn offer_share(self: Arc<Self>, share: Arc<Share>, record: Option<Record>) {
        let result = self.prepare_and_offer(&share, record).await;
        if share.removed.load(Ordering::Relaxed) {
            // Removed while its offer was being prepared (hashing and syncing a large spool
            // take seconds): take back what went out, and its record.
            if let Ok((transfer_id, ..)) = &result {
                let _ = self
                    .engine
                    .cancel(transfer_id, "the sender removed the file");
            }
            self.store.forget(&share.id);
            info!(name = share.name, "removed before its offer went out");
            return;
        }
        if let Ok((transfer_id, ..)) = &result {
            // Lock order: the tree before a node's state (`getattr` holds the tree).
            self.lock().outgoing.insert(transfer_id.clone(), share.ino);
        }
        let mut state = share.state.lock().unwrap_or_else(|p| p.into_inner());
        let size = state.size();
        match result {
            Ok((transfer_id, sha256, deadline_ms)) => {
                *state = ShareState::Offered {
                    size,
                    sha256,
                    transfer_id,
                    deadline_ms,
                };
            }
            Err(reason) => {
                warn!(name = share.name, %reason, "no offer made");
                *state = ShareState::Failed { size, reason };
            }
        }
    }

    async fn prepare_and_offer(
        &self,
        share: &Share,
        record: Option<Record>,
    ) -> Result<(String, String, u64), String> {
        let record = match record {
            Some(record) => record,
            None => {
                let (size, known_digest) = {
                    let state = share.state.lock().unwrap_or_else(|p| p.into_inner());
                    match &*state {
                        ShareState::Preparing { size, sha256 } => (*size, sha256.clone()),
                        _ => return Err("the file changed while it was being offered".into()),
                    }
                };
                let sha256 = match known_digest {
                    Some(digest) => digest,
                    None => file_sha256(&share.path)
                        .await
                        .map(|digest| hex::encode(&digest))
                        .map_err(|e| format!("cannot read {}: {e}", share.path.display()))?,
                };
                let now = now_ms();
                let record = Record {
                    id: share.id.clone(),
                    room_id: share.room_id.clone(),
                    name: share.name.clone(),
                    size,
                    sha256,
                    created_ms: share.created_ms,
                    deadline_ms: now + self.lifetime.as_millis() as u64,
                    bytes: if share.linked {
                        shares::Bytes::Link(share.path.clone())
                    } else {
                        shares::Bytes::Spool
                    },
                    transfer_id: None,
                };
                self.store
                    .save(&record)
                    .map_err(|e| format!("cannot record the offer: {e}"))?;
                record
            }
        };
        let room_id: matrix_sdk::ruma::OwnedRoomId = record
            .room_id
            .as_str()
            .try_into()
            .map_err(|_| format!("bad room id {}", record.room_id))?;
        if let Some(stale) = &record.transfer_id {
            self.engine.withdraw(
                &room_id,
                stale,
                "the sender restarted and offers the file again",
            );
        }
        let sha256 = hex::decode::<32>(&record.sha256);
        let lifetime = Duration::from_millis(record.deadline_ms.saturating_sub(now_ms()));
        if share.removed.load(Ordering::Relaxed) {
            return Err("removed before it was offered".into());
        }
        let transfer_id = self
            .engine
            .offer(OfferRequest {
                room_id: &room_id,
                path: &share.path,
                filename: &record.name,
                size: record.size,
                sha256,
                lifetime,
            })
            .await
            .map_err(|e| e.to_string())?;
        let record = Record {
            transfer_id: Some(transfer_id.clone()),
            ..record
        };
        if let Err(error) = self.store.save(&record) {
            warn!(%error, "cannot record the offer");
        }
        Ok((transfer_id, record.sha256, record.deadline_ms))
    }

    // ---- FUSE operations -----------------------------------------------------------------

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let mut attr = FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK,
            flags: 0,
        };
        match node {
            Node::Root => {}
            Node::Room(room) => {
                attr.perm = if room.refuses_offers { 0o555 } else { 0o755 };
            }
            Node::Alias { target } => {
                attr.kind = FileType::Symlink;
                attr.perm = 0o777;
                attr.nlink = 1;
                attr.size = target.len() as u64;
            }
            Node::Offer(offer) => {
                let snapshot = offer.snapshot.lock().unwrap_or_else(|p| p.into_inner());
                attr.kind = FileType::RegularFile;
                attr.perm = 0o444;
                attr.nlink = 1;
                attr.size = snapshot.size;
                let mtime = system_time(snapshot.origin_server_ts);
                (attr.mtime, attr.ctime, attr.atime, attr.crtime) = (mtime, mtime, mtime, mtime);
            }
            Node::Share(share) => {
                let state = share.state.lock().unwrap_or_else(|p| p.into_inner());
                attr.kind = FileType::RegularFile;
                attr.perm = if matches!(*state, ShareState::Writing(_)) {
                    0o644
                } else {
                    0o444
                };
                attr.nlink = 1;
                attr.size = state.size();
                let mtime = system_time(share.created_ms);
                (attr.mtime, attr.ctime, attr.atime, attr.crtime) = (mtime, mtime, mtime, mtime);
            }
        }
        attr.blocks = attr.size.div_ceil(512);
        attr
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<FileAttr, Errno> {
        let tree = self.lock();
        let ino = tree.child(parent, name).ok_or(Errno::ENOENT)?;
        let node = tree.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        Ok(self.attr(ino, node))
    }

    pub fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let tree = self.lock();
        let node = tree.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        Ok(self.attr(ino, node))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        match self.lock().nodes.get(&ino) {
            Some(Node::Alias { target }) => Ok(target.as_bytes().to_vec()),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    /// The entries of directory `ino` (without `.` and `..`).
    pub fn readdir(&self, ino: u64) -> Result<Vec<(u64, FileType, String)>, Errno> {
        let tree = self.lock();
        match tree.nodes.get(&ino) {
            Some(Node::Root) => {
                let rooms = tree
                    .rooms
                    .iter()
                    .map(|(name, ino)| (*ino, FileType::Directory, name.clone()));
                let aliases = tree
                    .aliases
                    .iter()
                    .map(|(name, ino)| (*ino, FileType::Symlink, name.clone()));
                Ok(rooms.chain(aliases).collect())
            }
            Some(Node::Room(room)) => Ok(room
                .children
                .iter()
                .map(|(name, ino)| (*ino, FileType::RegularFile, name.clone()))
                .collect()),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn room_for_new_file(&self, parent: u64, name: &str) -> Result<String, Errno> {
        let tree = self.lock();
        let room = match tree.nodes.get(&parent) {
            Some(Node::Room(room)) => room,
            Some(Node::Root) => return Err(Errno::EPERM),
            _ => return Err(Errno::ENOENT),
        };
        names::check_local(name).map_err(|_| Errno::EINVAL)?;
        if room.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let room_id = room.room_id.clone();
        drop(tree);
        let parsed: &matrix_sdk::ruma::RoomId =
            room_id.as_str().try_into().map_err(|_| Errno::ENOENT)?;
        match self.engine.check_offer_room(parsed) {
            Ok(()) => Ok(room_id),
            Err(EngineError::PublicRoom(_)) => Err(Errno::EPERM),
            Err(_) => Err(Errno::ENOENT),
        }
    }

    fn insert_share(&self, share: Arc<Share>) -> Result<(), Errno> {
        let mut tree = self.lock();
        if tree.taken(share.parent, &share.name) {
            return Err(Errno::EEXIST);
        }
        let room = tree.room_mut(share.parent).ok_or(Errno::ENOENT)?;
        room.children.insert(share.name.clone(), share.ino);
        tree.nodes.insert(share.ino, Node::Share(share));
        Ok(())
    }

    /// `create` in a room directory: a new own offer, spooled until closed.
    pub fn create(&self, parent: u64, name: &str) -> Result<(FileAttr, u64), Errno> {
        let room_id = self.room_for_new_file(parent, name)?;
        let id = new_id().ok_or(Errno::EIO)?;
        let path = self.store.data_path(&id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| errno_of(&e))?;
        let ino = self.lock().allocate();
        let share = Arc::new(Share {
            ino,
            parent,
            room_id,
            name: name.to_owned(),
            id: id.clone(),
            path: path.clone(),
            linked: false,
            created_ms: now_ms(),
            state: Mutex::new(ShareState::Writing(Spooling {
                file,
                size: 0,
                hasher: BackgroundSha256::start(),
                hashed: 0,
                error: None,
                writers: 1,
            })),
            removed: AtomicBool::new(false),
        });
        if let Err(error) = self.insert_share(share.clone()) {
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        info!(name, "spooling a new offer");
        Ok((self.attr(ino, &Node::Share(share)), self.new_fh()))
    }

    /// `ln -s /abs/file ROOMDIR/NAME`: offers that file where it is. The link becomes a
    /// read-only file in the listing; the reply is the symlink the kernel asked for.
    pub fn symlink(
        self: &Arc<Self>,
        parent: u64,
        name: &str,
        target: &Path,
    ) -> Result<FileAttr, Errno> {
        let room_id = self.room_for_new_file(parent, name)?;
        if !target.is_absolute() {
            return Err(Errno::EINVAL);
        }
        let metadata = std::fs::metadata(target).map_err(|e| errno_of(&e))?;
        if !metadata.is_file() {
            return Err(Errno::EINVAL);
        }
        let id = new_id().ok_or(Errno::EIO)?;
        let ino = self.lock().allocate();
        let share = Arc::new(Share {
            ino,
            parent,
            room_id,
            name: name.to_owned(),
            id,
            path: target.to_owned(),
            linked: true,
            created_ms: now_ms(),
            state: Mutex::new(ShareState::Preparing {
                size: metadata.len(),
                sha256: None,
            }),
            removed: AtomicBool::new(false),
        });
        self.insert_share(share.clone())?;
        self.runtime.spawn(self.clone().offer_share(share, None));
        // The kernel wants a symlink back: an inode of its own that lives only as long as
        // its (uncached) entry; the next lookup finds the offer.
        let ghost = self.lock().allocate();
        let mut attr = self.attr(
            ghost,
            &Node::Alias {
                target: target.to_string_lossy().into_owned(),
            },
        );
        attr.ino = INodeNo(ghost);
        Ok(attr)
    }

    /// What `open` does to a node: answered at once, or after the offer is accepted.
    pub fn open(&self, ino: u64, write: bool) -> Result<Opened, Errno> {
        let tree = self.lock();
        match tree.nodes.get(&ino) {
            Some(Node::Offer(offer)) => {
                if write {
                    return Err(Errno::EACCES);
                }
                offer.opens.fetch_add(1, Ordering::Relaxed);
                offer.closed_at_ms.store(0, Ordering::Relaxed);
                Ok(Opened::Accept(offer.clone()))
            }
            Some(Node::Share(share)) => {
                let mut state = share.state.lock().unwrap_or_else(|p| p.into_inner());
                match &mut *state {
                    ShareState::Writing(spooling) => spooling.writers += 1,
                    _ if write => return Err(Errno::EACCES),
                    _ => {}
                }
                Ok(Opened::Now(self.new_fh()))
            }
            Some(Node::Root | Node::Room(_)) => Err(Errno::EISDIR),
            Some(Node::Alias { .. }) => Err(Errno::ELOOP),
            None => Err(Errno::ENOENT),
        }
    }

    /// Accepts `offer` if this is its first open; gives the handle to answer with.
    pub async fn accept(&self, offer: &Arc<Offer>) -> Result<u64, Errno> {
        let _guard = offer.accepting.lock().await;
        if offer
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(self.new_fh());
        }
        if offer.verified.load(Ordering::Relaxed) {
            // Received whole and released: the page cache may still hold it.
            return Ok(self.new_fh());
        }
        let snapshot = offer
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if snapshot.phase != Phase::Offered {
            self.release_offer(offer);
            let reason = snapshot
                .reason
                .unwrap_or_else(|| format!("the offer is {}", snapshot.phase));
            self.fail_offer(offer, &reason);
            return Err(Errno::EIO);
        }
        let accepted = if snapshot.offer_range {
            self.engine
                .accept_ranges(&offer.transfer_id)
                .await
                .map(|source| {
                    Reader::range(
                        self.cache.open(Arc::new(source)),
                        snapshot.sha256.as_deref(),
                    )
                })
        } else {
            let spool = self.incoming_dir.join(format!("{}.spool", offer.ino));
            self.engine
                .accept_to_spool(&offer.transfer_id, &spool)
                .await
                .map(Reader::Spool)
        };
        match accepted {
            Ok(reader) => {
                info!(transfer_id = %offer.transfer_id, range = snapshot.offer_range, "offer accepted");
                *offer.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(reader));
                Ok(self.new_fh())
            }
            Err(error) => {
                self.release_offer(offer);
                self.fail_offer(offer, &error.to_string());
                Err(Errno::EIO)
            }
        }
    }

    fn fail_offer(&self, offer: &Offer, reason: &str) {
        warn!(transfer_id = %offer.transfer_id, name = offer.name, reason, "read failed");
        offer
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| reason.to_owned());
    }

    /// Reads of placeholders: through their reader (waits on the network).
    pub async fn read_offer(
        &self,
        offer: &Arc<Offer>,
        offset: u64,
        size: u32,
    ) -> Result<bytes::Bytes, Errno> {
        if let Some(error) = offer
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            debug!(transfer_id = %offer.transfer_id, error, "read refused");
            return Err(Errno::EIO);
        }
        let Some(reader) = offer
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            info!(
                name = offer.name,
                "read after the transfer ended: the sender serves it no more"
            );
            return Err(Errno::EIO);
        };
        match reader.read(offset, u64::from(size)).await {
            Ok(data) => Ok(data),
            Err(error) => {
                let reason = self
                    .engine
                    .transfer(&offer.transfer_id)
                    .and_then(|t| t.reason)
                    .filter(|_| !error.0.contains("sha256"))
                    .unwrap_or(error.0);
                self.fail_offer(offer, &reason);
                Err(Errno::EIO)
            }
        }
    }

    /// The node `ino` as an offer to read from the network, or `None` for local files.
    pub fn offer(&self, ino: u64) -> Option<Arc<Offer>> {
        match self.lock().nodes.get(&ino) {
            Some(Node::Offer(offer)) => Some(offer.clone()),
            _ => None,
        }
    }

    /// Reads of own offers: from local disk.
    pub fn read_local(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let share = match self.lock().nodes.get(&ino) {
            Some(Node::Share(share)) => share.clone(),
            Some(_) => return Err(Errno::EISDIR),
            None => return Err(Errno::ENOENT),
        };
        let file = std::fs::File::open(&share.path).map_err(|e| errno_of(&e))?;
        let mut buffer = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buffer.len() {
            match file.read_at(&mut buffer[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(errno_of(&error)),
            }
        }
        buffer.truncate(filled);
        Ok(buffer)
    }

    /// Writes into a share being spooled: local disk, hashed on the way while in order.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let share = match self.lock().nodes.get(&ino) {
            Some(Node::Share(share)) => share.clone(),
            Some(Node::Offer(_)) => return Err(Errno::EACCES),
            Some(_) => return Err(Errno::EISDIR),
            None => return Err(Errno::ENOENT),
        };
        let mut state = share.state.lock().unwrap_or_else(|p| p.into_inner());
        let ShareState::Writing(spooling) = &mut *state else {
            return Err(Errno::EACCES);
        };
        if let Some(errno) = spooling.error {
            return Err(Errno::from_i32(errno));
        }
        if let Err(error) = spooling.file.write_all_at(data, offset) {
            let errno = error.raw_os_error().unwrap_or(libc::EIO);
            warn!(name = share.name, %error, "spool write failed; no offer will go out");
            spooling.error = Some(errno);
            return Err(Errno::from_i32(errno));
        }
        let end = offset + data.len() as u64;
        if let Some(hasher) = &mut spooling.hasher {
            if offset == spooling.hashed && hasher.update(data) {
                spooling.hashed = end;
            } else {
                // Out of order: hashed from the spool on close instead.
                spooling.hasher = None;
            }
        }
        spooling.size = spooling.size.max(end);
        Ok(data.len() as u32)
    }

    /// `truncate` of a share being written (`cp` over a fresh file does it).
    pub fn truncate(&self, ino: u64, size: u64) -> Result<FileAttr, Errno> {
        let tree = self.lock();
        let node = tree.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let Node::Share(share) = node else {
            return Err(Errno::EACCES);
        };
        {
            let mut state = share.state.lock().unwrap_or_else(|p| p.into_inner());
            let ShareState::Writing(spooling) = &mut *state else {
                return Err(Errno::EACCES);
            };
            if size != spooling.size {
                spooling.file.set_len(size).map_err(|e| errno_of(&e))?;
                spooling.size = size;
                if size != spooling.hashed {
                    spooling.hasher = None;
                }
            }
        }
        Ok(self.attr(ino, node))
    }

    /// The last close of a placeholder starts its linger; of a written share, its offer.
    pub fn release(self: &Arc<Self>, ino: u64) {
        let node = match self.lock().nodes.get(&ino) {
            Some(Node::Offer(offer)) => Node::Offer(offer.clone()),
            Some(Node::Share(share)) => Node::Share(share.clone()),
            _ => return,
        };
        match node {
            Node::Offer(offer) => self.release_offer(&offer),
            Node::Share(share) => self.release_share(share),
            _ => {}
        }
    }

    fn release_offer(&self, offer: &Offer) {
        let verified = offer
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|reader| reader.verified());
        if verified {
            offer.verified.store(true, Ordering::Relaxed);
        }
        if offer.opens.fetch_sub(1, Ordering::Relaxed) == 1 {
            offer.closed_at_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn release_share(self: &Arc<Self>, share: Arc<Share>) {
        let mut state = share.state.lock().unwrap_or_else(|p| p.into_inner());
        let ShareState::Writing(spooling) = &mut *state else {
            return;
        };
        spooling.writers = spooling.writers.saturating_sub(1);
        if spooling.writers > 0 {
            return;
        }
        if spooling.error.is_some() {
            drop(state);
            info!(
                name = share.name,
                "the spool could not be written; nothing offered"
            );
            self.drop_share(&share, false);
            return;
        }
        let size = spooling.size;
        let digest = (spooling.hashed == size)
            .then(|| spooling.hasher.take())
            .flatten()
            .and_then(BackgroundSha256::finish);
        let preparing = ShareState::Preparing {
            size,
            sha256: digest,
        };
        let ShareState::Writing(spooling) = std::mem::replace(&mut *state, preparing) else {
            return;
        };
        drop(state);
        let core = self.clone();
        self.runtime.spawn(async move {
            // On disk before it is announced, so that a remount after a crash offers what the
            // digest says. Off the FUSE thread: a large spool takes seconds to sync, and the
            // next `cp` into the mount would wait behind it.
            let file = spooling.file;
            if let Ok(Err(error)) = tokio::task::spawn_blocking(move || file.sync_data()).await {
                warn!(name = share.name, %error, "cannot sync the spool");
            }
            core.offer_share(share, None).await;
        });
    }

    /// `rm`: cancels an own offer or rejects one made to us.
    pub fn unlink(&self, parent: u64, name: &str) -> Result<(), Errno> {
        let node = {
            let tree = self.lock();
            let ino = tree.child(parent, name).ok_or(Errno::ENOENT)?;
            match tree.nodes.get(&ino) {
                Some(Node::Offer(offer)) => Node::Offer(offer.clone()),
                Some(Node::Share(share)) => Node::Share(share.clone()),
                Some(Node::Room(_) | Node::Root) => return Err(Errno::EISDIR),
                _ => return Err(Errno::EPERM),
            }
        };
        match node {
            Node::Share(share) => {
                info!(name, "own offer removed");
                self.drop_share(&share, true);
            }
            Node::Offer(offer) => {
                info!(name, transfer_id = %offer.transfer_id, "offer rejected");
                let _ = self
                    .engine
                    .cancel(&offer.transfer_id, "the receiver declined the file");
                let mut tree = self.lock();
                tree.dismissed.insert(offer.transfer_id.clone());
                tree.remove_file(offer.ino);
                offer
                    .reader
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
            }
            _ => {}
        }
        Ok(())
    }

    /// Free space where own offers are spooled, for `statfs`.
    pub fn statfs(&self) -> Option<libc::statvfs> {
        let path = std::ffi::CString::new(self.store.dir().as_os_str().as_encoded_bytes()).ok()?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a statvfs to fill.
        (unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == 0).then_some(stat)
    }

    // ---- extended attributes -------------------------------------------------------------

    /// The `user.d2dfs.*` attributes of a node, in a stable order.
    pub fn xattrs(&self, ino: u64) -> Result<Vec<(&'static str, String)>, Errno> {
        let node = match self.lock().nodes.get(&ino) {
            Some(Node::Offer(offer)) => Node::Offer(offer.clone()),
            Some(Node::Share(share)) => Node::Share(share.clone()),
            Some(Node::Room(room)) => {
                return Ok(vec![("user.d2dfs.room_id", room.room_id.clone())]);
            }
            Some(Node::Root) => {
                // What `d2dfs unmount` and `d2dfs status` ask the mount, and the chunk
                // cache's budget beside what it holds now and at most so far.
                let peak = self.cache.stats().peak_bytes.load(Ordering::Relaxed);
                return Ok(vec![
                    ("user.d2dfs.pid", std::process::id().to_string()),
                    ("user.d2dfs.user", self.engine.party().user_id),
                    (
                        "user.d2dfs.cache_size",
                        self.cache.config().capacity.to_string(),
                    ),
                    ("user.d2dfs.cache_used", self.cache.used().to_string()),
                    ("user.d2dfs.cache_peak", peak.to_string()),
                ]);
            }
            Some(_) => return Ok(Vec::new()),
            None => return Err(Errno::ENOENT),
        };
        Ok(match node {
            Node::Offer(offer) => self.offer_xattrs(&offer),
            Node::Share(share) => self.share_xattrs(&share),
            _ => Vec::new(),
        })
    }

    /// The engine's latest word on an offer, or the last one the tree saw (once the engine
    /// forgot it).
    fn current(&self, offer: &Offer) -> TransferSnapshot {
        self.engine.transfer(&offer.transfer_id).unwrap_or_else(|| {
            offer
                .snapshot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    fn offer_xattrs(&self, offer: &Offer) -> Vec<(&'static str, String)> {
        let snapshot = self.current(offer);
        let error = offer
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let reader = offer
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let state = if error.is_some() {
            "failed".to_owned()
        } else if offer.verified.load(Ordering::Relaxed)
            || reader.as_ref().is_some_and(|r| r.verified())
        {
            "complete".to_owned()
        } else {
            snapshot.phase.to_string()
        };
        let mut attrs = common_xattrs(&snapshot, state);
        if let Some(reason) = error.or(snapshot.reason.filter(|_| snapshot.phase == Phase::Failed))
        {
            attrs.push(("user.d2dfs.error", reason));
        }
        attrs
    }

    fn share_xattrs(&self, share: &Share) -> Vec<(&'static str, String)> {
        let state = share.state.lock().unwrap_or_else(|p| p.into_inner());
        let (transfer_id, sha256, deadline, failure) = match &*state {
            ShareState::Writing(_) => {
                return vec![
                    ("user.d2dfs.state", "writing".to_owned()),
                    ("user.d2dfs.size", state.size().to_string()),
                ];
            }
            ShareState::Preparing { size, .. } => {
                return vec![
                    ("user.d2dfs.state", "preparing".to_owned()),
                    ("user.d2dfs.size", size.to_string()),
                ];
            }
            ShareState::Failed { size, reason } => {
                return vec![
                    ("user.d2dfs.state", "failed".to_owned()),
                    ("user.d2dfs.size", size.to_string()),
                    ("user.d2dfs.error", reason.clone()),
                ];
            }
            ShareState::Offered {
                transfer_id,
                sha256,
                deadline_ms,
                ..
            } => (
                transfer_id.clone(),
                sha256.clone(),
                *deadline_ms,
                None::<String>,
            ),
        };
        drop(state);
        let Some(snapshot) = self.engine.transfer(&transfer_id) else {
            return vec![
                ("user.d2dfs.state", "offered".to_owned()),
                ("user.d2dfs.transfer_id", transfer_id),
                ("user.d2dfs.sha256", sha256),
                ("user.d2dfs.expires", deadline.to_string()),
            ];
        };
        let mut attrs = common_xattrs(&snapshot, snapshot.phase.to_string());
        if let Some(reason) = failure.or(snapshot.reason.filter(|_| snapshot.phase.is_final())) {
            attrs.push(("user.d2dfs.error", reason));
        }
        attrs
    }
}

fn common_xattrs(snapshot: &TransferSnapshot, state: String) -> Vec<(&'static str, String)> {
    let mut attrs = vec![
        ("user.d2dfs.state", state),
        ("user.d2dfs.transfer_id", snapshot.transfer_id.clone()),
        ("user.d2dfs.room_id", snapshot.room_id.clone()),
        ("user.d2dfs.sender", snapshot.sender.clone()),
        ("user.d2dfs.size", snapshot.size.to_string()),
        ("user.d2dfs.bytes", snapshot.bytes_moved.to_string()),
        ("user.d2dfs.mimetype", snapshot.mimetype.clone()),
        ("user.d2dfs.expires", snapshot.expires_at_ms.to_string()),
        (
            "user.d2dfs.mode",
            if snapshot.range { "range" } else { "stream" }.to_owned(),
        ),
    ];
    if let Some(peer) = &snapshot.peer {
        attrs.push(("user.d2dfs.peer", peer.clone()));
    }
    if let Some(path) = &snapshot.path {
        attrs.push(("user.d2dfs.path", path.clone()));
        // The transfer's own connection and its lanes.
        let connections = 1 + u32::from(snapshot.lanes_open);
        attrs.push(("user.d2dfs.connections", connections.to_string()));
        attrs.push(("user.d2dfs.reconnects", snapshot.reconnects.to_string()));
    }
    if let Some(sha256) = &snapshot.sha256 {
        attrs.push(("user.d2dfs.sha256", sha256.clone()));
    }
    attrs
}

/// What `open` gives the adapter.
pub enum Opened {
    /// A handle, answer now.
    Now(u64),
    /// An offer: accept it (on the runtime), then answer.
    Accept(Arc<Offer>),
}

/// A fresh local id: 64 random bits, hex.
fn new_id() -> Option<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(phase: Phase, expires_at_ms: u64) -> TransferSnapshot {
        TransferSnapshot {
            transfer_id: "t".into(),
            room_id: "!r:x".into(),
            role: Role::Receiving,
            phase,
            filename: "f".into(),
            size: 1,
            mimetype: "a/b".into(),
            sha256: None,
            sender: "@a:x".into(),
            peer: None,
            bytes_moved: 0,
            origin_server_ts: 0,
            expires_at_ms,
            reason: None,
            range: true,
            offer_range: true,
            path: None,
            lanes_open: 0,
            reconnects: 0,
        }
    }

    #[test]
    fn which_placeholders_are_listed() {
        let live = 2_000;
        let now = 1_000;
        for phase in [
            Phase::Offered,
            Phase::Answered,
            Phase::Connecting,
            Phase::Transferring,
        ] {
            assert!(shown(&snapshot(phase, live), false, now), "{phase}");
        }
        // Failed: listed (EIO and the reason) until the offer would have expired.
        assert!(shown(&snapshot(Phase::Failed, live), false, now));
        assert!(!shown(&snapshot(Phase::Failed, live), false, live));
        // Complete: only while still read or once received whole.
        assert!(!shown(&snapshot(Phase::Complete, live), false, now));
        assert!(shown(&snapshot(Phase::Complete, live), true, now));
        assert!(!shown(&snapshot(Phase::Complete, live), true, live));
        for phase in [Phase::Cancelled, Phase::Expired] {
            assert!(!shown(&snapshot(phase, live), true, now), "{phase}");
        }
    }
}
