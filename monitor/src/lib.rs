//! connmon: finds the process behind TCP retransmit storms on idle pooled
//! connections.
//!
//! Data flows one way: kernel capture (`capture`) -> event decoding
//! (`decode`, `event`) -> outputs (`output`). Everything right of capture is
//! plain Rust, tested without a kernel.

pub mod attribution;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon_client;
pub mod decode;
pub mod detect;
pub mod event;
pub mod failfast;
pub mod fleet;
pub mod fuzzing;
pub mod http;
pub mod kernel_metrics;
pub mod memory;
pub mod metrics;
pub mod output;
pub mod privileges;
pub mod retransmit_gaps;
pub mod risk;
pub mod shutdown;
pub mod sockdiag;
pub mod sockets;
pub mod stuck_scan;
pub mod version;
