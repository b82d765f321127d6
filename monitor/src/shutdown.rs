//! Waiting for SIGINT or SIGTERM.

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Which signal asked us to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    Interrupt,
    Terminate,
}

impl StopSignal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM. If a handler cannot be
/// installed, waits forever on the other (the process can still be killed).
pub async fn signal() -> StopSignal {
    let interrupt = unix_signal(SignalKind::interrupt());
    let terminate = unix_signal(SignalKind::terminate());
    match (interrupt, terminate) {
        (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
            _ = interrupt.recv() => StopSignal::Interrupt,
            _ = terminate.recv() => StopSignal::Terminate,
        },
        (Ok(mut interrupt), Err(_)) => {
            interrupt.recv().await;
            StopSignal::Interrupt
        }
        (Err(_), Ok(mut terminate)) => {
            terminate.recv().await;
            StopSignal::Terminate
        }
        (Err(_), Err(_)) => std::future::pending().await,
    }
}
