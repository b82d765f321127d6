//! What connmon prints: event streams for people (text) and machines (JSON
//! lines).

pub mod alerts;
pub mod escape;
pub mod hint;
pub mod report;
pub mod trace;

/// The version of the JSON records connmon prints and serves (findings,
/// fail-fast actions, trace events, the audit report, the storms API):
/// every record carries it as `schema_version`, and docs/schemas/ has a
/// JSON Schema per record kind. It goes up when a field changes meaning or
/// type or goes away; added fields do not change it.
pub const SCHEMA_VERSION: u32 = 1;

/// Output format for event streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Text,
}

/// Format of the log lines on stderr (`--log-format`, `log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// tracing's text lines, control characters escaped.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `plain` or `json`. `text` is refused with what replaced it:
    /// `--log-format`/`log_format` used to set the findings' format, and
    /// quietly reading `text` as plain logs would turn text findings into
    /// JSON.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            "text" => Err(
                "\"text\": the log format is plain or json; the findings' format \
                 (json|text) moved to --output-format (CONNMON_OUTPUT_FORMAT, \
                 output_format in the config file)"
                    .into(),
            ),
            other => Err(format!("{other:?} is not a log format (plain or json)")),
        }
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}
