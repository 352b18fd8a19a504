//! Unit tests of the org index and counts: after random sequences of registry operations
//! (sessions connecting, replacing each other and closing; the liveness pass turning agents
//! stale, offline and expired; samples moving health; enrollments, take-overs, relabelling,
//! deletions, restores and reclaim permissions, in two orgs) the maintained counts equal a
//! count over the agents, the index selects exactly what testing the filter on every agent
//! selects, and every listing page (agents, total, next page) equals the one a scan builds.

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::domain::{DiskUsage, Labels, OrgId, SessionId, SystemInfo};
use crate::registry::tests::{Fixture, Lcg, fixture_owned};
use crate::registry::{AgentListQuery, AgentView, Page};
use crate::session::Session;
use crate::testing::{agent_record, sample};
use tether_proto::selector::{Requirement, Selector};

const ORGS: [&str; 2] = ["acme", "globex"];
const KEYS: [&str; 4] = ["env", "region", "tier", "zone"];
const VALUES: [&str; 5] = ["prod", "dev", "eu", "us", ""];
/// Spellings the `os` filter must tell apart only beyond ASCII case.
const OS_NAMES: [&str; 7] = ["linux", "Linux", "LINUX", "windows", "Darwin", "", "Ösx"];
const OS_FILTERS: [&str; 6] = ["linux", "windows", "darwin", "ösx", "Ösx", "bsd"];
const QUERIES: [&str; 4] = ["a-1", "example", "-2", "zz"];

/// Random fleet facts and filters.
impl Lcg {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn labels(&mut self) -> Labels {
        (0..self.below(4))
            .map(|_| {
                let key = self.pick(&KEYS).to_string();
                (key, self.pick(&VALUES).to_string())
            })
            .collect()
    }

    fn info(&mut self, base: &SystemInfo) -> SystemInfo {
        let mut info = base.clone();
        if self.below(3) == 0 {
            info.os_name = self.pick(&OS_NAMES).to_string();
        }
        if self.below(4) == 0 {
            info.hardware_id = format!("hw-{}", self.below(6));
        }
        info
    }

    fn filter(&mut self) -> AgentFilter {
        let statuses = [
            AgentStatus::Online,
            AgentStatus::Stale,
            AgentStatus::Offline,
            AgentStatus::Expired,
        ];
        let requirements = (0..self.below(4))
            .map(|_| {
                let (k, v) = (self.pick(&KEYS).to_string(), self.pick(&VALUES).to_string());
                match self.below(4) {
                    0 => Requirement::Equals(k, v),
                    1 => Requirement::NotEquals(k, v),
                    2 => Requirement::Exists(k),
                    _ => Requirement::NotExists(k),
                }
            })
            .collect();
        AgentFilter {
            statuses: if self.below(2) == 0 {
                Vec::new()
            } else {
                (0..1 + self.below(3))
                    .map(|_| *self.pick(&statuses))
                    .collect()
            },
            include_expired: self.below(2) == 0,
            selector: Selector { requirements },
            os: (self.below(3) == 0).then(|| self.pick(&OS_FILTERS).to_string()),
            query: (self.below(4) == 0).then(|| self.pick(&QUERIES).to_string()),
            // Applied with `query`, outside the index: not part of what this compares.
            id_prefix: None,
        }
    }
}

/// The fleet as the operations left it: the live sessions, and agents taken out to restore.
struct World {
    f: Fixture,
    rng: Lcg,
    sessions: Vec<Arc<Session>>,
    removed: Vec<AgentView>,
    step: usize,
    /// The statuses and health levels agents had at some check, to show the operations
    /// reach them all.
    seen: HashSet<(AgentStatus, Health)>,
}

impl World {
    fn new(f: Fixture, seed: u64) -> Self {
        Self {
            f,
            rng: Lcg(seed),
            sessions: Vec::new(),
            removed: Vec::new(),
            step: 0,
            seen: HashSet::new(),
        }
    }

    fn ids(&self, org: &OrgId) -> Vec<AgentId> {
        let inner = self.f.registry.read();
        inner
            .orgs
            .get(org)
            .map(|agents| agents.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// A random agent of a random org, if that org has one.
    fn agent(&mut self) -> Option<(OrgId, AgentId)> {
        let org = OrgId::new(*self.rng.pick(&ORGS));
        let ids = self.ids(&org);
        (!ids.is_empty()).then(|| (org, self.rng.pick(&ids).clone()))
    }

    /// One random operation.
    async fn change(&mut self) {
        self.step += 1;
        let step = self.step;
        let registry = self.f.registry.clone();
        match self.rng.below(10) {
            // Connect, or replace the live session (from the same or another process).
            0 | 1 => {
                let Some((org, id)) = self.agent() else {
                    return;
                };
                let view = registry.get(&org, &id).expect("listed");
                let info = self.rng.info(&view.record.system_info);
                let labels = (self.rng.below(2) == 0).then(|| self.rng.labels());
                let instance = format!("p-{}", self.rng.below(2));
                let session = SessionId::new(format!("s-{step}"));
                if let Ok(opened) =
                    registry.open_session(&org, &id, session, info, labels, &instance)
                {
                    self.sessions.push(opened.session);
                }
            }
            // Disconnect, or a message that brings a stale session back.
            2 => {
                if self.sessions.is_empty() {
                    return;
                }
                let at = self.rng.below(self.sessions.len());
                if self.rng.below(2) == 0 {
                    let session = self.sessions.swap_remove(at);
                    registry.session_closed(&session, StatusReason::StreamClosed);
                } else {
                    self.sessions[at].touch();
                    registry.session_active(&self.sessions[at]);
                }
            }
            // Time passes; the liveness pass turns agents stale, offline, expired.
            3 => {
                let config = registry.liveness_config().clone();
                let wait = *self.rng.pick(&[
                    Duration::from_secs(1),
                    config.stale_after,
                    config.offline_after,
                    config.fleet_ttl,
                ]);
                tokio::time::advance(wait).await;
                for session in &self.sessions {
                    if self.rng.below(3) == 0 {
                        session.touch();
                    }
                }
                registry.liveness_pass();
            }
            // Samples made durable, out of order now and then: health moves.
            4 | 5 => {
                let Some((org, id)) = self.agent() else {
                    return;
                };
                let mut sample = sample(u64::try_from(self.rng.below(40)).expect("small"));
                sample.cpu_percent = *self.rng.pick(&[5.0, 85.0, 99.0]);
                if self.rng.below(4) == 0 {
                    sample.disks = vec![DiskUsage {
                        mount_point: "/".to_owned(),
                        used_bytes: 96,
                        total_bytes: 100,
                    }];
                }
                let seq = sample.seq;
                registry.samples_committed(vec![(org, id, sample, seq)]);
            }
            // A new agent, or a take-over that changes the record.
            6 => {
                let org = *self.rng.pick(&ORGS);
                let ids = self.ids(&OrgId::new(org));
                let id = if ids.is_empty() || self.rng.below(2) == 0 {
                    format!("a-{step}")
                } else {
                    self.rng.pick(&ids).to_string()
                };
                let mut record = agent_record(org, &id, &format!("hw-{}", self.rng.below(6)));
                record.labels = self.rng.labels();
                record.system_info = self.rng.info(&record.system_info);
                registry.enrolled(record);
            }
            // A deletion, put back now and then as when it could not be made durable.
            7 => {
                if let Some((org, id)) = self.agent()
                    && let Some(view) = registry.remove(&org, &id)
                {
                    self.removed.push(view);
                }
                if self.rng.below(2) == 0
                    && let Some(view) = self.removed.pop()
                {
                    registry.restore(view);
                }
            }
            // A reclaim permission: a new record with the same facts.
            _ => {
                if let Some((org, id)) = self.agent() {
                    registry.set_reclaim(&org, &id, Some(SystemTime::UNIX_EPOCH), |_| ());
                }
            }
        }
    }

    /// Checks the counts and the index of every org (and of an org without agents) against a
    /// scan, with `n_filters` random filters each.
    fn check(&mut self, n_filters: usize) {
        let registry = self.f.registry.clone();
        for org in ORGS.iter().chain(&["initech"]).map(|o| OrgId::new(*o)) {
            let context = format!("step {} org {org}", self.step);
            {
                let inner = registry.read();
                let Some(agents) = inner.orgs.get(&org) else {
                    assert_eq!(registry.summary(&org), Summary::default(), "{context}");
                    continue;
                };
                let scanned = scan_summary(agents, &registry.health);
                assert_eq!(agents.summary(), scanned, "{context}");
                self.seen
                    .extend(agents.values().map(|e| (e.status(), e.facts.health())));
                assert!(
                    agents.index.is_tidy(),
                    "{context}: an empty posting was kept"
                );
            }
            for _ in 0..n_filters {
                let filter = self.rng.filter();
                let context = format!("{context} filter {filter:?}");
                self.selection_matches_a_scan(&org, &filter, &context);
                self.pages_match_a_scan(&org, filter, &context);
            }
        }
    }

    /// The index selects what testing `filter` (its `query` aside) on every agent of `org`
    /// selects, and both ways of ordering the selection give it in id order.
    fn selection_matches_a_scan(&mut self, org: &OrgId, filter: &AgentFilter, context: &str) {
        let registry = self.f.registry.clone();
        let inner = registry.read();
        let agents = &inner.orgs[org];
        let selected = agents.select(filter);
        let without_query = AgentFilter {
            query: None,
            ..filter.clone()
        };
        let all: Vec<&AgentId> = agents.iter().map(|(id, _)| id).collect();
        let after = (!all.is_empty() && self.rng.below(2) == 0).then(|| *self.rng.pick(&all));
        let expected: Vec<&AgentId> = agents
            .iter()
            .filter(|(id, e)| e.matches(&without_query) && after.is_none_or(|a| *id > a))
            .map(|(id, _)| id)
            .collect();
        let ids = |entries: &mut dyn Iterator<Item = &'_ Entry>| -> Vec<AgentId> {
            entries.map(|e| e.record().id.clone()).collect()
        };
        let expected: Vec<AgentId> = expected.into_iter().cloned().collect();
        assert_eq!(
            ids(&mut agents.gathered(&selected, after)),
            expected,
            "{context}"
        );
        assert_eq!(
            ids(&mut agents.walked(&selected, after)),
            expected,
            "{context}"
        );
        assert_eq!(
            ids(&mut agents.in_id_order(&selected, after)),
            expected,
            "{context}"
        );
    }

    /// Pages through `org` with `filter`, comparing every page with the one a scan builds.
    fn pages_match_a_scan(&mut self, org: &OrgId, filter: AgentFilter, context: &str) {
        let registry = self.f.registry.clone();
        let mut query = AgentListQuery {
            filter,
            after: None,
            page_size: *self.rng.pick(&[1, 2, 3, 7, 100]),
            max_bytes: *self.rng.pick(&[usize::MAX, 1, 1500, 3000]),
        };
        for _ in 0..1000 {
            let page = registry.list(org, &query);
            let expected = {
                let inner = registry.read();
                scan_list(&inner.orgs[org], &query)
            };
            assert_eq!(page.agents, expected.agents, "{context}");
            assert_eq!(
                (page.total, &page.next_after),
                (expected.total, &expected.next_after),
                "{context}"
            );
            match page.next_after {
                Some(after) => query.after = Some(after),
                None => return,
            }
        }
        panic!("{context}: paging does not end");
    }
}

/// The summary as counting every agent gives it (health from the latest sample).
fn scan_summary(agents: &Agents, thresholds: &HealthThresholds) -> Summary {
    let mut summary = Summary::default();
    for entry in agents.values() {
        match entry.status() {
            AgentStatus::Online => summary.online += 1,
            AgentStatus::Stale => summary.stale += 1,
            AgentStatus::Offline => summary.offline += 1,
            AgentStatus::Expired => {
                summary.expired += 1;
                continue;
            }
        }
        *summary
            .by_os
            .entry(entry.record().system_info.os_name.clone())
            .or_default() += 1;
        let health = health(entry.facts.latest().map(Arc::as_ref), thresholds);
        *summary.health.entry(health).or_default() += 1;
    }
    summary
}

/// The page as testing the filter on every agent in id order builds it.
fn scan_list(agents: &Agents, query: &AgentListQuery) -> Page {
    let mut page = Page::default();
    let mut bytes = 0;
    let mut full = false;
    for (id, entry) in agents.iter() {
        if !entry.matches(&query.filter) {
            continue;
        }
        page.total += 1;
        if query.after.as_ref().is_some_and(|after| id <= after) {
            continue;
        }
        if !full {
            let size = entry.size_bytes();
            full = page.agents.len() == query.page_size
                || (!page.agents.is_empty() && bytes + size > query.max_bytes);
            if !full {
                bytes += size;
                page.agents.push(entry.view());
            }
        }
        if full && page.next_after.is_none() {
            page.next_after = page.agents.last().map(|a| a.record.id.clone());
        }
    }
    page
}

#[tokio::test(start_paused = true)]
async fn counts_and_index_equal_a_scan_after_random_operations() {
    for seed in 1..=6 {
        let agents: Vec<(String, String)> = (0..12)
            .map(|i| (format!("a-{i:02}"), format!("hw-{}", i % 6)))
            .collect();
        let mut world = World::new(fixture_owned(&agents), seed);
        for _ in 0..400 {
            world.change().await;
            world.check(2);
        }
        let statuses: HashSet<AgentStatus> = world.seen.iter().map(|(s, _)| *s).collect();
        let health: HashSet<Health> = world.seen.iter().map(|(_, h)| *h).collect();
        assert_eq!(
            (statuses.len(), health.len()),
            (4, 4),
            "seed {seed}: the operations reach every status and health level"
        );
    }
}

#[test]
fn a_large_org_lists_the_same_whichever_way_the_selection_is_ordered() {
    let agents: Vec<(String, String)> = (0..500)
        .map(|i| (format!("a-{i:03}"), format!("hw-{i}")))
        .collect();
    let f = fixture_owned(&agents);
    // A selective label (below the gathering threshold) and a common one (walked).
    for (i, (id, _)) in agents.iter().enumerate() {
        let mut record = agent_record("acme", id, &format!("hw-{i}"));
        record.labels = Labels::from([
            ("rare".to_owned(), (i % 100 == 7).to_string()),
            ("half".to_owned(), (i % 2).to_string()),
        ]);
        f.registry.enrolled(record);
    }
    let mut world = World::new(f, 42);
    for selector in ["rare=true", "half=1", "rare=true,half=1", "rare!=true"] {
        let filter = AgentFilter {
            selector: Selector::parse(selector).expect("valid"),
            ..AgentFilter::default()
        };
        let org = crate::registry::tests::org();
        {
            let inner = world.f.registry.read();
            let agents = &inner.orgs[&org];
            let selected = agents.select(&filter);
            let gathered: Vec<_> = agents
                .gathered(&selected, None)
                .map(|e| &e.record().id)
                .collect();
            let walked: Vec<_> = agents
                .walked(&selected, None)
                .map(|e| &e.record().id)
                .collect();
            assert_eq!(gathered, walked, "{selector}");
            assert_eq!(gathered.len() as u64, selected.len(), "{selector}");
        }
        world.pages_match_a_scan(&org, filter, selector);
    }
}
