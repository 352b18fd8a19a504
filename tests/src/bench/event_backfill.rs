//! The backfill of the `event-stats` phase: 30 days of synthetic events written into a fresh
//! data directory before the server starts on it, through the server's own events code
//! (`events::task::BulkLoader`: the events task's planning — dedupe marks, fingerprint
//! repeats, hourly counts, change log — committed straight into the store, in big batches),
//! with every agent's record stored as enrollment stores it, so selectors resolve.
//!
//! Two orgs: the measured one (`default`, `--event-stats-agents` agents) and another one with a
//! tenth of its agents and events, so that the measured org's reads pay for sharing the store.
//! The events mix about 200 kinds with a long tail (20 families, most of the volume in a few
//! kinds), four severities, a few attributes, a day/night rhythm, a few noisy agents, and
//! bursts of fingerprinted repeats that the server folds into one stored event each.
//!
//! Invariant: the [`Tally`] counts exactly the occurrences handed to the loader for the
//! measured org (by hour, severity, kind and agent), independently of the store: it is the
//! brute-force answer the statistics are checked against.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tether_server::domain::{AgentId, AgentRecord, OrgId, OrgRecord, SystemInfo};
use tether_server::events::EventsConfig;
use tether_server::events::keys::{HOUR_MS, NewEvent, Severity};
use tether_server::events::task::{BulkLoader, Report};
use tether_server::store::{SledStore, Store, Write};

/// The measured org.
pub(crate) const ORG: &str = "default";
/// The other org, sharing the store.
const OTHER_ORG: &str = "lab";
/// Most events one report holds (the contract's limit).
const MAX_REPORT: usize = 512;
/// Share of events from the noisy agents (one agent in a hundred).
const NOISY_SHARE: f64 = 0.2;
/// Share of events that start a burst of fingerprinted repeats.
const BURST_SHARE: f64 = 0.02;
/// Share of the other events that carry a fingerprint.
const FINGERPRINT_SHARE: f64 = 0.08;
/// The selector the phase filters on, and the labels the agents draw from.
pub(crate) const SELECTOR: &str = "env=prod,region=eu";
const ENVS: [(&str, f64); 3] = [("prod", 0.6), ("staging", 0.25), ("dev", 0.15)];
const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// Kind families and their kinds, each with its usual severity (1 info .. 4 critical).
const FAMILIES: &[(&str, &[(&str, u8)])] = &[
    (
        "ssh",
        &[
            ("login_failed", 2),
            ("login_ok", 1),
            ("invalid_user", 2),
            ("preauth_closed", 1),
            ("too_many_auth", 3),
        ],
    ),
    ("sudo", &[("command", 1), ("auth_failed", 3)]),
    (
        "service",
        &[
            ("started", 1),
            ("stopped", 1),
            ("crashed", 3),
            ("restarted", 2),
            ("timeout", 3),
        ],
    ),
    (
        "disk",
        &[
            ("usage_high", 2),
            ("io_error", 3),
            ("smart_warning", 2),
            ("remount_ro", 4),
        ],
    ),
    ("memory", &[("pressure", 2), ("oom_kill", 3)]),
    ("cpu", &[("sustained_high", 2), ("throttled", 2)]),
    (
        "net",
        &[
            ("link_down", 3),
            ("link_up", 1),
            ("dns_failure", 2),
            ("port_scan", 3),
            ("conn_refused", 1),
        ],
    ),
    (
        "honeypot",
        &[
            ("telnet.login", 3),
            ("ssh.command", 3),
            ("http.probe", 2),
            ("smb.probe", 2),
            ("rdp.probe", 2),
            ("malware.upload", 4),
        ],
    ),
    (
        "kernel",
        &[
            ("panic", 4),
            ("oops", 3),
            ("segfault", 3),
            ("usb_attach", 1),
        ],
    ),
    (
        "package",
        &[("installed", 1), ("removed", 1), ("update_available", 1)],
    ),
    ("cron", &[("job_failed", 3), ("job_ok", 1)]),
    ("tls", &[("cert_expiring", 2), ("handshake_failed", 2)]),
    ("auth", &[("pam_failure", 2), ("account_locked", 3)]),
];
/// Applications of the long tail, each with a few kinds.
const APPS: usize = 40;
const APP_KINDS: [(&str, u8); 4] = [
    ("error", 3),
    ("warning", 2),
    ("slow_request", 2),
    ("fatal", 4),
];

/// How much to backfill.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) agents: usize,
    pub(crate) events: u64,
    pub(crate) days: u64,
    /// Events per commit (whole hours are gathered until a batch holds at least this many).
    pub(crate) batch_events: usize,
    pub(crate) seed: u64,
}

/// One kind of the mix.
pub(crate) struct Kind {
    pub(crate) name: String,
    pub(crate) family: &'static str,
    severity: u8,
    /// Cumulative weight, for drawing.
    cumulative: f64,
}

/// One agent of the measured org.
pub(crate) struct Agent {
    pub(crate) id: AgentId,
    /// Whether its labels match [`SELECTOR`].
    pub(crate) selected: bool,
}

/// What the loader was given for the measured org, counted independently of the store.
pub(crate) struct Tally {
    /// The first hour (ms); hour `i` of the tally starts `i` hours later.
    pub(crate) start_ms: u64,
    pub(crate) kinds: Vec<Kind>,
    pub(crate) agents: Vec<Agent>,
    /// (hour, severity 1..=4, kind) → occurrences.
    pub(crate) by_hour: HashMap<(u32, u8, u16), u64>,
    /// The same, of the agents [`SELECTOR`] selects only.
    pub(crate) selected_by_hour: HashMap<(u32, u8, u16), u64>,
    /// (agent, severity, kind) → occurrences.
    pub(crate) by_agent: HashMap<(u32, u8, u16), u64>,
}

/// What the backfill did.
pub(crate) struct Backfilled {
    pub(crate) tally: Tally,
    pub(crate) agents: usize,
    pub(crate) totals: Totals,
    pub(crate) elapsed: Duration,
    /// Bytes the store's files hold on disk after the backfill (allocated blocks).
    pub(crate) disk_bytes: u64,
}

/// The loader's work, summed over its commits.
#[derive(Default)]
pub(crate) struct Totals {
    /// Occurrences in both orgs, and in the measured one.
    pub(crate) events: u64,
    pub(crate) measured_events: u64,
    pub(crate) commits: u64,
    pub(crate) writes: u64,
    /// Time the loader spent planning (reading the store) and committing (apply and flush).
    pub(crate) planned: Duration,
    pub(crate) committed: Duration,
}

/// A small deterministic generator (splitmix64): the same seed backfills the same events.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// One org's generator state.
struct OrgGen {
    org: OrgId,
    ids: Vec<AgentId>,
    seqs: Vec<u64>,
    events: u64,
    /// Occurrences per hour (`hour_weights` spread over `events`).
    per_hour: Vec<u64>,
}

/// One occurrence before seqs are given.
struct Draft {
    time_ms: u64,
    agent: u32,
    kind: u16,
    severity: u8,
    fingerprint: String,
    attributes: BTreeMap<String, String>,
}

/// Backfills `store_dir` (the server's `{data dir}/store`) as `plan` says, printing progress.
///
/// # Errors
///
/// The store's, or a report the loader refused.
pub(crate) fn backfill(store_dir: &Path, plan: &Plan) -> anyhow::Result<Backfilled> {
    let now_ms = unix_ms(SystemTime::now());
    let end_hour = now_ms - now_ms % HOUR_MS;
    let start_ms = end_hour - plan.days * 24 * HOUR_MS;
    // Whole hours, then the current hour up to now.
    let n_hours = (plan.days * 24 + 1) as usize;
    let mut rng = Rng(plan.seed);
    let kinds = kinds(&mut rng);
    let store = Arc::new(SledStore::open(store_dir).context("open the store to backfill")?);
    let mut agents = Vec::with_capacity(plan.agents);
    let measured = enroll(&*store, ORG, plan.agents, &mut rng, &mut agents)?;
    let other = enroll(
        &*store,
        OTHER_ORG,
        plan.agents / 10,
        &mut rng,
        &mut Vec::new(),
    )?;
    let weights = hour_weights(start_ms, n_hours, now_ms);
    let mut orgs = [
        OrgGen::new(ORG, measured, plan.events, &weights),
        OrgGen::new(OTHER_ORG, other, plan.events / 10, &weights),
    ];
    let mut tally = Tally {
        start_ms,
        kinds,
        agents,
        by_hour: HashMap::new(),
        selected_by_hour: HashMap::new(),
        by_agent: HashMap::new(),
    };
    let loader = BulkLoader::new(store.clone(), EventsConfig::default());
    let mut done = Totals::default();
    let total: u64 = orgs.iter().map(|o| o.events).sum();
    let started = Instant::now();
    let mut next_progress = total / 10;
    let mut hour = 0;
    while hour < n_hours {
        let mut reports = Vec::new();
        let mut in_batch = 0;
        while hour < n_hours && in_batch < plan.batch_events {
            for (org_idx, org_gen) in orgs.iter_mut().enumerate() {
                let hour_ms = start_ms + hour as u64 * HOUR_MS;
                let hour_end = (hour_ms + HOUR_MS).min(now_ms);
                let mut drafts = org_gen.drafts(&mut rng, &tally.kinds, hour_ms, hour_end, hour);
                drafts.sort_by_key(|d| d.time_ms);
                in_batch += drafts.len();
                if org_idx == 0 {
                    tally.count(hour as u32, &drafts);
                    done.measured_events += drafts.len() as u64;
                }
                done.events += drafts.len() as u64;
                org_gen.reports(drafts, &tally.kinds, &mut reports);
            }
            hour += 1;
        }
        if reports.is_empty() {
            continue;
        }
        let loaded = loader
            .load(&reports, unix_ms(SystemTime::now()))
            .context("backfill a batch")?;
        if let Some(Err(e)) = loaded.settled.iter().find(|s| s.is_err()) {
            bail!("the loader refused a backfilled report: {e}");
        }
        done.commits += 1;
        done.writes += loaded.writes as u64;
        done.planned += loaded.planned_in;
        done.committed += loaded.committed_in;
        if done.events >= next_progress {
            eprintln!(
                "event-stats: backfilled {} of {total} events ({:.0}/s; planning {:.0?}, committing {:.0?})",
                done.events,
                done.events as f64 / started.elapsed().as_secs_f64(),
                done.planned,
                done.committed,
            );
            next_progress += total / 10;
        }
    }
    let elapsed = started.elapsed();
    drop(loader);
    // Closing the store flushes it: the size on disk is what the server opens.
    let store = Arc::into_inner(store).context("the store is still shared after the backfill")?;
    drop(store);
    Ok(Backfilled {
        tally,
        agents: orgs.iter().map(|o| o.ids.len()).sum(),
        totals: done,
        elapsed,
        disk_bytes: disk_bytes(store_dir)?,
    })
}

/// The kind mix: every family's kinds and the applications' kinds, weighted by a power law
/// (a long tail: a few kinds carry most events).
fn kinds(rng: &mut Rng) -> Vec<Kind> {
    let mut kinds: Vec<(String, &'static str, u8)> = FAMILIES
        .iter()
        .flat_map(|(family, kinds)| {
            kinds
                .iter()
                .map(move |(name, sev)| (format!("{family}.{name}"), *family, *sev))
        })
        .collect();
    for app in 0..APPS {
        for (name, sev) in APP_KINDS {
            kinds.push((format!("app.svc{app:02}.{name}"), "app", sev));
        }
    }
    // Ranked by usual severity plus noise, so the common kinds are mostly info and warning
    // (about 56 % info, 33 % warning, 8 % error, 3 % critical), then weighted 1/(rank+1)^1.1.
    let mut keyed: Vec<(f64, _)> = kinds
        .into_iter()
        .map(|k| (f64::from(k.2) + 2.5 * rng.unit(), k))
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let kinds = keyed.into_iter().map(|(_, k)| k);
    let mut cumulative = 0.0;
    kinds
        .enumerate()
        .map(|(rank, (name, family, severity))| {
            cumulative += 1.0 / ((rank + 1) as f64).powf(1.1);
            Kind {
                name,
                family,
                severity,
                cumulative,
            }
        })
        .collect()
}

/// Stores the org and `n` agents with the fleet benchmark's label mix; returns the org's ids.
fn enroll(
    store: &dyn Store,
    org: &str,
    n: usize,
    rng: &mut Rng,
    agents: &mut Vec<Agent>,
) -> anyhow::Result<Vec<AgentId>> {
    let org_id = OrgId::new(org);
    let enrolled_at = SystemTime::now();
    let mut writes = vec![Write::PutOrg(OrgRecord {
        id: org_id.clone(),
        display_name: if org == ORG { "Default" } else { "Lab" }.to_owned(),
        created_at: enrolled_at,
    })];
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = AgentId::new(format!("{:016x}", rng.next_u64()));
        let draw = rng.unit();
        let mut acc = 0.0;
        let env = ENVS
            .iter()
            .find(|(_, w)| {
                acc += w;
                draw < acc
            })
            .map_or("prod", |(e, _)| e);
        let region = REGIONS[rng.below(REGIONS.len() as u64) as usize];
        let labels = [
            ("env".to_owned(), env.to_owned()),
            ("region".to_owned(), region.to_owned()),
            ("role".to_owned(), "sensor".to_owned()),
        ]
        .into();
        writes.push(Write::PutAgent(AgentRecord {
            id: id.clone(),
            org: org_id.clone(),
            name: format!("{org}-host-{i:05}"),
            labels,
            system_info: SystemInfo {
                hostname: format!("{org}-host-{i:05}.example"),
                os_name: "linux".to_owned(),
                hardware_id: format!("hw-{id}"),
                ..SystemInfo::default()
            },
            enrolled_at,
            pinned_labels: Default::default(),
            reclaim_until: None,
        }));
        agents.push(Agent {
            id: id.clone(),
            selected: env == "prod" && region == "eu",
        });
        ids.push(id);
    }
    for chunk in writes.chunks(2048) {
        store.commit_writes(chunk).context("store the agents")?;
    }
    Ok(ids)
}

/// Each hour's share of the events: a day/night rhythm, the current hour by its elapsed part.
fn hour_weights(start_ms: u64, n_hours: usize, now_ms: u64) -> Vec<f64> {
    (0..n_hours)
        .map(|h| {
            let hour_ms = start_ms + h as u64 * HOUR_MS;
            let of_day = (hour_ms / HOUR_MS % 24) as f64;
            let rhythm = 1.0 + 0.5 * (std::f64::consts::TAU * (of_day - 8.0) / 24.0).sin();
            let part = ((now_ms.min(hour_ms + HOUR_MS) - hour_ms) as f64 / HOUR_MS as f64).max(0.0);
            rhythm * part
        })
        .collect()
}

// === impl OrgGen ===

impl OrgGen {
    fn new(org: &str, ids: Vec<AgentId>, events: u64, weights: &[f64]) -> Self {
        let sum: f64 = weights.iter().sum();
        // Cumulative rounding: the hours add up to exactly `events`.
        let mut per_hour = Vec::with_capacity(weights.len());
        let (mut acc, mut given) = (0.0, 0);
        for w in weights {
            acc += w;
            let upto = (acc / sum * events as f64).round() as u64;
            per_hour.push(upto - given);
            given = upto;
        }
        Self {
            org: OrgId::new(org),
            seqs: vec![0; ids.len()],
            ids,
            events,
            per_hour,
        }
    }

    /// The occurrences of one hour (`from..to`, ms), exactly its share.
    fn drafts(&self, rng: &mut Rng, kinds: &[Kind], from: u64, to: u64, hour: usize) -> Vec<Draft> {
        let quota = self.per_hour[hour] as usize;
        let span = to.saturating_sub(from).max(1);
        let n_agents = self.ids.len() as u64;
        let noisy = (n_agents / 100).max(1);
        let total_weight = kinds.last().map_or(1.0, |k| k.cumulative);
        let mut drafts = Vec::with_capacity(quota);
        while drafts.len() < quota {
            let agent = if rng.unit() < NOISY_SHARE {
                rng.below(noisy)
            } else {
                rng.below(n_agents)
            } as u32;
            let draw = rng.unit() * total_weight;
            let kind = kinds
                .partition_point(|k| k.cumulative < draw)
                .min(kinds.len() - 1);
            let base = kinds[kind].severity;
            let severity = match rng.below(20) {
                0 => base.saturating_sub(1).max(1),
                1 => (base + 1).min(4),
                _ => base,
            };
            let time_ms = from + rng.below(span);
            let attributes = attributes(rng, kinds[kind].family);
            if rng.unit() < BURST_SHARE {
                // Repeats of one fingerprinted event, 10 to 40 s apart, within the hour.
                let fingerprint = format!("burst-{:08x}", rng.next_u64() as u32);
                let (n, gap) = (3 + rng.below(18), 10_000 + rng.below(30_000));
                for i in 0..n {
                    let at = time_ms + i * gap;
                    if at >= to || drafts.len() >= quota {
                        break;
                    }
                    drafts.push(Draft {
                        time_ms: at,
                        agent,
                        kind: kind as u16,
                        severity,
                        fingerprint: fingerprint.clone(),
                        attributes: attributes.clone(),
                    });
                }
                continue;
            }
            let fingerprint = if rng.unit() < FINGERPRINT_SHARE {
                format!("{}:{}", kinds[kind].name, rng.below(4))
            } else {
                String::new()
            };
            drafts.push(Draft {
                time_ms,
                agent,
                kind: kind as u16,
                severity,
                fingerprint,
                attributes,
            });
        }
        drafts
    }

    /// Gives the drafts (in time order) their agents' next seqs and appends them to `reports`,
    /// one report per agent (split at the contract's limit).
    fn reports(&mut self, drafts: Vec<Draft>, kinds: &[Kind], reports: &mut Vec<Report>) {
        let mut by_agent: BTreeMap<u32, Vec<NewEvent>> = BTreeMap::new();
        for d in drafts {
            let seq = &mut self.seqs[d.agent as usize];
            *seq += 1;
            let kind = &kinds[d.kind as usize].name;
            by_agent.entry(d.agent).or_default().push(NewEvent {
                seq: *seq,
                time: UNIX_EPOCH + Duration::from_millis(d.time_ms),
                message: message(kind, &d.attributes),
                kind: kind.clone(),
                severity: severity(d.severity),
                attributes: d.attributes,
                fingerprint: d.fingerprint,
            });
        }
        for (agent, events) in by_agent {
            for chunk in events.chunks(MAX_REPORT) {
                reports.push(Report {
                    org: self.org.clone(),
                    agent: self.ids[agent as usize].clone(),
                    max_seq: chunk.last().map_or(0, |e| e.seq),
                    events: chunk.to_vec(),
                });
            }
        }
    }
}

fn severity(n: u8) -> Severity {
    match n {
        1 => Severity::Info,
        2 => Severity::Warning,
        3 => Severity::Error,
        _ => Severity::Critical,
    }
}

/// A few attributes, as the family's sources report them.
fn attributes(rng: &mut Rng, family: &str) -> BTreeMap<String, String> {
    let ip = |rng: &mut Rng| {
        let n = rng.next_u64();
        format!("203.0.{}.{}", n % 256, (n >> 8) % 256)
    };
    let mut out = BTreeMap::new();
    match family {
        "ssh" | "honeypot" | "auth" => {
            out.insert("source_ip".to_owned(), ip(rng));
            let users = ["root", "admin", "ubuntu", "oracle", "test", "deploy"];
            out.insert(
                "user".to_owned(),
                users[rng.below(users.len() as u64) as usize].to_owned(),
            );
        }
        "service" | "cron" | "app" => {
            out.insert("unit".to_owned(), format!("svc-{}", rng.below(30)));
        }
        "disk" => {
            let mounts = ["/", "/var", "/data", "/home"];
            out.insert(
                "mount".to_owned(),
                mounts[rng.below(mounts.len() as u64) as usize].to_owned(),
            );
            out.insert("percent".to_owned(), (85 + rng.below(15)).to_string());
        }
        _ => {}
    }
    out
}

fn message(kind: &str, attributes: &BTreeMap<String, String>) -> String {
    let detail: Vec<String> = attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{kind} reported by the local sensor: {}", detail.join(" "))
}

// === impl Tally ===

impl Tally {
    fn count(&mut self, hour: u32, drafts: &[Draft]) {
        for d in drafts {
            *self.by_hour.entry((hour, d.severity, d.kind)).or_default() += 1;
            if self.agents[d.agent as usize].selected {
                *self
                    .selected_by_hour
                    .entry((hour, d.severity, d.kind))
                    .or_default() += 1;
            }
            *self
                .by_agent
                .entry((d.agent, d.severity, d.kind))
                .or_default() += 1;
        }
    }
}

/// Allocated bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
