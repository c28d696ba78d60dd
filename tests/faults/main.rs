//! Fault tests: a binary of its own because they add and remove network interfaces on the
//! host, and a WebRTC connection of a test running beside them may have picked an address on
//! one of those interfaces (then it dies with the interface). Cargo runs test binaries one
//! after the other, so these never share the host's network with the other tests.

// The harness serves the integration binary too; not all of it is used here.
#[allow(dead_code)]
#[path = "../integration/harness/mod.rs"]
mod harness;

mod faults;
mod netns;
