//! Any WebSocket text frame is classified without panicking, and only text
//! that is no JSON object is relayed as a broadcast, verbatim.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secchat::domain::ClientFrame;

fuzz_target!(|text: &str| {
    match ClientFrame::parse(text) {
        ClientFrame::Broadcast(relayed) => assert_eq!(relayed, text),
        ClientFrame::Direct { .. }
        | ClientFrame::Auth { .. }
        | ClientFrame::Ack { .. }
        | ClientFrame::Malformed => {
            assert!(text.trim_start().starts_with('{'))
        }
    }
});
