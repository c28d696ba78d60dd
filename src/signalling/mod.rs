//! The Matrix half of d2dfs: the account session, and (later) the `m.d2dfile.*` events and the
//! sync loop that carries them.

pub mod errors;
pub mod events;
pub mod rooms;
pub mod session;
pub mod sync;
pub mod turn;
