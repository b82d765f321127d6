//! The kernel-record decoder takes any bytes without panicking, and what it
//! decodes round-trips through the encoder (the property is
//! `connmon::fuzzing::decode`, also replayed on the corpus by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| connmon::fuzzing::decode(bytes));
