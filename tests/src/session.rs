//! [`RawSession`]: a `Connect` stream driven by hand, message by message, and the messages
//! tests send on it (a synthetic machine's `SystemInfo`, samples, `Hello`).

use std::collections::HashMap;

use tether_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::{EVENTUALLY, TestServer};

/// A `SystemInfo` for a synthetic machine.
pub fn system_info(hostname: &str) -> pb::SystemInfo {
    pb::SystemInfo {
        hostname: hostname.to_owned(),
        os_name: "linux".to_owned(),
        os_version: "1".to_owned(),
        kernel_version: "6.1".to_owned(),
        architecture: "x86_64".to_owned(),
        cpu_model: "test".to_owned(),
        logical_cores: 2,
        total_memory_bytes: 1 << 30,
        hardware_id: format!("hw-{hostname}"),
        boot_time: None,
        agent_version: "test".to_owned(),
    }
}

/// A sample with `seq`, taken now.
pub fn sample(seq: u64) -> pb::MetricsSample {
    pb::MetricsSample {
        seq,
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        cpu_percent: 10.0,
        memory_used_bytes: 100,
        memory_total_bytes: 1000,
        ..Default::default()
    }
}

/// A label map from `(key, value)` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A `Hello` for `agent_id` on the synthetic machine `hostname` (see [`system_info`]) asking
/// for `labels`. It names no agent instance, so every session it opens looks like the same
/// process to the server (set `instance_id` to play several).
pub fn hello(agent_id: &str, hostname: &str, pairs: &[(&str, &str)]) -> pb::Hello {
    pb::Hello {
        agent_id: agent_id.to_owned(),
        agent_version: "test".to_owned(),
        system_info: Some(system_info(hostname)),
        labels: labels(pairs),
        instance_id: String::new(),
        journaled_invocation_ids: Vec::new(),
        accepts_deferred_reports: false,
    }
}

/// A session driven by hand: the test decides every message.
pub struct RawSession {
    pub tx: mpsc::Sender<pb::ConnectRequest>,
    pub rx: Streaming<pb::ConnectResponse>,
}

impl RawSession {
    /// Opens `Connect` with `credential` and sends `first` as the first message. Returns the
    /// status if the server refuses the stream.
    ///
    /// # Errors
    ///
    /// The status the server answered with.
    pub async fn open(
        server: &TestServer,
        credential: Option<&str>,
        first: Option<pb::connect_request::Message>,
    ) -> Result<Self, tonic::Status> {
        Self::open_on(server.agent_client(credential).await, first).await
    }

    /// [`RawSession::open`] through `client` (which carries the credential), for a server that
    /// is not a [`TestServer`] (a server process).
    ///
    /// # Errors
    ///
    /// The status the server answered with.
    pub async fn open_on(
        mut client: crate::AgentClient,
        first: Option<pb::connect_request::Message>,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        if let Some(first) = first {
            tx.send(pb::ConnectRequest {
                message: Some(first),
            })
            .await
            .expect("queue first message");
        }
        let rx = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, rx })
    }

    /// Opens a session with a proper `Hello` and returns it with the `Welcome`.
    ///
    /// # Errors
    ///
    /// The status the server answered with.
    pub async fn hello(
        server: &TestServer,
        agent_id: &str,
        credential: &str,
        hostname: &str,
    ) -> Result<(Self, pb::Welcome), tonic::Status> {
        Self::hello_with(server, credential, hello(agent_id, hostname, &[])).await
    }

    pub async fn send(&self, message: pb::connect_request::Message) {
        self.tx
            .send(pb::ConnectRequest {
                message: Some(message),
            })
            .await
            .expect("session outbound queue");
    }

    pub async fn send_samples(&self, seqs: impl IntoIterator<Item = u64>) {
        self.send(pb::connect_request::Message::Metrics(pb::MetricsReport {
            previous_ack_latency: None,
            samples: seqs.into_iter().map(sample).collect(),
            deferred_seq: 0,
        }))
        .await;
    }

    /// The next message, `None` at a clean end of stream.
    ///
    /// # Errors
    ///
    /// The status the stream ended with.
    pub async fn recv(&mut self) -> Result<Option<pb::connect_response::Message>, tonic::Status> {
        match tokio::time::timeout(EVENTUALLY, self.rx.message()).await {
            Ok(Ok(Some(m))) => Ok(m.message),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no message from the server within {EVENTUALLY:?}"),
        }
    }

    /// Reads until a `MetricsAck` at or above `seq` arrives (skipping pongs). Panics at a
    /// `MetricsDeferred`: the report will not be acked until it is sent again.
    ///
    /// # Errors
    ///
    /// The status the stream ended with.
    pub async fn wait_ack(&mut self, seq: u64) -> Result<u64, tonic::Status> {
        loop {
            match self.recv().await? {
                Some(pb::connect_response::Message::MetricsAck(ack)) if ack.durable_seq >= seq => {
                    return Ok(ack.durable_seq);
                }
                Some(pb::connect_response::Message::MetricsDeferred(deferred)) => {
                    panic!("waiting for the ack of seq {seq}, the server deferred {deferred:?}");
                }
                Some(_) => {}
                None => return Err(tonic::Status::unknown("stream ended before the ack")),
            }
        }
    }

    /// Closes the outbound half (the server sees end of stream).
    pub fn close(self) -> Streaming<pb::ConnectResponse> {
        self.rx
    }
}

impl RawSession {
    /// Opens a session whose first message is `hello` and returns it with the `Welcome`.
    ///
    /// # Errors
    ///
    /// The status the server answered with.
    pub async fn hello_with(
        server: &TestServer,
        credential: &str,
        hello: pb::Hello,
    ) -> Result<(Self, pb::Welcome), tonic::Status> {
        Self::hello_on(server.agent_client(Some(credential)).await, hello).await
    }

    /// [`RawSession::hello_with`] through `client` (which carries the agent's credential).
    ///
    /// # Errors
    ///
    /// The status the server answered with.
    pub async fn hello_on(
        client: crate::AgentClient,
        hello: pb::Hello,
    ) -> Result<(Self, pb::Welcome), tonic::Status> {
        let first = pb::connect_request::Message::Hello(hello);
        let mut session = Self::open_on(client, Some(first)).await?;
        match session.recv().await? {
            Some(pb::connect_response::Message::Welcome(w)) => Ok((session, w)),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Reads until the stream ends with an error status (skipping acks and pongs) and returns
    /// it. Panics if the stream ends cleanly instead.
    pub async fn wait_error(&mut self) -> tonic::Status {
        loop {
            match self.recv().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended cleanly; expected an error status"),
                Err(status) => return status,
            }
        }
    }
}
