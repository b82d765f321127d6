//! The deployment as a new user gets it (deploy/, Containerfile): the
//! Kubernetes manifests are valid, strictly, offline (kubernetes-validate's
//! bundled schemas; the Prometheus Operator's CRDs for PodMonitor and
//! PrometheusRule), the PrometheusRule is the shipped rules file, the pod is
//! not privileged, the dashboard asks only for metrics connmon exports, and
//! the DaemonSet's capability list is exactly what connmon needs: connmon
//! run as nobody holding exactly those works end to end, and without any one
//! of them says which is missing.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use connmon_tests::{
    artifacts::containerfile_caps as image_file_caps,
    connmon::{Daemon, as_nobody_in_pod, first_finding},
    poll,
    process::Process,
    topology::{CACHE_V4, Options, REDIS_PORT, Topology},
};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn kubernetes_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// A program of the venv `cargo xtask setup` makes.
fn venv(program: &str) -> PathBuf {
    root().join(".cache/kubernetes-validate/bin").join(program)
}

fn run(command: &mut Command) -> Result<(bool, String)> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?} (did `cargo xtask setup` run?)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

/// Every YAML document of `paths`, parsed by PyYAML.
fn yaml(paths: &[PathBuf]) -> Result<Vec<Value>> {
    let output = Command::new(venv("python"))
        .arg(root().join("tests/deploy/manifests.py"))
        .arg("json")
        .args(paths)
        .output()
        .context("running tests/deploy/manifests.py")?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let Value::Array(documents) = serde_json::from_slice(&output.stdout)? else {
        bail!("manifests.py json printed no list");
    };
    Ok(documents)
}

/// The files the kustomization applies.
fn resources() -> Result<Vec<PathBuf>> {
    let kustomization = yaml(&[kubernetes_dir().join("kustomization.yaml")])?;
    let names = kustomization[0]["resources"]
        .as_array()
        .context("kustomization has resources")?;
    Ok(names
        .iter()
        .filter_map(Value::as_str)
        .map(|name| kubernetes_dir().join(name))
        .collect())
}

fn object(kind: &str) -> Result<Value> {
    yaml(&resources()?)?
        .into_iter()
        .find(|doc| doc["kind"] == kind)
        .with_context(|| format!("no {kind} in deploy/kubernetes"))
}

const CUSTOM_KINDS: &[&str] = &["PodMonitor", "PrometheusRule"];

#[test]
fn the_kustomization_is_plain_and_lists_every_manifest() -> Result<()> {
    let kustomization = &yaml(&[kubernetes_dir().join("kustomization.yaml")])?[0];
    // No generators, patches or transformers: `kubectl apply -k` applies the
    // files as written, which is what the other tests check.
    let keys: BTreeSet<&str> = kustomization
        .as_object()
        .context("kustomization is a map")?
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["apiVersion", "kind", "resources"]),
        "{kustomization}"
    );
    let listed: BTreeSet<PathBuf> = resources()?.into_iter().collect();
    let present: BTreeSet<PathBuf> = std::fs::read_dir(kubernetes_dir())?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .filter(|path| !path.ends_with("kustomization.yaml"))
        .collect();
    assert_eq!(listed, present);
    for doc in yaml(&resources()?)? {
        if doc["kind"] != "Namespace" {
            assert_eq!(doc["metadata"]["namespace"], "connmon", "{doc}");
        }
    }
    Ok(())
}

/// Only the monitoring namespace reaches connmon's pods, and only on the
/// port the DaemonSet names `metrics`: the API shows every process of the
/// node to whoever gets in.
#[test]
fn the_network_policy_lets_only_the_monitoring_namespace_reach_the_port() -> Result<()> {
    let policy = object("NetworkPolicy")?;
    let daemonset = object("DaemonSet")?;
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"], daemonset["spec"]["selector"]["matchLabels"],
        "the policy selects connmon's pods"
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let ingress = policy["spec"]["ingress"].as_array().context("ingress")?;
    assert_eq!(ingress.len(), 1, "{policy}");
    let from = ingress[0]["from"].as_array().context("from")?;
    assert_eq!(from.len(), 1, "one peer: {policy}");
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"],
        serde_json::json!({"kubernetes.io/metadata.name": "monitoring"})
    );
    assert!(from[0].get("ipBlock").is_none(), "{policy}");
    let container_ports = &daemonset["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert_eq!(container_ports[0]["name"], "metrics", "{daemonset}");
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"port": "metrics", "protocol": "TCP"}])
    );
    Ok(())
}

#[test]
fn built_in_kinds_are_valid_kubernetes_objects_strictly() -> Result<()> {
    let mut checked = 0;
    for path in resources()? {
        let kind = yaml(std::slice::from_ref(&path))?[0]["kind"].clone();
        if CUSTOM_KINDS.iter().any(|custom| kind == *custom) {
            continue;
        }
        // The oldest Kubernetes still supported upstream, and the newest
        // schemas kubernetes-validate bundles.
        for version in ["1.32.0", "1.37.0"] {
            let (ok, text) = run(Command::new(venv("kubernetes-validate"))
                .args(["--strict", "-k", version])
                .arg(&path))?;
            assert!(ok && text.contains("passed"), "{}: {text}", path.display());
        }
        checked += 1;
    }
    assert_eq!(
        checked, 5,
        "Namespace, ServiceAccount, ConfigMap, DaemonSet, NetworkPolicy"
    );

    // Strict means strict: an unknown field fails.
    let scratch = std::env::temp_dir().join(format!("cmt-deploy-{}.yaml", std::process::id()));
    let daemonset = std::fs::read_to_string(kubernetes_dir().join("daemonset.yaml"))?;
    std::fs::write(
        &scratch,
        daemonset.replace(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: true\n            readOnlyRootFileSystem: true",
        ),
    )?;
    let result = run(Command::new(venv("kubernetes-validate"))
        .arg("--strict")
        .arg(&scratch));
    let _ = std::fs::remove_file(&scratch);
    let (ok, text) = result?;
    assert!(
        !ok && text.contains("readOnlyRootFileSystem"),
        "a misspelt field is an error: {text}"
    );
    Ok(())
}

fn validate_custom(path: &Path) -> Result<(bool, String)> {
    run(Command::new(venv("python"))
        .arg(root().join("tests/deploy/manifests.py"))
        .arg("crd")
        .arg(root().join("tests/deploy/crds"))
        .arg(path))
}

#[test]
fn custom_resources_are_valid_against_the_prometheus_operator_crds() -> Result<()> {
    for name in ["podmonitor.yaml", "prometheusrule.yaml"] {
        let (ok, text) = validate_custom(&kubernetes_dir().join(name))?;
        assert!(ok && text.contains("valid"), "{name}: {text}");
    }
    let scratch = std::env::temp_dir().join(format!("cmt-podmonitor-{}.yaml", std::process::id()));
    let podmonitor = std::fs::read_to_string(kubernetes_dir().join("podmonitor.yaml"))?;
    std::fs::write(
        &scratch,
        podmonitor.replace("interval: 15s", "interval: 15s\n      scrapeInterval: 15s"),
    )?;
    let result = validate_custom(&scratch);
    let _ = std::fs::remove_file(&scratch);
    let (ok, text) = result?;
    assert!(
        !ok && text.contains("scrapeInterval"),
        "an unknown field is an error: {text}"
    );
    Ok(())
}

#[test]
fn the_prometheus_rule_is_the_shipped_rules_file() -> Result<()> {
    let rules = yaml(&[root().join("deploy/prometheus/connmon-rules.yml")])?;
    let rule = object("PrometheusRule")?;
    assert_eq!(
        rule["spec"], rules[0],
        "deploy/kubernetes/prometheusrule.yaml is out of date: run `cargo xtask manifests`"
    );
    Ok(())
}

/// The DaemonSet's `capabilities.add`, e.g. `["BPF", "PERFMON"]`.
fn granted() -> Result<Vec<String>> {
    let daemonset = object("DaemonSet")?;
    let add = daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        ["capabilities"]["add"]
        .as_array()
        .context("the container adds capabilities")?;
    Ok(add
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect())
}

#[test]
fn the_pod_is_not_privileged_and_mounts_host_paths_read_only() -> Result<()> {
    let daemonset = object("DaemonSet")?;
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "/proc of every process");
    assert!(
        pod["hostNetwork"].is_null() || pod["hostNetwork"] == false,
        "no host network"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let containers = pod["containers"].as_array().context("containers")?;
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert!(security["privileged"].is_null() || security["privileged"] == false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(security["readOnlyRootFilesystem"], true);
    let user = pod["securityContext"]["runAsUser"].as_u64().unwrap_or(0);
    assert_ne!(user, 0, "a non-root user");

    // Every host path is mounted read-only.
    let volumes = pod["volumes"].as_array().context("volumes")?;
    for mount in container["volumeMounts"]
        .as_array()
        .context("volume mounts")?
    {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .with_context(|| format!("no volume for {mount}"))?;
        if !volume["hostPath"].is_null() || !volume["configMap"].is_null() {
            assert_eq!(mount["readOnly"], true, "{mount}");
        }
        if !volume["configMap"].is_null() {
            let mode = volume["configMap"]["defaultMode"].as_u64().unwrap_or(0o644);
            assert_eq!(mode & 0o002, 0, "connmon refuses a world-writable config");
            let configmap = object("ConfigMap")?;
            assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
        }
    }
    assert_eq!(
        pod["serviceAccountName"],
        object("ServiceAccount")?["metadata"]["name"]
    );

    // Prometheus scrapes the port the container names.
    let podmonitor = object("PodMonitor")?;
    let port = &podmonitor["spec"]["podMetricsEndpoints"][0]["port"];
    assert!(
        container["ports"].as_array().is_some_and(|ports| ports
            .iter()
            .any(|p| p["name"] == *port && p["containerPort"] == 9878)),
        "{port}"
    );
    assert_eq!(
        podmonitor["spec"]["selector"]["matchLabels"],
        daemonset["spec"]["template"]["metadata"]["labels"]
    );

    // The image's file capabilities hold every capability the pod grants
    // (a non-root container gets capabilities only through them).
    let file_caps = image_file_caps()?;
    for cap in granted()? {
        assert!(
            file_caps.contains(&format!("cap_{}", cap.to_lowercase())),
            "the Containerfile's setcap ({file_caps}) lacks {cap}"
        );
    }
    assert!(file_caps.ends_with("+p"), "no effective bit: {file_caps}");
    Ok(())
}

/// Metric names the code registers: the daemon's own families (all
/// declared in `metrics/families.rs`, which holds no tests that could name a
/// metric nothing registers) and the kernel-side ones read at scrape time.
fn exported_metrics() -> Result<BTreeSet<String>> {
    let mut source = String::new();
    for file in [
        "monitor/src/metrics/families.rs",
        "monitor/src/kernel_metrics.rs",
    ] {
        source += &std::fs::read_to_string(root().join(file))?;
    }
    Ok(source
        .split('"')
        .filter(|text| {
            text.starts_with("connmon_")
                && text
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect())
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_queries() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/connmon-dashboard.json"))?;
    let dashboard: Value = serde_json::from_str(&text).context("the dashboard is JSON")?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("a target without expr")?;
            queries.push(expr.to_string());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_string());
        }
    }
    Ok(queries)
}

#[test]
fn the_dashboard_asks_only_for_exported_metrics_in_valid_promql() -> Result<()> {
    let exported = exported_metrics()?;
    assert!(exported.len() > 20, "{exported:?}");
    let queries = dashboard_queries()?;
    let mut used = BTreeSet::new();
    for query in &queries {
        for word in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("connmon_") {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    word.strip_suffix(suffix)
                        .filter(|base| exported.contains(*base))
                })
                .unwrap_or(word);
            assert!(exported.contains(base), "{word} is not exported: {query}");
            used.insert(base.to_string());
        }
    }
    for needed in [
        "connmon_storms_started_total",
        "connmon_storms_active",
        "connmon_storm_duration_seconds",
        "connmon_idle_connections_at_risk",
        "connmon_retransmits_total",
        "connmon_lost_records_total",
        "connmon_bpf_program_run_seconds_total",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }

    // promtool parses each expression, as a recording rule, with Grafana's
    // variables replaced by what they expand to.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, query) in queries.iter().enumerate() {
        let expr = if let Some(label) = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            label.split(',').next().unwrap_or_default().to_string()
        } else {
            query
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
        };
        rules.push_str(&format!(
            "      - record: dashboard:query{index}\n        expr: {}\n",
            serde_json::to_string(&expr)?
        ));
    }
    let scratch = std::env::temp_dir().join(format!("cmt-dashboard-{}.yml", std::process::id()));
    std::fs::write(&scratch, rules)?;
    let result = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(&scratch));
    let _ = std::fs::remove_file(&scratch);
    let (ok, text) = result?;
    assert!(ok && text.contains("SUCCESS"), "{text}");
    Ok(())
}

/// Capabilities connmon cannot start without; the others degrade a part,
/// which connmon names.
const REQUIRED: &[&str] = &["BPF", "PERFMON"];

fn setpriv_caps(caps: &[String]) -> String {
    caps.iter()
        .map(|cap| format!("+{}", cap.to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The ConfigMap's connmon.toml, in a file nobody can read, with the
/// node's /var/log/pods replaced by `pods` (the file is checked before flags
/// override it, and this machine is no node).
fn config_file(dir: &Path, pods: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let configmap = object("ConfigMap")?;
    let toml = configmap["data"]["connmon.toml"]
        .as_str()
        .context("the ConfigMap holds connmon.toml")?;
    let node_pods = "pod_metadata_dir = \"/var/log/pods\"";
    ensure!(toml.contains(node_pods), "{toml}");
    let toml = toml.replace(
        node_pods,
        &format!("pod_metadata_dir = {:?}", pods.to_string_lossy()),
    );
    let path = dir.join("connmon.toml");
    std::fs::write(&path, toml)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))?;
    Ok(path)
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `connmon run` as the pod runs it, with the ConfigMap's settings, watching
/// the test's Redis port with a short idle threshold.
fn pod_daemon(granted: &[String], pods: &Path, tag: &str) -> Result<Daemon> {
    let (command, dir) = as_nobody_in_pod(&image_file_caps()?, &setpriv_caps(granted), tag)?;
    let config = config_file(&dir, pods)?;
    let port = REDIS_PORT.to_string();
    let args = [
        "--config",
        config.to_str().context("path")?,
        "--idle-threshold",
        "2s",
        "--ports",
        &port,
    ];
    Daemon::start_command(command, &args, dir)
}

/// Capabilities the daemon warned about ("capability missing; ... degraded").
fn warned_capabilities(stderr: &[String]) -> BTreeSet<String> {
    stderr
        .iter()
        .filter(|line| line.contains("capability missing"))
        .filter_map(|line| {
            let rest = line.split_once("capability=\"")?.1;
            Some(rest.split_once('"')?.0.to_string())
        })
        .collect()
}

#[test]
fn the_daemonset_capabilities_are_exactly_what_connmon_needs() -> Result<()> {
    let granted = granted()?;
    let pods = std::env::temp_dir().join(format!("cmt-deploy-pods-{}", std::process::id()));
    std::fs::create_dir_all(&pods)?;
    let _pods_cleanup = RemoveOnDrop(pods.clone());

    // Exactly the manifest's set: a connection older than connmon, owned by
    // another user (root), goes idle, the middlebox forgets it, the next
    // request hangs: the storm names the process and its executable (read
    // from the other user's /proc).
    let mut topology = Topology::build("dpl", &Options::default())?;
    topology.start_redis()?;
    let mut client = topology.redis_client(&format!("redis://{CACHE_V4}:{REDIS_PORT}"))?;
    topology.wait_until_forgotten(Duration::from_secs(30))?;
    let connmon = pod_daemon(&granted, &pods, "dpl-all")?;
    // The one documented degradation: no CAP_SYS_ADMIN (docs/deploy.md).
    let warned = warned_capabilities(&connmon.stderr());
    assert_eq!(
        warned,
        BTreeSet::from(["CAP_SYS_ADMIN".to_string()]),
        "{:?}",
        connmon.stderr()
    );
    client.send_line("set")?;
    let storm = first_finding(
        &connmon,
        "storm_started",
        topology.app.inode(),
        Duration::from_secs(30),
    )?;
    assert_eq!(storm["pid"], client.pid(), "{storm}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", client.pid()))?;
    assert_eq!(storm["exe"], exe.to_string_lossy().as_ref(), "{storm}");
    let metrics = connmon.http_get("/metrics")?;
    assert!(
        metrics.contains("connmon_storms_started_total{"),
        "the storm is exported: {metrics}"
    );
    connmon.stop()?;
    drop(client);
    drop(topology);

    // Each one taken away is named: the required ones stop connmon, the
    // others are a warning saying what is lost.
    for missing in &granted {
        let fewer: Vec<String> = granted.iter().filter(|c| *c != missing).cloned().collect();
        let name = format!("CAP_{missing}");
        if REQUIRED.contains(&missing.as_str()) {
            let (mut command, dir) = as_nobody_in_pod(
                &image_file_caps()?,
                &setpriv_caps(&fewer),
                &format!("dpl-{}", missing.to_lowercase()),
            )?;
            let _cleanup = RemoveOnDrop(dir.clone());
            let config = config_file(&dir, &pods)?;
            command
                .args(["run", "--listen", "127.0.0.1:0", "--config"])
                .arg(&config);
            let mut process = Process::spawn("connmon run", command)?;
            let code = poll::until("connmon to exit", Duration::from_secs(30), || {
                process.try_exit_code()
            })?;
            let stderr = process.stderr.snapshot().join("\n");
            assert_ne!(code, Some(0), "without {name}: {stderr}");
            assert!(
                stderr.contains(&format!("missing capability {name}")),
                "without {name}: {stderr}"
            );
        } else {
            let connmon = pod_daemon(&fewer, &pods, &format!("dpl-{}", missing.to_lowercase()))?;
            let warned = warned_capabilities(&connmon.stderr());
            assert!(
                warned.contains(&name),
                "without {name}: {:?}",
                connmon.stderr()
            );
            connmon.stop()?;
        }
    }
    Ok(())
}
