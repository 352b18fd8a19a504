//! What the server prints for a person once it serves: the URLs clients can dial, the admin
//! token's `export` line, and the agent command for a new enrollment token; and the layout of
//! commands printed for pasting ([`command`]), which `gen-certs` shares.
//!
//! A wildcard listen address (`0.0.0.0`, `::`) is no address a client can dial, and no
//! certificate is valid for it: the URLs name this machine's hostname and addresses instead.
//! With TLS they are narrowed to the names the certificate covers, or, when it covers none of
//! them, replaced by the certificate's own names: a URL the banner prints always verifies.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// How a printed command continues on the next line.
const CONTINUATION: &str = " \\\n        ";

/// This machine as clients may know it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Machine {
    pub hostname: Option<String>,
    /// Its interface addresses, loopback included.
    pub addrs: Vec<IpAddr>,
}

/// Where clients reach a serving server, and what they need to trust it.
#[derive(Clone, Debug, PartialEq)]
pub struct Banner {
    /// The address the listener is bound to.
    pub bound: SocketAddr,
    /// Dialable URLs, best first (never empty).
    pub urls: Vec<String>,
    /// With TLS, the CA clients must trust: `ca.pem` beside the certificate in the gen-certs
    /// layout when it exists, else `None` (the banner then says `CA.pem`).
    pub tls_ca: Option<Option<PathBuf>>,
}

// === impl Machine ===

impl Machine {
    /// This machine's hostname and interface addresses.
    pub fn detect() -> Self {
        let networks = sysinfo::Networks::new_with_refreshed_list();
        let mut addrs: Vec<IpAddr> = networks
            .values()
            .flat_map(|data| data.ip_networks().iter().map(|net| net.addr))
            .collect();
        addrs.sort();
        addrs.dedup();
        Self {
            hostname: sysinfo::System::host_name().filter(|h| !h.is_empty()),
            addrs,
        }
    }
}

// === impl Banner ===

impl Banner {
    /// The URLs for a listener bound to `bound`, on `machine`, whose certificate (with TLS)
    /// names `cert_names`.
    pub fn new(
        bound: SocketAddr,
        machine: &Machine,
        cert_names: Option<&[String]>,
        tls_ca: Option<Option<PathBuf>>,
    ) -> Self {
        let scheme = if cert_names.is_some() {
            "https"
        } else {
            "http"
        };
        let port = bound.port();
        let urls = dial_hosts(bound.ip(), machine, cert_names)
            .into_iter()
            .map(|host| match host.parse::<IpAddr>() {
                Ok(ip) => format!("{scheme}://{}", SocketAddr::new(ip, port)),
                Err(_) => format!("{scheme}://{host}:{port}"),
            })
            .collect();
        Self {
            bound,
            urls,
            tls_ca,
        }
    }

    /// The URL clients are told to use.
    pub fn url(&self) -> &str {
        &self.urls[0]
    }

    /// The URL for a client on this machine (`--dev`'s agent): without TLS, a wildcard
    /// listener is dialled on loopback, which needs no name resolution.
    pub fn local_url(&self) -> String {
        match self.bound.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() && self.tls_ca.is_none() => {
                format!("http://127.0.0.1:{}", self.bound.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() && self.tls_ca.is_none() => {
                format!("http://[::1]:{}", self.bound.port())
            }
            _ => self.url().to_owned(),
        }
    }

    /// `Tether server listening on URL`, with the bound address and the other URLs when they
    /// differ from it.
    pub fn listening(&self) -> String {
        let mut line = format!("Tether server listening on {}", self.url());
        let bound_url = self.url().ends_with(&format!("//{}", self.bound));
        if !bound_url || self.urls.len() > 1 {
            line.push_str(&format!(" ({}", self.bound));
            if self.urls.len() > 1 {
                line.push_str("; also ");
                line.push_str(&self.urls[1..].join(", "));
            }
            line.push(')');
        }
        line
    }

    /// The line that points `tetherctl` at this server with `token`.
    pub fn admin_export(&self, token: &str) -> String {
        let ca = match &self.tls_ca {
            Some(ca) => format!(" TETHER_CA_CERT={}", ca_text(ca.as_ref())),
            None => String::new(),
        };
        format!(
            "export TETHER_SERVER={}{ca} TETHER_TOKEN={token}",
            self.url()
        )
    }

    /// The command that enrolls a machine with `secret`.
    pub fn agent_command(&self, secret: &str) -> String {
        let mut parts = vec![format!("tether-agent --server {}", self.url())];
        if let Some(ca) = &self.tls_ca {
            parts.push(format!("--ca-cert {}", ca_text(ca.as_ref())));
        }
        parts.push(format!("--enroll-token {secret}"));
        command(&parts)
    }
}

fn ca_text(ca: Option<&PathBuf>) -> String {
    ca.map_or("CA.pem".to_owned(), |p| p.display().to_string())
}

/// A command for pasting, one group of arguments per line joined by ` \`, so that a long one
/// never reaches a terminal as two lines a shell would run apart.
pub fn command(parts: &[String]) -> String {
    parts.join(CONTINUATION)
}

/// The hosts (names or IP addresses as text) clients may dial for a listener on `ip`.
fn dial_hosts(ip: IpAddr, machine: &Machine, cert_names: Option<&[String]>) -> Vec<String> {
    let candidates: Vec<String> = if ip.is_unspecified() {
        let usable = |a: &&IpAddr| match a {
            // A link-local IPv6 address needs a zone id no URL can carry portably.
            IpAddr::V6(v6) => ip.is_ipv6() && (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        };
        let (local, remote): (Vec<&IpAddr>, Vec<&IpAddr>) = machine
            .addrs
            .iter()
            .filter(usable)
            .partition(|a| a.is_loopback());
        machine
            .hostname
            .iter()
            .cloned()
            .chain(remote.into_iter().chain(local).map(IpAddr::to_string))
            .collect()
    } else {
        vec![ip.to_string()]
    };
    let hosts = match cert_names.filter(|names| !names.is_empty()) {
        None => candidates,
        Some(names) => {
            let covered: Vec<String> = candidates
                .into_iter()
                .filter(|host| names.iter().any(|name| covers(name, host)))
                .collect();
            if covered.is_empty() {
                // Clients must dial a name the certificate states; whether it leads here is
                // DNS's job.
                names
                    .iter()
                    .filter(|n| !n.starts_with("*."))
                    .cloned()
                    .collect()
            } else {
                covered
            }
        }
    };
    if hosts.is_empty() {
        vec![ip.to_string()]
    } else {
        hosts
    }
}

/// Whether certificate name `name` (a DNS name, possibly `*.` wildcard, or an IP) covers
/// `host`, as a client's verifier would decide.
fn covers(name: &str, host: &str) -> bool {
    if let (Ok(a), Ok(b)) = (name.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        return a == b;
    }
    let (name, host) = (name.to_ascii_lowercase(), host.to_ascii_lowercase());
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            hostname: Some("web-1".to_owned()),
            addrs: ["127.0.0.1", "10.0.0.5", "::1", "fe80::1", "2001:db8::5"]
                .map(|a| a.parse().expect("ip"))
                .to_vec(),
        }
    }

    fn urls(bound: &str, names: Option<&[&str]>) -> Vec<String> {
        let names: Option<Vec<String>> = names.map(|n| n.iter().map(|s| s.to_string()).collect());
        let tls_ca = names.as_ref().map(|_| None);
        Banner::new(
            bound.parse().expect("addr"),
            &machine(),
            names.as_deref(),
            tls_ca,
        )
        .urls
    }

    #[test]
    fn a_wildcard_address_becomes_the_hostname_and_addresses() {
        assert_eq!(
            urls("0.0.0.0:7600", None),
            [
                "http://web-1:7600",
                "http://10.0.0.5:7600",
                "http://127.0.0.1:7600"
            ]
        );
        assert_eq!(
            urls("[::]:7600", None),
            [
                "http://web-1:7600",
                "http://10.0.0.5:7600",
                "http://[2001:db8::5]:7600",
                "http://127.0.0.1:7600",
                "http://[::1]:7600"
            ],
            "no link-local address"
        );
        assert_eq!(urls("127.0.0.7:7601", None), ["http://127.0.0.7:7601"]);
    }

    #[test]
    fn with_tls_only_names_the_certificate_covers() {
        assert_eq!(
            urls("0.0.0.0:7600", Some(&["WEB-1", "10.0.0.5"])),
            ["https://web-1:7600", "https://10.0.0.5:7600"]
        );
        // A certificate for none of this machine's names: its own names are what clients dial.
        assert_eq!(
            urls(
                "0.0.0.0:7600",
                Some(&["tether.example.com", "*.example.com"])
            ),
            ["https://tether.example.com:7600"]
        );
        assert_eq!(
            urls("127.0.0.7:7600", Some(&["tether.test"])),
            ["https://tether.test:7600"]
        );
        assert_eq!(
            urls("127.0.0.7:7600", Some(&["localhost", "127.0.0.7"])),
            ["https://127.0.0.7:7600"]
        );
        assert!(covers("*.example.com", "tether.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("::1", "0:0:0:0:0:0:0:1"));
    }

    #[test]
    fn the_lines_for_people() {
        let tls = Banner::new(
            "0.0.0.0:7600".parse().expect("addr"),
            &machine(),
            Some(&["web-1".to_owned(), "10.0.0.5".to_owned()]),
            Some(Some(PathBuf::from("/etc/tether/certs/ca.pem"))),
        );
        assert_eq!(
            tls.listening(),
            "Tether server listening on https://web-1:7600 (0.0.0.0:7600; also \
             https://10.0.0.5:7600)"
        );
        assert_eq!(
            tls.admin_export("t0k"),
            "export TETHER_SERVER=https://web-1:7600 TETHER_CA_CERT=/etc/tether/certs/ca.pem \
             TETHER_TOKEN=t0k"
        );
        assert_eq!(
            tls.agent_command("s3c"),
            "tether-agent --server https://web-1:7600 \\\n        --ca-cert \
             /etc/tether/certs/ca.pem \\\n        --enroll-token s3c"
        );
        let plain = Banner::new(
            "127.0.0.1:7600".parse().expect("addr"),
            &machine(),
            None,
            None,
        );
        assert_eq!(
            plain.listening(),
            "Tether server listening on http://127.0.0.1:7600"
        );
        assert_eq!(plain.local_url(), "http://127.0.0.1:7600");
        let wildcard = Banner::new("[::]:7600".parse().expect("addr"), &machine(), None, None);
        assert_eq!(wildcard.local_url(), "http://[::1]:7600");
        assert_eq!(tls.local_url(), "https://web-1:7600");
        assert_eq!(
            plain.agent_command("s3c"),
            "tether-agent --server http://127.0.0.1:7600 \\\n        --enroll-token s3c"
        );
    }

    #[test]
    fn this_machine_is_found() {
        let found = Machine::detect();
        assert!(
            found.addrs.iter().any(IpAddr::is_loopback),
            "every machine the tests run on has a loopback interface: {found:?}"
        );
    }
}
