//! `cargo xtask vm-test`: connmon on Debian's kernels (the matrix in
//! `kernels.rs`), each booted with qemu.
//!
//! Fetches each Debian `linux-image-*-amd64` package with `apt-get
//! download` (cached under `.cache/vm/`, never installed), unpacks its
//! kernel and the modules the scenario needs, builds an initramfs (busybox,
//! connmon, tcp-peer, ip, nft, bpftool and their libraries), boots it under
//! qemu's software emulation (TCG: nested KVM cannot run a stock kernel
//! here) and reads the verdict from the guest's serial console. The guest
//! script is `guest.sh`; `report.rs` reads what connmon chose and what the
//! verifier needed out of the serial log.

mod kernels;
mod report;

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub use kernels::{MATRIX, Series, by_name, default_matrix};

use crate::{setup::Project, tasks::run_checked};

/// The guest's `/init`.
const GUEST_SCRIPT: &str = include_str!("guest.sh");

/// Boot, start-up under emulation (the verifier is slow there), the
/// scenario and poweroff; measured at well under two minutes.
const GUEST_TIMEOUT: Duration = Duration::from_secs(420);

/// What the guest prints last.
const PASS: &str = "CONNMON_VM_PASS";
const FAIL: &str = "CONNMON_VM_FAIL";

/// Modules the scenario loads (with their dependencies): veth pairs, the
/// nftables conntrack middlebox, and sock_diag for connmon's start-up scan.
const MODULES: &[&str] = &["veth", "nft_ct", "nf_tables", "inet_diag", "tcp_diag"];

/// Host programs copied into the guest, with their libraries.
const HOST_PROGRAMS: &[&str] = &["/usr/sbin/ip", "/usr/sbin/nft", "/usr/sbin/bpftool"];

/// Debian packages this task needs on the host: the emulator, a static
/// busybox for the guest (and its cpio), and kmod's depmod/modprobe to
/// order the guest's modules.
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod"];

/// Boots each kernel of `matrix` in turn with the same guest scenario;
/// every kernel runs even after one fails, and the error names each that
/// failed. Each run's findings are written to `<target>/vm/<kernel>/`.
pub fn vm_test(project: &Project, connmon: &Path, matrix: &[Series]) -> Result<()> {
    crate::setup::ensure_packages(HOST_PACKAGES, "vm-test")?;
    let tcp_peer = build_tcp_peer(project)?;
    let mut failed = Vec::new();
    for &series in matrix {
        if let Some(reason) = series.not_yet {
            eprintln!(
                "vm-test: {} is not in the default matrix yet: {reason}",
                series.name
            );
        }
        if let Err(error) = vm_test_one(project, connmon, &tcp_peer, series) {
            eprintln!("vm-test: {error:#}");
            failed.push(series.name);
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

fn vm_test_one(project: &Project, connmon: &Path, tcp_peer: &Path, series: Series) -> Result<()> {
    let kernel = kernels::fetch(&project.cache(), series)?;
    let work = project.target_dir().join("vm").join(series.name);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = build_initramfs(&work, &kernel, connmon, tcp_peer)?;
    let log = work.join("serial.log");
    let verdict = boot(&kernel.vmlinuz, &initrd, &log)?;
    // What connmon chose and what the verifier needed, pass or fail.
    let outcome = match &verdict {
        Verdict::Pass => "pass",
        Verdict::Fail(reason) => reason.as_str(),
    };
    match report::KernelReport::from_serial_log(&kernel.release, outcome, &log) {
        Ok(found) => {
            let path = work.join("report.json");
            fs::write(&path, serde_json::to_string_pretty(&found.to_json())?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Err(error) => eprintln!("vm-test: no report for {}: {error:#}", kernel.release),
    }
    match verdict {
        Verdict::Pass => {
            println!(
                "vm-test: PASS on {} (serial log {})",
                kernel.release,
                log.display()
            );
            Ok(())
        }
        Verdict::Fail(reason) => {
            print_tail(&log);
            bail!(
                "vm-test on {} failed: {reason}; the guest's serial log is {}",
                kernel.release,
                log.display()
            )
        }
    }
}

/// Rewrites docs/kernels.md's generated tables from the reports the last
/// runs left under `<target>/vm/<kernel>/report.json`, oldest kernel first.
pub fn write_docs(project: &Project) -> Result<()> {
    let mut reports = Vec::new();
    for series in MATRIX {
        let path = project
            .target_dir()
            .join("vm")
            .join(series.name)
            .join("report.json");
        let Ok(text) = fs::read_to_string(&path) else {
            eprintln!("vm-test: no report for {} (not run?)", series.name);
            continue;
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        reports.push(
            report::KernelReport::from_json(&value)
                .with_context(|| format!("unexpected report {}", path.display()))?,
        );
    }
    if reports.is_empty() {
        bail!("no vm-test reports to write docs from");
    }
    let doc_path = project.root.join("docs/kernels.md");
    let doc = fs::read_to_string(&doc_path)?;
    fs::write(
        &doc_path,
        report::replace_section(&doc, &report::markdown(&reports))?,
    )?;
    println!("vm-test: wrote {}", doc_path.display());
    Ok(())
}

fn build_tcp_peer(project: &Project) -> Result<PathBuf> {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&project.root)
        .env("PATH", project.path_env())
        .args(["build", "--package", "connmon-tests", "--bin", "tcp-peer"]);
    run_checked(&mut cargo, "cargo build tcp-peer")?;
    Ok(project.target_dir().join("debug/tcp-peer"))
}

/// Lays out the guest's root and packs it as an uncompressed cpio (nothing
/// to decompress under emulation).
fn build_initramfs(
    work: &Path,
    kernel: &kernels::Kernel,
    connmon: &Path,
    tcp_peer: &Path,
) -> Result<PathBuf> {
    let root = work.join("root");
    let _ = fs::remove_dir_all(&root);
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "vm/modules",
        "etc",
        "var/run",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }

    // busybox and its applets; `busybox` itself must not become a link.
    copy_file(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    let applets = output(Command::new("/bin/busybox").arg("--list"), "busybox --list")?;
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }

    let mut programs: Vec<(PathBuf, PathBuf)> = vec![
        (connmon.to_path_buf(), root.join("usr/bin/connmon")),
        (tcp_peer.to_path_buf(), root.join("usr/bin/tcp-peer")),
    ];
    for program in HOST_PROGRAMS {
        programs.push((PathBuf::from(program), root.join(&program[1..])));
    }
    let mut libraries = BTreeSet::new();
    for (from, to) in &programs {
        copy_file(from, to)?;
        libraries.extend(shared_libraries(from)?);
    }
    // Debug symbols only make the image bigger (and slower to load); an
    // unstripped image works too.
    for name in ["usr/bin/connmon", "usr/bin/tcp-peer"] {
        let stripped = Command::new("strip")
            .arg("--strip-debug")
            .arg(root.join(name))
            .status()
            .is_ok_and(|status| status.success());
        if !stripped {
            eprintln!("vm-test: could not strip {name}; the image is larger");
        }
    }
    for library in &libraries {
        let relative = library.strip_prefix("/").unwrap_or(library);
        copy_file(library, &root.join(relative))?;
    }

    // Modules in load order, dependencies first, each once.
    let mut order = Vec::new();
    for module in MODULES {
        let plan = output(
            Command::new("modprobe")
                .arg("-d")
                .arg(&kernel.modules_base)
                .args(["-S", &kernel.release, "--show-depends", module]),
            "modprobe --show-depends",
        )?;
        for line in plan.lines() {
            if let Some(path) = line.trim().strip_prefix("insmod ") {
                let path = PathBuf::from(path.trim());
                let name = path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .context("module without a file name")?;
                if !order.contains(&name) {
                    copy_file(&path, &root.join("vm/modules").join(&name))?;
                    order.push(name);
                }
            }
        }
    }
    fs::write(root.join("vm/modules.order"), order.join("\n") + "\n")?;
    // What connmon must choose on this kernel, for the guest to check.
    let mut expect = format!("programs {}\n", kernel.series.expected_programs);
    for hook in kernel.series.expected_hooks {
        expect.push_str(&format!("hook {hook}\n"));
    }
    for degraded in kernel.series.expected_degraded {
        expect.push_str(&format!("degraded {degraded}\n"));
    }
    fs::write(root.join("vm/expect"), expect)?;

    let init = root.join("init");
    fs::write(&init, GUEST_SCRIPT)?;
    set_executable(&init)?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/tmp:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;

    let initrd = work.join("initrd.cpio");
    shell(
        &format!(
            "cd '{}' && find . | busybox cpio -o -H newc > '{}' 2>/dev/null",
            root.display(),
            initrd.display()
        ),
        "packing the initramfs",
    )?;
    Ok(initrd)
}

/// Every library `ldd` names for `program`, the dynamic loader included.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    Ok(parse_ldd(&output(Command::new("ldd").arg(program), "ldd")?))
}

fn parse_ldd(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1
            // (0x...)" has no file.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

enum Verdict {
    Pass,
    Fail(String),
}

/// Boots the guest, mirrors its serial console into `log`, and returns the
/// verdict it printed. qemu is killed when the guest outlives the timeout.
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> Result<Verdict> {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("vm-test: booting {} under qemu (TCG)", vmlinuz.display());
    let started = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let mut file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;

    // The console is read on a thread so the timeout holds even when the
    // guest goes quiet.
    let (lines, received) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut verdict = None;
    let mut console_closed = false;
    let mut deadline = started + GUEST_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match received.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                writeln!(file, "{line}")?;
                // The guest's progress, the hook choice and each program's
                // verifier effort go to the task's own output too.
                if line.contains("vm-guest:")
                    || (verdict.is_none()
                        && (line.contains("hooks chosen") || line.contains("verified_insns=")))
                {
                    eprintln!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
                }
                // Console escape codes may precede the marker.
                let found = if line.contains(PASS) {
                    Some(Verdict::Pass)
                } else {
                    line.find(FAIL).map(|at| {
                        let reason = &line[at + FAIL.len()..];
                        Verdict::Fail(reason.trim_start_matches(':').trim().to_string())
                    })
                };
                if found.is_some() && verdict.is_none() {
                    verdict = found;
                    // The guest powers off next; don't wait long for it.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(15));
                }
            }
            // qemu exited and the console is drained.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                console_closed = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    // A closed console means qemu is exiting: give it a moment before
    // killing it (a guest that hung is killed at once).
    let grace = Instant::now() + Duration::from_secs(5);
    while console_closed && Instant::now() < grace && child.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for qemu")?;
    let _ = reader.join();
    file.flush()?;
    eprintln!(
        "vm-test: qemu ran {:.1} s ({status})",
        started.elapsed().as_secs_f64()
    );
    Ok(verdict.unwrap_or_else(|| {
        Verdict::Fail(format!(
            "no verdict from the guest within {} s",
            GUEST_TIMEOUT.as_secs()
        ))
    }))
}

fn print_tail(log: &Path) {
    let Ok(text) = fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(80);
    eprintln!("----- last lines of {}", log.display());
    for line in &lines[from..] {
        eprintln!("{line}");
    }
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    // Follows symlinks: the guest gets the file itself.
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn output(command: &mut Command, what: &str) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn shell(script: &str, what: &str) -> Result<()> {
    run_checked(Command::new("sh").args(["-c", script]), what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_listing_gives_library_paths() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(listing),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
