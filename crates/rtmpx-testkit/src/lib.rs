//! Test helpers shared by the end-to-end tests (the root package's `tests/`) and rtmpx-client's
//! tests: starting the gateway, nginx-rtmp and real clients (ffmpeg, ffprobe, rtmpdump,
//! librtmp, GStreamer, Chromium, FFmpeg 9), and reading what they recorded. One module per
//! thing it starts or reads.
//!
//! Rules every helper follows:
//! - Everything is bounded in time; a hung client or server turns into a failure, not a hang.
//! - Every child process is wrapped in a guard that kills it when dropped (also on panic).
//! - A missing client tool is a failure with a message saying how to install it, never a skip
//!   ([`require_tool`]).
//! - Heavy tests take [`exclusive`] first, so on a 2-core machine they run one at a time even
//!   though libtest runs a binary's tests on several threads (cargo runs test binaries one
//!   after the other, so one in-process lock is enough).
//!
//! Environment knobs: `RTMPX_BIN` (use this binary instead of building `rtmpx`),
//! `RTMPX_E2E_KEEP` (keep temporary directories and logs), `RTMPX_E2E_VERBOSE` (echo gateway
//! log lines as they arrive), `RTMPX_E2E_LOG` (the gateway's `RUST_LOG`), `RTMPX_FFMPEG9` and
//! `RTMPX_FFMPEG7` (the FFmpeg 9 and 7.0 executables), `RTMPX_MPEGTS_JS` (mpegts.js's browser bundle).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

mod admin;
mod binaries;
pub mod browser;
pub mod certs;
mod clients;
mod flv;
mod gateway;
mod logs;
mod media;
mod metrics;
mod nginx;
mod process;
pub mod rtmp_client;
pub mod synthetic;
mod tmp;
mod tools;

pub use admin::{admin_addr, http, HttpReply};
pub use binaries::{rtmpx_bench_binary, rtmpx_binary};
pub use clients::{
    publish, publish_by, publish_librtmp, publish_testsrc, record_ffmpeg, record_gstreamer, record_rtmpdump,
    PublishOptions,
};
pub use flv::{flv_tags, FlvTag};
pub use gateway::{Gateway, DEFAULT_TEST_CONFIG, READY_TIMEOUT};
pub use media::{
    assert_good_recording, decode_check, make_testsrc_flv, probe, Packet, PacketKind, ProbeReport,
};
pub use metrics::{metrics, sample};
pub use nginx::{NginxRtmp, NGINX_RTMP_MODULE};
pub use process::{rss_kib_of, run_bounded, send_signal, Proc};
pub use tmp::TempDir;
pub use tools::{ffmpeg7, ffmpeg9, python3_with_librtmp, require_tool};

/// Serialises heavy tests (encoders, many clients) within one test binary.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A loopback TCP port that was free a moment ago, for a server a test starts (pebble, a
/// fixed-port listener). It is never one this process handed out before, and it is drawn below
/// the kernel's ephemeral range: the kernel's own picks for `bind(:0)` and for outgoing
/// connections come from that range and may hand out a port again as soon as it is closed (a
/// CI run once gave pebble and the gateway's RTMPS listener the same port).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (low, high) = unclaimed_port_range();
    for _ in 0..1000 {
        let port = if low < high {
            rand::Rng::gen_range(&mut rand::thread_rng(), low..high)
        } else {
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding 127.0.0.1:0").port()
        };
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high} after 1000 tries");
}

/// Ports below the kernel's ephemeral range (Linux: `ip_local_port_range`, 32768 by default)
/// and above the ones services commonly use.
fn unclaimed_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (20000, ephemeral_low.max(20000))
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The workspace's root folder (its Cargo.toml, and `target/` unless `CARGO_TARGET_DIR` says
/// otherwise).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The build folder: `CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice_and_stay_below_the_ephemeral_range() {
        let (_, ephemeral_low) = unclaimed_port_range();
        let mut seen = BTreeSet::new();
        for _ in 0..300 {
            let port = free_port();
            assert!(seen.insert(port), "port {port} was handed out twice");
            assert!(port < ephemeral_low, "port {port} is in the kernel's ephemeral range");
            // Bound and closed at once, as a test server's port would be: the kernel may now
            // give the same number to anyone, but free_port must not.
            drop(TcpListener::bind(("127.0.0.1", port)).unwrap());
        }
    }
}
