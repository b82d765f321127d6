//! Label values and the series cap: what an owner's series are labelled
//! with, and which label sets keep a series of their own.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
};

use super::{Metrics, OTHER};
use crate::{
    attribution::ContainerByCgroup,
    event::{Connection, ProcessRef, Role},
};

/// Label sets seen per family, for the cap.
#[derive(Default)]
pub(super) struct SeenSeries(HashMap<&'static str, HashSet<Vec<String>>>);

impl SeenSeries {
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &HashSet<Vec<String>>)> {
        self.0.iter().map(|(family, sets)| (*family, sets))
    }

    pub fn of(&self, family: &str) -> Option<&HashSet<Vec<String>>> {
        self.0.get(family)
    }

    /// Frees `labels`' place under the cap.
    pub fn forget(&mut self, family: &str, labels: &[String]) {
        if let Some(sets) = self.0.get_mut(family) {
            sets.remove(labels);
        }
    }
}

impl Metrics {
    /// Applies the series cap: known label sets pass, new ones pass while
    /// the family is under the cap, the rest fold into `other` (their first
    /// `foldable` values).
    pub(super) fn capped(
        &self,
        seen: &mut SeenSeries,
        family: &'static str,
        labels: Vec<String>,
        foldable: usize,
    ) -> Vec<String> {
        let sets = seen.0.entry(family).or_default();
        if sets.contains(&labels) || sets.len() < self.series_cap {
            sets.insert(labels.clone());
            return labels;
        }
        self.families
            .series_capped
            .with_label_values(&[family])
            .inc();
        labels
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i < foldable { OTHER.to_string() } else { v })
            .collect()
    }
}

/// A process name as a label value: the process names itself, so control
/// characters are escaped.
pub(super) fn process_label(comm: &str) -> Cow<'_, str> {
    crate::output::escape::control(comm)
}

/// The watched endpoint of a connection: the far side for a client, our
/// side for a server.
pub(super) fn destination_addr(connection: &Connection, role: Role) -> std::net::SocketAddr {
    role.destination(connection.local, connection.remote)
}

/// `process`, `container`, `destination`, `role` of a watched connection's
/// owner.
pub(super) fn owner_labels(
    containers: &mut ContainerByCgroup,
    owner: Option<&ProcessRef>,
    connection: &Connection,
    role: Role,
) -> [String; 4] {
    let process = owner.map_or_else(|| "unknown".to_string(), |o| process_label(&o.comm).into());
    let container = owner
        .map(|o| containers.short_id(o.cgroup_id))
        .unwrap_or_default();
    [
        process,
        container,
        destination_addr(connection, role).to_string(),
        role.as_str().to_string(),
    ]
}

/// Label values as `with_label_values` takes them.
pub(super) fn refs(labels: &[String]) -> Vec<&str> {
    labels.iter().map(String::as_str).collect()
}
