//! Strings that come from the kernel or /proc (a process name, an
//! executable path, a cgroup, a pod name) are chosen by whoever runs the
//! process: any process can name itself anything with prctl(PR_SET_NAME).
//! Before such a string reaches a text line, a log line, a Prometheus label
//! value or an alert annotation, its control characters are escaped, so it
//! can neither start a forged line nor drive a terminal. JSON output needs
//! none of this: serde escapes control characters itself.

use std::{borrow::Cow, fmt::Write as _};

/// Characters that are escaped: C0 and C1 controls and DEL, and the
/// invisible bidirectional controls that reorder how a line reads
/// ("Trojan Source").
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every control character written as `\xNN` (`\u{NNNN}` above
/// U+00FF); borrowed unchanged when there is none, which is the usual case.
pub fn control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs_escape(c) {
            escaped.push(c);
        } else if (c as u32) <= 0xff {
            let _ = write!(escaped, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(escaped, "\\u{{{:04x}}}", c as u32);
        }
    }
    Cow::Owned(escaped)
}

/// Owned form of [`control`], for label values and annotations.
pub fn control_owned(text: String) -> String {
    match control(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    }
}

/// A writer for log lines: each write is one formatted event (the way
/// tracing-subscriber's fmt layer writes), and everything in it but the
/// final newline is escaped, so a logged field cannot break the line.
pub struct EscapingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (buf, false),
        };
        let text = String::from_utf8_lossy(body);
        let mut line = control(&text).into_owned();
        if newline {
            line.push('\n');
        }
        // One write per event, so concurrent events do not interleave.
        self.0.write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// [`EscapingWriter`] for JSON log lines: serde has escaped quotes and
/// C0 controls already; DEL, C1 and the bidirectional controls are written
/// as JSON's `\uNNNN`, so the line stays valid JSON and reads as it is.
pub struct JsonEscapingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for JsonEscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut line = String::with_capacity(text.len());
        for c in text.chars() {
            if c != '\n' && needs_escape(c) {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(line, "\\u{unit:04x}");
                }
            } else {
                line.push(c);
            }
        }
        self.0.write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name from the issue: it would close a JSON-looking record, start
    /// a new line and colour the terminal.
    const HOSTILE: &str = "x\"}\n{\"ev\":1\x1b[31";

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(control(HOSTILE), "x\"}\\x0a{\"ev\":1\\x1b[31");
        assert_eq!(control("a\rb\x7fc\u{85}d"), "a\\x0db\\x7fc\\x85d");
        assert_eq!(control("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert!(matches!(
            control("redis-server /usr/bin/ä"),
            Cow::Borrowed(_)
        ));
        assert_eq!(control_owned("tab\there".into()), "tab\\x09here");
    }

    #[test]
    fn a_json_log_line_stays_valid_json_and_escaped() {
        use std::io::Write;
        let mut out = JsonEscapingWriter(Vec::new());
        let record = serde_json::json!({"comm": HOSTILE, "bidi": "evil\u{202e}\u{7f}"});
        out.write_all(format!("{record}\n").as_bytes()).unwrap();
        let text = String::from_utf8(out.0).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(!text.contains(['\x1b', '\u{202e}', '\u{7f}']), "{text:?}");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed, record);
    }

    #[test]
    fn a_log_write_stays_one_line() {
        use std::io::Write;
        let mut out = EscapingWriter(Vec::new());
        // One buffer per event, as tracing-subscriber writes it.
        out.write_all(format!("INFO comm={HOSTILE} done\n").as_bytes())
            .unwrap();
        let text = String::from_utf8(out.0).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(text.ends_with('\n'));
        assert!(!text.contains('\x1b'), "{text:?}");
    }
}
