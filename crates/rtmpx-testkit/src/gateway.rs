//! The gateway: `rtmpx serve` on a config written for the test, its listeners read from its log.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::logs::{spawn_line_reader, LogBuffer};
use crate::{rss_kib_of, rtmpx_binary, send_signal, TempDir};

/// How long the gateway may take from spawn to `rtmpx ready` (the build is not counted).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `rtmpx serve`. Killed on drop; its log is printed if the test panicked.
pub struct Gateway {
    child: Child,
    logs: Arc<LogBuffer>,
    readers: Vec<JoinHandle<()>>,
    /// (scheme, app) → base URL `scheme://host:port/app`.
    urls: BTreeMap<(String, String), String>,
    dir: TempDir,
}

/// One rtmp listener on 127.0.0.1 with a kernel-chosen port, and the app `live`.
pub const DEFAULT_TEST_CONFIG: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"
"#;

impl Gateway {
    /// [`DEFAULT_TEST_CONFIG`].
    pub fn start_default() -> Gateway {
        Gateway::start(DEFAULT_TEST_CONFIG)
    }

    /// Writes `config_toml` to a temp dir, runs `rtmpx serve --config` on it and waits for
    /// `rtmpx ready`. Use port 0 in listener addresses: the real ports are read from the log.
    /// `$DIR` in the config names that temp dir (e.g. `cert_dir = "$DIR/certs"`).
    pub fn start(config_toml: &str) -> Gateway {
        let log_filter = std::env::var("RTMPX_E2E_LOG").unwrap_or_else(|_| "info".into());
        Gateway::start_in(TempDir::new("gateway"), config_toml, &log_filter)
    }

    /// Like [`start`](Self::start), in `dir` (files the config names can be put there first;
    /// `$DIR` is its path) and with `RUST_LOG=log_filter`.
    pub fn start_in(dir: TempDir, config_toml: &str, log_filter: &str) -> Gateway {
        Gateway::start_under(&[], dir, config_toml, log_filter)
    }

    /// Like [`start_in`](Self::start_in), run by a launcher: `launcher` is a command that runs the
    /// rest of its arguments (e.g. `["prlimit", "--nofile=200:400", "--"]`) and keeps its pid.
    pub fn start_under(launcher: &[&str], dir: TempDir, config_toml: &str, log_filter: &str) -> Gateway {
        let binary = rtmpx_binary();
        let config_path = dir.file("rtmpx.toml");
        let config_toml = config_toml.replace("$DIR", &dir.path().display().to_string());
        fs::write(&config_path, config_toml).expect("writing the gateway config");
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let logs = Arc::new(LogBuffer::default());
        let readers = vec![
            spawn_line_reader(child.stdout.take().expect("piped stdout"), logs.clone()),
            spawn_line_reader(child.stderr.take().expect("piped stderr"), logs.clone()),
        ];
        let mut gateway = Gateway { child, logs, readers, urls: BTreeMap::new(), dir };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if gateway.logs.wait_for(Duration::from_millis(100), |l| l.contains("rtmpx ready")).is_some() {
                break;
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                gateway.join_readers();
                panic!("rtmpx exited before it was ready ({status}); log:\n{}", gateway.logs());
            }
            if Instant::now() >= deadline {
                panic!("rtmpx was not ready within {READY_TIMEOUT:?}; log:\n{}", gateway.logs());
            }
        }
        for line in gateway.logs().lines() {
            if let Some((scheme, app, base)) = parse_listener_line(line) {
                gateway.urls.insert((scheme, app), base);
            }
        }
        assert!(!gateway.urls.is_empty(), "no listener lines before `rtmpx ready`; log:\n{}", gateway.logs());
        gateway
    }

    /// `proto://host:port/app/stream` of the listener for `proto` (e.g. "rtmp").
    pub fn url(&self, proto: &str, app: &str, stream: &str) -> String {
        match self.urls.get(&(proto.to_owned(), app.to_owned())) {
            Some(base) => format!("{base}/{stream}"),
            None => panic!("no {proto} listener with app {app:?}; known: {:?}", self.urls.keys()),
        }
    }

    /// The socket address of the first listener for `proto`.
    pub fn addr(&self, proto: &str) -> SocketAddr {
        let (_, base) = self
            .urls
            .iter()
            .find(|((scheme, _), _)| scheme == proto)
            .unwrap_or_else(|| panic!("no {proto} listener; known: {:?}", self.urls.keys()));
        let host_port =
            base.split("://").nth(1).and_then(|rest| rest.split('/').next()).expect("listener URL");
        host_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("cannot resolve {host_port}"))
    }

    /// Everything logged so far, one line per line.
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.logs.wait_for(timeout, |l| l.contains(needle)).is_some()
    }

    /// Waits until a log line contains every needle; returns the line.
    pub fn wait_for_log_line(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        self.logs.wait_for(timeout, |l| needles.iter().all(|n| l.contains(n)))
    }

    /// Waits until at least `count` log lines contain `needle`.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.count_log(needle) < count {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(25));
        }
        true
    }

    /// How many log lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.logs
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway's directory (its config, generated certificates, `$DIR` in the config).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file the gateway runs with: rewrite it and send SIGHUP to reload.
    pub fn config_path(&self) -> PathBuf {
        self.dir.file("rtmpx.toml")
    }

    /// Current resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
            .unwrap_or_else(|| panic!("no VmRSS for rtmpx (exited?); log:\n{}", self.logs()))
    }

    /// Sends a signal by name: "TERM", "HUP", "INT"...
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_readers();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.join_readers();
        if thread::panicking() {
            eprintln!("[e2e] rtmpx log:\n{}", self.logs());
        }
    }
}

/// `rtmp listener on 127.0.0.1:41234: publish and play at rtmp://127.0.0.1:41234/live/<stream>`
/// → ("rtmp", "live", "rtmp://127.0.0.1:41234/live").
fn parse_listener_line(line: &str) -> Option<(String, String, String)> {
    if !line.contains(" listener on ") {
        return None;
    }
    let url = line.rsplit(" at ").next()?.split_whitespace().next()?;
    let base = url.strip_suffix("/<stream>")?;
    let (scheme, rest) = base.split_once("://")?;
    let app = rest.split_once('/')?.1;
    Some((scheme.to_owned(), app.to_owned(), base.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_lines_parse() {
        let line = "2026-01-01T00:00:00Z  INFO rtmp listener on 127.0.0.1:41234: publish and play at \
                    rtmp://127.0.0.1:41234/live/<stream>";
        assert_eq!(
            parse_listener_line(line),
            Some(("rtmp".into(), "live".into(), "rtmp://127.0.0.1:41234/live".into()))
        );
        assert_eq!(parse_listener_line("INFO rtmpx ready"), None);
    }
}
