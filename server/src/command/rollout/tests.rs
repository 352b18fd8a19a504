//! The rollout rule, case by case and under randomized runs that check its promises.

use super::*;
use crate::command::model::InvocationState as S;

fn limits(concurrency: u32, errors: Option<u32>, canary: u32) -> Limits {
    Limits {
        concurrency,
        errors,
        canary,
    }
}

fn tally(queued: u32, in_flight: u32, succeeded: u32, failed: u32) -> Tally {
    Tally {
        queued,
        in_flight,
        succeeded,
        failed,
        neutral: 0,
    }
}

#[test]
fn policies_resolve_against_the_runnable_invocations() {
    let policy = |c, e, canary| RolloutPolicy {
        max_concurrency: c,
        max_errors: e,
        canary,
    };
    assert_eq!(
        Limits::resolve(&policy(None, None, 0), 40),
        Ok(limits(40, None, 0))
    );
    assert_eq!(
        Limits::resolve(
            &policy(Some(Amount::Percent(10)), Some(Amount::Count(0)), 3),
            40
        ),
        Ok(limits(4, Some(0), 3))
    );
    assert_eq!(
        Limits::resolve(
            &policy(Some(Amount::Percent(10)), Some(Amount::Percent(5)), 9),
            3
        ),
        Ok(limits(1, Some(1), 3)),
        "percentages round up; canaries are at most the invocations"
    );
    assert_eq!(
        Limits::resolve(&policy(None, None, 0), 0),
        Ok(limits(1, None, 0))
    );
    assert_eq!(
        Limits::resolve(&policy(Some(Amount::Count(0)), None, 0), 5),
        Err(PolicyError::ZeroConcurrency)
    );
    assert_eq!(
        Limits::resolve(&policy(Some(Amount::Percent(0)), None, 0), 5),
        Err(PolicyError::ZeroConcurrency)
    );
    assert!(matches!(
        Limits::resolve(&policy(None, Some(Amount::Percent(101)), 0), 5),
        Err(PolicyError::PercentAbove100 {
            field: "max_errors",
            ..
        })
    ));
}

#[test]
fn offers_fill_the_free_slots() {
    let progress = Progress {
        canary: Tally::default(),
        rest: tally(10, 3, 2, 0),
    };
    assert_eq!(
        next(&limits(5, None, 0), &progress, false),
        Next::Offer {
            n: 2,
            canaries_only: false
        }
    );
    assert_eq!(next(&limits(3, None, 0), &progress, false), Next::Wait);
    assert_eq!(
        next(&limits(100, None, 0), &progress, false),
        Next::Offer {
            n: 10,
            canaries_only: false
        }
    );
}

#[test]
fn paused_offers_nothing_but_still_skips_over_budget() {
    let progress = Progress {
        canary: Tally::default(),
        rest: tally(10, 0, 0, 2),
    };
    assert_eq!(next(&limits(5, Some(2), 0), &progress, true), Next::Wait);
    assert_eq!(
        next(&limits(5, Some(1), 0), &progress, true),
        Next::SkipQueued(SkipReason::ErrorBudget)
    );
}

#[test]
fn the_error_budget_stops_only_once_exceeded() {
    let at_budget = Progress {
        canary: Tally::default(),
        rest: tally(5, 0, 3, 1),
    };
    assert!(matches!(
        next(&limits(2, Some(1), 0), &at_budget, false),
        Next::Offer { n: 2, .. }
    ));
    let over = Progress {
        canary: Tally::default(),
        rest: tally(5, 0, 3, 2),
    };
    assert_eq!(
        next(&limits(2, Some(1), 0), &over, false),
        Next::SkipQueued(SkipReason::ErrorBudget)
    );
}

#[test]
fn canaries_go_first_and_gate_the_rest() {
    let l = limits(10, None, 2);
    let start = Progress {
        canary: tally(2, 0, 0, 0),
        rest: tally(8, 0, 0, 0),
    };
    assert_eq!(
        next(&l, &start, false),
        Next::Offer {
            n: 2,
            canaries_only: true
        }
    );
    let one_done = Progress {
        canary: tally(0, 1, 1, 0),
        rest: tally(8, 0, 0, 0),
    };
    assert_eq!(next(&l, &one_done, false), Next::Wait, "the rest waits");
    let passed = Progress {
        canary: tally(0, 0, 2, 0),
        rest: tally(8, 0, 0, 0),
    };
    assert_eq!(
        next(&l, &passed, false),
        Next::Offer {
            n: 8,
            canaries_only: false
        }
    );
    let failed = Progress {
        canary: tally(0, 1, 0, 1),
        rest: tally(8, 0, 0, 0),
    };
    assert_eq!(
        next(&l, &failed, false),
        Next::SkipQueued(SkipReason::CanaryFailed)
    );
}

#[test]
fn command_state_is_derived() {
    let p = |canary, rest| Progress { canary, rest };
    let open = p(Tally::default(), tally(1, 1, 0, 0));
    assert_eq!(
        command_state(&open, false, false, false),
        CommandState::Pending
    );
    assert_eq!(
        command_state(&open, false, false, true),
        CommandState::Running
    );
    assert_eq!(
        command_state(&open, true, false, true),
        CommandState::Paused
    );
    assert_eq!(
        command_state(&open, false, true, true),
        CommandState::Running
    );
    let ok = p(tally(0, 0, 1, 0), tally(0, 0, 3, 0));
    assert_eq!(
        command_state(&ok, false, false, true),
        CommandState::Succeeded
    );
    let failed = p(Tally::default(), tally(0, 0, 3, 1));
    assert_eq!(
        command_state(&failed, true, false, true),
        CommandState::Failed
    );
    let mut skipped = tally(0, 0, 3, 0);
    skipped.neutral = 1;
    assert_eq!(
        command_state(&p(Tally::default(), skipped), false, false, true),
        CommandState::Failed,
        "a skipped invocation is not a success"
    );
    assert_eq!(
        command_state(&p(Tally::default(), skipped), false, true, true),
        CommandState::Cancelled
    );
}

/// A small deterministic generator, so a failing run can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        u32::try_from((self.0 >> 33) % u64::from(n.max(1))).expect("below n")
    }
}

/// Runs a whole command under the rule with random agent outcomes (and random pauses), and
/// checks every promise of the module docs at every step.
#[test]
fn randomized_rollouts_keep_every_promise() {
    for seed in 0..3_000u64 {
        let mut rng = Lcg(seed);
        let n = 1 + rng.below(40);
        let policy = RolloutPolicy {
            max_concurrency: match rng.below(3) {
                0 => None,
                1 => Some(Amount::Count(1 + rng.below(8))),
                _ => Some(Amount::Percent(1 + rng.below(100))),
            },
            max_errors: match rng.below(3) {
                0 => None,
                1 => Some(Amount::Count(rng.below(5))),
                _ => Some(Amount::Percent(rng.below(50))),
            },
            canary: rng.below(4),
        };
        let l = Limits::resolve(&policy, n).expect("valid policy");
        let fail_rate = rng.below(100);
        let mut states: Vec<(InvocationState, bool)> =
            (0..n).map(|i| (S::Queued, i < l.canary)).collect();
        let mut offered_rest_before_canaries_passed = false;
        for _step in 0..10_000 {
            let progress = progress_of(states.iter().copied());
            let in_flight = progress.canary.in_flight + progress.rest.in_flight;
            assert!(
                in_flight <= l.concurrency,
                "seed {seed}: {in_flight} in flight"
            );
            let failed = progress.canary.failed + progress.rest.failed;
            if let Some(errors) = l.errors {
                assert!(
                    failed <= errors + l.concurrency,
                    "seed {seed}: {failed} failures > {errors} + {}",
                    l.concurrency
                );
            }
            let paused = rng.below(10) == 0;
            match next(&l, &progress, paused) {
                Next::Offer {
                    n: k,
                    canaries_only,
                } => {
                    assert!(k >= 1 && !paused, "seed {seed}");
                    // Offer up to k, as the engine would (some agents may be offline).
                    let mut left = rng.below(k) + 1;
                    for (state, canary) in &mut states {
                        if left > 0 && *state == S::Queued && *canary == canaries_only {
                            if !*canary && progress.canary.succeeded < l.canary {
                                offered_rest_before_canaries_passed = true;
                            }
                            *state = S::Offered;
                            left -= 1;
                        }
                    }
                }
                Next::SkipQueued(_) => {
                    for (state, _) in &mut states {
                        if *state == S::Queued {
                            *state = S::Skipped;
                        }
                    }
                }
                Next::Wait => {}
            }
            // Agents make progress on one invocation in flight.
            let flying: Vec<usize> = states
                .iter()
                .enumerate()
                .filter(|(_, (s, _))| !s.is_terminal() && *s != S::Queued)
                .map(|(i, _)| i)
                .collect();
            if !flying.is_empty() {
                let i = flying[rng.below(u32::try_from(flying.len()).expect("small")) as usize];
                states[i].0 = match states[i].0 {
                    S::Offered => S::Running,
                    _ if rng.below(100) < fail_rate => S::Failed,
                    _ => S::Succeeded,
                };
            } else if states.iter().all(|(s, _)| s.is_terminal()) {
                break;
            }
        }
        assert!(
            states.iter().all(|(s, _)| s.is_terminal()),
            "seed {seed}: the rollout did not finish"
        );
        assert!(
            !offered_rest_before_canaries_passed,
            "seed {seed}: the rest was offered before every canary succeeded"
        );
    }
}
