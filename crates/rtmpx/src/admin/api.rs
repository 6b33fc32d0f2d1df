//! The JSON documents of `/api/v1/streams` and `/api/v1/sessions`.
//!
//! Bitrates are bits per second over the last 10 s (the registry samples byte counters every
//! 2 s), or since the session started when it is younger than that.

use std::collections::{BTreeMap, HashMap};
use std::time::UNIX_EPOCH;

use rtmpx_router::StreamSnapshot;
use serde::Serialize;

use crate::metrics::Role;
use crate::registry::SessionEntry;
use crate::session::SessionContext;

#[derive(Debug, Serialize)]
pub struct SessionJson {
    pub id: u64,
    pub peer: String,
    pub variant: &'static str,
    pub app: Option<String>,
    pub stream: Option<String>,
    pub role: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bitrate_in_bps: u64,
    pub bitrate_out_bps: u64,
    pub video_codec: Option<&'static str>,
    pub audio_codec: Option<&'static str>,
    /// The client announced Enhanced RTMP in `connect`; a player that did not gets the default
    /// tracks only, in legacy tags.
    pub enhanced: bool,
    pub dropped_frames: u64,
    pub uptime_secs: f64,
    /// Unix time of the accept, in seconds.
    pub started_at: u64,
}

#[derive(Debug, Serialize)]
pub struct PublisherJson {
    pub session: u64,
    pub peer: String,
    pub variant: &'static str,
}

#[derive(Debug, Serialize)]
pub struct StreamJson {
    pub app: String,
    pub stream: String,
    pub publisher: Option<PublisherJson>,
    pub players: usize,
    /// Players by variant.
    pub player_variants: BTreeMap<&'static str, usize>,
    pub video_codec: Option<&'static str>,
    pub audio_codec: Option<&'static str>,
    /// Every audio and video track (Enhanced RTMP multitrack: more than one of a kind).
    pub tracks: Vec<TrackJson>,
    /// Players without Enhanced RTMP support (served the default tracks only).
    pub legacy_players: usize,
    /// Media payload bytes from the current publisher.
    pub media_bytes_in: u64,
    pub frames_in: u64,
    pub dropped_frames: u64,
    /// The publisher's incoming bitrate (everything it sends, RTMP framing included).
    pub bitrate_in_bps: u64,
    /// How long the current publisher has been connected.
    pub uptime_secs: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct TrackJson {
    /// "video" or "audio".
    pub kind: &'static str,
    /// 0 is the default track.
    pub id: u8,
    pub codec: &'static str,
}

/// (video, audio) codec names by (app, stream).
type CodecsByStream = HashMap<(String, String), (Option<&'static str>, Option<&'static str>)>;

fn codecs_by_stream(streams: &[StreamSnapshot]) -> CodecsByStream {
    streams
        .iter()
        .map(|s| ((s.key.app.clone(), s.key.name.clone()), (s.video_codec, s.audio_codec)))
        .collect()
}

fn session_json(entry: &SessionEntry, codecs: &CodecsByStream) -> SessionJson {
    let state = entry.state();
    let (bitrate_in_bps, bitrate_out_bps) = entry.bitrates();
    let (video_codec, audio_codec) = match (&state.app, &state.stream) {
        (Some(app), Some(stream)) => codecs.get(&(app.clone(), stream.clone())).copied().unwrap_or_default(),
        _ => (None, None),
    };
    SessionJson {
        id: entry.id,
        peer: entry.peer.to_string(),
        variant: state.variant.name(),
        app: state.app,
        stream: state.stream,
        role: state.role.name(),
        bytes_in: entry.bytes_in(),
        bytes_out: entry.bytes_out(),
        bitrate_in_bps,
        bitrate_out_bps,
        video_codec,
        audio_codec,
        enhanced: state.enhanced,
        dropped_frames: entry.dropped_frames(),
        uptime_secs: (entry.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        started_at: entry.started_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    }
}

pub fn sessions(ctx: &SessionContext) -> Vec<SessionJson> {
    let codecs = codecs_by_stream(&ctx.router.streams());
    ctx.sessions.entries().iter().map(|e| session_json(e, &codecs)).collect()
}

pub fn session(ctx: &SessionContext, id: u64) -> Option<SessionJson> {
    let entry = ctx.sessions.get(id)?;
    Some(session_json(&entry, &codecs_by_stream(&ctx.router.streams())))
}

pub fn streams(ctx: &SessionContext) -> Vec<StreamJson> {
    let entries = ctx.sessions.entries();
    let mut player_variants: HashMap<(String, String), BTreeMap<&'static str, usize>> = HashMap::new();
    for entry in &entries {
        let state = entry.state();
        if let (Role::Player, Some(app), Some(stream)) = (state.role, state.app, state.stream) {
            *player_variants.entry((app, stream)).or_default().entry(state.variant.name()).or_default() += 1;
        }
    }
    ctx.router
        .streams()
        .into_iter()
        .map(|s| {
            let publisher_entry = s.publisher.as_ref().and_then(|p| ctx.sessions.get(p.id));
            StreamJson {
                player_variants: player_variants
                    .remove(&(s.key.app.clone(), s.key.name.clone()))
                    .unwrap_or_default(),
                publisher: s.publisher.map(|p| PublisherJson {
                    session: p.id,
                    peer: p.peer,
                    variant: publisher_entry.as_ref().map(|e| e.state().variant.name()).unwrap_or(p.variant),
                }),
                app: s.key.app,
                stream: s.key.name,
                players: s.players,
                video_codec: s.video_codec,
                audio_codec: s.audio_codec,
                tracks: s
                    .tracks
                    .iter()
                    .map(|t| TrackJson { kind: t.kind.name(), id: t.id, codec: t.codec })
                    .collect(),
                legacy_players: s.legacy_players,
                media_bytes_in: s.bytes_in,
                frames_in: s.frames_in,
                dropped_frames: s.dropped_frames,
                bitrate_in_bps: publisher_entry.as_ref().map(|e| e.bitrates().0).unwrap_or(0),
                uptime_secs: publisher_entry
                    .map(|e| (e.started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
            }
        })
        .collect()
}
