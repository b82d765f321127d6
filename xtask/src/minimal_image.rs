//! `cargo xtask minimal-image`: connmon's runtime image with nothing but the
//! binary and the libraries it links (no shell, no package manager), written
//! as an OCI image archive without a container runtime or base image:
//! `podman load -i target/image/connmon-oci.tar` (or `skopeo copy
//! oci-archive:...`) takes it. The binary carries the Containerfile's file
//! capabilities (`setcap ...+p`), kept in the layer as the
//! `security.capability` extended attribute, as runtimes unpack it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::{
    deb::{install, output, status, write},
    setup::Project,
};

/// The image must stay below this (uncompressed root, as `podman images`
/// shows it).
const SIZE_LIMIT_BYTES: u64 = 25 * 1000 * 1000;

pub fn run(
    project: &Project,
    binary: Option<PathBuf>,
    out_dir: Option<PathBuf>,
    tag: &str,
) -> Result<()> {
    let release = binary.is_none();
    let binary = match binary {
        Some(binary) => binary,
        None => {
            crate::setup::run(project)?;
            crate::tasks::build(project, true)?
        }
    };
    let out_dir = out_dir.unwrap_or_else(|| project.target_dir().join("image"));
    let image = build(&binary, &out_dir, tag)?;
    eprintln!(
        "minimal-image: {tag}: root {:.1} MB (binary {:.1} MB), layer {:.1} MB compressed",
        image.root_bytes as f64 / 1e6,
        image.binary_bytes as f64 / 1e6,
        image.layer_bytes as f64 / 1e6,
    );
    // A debug build is for tests; the limit is the release image's.
    if release && image.root_bytes > SIZE_LIMIT_BYTES {
        bail!(
            "the image's root is {} bytes, over the {SIZE_LIMIT_BYTES} limit",
            image.root_bytes
        );
    }
    println!("{}", image.archive.display());
    Ok(())
}

pub struct Image {
    /// The OCI archive (`podman load -i`).
    pub archive: PathBuf,
    pub root_bytes: u64,
    pub binary_bytes: u64,
    pub layer_bytes: u64,
}

/// Stages the root for `binary` under `out_dir`, packs it as one layer and
/// writes the OCI layout and its archive there.
pub fn build(binary: &Path, out_dir: &Path, tag: &str) -> Result<Image> {
    crate::setup::ensure_packages(&["binutils", "libcap2-bin"], "minimal-image")?;
    let root = out_dir.join("rootfs");
    let layout = out_dir.join("connmon-oci");
    for dir in [&root, &layout] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    let installed = root.join("usr/bin/connmon");
    install(binary, &installed, 0o755)?;
    status(Command::new("strip").arg("--strip-debug").arg(&installed))?;
    for library in linked_libraries(&installed)? {
        let relative = library.strip_prefix("/").unwrap_or(&library);
        install(&library, &root.join(relative), 0o755)?;
    }
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n",
        0o644,
    )?;
    write(
        &root.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\n",
        0o644,
    )?;
    // Mount points: the runtime mounts /proc, /sys, the ConfigMap.
    for dir in ["proc", "sys", "tmp", "etc/connmon"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    // The same as the Containerfile's (the tests' reader of it).
    let caps = connmon_tests::artifacts::containerfile_caps()?;
    status(Command::new("setcap").arg(&caps).arg(&installed))?;
    let root_bytes = tree_bytes(&root)?;
    let binary_bytes = std::fs::metadata(&installed)?.len();

    // One layer: a reproducible tar with the capability attribute.
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer_tar = out_dir.join("layer.tar");
    status(
        Command::new("tar")
            .args([
                "--create",
                "--xattrs",
                "--xattrs-include=security.capability",
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--sort=name",
                "--mtime=@0",
                "--format=pax",
                "--file",
            ])
            .arg(&layer_tar)
            .arg("--directory")
            .arg(&root)
            .arg("."),
    )?;
    let diff_id = sha256(&layer_tar)?;
    status(Command::new("gzip").args(["-n", "-f"]).arg(&layer_tar))?;
    let layer_gz = out_dir.join("layer.tar.gz");
    let (layer_digest, layer_bytes) = add_blob(&blobs, &std::fs::read(&layer_gz)?)?;
    let _ = std::fs::remove_file(&layer_gz);

    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": "65534:65534",
            "Entrypoint": ["/usr/bin/connmon"],
            "Cmd": ["run"],
            "ExposedPorts": {"9878/tcp": {}},
            "Labels": {
                "org.opencontainers.image.title": "connmon",
                "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    let (config_digest, config_bytes) = add_blob(&blobs, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_bytes,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_bytes,
        }],
    });
    let (manifest_digest, manifest_bytes) = add_blob(&blobs, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_bytes,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    write(
        &layout.join("index.json"),
        &serde_json::to_string(&index)?,
        0o644,
    )?;
    write(
        &layout.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
        0o644,
    )?;
    let archive = out_dir.join("connmon-oci.tar");
    status(
        Command::new("tar")
            .args(["--create", "--sort=name", "--mtime=@0", "--file"])
            .arg(&archive)
            .arg("--directory")
            .arg(&layout)
            .arg("."),
    )?;
    Ok(Image {
        archive,
        root_bytes,
        binary_bytes,
        layer_bytes,
    })
}

/// The shared libraries `binary` loads, the dynamic loader included, as
/// `ldd` resolves them on this (the build) system.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(binary))?;
    let mut libraries = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|path| path.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    ensure!(
        libraries
            .iter()
            .any(|path| path.to_string_lossy().contains("ld-linux")),
        "ldd named no dynamic loader: {text}"
    );
    Ok(libraries)
}

fn sha256(path: &Path) -> Result<String> {
    let text = output(Command::new("sha256sum").arg(path))?;
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}

/// Stores `bytes` under its digest; returns the digest and the size.
fn add_blob(blobs: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let scratch = blobs.join("incoming");
    std::fs::write(&scratch, bytes)?;
    let digest = sha256(&scratch)?;
    std::fs::rename(&scratch, blobs.join(&digest))?;
    Ok((digest, bytes.len() as u64))
}

fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        total += if metadata.is_dir() {
            tree_bytes(&entry.path())?
        } else {
            metadata.len()
        };
    }
    Ok(total)
}
