//! One module per subcommand.

pub mod audit;
pub mod run;
pub mod trace;
