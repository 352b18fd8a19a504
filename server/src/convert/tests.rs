//! Unit tests of the RPC edge: validation of inbound messages and round trips.

use super::*;
use crate::domain::AgentId;

#[test]
fn label_keys() {
    for ok in ["env", "a", "team.io/owner", "x-y_z", "A1"] {
        assert!(is_valid_label_key(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "a b", "a=b", "a,b", "é", "!a"] {
        assert!(!is_valid_label_key(bad), "{bad}");
    }
}

#[test]
fn label_limits() {
    let limits = Limits::default();
    let mut labels = HashMap::new();
    labels.insert("env".to_owned(), "prod".to_owned());
    assert!(labels_from_pb(labels.clone(), &limits).is_ok());
    labels.insert("bad key".to_owned(), "x".to_owned());
    assert!(labels_from_pb(labels, &limits).is_err());
    let too_many = (0..=limits.max_labels)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    assert!(labels_from_pb(too_many, &limits).is_err());
    let long_value =
        HashMap::from([("k".to_owned(), "v".repeat(limits.max_label_value_bytes + 1))]);
    assert!(labels_from_pb(long_value, &limits).is_err());
}

#[test]
fn sample_validation() {
    let good = pb::MetricsSample {
        seq: 1,
        time: Some(timestamp(SystemTime::now())),
        cpu_percent: 12.5,
        ..Default::default()
    };
    let sample = sample_from_pb(good.clone()).expect("valid");
    assert_eq!(
        sample_from_pb(sample_to_pb(&sample)).expect("round trip"),
        sample
    );
    for bad in [
        pb::MetricsSample {
            seq: 0,
            ..good.clone()
        },
        pb::MetricsSample {
            time: None,
            ..good.clone()
        },
        pb::MetricsSample {
            cpu_percent: f64::NAN,
            ..good.clone()
        },
        pb::MetricsSample {
            load_1: -1.0,
            ..good.clone()
        },
        pb::MetricsSample {
            disks: vec![pb::DiskUsage::default(); MAX_DISKS_PER_SAMPLE + 1],
            ..good.clone()
        },
    ] {
        assert!(sample_from_pb(bad).is_err());
    }
}

#[test]
fn page_tokens_round_trip_and_reject_garbage() {
    let id = AgentId::new("abc-1");
    assert_eq!(
        fleet::decode_page_token(&fleet::encode_page_token(&id)).expect("valid"),
        Some(id)
    );
    assert_eq!(fleet::decode_page_token("").expect("empty"), None);
    for garbage in ["zz", "00", &hex::encode("2:abc"), &hex::encode("1:AB C")] {
        assert!(fleet::decode_page_token(garbage).is_err(), "{garbage}");
    }
}
