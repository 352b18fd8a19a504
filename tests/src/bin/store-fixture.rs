//! `store-fixture FILE`: writes the store fixture the migration tests start from
//! (`server/tests/fixtures/store-v{SCHEMA}.backup`): a server filled with some of everything a
//! store holds (`tether_tests::fill`), its agents stopped, then backed up with `tetherctl
//! backup` into `FILE`. Run through `scripts/regen-store-fixture.sh` when the schema version
//! changes; the fixture of the previous version stays, so the step from it keeps a test.

use std::path::PathBuf;

use tether_tests::fill::fill;
use tether_tests::{TestServer, fast_config};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: store-fixture FILE");
        return std::process::ExitCode::from(2);
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = TestServer::start(fast_config(dir.path())).await;
    let filled = fill(&server).await;
    for (agent, _) in filled.live {
        agent.stop().await;
    }
    let result = server
        .cli(&["backup", "--out", &out.to_string_lossy()])
        .await;
    server.stop().await;
    match result {
        Ok(said) => {
            print!("{said}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
