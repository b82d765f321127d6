//! Pod name and namespace for a pod UID, without talking to the API server:
//! the kubelet names each pod's log directory
//! `/var/log/pods/<namespace>_<name>_<uid>` on every node. Scanned when a
//! UID is not known yet, at most once per refresh interval; never per event.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

pub struct PodDirectory {
    root: PathBuf,
    by_uid: HashMap<String, PodRef>,
    scanned_at: Option<Instant>,
    refresh: Duration,
}

impl PodDirectory {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            by_uid: HashMap::new(),
            scanned_at: None,
            refresh: Duration::from_secs(30),
        }
    }

    pub fn lookup(&mut self, uid: &str) -> Option<PodRef> {
        if let Some(pod) = self.by_uid.get(uid) {
            return Some(pod.clone());
        }
        if self
            .scanned_at
            .is_some_and(|at| at.elapsed() < self.refresh)
        {
            return None;
        }
        self.scan();
        self.by_uid.get(uid).cloned()
    }

    fn scan(&mut self) {
        self.scanned_at = Some(Instant::now());
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        self.by_uid = entries
            .filter_map(|entry| parse_pod_dir(entry.ok()?.file_name().to_str()?))
            .collect();
    }
}

/// `<namespace>_<name>_<uid>`: neither namespaces nor pod names may contain
/// `_`, so the split is unambiguous.
pub fn parse_pod_dir(name: &str) -> Option<(String, PodRef)> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || namespace.is_empty() || pod.is_empty() || uid.len() != 36 {
        return None;
    }
    Some((
        uid.to_string(),
        PodRef {
            namespace: namespace.to_string(),
            name: pod.to_string(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_log_directory_names() {
        let (uid, pod) =
            parse_pod_dir("payments_invite-svc-7d9f8b-x2x4q_0d5e8c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6")
                .expect("valid");
        assert_eq!(uid, "0d5e8c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6");
        assert_eq!(
            pod,
            PodRef {
                namespace: "payments".into(),
                name: "invite-svc-7d9f8b-x2x4q".into()
            }
        );
        assert_eq!(parse_pod_dir("not-a-pod-dir"), None);
        assert_eq!(parse_pod_dir("a_b_c_d"), None);
    }

    #[test]
    fn looks_pods_up_in_a_directory_and_rescans_for_new_ones() {
        let root = std::env::temp_dir().join(format!("connmon-pods-{}", std::process::id()));
        let uid = "0d5e8c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
        std::fs::create_dir_all(root.join(format!("default_web_{uid}"))).expect("mkdir");
        let mut pods = PodDirectory::new(&root);
        assert_eq!(pods.lookup(uid).map(|p| p.name), Some("web".into()));
        assert_eq!(pods.lookup("11111111-1b2c-4d5e-8f90-a1b2c3d4e5f6"), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
