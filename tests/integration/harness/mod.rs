//! Real parts for integration tests: a Synapse homeserver, registered users, the d2dfs binary.

pub mod aiortc;
pub mod cli;
pub mod fake_transport;
pub mod homeserver;
pub mod mount;
pub mod pair;
pub mod turn;
pub mod users;
