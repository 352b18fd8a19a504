//! Labels at enrollment and in `Hello`, and a bad `SystemInfo`.

use super::*;

/// Label maps that must be refused, with the config's label limits.
fn bad_label_sets(config: &Config) -> Vec<(String, std::collections::HashMap<String, String>)> {
    let mut sets: Vec<(String, std::collections::HashMap<String, String>)> = [
        ("space in key", "bad key", "x"),
        ("non-ascii key", "é", "x"),
        ("'=' in key", "a=b", "x"),
        ("empty key", "", "x"),
        ("key starting with '-'", "-a", "x"),
        ("space in value", "k", "bad value"),
        ("comma in value", "k", "a,b"),
    ]
    .into_iter()
    .map(|(what, k, v)| (what.to_owned(), labels(&[(k, v)])))
    .collect();
    sets.push((
        "key too long".to_owned(),
        labels(&[(&"k".repeat(config.limits.max_label_key_bytes + 1), "x")]),
    ));
    sets.push((
        "value too long".to_owned(),
        labels(&[("k", &"v".repeat(config.limits.max_label_value_bytes + 1))]),
    ));
    sets.push((
        "too many labels".to_owned(),
        (0..=config.limits.max_labels)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect(),
    ));
    sets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_bad_labels_enrolls_nothing() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    for (what, bad) in bad_label_sets(&f.config) {
        let status = refused(
            &what,
            f.enroll_as(
                Some(&secret),
                pb::EnrollRequest {
                    labels: bad,
                    ..enroll_request("newcomer", &[])
                },
            )
            .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.assert_stored("after refused enrollments").await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_over_label_limit_with_token_labels_releases_the_use() {
    let f = Fixture::new().await;
    // Each side alone is within the limit; together they are one over.
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest {
            labels: labels(&[("pinned", "yes")]),
            max_uses: 1,
            ..Default::default()
        })
        .await;
    let asked = (0..f.config.limits.max_labels)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    let status = refused(
        "merged labels over the limit",
        f.enroll_as(
            Some(&secret),
            pb::EnrollRequest {
                labels: asked,
                ..enroll_request("newcomer", &[])
            },
        )
        .await,
    );
    assert_code(
        "merged labels over the limit",
        &status,
        Code::InvalidArgument,
    );
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.assert_stored("after a refused enrollment").await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_bad_labels_changes_nothing() {
    let mut f = Fixture::new().await;
    for (what, bad) in bad_label_sets(&f.config) {
        let status = refused(
            &what,
            RawSession::hello_with(
                &f.server,
                &f.credential,
                pb::Hello {
                    labels: bad,
                    ..hello(&f.id, HOST, &[])
                },
            )
            .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
        f.assert_intact().await;
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_bad_system_info_changes_nothing() {
    let mut f = Fixture::new().await;
    let long = "h".repeat(2048);
    let cases: [(&str, Option<pb::SystemInfo>); 3] = [
        ("no system_info", None),
        (
            "hostname over the text limit",
            Some(pb::SystemInfo {
                hostname: long.clone(),
                ..system_info(HOST)
            }),
        ),
        (
            "invalid boot time",
            Some(pb::SystemInfo {
                boot_time: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..system_info(HOST)
            }),
        ),
    ];
    for (what, info) in cases {
        let status = refused(
            what,
            RawSession::hello_with(
                &f.server,
                &f.credential,
                pb::Hello {
                    system_info: info,
                    ..hello(&f.id, HOST, LABELS)
                },
            )
            .await,
        );
        assert_code(what, &status, Code::InvalidArgument);
        f.assert_intact().await;
    }
    f.finish().await;
}
