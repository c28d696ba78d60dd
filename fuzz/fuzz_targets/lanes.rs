//! The lanes control channel's message parser (JSON from the peer, inside the transfer's own
//! connection) on arbitrary bytes: never panics, and whatever it accepts encodes back to a
//! message that decodes the same.
#![no_main]

use d2dfs::transfer::lanes::LaneMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = LaneMessage::decode(data) {
        assert_eq!(LaneMessage::decode(&message.encode()), Ok(message));
    }
});
