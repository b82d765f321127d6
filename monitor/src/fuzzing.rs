//! The properties the fuzz targets (`fuzz/`) check, one function per
//! target, so that the same checks replay the committed corpora and crash
//! inputs as ordinary tests (`monitor/tests/fuzz_corpora.rs`) on every
//! `cargo test`, not only under `cargo xtask fuzz`. Each panics when its
//! property does not hold.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "a fuzz property reports a broken property, or a broken harness, by panicking"
)]

use std::sync::{Arc, LazyLock};

use crate::{
    config::{Layer, Settings},
    http::{Status, answer_raw, router, webconfig::WebConfig},
    metrics::{DEFAULT_SERIES_CAP, Metrics},
};

/// The settings parser takes any text without panicking: every input is a
/// valid configuration or one error line.
pub fn config(text: &str) {
    match Layer::from_toml(text) {
        Ok(layer) => {
            if let Err(error) = Settings::resolve(&[layer]) {
                assert!(
                    !error.to_string().contains('\n'),
                    "multi-line error: {error}"
                );
            }
        }
        Err(error) => assert!(!error.contains('\n'), "multi-line error: {error}"),
    }
}

/// The kernel-record decoder takes any bytes without panicking, decoding
/// is deterministic, and every event it makes round-trips: encoded as the
/// kernel lays the record out (`decode::encode_event`, packing with the
/// kernel programs' own functions), it decodes to the same event.
pub fn decode(bytes: &[u8]) {
    use crate::decode::{decode, encode, encode_event};
    let Ok(event) = decode(bytes) else {
        return;
    };
    assert_eq!(decode(bytes).as_ref(), Ok(&event), "not deterministic");
    let again = decode(&encode(&encode_event(&event))).expect("an encoded event decodes");
    let mut expected = event;
    if let Some(process) = &mut expected.owner {
        // A comm that is not UTF-8 can decode longer than the kernel's 16
        // bytes: it comes back as the kernel would hold it.
        process.comm =
            crate::event::comm_to_string(&crate::event::wire_owner(Some(process), 0).comm);
    }
    assert_eq!(again, expected, "the round trip through the encoder");
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

/// connmon's router with basic auth on, for a password no input can hold
/// (random per run).
static APP: LazyLock<axum::Router> = LazyLock::new(|| {
    let password: String = std::fs::read("/proc/sys/kernel/random/uuid")
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .expect("a random password");
    let web = WebConfig {
        // Cost 4, the lowest: each input with credentials runs one check.
        basic_auth_users: [(
            "prometheus".to_string(),
            bcrypt::hash(password, 4).expect("hash"),
        )]
        .into(),
        ..Default::default()
    };
    let status = Arc::new(Status::new(
        Metrics::new(DEFAULT_SERIES_CAP).expect("metrics"),
    ));
    router(status, &web)
});

/// The HTTP request path takes any bytes a client sends: request line,
/// headers, basic-auth credentials, paths, served on one in-memory
/// connection by connmon's router and server settings. It never panics or
/// hangs, any answer is a well-formed HTTP/1.x status line, and nothing
/// behind basic auth leaks.
pub fn http(request: &[u8]) {
    let response = RUNTIME
        .block_on(answer_raw(APP.clone(), request))
        .expect("in-memory connection");
    let text = String::from_utf8_lossy(&response);
    if !response.is_empty() {
        assert!(
            // HTTP/1.0 requests are answered in HTTP/1.0.
            (text.starts_with("HTTP/1.1 ") || text.starts_with("HTTP/1.0 "))
                && text
                    .as_bytes()
                    .get(9..12)
                    .is_some_and(|s| s.iter().all(u8::is_ascii_digit)),
            "not a status line: {text:?}"
        );
    }
    assert!(
        !text.contains("# HELP connmon_"),
        "metrics without the password"
    );
    assert!(!text.contains("\"active\""), "storms without the password");
}
