//! Per-player timestamp rebasing: each player's timeline starts at 0 and never goes backwards,
//! across late joins, drops, publisher changes and jumps in the publisher's clock (a publisher
//! sending 2^32-1 must not pin every later frame there).

use crate::MediaKind;

/// A source timestamp this far (ms) from the previous one is a discontinuity, not time passing:
/// the timeline continues from where it was instead of jumping with it.
pub(crate) const MAX_JUMP_MS: i64 = 30_000;

fn kind_index(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
        MediaKind::Data => 2,
    }
}

#[derive(Debug, Default)]
pub(crate) struct Rebaser {
    /// delivered = source + offset; `None` until the current publish's first media frame.
    offset: Option<i64>,
    last_per_kind: [u32; 3],
    /// Highest media timestamp delivered so far (all publishes).
    max_media: Option<u32>,
    /// A publisher took over the stream: its first media frame keeps the offset only if it
    /// continues the timeline.
    check_continuity: bool,
    /// The previous source timestamp of the current publish (any kind).
    last_source: Option<u32>,
}

/// A taken-over stream whose first frame lands this far past the last one restarts its base.
const CONTINUITY_WINDOW: i64 = 5_000;

impl Rebaser {
    /// A new publisher: its timestamps restart, so the next media frame sets a new offset.
    pub(crate) fn publish_started(&mut self) {
        self.offset = None;
        self.last_source = None;
    }

    /// Another publisher took over without an unpublish (a reconnecting client): a client that
    /// continues its timestamps keeps its offset, one that restarts them gets a new base.
    pub(crate) fn publisher_replaced(&mut self) {
        self.check_continuity = true;
        self.last_source = None;
    }

    /// Maps a source timestamp. `media` is false for metadata and sequence headers, which do not
    /// set the base (before it exists they get the kind's last timestamp, 0 at first).
    pub(crate) fn map(&mut self, kind: MediaKind, media: bool, timestamp: u32) -> u32 {
        if media && std::mem::take(&mut self.check_continuity) {
            if let (Some(offset), Some(max)) = (self.offset, self.max_media) {
                let shifted = i64::from(timestamp) + offset;
                if shifted <= i64::from(max) || shifted > i64::from(max) + CONTINUITY_WINDOW {
                    self.offset = None;
                }
            }
        }
        let jumped =
            self.last_source.is_some_and(|last| (i64::from(timestamp) - i64::from(last)).abs() > MAX_JUMP_MS);
        self.last_source = Some(timestamp);
        if (media && self.offset.is_none()) || (jumped && self.offset.is_some()) {
            let delivered_max = self.last_per_kind.iter().copied().max().unwrap_or(0);
            let target = self.max_media.map_or(0, |max| i64::from(max.max(delivered_max)) + 1);
            self.offset = Some(target - i64::from(timestamp));
        }
        let shifted = self.offset.map_or(0, |offset| i64::from(timestamp) + offset);
        let clamped = u32::try_from(shifted.clamp(0, i64::from(u32::MAX))).unwrap_or(u32::MAX);
        let slot = &mut self.last_per_kind[kind_index(kind)];
        let delivered = clamped.max(*slot);
        *slot = delivered;
        if media {
            self.max_media = Some(self.max_media.map_or(delivered, |max| max.max(delivered)));
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MediaKind::{Audio, Data, Video};

    #[test]
    fn first_media_frame_is_zero_and_headers_before_it_are_zero() {
        let mut rebaser = Rebaser::default();
        assert_eq!(rebaser.map(Data, false, 5000), 0);
        assert_eq!(rebaser.map(Video, false, 5000), 0);
        assert_eq!(rebaser.map(Video, true, 10_000), 0);
        assert_eq!(rebaser.map(Audio, true, 10_023), 23);
        assert_eq!(rebaser.map(Video, true, 10_040), 40);
        // Behind the base: clamped to 0, then to the last audio timestamp (never backwards).
        assert_eq!(rebaser.map(Audio, true, 9_990), 23);
    }

    #[test]
    fn never_below_zero_never_backwards() {
        let mut rebaser = Rebaser::default();
        assert_eq!(rebaser.map(Video, true, 1000), 0);
        assert_eq!(rebaser.map(Audio, true, 990), 0);
        assert_eq!(rebaser.map(Video, true, 1100), 100);
        assert_eq!(rebaser.map(Video, true, 1050), 100);
        assert_eq!(rebaser.map(Video, true, 1200), 200);
    }

    #[test]
    fn new_publisher_continues_after_last_timestamp() {
        let mut rebaser = Rebaser::default();
        rebaser.map(Video, true, 0);
        rebaser.map(Audio, true, 2000);
        assert_eq!(rebaser.map(Video, true, 1960), 1960);
        rebaser.publish_started();
        // Headers of the new publisher: not backwards for their kind.
        assert_eq!(rebaser.map(Video, false, 0), 1960);
        assert_eq!(rebaser.map(Audio, false, 0), 2000);
        assert_eq!(rebaser.map(Video, true, 0), 2001);
        assert_eq!(rebaser.map(Audio, true, 21), 2022);
    }

    #[test]
    fn a_takeover_keeps_a_continuing_timeline_and_rebases_a_restarted_one() {
        let mut rebaser = Rebaser::default();
        assert_eq!(rebaser.map(Video, true, 10_000), 0);
        assert_eq!(rebaser.map(Video, true, 10_040), 40);
        rebaser.publisher_replaced();
        assert_eq!(rebaser.map(Video, false, 10_080), 80, "headers map and do not decide");
        assert_eq!(rebaser.map(Video, true, 10_080), 80, "continues: the offset stays");
        rebaser.publisher_replaced();
        assert_eq!(rebaser.map(Video, true, 0), 81, "restarted at 0: new base after the last");
        assert_eq!(rebaser.map(Video, true, 40), 121);
        rebaser.publisher_replaced();
        assert_eq!(rebaser.map(Video, true, 900_000), 122, "a jump far ahead: new base");
    }

    #[test]
    fn a_jump_to_the_end_of_time_does_not_freeze_later_frames() {
        let mut rebaser = Rebaser::default();
        assert_eq!(rebaser.map(Video, true, 1000), 0);
        assert_eq!(rebaser.map(Video, true, 1040), 40);
        // One hostile frame at 2^32-1, then the stream goes on where it was.
        assert_eq!(rebaser.map(Video, true, u32::MAX), 41);
        assert_eq!(rebaser.map(Video, true, 1080), 42);
        assert_eq!(rebaser.map(Audio, true, 1100), 62);
        assert_eq!(rebaser.map(Video, true, 1120), 82);
        // Metadata from the far future does not pin its kind either.
        assert_eq!(rebaser.map(Data, false, u32::MAX - 5), 83);
        assert_eq!(rebaser.map(Video, true, 1160), 84);
        assert_eq!(rebaser.map(Data, false, 1170), 94);
    }

    #[test]
    fn jumps_backwards_and_32_bit_wraps_continue_the_timeline() {
        let mut rebaser = Rebaser::default();
        assert_eq!(rebaser.map(Video, true, u32::MAX - 40), 0);
        assert_eq!(rebaser.map(Video, true, u32::MAX), 40);
        // The 32-bit clock wraps: the next frame comes right after.
        assert_eq!(rebaser.map(Video, true, 39), 41);
        assert_eq!(rebaser.map(Video, true, 79), 81);
        // Small differences (audio and video interleaving) keep the offset.
        assert_eq!(rebaser.map(Audio, true, 60), 62);
    }

    #[test]
    fn a_new_publisher_far_ahead_continues_after_the_last_timestamp() {
        let mut rebaser = Rebaser::default();
        rebaser.map(Video, true, 0);
        assert_eq!(rebaser.map(Video, true, 20_000), 20_000);
        rebaser.publish_started();
        assert_eq!(rebaser.map(Video, true, u32::MAX - 7), 20_001);
        assert_eq!(rebaser.map(Video, true, u32::MAX), 20_008);
    }
}
