//! The HTTP request path takes any bytes a client sends (the property is
//! `connmon::fuzzing::http`, also replayed on the corpus by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|request: &[u8]| connmon::fuzzing::http(request));
