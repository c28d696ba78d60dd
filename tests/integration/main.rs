//! Integration tests: one binary (one link of matrix-sdk and webrtc), one Synapse per run.

mod harness;

mod accounts;
mod fs;
mod man_pages;
mod signalling;
mod transport;
