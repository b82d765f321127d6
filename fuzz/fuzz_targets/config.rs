//! The settings parser takes any text without panicking: every input is a
//! valid configuration or one error line.
#![no_main]

use connmon::config::{Layer, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match Layer::from_toml(text) {
        Ok(layer) => {
            if let Err(error) = Settings::resolve(&[layer]) {
                assert!(!error.to_string().contains('\n'), "multi-line error: {error}");
            }
        }
        Err(error) => assert!(!error.contains('\n'), "multi-line error: {error}"),
    }
});
