//! The simulator's output: progress events while enrolling and ramping, then one stats record
//! per interval (fleet totals, ack latency, memory, command offers and invocations), as text or
//! JSON lines on stdout and always as JSON lines in the stats file. Event figures (offered,
//! acknowledged, rejected, dropped, ack latency per event) appear with `--events-per-minute`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tracing::warn;

use super::{SimulateConfig, file_error, lock};
use crate::error::SimulateError;
use crate::latency::{ArrivalLog, LatencySnapshot};
use crate::session::Shared;

/// Writes progress and stats records.
pub(super) struct Reporter {
    json: bool,
    file: Option<Mutex<File>>,
    started: Instant,
}

/// Sums over all agents at one instant.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Totals {
    pub(super) online: u64,
    pub(super) sessions: u64,
    pub(super) failures: u64,
    pub(super) samples_sent: u64,
    pub(super) samples_acked: u64,
    pub(super) messages_sent: u64,
    /// Metrics reports the server deferred (`MetricsDeferred`).
    pub(super) deferred: u64,
    pub(super) buffered: u64,
    pub(super) dropped: u64,
    /// Agents that stopped on their own (revoked or misconfigured) while the simulation ran.
    pub(super) stopped: u64,
    pub(super) invocations_finished: u64,
    /// Events the agents reported, had acknowledged (stored or rejected), had rejected, and
    /// dropped from a full queue.
    pub(super) events_offered: u64,
    pub(super) events_acked: u64,
    pub(super) events_rejected: u64,
    pub(super) events_dropped: u64,
}

pub(super) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// This process's resident set size in KiB, from `/proc/self/status` (0 where unavailable).
pub fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

// === impl Totals ===

impl Totals {
    pub(super) fn sum(agents: &[Arc<Shared>], stopped: u64) -> Self {
        let mut totals = Self {
            stopped,
            ..Self::default()
        };
        for shared in agents {
            let stats = &shared.stats;
            totals.online += u64::from(stats.connected());
            totals.sessions += stats.sessions_started();
            totals.failures += stats.session_failures();
            totals.samples_sent += stats.samples_sent();
            totals.samples_acked += stats.samples_acked();
            totals.messages_sent += stats.messages_sent();
            totals.deferred += stats.reports_deferred();
            totals.buffered += stats.samples_buffered();
            totals.dropped += stats.samples_dropped();
            totals.invocations_finished += stats.invocations_finished();
            if let Some(counts) = shared.events.as_ref().and_then(|e| e.memory_counts()) {
                totals.events_offered += counts.offered;
                totals.events_acked += counts.settled;
                totals.events_dropped += counts.dropped;
                totals.events_rejected += stats.events_rejected();
            }
        }
        totals
    }
}

// === impl Reporter ===

impl Reporter {
    pub(super) fn new(config: &SimulateConfig) -> Result<Self, SimulateError> {
        let file = match &config.stats_file {
            Some(path) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| file_error("open", path, source))?,
            )),
            None => None,
        };
        Ok(Self {
            json: config.json,
            file,
            started: Instant::now(),
        })
    }

    pub(super) fn event(&self, event: &str, mut fields: serde_json::Value, text: &str) {
        if let Some(map) = fields.as_object_mut() {
            map.insert("event".into(), event.into());
            map.insert("t".into(), self.started.elapsed().as_secs_f64().into());
        }
        self.emit(&fields, text);
    }

    pub(super) fn stats(
        &self,
        totals: &Totals,
        interval: &LatencySnapshot,
        cumulative: &LatencySnapshot,
        events: &LatencySnapshot,
        arrivals: &ArrivalLog,
    ) {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let (p50, p99) = (ms(interval.quantile(0.5)), ms(interval.quantile(0.99)));
        let (event_p50, event_p99) = (ms(events.quantile(0.5)), ms(events.quantile(0.99)));
        let rss_kib = self_rss_kib();
        let fields = json!({
            "event": "stats",
            "t": self.started.elapsed().as_secs_f64(),
            "unix_ms": unix_ms(SystemTime::now()),
            "online": totals.online,
            "sessions": totals.sessions,
            "reconnects": totals.sessions.saturating_sub(totals.online),
            "errors": totals.failures,
            "messages_sent": totals.messages_sent,
            "samples_sent": totals.samples_sent,
            "samples_acked": totals.samples_acked,
            "samples_buffered": totals.buffered,
            "samples_dropped": totals.dropped,
            "reports_deferred": totals.deferred,
            "ack_p50_ms": p50,
            "ack_p99_ms": p99,
            "ack_total_p99_ms": ms(cumulative.quantile(0.99)),
            "ack_hist": interval.to_sparse(),
            "rss_kib": rss_kib,
            "stopped": totals.stopped,
            "offers_received": arrivals.total(),
            "offer_arrivals": arrivals.drain(),
            "invocations_finished": totals.invocations_finished,
            "events_offered": totals.events_offered,
            "events_acked": totals.events_acked,
            "events_rejected": totals.events_rejected,
            "events_dropped": totals.events_dropped,
            "event_ack_p50_ms": event_p50,
            "event_ack_p99_ms": event_p99,
            "event_ack_hist": events.to_sparse(),
        });
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
        let events_text = if totals.events_offered > 0 {
            format!(
                " | events {} offered, {} acked ({} rejected, {} dropped), ack p50 {} p99 {}",
                totals.events_offered,
                totals.events_acked,
                totals.events_rejected,
                totals.events_dropped,
                fmt(event_p50),
                fmt(event_p99)
            )
        } else {
            String::new()
        };
        let text = format!(
            "online {} | sent {} msgs, {} samples | acked {} | ack p50 {} p99 {} | reconnects {} | errors {} | stopped {} | offers {}, finished {} | rss {} MiB{events_text}",
            totals.online,
            totals.messages_sent,
            totals.samples_sent,
            totals.samples_acked,
            fmt(p50),
            fmt(p99),
            totals.sessions.saturating_sub(totals.online),
            totals.failures,
            totals.stopped,
            arrivals.total(),
            totals.invocations_finished,
            rss_kib / 1024
        );
        self.emit(&fields, &text);
    }

    fn emit(&self, fields: &serde_json::Value, text: &str) {
        let line = fields.to_string();
        if let Some(file) = &self.file {
            // One write per line: several simulators may append to the same file, and a line
            // split over two writes can interleave with another's.
            let mut record = Vec::with_capacity(line.len() + 1);
            record.extend_from_slice(line.as_bytes());
            record.push(b'\n');
            let mut file = lock(file);
            if let Err(err) = file.write_all(&record) {
                warn!("failed to write the stats file: {err}");
            }
        }
        let mut stdout = std::io::stdout().lock();
        let written = if self.json {
            writeln!(stdout, "{line}")
        } else {
            writeln!(
                stdout,
                "[{:>7.1}s] {text}",
                self.started.elapsed().as_secs_f64()
            )
        };
        // A closed stdout (e.g. the benchmark went away) is not a reason to stop simulating.
        let _ = written.and_then(|()| stdout.flush());
    }
}
