//! One player's bounded queue and its keyframe-aware drop policy.
//!
//! Lives behind the player's mutex; the publisher pushes, the player pops. Nothing here blocks or
//! allocates beyond the `VecDeque` slot.

use std::collections::VecDeque;

use crate::{Frame, MediaKind, FRAME_OVERHEAD};

/// Cap on queued entries whatever their size, so tiny messages or a publish/unpublish loop
/// cannot grow a stalled player's queue without bound: the queue's own memory stays about 0.5 MiB
/// (payloads are shared with the stream). Minutes of media at real frame rates.
pub(crate) const MAX_QUEUED_ENTRIES: usize = 1 << 13;

#[derive(Debug)]
pub(crate) enum Entry {
    PublishStarted,
    Frame(Frame),
    Unpublished,
    /// Another publisher took the stream over (no event for the player: its rebaser checks the
    /// timeline at the next frame).
    PublisherReplaced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Normal,
    /// The queue overflowed: audio/video are discarded (and counted) until a keyframe finds the
    /// queue drained below half the bound.
    Dropping,
    /// A late joiner with no usable GOP: audio/video are skipped (not counted as drops) until the
    /// next keyframe, so the player starts decodable.
    AwaitKeyframe,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ConfigClass {
    Metadata,
    /// Per track: one track's header never supersedes another's.
    VideoHeader(u8),
    AudioHeader(u8),
}

fn config_class(frame: &Frame) -> Option<ConfigClass> {
    match frame.kind {
        MediaKind::Data => Some(ConfigClass::Metadata),
        MediaKind::Video if frame.info.sequence_header => Some(ConfigClass::VideoHeader(frame.info.track)),
        MediaKind::Audio if frame.info.sequence_header => Some(ConfigClass::AudioHeader(frame.info.track)),
        _ => None,
    }
}

fn is_media(entry: &Entry) -> bool {
    matches!(entry, Entry::Frame(frame) if config_class(frame).is_none())
}

fn entry_bytes(entry: &Entry) -> usize {
    match entry {
        Entry::Frame(frame) => frame.payload.len(),
        _ => 0,
    }
}

#[derive(Debug)]
pub(crate) struct PlayerQueue {
    entries: VecDeque<Entry>,
    /// Payload bytes currently queued.
    bytes: usize,
    limit: usize,
    mode: Mode,
    dropped: u64,
    /// Whether the consumer has popped a PublishStarted not yet followed by an Unpublished.
    consumer_live: bool,
}

impl PlayerQueue {
    pub(crate) fn new(limit: usize) -> Self {
        PlayerQueue {
            entries: VecDeque::new(),
            bytes: 0,
            limit,
            mode: Mode::Normal,
            dropped: 0,
            consumer_live: false,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Memory the queue keeps from being freed: payloads plus [`FRAME_OVERHEAD`] per entry.
    pub(crate) fn held_bytes(&self) -> usize {
        self.bytes + self.entries.len() * FRAME_OVERHEAD
    }

    /// Empties the queue (its player is being closed); queued media counts as dropped.
    pub(crate) fn clear(&mut self) {
        self.dropped += self.entries.iter().filter(|entry| is_media(entry)).count() as u64;
        self.entries = VecDeque::new();
        self.bytes = 0;
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Nothing queued and no drop or keyframe wait in force: a live frame may bypass the queue.
    pub(crate) fn is_caught_up(&self) -> bool {
        self.entries.is_empty() && self.mode == Mode::Normal
    }

    #[cfg(test)]
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn would_overflow(&self, extra_bytes: usize, extra_entries: usize) -> bool {
        self.bytes.saturating_add(extra_bytes) > self.limit
            || self.entries.len().saturating_add(extra_entries) > MAX_QUEUED_ENTRIES
    }

    fn drained(&self) -> bool {
        self.bytes < self.limit / 2 && self.entries.len() < MAX_QUEUED_ENTRIES / 2
    }

    /// Whether `bytes` more payload in `entries` more entries fit under the bound.
    pub(crate) fn fits(&self, bytes: usize, entries: usize) -> bool {
        !self.would_overflow(bytes, entries)
    }

    fn push_entry(&mut self, entry: Entry) {
        self.bytes += entry_bytes(&entry);
        self.entries.push_back(entry);
    }

    /// Queues a frame bypassing the drop policy (late-joiner cache fill, already size-checked).
    pub(crate) fn push_unchecked(&mut self, frame: Frame) {
        self.push_entry(Entry::Frame(frame));
    }

    pub(crate) fn await_keyframe(&mut self) {
        self.mode = Mode::AwaitKeyframe;
    }

    /// Queues a live frame under the drop policy. `stream_has_video` says whether a keyframe can
    /// be expected; audio-only streams resume on any frame once drained.
    pub(crate) fn push_frame(&mut self, frame: Frame, stream_has_video: bool) {
        let len = frame.payload.len();
        if let Some(class) = config_class(&frame) {
            // Never dropped; over the bound, an older queued one of the same class is superseded.
            if self.would_overflow(len, 1) {
                self.remove_config(class);
            }
            self.push_entry(Entry::Frame(frame));
            return;
        }
        let resume_point = (frame.kind == MediaKind::Video && frame.info.keyframe) || !stream_has_video;
        match self.mode {
            Mode::Normal => {
                if self.would_overflow(len, 1) && !self.entries.is_empty() {
                    tracing::debug!(
                        queued_bytes = self.bytes,
                        limit = self.limit,
                        "player queue full, dropping"
                    );
                    self.mode = Mode::Dropping;
                    self.dropped += 1;
                    return;
                }
            }
            Mode::Dropping => {
                if !(resume_point && self.drained()) {
                    self.dropped += 1;
                    return;
                }
                tracing::debug!(dropped = self.dropped, "player queue drained, resuming");
                self.mode = Mode::Normal;
            }
            Mode::AwaitKeyframe => {
                if !resume_point {
                    return;
                }
                self.mode = Mode::Normal;
            }
        }
        self.push_entry(Entry::Frame(frame));
    }

    fn remove_config(&mut self, class: ConfigClass) {
        let mut removed_bytes = 0;
        self.entries.retain(|entry| match entry {
            Entry::Frame(frame) if config_class(frame) == Some(class) => {
                removed_bytes += frame.payload.len();
                false
            }
            _ => true,
        });
        self.bytes -= removed_bytes;
    }

    pub(crate) fn push_publish_started(&mut self) {
        if self.mode == Mode::Dropping || self.would_overflow(0, 1) {
            // The player is behind by more than the bound: what is still queued belongs to an
            // ended publish and is stale. Start the new publish clean.
            self.dropped += self.entries.iter().filter(|entry| is_media(entry)).count() as u64;
            self.entries.clear();
            self.bytes = 0;
            if self.consumer_live {
                self.entries.push_back(Entry::Unpublished);
            }
        }
        self.mode = Mode::Normal;
        self.entries.push_back(Entry::PublishStarted);
    }

    pub(crate) fn push_publisher_replaced(&mut self) {
        self.entries.push_back(Entry::PublisherReplaced);
    }

    pub(crate) fn push_unpublished(&mut self) {
        // A publish that queued nothing the player has not seen the start of: erase it entirely,
        // which keeps publish/unpublish loops from piling up events.
        if matches!(self.entries.back(), Some(Entry::PublishStarted)) {
            self.entries.pop_back();
        } else {
            self.entries.push_back(Entry::Unpublished);
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        self.bytes -= entry_bytes(&entry);
        match entry {
            Entry::PublishStarted => self.consumer_live = true,
            Entry::Unpublished => self.consumer_live = false,
            Entry::Frame(_) | Entry::PublisherReplaced => {}
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(first: u8, packet: u8, size: usize) -> Frame {
        let mut payload = vec![0u8; size.max(2)];
        payload[0] = first;
        payload[1] = packet;
        Frame::video(0, Bytes::from(payload))
    }

    fn key(size: usize) -> Frame {
        video(0x17, 0x01, size)
    }

    fn inter(size: usize) -> Frame {
        video(0x27, 0x01, size)
    }

    #[test]
    fn overflow_drops_until_keyframe_after_drain() {
        let mut queue = PlayerQueue::new(1000);
        queue.push_frame(key(400), true);
        queue.push_frame(inter(400), true);
        assert_eq!(queue.mode(), Mode::Normal);
        // 800 + 400 > 1000: dropped, dropping state.
        queue.push_frame(inter(400), true);
        assert_eq!(queue.mode(), Mode::Dropping);
        assert_eq!(queue.dropped(), 1);
        assert_eq!(queue.bytes(), 800);
        // Keyframe arrives but queue is not below half: still dropping.
        queue.push_frame(key(100), true);
        assert_eq!(queue.dropped(), 2);
        queue.pop();
        // Drained to 400 (< 500), but an inter frame is no resume point.
        queue.push_frame(inter(10), true);
        assert_eq!(queue.dropped(), 3);
        assert_eq!(queue.mode(), Mode::Dropping);
        queue.push_frame(key(100), true);
        assert_eq!(queue.mode(), Mode::Normal);
        assert_eq!(queue.bytes(), 500);
        assert_eq!(queue.dropped(), 3);
    }

    #[test]
    fn audio_only_resumes_without_keyframe() {
        let aac = |size: usize| {
            let mut payload = vec![0u8; size];
            payload[0] = 0xAF;
            payload[1] = 0x01;
            Frame::audio(0, Bytes::from(payload))
        };
        let mut queue = PlayerQueue::new(100);
        queue.push_frame(aac(60), false);
        queue.push_frame(aac(60), false);
        assert_eq!(queue.mode(), Mode::Dropping);
        queue.pop();
        queue.push_frame(aac(30), false);
        assert_eq!(queue.mode(), Mode::Normal);
        assert_eq!(queue.bytes(), 30);
    }

    #[test]
    fn oversized_frame_into_empty_queue_is_kept() {
        let mut queue = PlayerQueue::new(100);
        queue.push_frame(key(500), true);
        assert_eq!(queue.bytes(), 500);
        assert_eq!(queue.mode(), Mode::Normal);
    }

    #[test]
    fn headers_replace_older_ones_when_over_bound() {
        let mut queue = PlayerQueue::new(100);
        queue.push_frame(key(90), true);
        for _ in 0..50 {
            queue.push_frame(video(0x17, 0x00, 20), true);
            queue.push_frame(Frame::metadata(0, Bytes::from(vec![2u8; 20])), true);
        }
        // The keyframe plus the latest of each header class.
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.bytes(), 130);
    }

    #[test]
    fn publish_loops_do_not_accumulate() {
        let mut queue = PlayerQueue::new(100);
        queue.push_publish_started();
        queue.pop();
        for _ in 0..1000 {
            queue.push_unpublished();
            queue.push_publish_started();
        }
        // Each later unpublish erases the PublishStarted before it: one pair remains.
        assert_eq!(queue.len(), 2);
        assert!(matches!(queue.pop(), Some(Entry::Unpublished)));
        assert!(matches!(queue.pop(), Some(Entry::PublishStarted)));
    }

    #[test]
    fn new_publish_while_dropping_discards_stale_frames() {
        let mut queue = PlayerQueue::new(100);
        queue.push_publish_started();
        queue.pop();
        queue.push_frame(key(60), true);
        queue.push_frame(inter(60), true);
        assert_eq!(queue.mode(), Mode::Dropping);
        queue.push_unpublished();
        queue.push_publish_started();
        assert_eq!(queue.bytes(), 0);
        assert_eq!(queue.dropped(), 2);
        assert!(matches!(queue.pop(), Some(Entry::Unpublished)));
        assert!(matches!(queue.pop(), Some(Entry::PublishStarted)));
        queue.push_frame(inter(10), true);
        assert_eq!(queue.bytes(), 10);
    }

    #[test]
    fn entry_count_is_bounded_for_empty_frames() {
        let mut queue = PlayerQueue::new(1000);
        queue.push_frame(key(2), true);
        for _ in 0..(MAX_QUEUED_ENTRIES * 2) {
            queue.push_frame(Frame::video(0, Bytes::new()), true);
        }
        assert!(queue.len() <= MAX_QUEUED_ENTRIES + 1);
        assert_eq!(queue.mode(), Mode::Dropping);
    }
}
