//! Session descriptions from the network through the check d2dfs runs before webrtc-rs acts on
//! them: never panics, and anything accepted describes a data channel within the size limit.
#![no_main]

use d2dfs::transport::webrtc::{MAX_SDP, SdpKind, remote_description};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [SdpKind::Offer, SdpKind::Answer] {
        if remote_description(kind, sdp).is_ok() {
            assert!(sdp.len() <= MAX_SDP);
            assert!(sdp.contains("m=application"));
        }
    }
});
