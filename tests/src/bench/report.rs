//! The benchmark's results: one row per figure, printed as a table (scenario | figure | target |
//! pass/fail) and optionally written as JSON with a description of the machine.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::Args;
use crate::observe::unix_ms;

/// One row of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) figure: String,
    pub(crate) target: String,
    pub(crate) pass: Option<bool>,
    pub(crate) values: Value,
}

/// Results collected so far (kept on error so a partial table still prints).
#[derive(Default)]
pub(crate) struct Results {
    pub(crate) rows: Vec<Row>,
}

pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The machine's load averages over 1, 5 and 15 minutes (`/proc/loadavg`): on a shared
/// machine, what else ran beside the benchmark.
pub(crate) fn loadavg() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(raw.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

pub(crate) fn pass_str(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "pass",
        Some(false) => "FAIL",
        None => "report",
    }
}

pub(crate) fn print_table(rows: &[Row]) {
    if rows.is_empty() {
        println!("no results");
        return;
    }
    println!("| scenario | figure | target | result |");
    println!("|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.scenario,
            row.figure,
            row.target,
            pass_str(row.pass)
        );
    }
}

pub(crate) fn write_json(
    path: &Path,
    args: &Args,
    rows: &[Row],
    error: Option<&anyhow::Error>,
) -> anyhow::Result<()> {
    let machine = json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total": std::fs::read_to_string("/proc/meminfo").ok()
            .and_then(|m| m.lines().next().map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        "unix_time": unix_ms(SystemTime::now()) / 1000,
        "loadavg_at_end": loadavg(),
    });
    let value = json!({
        "machine": machine,
        "args": format!("{args:?}"),
        "error": error.map(|e| format!("{e:#}")),
        "results": rows.iter().map(|r| json!({
            "scenario": r.scenario, "figure": r.figure, "target": r.target,
            "pass": r.pass, "values": r.values,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(path, serde_json::to_string_pretty(&value)?)
        .with_context(|| format!("write {}", path.display()))
}
