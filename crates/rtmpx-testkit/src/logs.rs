//! The gateway's log, read line by line from its stdout and stderr.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::env_flag;

/// Lines the gateway printed, shared with the reader threads.
#[derive(Default)]
pub(crate) struct LogBuffer {
    pub(crate) lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl LogBuffer {
    pub(crate) fn push(&self, line: String) {
        if env_flag("RTMPX_E2E_VERBOSE") {
            eprintln!("[rtmpx] {line}");
        }
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        self.changed.notify_all();
    }

    pub(crate) fn text(&self) -> String {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Waits until a line satisfies `pred`; returns that line.
    pub(crate) fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> Option<String> {
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

pub(crate) fn spawn_line_reader(
    source: impl Read + Send + 'static,
    buffer: Arc<LogBuffer>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            match line {
                Ok(line) => buffer.push(strip_ansi(&line)),
                Err(_) => break,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\u{1b}[32m INFO\u{1b}[0m rtmpx ready"), " INFO rtmpx ready");
    }
}
