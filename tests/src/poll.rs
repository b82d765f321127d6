//! Waiting for a condition until a deadline, never for a fixed time.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Re-checks `condition` every 50 ms until it yields `Some` or `timeout`
/// passes; the error names what was awaited.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
