//! `tether-server gen-certs`: its arguments, and what it prints after writing the certificates
//! (`tether_server::devcerts` writes them): the files, and the commands that use them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tether_server::config;

use crate::banner::command;

#[derive(Debug, clap::Args)]
pub struct GenCertsArgs {
    /// Directory to write into (created with mode 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Host names and IP addresses the server certificate is valid for, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1",
        conflicts_with = "agents"
    )]
    pub hosts: Vec<String>,

    /// Agent id to issue a client certificate for (Common Name = the id); repeatable. Only
    /// agent certificates are written, signed by the directory's CA (created if missing).
    #[arg(long = "agent", value_name = "AGENT_ID")]
    pub agents: Vec<String>,

    /// Overwrite certificates and keys that already exist (the CA is kept while both of its
    /// files are there).
    #[arg(long)]
    pub force: bool,
}

/// `gen-certs`: writes the certificates and prints how to use them.
pub fn run(args: &GenCertsArgs) -> anyhow::Result<()> {
    if !args.agents.is_empty() {
        return gen_agent_certs(args);
    }
    // Each name once, in the order given (`--hosts "$NAME,$ADDR"` repeats one when clients dial
    // the address itself).
    let mut hosts: Vec<String> = Vec::new();
    for host in args
        .hosts
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
    {
        if !hosts.iter().any(|seen| seen == host) {
            hosts.push(host.to_owned());
        }
    }
    let certs = tether_server::devcerts::generate_dev_certs(&args.out, &hosts, args.force)
        .context("gen-certs")?;
    // Absolute, so the printed commands work from any directory.
    let d = |p: &Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_owned())
            .display()
            .to_string()
    };
    let host = hosts.first().map_or("localhost", String::as_str);
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let port = config::DEFAULT_LISTEN.rsplit(':').next().unwrap_or("7600");
    let url = format!("https://{host}:{port}");
    println!(
        "{} in {}:\n",
        if certs.reused_ca {
            "Reused the CA and wrote certificates"
        } else {
            "Wrote a development CA and certificates"
        },
        d(&certs.dir)
    );
    println!(
        "    {}  {}  CA (keep the key private)",
        d(&certs.ca_cert),
        d(&certs.ca_key)
    );
    println!(
        "    {}  {}  server, for {}",
        d(&certs.server_cert),
        d(&certs.server_key),
        hosts.join(", ")
    );
    println!(
        "    {}  {}  tetherctl (mTLS)",
        d(&certs.client_cert),
        d(&certs.client_key)
    );
    // Names other machines dial need a listener they can reach.
    let mut server = vec!["tether-server".to_owned()];
    if hosts.iter().any(|h| !is_local(h)) {
        server[0].push_str(&format!(" --listen 0.0.0.0:{port}"));
    }
    server.push(format!(
        "--tls-cert {} --tls-key {}",
        d(&certs.server_cert),
        d(&certs.server_key)
    ));
    println!(
        "\nServer:\n\n    {}\n\n  Add --client-ca {} to require agent certificates (mTLS).\n",
        command(&server),
        d(&certs.ca_cert)
    );
    let agent = [
        format!("tether-agent --server {url}"),
        format!("--ca-cert {}", d(&certs.ca_cert)),
        "--enroll-token TOKEN".to_owned(),
    ];
    println!(
        "Agent (on each machine, with a copy of {}):\n\n    {}\n",
        d(&certs.ca_cert),
        command(&agent)
    );
    println!(
        "  With mTLS, enroll first, then issue the agent's certificate with\n\n    \
         tether-server gen-certs --out {} --agent AGENT_ID\n\n  and add its --client-cert \
         and --client-key to the agent's flags.\n",
        d(&certs.dir)
    );
    println!(
        "CLI:\n\n    export TETHER_SERVER={url} TETHER_CA_CERT={}",
        d(&certs.ca_cert)
    );
    Ok(())
}

/// Whether `host` names this machine only (a loopback name or address).
fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `gen-certs --agent ID…`: writes only the agents' certificates.
fn gen_agent_certs(args: &GenCertsArgs) -> anyhow::Result<()> {
    let certs = tether_server::devcerts::issue_agent_certs(&args.out, &args.agents, args.force)
        .context("gen-certs")?;
    let d = |p: &std::path::Path| p.display().to_string();
    println!(
        "{} in {}:\n",
        if certs.reused_ca {
            "Wrote agent certificates signed by the existing CA"
        } else {
            "Wrote a development CA and agent certificates"
        },
        d(&certs.dir)
    );
    for (id, cert, key) in &certs.agents {
        println!("    {}  {}  agent {id}", d(cert), d(key));
    }
    if !certs.reused_ca {
        println!(
            "\n  The server trusts them with --client-ca {}; its own certificate comes from\n    \
             tether-server gen-certs --out {}",
            d(&certs.ca_cert),
            d(&certs.dir)
        );
    }
    if let Some((_, cert, key)) = certs.agents.first() {
        let flags = [
            format!("--client-cert {}", d(cert)),
            format!("--client-key {}", d(key)),
        ];
        println!("\nAgent (add to its flags):\n\n    {}", command(&flags));
    }
    Ok(())
}
