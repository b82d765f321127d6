//! Builds the kernel programs (monitor-ebpf) for the BPF target with the
//! nightly toolchain and bpf-linker, so the daemon can embed the object.
//! `cargo xtask setup` installs both; see README.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("monitor/ has no parent directory"))?;
    build_info(workspace);
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

/// `CONNMON_GIT_REVISION` (for `--version` and `connmon_build_info`): the
/// variable when the builder sets it (a source tarball, an image build
/// without .git), else the checkout's commit, else "unknown". Also
/// `CONNMON_RUSTC_VERSION`, the compiler's version.
fn build_info(workspace: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=CONNMON_GIT_REVISION");
    let git = |args: &[&str]| -> Option<String> {
        let output = std::process::Command::new("git")
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    let revision = std::env::var("CONNMON_GIT_REVISION")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CONNMON_GIT_REVISION={revision}");
    // The reflog moves with every commit and checkout (of this worktree):
    // the revision is looked up again then, and only then. A path that does
    // not exist would rerun this script on every build, so none is named.
    if let Some(reflog) = git(&[
        "rev-parse",
        "--path-format=absolute",
        "--git-path",
        "logs/HEAD",
    ]) && std::path::Path::new(&reflog).exists()
    {
        println!("cargo:rerun-if-changed={reflog}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let rustc_version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CONNMON_RUSTC_VERSION={rustc_version}");
}
