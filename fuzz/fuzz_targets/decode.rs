//! The kernel-record decoder takes any bytes without panicking, and what
//! it accepts survives an encode/decode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(event) = connmon::decode::decode(bytes) {
        // Decoding is deterministic.
        assert_eq!(connmon::decode::decode(bytes).ok(), Some(event));
    }
});
