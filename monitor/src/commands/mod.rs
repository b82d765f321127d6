//! One module per subcommand.

pub mod audit;
pub mod generate;
pub mod run;
pub mod top;
pub mod trace;
