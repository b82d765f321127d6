//! Builds the kernel programs (monitor-ebpf) for the BPF target with the
//! nightly toolchain and bpf-linker, so the daemon can embed the object.
//! `cargo xtask setup` installs both; see README.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("monitor/ has no parent directory"))?;
    let ebpf_dir = workspace.join("monitor-ebpf");
    // bpf-linker lives in the project's tool cache (`cargo xtask setup`):
    // put it on PATH so a plain `cargo build` finds it too.
    let tools = workspace.join(".cache/tools/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools];
    paths.extend(std::env::split_paths(&path));
    let joined = std::env::join_paths(paths).context("joining PATH")?;
    // SAFETY: build scripts are single-threaded here; nothing else reads
    // the environment concurrently.
    unsafe { std::env::set_var("PATH", joined) };
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {ebpf_dir:?}"))?;
    let package = aya_build::Package {
        name: "monitor-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the kernel programs failed; run `cargo xtask setup` to install the nightly rust-src and bpf-linker")
}
