//! Joins a pull's old and new upstream connections into one timeline when the upstream asks the
//! pull to reconnect (make-before-break).
//!
//! The new connection plays while the old one goes on. Each upstream player has its own
//! timestamps (rtmpx starts every player at 0), so the two timelines are matched on a keyframe
//! both delivered: same payload bytes, same picture. From that keyframe on the new connection
//! takes over with the offset between them, frames the old one already delivered are skipped,
//! and the local publisher never changes. When no common keyframe comes (the old connection
//! ended first, or the new one serves other content), the new one continues one frame interval
//! after the last frame.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtmpx_router::{Frame, MediaKind};

/// Keyframes of the current connection remembered for matching.
const HISTORY: usize = 8;
/// Most frames and bytes the new connection may buffer while no keyframe matches.
const MAX_BUFFERED_FRAMES: usize = 2048;
const MAX_BUFFERED_BYTES: usize = 16 << 20;
/// How long the new connection's frames wait for a common keyframe before it takes over anyway.
pub(super) const MATCH_WAIT: Duration = Duration::from_secs(3);

fn kind_index(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
        MediaKind::Data => 2,
    }
}

/// Which header slot a non-media frame fills: metadata, video or audio sequence header.
fn header_slot(frame: &Frame) -> usize {
    match frame.kind {
        MediaKind::Data => 0,
        MediaKind::Video => 1,
        MediaKind::Audio => 2,
    }
}

/// The connection being moved to.
#[derive(Default)]
struct Next {
    /// Its headers so far (latest per slot).
    headers: [Option<Frame>; 3],
    /// Its frames from its first keyframe on, with its own timestamps.
    buffered: VecDeque<Frame>,
    bytes: usize,
    since: Option<Instant>,
}

/// What the caller does after handing a frame over.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Continue,
    /// The new connection took over: it is the current one now; close the old one.
    Switched,
}

#[derive(Default)]
pub(super) struct Splicer {
    /// delivered = source + offset for the current connection; `None` until its first media
    /// frame after a switch without a match.
    offset: Option<i64>,
    /// Keyframes delivered: (payload, delivered timestamp), newest last.
    history: VecDeque<(Bytes, u32)>,
    /// Last delivered timestamp per kind.
    last: [Option<u32>; 3],
    /// The video timestamp before the last one (for the frame interval).
    prev_video: Option<u32>,
    max_media: Option<u32>,
    /// Last delivered header payload per slot.
    headers: [Option<Bytes>; 3],
    /// After a switch: per kind, drop frames the old connection already delivered.
    dedup: [bool; 3],
    next: Option<Next>,
}

impl Splicer {
    pub(super) fn new() -> Self {
        Splicer { offset: Some(0), ..Splicer::default() }
    }

    /// A new connection is being opened: its frames come through [`on_next`](Self::on_next).
    pub(super) fn begin_move(&mut self) {
        self.next = Some(Next::default());
    }

    /// The new connection failed before it took over: the current one goes on as it was.
    pub(super) fn abandon_move(mut self) -> Self {
        self.next = None;
        self
    }

    #[cfg(test)]
    pub(super) fn is_moving(&self) -> bool {
        self.next.is_some()
    }

    /// When the new connection takes over without a match.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.next.as_ref()?.since.map(|since| since + MATCH_WAIT)
    }

    /// A frame of the current connection; what to publish goes to `out`.
    pub(super) fn on_current(&mut self, frame: Frame, out: &mut Vec<Frame>) -> Step {
        if frame.is_keyframe() {
            let matched = self.next.as_ref().and_then(|next| {
                next.buffered.iter().position(|f| f.is_keyframe() && f.payload == frame.payload)
            });
            if let (Some(index), Some(offset)) = (matched, self.offset) {
                // The new connection already holds this keyframe: it takes over from here.
                let delivered = i64::from(frame.timestamp) + offset;
                let next = self.next.as_mut().expect("matched");
                next.buffered.drain(..index);
                let source = i64::from(next.buffered[0].timestamp);
                self.switch(Some(delivered - source), out);
                return Step::Switched;
            }
        }
        self.deliver(frame, out);
        Step::Continue
    }

    /// A frame of the new connection.
    pub(super) fn on_next(&mut self, frame: Frame, out: &mut Vec<Frame>) -> Step {
        let has_video = self.last[1].is_some();
        let Some(next) = self.next.as_mut() else { return Step::Continue };
        if !frame.is_media() {
            let slot = header_slot(&frame);
            next.headers[slot] = Some(frame);
            return Step::Continue;
        }
        if next.buffered.is_empty() && has_video && !frame.is_keyframe() {
            return Step::Continue;
        }
        if frame.is_keyframe() && next.buffered.is_empty() {
            if let Some((_, delivered)) =
                self.history.iter().rev().find(|(payload, _)| *payload == frame.payload)
            {
                // The old connection delivered this keyframe already: take over at once.
                let offset = i64::from(*delivered) - i64::from(frame.timestamp);
                next.buffered.push_back(frame);
                self.switch(Some(offset), out);
                return Step::Switched;
            }
        }
        next.bytes += frame.payload.len();
        next.buffered.push_back(frame);
        next.since.get_or_insert_with(Instant::now);
        if next.buffered.len() > MAX_BUFFERED_FRAMES || next.bytes > MAX_BUFFERED_BYTES {
            self.take_over(out);
            return Step::Switched;
        }
        Step::Continue
    }

    /// The new connection takes over now, without a common keyframe (the old one ended, or
    /// none came in time): it continues one frame interval after the last delivered frame.
    pub(super) fn take_over(&mut self, out: &mut Vec<Frame>) {
        let offset = self.next.as_ref().and_then(|next| next.buffered.front()).map(|first| {
            let target = self.continuation();
            i64::from(target) - i64::from(first.timestamp)
        });
        self.switch(offset, out);
    }

    /// Where a continuation without a match starts: one video frame interval (40 ms when
    /// unknown) after the last video frame, and after every delivered frame.
    fn continuation(&self) -> u32 {
        let after_media = self.max_media.map_or(0, |max| max.saturating_add(1));
        let after_video = match (self.last[1], self.prev_video) {
            (Some(last), Some(prev)) => last.saturating_add((last.saturating_sub(prev)).clamp(1, 1000)),
            (Some(last), None) => last.saturating_add(40),
            _ => 0,
        };
        after_media.max(after_video)
    }

    fn switch(&mut self, offset: Option<i64>, out: &mut Vec<Frame>) {
        let Some(next) = self.next.take() else { return };
        self.offset = offset;
        self.dedup = [true, true, false];
        for header in next.headers.into_iter().flatten() {
            self.deliver_mapped(header, out);
        }
        for frame in next.buffered {
            self.deliver(frame, out);
        }
    }

    fn deliver(&mut self, mut frame: Frame, out: &mut Vec<Frame>) {
        if frame.is_media() && self.offset.is_none() {
            if self.last[1].is_some() && !frame.is_keyframe() {
                return;
            }
            self.offset = Some(i64::from(self.continuation()) - i64::from(frame.timestamp));
        }
        let offset = self.offset.unwrap_or(0);
        let mapped = (i64::from(frame.timestamp) + offset).clamp(0, i64::from(u32::MAX));
        frame.timestamp = u32::try_from(mapped).unwrap_or(u32::MAX);
        self.deliver_mapped(frame, out);
    }

    fn deliver_mapped(&mut self, frame: Frame, out: &mut Vec<Frame>) {
        if !frame.is_media() {
            let slot = &mut self.headers[header_slot(&frame)];
            if slot.as_ref() == Some(&frame.payload) {
                return;
            }
            *slot = Some(frame.payload.clone());
            out.push(frame);
            return;
        }
        let kind = kind_index(frame.kind);
        if self.dedup[kind] {
            if self.last[kind].is_some_and(|last| frame.timestamp <= last) {
                return;
            }
            self.dedup[kind] = false;
        }
        if frame.kind == MediaKind::Video {
            self.prev_video = self.last[1];
            if frame.is_keyframe() {
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back((frame.payload.clone(), frame.timestamp));
            }
        }
        self.last[kind] = Some(frame.timestamp);
        self.max_media = Some(self.max_media.map_or(frame.timestamp, |max| max.max(frame.timestamp)));
        out.push(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ts: u32, picture: u8) -> Frame {
        Frame::video(ts, Bytes::from(vec![0x17, 1, 0, 0, 0, picture]))
    }
    fn inter(ts: u32, picture: u8) -> Frame {
        Frame::video(ts, Bytes::from(vec![0x27, 1, 0, 0, 0, picture]))
    }
    fn aac(ts: u32, sample: u8) -> Frame {
        Frame::audio(ts, Bytes::from(vec![0xAF, 1, sample]))
    }
    fn avc_header() -> Frame {
        Frame::video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64]))
    }

    /// (timestamp, picture or sample byte) of what was published.
    fn seen(out: &mut Vec<Frame>) -> Vec<(u32, u8)> {
        out.drain(..).map(|f| (f.timestamp, *f.payload.last().unwrap())).collect()
    }

    /// The upstream's stream: picture n at 40n ms, a keyframe every 5 pictures, audio between.
    fn picture(n: u8, base: u32) -> Frame {
        let ts = base + 40 * u32::from(n);
        if n.is_multiple_of(5) {
            key(ts, n)
        } else {
            inter(ts, n)
        }
    }

    #[test]
    fn a_new_connection_replaying_the_gop_takes_over_without_repeats_or_gaps() {
        let mut s = Splicer::new();
        let mut out = Vec::new();
        assert_eq!(s.on_current(avc_header(), &mut out), Step::Continue);
        for n in 0..8 {
            s.on_current(picture(n, 10_000), &mut out);
            s.on_current(aac(10_000 + 40 * u32::from(n) + 20, n), &mut out);
        }
        assert_eq!(out.len(), 17);
        out.clear();
        s.begin_move();
        // The new player starts at 0 with the cached GOP (pictures 5..7) and then live ones.
        assert_eq!(s.on_next(avc_header(), &mut out), Step::Continue);
        assert_eq!(s.on_next(picture(5, 0).clone_at(0), &mut out), Step::Switched);
        // From now on the new connection is the current one.
        for n in 6..10 {
            s.on_current(picture(n, 0).clone_at(40 * u32::from(n - 5)), &mut out);
        }
        // Identical header not repeated; pictures 6 and 7 (already delivered) skipped.
        assert_eq!(seen(&mut out), [(10_320, 8), (10_360, 9)]);
        assert!(!s.is_moving());
    }

    #[test]
    fn a_new_connection_ahead_waits_for_the_old_one_to_deliver_the_same_keyframe() {
        let mut s = Splicer::new();
        let mut out = Vec::new();
        for n in 0..4 {
            s.on_current(picture(n, 500), &mut out);
        }
        out.clear();
        s.begin_move();
        // The new one starts mid-GOP (skipped) and then has picture 5 before the old one does.
        s.on_next(picture(4, 0).clone_at(7), &mut out);
        assert_eq!(s.on_next(picture(5, 0).clone_at(47), &mut out), Step::Continue);
        s.on_next(picture(6, 0).clone_at(87), &mut out);
        assert!(out.is_empty());
        assert_eq!(s.on_current(picture(4, 500), &mut out), Step::Continue);
        assert_eq!(s.on_current(picture(5, 500), &mut out), Step::Switched);
        assert_eq!(seen(&mut out), [(660, 4), (700, 5), (740, 6)]);
    }

    #[test]
    fn without_a_common_keyframe_the_new_connection_continues_one_frame_later() {
        let mut s = Splicer::new();
        let mut out = Vec::new();
        for n in 0..4 {
            s.on_current(picture(n, 1000), &mut out);
        }
        out.clear();
        s.begin_move();
        s.on_next(Frame::video(0, Bytes::from_static(&[0x17, 1, 0, 0, 0, 99])), &mut out);
        s.on_next(Frame::video(40, Bytes::from_static(&[0x27, 1, 0, 0, 0, 98])), &mut out);
        assert!(s.deadline().is_some());
        s.take_over(&mut out);
        assert_eq!(seen(&mut out), [(1160, 99), (1200, 98)]);
    }

    #[test]
    fn a_switch_before_the_new_connection_had_media_starts_it_at_its_first_keyframe() {
        let mut s = Splicer::new();
        let mut out = Vec::new();
        for n in 0..3 {
            s.on_current(picture(n, 0), &mut out);
        }
        out.clear();
        s.begin_move();
        s.take_over(&mut out);
        assert!(out.is_empty());
        s.on_current(inter(9000, 50), &mut out);
        s.on_current(key(9040, 51), &mut out);
        s.on_current(inter(9080, 52), &mut out);
        assert_eq!(seen(&mut out), [(120, 51), (160, 52)]);
    }

    trait At {
        fn clone_at(self, ts: u32) -> Frame;
    }
    impl At for Frame {
        fn clone_at(mut self, ts: u32) -> Frame {
            self.timestamp = ts;
            self
        }
    }
}
