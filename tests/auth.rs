//! Authorisation end to end: every auth mode (stream keys, signed tokens, IP lists, HTTP
//! callbacks) and the publisher/player limits, on every transport in main (RTMP, RTMPE, RTMPS),
//! against the real `rtmpx` binary. A real HTTP server in this process plays the callback
//! backend: it records the form fields and answers 200, 302, 403 or too late.
//!
//! The raw client (rtmpx-core's client role on a socket) shows exactly which status a denial
//! sends; ffmpeg (RTMP, RTMPS), python3-librtmp and rtmpdump (RTMPE) show real clients get it.
//! RTMPT, RTMPTE and RTMPTS go through rtmpx-client's tunnel transport, and through ffmpeg
//! (rtmpt) and rtmpdump (rtmpte).

use rtmpx_testkit::rtmp_client;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rtmp_client::{attempt, tcp, tls, Conn, Intent, Outcome, Wire};
use rtmpx_core::handshake::HandshakeVersion;
use rtmpx_testkit::{
    assert_good_recording, exclusive, make_testsrc_flv, publish_librtmp, publish_testsrc, record_ffmpeg,
    require_tool, run_bounded, Gateway, TempDir,
};

const SECRET: &str = "a-test-secret-of-some-length";

/// One app per auth mode, plus one with tight limits.
const CONFIG: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmps"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmpt"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmpts"
addr = "127.0.0.1:0"

[tls]
cert_dir = "$CERTS"

# Tunnel clients that vanish (the test drops them) are noticed after this.
[rtmpt]
idle_timeout_secs = 3

[[app]]
name = "keys"
publish_keys = ["k1", "k2"]
play_keys = ["v1"]

[[app]]
name = "token"
[app.token]
secret = "$SECRET"

[[app]]
name = "ip"
deny_publish = ["127.0.0.0/8"]
allow_play = ["127.0.0.1/32"]

[[app]]
name = "hook"
on_connect = "$HOOK/connect"
on_publish = "$HOOK/publish"
on_play = "$HOOK/play"
on_done = "$HOOK/done"
callback_timeout_ms = 700

[[app]]
name = "limited"
max_publishers = 1
max_players_per_stream = 1
"#;

/// A request the backend received: path and form fields.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    form: BTreeMap<String, String>,
}

/// The callback backend. It answers by the `name` field: `bad…` 403, `redir…` 302 to
/// `renamed…`, `slow…` 200 after 3 s (past the gateway's 700 ms), anything else 200; a
/// connect with a `deny` parameter gets 403.
struct Backend {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Backend {
    fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let recorded = recorded.clone();
                thread::spawn(move || serve_one(stream, recorded));
            }
        });
        Backend { addr, calls }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The first call to `path` whose `name` is `name`, waiting up to 10 s for it.
    fn wait_call(&self, path: &str, name: &str) -> Call {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = self
                .calls()
                .into_iter()
                .find(|c| c.path == path && c.form.get("name").map(String::as_str) == Some(name))
            {
                return c;
            }
            assert!(Instant::now() < deadline, "no {path} call for {name}; calls: {:#?}", self.calls());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve_one(mut stream: std::net::TcpStream, calls: Arc<Mutex<Vec<Call>>>) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, length) = loop {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..at]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0usize);
            assert!(head.contains("content-type: application/x-www-form-urlencoded"), "{head}");
            assert!(head.starts_with("post "), "{head}");
            break (at + 4, length);
        }
    };
    while data.len() < head_end + length {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let form = parse_form(&String::from_utf8_lossy(&data[head_end..head_end + length]));
    let name = form.get("name").cloned().unwrap_or_default();
    let deny_connect = path == "/connect" && form.contains_key("deny");
    calls.lock().unwrap().push(Call { path, form });
    let response = if deny_connect || name.starts_with("bad") {
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    } else if let Some(rest) = name.strip_prefix("redir") {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: renamed{rest}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    } else {
        if name.starts_with("slow") {
            thread::sleep(Duration::from_secs(3));
        }
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string()
    };
    let _ = stream.write_all(response.as_bytes());
}

fn parse_form(body: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut form = BTreeMap::new();
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        assert!(form.insert(decode(k), decode(v)).is_none(), "field {k} sent twice in {body}");
    }
    form
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `stream?expires=E&token=HEX(HMAC-SHA256(secret, "app/stream/E"))`, computed here from the
/// documented recipe, not with rtmpx's code.
fn signed(app: &str, stream: &str, expires: u64) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{app}/{stream}/{expires}").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{stream}?expires={expires}&token={hex}")
}

fn start(dir: &TempDir, backend: &Backend) -> Gateway {
    Gateway::start(
        &CONFIG
            .replace("$CERTS", &dir.file("certs").display().to_string())
            .replace("$SECRET", SECRET)
            .replace("$HOOK", &backend.url()),
    )
}

/// A transport the raw client can use.
#[derive(Clone, Copy, Debug)]
struct Transport {
    label: &'static str,
    listener: &'static str,
    version: HandshakeVersion,
    /// The variant the gateway logs.
    variant: &'static str,
}

const TRANSPORTS: [Transport; 4] = [
    Transport { label: "rtmp", listener: "rtmp", version: HandshakeVersion::Plain, variant: "rtmp" },
    Transport { label: "rtmpe6", listener: "rtmp", version: HandshakeVersion::Rtmpe, variant: "rtmpe" },
    Transport {
        label: "rtmpe9",
        listener: "rtmp",
        version: HandshakeVersion::RtmpeBlowfish,
        variant: "rtmpe",
    },
    Transport { label: "rtmps", listener: "rtmps", version: HandshakeVersion::Plain, variant: "rtmps" },
];

impl Transport {
    fn open(&self, gw: &Gateway) -> Box<dyn Wire> {
        let addr = gw.addr(self.listener);
        if self.listener == "rtmps" {
            tls(addr)
        } else {
            tcp(addr)
        }
    }

    fn try_with(&self, gw: &Gateway, app: &str, intent: Intent) -> (Outcome, Conn) {
        let tc_url = format!("{}://{}/{app}", self.listener, gw.addr(self.listener));
        attempt(self.open(gw), self.version, app, &tc_url, intent, Duration::from_secs(15))
    }

    fn outcome(&self, gw: &Gateway, app: &str, intent: Intent) -> Outcome {
        self.try_with(gw, app, intent).0
    }
}

fn publish(name: &str) -> Intent {
    Intent::Publish(name.to_owned())
}

fn play(name: &str) -> Intent {
    Intent::Play(name.to_owned())
}

#[track_caller]
fn assert_rejected(outcome: &Outcome, code: &str, reason: &str) {
    match outcome {
        Outcome::Rejected { code: c, description } => {
            assert_eq!(c, code, "{outcome:?}");
            assert!(description.contains(reason), "description {description:?} lacks {reason:?}");
        }
        other => panic!("expected a rejection ({code}, {reason}), got {other:?}"),
    }
}

/// The gateway's denial log line for `what` ("publish"/"play") of `app/stream` on `variant`.
#[track_caller]
fn denial_logged(gw: &Gateway, what: &str, app_stream: &str, variant: &str, reason: &str) {
    let needles = [
        &format!("{what} denied: ") as &str,
        &format!("stream={app_stream}"),
        &format!("variant={variant}"),
        reason,
    ];
    assert!(
        gw.wait_for_log_line(&needles, Duration::from_secs(5)).is_some(),
        "no log line with {needles:?}; log:\n{}",
        gw.logs()
    );
}

#[test]
fn every_auth_mode_on_every_transport() {
    let _serial = exclusive();
    let dir = TempDir::new("auth-modes");
    let backend = Backend::start();
    let gw = start(&dir, &backend);
    let denied_pub = "NetStream.Publish.Denied";
    let denied_play = "NetStream.Play.Failed";
    for t in TRANSPORTS {
        let l = t.label;
        // Stream keys: `?key=` or the name itself.
        assert_eq!(t.outcome(&gw, "keys", publish(&format!("a{l}?key=k1"))), Outcome::Started, "{l}");
        assert_eq!(t.outcome(&gw, "keys", publish("k2")), Outcome::Started, "{l}: the name as key");
        let bad = t.outcome(&gw, "keys", publish(&format!("b{l}?key=nope")));
        assert_rejected(&bad, denied_pub, "stream key not accepted");
        denial_logged(&gw, "publish", &format!("keys/b{l}"), t.variant, "stream key not accepted");
        assert_rejected(&t.outcome(&gw, "keys", publish(&format!("c{l}"))), denied_pub, "stream key");
        assert_eq!(t.outcome(&gw, "keys", play(&format!("a{l}?key=v1"))), Outcome::Started, "{l}");
        let bad_play = t.outcome(&gw, "keys", play(&format!("a{l}?key=k1")));
        assert_rejected(&bad_play, denied_play, "stream key not accepted");
        denial_logged(&gw, "play", &format!("keys/a{l}"), t.variant, "stream key not accepted");

        // Signed tokens.
        let stream = format!("t{l}");
        assert_eq!(
            t.outcome(&gw, "token", publish(&signed("token", &stream, now() + 300))),
            Outcome::Started,
            "{l}"
        );
        assert_eq!(
            t.outcome(&gw, "token", play(&signed("token", &stream, now() + 300))),
            Outcome::Started,
            "{l}"
        );
        let expired = t.outcome(&gw, "token", publish(&signed("token", &format!("x{l}"), now() - 5)));
        assert_rejected(&expired, denied_pub, "token expired");
        denial_logged(&gw, "publish", &format!("token/x{l}"), t.variant, "token expired");
        let other_stream = signed("token", &stream, now() + 300).replacen(&stream, &format!("y{l}"), 1);
        assert_rejected(
            &t.outcome(&gw, "token", publish(&other_stream)),
            denied_pub,
            "signature does not match",
        );
        let wrong_app = signed("keys", &format!("z{l}"), now() + 300);
        assert_rejected(
            &t.outcome(&gw, "token", publish(&wrong_app)),
            denied_pub,
            "signature does not match",
        );
        assert_rejected(&t.outcome(&gw, "token", play(&format!("t{l}"))), denied_play, "token missing");

        // IP lists: loopback may play but not publish.
        let ip = t.outcome(&gw, "ip", publish(&format!("i{l}")));
        assert_rejected(&ip, denied_pub, "127.0.0.1: address is in the deny list");
        denial_logged(&gw, "publish", &format!("ip/i{l}"), t.variant, "deny list");
        assert_eq!(t.outcome(&gw, "ip", play(&format!("i{l}"))), Outcome::Started, "{l}");

        // HTTP callbacks.
        let (ok, wire) = t.try_with(&gw, "hook", publish(&format!("ok{l}?user=alice&addr=6.6.6.6")));
        assert_eq!(ok, Outcome::Started, "{l}");
        let call = backend.wait_call("/publish", &format!("ok{l}"));
        for (k, v) in
            [("call", "publish"), ("app", "hook"), ("type", "live"), ("addr", "127.0.0.1"), ("user", "alice")]
        {
            assert_eq!(call.form.get(k).map(String::as_str), Some(v), "{l}: field {k} in {:?}", call.form);
        }
        assert_eq!(call.form.get("flashver").map(String::as_str), Some("FMLE/3.0 (compatible; rtmpx)"));
        assert!(call.form["tcurl"].ends_with("/hook"), "{:?}", call.form);
        assert!(call.form["clientid"].parse::<u64>().is_ok());
        assert!(call.form.contains_key("swfurl") && call.form.contains_key("pageurl"));
        let connect = backend
            .calls()
            .into_iter()
            .find(|c| c.path == "/connect" && c.form.get("clientid") == call.form.get("clientid"));
        let connect = connect.unwrap_or_else(|| panic!("{l}: no connect call for the session"));
        assert_eq!(connect.form.get("call").map(String::as_str), Some("connect"));
        assert_eq!(connect.form.get("app").map(String::as_str), Some("hook"));
        drop(wire);
        let done = backend.wait_call("/done", &format!("ok{l}"));
        assert_eq!(done.form.get("call").map(String::as_str), Some("done"), "{l}");

        let refused = t.outcome(&gw, "hook", publish(&format!("bad{l}")));
        assert_rejected(&refused, denied_pub, "answered HTTP 403");
        denial_logged(&gw, "publish", &format!("hook/bad{l}"), t.variant, "HTTP 403");
        assert_rejected(&t.outcome(&gw, "hook", play(&format!("bad{l}"))), denied_play, "answered HTTP 403");

        assert_eq!(t.outcome(&gw, "hook", publish(&format!("redir{l}-x"))), Outcome::Started, "{l}");
        let renamed = format!("stream=hook/renamed{l}-x");
        assert!(
            gw.wait_for_log_line(&["publishing", &renamed], Duration::from_secs(5)).is_some(),
            "{l}: not renamed"
        );

        let started = Instant::now();
        let slow = t.outcome(&gw, "hook", publish(&format!("slow{l}")));
        assert_rejected(&slow, denied_pub, "did not answer within 700 ms");
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{l}: a late callback must not hold the client"
        );

        let connect_denied = t.outcome(&gw, "hook?deny=1", Intent::Connect);
        assert_rejected(&connect_denied, "NetConnection.Connect.Rejected", "HTTP 403");
        assert_rejected(
            &t.outcome(&gw, "nope", Intent::Connect),
            "NetConnection.Connect.Rejected",
            "does not exist",
        );
    }
    // The gateway is still serving, and nothing stayed in the limits.
    assert_eq!(TRANSPORTS[0].outcome(&gw, "keys", publish("final?key=k1")), Outcome::Started);
    // Keys and tokens in queries never reach the log.
    let logs = gw.logs();
    assert!(!logs.contains("key=") && !logs.contains("token=") && !logs.contains("expires="), "{logs}");
}

#[test]
fn publishers_per_app_and_players_per_stream() {
    let _serial = exclusive();
    let dir = TempDir::new("auth-limits");
    let backend = Backend::start();
    let gw = start(&dir, &backend);
    for t in TRANSPORTS {
        let l = t.label;
        let (first, first_wire) = t.try_with(&gw, "limited", publish(&format!("one{l}")));
        assert_eq!(first, Outcome::Started, "{l}");
        let second = t.outcome(&gw, "limited", publish(&format!("two{l}")));
        assert_rejected(&second, "NetStream.Publish.Denied", "limit hit: max_publishers_per_app (1)");
        denial_logged(&gw, "publish", &format!("limited/two{l}"), t.variant, "max_publishers_per_app");
        let (player, player_wire) = t.try_with(&gw, "limited", play(&format!("one{l}")));
        assert_eq!(player, Outcome::Started, "{l}");
        let extra = t.outcome(&gw, "limited", play(&format!("one{l}")));
        assert_rejected(&extra, "NetStream.Play.Failed", "limit hit: max_players_per_stream (1)");
        assert_eq!(t.outcome(&gw, "limited", play(&format!("other{l}"))), Outcome::Started, "per stream");
        // Leaving frees the places.
        drop((first_wire, player_wire));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let again = t.outcome(&gw, "limited", publish(&format!("three{l}")));
            if again == Outcome::Started {
                break;
            }
            assert!(Instant::now() < deadline, "{l}: the publisher slot was never released: {again:?}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An ffmpeg that must be refused exits with an error naming the reason, quickly.
fn ffmpeg_refused(url: &str, reason: &str) {
    let mut proc = publish_testsrc(url, 5.0);
    let started = Instant::now();
    let status = proc.finish();
    assert!(!status.success(), "ffmpeg was not refused: {}", proc.describe());
    assert!(started.elapsed() < Duration::from_secs(10), "{}", proc.describe());
    assert!(proc.output().contains(reason), "ffmpeg's output lacks {reason:?}: {}", proc.describe());
}

#[test]
fn ffmpeg_over_rtmps_with_tokens() {
    let _serial = exclusive();
    let dir = TempDir::new("auth-ffmpeg-rtmps");
    let backend = Backend::start();
    let gw = start(&dir, &backend);
    ffmpeg_refused(&gw.url("rtmps", "token", &signed("token", "cam", now() - 1)), "token expired");
    denial_logged(&gw, "publish", "token/cam", "rtmps", "token expired");
    ffmpeg_refused(&gw.url("rtmps", "token", "cam"), "token missing");

    let mut publisher = publish_testsrc(&gw.url("rtmps", "token", &signed("token", "cam", now() + 600)), 6.0);
    assert!(gw.wait_for_log_line(&["publishing", "token/cam", "rtmps"], Duration::from_secs(15)).is_some());
    let out = dir.file("played.flv");
    let mut player =
        record_ffmpeg(&gw.url("rtmps", "token", &signed("token", "cam", now() + 600)), &out, 3.0);
    assert!(player.finish().success(), "{}", player.describe());
    assert!(publisher.finish().success(), "{}", publisher.describe());
    assert_good_recording("rtmps player with a token", &out, 50, 80);
}

#[test]
fn ffmpeg_with_http_callbacks() {
    let _serial = exclusive();
    let dir = TempDir::new("auth-ffmpeg-hook");
    let backend = Backend::start();
    let gw = start(&dir, &backend);
    ffmpeg_refused(&gw.url("rtmp", "hook", "bad1"), "HTTP 403");
    ffmpeg_refused(&gw.url("rtmps", "hook", "slow1"), "did not answer");
    let mut publisher = publish_testsrc(&gw.url("rtmp", "hook", "cam?sign=xyz"), 3.0);
    assert!(publisher.finish().success(), "{}", publisher.describe());
    let call = backend.wait_call("/publish", "cam");
    assert!(call.form["flashver"].starts_with("FMLE/3.0 (compatible; Lavf"), "{:?}", call.form);
    assert_eq!(call.form["tcurl"], gw.url("rtmp", "hook", "").trim_end_matches('/'));
    assert_eq!(call.form["sign"], "xyz");
    assert_eq!(call.form["addr"], "127.0.0.1");
    let done = backend.wait_call("/done", "cam");
    assert_eq!(done.form["sign"], "xyz");
    assert_eq!(done.form["clientid"], call.form["clientid"]);
}

#[test]
fn librtmp_and_rtmpdump_over_rtmpe_with_keys() {
    let _serial = exclusive();
    require_tool("rtmpdump");
    let dir = TempDir::new("auth-rtmpe");
    let source = dir.file("source.flv");
    make_testsrc_flv(&source, 4);
    let backend = Backend::start();
    let gw = start(&dir, &backend);
    let rtmpe = |stream: &str| gw.url("rtmp", "keys", stream).replacen("rtmp://", "rtmpe://", 1);

    let mut refused = publish_librtmp(&rtmpe("cam?key=wrong"), &source, &dir);
    refused.finish();
    denial_logged(&gw, "publish", "keys/cam", "rtmpe", "stream key not accepted");

    let mut publisher = publish_librtmp(&rtmpe("cam?key=k1"), &source, &dir);
    assert!(gw.wait_for_log_line(&["publishing", "keys/cam", "rtmpe"], Duration::from_secs(10)).is_some());

    // rtmpdump without the play key is refused over RTMPE and says so.
    let mut cmd = Command::new("rtmpdump");
    cmd.args(["--live", "-m", "5", "-r", &rtmpe("cam"), "-o"]).arg(dir.file("no.flv"));
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(20));
    assert!(!status.success(), "rtmpdump played without a key: {out}{err}");
    denial_logged(&gw, "play", "keys/cam", "rtmpe", "stream key not accepted");
    assert!(publisher.finish().success(), "{}", publisher.describe());
}

// ---------------------------------------------------------------------------------------------
// The HTTP tunnel variants, through rtmpx-client.

/// Publishes or plays `url` with rtmpx-client; `Ok` when it started, the code and description
/// of the refusal otherwise (anything else fails the test).
fn tunnel_attempt(url: &str, publish: bool) -> Result<(), (String, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let parsed = rtmpx_client::RtmpUrl::parse(url).unwrap();
        let mut options = rtmpx_client::ClientOptions::default();
        options.tls.dangerous_accept_any_certificate = true;
        let mut conn = match rtmpx_client::Connection::connect(&parsed, &options).await {
            Ok(c) => c,
            Err(rtmpx_client::Error::Rejected { code, description }) => return Err((code, description)),
            Err(e) => panic!("{url}: {e}"),
        };
        let started =
            if publish { conn.publish(&parsed.stream).await } else { conn.play(&parsed.stream).await };
        match started {
            Ok(_) => {
                let _ = conn.close().await;
                Ok(())
            }
            Err(rtmpx_client::Error::Rejected { code, description }) => Err((code, description)),
            Err(e) => panic!("{url}: {e}"),
        }
    })
}

#[track_caller]
fn assert_tunnel_refused(result: Result<(), (String, String)>, code: &str, reason: &str) {
    match result {
        Err((c, d)) => {
            assert_eq!(c, code);
            assert!(d.contains(reason), "{d:?} lacks {reason:?}");
        }
        Ok(()) => panic!("expected a refusal with {reason:?}"),
    }
}

#[test]
fn every_auth_mode_over_rtmpt_rtmpte_and_rtmpts() {
    let _serial = exclusive();
    let dir = TempDir::new("auth-tunnel");
    let backend = Backend::start();
    let gw = start(&dir, &backend);
    let (denied_pub, denied_play) = ("NetStream.Publish.Denied", "NetStream.Play.Failed");
    for (scheme, listener, variant) in
        [("rtmpt", "rtmpt", "rtmpt"), ("rtmpte", "rtmpt", "rtmpte"), ("rtmpts", "rtmpts", "rtmpts")]
    {
        let url = |app: &str, stream: &str| {
            gw.url(listener, app, stream).replacen(&format!("{listener}://"), &format!("{scheme}://"), 1)
        };
        assert_eq!(tunnel_attempt(&url("keys", &format!("a{scheme}?key=k1")), true), Ok(()), "{scheme}");
        assert_tunnel_refused(
            tunnel_attempt(&url("keys", &format!("b{scheme}?key=no")), true),
            denied_pub,
            "stream key",
        );
        denial_logged(&gw, "publish", &format!("keys/b{scheme}"), variant, "stream key not accepted");
        assert_tunnel_refused(
            tunnel_attempt(&url("keys", &format!("a{scheme}")), false),
            denied_play,
            "stream key",
        );

        let stream = format!("t{scheme}");
        assert_eq!(
            tunnel_attempt(&url("token", &signed("token", &stream, now() + 60)), true),
            Ok(()),
            "{scheme}"
        );
        let expired = tunnel_attempt(&url("token", &signed("token", &format!("x{scheme}"), now() - 1)), true);
        assert_tunnel_refused(expired, denied_pub, "token expired");
        denial_logged(&gw, "publish", &format!("token/x{scheme}"), variant, "token expired");

        assert_tunnel_refused(
            tunnel_attempt(&url("ip", &format!("i{scheme}")), true),
            denied_pub,
            "deny list",
        );
        assert_eq!(tunnel_attempt(&url("ip", &format!("i{scheme}")), false), Ok(()), "{scheme}");

        assert_eq!(tunnel_attempt(&url("hook", &format!("ok{scheme}")), true), Ok(()), "{scheme}");
        let call = backend.wait_call("/publish", &format!("ok{scheme}"));
        assert_eq!(call.form["addr"], "127.0.0.1");
        assert_eq!(call.form["tcurl"], url("hook", "").trim_end_matches('/'));
        backend.wait_call("/done", &format!("ok{scheme}"));
        let refused = tunnel_attempt(&url("hook", &format!("bad{scheme}")), true);
        assert_tunnel_refused(refused, denied_pub, "HTTP 403");
        denial_logged(&gw, "publish", &format!("hook/bad{scheme}"), variant, "HTTP 403");
        assert_tunnel_refused(
            tunnel_attempt(&url("hook", &format!("slow{scheme}")), true),
            denied_pub,
            "did not answer",
        );
        let connect = tunnel_attempt(&format!("{scheme}://{}/hook?deny=1", gw.addr(listener)), true);
        assert_tunnel_refused(connect, "NetConnection.Connect.Rejected", "HTTP 403");
    }
}

#[test]
fn ffmpeg_over_rtmpt_and_rtmpdump_over_rtmpte_are_refused() {
    let _serial = exclusive();
    require_tool("rtmpdump");
    let dir = TempDir::new("auth-tunnel-real");
    let backend = Backend::start();
    let gw = start(&dir, &backend);
    ffmpeg_refused(&gw.url("rtmpt", "token", &signed("token", "cam", now() - 1)), "token expired");
    denial_logged(&gw, "publish", "token/cam", "rtmpt", "token expired");
    let mut publisher = publish_testsrc(&gw.url("rtmpt", "keys", "cam?key=k2"), 5.0);
    assert!(gw.wait_for_log_line(&["publishing", "keys/cam", "rtmpt"], Duration::from_secs(15)).is_some());
    let rtmpte = gw.url("rtmpt", "keys", "cam?key=k1").replacen("rtmpt://", "rtmpte://", 1);
    let mut cmd = Command::new("rtmpdump");
    cmd.args(["--live", "-m", "5", "-r", &rtmpte, "-o"]).arg(dir.file("no.flv"));
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(20));
    assert!(!status.success(), "rtmpdump played with a publish key: {out}{err}");
    denial_logged(&gw, "play", "keys/cam", "rtmpte", "stream key not accepted");
    assert!(publisher.finish().success(), "{}", publisher.describe());
}

/// The callbacks carry at least the fields nginx-rtmp sends, with the same values, so a backend
/// written for nginx-rtmp works unchanged: the same ffmpeg publish and rtmpdump play against
/// nginx-rtmp (Debian's module) and rtmpx, each with its own recording backend.
#[test]
fn callbacks_carry_nginx_rtmp_fields() {
    let _serial = exclusive();
    require_tool("nginx");
    require_tool("rtmpdump");
    let nginx_backend = Backend::start();
    let nginx = rtmpx_testkit::NginxRtmp::start_with(&format!(
        "    application hook {{ live on; on_publish {0}/publish; on_play {0}/play; on_done {0}/done; }}\n",
        nginx_backend.url()
    ));
    let dir = TempDir::new("auth-nginx-fields");
    let backend = Backend::start();
    let gw = start(&dir, &backend);
    let runs = [(&nginx_backend, nginx.url("hook", "cam")), (&backend, gw.url("rtmp", "hook", "cam"))];
    for (_, url) in &runs {
        let mut publisher = publish_testsrc(&format!("{url}?sign=1"), 4.0);
        thread::sleep(Duration::from_millis(1500));
        let mut cmd = Command::new("rtmpdump");
        cmd.args(["-q", "--live", "-B", "1", "-m", "5", "-r", &format!("{url}?viewer=2"), "-o", "/dev/null"]);
        let _ = run_bounded(cmd, Duration::from_secs(20));
        assert!(publisher.finish().success(), "{}", publisher.describe());
    }
    for path in ["/publish", "/play", "/done"] {
        let theirs = nginx_backend.wait_call(path, "cam");
        backend.wait_call(path, "cam");
        thread::sleep(Duration::from_millis(300));
        // The same client's call (the player's and the publisher's on_done may come in any order).
        let ours = backend
            .calls()
            .into_iter()
            .find(|c| {
                c.path == path
                    && c.form.get("flashver").is_some_and(|f| f.starts_with(&theirs.form["flashver"]))
            })
            .unwrap_or_else(|| panic!("no {path} call from the same client: {:#?}", backend.calls()));
        for (key, value) in &theirs.form {
            let mine = ours
                .form
                .get(key)
                .unwrap_or_else(|| panic!("{path}: rtmpx lacks {key}={value}: {:?}", ours.form));
            match key.as_str() {
                // Differ by server: the port in tcurl, the session counter.
                "tcurl" => {
                    assert_eq!(mine.rsplit_once(':').map(|(h, _)| h), value.rsplit_once(':').map(|(h, _)| h))
                }
                "clientid" => assert!(mine.parse::<u64>().is_ok()),
                // A play without a reset argument: nginx-rtmp says 0, rtmpx 1 (Flash's default).
                "reset" => assert!(mine == "0" || mine == "1"),
                // nginx-rtmp keeps 32 bytes of flashVer (a fixed-size buffer); rtmpx all of it.
                "flashver" => assert!(mine.starts_with(value.as_str()), "{mine:?} vs {value:?}"),
                _ => assert_eq!(mine, value, "{path}: field {key}"),
            }
        }
        eprintln!("{path}: nginx-rtmp sent {:?}", theirs.form.keys().collect::<Vec<_>>());
    }
}
