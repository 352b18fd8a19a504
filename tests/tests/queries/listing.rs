//! Listing: label, OS, text and status filters, and paging.

use super::*;

// === filters ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selectors_filter_agents() {
    let (server, _dir) = start().await;
    enroll_fleet(&server).await;
    let mut fleet = server.fleet().await;
    let all: Vec<&str> = FLEET.iter().map(|m| m.hostname).collect();
    let cases: &[(&str, &[&str])] = &[
        ("", &all),
        ("env=prod", &["web-prod-1", "db-prod-1", "canary-prod"]),
        // `k!=v` includes agents without the key.
        (
            "env!=prod",
            &["web-dev-1", "dev-box", "stage-1", "edge-web", "bare"],
        ),
        (
            "env",
            &[
                "web-prod-1",
                "db-prod-1",
                "web-dev-1",
                "dev-box",
                "stage-1",
                "canary-prod",
            ],
        ),
        ("!env", &["edge-web", "bare"]),
        ("env=prod,tier=web", &["web-prod-1"]),
        ("env!=prod,tier", &["web-dev-1", "edge-web"]),
        ("tier=web,!canary", &["web-prod-1", "web-dev-1", "edge-web"]),
        ("canary,env!=staging", &["canary-prod"]),
        (" env = prod , tier ", &["web-prod-1", "db-prod-1"]),
        ("env=nope", &[]),
        ("!env,!tier", &["bare"]),
    ];
    for (text, expected) in cases {
        assert_eq!(
            hostnames(&mut fleet, selector(text)).await,
            set(expected),
            "selector {text:?}"
        );
        let listed = fleet
            .list_agents(selector(text))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(
            listed.total_size as usize,
            expected.len(),
            "total_size for {text:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_and_text_filters() {
    let (server, _dir) = start().await;
    enroll_fleet(&server).await;
    let mut fleet = server.fleet().await;
    let os = |os: &str| pb::ListAgentsRequest {
        os: os.to_owned(),
        ..Default::default()
    };
    let query = |q: &str| pb::ListAgentsRequest {
        query: q.to_owned(),
        ..Default::default()
    };
    let cases: Vec<(&str, pb::ListAgentsRequest, &[&str])> = vec![
        ("os windows", os("windows"), &["dev-box", "bare"]),
        (
            "os LINUX",
            os("LINUX"),
            &[
                "web-prod-1",
                "db-prod-1",
                "web-dev-1",
                "stage-1",
                "canary-prod",
            ],
        ),
        ("os Darwin", os("Darwin"), &["edge-web"]),
        ("os plan9", os("plan9"), &[]),
        // OS is an exact match, not a substring.
        ("os lin", os("lin"), &[]),
        (
            "query WEB",
            query("WEB"),
            &["web-prod-1", "web-dev-1", "edge-web"],
        ),
        (
            "query prod-1",
            query("prod-1"),
            &["web-prod-1", "db-prod-1"],
        ),
        // The display name counts as well as the hostname.
        ("query mystery", query("mystery"), &["bare"]),
        ("query BARE", query("BARE"), &["bare"]),
        ("query nothing", query("no-such-host"), &[]),
        (
            "os + selector + query",
            pb::ListAgentsRequest {
                os: "linux".to_owned(),
                label_selector: "env=prod".to_owned(),
                query: "prod-1".to_owned(),
                ..Default::default()
            },
            &["web-prod-1", "db-prod-1"],
        ),
        (
            "os + selector",
            pb::ListAgentsRequest {
                os: "windows".to_owned(),
                label_selector: "!env".to_owned(),
                ..Default::default()
            },
            &["bare"],
        ),
    ];
    for (what, req, expected) in cases {
        assert_eq!(hostnames(&mut fleet, req).await, set(expected), "{what}");
    }
    let bare = list_all(&mut fleet, query("mystery")).await;
    assert_eq!(bare.len(), 1);
    assert_eq!(bare[0].name, "Mystery-Machine");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_filter() {
    let (server, _dir) = start().await;
    let ids = enroll_fleet(&server).await;
    let online = [0, 3, 5];
    let mut sessions = Vec::new();
    for &i in &online {
        let (id, credential) = &ids[i];
        let (session, _) = RawSession::hello_with(&server, credential, FLEET[i].hello(id))
            .await
            .expect("session");
        sessions.push(session);
    }
    let mut fleet = server.fleet().await;
    let statuses = |s: &[pb::AgentStatus]| pb::ListAgentsRequest {
        statuses: s.iter().map(|s| *s as i32).collect(),
        ..Default::default()
    };
    use pb::AgentStatus::{Offline, Online, Stale};
    let all = FLEET.map(|m| m.hostname);
    let cases: Vec<(&str, pb::ListAgentsRequest, &[&str])> = vec![
        (
            "online",
            statuses(&[Online]),
            &["web-prod-1", "dev-box", "edge-web"],
        ),
        (
            "offline",
            statuses(&[Offline]),
            &["db-prod-1", "web-dev-1", "stage-1", "bare", "canary-prod"],
        ),
        ("stale", statuses(&[Stale]), &[]),
        ("online or offline", statuses(&[Online, Offline]), &all),
        (
            "online + tier=web",
            pb::ListAgentsRequest {
                label_selector: "tier=web".to_owned(),
                ..statuses(&[Online])
            },
            &["web-prod-1", "edge-web"],
        ),
        (
            "offline + windows",
            pb::ListAgentsRequest {
                os: "windows".to_owned(),
                ..statuses(&[Offline])
            },
            &["bare"],
        ),
    ];
    for (what, req, expected) in cases {
        assert_eq!(hostnames(&mut fleet, req).await, set(expected), "{what}");
    }
    // The sessions kept every label and the OS they enrolled with.
    let web = list_all(&mut fleet, selector("env=prod,tier=web")).await;
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].status, Online as i32);
    drop(sessions);
    server.stop().await;
}

// === paging ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_agent_once_in_id_order() {
    let (server, _dir) = start().await;
    let mut ids: Vec<String> = enroll_fleet(&server)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    let mut fleet = server.fleet().await;

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert_eq!(page.total_size, 8, "total_size on every page");
        sizes.push(page.agents.len());
        seen.extend(page.agents.into_iter().map(|a| a.agent_id));
        if page.next_page_token.is_empty() {
            break;
        }
        assert_ne!(page.next_page_token, token, "the token must move forward");
        token = page.next_page_token;
        assert!(sizes.len() < 10, "paging does not end");
    }
    assert_eq!(sizes, [3, 3, 2]);
    assert_eq!(seen, ids, "every agent exactly once, ascending by id");

    // A filtered listing pages over the matches only.
    let mut matched = Vec::new();
    let mut token = String::new();
    let mut n_pages = 0;
    loop {
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                label_selector: "env".to_owned(),
                page_size: 4,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("filtered page")
            .into_inner();
        n_pages += 1;
        assert_eq!(page.total_size, 6);
        matched.extend(page.agents.into_iter().map(|a| a.agent_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(n_pages, 2);
    assert_eq!(matched.len(), 6);
    assert!(matched.windows(2).all(|w| w[0] < w[1]), "{matched:?}");

    // Page size 0 means the default (100), which holds all eight.
    for page_size in [0, 1000, 1001, 5000, i32::MAX] {
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("page_size {page_size}: {e:?}"))
            .into_inner();
        let got: Vec<String> = page.agents.into_iter().map(|a| a.agent_id).collect();
        assert_eq!(got, ids, "page_size {page_size}");
        assert!(page.next_page_token.is_empty(), "page_size {page_size}");
        assert_eq!(page.total_size, 8);
    }
    server.stop().await;
}

/// More than 1000 agents: a page size above 1000 is clamped to 1000, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_above_the_maximum_is_clamped() {
    const N: usize = 1005;
    let (server, _dir) = start().await;
    // One enrollment token per hundred agents keeps each token well inside any per-token
    // request-rate limit.
    let mut clients = Vec::new();
    for _ in 0..N.div_ceil(100) {
        let token = server.enrollment_token().await;
        clients.push(server.agent_client(Some(&token)).await);
    }
    let results: Vec<Result<_, tonic::Status>> = futures::stream::iter(0..N)
        .map(|i| {
            let mut client = clients[i / 100].clone();
            async move {
                client
                    .enroll(pb::EnrollRequest {
                        system_info: Some(system_info(&format!("bulk-{i:04}"))),
                        ..Default::default()
                    })
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for result in results {
        result.expect("bulk enroll");
    }
    let mut fleet = server.fleet().await;
    for page_size in [1001, 5000, i32::MAX] {
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("page_size {page_size}: {e:?}"))
            .into_inner();
        assert_eq!(page.agents.len(), 1000, "page_size {page_size}");
        assert_eq!(page.total_size as usize, N);
        assert!(!page.next_page_token.is_empty());
        let rest = fleet
            .list_agents(pb::ListAgentsRequest {
                page_size,
                page_token: page.next_page_token,
                ..Default::default()
            })
            .await
            .expect("second page")
            .into_inner();
        assert_eq!(rest.agents.len(), N - 1000);
        assert!(rest.next_page_token.is_empty());
    }
    // The default page is 100.
    let page = fleet
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("default page")
        .into_inner();
    assert_eq!(page.agents.len(), 100);
    assert_eq!(list_all(&mut fleet, Default::default()).await.len(), N);
    server.stop().await;
}
