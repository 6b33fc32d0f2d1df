//! `rtmpx-bench`: N publishers and M players against any RTMP server, over any variant
//! (rtmp, rtmps, rtmpt, rtmpts, rtmpe, rtmpte), players also over HTTP-FLV and WebSocket-FLV. Measures publish-to-receive latency (send times
//! embedded in synthetic frames, or a side table for a real FLV file), throughput, drops,
//! connect times and errors; with `--server-pid`, the server's CPU and memory from /proc.

// serde_json::json! of the summary nests deeper than the default limit.
#![recursion_limit = "256"]

mod flv;
mod media;
mod run;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(name = "rtmpx-bench", version, about = "RTMP load generator: publishers, players, latency")]
pub struct Args {
    /// Where publishers publish: rtmp[s|t|ts|e|te]://host[:port]/app/stream. With several
    /// publishers, publisher i uses stream name `<stream>-<i>`.
    #[arg(long)]
    pub url: String,
    /// Where players play (default: --url); e.g. an rtmps URL for players of an rtmp publisher,
    /// or `http://host:port/app/stream.flv` (HTTP-FLV) / `ws://...` (WebSocket-FLV) players.
    /// Player j plays publisher j mod N's stream.
    #[arg(long)]
    pub play_url: Option<String>,
    /// 0: the players play a stream another program (e.g. FFmpeg) publishes; without send
    /// stamps, latency is each video frame's delay beyond the least seen (arrival time minus
    /// RTMP timestamp), which shows what the server adds on top of the publisher's own pacing.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, default_value_t = 0)]
    pub players: usize,
    /// Publish this FLV file (looped, in real time) instead of synthetic frames.
    #[arg(long)]
    pub flv: Option<PathBuf>,
    /// Synthetic video bitrate (k and M suffixes).
    #[arg(long, default_value = "2500k", value_parser = parse_rate)]
    pub bitrate: f64,
    /// Synthetic audio bitrate (0: no audio).
    #[arg(long, default_value = "128k", value_parser = parse_rate)]
    pub audio_bitrate: f64,
    #[arg(long, default_value_t = 25.0)]
    pub fps: f64,
    /// Seconds between keyframes.
    #[arg(long, default_value_t = 2.0)]
    pub gop: f64,
    /// Connections handshaking at once while ramping up.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Players that only connect and send `play` (without waiting for Play.Start, which
    /// servers send only for published streams): for idle-capacity tests without publishers.
    #[arg(long)]
    pub idle: bool,
    /// Longest wait for the players to connect; the window then starts with those connected
    /// (the rest keep trying and are reported).
    #[arg(long, default_value_t = 60.0)]
    pub ramp_timeout: f64,
    /// Seconds between the last player connecting and the measurement window.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds of the measurement window.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// The server's process id: its CPU time and RSS are sampled from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Tokio worker threads of the load tool.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Accept any TLS certificate (test servers with self-signed certificates).
    #[arg(long)]
    pub insecure: bool,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for this run in the summary and JSON.
    #[arg(long, default_value = "run")]
    pub label: String,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// Players of a stream another program publishes (`--publishers 0`, not `--idle`).
    pub fn external_publisher(&self) -> bool {
        self.publishers == 0 && !self.idle
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (number, scale) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1e3),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1e6),
        _ => (s, 1.0),
    };
    number.parse::<f64>().map(|n| n * scale).map_err(|e| format!("bad rate {s:?}: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let nofile = stats::raise_nofile_limit();
    let wanted = (args.players + args.publishers) as u64 + 64;
    if nofile < wanted {
        eprintln!("rtmpx-bench: open-file limit {nofile} is below the {wanted} connections asked for");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run::run(args)) {
        Ok(healthy) => {
            if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("rtmpx-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_suffixes() {
        assert_eq!(parse_rate("2500k"), Ok(2_500_000.0));
        assert_eq!(parse_rate("2.5M"), Ok(2_500_000.0));
        assert_eq!(parse_rate("64000"), Ok(64_000.0));
        assert!(parse_rate("fast").is_err());
    }
}
