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

pub use capabilities::EnhancedCapabilities;
pub use client::{ClientConfig, ClientEvent, ClientSession};
pub use reconnect::{caps_ex, ReconnectRequest, CAPS_EX_RECONNECT, RECONNECT_REQUEST_CODE};
pub use server::{ConnectRequest, PublishMode, ServerConfig, ServerEvent, ServerSession};

use bytes::Bytes;

/// Which kind of media message an event or send carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
    /// A data message (`onMetaData` and friends), `@setDataFrame` already removed.
    Data,
}

/// An audio, video or data message on a message stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub stream_id: u32,
    pub kind: MediaKind,
    pub timestamp: u32,
    pub payload: Bytes,
}

/// Status levels of `onStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLevel {
    Status,
    Error,
    Warning,
}

impl StatusLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusLevel::Status => "status",
            StatusLevel::Error => "error",
            StatusLevel::Warning => "warning",
        }
    }
}

/// Chunk stream ids we send on (what ffmpeg and nginx-rtmp use, so captures look familiar).
pub(crate) mod csid {
    pub const CONTROL: u32 = 2;
    pub const COMMAND: u32 = 3;
    pub const AUDIO: u32 = 4;
    pub const STREAM_COMMAND: u32 = 5;
    pub const VIDEO: u32 = 6;
}
