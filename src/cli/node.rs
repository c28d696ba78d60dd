//! What `mount`, `send` and `recv` share: a restored session driving a transfer engine, and
//! the size and duration arguments.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use matrix_sdk::ruma::{OwnedRoomId, RoomAliasId, RoomId};

use crate::profile::{Profile, ProfileLock};
use crate::signalling::session::{self, Account};
use crate::signalling::sync::OwnDevice;
use crate::transfer::engine::{Engine, EngineConfig};
use crate::transport::webrtc::{WebRtcConfig, WebRtcConnector};

/// Whom this device deals with: shared by `mount`, `send` and `recv`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// Make and show offers in public rooms too (off: offers are for rooms you trust)
    #[arg(long)]
    pub allow_public_rooms: bool,
    /// Deal only with verified devices: offers and answers from devices this account has not
    /// verified (cross-signing) are ignored, and encrypted rooms only
    #[arg(long)]
    pub verified_only: bool,
}

impl TrustArgs {
    /// The engine's configuration for offers that live `lifetime`.
    pub fn engine_config(&self, lifetime: Duration) -> EngineConfig {
        EngineConfig {
            allow_public_rooms: self.allow_public_rooms,
            verified_only: self.verified_only,
            lifetime,
            ..EngineConfig::default()
        }
    }
}

/// A logged-in account with its engine running.
pub struct Node {
    pub account: Account,
    pub engine: Engine,
    _lock: ProfileLock,
}

impl Node {
    /// Restores the profile's session and starts the engine on it.
    pub async fn start(profile: &Profile, config: EngineConfig) -> anyhow::Result<Self> {
        let lock = profile.lock()?;
        let account = session::restore(profile).await?;
        let client = account.client.clone();
        let me = OwnDevice {
            user_id: client
                .user_id()
                .context("the stored session has no user id")?
                .to_owned(),
            device_id: client
                .device_id()
                .context("the stored session has no device id")?
                .to_owned(),
        };
        let connector = WebRtcConnector::new(WebRtcConfig::default());
        let engine = Engine::start(client, me, Arc::new(connector), config);
        Ok(Self {
            account,
            engine,
            _lock: lock,
        })
    }

    /// Waits for the first sync (offers already in the rooms are known after it), up to
    /// `limit`; false when the homeserver did not answer in time.
    pub async fn synced(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.engine.wait_synced())
            .await
            .is_ok()
    }

    /// The joined room named by `room`: a room id, or an alias (`#name:server`).
    pub async fn resolve_room(&self, room: &str) -> anyhow::Result<OwnedRoomId> {
        let room_id: OwnedRoomId = if room.starts_with('#') {
            let alias = <&RoomAliasId>::try_from(room)
                .with_context(|| format!("{room} is not a room alias"))?;
            self.account
                .client
                .resolve_room_alias(alias)
                .await
                .with_context(|| format!("cannot resolve {room}"))?
                .room_id
        } else {
            <&RoomId>::try_from(room)
                .with_context(|| {
                    format!("{room} is not a room id (!id:server) or alias (#name:server)")
                })?
                .to_owned()
        };
        match self.account.client.get_room(&room_id) {
            Some(joined) if joined.state() == matrix_sdk::RoomState::Joined => Ok(room_id),
            _ => bail!("not a joined room: {room}"),
        }
    }
}

/// `64M`, `1GiB`, `512MB`, `1048576`: a size in bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(bytes) = text.parse::<u64>() {
        return Ok(bytes);
    }
    // Single-letter suffixes are binary, like `dd` and `sshfs` read them.
    let normalized = match text.chars().last() {
        Some(c @ ('K' | 'M' | 'G' | 'T' | 'k' | 'm' | 'g' | 't')) => {
            format!("{}{}iB", &text[..text.len() - 1], c.to_ascii_uppercase())
        }
        _ => text.to_owned(),
    };
    normalized
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("not a size: {text} (try 64M, 1G, 512MiB)"))
}

/// `10m`, `1h 30m`, `600` (seconds): a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("not a duration: {text} ({e}; try 10m, 2h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1 MB"), Ok(1_000_000));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
    }
}
