//! The agent's own events: started and stopped, and usage thresholds (disk, memory, CPU)
//! crossed, judged on the samples the agent takes anyway.
//!
//! [`Rule::observe`] is the pure rule: a value at or above the threshold for the sustained
//! duration raises the event once; it clears only when the value falls `hysteresis` points
//! below the threshold, so a value hovering at the threshold raises one event, not one per
//! sample. Raised events carry a fingerprint, so the server counts repeats as one event.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::collector::Sample;
use crate::events::config::{EventsConfig, Threshold};
use crate::events::types::{Event, Severity};

/// Kind of the event the agent records when it starts.
pub const STARTED_KIND: &str = "tether.agent_started";
/// Kind of the event the agent records when it stops.
pub const STOPPED_KIND: &str = "tether.agent_stopped";

/// What one observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The value crossed the threshold (for long enough): raise the event.
    Raised,
    /// The value fell below the threshold minus the hysteresis: clear it.
    Cleared,
}

/// One threshold's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    threshold: Threshold,
    hysteresis: f64,
    /// When the value last went to or above the threshold, while not raised.
    above_since: Option<Instant>,
    raised: bool,
}

/// Every built-in threshold of one agent.
#[derive(Debug)]
pub struct Thresholds {
    disk: Threshold,
    hysteresis: f64,
    /// By mount point; a filesystem that disappears takes its rule with it.
    disks: HashMap<String, Rule>,
    memory: Rule,
    cpu: Rule,
}

// === impl Rule ===

impl Rule {
    pub fn new(threshold: Threshold, hysteresis: f64) -> Self {
        Self {
            threshold,
            hysteresis,
            above_since: None,
            raised: false,
        }
    }

    /// Takes one value (percent) seen at `now`.
    pub fn observe(&mut self, value: f64, now: Instant) -> Option<Transition> {
        if self.raised {
            if value < self.threshold.percent - self.hysteresis {
                self.raised = false;
                return Some(Transition::Cleared);
            }
            return None;
        }
        if value < self.threshold.percent {
            self.above_since = None;
            return None;
        }
        let since = *self.above_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.threshold.sustained {
            self.raised = true;
            self.above_since = None;
            return Some(Transition::Raised);
        }
        None
    }
}

// === impl Thresholds ===

impl Thresholds {
    pub fn new(config: &EventsConfig) -> Self {
        Self {
            disk: config.disk,
            hysteresis: config.hysteresis,
            disks: HashMap::new(),
            memory: Rule::new(config.memory, config.hysteresis),
            cpu: Rule::new(config.cpu, config.hysteresis),
        }
    }

    /// The events `sample`, taken at `now`, raises or clears.
    pub fn observe(&mut self, sample: &Sample, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        self.disks
            .retain(|mount, _| sample.disks.iter().any(|disk| &disk.mount_point == mount));
        for disk in &sample.disks {
            let Some(used) = percent(disk.used_bytes, disk.total_bytes) else {
                continue;
            };
            let rule = self
                .disks
                .entry(disk.mount_point.clone())
                .or_insert_with(|| Rule::new(self.disk, self.hysteresis));
            if let Some(transition) = rule.observe(used, now) {
                events.push(
                    threshold_event("disk", transition, used, &self.disk)
                        .with("mount_point", &disk.mount_point)
                        .fingerprint(format!("tether.disk_usage:{}", disk.mount_point)),
                );
            }
        }
        if let Some(used) = percent(sample.memory_used_bytes, sample.memory_total_bytes)
            && let Some(transition) = self.memory.observe(used, now)
        {
            events.push(
                threshold_event("memory", transition, used, &self.memory.threshold)
                    .fingerprint("tether.memory_usage"),
            );
        }
        if sample.cpu_percent.is_finite()
            && let Some(transition) = self.cpu.observe(sample.cpu_percent, now)
        {
            events.push(
                threshold_event("cpu", transition, sample.cpu_percent, &self.cpu.threshold)
                    .fingerprint("tether.cpu_usage"),
            );
        }
        events
    }
}

/// The event recorded when the agent starts.
pub fn started(version: &str, instance_id: &str) -> Event {
    Event::now(STARTED_KIND, Severity::Info, "tether-agent started")
        .with("version", version)
        .with("instance_id", instance_id)
}

/// The event recorded when the agent stops.
pub fn stopped(reason: &str) -> Event {
    Event::now(
        STOPPED_KIND,
        Severity::Info,
        format!("tether-agent stopped: {reason}"),
    )
    .with("reason", reason)
}

fn percent(used: u64, total: u64) -> Option<f64> {
    #[allow(
        clippy::cast_precision_loss,
        reason = "a percentage needs no exact bytes"
    )]
    (total > 0).then(|| used as f64 * 100.0 / total as f64)
}

fn threshold_event(what: &str, transition: Transition, value: f64, threshold: &Threshold) -> Event {
    let (kind, severity, message) = match transition {
        Transition::Raised => (
            format!("tether.{what}_usage_high"),
            Severity::Warning,
            format!(
                "{what} usage is {value:.1} %, at or above {:.1} %{}",
                threshold.percent,
                sustained(threshold.sustained)
            ),
        ),
        Transition::Cleared => (
            format!("tether.{what}_usage_normal"),
            Severity::Info,
            format!(
                "{what} usage is back to {value:.1} %, below {:.1} %",
                threshold.percent
            ),
        ),
    };
    Event::now(kind, severity, message)
        .with("used_percent", format!("{value:.1}"))
        .with("threshold_percent", format!("{:.1}", threshold.percent))
}

fn sustained(duration: Duration) -> String {
    if duration.is_zero() {
        String::new()
    } else {
        format!(" for {}", humantime::format_duration(duration))
    }
}

#[cfg(test)]
mod tests {
    use crate::collector::DiskUsage;
    use crate::events::check::check;

    use super::*;

    fn rule(percent: f64, sustained: Duration) -> Rule {
        Rule::new(Threshold { percent, sustained }, 5.0)
    }

    #[test]
    fn a_value_hovering_at_the_threshold_raises_once() {
        let start = Instant::now();
        let mut rule = rule(90.0, Duration::ZERO);
        let values = [50.0, 90.0, 89.9, 90.1, 86.0, 91.0, 85.1, 84.9, 89.0, 90.0];
        let transitions: Vec<_> = values
            .iter()
            .enumerate()
            .filter_map(|(i, &value)| {
                rule.observe(value, start + Duration::from_secs(i as u64))
                    .map(|t| (i, t))
            })
            .collect();
        assert_eq!(
            transitions,
            [
                (1, Transition::Raised),
                (7, Transition::Cleared),
                (9, Transition::Raised)
            ]
        );
    }

    #[test]
    fn sustained_means_without_a_dip() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut rule = rule(90.0, Duration::from_secs(300));
        assert_eq!(rule.observe(95.0, at(0)), None);
        assert_eq!(rule.observe(95.0, at(200)), None);
        // A dip starts the count again.
        assert_eq!(rule.observe(50.0, at(250)), None);
        assert_eq!(rule.observe(95.0, at(260)), None);
        assert_eq!(rule.observe(95.0, at(500)), None);
        assert_eq!(rule.observe(95.0, at(560)), Some(Transition::Raised));
        assert_eq!(rule.observe(99.0, at(900)), None);
    }

    #[test]
    fn samples_raise_valid_events_per_disk() {
        let start = Instant::now();
        let mut thresholds = Thresholds::new(&EventsConfig::default());
        let disk = |mount: &str, used| DiskUsage {
            mount_point: mount.into(),
            used_bytes: used,
            total_bytes: 100,
        };
        let mut sample = Sample {
            memory_used_bytes: 96,
            memory_total_bytes: 100,
            cpu_percent: 99.0,
            disks: vec![disk("/", 95), disk("/data", 10)],
            ..Sample::default()
        };
        let events = thresholds.observe(&sample, start);
        let kinds: Vec<_> = events.iter().map(|event| event.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["tether.disk_usage_high", "tether.memory_usage_high"]
        );
        for event in &events {
            check(event).expect("built-in events follow the contract");
        }
        assert_eq!(events[0].attributes["mount_point"], "/");
        sample.disks = vec![disk("/", 50)];
        let later = thresholds.observe(&sample, start + DEFAULT_CPU_FOR_TEST);
        let kinds: Vec<_> = later.iter().map(|event| event.kind.as_str()).collect();
        assert_eq!(kinds, ["tether.disk_usage_normal", "tether.cpu_usage_high"]);
        check(&started("1.0", "abc")).expect("valid");
        check(&stopped("shutdown")).expect("valid");
    }

    const DEFAULT_CPU_FOR_TEST: Duration = crate::events::config::DEFAULT_CPU_FOR;
}
