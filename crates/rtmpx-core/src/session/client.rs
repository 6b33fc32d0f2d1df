//! The client role: connect, then publish or play, for relays and the load tool.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use rand::RngCore;

use crate::amf::{encode_amf0, Amf0Value, AmfLimits};
use crate::chunk::{ChunkLimits, RawMessage};
use crate::handshake::{ClientHandshake, HandshakeOutcome, HandshakeVersion};
use crate::message::{self, read_u32_payload, type_id, Command, UserControl};
use crate::{Error, Result};

use super::capabilities::EnhancedCapabilities;
use super::link::Link;
use super::{csid, Media, MediaKind, StatusLevel};

/// Client-side settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The application to connect to.
    pub app: String,
    /// `tcUrl` in `connect`.
    pub tc_url: String,
    /// `flashVer` in `connect` (servers log it).
    pub flash_ver: String,
    /// 3 for plain RTMP, 6/8/9 for RTMPE.
    pub version: HandshakeVersion,
    /// Digest handshake for plain RTMP (RTMPE always uses it).
    pub digest: bool,
    /// Our outgoing chunk size, announced after connect.
    pub chunk_size: u32,
    /// Sent as SetBufferLength when playing.
    pub buffer_length_ms: u32,
    /// Bounds on what the server may make us buffer.
    pub chunk_limits: ChunkLimits,
    /// Bounds on AMF decoding of the server's commands.
    pub amf_limits: AmfLimits,
    /// Announced in `connect` (empty: we present ourselves as a legacy client).
    pub capabilities: EnhancedCapabilities,
}

impl ClientConfig {
    /// Settings for `app` at `tc_url` with the defaults (plain digest handshake, 4096-byte chunks).
    pub fn new(app: &str, tc_url: &str) -> Self {
        ClientConfig {
            app: app.to_owned(),
            tc_url: tc_url.to_owned(),
            flash_ver: "FMLE/3.0 (compatible; rtmpx)".into(),
            version: HandshakeVersion::Plain,
            digest: true,
            chunk_size: 4096,
            buffer_length_ms: 1000,
            chunk_limits: ChunkLimits::default(),
            amf_limits: AmfLimits::default(),
            capabilities: EnhancedCapabilities::gateway(),
        }
    }
}

/// What the client session reports, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// C0/C1 ↔ S0/S1/S2 done; `connect` is on its way.
    HandshakeComplete {
        /// The version in use.
        version: HandshakeVersion,
        /// Whether the digest handshake was used.
        digest: bool,
    },
    /// `connect` succeeded; queued publish/play requests go out now.
    Connected,
    /// `_error` to connect, or an error status to publish/play. The session stays usable only
    /// if the server keeps the connection.
    Rejected {
        /// The status code, e.g. `NetConnection.Connect.Rejected`.
        code: String,
        /// The server's description.
        description: String,
    },
    /// `NetStream.Publish.Start`: media may be sent on the stream.
    PublishStarted {
        /// The message stream to send on.
        stream_id: u32,
    },
    /// `NetStream.Play.Start`: media follows as [`ClientEvent::Media`].
    PlayStarted {
        /// The message stream media arrives on.
        stream_id: u32,
    },
    /// Any other `onStatus` (PublishNotify, UnpublishNotify, ...).
    Status {
        /// The message stream it concerns (0: the connection).
        stream_id: u32,
        /// `status`, `warning` or `error`, as the server wrote it.
        level: String,
        /// The status code, e.g. `NetStream.Play.UnpublishNotify`.
        code: String,
        /// The server's description.
        description: String,
    },
    /// Audio, video or metadata of a stream we play.
    Media(Media),
    /// The server asks us to reconnect (Enhanced RTMP), to `tc_url` or the current tcUrl. The
    /// session goes on until the caller closes it.
    ReconnectRequested(super::ReconnectRequest),
    /// A message the session does not handle (shared objects, unassigned types): skipped, and
    /// reported so the caller may count or log it.
    Unknown {
        /// The message stream it came on.
        stream_id: u32,
        /// Its message type.
        type_id: u8,
        /// Its payload length in bytes.
        len: usize,
    },
}

#[derive(Debug, Clone)]
enum Intent {
    Publish(String),
    Play(String),
}

enum Phase {
    Handshake(Box<ClientHandshake>),
    Connecting { transaction_id: f64 },
    Connected,
    Closed,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Handshake(_) => "handshake",
            Phase::Connecting { .. } => "connecting",
            Phase::Connected => "connected",
            Phase::Closed => "closed",
        }
    }
}

/// One client-side RTMP connection.
pub struct ClientSession {
    config: ClientConfig,
    phase: Phase,
    link: Link,
    events: VecDeque<ClientEvent>,
    next_transaction: f64,
    /// createStream calls in flight and what each stream is for.
    pending: Vec<(f64, Intent)>,
    /// Requests made before connect completed.
    queued: Vec<Intent>,
    outcome: Option<HandshakeOutcome>,
    scratch: BytesMut,
    server_capabilities: EnhancedCapabilities,
}

// Without keys or buffers: what a log line about the session needs.
impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("app", &self.config.app)
            .field("phase", &self.phase.name())
            .field("encrypted", &self.link.is_encrypted())
            .field("pending", &self.pending)
            .field("queued", &self.queued)
            .field("queued_events", &self.events.len())
            .field("pending_output", &self.link.output_len())
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// A session with C0/C1 already queued for sending.
    pub fn new(config: ClientConfig, rng: &mut dyn RngCore) -> Self {
        let mut handshake = ClientHandshake::new(config.version, config.digest, rng);
        let mut link = Link::new(config.chunk_limits);
        handshake.start(link.raw_output());
        ClientSession {
            config,
            phase: Phase::Handshake(Box::new(handshake)),
            link,
            events: VecDeque::new(),
            next_transaction: 2.0,
            pending: Vec::new(),
            queued: Vec::new(),
            outcome: None,
            scratch: BytesMut::new(),
            server_capabilities: EnhancedCapabilities::default(),
        }
    }

    /// Feeds received bytes. An error means the connection must be closed.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<()> {
        if matches!(self.phase, Phase::Closed) {
            return Err(Error::Closed);
        }
        let result = if !matches!(self.phase, Phase::Handshake(_)) && self.link.can_decode_borrowed() {
            self.process_borrowed(data)
        } else {
            self.link.receive(data);
            self.process()
        };
        if result.is_err() {
            self.phase = Phase::Closed;
        }
        result
    }

    /// [`process`](Self::process) over a read decoded where it lies (a relay's or player's
    /// media copied once, as the server role does); what is not decoded stays in the input.
    fn process_borrowed(&mut self, mut data: &[u8]) -> Result<()> {
        self.link.count_received(data.len());
        while let Some(msg) = self.link.next_message_from(&mut data)? {
            self.handle_message(msg)?;
        }
        self.link.keep_unread(data);
        self.link.acknowledge_if_due();
        Ok(())
    }

    fn process(&mut self) -> Result<()> {
        if let Phase::Handshake(handshake) = &mut self.phase {
            let Some(outcome) =
                self.link.advance_handshake(|input, output| handshake.handle_input(input, output))?
            else {
                return Ok(());
            };
            self.events.push_back(ClientEvent::HandshakeComplete {
                version: outcome.version,
                digest: outcome.digest,
            });
            self.outcome = Some(outcome);
            self.send_connect();
        }
        while let Some(msg) = self.link.next_message()? {
            self.handle_message(msg)?;
        }
        self.link.acknowledge_if_due();
        Ok(())
    }

    /// The next event, if any; call until `None` after each input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Bytes to send to the server, if any (encrypted under RTMPE).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.link.take_output()
    }

    /// The handshake's outcome once it completed.
    pub fn handshake(&self) -> Option<&HandshakeOutcome> {
        self.outcome.as_ref()
    }

    /// Whether `connect` succeeded.
    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected)
    }

    /// Whether the session failed or its `connect` was rejected (input is refused).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The Enhanced RTMP capabilities the server answered in `_result` (empty: a legacy server,
    /// such as nginx-rtmp); known once `Connected` was reported.
    pub fn server_capabilities(&self) -> &EnhancedCapabilities {
        &self.server_capabilities
    }

    fn send_connect(&mut self) {
        let mut object = Amf0Value::object([
            ("app", Amf0Value::from(self.config.app.as_str())),
            ("type", "nonprivate".into()),
            ("flashVer", self.config.flash_ver.as_str().into()),
            ("tcUrl", self.config.tc_url.as_str().into()),
        ]);
        if let (Amf0Value::Object(props), true) = (&mut object, self.config.capabilities.is_enhanced()) {
            props.extend(self.config.capabilities.to_properties());
        }
        self.link.send_command(csid::COMMAND, 0, &Command::new("connect", 1.0, object, vec![]));
        self.phase = Phase::Connecting { transaction_id: 1.0 };
    }

    /// Publishes `stream_name` (live) once connected; `PublishStarted` follows.
    pub fn publish(&mut self, stream_name: &str) {
        self.request(Intent::Publish(stream_name.to_owned()));
    }

    /// Plays `stream_name` once connected; `PlayStarted` and media follow.
    pub fn play(&mut self, stream_name: &str) {
        self.request(Intent::Play(stream_name.to_owned()));
    }

    fn request(&mut self, intent: Intent) {
        if !matches!(self.phase, Phase::Connected) {
            self.queued.push(intent);
            return;
        }
        let tx = self.transaction();
        if let Intent::Publish(name) = &intent {
            let name = Amf0Value::from(name.as_str());
            let release =
                Command::new("releaseStream", self.transaction(), Amf0Value::Null, vec![name.clone()]);
            self.link.send_command(csid::COMMAND, 0, &release);
            let fc = Command::new("FCPublish", self.transaction(), Amf0Value::Null, vec![name]);
            self.link.send_command(csid::COMMAND, 0, &fc);
        }
        self.link.send_command(csid::COMMAND, 0, &Command::new("createStream", tx, Amf0Value::Null, vec![]));
        self.pending.push((tx, intent));
    }

    fn transaction(&mut self) -> f64 {
        let t = self.next_transaction;
        self.next_transaction += 1.0;
        t
    }

    /// Sends media on a publishing stream. Data messages get the `@setDataFrame` wrapper.
    pub fn send_media(&mut self, stream_id: u32, kind: MediaKind, timestamp: u32, payload: &[u8]) {
        match kind {
            MediaKind::Audio => {
                self.link.send_message(csid::AUDIO, timestamp, type_id::AUDIO, stream_id, payload)
            }
            MediaKind::Video => {
                self.link.send_message(csid::VIDEO, timestamp, type_id::VIDEO, stream_id, payload)
            }
            MediaKind::Data => {
                self.scratch.clear();
                encode_amf0(&Amf0Value::from("@setDataFrame"), &mut self.scratch);
                self.scratch.put_slice(payload);
                let body = self.scratch.split();
                self.link.send_message(csid::STREAM_COMMAND, timestamp, type_id::DATA_AMF0, stream_id, &body);
                self.scratch.unsplit(body);
            }
        }
    }

    /// Stops a stream (FCUnpublish + deleteStream for publishers).
    pub fn close_stream(&mut self, stream_id: u32) {
        let tx = self.transaction();
        let args = vec![f64::from(stream_id).into()];
        self.link.send_command(csid::COMMAND, 0, &Command::new("deleteStream", tx, Amf0Value::Null, args));
    }

    fn handle_message(&mut self, msg: RawMessage) -> Result<()> {
        match msg.type_id {
            type_id::WINDOW_ACK_SIZE => {
                self.link.ack_window = read_u32_payload(&msg.payload, "window acknowledgement size")?;
            }
            type_id::SET_PEER_BANDWIDTH => {
                // Answer with our own window, as Flash Player does.
                let size = read_u32_payload(&msg.payload, "set peer bandwidth")?;
                self.link.send_window_ack_size(size);
            }
            type_id::USER_CONTROL => {
                if let UserControl::PingRequest(t) = UserControl::parse(&msg.payload)? {
                    self.link.send_user_control(UserControl::PingResponse(t));
                }
            }
            type_id::AUDIO | type_id::VIDEO => {
                let kind = if msg.type_id == type_id::AUDIO { MediaKind::Audio } else { MediaKind::Video };
                self.media(msg.stream_id, kind, msg.timestamp, msg.payload);
            }
            type_id::DATA_AMF0 | type_id::DATA_AMF3 => {
                let body = if msg.type_id == type_id::DATA_AMF3 && msg.payload.first() == Some(&0) {
                    msg.payload.slice(1..)
                } else {
                    msg.payload
                };
                match message::data_message_name(&body) {
                    Some("onStatus") | Some("|RtmpSampleAccess") => {}
                    _ => self.media(msg.stream_id, MediaKind::Data, msg.timestamp, body),
                }
            }
            type_id::AGGREGATE => {
                for part in message::split_aggregate(msg.timestamp, msg.payload)? {
                    let kind = match part.type_id {
                        type_id::AUDIO => MediaKind::Audio,
                        type_id::VIDEO => MediaKind::Video,
                        type_id::DATA_AMF0 => MediaKind::Data,
                        _ => continue,
                    };
                    self.media(msg.stream_id, kind, part.timestamp, part.payload);
                }
            }
            type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3 => {
                let cmd = Command::parse(
                    &msg.payload,
                    msg.type_id == type_id::COMMAND_AMF3,
                    self.config.amf_limits,
                )?;
                self.handle_command(msg.stream_id, cmd)?;
            }
            type_id::SET_CHUNK_SIZE | type_id::ABORT | type_id::ACKNOWLEDGEMENT => {}
            // Shared objects and unassigned types: skipped, but reported.
            _ => self.events.push_back(ClientEvent::Unknown {
                stream_id: msg.stream_id,
                type_id: msg.type_id,
                len: msg.payload.len(),
            }),
        }
        Ok(())
    }

    fn media(&mut self, stream_id: u32, kind: MediaKind, timestamp: u32, payload: Bytes) {
        self.events.push_back(ClientEvent::Media(Media { stream_id, kind, timestamp, payload }));
    }

    fn handle_command(&mut self, stream_id: u32, cmd: Command) -> Result<()> {
        match cmd.name.as_str() {
            "_result" => {
                if let Phase::Connecting { transaction_id } = self.phase {
                    if cmd.transaction_id == transaction_id {
                        self.phase = Phase::Connected;
                        if let Some(props) = cmd.object.properties() {
                            self.server_capabilities = EnhancedCapabilities::from_properties(props);
                        }
                        self.link.send_chunk_size(self.config.chunk_size);
                        self.events.push_back(ClientEvent::Connected);
                        for intent in std::mem::take(&mut self.queued) {
                            self.request(intent);
                        }
                        return Ok(());
                    }
                }
                let Some(index) = self.pending.iter().position(|(tx, _)| *tx == cmd.transaction_id) else {
                    return Ok(());
                };
                let (_, intent) = self.pending.swap_remove(index);
                let id = cmd
                    .arg(0)
                    .and_then(Amf0Value::as_f64)
                    .ok_or_else(|| Error::Protocol("createStream result without a stream id".into()))?
                    as u32;
                match intent {
                    Intent::Publish(name) => {
                        let args = vec![name.into(), "live".into()];
                        self.link.send_command(
                            csid::STREAM_COMMAND,
                            id,
                            &Command::new("publish", 0.0, Amf0Value::Null, args),
                        );
                    }
                    Intent::Play(name) => {
                        let args = vec![name.into(), (-2.0).into(), (-1.0).into()];
                        self.link.send_command(
                            csid::STREAM_COMMAND,
                            id,
                            &Command::new("play", 0.0, Amf0Value::Null, args),
                        );
                        let millis = self.config.buffer_length_ms;
                        self.link.send_user_control(UserControl::SetBufferLength { stream_id: id, millis });
                    }
                }
            }
            "_error" => {
                let info = cmd.arg(0);
                let text = |k: &str| {
                    info.and_then(|i| i.get(k)).and_then(Amf0Value::as_str).unwrap_or_default().to_owned()
                };
                self.events.push_back(ClientEvent::Rejected {
                    code: text("code"),
                    description: text("description"),
                });
                if matches!(self.phase, Phase::Connecting { .. }) {
                    self.phase = Phase::Closed;
                }
            }
            "onStatus" => {
                let info = cmd.arg(0);
                if let Some(request) = info.and_then(super::ReconnectRequest::from_info) {
                    self.events.push_back(ClientEvent::ReconnectRequested(request));
                    return Ok(());
                }
                let text = |k: &str| {
                    info.and_then(|i| i.get(k)).and_then(Amf0Value::as_str).unwrap_or_default().to_owned()
                };
                let (level, code) = (text("level"), text("code"));
                let event = match code.as_str() {
                    "NetStream.Publish.Start" => ClientEvent::PublishStarted { stream_id },
                    "NetStream.Play.Start" => ClientEvent::PlayStarted { stream_id },
                    _ if level == StatusLevel::Error.as_str() => {
                        ClientEvent::Rejected { code, description: text("description") }
                    }
                    _ => ClientEvent::Status { stream_id, level, code, description: text("description") },
                };
                self.events.push_back(event);
            }
            _ => {}
        }
        Ok(())
    }
}
