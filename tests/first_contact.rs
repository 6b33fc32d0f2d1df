//! What a new user meets first: the shipped configurations start as they are and every listener
//! answers, `check-config` refuses what `serve` would fail on (naming the key), and Ctrl-C on the
//! embedded default says how to stop at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rtmpx_testkit::{free_port, metrics, rtmpx_binary, run_bounded, send_signal, Proc, TempDir};

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The `IP:PORT` of an uncommented `addr = "IP:PORT"` line.
fn addr_of(line: &str) -> Option<SocketAddr> {
    let rest = line.trim_start().strip_prefix("addr = \"")?;
    rest[..rest.find('"')?].parse().ok()
}

/// `text` with every port of an `addr` line moved to a free one, consistently (ports that were
/// equal stay equal), so the test runs beside anything already on 1935 or 8080.
fn with_free_ports(text: &str) -> String {
    let mut moved: HashMap<u16, u16> = HashMap::new();
    let mut out = String::new();
    for line in text.lines() {
        match addr_of(line).filter(|a| a.port() != 0) {
            Some(addr) => {
                let used: Vec<u16> = moved.values().copied().collect();
                let port = *moved.entry(addr.port()).or_insert_with(|| {
                    std::iter::repeat_with(free_port).find(|p| !used.contains(p)).unwrap()
                });
                let from = format!(":{}\"", addr.port());
                out.push_str(&line.replacen(&from, &format!(":{port}\""), 1));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `rtmpx --config FILE` (no `serve`: it is the default command) in `dir`, ready.
fn start(dir: &TempDir, config: &str) -> Proc {
    let file = dir.file("config.toml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = Command::new(rtmpx_binary());
    cmd.arg("--config").arg(&file).current_dir(dir.path()).env("NO_COLOR", "1");
    let mut gateway = Proc::spawn("rtmpx", cmd, None, Duration::from_secs(120));
    let started = Instant::now();
    while !gateway.output().contains("rtmpx ready") {
        assert!(gateway.try_status().is_none(), "rtmpx did not start: {}", gateway.describe());
        assert!(started.elapsed() < Duration::from_secs(20), "rtmpx not ready: {}", gateway.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    gateway
}

/// `(scheme, URL of app live)` of every listener the log announced, and the admin address.
fn announced(log: &str) -> (Vec<(String, String)>, Option<SocketAddr>) {
    let listeners = log
        .lines()
        .filter_map(|l| {
            l.split_once(" listener on ")?.1.split_once("publish and play at ")?.1.split_whitespace().next()
        })
        .filter_map(|url| url.strip_suffix("/<stream>"))
        .map(|url| (url.split("://").next().unwrap().to_owned(), url.to_owned()))
        .collect();
    let admin = log.lines().find_map(|l| {
        l.split_once("admin listener on ")?.1.split_whitespace().next()?.trim_end_matches(':').parse().ok()
    });
    (listeners, admin)
}

/// Connects (handshake and `connect` answered) over `scheme` to `base`'s host, port and app.
fn connect(scheme: &str, base: &str) -> Result<(), String> {
    let url = format!("{scheme}://{}/probe", base.split_once("://").unwrap().1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let parsed = rtmpx_client::RtmpUrl::parse(&url).map_err(|e| e.to_string())?;
        let mut options = rtmpx_client::ClientOptions::default();
        // The development certificate, which clients skip verifying.
        options.tls.dangerous_accept_any_certificate = true;
        let conn =
            rtmpx_client::Connection::connect(&parsed, &options).await.map_err(|e| format!("{url}: {e}"))?;
        conn.close().await.map_err(|e| format!("{url}: closing: {e}"))
    })
}

/// What a client of each listener kind may speak to it.
fn variants(listener: &str) -> &'static [&'static str] {
    match listener {
        "rtmp" => &["rtmp", "rtmpe", "rtmpt", "rtmpte"],
        "rtmpt" => &["rtmpt", "rtmpte"],
        "rtmps" => &["rtmps", "rtmpts"],
        "rtmpts" => &["rtmpts"],
        other => panic!("unknown listener {other}"),
    }
}

fn check_config(file: &Path) -> (bool, String) {
    let mut cmd = Command::new(rtmpx_binary());
    cmd.arg("check-config").arg(file);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(30));
    (status.success(), format!("{out}{err}"))
}

#[test]
fn shipped_configs_start_as_they_are_and_every_listener_answers() {
    let mut default_cmd = Command::new(rtmpx_binary());
    default_cmd.arg("default-config");
    let (status, embedded, _) = run_bounded(default_cmd, Duration::from_secs(30));
    assert!(status.success());
    assert_eq!(embedded, repo_file("config/default.toml"), "default-config prints config/default.toml");
    for (name, text) in [
        ("config/rtmpx.toml", repo_file("config/rtmpx.toml")),
        ("config/quickstart.toml", repo_file("config/quickstart.toml")),
        ("the embedded default", embedded),
    ] {
        let dir = TempDir::new("first-contact");
        let listeners = text.lines().filter(|l| l.trim() == "[[listener]]").count();
        // As shipped: check-config passes, and no listener needs privileges.
        std::fs::write(dir.file("as-shipped.toml"), &text).unwrap();
        let (ok, said) = check_config(&dir.file("as-shipped.toml"));
        assert!(ok, "{name}: {said}");
        for addr in text.lines().filter_map(addr_of) {
            assert!(addr.port() >= 1024, "{name}: {addr} needs privileges");
        }
        assert!(
            !text.lines().any(|l| l.contains("example.com") && !l.trim_start().starts_with('#')),
            "{name}"
        );

        let mut gateway = start(&dir, &with_free_ports(&text));
        let log = gateway.output();
        let (announced, admin) = announced(&log);
        assert_eq!(
            announced.iter().filter(|(_, u)| u.ends_with("/live")).count(),
            listeners,
            "{name}: {log}"
        );
        for (listener, base) in announced.iter().filter(|(_, u)| u.ends_with("/live")) {
            for scheme in variants(listener) {
                connect(scheme, base).unwrap_or_else(|e| panic!("{name}: {e}\n{}", gateway.output()));
            }
        }
        let admin = admin.unwrap_or_else(|| panic!("{name} has no admin listener: {log}"));
        assert!(metrics(admin).contains("rtmpx_sessions_opened_total"), "{name}");
        gateway.stop();
    }
}

/// The embedded default drains for a short while, and Ctrl-C says so on the terminal.
#[test]
fn ctrl_c_on_the_embedded_default_says_a_second_one_stops_at_once() {
    let dir = TempDir::new("first-contact-ctrl-c");
    let mut gateway = start(&dir, &with_free_ports(&repo_file("config/default.toml")));
    assert!(
        gateway.output().contains("app live: anyone who reaches 0.0.0.0:"),
        "the embedded default warns that anyone may publish: {}",
        gateway.describe()
    );
    let (listeners, _) = announced(&gateway.output());
    let base = &listeners[0].1;
    let url = rtmpx_client::RtmpUrl::parse(&format!("{base}/cam")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut publisher = runtime.block_on(async {
        let mut conn = rtmpx_client::Connection::connect(&url, &Default::default()).await.unwrap();
        conn.publish("cam").await.unwrap();
        conn
    });
    send_signal(gateway.id(), "INT");
    let started = Instant::now();
    while !gateway.output().contains("Press Ctrl-C again to stop at once") {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", gateway.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gateway.output().contains("for up to 5s"), "{}", gateway.describe());
    send_signal(gateway.id(), "INT");
    let second = Instant::now();
    while gateway.try_status().is_none() {
        assert!(second.elapsed() < Duration::from_secs(4), "a second Ctrl-C: {}", gateway.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gateway.output().contains("second signal"), "{}", gateway.describe());
    runtime.block_on(async { while let Ok(Some(_)) = publisher.next_event().await {} });
}

/// Each case: a configuration `serve` cannot start with, and the key the error must name.
/// `$DIR` is the case's directory; `$PORT` a free port.
fn refused_cases() -> Vec<(&'static str, String, &'static str)> {
    let listener =
        |proto: &str, addr: &str| format!("[[listener]]\nproto = \"{proto}\"\naddr = \"{addr}\"\n");
    let app = "[[app]]\nname = \"live\"\n";
    let rtmps = |cert: &str, key: &str| {
        format!(
            "[[listener]]\nproto = \"rtmps\"\naddr = \"127.0.0.1:0\"\ntls = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n{app}"
        )
    };
    vec![
        ("missing certificate", rtmps("$DIR/missing.pem", "$DIR/one/key.pem"), "listener[0].tls[0].cert"),
        ("missing key", rtmps("$DIR/one/cert.pem", "$DIR/missing.key"), "listener[0].tls[0].key"),
        (
            "unreadable certificate (a directory)",
            rtmps("$DIR/one", "$DIR/one/key.pem"),
            "listener[0].tls[0].cert",
        ),
        (
            "certificate that is no PEM",
            rtmps("$DIR/garbage.pem", "$DIR/one/key.pem"),
            "listener[0].tls[0].cert",
        ),
        ("key that is no key", rtmps("$DIR/one/cert.pem", "$DIR/garbage.pem"), "listener[0].tls[0].key"),
        (
            "key of another certificate",
            rtmps("$DIR/one/cert.pem", "$DIR/two/key.pem"),
            "listener[0].tls[0].key",
        ),
        (
            "corrupt development certificate",
            format!("{}{app}[tls]\ncert_dir = \"$DIR/corrupt\"\n", listener("rtmps", "127.0.0.1:0")),
            "tls.cert_dir",
        ),
        (
            "two listeners on one address",
            format!("{}{}{app}", listener("rtmp", "127.0.0.1:$PORT"), listener("rtmpt", "127.0.0.1:$PORT")),
            "listener[1].addr",
        ),
        (
            "a listener on the wildcard and one on loopback, same port",
            format!("{}{}{app}", listener("rtmp", "0.0.0.0:$PORT"), listener("rtmpt", "127.0.0.1:$PORT")),
            "listener[1].addr",
        ),
        (
            "a listener and the admin on one address",
            format!("{}{app}[admin]\naddr = \"127.0.0.1:$PORT\"\n", listener("rtmpt", "0.0.0.0:$PORT")),
            "admin.addr",
        ),
        (
            "a push URL that does not parse",
            format!("{}{app}push = [{{ url = \"rtmp//origin/live\" }}]\n", listener("rtmp", "127.0.0.1:0")),
            "app[0].push[0].url",
        ),
        (
            "a pull URL that does not parse",
            format!("{}{app}pull = {{ url = \"origin:1935/live\" }}\n", listener("rtmp", "127.0.0.1:0")),
            "app[0].pull.url",
        ),
        (
            "an on_publish URL that is not http://",
            format!("{}{app}on_publish = \"ftp://auth.lan/publish\"\n", listener("rtmp", "127.0.0.1:0")),
            "app[0].on_publish",
        ),
        (
            "an on_play_done URL without a host",
            format!("{}{app}on_play_done = \"http:///done\"\n", listener("rtmp", "127.0.0.1:0")),
            "app[0].on_play_done",
        ),
        (
            "a relay CA file that is missing",
            format!("{}{app}[relay]\nca_file = \"$DIR/missing-ca.pem\"\n", listener("rtmp", "127.0.0.1:0")),
            "relay.ca_file",
        ),
    ]
}

/// `check-config` runs every check `serve` runs before it binds: each case fails both the same
/// way, naming the key, and a valid file with the same certificates passes both.
#[test]
fn check_config_refuses_what_serve_would_fail_on_and_names_the_key() {
    let dir = TempDir::new("first-contact-refused");
    for (sub, hosts) in [("one", "one.test"), ("two", "two.test")] {
        let mut cmd = Command::new(rtmpx_binary());
        cmd.args(["cert", "--host", hosts, "--dir"]).arg(dir.file(sub));
        let (status, _, err) = run_bounded(cmd, Duration::from_secs(30));
        assert!(status.success(), "{err}");
    }
    std::fs::write(dir.file("garbage.pem"), "-----BEGIN NOTHING-----\nxx\n").unwrap();
    std::fs::create_dir_all(dir.file("corrupt")).unwrap();
    std::fs::write(dir.file("corrupt/cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.file("corrupt/key.pem"), "not a key").unwrap();
    let port = free_port().to_string();
    let dir_text = dir.path().display().to_string();
    for (case, text, key) in refused_cases() {
        let file = dir.file("case.toml");
        std::fs::write(&file, text.replace("$DIR", &dir_text).replace("$PORT", &port)).unwrap();
        let (ok, said) = check_config(&file);
        assert!(!ok, "check-config accepted {case}: {said}");
        assert!(said.contains(key), "check-config on {case} does not name {key}: {said}");
        let mut serve = Command::new(rtmpx_binary());
        serve.arg("serve").arg("--config").arg(&file);
        let (status, out, err) = run_bounded(serve, Duration::from_secs(20));
        assert!(!status.success() && err.contains(key), "serve on {case}: {status}\n{out}{err}");
    }
    // The certificates themselves are fine.
    let good = format!(
        "[[listener]]\nproto = \"rtmps\"\naddr = \"127.0.0.1:0\"\n\
         tls = [{{ cert = \"{d}/one/cert.pem\", key = \"{d}/one/key.pem\" }}]\n\
         [[app]]\nname = \"live\"\n[relay]\nca_file = \"{d}/one/ca.pem\"\n",
        d = dir_text
    );
    std::fs::write(dir.file("good.toml"), good).unwrap();
    let (ok, said) = check_config(&dir.file("good.toml"));
    assert!(ok, "{said}");
}
