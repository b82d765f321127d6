//! The userspace socket table: what connmon knows about each watched socket
//! across its events, keyed by the kernel's socket cookie.
//!
//! The kernel clears a socket's local port when it unhashes it on close, so
//! the last events of a connection (CLOSE, ETIMEDOUT, destroy) carry an
//! incomplete tuple. The table remembers the full one and fills it in.
//! Likewise a socket whose kernel entry was evicted and re-created mid-life
//! (a full socket map) no longer knows whether it connected or accepted:
//! the table remembers its role.

// Keys are kernel cookies, not attacker-chosen input: a fast hasher is
// safe here and the table is on the per-event path.
use rustc_hash::FxHashMap;

use crate::event::{Connection, EventKind, Role, SocketEvent};

/// Default bound on remembered sockets.
pub const DEFAULT_CAPACITY: usize = 262_144;

#[derive(Debug)]
pub struct SocketTable {
    connections: FxHashMap<u64, (Connection, Role)>,
    capacity: usize,
    /// Sockets not remembered because the table was full.
    pub overflowed: u64,
}

impl SocketTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            connections: FxHashMap::default(),
            capacity,
            overflowed: 0,
        }
    }

    /// Completes `event`'s connection from what is known, learns from it, and
    /// forgets the socket on its last event.
    pub fn observe(&mut self, event: &mut SocketEvent) {
        let complete = event.connection.local.port() != 0 && event.connection.remote.port() != 0;
        if let Some((known, role)) = self.connections.get_mut(&event.cookie) {
            if event.role == Role::Unknown {
                event.role = *role;
            } else {
                *role = event.role;
            }
            if complete {
                *known = event.connection.clone();
            } else {
                event.connection = known.clone();
            }
        } else if complete {
            if self.connections.len() < self.capacity {
                self.connections
                    .insert(event.cookie, (event.connection.clone(), event.role));
            } else {
                self.overflowed += 1;
            }
        }
        if matches!(event.kind, EventKind::Destroyed) {
            self.connections.remove(&event.cookie);
        }
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}

impl Default for SocketTable {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ActivityTimes, Role, TcpState};

    fn event(cookie: u64, kind: EventKind, local: &str, remote: &str) -> SocketEvent {
        SocketEvent {
            timestamp_ns: 1,
            cookie,
            kind,
            owner: None,
            role: Role::Client,
            connection: Connection {
                local: local.parse().expect("addr"),
                remote: remote.parse().expect("addr"),
                netns: 1,
            },
            state: TcpState(1),
            activity: ActivityTimes::default(),
        }
    }

    #[test]
    fn fills_the_port_the_kernel_cleared_on_close_and_forgets_at_destroy() {
        let mut table = SocketTable::default();
        let mut established = event(
            7,
            EventKind::ResetReceived,
            "10.0.0.1:40000",
            "10.0.0.2:6379",
        );
        table.observe(&mut established);
        let mut error = event(
            7,
            EventKind::SocketError { errno: 110 },
            "10.0.0.1:0",
            "10.0.0.2:6379",
        );
        table.observe(&mut error);
        assert_eq!(error.connection.local.to_string(), "10.0.0.1:40000");
        let mut destroyed = event(7, EventKind::Destroyed, "10.0.0.1:0", "10.0.0.2:6379");
        table.observe(&mut destroyed);
        assert_eq!(destroyed.connection.local.port(), 40000);
        assert!(table.is_empty());
    }

    #[test]
    fn a_full_table_counts_instead_of_growing() {
        let mut table = SocketTable::new(1);
        table.observe(&mut event(
            1,
            EventKind::ResetSent,
            "10.0.0.1:1",
            "10.0.0.2:2",
        ));
        table.observe(&mut event(
            2,
            EventKind::ResetSent,
            "10.0.0.1:3",
            "10.0.0.2:4",
        ));
        assert_eq!((table.len(), table.overflowed), (1, 1));
    }

    #[test]
    fn a_socket_recreated_in_the_kernel_keeps_its_role() {
        let mut table = SocketTable::default();
        let mut connected = event(9, EventKind::ResetSent, "10.0.0.1:40000", "10.0.0.2:6379");
        table.observe(&mut connected);
        // Evicted from the kernel map and seen again on a send: the kernel
        // no longer knows the role.
        let mut later = event(9, EventKind::ResetSent, "10.0.0.1:40000", "10.0.0.2:6379");
        later.role = Role::Unknown;
        table.observe(&mut later);
        assert_eq!(later.role, Role::Client);
        // A socket never seen before stays unknown.
        let mut stranger = event(10, EventKind::ResetSent, "10.0.0.1:40001", "10.0.0.2:6379");
        stranger.role = Role::Unknown;
        table.observe(&mut stranger);
        assert_eq!(stranger.role, Role::Unknown);
    }
}
