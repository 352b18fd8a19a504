use std::time::{Duration, SystemTime};

use tether_proto::selector::Selector;

use super::*;
use crate::alert::rule::{RuleKind, RuleSource};
use crate::domain::OrgId;

const MINUTE: Duration = Duration::from_secs(60);

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn state(kind: RuleKind) -> RuleState {
    let rule = Rule {
        org: OrgId::new("o"),
        name: "r".to_owned(),
        kind,
        selector: String::new(),
        hold: MINUTE,
        webhook: None,
        summary: String::new(),
        source: RuleSource::Api,
        created_at: t(0),
    };
    RuleState::new(rule, Selector::default())
}

fn silent(id: &str, since: SystemTime) -> Candidate {
    Candidate {
        id: AgentId::new(id),
        name: format!("host-{id}"),
        status: AgentStatus::Offline,
        since,
    }
}

/// Decides and, as the caller does after its commit, applies.
fn step(
    state: &mut RuleState,
    seen: &Observation,
    now: SystemTime,
    started: SystemTime,
) -> Decision {
    let decision = decide(state, seen, now, started);
    state.apply(&decision);
    decision
}

#[test]
fn an_agent_silent_for_the_hold_time_fires_once_and_resolves_when_it_is_back() {
    let mut s = state(RuleKind::AgentOffline);
    let seen = Observation::Agents(vec![silent("a", t(100))]);
    assert_eq!(step(&mut s, &seen, t(159), t(0)), Decision::default());
    let fired = step(&mut s, &seen, t(160), t(0)).fired;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].agent, Some(AgentId::new("a")));
    assert_eq!(fired[0].agent_name, "host-a");
    assert_eq!(fired[0].state, AlertState::Firing);
    assert!(
        fired[0].description.contains("no message for 1m"),
        "{}",
        fired[0].description
    );
    // Still silent: nothing new.
    assert_eq!(step(&mut s, &seen, t(500), t(0)), Decision::default());
    let back = step(&mut s, &Observation::Agents(vec![]), t(501), t(0));
    assert_eq!(back.resolved.len(), 1);
    assert_eq!(back.resolved[0].id, fired[0].id);
    assert_eq!(back.resolved[0].ends_at, Some(t(501)));
    assert!(s.firing.is_empty());
}

#[test]
fn silence_is_counted_from_the_start_and_a_loaded_alert_does_not_fire_again() {
    let mut s = state(RuleKind::AgentOffline);
    // Silent for an hour, but the server has run for 10 s: not yet.
    let seen = Observation::Agents(vec![silent("a", t(0)), silent("b", t(0))]);
    assert_eq!(step(&mut s, &seen, t(3600), t(3590)), Decision::default());
    // An alert stored before the restart is firing again, untouched.
    let stored = decide(&mut state(RuleKind::AgentOffline), &seen, t(60), t(0)).fired;
    s.firing.insert(Some(AgentId::new("a")), stored[0].clone());
    assert_eq!(step(&mut s, &seen, t(3600), t(3590)), Decision::default());
    // b fires once the server has seen it silent for the hold time.
    let fired = step(&mut s, &seen, t(3650), t(3590)).fired;
    assert_eq!(
        fired.iter().map(|a| a.agent.clone()).collect::<Vec<_>>(),
        [Some(AgentId::new("b"))]
    );
}

#[test]
fn critical_must_hold_for_the_hold_time_as_seen_by_evaluation() {
    let mut s = state(RuleKind::HealthCritical);
    let seen = Observation::Agents(vec![silent("a", t(0))]);
    assert_eq!(step(&mut s, &seen, t(10), t(0)), Decision::default());
    // Recovered in between: the clock starts again.
    assert_eq!(
        step(&mut s, &Observation::Agents(vec![]), t(40), t(0)),
        Decision::default()
    );
    assert_eq!(step(&mut s, &seen, t(50), t(0)), Decision::default());
    assert_eq!(step(&mut s, &seen, t(100), t(0)), Decision::default());
    assert_eq!(step(&mut s, &seen, t(110), t(0)).fired.len(), 1);
    assert_eq!(
        step(&mut s, &Observation::Agents(vec![]), t(120), t(0))
            .resolved
            .len(),
        1
    );
}

#[test]
fn the_online_ratio_fires_below_its_threshold_for_the_hold_time() {
    let mut s = state(RuleKind::OnlineRatioBelow { min_ratio: 0.9 });
    let low = Observation::Ratio {
        online: 8,
        total: 10,
    };
    let fine = Observation::Ratio {
        online: 9,
        total: 10,
    };
    let empty = Observation::Ratio {
        online: 0,
        total: 0,
    };
    assert_eq!(step(&mut s, &empty, t(0), t(0)), Decision::default());
    assert_eq!(step(&mut s, &fine, t(0), t(0)), Decision::default());
    assert_eq!(step(&mut s, &low, t(10), t(0)), Decision::default());
    let fired = step(&mut s, &low, t(70), t(0)).fired;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].agent, None);
    assert!(
        fired[0].description.contains("8 of 10"),
        "{}",
        fired[0].description
    );
    assert_eq!(step(&mut s, &low, t(80), t(0)), Decision::default());
    assert_eq!(step(&mut s, &fine, t(90), t(0)).resolved.len(), 1);
}

#[test]
fn a_rule_fires_at_most_its_maximum_and_counts_the_rest() {
    let mut s = state(RuleKind::AgentOffline);
    let many: Vec<Candidate> = (0..MAX_FIRING_PER_RULE + 5)
        .map(|i| silent(&format!("a{i:05}"), t(0)))
        .collect();
    let decision = step(&mut s, &Observation::Agents(many), t(100), t(0));
    assert_eq!(decision.fired.len(), MAX_FIRING_PER_RULE);
    assert_eq!(decision.suppressed, 5);
    assert_eq!(s.firing.len(), MAX_FIRING_PER_RULE);
}

#[test]
fn nothing_changes_until_the_decision_is_applied() {
    let mut s = state(RuleKind::AgentOffline);
    let seen = Observation::Agents(vec![silent("a", t(0))]);
    let first = decide(&mut s, &seen, t(100), t(0));
    assert_eq!(first.fired.len(), 1);
    // The commit failed: the next pass decides the same again.
    let again = decide(&mut s, &seen, t(105), t(0));
    assert_eq!(again.fired.len(), 1);
}
