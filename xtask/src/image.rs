//! `cargo xtask image`: builds the Containerfile with podman (or buildah).
//! Not part of `cargo xtask test`: it needs the base images from a container
//! registry and compiles everything again inside the build stage.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::Project;

pub fn run(project: &Project, tag: &str, build_args: &[String]) -> Result<()> {
    let builder = ["podman", "buildah"]
        .into_iter()
        .find(|tool| {
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .context("neither podman nor buildah is installed (Debian: apt-get install podman)")?;
    let mut command = Command::new(builder);
    if builder == "buildah" {
        command.arg("bud");
    } else {
        command.arg("build");
    }
    for arg in build_args {
        command.args(["--build-arg", arg]);
    }
    command
        .args(["--file", "Containerfile", "--tag", tag, "."])
        .current_dir(&project.root);
    eprintln!("image: {builder} building {tag} (compiles everything; several minutes)");
    if !command
        .status()
        .context("running the image build")?
        .success()
    {
        bail!("{builder} could not build the image");
    }
    Ok(())
}
