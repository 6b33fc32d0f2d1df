//! An established RTMP client connection over any transport.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use rtmpx_core::handshake::HandshakeVersion;
use rtmpx_core::session::{ClientConfig, ClientEvent, ClientSession, EnhancedCapabilities, MediaKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::error::{Error, Result};
use crate::transport::{self, BoxedStream};
use crate::url::RtmpUrl;
use crate::ClientOptions;

/// `send` writes to the transport once this much is buffered.
const FLUSH_THRESHOLD: usize = 64 * 1024;
const READ_BUFFER: usize = 16 * 1024;
/// Events kept for `next_event` while waiting for something else or reading opportunistically;
/// past this, reading stops until the caller takes events.
const MAX_BACKLOG: usize = 4096;

/// A connected RTMP client session: the transport is open, the handshake done and `connect`
/// answered with `_result`.
///
/// One task drives a connection. `next_event` and `flush` are cancel-safe (usable in `select!`):
/// partial writes are remembered and resumed.
pub struct Connection {
    io: BoxedStream,
    session: ClientSession,
    /// Session output not yet written to the transport.
    out: BytesMut,
    read_buf: Box<[u8]>,
    /// Events that arrived while waiting for something else.
    backlog: VecDeque<ClientEvent>,
    version: HandshakeVersion,
    command_timeout: std::time::Duration,
    bytes_in: u64,
    bytes_out: u64,
    eof: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session)
            .field("version", &self.version)
            .field("bytes_in", &self.bytes_in)
            .field("bytes_out", &self.bytes_out)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens the URL's transport, handshakes and connects to its app.
    pub async fn connect(url: &RtmpUrl, opts: &ClientOptions) -> Result<Self> {
        let connect = async {
            let io = transport::open(url, opts).await?;
            Self::connect_over(io, url, opts).await
        };
        tokio::time::timeout(opts.connect_timeout, connect).await.map_err(|_| Error::Timeout("connect"))?
    }

    /// Handshakes and connects over a stream the caller opened (any transport). The URL's scheme
    /// chooses plain or RTMPE; its host and port are not used.
    pub async fn connect_over(io: BoxedStream, url: &RtmpUrl, opts: &ClientOptions) -> Result<Self> {
        let mut config = ClientConfig::new(&url.app, &url.tc_url);
        config.version = if url.scheme.is_encrypted() { opts.rtmpe_version } else { HandshakeVersion::Plain };
        config.chunk_size = opts.chunk_size;
        config.flash_ver = opts.flash_ver.clone();
        config.capabilities.caps_ex |= opts.caps_ex;
        let session = ClientSession::new(config, &mut rand::thread_rng());
        let mut conn = Connection {
            io,
            session,
            out: BytesMut::with_capacity(FLUSH_THRESHOLD),
            read_buf: vec![0; READ_BUFFER].into_boxed_slice(),
            backlog: VecDeque::new(),
            version: HandshakeVersion::Plain,
            command_timeout: opts.command_timeout,
            bytes_in: 0,
            bytes_out: 0,
            eof: false,
        };
        loop {
            match conn.next_session_event().await? {
                None => return Err(Error::Closed("before connect was answered")),
                Some(ClientEvent::HandshakeComplete { version, .. }) => conn.version = version,
                Some(ClientEvent::Connected) => return Ok(conn),
                Some(ClientEvent::Rejected { code, description }) => {
                    return Err(Error::Rejected { code, description })
                }
                Some(other) => conn.keep(other)?,
            }
        }
    }

    /// Publishes `stream` (live) and waits for `NetStream.Publish.Start`; returns the message
    /// stream id to send media on.
    pub async fn publish(&mut self, stream: &str) -> Result<u32> {
        self.session.publish(stream);
        self.await_start("NetStream.Publish.Start", |e| match e {
            ClientEvent::PublishStarted { stream_id } => Some(*stream_id),
            _ => None,
        })
        .await
    }

    /// Plays `stream` and waits for `NetStream.Play.Start`; media follows from `next_event`.
    pub async fn play(&mut self, stream: &str) -> Result<u32> {
        self.session.play(stream);
        self.await_start("NetStream.Play.Start", |e| match e {
            ClientEvent::PlayStarted { stream_id } => Some(*stream_id),
            _ => None,
        })
        .await
    }

    /// Sends `play` without waiting for the answer (servers such as nginx-rtmp say
    /// `NetStream.Play.Start` only once the stream is published); status and media follow from
    /// `next_event`.
    pub async fn start_play(&mut self, stream: &str) -> Result<()> {
        self.session.play(stream);
        self.write_out().await
    }

    async fn await_start(
        &mut self,
        what: &'static str,
        started: fn(&ClientEvent) -> Option<u32>,
    ) -> Result<u32> {
        let limit = self.command_timeout;
        let wait = async {
            loop {
                let event = self.next_session_event().await?.ok_or(Error::Closed("before the answer"))?;
                if let Some(stream_id) = started(&event) {
                    return Ok(stream_id);
                }
                match event {
                    ClientEvent::Rejected { code, description } => {
                        return Err(Error::Rejected { code, description })
                    }
                    other => self.keep(other)?,
                }
            }
        };
        tokio::time::timeout(limit, wait).await.map_err(|_| Error::Timeout(what))?
    }

    /// Queues a media message on a publishing stream; writes once enough is buffered. Call
    /// [`flush`](Self::flush) when a batch is complete (e.g. after each frame for low latency).
    pub async fn send(
        &mut self,
        stream_id: u32,
        kind: MediaKind,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<()> {
        self.session.send_media(stream_id, kind, timestamp, payload);
        self.take_output();
        if self.out.len() >= FLUSH_THRESHOLD {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Writes everything queued, then takes in what the server sent meanwhile without waiting
    /// (acknowledgements, pings, status), so a publisher that never calls `next_event` still
    /// answers pings.
    pub async fn flush(&mut self) -> Result<()> {
        self.write_out().await?;
        self.read_available()?;
        Ok(())
    }

    /// The next event: media, status (`UnpublishNotify`, ...), rejections. `None` when the
    /// server closed the connection.
    pub async fn next_event(&mut self) -> Result<Option<ClientEvent>> {
        if let Some(event) = self.backlog.pop_front() {
            return Ok(Some(event));
        }
        self.next_session_event().await
    }

    /// Ends a stream: `deleteStream` (publishers also unpublish by it).
    pub async fn close_stream(&mut self, stream_id: u32) -> Result<()> {
        self.session.close_stream(stream_id);
        self.write_out().await
    }

    /// Writes what is queued and closes the transport (TLS close_notify, RTMPT `/close`).
    pub async fn close(mut self) -> Result<()> {
        self.write_out().await?;
        self.io.shutdown().await.map_err(Error::io("closing"))
    }

    /// Transport payload bytes received (RTMP bytes, before RTMPE decryption).
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// The server's Enhanced RTMP support from its `_result` (empty: a legacy server such as
    /// nginx-rtmp, which then gets only what legacy players parse).
    pub fn server_capabilities(&self) -> &EnhancedCapabilities {
        self.session.server_capabilities()
    }

    /// Transport payload bytes written.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// The handshake version in force (the server's S0).
    pub fn handshake_version(&self) -> HandshakeVersion {
        self.version
    }

    fn keep(&mut self, event: ClientEvent) -> Result<()> {
        // Skipped messages seen while waiting for a reply: nobody is listening for them yet, and
        // a server sending many must not fill the backlog.
        if matches!(event, ClientEvent::Unknown { .. }) {
            return Ok(());
        }
        if self.backlog.len() >= MAX_BACKLOG {
            let (value, limit) = (self.backlog.len() as u64 + 1, MAX_BACKLOG as u64);
            return Err(Error::Rtmp(rtmpx_core::Error::LimitExceeded {
                what: "unread client events",
                value,
                limit,
            }));
        }
        self.backlog.push_back(event);
        Ok(())
    }

    /// The session's next event, reading from the transport as needed.
    async fn next_session_event(&mut self) -> Result<Option<ClientEvent>> {
        loop {
            if let Some(event) = self.session.poll_event() {
                return Ok(Some(event));
            }
            if self.eof {
                return Ok(None);
            }
            // Answers the session produced (C2, connect, pongs, acknowledgements) go first.
            self.write_out().await?;
            let n = self.io.read(&mut self.read_buf).await.map_err(Error::io("reading"))?;
            self.receive(n)?;
        }
    }

    fn receive(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            self.eof = true;
            return Ok(());
        }
        self.bytes_in += n as u64;
        self.session.handle_input(&self.read_buf[..n])?;
        Ok(())
    }

    /// Reads whatever the transport has ready, without waiting, while the backlog has room.
    fn read_available(&mut self) -> Result<()> {
        let mut cx = Context::from_waker(Waker::noop());
        while !self.eof && self.backlog.len() < MAX_BACKLOG {
            while self.backlog.len() < MAX_BACKLOG {
                match self.session.poll_event() {
                    Some(event) => self.backlog.push_back(event),
                    None => break,
                }
            }
            let mut buf = ReadBuf::new(&mut self.read_buf);
            match Pin::new(&mut self.io).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    self.receive(n)?;
                }
                Poll::Ready(Err(e)) => return Err(Error::Io { context: "reading", source: e }),
                Poll::Pending => break,
            }
        }
        self.take_output();
        Ok(())
    }

    fn take_output(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.out.extend_from_slice(&bytes);
        }
    }

    /// Writes all queued output. Cancel-safe: what was written is dropped from `out` at once.
    async fn write_out(&mut self) -> Result<()> {
        self.take_output();
        while !self.out.is_empty() {
            let n = self.io.write(&self.out).await.map_err(Error::io("writing"))?;
            if n == 0 {
                return Err(Error::Closed("while writing"));
            }
            self.out.advance(n);
            self.bytes_out += n as u64;
        }
        self.io.flush().await.map_err(Error::io("writing"))
    }
}
