//! Child processes on a schedule (interrupted, killed), and bounded one-shot commands.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::env_flag;

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
