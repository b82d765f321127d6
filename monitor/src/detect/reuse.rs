//! Idle-gap evidence: each reuse of a watched connection after an idle gap,
//! with what followed. A reply means the path still knew the flow after that
//! gap; a storm or a reset means it had forgotten it. Across reuses (and
//! across nodes, in Prometheus) the path's idle timeout lies between the
//! longest gap that survived and the shortest that did not.

use crate::{
    detect::Finding,
    event::{Connection, EventKind, Role, SocketEvent},
};

/// What followed a reuse after an idle gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReuseOutcome {
    /// Payload came back: the path still knew the flow.
    Survived,
    /// A storm: the path silently dropped the flow's packets.
    Blackholed,
    /// A reset answered the reuse: the path (or a peer that lost the
    /// flow) said so.
    Reset,
    /// The peer had closed the connection itself while it was idle (its
    /// FIN came first): says nothing about the path.
    PeerClosed,
}

impl ReuseOutcome {
    pub const ALL: [Self; 4] = [
        Self::Survived,
        Self::Blackholed,
        Self::Reset,
        Self::PeerClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Survived => "survived",
            Self::Blackholed => "blackholed",
            Self::Reset => "reset",
            Self::PeerClosed => "peer_closed",
        }
    }

    /// The path forgot the flow within the gap.
    pub fn path_forgot(self) -> bool {
        matches!(self, Self::Blackholed | Self::Reset)
    }
}

/// One reuse after an idle gap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdleReuse<'a> {
    pub role: Role,
    pub connection: &'a Connection,
    pub gap_ns: u64,
    pub outcome: ReuseOutcome,
}

/// The reuse a kernel event shows survived (a reply after idle).
pub fn survived(event: &SocketEvent) -> Option<IdleReuse<'_>> {
    let EventKind::ReplyAfterIdle { gap_ns } = event.kind else {
        return None;
    };
    Some(IdleReuse {
        role: event.role,
        connection: &event.connection,
        gap_ns,
        outcome: ReuseOutcome::Survived,
    })
}

/// The reuse a finding shows did not survive: a storm's start (its idle
/// gap) or a reset after idle. A storm's end says nothing new.
pub fn failed(finding: &Finding) -> Option<IdleReuse<'_>> {
    match finding {
        Finding::StormStarted(storm) => Some(IdleReuse {
            role: storm.role,
            connection: &storm.connection,
            gap_ns: storm.idle_ns,
            outcome: ReuseOutcome::Blackholed,
        }),
        Finding::ResetAfterIdle(reset) => Some(IdleReuse {
            role: reset.role,
            connection: &reset.connection,
            gap_ns: reset.idle_ns,
            outcome: if reset.peer_closed {
                ReuseOutcome::PeerClosed
            } else {
                ReuseOutcome::Reset
            },
        }),
        // A local drop, a connect and a keepalive that gave up are no
        // reuse of an idle connection through the path.
        Finding::StormEnded { .. } | Finding::ConnectionFailed(_) => None,
    }
}
