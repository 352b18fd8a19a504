use super::fleet::{OTHER_ORGS, org_series};
use super::process::{parse_boot_time, parse_max_fds, parse_stat, parse_status_kib};
use super::*;
use crate::domain::OrgId;

#[test]
fn prometheus_asks_for_openmetrics_and_everyone_else_gets_the_text_format() {
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
    assert_eq!(
        Format::negotiate(Some("application/openmetrics-text")),
        Format::OpenMetrics
    );
    for text in [
        None,
        Some(""),
        Some("*/*"),
        Some("text/plain"),
        Some("text/plain;version=0.0.4"),
        Some("application/openmetrics-text;q=0.3, text/plain"),
        Some("application/openmetrics-text;q=0"),
        Some("application/json"),
    ] {
        assert_eq!(Format::negotiate(text), Format::Text, "{text:?}");
    }
    assert!(
        Format::Text
            .content_type()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        Format::OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text")
    );
}

#[test]
fn the_text_format_names_counters_by_their_samples_and_drops_what_only_openmetrics_has() {
    let openmetrics = "\
# HELP tether_x Things done.
# TYPE tether_x counter
tether_x_total{kind=\"a # b\"} 3 # {trace=\"1\"} 1.0
# HELP tether_commit_seconds Commit time.
# TYPE tether_commit_seconds histogram
# UNIT tether_commit_seconds seconds
tether_commit_seconds_sum 0.5
tether_commit_seconds_count 1
tether_commit_seconds_bucket{le=\"+Inf\"} 1
# HELP tether_build Build.
# TYPE tether_build info
tether_build_info{version=\"1\"} 1
# HELP tether_odd Odd.
# TYPE tether_odd unknown
tether_odd 1
# EOF
";
    let expected = "\
# HELP tether_x_total Things done.
# TYPE tether_x_total counter
tether_x_total{kind=\"a # b\"} 3
# HELP tether_commit_seconds Commit time.
# TYPE tether_commit_seconds histogram
tether_commit_seconds_sum 0.5
tether_commit_seconds_count 1
tether_commit_seconds_bucket{le=\"+Inf\"} 1
# HELP tether_build_info Build.
# TYPE tether_build_info gauge
tether_build_info{version=\"1\"} 1
# HELP tether_odd Odd.
# TYPE tether_odd untyped
tether_odd 1
";
    assert_eq!(to_text_format(openmetrics), expected);
}

#[test]
fn every_family_has_help_and_counters_end_in_total() {
    let metrics = Metrics::new();
    metrics.limit("max_labels");
    metrics.observe_commit(12, std::time::Duration::from_millis(3));
    let text = metrics.encode(Format::Text);
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help:\n{text}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            typed.push(name.to_owned());
        }
    }
    for name in [
        "tether_build_info",
        "tether_agent_messages_total",
        "tether_writer_batch_writes",
        "tether_writer_commit_seconds",
        "tether_rpc_requests_total",
        "tether_rpc_duration_seconds",
        "tether_rpc_in_flight",
        "tether_limit_violations_total",
    ] {
        assert!(typed.iter().any(|t| t == name), "{name} missing:\n{text}");
    }
    assert!(
        text.contains("tether_writer_batch_writes_count 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tether_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    let openmetrics = metrics.encode(Format::OpenMetrics);
    assert!(openmetrics.ends_with("# EOF\n"));
}

#[cfg(target_os = "linux")]
#[test]
fn the_process_families_are_read_from_proc() {
    let text = Metrics::new().encode(Format::Text);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} sample:\n{text}"));
        let value: f64 = value.parse().expect("a number");
        assert!(value >= 0.0, "{name} {value}");
    }
}

#[test]
fn proc_files_parse() {
    let stat = "7425 (my (odd) cmd) R 7420 7420 18478 0 -1 4194304 102 0 0 0 250 50 0 0 20 0 \
                7 0 1429097 3133440 390 18446744073709551615";
    let parsed = parse_stat(stat).expect("stat parses");
    assert!((parsed.cpu_seconds - 3.0).abs() < 1e-9, "{parsed:?}");
    assert!(
        (parsed.start_after_boot - 14290.97).abs() < 1e-6,
        "{parsed:?}"
    );
    assert_eq!(parsed.threads, 7);
    assert_eq!(parse_stat("garbage"), None);
    assert_eq!(parse_stat("1 (x) R 2"), None);

    let status = "Name:\tcat\nVmSize:\t    3892 kB\nVmRSS:\t    2072 kB\nThreads:\t1\n";
    assert_eq!(parse_status_kib(status, "VmRSS"), Some(2072));
    assert_eq!(parse_status_kib(status, "VmSize"), Some(3892));
    assert_eq!(parse_status_kib(status, "VmSwap"), None);

    assert_eq!(
        parse_boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
        Some(1_700_000_000.0)
    );
    assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);

    let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                  Max open files            20000                40000                files\n";
    assert_eq!(parse_max_fds(limits), Some(20_000));
    let unlimited = "Max open files            unlimited            unlimited            files\n";
    assert_eq!(parse_max_fds(unlimited), None);
}

#[test]
fn org_series_keep_the_largest_orgs_and_sum_the_rest() {
    let orgs = vec![
        (OrgId::new("small"), [1, 0, 0, 0]),
        (OrgId::new("big"), [5, 1, 2, 0]),
        (OrgId::new("mid-b"), [2, 0, 1, 0]),
        (OrgId::new("mid-a"), [3, 0, 0, 0]),
    ];
    let series = org_series(&orgs, 2);
    assert_eq!(
        series,
        vec![
            ("big".to_owned(), [5, 1, 2, 0]),
            ("mid-a".to_owned(), [3, 0, 0, 0]),
            (OTHER_ORGS.to_owned(), [3, 0, 1, 0]),
        ]
    );
    assert_eq!(org_series(&orgs, 10).len(), 4, "no _other when all fit");
    assert!(org_series(&[], MAX_ORG_SERIES).is_empty());
    // Whatever the number of orgs, the series stay bounded.
    let many: Vec<_> = (0..1000)
        .map(|i| (OrgId::new(format!("org-{i}")), [1, 0, 0, 0]))
        .collect();
    let series = org_series(&many, MAX_ORG_SERIES);
    assert_eq!(series.len(), MAX_ORG_SERIES + 1);
    assert_eq!(series.last().map(|(_, c)| c[0]), Some(1000 - 50));
}

#[test]
fn rpc_method_labels_are_served_methods_or_unknown() {
    assert_eq!(
        method_label("/tether.v1.FleetService/ListAgents"),
        "tether.v1.FleetService/ListAgents"
    );
    assert_eq!(
        method_label("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    );
    assert_eq!(
        method_label("/grpc.health.v1.Health/Check"),
        "grpc.health.v1.Health/Check"
    );
    for junk in [
        "",
        "/",
        "/tether.v1.FleetService/Nope",
        "/x/y",
        &"a".repeat(10_000),
    ] {
        assert_eq!(method_label(junk), "unknown");
    }
}

#[test]
fn the_allocator_family_splits_allocated_from_resident() {
    // Something allocated through jemalloc, whatever the test binary's own allocator is.
    let text = Metrics::new().encode(Format::Text);
    let value = |kind: &str| -> f64 {
        let prefix = format!("tether_allocator_memory_bytes{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {kind} sample:\n{text}"))
            .parse()
            .expect("a number")
    };
    let (allocated, active, resident) = (value("allocated"), value("active"), value("resident"));
    assert!(value("metadata") > 0.0, "{text}");
    assert!(
        allocated <= active,
        "allocated {allocated} > active {active}"
    );
    assert!(active <= resident, "active {active} > resident {resident}");
    value("retained");
}
