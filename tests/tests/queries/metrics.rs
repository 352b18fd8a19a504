//! `GetMetrics`: samples averaged into steps.

use super::*;

async fn metrics(fleet: &mut FleetClient, request: pb::GetMetricsRequest) -> Vec<pb::MetricsPoint> {
    fleet
        .get_metrics(request)
        .await
        .expect("metrics")
        .into_inner()
        .points
}

fn at(t0: SystemTime, secs: u64) -> SystemTime {
    t0 + Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_metrics_averages_into_steps() {
    let (server, _dir) = start().await;
    let (id, credential) = server.enroll("metered", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &id, &credential, "metered")
        .await
        .expect("session");

    // A whole second ten minutes ago, so that step boundaries are easy to name.
    let now_secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs - 600);
    // (offset s, cpu); the network counter grows 100 bytes per second throughout.
    let points: [(i64, f64); 8] = [
        (-5, 99.0), // before the range
        (1, 10.0),
        (20, 20.0),
        (40, 60.0),
        (70, 50.0),
        (80, 70.0),
        (150, 5.0),
        (200, 99.0), // after the range
    ];
    let samples: Vec<pb::MetricsSample> = points
        .iter()
        .enumerate()
        .map(|(i, (offset, cpu))| {
            let time = if *offset < 0 {
                t0 - Duration::from_secs(offset.unsigned_abs())
            } else {
                at(t0, offset.unsigned_abs())
            };
            pb::MetricsSample {
                time: Some(time.into()),
                cpu_percent: *cpu,
                network_rx_bytes: u64::try_from(1000 + 100 * offset).expect("positive"),
                ..sample(i as u64 + 1)
            }
        })
        .collect();
    session
        .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
            deferred_seq: 0,
            previous_ack_latency: None,
            samples,
        }))
        .await;
    session.wait_ack(8).await.expect("ack");

    let mut fleet = server.fleet().await;
    let range = |step: Duration| pb::GetMetricsRequest {
        agent_id: id.clone(),
        start: Some(t0.into()),
        end: Some(at(t0, 180).into()),
        step: dur(step),
    };

    let stepped = metrics(&mut fleet, range(Duration::from_secs(60))).await;
    let summary: Vec<(SystemTime, u32, f64)> = stepped
        .iter()
        .map(|p| {
            (
                SystemTime::try_from(p.time.expect("time")).expect("valid"),
                p.sample_count,
                p.cpu_percent,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [(t0, 3, 30.0), (at(t0, 60), 2, 60.0), (at(t0, 120), 1, 5.0)]
    );
    for p in &stepped {
        assert_eq!(p.memory_used_bytes, 100);
        assert_eq!(p.memory_total_bytes, 1000);
        assert!(
            (p.network_rx_bytes_per_second - 100.0).abs() < 1e-6,
            "rx rate {p:?}"
        );
    }

    let raw = metrics(&mut fleet, range(Duration::ZERO)).await;
    let cpus: Vec<(SystemTime, u32, f64)> = raw
        .iter()
        .map(|p| {
            (
                SystemTime::try_from(p.time.expect("time")).expect("valid"),
                p.sample_count,
                p.cpu_percent,
            )
        })
        .collect();
    assert_eq!(
        cpus,
        [
            (at(t0, 1), 1, 10.0),
            (at(t0, 20), 1, 20.0),
            (at(t0, 40), 1, 60.0),
            (at(t0, 70), 1, 50.0),
            (at(t0, 80), 1, 70.0),
            (at(t0, 150), 1, 5.0),
        ]
    );
    // Without a range, the last hour up to now: everything but nothing in the future.
    let default_range = metrics(
        &mut fleet,
        pb::GetMetricsRequest {
            agent_id: id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(default_range.len(), 8);
    eventually("the latest sample to be the newest by seq", || {
        let server = &server;
        let id = id.clone();
        async move {
            let agent = server.get_agent(&id).await.ok()?.agent?;
            (agent.latest_metrics?.seq == 8).then_some(())
        }
    })
    .await;
    server.stop().await;
}
