//! Timeline events from the network through the signalling classifier and the MSC2354 parser:
//! never panics, and every accepted event's content re-parses to the same event.
#![no_main]

use d2dfs::signalling::events::D2dEvent;
use d2dfs::signalling::sync::{OwnDevice, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let me = OwnDevice {
        user_id: "@me:localhost".try_into().unwrap(),
        device_id: "MYDEVICE".into(),
    };
    let room = "!room:localhost".try_into().unwrap();
    for encrypted in [false, true] {
        let decryption = encrypted.then(|| d2dfs::signalling::sync::Decryption {
            sender_device: Some("OTHER".into()),
            verified: false,
        });
        if let Ok(incoming) = classify(&room, &json, decryption, encrypted, &me, 1_000_000) {
            let event = incoming.event;
            let again = D2dEvent::parse(event.event_type(), &event.to_content());
            assert_eq!(again, Ok(event));
        }
    }
});
