//! The SVG chart (hand-written, no plotting dependency).

use std::fmt::Write as _;

use super::{Results, stats::median};
use crate::bench::peers::Tool;

/// Two panels: kernel ns per retransmit event per tool (log scale, with
/// the target), and throughput with each tool attached.
pub fn chart(results: &Results) -> String {
    let tools: Vec<Tool> = Tool::ALL.into_iter().filter(|t| *t != Tool::None).collect();
    let (width, row, left, top) = (900.0, 26.0, 330.0, 60.0);
    let panel_a = top + row * tools.len() as f64 + 40.0;
    let mut rows_b: Vec<(String, Option<f64>)> = tools
        .iter()
        .map(|t| {
            (
                format!("iperf3 retransmits: {}", t.short()),
                results.throughput_ratio(*t),
            )
        })
        .collect();
    rows_b.push((
        "redis keep-alive: connmon".into(),
        results.redis_throughput_ratio(true),
    ));
    rows_b.push((
        "redis new conn/request: connmon".into(),
        results.redis_throughput_ratio(false),
    ));
    let top_b = panel_a + 50.0;
    let height = top_b + row * rows_b.len() as f64 + 50.0;
    let plot = width - left - 80.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#fff"/><text x="10" y="24" font-size="16" font-weight="bold">Kernel time per retransmit event (ns, log scale; median) — the dashed line is an empty program on the same hook</text>"##
    );
    // Log axis 10 ns .. 100 µs.
    let (lo, hi) = (1.0f64, 5.0f64);
    let x_of = |ns: f64| left + (ns.max(10.0).log10() - lo) / (hi - lo) * plot;
    for decade in 1..=5 {
        let x = x_of(10f64.powi(decade));
        let label = match decade {
            1 => "10 ns",
            2 => "100 ns",
            3 => "1 µs",
            4 => "10 µs",
            _ => "100 µs",
        };
        grid_line(&mut svg, x, (top - 10.0, panel_a - 30.0), top - 14.0, label);
    }
    for (i, tool) in tools.iter().enumerate() {
        let y = top + i as f64 * row;
        let bar = median(results.retransmit_ns(*tool)).map(|ns| (x_of(ns), format!("{ns:.0} ns")));
        bar_row(&mut svg, (left, y), tool.short(), tool.is_connmon(), bar);
    }
    // The empty program on the same hook: the floor connmon is held to.
    if let Some(floor) = median(results.retransmit_floor_ns(Tool::ConnmonEvents)) {
        let floor_x = x_of(floor);
        let _ = writeln!(
            svg,
            r##"<line x1="{floor_x}" y1="{}" x2="{floor_x}" y2="{}" stroke="#c33" stroke-dasharray="4 3"/><text x="{floor_x}" y="{}" fill="#c33" text-anchor="middle">empty program {floor:.0} ns</text>"##,
            top - 6.0,
            panel_a - 30.0,
            panel_a - 16.0
        );
    }

    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-size="16" font-weight="bold">Throughput with the tool attached / without (median, %)</text>"#,
        top_b - 26.0
    );
    let x_pct = |pct: f64| left + pct.clamp(0.0, 110.0) / 110.0 * plot;
    for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let x = x_pct(pct);
        let bottom = top_b + row * rows_b.len() as f64;
        grid_line(
            &mut svg,
            x,
            (top_b - 6.0, bottom),
            bottom + 16.0,
            &format!("{pct:.0} %"),
        );
    }
    for (i, (label, ratio)) in rows_b.iter().enumerate() {
        let y = top_b + i as f64 * row;
        let bar = ratio.map(|ratio| {
            let pct = ratio * 100.0;
            (x_pct(pct), format!("{pct:.1} %"))
        });
        bar_row(&mut svg, (left, y), label, label.contains("connmon"), bar);
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

/// A vertical grid line from `y1` to `y2` at `x`, labelled at `label_y`.
fn grid_line(svg: &mut String, x: f64, (y1, y2): (f64, f64), label_y: f64, label: &str) {
    let _ = writeln!(
        svg,
        r##"<line x1="{x}" y1="{y1}" x2="{x}" y2="{y2}" stroke="#ddd"/><text x="{x}" y="{label_y}" text-anchor="middle" fill="#555">{label}</text>"##,
    );
}

/// One row of a panel whose plot starts at `left`: its label before the
/// plot and, with a value, a bar to x `end` labelled with it (connmon's
/// in green).
fn bar_row(
    svg: &mut String,
    (left, y): (f64, f64),
    label: &str,
    connmon: bool,
    bar: Option<(f64, String)>,
) {
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
        left - 8.0,
        y + 15.0
    );
    let Some((end, value)) = bar else {
        return;
    };
    let color = if connmon { "#2a7" } else { "#888" };
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{}" width="{:.1}" height="18" fill="{color}"/><text x="{:.1}" y="{}">{value}</text>"#,
        y + 2.0,
        (end - left).max(1.0),
        end + 6.0,
        y + 15.0
    );
}
