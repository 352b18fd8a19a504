//! Serving the metrics: `GET /metrics` on the metrics listener, in the format the scraper asks
//! for (`Accept`): OpenMetrics 1.0 to one that asks for `application/openmetrics-text` (as
//! Prometheus does), the Prometheus text format 0.0.4 to everyone else (`curl`, `promtool`,
//! `Accept: text/plain`).
//!
//! The registry encodes OpenMetrics; [`to_text_format`] rewrites it into the text format,
//! whose rules differ in three ways: a counter's `HELP` and `TYPE` name the sample
//! (`x_total`), not the family (`x`); there are no `UNIT` lines, exemplars or `EOF`; `info`
//! and `unknown` families are `gauge` and `untyped`.

use std::sync::Arc;

use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;

use super::Metrics;

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The format for an `Accept` header: OpenMetrics when it is accepted (q > 0) at least as
    /// much as `text/plain`, else the text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("").to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Self::OpenMetrics
        } else {
            Self::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Rewrites an OpenMetrics exposition (as the registry encodes it) into the Prometheus text
/// format 0.0.4.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (family.to_owned(), kind),
                _ => (family.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(of, _)| *of == family) {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: OpenMetrics only.
        } else if !line.is_empty() {
            out.push_str(without_exemplar(line));
            out.push('\n');
        }
    }
    out
}

/// A sample line without its exemplar (` # {…} value`), which only OpenMetrics has. The
/// label values are skipped as quoted strings, so a `#` inside one is not mistaken for it.
fn without_exemplar(line: &str) -> &str {
    let (mut quoted, mut escaped) = (false, false);
    for (at, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted => return line[..at].trim_end(),
            _ => {}
        }
    }
    line
}

/// Serves `GET /metrics` on `listener` until `shutdown`, in the format each scraper asks for
/// ([`Format::negotiate`]).
///
/// # Errors
///
/// An I/O error of the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: HeaderMap| {
            let metrics = metrics.clone();
            async move {
                let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
                let format = Format::negotiate(accept);
                // Encoding reads the registry (a pass over the fleet): off the async workers.
                match tokio::task::spawn_blocking(move || metrics.encode(format)).await {
                    Ok(body) => ([(CONTENT_TYPE, format.content_type())], body).into_response(),
                    Err(e) => {
                        tracing::warn!("cannot encode metrics: {e}");
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
