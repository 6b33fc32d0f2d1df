//! Client and server sessions talking through memory.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::amf::Amf0Value;
use crate::handshake::HandshakeVersion;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Moves bytes both ways, feeding the server in pieces of `split` bytes, until both are quiet.
fn pump(client: &mut ClientSession, server: &mut ServerSession, split: usize) {
    for _ in 0..64 {
        let mut moved = false;
        while let Some(bytes) = client.poll_transmit() {
            moved = true;
            for piece in bytes.chunks(split) {
                server.handle_input(piece).expect("server input");
            }
        }
        while let Some(bytes) = server.poll_transmit() {
            moved = true;
            client.handle_input(&bytes).expect("client input");
        }
        if !moved {
            return;
        }
    }
    panic!("sessions never went quiet");
}

fn server_events(server: &mut ServerSession) -> Vec<ServerEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

fn client_events(client: &mut ClientSession) -> Vec<ClientEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

fn connected_pair(version: HandshakeVersion, digest: bool, split: usize) -> (ClientSession, ServerSession) {
    let mut config = ClientConfig::new("live", "rtmp://127.0.0.1/live");
    config.version = version;
    config.digest = digest;
    let mut client = ClientSession::new(config, &mut rng(1));
    let mut server = ServerSession::new(ServerConfig::default(), &mut rng(2));
    pump(&mut client, &mut server, split);
    let events = server_events(&mut server);
    assert!(
        matches!(events[0], ServerEvent::HandshakeComplete { version: v, .. } if v == version),
        "{events:?}"
    );
    let ServerEvent::ConnectRequested(request) = &events[1] else { panic!("{events:?}") };
    assert_eq!(request.app, "live");
    assert_eq!(request.tc_url.as_deref(), Some("rtmp://127.0.0.1/live"));
    server.accept_connect().unwrap();
    pump(&mut client, &mut server, split);
    assert!(client.is_connected());
    assert!(client_events(&mut client).contains(&ClientEvent::Connected));
    (client, server)
}

fn publish_and_play_through(version: HandshakeVersion, digest: bool, split: usize) {
    let (mut publisher, mut server) = connected_pair(version, digest, split);
    publisher.publish("cam?key=1");
    pump(&mut publisher, &mut server, split);
    let events = server_events(&mut server);
    let Some(ServerEvent::PublishRequested { stream_id, stream_name, mode }) = events.last().cloned() else {
        panic!("{events:?}")
    };
    assert_eq!(stream_name, "cam?key=1");
    assert_eq!(mode, PublishMode::Live);
    server.accept_publish(stream_id).unwrap();
    pump(&mut publisher, &mut server, split);
    assert!(client_events(&mut publisher).contains(&ClientEvent::PublishStarted { stream_id }));

    let metadata = Bytes::from_static(b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00\x00\x00\x09");
    let frame = Bytes::from(vec![0x17u8; 10_000]);
    publisher.send_media(stream_id, MediaKind::Data, 0, &metadata);
    publisher.send_media(stream_id, MediaKind::Video, 40, &frame);
    publisher.send_media(stream_id, MediaKind::Audio, 0x0100_0000, b"\xaf\x01\x21");
    pump(&mut publisher, &mut server, split);
    let media: Vec<Media> = server_events(&mut server)
        .into_iter()
        .filter_map(|e| if let ServerEvent::Media(m) = e { Some(m) } else { None })
        .collect();
    assert_eq!(media.len(), 3);
    assert_eq!((media[0].kind, &media[0].payload), (MediaKind::Data, &metadata), "@setDataFrame is stripped");
    assert_eq!((media[1].timestamp, media[1].payload.len()), (40, 10_000));
    assert_eq!(media[2].timestamp, 0x0100_0000, "extended timestamp survives");

    // A player on a second connection gets what the server sends it.
    let (mut player, mut server2) = connected_pair(version, digest, split);
    player.play("cam");
    pump(&mut player, &mut server2, split);
    let Some(ServerEvent::PlayRequested { stream_id: play_id, stream_name, .. }) =
        server_events(&mut server2).pop()
    else {
        panic!()
    };
    assert_eq!(stream_name, "cam");
    server2.accept_play(play_id, "cam").unwrap();
    for m in &media {
        assert!(server2.send_media(play_id, m.kind, m.timestamp, &m.payload));
    }
    pump(&mut player, &mut server2, split);
    let events = client_events(&mut player);
    assert!(events.contains(&ClientEvent::PlayStarted { stream_id: play_id }), "{events:?}");
    let received: Vec<&Media> =
        events.iter().filter_map(|e| if let ClientEvent::Media(m) = e { Some(m) } else { None }).collect();
    assert_eq!(received.len(), 3, "{events:?}");
    assert_eq!(received[1].payload, frame);
    assert_eq!(received[2].timestamp, 0x0100_0000);
}

#[test]
fn plain_digest_publish_and_play() {
    publish_and_play_through(HandshakeVersion::Plain, true, usize::MAX);
}

#[test]
fn plain_simple_handshake_in_small_pieces() {
    publish_and_play_through(HandshakeVersion::Plain, false, 7);
}

#[test]
fn rtmpe_sessions_publish_and_play() {
    for version in [HandshakeVersion::Rtmpe, HandshakeVersion::RtmpeXtea, HandshakeVersion::RtmpeBlowfish] {
        publish_and_play_through(version, true, 1000);
    }
}

#[test]
fn rejected_connect_reaches_the_client() {
    let mut client = ClientSession::new(ClientConfig::new("live", "rtmp://h/live"), &mut rng(3));
    let mut server = ServerSession::new(ServerConfig::default(), &mut rng(4));
    pump(&mut client, &mut server, usize::MAX);
    server_events(&mut server);
    server.reject_connect("no such app").unwrap();
    pump(&mut client, &mut server, usize::MAX);
    let events = client_events(&mut client);
    assert!(events.iter().any(|e| matches!(e, ClientEvent::Rejected { code, description }
        if code == "NetConnection.Connect.Rejected" && description == "no such app")));
    assert!(server.is_closed());
}

#[test]
fn rejected_publish_is_an_error_status() {
    let (mut client, mut server) = connected_pair(HandshakeVersion::Plain, true, usize::MAX);
    client.publish("taken");
    pump(&mut client, &mut server, usize::MAX);
    let Some(ServerEvent::PublishRequested { stream_id, .. }) = server_events(&mut server).pop() else {
        panic!()
    };
    server.reject_publish(stream_id, "NetStream.Publish.BadName", "already publishing").unwrap();
    pump(&mut client, &mut server, usize::MAX);
    assert!(client_events(&mut client)
        .iter()
        .any(|e| matches!(e, ClientEvent::Rejected { code, .. } if code == "NetStream.Publish.BadName")));
}

#[test]
fn media_before_publish_closes_the_session() {
    let (mut client, mut server) = connected_pair(HandshakeVersion::Plain, true, usize::MAX);
    client.send_media(1, MediaKind::Video, 0, b"\x17\x01\x00\x00\x00");
    let bytes = client.poll_transmit().unwrap();
    let err = server.handle_input(&bytes).unwrap_err();
    assert!(matches!(err, crate::Error::Protocol(_)), "{err}");
    assert!(server.is_closed());
    assert_eq!(server.handle_input(b"x"), Err(crate::Error::Closed));
}

#[test]
fn garbage_after_handshake_is_an_error_not_a_panic() {
    let (_client, mut server) = connected_pair(HandshakeVersion::Plain, true, usize::MAX);
    // A type-1 header on a chunk stream with no previous header.
    assert!(server.handle_input(&[0x45, 0, 0, 0, 0, 0, 4, 20, 1, 2, 3, 4]).is_err());
}

/// A player and its server session, playing stream "cam" (server output not yet taken).
fn playing_server() -> (ClientSession, ServerSession, u32) {
    playing_server_over(HandshakeVersion::Plain)
}

fn playing_server_over(version: HandshakeVersion) -> (ClientSession, ServerSession, u32) {
    let (mut player, mut server) = connected_pair(version, true, usize::MAX);
    player.play("cam");
    pump(&mut player, &mut server, usize::MAX);
    let Some(ServerEvent::PlayRequested { stream_id, .. }) = server_events(&mut server).pop() else {
        panic!()
    };
    server.accept_play(stream_id, "cam").unwrap();
    pump(&mut player, &mut server, usize::MAX);
    client_events(&mut player);
    (player, server, stream_id)
}

fn drain(server: &mut ServerSession) -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let mut pieces = 0;
    while let Some(piece) = server.poll_transmit() {
        bytes.extend_from_slice(&piece);
        pieces += 1;
    }
    (bytes, pieces)
}

#[test]
fn shared_media_is_byte_identical_to_copied_media() {
    // Two sessions in the same state; one copies payloads, the other shares them.
    let (_p1, mut copying, id1) = playing_server();
    let (_p2, mut sharing, id2) = playing_server();
    drain(&mut copying);
    drain(&mut sharing);
    let key = Bytes::from((0..10_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    let small = Bytes::from_static(b"\xaf\x01\x21\x22");
    let sends: [(MediaKind, u32, &Bytes); 5] = [
        (MediaKind::Video, 0, &key),
        (MediaKind::Audio, 10, &small),
        (MediaKind::Video, 40, &key),
        (MediaKind::Video, 80, &key),
        (MediaKind::Video, 0x0100_0000, &key), // extended timestamp on every chunk
    ];
    let mut payload_len = 0;
    for (kind, ts, payload) in sends {
        assert!(copying.send_media(id1, kind, ts, payload));
        assert!(sharing.send_media_shared(id2, kind, ts, payload));
        payload_len += payload.len();
    }
    assert_eq!(copying.pending_output(), sharing.pending_output());
    let (copied, copied_pieces) = drain(&mut copying);
    let (shared, shared_pieces) = drain(&mut sharing);
    assert_eq!(copied, shared);
    assert!(copied.len() > payload_len);
    assert_eq!(copied_pieces, 1);
    // 4 large frames × 3 chunks × (header + slice); the small audio rides in a header piece.
    assert_eq!(shared_pieces, 24);
    assert!(!sharing.has_transmit());
}

#[test]
fn shared_media_slices_the_payload_without_copying() {
    let (mut player, mut server, stream_id) = playing_server();
    drain(&mut server);
    let frame = Bytes::from(vec![0x17u8; 5_000]);
    assert!(server.send_media_shared(stream_id, MediaKind::Video, 0, &frame));
    let pieces: Vec<Bytes> = std::iter::from_fn(|| server.poll_transmit()).collect();
    let inside = |piece: &Bytes| {
        let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        range.contains(&(piece.as_ptr() as usize))
    };
    assert_eq!(pieces.iter().filter(|p| inside(p)).map(|p| p.len()).sum::<usize>(), 5_000);
    // And the player decodes it.
    for piece in &pieces {
        player.handle_input(piece).unwrap();
    }
    let media: Vec<Media> = client_events(&mut player)
        .into_iter()
        .filter_map(|e| if let ClientEvent::Media(m) = e { Some(m) } else { None })
        .collect();
    assert_eq!(media.len(), 1);
    assert_eq!(media[0].payload, frame);
}

#[test]
fn rtmpe_sessions_copy_shared_media_and_encrypt_it() {
    let (mut player, mut server) = connected_pair(HandshakeVersion::Rtmpe, true, usize::MAX);
    player.play("cam");
    pump(&mut player, &mut server, usize::MAX);
    let Some(ServerEvent::PlayRequested { stream_id, .. }) = server_events(&mut server).pop() else {
        panic!()
    };
    server.accept_play(stream_id, "cam").unwrap();
    let frame = Bytes::from(vec![0x17u8; 9_000]);
    assert!(server.send_media_shared(stream_id, MediaKind::Video, 0, &frame));
    let (bytes, pieces) = drain(&mut server);
    assert_eq!(pieces, 1, "RTMPE output is one encrypted buffer");
    player.handle_input(&bytes).unwrap();
    let events = client_events(&mut player);
    assert!(events.iter().any(|e| matches!(e, ClientEvent::Media(m) if m.payload == frame)), "{events:?}");
}

fn media_payloads(player: &mut ClientSession, bytes: &[u8]) -> Vec<Bytes> {
    player.handle_input(bytes).unwrap();
    client_events(player)
        .into_iter()
        .filter_map(|e| if let ClientEvent::Media(m) = e { Some(m.payload) } else { None })
        .collect()
}

#[test]
fn paired_encryption_gives_each_rtmpe_player_its_own_stream() {
    let (mut player_a, mut a, id_a) = playing_server_over(HandshakeVersion::Rtmpe);
    let (mut player_b, mut b, id_b) = playing_server_over(HandshakeVersion::RtmpeXtea);
    assert!(a.is_encrypted() && b.is_encrypted());
    let big = Bytes::from((0..9_000u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
    let small = Bytes::from_static(b"\xaf\x01\x21");
    // Different amounts unsealed on each side, sealed in one pass, then more output after it.
    assert!(a.send_media_shared(id_a, MediaKind::Video, 0, &big));
    assert!(a.send_media_shared(id_a, MediaKind::Audio, 5, &small));
    assert!(b.send_media_shared(id_b, MediaKind::Video, 0, &big));
    a.seal_output_paired(&mut b);
    assert!(b.send_media_shared(id_b, MediaKind::Audio, 5, &small));
    let (bytes_a, _) = drain(&mut a);
    let (bytes_b, _) = drain(&mut b);
    assert_eq!(media_payloads(&mut player_a, &bytes_a), [big.clone(), small.clone()]);
    assert_eq!(media_payloads(&mut player_b, &bytes_b), [big.clone(), small.clone()]);
    // The streams carry on in step: a second paired round decodes too.
    assert!(a.send_media_shared(id_a, MediaKind::Video, 40, &small));
    assert!(b.send_media_shared(id_b, MediaKind::Video, 40, &big));
    b.seal_output_paired(&mut a);
    assert_eq!(media_payloads(&mut player_a, &drain(&mut a).0), [small]);
    assert_eq!(media_payloads(&mut player_b, &drain(&mut b).0), [big]);
}

#[test]
fn pairing_leaves_plain_sessions_alone() {
    let (mut player_a, mut plain, id_a) = playing_server();
    let (mut player_b, mut rtmpe, id_b) = playing_server_over(HandshakeVersion::Rtmpe);
    let frame = Bytes::from(vec![0x17u8; 3_000]);
    assert!(plain.send_media_shared(id_a, MediaKind::Video, 0, &frame));
    assert!(rtmpe.send_media_shared(id_b, MediaKind::Video, 0, &frame));
    plain.seal_output_paired(&mut rtmpe);
    assert_eq!(media_payloads(&mut player_a, &drain(&mut plain).0), std::slice::from_ref(&frame));
    assert_eq!(media_payloads(&mut player_b, &drain(&mut rtmpe).0), [frame]);
}

#[test]
fn released_buffers_leave_the_session_working() {
    let (mut player, mut server, stream_id) = playing_server();
    drain(&mut server);
    server.release_buffers();
    let frame = Bytes::from(vec![0x27u8; 3_000]);
    assert!(server.send_media_shared(stream_id, MediaKind::Video, 0, &frame));
    let (bytes, _) = drain(&mut server);
    server.release_buffers();
    player.handle_input(&bytes).unwrap();
    assert!(client_events(&mut player)
        .iter()
        .any(|e| matches!(e, ClientEvent::Media(m) if m.payload == frame)));
}

/// The server's outgoing chunk size after `accept_connect` for a client whose C2 was its real
/// one or, with `echo_c2`, S1 echoed (as FFmpeg sends when publishing); the client must
/// connect either way.
fn chunk_size_after_connect(version: HandshakeVersion, echo_c2: bool) -> u32 {
    let mut config = ClientConfig::new("live", "rtmp://127.0.0.1/live");
    config.version = version;
    config.digest = true;
    let mut client = ClientSession::new(config, &mut rng(5));
    let mut server = ServerSession::new(ServerConfig::default(), &mut rng(6));
    let take = |client: &mut ClientSession| {
        std::iter::from_fn(|| client.poll_transmit()).fold(Vec::new(), |mut all, piece| {
            all.extend_from_slice(&piece);
            all
        })
    };
    server.handle_input(&take(&mut client)).unwrap();
    let (s0s1s2, _) = drain(&mut server);
    client.handle_input(&s0s1s2).unwrap();
    let mut c2_and_connect = take(&mut client);
    if echo_c2 {
        c2_and_connect[..1536].copy_from_slice(&s0s1s2[1..1537]);
    }
    server.handle_input(&c2_and_connect).unwrap();
    let events = server_events(&mut server);
    assert!(matches!(events[1], ServerEvent::ConnectRequested(_)), "{events:?}");
    server.accept_connect().unwrap();
    let (reply, _) = drain(&mut server);
    client.handle_input(&reply).unwrap();
    assert!(client.is_connected(), "{version:?} echo={echo_c2}");
    server.outgoing_chunk_size()
}

#[test]
fn rtmpe_clients_echoing_s1_get_no_set_chunk_size() {
    for version in [HandshakeVersion::Rtmpe, HandshakeVersion::RtmpeXtea, HandshakeVersion::RtmpeBlowfish] {
        assert_eq!(chunk_size_after_connect(version, false), 4096, "{version:?}");
        assert_eq!(chunk_size_after_connect(version, true), 128, "{version:?}");
    }
    // Plain clients echoing S1 (FFmpeg publishing over rtmp://) handle Set Chunk Size.
    assert_eq!(chunk_size_after_connect(HandshakeVersion::Plain, true), 4096);
}

#[test]
fn reconnect_capability_and_request_reach_the_other_side() {
    let mut config = ClientConfig::new("live", "rtmp://127.0.0.1/live");
    config.capabilities.caps_ex |= CAPS_EX_RECONNECT;
    let mut client = ClientSession::new(config, &mut rng(7));
    let mut server = ServerSession::new(ServerConfig::default(), &mut rng(8));
    pump(&mut client, &mut server, 4096);
    let request =
        ReconnectRequest { tc_url: Some("rtmp://10.0.0.2:1936/live".into()), description: "moving".into() };
    assert!(!server.send_reconnect_request(&request), "nothing is sent before connect was accepted");
    let events = server_events(&mut server);
    let Some(ServerEvent::ConnectRequested(connect)) = events.last() else { panic!("{events:?}") };
    assert_eq!(connect.caps_ex() & CAPS_EX_RECONNECT, CAPS_EX_RECONNECT);
    server.accept_connect().unwrap();
    pump(&mut client, &mut server, 4096);
    client_events(&mut client);

    assert!(server.send_reconnect_request(&request));
    let same_url = ReconnectRequest { tc_url: None, description: "same place".into() };
    assert!(server.send_reconnect_request(&same_url));
    pump(&mut client, &mut server, 4096);
    assert_eq!(
        client_events(&mut client),
        [ClientEvent::ReconnectRequested(request), ClientEvent::ReconnectRequested(same_url)]
    );
    assert!(client.is_connected(), "the request does not end the session");
}

#[test]
fn clients_announce_no_capabilities_unless_asked() {
    let mut config = ClientConfig::new("live", "rtmp://h/live");
    config.capabilities = EnhancedCapabilities::default();
    let mut client = ClientSession::new(config, &mut rng(3));
    let mut server = ServerSession::new(ServerConfig::default(), &mut rng(4));
    pump(&mut client, &mut server, 4096);
    let events = server_events(&mut server);
    let Some(ServerEvent::ConnectRequested(connect)) = events.last() else { panic!("{events:?}") };
    assert_eq!(connect.caps_ex(), 0);
    assert!(connect.properties.iter().all(|(k, _)| k != "capsEx"));
}

#[test]
fn reconnect_request_info_object() {
    use crate::amf::{encode_amf0, Amf0Decoder, Amf0Value, AmfLimits};
    let request = ReconnectRequest { tc_url: Some("//192.0.2.1/live".into()), description: "d".into() };
    let mut bytes = bytes::BytesMut::new();
    encode_amf0(&request.info(), &mut bytes);
    let info = Amf0Decoder::new(&bytes, AmfLimits::default()).next_value().unwrap().unwrap();
    assert_eq!(info.get("code").and_then(Amf0Value::as_str), Some(RECONNECT_REQUEST_CODE));
    assert_eq!(info.get("level").and_then(Amf0Value::as_str), Some("status"));
    assert_eq!(ReconnectRequest::from_info(&info), Some(request));
    // An empty tcUrl means the current one; other codes are not requests.
    let empty = Amf0Value::object([("code", Amf0Value::from(RECONNECT_REQUEST_CODE)), ("tcUrl", "".into())]);
    assert_eq!(ReconnectRequest::from_info(&empty).unwrap().tc_url, None);
    let other = Amf0Value::object([("code", Amf0Value::from("NetStream.Play.Start"))]);
    assert_eq!(ReconnectRequest::from_info(&other), None);
    // capsEx: a number, anything else reads as 0.
    let props = |v: Amf0Value| vec![("capsEx".to_owned(), v)];
    assert_eq!(caps_ex(&props(15.0.into())), 15);
    assert_eq!(caps_ex(&props("1".into())), 0);
    assert_eq!(caps_ex(&props((-1.0).into())), 0);
    assert_eq!(caps_ex(&props(f64::NAN.into())), 0);
}

fn publishing_server() -> (ServerSession, u32) {
    let (mut publisher, mut server) = connected_pair(HandshakeVersion::Plain, true, usize::MAX);
    publisher.publish("cam");
    pump(&mut publisher, &mut server, usize::MAX);
    let Some(ServerEvent::PublishRequested { stream_id, .. }) = server_events(&mut server).pop() else {
        panic!()
    };
    server.accept_publish(stream_id).unwrap();
    server_events(&mut server);
    (server, stream_id)
}

/// One message in one chunk on chunk stream 4 (the chunk size must cover it).
fn one_chunk(type_id: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    crate::chunk::header::write_chunk_header(
        &mut out,
        crate::chunk::HeaderFormat::Type0,
        4,
        &crate::chunk::MessageHeader { timestamp: 0, length: payload.len() as u32, type_id, stream_id },
    );
    out.extend_from_slice(payload);
    out.to_vec()
}

fn media_of(server: &mut ServerSession) -> Vec<Media> {
    server_events(server)
        .into_iter()
        .filter_map(|e| if let ServerEvent::Media(m) = e { Some(m) } else { None })
        .collect()
}

#[test]
fn tiny_frames_do_not_pin_the_input_buffer() {
    let (mut server, stream_id) = publishing_server();
    let mut input = Vec::new();
    // Set Chunk Size 4 MiB, then per round an ignored 1 MiB message and a 2-byte audio frame, all
    // in one read: the frame must not be a slice of the 1 MiB+ input buffer.
    input.extend(one_chunk(1, 0, &(4u32 << 20).to_be_bytes()));
    for _ in 0..3 {
        input.extend(one_chunk(19, stream_id, &vec![0u8; 1 << 20]));
        input.extend(one_chunk(8, stream_id, &[0xaf, 0x01]));
    }
    server.handle_input(&input).unwrap();
    let media = media_of(&mut server);
    assert_eq!(media.len(), 3);
    for mut m in media {
        // A copy is the only owner of its memory; a slice of the input shares it.
        assert!(m.payload.is_unique(), "a 2-byte frame shares a larger buffer");
        assert_eq!(&m.payload.split_to(2)[..], &[0xaf, 0x01]);
    }
    // A frame that waited in the input buffer (its read ended mid-chunk) and is as large as it
    // is handed out from it, not copied a second time.
    let big = vec![0x17u8; 1 << 20];
    let frame = one_chunk(9, stream_id, &big);
    let (first, rest) = frame.split_at(1000);
    server.handle_input(first).unwrap();
    assert!(media_of(&mut server).is_empty());
    server.handle_input(rest).unwrap();
    let media = media_of(&mut server);
    assert_eq!(media.len(), 1);
    assert!(!media[0].payload.is_unique(), "a slice of the input buffer");
    assert_eq!(media[0].payload, big);
}

#[test]
fn a_read_of_whole_chunks_is_decoded_where_it_lies() {
    let (mut server, stream_id) = publishing_server();
    server.handle_input(&one_chunk(1, 0, &(64u32 << 10).to_be_bytes())).unwrap();
    let frames: Vec<Vec<u8>> = (0..4u8).map(|n| vec![0x17 + n; 20_000 + usize::from(n)]).collect();
    let read: Vec<u8> = frames.iter().flat_map(|f| one_chunk(9, stream_id, f)).collect();
    let (received, held) = (server.bytes_received(), server.held_input_bytes());
    server.handle_input(&read).unwrap();
    let media = media_of(&mut server);
    // Each frame is its own buffer (copied once, from the read), and the input keeps nothing.
    assert_eq!(media.iter().map(|m| m.payload.to_vec()).collect::<Vec<_>>(), frames);
    assert!(media.iter().all(|m| m.payload.is_unique()));
    assert_eq!(server.held_input_bytes(), held, "the input buffer did not grow");
    assert_eq!(server.bytes_received(), received + read.len() as u64);
    assert_eq!(server.incomplete_input(), None);

    // A read that ends inside a chunk keeps that chunk's start for the next read.
    let frame = one_chunk(9, stream_id, &frames[0]);
    let (first, rest) = frame.split_at(7_000);
    server.handle_input(first).unwrap();
    assert!(media_of(&mut server).is_empty());
    assert!(server.held_input_bytes() >= first.len());
    assert!(server.incomplete_input().is_some());
    server.handle_input(rest).unwrap();
    let media = media_of(&mut server);
    assert_eq!(media.len(), 1);
    assert_eq!(media[0].payload, frames[0]);
    assert_eq!(server.incomplete_input(), None);
}

#[test]
fn empty_media_messages_are_dropped() {
    let (mut server, stream_id) = publishing_server();
    let mut input = Vec::new();
    for type_id in [8, 9, 18] {
        input.extend(one_chunk(type_id, stream_id, &[]));
    }
    // A one-byte type-3 header repeats the last (empty) message: thousands of them cost nothing.
    input.extend(std::iter::repeat_n(0xc4u8, 10_000));
    input.extend(one_chunk(8, stream_id, &[0xaf, 0x01, 0x21]));
    server.handle_input(&input).unwrap();
    let media = media_of(&mut server);
    assert_eq!(media.len(), 1, "{media:?}");
    assert_eq!(&media[0].payload[..], &[0xaf, 0x01, 0x21]);
}

#[test]
fn a_large_chunk_in_pieces_holds_about_its_size() {
    let (mut server, stream_id) = publishing_server();
    server.handle_input(&one_chunk(1, 0, &((8u32 << 20) - 1).to_be_bytes())).unwrap();
    let mut head = one_chunk(16, stream_id, &[]);
    head[4..7].copy_from_slice(&[0x80, 0, 0]); // announce 8 MiB: a chunk of 8 MiB - 1
    server.handle_input(&head).unwrap();
    let piece = vec![0u8; 16 * 1024];
    let mut sent = 0;
    while sent + piece.len() < (8 << 20) - 1 {
        server.handle_input(&piece).unwrap();
        sent += piece.len();
    }
    // The read that ends the chunk brings the start of the next message: the input passes
    // 8 MiB for a moment. Doubling would make it 16 MiB; it stays near one chunk.
    let mut last = vec![0u8; (8 << 20) - 1 - sent];
    let mut next = one_chunk(16, stream_id, &vec![0u8; 16 * 1024]);
    next[0] = 5;
    last.extend_from_slice(&next[..16 * 1024]);
    server.handle_input(&last).unwrap();
    let held = server.held_input_bytes();
    assert!(held <= (8 << 20) + 256 * 1024, "{held}");
}

#[test]
fn incomplete_input_marker_stays_while_bytes_trickle() {
    let (mut server, stream_id) = publishing_server();
    assert_eq!(server.incomplete_input(), None);
    server.handle_input(&one_chunk(1, 0, &128u32.to_be_bytes())).unwrap();
    // An unfinished chunk (a 4096-byte message, chunk size 128) trickling in.
    let mut head = one_chunk(16, stream_id, &[]);
    head[4..7].copy_from_slice(&[0, 0x10, 0]);
    server.handle_input(&head).unwrap();
    let first = server.incomplete_input().expect("pending input");
    for _ in 0..100 {
        server.handle_input(&[0]).unwrap();
        assert_eq!(server.incomplete_input(), Some(first));
    }
    // Now a partial message (first chunk done); it stays the same while it trickles too.
    server.handle_input(&[0; 28]).unwrap();
    let partial = server.incomplete_input().expect("partial message");
    assert_ne!(partial, first);
    server.handle_input(&[0xC4]).unwrap();
    server.handle_input(&[0; 100]).unwrap();
    assert_eq!(server.incomplete_input(), Some(partial));
    // Finished: nothing pending.
    let mut rest = Vec::new();
    for _ in 0..(4096 - 256) / 128 {
        rest.push(0xC4);
        rest.extend_from_slice(&[0; 128]);
    }
    server.handle_input(&[0; 28]).unwrap();
    server.handle_input(&rest).unwrap();
    assert_eq!(server.incomplete_input(), None);
}

/// Enhanced RTMP capabilities: announced by our client, answered by our server, and neither
/// side's answer reaches a client that announced nothing.
#[test]
fn enhanced_capabilities_are_exchanged_only_with_enhanced_clients() {
    for announce in [true, false] {
        let mut config = ClientConfig::new("live", "rtmp://127.0.0.1/live");
        if !announce {
            config.capabilities = EnhancedCapabilities::default();
        }
        let mut client = ClientSession::new(config, &mut rng(1));
        let mut server = ServerSession::new(ServerConfig::default(), &mut rng(2));
        pump(&mut client, &mut server, 4096);
        let events = server_events(&mut server);
        let Some(ServerEvent::ConnectRequested(request)) = events.get(1) else { panic!("{events:?}") };
        assert_eq!(request.capabilities().is_enhanced(), announce);
        assert_eq!(server.peer_capabilities().caps_ex & capabilities::CAPS_EX_MULTITRACK != 0, announce);
        server.accept_connect().unwrap();
        pump(&mut client, &mut server, 4096);
        assert!(client.is_connected());
        assert_eq!(client.server_capabilities().is_enhanced(), announce);
    }
}

/// A malformed multitrack message from a publisher ends that session with a clear error.
#[test]
fn malformed_multitrack_media_closes_the_publisher() {
    let (mut publisher, mut server) = connected_pair(HandshakeVersion::Plain, true, 4096);
    publisher.publish("cam");
    pump(&mut publisher, &mut server, 4096);
    let Some(ServerEvent::PublishRequested { stream_id, .. }) = server_events(&mut server).last().cloned()
    else {
        panic!()
    };
    server.accept_publish(stream_id).unwrap();
    pump(&mut publisher, &mut server, 4096);
    // ManyTracks audio whose second track claims 16 bytes it does not have.
    publisher.send_media(1, MediaKind::Audio, 0, b"\x95\x11mp4a\x00\x00\x00\x01\xAA\x01\x00\x00\x10\xBB");
    let bytes = publisher.poll_transmit().unwrap();
    let error = server.handle_input(&bytes).unwrap_err();
    assert_eq!(error.to_string(), "malformed enhanced media: track size beyond the message");
}

/// What the server makes of a `play` with these arguments after the stream name.
fn play_request_for(args: Vec<Amf0Value>) -> PlayRequest {
    use crate::message::{type_id, Command};
    let (_client, mut server) = connected_pair(HandshakeVersion::Plain, true, usize::MAX);
    let mut create = bytes::BytesMut::new();
    Command::new("createStream", 2.0, Amf0Value::Null, vec![]).encode(&mut create);
    server.handle_input(&one_chunk(type_id::COMMAND_AMF0, 0, &create)).unwrap();
    let mut play = bytes::BytesMut::new();
    let mut all = vec![Amf0Value::from("cam")];
    all.extend(args);
    Command::new("play", 0.0, Amf0Value::Null, all).encode(&mut play);
    server.handle_input(&one_chunk(type_id::COMMAND_AMF0, 1, &play)).unwrap();
    match server_events(&mut server).pop() {
        Some(ServerEvent::PlayRequested { stream_id: 1, stream_name, request }) if stream_name == "cam" => {
            request
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn play_arguments_become_a_play_request() {
    let request = play_request_for(vec![]);
    assert_eq!(request, PlayRequest::default());
    assert_eq!((request.start, request.duration, request.reset), (PlayStart::LiveOrRecorded, None, true));
    let request = play_request_for(vec![(-1.0).into(), 30.0.into(), false.into()]);
    assert_eq!((request.start, request.duration, request.reset), (PlayStart::Live, Some(30), false));
    // FFmpeg's scaled "live or recorded" and a numeric reset are kept as sent.
    let request = play_request_for(vec![(-2000.0).into(), (-1.0).into(), 0.0.into()]);
    assert_eq!((request.start, request.duration, request.reset), (PlayStart::At(-2000.0), None, false));
    assert_eq!(request.start.as_f64(), -2000.0);
    assert_eq!(PlayStart::LiveOrRecorded.as_f64(), -2.0);
    assert_eq!(PlayStart::Live.as_f64(), -1.0);
    let request = play_request_for(vec![5.5.into(), f64::NAN.into()]);
    assert_eq!((request.start, request.duration), (PlayStart::At(5.5), None));
}

#[test]
fn unhandled_messages_are_reported_and_skipped() {
    let (mut server, stream_id) = publishing_server();
    let mut input = one_chunk(19, stream_id, &[1, 2, 3]);
    input.extend(one_chunk(0x30, stream_id, &[0; 5]));
    input.extend(one_chunk(8, stream_id, &[0xaf, 0x01, 0x21]));
    server.handle_input(&input).unwrap();
    let events = server_events(&mut server);
    assert!(
        matches!(
            events[..],
            [
                ServerEvent::Unknown { type_id: 19, len: 3, stream_id: a },
                ServerEvent::Unknown { type_id: 0x30, len: 5, stream_id: b },
                ServerEvent::Media(_)
            ] if a == stream_id && b == stream_id
        ),
        "{events:?}"
    );
    let (mut client, _server) = connected_pair(HandshakeVersion::Plain, true, usize::MAX);
    client_events(&mut client);
    client.handle_input(&one_chunk(16, 0, &[0; 7])).unwrap();
    assert_eq!(client_events(&mut client), [ClientEvent::Unknown { stream_id: 0, type_id: 16, len: 7 }]);
}

#[test]
fn stream_commands_are_answered_by_the_table() {
    use crate::chunk::{ChunkDecoder, ChunkLimits};
    use crate::message::{type_id, Command};
    let mut client = ClientSession::new(ClientConfig::new("live", "rtmp://127.0.0.1/live"), &mut rng(1));
    let mut server = ServerSession::new(ServerConfig::default(), &mut rng(2));
    let mut written = Vec::new();
    let mut exchange = |client: &mut ClientSession, server: &mut ServerSession| {
        for _ in 0..8 {
            while let Some(bytes) = client.poll_transmit() {
                server.handle_input(&bytes).unwrap();
            }
            while let Some(bytes) = server.poll_transmit() {
                written.extend_from_slice(&bytes);
                client.handle_input(&bytes).unwrap();
            }
        }
    };
    exchange(&mut client, &mut server);
    server_events(&mut server);
    server.accept_connect().unwrap();
    exchange(&mut client, &mut server);
    let mut calls = Vec::new();
    for (name, transaction_id) in
        [("FCSubscribe", 5.0), ("getStreamLength", 6.0), ("noSuchCall", 7.0), ("noSuchCall", 0.0)]
    {
        let mut body = bytes::BytesMut::new();
        Command::new(name, transaction_id, Amf0Value::Null, vec!["cam".into()]).encode(&mut body);
        calls.extend(one_chunk(type_id::COMMAND_AMF0, 0, &body));
    }
    server.handle_input(&calls).unwrap();
    exchange(&mut client, &mut server);

    // Everything after S0/S1/S2, decoded: the answers to transactions 5 to 7, and none to 0.
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let mut input = bytes::BytesMut::from(&written[1 + 2 * 1536..]);
    let mut answers = Vec::new();
    while let Some(message) = decoder.decode(&mut input).unwrap() {
        if message.type_id == type_id::COMMAND_AMF0 {
            let command = Command::parse(&message.payload, false, Default::default()).unwrap();
            if command.transaction_id >= 5.0 {
                answers.push(command);
            }
        }
    }
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!((answers[0].name.as_str(), answers[0].transaction_id), ("_result", 5.0));
    assert_eq!(answers[0].args, [Amf0Value::Undefined]);
    assert_eq!((answers[1].name.as_str(), answers[1].transaction_id), ("_result", 6.0));
    assert_eq!(answers[1].args, [Amf0Value::Number(0.0)]);
    assert_eq!((answers[2].name.as_str(), answers[2].transaction_id), ("_error", 7.0));
    let info = &answers[2].args[0];
    assert_eq!(info.get("level").and_then(Amf0Value::as_str), Some("error"));
    assert_eq!(info.get("code").and_then(Amf0Value::as_str), Some("NetConnection.Call.Failed"));
    assert_eq!(info.get("description").and_then(Amf0Value::as_str), Some("Method not found (noSuchCall)."));
}

#[test]
fn pause_and_unpause_are_reported_once_each() {
    use crate::message::{type_id, Command};
    let (_client, mut server, stream_id) = playing_server();
    server_events(&mut server);
    for (name, paused) in [("pause", true), ("pauseRaw", true), ("pause", false), ("pause", false)] {
        let mut body = bytes::BytesMut::new();
        Command::new(name, 0.0, Amf0Value::Null, vec![paused.into(), 0.0.into()]).encode(&mut body);
        server.handle_input(&one_chunk(type_id::COMMAND_AMF0, stream_id, &body)).unwrap();
    }
    assert_eq!(
        server_events(&mut server),
        [
            ServerEvent::PauseChanged { stream_id, paused: true },
            ServerEvent::PauseChanged { stream_id, paused: false }
        ]
    );
}
