//! A synthetic stream published and played through rtmpx-client (async, on tokio): every frame
//! checked on arrival. The servers come from [`Gateway`] and [`crate::NginxRtmp`].

use std::time::Duration;

use bytes::BytesMut;
use rtmpx_client::{ClientEvent, ClientOptions, Connection, MediaKind, RtmpUrl};
use rtmpx_core::amf::{encode_amf0, Amf0Value};

use crate::Gateway;

/// The gateway with these `[[listener]]` tables (addresses on 127.0.0.1:0) and the app `live`.
pub fn start_gateway(listeners: &str) -> Gateway {
    Gateway::start(&format!("{listeners}\n[[app]]\nname = \"live\"\n"))
}

/// `scheme://127.0.0.1:port/live/stream` on `gw`'s first listener for `scheme`.
pub fn live_url(gw: &Gateway, scheme: &str, stream: &str) -> RtmpUrl {
    let url = gw.url(scheme, "live", stream);
    RtmpUrl::parse(&url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// One message of the synthetic stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: MediaKind,
    pub timestamp: u32,
    pub payload: Vec<u8>,
}

pub fn metadata() -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_amf0(&Amf0Value::from("onMetaData"), &mut buf);
    let fields = Amf0Value::object([
        ("width", Amf0Value::from(640.0)),
        ("height", 360.0.into()),
        ("framerate", 25.0.into()),
    ]);
    encode_amf0(&fields, &mut buf);
    buf.to_vec()
}

/// AVC and AAC sequence headers: what a player needs before frames.
pub fn sequence_headers() -> Vec<Frame> {
    let avc =
        vec![0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x04, 0x67, 0x64, 0x00, 0x1f];
    let aac = vec![0xaf, 0x00, 0x12, 0x10];
    vec![
        Frame { kind: MediaKind::Video, timestamp: 0, payload: avc },
        Frame { kind: MediaKind::Audio, timestamp: 0, payload: aac },
    ]
}

/// `count` video frames at 25 fps (a keyframe every 25, sizes from 50 bytes to 120 KB so that
/// messages span many chunks) interleaved with AAC frames every 23 ms. Each payload carries its
/// index, so every frame is distinct.
pub fn frames(count: u32) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut audio_ts = 0;
    for i in 0..count {
        let video_ts = i * 40;
        while audio_ts < video_ts {
            let mut payload = vec![0xaf, 0x01];
            payload.extend_from_slice(&audio_ts.to_be_bytes());
            payload.extend((0..180u32).map(|b| (b * 7 + audio_ts) as u8));
            out.push(Frame { kind: MediaKind::Audio, timestamp: audio_ts, payload });
            audio_ts += 23;
        }
        let key = i.is_multiple_of(25);
        let size = if i == 0 { 120_000 } else { 50 + (i as usize * 7919) % 30_000 };
        let mut payload = vec![if key { 0x17 } else { 0x27 }, 0x01, 0, 0, 0];
        payload.extend_from_slice(&i.to_be_bytes());
        payload.extend((0..size).map(|b| (b as u32 ^ i.wrapping_mul(31)) as u8));
        out.push(Frame { kind: MediaKind::Video, timestamp: video_ts, payload });
    }
    out
}

fn is_sequence_header(kind: MediaKind, payload: &[u8]) -> bool {
    match kind {
        MediaKind::Video => payload.get(1) == Some(&0),
        MediaKind::Audio => payload.get(1) == Some(&0),
        MediaKind::Data => true,
    }
}

/// What a round trip should check beyond frame order and payloads.
pub struct Expect {
    /// The server passes metadata through unchanged (nginx-rtmp rewrites it).
    pub metadata_intact: bool,
}

/// Publishes the synthetic stream on `publish_url`, plays it on `play_url`, and checks that the
/// player gets every frame, in order, intact, with the publisher's timestamp spacing; then that
/// the player hears of the unpublish.
pub async fn round_trip(publish_url: &RtmpUrl, play_url: &RtmpUrl, opts: &ClientOptions, expect: Expect) {
    let mut publisher = Connection::connect(publish_url, opts).await.expect("publisher connect");
    let pub_id = publisher.publish(&publish_url.stream).await.expect("publish");
    let mut player = Connection::connect(play_url, opts).await.expect("player connect");
    let play_id = player.play(&play_url.stream).await.expect("play");
    assert_eq!(publisher.handshake_version().is_encrypted(), publish_url.scheme.is_encrypted());
    assert_eq!(player.handshake_version().is_encrypted(), play_url.scheme.is_encrypted());

    let sent = frames(150);
    let meta = metadata();
    let publish = async move {
        publisher.send(pub_id, MediaKind::Data, 0, &meta).await.expect("send metadata");
        for f in sequence_headers() {
            publisher.send(pub_id, f.kind, f.timestamp, &f.payload).await.expect("send header");
        }
        for (i, f) in frames(150).iter().enumerate() {
            publisher.send(pub_id, f.kind, f.timestamp, &f.payload).await.expect("send frame");
            if i % 8 == 7 {
                // Paced a little, so a server with short player queues (nginx-rtmp) drops nothing.
                publisher.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        publisher.flush().await.expect("flush");
        publisher
    };
    let play = async {
        let mut got = Vec::new();
        let mut metadata = Vec::new();
        let mut headers = 0;
        let want = sent.len();
        while got.len() < want {
            let event = tokio::time::timeout(Duration::from_secs(20), player.next_event())
                .await
                .unwrap_or_else(|_| panic!("timed out after {} of {want} frames", got.len()))
                .expect("player event")
                .expect("player connection closed early");
            match event {
                ClientEvent::Media(m) => {
                    assert_eq!(m.stream_id, play_id);
                    if m.kind == MediaKind::Data {
                        metadata.push(m.payload.to_vec());
                    } else if is_sequence_header(m.kind, &m.payload) {
                        headers += 1;
                    } else {
                        got.push(Frame { kind: m.kind, timestamp: m.timestamp, payload: m.payload.to_vec() });
                    }
                }
                ClientEvent::Status { .. } => {}
                other => panic!("unexpected player event {other:?}"),
            }
        }
        (got, metadata, headers)
    };
    let (publisher, (got, metadata, headers)) = tokio::join!(publish, play);

    assert_eq!(got.len(), sent.len());
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert_eq!((g.kind, g.payload.len()), (s.kind, s.payload.len()), "frame {i}");
        assert!(g.payload == s.payload, "frame {i}: payload differs");
        // Servers may rebase timestamps, but never change their spacing.
        assert_eq!(
            g.timestamp.wrapping_sub(got[0].timestamp),
            s.timestamp - sent[0].timestamp,
            "frame {i}: timestamp spacing"
        );
    }
    assert!(headers >= 2, "sequence headers missing ({headers})");
    assert!(!metadata.is_empty(), "metadata missing");
    if expect.metadata_intact {
        assert_eq!(metadata[0], self::metadata());
    }

    // The publisher leaves: the player is told.
    let mut publisher = publisher;
    publisher.close_stream(pub_id).await.expect("close stream");
    publisher.close().await.expect("close publisher");
    let told = async {
        loop {
            match player.next_event().await.expect("player event") {
                Some(ClientEvent::Status { code, .. }) if code.contains("Unpublish") => return,
                Some(_) => {}
                None => panic!("player closed before the unpublish notice"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), told).await.expect("unpublish notice in time");
    player.close().await.expect("close player");
}
