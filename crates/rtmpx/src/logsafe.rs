//! Client-supplied text in log lines: escaped so that it cannot end a line or forge another
//! (newline, NUL, terminal escapes, bidi overrides), and capped so that a 1 MiB name does not
//! become a 1 MiB log line.

use crate::sync::lock;
use std::fmt::{self, Display, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes of one value written to a log line; the rest is counted, not written.
pub const MAX_LOGGED: usize = 256;

/// Displays `T` escaped and capped at [`MAX_LOGGED`] bytes. Use it for every value that came
/// from a client (`app = %Escaped(&app)`, `"{}", Escaped(&reason)`).
pub struct Escaped<T>(pub T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = EscapingWriter { out: f, written: 0, skipped: 0 };
        write!(out, "{}", self.0)?;
        if out.skipped > 0 {
            let skipped = out.skipped;
            write!(out.out, "…(+{skipped} bytes)")?;
        }
        Ok(())
    }
}

impl<T: Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

struct EscapingWriter<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    /// Bytes of the original text written so far.
    written: usize,
    /// Bytes of the original text past the cap.
    skipped: usize,
}

impl Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            if self.skipped > 0 || self.written + c.len_utf8() > MAX_LOGGED {
                self.skipped += c.len_utf8();
                continue;
            }
            self.written += c.len_utf8();
            match c {
                '\n' => self.out.write_str("\\n")?,
                '\r' => self.out.write_str("\\r")?,
                '\t' => self.out.write_str("\\t")?,
                '\0' => self.out.write_str("\\0")?,
                '\\' => self.out.write_str("\\\\")?,
                c if needs_escape(c) => write!(self.out, "\\u{{{:x}}}", u32::from(c))?,
                c => self.out.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Control characters, line and paragraph separators, and bidi controls (which reorder what a
/// terminal shows).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Lets a line an attacker can repeat at will (a failed accept, a refused connection) through
/// once per period, with the count of the ones held back since.
pub struct Throttle {
    period: Duration,
    /// When a line last went out, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(period: Duration) -> Throttle {
        Throttle { period, state: Mutex::new((None, 0)) }
    }

    /// `Some(held back since the last line)` when a line may go out now, else `None`.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = lock(&self.state);
        let (last, held_back) = &mut *state;
        if last.is_some_and(|last| now.saturating_duration_since(last) < self.period) {
            *held_back += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_per_period() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.allow_at(start), Some(0));
        let through =
            (1..=559).filter(|i| throttle.allow_at(start + Duration::from_millis(i * 17)).is_some());
        assert_eq!(through.count(), 0, "559 failures within 10 s make no line");
        assert_eq!(throttle.allow_at(start + Duration::from_secs(10)), Some(559));
        assert_eq!(throttle.allow_at(start + Duration::from_secs(11)), None);
    }

    #[test]
    fn line_breaks_and_controls_are_escaped() {
        let forged = "live\n2026-01-01T00:00:00Z  INFO rtmpx ready\r\0\x1b[31m\u{202e}\\";
        let shown = Escaped(forged).to_string();
        assert!(!shown.chars().any(needs_escape), "{shown:?}");
        assert_eq!(shown, "live\\n2026-01-01T00:00:00Z  INFO rtmpx ready\\r\\0\\u{1b}[31m\\u{202e}\\\\");
        assert_eq!(Escaped("José/cam_1").to_string(), "José/cam_1");
        assert_eq!(format!("{:?}", Escaped("a\"b")), "\"a\"b\"");
    }

    #[test]
    fn long_values_are_capped_on_a_char_boundary() {
        let long = format!("{}é{}", "a".repeat(MAX_LOGGED - 1), "b".repeat(1000));
        let shown = Escaped(&long).to_string();
        assert_eq!(shown, format!("{}…(+1002 bytes)", "a".repeat(MAX_LOGGED - 1)));
        // Any Display works, e.g. a stream key.
        assert_eq!(Escaped(format_args!("{}/{}", "live", "x\ny")).to_string(), "live/x\\ny");
    }
}
