//! Async RTMP client over every transport: rtmp, rtmps, rtmpt, rtmpts, rtmpe and rtmpte.
//!
//! The relays (push to and pull from upstream servers) and the load tool are built on it.
//! The protocol lives in [`rtmpx_core::session::ClientSession`]; this crate moves its bytes over
//! a transport and waits for the answers.
//!
//! ```no_run
//! # async fn demo() -> rtmpx_client::Result<()> {
//! use rtmpx_client::{ClientOptions, Connection, MediaKind, RtmpUrl};
//! let url = RtmpUrl::parse("rtmps://live.example.com/app/key")?;
//! let mut conn = Connection::connect(&url, &ClientOptions::default()).await?;
//! let stream_id = conn.publish(&url.stream).await?;
//! conn.send(stream_id, MediaKind::Video, 0, &[0x17, 0, 0, 0, 0]).await?;
//! conn.flush().await?;
//! conn.close().await
//! # }
//! ```

mod connection;
mod error;
pub mod transport;
mod url;

use std::time::Duration;

pub use connection::Connection;
pub use error::{Error, Result};
pub use rtmpx_core::handshake::HandshakeVersion;
pub use rtmpx_core::session::{ClientEvent, Media, MediaKind, ReconnectRequest, CAPS_EX_RECONNECT};
pub use transport::TlsOptions;
pub use url::{RtmpUrl, Scheme};

/// How to connect. `Default` suits most servers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Certificate checks for `rtmps`/`rtmpts`.
    pub tls: TlsOptions,
    /// Transport, handshake and `connect` together.
    pub connect_timeout: Duration,
    /// Waiting for the answer to `publish` or `play`.
    pub command_timeout: Duration,
    /// The C0 version for rtmpe/rtmpte. `Rtmpe` (0x06), what librtmp asks for, is the one every
    /// RTMPE server accepts; `RtmpeXtea`/`RtmpeBlowfish` ask for types 8/9.
    pub rtmpe_version: HandshakeVersion,
    /// Our outgoing chunk size, announced after `connect`.
    pub chunk_size: u32,
    /// `flashVer` in `connect`.
    pub flash_ver: String,
    /// Longest wait between two polls of an idle RTMPT tunnel.
    pub tunnel_poll_interval: Duration,
    /// Enhanced RTMP `capsEx` in `connect` (0: none). Set
    /// [`CAPS_EX_RECONNECT`] only if you follow [`ClientEvent::ReconnectRequested`] (the relays do).
    pub caps_ex: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: TlsOptions::default(),
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(10),
            rtmpe_version: HandshakeVersion::Rtmpe,
            chunk_size: 4096,
            flash_ver: "FMLE/3.0 (compatible; rtmpx)".into(),
            tunnel_poll_interval: Duration::from_millis(40),
            caps_ex: 0,
        }
    }
}
