//! `cargo xtask setup`: nightly `rust-src`, bpf-linker linked against the
//! nightly's own LLVM, and the Debian packages the tests use. Each step
//! checks first and does nothing when its piece is already there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The bpf-linker release that links against LLVM 22 (the nightly's).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the test suite drives: namespaces and veth (iproute2),
/// the middlebox (nftables, conntrack), the cache (redis-server), bpftool
/// to check that programs are detached, Prometheus and Alertmanager (rules
/// and alert delivery), curl (the TLS endpoints).
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "conntrack",
    "redis-server",
    "bpftool",
    "procps",
    "prometheus",
    "prometheus-alertmanager",
    "curl",
    // The deployment tests: a venv for kubernetes-validate, setcap.
    "python3-venv",
    "libcap2-bin",
    // The package test: systemd-analyze verify and security on the unit,
    // groff to format the man pages.
    "systemd",
    "groff-base",
    // connmon top's test drives it in a terminal.
    "tmux",
];

/// Paths of the checkout and its tool cache.
pub struct Project {
    pub root: PathBuf,
}

impl Project {
    pub fn locate() -> Result<Self> {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").context("run through `cargo xtask`")?;
        let root = Path::new(&manifest)
            .parent()
            .context("xtask/ has a parent")?
            .to_path_buf();
        Ok(Self { root })
    }

    /// Tools the project installs for itself (never system paths).
    pub fn cache(&self) -> PathBuf {
        self.root.join(".cache")
    }

    pub fn tools_bin(&self) -> PathBuf {
        self.cache().join("tools/bin")
    }

    /// Cargo's build directory: `CARGO_TARGET_DIR` when set, else `target/`.
    pub fn target_dir(&self) -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("target"))
    }

    /// `PATH` with the project's tools first, for every cargo we start.
    pub fn path_env(&self) -> String {
        let current = std::env::var("PATH").unwrap_or_default();
        format!("{}:{current}", self.tools_bin().display())
    }
}

pub fn run(project: &Project) -> Result<()> {
    ensure_nightly_rust_src()?;
    let llvm = ensure_llvm_prefix(project)?;
    ensure_bpf_linker(project, &llvm)?;
    // The Containerfile's build stage needs the toolchain only, not what
    // the tests drive.
    if std::env::var_os("CONNMON_SETUP_TOOLCHAIN_ONLY").is_some() {
        return Ok(());
    }
    ensure_debian_packages()?;
    crate::pyvenv::ensure(project)?;
    Ok(())
}

fn ensure_nightly_rust_src() -> Result<()> {
    let installed = output("rustup", &["toolchain", "list"])?;
    if !installed.lines().any(|line| line.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain");
        status(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let sysroot = PathBuf::from(output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("setup: adding rust-src to nightly");
        status(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

/// The nightly's LLVM, as bpf-linker's build wants it.
pub struct LlvmPrefix {
    pub dir: PathBuf,
    pub major: u32,
}

/// A prefix directory whose `lib/` has `libLLVM.so` and the versioned name,
/// both symlinks to the nightly's own libLLVM. bpf-linker keeps an rpath to
/// it, so the links are remade on every setup (a moved toolchain heals).
fn ensure_llvm_prefix(project: &Project) -> Result<LlvmPrefix> {
    let sysroot = PathBuf::from(output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
    let lib_dir = sysroot.join("lib");
    let library = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: is the nightly toolchain complete?",
                lib_dir.display()
            )
        })?;
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22
    let major: u32 = library
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {library}"))?;
    let prefix = project.cache().join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so".to_string(), library.clone()] {
        let path = prefix_lib.join(&link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(lib_dir.join(&library), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    Ok(LlvmPrefix { dir: prefix, major })
}

fn ensure_bpf_linker(project: &Project, llvm: &LlvmPrefix) -> Result<()> {
    let linker = project.tools_bin().join("bpf-linker");
    if linker.is_file() {
        let version = Command::new(&linker).arg("--version").output();
        if version.is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        }) {
            return Ok(());
        }
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {} (about a minute)",
        llvm.major
    );
    let root = project.cache().join("tools");
    let feature = format!("llvm-{}", llvm.major);
    let ok = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &feature, "--root"])
        .arg(&root)
        .env("LLVM_PREFIX", &llvm.dir)
        .status()
        .context("running cargo install bpf-linker")?
        .success();
    if !ok {
        bail!("cargo install bpf-linker failed");
    }
    Ok(())
}

fn ensure_debian_packages() -> Result<()> {
    ensure_packages(DEBIAN_PACKAGES, "setup")
}

/// Installs whichever of `packages` are missing (apt-get, waiting for a
/// held dpkg lock); `task` names who asks, in messages.
pub fn ensure_packages(packages: &[&str], task: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
                })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}; run `cargo xtask {task}` as root",
            missing.join(" ")
        );
    }
    eprintln!("{task}: installing {}", missing.join(" "));
    let lock = "DPkg::Lock::Timeout=600";
    status("apt-get", &["-o", lock, "update", "-qq"])?;
    let mut args = vec![
        "-o",
        lock,
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
    ];
    args.extend(&missing);
    let ok = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?
        .success();
    if !ok {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(program: &str, args: &[&str]) -> Result<()> {
    let ok = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?
        .success();
    if !ok {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(())
}
