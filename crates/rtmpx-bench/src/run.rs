//! The phases of a run: publishers start, players ramp up, warm-up, measurement window, summary.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtmpx_client::{ClientEvent, ClientOptions, Connection, MediaKind, RtmpUrl};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::sleep_until;

use crate::flv::FlvUrl;
use crate::media::{self, FlvTag, SideTable, SyntheticPlan};
use crate::stats::{sample_process, sample_threads, thread_cpu_between, ProcSample, Stats, ThreadSample};
use crate::Args;

/// A publisher sending this late (ms) counts as fallen behind.
const LATE_MS: u64 = 100;

struct Ctx {
    args: Args,
    publish_url: RtmpUrl,
    play_url: RtmpUrl,
    /// Players over HTTP-FLV or WebSocket-FLV instead (`--play-url http://` or `ws://`).
    flv_play: Option<FlvUrl>,
    opts: ClientOptions,
    stats: Stats,
    epoch: Instant,
    /// Per publisher, with a file as input.
    side_tables: Vec<SideTable>,
    flv: Option<Vec<FlvTag>>,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn stream_name(&self, base: &str, publisher: usize) -> String {
        if self.args.publishers <= 1 {
            base.to_owned()
        } else {
            format!("{base}-{publisher}")
        }
    }
}

/// Counter values at one moment, to take differences over phases.
#[derive(Clone, Default)]
struct Snapshot {
    at: Option<Instant>,
    rx_bytes: u64,
    rx_frames: u64,
    dropped: u64,
    tx_bytes: u64,
    tx_frames: u64,
    errors: u64,
    players_connected: u64,
    server: Option<ProcSample>,
    server_threads: Vec<ThreadSample>,
    tool: Option<ProcSample>,
}

fn snapshot(ctx: &Ctx) -> Snapshot {
    let s = &ctx.stats;
    Snapshot {
        at: Some(Instant::now()),
        rx_bytes: s.rx_bytes.load(Relaxed),
        rx_frames: s.rx_frames.load(Relaxed),
        dropped: s.dropped.load(Relaxed),
        tx_bytes: s.tx_bytes.load(Relaxed),
        tx_frames: s.tx_frames.load(Relaxed),
        errors: s.errors.load(Relaxed),
        players_connected: s.players_connected.load(Relaxed),
        server: ctx.args.server_pid.and_then(|pid| sample_process(Some(pid))),
        server_threads: ctx.args.server_pid.map(sample_threads).unwrap_or_default(),
        tool: sample_process(None),
    }
}

fn secs_between(a: &Snapshot, b: &Snapshot) -> f64 {
    match (a.at, b.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    }
}

fn cpu_between(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(b?.cpu_secs - a?.cpu_secs)
}

/// Runs the benchmark; `Ok(false)` when connections failed or errors happened.
pub async fn run(args: Args) -> Result<bool, String> {
    let publish_url = RtmpUrl::parse(&args.url).map_err(|e| e.to_string())?;
    let play = args.play_url.as_deref().unwrap_or(&args.url);
    let flv_play = FlvUrl::parse(play).transpose().map_err(|e| format!("{play}: {e}"))?;
    let play_url = match &flv_play {
        Some(flv) => RtmpUrl { stream: flv.stream.clone(), ..publish_url.clone() },
        None => RtmpUrl::parse(play).map_err(|e| e.to_string())?,
    };
    if publish_url.stream.is_empty() || play_url.stream.is_empty() {
        return Err("URLs need a stream name: scheme://host/app/stream".into());
    }
    let flv = match &args.flv {
        Some(path) => {
            let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(media::parse_flv(&data).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let mut opts = ClientOptions::default();
    opts.tls.dangerous_accept_any_certificate = args.insecure;
    opts.connect_timeout = Duration::from_secs(30);
    opts.command_timeout = Duration::from_secs(30);
    let ctx = Arc::new(Ctx {
        side_tables: (0..args.publishers).map(|_| SideTable::default()).collect(),
        args,
        publish_url,
        play_url,
        flv_play,
        opts,
        stats: Stats::default(),
        epoch: Instant::now(),
        flv,
    });
    let args = &ctx.args;

    let progress = tokio::spawn(progress(Arc::clone(&ctx)));
    let start = snapshot(&ctx);

    // Publishers first, so players find live streams.
    for index in 0..args.publishers {
        tokio::spawn(publisher(Arc::clone(&ctx), index));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctx.stats.publishers_live.load(Relaxed) + ctx.stats.publishers_failed.load(Relaxed)
        < args.publishers as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if args.publishers > 0 && !args.idle {
        // Sequence headers and a keyframe reach the server before players join.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Players ramp up, `connect_concurrency` handshakes at a time.
    let before_players = snapshot(&ctx);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let ramp = async {
        for index in 0..args.players {
            let permit = Arc::clone(&gate).acquire_owned().await.expect("semaphore open");
            tokio::spawn(player(Arc::clone(&ctx), index, permit));
        }
        // Every player has started; wait for the last handshakes.
        let _all = gate.acquire_many(args.connect_concurrency.max(1) as u32).await.expect("semaphore open");
    };
    let ramp_timeout = Duration::from_secs_f64(args.ramp_timeout);
    let ramp_complete = tokio::time::timeout(ramp_timeout, ramp).await.is_ok();
    if !ramp_complete {
        eprintln!(
            "rtmpx-bench: {} of {} players connected within the {:.0} s ramp timeout; measuring those",
            ctx.stats.players_connected.load(Relaxed),
            args.players,
            ramp_timeout.as_secs_f64()
        );
    }
    let ramped = snapshot(&ctx);

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    ctx.stats.latency.reset();
    let window_start = snapshot(&ctx);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let window_end = snapshot(&ctx);
    progress.abort();

    let healthy = summarize(&ctx, &start, &before_players, &ramped, &window_start, &window_end)?;
    Ok(healthy)
}

async fn progress(ctx: Arc<Ctx>) {
    if ctx.args.quiet {
        return;
    }
    let mut last = snapshot(&ctx);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = snapshot(&ctx);
        let secs = secs_between(&last, &now).max(1e-3);
        let s = &ctx.stats;
        let server_cpu = cpu_between(last.server, now.server)
            .map(|cpu| {
                format!(
                    " | server cpu {:.0}% rss {} MiB",
                    cpu / secs * 100.0,
                    now.server.map_or(0, |p| p.rss_kib / 1024)
                )
            })
            .unwrap_or_default();
        let tool_cpu = cpu_between(last.tool, now.tool).map(|cpu| cpu / secs * 100.0).unwrap_or(0.0);
        eprintln!(
            "[{:6.1}s] players {}/{} (failed {}) pubs {}/{} | rx {:.1} Mbit/s {:.0} fr/s | tx {:.1} Mbit/s | \
             lat p50 {:.2} p99 {:.2} ms | dropped {} | errors {}{} | tool cpu {:.0}%",
            ctx.epoch.elapsed().as_secs_f64(),
            s.players_connected.load(Relaxed),
            ctx.args.players,
            s.players_failed.load(Relaxed),
            s.publishers_live.load(Relaxed),
            ctx.args.publishers,
            (now.rx_bytes - last.rx_bytes) as f64 * 8.0 / secs / 1e6,
            (now.rx_frames - last.rx_frames) as f64 / secs,
            (now.tx_bytes - last.tx_bytes) as f64 * 8.0 / secs / 1e6,
            s.latency_interval.quantile(0.5) as f64 / 1e3,
            s.latency_interval.quantile(0.99) as f64 / 1e3,
            now.dropped,
            now.errors,
            server_cpu,
            tool_cpu,
        );
        s.latency_interval.reset();
        last = now;
    }
}

async fn publisher(ctx: Arc<Ctx>, index: usize) {
    let stream = ctx.stream_name(&ctx.publish_url.stream, index);
    let mut conn = match Connection::connect(&ctx.publish_url, &ctx.opts).await {
        Ok(conn) => conn,
        Err(e) => {
            ctx.stats.publishers_failed.fetch_add(1, Relaxed);
            ctx.stats.error(format!("publisher {index}: connect: {e}"));
            return;
        }
    };
    let stream_id = match conn.publish(&stream).await {
        Ok(id) => id,
        Err(e) => {
            ctx.stats.publishers_failed.fetch_add(1, Relaxed);
            ctx.stats.error(format!("publisher {index}: publish: {e}"));
            return;
        }
    };
    ctx.stats.publishers_live.fetch_add(1, Relaxed);
    let result = match ctx.flv.clone() {
        Some(tags) => publish_file(&ctx, index, &mut conn, stream_id, &tags).await,
        None => publish_synthetic(&ctx, &mut conn, stream_id).await,
    };
    ctx.stats.publishers_live.fetch_sub(1, Relaxed);
    if let Err(e) = result {
        ctx.stats.error(format!("publisher {index}: {e}"));
    }
}

/// Counts bytes written since the last call into the shared counter.
struct TxMeter {
    last: u64,
}

impl TxMeter {
    fn update(&mut self, ctx: &Ctx, conn: &Connection) {
        let now = conn.bytes_out();
        ctx.stats.tx_bytes.fetch_add(now - self.last, Relaxed);
        self.last = now;
    }
}

/// Takes what the server sent (acknowledgements, pings are answered inside the session) so the
/// event backlog never fills.
async fn drain_events(conn: &mut Connection) -> rtmpx_client::Result<()> {
    while let Ok(event) = tokio::time::timeout(Duration::ZERO, conn.next_event()).await {
        if event?.is_none() {
            return Err(rtmpx_client::Error::Closed("by the server"));
        }
    }
    Ok(())
}

async fn publish_synthetic(ctx: &Ctx, conn: &mut Connection, stream_id: u32) -> rtmpx_client::Result<()> {
    let args = &ctx.args;
    let plan = SyntheticPlan::new(args.bitrate, args.audio_bitrate, args.fps, args.gop);
    conn.send(stream_id, MediaKind::Data, 0, &media::metadata()).await?;
    conn.send(stream_id, MediaKind::Video, 0, &media::avc_sequence_header()).await?;
    if plan.audio_fps > 0.0 {
        conn.send(stream_id, MediaKind::Audio, 0, &media::aac_sequence_header()).await?;
    }
    conn.flush().await?;
    let mut meter = TxMeter { last: 0 };
    let mut video_buf = vec![0u8; plan.key_size.max(plan.inter_size)];
    let mut audio_buf = vec![0x5au8; plan.audio_size.max(2)];
    audio_buf[0] = 0xaf;
    audio_buf[1] = 0x01;
    let start = tokio::time::Instant::now();
    let (mut video_index, mut audio_index) = (0u64, 0u64);
    loop {
        let video_due = video_index as f64 / plan.fps;
        let audio_due =
            if plan.audio_fps > 0.0 { audio_index as f64 / plan.audio_fps } else { f64::INFINITY };
        let due_secs = video_due.min(audio_due);
        let due = start + Duration::from_secs_f64(due_secs);
        sleep_until(due).await;
        if tokio::time::Instant::now().duration_since(due) > Duration::from_millis(LATE_MS) {
            ctx.stats.tx_late.fetch_add(1, Relaxed);
        }
        let timestamp = (due_secs * 1000.0) as u32;
        if video_due <= audio_due {
            let keyframe = video_index % plan.gop_frames == 0;
            let size = if keyframe { plan.key_size } else { plan.inter_size };
            media::write_video_frame(&mut video_buf, size, keyframe, ctx.now_ns(), video_index);
            conn.send(stream_id, MediaKind::Video, timestamp, &video_buf[..size]).await?;
            video_index += 1;
        } else {
            conn.send(stream_id, MediaKind::Audio, timestamp, &audio_buf).await?;
            audio_index += 1;
        }
        conn.flush().await?;
        ctx.stats.tx_frames.fetch_add(1, Relaxed);
        meter.update(ctx, conn);
        if (video_index + audio_index).is_multiple_of(32) {
            drain_events(conn).await?;
        }
    }
}

async fn publish_file(
    ctx: &Ctx,
    index: usize,
    conn: &mut Connection,
    stream_id: u32,
    tags: &[FlvTag],
) -> rtmpx_client::Result<()> {
    let mut meter = TxMeter { last: 0 };
    let first_ts = tags[0].timestamp;
    let last_ts = tags.last().map_or(first_ts, |t| t.timestamp);
    // Each loop continues the timeline one frame interval after the previous one.
    let loop_ms = u64::from(last_ts.saturating_sub(first_ts)) + 40;
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    for round in 0u64.. {
        for tag in tags {
            let config = media::is_config(tag.kind, &tag.payload);
            if round > 0 && config {
                continue;
            }
            let ms = round * loop_ms + u64::from(tag.timestamp.saturating_sub(first_ts));
            let due = start + Duration::from_millis(ms);
            sleep_until(due).await;
            if tokio::time::Instant::now().duration_since(due) > Duration::from_millis(LATE_MS) {
                ctx.stats.tx_late.fetch_add(1, Relaxed);
            }
            if !config {
                ctx.side_tables[index].push(media::fingerprint(&tag.payload), ctx.now_ns());
            }
            conn.send(stream_id, tag.kind, ms as u32, &tag.payload).await?;
            conn.flush().await?;
            ctx.stats.tx_frames.fetch_add(1, Relaxed);
            meter.update(ctx, conn);
            sent += 1;
            if sent.is_multiple_of(32) {
                drain_events(conn).await?;
            }
        }
    }
    Ok(())
}

async fn player(ctx: Arc<Ctx>, index: usize, permit: tokio::sync::OwnedSemaphorePermit) {
    let publisher = if ctx.args.publishers == 0 { 0 } else { index % ctx.args.publishers };
    let stream = ctx.stream_name(&ctx.play_url.stream, publisher);
    if let Some(url) = &ctx.flv_play {
        return flv_player(&ctx, index, publisher, url, &stream, permit).await;
    }
    let stats = &ctx.stats;
    let started = Instant::now();
    let mut conn = match Connection::connect(&ctx.play_url, &ctx.opts).await {
        Ok(conn) => conn,
        Err(e) => {
            stats.players_failed.fetch_add(1, Relaxed);
            stats.error(format!("player {index}: connect: {e}"));
            return;
        }
    };
    stats.connect_time.record(started.elapsed().as_micros() as u64);
    let asked = Instant::now();
    let played =
        if ctx.args.idle { conn.start_play(&stream).await } else { conn.play(&stream).await.map(drop) };
    if let Err(e) = played {
        stats.players_failed.fetch_add(1, Relaxed);
        stats.error(format!("player {index}: play: {e}"));
        return;
    }
    stats.play_time.record(asked.elapsed().as_micros() as u64);
    stats.players_connected.fetch_add(1, Relaxed);
    drop(permit);

    let mut rx_last = 0u64;
    let mut receiver = Receiver::new(&ctx, publisher);
    let outcome = loop {
        let event = match conn.next_event().await {
            Ok(Some(event)) => event,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let bytes = conn.bytes_in();
        stats.rx_bytes.fetch_add(bytes - rx_last, Relaxed);
        rx_last = bytes;
        let ClientEvent::Media(frame) = event else { continue };
        receiver.frame(frame.kind, Some(frame.timestamp), &frame.payload);
    };
    stats.players_connected.fetch_sub(1, Relaxed);
    stats.players_ended.fetch_add(1, Relaxed);
    if let Err(e) = outcome {
        stats.error(format!("player {index}: {e}"));
    }
}

/// An HTTP-FLV or WebSocket-FLV player: connected once the answer head (or 101) arrived.
async fn flv_player(
    ctx: &Ctx,
    index: usize,
    publisher: usize,
    url: &FlvUrl,
    stream: &str,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let stats = &ctx.stats;
    let started = Instant::now();
    let mut permit = Some(permit);
    let mut receiver = Receiver::new(ctx, publisher);
    let on_bytes = |n: usize| {
        if let Some(permit) = permit.take() {
            stats.connect_time.record(started.elapsed().as_micros() as u64);
            stats.players_connected.fetch_add(1, Relaxed);
            drop(permit);
        }
        stats.rx_bytes.fetch_add(n as u64, Relaxed);
    };
    let on_tag = |kind: u8, payload: &[u8]| {
        let kind = match kind {
            8 => MediaKind::Audio,
            9 => MediaKind::Video,
            _ => return,
        };
        receiver.frame(kind, None, payload);
    };
    let outcome = crate::flv::play(url, stream, on_bytes, on_tag).await;
    if permit.is_some() {
        stats.players_failed.fetch_add(1, Relaxed);
    } else {
        stats.players_connected.fetch_sub(1, Relaxed);
        stats.players_ended.fetch_add(1, Relaxed);
    }
    match outcome {
        Ok(()) => stats.error(format!("player {index}: the server ended the stream")),
        Err(e) => stats.error(format!("player {index}: {e}")),
    }
}

/// What a player does with each media frame: drops and latency from the stamps.
struct Receiver<'a> {
    ctx: &'a Ctx,
    last_seq: Option<u64>,
    cursor: Option<u64>,
    side_table: Option<&'a SideTable>,
    /// Another program publishes (`--publishers 0`): no stamps, so latency is each video
    /// frame's delay beyond the least seen, from arrival time minus its RTMP timestamp.
    external: bool,
    least_offset_ns: i64,
}

impl<'a> Receiver<'a> {
    fn new(ctx: &'a Ctx, publisher: usize) -> Self {
        let side_table = ctx.side_tables.get(publisher).filter(|_| ctx.flv.is_some());
        let external = ctx.args.external_publisher();
        Receiver { ctx, last_seq: None, cursor: None, side_table, external, least_offset_ns: i64::MAX }
    }

    /// `timestamp`: the frame's RTMP timestamp (ms), where the transport gives one.
    fn frame(&mut self, kind: MediaKind, timestamp: Option<u32>, payload: &[u8]) {
        let stats = &self.ctx.stats;
        stats.rx_frames.fetch_add(1, Relaxed);
        if self.external {
            let Some(timestamp) = timestamp.filter(|_| kind == MediaKind::Video) else { return };
            let offset = self.ctx.now_ns() as i64 - i64::from(timestamp) * 1_000_000;
            self.least_offset_ns = self.least_offset_ns.min(offset);
            let delay_us = (offset - self.least_offset_ns) as u64 / 1000;
            stats.latency.record(delay_us);
            stats.latency_interval.record(delay_us);
            return;
        }
        let sent_ns = match self.side_table {
            Some(table) => {
                if media::is_config(kind, payload) {
                    return;
                }
                match table.lookup(&mut self.cursor, media::fingerprint(payload)) {
                    Some((sent_ns, skipped)) => {
                        stats.dropped.fetch_add(skipped, Relaxed);
                        sent_ns
                    }
                    None => return,
                }
            }
            None => {
                if kind != MediaKind::Video {
                    return;
                }
                let Some((sent_ns, seq)) = media::read_stamp(payload) else { return };
                match self.last_seq {
                    Some(last) if seq > last + 1 => {
                        stats.dropped.fetch_add(seq - last - 1, Relaxed);
                    }
                    _ => {}
                }
                self.last_seq = Some(self.last_seq.map_or(seq, |last| last.max(seq)));
                sent_ns
            }
        };
        let latency_us = self.ctx.now_ns().saturating_sub(sent_ns) / 1000;
        stats.latency.record(latency_us);
        stats.latency_interval.record(latency_us);
    }
}

fn summarize(
    ctx: &Ctx,
    start: &Snapshot,
    before_players: &Snapshot,
    ramped: &Snapshot,
    window_start: &Snapshot,
    window_end: &Snapshot,
) -> Result<bool, String> {
    let args = &ctx.args;
    let s = &ctx.stats;
    let window = secs_between(window_start, window_end).max(1e-3);
    let ramp = secs_between(before_players, ramped).max(1e-3);
    let connected = s.players_connected.load(Relaxed);
    let window_start_connected = window_start.players_connected;
    let failed = s.players_failed.load(Relaxed);
    let rx = window_end.rx_bytes - window_start.rx_bytes;
    let tx = window_end.tx_bytes - window_start.tx_bytes;
    let frames = window_end.rx_frames - window_start.rx_frames;
    let dropped = window_end.dropped - window_start.dropped;
    let errors = window_end.errors;
    let server_cpu = cpu_between(window_start.server, window_end.server);
    let ramp_cpu = cpu_between(before_players.server, ramped.server);
    let tool_cpu = cpu_between(window_start.tool, window_end.tool);
    let rss_before = before_players.server.map(|p| p.rss_kib);
    let rss_after = window_end.server.map(|p| p.rss_kib);
    let rss_per_player = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => Some((a as f64 - b as f64) / connected as f64),
        _ => None,
    };
    // Per thread over the window: with several workers, how evenly the work spreads.
    let threads = thread_cpu_between(&window_start.server_threads, &window_end.server_threads);
    let worker_max_share = threads.iter().filter_map(|(_, share)| *share).reduce(f64::max);
    let threads_json: Vec<serde_json::Value> = threads
        .iter()
        .map(
            |(t, share)| json!({"tid": t.tid, "name": t.name, "cpu_secs": t.cpu_secs, "worker_share": share}),
        )
        .collect();
    let cpu_per_gb = |bytes: u64| server_cpu.filter(|_| bytes > 0).map(|cpu| cpu / (bytes as f64 / 1e9));
    let ms = |us: u64| us as f64 / 1e3;
    let lat = &s.latency;
    let expected_mbps = if args.flv.is_none() && !args.idle && args.publishers > 0 {
        Some((args.bitrate + args.audio_bitrate) / 1e6 * connected as f64)
    } else {
        None
    };
    let result = json!({
        "label": args.label,
        "url": args.url,
        "play_url": args.play_url.clone().unwrap_or_else(|| args.url.clone()),
        "variant": ctx.flv_play.as_ref().map_or(ctx.play_url.scheme.as_str(), FlvUrl::variant),
        "publishers": args.publishers,
        "publishers_failed": s.publishers_failed.load(Relaxed),
        "players": args.players,
        "players_connected": connected,
        "players_failed": failed,
        "players_connected_at_window_start": window_start_connected,
        "idle": args.idle,
        "input": args.flv.as_ref().map_or("synthetic".to_string(), |p| p.display().to_string()),
        // The synthetic stream's bitrate; a file publishes at its own (see ingested_mbps).
        "bitrate_bps": args.flv.is_none().then_some(args.bitrate + args.audio_bitrate),
        "window_secs": window,
        "ramp_secs": ramp,
        "handshakes_per_sec": (connected + failed) as f64 / ramp,
        "connect_ms_p50": ms(s.connect_time.quantile(0.5)),
        "connect_ms_p99": ms(s.connect_time.quantile(0.99)),
        "play_ms_p50": ms(s.play_time.quantile(0.5)),
        "play_ms_p99": ms(s.play_time.quantile(0.99)),
        "server_cpu_ms_per_connection": ramp_cpu.filter(|_| connected > 0).map(|cpu| cpu * 1e3 / connected as f64),
        "delivered_bytes": rx,
        "delivered_mbps": rx as f64 * 8.0 / window / 1e6,
        "expected_mbps": expected_mbps,
        "ingested_bytes": tx,
        "ingested_mbps": tx as f64 * 8.0 / window / 1e6,
        "frames_sent": window_end.tx_frames - window_start.tx_frames,
        "frames_received": frames,
        "frames_dropped": dropped,
        "publisher_frames_late": s.tx_late.load(Relaxed),
        "latency_samples": lat.count(),
        "latency_ms_p50": ms(lat.quantile(0.5)),
        "latency_ms_p90": ms(lat.quantile(0.9)),
        "latency_ms_p99": ms(lat.quantile(0.99)),
        "latency_ms_max": ms(lat.max()),
        "server_cpu_secs": server_cpu,
        "server_cpu_pct": server_cpu.map(|c| c / window * 100.0),
        "server_cpu_secs_per_delivered_gb": cpu_per_gb(rx),
        "server_cpu_secs_per_ingested_gb": cpu_per_gb(tx),
        "server_threads": threads_json,
        "server_worker_max_share": worker_max_share,
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "server_rss_per_player_kib": rss_per_player,
        "tool_cpu_pct": tool_cpu.map(|c| c / window * 100.0),
        "tool_cpu_total_secs": window_end.tool.map(|t| t.cpu_secs),
        "run_secs": secs_between(start, window_end),
        "errors": errors,
        "first_error": s.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    });

    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!("== {} ==", args.label);
    println!("{:<34} {connected} / {failed}", "players connected / failed");
    println!(
        "{:<34} {:.1}/s (p50 {:.1} ms, p99 {:.1} ms)",
        "handshakes (connect+play)",
        (connected + failed) as f64 / ramp,
        ms(s.connect_time.quantile(0.5)),
        ms(s.connect_time.quantile(0.99))
    );
    println!(
        "{:<34} {:.1} Mbit/s{}",
        "delivered",
        rx as f64 * 8.0 / window / 1e6,
        expected_mbps.map_or(String::new(), |e| format!(" (offered {e:.1})"))
    );
    println!("{:<34} {:.1} Mbit/s", "ingested", tx as f64 * 8.0 / window / 1e6);
    println!("{:<34} {frames} / {dropped}", "frames received / dropped");
    println!(
        "{:<34} p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms ({} samples)",
        if args.external_publisher() {
            "delay beyond the least (external)"
        } else {
            "publish-to-play latency"
        },
        ms(lat.quantile(0.5)),
        ms(lat.quantile(0.9)),
        ms(lat.quantile(0.99)),
        ms(lat.max()),
        lat.count()
    );
    println!(
        "{:<34} {} s ({}%)",
        "server CPU in window",
        opt(server_cpu, 2),
        opt(server_cpu.map(|c| c / window * 100.0), 0)
    );
    println!("{:<34} {}", "server CPU s per delivered GB", opt(cpu_per_gb(rx), 3));
    println!("{:<34} {}", "server CPU s per ingested GB", opt(cpu_per_gb(tx), 3));
    let per_thread: Vec<String> = threads
        .iter()
        .map(|(t, share)| match share {
            Some(share) => {
                format!("{} {} {:.2} s ({:.0}% of workers)", t.name, t.tid, t.cpu_secs, share * 100.0)
            }
            None => format!("{} {} {:.2} s", t.name, t.tid, t.cpu_secs),
        })
        .collect();
    if !per_thread.is_empty() {
        println!("{:<34} {}", "server CPU per thread", per_thread.join(", "));
    }
    println!(
        "{:<34} {} -> {} KiB ({} KiB per player)",
        "server RSS",
        rss_before.map_or("-".into(), |v| v.to_string()),
        rss_after.map_or("-".into(), |v| v.to_string()),
        opt(rss_per_player, 2)
    );
    println!("{:<34} {}%", "load tool CPU in window", opt(tool_cpu.map(|c| c / window * 100.0), 0));
    println!(
        "{:<34} {errors}{}",
        "errors",
        s.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(failed == 0 && errors == 0)
}
