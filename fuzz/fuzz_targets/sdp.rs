//! Session descriptions from the network through the check d2dfs runs before webrtc-rs acts on
//! them: never panics, and anything accepted is within the size limit and, as webrtc-rs itself
//! parses it, describes a data channel. (Not as text: the parser is lenient, and it is what
//! webrtc-rs will act on that counts; a seed in the corpus has `m=\rapplication`.)
#![no_main]

use d2dfs::transport::webrtc::{MAX_SDP, SdpKind, remote_description};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [SdpKind::Offer, SdpKind::Answer] {
        if let Ok(description) = remote_description(kind, sdp) {
            assert!(sdp.len() <= MAX_SDP);
            let parsed = description.unmarshal().expect("an accepted SDP parses again");
            assert!(
                parsed
                    .media_descriptions
                    .iter()
                    .any(|media| media.media_name.media == "application")
            );
        }
    }
});
