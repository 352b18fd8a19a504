//! What the benchmark watches through the server's API and the simulators' reports: a fleet
//! client, online counts, every status change with the time it was seen (and the latencies and
//! false transitions derived from them), and the simulators' progress.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use tether_proto as pb;
use tether_tests::{Bearer, CommandClient, FleetClient};
use tonic::transport::{Channel, Endpoint};

use crate::procs::{Simulator, lock};

/// A status change seen by the watcher.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) unix_ms: u64,
    pub(crate) hostname: String,
    pub(crate) to: i32,
}

pub(crate) type Watched = Arc<Mutex<Vec<Seen>>>;

/// Waits until every simulator in `sims` reported `ready`, printing `{phase}: ramping` progress
/// every `poll`.
///
/// # Errors
///
/// A simulator exited, or `limit` passed since `started`.
pub(crate) async fn wait_ready(
    phase: &str,
    sims: &mut [&mut Simulator],
    started: Instant,
    limit: Duration,
    poll: Duration,
    dir: &Path,
) -> anyhow::Result<()> {
    loop {
        for sim in sims.iter_mut() {
            if !sim.running() {
                bail!(
                    "simulator {} exited early; see its log in {}",
                    sim.prefix,
                    dir.display()
                );
            }
        }
        if sims.iter().all(|sim| sim.ready()) {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("not every agent came online within {limit:?}");
        }
        let views: Vec<&Simulator> = sims.iter().map(|sim| &**sim).collect();
        progress(&format!("{phase}: ramping"), &views);
        tokio::time::sleep(poll).await;
    }
}

pub(crate) async fn fleet_client(url: &str, token: &str) -> anyhow::Result<FleetClient> {
    Ok(
        pb::fleet_service_client::FleetServiceClient::with_interceptor(
            channel(url).await?,
            Bearer(Some(token.to_owned())),
        )
        .max_decoding_message_size(64 << 20),
    )
}

pub(crate) async fn command_client(url: &str, token: &str) -> anyhow::Result<CommandClient> {
    Ok(
        pb::command_service_client::CommandServiceClient::with_interceptor(
            channel(url).await?,
            Bearer(Some(token.to_owned())),
        )
        .max_decoding_message_size(64 << 20),
    )
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connect to the server")
}

pub(crate) async fn count_online(fleet: &mut FleetClient, selector: &str) -> anyhow::Result<u32> {
    Ok(fleet
        .list_agents(pb::ListAgentsRequest {
            statuses: vec![pb::AgentStatus::Online as i32],
            label_selector: selector.to_owned(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .total_size)
}

/// Records every STATUS_CHANGED event until the stream ends.
pub(crate) async fn watch(mut fleet: FleetClient, watched: Watched) {
    let Ok(response) = fleet.watch_agents(pb::WatchAgentsRequest::default()).await else {
        eprintln!("watcher: WatchAgents failed");
        return;
    };
    let mut stream = response.into_inner();
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if event.kind != pb::AgentEventKind::StatusChanged as i32 {
                    continue;
                }
                let Some(agent) = event.agent else { continue };
                let hostname = agent
                    .system_info
                    .map(|info| info.hostname)
                    .unwrap_or(agent.name);
                lock(&watched).push(Seen {
                    unix_ms: unix_ms(SystemTime::now()),
                    hostname,
                    to: agent.status,
                });
            }
            Ok(None) => return,
            Err(status) => {
                if status.code() == tonic::Code::Aborted {
                    eprintln!("watcher: fell behind and was aborted: {}", status.message());
                }
                return;
            }
        }
    }
}

/// For each agent whose hostname starts with `prefix`: ms from `since` to its first change to
/// `status` at or after `since`.
pub(crate) fn first_latencies(
    watched: &Watched,
    prefix: &str,
    status: pb::AgentStatus,
    since: u64,
) -> Vec<f64> {
    let mut first: HashMap<String, u64> = HashMap::new();
    for seen in lock(watched).iter() {
        if seen.to == status as i32 && seen.hostname.starts_with(prefix) && seen.unix_ms >= since {
            first.entry(seen.hostname.clone()).or_insert(seen.unix_ms);
        }
    }
    first.values().map(|at| (at - since) as f64).collect()
}

/// Changes away from online for agents that were never closed or silenced (the main group,
/// and the close group before `close_at`).
pub(crate) fn false_transitions(watched: &Watched, close_at: u64) -> usize {
    lock(watched)
        .iter()
        .filter(|s| s.to != pb::AgentStatus::Online as i32)
        .filter(|s| {
            s.hostname.starts_with("main-")
                || (s.hostname.starts_with("close-") && s.unix_ms < close_at)
        })
        .count()
}

fn progress(what: &str, sims: &[&Simulator]) {
    let parts: Vec<String> = sims
        .iter()
        .map(|s| {
            let latest = s.latest().unwrap_or_default();
            format!(
                "{} {}/{} (errors {}, stopped {})",
                s.prefix,
                latest["online"].as_u64().unwrap_or(0),
                s.n_agents,
                latest["errors"].as_u64().unwrap_or(0),
                latest["stopped"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    eprintln!("{what}: {}", parts.join(", "));
}

pub(crate) fn to_duration(d: Option<&prost_types::Duration>) -> Duration {
    d.map_or(Duration::ZERO, |d| {
        Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
    })
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    // Times before the epoch clamp to 0.
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How a fleet came back after a restart, from online counts polled at intervals.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Return {
    /// From the restart until every agent was online, if they all were in time.
    pub(crate) back: Option<Duration>,
    /// From the first agent online to the last: the window their reconnects spread over.
    pub(crate) spread: Option<Duration>,
    /// Most agents that came online within any one second.
    pub(crate) peak_per_second: u32,
}

/// Polls the online count of `selector` every 100 ms from `since` until `n` agents are online
/// or `limit` passed.
pub(crate) async fn observe_return(
    fleet: &mut FleetClient,
    selector: &str,
    n: usize,
    since: Instant,
    limit: Duration,
) -> Return {
    let mut polls = Vec::new();
    loop {
        let online = count_online(fleet, selector).await.unwrap_or(0);
        polls.push((since.elapsed(), online));
        if online as usize >= n || since.elapsed() > limit {
            return summarize_return(&polls, n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`Return`] of `polls` (time since the restart, agents online), in time order; nobody is
/// online at the restart itself.
pub(crate) fn summarize_return(polls: &[(Duration, u32)], n: usize) -> Return {
    let first = polls
        .iter()
        .find(|(_, online)| *online > 0)
        .map(|(t, _)| *t);
    let back = polls
        .iter()
        .find(|(_, online)| *online as usize >= n)
        .map(|(t, _)| *t);
    let mut points = vec![(Duration::ZERO, 0)];
    points.extend_from_slice(polls);
    // The largest rise between two polls at most a second apart.
    let mut peak = 0;
    for (i, (t_from, from)) in points.iter().enumerate() {
        for (t_to, to) in &points[i + 1..] {
            if *t_to > *t_from + Duration::from_secs(1) {
                break;
            }
            peak = peak.max(to.saturating_sub(*from));
        }
    }
    Return {
        back,
        spread: first
            .zip(back)
            .map(|(first, back)| back.saturating_sub(first)),
        peak_per_second: peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, online: u32) -> (Duration, u32) {
        (Duration::from_millis(ms), online)
    }

    #[test]
    fn the_peak_is_the_largest_rise_within_a_second_and_the_spread_first_to_last() {
        // 10 back in the first half second, then 5 a second for two seconds.
        let polls = [at(300, 4), at(500, 10), at(1500, 15), at(2500, 20)];
        let back = summarize_return(&polls, 20);
        assert_eq!(back.peak_per_second, 10);
        assert_eq!(back.back, Some(Duration::from_millis(2500)));
        assert_eq!(back.spread, Some(Duration::from_millis(2200)));

        let short = summarize_return(&[at(2000, 3)], 5);
        assert_eq!(
            (short.back, short.spread, short.peak_per_second),
            (None, None, 0)
        );
    }
}
