//! The sealed session's decoders on arbitrary bytes (version 5): the data channel's records as a
//! stream (header, then body) and return-channel messages, opened with a real session's keys.
//! Never a panic, and nothing forged opens.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use machinaftp::secure::{ClientHandshake, Opener, RECORD_HEADER, Secret, ServerReply};

/// A's keys of one real session, made once.
fn keys() -> &'static std::sync::Mutex<machinaftp::secure::SessionKeys> {
    static KEYS: OnceLock<std::sync::Mutex<machinaftp::secure::SessionKeys>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let secret = Secret::new("fuzz").unwrap();
        let token = [5u8; 16];
        let client = ClientHandshake::start(&secret);
        let reply = ServerReply::respond(&secret, &token, &client.message()).unwrap();
        std::sync::Mutex::new(reply.keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut keys = keys().lock().unwrap();
    // Records: whatever the bytes, a length is checked before any body is read, and no body
    // opens (the fuzzer does not hold the peer's key).
    let mut rest = data.to_vec();
    while rest.len() >= RECORD_HEADER {
        let header: [u8; RECORD_HEADER] = rest[..RECORD_HEADER].try_into().unwrap();
        let Ok(len) = Opener::record_len(header) else { break };
        if rest.len() < RECORD_HEADER + len {
            break;
        }
        assert!(keys.data_in.open_record(header, &mut rest[RECORD_HEADER..RECORD_HEADER + len]).is_err());
        rest.drain(..RECORD_HEADER + len);
    }
    // A return-channel message.
    let mut msg = data.to_vec();
    assert!(keys.ret_in.open_message(&mut msg).is_err());
});
