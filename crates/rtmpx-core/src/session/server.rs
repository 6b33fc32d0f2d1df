//! The server role: accepts connect/publish/play, reports them as events, and sends what
//! real clients wait for once the caller (router, auth) has decided.

use std::collections::VecDeque;

use bytes::Bytes;
use rand::RngCore;

use crate::amf::{Amf0Value, AmfLimits, Properties};
use crate::chunk::{ChunkLimits, RawMessage};
use crate::handshake::{EncryptionPolicy, HandshakeOutcome, HandshakeVersion, PeerResponse, ServerHandshake};
use crate::media::{self, enhanced::MediaType};
use crate::message::{self, read_u32_payload, type_id, BandwidthLimit, Command, UserControl};
use crate::{Error, Result};

use super::capabilities::EnhancedCapabilities;
use super::link::Link;
use super::{csid, Media, MediaKind, StatusLevel};

/// Server-side settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Our outgoing chunk size (sent right after connect).
    pub chunk_size: u32,
    /// Window Acknowledgement Size we announce (the peer acks every this many bytes).
    pub window_ack_size: u32,
    /// Set Peer Bandwidth we announce.
    pub peer_bandwidth: u32,
    /// Bounds on what the client may make us buffer.
    pub chunk_limits: ChunkLimits,
    /// Bounds on AMF decoding of the client's commands.
    pub amf_limits: AmfLimits,
    /// Whether RTMPE handshakes are allowed, required or refused.
    pub encryption: EncryptionPolicy,
    /// Most message streams (createStream) per connection.
    pub max_streams: u32,
    /// `fmsVer` in the connect result.
    pub server_version: String,
    /// Our Enhanced RTMP support, answered in `_result` to clients that announced theirs.
    pub capabilities: EnhancedCapabilities,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            chunk_size: 4096,
            window_ack_size: 5_000_000,
            peer_bandwidth: 5_000_000,
            chunk_limits: ChunkLimits::default(),
            amf_limits: AmfLimits::default(),
            encryption: EncryptionPolicy::Allow,
            max_streams: 16,
            server_version: "FMS/3,5,7,7009".into(),
            capabilities: EnhancedCapabilities::gateway(),
        }
    }
}

/// `connect` as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRequest {
    /// The application (`app`).
    pub app: String,
    /// `tcUrl`: the URL the client connected to.
    pub tc_url: Option<String>,
    /// `flashVer`: the client's name and version.
    pub flash_ver: Option<String>,
    /// `swfUrl`.
    pub swf_url: Option<String>,
    /// `pageUrl`.
    pub page_url: Option<String>,
    /// `objectEncoding`: 0 (AMF0) or 3 (AMF3), echoed in the result.
    pub object_encoding: f64,
    /// The whole command object, for anything else (auth callbacks forward it).
    pub properties: Properties,
}

impl ConnectRequest {
    /// The `capsEx` bits the client announced (Enhanced RTMP v2), 0 when it sent none.
    pub fn caps_ex(&self) -> u32 {
        super::caps_ex(&self.properties)
    }

    /// The Enhanced RTMP capabilities the client announced (empty for a legacy client).
    pub fn capabilities(&self) -> EnhancedCapabilities {
        EnhancedCapabilities::from_properties(&self.properties)
    }
}

/// The second argument of `publish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    /// `live` (and anything unknown): not recorded.
    Live,
    /// `record`: a new recording.
    Record,
    /// `append`: appended to a recording.
    Append,
}

/// Where `play` starts: its `start` argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlayStart {
    /// −2, the default: the live stream, else a recording of that name.
    LiveOrRecorded,
    /// −1: the live stream only.
    Live,
    /// Any other number, as sent: a position in a recording. (FFmpeg scales the two values above
    /// by 1000; they are kept as sent, since servers forward them to callbacks.)
    At(f64),
}

impl PlayStart {
    /// The `start` argument; absent means −2.
    pub fn from_arg(start: Option<f64>) -> Self {
        match start {
            None => PlayStart::LiveOrRecorded,
            Some(-2.0) => PlayStart::LiveOrRecorded,
            Some(-1.0) => PlayStart::Live,
            Some(v) => PlayStart::At(v),
        }
    }

    /// The number on the wire (−2, −1 or the position as sent).
    pub fn as_f64(self) -> f64 {
        match self {
            PlayStart::LiveOrRecorded => -2.0,
            PlayStart::Live => -1.0,
            PlayStart::At(v) => v,
        }
    }
}

/// What `play`/`play2` asks for besides the stream name.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct PlayRequest {
    /// Where to start.
    pub start: PlayStart,
    /// Seconds to play; `None` (−1, any negative number, or absent) until the end.
    pub duration: Option<u32>,
    /// Whether to flush a playlist (`play`'s fourth argument, true when absent).
    pub reset: bool,
}

impl Default for PlayRequest {
    /// What a `play` with only a stream name asks for.
    fn default() -> Self {
        PlayRequest { start: PlayStart::LiveOrRecorded, duration: None, reset: true }
    }
}

impl PlayRequest {
    /// From `play`'s arguments after the name, as sent.
    pub fn from_args(start: Option<f64>, duration: Option<f64>, reset: Option<bool>) -> Self {
        PlayRequest {
            start: PlayStart::from_arg(start),
            // NaN fails the comparison too: until the end.
            duration: duration.filter(|d| *d >= 0.0).map(|d| d as u32),
            reset: reset.unwrap_or(true),
        }
    }
}

/// What the server session reports. Connect, publish and play wait for a decision:
/// `accept_connect`/`reject_connect`, `accept_publish`/`reject_publish`, `accept_play`/`reject_play`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// C0/C1 ↔ S0/S1/S2 done; commands follow.
    HandshakeComplete {
        /// The version the client asked for in C0.
        requested: HandshakeVersion,
        /// The version in use (RTMPE types may fall back).
        version: HandshakeVersion,
        /// Whether the digest (Flash Player 9+) handshake was used.
        digest: bool,
    },
    /// `connect`: answer with `accept_connect` or `reject_connect`.
    ConnectRequested(ConnectRequest),
    /// `publish`: answer with `accept_publish` or `reject_publish`.
    PublishRequested {
        /// The message stream from createStream.
        stream_id: u32,
        /// As sent, query string (keys, tokens) included.
        stream_name: String,
        /// Live, record or append.
        mode: PublishMode,
    },
    /// `play`/`play2`: answer with `accept_play` or `reject_play`.
    PlayRequested {
        /// The message stream from createStream.
        stream_id: u32,
        /// As sent, query string (keys, tokens) included.
        stream_name: String,
        /// Start, duration and reset.
        request: PlayRequest,
    },
    /// Audio, video or metadata from a publishing stream.
    Media(Media),
    /// The client stopped publishing or playing on this stream (deleteStream, closeStream,
    /// FCUnpublish).
    StreamClosed {
        /// The message stream.
        stream_id: u32,
    },
    /// `pause` on a playing stream; live playback resumes at the next keyframe.
    PauseChanged {
        /// The message stream.
        stream_id: u32,
        /// True for pause, false for unpause.
        paused: bool,
    },
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum StreamState {
    Idle,
    PublishPending { transaction_id: f64 },
    Publishing,
    PlayPending { transaction_id: f64 },
    Playing,
}

#[derive(Debug, Clone, Copy)]
struct MessageStream {
    id: u32,
    state: StreamState,
    receive_audio: bool,
    receive_video: bool,
    paused: bool,
    /// After unpause or receiveVideo(true): hold video until a keyframe so decoding restarts.
    wait_keyframe: bool,
}

enum Phase {
    Handshake(Box<ServerHandshake>),
    AwaitConnect,
    ConnectPending { transaction_id: f64, object_encoding: f64 },
    Connected,
    Closed,
}

/// The calls a connected client may make besides `connect`, parsed from the command name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamCommand {
    CreateStream,
    ReleaseStream,
    FcPublish,
    FcUnpublish,
    FcSubscribe,
    GetStreamLength,
    CheckBandwidth,
    Publish,
    Play,
    Play2,
    DeleteStream,
    CloseStream,
    ReceiveAudio,
    ReceiveVideo,
    Pause,
}

impl StreamCommand {
    /// Names as clients send them; anything else gets `_error` ("Method not found").
    const NAMES: [(&'static str, StreamCommand); 17] = [
        ("createStream", StreamCommand::CreateStream),
        ("releaseStream", StreamCommand::ReleaseStream),
        ("FCPublish", StreamCommand::FcPublish),
        ("FCUnpublish", StreamCommand::FcUnpublish),
        ("FCSubscribe", StreamCommand::FcSubscribe),
        ("FCUnsubscribe", StreamCommand::FcSubscribe),
        ("getStreamLength", StreamCommand::GetStreamLength),
        ("_checkbw", StreamCommand::CheckBandwidth),
        ("publish", StreamCommand::Publish),
        ("play", StreamCommand::Play),
        ("play2", StreamCommand::Play2),
        ("deleteStream", StreamCommand::DeleteStream),
        ("closeStream", StreamCommand::CloseStream),
        ("receiveAudio", StreamCommand::ReceiveAudio),
        ("receiveVideo", StreamCommand::ReceiveVideo),
        ("pause", StreamCommand::Pause),
        ("pauseRaw", StreamCommand::Pause),
    ];

    fn parse(name: &str) -> Option<StreamCommand> {
        Self::NAMES.iter().find(|(known, _)| *known == name).map(|&(_, command)| command)
    }
}

/// Argument `index` as a string, empty when absent or not a string.
fn string_arg(cmd: &Command, index: usize) -> String {
    cmd.arg(index).and_then(Amf0Value::as_str).unwrap_or_default().to_owned()
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Handshake(_) => "handshake",
            Phase::AwaitConnect => "await-connect",
            Phase::ConnectPending { .. } => "connect-pending",
            Phase::Connected => "connected",
            Phase::Closed => "closed",
        }
    }
}

/// One server-side RTMP connection.
pub struct ServerSession {
    config: ServerConfig,
    phase: Phase,
    link: Link,
    events: VecDeque<ServerEvent>,
    streams: Vec<MessageStream>,
    next_stream_id: u32,
    outcome: Option<HandshakeOutcome>,
    peer_capabilities: EnhancedCapabilities,
}

// Without keys, buffers or the peer's data: what a log line about the session needs.
impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("phase", &self.phase.name())
            .field("encrypted", &self.is_encrypted())
            .field("streams", &self.streams)
            .field("queued_events", &self.events.len())
            .field("pending_output", &self.pending_output())
            .field("held_input", &self.held_input_bytes())
            .finish_non_exhaustive()
    }
}

impl ServerSession {
    /// A session waiting for C0/C1. Randomness for the handshake comes from `rng`.
    pub fn new(config: ServerConfig, rng: &mut dyn RngCore) -> Self {
        let handshake = ServerHandshake::new(config.encryption, rng);
        let link = Link::new(config.chunk_limits);
        ServerSession {
            config,
            phase: Phase::Handshake(Box::new(handshake)),
            link,
            events: VecDeque::new(),
            streams: Vec::new(),
            next_stream_id: 1,
            outcome: None,
            peer_capabilities: EnhancedCapabilities::default(),
        }
    }

    /// The Enhanced RTMP capabilities the client announced in `connect` (empty: a legacy client).
    pub fn peer_capabilities(&self) -> &EnhancedCapabilities {
        &self.peer_capabilities
    }

    /// Feeds received bytes. An error means the connection must be closed (after sending
    /// whatever [`poll_transmit`](Self::poll_transmit) still returns).
    pub fn handle_input(&mut self, data: &[u8]) -> Result<()> {
        if matches!(self.phase, Phase::Closed) {
            return Err(Error::Closed);
        }
        let result = if self.decodes_borrowed() {
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

    /// A connected session with nothing buffered decodes a read where it lies: a publisher's
    /// bytes are then copied once, into the messages they make, not into the input first.
    fn decodes_borrowed(&self) -> bool {
        matches!(self.phase, Phase::Connected) && self.link.can_decode_borrowed() && !self.decision_pending()
    }

    /// [`process`](Self::process) over borrowed bytes; what is not decoded stays in the input.
    fn process_borrowed(&mut self, mut data: &[u8]) -> Result<()> {
        self.link.count_received(data.len());
        while !self.decision_pending() {
            let Some(msg) = self.link.next_message_from(&mut data)? else { break };
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
            self.events.push_back(ServerEvent::HandshakeComplete {
                requested: outcome.requested,
                version: outcome.version,
                digest: outcome.digest,
            });
            self.phase = Phase::AwaitConnect;
            self.outcome = Some(outcome);
        }
        // A client may pipeline commands behind connect/publish/play; they wait in the input
        // buffer until the caller has decided, so they are seen in the state the decision made.
        while !self.decision_pending() {
            let Some(msg) = self.link.next_message()? else { break };
            self.handle_message(msg)?;
        }
        self.link.acknowledge_if_due();
        Ok(())
    }

    fn decision_pending(&self) -> bool {
        matches!(self.phase, Phase::ConnectPending { .. })
            || self.streams.iter().any(|s| {
                matches!(s.state, StreamState::PublishPending { .. } | StreamState::PlayPending { .. })
            })
    }

    /// After a decision: parse what the client sent behind the request. An error here closes
    /// the session like one from [`handle_input`](Self::handle_input).
    fn continue_input(&mut self) -> Result<()> {
        if matches!(self.phase, Phase::Closed | Phase::Handshake(_)) {
            return Ok(());
        }
        let result = self.process();
        if result.is_err() {
            self.phase = Phase::Closed;
        }
        result
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Bytes to send to the client, if any (encrypted under RTMPE).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.link.take_output()
    }

    /// Whether output is queued (without taking it).
    pub fn has_transmit(&self) -> bool {
        self.link.has_output()
    }

    /// Whether the session is RTMPE (its output is RC4-encrypted).
    pub fn is_encrypted(&self) -> bool {
        self.link.is_encrypted()
    }

    /// Encrypts what two RTMPE sessions have queued so far in one interleaved RC4 pass: an
    /// optional speed-up (1.7x over encrypting each alone) for callers that send the same media
    /// to many RTMPE players, such as a fan-out that pairs them up.
    ///
    /// Part of the public API on purpose: it changes no byte. What
    /// [`poll_transmit`](Self::poll_transmit) returns afterwards is exactly what it would have
    /// returned without the call, and output queued later is encrypted as usual. Unless both
    /// sessions are RTMPE, it does nothing; calling it at any time, or never, is correct.
    pub fn seal_output_paired(&mut self, other: &mut ServerSession) {
        Link::seal_pair(&mut self.link, &mut other.link);
    }

    /// Bytes queued and not yet taken by [`poll_transmit`](Self::poll_transmit).
    pub fn pending_output(&self) -> usize {
        self.link.output_len()
    }

    /// The handshake's outcome (version, digest, signature check) once it completed.
    pub fn handshake(&self) -> Option<&HandshakeOutcome> {
        self.outcome.as_ref()
    }

    /// The chunk size we write with (128 until we send Set Chunk Size).
    pub fn outgoing_chunk_size(&self) -> u32 {
        self.link.encoder.chunk_size()
    }

    /// Whether the session failed or was closed (input is refused).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Memory the receive side holds: unparsed input and partly received messages.
    pub fn held_input_bytes(&self) -> usize {
        self.link.held_input_bytes()
    }

    /// Received bytes that are not yet a whole message, as a marker that changes only when
    /// that is resolved: the oldest partial message's number, or (no partial message, but an
    /// incomplete chunk in the input) how many messages were decoded before it. A caller that
    /// sees the same marker for too long knows the client is stuck mid-message, however many
    /// bytes trickle in. `None` when nothing is pending (or the session is still handshaking).
    pub fn incomplete_input(&self) -> Option<(u64, u64)> {
        if matches!(self.phase, Phase::Handshake(_)) {
            return None;
        }
        match self.link.decoder.oldest_partial() {
            Some(number) => Some((number, 0)),
            None if !self.link.input.is_empty() => Some((0, self.link.messages_decoded)),
            None => None,
        }
    }

    /// Bytes received so far (what Acknowledgements count).
    pub fn bytes_received(&self) -> u64 {
        self.link.bytes_received
    }

    fn stream_mut(&mut self, stream_id: u32) -> Option<&mut MessageStream> {
        self.streams.iter_mut().find(|s| s.id == stream_id)
    }

    fn handle_message(&mut self, msg: RawMessage) -> Result<()> {
        match msg.type_id {
            type_id::SET_CHUNK_SIZE | type_id::ABORT | type_id::ACKNOWLEDGEMENT => Ok(()),
            type_id::WINDOW_ACK_SIZE => {
                self.link.ack_window = read_u32_payload(&msg.payload, "window acknowledgement size")?;
                Ok(())
            }
            type_id::SET_PEER_BANDWIDTH => Ok(()),
            type_id::USER_CONTROL => {
                if let UserControl::PingRequest(t) = UserControl::parse(&msg.payload)? {
                    self.link.send_user_control(UserControl::PingResponse(t));
                }
                Ok(())
            }
            type_id::AUDIO => self.media_in(msg.stream_id, MediaKind::Audio, msg.timestamp, msg.payload),
            type_id::VIDEO => self.media_in(msg.stream_id, MediaKind::Video, msg.timestamp, msg.payload),
            type_id::DATA_AMF0 | type_id::DATA_AMF3 => {
                let body = if msg.type_id == type_id::DATA_AMF3 && msg.payload.first() == Some(&0) {
                    msg.payload.slice(1..)
                } else {
                    msg.payload
                };
                let body = message::strip_set_data_frame(&body).unwrap_or(body);
                self.media_in(msg.stream_id, MediaKind::Data, msg.timestamp, body)
            }
            type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3 => {
                let command = Command::parse(
                    &msg.payload,
                    msg.type_id == type_id::COMMAND_AMF3,
                    self.config.amf_limits,
                )?;
                self.handle_command(msg.stream_id, command)
            }
            type_id::AGGREGATE => {
                for part in message::split_aggregate(msg.timestamp, msg.payload)? {
                    let kind = match part.type_id {
                        type_id::AUDIO => MediaKind::Audio,
                        type_id::VIDEO => MediaKind::Video,
                        type_id::DATA_AMF0 => MediaKind::Data,
                        _ => continue,
                    };
                    self.media_in(msg.stream_id, kind, part.timestamp, part.payload)?;
                }
                Ok(())
            }
            // Shared objects (a Flash-era feature nobody streams with) and unassigned types:
            // skipped, but reported so the caller can count them.
            _ => {
                self.events.push_back(ServerEvent::Unknown {
                    stream_id: msg.stream_id,
                    type_id: msg.type_id,
                    len: msg.payload.len(),
                });
                Ok(())
            }
        }
    }

    fn media_in(&mut self, stream_id: u32, kind: MediaKind, timestamp: u32, payload: Bytes) -> Result<()> {
        match self.streams.iter().find(|s| s.id == stream_id).map(|s| s.state) {
            // An empty audio/video/data message carries nothing (not even a codec byte); a
            // stream of them, one byte each on the wire, would only cost memory downstream.
            Some(StreamState::Publishing) if payload.is_empty() => Ok(()),
            Some(StreamState::Publishing) => {
                // A malformed Enhanced RTMP header ends this publisher, never its players.
                match kind {
                    MediaKind::Audio => media::validate(MediaType::Audio, &payload)?,
                    MediaKind::Video => media::validate(MediaType::Video, &payload)?,
                    MediaKind::Data => {}
                }
                self.events.push_back(ServerEvent::Media(Media { stream_id, kind, timestamp, payload }));
                Ok(())
            }
            // Data messages before publish are harmless (some encoders send them early).
            _ if kind == MediaKind::Data => Ok(()),
            _ => Err(Error::Protocol(format!("media on stream {stream_id}, which is not publishing"))),
        }
    }

    fn handle_command(&mut self, stream_id: u32, cmd: Command) -> Result<()> {
        match (&self.phase, cmd.name.as_str()) {
            (Phase::AwaitConnect, "connect") => self.on_connect(cmd),
            (Phase::AwaitConnect | Phase::ConnectPending { .. }, _) => {
                Err(Error::Protocol(format!("`{}` before connect completed", cmd.name)))
            }
            (Phase::Connected, "connect") => Err(Error::Protocol("second connect".into())),
            (Phase::Connected, _) => self.on_stream_command(stream_id, cmd),
            _ => Ok(()),
        }
    }

    fn on_connect(&mut self, cmd: Command) -> Result<()> {
        let mut props = cmd.object.properties().cloned().unwrap_or_default();
        // A client that cannot extend the command object (FFmpeg's player: `-rtmp_conn
        // "O:1 NN:capsEx:2 O:0"`) may announce Enhanced RTMP in an object argument.
        for arg in &cmd.args {
            for (key, value) in arg.properties().into_iter().flatten() {
                let enhanced_key = matches!(
                    key.as_str(),
                    "fourCcList" | "videoFourCcInfoMap" | "audioFourCcInfoMap" | "capsEx"
                );
                if enhanced_key && !props.iter().any(|(k, _)| k == key) {
                    props.push((key.clone(), value.clone()));
                }
            }
        }
        self.peer_capabilities = EnhancedCapabilities::from_properties(&props);
        let text =
            |key: &str| props.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_str()).map(str::to_owned);
        let object_encoding =
            props.iter().find(|(k, _)| k == "objectEncoding").and_then(|(_, v)| v.as_f64()).unwrap_or(0.0);
        let request = ConnectRequest {
            app: text("app").unwrap_or_default(),
            tc_url: text("tcUrl"),
            flash_ver: text("flashVer"),
            swf_url: text("swfUrl"),
            page_url: text("pageUrl"),
            object_encoding,
            properties: props,
        };
        self.phase = Phase::ConnectPending { transaction_id: cmd.transaction_id, object_encoding };
        self.events.push_back(ServerEvent::ConnectRequested(request));
        Ok(())
    }

    /// FFmpeg as an RTMPE publisher, the one RTMPE client that echoes S1 as C2. It answers Set
    /// Chunk Size by sending the packet back through its RC4 writer, which encrypts the packet
    /// in place, and then takes its chunk sizes from the encrypted bytes; without Set Chunk Size
    /// both sides stay at 128 and it works.
    fn is_ffmpeg_rtmpe_publisher(&self) -> bool {
        self.outcome
            .as_ref()
            .is_some_and(|o| o.version.is_encrypted() && o.peer_response == PeerResponse::Echo)
    }

    /// Accepts the pending `connect`: window/bandwidth/chunk size, then `_result`. Commands the
    /// client sent behind connect are parsed now; an error from them closes the session.
    pub fn accept_connect(&mut self) -> Result<()> {
        let Phase::ConnectPending { transaction_id, object_encoding } = self.phase else {
            return Err(Error::Protocol("accept_connect without a pending connect".into()));
        };
        self.link.send_window_ack_size(self.config.window_ack_size);
        self.link.send_peer_bandwidth(self.config.peer_bandwidth, BandwidthLimit::Dynamic);
        if !self.is_ffmpeg_rtmpe_publisher() {
            self.link.send_chunk_size(self.config.chunk_size);
        }
        let mut properties = vec![
            ("fmsVer".to_owned(), Amf0Value::from(self.config.server_version.as_str())),
            ("capabilities".to_owned(), 31.0.into()),
            ("mode".to_owned(), 1.0.into()),
        ];
        // Our own Enhanced RTMP support, to clients that announced theirs (legacy clients get
        // the _result they always got).
        if self.peer_capabilities.is_enhanced() {
            properties.extend(self.config.capabilities.to_properties());
        }
        let properties = Amf0Value::Object(properties);
        let info = Amf0Value::object([
            ("level", StatusLevel::Status.into()),
            ("code", "NetConnection.Connect.Success".into()),
            ("description", "Connection succeeded.".into()),
            ("objectEncoding", object_encoding.into()),
        ]);
        self.link.send_command(
            csid::COMMAND,
            0,
            &Command::new("_result", transaction_id, properties, vec![info]),
        );
        self.phase = Phase::Connected;
        self.continue_input()
    }

    /// Rejects the pending `connect` with `NetConnection.Connect.Rejected`; close after sending.
    pub fn reject_connect(&mut self, description: &str) -> Result<()> {
        let Phase::ConnectPending { transaction_id, .. } = self.phase else {
            return Err(Error::Protocol("reject_connect without a pending connect".into()));
        };
        let info = Amf0Value::object([
            ("level", StatusLevel::Error.into()),
            ("code", "NetConnection.Connect.Rejected".into()),
            ("description", description.into()),
        ]);
        self.link.send_command(
            csid::COMMAND,
            0,
            &Command::new("_error", transaction_id, Amf0Value::Null, vec![info]),
        );
        self.phase = Phase::Closed;
        Ok(())
    }

    fn send_result(&mut self, transaction_id: f64, args: Vec<Amf0Value>) {
        if transaction_id > 0.0 {
            self.link.send_command(
                csid::COMMAND,
                0,
                &Command::new("_result", transaction_id, Amf0Value::Null, args),
            );
        }
    }

    fn on_stream_command(&mut self, stream_id: u32, cmd: Command) -> Result<()> {
        use StreamCommand::*;
        let Some(command) = StreamCommand::parse(&cmd.name) else {
            self.method_not_found(&cmd);
            return Ok(());
        };
        match command {
            CreateStream => self.create_stream(&cmd)?,
            ReleaseStream | FcSubscribe | CheckBandwidth => {
                self.send_result(cmd.transaction_id, vec![Amf0Value::Undefined])
            }
            FcPublish => self.fc_publish(&cmd),
            FcUnpublish => self.fc_unpublish(&cmd),
            GetStreamLength => self.send_result(cmd.transaction_id, vec![0.0.into()]),
            Publish => self.publish(stream_id, &cmd)?,
            Play | Play2 => self.play(stream_id, &cmd, command == Play2)?,
            DeleteStream => {
                let id = cmd.arg(0).and_then(Amf0Value::as_f64).unwrap_or(f64::from(stream_id)) as u32;
                self.close_stream(id, false);
                self.streams.retain(|s| s.id != id);
            }
            CloseStream => self.close_stream(stream_id, true),
            ReceiveAudio | ReceiveVideo => self.receive_media(stream_id, &cmd, command == ReceiveVideo),
            Pause => self.pause(stream_id, &cmd),
        }
        Ok(())
    }

    /// Unknown calls: answered so that a client waiting on the transaction does not hang.
    fn method_not_found(&mut self, cmd: &Command) {
        if cmd.transaction_id > 0.0 {
            let info = Amf0Value::object([
                ("level", StatusLevel::Error.into()),
                ("code", "NetConnection.Call.Failed".into()),
                ("description", format!("Method not found ({}).", cmd.name).into()),
            ]);
            self.link.send_command(
                csid::COMMAND,
                0,
                &Command::new("_error", cmd.transaction_id, Amf0Value::Null, vec![info]),
            );
        }
    }

    fn create_stream(&mut self, cmd: &Command) -> Result<()> {
        if self.streams.len() as u32 >= self.config.max_streams {
            return Err(Error::limit("message streams", self.streams.len() + 1, self.config.max_streams));
        }
        let id = self.next_stream_id;
        self.next_stream_id += 1;
        self.streams.push(MessageStream {
            id,
            state: StreamState::Idle,
            receive_audio: true,
            receive_video: true,
            paused: false,
            wait_keyframe: false,
        });
        self.send_result(cmd.transaction_id, vec![f64::from(id).into()]);
        Ok(())
    }

    fn fc_publish(&mut self, cmd: &Command) {
        let info = Amf0Value::object([
            ("code", Amf0Value::from("NetStream.Publish.Start")),
            ("description", string_arg(cmd, 0).into()),
        ]);
        self.link.send_values(
            csid::COMMAND,
            type_id::COMMAND_AMF0,
            0,
            &["onFCPublish".into(), 0.0.into(), Amf0Value::Null, info],
        );
        self.send_result(cmd.transaction_id, vec![Amf0Value::Undefined]);
    }

    fn fc_unpublish(&mut self, cmd: &Command) {
        let info = Amf0Value::object([
            ("code", Amf0Value::from("NetStream.Unpublish.Success")),
            ("description", string_arg(cmd, 0).into()),
        ]);
        self.link.send_values(
            csid::COMMAND,
            type_id::COMMAND_AMF0,
            0,
            &["onFCUnpublish".into(), 0.0.into(), Amf0Value::Null, info],
        );
        self.send_result(cmd.transaction_id, vec![Amf0Value::Undefined]);
        let publishing: Vec<u32> =
            self.streams.iter().filter(|s| s.state == StreamState::Publishing).map(|s| s.id).collect();
        for id in publishing {
            self.close_stream(id, true);
        }
    }

    fn publish(&mut self, stream_id: u32, cmd: &Command) -> Result<()> {
        let stream_name = string_arg(cmd, 0);
        let mode = match cmd.arg(1).and_then(Amf0Value::as_str) {
            Some("record") => PublishMode::Record,
            Some("append") => PublishMode::Append,
            _ => PublishMode::Live,
        };
        let stream = self.idle_stream(stream_id, "publish")?;
        stream.state = StreamState::PublishPending { transaction_id: cmd.transaction_id };
        self.events.push_back(ServerEvent::PublishRequested { stream_id, stream_name, mode });
        Ok(())
    }

    /// `play` (name, start, duration, reset) or `play2` (one object: streamName, start...).
    fn play(&mut self, stream_id: u32, cmd: &Command, play2: bool) -> Result<()> {
        let (stream_name, request) = if play2 {
            let params = cmd.arg(0);
            let name = params.and_then(|p| p.get("streamName")).and_then(Amf0Value::as_str);
            let start = params.and_then(|p| p.get("start")).and_then(Amf0Value::as_f64);
            (name.unwrap_or_default().to_owned(), PlayRequest::from_args(start, None, None))
        } else {
            let start = cmd.arg(1).and_then(Amf0Value::as_f64);
            let duration = cmd.arg(2).and_then(Amf0Value::as_f64);
            let reset = cmd.arg(3).map(|v| v.as_bool().unwrap_or(v.as_f64().unwrap_or(1.0) != 0.0));
            (string_arg(cmd, 0), PlayRequest::from_args(start, duration, reset))
        };
        let stream = self.idle_stream(stream_id, "play")?;
        stream.state = StreamState::PlayPending { transaction_id: cmd.transaction_id };
        self.events.push_back(ServerEvent::PlayRequested { stream_id, stream_name, request });
        Ok(())
    }

    fn receive_media(&mut self, stream_id: u32, cmd: &Command, video: bool) {
        let on = cmd.arg(0).and_then(Amf0Value::as_bool).unwrap_or(true);
        if let Some(s) = self.stream_mut(stream_id) {
            if video {
                s.wait_keyframe |= on && !s.receive_video;
                s.receive_video = on;
            } else {
                s.receive_audio = on;
            }
        }
    }

    fn pause(&mut self, stream_id: u32, cmd: &Command) {
        let paused = cmd.arg(0).and_then(Amf0Value::as_bool).unwrap_or(true);
        let Some(s) = self.stream_mut(stream_id) else { return };
        if s.state != StreamState::Playing || s.paused == paused {
            return;
        }
        s.paused = paused;
        s.wait_keyframe |= !paused;
        let code = if paused { "NetStream.Pause.Notify" } else { "NetStream.Unpause.Notify" };
        self.link.send_status(
            stream_id,
            StatusLevel::Status,
            code,
            if paused { "Paused." } else { "Unpaused." },
        );
        self.events.push_back(ServerEvent::PauseChanged { stream_id, paused });
    }

    fn idle_stream(&mut self, stream_id: u32, what: &str) -> Result<&mut MessageStream> {
        match self.streams.iter_mut().find(|s| s.id == stream_id) {
            Some(s) if s.state == StreamState::Idle => Ok(s),
            Some(_) => Err(Error::Protocol(format!("{what} on stream {stream_id}, which is busy"))),
            None => Err(Error::Protocol(format!("{what} on stream {stream_id}, which was never created"))),
        }
    }

    fn close_stream(&mut self, stream_id: u32, send_status: bool) {
        let Some(s) = self.stream_mut(stream_id) else { return };
        let was = s.state;
        s.state = StreamState::Idle;
        s.paused = false;
        match was {
            StreamState::Idle => return,
            StreamState::Publishing if send_status => {
                self.link.send_status(
                    stream_id,
                    StatusLevel::Status,
                    "NetStream.Unpublish.Success",
                    "Stopped publishing.",
                );
            }
            _ => {}
        }
        self.events.push_back(ServerEvent::StreamClosed { stream_id });
    }

    fn pending(&mut self, stream_id: u32, publish: bool) -> Result<(&mut MessageStream, f64)> {
        let s = self
            .streams
            .iter_mut()
            .find(|s| s.id == stream_id)
            .ok_or_else(|| Error::Protocol(format!("no stream {stream_id}")))?;
        match (s.state, publish) {
            (StreamState::PublishPending { transaction_id }, true)
            | (StreamState::PlayPending { transaction_id }, false) => Ok((s, transaction_id)),
            _ => Err(Error::Protocol(format!("no pending request on stream {stream_id}"))),
        }
    }

    /// Accepts a pending `publish`: `NetStream.Publish.Start`.
    pub fn accept_publish(&mut self, stream_id: u32) -> Result<()> {
        let (s, _) = self.pending(stream_id, true)?;
        s.state = StreamState::Publishing;
        self.link.send_user_control(UserControl::StreamBegin(stream_id));
        self.link.send_status(stream_id, StatusLevel::Status, "NetStream.Publish.Start", "Start publishing.");
        self.continue_input()
    }

    /// Rejects a pending `publish` with an error status such as `NetStream.Publish.BadName`.
    pub fn reject_publish(&mut self, stream_id: u32, code: &str, description: &str) -> Result<()> {
        let (s, _) = self.pending(stream_id, true)?;
        s.state = StreamState::Idle;
        self.link.send_status(stream_id, StatusLevel::Error, code, description);
        self.continue_input()
    }

    /// Accepts a pending `play`: StreamBegin, `Play.Reset`, `Play.Start`, `|RtmpSampleAccess`,
    /// `Data.Start`. Media follows through [`send_media`](Self::send_media).
    pub fn accept_play(&mut self, stream_id: u32, stream_name: &str) -> Result<()> {
        let (s, _) = self.pending(stream_id, false)?;
        s.state = StreamState::Playing;
        self.link.send_user_control(UserControl::StreamBegin(stream_id));
        self.link.send_status(
            stream_id,
            StatusLevel::Status,
            "NetStream.Play.Reset",
            &format!("Playing and resetting {stream_name}."),
        );
        self.link.send_status(
            stream_id,
            StatusLevel::Status,
            "NetStream.Play.Start",
            &format!("Started playing {stream_name}."),
        );
        self.link.send_values(
            csid::STREAM_COMMAND,
            type_id::DATA_AMF0,
            stream_id,
            &["|RtmpSampleAccess".into(), true.into(), true.into()],
        );
        let info = Amf0Value::object([("code", Amf0Value::from("NetStream.Data.Start"))]);
        self.link.send_values(
            csid::STREAM_COMMAND,
            type_id::DATA_AMF0,
            stream_id,
            &["onStatus".into(), info],
        );
        self.continue_input()
    }

    /// Rejects a pending `play` (e.g. `NetStream.Play.StreamNotFound`, `NetStream.Play.Failed`).
    pub fn reject_play(&mut self, stream_id: u32, code: &str, description: &str) -> Result<()> {
        let (s, _) = self.pending(stream_id, false)?;
        s.state = StreamState::Idle;
        self.link.send_status(stream_id, StatusLevel::Error, code, description);
        self.continue_input()
    }

    /// A publisher arrived for a stream this client is playing (after it waited).
    pub fn notify_publish(&mut self, stream_id: u32) {
        self.link.send_user_control(UserControl::StreamBegin(stream_id));
        self.link.send_status(
            stream_id,
            StatusLevel::Status,
            "NetStream.Play.PublishNotify",
            "Stream is now published.",
        );
    }

    /// The publisher of a stream this client is playing left; the client may wait for the next.
    pub fn notify_unpublish(&mut self, stream_id: u32) {
        self.link.send_user_control(UserControl::StreamEof(stream_id));
        self.link.send_status(
            stream_id,
            StatusLevel::Status,
            "NetStream.Play.UnpublishNotify",
            "Stream was unpublished.",
        );
    }

    /// Sends any status to the client (e.g. on shutdown).
    pub fn send_status(&mut self, stream_id: u32, level: StatusLevel, code: &str, description: &str) {
        self.link.send_status(stream_id, level, code, description);
    }

    /// Asks the client to reconnect (Enhanced RTMP); meant for clients whose `connect` announced
    /// [`CAPS_EX_RECONNECT`](super::CAPS_EX_RECONNECT). The session goes on as before: the
    /// client leaves when it has moved. Returns false (and sends nothing) before `connect` was
    /// accepted.
    pub fn send_reconnect_request(&mut self, request: &super::ReconnectRequest) -> bool {
        if !matches!(self.phase, Phase::Connected) {
            return false;
        }
        self.link.send_values(
            csid::COMMAND,
            type_id::COMMAND_AMF0,
            0,
            &["onStatus".into(), 0.0.into(), Amf0Value::Null, request.info()],
        );
        true
    }

    /// Sends one audio/video/data message to a playing stream. Honours pause and
    /// receiveAudio/receiveVideo; returns whether it was queued.
    pub fn send_media(&mut self, stream_id: u32, kind: MediaKind, timestamp: u32, payload: &[u8]) -> bool {
        let Some((csid, type_id)) = self.media_route(stream_id, kind, payload) else { return false };
        self.link.send_message(csid, timestamp, type_id, stream_id, payload);
        true
    }

    /// [`send_media`](Self::send_media) without copying the payload: what
    /// [`poll_transmit`](Self::poll_transmit) returns then includes slices of `payload` between
    /// chunk-header pieces, for vectored writes of one buffer shared by every player. RTMPE
    /// sessions (each player's own cipher) and small payloads are copied as usual.
    pub fn send_media_shared(
        &mut self,
        stream_id: u32,
        kind: MediaKind,
        timestamp: u32,
        payload: &Bytes,
    ) -> bool {
        let Some((csid, type_id)) = self.media_route(stream_id, kind, payload) else { return false };
        self.link.send_message_shared(csid, timestamp, type_id, stream_id, payload);
        true
    }

    /// Gives back buffer memory while no output is pending: for connections that go idle.
    pub fn release_buffers(&mut self) {
        self.link.release_buffers();
    }

    /// The chunk stream and message type for a media message, or `None` when the stream does not
    /// take it now (not playing, paused, receiveAudio/Video off, waiting for a keyframe).
    fn media_route(&mut self, stream_id: u32, kind: MediaKind, payload: &[u8]) -> Option<(u32, u8)> {
        let s = self.streams.iter_mut().find(|s| s.id == stream_id)?;
        if s.state != StreamState::Playing {
            return None;
        }
        Some(match kind {
            MediaKind::Audio => {
                if !s.receive_audio || s.paused {
                    return None;
                }
                (csid::AUDIO, type_id::AUDIO)
            }
            MediaKind::Video => {
                if !s.receive_video || s.paused {
                    return None;
                }
                if s.wait_keyframe {
                    let info = crate::media::inspect_video(payload);
                    if !info.keyframe && !info.sequence_header {
                        return None;
                    }
                    s.wait_keyframe = !info.keyframe;
                }
                (csid::VIDEO, type_id::VIDEO)
            }
            MediaKind::Data => (csid::STREAM_COMMAND, type_id::DATA_AMF0),
        })
    }
}
