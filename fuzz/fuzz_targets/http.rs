//! The HTTP request path takes any bytes a client sends: request line,
//! headers, basic-auth credentials, paths. Each input is served on one
//! in-memory connection by the same router (basic auth on) and server
//! settings as connmon's port. It never panics or hangs, any answer is a
//! well-formed HTTP/1.x status line, and nothing behind basic auth leaks:
//! the password is random per run, so no input can hold it.
#![no_main]

use std::sync::{Arc, LazyLock};

use connmon::{
    http::{Status, answer_raw, router, webconfig::WebConfig},
    metrics::{DEFAULT_SERIES_CAP, Metrics},
};
use libfuzzer_sys::fuzz_target;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

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

fuzz_target!(|request: &[u8]| {
    let response = RUNTIME
        .block_on(answer_raw(APP.clone(), request))
        .expect("in-memory connection");
    let text = String::from_utf8_lossy(&response);
    if !response.is_empty() {
        assert!(
            // HTTP/1.0 requests are answered in HTTP/1.0.
            (text.starts_with("HTTP/1.1 ") || text.starts_with("HTTP/1.0 "))
                && text.as_bytes().get(9..12).is_some_and(|s| s.iter().all(u8::is_ascii_digit)),
            "not a status line: {text:?}"
        );
    }
    assert!(!text.contains("# HELP connmon_"), "metrics without the password");
    assert!(!text.contains("\"active\""), "storms without the password");
});
