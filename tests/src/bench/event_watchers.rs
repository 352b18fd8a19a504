//! The `events` phase's realtime watchers: many `WatchEvents` streams multiplexed over a few
//! HTTP/2 connections, each counting the changes it receives and the delay from each event's
//! time (set by the simulator, on this machine's clock) to its arrival, and what every watcher
//! should have received, so that a loss shows as a number and never hides.
//!
//! Three kinds of watcher, as a fleet's consoles would watch: the whole fleet unfiltered (an
//! operations console), the whole fleet at severity critical (an on-call pager), and one site of
//! [`SITE_AGENTS`] agents (a customer's view of its own machines, `site=sNNNN` by label). Each
//! stored occurrence of an event (created, or repeated by fingerprint) is one change; every
//! watcher opens, and has caught up, before the events it is judged on happen, so it must
//! receive every later change its filter matches. What the filters match is judged from the
//! unfiltered watchers' changes (the union, by cursor), which are in turn compared with what
//! the simulator had acknowledged: a change missing from one watcher shows as its loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tether_agent::LatencyHistogram;
use tether_proto as pb;
use tether_tests::{Bearer, EventClient, FleetClient};
use tonic::transport::Endpoint;

use crate::observe::unix_ms;
use crate::procs::lock;

/// Agents per site: a site watcher's share of the fleet.
pub(crate) const SITE_AGENTS: usize = 10;

/// The unfiltered watchers' changes by cursor: (severity, agent id).
type Reference = Arc<Mutex<HashMap<u64, (i32, String)>>>;

/// What one watcher asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    All,
    Critical,
    /// Site number.
    Site(usize),
}

/// What one watcher saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) caught_up: AtomicBool,
    /// The cursor of its `CAUGHT_UP`.
    pub(crate) start_cursor: AtomicU64,
    /// Created and repeated changes received.
    pub(crate) changes: AtomicU64,
    /// Changes whose cursor was not above the previous one.
    pub(crate) out_of_order: AtomicU64,
    /// The highest cursor received.
    pub(crate) last_cursor: AtomicU64,
    /// How the stream ended before the benchmark closed it, if it did.
    pub(crate) ended: Mutex<Option<String>>,
}

/// Every watcher of the phase, and what they share.
pub(crate) struct Watchers {
    pub(crate) scopes: Vec<Scope>,
    pub(crate) tallies: Vec<Arc<Tally>>,
    /// Event time → arrival, per change received by any watcher.
    pub(crate) delays: Arc<LatencyHistogram>,
    pub(crate) reference: Reference,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The watchers' scopes: `all` unfiltered, then `critical` at severity critical, then the rest
/// one site each, round robin over `sites`.
pub(crate) fn scopes(total: usize, all: usize, critical: usize, sites: usize) -> Vec<Scope> {
    (0..total)
        .map(|i| {
            if i < all {
                Scope::All
            } else if i < all + critical {
                Scope::Critical
            } else {
                Scope::Site((i - all - critical) % sites.max(1))
            }
        })
        .collect()
}

/// The label value of site `n`.
pub(crate) fn site_name(n: usize) -> String {
    format!("s{n:04}")
}

/// `--label-mix` of `sites` sites: agent `i` is in site `i % sites`.
pub(crate) fn site_label_mix(sites: usize) -> String {
    let names: Vec<String> = (0..sites).map(site_name).collect();
    format!("site={}", names.join("|"))
}

fn filter(scope: &Scope) -> Option<pb::EventFilter> {
    match scope {
        Scope::All => None,
        Scope::Critical => Some(pb::EventFilter {
            min_severity: pb::EventSeverity::Critical as i32,
            ..Default::default()
        }),
        Scope::Site(n) => Some(pb::EventFilter {
            label_selector: format!("site={}", site_name(*n)),
            ..Default::default()
        }),
    }
}

// === impl Watchers ===

impl Watchers {
    /// Opens one watch per scope, spread over `connections` HTTP/2 connections, and returns
    /// once every watcher has caught up (or `limit` passed: then the error says how many).
    ///
    /// # Errors
    ///
    /// A connection failed, or not every watcher caught up within `limit`.
    pub(crate) async fn open(
        url: &str,
        token: &str,
        scopes: Vec<Scope>,
        connections: usize,
        limit: Duration,
    ) -> anyhow::Result<Self> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let channel = Endpoint::from_shared(url.to_owned())?
                .connect_timeout(Duration::from_secs(10))
                .http2_adaptive_window(true)
                .connect()
                .await
                .context("connect a watcher connection")?;
            clients.push(
                pb::event_service_client::EventServiceClient::with_interceptor(
                    channel,
                    Bearer(Some(token.to_owned())),
                )
                .max_decoding_message_size(64 << 20),
            );
        }
        let delays = Arc::new(LatencyHistogram::new());
        let reference = Arc::new(Mutex::new(HashMap::new()));
        let mut tallies = Vec::with_capacity(scopes.len());
        let mut tasks = Vec::with_capacity(scopes.len());
        for (i, scope) in scopes.iter().enumerate() {
            let tally = Arc::new(Tally::default());
            tallies.push(tally.clone());
            let reference = (*scope == Scope::All).then(|| reference.clone());
            tasks.push(tokio::spawn(watch(
                clients[i % clients.len()].clone(),
                filter(scope),
                tally,
                delays.clone(),
                reference,
            )));
        }
        let watchers = Self {
            scopes,
            tallies,
            delays,
            reference,
            tasks,
        };
        let started = Instant::now();
        loop {
            let caught_up = watchers.caught_up();
            let ended = watchers.ended();
            if caught_up == watchers.tallies.len() {
                return Ok(watchers);
            }
            if started.elapsed() > limit || ended > 0 {
                anyhow::bail!(
                    "{caught_up}/{} watchers caught up within {:.0} s, {ended} ended (first: {})",
                    watchers.tallies.len(),
                    started.elapsed().as_secs_f64(),
                    watchers.first_end().unwrap_or_default()
                );
            }
            eprintln!(
                "events: {caught_up}/{} watchers caught up",
                watchers.tallies.len()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub(crate) fn caught_up(&self) -> usize {
        self.tallies
            .iter()
            .filter(|t| t.caught_up.load(Ordering::Relaxed))
            .count()
    }

    /// Watchers whose stream ended.
    pub(crate) fn ended(&self) -> usize {
        self.tallies
            .iter()
            .filter(|t| lock(&t.ended).is_some())
            .count()
    }

    pub(crate) fn first_end(&self) -> Option<String> {
        self.tallies.iter().find_map(|t| lock(&t.ended).clone())
    }

    /// Changes received by every watcher together.
    pub(crate) fn total_changes(&self) -> u64 {
        self.tallies
            .iter()
            .map(|t| t.changes.load(Ordering::Relaxed))
            .sum()
    }

    /// The distinct `CAUGHT_UP` cursors (one, when every watcher started at the same point).
    pub(crate) fn start_cursors(&self) -> Vec<u64> {
        let mut cursors: Vec<u64> = self
            .tallies
            .iter()
            .map(|t| t.start_cursor.load(Ordering::Relaxed))
            .collect();
        cursors.sort_unstable();
        cursors.dedup();
        cursors
    }

    /// Waits until no watcher received anything for `quiet`, or `limit` passed.
    pub(crate) async fn drain(&self, quiet: Duration, limit: Duration) {
        let started = Instant::now();
        let mut last = (self.total_changes(), Instant::now());
        while started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.total_changes();
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
        }
    }

    /// Compares what each watcher received with what its filter matches among the reference
    /// changes; `site_of` maps agent ids to their site.
    pub(crate) fn judge(&self, site_of: &HashMap<String, usize>) -> Verdict {
        let reference = lock(&self.reference);
        // Per scope: the changes it matches, and the newest of them.
        let mut expected_by: HashMap<Scope, (u64, u64)> = HashMap::new();
        let mut count = |scope: Scope, cursor: u64| {
            let entry = expected_by.entry(scope).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(cursor);
        };
        for (cursor, (severity, agent)) in reference.iter() {
            count(Scope::All, *cursor);
            if *severity == pb::EventSeverity::Critical as i32 {
                count(Scope::Critical, *cursor);
            }
            if let Some(site) = site_of.get(agent) {
                count(Scope::Site(*site), *cursor);
            }
        }
        let mut verdict = Verdict {
            reference: reference.len() as u64,
            ..Verdict::default()
        };
        for (scope, tally) in self.scopes.iter().zip(&self.tallies) {
            let (expected, newest) = expected_by.get(scope).copied().unwrap_or((0, 0));
            let got = tally.changes.load(Ordering::Relaxed);
            verdict.expected += expected;
            verdict.delivered += got;
            verdict.extra += got.saturating_sub(expected);
            let missing = expected.saturating_sub(got);
            if missing > 0 {
                // A watcher that has not reached its newest change yet is behind; one that
                // has, and still misses some, skipped them.
                if tally.last_cursor.load(Ordering::Relaxed) < newest {
                    verdict.behind += missing;
                    verdict.watchers_behind += 1;
                } else {
                    verdict.lost += missing;
                    verdict.watchers_short += 1;
                }
            }
            verdict.out_of_order += tally.out_of_order.load(Ordering::Relaxed);
            if let Some(end) = lock(&tally.ended).clone() {
                verdict.ended += 1;
                verdict.first_end.get_or_insert(end);
            }
        }
        verdict
    }

    /// Closes every stream.
    pub(crate) fn close(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// What the watchers received against what their filters match.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// Distinct changes the unfiltered watchers received.
    pub(crate) reference: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    /// Changes a watcher skipped: it received later ones.
    pub(crate) lost: u64,
    pub(crate) watchers_short: u64,
    /// Changes not delivered yet to watchers still behind (their newest change not reached).
    pub(crate) behind: u64,
    pub(crate) watchers_behind: u64,
    /// Received beyond what the filter matches (duplicates, or changes a filter should not
    /// match).
    pub(crate) extra: u64,
    pub(crate) out_of_order: u64,
    pub(crate) ended: u64,
    pub(crate) first_end: Option<String>,
}

/// One watcher: reads its stream until it ends, counting and timing every change.
async fn watch(
    mut client: EventClient,
    filter: Option<pb::EventFilter>,
    tally: Arc<Tally>,
    delays: Arc<LatencyHistogram>,
    reference: Option<Reference>,
) {
    let end = |why: String| *lock(&tally.ended) = Some(why);
    let request = pb::WatchEventsRequest {
        filter,
        cursor: String::new(),
    };
    let mut stream = match client.watch_events(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return end(format!("{:?}: {}", status.code(), status.message())),
    };
    let mut last_cursor = 0_u64;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return end("the server ended the stream".to_owned()),
            Err(status) => return end(format!("{:?}: {}", status.code(), status.message())),
        };
        let arrived = unix_ms(SystemTime::now());
        let cursor: u64 = message.cursor.parse().unwrap_or(0);
        let change = pb::EventChangeKind::try_from(message.change)
            .unwrap_or(pb::EventChangeKind::Unspecified);
        if change == pb::EventChangeKind::CaughtUp {
            tally.start_cursor.store(cursor, Ordering::Relaxed);
            tally.caught_up.store(true, Ordering::Relaxed);
            last_cursor = cursor;
            continue;
        }
        let Some(event) = message.event else { continue };
        // The occurrence this change is about: the first for a new event, the latest for a
        // repeat (a watcher behind its stream sees a later one: its delay then reads low).
        let happened = match change {
            pb::EventChangeKind::Created => event.time,
            pb::EventChangeKind::Repeated => event.last_seen,
            _ => continue,
        };
        tally.changes.fetch_add(1, Ordering::Relaxed);
        if cursor <= last_cursor {
            tally.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        last_cursor = last_cursor.max(cursor);
        tally.last_cursor.store(last_cursor, Ordering::Relaxed);
        if let Some(at) = happened.and_then(|t| SystemTime::try_from(t).ok()) {
            let delay = arrived.saturating_sub(unix_ms(at));
            delays.record(Duration::from_millis(delay));
        }
        if let Some(reference) = &reference {
            lock(reference).insert(cursor, (event.severity, event.agent_id));
        }
    }
}

/// Each agent's site, from its `site` label (agents without one are left out).
///
/// # Errors
///
/// A `ListAgents` call failed.
pub(crate) async fn sites_of_agents(
    fleet: &mut FleetClient,
) -> anyhow::Result<HashMap<String, usize>> {
    let mut sites = HashMap::new();
    let mut page_token = String::new();
    loop {
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .context("list the agents")?
            .into_inner();
        for agent in page.agents {
            let site = agent
                .labels
                .get("site")
                .and_then(|s| s.strip_prefix('s'))
                .and_then(|n| n.parse().ok());
            if let Some(site) = site {
                sites.insert(agent.agent_id, site);
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(sites);
        }
        page_token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_every_site_round_robin() {
        let scopes = scopes(8, 1, 2, 3);
        assert_eq!(
            scopes,
            [
                Scope::All,
                Scope::Critical,
                Scope::Critical,
                Scope::Site(0),
                Scope::Site(1),
                Scope::Site(2),
                Scope::Site(0),
                Scope::Site(1)
            ]
        );
        assert_eq!(site_label_mix(2), "site=s0000|s0001");
    }
}
