//! What the deployment tests install: the Debian package and the minimal
//! image (built by xtask from the binary under test), unpacked into scratch
//! roots, and the capability lists the shipped files grant.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};

/// The checkout's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Removes a directory tree when dropped.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An empty directory everyone may walk through, removed when dropped.
pub fn scratch_dir(tag: &str) -> Result<RemoveOnDrop> {
    let dir = std::env::temp_dir().join(format!("cmt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(RemoveOnDrop(dir))
}

/// Runs `command`; whether it succeeded and its stdout and stderr.
pub fn run(command: &mut Command) -> Result<(bool, String)> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

/// Validates `records` (schema file name -> records) against docs/schemas/
/// with Python's jsonschema from the venv `cargo xtask setup` makes:
/// whether they all pass, and the validator's report.
pub fn validate_schemas(
    records: &std::collections::BTreeMap<&str, Vec<serde_json::Value>>,
) -> Result<(bool, String)> {
    let scratch = scratch_dir("schema-records")?;
    let file = scratch.0.join("records.json");
    std::fs::write(&file, serde_json::to_vec(records)?)?;
    let root = workspace_root();
    run(
        Command::new(root.join(".cache/kubernetes-validate/bin/python"))
            .arg(root.join("tests/deploy/schemas.py"))
            .arg(root.join("docs/schemas"))
            .arg(&file),
    )
}

/// The artifact `cargo xtask test` built once and named in `variable`;
/// without it, `cargo xtask <task> --binary <connmon under test> --out-dir
/// <the binary's directory>/<task>-test <extra>` builds it here (the task
/// prints its path).
pub fn built_by_xtask(variable: &str, task: &str, extra: &[&str]) -> Result<PathBuf> {
    let path = match std::env::var_os(variable) {
        Some(path) => PathBuf::from(path),
        None => {
            // Next to the binary, like any build output.
            let binary = crate::connmon::binary();
            let out_dir = binary
                .parent()
                .unwrap_or(Path::new("."))
                .join(format!("{task}-test"));
            let output = Command::new(env!("CARGO"))
                .current_dir(workspace_root())
                .args([
                    "run",
                    "--quiet",
                    "--package",
                    "xtask",
                    "--",
                    task,
                    "--binary",
                ])
                .arg(&binary)
                .arg("--out-dir")
                .arg(&out_dir)
                .args(extra)
                .output()
                .with_context(|| format!("running cargo xtask {task}"))?;
            ensure!(
                output.status.success(),
                "cargo xtask {task}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            PathBuf::from(String::from_utf8(output.stdout)?.trim())
        }
    };
    ensure!(path.is_file(), "no {task} artifact at {}", path.display());
    Ok(path)
}

/// The DaemonSet's `capabilities.add` (e.g. `BPF`): what connmon needs
/// (docs/deploy.md, "Capabilities").
pub fn daemonset_capabilities() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(workspace_root().join("deploy/kubernetes/daemonset.yaml"))?;
    let daemonset: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
    let add = daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        ["capabilities"]["add"]
        .as_sequence()
        .context("the DaemonSet adds capabilities")?;
    Ok(add
        .iter()
        .filter_map(serde_yaml_ng::Value::as_str)
        .map(str::to_string)
        .collect())
}

/// `["BPF", "PERFMON"]` -> `+bpf,+perfmon` (setpriv syntax).
pub fn setpriv_caps(caps: &[String]) -> String {
    caps.iter()
        .map(|cap| format!("+{}", cap.to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The file capabilities the Containerfile gives the binary (setcap syntax).
pub fn containerfile_caps() -> Result<String> {
    let containerfile = std::fs::read_to_string(workspace_root().join("Containerfile"))?;
    let words: Vec<&str> = containerfile.split_whitespace().collect();
    words
        .windows(2)
        .find(|pair| pair[0] == "setcap" && pair[1].starts_with("cap_"))
        .map(|pair| pair[1].to_string())
        .context("the Containerfile runs setcap")
}

/// Lets the seed scenario's connection go stale and checks that a connmon
/// started as a deployment starts it (exactly the DaemonSet's
/// capabilities) warns only about the documented degradation
/// (`CAP_SYS_ADMIN`, docs/deploy.md) and reports the storm with the
/// client's pid; returns the `storm_started` record.
pub fn deployed_connmon_catches_the_seed_storm(
    scenario: &mut crate::scenario::SeedScenario,
) -> Result<serde_json::Value> {
    let warned: Vec<String> = scenario
        .connmon
        .stderr()
        .into_iter()
        .filter(|line| line.contains("capability missing"))
        .collect();
    ensure!(
        warned.len() == 1 && warned[0].contains("CAP_SYS_ADMIN"),
        "only the documented degradation: {warned:?}"
    );
    scenario.resume_after_forgotten("set")?;
    let storm = scenario.finding("storm_started", std::time::Duration::from_secs(30))?;
    ensure!(
        storm["pid"] == scenario.client.pid(),
        "the storm names the client: {storm}"
    );
    Ok(storm)
}
