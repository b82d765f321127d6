//! What connmon prints: event streams for people (text) and machines (JSON
//! lines).

pub mod alerts;
pub mod escape;
pub mod hint;
pub mod report;
pub mod trace;

/// Output format for event streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Text,
}
