//! The simulator's enrollments: the JSON-lines state file that lets reruns reuse agent ids and
//! credentials, and the up-front enrollment of every agent missing from it, over a few shared
//! connections.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::report::Reporter;
use super::{SimulateConfig, file_error, lock};
use crate::SyntheticCollector;
use crate::backoff::Backoff;
use crate::client::{self, Transport};
use crate::collector::Collector;
use crate::error::{SimulateError, error_chain};
use crate::state::{Credential, Enrollment};

/// Connections the enrollment phase uses.
const ENROLL_CONNECTIONS: usize = 4;

/// One line of the state file.
#[derive(Serialize, Deserialize)]
struct StateLine {
    hostname: String,
    agent_id: String,
    org_id: String,
    credential: Credential,
}

/// Loads the state file and enrolls every agent missing from it. `None` when `shutdown` fired.
pub(super) async fn enroll_all(
    config: &Arc<SimulateConfig>,
    reporter: &Arc<Reporter>,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<Enrollment>>, SimulateError> {
    let known = match &config.state_file {
        Some(path) => load_state(path)?,
        None => HashMap::new(),
    };
    let mut slots: Vec<Option<Enrollment>> = (0..config.n_agents)
        .map(|index| known.get(&config.identity(index).hostname).cloned())
        .collect();
    let missing: Vec<usize> = (0..config.n_agents)
        .filter(|index| slots[*index].is_none())
        .collect();
    if missing.is_empty() {
        reporter.event(
            "enrolled",
            json!({ "reused": config.n_agents, "enrolled": 0 }),
            &format!(
                "reusing {} enrollments from the state file",
                config.n_agents
            ),
        );
        return Ok(Some(slots.into_iter().flatten().collect()));
    }
    let Some(token) = config.enroll_token.clone() else {
        return Err(SimulateError::NoEnrollToken(missing.len()));
    };
    let started = Instant::now();
    let channels: Vec<tonic::transport::Channel> = (0..ENROLL_CONNECTIONS)
        .map(|_| {
            client::endpoint(&config.server_url, None, config.connect_timeout)
                .map(|endpoint| endpoint.connect_lazy())
        })
        .collect::<Result<_, _>>()?;
    let missing = Arc::new(missing);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let fatal: Arc<Mutex<Option<crate::AgentError>>> = Arc::new(Mutex::new(None));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..config.enroll_concurrency {
        let (config, missing, next, done, results, fatal, token) = (
            config.clone(),
            missing.clone(),
            next.clone(),
            done.clone(),
            results.clone(),
            fatal.clone(),
            token.clone(),
        );
        let channel = channels[worker % channels.len()].clone();
        workers.spawn(async move {
            let mut backoff = Backoff::new(config.backoff.clone());
            loop {
                let slot = next.fetch_add(1, Ordering::Relaxed);
                let Some(&index) = missing.get(slot) else {
                    return;
                };
                let identity = config.identity(index);
                let info = SyntheticCollector::new(
                    identity.hostname.clone(),
                    identity.hardware_id.clone(),
                    identity.os.clone(),
                )
                .system_info();
                loop {
                    if lock(&fatal).is_some() {
                        return;
                    }
                    let client = Transport::Shared(channel.clone())
                        .client(config.connect_timeout)
                        .await;
                    let attempt = match client {
                        Ok(client) => {
                            let call = client::EnrollCall {
                                enroll_token: &token,
                                info: &info,
                                labels: &identity.labels,
                                name: None,
                                previous: None,
                            };
                            client::enroll_on(client, &call).await
                        }
                        Err(error) => Err(error),
                    };
                    match attempt {
                        Ok(enrollment) => {
                            if let Some(path) = &config.state_file
                                && let Err(err) =
                                    append_state(path, &identity.hostname, &enrollment)
                            {
                                *lock(&fatal) = Some(crate::AgentError::Config(format!(
                                    "cannot write the state file: {}",
                                    error_chain(&err)
                                )));
                                return;
                            }
                            lock(&results).push((index, enrollment));
                            done.fetch_add(1, Ordering::Relaxed);
                            backoff.reset();
                            break;
                        }
                        Err(error) if error.is_retryable_enrollment() => {
                            let retry =
                                backoff.failed(error.retry_after(), tokio::time::Instant::now());
                            tokio::time::sleep(retry.delay).await;
                        }
                        Err(error) => {
                            *lock(&fatal) = Some(error);
                            return;
                        }
                    }
                }
            }
        });
    }
    let n_missing = missing.len();
    let mut ticker = tokio::time::interval(config.stats_interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                workers.abort_all();
                return Ok(None);
            }
            joined = workers.join_next() => match joined {
                None => break,
                Some(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Some(_) => {}
            },
            _ = ticker.tick() => {
                let n_done = done.load(Ordering::Relaxed);
                reporter.event(
                    "enrolling",
                    json!({ "enrolled": n_done, "target": n_missing }),
                    &format!("enrolling: {n_done} / {n_missing}"),
                );
            }
        }
    }
    if let Some(error) = lock(&fatal).take() {
        return Err(SimulateError::Enroll(error));
    }
    for (index, enrollment) in lock(&results).drain(..) {
        slots[index] = Some(enrollment);
    }
    let secs = started.elapsed().as_secs_f64();
    reporter.event(
        "enrolled",
        json!({
            "reused": config.n_agents - n_missing,
            "enrolled": n_missing,
            "secs": secs,
            "per_sec": n_missing as f64 / secs.max(1e-9),
        }),
        &format!(
            "enrolled {n_missing} agents in {secs:.1} s ({:.0}/s); reused {}",
            n_missing as f64 / secs.max(1e-9),
            config.n_agents - n_missing
        ),
    );
    Ok(Some(slots.into_iter().flatten().collect()))
}

/// Reads the state file; a later line for the same hostname wins (re-enrollment).
fn load_state(path: &PathBuf) -> Result<HashMap<String, Enrollment>, SimulateError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(source) => return Err(file_error("open", path, source)),
    };
    let mut known = HashMap::new();
    for (line_no, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| file_error("read", path, source))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: StateLine =
            serde_json::from_str(&line).map_err(|source| SimulateError::StateLine {
                path: path.clone(),
                line: line_no + 1,
                source,
            })?;
        known.insert(
            entry.hostname,
            Enrollment {
                agent_id: entry.agent_id,
                org_id: entry.org_id,
                credential: entry.credential,
            },
        );
    }
    Ok(known)
}

/// Appends one enrollment to the state file (created with mode 0600).
pub(super) fn append_state(
    path: &PathBuf,
    hostname: &str,
    enrollment: &Enrollment,
) -> Result<(), SimulateError> {
    let line = serde_json::to_string(&StateLine {
        hostname: hostname.to_owned(),
        agent_id: enrollment.agent_id.clone(),
        org_id: enrollment.org_id.clone(),
        credential: enrollment.credential.clone(),
    })
    .expect("a state line holds only strings, which always serialize");
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|source| file_error("open", path, source))?;
    // One write per line: concurrent appends from several workers never interleave.
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(|source| file_error("write", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips_and_names_a_bad_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sim.state");
        assert!(load_state(&path).expect("absent file").is_empty());
        let enrollment = |agent_id: &str| Enrollment {
            agent_id: agent_id.to_owned(),
            org_id: "o-1".to_owned(),
            credential: Credential::new("secret"),
        };
        append_state(&path, "sim-000000", &enrollment("a-1")).expect("append");
        append_state(&path, "sim-000000", &enrollment("a-2")).expect("append");
        let known = load_state(&path).expect("state");
        assert_eq!(known.len(), 1);
        assert_eq!(
            known["sim-000000"],
            enrollment("a-2"),
            "the later line wins"
        );

        std::fs::write(&path, "\n{\"hostname\":\"h\"}\n").expect("write");
        let err = load_state(&path).expect_err("not a state line");
        assert!(
            matches!(err, SimulateError::StateLine { line: 2, .. }),
            "{err:?}"
        );
        assert!(
            error_chain(&err).starts_with(&format!("{}:2: not a state line: ", path.display())),
            "{err}"
        );
    }
}
