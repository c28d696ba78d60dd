//! d2dfs: Matrix device-to-device file transfer (MSC2354) as a FUSE filesystem.
//!
//! The layers, from the user down:
//! - [`cli`]: the `d2dfs` command line (clap definitions and the commands' output);
//! - [`signalling`]: the Matrix side: session, `m.d2dfile.*` events, sync;
//! - [`profile`]: where an account's state lives on disk.

pub mod cli;
pub mod profile;
pub mod signalling;
