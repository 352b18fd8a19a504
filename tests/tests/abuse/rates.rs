//! Rate abuse: a stream faster than its rate, a token over its request rate.

use super::*;

// === 5. A stream faster than its rate ===

/// A session sending pings far faster than `stream_messages_per_second` is ended with
/// RESOURCE_EXHAUSTED once its burst is spent; the violation is counted and what the agent had
/// stored before is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_faster_than_its_rate_is_ended() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.stream_messages_per_second = 20;
    config.limits.stream_message_burst = 40;
    let server = TestServer::start(config).await;
    let metrics = server.metrics.clone();
    let healthy = Healthy::start(&server).await;

    let (agent_id, credential) = server.enroll("flooder", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &agent_id, &credential, "flooder")
        .await
        .expect("hello");
    session.send_samples(1..=3).await;
    session.wait_ack(3).await.expect("ack of the samples");
    let before = limit_violations(&metrics, "stream_message_rate");

    // 400 pings at once: ten times the burst.
    let tx = session.tx.clone();
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        let mut sent = 0u32;
        for nonce in 0..400 {
            let ping = pb::ConnectRequest {
                message: Some(pb::connect_request::Message::Ping(pb::Ping {
                    nonce,
                    sent_at: None,
                })),
            };
            if tx.send(ping).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut pongs = 0;
    let status = loop {
        match session.recv().await {
            Ok(Some(pb::connect_response::Message::Pong(_))) => pongs += 1,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended cleanly; expected RESOURCE_EXHAUSTED"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    flood.abort();
    // The burst (40, of which the samples report took one), plus what refilled meanwhile.
    let refilled = (started.elapsed().as_secs_f64() * 20.0).ceil() as u32;
    assert!(
        (39..=40 + refilled).contains(&pongs),
        "{pongs} pongs before the limit"
    );
    assert_eq!(
        limit_violations(&metrics, "stream_message_rate"),
        before + 1
    );

    // Stored data intact; the agent may connect again and is told what is durable.
    let agent = server
        .get_agent(&agent_id)
        .await
        .expect("get agent")
        .agent
        .expect("agent");
    assert_eq!(agent.last_durable_seq, 3);
    let points = server
        .fleet()
        .await
        .get_metrics(pb::GetMetricsRequest {
            agent_id: agent_id.clone(),
            ..Default::default()
        })
        .await
        .expect("metrics")
        .into_inner()
        .points;
    assert_eq!(points.len(), 3);
    let (_session, welcome) = RawSession::hello(&server, &agent_id, &credential, "flooder")
        .await
        .expect("hello again");
    assert_eq!(welcome.last_durable_seq, 3);

    healthy.assert_unaffected(&server).await;
    assert_list_agents_ok(&server, &server.admin_token).await;
    server.stop().await;
}

// === 6. Per-token request rate ===

/// Unary calls with one token beyond `token_requests_per_second` are answered
/// RESOURCE_EXHAUSTED (and counted); another token of the same org is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_request_rate_is_enforced_per_token() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.token_requests_per_second = 10;
    config.limits.token_request_burst = 20;
    let server = TestServer::start(config).await;
    let metrics = server.metrics.clone();
    let viewer = server
        .admin()
        .await
        .create_token(pb::CreateTokenRequest {
            name: "viewer".to_owned(),
            role: pb::Role::Viewer as i32,
            ttl: None,
        })
        .await
        .expect("create a viewer token")
        .into_inner()
        .secret;
    let healthy = Healthy::start(&server).await;
    let before = limit_violations(&metrics, "token_request_rate");

    // 60 concurrent calls on one connection with the admin token.
    const CALLS: usize = 60;
    let raw = Arc::new(Raw::connect(server.addr).await);
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let raw = raw.clone();
            let request = raw.request(LIST_AGENTS, &server.admin_token, &[]);
            tokio::spawn(async move { raw.unary(request, list_agents()).await })
        })
        .collect();
    let mut ok = 0u64;
    let mut exhausted = 0u64;
    for call in calls {
        let reply = call.await.expect("call task").expect("the server answers");
        match reply.grpc {
            Some(Code::Ok) => ok += 1,
            Some(Code::ResourceExhausted) => exhausted += 1,
            other => panic!("unexpected answer {other:?}: {reply:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // At most the burst (of which creating the viewer token and the agent's enrollment token
    // spent two: 18 admitted when the calls take a few milliseconds) plus what refilled.
    let allowed = 20 + (elapsed * 10.0).ceil() as u64;
    assert!(
        (1..=allowed).contains(&ok),
        "{ok} calls admitted, at most {allowed} allowed"
    );
    assert_eq!(ok + exhausted, CALLS as u64);
    assert!(exhausted >= 30, "only {exhausted} calls refused");
    assert_eq!(
        limit_violations(&metrics, "token_request_rate"),
        before + exhausted,
        "every refusal is counted"
    );

    // Another token is unaffected, right now.
    let reply = raw
        .unary(raw.request(LIST_AGENTS, &viewer, &[]), list_agents())
        .await
        .expect("the viewer's call");
    assert_eq!(reply.grpc, Some(Code::Ok), "{reply:?}");

    healthy.assert_unaffected(&server).await;
    // The admin token recovers once its bucket refills.
    eventually("the admin token to be admitted again", || async {
        let reply = raw
            .unary(
                raw.request(LIST_AGENTS, &server.admin_token, &[]),
                list_agents(),
            )
            .await
            .ok()?;
        (reply.grpc == Some(Code::Ok)).then_some(())
    })
    .await;
    server.stop().await;
}
