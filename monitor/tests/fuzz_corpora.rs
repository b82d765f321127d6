//! Every committed fuzz input (fuzz/corpus/<target>/ and the crash inputs
//! kept as regressions under fuzz/artifacts/<target>/) replayed through the
//! same property the fuzz target checks, on every `cargo test`.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        files.extend(
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_file()),
        );
    }
    files.sort();
    files
}

/// Replays `target`'s inputs; there must be some, or the corpus moved.
fn replay(target: &str, check: impl Fn(&[u8])) -> Result<(), String> {
    let files = inputs(target);
    if files.is_empty() {
        return Err(format!("no committed inputs for fuzz target {target}"));
    }
    for file in files {
        let bytes = std::fs::read(&file).map_err(|error| format!("{}: {error}", file.display()))?;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
        if outcome.is_err() {
            return Err(format!(
                "fuzz input {} fails {target}'s property",
                file.display()
            ));
        }
    }
    Ok(())
}

#[test]
fn config_corpus_holds_its_property() -> Result<(), String> {
    replay("config", |bytes| {
        // libFuzzer hands `&str` targets only valid UTF-8.
        if let Ok(text) = std::str::from_utf8(bytes) {
            connmon::fuzzing::config(text);
        }
    })
}

#[test]
fn decode_corpus_holds_its_property() -> Result<(), String> {
    replay("decode", connmon::fuzzing::decode)
}

#[test]
fn http_corpus_holds_its_property() -> Result<(), String> {
    replay("http", connmon::fuzzing::http)
}
