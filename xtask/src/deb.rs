//! `cargo xtask deb`: the Debian package, a staged tree built with
//! `dpkg-deb` (no packaging tool to install beyond dpkg-dev): the release
//! binary (debug info stripped, symbols kept), the hardened systemd unit
//! and the default config from deploy/debian/, the docs, man pages and
//! shell completions made by `connmon generate` from the clap definitions.
//! `cargo xtask test` packages its test build the same way, once, for
//! tests/tests/package.rs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::setup::Project;

/// What `dpkg-deb`, `dpkg-shlibdeps` and `strip` come from.
const PACKAGING_TOOLS: &[&str] = &["dpkg-dev", "binutils"];

/// Files of the package besides the binary: (source in the checkout,
/// installed path, mode).
const FILES: &[(&str, &str, u32)] = &[
    (
        "deploy/debian/connmon.service",
        "usr/lib/systemd/system/connmon.service",
        0o644,
    ),
    (
        "deploy/debian/connmon.toml",
        "etc/connmon/connmon.toml",
        0o644,
    ),
    ("README.md", "usr/share/doc/connmon/README.md", 0o644),
    ("docs/deploy.md", "usr/share/doc/connmon/deploy.md", 0o644),
    ("docs/runbook.md", "usr/share/doc/connmon/runbook.md", 0o644),
    ("docs/kernels.md", "usr/share/doc/connmon/kernels.md", 0o644),
    ("deploy/debian/postinst", "DEBIAN/postinst", 0o755),
    ("deploy/debian/prerm", "DEBIAN/prerm", 0o755),
    ("deploy/debian/postrm", "DEBIAN/postrm", 0o755),
];

/// Where the shells look for completions: (`connmon generate` argument,
/// installed path).
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/connmon"),
    ("zsh", "usr/share/zsh/vendor-completions/_connmon"),
    ("fish", "usr/share/fish/vendor_completions.d/connmon.fish"),
];

/// `cargo xtask deb`: builds the release binary unless `binary` is given,
/// writes the package into `out_dir` (default `target/debian/`) and prints
/// its path.
pub fn run(
    project: &Project,
    binary: Option<PathBuf>,
    out_dir: Option<PathBuf>,
    compression: Compression,
) -> Result<()> {
    let binary = match binary {
        Some(binary) => binary,
        None => {
            crate::setup::run(project)?;
            crate::tasks::build(project, true)?
        }
    };
    let out_dir = out_dir.unwrap_or_else(|| project.target_dir().join("debian"));
    let package = build(project, &binary, &out_dir, compression)?;
    println!("{}", package.display());
    Ok(())
}

/// How the package's data is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// xz, as Debian's own packages: the smallest.
    Xz,
    /// gzip -1: for test runs, which unpack the package at once (a debug
    /// binary takes xz about 20 s, gzip -1 about 1 s).
    Fast,
}

/// Stages the package tree for `binary` under `out_dir` and builds the
/// `.deb` there; returns its path.
pub fn build(
    project: &Project,
    binary: &Path,
    out_dir: &Path,
    compression: Compression,
) -> Result<PathBuf> {
    crate::setup::ensure_packages(PACKAGING_TOOLS, "deb")?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let name = format!("connmon_{version}_{}", arch.trim());
    let stage = out_dir.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let installed_binary = stage.join("usr/bin/connmon");
    install(binary, &installed_binary, 0o755)?;
    // Debug info is for developers; symbols stay for backtraces.
    status(
        Command::new("strip")
            .arg("--strip-debug")
            .arg(&installed_binary),
    )?;
    for (source, target, mode) in FILES {
        install(&project.root.join(source), &stage.join(target), *mode)?;
    }
    // The JSON Schemas of connmon's records, for whoever parses them.
    for entry in std::fs::read_dir(project.root.join("docs/schemas"))? {
        let source = entry?.path();
        if let Some(name) = source.file_name() {
            install(
                &source,
                &stage.join("usr/share/doc/connmon/schemas").join(name),
                0o644,
            )?;
        }
    }
    write(
        &stage.join("usr/share/doc/connmon/copyright"),
        COPYRIGHT,
        0o644,
    )?;
    write(
        &stage.join("DEBIAN/conffiles"),
        "/etc/connmon/connmon.toml\n",
        0o644,
    )?;
    man_pages(&installed_binary, &stage.join("usr/share/man/man1"))?;
    for (shell, target) in COMPLETIONS {
        let script = output(Command::new(&installed_binary).args(["generate", shell]))?;
        write(&stage.join(target), &script, 0o644)?;
    }
    let depends = shared_library_depends(out_dir, &installed_binary)?;
    let control = format!(
        "Package: connmon\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: connmon developers <connmon@example.invalid>\n\
         Installed-Size: {size}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/connmon\n\
         Description: find the process behind TCP retransmit storms on idle connections\n \
         connmon watches TCP connections with eBPF and reports retransmit storms\n \
         on idle pooled connections (a middlebox forgot the flow; the next\n \
         request hangs until the kernel gives up), naming the process, thread\n \
         and container, with Prometheus metrics, alerts and an HTTP API.\n",
        arch = arch.trim(),
        size = size_kib(&stage)?,
    );
    write(&stage.join("DEBIAN/control"), &control, 0o644)?;
    let package = out_dir.join(format!("{name}.deb"));
    status(
        Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .args(match compression {
                Compression::Xz => ["-Zxz", "-z6"],
                Compression::Fast => ["-Zgzip", "-z1"],
            })
            .arg("--build")
            .arg(&stage)
            .arg(&package),
    )?;
    Ok(package)
}

/// `connmon generate man`, each page gzipped as Debian ships them.
fn man_pages(binary: &Path, dir: &Path) -> Result<()> {
    status(
        Command::new(binary)
            .args(["generate", "man", "--out-dir"])
            .arg(dir),
    )?;
    for entry in std::fs::read_dir(dir)? {
        let page = entry?.path();
        // -n: no name or time stamp in the header, so builds compare equal.
        status(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&page))?;
    }
    Ok(())
}

/// The `Depends` of the libraries the binary links, as dpkg-shlibdeps
/// works them out (it wants a debian/control beside it).
fn shared_library_depends(out_dir: &Path, binary: &Path) -> Result<String> {
    let scratch = out_dir.join("shlibdeps");
    write(
        &scratch.join("debian/control"),
        "Source: connmon\n\nPackage: connmon\nArchitecture: any\n",
        0o644,
    )?;
    let mut exe = std::ffi::OsString::from("-e");
    exe.push(binary);
    let text = output(
        Command::new("dpkg-shlibdeps")
            .args(["-O", "--warnings=0"])
            .arg(exe)
            .current_dir(&scratch),
    )?;
    let _ = std::fs::remove_dir_all(&scratch);
    text.lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {text}"))
}

/// Installed size in KiB, files outside DEBIAN/.
fn size_kib(stage: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if entry.file_name() != "DEBIAN" {
                    walk(&entry.path(), total)?;
                }
            } else {
                *total += entry.metadata()?.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: connmon
Source: https://example.invalid/connmon

Files: *
Copyright: connmon developers
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
";

pub(crate) fn install(source: &Path, target: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(source, target)
        .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub(crate) fn write(target: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(target, text).with_context(|| format!("writing {}", target.display()))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub(crate) fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{command:?} printed non-UTF-8"))
}

pub(crate) fn status(command: &mut Command) -> Result<()> {
    output(command).map(|_| ())
}
