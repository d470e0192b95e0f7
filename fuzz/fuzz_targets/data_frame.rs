//! Data-channel framing and decoding on arbitrary bytes: never a panic, and whatever decodes
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use machinaftp::protocol::data::parse_frame;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = parse_frame(rest) {
        // Names and reasons are cut to their limits on encoding, so only compare when the
        // decoded message was within them (which decode guarantees for names).
        let again = msg.to_bytes();
        if let machinaftp::protocol::data::DataMsg::Header { .. } = msg {
            assert_eq!(again, rest[..used]);
        }
        rest = &rest[used..];
    }
});
