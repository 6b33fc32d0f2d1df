//! Decisions of the [`Gate`] against a real HTTP callback server on loopback.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtmpx_core::amf::Properties;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A `play` with only a stream name (start -2, duration -1, reset).
fn live() -> PlayRequest {
    PlayRequest::default()
}

/// How the test server answers one request.
#[derive(Clone, Debug)]
enum Reply {
    Status(u16),
    Redirect(u16, &'static str),
    /// A redirect whose `Location` is these raw bytes (UTF-8 or not).
    RawRedirect(u16, &'static [u8]),
    Sleep(Duration),
}

/// A request as the backend saw it: path and decoded form fields.
type Seen = (String, Vec<(String, String)>);

/// A callback server recording (path, decoded form) of every request.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(VecDeque::new()));
        let (seen2, replies2) = (seen.clone(), replies.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let (seen, replies) = (seen2.clone(), replies2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, length) = loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..at]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map(|v| v.trim().parse::<usize>().unwrap())
                                .unwrap_or(0);
                            break (at + 4, length);
                        }
                    };
                    while buf.len() < head_end + length {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
                    seen.lock().unwrap().push((path, query::parse_query(&body)));
                    let reply = replies.lock().unwrap().pop_front().unwrap_or(Reply::Status(200));
                    let response = match reply {
                        Reply::Status(code) => {
                            format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        }
                        Reply::RawRedirect(code, location) => {
                            let mut raw = format!("HTTP/1.1 {code} X\r\nLocation: ").into_bytes();
                            raw.extend_from_slice(location);
                            raw.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                            let _ = socket.write_all(&raw).await;
                            return;
                        }
                        Reply::Redirect(code, location) => format!(
                            "HTTP/1.1 {code} X\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        ),
                        Reply::Sleep(d) => {
                            tokio::time::sleep(d).await;
                            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
                        }
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Backend { addr, seen, replies }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn reply(&self, reply: Reply) {
        self.replies.lock().unwrap().push_back(reply);
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits for `n` requests (fire-and-forget notifications arrive a little later).
    async fn wait_requests(&self, n: usize) -> Vec<Seen> {
        let started = Instant::now();
        while self.seen.lock().unwrap().len() < n && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.requests()
    }
}

fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query::param(form, key)
}

fn config(app_extra: &str) -> Config {
    let text = format!(
        "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n{app_extra}\n\
         [[app]]\nname = \"other\"\n"
    );
    Config::from_toml(&text, "test").unwrap()
}

fn peer() -> SocketAddr {
    "10.1.2.3:5555".parse().unwrap()
}

fn request(app: &str) -> ConnectRequest {
    ConnectRequest {
        app: app.into(),
        tc_url: Some(format!("rtmp://example/{app}")),
        flash_ver: Some("FMLE/3.0 (compatible; test)".into()),
        swf_url: None,
        page_url: None,
        object_encoding: 0.0,
        properties: Properties::default(),
    }
}

async fn client(gate: &Gate, config: &Config) -> Client {
    gate.connect(config, 7, peer(), &request("live")).await.unwrap()
}

#[tokio::test]
async fn connect_unknown_app_and_callback_fields() {
    let backend = Backend::start().await;
    let gate = Gate::new();
    let config = config(&format!("on_connect = \"{}\"", backend.url("/connect")));
    let denial = gate.connect(&config, 1, peer(), &request("nope")).await.unwrap_err();
    assert_eq!(denial.code, "NetConnection.Connect.Rejected");
    assert!(denial.reason.contains("does not exist"));
    assert!(backend.requests().is_empty(), "unknown apps never reach the callback");

    let c = gate.connect(&config, 9, peer(), &request("live?user=bob&addr=1.1.1.1")).await.unwrap();
    assert_eq!(c.app, "live");
    let seen = backend.requests();
    let (path, form) = &seen[0];
    assert_eq!(path, "/connect");
    assert_eq!(field(form, "call"), Some("connect"));
    assert_eq!(field(form, "app"), Some("live"));
    assert_eq!(field(form, "flashver"), Some("FMLE/3.0 (compatible; test)"));
    assert_eq!(field(form, "tcurl"), Some("rtmp://example/live?user=bob&addr=1.1.1.1"));
    assert_eq!(field(form, "addr"), Some("10.1.2.3"));
    assert_eq!(field(form, "clientid"), Some("9"));
    assert_eq!(field(form, "user"), Some("bob"), "connect args are forwarded");
    assert_eq!(form.iter().filter(|(k, _)| k == "addr").count(), 1, "a client cannot add a second addr");

    backend.reply(Reply::Status(403));
    let denial = gate.connect(&config, 10, peer(), &request("live")).await.unwrap_err();
    assert!(denial.reason.contains("HTTP 403"), "{denial:?}");

    backend.reply(Reply::Redirect(302, "other"));
    assert_eq!(gate.connect(&config, 11, peer(), &request("live")).await.unwrap().app, "other");
    backend.reply(Reply::Redirect(302, "missing"));
    assert!(gate.connect(&config, 12, peer(), &request("live")).await.is_err());
}

#[tokio::test]
async fn callback_timeout_and_unreachable_fail_closed() {
    let backend = Backend::start().await;
    let gate = Gate::new();
    let config = config(&format!("on_publish = \"{}\"\ncallback_timeout_ms = 300", backend.url("/p")));
    let c = client(&gate, &config).await;
    backend.reply(Reply::Sleep(Duration::from_secs(3)));
    let started = Instant::now();
    let denial = gate.publish(&config, &c, "s", PublishMode::Live).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout bounds the wait");
    assert!(denial.reason.contains("did not answer within 300 ms"), "{denial:?}");
    assert_eq!(denial.code, "NetStream.Publish.Denied");

    // Nothing listens on the discard port of loopback.
    let closed = config_with_url("on_publish", "http://127.0.0.1:9/p");
    let c = client(&gate, &closed).await;
    let denial = gate.publish(&closed, &c, "s", PublishMode::Live).await.unwrap_err();
    assert!(denial.reason.contains("failed"), "{denial:?}");
    assert_eq!(gate.quota_entries(), 0);
}

fn config_with_url(key: &str, url: &str) -> Config {
    config(&format!("{key} = \"{url}\""))
}

#[tokio::test]
async fn publish_and_play_callbacks_allow_redirect_deny() {
    let backend = Backend::start().await;
    let gate = Gate::new();
    let config = config(&format!(
        "on_publish = \"{}\"\non_play = \"{}\"",
        backend.url("/publish"),
        backend.url("/play")
    ));
    let c = client(&gate, &config).await;
    let grant = gate.publish(&config, &c, "cam?user=alice&call=x", PublishMode::Live).await.unwrap();
    assert_eq!(grant.name, "cam");
    let (path, form) = &backend.requests()[0];
    assert_eq!(path, "/publish");
    for (k, v) in [("call", "publish"), ("name", "cam"), ("type", "live"), ("app", "live"), ("user", "alice")]
    {
        assert_eq!(field(form, k), Some(v), "{k}");
    }
    assert_eq!(form.iter().filter(|(k, _)| k == "call").count(), 1);

    backend.reply(Reply::Redirect(302, "renamed"));
    assert_eq!(gate.publish(&config, &c, "cam2", PublishMode::Record).await.unwrap().name, "renamed");
    assert_eq!(field(&backend.requests()[1].1, "type"), Some("record"));
    backend.reply(Reply::Redirect(301, "rtmp://elsewhere/live/x"));
    assert!(gate.publish(&config, &c, "cam3", PublishMode::Live).await.unwrap_err().reason.contains("relay"));
    backend.reply(Reply::Status(404));
    assert!(gate.publish(&config, &c, "cam4", PublishMode::Live).await.is_err());
    backend.reply(Reply::Status(500));
    assert!(gate.play(&config, &c, "cam", live()).await.is_err());

    let grant = gate.play(&config, &c, "cam?x=1", live()).await.unwrap();
    assert_eq!(grant.name, "cam");
    let (path, form) = backend.requests().last().cloned().unwrap();
    assert_eq!(path, "/play");
    for (k, v) in [
        ("call", "play"),
        ("name", "cam"),
        ("start", "4294967294"),
        ("duration", "4294967295"),
        ("reset", "1"),
        ("x", "1"),
    ] {
        assert_eq!(field(&form, k), Some(v), "{k}");
    }
}

#[tokio::test]
async fn static_keys() {
    let gate = Gate::new();
    let config = config("publish_keys = [\"k1\", \"k2\"]\nplay_keys = [\"viewer\"]");
    let c = client(&gate, &config).await;
    assert_eq!(gate.publish(&config, &c, "cam?key=k2", PublishMode::Live).await.unwrap().name, "cam");
    assert_eq!(gate.publish(&config, &c, "k1", PublishMode::Live).await.unwrap().name, "k1");
    let denial = gate.publish(&config, &c, "cam?key=k3", PublishMode::Live).await.unwrap_err();
    assert_eq!(denial.code, "NetStream.Publish.Denied");
    assert!(denial.reason.contains("stream key"));
    assert!(gate.publish(&config, &c, "cam", PublishMode::Live).await.is_err());
    assert!(
        gate.publish(&config, &c, "cam?key=K1", PublishMode::Live).await.is_err(),
        "keys are case-sensitive"
    );
    assert!(gate.play(&config, &c, "cam?key=k1", live()).await.is_err(), "publish keys do not play");
    assert!(gate.play(&config, &c, "cam?key=viewer", live()).await.is_ok());
}

#[tokio::test]
async fn tokens() {
    let gate = Gate::new();
    let secret = "0123456789abcdef0123";
    let config = config(&format!("[app.token]\nsecret = \"{secret}\"\nplay = false\nmax_ttl_secs = 3600"));
    let c = client(&gate, &config).await;
    let now = now_unix();
    let name = |stream: &str, expires: u64| {
        format!(
            "{stream}?expires={expires}&token={}",
            token::sign(secret.as_bytes(), "live", stream, expires)
        )
    };
    assert_eq!(
        gate.publish(&config, &c, &name("cam", now + 60), PublishMode::Live).await.unwrap().name,
        "cam"
    );
    let expired = gate.publish(&config, &c, &name("cam", now - 1), PublishMode::Live).await.unwrap_err();
    assert!(expired.reason.contains("token expired"), "{expired:?}");
    let far = gate.publish(&config, &c, &name("cam", now + 7200), PublishMode::Live).await.unwrap_err();
    assert!(far.reason.contains("too far"), "{far:?}");
    let swapped = name("cam", now + 60).replacen("cam", "other", 1);
    assert!(gate.publish(&config, &c, &swapped, PublishMode::Live).await.is_err(), "bound to the stream");
    assert!(gate
        .publish(&config, &c, "cam", PublishMode::Live)
        .await
        .unwrap_err()
        .reason
        .contains("token missing"));
    assert!(gate.play(&config, &c, "cam", live()).await.is_ok(), "play = false needs no token");
}

#[tokio::test]
async fn ip_lists() {
    let gate = Gate::new();
    let config = config(
        "allow_publish = [\"10.0.0.0/8\"]\ndeny_publish = [\"10.1.0.0/16\"]\ndeny_play = [\"10.0.0.0/8\"]",
    );
    let c = client(&gate, &config).await; // 10.1.2.3
    let denial = gate.publish(&config, &c, "cam", PublishMode::Live).await.unwrap_err();
    assert!(denial.reason.contains("deny list"), "{denial:?}");
    assert!(gate.play(&config, &c, "cam", live()).await.unwrap_err().reason.contains("deny list"));
    let mut other = c.clone();
    other.addr = "10.2.0.1:1".parse().unwrap();
    assert!(gate.publish(&config, &other, "cam", PublishMode::Live).await.is_ok());
    other.addr = "192.168.0.1:1".parse().unwrap();
    assert!(gate
        .publish(&config, &other, "cam", PublishMode::Live)
        .await
        .unwrap_err()
        .reason
        .contains("allow list"));
    assert!(gate.play(&config, &other, "cam", live()).await.is_ok());
}

#[tokio::test]
async fn limits_per_app_and_stream() {
    let gate = Gate::new();
    let config = config("max_publishers = 2\nmax_players_per_stream = 1");
    let c = client(&gate, &config).await;
    let a = gate.publish(&config, &c, "a", PublishMode::Live).await.unwrap();
    let _b = gate.publish(&config, &c, "b", PublishMode::Live).await.unwrap();
    let third = gate.publish(&config, &c, "c", PublishMode::Live).await.unwrap_err();
    assert!(third.reason.contains("max_publishers_per_app (2)"), "{third:?}");
    drop(a);
    let _c = gate.publish(&config, &c, "c", PublishMode::Live).await.unwrap();
    let p = gate.play(&config, &c, "a", live()).await.unwrap();
    let second = gate.play(&config, &c, "a?x=1", live()).await.unwrap_err();
    assert!(second.reason.contains("max_players_per_stream (1) on live/a"), "{second:?}");
    assert!(gate.play(&config, &c, "b", live()).await.is_ok());
    drop(p);
    assert!(gate.play(&config, &c, "a", live()).await.is_ok());
    // The global limits apply without a per-app override.
    let global = Config::from_toml(
        "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n[limits]\nmax_players_per_stream = 1\n",
        "t",
    )
    .unwrap();
    let _p = gate.play(&global, &c, "g", live()).await.unwrap();
    assert!(gate.play(&global, &c, "g", live()).await.is_err());
}

#[tokio::test]
async fn done_notifications() {
    let backend = Backend::start().await;
    let gate = Gate::new();
    let config = config(&format!(
        "on_done = \"{}\"\non_publish_done = \"{}\"",
        backend.url("/done"),
        backend.url("/publish_done")
    ));
    let c = client(&gate, &config).await;
    let grant = gate.publish(&config, &c, "cam?user=u", PublishMode::Live).await.unwrap();
    assert!(backend.requests().is_empty());
    drop(grant);
    let mut seen = backend.wait_requests(2).await;
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen[0].0, "/done");
    assert_eq!(field(&seen[0].1, "call"), Some("done"));
    assert_eq!(field(&seen[0].1, "name"), Some("cam"));
    assert_eq!(field(&seen[0].1, "user"), Some("u"));
    assert_eq!(seen[1].0, "/publish_done");
    assert_eq!(field(&seen[1].1, "call"), Some("publish_done"));
    // A publish that never started sends nothing.
    gate.publish(&config, &c, "cam", PublishMode::Live).await.unwrap().cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.requests().len(), 2);
    // Plays send on_done too (no on_play_done configured).
    drop(gate.play(&config, &c, "cam", live()).await.unwrap());
    let seen = backend.wait_requests(3).await;
    assert_eq!(field(&seen[2].1, "call"), Some("done"));
}

#[test]
fn config_rejects_bad_auth_settings() {
    let base = "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n";
    let err = |extra: &str| Config::from_toml(&format!("{base}{extra}\n"), "t").unwrap_err().to_string();
    assert!(err("on_publish = \"https://x/y\"").contains("app[0].on_publish"));
    assert!(err("on_play = \"ftp://x\"").contains("app[0].on_play"));
    assert!(err("on_done = \"http://\"").contains("app[0].on_done"));
    assert!(err("publish_keys = [\"\"]").contains("app[0].publish_keys"));
    assert!(err("play_keys = [\"a&b\"]").contains("app[0].play_keys"));
    assert!(err("allow_publish = [\"10.0.0.0/40\"]").contains("prefix length"));
    assert!(err("deny_play = [\"nonsense\"]").contains("not an IP address"));
    assert!(err("[app.token]\nsecret = \"short\"").contains("app[0].token.secret"));
    assert!(err("callback_timeout_ms = 5").contains("callback_timeout_ms"));
    assert!(err("max_publishers = 0").contains("max_publishers"));
    assert!(err("[app.token]\nsecret = \"0123456789abcdef\"\nbogus = 1").contains("bogus"));
    assert!(Config::from_toml(&format!("{base}[limits]\nmax_players_per_stream = 0\n"), "t").is_err());
}

#[tokio::test]
async fn a_redirect_without_a_usable_location_denies() {
    let backend = Backend::start().await;
    let gate = Gate::new();
    let config = config(&format!(
        "on_publish = \"{}\"\non_play = \"{}\"\non_connect = \"{}\"",
        backend.url("/publish"),
        backend.url("/play"),
        backend.url("/connect")
    ));
    let c = client(&gate, &config).await;
    // UTF-8 renames, taken as it is (like nginx-rtmp): raw, or percent-encoded as sent.
    backend.reply(Reply::RawRedirect(302, "José".as_bytes()));
    assert_eq!(gate.publish(&config, &c, "secret-key", PublishMode::Live).await.unwrap().name, "José");
    backend.reply(Reply::Redirect(302, "Jos%C3%A9"));
    assert_eq!(gate.play(&config, &c, "secret-key", live()).await.unwrap().name, "Jos%C3%A9");
    // Latin-1, no Location at all, an empty one, a too long one: denied, never the client's name.
    for reply in [
        Reply::RawRedirect(302, b"Jos\xe9"),
        Reply::RawRedirect(301, b"\xff\xfe\xfd"),
        Reply::Status(302),
        Reply::RawRedirect(307, b""),
        Reply::RawRedirect(302, &[b'a'; 2000]),
        Reply::RawRedirect(302, &[b'a'; 300]),
    ] {
        backend.reply(reply.clone());
        let denial = gate.publish(&config, &c, "secret-key", PublishMode::Live).await.unwrap_err();
        assert_eq!(denial.code, "NetStream.Publish.Denied", "{reply:?}");
        backend.reply(reply.clone());
        assert!(gate.play(&config, &c, "secret-key", live()).await.is_err(), "{reply:?}");
        backend.reply(reply.clone());
        assert!(gate.connect(&config, 8, peer(), &request("live")).await.is_err(), "{reply:?}");
    }
    assert_eq!(gate.quota_entries(), 0);
}

#[tokio::test]
async fn client_parameters_that_look_like_fields_are_dropped() {
    let backend = Backend::start().await;
    let gate = Gate::new();
    let config = config(&format!("on_publish = \"{}\"", backend.url("/publish")));
    let c = client(&gate, &config).await;
    let forged = "cam?%20addr=6.6.6.6&addr[]=6.6.6.6&ADDR=6.6.6.6&addr.=6.6.6.6&addr_=6.6.6.6&Call=x\
                  &client-id=1&name%00=x&user=alice&address=kept";
    gate.publish(&config, &c, forged, PublishMode::Live).await.unwrap();
    let (_, form) = &backend.requests()[0];
    let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "app", "flashver", "swfurl", "tcurl", "pageurl", "addr", "clientid", "call", "name", "type",
            "user", "address"
        ]
    );
    assert_eq!(field(form, "addr"), Some("10.1.2.3"));
}

#[tokio::test]
async fn names_are_capped_at_256_bytes() {
    let gate = Gate::new();
    let config = config("");
    let c = client(&gate, &config).await;
    let longest = "n".repeat(MAX_NAME);
    assert_eq!(gate.publish(&config, &c, &longest, PublishMode::Live).await.unwrap().name, longest);
    let too_long = "n".repeat(MAX_NAME + 1);
    let denial = gate.publish(&config, &c, &too_long, PublishMode::Live).await.unwrap_err();
    assert_eq!(denial.code, "NetStream.Publish.BadName");
    assert!(denial.reason.contains("longer than 256 bytes"), "{denial:?}");
    let denial = gate.play(&config, &c, &too_long, live()).await.unwrap_err();
    assert_eq!(denial.code, "NetStream.Play.StreamNotFound");
    let long_query = format!("cam?x={}", "q".repeat(MAX_QUERY));
    assert!(gate.publish(&config, &c, &long_query, PublishMode::Live).await.is_err());
    let denial = gate.connect(&config, 3, peer(), &request(&"a".repeat(1 << 20))).await.unwrap_err();
    assert!(
        denial.reason.contains("longer than 256 bytes") && denial.reason.len() < 100,
        "{}",
        denial.reason.len()
    );
}
