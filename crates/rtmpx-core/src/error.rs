//! The crate's one error type.

/// Everything that can go wrong while speaking RTMP. Each variant names the layer and carries
/// enough context to log one useful line; none of them is recoverable for the session it ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// AMF0/AMF3 data that does not parse.
    #[error("malformed AMF at byte {offset}: {reason}")]
    Amf {
        /// What is wrong.
        reason: &'static str,
        /// Where in the buffer.
        offset: usize,
    },

    /// A handshake that cannot complete (bad version byte, failed signature, bad DH key...).
    #[error("handshake failed: {0}")]
    Handshake(&'static str),

    /// A chunk stream that does not parse (unknown continuation, header without a previous one...).
    #[error("malformed chunk stream: {0}")]
    Chunk(&'static str),

    /// A configured or protocol limit was passed by the peer.
    #[error("limit exceeded: {what} is {value}, the limit is {limit}")]
    LimitExceeded {
        /// What grew too large.
        what: &'static str,
        /// How large it got.
        value: u64,
        /// The limit.
        limit: u64,
    },

    /// An audio/video message whose Enhanced RTMP header does not parse (reserved packet type,
    /// truncated FourCC, a multitrack size beyond the message...).
    #[error("malformed enhanced media: {0}")]
    Media(&'static str),

    /// A well-formed message that breaks the protocol (wrong type for its state, bad payload...).
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// The session was used after it closed.
    #[error("session is closed")]
    Closed,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn amf(reason: &'static str, offset: usize) -> Self {
        Error::Amf { reason, offset }
    }

    pub(crate) fn limit(what: &'static str, value: impl TryInto<u64>, limit: impl TryInto<u64>) -> Self {
        Error::LimitExceeded {
            what,
            value: value.try_into().unwrap_or(u64::MAX),
            limit: limit.try_into().unwrap_or(u64::MAX),
        }
    }
}
