//! The writer's queues and budget: status changes waiting are bounded per agent, a full control
//! queue makes callers wait and drops nothing, and the ingest budget is held until a batch is
//! acked or failed, its waiters served first come, first served; the line for it has room
//! until it holds the ingest queue.

use super::*;

#[tokio::test]
async fn status_changes_waiting_are_bounded_per_agent() {
    let f = fixture();
    let t0 = SystemTime::now();
    let n = MAX_PENDING_TRANSITIONS + 4;
    for i in 0..n {
        let (from, to) = if i % 2 == 0 {
            (AgentStatus::Offline, AgentStatus::Online)
        } else {
            (AgentStatus::Online, AgentStatus::Offline)
        };
        let time = t0 + Duration::from_secs(i as u64);
        f.handle.transition(transition("a-1", from, to, time), None);
    }
    let taken = f.queues.live.take();
    let waiting = &taken.agents[&AgentId::new("a-1")].transitions;
    assert_eq!(waiting.len(), MAX_PENDING_TRANSITIONS);
    assert_eq!(
        waiting.last().expect("one").0.time,
        t0 + Duration::from_secs(n as u64 - 1),
        "the newest change is kept"
    );
    assert_eq!(f.metrics.writer_transitions_coalesced.get(), 4);
}

#[tokio::test]
async fn a_full_control_queue_makes_callers_wait_and_drops_nothing() {
    let mut f = fixture();
    let depth = |f: &Fixture| {
        f.metrics
            .writer_queue_depth
            .get_or_create(&crate::metrics::QueueLabels { queue: "control" })
            .get()
    };
    // The fixture's control queue holds two items.
    f.handle.audit(entry("acme", "one")).await;
    f.handle.audit(entry("acme", "two")).await;
    assert_eq!(depth(&f), 2);
    let mut third = Box::pin(f.handle.audit(entry("acme", "three")));
    assert!((&mut third).now_or_never().is_none(), "the caller waits");
    assert!(
        f.handle.reserve().now_or_never().is_none(),
        "so does a reservation"
    );
    let Ok(Control::Audit(first)) = f.queues.control.try_recv() else {
        panic!("the first entry is queued");
    };
    assert_eq!(first.target, "one");
    assert!(third.now_or_never().is_some(), "a slot freed: it is queued");
    let rest: Vec<String> = std::iter::from_fn(|| f.queues.control.try_recv().ok())
        .map(|c| match c {
            Control::Audit(e) => e.target,
            Control::Commit(_) => "commit".to_owned(),
        })
        .collect();
    assert_eq!(rest, ["two", "three"]);
}

#[tokio::test]
async fn ingest_budget_is_held_until_the_batch_is_acked_or_failed() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    let first = f.samples(&s, 1..=40);
    assert!(
        f.handle.try_admit(BUDGET - 40 + 1).is_none(),
        "a report's samples hold their share of the budget"
    );
    let plan = f.plan(batch([first, f.samples(&s, 41..=50)]));
    assert!(
        f.handle.try_admit(BUDGET - 50 + 1).is_none(),
        "planning a batch gives nothing back"
    );
    f.apply(plan).await;
    assert_eq!(s.durable_seq(), 50);
    let whole = f.handle.try_admit(BUDGET);
    assert!(whole.is_some(), "the acks gave the whole budget back");
    drop(whole);

    f.store.fail(true);
    assert!(!f.commit(batch([f.samples(&s, 51..=60)])).await);
    assert!(
        f.handle.try_admit(BUDGET).is_some(),
        "a failed batch gives its budget back too"
    );
}

#[tokio::test]
async fn waiters_for_budget_are_served_first_come_first_served() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    let hog = f.samples(&s, 1..=BUDGET as u64);
    let mut big = f.handle.admit(BUDGET);
    let mut small = f.handle.admit(1);
    assert!(futures::poll!(big.as_mut()).is_pending());
    assert!(futures::poll!(small.as_mut()).is_pending());
    assert!(
        f.handle.try_admit(1).is_none(),
        "nobody passes the callers waiting in line"
    );
    assert!(f.commit(batch([hog])).await);
    let big = big.await.expect("the first in line gets the budget first");
    assert!(futures::poll!(small.as_mut()).is_pending());
    drop(big);
    small.await.expect("then the next one");
}

#[tokio::test]
async fn the_line_for_budget_has_room_until_it_holds_the_ingest_queue() {
    let f = fixture();
    let waiting = || {
        f.metrics
            .writer_queue_depth
            .get_or_create(&crate::metrics::QueueLabels {
                queue: "waiting_samples",
            })
            .get()
    };
    // The fixture's line holds `BUDGET` samples.
    let held = f
        .handle
        .try_admit(BUDGET)
        .expect("the whole budget is free");
    assert!(
        f.handle.has_room(10 * BUDGET),
        "an empty line takes any report"
    );
    let mut first = f.handle.admit(BUDGET / 2);
    assert!((&mut first).now_or_never().is_none(), "in line");
    assert_eq!(waiting(), (BUDGET / 2) as i64);
    assert!(f.handle.has_room(BUDGET / 2), "exactly full with it");
    assert!(!f.handle.has_room(BUDGET / 2 + 1));
    let mut second = f.handle.admit(BUDGET / 2);
    assert!((&mut second).now_or_never().is_none());
    assert!(!f.handle.has_room(1), "full");

    // A wait given up leaves the line; one served leaves it too.
    drop(second);
    assert_eq!(waiting(), (BUDGET / 2) as i64);
    drop(held);
    assert!(first.now_or_never().is_some(), "served once budget freed");
    assert_eq!(waiting(), 0);
    assert!(f.handle.has_room(10 * BUDGET));
}
