//! Support for connmon's kernel tests: network namespaces, nftables rules,
//! processes and a running connmon, each behind a guard that cleans up when
//! dropped, also when a test fails.
//!
//! Tracepoints see the whole machine, so every assertion filters to the
//! test's own namespaces and processes.

pub mod alerting;
pub mod artifacts;
pub mod blackout;
pub mod cgroup;
pub mod cmd;
pub mod connmon;
pub mod fleet;
pub mod netns;
pub mod peer;
pub mod poll;
pub mod process;
pub mod scenario;
pub mod soak;
pub mod storm;
pub mod topology;
