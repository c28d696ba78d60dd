//! Two accounts, a room they share, and both mounted: where most filesystem tests start.

use matrix_sdk::Client;

use super::mount::TestMount;
use super::users::{RoomSpec, TestUser, create_shared_room};

/// Alice's and bob's mounts of a room they share, and bob's client (to act in the room
/// beside his mount).
pub struct Pair {
    pub alice: TestMount,
    pub bob: TestMount,
    pub room_id: String,
    pub bob_client: Client,
}

/// A private, unencrypted room: the usual setting of a test about something else.
pub fn private() -> RoomSpec<'static> {
    RoomSpec {
        name: "fs",
        encrypted: false,
        public: false,
    }
}

/// Two new users in a room of `spec`, mounted with `alice_args` and `bob_args`; returns once
/// both mounts show the room.
pub async fn pair_with(spec: RoomSpec<'_>, alice_args: &[&str], bob_args: &[&str]) -> Pair {
    let alice_user = TestUser::register("fsalice").await;
    let bob_user = TestUser::register("fsbob").await;
    let alice_client = alice_user.client().await;
    let bob_client = bob_user.client().await;
    let room_id = create_shared_room(&alice_client, &[&bob_client], spec)
        .await
        .to_string();
    let (alice, bob) = tokio::join!(
        TestMount::start(&alice_user, alice_args),
        TestMount::start(&bob_user, bob_args)
    );
    alice.wait_for(&alice.room(&room_id)).await;
    bob.wait_for(&bob.room(&room_id)).await;
    Pair {
        alice,
        bob,
        room_id,
        bob_client,
    }
}

/// [`pair_with`] with default mounts.
pub async fn pair(spec: RoomSpec<'_>) -> Pair {
    pair_with(spec, &[], &[]).await
}
