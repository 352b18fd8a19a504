//! Test events: a fixed pseudo-random spread of occurrences over agents, kinds, severities
//! and hours, as reports the bulk loader stores exactly as the events task would, and the
//! list of what was sent for brute-force counts.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use super::keys::{NewEvent, Severity};
use super::task::Report;
use crate::domain::{AgentId, OrgId};

/// An event of `kind` at `time_ms`, its message naming the kind and seq.
pub fn event(
    seq: u64,
    time_ms: u64,
    kind: &str,
    severity: Severity,
    fingerprint: &str,
) -> NewEvent {
    NewEvent {
        seq,
        time: UNIX_EPOCH + Duration::from_millis(time_ms),
        kind: kind.to_owned(),
        severity,
        message: format!("{kind} #{seq}"),
        attributes: BTreeMap::new(),
        fingerprint: fingerprint.to_owned(),
    }
}

pub const KINDS: [&str; 6] = [
    "ssh",
    "ssh.login_failed",
    "ssh.root",
    "disk.full",
    "app.crash",
    "sshd.started",
];

/// One occurrence as sent.
#[derive(Clone, Debug)]
pub struct Sent {
    pub agent: AgentId,
    pub kind: &'static str,
    pub severity: Severity,
    pub time_ms: u64,
}

/// A fixed pseudo-random sequence (the same every run).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// `n` occurrences in `[start_ms, start_ms + span_ms)` from `agents` agents (`ag-0`, …), as
/// one report per agent whose seqs follow `first_seq`. Some repeat a fingerprint: stored as
/// one event, counted as every occurrence.
pub fn reports(
    org: &OrgId,
    agents: u64,
    n: u64,
    start_ms: u64,
    span_ms: u64,
    first_seq: u64,
    rng: &mut Lcg,
) -> (Vec<Report>, Vec<Sent>) {
    let mut by_agent: BTreeMap<u64, Vec<NewEvent>> = BTreeMap::new();
    let mut sent = Vec::new();
    for _ in 0..n {
        let a = rng.next(agents);
        let kind = KINDS[usize::try_from(rng.next(KINDS.len() as u64)).expect("small")];
        let severity = Severity::ALL[usize::try_from(rng.next(4)).expect("small")];
        let time_ms = start_ms + rng.next(span_ms);
        let events = by_agent.entry(a).or_default();
        let seq = first_seq + events.len() as u64 + 1;
        let fingerprint = if rng.next(5) == 0 { "fp" } else { "" };
        events.push(event(seq, time_ms, kind, severity, fingerprint));
        sent.push(Sent {
            agent: AgentId::new(format!("ag-{a}")),
            kind,
            severity,
            time_ms,
        });
    }
    let reports = by_agent
        .into_iter()
        .map(|(a, events)| Report {
            org: org.clone(),
            agent: AgentId::new(format!("ag-{a}")),
            max_seq: events.last().map_or(0, |e| e.seq),
            events,
        })
        .collect();
    (reports, sent)
}
