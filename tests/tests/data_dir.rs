//! The data directory stays private: a server makes it and what it keeps inside (the store, the
//! admin token) accessible to its own user only, and refuses a directory shared by design.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use tether_proto as pb;
use tether_server::datadir::DataDirError;
use tether_server::server::StartError;
use tether_tests::{TestServer, fast_config, trace_init};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every file and directory under `dir`, `dir` included.
fn tree(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_owned()];
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            out.extend(tree(&entry.expect("entry").path()));
        }
    }
    out
}

/// A store left world-readable (as by an older server, or a copy) in a data directory other
/// users may enter: the server makes the directory, the store and the admin token file private
/// and serves with the same data and token. A directory other users may write to is refused
/// and left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_the_store_are_made_private() {
    trace_init();
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let server = TestServer::start(fast_config(&data)).await;
    assert_eq!(mode(&data), 0o700, "created private");
    let (agent_id, _) = server.enroll("kept", &[]).await;
    let admin_token = server.admin_token.clone();
    server.stop().await;

    for path in tree(&data.join("store")) {
        chmod(&path, if path.is_dir() { 0o755 } else { 0o644 });
    }
    let token_file = data.join(tether_server::config::ADMIN_TOKEN_FILE);
    chmod(&token_file, 0o644);

    chmod(&data, 0o1777);
    let refused = tether_server::server::start(fast_config(&data)).await;
    let Err(StartError::DataDir(err @ DataDirError::Shared { .. })) = refused else {
        panic!("a directory others may write to is refused");
    };
    let text = err.to_string();
    assert!(
        text.contains(&data.display().to_string()) && !text.contains('\n'),
        "{text}"
    );
    let now = std::fs::metadata(&data).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(now, 0o1777, "the server does not change it");

    chmod(&data, 0o755);
    let server = TestServer::start(fast_config(&data)).await;
    assert_eq!(mode(&data), 0o700, "made private");
    assert_eq!(server.admin_token, admin_token, "the same admin token");
    for path in tree(&data.join("store")) {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "{}", path.display());
    }
    assert_eq!(mode(&token_file), 0o600);
    let agent = server
        .fleet()
        .await
        .get_agent(pb::GetAgentRequest {
            agent_id: agent_id.clone(),
        })
        .await
        .expect("the stored agent is served")
        .into_inner();
    assert_eq!(agent.agent.expect("agent").agent_id, agent_id);
    server.stop().await;
}
