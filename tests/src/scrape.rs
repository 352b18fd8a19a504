//! Reading the server's Prometheus listener as a scraper does, and checking what it serves
//! with `promtool`, the Prometheus project's own linter.

use std::net::SocketAddr;

/// One `GET /metrics` response.
#[derive(Debug)]
pub struct Scrape {
    /// The status line and headers, as sent.
    pub head: String,
    pub body: String,
}

impl Scrape {
    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// The value of the sample written exactly as `series` (name and labels), if present.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.body
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

/// `GET /metrics` over a plain HTTP/1.1 connection, with `Accept: accept` if given.
///
/// # Errors
///
/// The connect or I/O error, or a response without a header/body separator.
pub async fn scrape(addr: SocketAddr, accept: Option<&str>) -> std::io::Result<Scrape> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: tether\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no end of headers"))?;
    Ok(Scrape {
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// Runs `promtool check metrics` on `exposition`: `None` when promtool is not installed
/// (CI installs it and sets `TETHER_REQUIRE_PROMTOOL`, which turns its absence into a
/// failure), else its verdict with what it printed.
///
/// # Panics
///
/// When promtool is missing and `TETHER_REQUIRE_PROMTOOL` is set, or cannot be run.
pub fn promtool_check(exposition: &str) -> Option<Result<(), String>> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("TETHER_REQUIRE_PROMTOOL").is_none(),
                "TETHER_REQUIRE_PROMTOOL is set but promtool is not installed"
            );
            eprintln!("promtool is not installed: `promtool check metrics` not run");
            return None;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    })
}
