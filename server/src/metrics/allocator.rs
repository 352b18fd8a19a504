//! `tether_allocator_memory_bytes{kind}`: what jemalloc, the server binary's allocator, holds,
//! read from its statistics on every scrape. It splits the process's resident memory into what
//! the server has allocated and what the allocator keeps around it, which `process_*` cannot:
//!
//! - `allocated`: bytes in live allocations (what the code asked for);
//! - `active`: bytes in the pages those allocations sit on (`allocated` plus the free space
//!   of partly used slabs: fragmentation);
//! - `resident`: bytes of the allocator's pages that are resident (`active` plus freed pages
//!   not yet given back to the system, and its metadata);
//! - `metadata`: the allocator's own bookkeeping;
//! - `retained`: address space kept unmapped-but-reserved for reuse (not resident).
//!
//! Memory that does not come from the allocator (thread stacks, sled's and the kernel's
//! mappings) is in `process_resident_memory_bytes` and none of these.
//!
//! **Invariant:** a statistic that cannot be read leaves its series out, never the scrape. The
//! cost is one `epoch` refresh and five reads per scrape, plus jemalloc's statistics counters
//! (its `stats` build option: on in jemalloc's own default build, off in tikv-jemalloc-sys's
//! unless asked for, as the workspace does).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use tikv_jemalloc_ctl::{epoch, stats};

/// Reads jemalloc's statistics on every scrape.
#[derive(Debug)]
pub(super) struct AllocatorCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Reads one of jemalloc's statistics.
type ReadStat = fn() -> tikv_jemalloc_ctl::Result<usize>;

/// The statistics, by their `kind` label, each with its reader.
const KINDS: [(&str, ReadStat); 5] = [
    ("allocated", stats::allocated::read),
    ("active", stats::active::read),
    ("resident", stats::resident::read),
    ("metadata", stats::metadata::read),
    ("retained", stats::retained::read),
];

/// The allocator's statistics now, by kind; empty if jemalloc cannot refresh them.
pub(super) fn read() -> Vec<(&'static str, u64)> {
    // The statistics are a snapshot taken at the last epoch change.
    if epoch::advance().is_err() {
        return Vec::new();
    }
    KINDS
        .iter()
        .filter_map(|(kind, read)| Some((*kind, u64::try_from(read().ok()?).ok()?)))
        .collect()
}

impl Collector for AllocatorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let values = read();
        if values.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "allocator_memory",
            "Memory held by the allocator (jemalloc), by kind: allocated (live allocations), \
             active (their pages), resident, metadata, retained (reserved, not resident).",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for (kind, bytes) in values {
            let metric = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
            metric.encode(family.encode_family(&KindLabels { kind })?)?;
        }
        Ok(())
    }
}
