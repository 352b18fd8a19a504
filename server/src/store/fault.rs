//! Named crash points in the store's durability steps, for the end-to-end crash tests.
//!
//! The store calls [`point`] between the steps whose order its crash guarantee depends on
//! (after the log flush and before the ack, after a seal, between a checkpoint's flush and the
//! log's truncation, inside retention). In a normal build `point` does nothing and compiles to
//! nothing. With the `test-support` feature, a test's server process may [`arm`] one point:
//! when the store reaches it for the `n`th time, the process aborts on the spot (no unwinding,
//! no destructor, no flush), which is what a `kill -9` at that instant would leave on disk.
//! Or it may [`arm_stall`] one: the thread that reaches it then blocks for good, as a store
//! whose flush never returns would (the writer's stall watchdog, `writer/stall.rs`).
//! Nothing in the server or its binary arms a point; only the test harness's crash server does.
//!
//! [`race_point`]s are for unit tests instead: a test may run code of its own when its thread
//! reaches one (inside a critical section, say), to race another thread against the store at
//! an exact step; see [`race::on_this_thread`].

/// The points, for the harness to name.
pub const POINTS: &[&str] = &[
    "log-flushed",
    "sealed",
    "snapshots-written",
    "checkpoint-flushed",
    "log-truncated",
    "retention-batch",
];

#[cfg(feature = "test-support")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The armed point, how many more passes it lets through, and whether it stalls (else
    /// aborts).
    static ARMED: OnceLock<(&'static str, AtomicU64, bool)> = OnceLock::new();

    /// Arms `name` (one of [`super::POINTS`]): the process aborts the `nth` time (from 1) the
    /// store reaches it. Returns `false` if the name is unknown or a point is armed already.
    pub fn arm(name: &str, nth: u64) -> bool {
        arm_as(name, nth, false)
    }

    /// Arms `name` to stall: the `nth` time the store reaches it, that thread blocks for good.
    /// Returns `false` as [`arm`] does.
    pub fn arm_stall(name: &str, nth: u64) -> bool {
        arm_as(name, nth, true)
    }

    fn arm_as(name: &str, nth: u64, stall: bool) -> bool {
        let Some(point) = super::POINTS.iter().find(|p| **p == name) else {
            return false;
        };
        ARMED
            .set((point, AtomicU64::new(nth.max(1)), stall))
            .is_ok()
    }

    pub fn point(name: &str) {
        if let Some((armed, left, stall)) = ARMED.get()
            && *armed == name
            && left.fetch_sub(1, Ordering::SeqCst) == 1
        {
            if *stall {
                eprintln!("store stall point {name} reached: blocking");
                loop {
                    std::thread::park();
                }
            }
            eprintln!("store crash point {name} reached: aborting");
            std::process::abort();
        }
    }
}

#[cfg(feature = "test-support")]
pub use self::armed::{arm, arm_stall};

/// Marks the store reaching step `name`. Does nothing unless a test armed it.
#[inline]
pub fn point(name: &str) {
    #[cfg(feature = "test-support")]
    armed::point(name);
    #[cfg(not(feature = "test-support"))]
    let _ = name;
}

/// Marks a step where a unit test may run code of its own on the thread that reaches it
/// ([`race::on_this_thread`]). Does nothing outside unit tests.
#[inline]
pub fn race_point(name: &str) {
    #[cfg(test)]
    race::run(name);
    #[cfg(not(test))]
    let _ = name;
}

/// What unit tests run at a [`race_point`].
#[cfg(test)]
pub(crate) mod race {
    use std::cell::RefCell;

    type Hook = (&'static str, Box<dyn FnOnce()>);

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Runs `hook` the first time this thread reaches race point `name`, until the returned
    /// guard is dropped (which drops a hook that never ran, and whatever it holds).
    pub(crate) fn on_this_thread(name: &'static str, hook: impl FnOnce() + 'static) -> Armed {
        HOOK.with(|h| *h.borrow_mut() = Some((name, Box::new(hook))));
        Armed(())
    }

    /// Keeps a hook armed on this thread while it lives.
    pub(crate) struct Armed(());

    impl Drop for Armed {
        fn drop(&mut self) {
            HOOK.with(|h| h.borrow_mut().take());
        }
    }

    pub(super) fn run(name: &str) {
        let hook = HOOK.with(|h| {
            let mut h = h.borrow_mut();
            if h.as_ref().is_some_and(|(armed, _)| *armed == name) {
                h.take()
            } else {
                None
            }
        });
        if let Some((_, hook)) = hook {
            hook();
        }
    }
}
