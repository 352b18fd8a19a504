//! `tether-server`: parses flags into a [`Config`](tether_server::config::Config), binds, and
//! runs the library.
//!
//! `--dev` is the one-command local setup: loopback address, a data directory under the working
//! directory, the admin token printed with a ready-to-paste `export` line, and one agent for this
//! machine running in-process.
//!
//! `gen-certs` writes a development CA, a server certificate and client certificates, so the
//! TLS path (`--tls-cert`, `--tls-key`, `--client-ca`) is as easy to try as `--dev`.
//!
//! Every flag may also come from a TOML file (`--config`, else `$TETHER_SERVER_CONFIG`, else
//! [`DEFAULT_CONFIG_FILE`] if it exists) whose keys are the long flag names; flags beat
//! `TETHER_*` variables, which beat the file (`tether_proto::config_file`). `config print`
//! shows the settings in effect and checks them.
//!
//! The flags themselves, and the configuration they describe, are [`Args`] (`main/args.rs`).

use std::path::Path;

use anyhow::Context;
use tether_proto::config_file;
use tether_server::server;
use tokio_util::sync::CancellationToken;

use self::args::{Args, Command, ConfigCommand, LogFormat};

/// sled's write path allocates and frees a node copy per insert; with glibc's allocator that was
/// a fifth of the server's CPU under ingest. jemalloc doubles the store's throughput
/// (store_bench, batches of 4,000: ~47k → ~100k samples/s) at the same memory per connection
/// (38 KiB per agent in the fleet benchmark at default intervals; mimalloc, equally fast, cost
/// 53 KiB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The configuration file read when neither `--config` nor [`CONFIG_ENV`] names one, if it
/// exists.
const DEFAULT_CONFIG_FILE: &str = "/etc/tether/server.toml";

/// The environment variable that names the configuration file.
const CONFIG_ENV: &str = "TETHER_SERVER_CONFIG";

/// Logs on stderr, so stdout carries only what a person reads (tokens, export line).
fn init_tracing(format: LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    let format = match format {
        LogFormat::Text => tether_proto::log::LogFormat::Text,
        LogFormat::Json => tether_proto::log::LogFormat::Json,
    };
    Ok(tether_proto::log::init(format, level)?)
}

/// Logs every panic, with its thread, through the logger (then reports it as Rust does): sled
/// runs its log writes on threads of its own and, when one panics, goes on without that
/// thread and without the buffer it was writing, which later stalls every commit
/// (`writer/stall.rs`); the panic must be in the server's log, in its format, to be found.
fn log_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), "panic: {info}");
        report(info);
    }));
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line, with its causes: what failed and why.
            eprintln!("error: {}", tether_proto::process::error_line(err.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let parsed = config_file::parse::<Args>(CONFIG_ENV, Path::new(DEFAULT_CONFIG_FILE))?;
    let args = &parsed.args;
    init_tracing(args.log_format, args.log_level.as_deref())?;
    log_panics();
    match &args.command {
        Some(Command::GenCerts(gen_args)) => return gen_certs::run(gen_args),
        Some(Command::Config(ConfigCommand::Print)) => {
            print!("{}", parsed.render());
            return args.checked_config().map(drop);
        }
        Some(Command::Backup { out }) => {
            let taken = tether_server::backup::backup_stopped(&args.data_dir, out)
                .with_context(|| format!("backup of {}", args.data_dir.display()))?;
            println!(
                "Backed up {} into {}: {} records, {} bytes, schema {}, sha256 {}",
                args.data_dir.display(),
                out.display(),
                taken.summary.records,
                taken.summary.bytes,
                taken.header.schema_version,
                hex::encode(taken.summary.sha256)
            );
            return Ok(());
        }
        Some(Command::Restore { file }) => {
            let restored = tether_server::backup::restore(file, &args.data_dir)
                .with_context(|| format!("restore of {}", file.display()))?;
            println!(
                "Restored {} (taken {}) into {}: {}; start the server on it to get a new admin \
                 token",
                file.display(),
                restored.header.taken_at,
                args.data_dir.display(),
                summary(&restored)
            );
            return Ok(());
        }
        None => {}
    }
    tether_server::config::raise_open_file_limit();
    let (config, security) = args.checked_config()?;
    if security == server::ListenSecurity::PlaintextExposed {
        tracing::warn!(addr = %args.listen, "serving plaintext on a non-loopback address");
    }
    // With TLS, clients need the CA: `ca.pem` beside the certificate in the gen-certs layout.
    let tls_ca = args
        .tls_cert
        .as_ref()
        .and_then(|cert| cert.parent())
        .map(|dir| dir.join(tether_server::devcerts::CA_CERT_FILE))
        .filter(|ca| ca.exists())
        // Absolute, so the printed lines work from any directory.
        .map(|ca| std::path::absolute(&ca).unwrap_or(ca));
    let cert_names = match &config.tls {
        Some(tls) => Some(
            tether_server::tls::cert_names(&tls.cert).context("cannot use the TLS certificate")?,
        ),
        None => None,
    };

    // Nothing is written before both checks pass: a second server on this data directory, or a
    // port in use, fails with the data directory and the admin token untouched.
    tether_server::datadir::ensure_unlocked(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let addr = listener.local_addr().context("listener address")?;

    let shutdown = CancellationToken::new();
    tokio::spawn(tether_proto::process::cancel_on_signal(shutdown.clone()));

    let server = server::start(config)
        .await
        .context("cannot start the server")?;
    let banner = banner::Banner::new(
        addr,
        &banner::Machine::detect(),
        cert_names.as_deref(),
        cert_names.as_ref().map(|_| tls_ca.clone()),
    );
    println!("{}", banner.listening());
    if args.print_enrollment_token || args.dev {
        let admin_token = std::fs::read_to_string(&server.admin_token_file)
            .with_context(|| format!("cannot read {}", server.admin_token_file.display()))?;
        println!(
            "Admin token (also in {}):\n\n    {}\n",
            server.admin_token_file.display(),
            banner.admin_export(admin_token.trim())
        );
    }
    if args.print_enrollment_token {
        let (record, secret) = tether_server::service::admin::create_enrollment_token(
            server.state(),
            tether_server::domain::OrgId::new(tether_server::domain::DEFAULT_ORG),
            tether_server::domain::NewEnrollmentToken::default(),
            None,
        )
        .await
        .context("cannot create an enrollment token")?;
        println!(
            "Enrollment token {} (shown once):\n\n    {}\n",
            record.id,
            banner.agent_command(secret.expose())
        );
    }

    #[cfg(feature = "dev")]
    let local_agent = if args.dev {
        let mtls = server.state().config.mtls();
        let url = banner.local_url();
        dev::spawn_local_agent(&server, &url, mtls, tls_ca.as_deref(), &args.data_dir).await?
    } else {
        None
    };
    let result = server.serve(listener, shutdown).await;
    #[cfg(feature = "dev")]
    if let Some(agent) = local_agent {
        agent.shutdown();
        if let Err(e) = agent.join().await {
            tracing::warn!("local agent: {e:#}");
        }
    }
    result.context("server failed")
}

/// What a backup holds, in a few words.
fn summary(restored: &tether_server::backup::Restored) -> String {
    format!(
        "{} orgs, {} agents, {} tokens, {} enrollment tokens, {} deleted agents (schema {}, {} \
         records)",
        restored.orgs,
        restored.agents,
        restored.tokens,
        restored.enrollment_tokens,
        restored.tombstones,
        restored.header.schema_version,
        restored.records
    )
}

#[path = "main/args.rs"]
mod args;
#[path = "main/banner.rs"]
mod banner;
#[path = "main/gen_certs.rs"]
mod gen_certs;

#[cfg(feature = "dev")]
#[path = "main/dev.rs"]
mod dev;
