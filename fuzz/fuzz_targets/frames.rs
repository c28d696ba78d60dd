//! The range protocol's frame decoder on arbitrary messages: never panics, and whatever it
//! accepts encodes back to a frame that decodes the same.
#![no_main]

use bytes::Bytes;
use d2dfs::transport::frames::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(Frame::decode(frame.encode()), Ok(frame));
    }
});
