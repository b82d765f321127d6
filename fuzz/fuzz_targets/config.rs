//! The settings parser takes any text without panicking (the property is
//! `connmon::fuzzing::config`, also replayed on the corpus by `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| connmon::fuzzing::config(text));
