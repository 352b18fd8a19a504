//! The store's maintenance task: when a compaction pass also checkpoints.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{checkpoint_due, run_compaction};
use crate::config::StorageConfig;
use crate::domain::{AgentId, OrgId};
use crate::metrics::Metrics;
use crate::store::{SledStore, Store, Write};
use crate::testing::sample;

#[test]
fn a_checkpoint_is_due_after_its_interval_or_once_the_log_is_full() {
    let config = StorageConfig {
        checkpoint_interval: Duration::from_secs(300),
        checkpoint_log_bytes: 1_000,
        ..StorageConfig::default()
    };
    let soon = Duration::from_secs(10);
    assert!(!checkpoint_due(&config, soon, 0));
    assert!(!checkpoint_due(&config, soon, 999));
    assert!(checkpoint_due(&config, soon, 1_000), "the log is full");
    assert!(checkpoint_due(&config, Duration::from_secs(300), 0));
}

#[tokio::test]
async fn compaction_truncates_a_full_log_long_before_the_checkpoint_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open"));
    let writes: Vec<Write> = (1..=300)
        .map(|seq| Write::PutSample {
            org: OrgId::new("org"),
            agent: AgentId::new("agent"),
            sample: sample(seq),
        })
        .collect();
    store.commit_writes(&writes).expect("commit");
    let logged = store.memory().log_bytes;
    assert!(logged > 0, "the samples are in the log");

    let config = StorageConfig {
        compaction_interval: Duration::from_millis(10),
        checkpoint_interval: Duration::from_secs(3_600),
        checkpoint_log_bytes: logged,
        ..StorageConfig::default()
    };
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_compaction(
        store.clone(),
        config,
        metrics.clone(),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.memory().log_bytes > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the full log was never truncated"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        metrics
            .encode(crate::metrics::Format::Text)
            .contains("tether_store_log_bytes")
    );
    shutdown.cancel();
    task.await.expect("compaction task");
    // Nothing was lost by the truncation: the open head was written first.
    drop(store);
    let store = SledStore::open(dir.path()).expect("reopen");
    let seqs: Vec<u64> = store
        .samples(
            &OrgId::new("org"),
            &AgentId::new("agent"),
            std::time::UNIX_EPOCH,
            std::time::SystemTime::now() + Duration::from_secs(60),
            1_000,
        )
        .expect("read")
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
}
