//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz), also run by a smoke test here.
//! Each takes arbitrary bytes, must never panic, and keeps memory bounded by the limits.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::session::{ClientConfig, ClientSession, ServerConfig, ServerSession};

/// AMF0 and AMF3 decoders over arbitrary bytes.
pub fn amf(data: &[u8]) {
    crate::amf::fuzz_decode(data);
}

/// The chunk decoder over arbitrary bytes, fed in fragments.
pub fn chunk_decoder(data: &[u8]) {
    crate::chunk::fuzz_decode(data);
}

/// A server handshake (plain, digest, RTMPE) over arbitrary bytes.
pub fn server_handshake(data: &[u8]) {
    crate::handshake::fuzz_server_handshake(data);
}

/// The Enhanced RTMP parser (ExAudio/ExVideoTagHeader, ModEx, multitrack) and the legacy
/// rewrite over arbitrary bytes; the first byte picks audio or video. Checks that every track
/// lies inside the message and that what validates also classifies.
pub fn enhanced_media(data: &[u8]) {
    use crate::media::{self, enhanced::ExTag, enhanced::MediaType};
    let Some((&selector, body)) = data.split_first() else { return };
    let media_type = if selector & 1 == 0 { MediaType::Audio } else { MediaType::Video };
    let info = match media_type {
        MediaType::Audio => media::inspect_audio(body),
        MediaType::Video => media::inspect_video(body),
    };
    let valid = media::validate(media_type, body).is_ok();
    if let Ok(Some(tag)) = ExTag::parse(media_type, body) {
        let mut total = 0usize;
        for track in tag.tracks() {
            let Ok(track) = track else { break };
            total += track.data.len();
            if let Some(legacy) = track.to_legacy() {
                assert!(legacy.len() <= track.data.len() + 5);
            }
        }
        assert!(total <= body.len(), "tracks beyond the message");
        if valid && !tag.is_command() && tag.tracks().next().is_some() {
            assert!(info.codec.is_some(), "a valid message without a codec");
        }
    }
    if info.legacy == media::LegacyForm::Rewrite {
        assert!(media::legacy_payload(media_type, body).is_some());
    }
}

/// A server session past a real handshake and connect, then arbitrary chunk-stream bytes:
/// reaches the command state machine, AMF and media paths.
pub fn server_session(data: &[u8]) {
    let mut client =
        ClientSession::new(ClientConfig::new("live", "rtmp://fuzz/live"), &mut StdRng::seed_from_u64(1));
    let mut server = ServerSession::new(ServerConfig::default(), &mut StdRng::seed_from_u64(2));
    for _ in 0..8 {
        if let Some(bytes) = client.poll_transmit() {
            if server.handle_input(&bytes).is_err() {
                return;
            }
        }
        while let Some(event) = server.poll_event() {
            if matches!(event, crate::session::ServerEvent::ConnectRequested(_)) {
                let _ = server.accept_connect();
            }
        }
        if let Some(bytes) = server.poll_transmit() {
            if client.handle_input(&bytes).is_err() {
                return;
            }
        }
    }
    for piece in data.chunks(97) {
        if server.handle_input(piece).is_err() {
            return;
        }
        while let Some(event) = server.poll_event() {
            use crate::session::ServerEvent::*;
            let _ = match event {
                PublishRequested { stream_id, .. } => server.accept_publish(stream_id),
                PlayRequested { stream_id, stream_name, .. } => server.accept_play(stream_id, &stream_name),
                _ => Ok(()),
            };
        }
        let _ = server.poll_transmit();
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, RngCore};

    use super::*;

    /// A short, deterministic smoke run of every target: random bytes and mutations of a real
    /// client byte stream. The real fuzzing runs with `scripts/fuzz.sh`.
    #[test]
    fn fuzz_targets_survive_a_smoke_run() {
        let mut rng = StdRng::seed_from_u64(0xF022);
        let mut client =
            ClientSession::new(ClientConfig::new("live", "rtmp://fuzz/live"), &mut StdRng::seed_from_u64(7));
        client.publish("s");
        let seed: Vec<u8> = client.poll_transmit().unwrap().to_vec();
        for round in 0..300 {
            let mut input = if round % 2 == 0 {
                let mut v = vec![0u8; rng.gen_range(0..4096)];
                rng.fill_bytes(&mut v);
                v
            } else {
                seed.clone()
            };
            for _ in 0..rng.gen_range(1..16) {
                if input.is_empty() {
                    break;
                }
                let at = rng.gen_range(0..input.len());
                input[at] = rng.gen();
            }
            amf(&input);
            chunk_decoder(&input);
            server_handshake(&input);
            server_session(&input);
            enhanced_media(&input);
        }
    }
}
