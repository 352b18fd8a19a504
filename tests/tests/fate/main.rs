//! Fate isolation: whatever one agent or caller sends, every other client keeps what it was
//! promised. An acknowledged sample is stored, every audited call is in its org's chain, and
//! the chain verifies.
//!
//! Each test runs a real server, real agents and the real CLI; the attackers drive the protocol
//! by hand. After the run the server is stopped and its store is read directly (test-support),
//! so what was acknowledged is compared with what is on disk, not with what the server says.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tether_server::store::sled::test_support::RawStore;
use tether_tests::{
    AdminClient, RawSession, TestServer, eventually, fast_config, sample, trace_init,
};
use tonic::Code;

use pb::connect_request::Message as In;

mod edge;
mod failure;
mod property;
mod repro;

const ORG: &str = "default";
const CREATE_TOKEN: &str = "/tether.v1.AdminService/CreateToken";

/// A wire timestamp `secs` seconds from the Unix epoch (negative: before it).
fn wire_time(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

/// 1960-01-01T00:00:00Z.
const BEFORE_1970: i64 = -315_619_200;

/// A sample with `seq` dated `secs` from the Unix epoch.
fn sample_at(seq: u64, secs: i64) -> pb::MetricsSample {
    pb::MetricsSample {
        time: Some(wire_time(secs)),
        ..sample(seq)
    }
}

fn report(samples: Vec<pb::MetricsSample>) -> In {
    In::Metrics(pb::MetricsReport {
        deferred_seq: 0,
        samples,
        previous_ack_latency: None,
    })
}

/// Every audit event of the caller's org with `method`, in seq order.
async fn audit_of(admin: &AdminClient, method: &str) -> Vec<pb::AuditEvent> {
    let filter = pb::ListAuditEventsRequest {
        method: method.to_owned(),
        page_size: 1000,
        ..Default::default()
    };
    tether_tests::list_audit(admin, filter).await
}

/// The seqs stored for `agent` of `org` in the store of a stopped server whose data directory
/// is `data_dir`.
fn stored_seqs(data_dir: &Path, org: &str, agent: &str) -> BTreeSet<u64> {
    RawStore::open(data_dir.join("store"))
        .expect("open the stopped server's store")
        .sample_seqs(org, agent)
        .expect("read sample keys")
        .into_iter()
        .collect()
}

/// The seqs in `1..=acked` that are not in `stored`.
fn missing(stored: &BTreeSet<u64>, acked: u64) -> Vec<u64> {
    (1..=acked).filter(|seq| !stored.contains(seq)).collect()
}

/// Counts answers by gRPC code.
#[derive(Debug, Default)]
struct Codes(std::collections::BTreeMap<String, u64>);

impl Codes {
    fn add(&mut self, code: Code) {
        *self.0.entry(format!("{code:?}")).or_default() += 1;
    }

    fn get(&self, code: Code) -> u64 {
        self.0.get(&format!("{code:?}")).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}
