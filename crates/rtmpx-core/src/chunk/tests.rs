use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

use super::header::{write_chunk_header, HeaderFormat, MessageHeader};
use super::*;
use crate::Error;

fn header_bytes(
    format: HeaderFormat,
    csid: u32,
    timestamp: u32,
    length: u32,
    type_id: u8,
    sid: u32,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_chunk_header(&mut out, format, csid, &MessageHeader { timestamp, length, type_id, stream_id: sid });
    out.to_vec()
}

fn decode_all(decoder: &mut ChunkDecoder, buf: &mut BytesMut) -> Result<Vec<RawMessage>, Error> {
    let mut messages = Vec::new();
    while let Some(message) = decoder.decode(buf)? {
        messages.push(message);
    }
    Ok(messages)
}

fn decode_bytes(bytes: &[u8]) -> Result<Vec<RawMessage>, Error> {
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    decode_all(&mut decoder, &mut BytesMut::from(bytes))
}

fn msg(csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> RawMessage {
    RawMessage {
        chunk_stream_id: csid,
        timestamp,
        type_id,
        stream_id,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn control(type_id: u8, value: u32) -> Vec<u8> {
    let mut out = header_bytes(HeaderFormat::Type0, 2, 0, 4, type_id, 0);
    out.extend_from_slice(&value.to_be_bytes());
    out
}

// ---- known header encodings ----

#[test]
fn type0_header_csid3() {
    assert_eq!(
        header_bytes(HeaderFormat::Type0, 3, 0x01_0203, 5, 0x14, 1),
        [0x03, 0x01, 0x02, 0x03, 0x00, 0x00, 0x05, 0x14, 0x01, 0x00, 0x00, 0x00]
    );
}

#[test]
fn basic_header_forms() {
    let t0 = |csid| header_bytes(HeaderFormat::Type0, csid, 0, 0, 8, 0)[..3].to_vec();
    assert_eq!(t0(64), [0x00, 0x00, 0x00]);
    assert_eq!(t0(319), [0x00, 0xFF, 0x00]);
    assert_eq!(t0(320), [0x01, 0x00, 0x01]);
    assert_eq!(t0(65599), [0x01, 0xFF, 0xFF]);
    assert_eq!(header_bytes(HeaderFormat::Type3, 64, 0, 0, 0, 0), [0xC0, 0x00]);
    assert_eq!(header_bytes(HeaderFormat::Type3, 319, 0, 0, 0, 0), [0xC0, 0xFF]);
    assert_eq!(header_bytes(HeaderFormat::Type3, 65599, 0, 0, 0, 0), [0xC1, 0xFF, 0xFF]);
    assert_eq!(header_bytes(HeaderFormat::Type2, 63, 7, 0, 0, 0), [0xBF, 0x00, 0x00, 0x07]);
}

#[test]
fn type1_type2_type3_headers() {
    assert_eq!(header_bytes(HeaderFormat::Type1, 3, 40, 0x1234, 9, 7), [0x43, 0, 0, 40, 0x00, 0x12, 0x34, 9]);
    assert_eq!(header_bytes(HeaderFormat::Type2, 3, 40, 0x1234, 9, 7), [0x83, 0, 0, 40]);
    assert_eq!(header_bytes(HeaderFormat::Type3, 3, 40, 0x1234, 9, 7), [0xC3]);
}

#[test]
fn extended_timestamp_headers() {
    assert_eq!(
        header_bytes(HeaderFormat::Type0, 3, 0xFF_FFFF, 1, 9, 1),
        [0x03, 0xFF, 0xFF, 0xFF, 0, 0, 1, 9, 1, 0, 0, 0, 0x00, 0xFF, 0xFF, 0xFF]
    );
    assert_eq!(
        header_bytes(HeaderFormat::Type2, 3, 0x1234_5678, 1, 9, 1),
        [0x83, 0xFF, 0xFF, 0xFF, 0x12, 0x34, 0x56, 0x78]
    );
    assert_eq!(header_bytes(HeaderFormat::Type3, 3, 0x0100_0000, 1, 9, 1), [0xC3, 1, 0, 0, 0]);
    assert_eq!(header_bytes(HeaderFormat::Type0, 3, 0xFF_FFFE, 1, 9, 1)[1..4], [0xFF, 0xFF, 0xFE]);
}

#[test]
fn decoder_parses_every_basic_header_form() {
    for csid in [3u32, 63, 64, 319, 320, 65599] {
        let mut bytes = header_bytes(HeaderFormat::Type0, csid, 5, 2, 8, 1);
        bytes.extend_from_slice(b"hi");
        assert_eq!(decode_bytes(&bytes).unwrap(), [msg(csid, 5, 8, 1, b"hi")]);
    }
    // The 3-byte form also reaches ids below 320.
    let bytes = [0x01, 0x05, 0x00, 0, 0, 9, 0, 0, 0, 8, 1, 0, 0, 0];
    assert_eq!(decode_bytes(&bytes).unwrap(), [msg(69, 9, 8, 1, b"")]);
}

// ---- encoder ----

#[test]
fn encoder_picks_header_types() {
    let mut encoder = ChunkEncoder::new();
    let mut out = BytesMut::new();
    let mut expect = Vec::new();

    encoder.encode(4, 1000, 9, 1, b"abc", &mut out);
    expect.extend_from_slice(&[0x04, 0x00, 0x03, 0xE8, 0, 0, 3, 9, 1, 0, 0, 0]);
    expect.extend_from_slice(b"abc");
    // Delta 40 differs from the last value sent (1000, absolute): type 2.
    encoder.encode(4, 1040, 9, 1, b"def", &mut out);
    expect.extend_from_slice(&[0x84, 0, 0, 40]);
    expect.extend_from_slice(b"def");
    // Same delta, length, type: type 3.
    encoder.encode(4, 1080, 9, 1, b"ghi", &mut out);
    expect.extend_from_slice(&[0xC4]);
    expect.extend_from_slice(b"ghi");
    // Length changes: type 1.
    encoder.encode(4, 1120, 9, 1, b"jklmn", &mut out);
    expect.extend_from_slice(&[0x44, 0, 0, 40, 0, 0, 5, 9]);
    expect.extend_from_slice(b"jklmn");
    // Type id changes: type 1.
    encoder.encode(4, 1120, 8, 1, b"jklmn", &mut out);
    expect.extend_from_slice(&[0x44, 0, 0, 0, 0, 0, 5, 8]);
    expect.extend_from_slice(b"jklmn");
    // Timestamp goes backwards: type 0.
    encoder.encode(4, 500, 8, 1, b"x", &mut out);
    expect.extend_from_slice(&[0x04, 0x00, 0x01, 0xF4, 0, 0, 1, 8, 1, 0, 0, 0]);
    expect.extend_from_slice(b"x");
    // Stream id changes: type 0.
    encoder.encode(4, 600, 8, 2, b"x", &mut out);
    expect.extend_from_slice(&[0x04, 0x00, 0x02, 0x58, 0, 0, 1, 8, 2, 0, 0, 0]);
    expect.extend_from_slice(b"x");
    // Another chunk stream has its own state: type 0.
    encoder.encode(5, 600, 8, 2, b"", &mut out);
    expect.extend_from_slice(&[0x05, 0x00, 0x02, 0x58, 0, 0, 0, 8, 2, 0, 0, 0]);
    assert_eq!(out.to_vec(), expect);

    assert_eq!(
        decode_bytes(&out).unwrap(),
        [
            msg(4, 1000, 9, 1, b"abc"),
            msg(4, 1040, 9, 1, b"def"),
            msg(4, 1080, 9, 1, b"ghi"),
            msg(4, 1120, 9, 1, b"jklmn"),
            msg(4, 1120, 8, 1, b"jklmn"),
            msg(4, 500, 8, 1, b"x"),
            msg(4, 600, 8, 2, b"x"),
            msg(5, 600, 8, 2, b""),
        ]
    );
}

#[test]
fn encoder_type3_after_type0_means_same_timestamp_again() {
    // After type 0 at 100 the "delta" is 100, so a message at 200 goes as type 3.
    let mut encoder = ChunkEncoder::new();
    let mut out = BytesMut::new();
    encoder.encode(3, 100, 20, 0, b"ab", &mut out);
    encoder.encode(3, 200, 20, 0, b"cd", &mut out);
    assert_eq!(out[14], 0xC3);
    assert_eq!(out.len(), 12 + 2 + 1 + 2);
}

#[test]
fn encoder_continuation_chunks() {
    let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let mut encoder = ChunkEncoder::new();
    let mut out = BytesMut::new();
    encoder.encode(5, 7, 9, 1, &payload, &mut out);
    let mut expect = vec![0x05, 0, 0, 7, 0x00, 0x01, 0x2C, 9, 1, 0, 0, 0];
    expect.extend_from_slice(&payload[..128]);
    expect.push(0xC5);
    expect.extend_from_slice(&payload[128..256]);
    expect.push(0xC5);
    expect.extend_from_slice(&payload[256..]);
    assert_eq!(out.to_vec(), expect);
}

#[test]
fn encoder_repeats_extended_timestamp_on_continuations() {
    let payload = [0x55u8; 200];
    let mut encoder = ChunkEncoder::new();
    let mut out = BytesMut::new();
    encoder.encode(320, 0x0100_0000, 9, 1, &payload, &mut out);
    let mut expect = vec![0x01, 0x00, 0x01, 0xFF, 0xFF, 0xFF, 0, 0, 200, 9, 1, 0, 0, 0, 1, 0, 0, 0];
    expect.extend_from_slice(&payload[..128]);
    expect.extend_from_slice(&[0xC1, 0x00, 0x01, 1, 0, 0, 0]);
    expect.extend_from_slice(&payload[128..]);
    assert_eq!(out.to_vec(), expect);
    assert_eq!(decode_bytes(&out).unwrap(), [msg(320, 0x0100_0000, 9, 1, &payload)]);
}

#[test]
fn begin_message_writes_only_the_first_header() {
    let mut encoder = ChunkEncoder::new();
    let mut out = BytesMut::new();
    let continuation = encoder.begin_message(64, 0x0200_0000, 9, 1, 1000, &mut out);
    assert_eq!(out.to_vec(), [0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x00, 0x03, 0xE8, 9, 1, 0, 0, 0, 2, 0, 0, 0]);
    assert_eq!(continuation.as_bytes(), [0xC0, 0x00, 2, 0, 0, 0]);
}

#[test]
fn encoder_chunk_size() {
    let mut encoder = ChunkEncoder::default();
    assert_eq!(encoder.chunk_size(), DEFAULT_CHUNK_SIZE);
    encoder.set_chunk_size(2);
    let mut out = BytesMut::new();
    encoder.encode(3, 0, 9, 1, b"abcde", &mut out);
    assert_eq!(&out[12..], b"ab\xC3cd\xC3e");
}

// ---- decoder: timestamps and extended timestamps ----

#[test]
fn type3_new_message_adds_previous_delta() {
    let mut bytes = header_bytes(HeaderFormat::Type0, 3, 100, 2, 8, 1);
    bytes.extend_from_slice(b"aa");
    // Type 3 after type 0: the type-0 timestamp counts as the delta (spec 5.3.1.2.4).
    bytes.extend_from_slice(b"\xC3bb");
    bytes.extend_from_slice(&header_bytes(HeaderFormat::Type2, 3, 40, 0, 0, 0));
    bytes.extend_from_slice(b"cc");
    bytes.extend_from_slice(b"\xC3dd");
    bytes.extend_from_slice(&header_bytes(HeaderFormat::Type1, 3, 1, 1, 9, 0));
    bytes.extend_from_slice(b"e");
    assert_eq!(
        decode_bytes(&bytes).unwrap(),
        [
            msg(3, 100, 8, 1, b"aa"),
            msg(3, 200, 8, 1, b"bb"),
            msg(3, 240, 8, 1, b"cc"),
            msg(3, 280, 8, 1, b"dd"),
            msg(3, 281, 9, 1, b"e"),
        ]
    );
}

#[test]
fn timestamps_wrap() {
    let mut bytes = header_bytes(HeaderFormat::Type0, 3, 0xFFFF_FFF0, 0, 8, 1);
    bytes.extend_from_slice(&header_bytes(HeaderFormat::Type2, 3, 0x20, 0, 0, 0));
    let messages = decode_bytes(&bytes).unwrap();
    assert_eq!(messages[0].timestamp, 0xFFFF_FFF0);
    assert_eq!(messages[1].timestamp, 0x10);
}

/// A 200-byte message at an extended timestamp, chunk size 128, with or without the repeated
/// extended timestamp on the continuation chunk.
fn extended_message(repeat: bool, payload: &[u8; 200]) -> Vec<u8> {
    let mut bytes = header_bytes(HeaderFormat::Type0, 5, 0x0100_0000, 200, 9, 1);
    bytes.extend_from_slice(&payload[..128]);
    bytes.push(0xC5);
    if repeat {
        bytes.extend_from_slice(&[1, 0, 0, 0]);
    }
    bytes.extend_from_slice(&payload[128..]);
    bytes
}

#[test]
fn extended_timestamp_repeated_on_continuation() {
    let payload = [7u8; 200];
    assert_eq!(
        decode_bytes(&extended_message(true, &payload)).unwrap(),
        [msg(5, 0x0100_0000, 9, 1, &payload)]
    );
}

#[test]
fn extended_timestamp_not_repeated_on_continuation() {
    let payload = [7u8; 200];
    assert_eq!(
        decode_bytes(&extended_message(false, &payload)).unwrap(),
        [msg(5, 0x0100_0000, 9, 1, &payload)]
    );
    // Payload that starts like the extended timestamp, then differs, is still payload.
    let mut payload = [7u8; 200];
    payload[128..131].copy_from_slice(&[1, 0, 0]);
    assert_eq!(
        decode_bytes(&extended_message(false, &payload)).unwrap(),
        [msg(5, 0x0100_0000, 9, 1, &payload)]
    );
}

#[test]
fn extended_timestamp_decision_waits_for_enough_bytes() {
    let payload = [9u8; 200];
    let bytes = extended_message(true, &payload);
    let cut = 12 + 4 + 128 + 1 + 2; // inside the repeated extended timestamp
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let mut buf = BytesMut::from(&bytes[..cut]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), 3, "the undecided chunk stays in the buffer");
    buf.extend_from_slice(&bytes[cut..]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), Some(msg(5, 0x0100_0000, 9, 1, &payload)));
    // Without the repetition the first differing byte decides; the chunk then waits whole.
    let bytes = extended_message(false, &payload);
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let mut buf = BytesMut::from(&bytes[..12 + 4 + 128 + 2]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert_eq!(buf.len(), 2);
    buf.extend_from_slice(&bytes[12 + 4 + 128 + 2..]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), Some(msg(5, 0x0100_0000, 9, 1, &payload)));
}

#[test]
fn type3_new_message_after_extended_header() {
    let mut with = header_bytes(HeaderFormat::Type0, 3, 0x0100_0000, 1, 9, 1);
    with.push(b'a');
    let mut without = with.clone();
    with.extend_from_slice(&[0xC3, 1, 0, 0, 0, b'b']);
    without.extend_from_slice(&[0xC3, b'b']);
    for bytes in [with, without] {
        assert_eq!(
            decode_bytes(&bytes).unwrap(),
            [msg(3, 0x0100_0000, 9, 1, b"a"), msg(3, 0x0200_0000, 9, 1, b"b")]
        );
    }
}

// ---- decoder: structure ----

#[test]
fn interleaved_chunk_streams() {
    let a: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    let b: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
    let mut bytes = header_bytes(HeaderFormat::Type0, 4, 10, 200, 9, 1);
    bytes.extend_from_slice(&a[..128]);
    bytes.extend_from_slice(&header_bytes(HeaderFormat::Type0, 6, 20, 200, 8, 1));
    bytes.extend_from_slice(&b[..128]);
    bytes.push(0xC4);
    bytes.extend_from_slice(&a[128..]);
    bytes.push(0xC6);
    bytes.extend_from_slice(&b[128..]);
    assert_eq!(decode_bytes(&bytes).unwrap(), [msg(4, 10, 9, 1, &a), msg(6, 20, 8, 1, &b)]);
}

#[test]
fn byte_by_byte_feeding() {
    let mut encoder = ChunkEncoder::new();
    let mut out = BytesMut::new();
    let payload = [3u8; 500];
    encoder.encode(3, 1, 20, 0, &payload, &mut out);
    encoder.encode(70, 0x0123_4567, 9, 1, &payload[..300], &mut out);
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for byte in out.iter() {
        buf.put_u8(*byte);
        messages.extend(decode_all(&mut decoder, &mut buf).unwrap());
    }
    assert_eq!(messages, [msg(3, 1, 20, 0, &payload), msg(70, 0x0123_4567, 9, 1, &payload[..300])]);
    assert!(buf.is_empty());
}

#[test]
fn single_chunk_message_is_not_copied() {
    let mut bytes = header_bytes(HeaderFormat::Type0, 3, 0, 5, 20, 0);
    bytes.extend_from_slice(b"hello");
    let mut buf = BytesMut::from(&bytes[..]);
    let payload_address = buf[12..].as_ptr();
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let message = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!(message.payload.as_ptr(), payload_address);
    assert_eq!(&message.payload[..], b"hello");
}

#[test]
fn set_chunk_size_applies_to_the_next_chunk() {
    let mut bytes = control(1, 300);
    let payload = [1u8; 300];
    bytes.extend_from_slice(&header_bytes(HeaderFormat::Type0, 3, 0, 300, 9, 1));
    bytes.extend_from_slice(&payload);
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let messages = decode_all(&mut decoder, &mut BytesMut::from(&bytes[..])).unwrap();
    assert_eq!(messages, [msg(2, 0, 1, 0, &300u32.to_be_bytes()), msg(3, 0, 9, 1, &payload)]);
    assert_eq!(decoder.chunk_size(), 300);
}

#[test]
fn abort_drops_the_partial_message() {
    let mut bytes = header_bytes(HeaderFormat::Type0, 5, 10, 200, 9, 1);
    bytes.extend_from_slice(&[1u8; 128]);
    bytes.extend_from_slice(&control(2, 5));
    // Type 3 now starts a new message with the old header and delta (10 + 10).
    bytes.push(0xC5);
    bytes.extend_from_slice(&[2u8; 128]);
    bytes.push(0xC5);
    bytes.extend_from_slice(&[3u8; 72]);
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let mut buf = BytesMut::from(&bytes[..12 + 128]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert_eq!(decoder.buffered_bytes(), 128);
    buf.extend_from_slice(&bytes[12 + 128..]);
    let messages = decode_all(&mut decoder, &mut buf).unwrap();
    assert_eq!(messages[0], msg(2, 0, 2, 0, &5u32.to_be_bytes()));
    let mut expected = vec![2u8; 128];
    expected.extend_from_slice(&[3u8; 72]);
    assert_eq!(messages[1], msg(5, 20, 9, 1, &expected));
    assert_eq!(messages.len(), 2);
    assert_eq!(decoder.buffered_bytes(), 0);
}

#[test]
fn repeated_full_header_continues_the_message() {
    let mut bytes = header_bytes(HeaderFormat::Type0, 5, 10, 200, 9, 1);
    bytes.extend_from_slice(&[1u8; 128]);
    bytes.extend_from_slice(&header_bytes(HeaderFormat::Type0, 5, 10, 200, 9, 1));
    bytes.extend_from_slice(&[1u8; 72]);
    assert_eq!(decode_bytes(&bytes).unwrap(), [msg(5, 10, 9, 1, &[1u8; 200])]);
}

#[test]
fn different_header_mid_message_starts_over() {
    let mut bytes = header_bytes(HeaderFormat::Type0, 5, 10, 200, 9, 1);
    bytes.extend_from_slice(&[1u8; 128]);
    bytes.extend_from_slice(&header_bytes(HeaderFormat::Type1, 5, 5, 3, 8, 0));
    bytes.extend_from_slice(b"new");
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let messages = decode_all(&mut decoder, &mut BytesMut::from(&bytes[..])).unwrap();
    assert_eq!(messages, [msg(5, 15, 8, 1, b"new")]);
    assert_eq!(decoder.buffered_bytes(), 0);
}

#[test]
fn compressed_header_without_previous_is_an_error() {
    for first in [0x43u8, 0x83, 0xC3] {
        let bytes = [first, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(decode_bytes(&bytes), Err(Error::Chunk(_))), "{first:#x}");
    }
}

// ---- limits ----

#[test]
fn set_chunk_size_limits() {
    assert!(matches!(decode_bytes(&control(1, 0)), Err(Error::Chunk(_))));
    assert!(matches!(decode_bytes(&control(1, 0x7FFF_FFFF)), Err(Error::LimitExceeded { .. })));
    assert!(matches!(decode_bytes(&control(1, 0x8000_0000)), Err(Error::Chunk(_))));
    assert_eq!(decode_bytes(&control(1, 1 << 24)).unwrap().len(), 1);
    let mut short = header_bytes(HeaderFormat::Type0, 2, 0, 3, 1, 0);
    short.extend_from_slice(&[0, 0, 1]);
    assert!(matches!(decode_bytes(&short), Err(Error::Chunk(_))));
    let limits = ChunkLimits { max_chunk_size: MAX_CHUNK_SIZE, ..ChunkLimits::default() };
    let mut decoder = ChunkDecoder::new(limits);
    decode_all(&mut decoder, &mut BytesMut::from(&control(1, 0x7FFF_FFFF)[..])).unwrap();
    assert_eq!(decoder.chunk_size(), 0x7FFF_FFFF);
}

#[test]
fn oversized_message_fails_before_allocating() {
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let mut buf = BytesMut::from(&header_bytes(HeaderFormat::Type0, 3, 0, 0xFF_FFFF, 9, 1)[..]);
    let err = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(err, Error::LimitExceeded { what: "message length", value: 0xFF_FFFF, limit: 8 << 20 });
    assert_eq!(decoder.partial_capacity(), 0);
    assert_eq!(decoder.buffered_bytes(), 0);
}

#[test]
fn partial_buffers_follow_received_bytes() {
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let mut bytes = header_bytes(HeaderFormat::Type0, 3, 0, 8 << 20, 9, 1);
    bytes.extend_from_slice(&[0u8; 128]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    assert!(decoder.partial_capacity() <= 4 * 128, "{}", decoder.partial_capacity());
}

fn zero_length_messages(csids: impl Iterator<Item = u32>) -> BytesMut {
    let mut buf = BytesMut::new();
    for csid in csids {
        write_chunk_header(
            &mut buf,
            HeaderFormat::Type0,
            csid,
            &MessageHeader { timestamp: 0, length: 0, type_id: 9, stream_id: 1 },
        );
    }
    buf
}

#[test]
fn chunk_stream_cap() {
    // 70,000 type-0 chunks over every chunk stream id (2..=65599), then again from the start.
    let ids = (header::MIN_CHUNK_STREAM_ID..=header::MAX_CHUNK_STREAM_ID).cycle().take(70_000);
    let mut buf = zero_length_messages(ids);
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    for _ in 0..64 {
        assert!(decoder.decode(&mut buf).unwrap().is_some());
    }
    let err = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(err, Error::LimitExceeded { what: "chunk streams", value: 65, limit: 64 });

    // Known chunk streams keep working at the cap.
    let limits = ChunkLimits { max_chunk_streams: 1000, ..ChunkLimits::default() };
    let mut decoder = ChunkDecoder::new(limits);
    let mut buf = zero_length_messages((2..1002).chain(2..1002).chain(5000..5001));
    assert_eq!(decode_all(&mut decoder, &mut buf).unwrap_err(), Error::limit("chunk streams", 1001, 1000));
    assert_eq!(buf.len(), 3 + 11, "the refused chunk stays unconsumed");
}

#[test]
fn buffered_bytes_cap() {
    let limits = ChunkLimits { max_buffered_bytes: 1000, ..ChunkLimits::default() };
    let mut decoder = ChunkDecoder::new(limits);
    let mut bytes = Vec::new();
    for csid in 3..=10 {
        bytes.extend_from_slice(&header_bytes(HeaderFormat::Type0, csid, 0, 600, 9, 1));
        bytes.extend_from_slice(&[0u8; 128]);
    }
    let mut buf = BytesMut::from(&bytes[..]);
    let err = decode_all(&mut decoder, &mut buf).unwrap_err();
    assert_eq!(err, Error::limit("buffered message bytes", 1024, 1000));
    assert_eq!(decoder.buffered_bytes(), 896);
}

#[test]
fn fuzz_decode_handles_garbage() {
    fuzz_decode(&[]);
    fuzz_decode(&[0x01]);
    fuzz_decode(&[0xC3; 64]);
    let mut bytes = control(1, 1);
    bytes.extend_from_slice(&header_bytes(HeaderFormat::Type0, 65599, 0xFF_FFFF, 1000, 9, 1));
    bytes.extend(std::iter::repeat_n(0xC1u8, 3000));
    fuzz_decode(&bytes);
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Clock {
    Step(u32),
    Jump(u32),
}

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        6 => (0u32..100).prop_map(Clock::Step),
        1 => (0xFF_0000u32..0x0200_0000).prop_map(Clock::Step),
        1 => any::<u32>().prop_map(Clock::Jump),
    ]
}

fn message_strategy() -> impl Strategy<Value = (u32, Clock, u8, u32, Vec<u8>)> {
    (
        prop::sample::select(vec![2u32, 3, 4, 63, 64, 319, 320, 65599]),
        clock(),
        prop::sample::select(vec![3u8, 4, 5, 6, 8, 9, 15, 17, 18, 20, 22]),
        0u32..3,
        prop::collection::vec(any::<u8>(), 0..600),
    )
}

fn chunk_size_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..=16, 17u32..=300, Just(128), Just(4096), Just(65536)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn round_trip_in_fragments(
        chunk_size in chunk_size_strategy(),
        messages in prop::collection::vec(message_strategy(), 0..24),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut encoder = ChunkEncoder::new();
        let mut out = BytesMut::new();
        encoder.encode(CONTROL_CHUNK_STREAM, 0, 1, 0, &chunk_size.to_be_bytes(), &mut out);
        encoder.set_chunk_size(chunk_size);
        let mut expected = vec![msg(2, 0, 1, 0, &chunk_size.to_be_bytes())];
        let mut now = 0u32;
        for (csid, clock, type_id, stream_id, payload) in &messages {
            now = match clock {
                Clock::Step(step) => now.wrapping_add(*step),
                Clock::Jump(at) => *at,
            };
            encoder.encode(*csid, now, *type_id, *stream_id, payload, &mut out);
            expected.push(msg(*csid, now, *type_id, *stream_id, payload));
        }

        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(out.len() + 1)).collect();
        points.push(out.len());
        points.sort_unstable();
        let limits = ChunkLimits { max_chunk_streams: 16, ..ChunkLimits::default() };
        let mut decoder = ChunkDecoder::new(limits);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        // The same fragments as a session feeds them: decoded where they lie while nothing is
        // buffered, what is left kept in a buffer and decoded from there.
        let mut borrowing = ChunkDecoder::new(limits);
        let mut kept = BytesMut::new();
        let mut decoded_borrowed = Vec::new();
        let mut start = 0;
        for end in points {
            let fragment = &out[start..end];
            buf.extend_from_slice(fragment);
            start = end;
            decoded.extend(decode_all(&mut decoder, &mut buf).unwrap());
            if kept.is_empty() {
                let mut rest = fragment;
                while let Some(message) = borrowing.decode(&mut rest).unwrap() {
                    decoded_borrowed.push(message);
                }
                kept.extend_from_slice(rest);
            } else {
                kept.extend_from_slice(fragment);
                decoded_borrowed.extend(decode_all(&mut borrowing, &mut kept).unwrap());
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert!(kept.is_empty());
        prop_assert_eq!(&decoded, &expected);
        prop_assert_eq!(decoded_borrowed, expected);
        prop_assert_eq!(decoder.chunk_size(), chunk_size);
        prop_assert_eq!(decoder.buffered_bytes(), 0);
        prop_assert_eq!(borrowing.buffered_bytes(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..3000)) {
        fuzz_decode(&data);
    }

    #[test]
    fn corrupted_streams_never_panic(
        messages in prop::collection::vec(message_strategy(), 1..8),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut encoder = ChunkEncoder::new();
        let mut out = BytesMut::new();
        for (csid, _, type_id, stream_id, payload) in &messages {
            encoder.encode(*csid, 0x00FF_FFF0, *type_id, *stream_id, payload, &mut out);
        }
        let mut bytes = out.to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        fuzz_decode(&bytes);
    }
}

#[test]
fn small_single_chunk_message_is_copied_out_of_a_large_buffer() {
    // A 5-byte message in a buffer whose allocation is 1 MiB would pin all of it: copied.
    let mut bytes = header_bytes(HeaderFormat::Type0, 3, 0, 5, 8, 1);
    bytes.extend_from_slice(b"hello");
    let mut buf = BytesMut::from(&bytes[..]);
    let payload_address = buf[12..].as_ptr();
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    decoder.set_input_allocation(1 << 20);
    let message = decoder.decode(&mut buf).unwrap().unwrap();
    assert_ne!(message.payload.as_ptr(), payload_address);
    assert_eq!(&message.payload[..], b"hello");
    // A message of at least a quarter of the allocation shares it.
    let mut bytes = header_bytes(HeaderFormat::Type0, 3, 0, 100, 8, 1);
    bytes.extend_from_slice(&[7u8; 100]);
    let mut buf = BytesMut::from(&bytes[..]);
    let payload_address = buf[12..].as_ptr();
    decoder.set_input_allocation(100 * MAX_PIN_FACTOR);
    let message = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!(message.payload.as_ptr(), payload_address);
}

#[test]
fn oldest_partial_stays_while_a_message_trickles() {
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let mut buf = BytesMut::new();
    assert_eq!(decoder.oldest_partial(), None);
    // Message A (1000 bytes on csid 4) starts; message B completes meanwhile on csid 5.
    buf.extend_from_slice(&header_bytes(HeaderFormat::Type0, 4, 0, 1000, 9, 1));
    buf.extend_from_slice(&[1u8; 128]);
    assert!(decode_all(&mut decoder, &mut buf).unwrap().is_empty());
    let first = decoder.oldest_partial().expect("a partial message");
    for _ in 0..3 {
        buf.extend_from_slice(&header_bytes(HeaderFormat::Type0, 5, 0, 3, 8, 1));
        buf.extend_from_slice(b"abc");
        buf.extend_from_slice(&header_bytes(HeaderFormat::Type3, 4, 0, 0, 0, 0));
        buf.extend_from_slice(&[1u8; 128]);
        assert_eq!(decode_all(&mut decoder, &mut buf).unwrap().len(), 1);
        assert_eq!(decoder.oldest_partial(), Some(first), "trickled bytes do not make A new");
    }
    // A completes; the next partial message has a later number.
    for _ in 0..3 {
        buf.extend_from_slice(&header_bytes(HeaderFormat::Type3, 4, 0, 0, 0, 0));
        buf.extend_from_slice(&[1u8; 128]);
    }
    buf.extend_from_slice(&header_bytes(HeaderFormat::Type3, 4, 0, 0, 0, 0));
    buf.extend_from_slice(&[1u8; 1000 - 7 * 128]);
    assert_eq!(decode_all(&mut decoder, &mut buf).unwrap().len(), 1);
    assert_eq!(decoder.oldest_partial(), None);
    buf.extend_from_slice(&header_bytes(HeaderFormat::Type0, 4, 0, 1000, 9, 1));
    buf.extend_from_slice(&[1u8; 128]);
    assert!(decode_all(&mut decoder, &mut buf).unwrap().is_empty());
    assert!(decoder.oldest_partial() > Some(first));
}
