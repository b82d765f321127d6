//! Host-side stub: the kernel programs live in `main.rs` and only build for
//! the BPF target (see `monitor/build.rs`).
#![no_std]
