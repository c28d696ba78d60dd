//! The inode table: what the mount shows, as plain data. The root holds a directory per
//! joined room and a symlink per canonical alias; room directories hold placeholders
//! ([`Offer`]) and this device's own offers ([`Share`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use super::digest::BackgroundSha256;
use super::reader::Reader;
use crate::transfer::engine::TransferSnapshot;

pub const ROOT: u64 = 1;

/// A directory per joined room.
#[derive(Debug)]
pub struct RoomDir {
    pub room_id: String,
    pub children: BTreeMap<String, u64>,
    /// Offers are refused here (a public room without `--allow-public-rooms`).
    pub refuses_offers: bool,
}

/// An offer from another device, shown as a read-only file.
pub struct Offer {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub transfer_id: String,
    pub snapshot: Mutex<TransferSnapshot>,
    /// Set once the offer was accepted (first open).
    pub reader: Mutex<Option<Arc<Reader>>>,
    /// Serialises the accept of concurrent first opens.
    pub accepting: tokio::sync::Mutex<()>,
    pub opens: AtomicU32,
    /// When the last handle was closed (milliseconds since the epoch); 0 while open.
    pub closed_at_ms: AtomicU64,
    /// Every byte was read and matched the digest.
    pub verified: std::sync::atomic::AtomicBool,
    /// Why reading failed, for `user.d2dfs.error`.
    pub error: Mutex<Option<String>>,
}

/// An offer this device makes: a file written into a room directory or linked there.
pub struct Share {
    pub ino: u64,
    pub parent: u64,
    pub room_id: String,
    pub name: String,
    /// Local id: names the spool file and the record.
    pub id: String,
    /// Where the bytes are: the spool, or the linked file.
    pub path: PathBuf,
    pub linked: bool,
    pub created_ms: u64,
    pub state: Mutex<ShareState>,
    /// Taken out of the listing (`rm`, a failed write): whatever is still preparing its offer
    /// must not send it, or must withdraw it.
    pub removed: AtomicBool,
}

/// Where an own offer is.
pub enum ShareState {
    /// Being written (created in the room directory, not closed yet).
    Writing(Spooling),
    /// Closed: being hashed (unless the digest was taken while writing) and offered.
    Preparing { size: u64, sha256: Option<String> },
    /// Offered as `transfer_id`.
    Offered {
        size: u64,
        sha256: String,
        transfer_id: String,
        deadline_ms: u64,
    },
    /// No offer went out.
    Failed { size: u64, reason: String },
}

impl ShareState {
    pub fn size(&self) -> u64 {
        match self {
            Self::Writing(spooling) => spooling.size,
            Self::Preparing { size, .. }
            | Self::Offered { size, .. }
            | Self::Failed { size, .. } => *size,
        }
    }
}

/// A file being written into the spool.
pub struct Spooling {
    pub file: std::fs::File,
    pub size: u64,
    /// The digest of `[0, hashed)`, while writes come in order.
    pub hasher: Option<BackgroundSha256>,
    pub hashed: u64,
    /// A write failed (errno): no offer will go out.
    pub error: Option<i32>,
    pub writers: u32,
}

pub enum Node {
    Root,
    Room(RoomDir),
    /// `#alias:server -> !room:server`.
    Alias {
        target: String,
    },
    Offer(Arc<Offer>),
    Share(Arc<Share>),
}

/// Every node of the mount, by inode number.
pub struct Tree {
    pub nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Room id -> directory inode.
    pub rooms: BTreeMap<String, u64>,
    /// Alias name (in the root) -> symlink inode.
    pub aliases: BTreeMap<String, u64>,
    /// Incoming transfer id -> placeholder inode.
    pub incoming: HashMap<String, u64>,
    /// Outgoing transfer id -> share inode.
    pub outgoing: HashMap<String, u64>,
    /// Offers the user removed: never shown again.
    pub dismissed: HashSet<String>,
}

impl Default for Tree {
    fn default() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::Root);
        Self {
            nodes,
            next_ino: ROOT + 1,
            rooms: BTreeMap::new(),
            aliases: BTreeMap::new(),
            incoming: HashMap::new(),
            outgoing: HashMap::new(),
            dismissed: HashSet::new(),
        }
    }
}

impl Tree {
    pub fn allocate(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    pub fn room(&self, ino: u64) -> Option<&RoomDir> {
        match self.nodes.get(&ino) {
            Some(Node::Room(room)) => Some(room),
            _ => None,
        }
    }

    pub fn room_mut(&mut self, ino: u64) -> Option<&mut RoomDir> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Room(room)) => Some(room),
            _ => None,
        }
    }

    /// The child `name` of directory `parent`.
    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        if parent == ROOT {
            return self
                .rooms
                .get(name)
                .or_else(|| self.aliases.get(name))
                .copied();
        }
        self.room(parent)?.children.get(name).copied()
    }

    /// Whether `name` is taken in room directory `parent`.
    pub fn taken(&self, parent: u64, name: &str) -> bool {
        self.room(parent)
            .is_some_and(|room| room.children.contains_key(name))
    }

    /// Removes a file node; returns its parent and name (to tell the kernel).
    pub fn remove_file(&mut self, ino: u64) -> Option<(u64, String)> {
        let (parent, name) = match self.nodes.remove(&ino)? {
            Node::Offer(offer) => {
                self.incoming.remove(&offer.transfer_id);
                (offer.parent, offer.name.clone())
            }
            Node::Share(share) => {
                self.outgoing.retain(|_, share_ino| *share_ino != ino);
                (share.parent, share.name.clone())
            }
            other => {
                self.nodes.insert(ino, other);
                return None;
            }
        };
        if let Some(room) = self.room_mut(parent) {
            room.children.remove(&name);
        }
        Some((parent, name))
    }
}
