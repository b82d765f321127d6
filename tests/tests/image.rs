//! The minimal runtime image (`cargo xtask minimal-image`): an OCI archive
//! whose one layer holds the binary, the libraries it links and nothing
//! else (no shell), the binary carrying the Containerfile's file
//! capabilities. Unpacked as a runtime unpacks it, and run the way the
//! DaemonSet's pod runs it (its own root, user nobody, a bounding set of the
//! DaemonSet's capabilities, the ConfigMap's settings), it catches the seed
//! storm.
//!
//! `cargo xtask test` builds the image from its build once and passes the
//! archive in `CONNMON_IMAGE`; run alone, the test builds it itself.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{Context, Result, ensure};
use connmon_tests::{
    artifacts::{
        RemoveOnDrop, built_by_xtask, containerfile_caps, daemonset_capabilities,
        deployed_connmon_catches_the_seed_storm, run, scratch_dir, setpriv_caps, workspace_root,
    },
    connmon::Daemon,
    scenario::SeedScenario,
    topology::Options,
};
use serde_json::Value;

/// The image archive under test, built at most once per test binary.
fn archive() -> Result<PathBuf> {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = ARCHIVE.get() {
        return Ok(path.clone());
    }
    let path = built_by_xtask("CONNMON_IMAGE", "minimal-image", &[])?;
    Ok(ARCHIVE.get_or_init(|| path).clone())
}

/// The unpacked image: its config and its root filesystem.
struct Unpacked {
    config: Value,
    root: PathBuf,
    _dir: RemoveOnDrop,
}

/// Follows index.json to the manifest, its config and its one layer, and
/// unpacks the layer with its extended attributes, as a runtime does.
fn unpack(tag: &str) -> Result<Unpacked> {
    let guard = scratch_dir(tag)?;
    let layout = guard.0.join("layout");
    let root = guard.0.join("root");
    std::fs::create_dir_all(&layout)?;
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let (ok, text) = run(Command::new("tar")
        .arg("-xf")
        .arg(archive()?)
        .arg("-C")
        .arg(&layout))?;
    ensure!(ok, "{text}");
    let blob = |digest: &Value| -> Result<PathBuf> {
        let digest = digest.as_str().context("a digest")?;
        let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
        Ok(layout.join("blobs/sha256").join(hex))
    };
    let read_json = |path: PathBuf| -> Result<Value> {
        Ok(serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?)
    };
    let index = read_json(layout.join("index.json"))?;
    let manifest = read_json(blob(&index["manifests"][0]["digest"])?)?;
    let config = read_json(blob(&manifest["config"]["digest"])?)?;
    let layers = manifest["layers"].as_array().context("layers")?;
    ensure!(layers.len() == 1, "one layer: {manifest}");
    let (ok, text) = run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xzpf"])
        .arg(blob(&layers[0]["digest"])?)
        .arg("-C")
        .arg(&root))?;
    ensure!(ok, "{text}");
    Ok(Unpacked {
        config,
        root,
        _dir: guard,
    })
}

/// Every regular file and symlink under `dir`, relative to it.
fn files(dir: &Path, base: &Path, found: &mut BTreeSet<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            files(&path, base, found)?;
        } else {
            found.insert(path.strip_prefix(base)?.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// `cap_bpf,cap_perfmon+p` -> {"cap_bpf", "cap_perfmon"}.
fn cap_names(text: &str) -> BTreeSet<String> {
    text.split(['+', '='])
        .next()
        .unwrap_or_default()
        .split(',')
        .map(|cap| cap.trim().to_string())
        .collect()
}

#[test]
fn the_image_holds_the_binary_its_libraries_and_its_capabilities_only() -> Result<()> {
    let image = unpack("image-files")?;
    assert_eq!(image.config["config"]["User"], "65534:65534");
    assert_eq!(
        image.config["config"]["Entrypoint"],
        serde_json::json!(["/usr/bin/connmon"])
    );
    let mut found = BTreeSet::new();
    files(&image.root, &image.root, &mut found)?;
    for file in &found {
        let allowed = file == "usr/bin/connmon"
            || file == "etc/passwd"
            || file == "etc/group"
            || file.contains(".so");
        assert!(allowed, "{file} is in the image: {found:?}");
    }
    assert!(!image.root.join("bin/sh").exists(), "no shell");
    // Every library the binary needs is there: the loader of the image
    // resolves them all inside it.
    let (ok, text) = run(Command::new("chroot")
        .arg(&image.root)
        .args(["/usr/bin/connmon", "--version"]))?;
    assert!(ok && text.starts_with("connmon "), "{text}");
    // The capability attribute survived the layer.
    let (ok, text) = run(Command::new("getcap").arg(image.root.join("usr/bin/connmon")))?;
    ensure!(ok, "{text}");
    let caps = text.split_whitespace().nth(1).unwrap_or_default();
    let wanted = containerfile_caps()?;
    assert_eq!(cap_names(caps), cap_names(&wanted), "{text}");
    assert!(caps.ends_with("=p"), "no effective bit: {text}");
    Ok(())
}

/// The ConfigMap's connmon.toml, with the pod log directory (a node's) at
/// the image's empty /tmp.
fn configmap_toml() -> Result<String> {
    let text = std::fs::read_to_string(workspace_root().join("deploy/kubernetes/configmap.yaml"))?;
    let configmap: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
    let toml = configmap["data"]["connmon.toml"]
        .as_str()
        .context("the ConfigMap holds connmon.toml")?;
    let node_pods = "pod_metadata_dir = \"/var/log/pods\"";
    ensure!(toml.contains(node_pods), "{toml}");
    Ok(toml.replace(node_pods, "pod_metadata_dir = \"/tmp\""))
}

/// In a mount namespace of its own: the host's /proc and /sys inside the
/// image's root (as a runtime mounts them), then into it as nobody with a
/// bounding set of `caps`, plus what chroot itself needs to enter and
/// become nobody; the binary's file capabilities name none of those three,
/// so connmon cannot get them.
const ENTER_IMAGE: &str = r#"root="$1"; caps="$2"; shift 2
mount --rbind /proc "$root/proc" && mount --rbind /sys "$root/sys" &&
exec setpriv --inh-caps=-all --bounding-set="-all,$caps,+sys_chroot,+setuid,+setgid" \
  chroot --userspec=65534:65534 --groups=65534 "$root" /usr/bin/connmon "$@""#;

#[test]
fn the_images_binary_run_as_the_pod_runs_it_catches_the_seed_storm() -> Result<()> {
    let image = unpack("image-run")?;
    let config = image.root.join("etc/connmon/connmon.toml");
    std::fs::write(&config, configmap_toml()?)?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o444))?;
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            ENTER_IMAGE,
            "sh",
        ])
        .arg(&image.root)
        .arg(setpriv_caps(&daemonset_capabilities()?));
    let scratch = scratch_dir("image-scratch")?;
    let mut scenario = SeedScenario::start_with(
        "img",
        &Options::default(),
        &["--config", "/etc/connmon/connmon.toml"],
        |args| Daemon::start_command(command, args, scratch.0.clone()),
    )?;
    let storm = deployed_connmon_catches_the_seed_storm(&mut scenario)?;
    let exe = std::fs::read_link(format!("/proc/{}/exe", scenario.client.pid()))?;
    assert_eq!(storm["exe"], exe.to_string_lossy().as_ref(), "{storm}");
    Ok(())
}
