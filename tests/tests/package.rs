//! The Debian package as a new user on a plain host gets it (`cargo xtask
//! deb`, deploy/debian/): it holds the binary, the unit, the default config,
//! docs, man pages and completions; `systemd-analyze verify` accepts the
//! unit, which is hardened and grants exactly the DaemonSet's capabilities;
//! and the installed binary, started as the unit starts it (an unprivileged
//! user, exactly those capabilities, no new privileges, the default config),
//! tells systemd it is ready and catches the seed storm.
//!
//! `cargo xtask test` packages its build once and passes it in
//! `CONNMON_DEB`; run alone, the test packages `CONNMON_BIN` itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use connmon_tests::{
    artifacts::{
        RemoveOnDrop, built_by_xtask, daemonset_capabilities,
        deployed_connmon_catches_the_seed_storm, run, scratch_dir, setpriv_caps,
    },
    connmon::{Daemon, binary},
    scenario::SeedScenario,
    topology::Options,
};

const UNIT: &str = "usr/lib/systemd/system/connmon.service";
const CONFIG: &str = "/etc/connmon/connmon.toml";

/// The package under test, built at most once per test binary.
fn package() -> Result<PathBuf> {
    static PACKAGE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = PACKAGE.get() {
        return Ok(path.clone());
    }
    let path = built_by_xtask("CONNMON_DEB", "deb", &["--compression", "fast"])?;
    Ok(PACKAGE.get_or_init(|| path).clone())
}

/// The package unpacked into a clean root, as dpkg installs its files.
fn unpacked(tag: &str) -> Result<RemoveOnDrop> {
    let guard = scratch_dir(tag)?;
    let dir = guard.0.clone();
    let (ok, text) = run(Command::new("dpkg-deb").arg("-x").arg(package()?).arg(&dir))?;
    ensure!(ok, "dpkg-deb -x: {text}");
    Ok(guard)
}

/// The `[Service]` settings of the unit, each key with its values in order.
fn unit_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = "";
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && let Some((key, value)) = line.split_once('=')
            && !line.starts_with('#')
        {
            settings
                .entry(key.trim().to_string())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    settings
}

fn one<'a>(settings: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    settings
        .get(key)
        .and_then(|values| values.last())
        .map_or("", String::as_str)
}

/// `CAP_BPF CAP_PERFMON` -> {"BPF", "PERFMON"}.
fn capability_set(value: &str) -> BTreeSet<String> {
    value
        .split_whitespace()
        .map(|cap| cap.trim_start_matches("CAP_").to_string())
        .collect()
}

#[test]
fn the_package_holds_the_binary_unit_config_docs_man_pages_and_completions() -> Result<()> {
    let package = package()?;
    let (ok, fields) = run(Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&package)
        .args(["Package", "Version", "Depends"]))?;
    ensure!(ok, "{fields}");
    assert!(fields.contains("Package: connmon"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{fields}"
    );
    assert!(fields.contains("libc6 (>= "), "{fields}");

    let control = scratch_dir("deb-control")?;
    let (ok, text) = run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&package)
        .arg(&control.0))?;
    ensure!(ok, "{text}");
    let conffiles = std::fs::read_to_string(control.0.join("conffiles"))?;
    assert_eq!(conffiles.trim(), CONFIG, "the config survives upgrades");
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.0.join(script);
        let mode = std::fs::metadata(&path)?.permissions().mode();
        assert_eq!(mode & 0o755, 0o755, "{script} is executable");
        let (ok, text) = run(Command::new("sh").arg("-n").arg(&path))?;
        assert!(ok, "{script}: {text}");
    }

    let tree = unpacked("deb-files")?;
    let files = &tree.0;
    for path in [
        "usr/bin/connmon",
        UNIT,
        "etc/connmon/connmon.toml",
        "usr/share/doc/connmon/README.md",
        "usr/share/doc/connmon/deploy.md",
        "usr/share/doc/connmon/copyright",
        "usr/share/doc/connmon/schemas/finding.schema.json",
        "usr/share/man/man1/connmon.1.gz",
        "usr/share/man/man1/connmon-run.1.gz",
        "usr/share/man/man1/connmon-audit.1.gz",
        "usr/share/man/man1/connmon-trace.1.gz",
        "usr/share/bash-completion/completions/connmon",
        "usr/share/zsh/vendor-completions/_connmon",
        "usr/share/fish/vendor_completions.d/connmon.fish",
    ] {
        assert!(files.join(path).is_file(), "the package lacks /{path}");
    }
    // The installed binary says which commit it is, as --version of the
    // build under test does.
    let installed = files.join("usr/bin/connmon");
    let (ok, version) = run(Command::new(&installed).arg("--version"))?;
    ensure!(ok, "{version}");
    let (_, expected) = run(Command::new(binary()).arg("--version"))?;
    assert_eq!(version, expected);
    assert!(version.contains("(revision "), "{version}");
    // A man page renders (gzip -t: whole; it starts as roff does).
    let (ok, page) = run(Command::new("gzip")
        .arg("-dc")
        .arg(files.join("usr/share/man/man1/connmon-run.1.gz")))?;
    ensure!(ok, "{page}");
    assert!(page.contains(".TH connmon-run 1"), "{page}");
    assert!(page.contains("output\\-format"), "{page}");
    // Every page formats without a groff warning.
    for entry in std::fs::read_dir(files.join("usr/share/man/man1"))? {
        let path = entry?.path();
        let (ok, text) = run(Command::new("sh").arg("-c").arg(format!(
            "gzip -dc '{}' | groff -man -Tutf8 -ww -z",
            path.display()
        )))?;
        assert!(ok && text.trim().is_empty(), "{}: {text}", path.display());
    }
    // bash loads the completion and completes connmon with it.
    let (ok, text) = run(Command::new("bash").arg("-c").arg(format!(
        "source {}; complete -p connmon",
        files
            .join("usr/share/bash-completion/completions/connmon")
            .display()
    )))?;
    assert!(ok && text.contains("connmon"), "{text}");
    Ok(())
}

#[test]
fn systemd_analyze_verifies_the_unit_and_it_grants_exactly_what_connmon_needs() -> Result<()> {
    let tree = unpacked("deb-unit")?;
    let unit = std::fs::read_to_string(tree.0.join(UNIT))?;
    // The unit as installed, its ExecStart pointing into the unpacked tree
    // (the host's own units, sysinit.target and the rest, stay in reach).
    let installed_binary = tree.0.join("usr/bin/connmon");
    let relocated = unit.replace("/usr/bin/connmon", &installed_binary.to_string_lossy());
    let verify_dir = scratch_dir("deb-verify")?;
    let verify = |text: &str| -> Result<(bool, String)> {
        let path = verify_dir.0.join("connmon.service");
        std::fs::write(&path, text)?;
        run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path))
    };
    let (ok, text) = verify(&relocated)?;
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
    // It notices a broken unit (a warning, or an error): the check is real.
    for (good, bad) in [
        ("Type=notify", "Type=notifyy"),
        ("ProtectSystem=strict", "ProtectSystem=stric"),
        ("/usr/bin/connmon", "/usr/bin/no-such-connmon"),
    ] {
        let (ok, text) = verify(
            &unit
                .replace(good, bad)
                .replace("/usr/bin/connmon", &installed_binary.to_string_lossy()),
        )?;
        assert!(!ok || !text.trim().is_empty(), "{bad} passes verify");
    }
    // systemd's own score of the sandbox: "OK" or better, not MEDIUM,
    // EXPOSED or UNSAFE.
    let unit_copy = verify_dir.0.join("connmon.service");
    std::fs::write(&unit_copy, &relocated)?;
    let (ok, text) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit_copy))?;
    let overall = text
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .with_context(|| format!("systemd-analyze security: {text}"))?;
    assert!(
        ok && ["SAFE", "OK", "PERFECT"]
            .iter()
            .any(|level| overall.contains(level)),
        "{overall}"
    );

    let settings = unit_settings(&unit);
    let needed: BTreeSet<String> = daemonset_capabilities()?.into_iter().collect();
    assert_eq!(
        capability_set(one(&settings, "AmbientCapabilities")),
        needed
    );
    assert_eq!(
        capability_set(one(&settings, "CapabilityBoundingSet")),
        needed
    );
    for (key, value) in [
        ("Type", "notify"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictSUIDSGID", "yes"),
    ] {
        assert_eq!(one(&settings, key), value, "{key}");
    }
    assert_eq!(
        one(&settings, "RestrictAddressFamilies")
            .split_whitespace()
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"])
    );
    assert!(
        one(&settings, "ExecStart").ends_with(&format!("run --config {CONFIG}")),
        "the unit reads the packaged config"
    );
    Ok(())
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Result<Self> {
        let path = dir.join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path)?;
        // The service's user must be able to send to it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self { socket, path })
    }

    fn receive(&self) -> Result<String> {
        let mut buffer = [0u8; 4096];
        let size = self
            .socket
            .recv(&mut buffer)
            .context("no notification from connmon")?;
        Ok(String::from_utf8_lossy(&buffer[..size]).into_owned())
    }
}

#[test]
fn the_installed_binary_as_the_units_user_and_capabilities_catches_the_seed_storm() -> Result<()> {
    let tree = unpacked("deb-run")?;
    let installed = &tree.0;
    let settings = unit_settings(&std::fs::read_to_string(installed.join(UNIT))?);
    let caps = setpriv_caps(
        &capability_set(one(&settings, "AmbientCapabilities"))
            .into_iter()
            .collect::<Vec<_>>(),
    );
    // ExecStart, with its absolute paths inside the unpacked root.
    let exec_start: Vec<String> = one(&settings, "ExecStart")
        .split_whitespace()
        .map(|word| match word.strip_prefix('/') {
            Some(path) => installed.join(path).to_string_lossy().into_owned(),
            None => word.to_string(),
        })
        .collect();
    let (program, rest) = exec_start.split_first().context("ExecStart is empty")?;
    ensure!(
        rest.first().map(String::as_str) == Some("run"),
        "{exec_start:?}"
    );
    let unit_args: Vec<&str> = rest[1..].iter().map(String::as_str).collect();

    let scratch = scratch_dir("deb-notify")?;
    let notify = NotifySocket::bind(&scratch.0)?;

    // The unit's user stands in as nobody (DynamicUser picks a free uid
    // just as unprivileged), with the unit's capabilities as ambient ones,
    // a bounding set of exactly those, and no new privileges.
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(program)
        .env("NOTIFY_SOCKET", &notify.path);
    let mut scenario = SeedScenario::start_with("deb", &Options::default(), &unit_args, |args| {
        // The unit's arguments first; the scenario's port and idle
        // threshold override the default config's.
        Daemon::start_command(command, args, scratch.0.clone())
    })?;
    let ready = notify.receive()?;
    assert!(ready.contains("READY=1"), "{ready:?}");
    deployed_connmon_catches_the_seed_storm(&mut scenario)?;
    let metrics = scenario.connmon.http_get("/metrics")?;
    assert!(
        metrics.contains("connmon_storms_started_total{"),
        "the storm is exported: {metrics}"
    );
    for family in ["process_resident_memory_bytes ", "process_open_fds "] {
        assert!(metrics.contains(family), "{family}missing: {metrics}");
    }
    Ok(())
}
