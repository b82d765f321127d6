//! Types shared by connmon's kernel programs and its userspace daemon.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]` with
//! explicit padding, carries its kind as a plain integer tag (never a Rust
//! enum or `bool`), and has its size pinned by a compile-time assertion so a
//! layout change is a build error on both sides.
#![no_std]

pub mod counters;
pub mod defaults;
pub mod event;
pub mod globals;
pub mod maps;
pub mod retransmit;
pub mod socket;
pub mod tcp;

#[cfg(any(feature = "user", test))]
pub mod user;
