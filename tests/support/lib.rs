//! Support code for the end-to-end tests: starting the gateway, nginx-rtmp and real clients
//! (ffmpeg, ffprobe, rtmpdump), and reading what they recorded.
//!
//! Rules every helper follows:
//! - Everything is bounded in time; a hung client or server turns into a failure, not a hang.
//! - Every child process is wrapped in a guard that kills it when dropped (also on panic).
//! - A missing client tool is a failure with a message saying how to install it, never a skip.
//! - Heavy tests take [`exclusive`] first, so on a 2-core machine they run one at a time even
//!   though libtest runs a binary's tests on several threads (cargo runs test binaries one
//!   after the other, so one in-process lock is enough).
//!
//! Environment knobs: `RTMPX_BIN` (use this binary instead of building `rtmpx`),
//! `RTMPX_E2E_KEEP` (keep temporary directories and logs), `RTMPX_E2E_VERBOSE` (echo gateway
//! log lines as they arrive).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the gateway may take from spawn to `rtmpx ready` (the build is not counted).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where Debian's libnginx-mod-rtmp puts the module.
pub const NGINX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// Serialises heavy tests (encoders, many clients) within one test binary.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

// ---------------------------------------------------------------------------------------------
// Temporary directories

/// A fresh directory under the system temp dir, removed on drop (kept when the test panics or
/// `RTMPX_E2E_KEEP` is set, and its path is printed then).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rtmpx-e2e-{label}-{}-{n}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory (the file is not created).
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Leaves the directory in place (test artefacts such as screenshots).
    pub fn keep(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() || env_flag("RTMPX_E2E_KEEP") {
            eprintln!("[e2e] kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tools

/// Panics unless `name` is installed and usable. Known names: `ffmpeg`, `ffprobe`, `rtmpdump`,
/// `nginx` (with the RTMP module), `python3-librtmp` (a python3 that can `import librtmp`),
/// `ffmpeg9` (see [`ffmpeg9`]).
pub fn require_tool(name: &str) {
    let ok = match name {
        "ffmpeg" | "ffprobe" => runs(Command::new(name).arg("-version")),
        // rtmpdump has no version flag that exits 0; being able to start it is enough.
        "rtmpdump" => Command::new("rtmpdump").arg("--help").output().is_ok(),
        // GStreamer 1.22's own RTMP client (gst-plugins-bad), a legacy player.
        "gstreamer" => runs(Command::new("gst-inspect-1.0").args(["--exists", "rtmp2src"])),
        "nginx" => nginx_binary().is_some() && Path::new(NGINX_RTMP_MODULE).exists(),
        "python3-librtmp" => python3_with_librtmp().is_some(),
        "chromium" => runs(Command::new("chromium").arg("--version")),
        "openssl" => runs(Command::new("openssl").arg("version")),
        "curl" => runs(Command::new("curl").arg("--version")),
        "ffmpeg9" => ffmpeg9_lookup().is_some(),
        "redis-server" | "redis-cli" | "haproxy" => runs(Command::new(name).arg("-v")),
        other => panic!("require_tool: unknown tool {other:?}"),
    };
    if ok {
        return;
    }
    if std::env::var_os("CI").is_some() {
        panic!("required tool {name:?} is missing (CI is set: a missing client is a failure)");
    }
    panic!(
        "required tool {name:?} is missing. Run scripts/test.sh, which installs the clients the end-to-end \
         tests use (Debian: ffmpeg rtmpdump python3-librtmp nginx-light libnginx-mod-rtmp chromium openssl)"
    );
}

/// A current FFmpeg (≥ 7; PyPI's `imageio-ffmpeg` wheel ships 9.x) with its own RTMP stack:
/// every variant including rtmpe/rtmpte, Enhanced RTMP, libx265, libsvtav1, libopus.
/// `scripts/test.sh` installs it into a virtualenv under `target/` and sets `RTMPX_FFMPEG9`.
pub fn ffmpeg9() -> PathBuf {
    require_tool("ffmpeg9");
    ffmpeg9_lookup().expect("checked by require_tool")
}

fn ffmpeg9_lookup() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let from_env = std::env::var_os("RTMPX_FFMPEG9").map(PathBuf::from);
            // Without the variable (cargo test run by hand): the virtualenv test.sh made.
            let from_venv = || {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
                let python = target.join("ffmpeg9-venv/bin/python");
                let out = Command::new(python)
                    .args(["-c", "import imageio_ffmpeg as i; print(i.get_ffmpeg_exe())"])
                    .output()
                    .ok()?;
                out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
            };
            let path = from_env.or_else(from_venv)?;
            let out = Command::new(&path).arg("-version").output().ok()?;
            let first = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned();
            // "ffmpeg version n9.0.2-17-g..." or "ffmpeg version 7.1.1-..."
            let major: u32 = first
                .strip_prefix("ffmpeg version ")?
                .trim_start_matches('n')
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?;
            (major >= 7).then_some(path)
        })
        .clone()
}

fn runs(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The python3 that has python-librtmp (Debian's /usr/bin/python3; a pyenv python3 on PATH
/// usually does not).
pub fn python3_with_librtmp() -> Option<PathBuf> {
    ["/usr/bin/python3", "python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| runs(Command::new(p).args(["-c", "import librtmp"])))
}

fn nginx_binary() -> Option<PathBuf> {
    ["nginx", "/usr/sbin/nginx"].into_iter().map(PathBuf::from).find(|p| runs(Command::new(p).arg("-v")))
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process with a schedule: optionally interrupted (SIGINT) at one instant, killed at
/// another. Its stdout and stderr go to a log file; it is killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    started: Instant,
    interrupt_at: Option<Instant>,
    kill_at: Instant,
    interrupted: bool,
    status: Option<ExitStatus>,
    /// Set once the child is reaped; signals are sent only while it is false, under the lock,
    /// so a recycled pid is never hit.
    reaped: Arc<Mutex<bool>>,
}

impl Proc {
    /// Spawns `cmd` with output to a fresh log file. `interrupt_after`: send SIGINT then (how
    /// rtmpdump and ffmpeg are told to finish their file); `kill_after`: give up and SIGKILL.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        interrupt_after: Option<Duration>,
        kill_after: Duration,
    ) -> Proc {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("rtmpx-e2e-{}-{n}-{name}.log", std::process::id()));
        let out = fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning a log file handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
        let started = Instant::now();
        let reaped = Arc::new(Mutex::new(false));
        if let Some(after) = interrupt_after {
            // The interrupt is due at its time even while the test waits on something else.
            let (pid, reaped) = (child.id(), reaped.clone());
            thread::spawn(move || {
                let due = started + after;
                while Instant::now() < due {
                    if *reaped.lock().unwrap_or_else(|p| p.into_inner()) {
                        return;
                    }
                    thread::sleep(
                        Duration::from_millis(20).min(due.saturating_duration_since(Instant::now())),
                    );
                }
                let reaped = reaped.lock().unwrap_or_else(|p| p.into_inner());
                if !*reaped {
                    send_signal(pid, "INT");
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            log,
            started,
            interrupt_at: interrupt_after.map(|d| started + d),
            kill_at: started + kill_after,
            interrupted: false,
            status: None,
            reaped,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let mut reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
            self.status = self.child.try_wait().ok().flatten();
            *reaped = self.status.is_some();
        }
        self.status
    }

    fn kill_and_reap(&mut self) -> ExitStatus {
        let mut reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.child.kill();
        let status = self.child.wait().expect("waiting for a killed child");
        *reaped = true;
        self.status = Some(status);
        status
    }

    /// Sends SIGINT now (ffmpeg and rtmpdump then close their output cleanly).
    pub fn interrupt(&mut self) {
        if self.try_status().is_none() && !self.interrupted {
            self.interrupted = true;
            let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
            if !*reaped {
                send_signal(self.child.id(), "INT");
            }
        }
    }

    /// Waits for the process on its schedule (SIGINT at `interrupt_at`, SIGKILL at `kill_at`).
    pub fn finish(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            let now = Instant::now();
            if self.interrupt_at.is_some_and(|t| now >= t) {
                self.interrupt();
                // After SIGINT allow a few seconds to write the file out, not the whole budget.
                self.kill_at = self.kill_at.min(now + Duration::from_secs(5));
                self.interrupt_at = None;
            }
            if now >= self.kill_at {
                eprintln!("[e2e] {} overran its time budget: killing it", self.name);
                return self.kill_and_reap();
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Interrupts now and waits (up to 5 s, then SIGKILL).
    pub fn stop(&mut self) -> ExitStatus {
        self.interrupt_at = Some(Instant::now());
        self.finish()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `"<name> exited with <status>; output: ..."`, for assertion messages.
    pub fn describe(&mut self) -> String {
        let status = self.try_status().map_or("still running".to_owned(), |s| s.to_string());
        format!("{} ({status}); output:\n{}", self.name, self.output())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            self.kill_and_reap();
        }
        if thread::panicking() {
            eprintln!("[e2e] {} output:\n{}", self.name, self.output());
        }
        if !env_flag("RTMPX_E2E_KEEP") {
            let _ = fs::remove_file(&self.log);
        }
    }
}

/// Sends a signal by name (`TERM`, `HUP`, `INT`, `KILL`...) with the `kill` command.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running kill: {e}"));
    // A process that has just exited is not an error worth failing on.
    let _ = status;
}

/// Resident set size of a process in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The gateway

/// Builds `rtmpx` once per test process (or takes `RTMPX_BIN`) and returns its path.
pub fn rtmpx_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(|| workspace_binary("rtmpx", "RTMPX_BIN")) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// The load generator, `rtmpx-bench` (built like [`rtmpx_binary`]; `RTMPX_BENCH_BIN` overrides).
pub fn rtmpx_bench_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(|| workspace_binary("rtmpx-bench", "RTMPX_BENCH_BIN")) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// Builds the binary `name` of the workspace package of the same name (same profile as the tests)
/// and returns its path; the environment variable `override_var` names a prebuilt one instead.
fn workspace_binary(name: &str, override_var: &str) -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(override_var) {
        return Ok(PathBuf::from(bin));
    }
    // Cargo sets CARGO for the processes it runs; the compile-time value is the fallback.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let output = Command::new(cargo)
        .args(["build", "-p", name, "--bin", name, "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running cargo build -p {name}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p {name} --bin {name} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(json_executable)
        .find(|p| p.file_name().is_some_and(|n| n == name))
        .ok_or_else(|| format!("cargo build -p {name} reported no {name} executable:\n{stdout}"))
}

/// The `"executable":"..."` field of one line of cargo's JSON messages.
fn json_executable(line: &str) -> Option<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    let start = line.find(KEY)? + KEY.len();
    let mut path = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(PathBuf::from(path)),
            '\\' => path.push(chars.next()?),
            c => path.push(c),
        }
    }
    None
}

/// Lines the gateway printed, shared with the reader threads.
#[derive(Default)]
struct LogBuffer {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl LogBuffer {
    fn push(&self, line: String) {
        if env_flag("RTMPX_E2E_VERBOSE") {
            eprintln!("[rtmpx] {line}");
        }
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        self.changed.notify_all();
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Waits until a line satisfies `pred`; returns that line.
    fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(line) = lines.iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Removes ANSI escape sequences (in case colour slips through despite NO_COLOR).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn spawn_line_reader(source: impl Read + Send + 'static, buffer: Arc<LogBuffer>) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            match line {
                Ok(line) => buffer.push(strip_ansi(&line)),
                Err(_) => break,
            }
        }
    })
}

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

// ---------------------------------------------------------------------------------------------
// nginx-rtmp (a reference server and relay origin)

/// nginx with the RTMP module on a free loopback port, `application live` (players start on a
/// keyframe: `wait_key`, `wait_video`) plus
/// whatever `extra_apps` adds. Killed on drop.
pub struct NginxRtmp {
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl NginxRtmp {
    pub fn start() -> NginxRtmp {
        NginxRtmp::start_with("")
    }

    /// `extra_apps`: more `application NAME { ... }` blocks inside the rtmp `server`.
    pub fn start_with(extra_apps: &str) -> NginxRtmp {
        require_tool("nginx");
        let nginx = nginx_binary().expect("nginx checked above");
        let mut last_error = String::new();
        // The port is picked by binding and releasing it; another process may take it in
        // between, so a failed start is retried on a new port.
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new("nginx");
            let d = dir.path().display();
            let conf = format!(
                "load_module {NGINX_RTMP_MODULE};\n\
                 daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 1024; }}\n\
                 rtmp {{\n  access_log {d}/access.log;\n  server {{\n    listen 127.0.0.1:{port};\n    \
                 chunk_size 4096;\n    application live {{ live on; wait_key on; wait_video on; }}\n{extra_apps}\n  }}\n}}\n"
            );
            fs::write(dir.file("nginx.conf"), conf).expect("writing nginx.conf");
            let mut cmd = Command::new(&nginx);
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.file("nginx.conf"))
                .arg("-e")
                .arg(dir.file("error.log"));
            let mut proc = Proc::spawn("nginx", cmd, None, Duration::from_secs(3600));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && proc.try_status().is_none() {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return NginxRtmp { proc, port, dir };
                }
                thread::sleep(Duration::from_millis(50));
            }
            last_error = format!(
                "{}\nerror.log:\n{}",
                proc.describe(),
                fs::read_to_string(dir.file("error.log")).unwrap_or_default()
            );
        }
        panic!("nginx-rtmp did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, app: &str, stream: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{app}/{stream}", self.port)
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.file("error.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }
}

impl Drop for NginxRtmp {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("[e2e] nginx error.log:\n{}", self.error_log());
        }
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding 127.0.0.1:0").port()
}

// ---------------------------------------------------------------------------------------------
// The admin listener

/// The admin listener's address, from the gateway's start-up log.
pub fn admin_addr(gw: &Gateway) -> SocketAddr {
    let logs = gw.logs();
    let at =
        logs.find("admin listener on ").unwrap_or_else(|| panic!("no admin listener announced:\n{logs}"));
    let rest = &logs[at + "admin listener on ".len()..];
    rest.split_whitespace().next().unwrap().trim_end_matches(':').parse().unwrap()
}

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

pub struct HttpReply {
    pub status: u16,
    /// Lower-cased.
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> HttpReply {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting to admin");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("reading the admin reply");
    let raw = String::from_utf8(raw).expect("UTF-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    HttpReply { status, headers: head.to_ascii_lowercase(), body: body.to_owned() }
}

// ---------------------------------------------------------------------------------------------
// ffmpeg and rtmpdump

/// What [`publish`] sends.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub seconds: f64,
    pub size: &'static str,
    pub fps: u32,
    /// Constant video bitrate (x264 pads with filler), e.g. "2500k"; `None`: whatever x264 makes.
    pub video_cbr: Option<&'static str>,
    /// More output options before the URL, e.g. `-tls_verify 1 -ca_file ca.pem`.
    pub output_args: Vec<String>,
}

impl PublishOptions {
    pub fn new(seconds: f64) -> PublishOptions {
        PublishOptions { seconds, size: "320x240", fps: 25, video_cbr: None, output_args: Vec::new() }
    }
}

/// ffmpeg publishing `testsrc` (H.264, keyframe every second) and a 440 Hz sine (AAC) in real
/// time for `seconds`.
pub fn publish_testsrc(url: &str, seconds: f64) -> Proc {
    publish(url, &PublishOptions::new(seconds))
}

pub fn publish(url: &str, options: &PublishOptions) -> Proc {
    require_tool("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"]);
    cmd.args(["-f", "lavfi", "-i", &format!("testsrc=size={}:rate={}", options.size, options.fps)]);
    cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
    cmd.args(["-t", &options.seconds.to_string()]);
    cmd.args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"]);
    cmd.args(["-g", &options.fps.to_string(), "-pix_fmt", "yuv420p"]);
    if let Some(rate) = options.video_cbr {
        cmd.args(["-b:v", rate, "-minrate", rate, "-maxrate", rate, "-bufsize", rate]);
        cmd.args(["-x264-params", "nal-hrd=cbr"]);
    }
    cmd.args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"]).args(&options.output_args).arg(url);
    let budget = Duration::from_secs_f64(options.seconds) + Duration::from_secs(30);
    Proc::spawn("ffmpeg-publish", cmd, None, budget)
}

/// ffmpeg playing `url` and copying `seconds` (of stream time) of it into the FLV file `out`,
/// unchanged except that timestamps start at 0. Gives up when
/// nothing arrives for 10 s (`-rw_timeout`), so a player started before the publisher waits.
pub fn record_ffmpeg(url: &str, out: &Path, seconds: f64) -> Proc {
    require_tool("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]);
    cmd.args(["-rw_timeout", "10000000", "-i", url]);
    // -copyinkf: keep video before the first keyframe too, so the file shows where the
    // server started the player (ffmpeg drops those frames by default).
    cmd.args(["-t", &seconds.to_string(), "-c", "copy", "-copyinkf", "-f", "flv"]).arg(out);
    let budget = Duration::from_secs_f64(seconds) + Duration::from_secs(30);
    Proc::spawn("ffmpeg-record", cmd, None, budget)
}

/// rtmpdump saving the live stream `url` to `out` for `seconds` of wall time. rtmpdump's
/// `--stop` does not end a live recording, so the guard interrupts it (SIGINT: it closes the
/// file and exits with 2, "incomplete"); `-m 10` makes it give up after 10 s without data.
/// Unlike ffmpeg it writes tags exactly as received (timestamps, onMetaData).
pub fn record_rtmpdump(url: &str, out: &Path, seconds: f64) -> Proc {
    require_tool("rtmpdump");
    let mut cmd = Command::new("rtmpdump");
    cmd.args(["-q", "--live", "-m", "10", "-r", url, "-o"]).arg(out);
    let wall = Duration::from_secs_f64(seconds);
    Proc::spawn("rtmpdump", cmd, Some(wall), wall + Duration::from_secs(30))
}

/// GStreamer's `rtmp2src` saving the live stream `url` (an FLV byte stream, header included) to
/// `out` for `seconds` of wall time; SIGINT with `-e` ends it with an EOS, so the file is whole.
pub fn record_gstreamer(url: &str, out: &Path, seconds: f64) -> Proc {
    require_tool("gstreamer");
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.args(["-q", "-e", "rtmp2src"]).arg(format!("location={url}"));
    cmd.args(["!", "filesink"]).arg(format!("location={}", out.display()));
    let wall = Duration::from_secs_f64(seconds);
    Proc::spawn("gstreamer", cmd, Some(wall), wall + Duration::from_secs(30))
}

/// An H.264 (keyframe every second) and AAC FLV file of `seconds`, made by ffmpeg from testsrc
/// and a sine, for publishers that read a file.
pub fn make_testsrc_flv(path: &Path, seconds: u32) {
    require_tool("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]);
    cmd.args([
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=sample_rate=44100",
    ]);
    cmd.args(["-t", &seconds.to_string(), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25"]);
    cmd.args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "flv"]).arg(path);
    let (status, _, err) = run_bounded(cmd, Duration::from_secs(60));
    assert!(status.success(), "making the source FLV: {err}");
}

/// The audio and video tags of an FLV file written one by one with librtmp's RTMP_Write, paced
/// by their timestamps (script tags and the file header crash python3-librtmp's RTMP_Write).
/// Exits 3 when the publish is refused.
const LIBRTMP_PUBLISHER: &str = r#"
import sys, time, librtmp
url, path = sys.argv[1], sys.argv[2]
data = open(path, 'rb').read()
conn = librtmp.RTMP(url, live=True)
conn.connect()
try:
    stream = conn.create_stream(writeable=True)
except Exception as e:
    print("refused:", e)
    sys.exit(3)
pos, start, tags = 13, time.time(), 0
while pos + 11 <= len(data):
    kind, size = data[pos], int.from_bytes(data[pos+1:pos+4], 'big')
    ts = int.from_bytes(data[pos+4:pos+7], 'big') | (data[pos+7] << 24)
    tag = data[pos:pos+15+size]
    pos += 15 + size
    if kind not in (8, 9):
        continue
    delay = ts / 1000.0 - (time.time() - start)
    if delay > 0:
        time.sleep(delay)
    stream.write(tag)
    tags += 1
stream.close()
conn.close()
print("tags", tags)
"#;

/// python3-librtmp publishing `flv` (see [`make_testsrc_flv`]) to `url` (any librtmp scheme:
/// rtmp, rtmpe, rtmpt, rtmpte, rtmps) in real time. The script lives in `dir`.
pub fn publish_librtmp(url: &str, flv: &Path, dir: &TempDir) -> Proc {
    let python = python3_with_librtmp()
        .unwrap_or_else(|| panic!("python3-librtmp is missing (scripts/test.sh installs it)"));
    let script = dir.file("librtmp_publish.py");
    if !script.exists() {
        fs::write(&script, LIBRTMP_PUBLISHER).expect("writing the librtmp publisher script");
    }
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg(url).arg(flv);
    Proc::spawn("librtmp-publish", cmd, None, Duration::from_secs(60))
}

// ---------------------------------------------------------------------------------------------
// ffprobe and FLV inspection

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Video,
    Audio,
    Other,
}

#[derive(Debug, Clone)]
pub struct Packet {
    pub kind: PacketKind,
    /// Seconds; FLV stores dts, pts = dts + composition offset.
    pub dts: Option<f64>,
    pub pts: Option<f64>,
    pub keyframe: bool,
}

/// What a recorded FLV file holds, from ffprobe (packets, streams) and a scan of its tags.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    pub packets: Vec<Packet>,
    pub video_frames: usize,
    pub audio_frames: usize,
    pub first_video_is_keyframe: bool,
    /// Video dts never goes backwards.
    pub video_dts_monotonic: bool,
    /// Audio dts never goes backwards.
    pub audio_dts_monotonic: bool,
    /// Smallest dts of any audio or video packet (seconds).
    pub first_timestamp: Option<f64>,
    /// Largest dts of any audio or video packet (seconds).
    pub last_timestamp: Option<f64>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The file has an `onMetaData` script tag.
    pub has_metadata: bool,
}

impl ProbeReport {
    /// One line for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "video={} ({:?} {:?}x{:?}, first key={}, monotonic={}) audio={} ({:?}, monotonic={}) ts={:?}..{:?} \
             metadata={}",
            self.video_frames,
            self.video_codec,
            self.width,
            self.height,
            self.first_video_is_keyframe,
            self.video_dts_monotonic,
            self.audio_frames,
            self.audio_codec,
            self.audio_dts_monotonic,
            self.first_timestamp,
            self.last_timestamp,
            self.has_metadata
        )
    }

    /// Seconds between the first and last video packet.
    pub fn video_span(&self) -> f64 {
        let times: Vec<f64> =
            self.packets.iter().filter(|p| p.kind == PacketKind::Video).filter_map(|p| p.dts).collect();
        match (times.first(), times.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        }
    }
}

/// Runs ffprobe on a file (bounded to 60 s) and returns its stdout; panics on failure.
fn ffprobe(path: &Path, args: &[&str]) -> String {
    require_tool("ffprobe");
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error"]).args(args).arg(path);
    let (status, stdout, stderr) = run_bounded(cmd, Duration::from_secs(60));
    assert!(status.success(), "ffprobe {args:?} {} failed ({status}): {stderr}", path.display());
    stdout
}

/// Runs a command to completion within `timeout` (killed after), returning status and output.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait().expect("waiting for a killed child");
            let _ = (out_reader.join(), err_reader.join());
            panic!("{cmd:?} took longer than {timeout:?} ({status})");
        }
        thread::sleep(Duration::from_millis(20));
    };
    (status, out_reader.join().unwrap_or_default(), err_reader.join().unwrap_or_default())
}

/// `key=value|key=value` (ffprobe's compact writer) → map.
fn compact_fields(line: &str) -> BTreeMap<&str, &str> {
    line.split('|').filter_map(|kv| kv.split_once('=')).collect()
}

/// Probes a recorded FLV file: its packets (kind, dts, pts, key flag), stream parameters and
/// whether it has onMetaData.
pub fn probe(path: &Path) -> ProbeReport {
    assert!(path.exists(), "{} was not written", path.display());
    let mut report = ProbeReport::default();

    let packets =
        ffprobe(path, &["-show_entries", "packet=codec_type,pts_time,dts_time,flags", "-of", "compact=p=0"]);
    for line in packets.lines() {
        let f = compact_fields(line);
        let kind = match f.get("codec_type").copied() {
            Some("video") => PacketKind::Video,
            Some("audio") => PacketKind::Audio,
            _ => PacketKind::Other,
        };
        let time = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok());
        let keyframe = f.get("flags").is_some_and(|flags| flags.starts_with('K'));
        report.packets.push(Packet { kind, dts: time("dts_time"), pts: time("pts_time"), keyframe });
    }

    let mut last_video = f64::NEG_INFINITY;
    let mut last_audio = f64::NEG_INFINITY;
    report.video_dts_monotonic = true;
    report.audio_dts_monotonic = true;
    for p in &report.packets {
        let dts = p.dts.or(p.pts);
        match p.kind {
            PacketKind::Video => {
                if report.video_frames == 0 {
                    report.first_video_is_keyframe = p.keyframe;
                }
                report.video_frames += 1;
                if let Some(t) = dts {
                    report.video_dts_monotonic &= t >= last_video;
                    last_video = t;
                }
            }
            PacketKind::Audio => {
                report.audio_frames += 1;
                if let Some(t) = dts {
                    report.audio_dts_monotonic &= t >= last_audio;
                    last_audio = t;
                }
            }
            PacketKind::Other => continue,
        }
        if let Some(t) = dts {
            report.first_timestamp = Some(report.first_timestamp.map_or(t, |f| f.min(t)));
            report.last_timestamp = Some(report.last_timestamp.map_or(t, |l| l.max(t)));
        }
    }

    let streams =
        ffprobe(path, &["-show_entries", "stream=codec_type,codec_name,width,height", "-of", "compact=p=0"]);
    for line in streams.lines() {
        let f = compact_fields(line);
        let codec = f.get("codec_name").map(|s| s.to_string());
        match f.get("codec_type").copied() {
            Some("video") => {
                report.video_codec = codec;
                report.width = f.get("width").and_then(|v| v.parse().ok());
                report.height = f.get("height").and_then(|v| v.parse().ok());
            }
            Some("audio") => report.audio_codec = codec,
            _ => {}
        }
    }

    report.has_metadata = flv_tags(path).iter().any(|t| t.is_on_metadata());
    report
}

/// Decodes the whole file with ffmpeg; `Err` with ffmpeg's complaints if it fails or prints
/// any error.
pub fn decode_check(path: &Path) -> Result<(), String> {
    require_tool("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-v", "error", "-i"]).arg(path).args(["-f", "null", "-"]);
    let (status, _, stderr) = run_bounded(cmd, Duration::from_secs(120));
    if status.success() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("decoding {} ({status}): {stderr}", path.display()))
    }
}

/// One FLV tag: type 8 audio, 9 video, 18 script data.
#[derive(Debug, Clone)]
pub struct FlvTag {
    pub tag_type: u8,
    /// Milliseconds, with the extension byte.
    pub timestamp: u32,
    pub data: Vec<u8>,
}

impl FlvTag {
    /// A script tag whose first AMF0 value is the string "onMetaData".
    pub fn is_on_metadata(&self) -> bool {
        const NAME: &[u8] = b"\x02\x00\x0aonMetaData";
        self.tag_type == 18 && self.data.starts_with(NAME)
    }

    /// A video tag with frame type 1 (keyframe) carrying media (not an AVC sequence header).
    pub fn is_video_keyframe(&self) -> bool {
        self.tag_type == 9 && self.data.first().is_some_and(|b| b >> 4 == 1)
    }
}

/// The tags of an FLV file (stops quietly at a truncated last tag, as players do).
pub fn flv_tags(path: &Path) -> Vec<FlvTag> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut tags = Vec::new();
    if bytes.len() < 9 || &bytes[..3] != b"FLV" {
        return tags;
    }
    let header_len = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    // Header, then PreviousTagSize0.
    let mut at = header_len + 4;
    while at + 11 <= bytes.len() {
        let h = &bytes[at..at + 11];
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let end = at + 11 + size;
        if end > bytes.len() {
            break;
        }
        tags.push(FlvTag { tag_type: h[0] & 0x1f, timestamp, data: bytes[at + 11..end].to_vec() });
        at = end + 4;
    }
    tags
}

/// Asserts what every good recording of the test source has: H.264 320x240 and AAC, at least
/// `min_video`/`min_audio` packets, a keyframe first, monotonic timestamps, a clean decode.
pub fn assert_good_recording(label: &str, path: &Path, min_video: usize, min_audio: usize) -> ProbeReport {
    let report = probe(path);
    let s = report.summary();
    eprintln!("[e2e] {label}: {s}");
    assert_eq!(report.video_codec.as_deref(), Some("h264"), "{label}: {s}");
    assert_eq!(report.audio_codec.as_deref(), Some("aac"), "{label}: {s}");
    assert_eq!((report.width, report.height), (Some(320), Some(240)), "{label}: {s}");
    assert!(report.video_frames >= min_video, "{label}: want >= {min_video} video frames: {s}");
    assert!(report.audio_frames >= min_audio, "{label}: want >= {min_audio} audio frames: {s}");
    assert!(report.first_video_is_keyframe, "{label}: first video frame is not a keyframe: {s}");
    assert!(report.video_dts_monotonic && report.audio_dts_monotonic, "{label}: timestamps go back: {s}");
    if let Err(e) = decode_check(path) {
        panic!("{label}: {e}");
    }
    report
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

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\u{1b}[32m INFO\u{1b}[0m rtmpx ready"), " INFO rtmpx ready");
    }

    #[test]
    fn cargo_json_executable_is_found() {
        let line = r#"{"reason":"compiler-artifact","executable":"/w/target/debug/rtmpx","fresh":true}"#;
        assert_eq!(json_executable(line), Some(PathBuf::from("/w/target/debug/rtmpx")));
        assert_eq!(json_executable(r#"{"executable":null}"#), None);
    }

    #[test]
    fn flv_tags_are_read() {
        let dir = TempDir::new("flv-unit");
        let path = dir.file("t.flv");
        let mut flv = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        let data = b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00\x00\x00\x09";
        flv.extend_from_slice(&[18, 0, 0, data.len() as u8, 0x00, 0x01, 0x02, 0x03, 0, 0, 0]);
        flv.extend_from_slice(data);
        flv.extend_from_slice(&(11 + data.len() as u32).to_be_bytes());
        flv.extend_from_slice(&[9, 0, 0, 5]); // truncated video tag
        fs::write(&path, flv).unwrap();
        let tags = flv_tags(&path);
        assert_eq!(tags.len(), 1);
        assert!(tags[0].is_on_metadata());
        assert_eq!(tags[0].timestamp, 0x0300_0102);
    }
}
