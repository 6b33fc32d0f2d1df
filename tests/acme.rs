//! ACME end to end: rtmpx obtains, serves, caches and renews its certificate from Pebble (the
//! ACME test CA, Debian's `pebble`), answering real HTTP-01 and TLS-ALPN-01 validations (Pebble
//! resolves the domain through a small DNS responder run by the test and connects back).
//! Verifying clients (FFmpeg 9, rustls) check the certificate against Pebble's root.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rtmpx_testkit::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The name every certificate is ordered for: clients resolve it without help, and the test's
/// DNS responder sends Pebble to 127.0.0.1 for it.
const DOMAIN: &str = "localhost";
const ISSUED: &str = "ACME certificate issued";
const FAILED: &str = "ACME order for localhost failed";

// ---------------------------------------------------------------------------------------------
// A DNS responder for Pebble: A → 127.0.0.1, every other type → no records.

struct Dns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dns {
    fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("binding the DNS responder");
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let running = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !running.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                if let Some(reply) = dns_reply(&buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Dns { addr, stop, thread: Some(thread) }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// RFC 1035 §4.1: the reply to a one-question query, authoritative, no error.
fn dns_reply(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[4..6] != [0, 1] {
        return None;
    }
    let mut at = 12;
    loop {
        let len = *query.get(at)? as usize;
        at += 1 + len;
        if len == 0 {
            break;
        }
    }
    let question = query.get(12..at + 4)?;
    let qtype = u16::from_be_bytes([query[at], query[at + 1]]);
    let answers = u16::from(qtype == 1);
    let mut reply = vec![query[0], query[1], 0x84 | (query[2] & 0x01), 0x00, 0, 1];
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if answers == 1 {
        // Name: pointer to the question's; type A, class IN, TTL 60, 4 bytes.
        reply.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(reply)
}

// ---------------------------------------------------------------------------------------------
// Pebble

struct Pebble {
    dir: TempDir,
    acme_port: u16,
    management_port: u16,
    proc: Option<Proc>,
    /// Output of earlier runs (restarts), for counting orders.
    earlier_output: String,
}

impl Pebble {
    /// Validates HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of `localhost`, which it
    /// resolves through `dns`; `validity_secs` sets the lifetime of what it issues.
    fn start(http_port: u16, tls_port: u16, validity_secs: Option<u64>, dns: &Dns) -> Pebble {
        assert!(
            Command::new("pebble").arg("-h").output().is_ok(),
            "pebble is missing (Debian: pebble; scripts/test.sh installs it)"
        );
        let dir = TempDir::new("pebble");
        // Pebble's own HTTPS certificate: a development certificate for localhost/127.0.0.1.
        let tls_dir = dir.file("tls");
        let status = Command::new(rtmpx_binary())
            .args(["cert", "--dir"])
            .arg(&tls_dir)
            .output()
            .expect("running rtmpx cert");
        assert!(status.status.success(), "rtmpx cert: {}", String::from_utf8_lossy(&status.stderr));
        let (acme_port, management_port) = (free_port(), free_port());
        let validity =
            validity_secs.map(|s| format!(",\n \"certificateValidityPeriod\": {s}")).unwrap_or_default();
        let config = format!(
            r#"{{"pebble": {{
 "listenAddress": "127.0.0.1:{acme_port}",
 "managementListenAddress": "127.0.0.1:{management_port}",
 "certificate": "{cert}", "privateKey": "{key}",
 "httpPort": {http_port}, "tlsPort": {tls_port},
 "ocspResponderURL": "", "externalAccountBindingRequired": false{validity}
}}}}"#,
            cert = tls_dir.join("cert.pem").display(),
            key = tls_dir.join("key.pem").display(),
        );
        fs::write(dir.file("pebble.json"), config).unwrap();
        fs::write(dir.file("dns"), dns.addr.to_string()).unwrap();
        let mut pebble =
            Pebble { dir, acme_port, management_port, proc: None, earlier_output: String::new() };
        pebble.launch();
        pebble
    }

    /// Starts (again): Pebble keeps nothing across runs, so a new root, no accounts.
    fn launch(&mut self) {
        let mut cmd = Command::new("pebble");
        cmd.arg("-config").arg(self.dir.file("pebble.json"));
        cmd.arg("-dnsserver").arg(fs::read_to_string(self.dir.file("dns")).unwrap());
        // No artificial validation delays, no injected bad nonces: the test is about rtmpx.
        cmd.env("PEBBLE_VA_NOSLEEP", "1").env("PEBBLE_WFE_NONCEREJECT", "0");
        self.proc = Some(Proc::spawn("pebble", cmd, None, Duration::from_secs(600)));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.acme_port)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not listen: {}", self.output());
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop();
            self.earlier_output.push_str(&proc.output());
        }
    }

    fn output(&self) -> String {
        let current = self.proc.as_ref().map(|p| p.output()).unwrap_or_default();
        format!("{}{current}", self.earlier_output)
    }

    /// Orders Pebble accepted, over all its runs.
    fn orders(&self) -> usize {
        self.output().matches("Added order").count()
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The CA that signed Pebble's HTTPS certificate (for `tls.acme.ca_file`).
    fn https_ca(&self) -> PathBuf {
        self.dir.file("tls/ca.pem")
    }

    /// Pebble's current root (management interface `/roots/0`), written to a file.
    fn root(&self, name: &str) -> PathBuf {
        let addr: SocketAddr = ([127, 0, 0, 1], self.management_port).into();
        let pem = https_get(addr, "/roots/0", &self.https_ca());
        assert!(pem.contains("BEGIN CERTIFICATE"), "no root from pebble: {pem}");
        let path = self.dir.file(name);
        fs::write(&path, pem).unwrap();
        path
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("[e2e] pebble output:\n{}", self.output());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verifying TLS clients (rustls)

fn client_config(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

fn tls_connect(
    addr: SocketAddr,
    name: &str,
    ca_file: &Path,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(client_config(ca_file), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

fn https_get(addr: SocketAddr, path: &str, ca_file: &Path) -> String {
    let mut tls = tls_connect(addr, "127.0.0.1", ca_file).unwrap_or_else(|e| panic!("https {addr}: {e}"));
    write!(tls, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or(raw)
}

/// The serial (`aa:bb:...`) of the certificate a verifying TLS client gets at `addr` for SNI
/// `localhost`, trusting only `root`.
fn served_serial(addr: SocketAddr, root: &Path) -> Result<String, String> {
    let tls = tls_connect(addr, DOMAIN, root)?;
    let leaf = tls.conn.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
    Ok(der_serial(leaf.as_ref()))
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial INTEGER, ...
fn der_serial(der: &[u8]) -> String {
    fn header(b: &[u8]) -> (u8, usize, usize) {
        let (tag, first) = (b[0], b[1] as usize);
        if first < 0x80 {
            return (tag, 2, first);
        }
        let n = first & 0x7f;
        let len = b[2..2 + n].iter().fold(0usize, |acc, &x| acc << 8 | x as usize);
        (tag, 2 + n, len)
    }
    let (_, outer, _) = header(der);
    let tbs = &der[outer..];
    let (_, tbs_header, _) = header(tbs);
    let mut at = &tbs[tbs_header..];
    let (tag, h, len) = header(at);
    if tag == 0xA0 {
        at = &at[h + len..];
    }
    let (tag, h, len) = header(at);
    assert_eq!(tag, 0x02, "serial is an INTEGER");
    at[h..h + len].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

// ---------------------------------------------------------------------------------------------
// The gateway and its clients

/// A DNS responder, a Pebble (`validity` seconds per certificate, or its default) that validates
/// against two fresh ports, a cache folder, and the gateway config that uses them.
struct Setup {
    pebble: Pebble,
    cache: TempDir,
    rtmps_port: u16,
    config: String,
    // Last: Pebble asks it until Pebble is gone.
    _dns: Dns,
}

fn setup(validity: Option<u64>, challenge: &str) -> Setup {
    let dns = Dns::start();
    let (rtmp_port, rtmps_port) = (free_port(), free_port());
    let pebble = Pebble::start(rtmp_port, rtmps_port, validity, &dns);
    let cache = TempDir::new("acme-cache");
    let config = gateway_config(
        rtmp_port,
        rtmps_port,
        &pebble.directory(),
        &pebble.https_ca(),
        cache.path(),
        challenge,
    );
    Setup { pebble, cache, rtmps_port, config, _dns: dns }
}

fn gateway_config(
    rtmp_port: u16,
    rtmps_port: u16,
    directory: &str,
    ca_file: &Path,
    cache: &Path,
    challenge: &str,
) -> String {
    format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:{rtmp_port}"

[[listener]]
proto = "rtmps"
addr = "127.0.0.1:{rtmps_port}"
tls = "acme"

[[app]]
name = "live"

[admin]
addr = "127.0.0.1:0"

[tls]
cert_dir = "$DIR/dev"

[tls.acme]
directory = "{directory}"
domains = ["{DOMAIN}"]
contact = ["mailto:ops@example.com"]
ca_file = "{ca_file}"
cache_dir = "{cache}"
challenges = ["{challenge}"]
retry_initial_secs = 1
retry_max_secs = 4
order_timeout_secs = 20
"#,
        ca_file = ca_file.display(),
        cache = cache.display(),
    )
}

/// The `serial=` field of a log line.
fn serial_in(line: &str) -> String {
    line.split("serial=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("serial= in the line")
        .to_owned()
}

/// FFmpeg 9 publishing the test source for `seconds`, with `extra` output options.
fn publish_ffmpeg9(url: &str, seconds: f64, extra: &[&str]) -> Proc {
    let output_args = extra.iter().map(|arg| arg.to_string()).collect();
    publish_by(&ffmpeg9(), url, &PublishOptions { output_args, ..PublishOptions::new(seconds) })
}

/// The serial of the `n`th (from 0) certificate the gateway logged as issued.
fn nth_issued_serial(gw: &Gateway, n: usize) -> String {
    let logs = gw.logs();
    serial_in(logs.lines().filter(|l| l.contains(ISSUED)).nth(n).expect("that many issued certificates"))
}

fn orders_total(gw: &Gateway, result: &str) -> u64 {
    sample(&metrics(admin_addr(gw)), &format!("rtmpx_acme_orders_total{{result=\"{result}\"}}"))
}

/// The largest step between consecutive video timestamps of an FLV recording, in ms.
fn largest_video_gap_ms(path: &Path) -> u32 {
    let video: Vec<u32> = flv_tags(path).iter().filter(|t| t.tag_type == 9).map(|t| t.timestamp).collect();
    video.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn http01_on_the_rtmp_port_gives_a_certificate_ffmpeg9_verifies_and_a_restart_reuses_it() {
    let _serial = exclusive();
    require_tool("rtmpdump");
    let Setup { pebble, cache, rtmps_port, config, _dns, .. } = setup(None, "http-01");
    let gw = Gateway::start(&config);
    let issued = gw.wait_for_log_line(&[ISSUED], Duration::from_secs(60)).expect("no certificate issued");
    let serial = serial_in(&issued);
    assert!(pebble.output().contains("Attempting to validate w/ HTTP"), "Pebble validated over HTTP-01");
    let root = pebble.root("root.pem");
    let rtmps: SocketAddr = ([127, 0, 0, 1], rtmps_port).into();
    assert_eq!(served_serial(rtmps, &root).unwrap(), serial);
    assert_eq!(orders_total(&gw, "ok"), 1);

    // FFmpeg 9 publishes verifying against Pebble's root only; rtmpdump plays over rtmps.
    let url = format!("rtmps://{DOMAIN}:{rtmps_port}/live/acme");
    let root_arg = root.to_str().unwrap();
    let mut publisher = publish_ffmpeg9(&url, 8.0, &["-tls_verify", "1", "-ca_file", root_arg]);
    assert!(
        gw.wait_for_log_line(&["publishing", "live/acme"], Duration::from_secs(20)).is_some(),
        "{}",
        publisher.describe()
    );
    let scratch = TempDir::new("acme-play");
    let recording = scratch.file("played.flv");
    let mut player = record_rtmpdump(&url, &recording, 4.0);
    player.finish();
    assert!(publisher.finish().success(), "{}", publisher.describe());
    assert_good_recording("rtmpdump over rtmps", &recording, 50, 50);
    // The same FFmpeg refuses the server with any other trust anchor (it really verifies).
    let dev_ca = gw.dir().join("dev/ca.pem");
    let mut untrusting =
        publish_ffmpeg9(&url, 1.0, &["-tls_verify", "1", "-ca_file", dev_ca.to_str().unwrap()]);
    assert!(!untrusting.finish().success(), "FFmpeg 9 accepted the ACME certificate without its root");

    // A restart serves the cached certificate and orders nothing.
    drop(gw);
    let orders_before = pebble.orders();
    assert_eq!(orders_before, 1);
    let gw = Gateway::start(&config);
    assert!(gw
        .wait_for_log_line(&["using the cached ACME certificate", &serial], Duration::from_secs(5))
        .is_some());
    assert_eq!(served_serial(rtmps, &root).unwrap(), serial);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(gw.count_log(ISSUED), 0, "{}", gw.logs());
    assert_eq!(gw.count_log("ACME account registered"), 0);
    assert_eq!(orders_total(&gw, "ok") + orders_total(&gw, "failed"), 0);
    assert_eq!(pebble.orders(), orders_before, "the restart made a new order");
    // One folder per CA directory, holding the account key and the certificate.
    let folders: Vec<PathBuf> = fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    assert!(
        folders[0].join("account.key").exists() && folders[0].join("localhost.pem").exists(),
        "{folders:?}"
    );
}

#[test]
fn tls_alpn01_on_the_rtmps_port_gives_a_certificate_ffmpeg9_verifies() {
    let _serial = exclusive();
    let Setup { pebble, cache: _cache, rtmps_port, config, _dns, .. } = setup(None, "tls-alpn-01");
    // Debug logs of the TLS acceptor say when a validation handshake was answered.
    let gw = Gateway::start_in(TempDir::new("gateway"), &config, "info,rtmpx::tls=debug");
    let issued = gw.wait_for_log_line(&[ISSUED], Duration::from_secs(60)).expect("no certificate issued");
    assert!(gw.count_log("answered an ACME tls-alpn-01 validation") >= 1, "{}", gw.logs());
    assert!(!pebble.output().contains("Attempting to validate w/ HTTP"), "HTTP-01 was used");
    let root = pebble.root("root.pem");
    let rtmps: SocketAddr = ([127, 0, 0, 1], rtmps_port).into();
    assert_eq!(served_serial(rtmps, &root).unwrap(), serial_in(&issued));

    let url = format!("rtmps://{DOMAIN}:{rtmps_port}/live/alpn");
    let mut publisher = publish_ffmpeg9(&url, 3.0, &["-tls_verify", "1", "-ca_file", root.to_str().unwrap()]);
    assert!(publisher.finish().success(), "{}", publisher.describe());
    assert!(
        gw.wait_for_log_line(&["publishing", "live/alpn"], Duration::from_secs(5)).is_some(),
        "{}",
        gw.logs()
    );
}

#[test]
fn short_lived_certificates_renew_under_live_sessions_and_a_ca_outage_keeps_the_old_one() {
    let _serial = exclusive();
    require_tool("rtmpdump");
    // 30-second certificates: renewed about 20 s after issuance.
    let Setup { mut pebble, cache: _cache, rtmps_port, config, _dns, .. } = setup(Some(30), "http-01");
    let gw = Gateway::start(&config);
    let first = serial_in(&gw.wait_for_log_line(&[ISSUED], Duration::from_secs(60)).expect("no certificate"));
    let root = pebble.root("root-1.pem");
    let rtmps: SocketAddr = ([127, 0, 0, 1], rtmps_port).into();

    // A verifying publisher and a player stay connected through every renewal below.
    let url = format!("rtmps://{DOMAIN}:{rtmps_port}/live/renew");
    let mut publisher =
        publish_ffmpeg9(&url, 90.0, &["-tls_verify", "1", "-ca_file", root.to_str().unwrap()]);
    assert!(
        gw.wait_for_log_line(&["publishing", "live/renew"], Duration::from_secs(20)).is_some(),
        "{}",
        publisher.describe()
    );
    let scratch = TempDir::new("acme-play");
    let recording = scratch.file("renew.flv");
    let mut player = record_rtmpdump(&url, &recording, 75.0);

    assert!(gw.wait_for_log_count(ISSUED, 2, Duration::from_secs(45)), "no renewal:\n{}", gw.logs());
    let second = nth_issued_serial(&gw, 1);
    assert_ne!(first, second, "the renewal kept the serial");
    assert_eq!(served_serial(rtmps, &root).unwrap(), second, "new clients get the renewed certificate");

    // The CA goes away: the next renewal fails, is logged and counted; the certificate stays.
    pebble.stop();
    assert!(gw.wait_for_log(FAILED, Duration::from_secs(40)), "no failed renewal:\n{}", gw.logs());
    assert!(orders_total(&gw, "failed") >= 1);
    assert_eq!(served_serial(rtmps, &root).unwrap(), second, "the old certificate keeps serving");
    // It comes back (a new Pebble: new root, no accounts) and the retry succeeds.
    pebble.launch();
    assert!(
        gw.wait_for_log_count(ISSUED, 3, Duration::from_secs(30)),
        "no renewal after the CA returned:\n{}",
        gw.logs()
    );
    let third = nth_issued_serial(&gw, 2);
    let new_root = pebble.root("root-2.pem");
    assert_eq!(served_serial(rtmps, &new_root).unwrap(), third);
    assert!(served_serial(rtmps, &root).is_err(), "the new certificate chains to the new root only");

    // Both clients were never interrupted.
    assert!(publisher.try_status().is_none(), "the publisher stopped: {}", publisher.describe());
    assert!(player.try_status().is_none(), "the player stopped: {}", player.describe());
    let text = metrics(admin_addr(&gw));
    assert_eq!(sample(&text, "rtmpx_sessions{variant=\"rtmps\",role=\"publisher\"}"), 1);
    assert_eq!(sample(&text, "rtmpx_sessions{variant=\"rtmps\",role=\"player\"}"), 1);
    assert!(sample(&text, "rtmpx_tls_certificate_expiry_seconds{name=\"localhost\",source=\"acme\"}") <= 30);
    let closed =
        gw.logs().lines().filter(|l| l.contains("closed: peer=") && !l.contains("role=none")).count();
    assert_eq!(closed, 0, "a media session closed during the renewals:\n{}", gw.logs());
    player.stop();
    publisher.stop();
    assert_good_recording("rtmpdump through the renewals", &recording, 500, 500);
    let gap = largest_video_gap_ms(&recording);
    assert!(gap < 500, "the player saw a {gap} ms gap in the video");
}

/// A "CA" that accepts connections and either says nothing or answers garbage.
fn bad_ca(garbage: bool) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let running = stop.clone();
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        while !running.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut socket, _)) => {
                    if garbage {
                        let _ = socket.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{garbage}\x00\xff\x16\x03",
                        );
                    }
                    held.push(socket);
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (port, stop)
}

#[test]
fn a_silent_or_garbage_ca_never_holds_up_the_listeners_and_unknown_tokens_get_404() {
    let _serial = exclusive();
    for garbage in [false, true] {
        let (ca_port, stop) = bad_ca(garbage);
        let (rtmp_port, rtmps_port) = (free_port(), free_port());
        let cache = TempDir::new("acme-cache");
        let unused_ca = TempDir::new("acme-ca");
        let ca_file = unused_ca.file("ca.pem");
        Command::new(rtmpx_binary()).args(["cert", "--dir"]).arg(unused_ca.path()).output().unwrap();
        let directory = format!("https://127.0.0.1:{ca_port}/dir");
        let config = gateway_config(rtmp_port, rtmps_port, &directory, &ca_file, cache.path(), "http-01")
            .replace("order_timeout_secs = 20", "order_timeout_secs = 5");
        let started = Instant::now();
        let gw = Gateway::start(&config);
        assert!(started.elapsed() < Duration::from_secs(10), "startup took {:?}", started.elapsed());

        // The listeners work: RTMP publishes, RTMPS serves the development certificate.
        let mut publisher = publish_testsrc(&format!("rtmp://127.0.0.1:{rtmp_port}/live/plain"), 1.0);
        assert!(publisher.finish().success(), "{}", publisher.describe());
        let rtmps: SocketAddr = ([127, 0, 0, 1], rtmps_port).into();
        assert!(served_serial(rtmps, &gw.dir().join("dev/ca.pem")).is_ok(), "no development certificate");

        // Challenge paths for unknown tokens (and other methods) are 404, and nothing else breaks.
        let rtmp: SocketAddr = ([127, 0, 0, 1], rtmp_port).into();
        assert_eq!(http(rtmp, "GET", "/.well-known/acme-challenge/unknown-token", None).status, 404);
        assert_eq!(http(rtmp, "GET", "/.well-known/acme-challenge/", None).status, 404);
        let long = format!("/.well-known/acme-challenge/{}", "A".repeat(4000));
        assert_eq!(http(rtmp, "GET", &long, None).status, 404);
        assert_eq!(http(rtmp, "POST", "/.well-known/acme-challenge/x", None).status, 404);

        let line = gw.wait_for_log_line(&[FAILED], Duration::from_secs(20)).expect("the failure is logged");
        assert!(line.contains("no ACME certificate yet"), "{line}");
        assert!(orders_total(&gw, "failed") >= 1);
        assert_eq!(orders_total(&gw, "ok"), 0);
        stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn cert_acme_issues_once_and_exits_then_reuses_the_cache() {
    let _serial = exclusive();
    let Setup { pebble, cache, config, _dns, .. } = setup(None, "http-01");
    let config = config.replace("$DIR", &cache.path().display().to_string());
    let config_path = cache.file("rtmpx.toml");
    fs::write(&config_path, config).unwrap();
    let cert_acme = || {
        let mut cmd = Command::new(rtmpx_binary());
        cmd.args(["cert", "--acme", "--config"]).arg(&config_path);
        let (status, out, err) = run_bounded(cmd, Duration::from_secs(60));
        assert!(status.success(), "rtmpx cert --acme: {out}{err}");
        out.lines().find_map(|l| l.strip_prefix("serial:")).expect("a serial line").trim().to_owned()
    };
    let first = cert_acme();
    assert_eq!(pebble.orders(), 1);
    assert_eq!(cert_acme(), first, "the second run reuses the cached certificate");
    assert_eq!(pebble.orders(), 1);
}
