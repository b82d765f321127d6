//! Containers and pods from a cgroup path.
//!
//! Covers the layouts of containerd, CRI-O, Docker and Podman under the
//! systemd and cgroupfs drivers, cgroup v2 and v1. Pure string parsing.

use serde::Serialize;

/// What a cgroup path says about the workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Full container id (64 hex digits).
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker` or `podman`, when the path says.
    pub runtime: Option<&'static str>,
    /// Kubernetes pod UID, dashed.
    pub pod_uid: Option<String>,
    /// The systemd unit (`redis-server.service`) for host services.
    pub systemd_unit: Option<String>,
}

/// A container id as labels and people see it: its first 12 hex digits, as
/// `docker ps` and `crictl ps` show it.
pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Parses a cgroup path such as
/// `/kubepods.slice/.../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
pub fn workload(path: &str) -> Workload {
    let mut workload = Workload::default();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if let Some(uid) = pod_uid(segment) {
            workload.pod_uid = Some(uid);
            continue;
        }
        if let Some((runtime, id)) = container(segment) {
            workload.runtime = runtime.or(workload.runtime);
            workload.container_id = Some(id);
            continue;
        }
        if segment.ends_with(".service") {
            workload.systemd_unit = Some(segment.to_string());
        }
    }
    // A container inside a pod under the cgroupfs driver has no prefix to
    // say which runtime; under /docker/ it is Docker.
    if workload.runtime.is_none() && workload.container_id.is_some() && path.contains("/docker/") {
        workload.runtime = Some("docker");
    }
    if workload.container_id.is_some() {
        workload.systemd_unit = None;
    }
    workload
}

/// `kubepods-burstable-pod1234_5678.slice` or `pod1234-5678` -> dashed UID.
fn pod_uid(segment: &str) -> Option<String> {
    let body = segment.strip_suffix(".slice").unwrap_or(segment);
    let start = body.rfind("pod")?;
    // "pod" must start the segment or follow a dash (not e.g. "ipod").
    if start != 0 && !body[..start].ends_with('-') {
        return None;
    }
    let uid = body[start + 3..].replace('_', "-");
    let hex_and_dashes = uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    (uid.len() == 36 && hex_and_dashes && uid.matches('-').count() == 4).then_some(uid)
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
/// `libpod-<id>.scope`, or a bare 64-hex id.
fn container(segment: &str) -> Option<(Option<&'static str>, String)> {
    let body = segment.strip_suffix(".scope").unwrap_or(segment);
    let (runtime, id) = if let Some(id) = body.strip_prefix("cri-containerd-") {
        (Some("containerd"), id)
    } else if let Some(id) = body.strip_prefix("crio-conmon-") {
        // CRI-O's monitor process, not the container itself.
        let _ = id;
        return None;
    } else if let Some(id) = body.strip_prefix("crio-") {
        (Some("cri-o"), id)
    } else if let Some(id) = body.strip_prefix("docker-") {
        (Some("docker"), id)
    } else if let Some(id) = body.strip_prefix("libpod-") {
        (Some("podman"), id)
    } else {
        (None, body)
    };
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| (runtime, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2c1b0e9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa0099";
    const UID: &str = "0d5e8c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6";

    /// path, container id, runtime, pod uid, systemd unit
    type Row = (
        String,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );

    /// Real-world path shapes (ids and uids replaced).
    #[test]
    fn parses_real_world_cgroup_paths() {
        let uid_underscored = UID.replace('-', "_");
        let table: Vec<Row> = vec![
            // containerd, systemd driver, cgroup v2
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_underscored}.slice/cri-containerd-{ID}.scope"
                ),
                Some(ID),
                Some("containerd"),
                Some(UID),
                None,
            ),
            // CRI-O, systemd driver, guaranteed QoS
            (
                format!("/kubepods.slice/kubepods-pod{uid_underscored}.slice/crio-{ID}.scope"),
                Some(ID),
                Some("cri-o"),
                Some(UID),
                None,
            ),
            // cgroupfs driver (v1 and v2)
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                Some(ID),
                None,
                Some(UID),
                None,
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                Some(ID),
                None,
                Some(UID),
                None,
            ),
            // Docker, v1 and v2
            (
                format!("/docker/{ID}"),
                Some(ID),
                Some("docker"),
                None,
                None,
            ),
            (
                format!("/system.slice/docker-{ID}.scope"),
                Some(ID),
                Some("docker"),
                None,
                None,
            ),
            // Podman, rootful and rootless
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                Some(ID),
                Some("podman"),
                None,
                None,
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                Some(ID),
                Some("podman"),
                None,
                None,
            ),
            // Host services and sessions
            (
                "/system.slice/redis-server.service".into(),
                None,
                None,
                None,
                Some("redis-server.service"),
            ),
            (
                "/user.slice/user-0.slice/session-3.scope".into(),
                None,
                None,
                None,
                None,
            ),
            ("/".into(), None, None, None, None),
            // Look-alikes that are not containers or pods
            (
                "/system.slice/ipod-sync.service".into(),
                None,
                None,
                None,
                Some("ipod-sync.service"),
            ),
            (
                format!("/kubepods.slice/crio-conmon-{ID}.scope"),
                None,
                None,
                None,
                None,
            ),
            ("/docker/not-an-id".into(), None, None, None, None),
        ];
        for (path, id, runtime, uid, unit) in table {
            let parsed = workload(&path);
            assert_eq!(parsed.container_id.as_deref(), id, "{path}");
            assert_eq!(parsed.runtime, runtime, "{path}");
            assert_eq!(parsed.pod_uid.as_deref(), uid, "{path}");
            assert_eq!(parsed.systemd_unit.as_deref(), unit, "{path}");
        }
    }
}
