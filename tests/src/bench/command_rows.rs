//! What the `commands` phase sends and how it reports it: the requests, the [`Round`] one
//! command makes (timings, offer latencies, its end), and their text and JSON forms.

use serde_json::{Value, json};
use tether_proto as pb;

use crate::report::quantile;

/// Label every agent of this phase carries; the commands select it.
pub(crate) const GROUP: &str = "group=cmd";
/// Labels of the simulators: the group, and a tenth of the agents in each `part`.
pub(crate) const LABEL_MIX: &str = "group=cmd,part=0|1|2|3|4|5|6|7|8|9";
/// The agents of the first `tenths` parts (a tenth of the fleet each), the rollout's targets.
pub(crate) fn parts(tenths: u8) -> String {
    match tenths {
        0 | 1 => "group=cmd,part=0".to_owned(),
        10.. => GROUP.to_owned(),
        n => (n..10).fold(GROUP.to_owned(), |selector, part| {
            format!("{selector},part!={part}")
        }),
    }
}

/// What one command did.
pub(crate) struct Round {
    pub(crate) command: pb::Command,
    /// From the call to the answer of `SendCommand`.
    pub(crate) send_ms: f64,
    /// From the call until `GetCommand` showed it finished (NaN if it did not in time).
    pub(crate) stored_secs: f64,
    /// Whether it finished within the phase's limit.
    pub(crate) finished: bool,
    /// Per offer, from the call until it reached its agent.
    pub(crate) offer_ms: Vec<f64>,
}

/// `noop` to the agents `selector` matches, with `max_concurrency` if given.
pub(crate) fn noop(selector: &str, max_concurrency: Option<u32>) -> pb::SendCommandRequest {
    pb::SendCommandRequest {
        spec: Some(pb::CommandSpec {
            kind: Some(pb::command_spec::Kind::Noop(pb::NoopSpec {})),
        }),
        targets: Some(targets(selector)),
        rollout: Some(pb::RolloutPolicy {
            max_concurrency: max_concurrency.map(count),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn targets(selector: &str) -> pb::CommandTargets {
    pb::CommandTargets {
        label_selector: selector.to_owned(),
        ..Default::default()
    }
}

pub(crate) fn count(n: u32) -> pb::Budget {
    pb::Budget {
        value: Some(pb::budget::Value::Count(n)),
    }
}

pub(crate) fn seconds(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

pub(crate) fn succeeded(round: &Round, n: usize) -> bool {
    round.command.state == pb::CommandState::Succeeded as i32
        && round.command.counts.as_ref().map(|c| c.succeeded as usize) == Some(n)
}

/// The states of rounds that did not all succeed.
pub(crate) fn outcome(rounds: &[Round]) -> String {
    let parts: Vec<String> = rounds
        .iter()
        .map(|r| {
            let end = if r.finished {
                "finished"
            } else {
                "NOT finished in time"
            };
            format!("{end}: {}", counts_text(&r.command))
        })
        .collect();
    format!("NOT all succeeded: {}", parts.join("; "))
}

/// The non-zero counts of a command's invocations, e.g. `offered 3, succeeded 7 of 10`.
pub(crate) fn counts_text(command: &pb::Command) -> String {
    let c = command.counts.unwrap_or_default();
    let parts: Vec<String> = [
        ("queued", c.queued),
        ("offered", c.offered),
        ("running", c.running),
        ("succeeded", c.succeeded),
        ("failed", c.failed),
        ("timed out", c.timed_out),
        ("cancelled", c.cancelled),
        ("delivery timed out", c.delivery_timed_out),
        ("rejected", c.rejected),
        ("skipped", c.skipped),
        ("agent deleted", c.agent_deleted),
        ("agent restarted", c.agent_restarted),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, n)| format!("{name} {n}"))
    .collect();
    format!("{} of {}", parts.join(", "), c.total)
}

pub(crate) fn counts_json(command: &pb::Command) -> Value {
    command.counts.as_ref().map_or(Value::Null, |c| {
        json!({"total": c.total, "succeeded": c.succeeded, "failed": c.failed,
            "rejected": c.rejected, "delivery_timed_out": c.delivery_timed_out,
            "timed_out": c.timed_out, "skipped": c.skipped, "cancelled": c.cancelled,
            "agent_restarted": c.agent_restarted})
    })
}

pub(crate) fn rounds_json(rounds: &[Round], offers: &[f64], cpu: f64) -> Value {
    json!({
        "offers": offers.len(),
        "offer_p50_ms": quantile(offers, 0.5),
        "offer_p99_ms": quantile(offers, 0.99),
        "offer_max_ms": quantile(offers, 1.0),
        "server_cpu_secs": cpu,
        "rounds": rounds.iter().map(|r| json!({
            "command_id": r.command.command_id,
            "send_ms": r.send_ms,
            "stored_secs": r.stored_secs,
            "offers": r.offer_ms.len(),
            "offer_p50_ms": quantile(&r.offer_ms, 0.5),
            "offer_p99_ms": quantile(&r.offer_ms, 0.99),
            "offer_max_ms": quantile(&r.offer_ms, 1.0),
            "counts": counts_json(&r.command),
        })).collect::<Vec<_>>(),
    })
}
