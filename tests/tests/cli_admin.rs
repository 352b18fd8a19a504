//! `tetherctl orgs`, `tokens`, `agents delete` and `audit` against a real server, through the
//! library entry point the binary calls: secrets printed once work, roles and revocation reach
//! the CLI as the right `CliError` variant, deletion needs confirmation, and the audit log lists
//! the calls just made and verifies as an intact hash chain.

use std::time::Duration;

use serde_json::Value;
use tether_tests::{TestServer, eventually_within, fast_config, trace_init};
use tetherctl::CliError;

/// How long a revoked token may keep working (the bound for ending streams).
const REVOCATION: Duration = Duration::from_secs(1);

const CREATE_TOKEN: &str = "/tether.v1.AdminService/CreateToken";
const REVOKE_TOKEN: &str = "/tether.v1.AdminService/RevokeToken";

async fn start() -> (TestServer, tempfile::TempDir) {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    (server, dir)
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{key}` in {value}"))
}

/// The secret a table-format `create` printed: the first non-empty line after the
/// "shown only this once" notice.
fn printed_secret(out: &str) -> String {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.contains("shown only this once"));
    assert!(
        lines.next().is_some(),
        "no one-time secret notice in: {out}"
    );
    lines
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("no secret after the notice in: {out}"))
        .to_owned()
}

/// An org created through the CLI by the server admin.
struct Org {
    admin_token_id: String,
    admin_secret: String,
}

async fn create_org(server: &TestServer, org_id: &str) -> Org {
    let out = server
        .cli(&[
            "orgs",
            "create",
            org_id,
            "--display-name",
            "Test org",
            "-o",
            "json",
        ])
        .await
        .expect("orgs create");
    let created = json(&out);
    assert_eq!(str_field(&created["org"], "org_id"), org_id, "{created}");
    assert_eq!(
        str_field(&created["admin_token"], "role"),
        "admin",
        "{created}"
    );
    Org {
        admin_token_id: str_field(&created["admin_token"], "token_id").to_owned(),
        admin_secret: str_field(&created, "admin_secret").to_owned(),
    }
}

/// Creates an API token as `admin`; returns (token id, secret).
async fn create_token(
    server: &TestServer,
    admin: &str,
    name: &str,
    role: &str,
) -> (String, String) {
    let out = server
        .cli_as(
            admin,
            &[
                "tokens", "create", "--name", name, "--role", role, "-o", "json",
            ],
        )
        .await
        .expect("tokens create");
    let created = json(&out);
    assert_eq!(str_field(&created["token"], "name"), name, "{created}");
    assert_eq!(str_field(&created["token"], "role"), role, "{created}");
    (
        str_field(&created["token"], "token_id").to_owned(),
        str_field(&created, "secret").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_create_prints_an_admin_secret_that_works() {
    let (server, _dir) = start().await;

    let out = server
        .cli(&["orgs", "create", "acme", "--display-name", "Acme Corp"])
        .await
        .expect("orgs create");
    assert!(out.starts_with("Org acme created."), "{out}");
    assert!(out.contains("Acme Corp"), "{out}");
    let secret = printed_secret(&out);
    assert_eq!(out.matches(&secret).count(), 1, "{out}");

    // The new org's admin works, and sees its own, empty org.
    let agents = server
        .cli_as(&secret, &["agents", "list"])
        .await
        .expect("the new admin token authenticates");
    assert_eq!(agents.trim(), "No agents found.");
    let tokens = server
        .cli_as(&secret, &["tokens", "list"])
        .await
        .expect("tokens list");
    assert!(tokens.contains("admin"), "{tokens}");
    assert!(!tokens.contains(&secret), "{tokens}");

    let beta = create_org(&server, "beta").await;
    server
        .cli_as(&beta.admin_secret, &["agents", "list"])
        .await
        .expect("the JSON-printed admin token authenticates");

    let list = server.cli(&["orgs", "list"]).await.expect("orgs list");
    assert!(list.starts_with("ID"), "{list}");
    assert!(
        list.contains("acme") && list.contains("Acme Corp"),
        "{list}"
    );
    let list = json(
        &server
            .cli(&["orgs", "list", "-o", "json"])
            .await
            .expect("orgs list"),
    );
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|o| str_field(o, "org_id"))
        .collect();
    assert!(ids.contains(&"acme") && ids.contains(&"beta"), "{list}");

    // Org calls are for the server admin only; an org id is taken once.
    let err = server
        .cli_as(&secret, &["orgs", "list"])
        .await
        .expect_err("an org admin is not the server admin");
    assert!(matches!(err, CliError::PermissionDenied(_)), "{err:?}");
    let err = server
        .cli(&["orgs", "create", "acme"])
        .await
        .expect_err("duplicate org");
    assert!(
        matches!(&err, CliError::Server { code, .. } if code == "AlreadyExists"),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_create_list_revoke() {
    let (server, _dir) = start().await;
    let acme = create_org(&server, "acme").await;
    let admin = acme.admin_secret.as_str();

    let out = server
        .cli_as(
            admin,
            &[
                "tokens", "create", "--name", "ci", "--role", "operator", "--ttl", "30d",
            ],
        )
        .await
        .expect("tokens create");
    assert!(out.starts_with("Token "), "{out}");
    let secret = printed_secret(&out);
    let id = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Token "))
        .and_then(|l| l.strip_suffix(" created."))
        .expect("first line names the token")
        .to_owned();
    server
        .cli_as(&secret, &["agents", "list"])
        .await
        .expect("the new token authenticates");

    let table = server
        .cli_as(admin, &["tokens", "list"])
        .await
        .expect("list");
    assert!(
        table.starts_with("ID") && table.contains("LAST USED") && table.contains("STATE"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}: {table}"));
    // A 30-day token reads "in 30d", not "in 29d": relative times round to the nearest.
    for cell in ["ci", "operator", "active", "in 30d"] {
        assert!(row.contains(cell), "{cell}: {row}");
    }
    let listed = server
        .cli_as(admin, &["tokens", "list", "-o", "json"])
        .await
        .expect("list");
    assert!(
        !listed.contains(&secret) && !listed.contains(admin),
        "{listed}"
    );
    let listed = json(&listed);
    let ci = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["token_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {listed}"));
    assert_eq!(ci["role"], "operator");
    assert!(ci["expires_at"].is_string(), "{ci}");
    assert!(ci.get("secret").is_none(), "{ci}");

    let out = server
        .cli_as(admin, &["tokens", "revoke", &id])
        .await
        .expect("revoke");
    assert_eq!(out.trim(), format!("Token {id} revoked."));
    let err = eventually_within(REVOCATION, "the revoked token to be refused", || async {
        server.cli_as(&secret, &["agents", "list"]).await.err()
    })
    .await;
    assert!(matches!(err, CliError::Unauthenticated(_)), "{err:?}");

    let active = server
        .cli_as(admin, &["tokens", "list"])
        .await
        .expect("list");
    assert!(!active.contains(&id), "{active}");
    let all = server
        .cli_as(admin, &["tokens", "list", "--include-revoked"])
        .await
        .expect("list");
    let row = all
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}: {all}"));
    assert!(row.ends_with("revoked"), "{row}");

    let err = server
        .cli_as(admin, &["tokens", "revoke", "0123456789abcdef"])
        .await
        .expect_err("unknown token");
    assert!(
        matches!(&err, CliError::NotFound(m) if m == "token 0123456789abcdef not found"),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_reads_but_cannot_manage_tokens() {
    let (server, _dir) = start().await;
    let acme = create_org(&server, "acme").await;
    let (_, viewer) = create_token(&server, &acme.admin_secret, "dash", "viewer").await;
    let (_, operator) = create_token(&server, &acme.admin_secret, "ops", "operator").await;

    for token in [&viewer, &operator] {
        server
            .cli_as(token, &["agents", "list"])
            .await
            .expect("readers may list agents");
        for args in [
            &["tokens", "create", "--name", "x", "--role", "viewer"][..],
            &["tokens", "list"],
            &["audit"],
            &["agents", "delete", "0123456789abcdef", "--yes"],
        ] {
            let err = server
                .cli_as(token, args)
                .await
                .expect_err("admin-only command");
            assert!(
                matches!(err, CliError::PermissionDenied(_)),
                "{args:?}: {err:?}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_delete_needs_yes_then_removes_the_agent() {
    let (server, _dir) = start().await;
    let (id, _) = server.enroll("del-1", &[]).await;

    let err = server
        .cli(&["agents", "delete", &id])
        .await
        .expect_err("refused without --yes");
    let CliError::NotConfirmed(message) = &err else {
        panic!("expected NotConfirmed, got {err:?}");
    };
    for what in ["revokes its credential", "session", "enroll again", "--yes"] {
        assert!(message.contains(what), "{what}: {message}");
    }
    server
        .cli(&["agents", "get", &id])
        .await
        .expect("nothing was deleted without --yes");

    // Another org's admin cannot see, let alone delete, the agent.
    let acme = create_org(&server, "acme").await;
    let err = server
        .cli_as(&acme.admin_secret, &["agents", "delete", &id, "--yes"])
        .await
        .expect_err("other org");
    assert!(matches!(err, CliError::NotFound(_)), "{err:?}");
    server
        .cli(&["agents", "get", &id])
        .await
        .expect("still there after another org's attempt");

    let out = server
        .cli(&["agents", "delete", &id, "--yes"])
        .await
        .expect("delete");
    assert!(out.starts_with(&format!("Agent {id} deleted")), "{out}");
    let err = server
        .cli(&["agents", "get", &id])
        .await
        .expect_err("deleted");
    assert!(
        matches!(&err, CliError::NotFound(m) if *m == format!("agent {id} not found")),
        "{err:?}"
    );
    let list = server.cli(&["agents", "list"]).await.expect("list");
    assert!(!list.contains(&id), "{list}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lists_the_calls_and_the_chain_verifies() {
    let (server, _dir) = start().await;
    let acme = create_org(&server, "acme").await;
    let admin = acme.admin_secret.as_str();
    let (ci_id, _) = create_token(&server, admin, "ci", "operator").await;
    let (viewer_id, viewer) = create_token(&server, admin, "dash", "viewer").await;
    server
        .cli_as(
            &viewer,
            &["tokens", "create", "--name", "x", "--role", "admin"],
        )
        .await
        .expect_err("a viewer cannot create tokens");
    server
        .cli_as(admin, &["tokens", "revoke", &ci_id])
        .await
        .expect("revoke");

    let events = json(
        &server
            .cli_as(admin, &["audit", "-o", "json"])
            .await
            .expect("audit"),
    );
    let events = events.as_array().expect("array").clone();
    assert!(events.len() >= 4, "{events:?}");
    for (idx, pair) in events.windows(2).enumerate() {
        // Newest first.
        assert_eq!(
            pair[0]["seq"].as_u64(),
            pair[1]["seq"].as_u64().map(|s| s + 1),
            "seq at {idx}"
        );
    }
    assert!(events.iter().all(|e| e["org_id"] == "acme"), "{events:?}");
    let find = |method: &str, outcome: &str| {
        events
            .iter()
            .filter(|e| e["method"] == method && e["outcome"] == outcome)
            .cloned()
            .collect::<Vec<_>>()
    };
    let created = find(CREATE_TOKEN, "succeeded");
    assert!(
        created
            .iter()
            .any(|e| e["actor_token_id"] == acme.admin_token_id.as_str()
                && e["actor_role"] == "admin"),
        "{created:?}"
    );
    let denied = find(CREATE_TOKEN, "denied");
    assert!(
        denied
            .iter()
            .any(|e| e["actor_token_id"] == viewer_id.as_str()
                && e["actor_role"] == "viewer"
                && e["code"] == "permission_denied"
                && e["status_code"] == 7),
        "{denied:?}"
    );
    let revoked = find(REVOKE_TOKEN, "succeeded");
    assert!(
        revoked.iter().any(|e| e["target"] == ci_id.as_str()),
        "{revoked:?}"
    );

    // Filters reach the server (or are resolved by the CLI) and every page is followed.
    let only = |args: &'static [&'static str]| {
        let server = &server;
        async move {
            let mut argv = vec!["audit", "-o", "json"];
            argv.extend_from_slice(args);
            let out = server.cli_as(admin, &argv).await.expect("audit");
            json(&out).as_array().expect("array").clone()
        }
    };
    let by_outcome = only(&["--outcome", "denied"]).await;
    assert!(!by_outcome.is_empty());
    assert!(by_outcome.iter().all(|e| e["outcome"] == "denied"));
    let by_method = only(&["--method", "RevokeToken"]).await;
    assert!(!by_method.is_empty());
    assert!(by_method.iter().all(|e| e["method"] == REVOKE_TOKEN));
    let by_actor = server
        .cli_as(admin, &["audit", "--actor", &viewer_id, "-o", "json"])
        .await
        .expect("audit");
    let by_actor = json(&by_actor).as_array().expect("array").clone();
    assert!(!by_actor.is_empty());
    assert!(
        by_actor
            .iter()
            .all(|e| e["actor_token_id"] == viewer_id.as_str())
    );
    assert_eq!(only(&["--limit", "2"]).await.len(), 2);
    assert_eq!(only(&["--since", "1h"]).await.len(), events.len());

    let table = server.cli_as(admin, &["audit"]).await.expect("audit");
    assert!(
        table.starts_with("SEQ") && table.contains("OUTCOME") && table.contains("CODE"),
        "{table}"
    );
    assert!(
        table.contains("CreateToken") && table.contains("permission_denied"),
        "{table}"
    );
    assert!(table.contains("dash"), "actor by name: {table}");

    // The chain is intact; its last event is the newest, listed first.
    let last = events.first().expect("events");
    let expected = format!(
        "audit chain OK: {} events, last seq {}, last hash {}",
        events.len(),
        last["seq"],
        str_field(last, "hash")
    );
    let out = server
        .cli_as(admin, &["audit", "verify"])
        .await
        .expect("verify");
    assert_eq!(out.trim(), expected);
    let out = server
        .cli_as(admin, &["audit", "--verify"])
        .await
        .expect("verify");
    assert_eq!(out.trim(), expected);
    let summary = json(
        &server
            .cli_as(admin, &["audit", "verify", "-o", "json"])
            .await
            .expect("verify"),
    );
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["last_seq"], last["seq"]);
    assert_eq!(summary["last_hash"], last["hash"]);

    // Another org's log holds none of this, and verifies on its own.
    let default_log = json(&server.cli(&["audit", "-o", "json"]).await.expect("audit"));
    assert!(
        default_log
            .as_array()
            .expect("array")
            .iter()
            .all(|e| e["org_id"] != "acme"),
        "{default_log}"
    );
    let out = server.cli(&["audit", "verify"]).await.expect("verify");
    assert!(out.starts_with("audit chain OK: "), "{out}");
    server.stop().await;
}
