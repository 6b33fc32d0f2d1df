//! The crate's one error type.

use std::io;

/// Everything that can end a client connection or refuse to start one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A URL that is not `scheme://host[:port]/app[/...]/stream`.
    #[error("invalid RTMP URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The transport failed (connect, read, write, or the HTTP tunnel below it).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The TLS client could not be set up (unreadable CA file, bad server name...).
    #[error("TLS setup: {0}")]
    Tls(String),

    /// The RTMP session failed (handshake, chunk stream, protocol).
    #[error(transparent)]
    Rtmp(#[from] rtmpx_core::Error),

    /// The server said no to connect, publish or play.
    #[error("rejected by the server: {code}: {description}")]
    Rejected {
        /// The status code, e.g. `NetStream.Publish.BadName`.
        code: String,
        /// The server's description.
        description: String,
    },

    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),

    /// The server closed the connection while we were waiting for something.
    #[error("connection closed {0}")]
    Closed(&'static str),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { context, source }
    }
}
