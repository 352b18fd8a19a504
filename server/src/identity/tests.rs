//! Unit tests of the identity rules: the enrollment decision, the conflict watch driven by
//! instants, the keyed locks, the re-enrollment limiter and the org's new-agent slots.

use std::time::Duration;

use super::*;

fn id(agent: &str) -> AgentId {
    AgentId::new(agent)
}

fn mate(agent: &str, connected: bool, reclaim_until: Option<SystemTime>) -> HardwareMate {
    HardwareMate {
        id: id(agent),
        connected,
        reclaim_until,
    }
}

#[test]
fn a_hardware_id_alone_never_takes_over_an_agent() {
    let now = SystemTime::now();
    let offline = [mate("a-1", false, None)];
    assert_eq!(
        decide(None, false, &offline, now),
        EnrollDecision::New {
            sharing: vec![id("a-1")]
        },
        "an offline agent with the same hardware id is not proof"
    );
    assert_eq!(
        decide(None, false, &[], now),
        EnrollDecision::New { sharing: vec![] }
    );
}

#[test]
fn proof_and_explicit_permission_take_over() {
    let now = SystemTime::now();
    let later = Some(now + Duration::from_secs(60));
    let earlier = Some(now - Duration::from_secs(1));
    let reuse = |agent: &str, claim| EnrollDecision::Reuse {
        agent: id(agent),
        claim,
    };

    // Proof wins over everything, even for an agent with another hardware id.
    let mates = [mate("a-1", false, later)];
    assert_eq!(
        decide(Some(id("z-9")), true, &mates, now),
        reuse("z-9", Claim::Proof)
    );
    // An admin's permission names one agent, connected or not, until it lapses.
    let mates = [mate("a-1", false, None), mate("b-1", true, later)];
    assert_eq!(
        decide(None, false, &mates, now),
        reuse("b-1", Claim::AdminReclaim)
    );
    let lapsed = [mate("a-1", false, earlier)];
    assert_eq!(
        decide(None, false, &lapsed, now),
        EnrollDecision::New {
            sharing: vec![id("a-1")]
        }
    );
    // A reclaiming token takes the one disconnected agent with the hardware id, and nothing
    // ambiguous: not a connected one, not one of several.
    assert_eq!(
        decide(None, true, &[mate("a-1", false, None)], now),
        reuse("a-1", Claim::TokenReclaim)
    );
    assert!(matches!(
        decide(None, true, &[mate("a-1", true, None)], now),
        EnrollDecision::New { .. }
    ));
    let clones = [mate("a-1", false, None), mate("b-1", false, None)];
    assert_eq!(
        decide(None, true, &clones, now),
        EnrollDecision::New {
            sharing: vec![id("a-1"), id("b-1")]
        }
    );
}

fn policy() -> ConflictPolicy {
    ConflictPolicy {
        window: Duration::from_secs(600),
        max_replacements: 3,
    }
}

#[test]
fn restarts_replace_sessions_without_a_conflict() {
    let mut watch = IdentityWatch::default();
    let t0 = Instant::now();
    // Every restart is a new process replacing the previous one's half-open session; the old
    // process never comes back.
    for (n, (old, new)) in [(1, 2), (2, 3), (3, 4), (4, 5)].into_iter().enumerate() {
        let at = t0 + Duration::from_secs(n as u64);
        assert_eq!(
            watch.on_replace(old, new, at, &policy()),
            Replacement::Ordinary
        );
    }
    assert!(!watch.is_flagged());
    assert!(!watch.is_empty(), "it remembers the displaced processes");
    assert!(!watch.expire(t0 + Duration::from_secs(700), &policy()));
    assert!(watch.is_empty(), "and forgets them after the window");
}

#[test]
fn two_processes_replacing_each_other_are_flagged_then_the_newcomer_is_refused() {
    let mut watch = IdentityWatch::default();
    let p = policy();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    // A (1) holds the session; B (2) replaces it: a restart, as far as anyone can tell.
    assert_eq!(watch.on_replace(1, 2, at(0), &p), Replacement::Ordinary);
    // A comes back: two live processes.
    assert_eq!(
        watch.on_replace(2, 1, at(3), &p),
        Replacement::Conflict { first: true }
    );
    assert!(watch.is_flagged());
    assert_eq!(
        watch.on_replace(1, 2, at(6), &p),
        Replacement::Conflict { first: false }
    );
    assert_eq!(
        watch.on_replace(2, 1, at(9), &p),
        Replacement::Conflict { first: false }
    );
    // Three conflicting replacements within the window: B is refused, and keeps being refused
    // while it keeps trying, however slowly (each refusal renews the memory of it).
    for s in [12, 300, 800, 1300] {
        assert_eq!(
            watch.on_replace(1, 2, at(s), &p),
            Replacement::Refused,
            "{s}"
        );
    }
    // B gives up (its copy was given its own identity): the flag clears after the window.
    assert!(!watch.expire(at(1300 + 599), &p));
    assert!(watch.is_flagged());
    assert!(watch.expire(at(1300 + 600), &p), "the flag clears");
    assert!(watch.detail.is_empty());
}

#[test]
fn conflicts_let_in_are_audited_at_most_once_per_interval() {
    let mut watch = IdentityWatch::default();
    let t0 = Instant::now();
    assert!(watch.audit_due(t0));
    let soon = t0 + AUDIT_INTERVAL - Duration::from_millis(1);
    assert!(!watch.audit_due(soon));
    assert!(watch.audit_due(t0 + AUDIT_INTERVAL));
}

#[test]
fn the_process_key_is_the_instance_id_or_the_machine() {
    let info = SystemInfo {
        hostname: "web-1".to_owned(),
        hardware_id: "hw".to_owned(),
        boot_time: Some(time(1_000)),
        ..SystemInfo::default()
    };
    let a = Host::new("aaaa", &info);
    let b = Host::new("bbbb", &info);
    assert_ne!(a.key(), b.key());
    assert!(a.same_machine(&b));
    assert!(conflict_detail(&a, &b).contains("two agent processes on"));
    // Without instance ids, a clone booted at another time is another process.
    let mut clone = info.clone();
    clone.boot_time = Some(time(2_000));
    let (x, y) = (Host::new("", &info), Host::new("", &clone));
    assert_ne!(x.key(), y.key());
    assert_eq!(x.key(), Host::new("", &info).key());
    let detail = conflict_detail(&x, &y);
    assert!(
        detail.starts_with("two machines share this agent's credential"),
        "{detail}"
    );
    assert!(detail.contains("1970-01-01T00:33:20Z"), "{detail}");
}

#[test]
fn the_conflict_detail_is_bounded_and_printable_whatever_the_agents_report() {
    // The most the edge lets through: text at the reported-text limit, made of the
    // characters Rust's escaping lengthens most (a quote doubles, a combining mark takes 8
    // bytes for 2).
    let text = |unit: &str| unit.repeat(tether_proto::text::MAX_REPORTED_TEXT_BYTES / unit.len());
    let info = |unit: &str| SystemInfo {
        hostname: text(unit),
        hardware_id: text(unit),
        boot_time: Some(time(1_000)),
        ..SystemInfo::default()
    };
    for (a, b) in [(info("\""), info("\u{301}")), (info("a"), info("a"))] {
        let instance = "i".repeat(64);
        let detail = conflict_detail(&Host::new(&instance, &a), &Host::new("j", &b));
        assert!(
            detail.len() <= MAX_CONFLICT_DETAIL_BYTES,
            "{}",
            detail.len()
        );
        assert_eq!(
            tether_proto::text::first_forbidden(&detail),
            None,
            "{detail}"
        );
    }
}

fn time(secs: u64) -> Time {
    Time::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).expect("in range")
}

#[tokio::test]
async fn identity_locks_serialize_one_key_and_are_forgotten_once_unused() {
    let locks = Arc::new(IdentityLocks::default());
    let key = LockKey::Hardware(OrgId::new("acme"), "hw".to_owned());
    let held = locks.lock(key.clone()).await;
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let waiter = {
        let locks = locks.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let _guard = locks.lock(key).await;
            tx.send(()).expect("the test waits");
        })
    };
    // Another key is independent.
    let _other = locks
        .lock(LockKey::Agent(OrgId::new("acme"), id("a-1")))
        .await;
    tokio::task::yield_now().await;
    assert!(rx.try_recv().is_err(), "the same key waits");
    drop(held);
    waiter.await.expect("waiter");
    rx.await.expect("got the lock after release");

    for n in 0..1000 {
        drop(
            locks
                .lock(LockKey::Hardware(OrgId::new("acme"), format!("hw-{n}")))
                .await,
        );
    }
    assert!(locks.n_keys() <= 130, "{} keys remembered", locks.n_keys());
}

#[test]
fn reenrollments_are_limited_per_hardware_id_with_a_retry_delay() {
    let limiter = ReenrollLimiter::new(ReenrollRate {
        per_minute: 6,
        burst: 2,
    });
    let org = OrgId::new("acme");
    let t0 = std::time::Instant::now();
    assert_eq!(limiter.take(&org, "hw", t0), Ok(()));
    assert_eq!(limiter.take(&org, "hw", t0), Ok(()));
    assert_eq!(limiter.take(&org, "hw", t0), Err(Duration::from_secs(10)));
    assert_eq!(limiter.take(&org, "other", t0), Ok(()), "per hardware id");
    assert_eq!(
        limiter.take(&OrgId::new("beta"), "hw", t0),
        Ok(()),
        "per org"
    );
    assert_eq!(
        limiter.take(&org, "hw", t0 + Duration::from_secs(10)),
        Ok(())
    );

    // Buckets that refilled are forgotten as new ones arrive.
    let later = t0 + Duration::from_secs(3600);
    for n in 0..5000 {
        limiter
            .take(&org, &format!("hw-{n}"), later)
            .expect("first use of each");
    }
    let much_later = later + Duration::from_secs(3600);
    for n in 0..5000 {
        limiter
            .take(&org, &format!("new-{n}"), much_later)
            .expect("first use of each");
    }
    assert!(
        limiter.n_tracked() <= 6000,
        "{} hardware ids tracked",
        limiter.n_tracked()
    );
}

#[test]
fn concurrent_new_agents_never_pass_the_org_limit() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MAX: usize = 10;
    let slots = NewAgentSlots::default();
    let org = OrgId::new("acme");
    let other = OrgId::new("other");
    // Stands for the registry: what `fill` inserts is counted by the next `take`.
    let registry = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..10 {
                    match slots.take(&org, MAX, || registry.load(Ordering::SeqCst)) {
                        Some(slot) => {
                            std::thread::yield_now();
                            slot.fill(|| registry.fetch_add(1, Ordering::SeqCst));
                        }
                        None => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(
        registry.load(Ordering::SeqCst),
        MAX,
        "exactly the limit got in"
    );
    assert_eq!(refused.load(Ordering::SeqCst), 80 - MAX);
    assert_eq!(slots.taken(&org), 0, "every slot was given back");
    assert!(
        slots.take(&other, MAX, || 0).is_some(),
        "another org's limit is its own"
    );
}

#[test]
fn a_failed_enrollment_gives_its_slot_back() {
    let slots = NewAgentSlots::default();
    let org = OrgId::new("acme");
    let first = slots.take(&org, 1, || 0).expect("below the limit");
    assert!(slots.take(&org, 1, || 0).is_none(), "the slot is taken");
    drop(first);
    assert_eq!(slots.taken(&org), 0);
    assert!(slots.take(&org, 1, || 0).is_some(), "and free again");
}
