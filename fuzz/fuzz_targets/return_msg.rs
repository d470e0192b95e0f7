//! Return-channel frames on arbitrary bytes: never a panic, and a decoded frame re-encodes to
//! bytes that decode to the same encoding (compared as bytes: a `Mesh` may carry NaN).
#![no_main]

use libfuzzer_sys::fuzz_target;
use machinaftp::protocol::ret::ReturnMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ReturnMsg::decode(data) {
        let again = msg.to_bytes();
        assert_eq!(ReturnMsg::decode(&again).map(|m| m.to_bytes()), Ok(again.clone()));
    }
});
