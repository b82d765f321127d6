//! `cargo xtask vm-test`: connmon on Debian's Linux 6.1, booted with qemu.
//!
//! Fetches Debian's `linux-image-6.1.*-amd64` package with `apt-get
//! download` (cached under `.cache/vm/`, never installed), unpacks its
//! kernel and the modules the scenario needs, builds an initramfs (busybox,
//! connmon, tcp-peer, ip, nft, bpftool and their libraries), boots it under
//! qemu's software emulation (TCG: nested KVM cannot run a stock kernel
//! here) and reads the verdict from the guest's serial console. The guest
//! script is `vm_guest.sh`.

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

use crate::{setup::Project, tasks::run_checked};

/// The guest's `/init`.
const GUEST_SCRIPT: &str = include_str!("vm_guest.sh");

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

pub fn vm_test(project: &Project, connmon: &Path) -> Result<()> {
    crate::setup::ensure_packages(HOST_PACKAGES, "vm-test")?;
    let tcp_peer = build_tcp_peer(project)?;
    let kernel = fetch_kernel(project)?;
    let work = project.target_dir().join("vm");
    let initrd = build_initramfs(&work, &kernel, connmon, &tcp_peer)?;
    let log = work.join("serial.log");
    let verdict = boot(&kernel.vmlinuz, &initrd, &log)?;
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

fn build_tcp_peer(project: &Project) -> Result<PathBuf> {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&project.root)
        .env("PATH", project.path_env())
        .args(["build", "--package", "connmon-tests", "--bin", "tcp-peer"]);
    run_checked(&mut cargo, "cargo build tcp-peer")?;
    Ok(project.target_dir().join("debug/tcp-peer"))
}

/// The unpacked kernel package.
struct Kernel {
    /// e.g. `6.1.0-56-amd64`
    release: String,
    vmlinuz: PathBuf,
    /// Root of the unpacked package (has `lib/modules/<release>`).
    root: PathBuf,
}

/// The newest `linux-image-6.1.0-N-amd64` the package lists know, downloaded
/// once into `.cache/vm/` and unpacked next to it. A cached package is used
/// as is, so reruns work offline and test the same kernel.
fn fetch_kernel(project: &Project) -> Result<Kernel> {
    let dir = project.cache().join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let deb = match cached_deb(&dir)? {
        Some(deb) => deb,
        None => {
            let package = newest_package()?;
            eprintln!("vm-test: downloading {package}");
            run_checked(
                Command::new("apt-get")
                    .current_dir(&dir)
                    .args(["download", &package]),
                "apt-get download",
            )?;
            cached_deb(&dir)?.context("apt-get download left no linux-image-6.1 package")?
        }
    };
    let file_name = deb
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let release = release_of(&file_name).context("unexpected kernel package name")?;
    let root = dir.join(format!("linux-{release}"));
    let done = root.join(".unpacked");
    if !done.is_file() {
        eprintln!("vm-test: unpacking {file_name}");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        shell(
            &format!(
                "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}'",
                deb.display(),
                root.display()
            ),
            "unpacking the kernel package",
        )?;
        // modules.dep for `modprobe --show-depends` (the package leaves it to
        // its install hooks).
        run_checked(
            Command::new("depmod").arg("-b").arg(&root).arg(&release),
            "depmod",
        )?;
        fs::write(&done, b"")?;
    }
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} missing from {file_name}", vmlinuz.display());
    }
    Ok(Kernel {
        release,
        vmlinuz,
        root,
    })
}

fn cached_deb(dir: &Path) -> Result<Option<PathBuf>> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name().is_some_and(|name| {
                let name = name.to_string_lossy();
                name.starts_with("linux-image-6.1.") && name.ends_with("_amd64.deb")
            })
        })
        .collect();
    debs.sort();
    Ok(debs.pop())
}

fn newest_package() -> Result<String> {
    let search = || -> Result<Option<String>> {
        let out = Command::new("apt-cache")
            .args([
                "search",
                "--names-only",
                r"^linux-image-6\.1\.0-[0-9]+-amd64$",
            ])
            .output()
            .context("running apt-cache search")?;
        Ok(newest_of(&String::from_utf8_lossy(&out.stdout)))
    };
    if let Some(package) = search()? {
        return Ok(package);
    }
    // A fresh machine may have no package lists yet.
    run_checked(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    search()?
        .context("apt knows no linux-image-6.1.0-N-amd64 package (is bookworm in the sources?)")
}

/// `linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb` -> `6.1.0-56-amd64`.
fn release_of(deb_file_name: &str) -> Option<String> {
    let release = deb_file_name
        .strip_prefix("linux-image-")?
        .split('_')
        .next()?;
    (!release.is_empty()).then(|| release.to_string())
}

/// The package with the highest ABI number in an `apt-cache search`
/// listing (numerically: -100 is newer than -99).
fn newest_of(listing: &str) -> Option<String> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            let abi: u32 = name
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix("-amd64")?
                .parse()
                .ok()?;
            Some((abi, name.to_string()))
        })
        .max()
        .map(|(_, name)| name)
}

/// Lays out the guest's root and packs it as an uncompressed cpio (nothing
/// to decompress under emulation).
fn build_initramfs(
    work: &Path,
    kernel: &Kernel,
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
            Command::new("modprobe").arg("-d").arg(&kernel.root).args([
                "-S",
                &kernel.release,
                "--show-depends",
                module,
            ]),
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
    fn kernel_release_from_the_package_file_name() {
        assert_eq!(
            release_of("linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb").as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(release_of("busybox_1.35_amd64.deb"), None);
    }

    #[test]
    fn newest_package_compares_abi_numbers() {
        let listing = "linux-image-6.1.0-99-amd64 - Linux 6.1\n\
                       linux-image-6.1.0-100-amd64 - Linux 6.1\n\
                       linux-image-6.1.0-101-cloud-amd64 - cloud\n\
                       linux-image-6.12.1+deb12-amd64 - Linux 6.12\n";
        assert_eq!(
            newest_of(listing).as_deref(),
            Some("linux-image-6.1.0-100-amd64")
        );
        assert_eq!(newest_of(""), None);
    }

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
