//! The simulated agents' events (`--events-per-minute`): each agent reports events at a steady
//! rate, from a random phase so that the fleet's events spread over time, into its in-memory
//! queue (`events::memory`); the real session sends them as `EventReport`s and applies the
//! server's `EventAck`s.
//!
//! The mix looks like a fleet of servers and sensors: dotted kinds from failed logins to
//! honeypot probes, every severity (about 40 % info, 30 % warning, 25 % error, 5 % critical), a
//! few attributes each, and about a third carrying a fingerprint drawn from a small set per
//! agent, so that the server's fingerprint window folds repeats into one stored event.
//! Deterministic per agent index and event number.

use std::convert::Infallible;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::events::{Event, Events, Severity};

/// Most events a simulated agent keeps while the server has not acknowledged them; more are
/// dropped and counted (about 200 bytes each).
pub(super) const QUEUE_CAPACITY: usize = 4096;

/// Reports one event every `60 / per_minute` seconds into `events`, forever.
pub(super) async fn emit_forever(events: &Events, per_minute: f64, index: usize) -> Infallible {
    let period = Duration::from_secs_f64(60.0 / per_minute);
    let phase = period.mul_f64(unit(mix(index as u64, u64::MAX)));
    let mut ticks = tokio::time::interval_at(Instant::now() + phase, period);
    // A simulator that fell behind catches up: the offered rate stays the configured one.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut n = 0_u64;
    loop {
        ticks.tick().await;
        events.record_logged(event(index, n)).await;
        n += 1;
    }
}

/// Event `n` of agent `index`, happening now.
pub(super) fn event(index: usize, n: u64) -> Event {
    let r = mix(index as u64, n);
    let pick = |shift: u32, len: u64| ((r >> shift) % len) as usize;
    // A small set per agent, so that fingerprints repeat within the server's window.
    let source = format!("203.0.113.{}", 1 + (index + pick(8, 4)) % 254);
    match r % 20 {
        // 30 %: failed logins, repeated by source (fingerprinted).
        0..=5 => Event::now(
            "ssh.login_failed",
            Severity::Warning,
            format!("failed password for {} from {source}", USERS[pick(16, 4)]),
        )
        .with("user", USERS[pick(16, 4)])
        .with("source_ip", &source)
        .with("port", 22)
        .fingerprint(format!("ssh.login_failed/{source}")),
        // 35 %: honeypot probes, each one new.
        6..=12 => Event::now(
            "honeypot.probe",
            Severity::Info,
            format!("probe from {source}"),
        )
        .with("protocol", PROTOCOLS[pick(24, 4)])
        .with("port", PORTS[pick(32, 4)])
        .with("source_ip", &source),
        // 25 %: services crashing.
        13..=17 => Event::now(
            "service.crashed",
            Severity::Error,
            format!("{} exited unexpectedly", SERVICES[pick(40, 4)]),
        )
        .with("service", SERVICES[pick(40, 4)])
        .with("exit_code", 1 + pick(48, 127)),
        // 5 %: services restarted by their supervisor.
        18 => Event::now(
            "service.restarted",
            Severity::Info,
            format!("{} restarted", SERVICES[pick(40, 4)]),
        )
        .with("service", SERVICES[pick(40, 4)]),
        // 5 %: a full disk (fingerprinted by mount), or a process killed for memory.
        _ if pick(56, 2) == 0 => Event::now("disk.full", Severity::Critical, "/var is 97 % full")
            .with("mount", "/var")
            .with("used_percent", 97)
            .fingerprint("disk.full//var"),
        _ => Event::now(
            "kernel.oom_kill",
            Severity::Critical,
            format!("out of memory: killed {}", SERVICES[pick(40, 4)]),
        )
        .with("process", SERVICES[pick(40, 4)]),
    }
}

const USERS: [&str; 4] = ["root", "admin", "ubuntu", "oracle"];
const PROTOCOLS: [&str; 4] = ["ssh", "telnet", "http", "smb"];
const PORTS: [u16; 4] = [22, 23, 80, 445];
const SERVICES: [&str; 4] = ["nginx", "postgres", "sshd", "cron"];

/// A well-spread 64-bit value of `(a, b)` (splitmix64 of their mix).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `x` as a fraction in [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_spans_every_severity_with_valid_events_and_repeats() {
        let events: Vec<Event> = (0..50)
            .flat_map(|index| (0..40).map(move |n| event(index, n)))
            .collect();
        let share = |severity: Severity| {
            events.iter().filter(|e| e.severity == severity).count() as f64 / events.len() as f64
        };
        assert!((0.3..0.45).contains(&share(Severity::Info)), "info");
        assert!((0.22..0.38).contains(&share(Severity::Warning)), "warning");
        assert!((0.18..0.32).contains(&share(Severity::Error)), "error");
        assert!(
            (0.02..0.09).contains(&share(Severity::Critical)),
            "critical"
        );
        for e in &events {
            assert!(tether_proto::event::is_valid_kind(&e.kind), "{}", e.kind);
            assert!(!e.attributes.is_empty());
        }
        let fingerprinted: Vec<&String> = events
            .iter()
            .filter_map(|e| e.fingerprint.as_ref())
            .collect();
        let distinct: std::collections::HashSet<_> = fingerprinted.iter().collect();
        assert!(fingerprinted.len() > events.len() / 4);
        assert!(
            distinct.len() < fingerprinted.len() / 2,
            "fingerprints repeat"
        );
        let (a, b) = (event(7, 3), event(7, 3));
        assert_eq!(
            (a.kind, a.attributes, a.fingerprint),
            (b.kind, b.attributes, b.fingerprint)
        );
    }
}
