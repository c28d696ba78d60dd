//! d2dfs: Matrix device-to-device file transfer (MSC2354) as a FUSE filesystem.
//!
//! The layers, from the user down:
//! - [`cli`]: the `d2dfs` command line (clap definitions and the commands' output);
//! - [`fs`]: the FUSE filesystem: rooms as directories, offers as files;
//! - [`cache`]: reading an offered file on demand: chunk cache, read-ahead, stream spool;
//! - [`transfer`]: the life of each transfer, for both roles, and range mode;
//! - [`signalling`]: the Matrix side: session, `m.d2dfile.*` events, sync;
//! - [`transport`]: peer connections and data channels (webrtc-rs), the range frames;
//! - [`profile`]: where an account's state lives on disk;
//! - [`hex`]: lowercase hexadecimal for digests, ids and keys.

pub mod cache;
pub mod cli;
pub mod fs;
pub mod hex;
pub mod profile;
pub mod signalling;
pub mod transfer;
pub mod transport;
