//! Real client byte streams (tests/fixtures) replayed through a server session.

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rtmpx_core::amf::{decode_amf0_all, encode_amf0, Amf0Value, AmfLimits};
use rtmpx_core::media::{inspect_audio, inspect_video, Codec};
use rtmpx_core::session::{Media, MediaKind, ServerConfig, ServerEvent, ServerSession};

/// Replays a capture in uneven pieces, accepting everything, and returns the events.
fn replay(capture: &[u8]) -> Vec<ServerEvent> {
    let mut server = ServerSession::new(ServerConfig::default(), &mut StdRng::seed_from_u64(9));
    let mut events = Vec::new();
    for piece in capture.chunks(1000) {
        server.handle_input(piece).expect("a real client's bytes parse");
        while let Some(event) = server.poll_event() {
            match &event {
                ServerEvent::ConnectRequested(_) => server.accept_connect().unwrap(),
                ServerEvent::PublishRequested { stream_id, .. } => server.accept_publish(*stream_id).unwrap(),
                ServerEvent::PlayRequested { stream_id, stream_name, .. } => {
                    server.accept_play(*stream_id, stream_name).unwrap()
                }
                _ => {}
            }
            events.push(event);
        }
        let _ = server.poll_transmit();
    }
    events
}

fn media(events: &[ServerEvent]) -> Vec<&Media> {
    events.iter().filter_map(|e| if let ServerEvent::Media(m) = e { Some(m) } else { None }).collect()
}

#[test]
fn ffmpeg_publish_capture() {
    let events = replay(include_bytes!("fixtures/ffmpeg_publish.bin"));
    assert!(
        matches!(events[0], ServerEvent::HandshakeComplete { digest: true, .. }),
        "ffmpeg uses the digest handshake"
    );
    let ServerEvent::ConnectRequested(connect) = &events[1] else { panic!("{:?}", events[1]) };
    assert_eq!(connect.app, "live");
    assert!(connect.flash_ver.as_deref().unwrap().starts_with("FMLE/3.0"), "{connect:?}");
    assert!(connect.tc_url.as_deref().unwrap().ends_with("/live"));
    assert!(events
        .iter()
        .any(|e| matches!(e, ServerEvent::PublishRequested { stream_name, .. } if stream_name == "fixture")));

    let media = media(&events);
    let metadata = media.iter().find(|m| m.kind == MediaKind::Data).expect("onMetaData");
    let values = decode_amf0_all(&metadata.payload, AmfLimits::default()).unwrap();
    assert_eq!(values[0].as_str(), Some("onMetaData"));
    assert_eq!(values[1].get("width").and_then(Amf0Value::as_f64), Some(160.0));
    assert_eq!(values[1].get("title").and_then(Amf0Value::as_str), Some("fixture"));
    // Our encoder reproduces ffmpeg's bytes exactly.
    let mut reencoded = BytesMut::new();
    values.iter().for_each(|v| encode_amf0(v, &mut reencoded));
    assert_eq!(&reencoded[..], &metadata.payload[..]);

    let video: Vec<_> =
        media.iter().filter(|m| m.kind == MediaKind::Video).map(|m| inspect_video(&m.payload)).collect();
    assert!(video[0].sequence_header && video[0].codec == Some(Codec::H264));
    assert!(video[1].keyframe, "the first frame after the sequence header is a keyframe");
    let audio: Vec<_> =
        media.iter().filter(|m| m.kind == MediaKind::Audio).map(|m| inspect_audio(&m.payload)).collect();
    assert!(audio[0].sequence_header && audio[0].codec == Some(Codec::Aac));
    assert!(audio.len() > 3);
}

#[test]
fn rtmpdump_play_capture() {
    let events = replay(include_bytes!("fixtures/rtmpdump_play.bin"));
    let ServerEvent::ConnectRequested(connect) = &events[1] else { panic!("{:?}", events[1]) };
    assert_eq!(connect.app, "live");
    assert!(connect.flash_ver.as_deref().unwrap().starts_with("LNX"), "{connect:?}");
    assert!(events
        .iter()
        .any(|e| matches!(e, ServerEvent::PlayRequested { stream_name, .. } if stream_name == "src")));
}

#[test]
fn librtmp_publish_capture() {
    let events = replay(include_bytes!("fixtures/librtmp_publish.bin"));
    assert!(events
        .iter()
        .any(|e| matches!(e, ServerEvent::PublishRequested { stream_name, .. } if stream_name == "pyfix")));
    let media = media(&events);
    assert!(media.iter().any(|m| m.kind == MediaKind::Video && inspect_video(&m.payload).keyframe));
    assert!(media.iter().any(|m| m.kind == MediaKind::Audio));
}
