//! Accounts on the test homeserver, and clients that act for them in test setup.

use matrix_sdk::Client;
use matrix_sdk::ruma::api::client::account::register;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};

use super::homeserver::{homeserver, unique_name};

/// A registered account.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub user_id: OwnedUserId,
    pub password: String,
    pub homeserver: String,
}

impl TestUser {
    /// Registers a fresh account whose name starts with `prefix`.
    pub async fn register(prefix: &str) -> Self {
        Self::register_on(&homeserver().url, prefix).await
    }

    /// Registers a fresh account on the homeserver at `url`.
    pub async fn register_on(url: &str, prefix: &str) -> Self {
        let localpart = unique_name(prefix);
        let password = format!("pw-{localpart}");
        let client = anonymous_client(url).await;
        let mut request = register::v3::Request::new();
        request.username = Some(localpart.clone());
        request.password = Some(password.clone());
        request.inhibit_login = true;
        request.auth = Some(uiaa::AuthData::Dummy(uiaa::Dummy::new()));
        let response = client
            .matrix_auth()
            .register(request)
            .await
            .expect("register test user");
        Self {
            user_id: response.user_id,
            password,
            homeserver: url.to_owned(),
        }
    }

    /// A new logged-in device of this user (in-memory store), for arranging test state.
    pub async fn client(&self) -> Client {
        let client = anonymous_client(&self.homeserver).await;
        client
            .matrix_auth()
            .login_username(&self.user_id, &self.password)
            .initial_device_display_name("test harness")
            .await
            .expect("log in test user");
        client
    }
}

async fn anonymous_client(url: &str) -> Client {
    Client::builder()
        .homeserver_url(url)
        .build()
        .await
        .expect("build matrix client")
}

/// How a test room is set up.
pub struct RoomSpec<'a> {
    pub name: &'a str,
    pub encrypted: bool,
    pub public: bool,
}

/// `creator` creates a room and every member of `joiners` joins it.
pub async fn create_shared_room(
    creator: &Client,
    joiners: &[&Client],
    spec: RoomSpec<'_>,
) -> OwnedRoomId {
    let mut request = create_room::v3::Request::new();
    request.name = Some(spec.name.to_owned());
    request.preset = Some(if spec.public {
        create_room::v3::RoomPreset::PublicChat
    } else {
        create_room::v3::RoomPreset::PrivateChat
    });
    for joiner in joiners {
        request
            .invite
            .push(joiner.user_id().expect("logged in").to_owned());
    }
    if spec.encrypted {
        request.initial_state.push(
            InitialStateEvent::with_empty_state_key(
                RoomEncryptionEventContent::with_recommended_defaults(),
            )
            .to_raw_any(),
        );
    }
    let room = creator.create_room(request).await.expect("create room");
    let room_id = room.room_id().to_owned();
    for joiner in joiners {
        joiner.join_room_by_id(&room_id).await.expect("join room");
    }
    room_id
}
