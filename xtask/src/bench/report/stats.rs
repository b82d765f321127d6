//! Summaries of a series of rounds: the median, the range, and how they
//! read in the report.

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

pub(super) fn range(values: &[f64]) -> Option<(f64, f64)> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let min = finite.iter().copied().reduce(f64::min)?;
    let max = finite.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

pub(super) fn show(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "–".into(),
    }
}

/// `median (min–max)` of a series.
pub(super) fn spread(values: &[f64], decimals: usize) -> String {
    match (median(values.to_vec()), range(values)) {
        (Some(m), Some((lo, hi))) if values.len() > 1 => {
            format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
        }
        (Some(m), _) => format!("{m:.decimals$}"),
        _ => "–".into(),
    }
}

/// A signed spread: `+0.4 (-1.2–+2.0)`.
pub(super) fn signed_spread(values: &[f64]) -> String {
    let Some(mid) = median(values.to_vec()) else {
        return "–".into();
    };
    match range(values) {
        Some((lo, hi)) if values.len() > 1 => format!("{mid:+.1} ({lo:+.1}–{hi:+.1})"),
        _ => format!("{mid:+.1}"),
    }
}
