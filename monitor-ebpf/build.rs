//! Link flags for the BPF object.
//!
//! bpf-linker by default asks LLVM to expand memcpy "in order", which also
//! stops LLVM from inlining memset: every zeroed array then became a call
//! to an exported `memset` subprogram. Kernels before 6.3 give up precision
//! tracking across subprogram calls and then hardly prune any state, so the
//! same program cost 100 times more verification on Linux 6.1. Without the
//! flag, memory intrinsics are plain inline loads and stores.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    }
}
