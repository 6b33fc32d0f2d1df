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

    /// Authorisation or a limit refused connect/publish/play; the client was told, then closed.
    #[error("denied: {0}")]
    Denied(String),

    /// The client's address would hold more memory than `limits.max_memory_per_ip`.
    #[error("{0}")]
    OverBudget(#[from] crate::budget::OverBudget),

    /// Closed on purpose: by the admin API or because the gateway is draining.
    #[error("{0}")]
    Kicked(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
