//! Which failures to reach the server are misconfigurations: the server's certificate is not
//! trusted by this agent, the server refused the agent's TLS handshake (its client
//! certificate), or one side speaks TLS and the other does not. They look like any transport
//! failure on the wire, but retrying cannot help until someone changes a flag or a file, so
//! the run loop (`runner::wait_to_retry`) logs them at ERROR at once with what to fix and
//! retries only at the backoff's cap; the agent keeps trying, so it recovers by itself once
//! the configuration is fixed. Every other failure follows the backoff's own rules.

use crate::error::{AgentError, error_chain};

/// A failure that repeats until the configuration changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misconfiguration {
    /// This agent does not trust the server's certificate (unknown CA, wrong host name,
    /// expired).
    UntrustedServer,
    /// The server refused the TLS handshake, e.g. this agent's client certificate.
    HandshakeRefused,
    /// The agent speaks TLS (`https://`) to a server that does not.
    NotTls,
}

impl Misconfiguration {
    /// What an operator should check.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::UntrustedServer => {
                "this agent does not trust the server's TLS certificate: check that --ca-cert \
                 names the CA that issued it and that the --server host name is one the \
                 certificate is issued for"
            }
            Self::HandshakeRefused => {
                "the server refused the TLS handshake: if it requires client certificates \
                 (mTLS), check --client-cert and --client-key (issued by the server's client CA \
                 for this agent's id)"
            }
            Self::NotTls => {
                "the server does not speak TLS at that address: use an http:// URL, or the \
                 server's TLS port"
            }
        }
    }
}

/// What `error` says about the configuration, if it is a misconfiguration.
pub fn misconfiguration(error: &AgentError) -> Option<Misconfiguration> {
    let text = error_chain(error);
    // rustls' own words (`rustls::Error`'s Display), stable across its releases.
    if text.contains("invalid peer certificate") {
        Some(Misconfiguration::UntrustedServer)
    } else if text.contains("received fatal alert") {
        Some(Misconfiguration::HandshakeRefused)
    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
        Some(Misconfiguration::NotTls)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(text: &str) -> AgentError {
        AgentError::Rpc(tonic::Status::unavailable(text.to_owned()))
    }

    #[test]
    fn tls_misconfigurations_are_recognized_by_rustls_words() {
        let cases = [
            (
                "tcp connect error: invalid peer certificate: UnknownIssuer",
                Some(Misconfiguration::UntrustedServer),
            ),
            (
                "invalid peer certificate: NotValidForName",
                Some(Misconfiguration::UntrustedServer),
            ),
            (
                "received fatal alert: CertificateRequired",
                Some(Misconfiguration::HandshakeRefused),
            ),
            (
                "received corrupt message of type InvalidContentType",
                Some(Misconfiguration::NotTls),
            ),
            ("tcp connect error: Connection refused (os error 111)", None),
            ("timed out", None),
        ];
        for (text, expected) in cases {
            assert_eq!(misconfiguration(&transport(text)), expected, "{text}");
        }
        assert_eq!(misconfiguration(&AgentError::NotEnrolled), None);
    }
}
