//! The gateway's one error type.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration ({origin}): {message}")]
    Config { origin: String, message: String },

    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },

    #[error(transparent)]
    Rtmp(#[from] rtmpx_core::Error),

    #[error("timed out: {0}")]
    Timeout(&'static str),

    #[error("certificate {path}: {message}")]
    Certificate { path: String, message: String },

    #[error("TLS handshake failed: {0}")]
    TlsHandshake(String),

    /// An ACME order failed (the CA, the challenges or the cache).
    #[error("ACME: {0}")]
    Acme(String),

    /// A TLS-ALPN-01 validation handshake was answered; the connection carries nothing else.
    #[error("answered an ACME tls-alpn-01 validation")]
    AcmeValidation,

    /// Authorisation or a limit refused connect/publish/play; the client was told, then closed.
    #[error("denied: {0}")]
    Denied(String),

    /// Over a rate limit (RTMPE handshakes per address): closed before any work was done.
    #[error("rate limited: {0}")]
    RateLimited(&'static str),
    /// The client's address would hold more memory than `limits.max_memory_per_ip`.
    #[error("{0}")]
    OverBudget(#[from] OverBudget),

    /// Closed on purpose: by the admin API or because the gateway is draining.
    #[error("{0}")]
    Kicked(&'static str),
}

/// Refused: the address would hold `total` bytes, over its `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client address would hold {total} bytes, over limits.max_memory_per_ip ({limit})")]
pub struct OverBudget {
    pub total: usize,
    pub limit: usize,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
