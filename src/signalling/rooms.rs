//! What d2dfs needs to know about a joined room: how to name it and whether offers may be made.

use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::filter::FilterDefinition;
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::events::room::join_rules::JoinRule;
use matrix_sdk::{Client, Room};
use serde::Serialize;

/// A joined room as `d2dfs rooms` and the filesystem show it.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary {
    pub room_id: String,
    pub canonical_alias: Option<String>,
    pub name: Option<String>,
    pub encrypted: bool,
    /// `invite`, `public`, `knock`, `restricted`, … or `unknown` before the state is known.
    pub join_rule: String,
    pub members: u64,
}

impl RoomSummary {
    /// Public rooms get no offers unless the user allows it (SPEC §5).
    pub fn is_public(&self) -> bool {
        self.join_rule == "public"
    }

    /// The best human label: the alias, else the name.
    pub fn label(&self) -> Option<&str> {
        self.canonical_alias.as_deref().or(self.name.as_deref())
    }
}

/// Summarises one room from the local state store (no network).
pub async fn summarize(room: &Room) -> RoomSummary {
    let name = match room.name() {
        Some(name) => Some(name),
        None => room.cached_display_name().map(|n| n.to_string()),
    };
    RoomSummary {
        room_id: room.room_id().to_string(),
        canonical_alias: room.canonical_alias().map(|a| a.to_string()),
        name,
        encrypted: room.encryption_state().is_encrypted(),
        join_rule: room.join_rule().map_or_else(
            || "unknown".to_owned(),
            |rule| join_rule_name(&rule).to_owned(),
        ),
        members: room.joined_members_count(),
    }
}

fn join_rule_name(rule: &JoinRule) -> &str {
    match rule {
        JoinRule::Invite => "invite",
        JoinRule::Knock => "knock",
        JoinRule::Private => "private",
        JoinRule::Restricted(_) => "restricted",
        JoinRule::KnockRestricted(_) => "knock_restricted",
        JoinRule::Public => "public",
        other => other.as_str(),
    }
}

/// Brings the local state up to date with one sync that returns at once.
pub async fn sync_now(client: &Client) -> matrix_sdk::Result<()> {
    let filter = Filter::FilterDefinition(FilterDefinition::with_lazy_loading());
    let settings = SyncSettings::default()
        .timeout(Duration::ZERO)
        .filter(filter);
    client.sync_once(settings).await.map(drop)
}

/// The joined rooms, sorted by label then id.
pub async fn joined_rooms(client: &Client) -> Vec<RoomSummary> {
    let mut rooms = Vec::new();
    for room in client.joined_rooms() {
        rooms.push(summarize(&room).await);
    }
    rooms.sort_by(|a, b| (a.label(), &a.room_id).cmp(&(b.label(), &b.room_id)));
    rooms
}
