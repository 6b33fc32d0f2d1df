//! Entry points of the gateway's fuzz targets (`fuzz/fuzz_targets/config.rs`,
//! `stream_query.rs`, `rtmpt_requests.rs`), also run by a smoke test here. They must never panic.

use std::net::{IpAddr, Ipv4Addr};

use crate::auth::{cidr, normalize_app, query, token};
use crate::config::Config;

/// Arbitrary bytes as a configuration file: parsed and validated, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::from_toml(text, "fuzz") {
        // Whatever validates must be usable: every app resolves, timeouts convert.
        for app in &config.apps {
            assert!(config.app(&app.name).is_some());
            let _ = app.callbacks.timeout;
        }
        let _ = (config.timeouts.handshake, config.timeouts.idle, config.tls.handshake_timeout);
    }
}

/// What clients put in names: stream names with queries, tokens, app names and CIDR text.
pub fn stream_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (name, q) = query::split_name(&text);
    let params = query::parse_query(q);
    let _ = query::param(&params, "key");
    let now = u64::from(data.first().copied().unwrap_or(0)) << 24;
    let _ = token::verify(b"0123456789abcdef", "live", name, &params, now, Some(3600));
    let _ = normalize_app(&text);
    if let Ok(net) = text.parse::<cidr::IpNet>() {
        let _ = net.contains(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(net.to_string().parse::<cidr::IpNet>().ok(), Some(net), "CIDR text round-trips");
    }
    // Encoding then decoding gives back every pair.
    let mut form = query::Form::default();
    form.add(name, q);
    let back = query::parse_query(form.as_str());
    assert_eq!(back, vec![(name.to_owned(), q.to_owned())]);
}

/// The configuration the RTMPT harness runs with: small limits so they are reached.
#[cfg(any(test, feature = "fuzzing"))]
const RTMPT_CONFIG: &str =
    "[[listener]]\nproto = \"rtmpt\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n\
                            [rtmpt]\nmax_sessions = 3\nmax_sessions_per_ip = 2\nmax_request_body = 8192\n";

/// RTMPT requests through the real HTTP handler, session table and session driver, over an
/// in-memory connection with tokio's clock paused (timeouts pass at once). The input is a list
/// of operations: open, send (with a body), idle, close, an arbitrary path, or a guessed id,
/// each with a sequence number that is right, repeated, skipped or wild.
#[cfg(any(test, feature = "fuzzing"))]
pub fn rtmpt_requests(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(rtmpt_exchange(data));
}

#[cfg(any(test, feature = "fuzzing"))]
async fn rtmpt_exchange(mut ops: &[u8]) -> Vec<u16> {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::session::{Origin, Transport};
    use crate::tunnel::TransportContext;

    fn take<'a>(ops: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (head, tail) = ops.split_at(n.min(ops.len()));
        *ops = tail;
        head
    }

    let config = Arc::new(Config::from_toml(RTMPT_CONFIG, "fuzz").expect("valid"));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let transport =
        Arc::new(TransportContext::new(Arc::new(crate::relay::session_context(config, shutdown).0)));
    let (mut client, server) = tokio::io::duplex(1 << 17);
    let peer = "127.0.0.1:1".parse().expect("address");
    let origin = Origin::from(Transport::Http);
    let server = tokio::spawn(crate::tunnel::serve_http(server, peer, origin, transport.clone()));
    let (mut id, mut seq) = (String::from("00000000000000000000000000000000"), 0u64);
    let mut response = Vec::new();
    let mut statuses = Vec::new();
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let wanted = match op / 6 % 4 {
            0 => seq,
            1 => seq.wrapping_sub(1),
            2 => seq + 1,
            _ => u64::MAX,
        };
        let (path, body, guessed) = match op % 6 {
            0 => ("/open/1".to_owned(), vec![0], false),
            1 => {
                let len = take(&mut ops, 2).iter().fold(0usize, |n, &b| n << 8 | usize::from(b)) % 9000;
                (format!("/send/{id}/{wanted}"), take(&mut ops, len).to_vec(), false)
            }
            2 => (format!("/idle/{id}/{wanted}"), vec![0], false),
            3 => (format!("/close/{id}/{wanted}"), vec![0], false),
            4 => {
                let len = usize::from(take(&mut ops, 1).first().copied().unwrap_or(0));
                let raw = take(&mut ops, len);
                // Any path bytes but the ones that end the request line.
                let path: String =
                    raw.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '_' }).collect();
                (format!("/{path}"), vec![0], false)
            }
            _ => {
                let guess: String = take(&mut ops, 16).iter().map(|b| format!("{b:02x}")).collect();
                (format!("/send/{guess:0<32}/{wanted}"), vec![3; 8], true)
            }
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/x-fcs\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if client.write_all(head.as_bytes()).await.is_err() || client.write_all(&body).await.is_err() {
            break;
        }
        // One response: headers, then Content-Length bytes.
        response.clear();
        let mut buf = [0u8; 4096];
        let complete = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if response.len() >= end + 4 + length {
                        return Some((head, response[end + 4..end + 4 + length].to_vec()));
                    }
                }
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let Ok(Some((head, body))) = complete else { break };
        statuses.push(head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0));
        let ok = head.starts_with("http/1.1 200");
        assert!(!(guessed && ok), "a guessed session id was accepted");
        if ok && path == "/open/1" {
            id = String::from_utf8_lossy(&body).trim().to_owned();
            assert_eq!(id.len(), 32, "session ids are 32 hex digits");
            seq = 0;
        } else if ok && op % 6 != 0 && op % 6 != 4 {
            seq = wanted.wrapping_add(1);
        }
    }
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(600), server).await;
    assert!(transport.tunnels.len() <= 3, "max_sessions is 3");
    statuses
}

/// A port that serves RTMP, RTMPT and HTTP-FLV/WebSocket-FLV (live stream `live/x`).
#[cfg(any(test, feature = "fuzzing"))]
const HTTP_CONFIG: &str =
    "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n\
                           [[app]]\nname = \"keyed\"\nplay_keys = [\"k\"]\n[timeouts]\nwrite_secs = 2\n";

/// Raw bytes from a client on a sniffed port (HTTP requests for RTMPT, HTTP-FLV and WebSocket
/// upgrades with frames after them, or RTMP) through the real sniffer, HTTP server, FLV players
/// and WebSocket code, with `live/x` published; tokio's clock is paused (timeouts pass at once).
/// Returns what the server answered (the first 256 KiB).
#[cfg(any(test, feature = "fuzzing"))]
pub fn http_requests(data: &[u8]) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(http_exchange(data))
}

#[cfg(any(test, feature = "fuzzing"))]
async fn http_exchange(data: &[u8]) -> Vec<u8> {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use rtmpx_router::{Frame, SessionInfo, StreamKey};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::session::{Origin, Transport};
    use crate::tunnel::TransportContext;

    let config = Arc::new(Config::from_toml(HTTP_CONFIG, "fuzz").expect("valid"));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let transport =
        Arc::new(TransportContext::new(Arc::new(crate::relay::session_context(config, shutdown).0)));
    let info = SessionInfo { id: 0, peer: "fuzz".into(), variant: "rtmp" };
    let publisher =
        transport.session.router.publish(StreamKey::new("live", "x"), info).expect("a fresh router");
    publisher.send(Frame::video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1e, 0xff])));
    publisher.send(Frame::audio(0, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])));
    publisher.send(Frame::video(40, Bytes::from(vec![0x17; 300])));
    let (client, server) = tokio::io::duplex(1 << 16);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let peer = "127.0.0.1:1".parse().expect("address");
    let (rtmp, http) = (Origin::from(Transport::Tcp), Origin::from(Transport::Http));
    let server = tokio::spawn(crate::tunnel::serve_sniffed(server, peer, rtmp, http, transport.clone()));
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let exchange = async {
        let mut input = data;
        // Write and read at once: a large input must not deadlock on a full pipe.
        loop {
            tokio::select! {
                written = to_server.write(input), if !input.is_empty() => match written {
                    Ok(n) if n > 0 => input = &input[n..],
                    _ => input = &[],
                },
                read = from_server.read(&mut buf) => match read {
                    Ok(n) if n > 0 && answer.len() < 256 * 1024 => answer.extend_from_slice(&buf[..n]),
                    _ => return,
                },
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), exchange).await;
    drop(publisher);
    drop((from_server, to_server));
    let _ = tokio::time::timeout(Duration::from_secs(600), server).await;
    if data.first().is_some_and(u8::is_ascii_uppercase) && !answer.is_empty() {
        // hyper answers an HTTP/1.0 request in HTTP/1.0 (found by this target: the first
        // version of this check wanted "HTTP/1.1 " always).
        assert!(
            answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
            "an HTTP request got no HTTP answer"
        );
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke() {
        for text in [
            "",
            "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n",
            include_str!("../../../config/rtmpx.toml"),
            "[[app]]\nname = 1",
            "a?expires=1&token=00",
            "10.0.0.0/8",
            "::ffff:1.2.3.4/128",
            "x?key=%zz&&=&a=b+c",
        ] {
            config(text.as_bytes());
            stream_query(text.as_bytes());
        }
        config(&[0xff, 0xfe]);
        stream_query(&[0xff, b'?', 0xfe]);
    }

    #[test]
    fn rtmpt_smoke() {
        // open, send a plain C0+C1, idle, a guessed id, an odd path, an out-of-order idle, close.
        let mut ops = vec![0u8, 1, 0x06, 0x01, 3];
        ops.extend(std::iter::repeat_n(0u8, 1536));
        ops.extend([2, 5]);
        ops.extend([0xAB; 16]);
        ops.extend([4, 5, b'f', b'c', b's', b'/', b'x', 2 + 12, 3]);
        let statuses = run(&ops);
        assert_eq!(statuses, [200, 200, 200, 404, 404, 400, 200], "{statuses:?}");
        // Opens past max_sessions_per_ip (2), then truncated operations.
        assert_eq!(run(&[0, 0, 0, 1, 0xff]), [200, 200, 503, 200]);
        assert!(run(&[]).is_empty());
    }

    /// Every committed seed and every past finding (`fuzz/regressions/<target>/`, where crash
    /// inputs from `fuzz/artifacts/` go once fixed) through its target's entry point.
    #[test]
    fn seeds_and_regressions_replay() {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        type Entry = fn(&[u8]);
        let targets: [(&str, Entry); 9] = [
            ("chunk_decoder", rtmpx_core::fuzzing::chunk_decoder),
            ("amf", rtmpx_core::fuzzing::amf),
            ("handshake", rtmpx_core::fuzzing::server_handshake),
            ("server_session", rtmpx_core::fuzzing::server_session),
            ("config", config),
            ("stream_query", stream_query),
            ("rtmpt_requests", rtmpt_requests),
            ("enhanced_media", rtmpx_core::fuzzing::enhanced_media),
            ("http_requests", |data| {
                http_requests(data);
            }),
        ];
        let mut replayed = 0;
        for (target, entry) in targets {
            for kind in ["seeds", "regressions"] {
                let Ok(files) = std::fs::read_dir(fuzz.join(kind).join(target)) else { continue };
                for file in files {
                    let path = file.unwrap().path();
                    entry(&std::fs::read(&path).unwrap());
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= 40, "only {replayed} inputs found under {}", fuzz.display());
    }

    #[test]
    fn http_smoke() {
        let text = |data: &[u8]| String::from_utf8_lossy(&http_requests(data)).into_owned();
        let flv = http_requests(b"GET /live/x.flv HTTP/1.1\r\nHost: f\r\n\r\n");
        let at = flv.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        assert!(flv.starts_with(b"HTTP/1.1 200"));
        // Chunked: the first chunk's size line, then the FLV header.
        assert!(flv[at..].windows(4).any(|w| w == b"FLV\x01"));
        assert!(text(b"GET /keyed/x.flv?key=no HTTP/1.1\r\nHost: f\r\n\r\n").starts_with("HTTP/1.1 403"));
        assert!(text(b"GET /live/y.flv HTTP/1.1\r\nHost: f\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(text(b"GET \x01 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
        let upgrade = b"GET /live/x.flv HTTP/1.1\r\nHost: f\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let mut bogus = upgrade.to_vec();
        bogus.extend_from_slice(&[0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(text(&bogus).starts_with("HTTP/1.1 101"));
        assert!(http_requests(b"").is_empty());
    }

    fn run(ops: &[u8]) -> Vec<u16> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(rtmpt_exchange(ops))
    }
}
