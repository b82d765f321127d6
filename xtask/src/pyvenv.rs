//! The Python tools the deployment tests use, in a venv under `.cache/`:
//! kubernetes-validate (Kubernetes' schemas bundled, validates offline;
//! brings PyYAML and jsonschema, which tests/deploy/manifests.py uses).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::setup::Project;

const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// The venv directory (`bin/kubernetes-validate`, `bin/python`).
pub fn venv(project: &Project) -> PathBuf {
    project.cache().join("kubernetes-validate")
}

pub fn ensure(project: &Project) -> Result<()> {
    let dir = venv(project);
    let version = Command::new(dir.join("bin/kubernetes-validate"))
        .arg("--version")
        .output();
    let wanted = KUBERNETES_VALIDATE.trim_start_matches("kubernetes-validate==");
    if version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == wanted) {
        return Ok(());
    }
    eprintln!(
        "setup: installing {KUBERNETES_VALIDATE} into {}",
        dir.display()
    );
    // Debian's python3 with python3-venv (a package of the setup list), not
    // whichever python3 comes first on PATH.
    let ok = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(&dir)
        .status()
        .context("running python3 -m venv")?
        .success();
    if !ok {
        bail!("python3 -m venv {} failed", dir.display());
    }
    let ok = Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(KUBERNETES_VALIDATE)
        .status()
        .context("running pip install")?
        .success();
    if !ok {
        bail!("pip install {KUBERNETES_VALIDATE} failed");
    }
    Ok(())
}
