//! [`Receiver`]: a real HTTP/1.1 webhook receiver on `127.0.0.1`, for the alert tests. It
//! records every request it reads (headers and body) and answers `200`, or, when told to
//! hang, reads the request and never answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::eventually_within;

/// How a [`Receiver`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// Read the request, record it, never answer.
    Hang,
}

/// One request a receiver read.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A webhook receiver serving on a real socket until dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Serves on a fresh port of `127.0.0.1`.
    pub async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        Self::serve(listener, answer)
    }

    /// Serves on `addr` (a port a test reserved, to bring a receiver that was down up).
    ///
    /// # Errors
    ///
    /// The port cannot be bound.
    pub async fn start_at(addr: SocketAddr, answer: Answer) -> std::io::Result<Self> {
        Ok(Self::serve(TcpListener::bind(addr).await?, answer))
    }

    /// A URL where nothing listens (yet): a port that was free a moment ago.
    pub async fn unused_addr() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    }

    fn serve(listener: TcpListener, answer: Answer) -> Self {
        let addr = listener.local_addr().expect("receiver addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = {
            let (received, connections) = (received.clone(), connections.clone());
            tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let received = received.clone();
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let received = received.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes();
                                received.lock().expect("receiver lock").push(Received {
                                    headers: parts.headers,
                                    body,
                                });
                                if answer == Answer::Hang {
                                    std::future::pending::<()>().await;
                                }
                                Ok::<_, hyper::Error>(http::Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )))
                            }
                        },
                    );
                    conns.spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            })
        };
        Self {
            addr,
            url: format!("http://{addr}/hook"),
            received,
            connections,
            task,
        }
    }

    /// Every request read so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have been read; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually_within(
            Duration::from_secs(20),
            &format!("{n} webhook requests at {}", self.url),
            || async {
                let got = self.received();
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

impl Received {
    /// Checks `X-Tether-Signature` against the HMAC-SHA256 of the body under `secret`, and
    /// returns the body as JSON.
    pub fn verified_json(&self, secret: &str) -> serde_json::Value {
        let header = self
            .headers
            .get("x-tether-signature")
            .and_then(|v| v.to_str().ok())
            .expect("a signature header");
        let hex = header.strip_prefix("sha256=").expect("sha256= prefix");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
        mac.update(&self.body);
        let expected: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex signature"))
            .collect();
        mac.verify_slice(&expected)
            .expect("the signature matches the body");
        self.json()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}
