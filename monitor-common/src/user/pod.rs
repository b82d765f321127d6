//! aya's `Pod` lets the loader pass these as globals
//! and read them out of maps.

use crate::{
    counters::UnwatchedRetransmits,
    event::SocketEvent,
    globals::{KernelOffsets, ProbeSettings},
    socket::{PrimedSocket, SocketState},
};

// SAFETY: each type is `#[repr(C)]`, made only of integers and integer
// arrays, with padding spelled out as fields (the size asserts next to the
// definitions prove there is none implicit), so every bit pattern is valid.
unsafe impl aya::Pod for SocketEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for SocketState {}
// SAFETY: as above.
unsafe impl aya::Pod for KernelOffsets {}
// SAFETY: as above.
unsafe impl aya::Pod for ProbeSettings {}
// SAFETY: as above.
unsafe impl aya::Pod for UnwatchedRetransmits {}
// SAFETY: as above.
unsafe impl aya::Pod for PrimedSocket {}
