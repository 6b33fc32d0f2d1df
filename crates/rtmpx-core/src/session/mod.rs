//! Server and client session state machines.
//!
//! A session owns one connection's protocol state: handshake, chunk codec, acknowledgements,
//! the RTMPE cipher, and the command flow. The caller moves bytes:
//!
//! ```text
//! transport bytes ──handle_input──▶ session ──poll_event──▶ events (connect, publish, media…)
//! decisions/media ──accept_*/send_*──▶ session ──poll_transmit──▶ bytes for the transport
//! ```
//!
//! Nothing here blocks, reads a clock or touches a socket.

pub mod capabilities;
mod client;
mod link;
mod reconnect;
mod server;
#[cfg(test)]
mod tests;

pub use capabilities::{EnhancedCapabilities, FourCc};
pub use client::{ClientConfig, ClientEvent, ClientSession};
pub use reconnect::{caps_ex, ReconnectRequest, CAPS_EX_RECONNECT, RECONNECT_REQUEST_CODE};
pub use server::{
    ConnectRequest, PlayRequest, PlayStart, PublishMode, ServerConfig, ServerEvent, ServerSession,
};

use bytes::Bytes;

/// Which kind of media message an event, a send or a routed frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// Message type 8.
    Audio,
    /// Message type 9.
    Video,
    /// A data message (`onMetaData` and friends), `@setDataFrame` already removed.
    Data,
}

impl MediaKind {
    /// A short name for logs and stats: "audio", "video" or "data".
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
            MediaKind::Data => "data",
        }
    }
}

/// An audio, video or data message on a message stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// The message stream (from createStream).
    pub stream_id: u32,
    /// Audio, video or data.
    pub kind: MediaKind,
    /// Milliseconds, as the sender stamped it.
    pub timestamp: u32,
    /// The message body (FLV tag body for audio and video).
    pub payload: Bytes,
}

/// Status levels of `onStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLevel {
    /// Success or information.
    Status,
    /// Failure; clients usually give up.
    Error,
    /// Something the client should know but may ignore.
    Warning,
}

impl StatusLevel {
    /// The `level` string of the info object.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusLevel::Status => "status",
            StatusLevel::Error => "error",
            StatusLevel::Warning => "warning",
        }
    }
}

impl From<StatusLevel> for crate::amf::Amf0Value {
    fn from(level: StatusLevel) -> Self {
        level.as_str().into()
    }
}

/// Chunk stream ids we send on (what ffmpeg and nginx-rtmp use, so captures look familiar).
pub(crate) mod csid {
    pub(crate) const CONTROL: u32 = 2;
    pub(crate) const COMMAND: u32 = 3;
    pub(crate) const AUDIO: u32 = 4;
    pub(crate) const STREAM_COMMAND: u32 = 5;
    pub(crate) const VIDEO: u32 = 6;
}
