//! Headless Chromium driven through the DevTools protocol (a WebSocket): open a page, evaluate
//! JavaScript in it, take screenshots. Used by the HTTP-FLV tests (mpegts.js, the preview page).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::{require_tool, Proc, TempDir};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// mpegts.js's browser bundle: `$RTMPX_MPEGTS_JS`, else where scripts/test.sh puts it (npm, under
/// target/). Panics when it is missing: the browser tests never skip.
pub fn mpegts_js() -> PathBuf {
    let path = std::env::var_os("RTMPX_MPEGTS_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::target_dir().join("npm/mpegts.js-1.8.0/package/dist/mpegts.js"));
    assert!(
        path.is_file(),
        "mpegts.js not found at {} (scripts/test.sh installs it with npm)",
        path.display()
    );
    path
}

/// A page in `dir` that plays `src` (an HTTP-FLV or WebSocket-FLV URL) with mpegts.js; returns its
/// file URL. Errors land in `window.playerError`.
pub fn mpegts_page(dir: &TempDir, src: &str) -> String {
    std::fs::copy(mpegts_js(), dir.file("mpegts.js")).unwrap();
    let page = format!(
        r#"<!DOCTYPE html>
<meta charset="utf-8">
<video muted autoplay playsinline width="320" height="240"></video>
<script src="mpegts.js"></script>
<script>
window.playerError = null;
const video = document.querySelector("video");
if (!mpegts.getFeatureList().mseLivePlayback) window.playerError = "no MSE live playback";
const player = mpegts.createPlayer({{ type: "flv", isLive: true, url: {src:?} }}, {{ enableWorker: false }});
player.on(mpegts.Events.ERROR, (type, detail, info) => {{
  window.playerError = type + ": " + detail + " " + JSON.stringify(info);
}});
player.attachMediaElement(video);
player.load();
video.play().catch((e) => {{ window.playerError = "play(): " + e; }});
</script>
"#
    );
    let name = format!("play-{}.html", src.split(':').next().unwrap());
    std::fs::write(dir.file(&name), page).unwrap();
    format!("file://{}", dir.file(&name).display())
}

pub struct Chromium {
    _proc: Proc,
    devtools: WebSocket<TcpStream>,
    next_id: u64,
}

/// Chromium without a window, a sandbox (tests run as root), a GPU or any background traffic, on
/// the fresh `profile` folder; add the page and what to do with it.
pub fn headless_chromium(profile: &Path) -> Command {
    require_tool("chromium");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

impl Chromium {
    /// Starts headless Chromium on `url` with a fresh profile and attaches to the page.
    pub fn open(profile: &Path, url: &str) -> Chromium {
        let mut cmd = headless_chromium(profile);
        cmd.args([
            "--mute-audio",
            "--autoplay-policy=no-user-gesture-required",
            "--window-size=800,600",
            "--remote-debugging-port=0",
        ]);
        cmd.arg(url);
        let proc = Proc::spawn("chromium", cmd, None, Duration::from_secs(300));
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            let output = proc.output();
            if let Some(rest) = output.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap().parse::<u16>().unwrap();
            }
            assert!(Instant::now() < deadline, "chromium did not open DevTools:\n{output}");
            thread::sleep(Duration::from_millis(100));
        };
        let addr = ([127, 0, 0, 1], port).into();
        let page = loop {
            let list: Value = serde_json::from_str(&json_list(addr)).unwrap();
            let page = list.as_array().unwrap().iter().find(|t| t["type"] == "page").cloned();
            if let Some(page) = page {
                break page;
            }
            assert!(Instant::now() < deadline, "no page target: {list}");
            thread::sleep(Duration::from_millis(100));
        };
        let ws_url = page["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (devtools, _) = tungstenite::client(ws_url, stream).unwrap();
        Chromium { _proc: proc, devtools, next_id: 1 }
    }

    /// Calls a DevTools method and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params) {
            Ok(result) => result,
            Err(reply) => panic!("{method}: {reply}"),
        }
    }

    /// Calls a DevTools method: its result, or the whole reply when it is an error.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.devtools.send(Message::Text(request.into())).unwrap();
        loop {
            let Message::Text(text) = self.devtools.read().unwrap() else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                return if reply["error"].is_null() { Ok(reply["result"].clone()) } else { Err(reply) };
            }
        }
    }

    /// The value of a JavaScript expression in the page. While the page navigates (a link was
    /// just clicked) there is no context to evaluate in: it is asked again, for up to 10 s.
    pub fn eval(&mut self, expression: &str) -> Value {
        let params = json!({ "expression": expression, "returnByValue": true });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_call("Runtime.evaluate", params.clone()) {
                Ok(result) => return result["result"]["value"].clone(),
                Err(reply) => {
                    let message = reply["error"]["message"].as_str().unwrap_or_default();
                    let navigating = message.contains("navigated or closed") || message.contains("context");
                    assert!(navigating && Instant::now() < deadline, "Runtime.evaluate: {reply}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Polls `probe` (an expression giving `{t, frames, error}`) until media time has advanced by
    /// 2 s with frames decoded; panics on an error or at `limit`. Returns the last probe.
    pub fn wait_for_playback(&mut self, probe: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        let mut first: Option<(f64, u64)> = None;
        loop {
            let value = self.eval(probe);
            assert!(value["error"].is_null(), "the page reports an error: {value}");
            let (t, frames) = (value["t"].as_f64().unwrap_or(0.0), value["frames"].as_u64().unwrap_or(0));
            if frames > 0 && t > 0.0 {
                match first {
                    None => first = Some((t, frames)),
                    Some((t0, f0)) if t >= t0 + 2.0 && frames > f0 => return value,
                    Some(_) => {}
                }
            }
            assert!(Instant::now() < deadline, "no playback within {limit:?}: {value} (first {first:?})");
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Saves a PNG of the page.
    pub fn screenshot(&mut self, path: &Path) {
        let result = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        std::fs::write(path, base64_decode(result["data"].as_str().unwrap())).unwrap();
    }
}

/// `GET /json/list` from the DevTools HTTP endpoint (it keeps the connection open: read by length).
fn json_list(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /json/list HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "DevTools closed: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .expect("a Content-Length");
            if body.len() >= length {
                return body[..length].to_owned();
            }
        }
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}
