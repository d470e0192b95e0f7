//! The secured handshake's inputs from the network on arbitrary bytes (version 5): a client's
//! SPAKE2 message at A, and A's message and confirmation at B. Never a panic, never a success.
#![no_main]

use libfuzzer_sys::fuzz_target;
use machinaftp::protocol::data::parse_frame;
use machinaftp::secure::{ClientHandshake, Secret, ServerReply};

fuzz_target!(|data: &[u8]| {
    let secret = Secret::new("fuzz").unwrap();
    let token = [9u8; 16];
    // At A: whatever the message, a reply or a refusal; the confirmation it then expects is
    // not the fuzzer's to give.
    if let Ok(reply) = ServerReply::respond(&secret, &token, data) {
        assert!(reply.check.verify(data).is_err());
    }
    // At B: A's half, split anywhere.
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (msg, confirm) = data.split_at(cut);
    assert!(ClientHandshake::start(&secret).finish(&token, msg, confirm).is_err());
    // And as frames (Hello, Welcome and Confirm carry the handshake).
    let _ = parse_frame(data);
});
