use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::Sha256;

use super::digest::{compute_digest, signature};
use super::rtmpe::{rc4_keys, validate_public_key, PRIME};
use super::*;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A block whose byte i is (7i + 3) mod 256; the expected values below were computed from it
/// by an independent Python script (hmac/hashlib, a hand-written XTEA, `cryptography`'s Blowfish).
fn patterned_block() -> Box<Block> {
    let mut block = Box::new([0u8; HANDSHAKE_SIZE]);
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    block
}

struct Ends {
    client: HandshakeOutcome,
    server: HandshakeOutcome,
}

/// Runs both sides through memory, delivering at most `piece` bytes per call.
fn run(client: &mut ClientHandshake, server: &mut ServerHandshake, piece: usize) -> Ends {
    let mut to_server = BytesMut::new();
    let mut to_client = BytesMut::new();
    let mut server_in = BytesMut::new();
    let mut client_in = BytesMut::new();
    client.start(&mut to_server);
    let (mut client_done, mut server_done) = (None, None);
    while client_done.is_none() || server_done.is_none() {
        let mut progressed = false;
        if server_done.is_none() && !to_server.is_empty() {
            let n = piece.min(to_server.len());
            server_in.extend_from_slice(&to_server.split_to(n));
            server_done = server.handle_input(&mut server_in, &mut to_client).unwrap();
            progressed = true;
        }
        if client_done.is_none() && !to_client.is_empty() {
            let n = piece.min(to_client.len());
            client_in.extend_from_slice(&to_client.split_to(n));
            client_done = client.handle_input(&mut client_in, &mut to_server).unwrap();
            progressed = true;
        }
        assert!(progressed, "handshake stalled");
    }
    assert!(server_in.is_empty() && client_in.is_empty() && to_server.is_empty() && to_client.is_empty());
    Ends { client: client_done.unwrap(), server: server_done.unwrap() }
}

fn assert_ciphers_match(ends: &mut Ends) {
    let client = ends.client.cipher.as_mut().expect("client cipher");
    let server = ends.server.cipher.as_mut().expect("server cipher");
    for len in [1usize, 17, 4096] {
        let plain: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
        let mut data = plain.clone();
        client.encrypt(&mut data);
        assert_ne!(data, plain);
        server.decrypt(&mut data);
        assert_eq!(data, plain);
        server.encrypt(&mut data);
        assert_ne!(data, plain);
        client.decrypt(&mut data);
        assert_eq!(data, plain);
    }
}

fn signed_both_ways(ends: &Ends) -> bool {
    ends.client.peer_response == PeerResponse::Signed && ends.server.peer_response == PeerResponse::Signed
}

fn rtmpe_pair(requested: HandshakeVersion, seed: u64) -> (ClientHandshake, ServerHandshake) {
    let client = ClientHandshake::new(requested, true, &mut rng(seed));
    let server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(seed + 1));
    (client, server)
}

// ---- digest and signature known answers ----

#[test]
fn offsets_of_both_schemes() {
    let block = patterned_block();
    assert_eq!(DigestScheme::A.digest_offset(&block), 290);
    assert_eq!(DigestScheme::B.digest_offset(&block), 942);
    assert_eq!(DigestScheme::A.dh_key_offset(&block), 1106);
    assert_eq!(DigestScheme::B.dh_key_offset(&block), 62);
    // Extremes stay inside their halves.
    let mut max = Box::new([0xffu8; HANDSHAKE_SIZE]);
    assert_eq!(DigestScheme::A.digest_offset(&max), 1020 % 728 + 12);
    assert_eq!(DigestScheme::B.dh_key_offset(&max), 1020 % 632 + 8);
    max.fill(0);
    assert_eq!(DigestScheme::B.digest_offset(&max), 776);
    assert_eq!(DigestScheme::A.dh_key_offset(&max), 772);
}

#[test]
fn c1_digest_known_answer() {
    let mut block = patterned_block();
    let expected = hex("36d27b365b84e5e55f376e2f24f3a7dd6b8b5e9b002f035f99366c07e43b8d41");
    assert_eq!(compute_digest(&block, 290, FP_DIGEST_KEY).to_vec(), expected);

    // The same from the formula: HMAC over the block minus the 32 digest bytes.
    let mut mac = Hmac::<Sha256>::new_from_slice(b"Genuine Adobe Flash Player 001").unwrap();
    mac.update(&block[..290]);
    mac.update(&block[290 + 32..]);
    assert_eq!(mac.finalize().into_bytes().to_vec(), expected);

    let embedded = embed_digest(&mut block, DigestScheme::A, FP_DIGEST_KEY);
    assert_eq!(embedded.to_vec(), expected);
    assert_eq!(&block[290..322], &expected[..]);
    // Found when trying B first, and not under the FMS key.
    assert_eq!(find_digest(&block, FP_DIGEST_KEY, DigestScheme::B).map(|f| f.0), Some(DigestScheme::A));
    assert!(find_digest(&block, FMS_DIGEST_KEY, DigestScheme::A).is_none());
    block[300] ^= 1;
    assert!(find_digest(&block, FP_DIGEST_KEY, DigestScheme::A).is_none());
}

#[test]
fn s1_digest_known_answer_scheme_b() {
    let block = patterned_block();
    let expected = hex("01d1722f262d0920a2fd6c2cff614d034585bbacbc28b5c77a88ca2fc0c3b984");
    assert_eq!(compute_digest(&block, 942, FMS_DIGEST_KEY).to_vec(), expected);
    assert_eq!(FMS_DIGEST_KEY, b"Genuine Adobe Flash Media Server 001");
    assert_eq!(GENUINE_FP_KEY[30..], GENUINE_FMS_KEY[36..]);
}

#[test]
fn response_signatures_known_answers() {
    let block = patterned_block();
    let c1_digest: [u8; 32] =
        hex("36d27b365b84e5e55f376e2f24f3a7dd6b8b5e9b002f035f99366c07e43b8d41").try_into().unwrap();
    let key = signature_key(&GENUINE_FMS_KEY, &c1_digest);
    assert_eq!(key.to_vec(), hex("b8ba547837ed9e01745e73fb1cbcef7b30663bd896f825c5f466a1fadc8799ff"));
    let plain = hex("772fa88ea2f1725a5aaf4012f46e06c449901b7afae690f60982a347dbd77d24");
    assert_eq!(signature(&key, &block).to_vec(), plain);
    assert_eq!(response_signature(&block, &key, HandshakeVersion::Plain).to_vec(), plain);
    assert_eq!(response_signature(&block, &key, HandshakeVersion::Rtmpe).to_vec(), plain);
    // Key indexes 4, 11, 3, 4 (key bytes 0, 8, 16, 24 mod 15).
    assert_eq!(
        response_signature(&block, &key, HandshakeVersion::RtmpeXtea).to_vec(),
        hex("f2c271a8d6f4f69d99c4ce40d9a9f997412e8fcd36abcee561481343241f1203")
    );
    assert_eq!(
        response_signature(&block, &key, HandshakeVersion::RtmpeBlowfish).to_vec(),
        hex("b0d5ab0499a03bc5b775649dc366ed61bf93e3e2907db2e29fcc9018b26e7cba")
    );
}

// ---- Diffie-Hellman and RC4 ----

#[test]
fn dh_key_range_is_enforced() {
    let p = PRIME.to_be_bytes();
    let p_minus = |k: u64| PRIME.wrapping_sub(&crypto_bigint::U1024::from_u64(k)).to_be_bytes();
    let mut one = [0u8; DH_KEY_LEN];
    one[127] = 1;
    let mut two = [0u8; DH_KEY_LEN];
    two[127] = 2;
    for bad in [[0u8; DH_KEY_LEN], one, p_minus(1).into(), p.into(), [0xff; DH_KEY_LEN]] {
        assert!(validate_public_key(&bad).is_err());
    }
    assert!(validate_public_key(&two).is_ok());
    assert!(validate_public_key(&<[u8; DH_KEY_LEN]>::from(p_minus(2))).is_ok());
    assert!(validate_public_key(&two[1..]).is_err());
}

/// Private keys chosen so the shared secret's top byte is zero (it must stay a leading 0x00 of
/// the 128-byte HMAC key). Expected values from Python's pow/hmac and a hand-written RC4.
const CLIENT_PRIVATE: [u8; DH_KEY_LEN] = [0x11; DH_KEY_LEN];
fn server_private() -> [u8; DH_KEY_LEN] {
    let mut key = [0x22; DH_KEY_LEN];
    key[126] = 0;
    key[127] = 155;
    key
}
const CLIENT_OUT_KEY: &str = "f4ee10604ccfc7708f23fe96a5c7aa4e";
const CLIENT_IN_KEY: &str = "44497d6370048abd3fb22d12bdb74878";
const CLIENT_OUT_STREAM: &str = "aa3447a08f3cda158c74b06af477cf0a";
const CLIENT_IN_STREAM: &str = "1f9eb455927ae079a1a31448aa9696ab";

#[test]
fn rc4_keys_known_answer_with_leading_zero_secret() {
    let client = DhKeyPair::from_random_bytes(CLIENT_PRIVATE);
    let server = DhKeyPair::from_random_bytes(server_private());
    assert_eq!(client.public_key()[..8], hex("0801943b23ea3af0")[..]);
    assert_eq!(server.public_key()[..8], hex("b4ffb29e481b0e7c")[..]);
    let secret = server.shared_secret(client.public_key()).unwrap();
    assert_eq!(secret[..4], hex("00b0cfdc")[..]);
    assert_eq!(client.shared_secret(server.public_key()).unwrap(), secret);

    let (out_key, in_key) = rc4_keys(&secret, client.public_key(), server.public_key());
    assert_eq!(out_key.to_vec(), hex(CLIENT_OUT_KEY));
    assert_eq!(in_key.to_vec(), hex(CLIENT_IN_KEY));
    // Trimming the zero instead (librtmp's OpenSSL build) would give another key.
    assert_ne!(out_key.to_vec(), hex("5872c0341feeb2f08e9f0cc8fbdd2f4a"));
    let (server_out, server_in) = rc4_keys(&secret, server.public_key(), client.public_key());
    assert_eq!((server_out, server_in), (in_key, out_key));

    let mut pair = Rc4Pair::from_keys(&out_key, &in_key);
    let mut block = [0u8; 16];
    pair.encrypt(&mut block);
    assert_eq!(block.to_vec(), hex(CLIENT_OUT_STREAM));
    let mut block = [0u8; 16];
    pair.decrypt(&mut block);
    assert_eq!(block.to_vec(), hex(CLIENT_IN_STREAM));
}

/// Hands out zeros, except for the third request (the DH private key).
struct ScriptedRng {
    calls: usize,
    dh_private: [u8; DH_KEY_LEN],
}

impl RngCore for ScriptedRng {
    fn next_u32(&mut self) -> u32 {
        0
    }
    fn next_u64(&mut self) -> u64 {
        0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.calls += 1;
        if self.calls == 3 {
            dest.copy_from_slice(&self.dh_private);
        } else {
            dest.fill(0);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

#[test]
fn handshake_derives_the_known_answer_streams() {
    let mut client_rng = ScriptedRng { calls: 0, dh_private: CLIENT_PRIVATE };
    let mut server_rng = ScriptedRng { calls: 0, dh_private: server_private() };
    let mut client = ClientHandshake::new(HandshakeVersion::Rtmpe, true, &mut client_rng);
    let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut server_rng);
    let mut ends = run(&mut client, &mut server, usize::MAX);
    let mut block = [0u8; 16];
    ends.client.cipher.as_mut().unwrap().encrypt(&mut block);
    assert_eq!(block.to_vec(), hex(CLIENT_OUT_STREAM));
    let mut block = [0u8; 16];
    ends.server.cipher.as_mut().unwrap().encrypt(&mut block);
    assert_eq!(block.to_vec(), hex(CLIENT_IN_STREAM));
}

// ---- whole handshakes ----

#[test]
fn simple_handshake_echoes() {
    let mut client = ClientHandshake::new(HandshakeVersion::Plain, false, &mut rng(1));
    let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(2));
    let mut c0c1 = BytesMut::new();
    client.start(&mut c0c1);
    assert_eq!(c0c1.len(), 1 + HANDSHAKE_SIZE);
    assert_eq!(&c0c1[..9], &[3, 0, 0, 0, 0, 0, 0, 0, 0]);
    let c1 = c0c1[1..].to_vec();

    let mut s0s1s2 = BytesMut::new();
    assert!(server.handle_input(&mut c0c1, &mut s0s1s2).unwrap().is_none());
    assert!(c0c1.is_empty());
    assert_eq!(s0s1s2.len(), 1 + 2 * HANDSHAKE_SIZE);
    assert_eq!(&s0s1s2[..9], &[3, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&s0s1s2[1 + HANDSHAKE_SIZE..], &c1[..]);
    let s1 = s0s1s2[1..1 + HANDSHAKE_SIZE].to_vec();

    let mut c2 = BytesMut::new();
    let outcome = client.handle_input(&mut s0s1s2, &mut c2).unwrap().unwrap();
    assert_eq!(&c2[..], &s1[..]);
    assert!(!outcome.digest && outcome.cipher.is_none());
    assert_eq!(outcome.peer_response, PeerResponse::Echo);
    let outcome = server.handle_input(&mut c2, &mut BytesMut::new()).unwrap().unwrap();
    assert_eq!((outcome.requested, outcome.version), (HandshakeVersion::Plain, HandshakeVersion::Plain));
    assert!(!outcome.digest && outcome.cipher.is_none());
    assert_eq!(outcome.peer_response, PeerResponse::Echo);
}

#[test]
fn plain_digest_handshake() {
    let mut client = ClientHandshake::new(HandshakeVersion::Plain, true, &mut rng(3));
    let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(4));
    let ends = run(&mut client, &mut server, usize::MAX);
    for outcome in [&ends.client, &ends.server] {
        assert_eq!(outcome.requested, HandshakeVersion::Plain);
        assert_eq!(outcome.version, HandshakeVersion::Plain);
        assert!(outcome.digest && outcome.cipher.is_none());
        assert_eq!(outcome.peer_response, PeerResponse::Signed);
    }
}

#[test]
fn server_signs_s1_with_the_clients_scheme_and_version() {
    let mut client = ClientHandshake::new(HandshakeVersion::Plain, true, &mut rng(5));
    let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(6));
    let mut input = BytesMut::new();
    client.start(&mut input);
    assert_eq!(&input[5..9], &CLIENT_VERSION_DIGEST);
    let mut out = BytesMut::new();
    server.handle_input(&mut input, &mut out).unwrap();
    let s1: &Block = out[1..1 + HANDSHAKE_SIZE].try_into().unwrap();
    assert_eq!(&s1[4..8], &SERVER_VERSION);
    let offset = DigestScheme::A.digest_offset(s1);
    assert_eq!(compute_digest(s1, offset, FMS_DIGEST_KEY)[..], s1[offset..offset + 32]);
}

#[test]
fn rtmpe_type_6() {
    let (mut client, mut server) = rtmpe_pair(HandshakeVersion::Rtmpe, 10);
    let mut ends = run(&mut client, &mut server, usize::MAX);
    for outcome in [&ends.client, &ends.server] {
        assert_eq!((outcome.requested, outcome.version), (HandshakeVersion::Rtmpe, HandshakeVersion::Rtmpe));
        assert!(outcome.digest);
        assert_eq!(outcome.peer_response, PeerResponse::Signed);
    }
    assert_ciphers_match(&mut ends);
}

#[test]
fn rtmpe_type_8() {
    let (mut client, mut server) = rtmpe_pair(HandshakeVersion::RtmpeXtea, 12);
    let mut ends = run(&mut client, &mut server, usize::MAX);
    assert_eq!(ends.server.version, HandshakeVersion::RtmpeXtea);
    assert_eq!(ends.client.version, HandshakeVersion::RtmpeXtea);
    assert!(signed_both_ways(&ends));
    assert_ciphers_match(&mut ends);
}

#[test]
fn rtmpe_type_9() {
    let (mut client, mut server) = rtmpe_pair(HandshakeVersion::RtmpeBlowfish, 14);
    let mut ends = run(&mut client, &mut server, usize::MAX);
    assert_eq!(ends.server.version, HandshakeVersion::RtmpeBlowfish);
    assert_eq!(ends.client.version, HandshakeVersion::RtmpeBlowfish);
    assert_ciphers_match(&mut ends);
}

#[test]
fn librtmp_style_type_6_request_is_answered_with_8() {
    // librtmp sends C0 = 6 with C1 version 128.0.3.2 and digest scheme B; its server answers 8.
    let (mut client, mut server) = rtmpe_pair(HandshakeVersion::Rtmpe, 16);
    client.hello_version = (CLIENT_VERSION_RTMPE, DigestScheme::B);
    let mut ends = run(&mut client, &mut server, usize::MAX);
    assert_eq!(ends.server.requested, HandshakeVersion::Rtmpe);
    assert_eq!(ends.server.version, HandshakeVersion::RtmpeXtea);
    assert_eq!(ends.client.version, HandshakeVersion::RtmpeXtea);
    assert!(signed_both_ways(&ends));
    assert_ciphers_match(&mut ends);
}

#[test]
fn one_byte_at_a_time() {
    for (version, digest) in [
        (HandshakeVersion::Plain, false),
        (HandshakeVersion::Plain, true),
        (HandshakeVersion::RtmpeXtea, true),
    ] {
        let mut client = ClientHandshake::new(version, digest, &mut rng(20));
        let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(21));
        let mut ends = run(&mut client, &mut server, 1);
        assert_eq!(ends.server.digest, digest);
        let form = if digest { PeerResponse::Signed } else { PeerResponse::Echo };
        assert_eq!((ends.client.peer_response, ends.server.peer_response), (form, form));
        if version.is_encrypted() {
            assert_ciphers_match(&mut ends);
        }
    }
}

#[test]
fn bytes_after_c2_and_s2_stay_in_input() {
    let (mut client, mut server) = rtmpe_pair(HandshakeVersion::Rtmpe, 30);
    let mut to_server = BytesMut::new();
    client.start(&mut to_server);
    let mut to_client = BytesMut::new();
    assert!(server.handle_input(&mut to_server, &mut to_client).unwrap().is_none());

    // S0/S1/S2 followed by three more bytes.
    to_client.extend_from_slice(b"xyz");
    let mut client_outcome = client.handle_input(&mut to_client, &mut to_server).unwrap().unwrap();
    assert_eq!(&to_client[..], b"xyz");

    // C2 followed by the first (encrypted) chunk bytes.
    let mut first_chunk = b"\x03\x00\x00\x00connect".to_vec();
    client_outcome.cipher.as_mut().unwrap().encrypt(&mut first_chunk);
    to_server.extend_from_slice(&first_chunk);
    let mut out = BytesMut::new();
    let mut server_outcome = server.handle_input(&mut to_server, &mut out).unwrap().unwrap();
    assert!(out.is_empty());
    assert_eq!(&to_server[..], &first_chunk[..]);
    server_outcome.cipher.as_mut().unwrap().decrypt(&mut to_server);
    assert_eq!(&to_server[..], b"\x03\x00\x00\x00connect");

    // The state machines are finished.
    assert!(server.handle_input(&mut BytesMut::new(), &mut out).is_err());
    assert!(client.handle_input(&mut BytesMut::new(), &mut out).is_err());
}

/// The handshakes a client can ask for: (C0 version, digest handshake).
const EVERY_HANDSHAKE: [(HandshakeVersion, bool); 5] = [
    (HandshakeVersion::Plain, false),
    (HandshakeVersion::Plain, true),
    (HandshakeVersion::Rtmpe, true),
    (HandshakeVersion::RtmpeXtea, true),
    (HandshakeVersion::RtmpeBlowfish, true),
];

/// A C2 or S2 of the given form answering `hello` (the S1 or C1 it follows): `real` is what our
/// own client or server wrote.
fn response_of_form(form: PeerResponse, real: &[u8], hello: &[u8], seed: u64) -> BytesMut {
    let mut response = BytesMut::from(real);
    match form {
        PeerResponse::Signed => {}
        PeerResponse::Echo => {
            response.copy_from_slice(hello);
            // The spec's echo carries the reader's own time in bytes 4..8.
            response[4..8].copy_from_slice(&[0, 0, 0x12, 0x34]);
        }
        PeerResponse::Other => rand::RngCore::fill_bytes(&mut rng(seed), &mut response),
    }
    response
}

#[test]
fn server_accepts_every_c2_form() {
    for (i, (version, digest)) in EVERY_HANDSHAKE.into_iter().enumerate() {
        for form in [PeerResponse::Signed, PeerResponse::Echo, PeerResponse::Other] {
            let seed = 100 + 10 * i as u64;
            let mut client = ClientHandshake::new(version, digest, &mut rng(seed));
            let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(seed + 1));
            let mut to_server = BytesMut::new();
            client.start(&mut to_server);
            let mut to_client = BytesMut::new();
            server.handle_input(&mut to_server, &mut to_client).unwrap();
            let s1 = to_client[1..1 + HANDSHAKE_SIZE].to_vec();
            let client_outcome = client.handle_input(&mut to_client, &mut to_server).unwrap().unwrap();
            let mut c2 = response_of_form(form, &to_server, &s1, seed + 2);
            let server_outcome = server.handle_input(&mut c2, &mut BytesMut::new()).unwrap().unwrap();
            // The simple handshake's real C2 is an echo: there is no signature to make.
            let expected = if !digest && form == PeerResponse::Signed { PeerResponse::Echo } else { form };
            assert_eq!(server_outcome.peer_response, expected, "{version:?} digest={digest} {form:?}");
            assert_eq!(server_outcome.digest, digest);
            if version.is_encrypted() {
                assert_ciphers_match(&mut Ends { client: client_outcome, server: server_outcome });
            }
        }
    }
}

#[test]
fn client_accepts_every_s2_form() {
    for (i, (version, digest)) in EVERY_HANDSHAKE.into_iter().enumerate() {
        for form in [PeerResponse::Signed, PeerResponse::Echo, PeerResponse::Other] {
            let seed = 200 + 10 * i as u64;
            let mut client = ClientHandshake::new(version, digest, &mut rng(seed));
            let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(seed + 1));
            let mut to_server = BytesMut::new();
            client.start(&mut to_server);
            let c1 = to_server[1..].to_vec();
            let mut to_client = BytesMut::new();
            server.handle_input(&mut to_server, &mut to_client).unwrap();
            let s2 = to_client.split_off(1 + HANDSHAKE_SIZE);
            to_client.extend_from_slice(&response_of_form(form, &s2, &c1, seed + 2));
            let client_outcome = client.handle_input(&mut to_client, &mut to_server).unwrap().unwrap();
            let server_outcome = server.handle_input(&mut to_server, &mut BytesMut::new()).unwrap().unwrap();
            let expected = if !digest && form == PeerResponse::Signed { PeerResponse::Echo } else { form };
            assert_eq!(client_outcome.peer_response, expected, "{version:?} digest={digest} {form:?}");
            if version.is_encrypted() {
                assert_ciphers_match(&mut Ends { client: client_outcome, server: server_outcome });
            }
        }
    }
}

/// FFmpeg's client as a publisher (`rtmp_handshake` when not `is_input`), for C0 = `c0`: C1
/// with version 128.0.3.2, its DH key at scheme B's position and a scheme B digest; it does not
/// look for the S1 digest, reads the server's key at scheme A's position, ignores S2 and sends
/// S1 back as C2. Returns the server's outcome and the client's ciphers (out, in).
fn ffmpeg_publisher_handshake(c0: u8, seed: u64) -> (HandshakeOutcome, Rc4Pair) {
    let dh = DhKeyPair::from_random_bytes([0x44; DH_KEY_LEN]);
    let signing = Signing {
        scheme: DigestScheme::B,
        digest_key: FP_DIGEST_KEY,
        dh_public: Some(dh.public_key()),
        key_for_ffmpeg_publishers: false,
    };
    let mut random = [0u8; RANDOM_LEN];
    rand::RngCore::fill_bytes(&mut rng(seed), &mut random);
    let (c1, _) = hello_block(CLIENT_VERSION_RTMPE, &random, Some(signing));
    let mut to_server = BytesMut::from(&[c0][..]);
    to_server.extend_from_slice(&c1[..]);

    let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(seed + 1));
    let mut to_client = BytesMut::new();
    assert!(server.handle_input(&mut to_server, &mut to_client).unwrap().is_none());
    let s1: &Block = to_client[1..1 + HANDSHAKE_SIZE].try_into().unwrap();
    let server_public = peer_dh_key(s1, DigestScheme::A);
    let secret = dh.shared_secret(server_public).expect("a valid server key at scheme A's position");
    let (out_key, in_key) = rc4_keys(&secret, dh.public_key(), server_public);

    let mut c2 = BytesMut::from(&s1[..]);
    let outcome = server.handle_input(&mut c2, &mut BytesMut::new()).unwrap().unwrap();
    (outcome, Rc4Pair::from_keys(&out_key, &in_key))
}

#[test]
fn ffmpeg_publisher_over_rtmpe() {
    for (c0, answered) in [
        (6, HandshakeVersion::RtmpeXtea),
        (8, HandshakeVersion::RtmpeXtea),
        (9, HandshakeVersion::RtmpeBlowfish),
    ] {
        for seed in [300, 302, 304] {
            let (mut server, mut client_cipher) = ffmpeg_publisher_handshake(c0, seed);
            assert_eq!(server.version, answered);
            assert_eq!(server.peer_response, PeerResponse::Echo);
            let server_cipher = server.cipher.as_mut().unwrap();
            let mut connect = b"\x03\x00\x00\x00connect".to_vec();
            client_cipher.encrypt(&mut connect);
            server_cipher.decrypt(&mut connect);
            assert_eq!(&connect[..], b"\x03\x00\x00\x00connect", "C0 {c0}, seed {seed}");
            let mut result = b"_result".to_vec();
            server_cipher.encrypt(&mut result);
            client_cipher.decrypt(&mut result);
            assert_eq!(&result[..], b"_result");
        }
    }
}

#[test]
fn s1_for_a_scheme_b_rtmpe_client_carries_the_key_twice() {
    let (mut client, mut server) = rtmpe_pair(HandshakeVersion::RtmpeBlowfish, 310);
    let mut to_server = BytesMut::new();
    client.start(&mut to_server);
    let mut to_client = BytesMut::new();
    server.handle_input(&mut to_server, &mut to_client).unwrap();
    let s1: &Block = to_client[1..1 + HANDSHAKE_SIZE].try_into().unwrap();
    // Signed with the client's scheme (B), so librtmp finds the digest on its first try.
    assert_eq!(find_digest(s1, FMS_DIGEST_KEY, DigestScheme::B).map(|f| f.0), Some(DigestScheme::B));
    assert_eq!(DigestScheme::B.digest_offset(s1), 776);
    assert_eq!(DigestScheme::A.dh_key_offset(s1), 1000);
    assert_eq!(peer_dh_key(s1, DigestScheme::A), peer_dh_key(s1, DigestScheme::B));
    assert!(validate_public_key(peer_dh_key(s1, DigestScheme::A)).is_ok());

    // A scheme A client gets no second copy: its offset bytes stay random.
    let (mut client, mut server) = rtmpe_pair(HandshakeVersion::Rtmpe, 312);
    let mut to_server = BytesMut::new();
    client.start(&mut to_server);
    let mut to_client = BytesMut::new();
    server.handle_input(&mut to_server, &mut to_client).unwrap();
    let s1: &Block = to_client[1..1 + HANDSHAKE_SIZE].try_into().unwrap();
    assert_eq!(find_digest(s1, FMS_DIGEST_KEY, DigestScheme::A).map(|f| f.0), Some(DigestScheme::A));
    assert_ne!(peer_dh_key(s1, DigestScheme::A), peer_dh_key(s1, DigestScheme::B));
}

#[test]
fn tampered_rtmpe_responses_still_derive_the_same_keys() {
    // A C2/S2 that matches nothing is accepted; the keys come from the DH exchange alone.
    let (mut client, mut server) = rtmpe_pair(HandshakeVersion::RtmpeXtea, 44);
    let mut to_server = BytesMut::new();
    client.start(&mut to_server);
    let mut to_client = BytesMut::new();
    server.handle_input(&mut to_server, &mut to_client).unwrap();
    let last = to_client.len() - 1;
    to_client[last] ^= 1;
    let client_outcome = client.handle_input(&mut to_client, &mut to_server).unwrap().unwrap();
    to_server[HANDSHAKE_SIZE - 1] ^= 0x80;
    let server_outcome = server.handle_input(&mut to_server, &mut BytesMut::new()).unwrap().unwrap();
    assert_eq!(client_outcome.peer_response, PeerResponse::Other);
    assert_eq!(server_outcome.peer_response, PeerResponse::Other);
    assert_ciphers_match(&mut Ends { client: client_outcome, server: server_outcome });
}

/// A C0/C1 signed like a client's, carrying `public` as the DH key.
fn rtmpe_c0c1_with_key(public: &[u8; DH_KEY_LEN]) -> BytesMut {
    let signing = Signing {
        scheme: DigestScheme::A,
        digest_key: FP_DIGEST_KEY,
        dh_public: Some(public),
        key_for_ffmpeg_publishers: false,
    };
    let (c1, _) = hello_block(CLIENT_VERSION_RTMPE6, &[0x5a; RANDOM_LEN], Some(signing));
    let mut input = BytesMut::from(&[6u8][..]);
    input.extend_from_slice(&c1[..]);
    input
}

#[test]
fn invalid_client_dh_keys_fail() {
    let mut one = [0u8; DH_KEY_LEN];
    one[127] = 1;
    let p_minus_1 = PRIME.wrapping_sub(&crypto_bigint::U1024::ONE).to_be_bytes().into();
    for bad in [[0u8; DH_KEY_LEN], one, p_minus_1, PRIME.to_be_bytes().into()] {
        let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(50));
        let mut input = rtmpe_c0c1_with_key(&bad);
        let err = server.handle_input(&mut input, &mut BytesMut::new()).unwrap_err();
        assert_eq!(err, Error::Handshake("DH public key out of range"));
    }
    // A valid key in the same construction goes through.
    let good = DhKeyPair::from_random_bytes([0x33; DH_KEY_LEN]);
    let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(50));
    let mut out = BytesMut::new();
    assert!(server.handle_input(&mut rtmpe_c0c1_with_key(good.public_key()), &mut out).unwrap().is_none());
    assert_eq!(out[0], 6);
}

#[test]
fn invalid_server_dh_key_fails_client() {
    let mut client = ClientHandshake::new(HandshakeVersion::Rtmpe, true, &mut rng(52));
    client.start(&mut BytesMut::new());
    let signing = Signing {
        scheme: DigestScheme::A,
        digest_key: FMS_DIGEST_KEY,
        dh_public: Some(&[0; DH_KEY_LEN]),
        key_for_ffmpeg_publishers: false,
    };
    let (s1, _) = hello_block(SERVER_VERSION, &[0x5a; RANDOM_LEN], Some(signing));
    let mut input = BytesMut::from(&[6u8][..]);
    input.extend_from_slice(&s1[..]);
    assert!(client.handle_input(&mut input, &mut BytesMut::new()).is_err());
}

#[test]
fn rtmpe_without_digest_fails() {
    let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(54));
    let mut input = BytesMut::from(&[8u8][..]);
    input.extend_from_slice(&[1u8; HANDSHAKE_SIZE]);
    assert!(server.handle_input(&mut input, &mut BytesMut::new()).is_err());
}

#[test]
fn unsigned_c1_with_version_falls_back_to_simple() {
    let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(56));
    let mut input = BytesMut::from(&[3u8][..]);
    let c1 = patterned_block();
    input.extend_from_slice(&c1[..]);
    let mut out = BytesMut::new();
    server.handle_input(&mut input, &mut out).unwrap();
    assert_eq!(out[0], 3);
    assert_eq!(&out[5..9], &[0; 4]);
    assert_eq!(&out[1 + HANDSHAKE_SIZE..], &c1[..]);
    let s1 = out[1..1 + HANDSHAKE_SIZE].to_vec();
    let outcome = server.handle_input(&mut BytesMut::from(&s1[..]), &mut out).unwrap().unwrap();
    assert!(!outcome.digest);
    assert_eq!(outcome.peer_response, PeerResponse::Echo);
}

#[test]
fn client_falls_back_when_server_does_not_sign() {
    let mut client = ClientHandshake::new(HandshakeVersion::Plain, true, &mut rng(58));
    client.start(&mut BytesMut::new());
    let mut input = BytesMut::from(&[3u8][..]);
    input.extend_from_slice(&patterned_block()[..]);
    input.extend_from_slice(&[0u8; HANDSHAKE_SIZE]);
    let mut c2 = BytesMut::new();
    let outcome = client.handle_input(&mut input, &mut c2).unwrap().unwrap();
    assert_eq!(&c2[..], &patterned_block()[..]);
    assert!(!outcome.digest);
    assert_eq!(outcome.peer_response, PeerResponse::Other);
}

#[test]
fn policies_and_versions_are_judged_on_c0() {
    let cases = [
        (EncryptionPolicy::Require, 3u8, false),
        (EncryptionPolicy::Require, 6, true),
        (EncryptionPolicy::Forbid, 6, false),
        (EncryptionPolicy::Forbid, 8, false),
        (EncryptionPolicy::Forbid, 9, false),
        (EncryptionPolicy::Forbid, 3, true),
        (EncryptionPolicy::Allow, 0x0a, false),
        (EncryptionPolicy::Allow, 0, false),
        (EncryptionPolicy::Allow, 3, true),
    ];
    for (policy, c0, accepted) in cases {
        let mut server = ServerHandshake::new(policy, &mut rng(60));
        let mut input = BytesMut::from(&[c0][..]);
        let result = server.handle_input(&mut input, &mut BytesMut::new());
        assert_eq!(result.is_ok(), accepted, "{policy:?} {c0}");
        if !accepted {
            assert!(matches!(result, Err(Error::Handshake(_))));
            // Stays failed.
            assert!(server.handle_input(&mut BytesMut::from(&[3u8][..]), &mut BytesMut::new()).is_err());
        }
    }
    // Require: a full RTMPE handshake passes.
    let mut client = ClientHandshake::new(HandshakeVersion::RtmpeXtea, true, &mut rng(62));
    let mut server = ServerHandshake::new(EncryptionPolicy::Require, &mut rng(63));
    assert!(run(&mut client, &mut server, usize::MAX).server.cipher.is_some());
}

#[test]
fn client_rejects_wrong_s0_and_use_before_start() {
    let mut client = ClientHandshake::new(HandshakeVersion::Plain, true, &mut rng(64));
    assert!(client.handle_input(&mut BytesMut::new(), &mut BytesMut::new()).is_err());

    let mut client = ClientHandshake::new(HandshakeVersion::Plain, true, &mut rng(64));
    client.start(&mut BytesMut::new());
    assert!(client.handle_input(&mut BytesMut::from(&[6u8][..]), &mut BytesMut::new()).is_err());

    let mut client = ClientHandshake::new(HandshakeVersion::Rtmpe, true, &mut rng(64));
    client.start(&mut BytesMut::new());
    assert!(client.handle_input(&mut BytesMut::from(&[3u8][..]), &mut BytesMut::new()).is_err());
}

#[test]
fn start_writes_c0_c1_once() {
    let mut client = ClientHandshake::new(HandshakeVersion::RtmpeBlowfish, true, &mut rng(66));
    let mut out = BytesMut::new();
    client.start(&mut out);
    client.start(&mut out);
    assert_eq!(out.len(), 1 + HANDSHAKE_SIZE);
    assert_eq!(&out[..1], &[9]);
    assert_eq!(&out[5..9], &CLIENT_VERSION_RTMPE);
    let c1: &Block = out[1..].try_into().unwrap();
    assert_eq!(find_digest(c1, FP_DIGEST_KEY, DigestScheme::B).map(|f| f.0), Some(DigestScheme::B));
}

#[test]
fn same_seeds_same_bytes() {
    let transcript = |seed| {
        let mut client = ClientHandshake::new(HandshakeVersion::Plain, true, &mut rng(seed));
        let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng(seed + 1));
        let mut input = BytesMut::new();
        client.start(&mut input);
        let mut out = BytesMut::new();
        server.handle_input(&mut input, &mut out).unwrap();
        out
    };
    assert_eq!(transcript(70), transcript(70));
    assert_ne!(transcript(70), transcript(72));
}

// ---- fuzz entry ----

#[test]
fn fuzz_entry_survives_samples() {
    fuzz_server_handshake(&[]);
    fuzz_server_handshake(&[0]);
    fuzz_server_handshake(&[1, 6]);
    let mut noise = vec![7u8; 5000];
    rand::RngCore::fill_bytes(&mut rng(80), &mut noise[1..]);
    fuzz_server_handshake(&noise);
    noise[1] = 3;
    fuzz_server_handshake(&noise);

    // A real client's bytes, so the fuzzer's seed corpus reaches the end.
    let mut client = ClientHandshake::new(HandshakeVersion::Plain, true, &mut rng(82));
    let mut data = BytesMut::from(&[200u8][..]);
    client.start(&mut data);
    data.extend_from_slice(&[0u8; HANDSHAKE_SIZE + 10]);
    fuzz_server_handshake(&data);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_server_input_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4000)) {
        fuzz_server_handshake(&data);
    }
}
