//! Enhanced RTMP multitrack through the router: every track's sequence start for late joiners,
//! and legacy players served only what they can parse.

use bytes::Bytes;
use rtmpx_router::{
    Frame, MediaKind, PlayOptions, Player, PlayerEvent, Router, RouterConfig, SessionInfo, StreamKey,
};

fn session(id: u64) -> SessionInfo {
    SessionInfo { id, peer: format!("127.0.0.1:{}", 40000 + id), variant: "rtmp" }
}

fn key() -> StreamKey {
    StreamKey::new("live", "multi")
}

fn frames(player: &mut Player) -> Vec<Frame> {
    std::iter::from_fn(|| player.try_recv())
        .filter_map(|event| match event {
            PlayerEvent::Frame(frame) => Some(frame),
            _ => None,
        })
        .collect()
}

/// What FFmpeg 9 sends for `-map 0:v -map 1:a -map 2:a -c:a aac -f flv`: track 0 of each kind in
/// legacy form, the second audio track as OneTrack multitrack messages with track id 1.
fn publish_two_audio_tracks(router: &Router) -> rtmpx_router::Publisher {
    let publisher = router.publish(key(), session(1)).unwrap();
    publisher.send(Frame::video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64])));
    publisher.send(Frame::audio(0, Bytes::from_static(&[0xAF, 0, 0x12, 0x10])));
    publisher.send(Frame::audio(0, Bytes::from_static(b"\x95\x00mp4a\x01\x11\x90")));
    publisher.send(Frame::video(0, Bytes::from_static(&[0x17, 1, 0, 0, 0, 0xAA])));
    publisher.send(Frame::audio(10, Bytes::from_static(&[0xAF, 1, 0x21])));
    publisher.send(Frame::audio(10, Bytes::from_static(b"\x95\x01mp4a\x01\x22")));
    publisher
}

#[test]
fn late_joiner_gets_every_tracks_sequence_start() {
    let router = Router::new(RouterConfig::default());
    let _publisher = publish_two_audio_tracks(&router);
    let mut late = router.play(key(), session(2));
    let got = frames(&mut late);
    let headers: Vec<(MediaKind, u8)> =
        got.iter().filter(|f| f.info.sequence_header).map(|f| (f.kind, f.info.track)).collect();
    assert_eq!(headers, [(MediaKind::Video, 0), (MediaKind::Audio, 0), (MediaKind::Audio, 1)]);
    // Then the GOP: keyframe and both audio tracks' frames.
    assert_eq!(got.iter().filter(|f| !f.info.sequence_header).count(), 3);
    let snapshot = &router.streams()[0];
    let tracks: Vec<_> = snapshot.tracks.iter().map(|t| (t.kind, t.id, t.codec)).collect();
    assert_eq!(
        tracks,
        [(MediaKind::Video, 0, "h264"), (MediaKind::Audio, 0, "aac"), (MediaKind::Audio, 1, "aac")]
    );
    assert_eq!(snapshot.legacy_players, 0);
}

#[test]
fn legacy_player_gets_the_default_tracks_only() {
    let router = Router::new(RouterConfig::default());
    let publisher = publish_two_audio_tracks(&router);
    let mut legacy = router.play_with(key(), session(2), PlayOptions::default().with_legacy(true));
    assert_eq!(router.streams()[0].legacy_players, 1);
    // Live: AV1 has no legacy form; an avc1 ManyTracks keyframe becomes a legacy AVC tag.
    publisher.send(Frame::video(20, Bytes::from_static(b"\x93av01\x09")));
    publisher
        .send(Frame::video(40, Bytes::from_static(b"\x96\x13avc1\x00\x00\x00\x01\xAA\x01\x00\x00\x01\xBB")));
    publisher.send(Frame::audio(40, Bytes::from_static(b"\x95\x01mp4a\x01\x22")));
    let got = frames(&mut legacy);
    assert!(got.iter().all(|f| !f.info.enhanced), "an enhanced tag reached a legacy player");
    let payloads: Vec<&[u8]> = got.iter().map(|f| &f.payload[..]).collect();
    assert_eq!(
        payloads,
        [
            &[0x17, 0, 0, 0, 0, 1, 0x64][..],
            &[0xAF, 0, 0x12, 0x10],
            &[0x17, 1, 0, 0, 0, 0xAA],
            &[0xAF, 1, 0x21],
            &[0x17, 1, 0, 0, 0, 0xAA],
        ]
    );
}
