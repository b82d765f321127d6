//! What this build is: the package version, the git revision it was built
//! from (monitor/build.rs; "unknown" outside a checkout) and the compiler.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("CONNMON_GIT_REVISION");
pub const RUSTC: &str = env!("CONNMON_RUSTC_VERSION");

/// `connmon --version`: `0.1.0 (revision 0123abcd4567, rustc 1.95.0)`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("CONNMON_GIT_REVISION"),
    ", rustc ",
    env!("CONNMON_RUSTC_VERSION"),
    ")"
);
