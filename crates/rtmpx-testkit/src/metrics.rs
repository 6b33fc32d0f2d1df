//! The admin listener's `/metrics` (Prometheus text) and its samples.

use std::net::SocketAddr;

use crate::http;

/// `GET /metrics` from the admin listener at `addr`, in Prometheus text format.
pub fn metrics(addr: SocketAddr) -> String {
    let reply = http(addr, "GET", "/metrics", None);
    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains("content-type: text/plain; version=0.0.4"), "{}", reply.headers);
    reply.body
}

/// The value of one sample in `metrics` text, e.g. `rtmpx_sessions{variant="rtmp",role="player"}`.
pub fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap()
}
