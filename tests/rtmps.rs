//! RTMPS end to end: the real `rtmpx` binary (build it first: `cargo build -p rtmpx`) with real
//! clients: ffmpeg/ffprobe (GnuTLS), rtmpdump (librtmp, GnuTLS) and openssl s_client.
//!
//! The small `Gateway` helper here starts `rtmpx serve --config FILE`, waits for "rtmpx ready"
//! and reads the printed URLs (listeners use port 0).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The tests encode video and run several clients: one at a time on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn rtmpx_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let bin = target.join("debug/rtmpx");
    assert!(bin.exists(), "{} is missing: run `cargo build -p rtmpx` first", bin.display());
    bin
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let dir = std::env::temp_dir().join(format!("rtmpx-e2e-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Gateway {
    child: Child,
    log: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Gateway {
    /// Starts the gateway with `config` (TOML) written into a fresh directory.
    fn start(name: &str, config: &str) -> Gateway {
        Self::start_in(temp_dir(name), config)
    }

    fn start_in(dir: PathBuf, config: &str) -> Gateway {
        let config_path = dir.join("rtmpx.toml");
        std::fs::write(&config_path, config.replace("$DIR", dir.to_str().unwrap())).unwrap();
        let mut child = Command::new(rtmpx_binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info,rtmpx::tls=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning rtmpx");
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&strip_ansi(&line));
                    log.push('\n');
                }
            });
        }
        let gateway = Gateway { child, log, dir };
        assert!(
            gateway.wait_for_log("rtmpx ready", Duration::from_secs(15)),
            "rtmpx did not start:\n{}",
            gateway.log()
        );
        gateway
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        self.wait_for_log_count(needle, 1, limit)
    }

    fn wait_for_log_count(&self, needle: &str, count: usize, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.log().matches(needle).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `rtmps://127.0.0.1:PORT/live` for the first listener of `scheme`.
    fn app_url(&self, scheme: &str) -> String {
        let prefix = format!(" {scheme}://");
        let log = self.log();
        let at = log.find(&prefix).unwrap_or_else(|| panic!("no {scheme} listener announced:\n{log}"));
        let url = log[at + 1..].split_whitespace().next().unwrap();
        url.trim_end_matches("/<stream>").to_string()
    }

    fn port(&self, scheme: &str) -> u16 {
        let url = self.app_url(scheme);
        let host_port = url.split('/').nth(2).unwrap();
        host_port.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- rtmpx log ---\n{}", self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits for a child until `limit`, then interrupts it (ffmpeg finishes its file on SIGINT).
fn finish(mut child: Child, limit: Duration) -> Output {
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

fn run(program: &str, args: &[&str], limit: Duration) -> Output {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    finish(child, limit)
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn spawn_quiet(program: &str, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// The publish command from the issue: `seconds` of 25 fps H.264 and AAC.
fn publish(url: &str, seconds: u32, extra: &[&str]) -> Child {
    let mut args: Vec<String> = "-hide_banner -loglevel error -re -f lavfi -i testsrc=size=320x240:rate=25 \
         -f lavfi -i sine=frequency=440:sample_rate=44100"
        .split_whitespace()
        .map(String::from)
        .collect();
    args.extend(["-t".into(), seconds.to_string()]);
    args.extend(
        "-c:v libx264 -preset ultrafast -tune zerolatency -g 25 -pix_fmt yuv420p -c:a aac -b:a 64k -f flv"
            .split_whitespace()
            .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.into());
    spawn_quiet("ffmpeg", &args)
}

fn ffmpeg_play(url: &str, out: &Path) -> Child {
    let args = ["-hide_banner", "-loglevel", "error", "-i", url, "-c", "copy", "-f", "flv", "-y"];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(out.to_str().unwrap().into());
    spawn_quiet("ffmpeg", &args)
}

fn rtmpdump_play(url: &str, out: &Path) -> Child {
    let args = ["-q", "-r", url, "--live", "-o", out.to_str().unwrap()];
    spawn_quiet("rtmpdump", &args.map(String::from))
}

/// (video, audio) packet counts of an FLV file.
fn packet_counts(file: &Path) -> (usize, usize) {
    let output = run(
        "ffprobe",
        &["-v", "error", "-show_entries", "packet=codec_type", "-of", "csv=p=0", file.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let listing = String::from_utf8_lossy(&output.stdout);
    let count = |kind: &str| listing.lines().filter(|l| l.trim() == kind).count();
    (count("video"), count("audio"))
}

/// The SHA-256 fingerprint (`AB:CD:...`) the server presents to a client sending `servername`.
fn served_fingerprint(port: u16, servername: &str) -> String {
    let connect = format!("127.0.0.1:{port}");
    let script = format!(
        "openssl s_client -connect {connect} -servername {servername} </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    );
    let output = run("sh", &["-c", &script], Duration::from_secs(10));
    parse_fingerprint(&text(&output))
}

fn file_fingerprint(cert: &Path) -> String {
    let output = run(
        "openssl",
        &["x509", "-in", cert.to_str().unwrap(), "-noout", "-fingerprint", "-sha256"],
        Duration::from_secs(10),
    );
    parse_fingerprint(&text(&output))
}

fn parse_fingerprint(text: &str) -> String {
    text.lines()
        .find_map(|l| l.split_once("Fingerprint=").map(|(_, fp)| fp.trim().to_string()))
        .unwrap_or_else(|| panic!("no fingerprint in {text:?}"))
}

/// openssl s_client with `args`; returns (handshake and verification succeeded, output).
fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let connect = format!("127.0.0.1:{port}");
    let mut all = vec!["s_client", "-connect", &connect];
    all.extend_from_slice(args);
    let output = run("openssl", &all, Duration::from_secs(10));
    (output.status.success(), text(&output))
}

const TWO_LISTENERS: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmps"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[tls]
cert_dir = "$DIR/certs"
"#;

#[test]
fn ffmpeg_publishes_over_rtmps_and_ffmpeg_and_rtmpdump_play_over_rtmps_and_rtmp() {
    let _serial = serial();
    let gw = Gateway::start("playback", TWO_LISTENERS);
    assert!(
        gw.log().contains("generated a self-signed development certificate for localhost"),
        "{}",
        gw.log()
    );
    for file in ["ca.pem", "ca.key", "cert.pem", "key.pem"] {
        assert!(gw.dir.join("certs").join(file).exists(), "certs/{file}");
    }

    let (rtmps, rtmp) = (gw.app_url("rtmps"), gw.app_url("rtmp"));
    let publisher = publish(&format!("{rtmps}/s"), 6, &[]);
    assert!(gw.wait_for_log("publishing", Duration::from_secs(10)), "no publisher");
    std::thread::sleep(Duration::from_millis(500));
    let out = |name: &str| gw.dir.join(name);
    let players = vec![
        (
            "ffmpeg rtmps",
            out("ffmpeg-rtmps.flv"),
            ffmpeg_play(&format!("{rtmps}/s"), &out("ffmpeg-rtmps.flv")),
        ),
        ("ffmpeg rtmp", out("ffmpeg-rtmp.flv"), ffmpeg_play(&format!("{rtmp}/s"), &out("ffmpeg-rtmp.flv"))),
        (
            "rtmpdump rtmps",
            out("dump-rtmps.flv"),
            rtmpdump_play(&format!("{rtmps}/s"), &out("dump-rtmps.flv")),
        ),
        ("rtmpdump rtmp", out("dump-rtmp.flv"), rtmpdump_play(&format!("{rtmp}/s"), &out("dump-rtmp.flv"))),
    ];
    let published = finish(publisher, Duration::from_secs(30));
    assert!(published.status.success(), "publisher: {}", text(&published));
    for (name, file, child) in players {
        let output = finish(child, Duration::from_secs(10));
        let (video, audio) = packet_counts(&file);
        // Joined about 1 s in, from the cached GOP: at least 3 of the 6 seconds arrive.
        assert!(video >= 75 && audio >= 120, "{name}: {video} video, {audio} audio; {}", text(&output));
    }

    let log = gw.log();
    let closed = |variant: &str| log.lines().filter(|l| l.contains("closed:") && l.contains(variant)).count();
    assert!(closed("variant=rtmps ") >= 3, "{log}");
    assert!(closed("variant=rtmp ") >= 2, "{log}");
    // TLS 1.3 stays on for everyone: ffmpeg (GnuTLS) and rtmpdump (librtmp + GnuTLS) alike.
    let handshakes: Vec<&str> = log.lines().filter(|l| l.contains("TLS handshake complete")).collect();
    assert_eq!(handshakes.len(), 3, "{log}");
    assert!(handshakes.iter().all(|l| l.contains("version=Some(TLSv1_3)")), "{log}");
}

#[test]
fn verifying_clients_trust_the_generated_ca_and_nothing_else() {
    let _serial = serial();
    let gw = Gateway::start("verify", TWO_LISTENERS);
    let port = gw.port("rtmps");
    let ca = gw.dir.join("certs/ca.pem");
    let ca = ca.to_str().unwrap();

    let verify = ["-verify_return_error", "-CAfile", ca];
    let (ok, out) = s_client(
        port,
        &[&verify[..], &["-servername", "localhost", "-verify_hostname", "localhost"]].concat(),
    );
    assert!(ok && out.contains("Verify return code: 0 (ok)"), "{out}");
    let (ok, out) = s_client(port, &[&verify[..], &["-verify_ip", "127.0.0.1"]].concat());
    assert!(ok && out.contains("Verify return code: 0 (ok)"), "{out}");
    // Without the CA (the system store only), and for a name the certificate lacks.
    let (ok, out) = s_client(port, &["-verify_return_error"]);
    assert!(!ok && out.contains("unable to get local issuer certificate"), "{out}");
    let (ok, out) = s_client(port, &[&verify[..], &["-verify_hostname", "other.example"]].concat());
    assert!(!ok && out.contains("hostname mismatch"), "{out}");
    assert!(gw.wait_for_log("UnknownCA", Duration::from_secs(5)), "the failed handshake is not logged");

    // TLS 1.2 and 1.3 only.
    let (ok, out) = s_client(port, &["-tls1_2"]);
    assert!(ok && out.contains("Protocol  : TLSv1.2"), "{out}");
    let (ok, out) = s_client(port, &["-tls1_3"]);
    assert!(ok && out.contains("TLSv1.3"), "{out}");
    let (ok, out) = s_client(port, &["-tls1_1"]);
    assert!(!ok, "TLS 1.1 was accepted: {out}");

    // ffmpeg (GnuTLS) verifying: publishes with the CA, refuses the server without it.
    let url = format!("rtmps://localhost:{port}/live/verified");
    let with_ca = finish(publish(&url, 1, &["-tls_verify", "1", "-ca_file", ca]), Duration::from_secs(20));
    assert!(with_ca.status.success(), "{}", text(&with_ca));
    let system = "/etc/ssl/certs/ca-certificates.crt";
    let without =
        finish(publish(&url, 1, &["-tls_verify", "1", "-ca_file", system]), Duration::from_secs(20));
    assert!(!without.status.success(), "ffmpeg accepted an untrusted certificate");
    assert!(text(&without).contains("failed verification"), "{}", text(&without));
}

#[test]
fn sighup_rotates_the_certificate_while_live_sessions_keep_streaming() {
    let _serial = serial();
    let dir = temp_dir("rotate");
    let make_cert = |sub: &str| {
        let output = run(
            rtmpx_binary().to_str().unwrap(),
            &["cert", "--host", "media.example", "--dir", dir.join(sub).to_str().unwrap()],
            Duration::from_secs(20),
        );
        assert!(output.status.success(), "{}", text(&output));
        assert!(text(&output).contains("players must skip verification"), "{}", text(&output));
        assert!(text(&output).contains("localhost, 127.0.0.1, ::1, media.example"), "{}", text(&output));
    };
    make_cert("one");
    make_cert("two");
    let install = |sub: &str| {
        std::fs::copy(dir.join(sub).join("key.pem"), dir.join("live.key")).unwrap();
        std::fs::copy(dir.join(sub).join("cert.pem"), dir.join("live.pem")).unwrap();
    };
    install("one");
    let (one, two) =
        (file_fingerprint(&dir.join("one/cert.pem")), file_fingerprint(&dir.join("two/cert.pem")));
    assert_ne!(one, two);

    let config = r#"
[[listener]]
proto = "rtmps"
addr = "127.0.0.1:0"
tls = [{ cert = "$DIR/live.pem", key = "$DIR/live.key" }]

[[app]]
name = "live"
"#;
    let gw = Gateway::start_in(dir.clone(), config);
    let port = gw.port("rtmps");
    assert_eq!(served_fingerprint(port, "media.example"), one);
    assert!(gw.log().contains(&one), "the loaded fingerprint is logged");

    let url = format!("{}/rotating", gw.app_url("rtmps"));
    let publisher = publish(&url, 10, &[]);
    assert!(gw.wait_for_log("publishing", Duration::from_secs(10)));
    let player_file = dir.join("old-session.flv");
    let player = rtmpdump_play(&url, &player_file);
    assert!(gw.wait_for_log("playing", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_secs(2));

    install("two");
    gw.signal("HUP");
    assert!(gw.wait_for_log("TLS certificates reloaded", Duration::from_secs(5)), "{}", gw.log());
    assert_eq!(served_fingerprint(port, "media.example"), two);

    // A broken certificate is reported and the one in use stays.
    std::fs::write(dir.join("live.pem"), "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        .unwrap();
    gw.signal("HUP");
    assert!(gw.wait_for_log("reload failed", Duration::from_secs(5)), "{}", gw.log());
    assert_eq!(served_fingerprint(port, "localhost"), two);

    let published = finish(publisher, Duration::from_secs(30));
    assert!(published.status.success(), "publisher: {}", text(&published));
    let played = finish(player, Duration::from_secs(10));
    let (video, audio) = packet_counts(&player_file);
    // The player joined about 1 s in and the rotation came about 2 s later: 7+ s of video means
    // the old session streamed on well past it.
    assert!(video >= 175 && audio >= 280, "{video} video, {audio} audio; {}", text(&played));
    let log = gw.log();
    let sessions: Vec<&str> =
        log.lines().filter(|l| l.contains("stream=live/rotating") && l.contains("closed:")).collect();
    assert_eq!(sessions.len(), 2, "{log}");
    assert!(sessions.iter().all(|l| l.contains("reason=closed")), "{log}");
}

#[test]
fn garbage_plain_rtmp_and_stalled_clients_on_the_tls_port_are_closed_and_logged() {
    let _serial = serial();
    let config = TWO_LISTENERS.replace("[tls]\n", "[tls]\nhandshake_timeout_secs = 1\n");
    let gw = Gateway::start("garbage", &config);
    let port = gw.port("rtmps");
    let connect = || {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream
    };
    // Sends `bytes`, then returns how long the server took to close the connection.
    let closed_after = |mut stream: TcpStream, bytes: &[u8]| {
        let started = Instant::now();
        let _ = stream.write_all(bytes);
        let mut sink = [0u8; 4096];
        loop {
            match stream.read(&mut sink) {
                Ok(0) => return started.elapsed(),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
                Err(e) => panic!("the server kept the connection open: {e}"),
            }
        }
    };

    let garbage: Vec<u8> = (0..2048u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let garbage_peer = connect();
    let garbage_port = garbage_peer.local_addr().unwrap().port();
    assert!(closed_after(garbage_peer, &garbage) < Duration::from_secs(2));

    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(0u8, 1536));
    let rtmp_peer = connect();
    let rtmp_port = rtmp_peer.local_addr().unwrap().port();
    assert!(closed_after(rtmp_peer, &c0c1) < Duration::from_secs(2));

    // Silent, and stuck inside a TLS record: both cut at the 1 s handshake timeout.
    let silent_peer = connect();
    let silent_port = silent_peer.local_addr().unwrap().port();
    let waited = closed_after(silent_peer, &[]);
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
    let partial = closed_after(connect(), &[0x16, 0x03, 0x01, 0x01, 0xf4, 0x01]);
    assert!(partial >= Duration::from_millis(900) && partial < Duration::from_secs(3), "{partial:?}");

    // librtmp speaking plain RTMP to the TLS port gives up at once instead of hanging.
    let plain = run(
        "rtmpdump",
        &["-r", &format!("rtmp://127.0.0.1:{port}/live/s"), "--live", "-o", "/dev/null", "-m", "5"],
        Duration::from_secs(15),
    );
    assert!(!plain.status.success());

    assert!(gw.wait_for_log_count("TLS handshake failed", 5, Duration::from_secs(5)), "{}", gw.log());
    let log = gw.log();
    let failure = |peer_port: u16| {
        let peer = format!("peer=127.0.0.1:{peer_port}");
        log.lines().find(|l| l.contains("TLS handshake failed") && l.contains(&peer)).map(String::from)
    };
    assert!(failure(garbage_port).is_some(), "{log}");
    assert!(failure(rtmp_port).unwrap().contains("does not speak TLS"), "{log}");
    assert!(failure(silent_port).unwrap().contains("no handshake within 1s"), "{log}");

    // The listener keeps serving.
    let ca = gw.dir.join("certs/ca.pem");
    let (ok, out) = s_client(port, &["-verify_return_error", "-CAfile", ca.to_str().unwrap()]);
    assert!(ok, "{out}");
    let published =
        finish(publish(&format!("{}/after", gw.app_url("rtmps")), 1, &[]), Duration::from_secs(20));
    assert!(published.status.success(), "{}", text(&published));
}

#[test]
fn rtmpdump_fails_when_tls13_session_tickets_are_sent_and_plays_without_them() {
    let _serial = serial();
    // rtmpdump plays over RTMPS while ffmpeg publishes over plain RTMP; only the ticket count differs.
    let play = |tickets: usize| {
        let config = TWO_LISTENERS.replace("[tls]\n", &format!("[tls]\ntls13_session_tickets = {tickets}\n"));
        let gw = Gateway::start("tickets", &config);
        let publisher = publish(&format!("{}/t", gw.app_url("rtmp")), 4, &[]);
        assert!(gw.wait_for_log("publishing", Duration::from_secs(10)));
        let file = gw.dir.join("t.flv");
        let args = ["-r", &format!("{}/t", gw.app_url("rtmps")), "--live", "-o", file.to_str().unwrap()];
        let played = run("rtmpdump", &args, Duration::from_secs(15));
        finish(publisher, Duration::from_secs(20));
        let counts = if file.exists() { packet_counts(&file) } else { (0, 0) };
        (text(&played), counts, gw.log())
    };

    let (output, (video, _), log) = play(2);
    assert!(output.contains("handshake failed"), "{output}");
    assert_eq!(video, 0);
    assert!(log.contains("version=Some(TLSv1_3)"), "{log}");

    let (output, (video, audio), log) = play(0);
    assert!(!output.contains("handshake failed"), "{output}");
    assert!(video >= 50 && audio >= 80, "{video} video, {audio} audio: {output}");
    assert!(log.contains("version=Some(TLSv1_3)"), "{log}");
}
