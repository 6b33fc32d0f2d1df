//! RTMPS end to end: the real `rtmpx` binary with real clients: ffmpeg/ffprobe (GnuTLS),
//! rtmpdump (librtmp, GnuTLS) and openssl s_client, on the shared harness (rtmpx-testkit).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rtmpx_testkit::{
    admin_addr, assert_good_recording, exclusive, metrics, publish, record_ffmpeg, record_rtmpdump,
    require_tool, rtmpx_binary, run_bounded, sample, Gateway, PublishOptions, TempDir,
};

/// The TLS layer logs each handshake's version and failures at debug.
const TLS_LOG: &str = "info,rtmpx::tls=debug";

fn start(label: &str, config: &str) -> Gateway {
    Gateway::start_in(TempDir::new(label), config, TLS_LOG)
}

/// ffmpeg publishing the test source for `seconds` with more output options (`extra`).
fn publish_with(url: &str, seconds: f64, extra: &[&str]) -> rtmpx_testkit::Proc {
    let output_args = extra.iter().map(|s| s.to_string()).collect();
    publish(url, &PublishOptions { output_args, ..PublishOptions::new(seconds) })
}

/// Runs `program args` to completion within `limit`: (succeeded, stdout and stderr).
fn run(program: &str, args: &[&str], limit: Duration) -> (bool, String) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let (status, stdout, stderr) = run_bounded(cmd, limit);
    (status.success(), format!("{stdout}{stderr}"))
}

/// The SHA-256 fingerprint (`AB:CD:...`) the server presents to a client sending `servername`.
fn served_fingerprint(port: u16, servername: &str) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {servername} </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    );
    parse_fingerprint(&run("sh", &["-c", &script], Duration::from_secs(10)).1)
}

fn file_fingerprint(cert: &Path) -> String {
    let cert = cert.to_str().unwrap();
    let args = ["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"];
    parse_fingerprint(&run("openssl", &args, Duration::from_secs(10)).1)
}

fn parse_fingerprint(text: &str) -> String {
    text.lines()
        .find_map(|l| l.split_once("Fingerprint=").map(|(_, fp)| fp.trim().to_string()))
        .unwrap_or_else(|| panic!("no fingerprint in {text:?}"))
}

/// openssl s_client with `args`; returns (handshake and verification succeeded, output).
fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    require_tool("openssl");
    let connect = format!("127.0.0.1:{port}");
    let mut all = vec!["s_client", "-connect", &connect];
    all.extend_from_slice(args);
    run("openssl", &all, Duration::from_secs(10))
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
    let _serial = exclusive();
    let gw = start("rtmps-playback", TWO_LISTENERS);
    assert!(
        gw.logs().contains("generated a self-signed development certificate for localhost"),
        "{}",
        gw.logs()
    );
    for file in ["ca.pem", "ca.key", "cert.pem", "key.pem"] {
        assert!(gw.dir().join("certs").join(file).exists(), "certs/{file}");
    }

    let (rtmps, rtmp) = (gw.url("rtmps", "live", "s"), gw.url("rtmp", "live", "s"));
    let mut publisher = publish_with(&rtmps, 6.0, &[]);
    assert!(gw.wait_for_log("publishing", Duration::from_secs(10)), "no publisher");
    std::thread::sleep(Duration::from_millis(500));
    let out = |name: &str| gw.dir().join(name);
    let players = [
        ("ffmpeg rtmps", out("ffmpeg-rtmps.flv"), record_ffmpeg(&rtmps, &out("ffmpeg-rtmps.flv"), 10.0)),
        ("ffmpeg rtmp", out("ffmpeg-rtmp.flv"), record_ffmpeg(&rtmp, &out("ffmpeg-rtmp.flv"), 10.0)),
        ("rtmpdump rtmps", out("dump-rtmps.flv"), record_rtmpdump(&rtmps, &out("dump-rtmps.flv"), 7.0)),
        ("rtmpdump rtmp", out("dump-rtmp.flv"), record_rtmpdump(&rtmp, &out("dump-rtmp.flv"), 7.0)),
    ];
    assert!(publisher.finish().success(), "{}", publisher.describe());
    for (name, file, mut player) in players {
        player.finish();
        // Joined about 1 s in, from the cached GOP: at least 3 of the 6 seconds arrive.
        assert_good_recording(name, &file, 75, 120);
    }

    let log = gw.logs();
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
    let _serial = exclusive();
    let gw = start("rtmps-verify", TWO_LISTENERS);
    let port = gw.addr("rtmps").port();
    let ca = gw.dir().join("certs/ca.pem");
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
    let mut with_ca = publish_with(&url, 1.0, &["-tls_verify", "1", "-ca_file", ca]);
    assert!(with_ca.finish().success(), "{}", with_ca.describe());
    let system = "/etc/ssl/certs/ca-certificates.crt";
    assert!(Path::new(system).exists(), "{system} is missing (Debian: ca-certificates)");
    let mut without = publish_with(&url, 1.0, &["-tls_verify", "1", "-ca_file", system]);
    assert!(!without.finish().success(), "ffmpeg accepted an untrusted certificate");
    assert!(without.output().contains("failed verification"), "{}", without.describe());
}

#[test]
fn sighup_rotates_the_certificate_while_live_sessions_keep_streaming() {
    let _serial = exclusive();
    let dir = TempDir::new("rtmps-rotate");
    // The certificates live in the gateway's own directory (`$DIR` in its config).
    let base = dir.path().to_path_buf();
    let make_cert = |sub: &str| {
        let (binary, out_dir) = (rtmpx_binary(), base.join(sub));
        let args = ["cert", "--host", "media.example", "--dir", out_dir.to_str().unwrap()];
        let (ok, out) = run(binary.to_str().unwrap(), &args, Duration::from_secs(20));
        assert!(ok, "{out}");
        assert!(out.contains("players must skip verification"), "{out}");
        assert!(out.contains("localhost, 127.0.0.1, ::1, media.example"), "{out}");
    };
    make_cert("one");
    make_cert("two");
    let install = |sub: &str| {
        std::fs::copy(base.join(sub).join("key.pem"), base.join("live.key")).unwrap();
        std::fs::copy(base.join(sub).join("cert.pem"), base.join("live.pem")).unwrap();
    };
    install("one");
    let (one, two) =
        (file_fingerprint(&base.join("one/cert.pem")), file_fingerprint(&base.join("two/cert.pem")));
    assert_ne!(one, two);
    let live_pem = base.join("live.pem");

    let config = r#"
[[listener]]
proto = "rtmps"
addr = "127.0.0.1:0"
tls = [{ cert = "$DIR/live.pem", key = "$DIR/live.key" }]

[[app]]
name = "live"

[admin]
addr = "127.0.0.1:0"
"#;
    let gw = Gateway::start_in(dir, config, TLS_LOG);
    let port = gw.addr("rtmps").port();
    assert_eq!(served_fingerprint(port, "media.example"), one);
    assert!(gw.logs().contains(&one), "the loaded fingerprint is logged");
    // `/metrics` says when the certificate from files expires, for each name it serves
    // (`rtmpx cert` makes leaves valid until midnight UTC 365 days from today).
    let expiry = |name: &str| {
        let series = format!("rtmpx_tls_certificate_expiry_seconds{{name=\"{name}\",source=\"file\"}}");
        sample(&metrics(admin_addr(&gw)), &series)
    };
    for name in ["media.example", "localhost", "127.0.0.1", "::1"] {
        let days = expiry(name) / 86_400;
        assert!((363..=365).contains(&days), "{name}: {days} days to expiry");
    }

    let url = gw.url("rtmps", "live", "rotating");
    let mut publisher = publish_with(&url, 10.0, &[]);
    assert!(gw.wait_for_log("publishing", Duration::from_secs(10)));
    let player_file = gw.dir().join("old-session.flv");
    let mut player = record_rtmpdump(&url, &player_file, 11.0);
    assert!(gw.wait_for_log("playing", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_secs(2));

    install("two");
    gw.signal("HUP");
    assert!(gw.wait_for_log("TLS certificates reloaded", Duration::from_secs(5)), "{}", gw.logs());
    assert_eq!(served_fingerprint(port, "media.example"), two);
    assert!(expiry("media.example") / 86_400 >= 363, "the reloaded certificate's expiry is shown");

    // A broken certificate is reported and the one in use stays.
    std::fs::write(&live_pem, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    gw.signal("HUP");
    assert!(gw.wait_for_log("reload failed", Duration::from_secs(5)), "{}", gw.logs());
    assert_eq!(served_fingerprint(port, "localhost"), two);

    assert!(publisher.finish().success(), "{}", publisher.describe());
    player.finish();
    // The player joined about 1 s in and the rotation came about 2 s later: 7+ s of video means
    // the old session streamed on well past it.
    assert_good_recording("rtmpdump across the rotation", &player_file, 175, 280);
    let log = gw.logs();
    let sessions: Vec<&str> =
        log.lines().filter(|l| l.contains("stream=live/rotating") && l.contains("closed:")).collect();
    assert_eq!(sessions.len(), 2, "{log}");
    assert!(sessions.iter().all(|l| l.contains("reason=closed")), "{log}");
}

#[test]
fn garbage_plain_rtmp_and_stalled_clients_on_the_tls_port_are_closed_and_logged() {
    let _serial = exclusive();
    require_tool("rtmpdump");
    let config = TWO_LISTENERS.replace("[tls]\n", "[tls]\nhandshake_timeout_secs = 1\n");
    let gw = start("rtmps-garbage", &config);
    let port = gw.addr("rtmps").port();
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
    let plain_url = format!("rtmp://127.0.0.1:{port}/live/s");
    let (ok, _) =
        run("rtmpdump", &["-r", &plain_url, "--live", "-o", "/dev/null", "-m", "5"], Duration::from_secs(15));
    assert!(!ok);

    assert!(gw.wait_for_log_count("TLS handshake failed", 5, Duration::from_secs(5)), "{}", gw.logs());
    let log = gw.logs();
    let failure = |peer_port: u16| {
        let peer = format!("peer=127.0.0.1:{peer_port}");
        log.lines().find(|l| l.contains("TLS handshake failed") && l.contains(&peer)).map(String::from)
    };
    assert!(failure(garbage_port).is_some(), "{log}");
    assert!(failure(rtmp_port).unwrap().contains("does not speak TLS"), "{log}");
    assert!(failure(silent_port).unwrap().contains("no handshake within 1s"), "{log}");

    // The listener keeps serving.
    let ca = gw.dir().join("certs/ca.pem");
    let (ok, out) = s_client(port, &["-verify_return_error", "-CAfile", ca.to_str().unwrap()]);
    assert!(ok, "{out}");
    let mut after = publish_with(&gw.url("rtmps", "live", "after"), 1.0, &[]);
    assert!(after.finish().success(), "{}", after.describe());
}

#[test]
fn rtmpdump_fails_when_tls13_session_tickets_are_sent_and_plays_without_them() {
    let _serial = exclusive();
    require_tool("rtmpdump");
    // rtmpdump plays over RTMPS while ffmpeg publishes over plain RTMP; only the ticket count differs.
    let play = |tickets: usize| {
        let config = TWO_LISTENERS.replace("[tls]\n", &format!("[tls]\ntls13_session_tickets = {tickets}\n"));
        let gw = start("rtmps-tickets", &config);
        let mut publisher = publish_with(&gw.url("rtmp", "live", "t"), 4.0, &[]);
        assert!(gw.wait_for_log("publishing", Duration::from_secs(10)));
        let file = gw.dir().join("t.flv");
        let url = gw.url("rtmps", "live", "t");
        let (_, output) =
            run("rtmpdump", &["-r", &url, "--live", "-o", file.to_str().unwrap()], Duration::from_secs(15));
        publisher.finish();
        // rtmpdump leaves no file, an empty one or a bare FLV header (13 bytes) when it gets no media.
        let bytes = std::fs::metadata(&file).map_or(0, |m| m.len());
        (output, bytes, file, gw)
    };

    let (output, bytes, _, gw) = play(2);
    assert!(output.contains("handshake failed"), "{output}");
    assert!(bytes <= 13, "{bytes} bytes recorded despite the failed handshake");
    assert!(gw.logs().contains("version=Some(TLSv1_3)"), "{}", gw.logs());
    drop(gw);

    // (The gateway, and the directory the recording is in, live until the end.)
    let (output, _, file, gw) = play(0);
    assert!(!output.contains("handshake failed"), "{output}");
    assert_good_recording("rtmpdump over rtmps without tickets", &file, 50, 80);
    assert!(gw.logs().contains("version=Some(TLSv1_3)"), "{}", gw.logs());
}
