//! The RTMP handshake, server and client roles: C0/C1/C2 ↔ S0/S1/S2.
//!
//! Plain (version byte 3) with the simple (echo) and digest ("complex", FP9+) forms, and RTMPE
//! (version bytes 6, 8, 9): Diffie-Hellman keys in the digest handshake, RC4 on every byte after.
//!
//! What is checked: C0's version, the C1/S1 digest (it places the DH key; RTMPE needs it) and
//! the DH key's range. C2/S2 is classified ([`PeerResponse`]), never refused: real clients sign
//! it, echo S1 (FFmpeg publishing) or send anything, and servers such as FMS and nginx-rtmp
//! accept them all.
// CONTRACT (implemented by the handshake work): keep these public signatures.

mod cipher;
mod digest;
mod rtmpe;
mod signature;
#[cfg(test)]
mod tests;

use bytes::{BufMut, BytesMut};
use rand::RngCore;

use crate::{Error, Result};
pub use cipher::Rc4Stream;
use digest::{
    ct_eq, embed_digest, find_digest, signature_key, Block, DigestScheme, DIGEST_LEN, FMS_DIGEST_KEY,
    FP_DIGEST_KEY, GENUINE_FMS_KEY, GENUINE_FP_KEY, SIGNED_LEN,
};
use rtmpe::{rc4_keys, DhKeyPair};
pub use rtmpe::{DH_KEY_LEN, RC4_KEY_LEN};

/// Size of C1, C2, S1 and S2.
pub const HANDSHAKE_SIZE: usize = 1536;

/// The version byte of C0/S0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeVersion {
    /// 0x03: plain RTMP.
    Plain,
    /// 0x06: RTMPE, RC4.
    Rtmpe,
    /// 0x08: RTMPE with XTEA-transformed signatures.
    RtmpeXtea,
    /// 0x09: RTMPE with Blowfish-transformed signatures.
    RtmpeBlowfish,
}

impl HandshakeVersion {
    /// The version a C0/S0 byte asks for, `None` for an unknown one.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            3 => Some(Self::Plain),
            6 => Some(Self::Rtmpe),
            8 => Some(Self::RtmpeXtea),
            9 => Some(Self::RtmpeBlowfish),
            _ => None,
        }
    }

    /// The C0/S0 byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Plain => 3,
            Self::Rtmpe => 6,
            Self::RtmpeXtea => 8,
            Self::RtmpeBlowfish => 9,
        }
    }

    /// Whether this is an RTMPE version (RC4 after the handshake).
    pub fn is_encrypted(self) -> bool {
        self != Self::Plain
    }
}

/// Whether a listener accepts RTMPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncryptionPolicy {
    /// Plain and RTMPE both accepted.
    #[default]
    Allow,
    /// Only RTMPE; plain C0 fails the handshake.
    Require,
    /// Only plain; RTMPE C0 fails the handshake.
    Forbid,
}

/// Version bytes of our S1 in the digest handshake (any non-zero value tells the client we sign).
pub const SERVER_VERSION: [u8; 4] = [4, 5, 0, 1];
/// Version bytes of our C1 in the plain digest handshake (what librtmp sends in that mode).
pub const CLIENT_VERSION_DIGEST: [u8; 4] = [10, 0, 45, 2];
/// Version bytes of our C1 for RTMPE types 8 and 9 (librtmp's FP10 mode; a librtmp server
/// answers 0x06 with 0x08 when it sees the 128).
pub const CLIENT_VERSION_RTMPE: [u8; 4] = [128, 0, 3, 2];
/// Version bytes of our C1 for RTMPE type 6 (librtmp's FP9 mode), so servers keep type 6.
pub const CLIENT_VERSION_RTMPE6: [u8; 4] = [9, 0, 124, 2];

/// Bytes of a C1/S1 after the time and version fields.
const RANDOM_LEN: usize = HANDSHAKE_SIZE - 8;

/// The two RC4 streams of an RTMPE session, already advanced past the discarded prefix.
pub struct Rc4Pair {
    outgoing: Rc4Stream,
    incoming: Rc4Stream,
}

impl Rc4Pair {
    /// The pair keyed with the two derived keys, each stream advanced past its first 1536 bytes
    /// (the state a finished handshake hands over).
    pub fn from_keys(out_key: &[u8; RC4_KEY_LEN], in_key: &[u8; RC4_KEY_LEN]) -> Self {
        Rc4Pair { outgoing: Rc4Stream::new(out_key), incoming: Rc4Stream::new(in_key) }
    }

    /// Encrypts bytes we send, in place.
    pub fn encrypt(&mut self, data: &mut [u8]) {
        self.outgoing.apply(data);
    }

    /// `a.encrypt(a_data); b.encrypt(b_data)`, interleaved ([`Rc4Stream::apply_pair`]).
    pub fn encrypt_pair(a: &mut Rc4Pair, a_data: &mut [u8], b: &mut Rc4Pair, b_data: &mut [u8]) {
        Rc4Stream::apply_pair(&mut a.outgoing, a_data, &mut b.outgoing, b_data);
    }

    /// Decrypts bytes we received, in place.
    pub fn decrypt(&mut self, data: &mut [u8]) {
        self.incoming.apply(data);
    }

    /// (encryptor, decryptor), for transports that read and write from different tasks.
    pub fn split(self) -> (Rc4Stream, Rc4Stream) {
        (self.outgoing, self.incoming)
    }
}

impl std::fmt::Debug for Rc4Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rc4Pair(..)")
    }
}

/// What a completed handshake agreed on.
#[derive(Debug)]
pub struct HandshakeOutcome {
    /// The version byte the client sent in C0.
    pub requested: HandshakeVersion,
    /// The version in force (the server's S0).
    pub version: HandshakeVersion,
    /// Whether the digest ("complex") handshake was used.
    pub digest: bool,
    /// What the peer's C2/S2 was. Every form is accepted: it proves nothing a peer could not
    /// forge (the keys are public), and RTMPE's keys come from the DH exchange alone.
    pub peer_response: PeerResponse,
    /// RTMPE: the ciphers for every byte after the handshake.
    pub cipher: Option<Rc4Pair>,
}

/// The forms of C2 (and S2) real peers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerResponse {
    /// Signed with the key derived from our S1/C1 digest (digest handshake). C2: librtmp in its
    /// digest mode (RTMPE, SWF verification), FFmpeg as a player, rtmpx. S2: librtmp's server,
    /// nginx-rtmp and SRS when C1 carried a digest, rtmpx.
    Signed,
    /// Our S1/C1 echoed (bytes 8.. compared; 4..8 may carry the peer's time). C2: FFmpeg as a
    /// publisher, in the digest and RTMPE handshakes too; librtmp (rtmpdump, OBS) and every
    /// other client in the simple handshake. S2: simple-handshake servers (FFmpeg's
    /// `-listen 1`, nginx-rtmp for a C1 without digest).
    Echo,
    /// Neither: random bytes, or a signature we cannot check (another key or transform).
    /// Accepted as FMS and nginx-rtmp accept any C2.
    Other,
}

/// The randomness one side needs, drawn up front so a seeded rng makes a run exact.
struct Randomness {
    hello: Box<[u8; RANDOM_LEN]>,
    response: Box<[u8; SIGNED_LEN]>,
    dh_private: [u8; DH_KEY_LEN],
}

impl Randomness {
    fn draw(rng: &mut dyn RngCore) -> Self {
        let mut hello = Box::new([0u8; RANDOM_LEN]);
        let mut response = Box::new([0u8; SIGNED_LEN]);
        let mut dh_private = [0u8; DH_KEY_LEN];
        rng.fill_bytes(&mut hello[..]);
        rng.fill_bytes(&mut response[..]);
        rng.fill_bytes(&mut dh_private);
        Randomness { hello, response, dh_private }
    }
}

/// How our C1/S1 is signed: the digest scheme and, under RTMPE, our DH public key.
struct Signing<'a> {
    scheme: DigestScheme,
    digest_key: &'a [u8],
    dh_public: Option<&'a [u8; DH_KEY_LEN]>,
    /// S1 only: with scheme B, put the DH key at scheme A's position too.
    key_for_ffmpeg_publishers: bool,
}

/// Why an S1 signed with scheme B also carries the DH key at scheme A's position: FFmpeg as a
/// publisher does not look for the S1 digest and reads the server's key where scheme A puts it
/// (`ff_rtmpe_compute_secret_key` with type 1), while FFmpeg as a player and librtmp find the
/// digest and read the key of its scheme. Pinned offset bytes keep the pieces apart: digest at
/// 776..808 (bytes 772..776 sum to 0), scheme-A key at 1000..1128 (bytes 1532..1536 sum to 228),
/// scheme-B key somewhere in 8..768.
const SCHEME_B_DIGEST_OFFSET_BYTES: [u8; 4] = [0; 4];
const SCHEME_A_KEY_OFFSET_BYTES: [u8; 4] = [0, 0, 0, 228];

/// Builds a C1/S1: time 0 (we keep no clock), version, random; when signed, the DH key goes in
/// first and the digest is computed over the result. Returns the block and its digest.
fn hello_block(
    version: [u8; 4],
    random: &[u8; RANDOM_LEN],
    signing: Option<Signing<'_>>,
) -> (Box<Block>, Option<[u8; DIGEST_LEN]>) {
    let mut block = Box::new([0u8; HANDSHAKE_SIZE]);
    block[4..8].copy_from_slice(&version);
    block[8..].copy_from_slice(random);
    let digest = signing.map(|signing| {
        if let Some(public) = signing.dh_public {
            if signing.key_for_ffmpeg_publishers && signing.scheme == DigestScheme::B {
                block[772..776].copy_from_slice(&SCHEME_B_DIGEST_OFFSET_BYTES);
                block[1532..1536].copy_from_slice(&SCHEME_A_KEY_OFFSET_BYTES);
                let offset = DigestScheme::A.dh_key_offset(&block);
                block[offset..offset + DH_KEY_LEN].copy_from_slice(public);
            }
            let offset = signing.scheme.dh_key_offset(&block);
            block[offset..offset + DH_KEY_LEN].copy_from_slice(public);
        }
        embed_digest(&mut block, signing.scheme, signing.digest_key)
    });
    (block, digest)
}

/// The signature a C2/S2 must end with: HMAC(key, first 1504 bytes), transformed for types 8/9.
fn response_signature(block: &Block, key: &[u8; DIGEST_LEN], version: HandshakeVersion) -> [u8; DIGEST_LEN] {
    let mut sig = digest::signature(key, block);
    signature::transform_signature(version, &mut sig, key);
    sig
}

/// Builds a signed C2/S2 from 1504 filler bytes.
fn response_block(
    filler: &[u8; SIGNED_LEN],
    key: &[u8; DIGEST_LEN],
    version: HandshakeVersion,
) -> Box<Block> {
    let mut block = Box::new([0u8; HANDSHAKE_SIZE]);
    block[..SIGNED_LEN].copy_from_slice(filler);
    let sig = response_signature(&block, key, version);
    block[SIGNED_LEN..].copy_from_slice(&sig);
    block
}

fn signature_matches(block: &Block, key: &[u8; DIGEST_LEN], version: HandshakeVersion) -> bool {
    ct_eq(&response_signature(block, key, version), &block[SIGNED_LEN..])
}

/// Which form a C2/S2 has: `hello` is our S1/C1, `key` the signature key (digest handshake).
fn classify_response(
    response: &Block,
    hello: &Block,
    key: Option<&[u8; DIGEST_LEN]>,
    version: HandshakeVersion,
) -> PeerResponse {
    if key.is_some_and(|key| signature_matches(response, key, version)) {
        PeerResponse::Signed
    } else if response[8..] == hello[8..] {
        PeerResponse::Echo
    } else {
        PeerResponse::Other
    }
}

/// The DH public key a C1/S1 carries at the position paired with its digest scheme.
fn peer_dh_key(block: &Block, scheme: DigestScheme) -> &[u8; DH_KEY_LEN] {
    let offset = scheme.dh_key_offset(block);
    block[offset..offset + DH_KEY_LEN].try_into().expect("offset + 128 stays inside the block")
}

fn as_block(bytes: &[u8]) -> &Block {
    bytes.try_into().expect("caller split exactly HANDSHAKE_SIZE bytes")
}

/// Everything decided once the first message is in; finishes when the second arrives.
struct Pending {
    requested: HandshakeVersion,
    version: HandshakeVersion,
    /// Our S1/C1, which the peer may echo.
    hello: Box<Block>,
    /// Digest handshake: the key a signed C2/S2 uses.
    signature_key: Option<[u8; DIGEST_LEN]>,
    cipher: Option<Rc4Pair>,
}

impl Pending {
    /// Never fails: see [`HandshakeOutcome::peer_response`].
    fn finish(self, response: &Block) -> HandshakeOutcome {
        let peer_response =
            classify_response(response, &self.hello, self.signature_key.as_ref(), self.version);
        HandshakeOutcome {
            requested: self.requested,
            version: self.version,
            digest: self.signature_key.is_some(),
            peer_response,
            cipher: self.cipher,
        }
    }
}

enum ServerState {
    AwaitC0C1,
    AwaitC2(Box<Pending>),
    Done,
    Failed,
}

/// Server side: reads C0/C1/C2, writes S0/S1/S2.
pub struct ServerHandshake {
    policy: EncryptionPolicy,
    random: Randomness,
    state: ServerState,
}

impl ServerHandshake {
    /// All randomness (S1, the DH private key) is drawn from `rng` here, so tests can be exact.
    pub fn new(policy: EncryptionPolicy, rng: &mut dyn RngCore) -> Self {
        ServerHandshake { policy, random: Randomness::draw(rng), state: ServerState::AwaitC0C1 }
    }

    /// Consumes handshake bytes from the front of `input` (bytes after C2 stay there: they are
    /// the first chunks, encrypted under RTMPE) and appends what to send to `out`. Returns the
    /// outcome once C2 has been read. Incomplete messages are left in `input` until the rest
    /// arrives. After an error or the outcome, further calls fail.
    pub fn handle_input(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<HandshakeOutcome>> {
        let result = self.advance(input, out);
        if result.is_err() {
            self.state = ServerState::Failed;
        }
        result
    }

    fn advance(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<Option<HandshakeOutcome>> {
        loop {
            match &self.state {
                ServerState::AwaitC0C1 => {
                    // Judge C0 on its own so a wrong protocol fails before 1536 more bytes.
                    let Some(&c0) = input.first() else { return Ok(None) };
                    let requested = self.accept_version(c0)?;
                    if input.len() < 1 + HANDSHAKE_SIZE {
                        return Ok(None);
                    }
                    let c0c1 = input.split_to(1 + HANDSHAKE_SIZE);
                    let pending = self.answer_c1(requested, as_block(&c0c1[1..]), out)?;
                    self.state = ServerState::AwaitC2(Box::new(pending));
                }
                ServerState::AwaitC2(_) => {
                    if input.len() < HANDSHAKE_SIZE {
                        return Ok(None);
                    }
                    let c2 = input.split_to(HANDSHAKE_SIZE);
                    let ServerState::AwaitC2(pending) = std::mem::replace(&mut self.state, ServerState::Done)
                    else {
                        unreachable!("matched above")
                    };
                    return Ok(Some(pending.finish(as_block(&c2))));
                }
                ServerState::Done => return Err(Error::Handshake("handshake already complete")),
                ServerState::Failed => return Err(Error::Handshake("handshake already failed")),
            }
        }
    }

    fn accept_version(&self, c0: u8) -> Result<HandshakeVersion> {
        let requested = HandshakeVersion::from_byte(c0).ok_or(Error::Handshake("unknown C0 version"))?;
        match (self.policy, requested.is_encrypted()) {
            (EncryptionPolicy::Require, false) => Err(Error::Handshake("plain RTMP refused: RTMPE required")),
            (EncryptionPolicy::Forbid, true) => Err(Error::Handshake("RTMPE refused by policy")),
            _ => Ok(requested),
        }
    }

    /// Writes S0/S1/S2 for this C1 and says what C2 may be.
    fn answer_c1(&mut self, requested: HandshakeVersion, c1: &Block, out: &mut BytesMut) -> Result<Pending> {
        let wants_digest = requested.is_encrypted() || c1[4..8] != [0; 4];
        let found = if wants_digest { find_digest(c1, FP_DIGEST_KEY, DigestScheme::A) } else { None };
        let Some((scheme, c1_digest)) = found else {
            if requested.is_encrypted() {
                return Err(Error::Handshake("RTMPE C1 carries no valid digest"));
            }
            // Simple handshake, also the fallback for a C1 whose digest does not check out.
            let (s1, _) = hello_block([0; 4], &self.random.hello, None);
            out.reserve(1 + 2 * HANDSHAKE_SIZE);
            out.put_u8(HandshakeVersion::Plain.to_byte());
            out.extend_from_slice(&s1[..]);
            out.extend_from_slice(c1);
            return Ok(Pending {
                requested,
                version: HandshakeVersion::Plain,
                hello: s1,
                signature_key: None,
                cipher: None,
            });
        };

        let version = answer_version(requested, c1);
        let (dh, peer_public) = if requested.is_encrypted() {
            (Some(DhKeyPair::from_random_bytes(self.random.dh_private)), Some(peer_dh_key(c1, scheme)))
        } else {
            (None, None)
        };
        // Our S1 uses the scheme the client used, so a client trying only its own scheme finds it.
        let signing = Signing {
            scheme,
            digest_key: FMS_DIGEST_KEY,
            dh_public: dh.as_ref().map(DhKeyPair::public_key),
            key_for_ffmpeg_publishers: true,
        };
        let (s1, s1_digest) = hello_block(SERVER_VERSION, &self.random.hello, Some(signing));
        let s1_digest = s1_digest.expect("signed S1 has a digest");

        let cipher = match (&dh, peer_public) {
            (Some(dh), Some(peer_public)) => {
                let secret = dh.shared_secret(peer_public)?;
                let (out_key, in_key) = rc4_keys(&secret, dh.public_key(), peer_public);
                Some(Rc4Pair::from_keys(&out_key, &in_key))
            }
            _ => None,
        };

        let s2 = response_block(&self.random.response, &signature_key(&GENUINE_FMS_KEY, &c1_digest), version);
        out.reserve(1 + 2 * HANDSHAKE_SIZE);
        out.put_u8(version.to_byte());
        out.extend_from_slice(&s1[..]);
        out.extend_from_slice(&s2[..]);
        Ok(Pending {
            requested,
            version,
            hello: s1,
            signature_key: Some(signature_key(&GENUINE_FP_KEY, &s1_digest)),
            cipher,
        })
    }
}

/// The server's S0 for a C0 whose C1 digest checked out. Like librtmp's server, a 0x06 request
/// from a client whose C1 version starts with 128 (librtmp's FP10 mode) gets 0x08; otherwise
/// the requested type is kept (a client that asked 0x06 may not know 0x08).
fn answer_version(requested: HandshakeVersion, c1: &Block) -> HandshakeVersion {
    match requested {
        HandshakeVersion::Rtmpe if c1[4] == 128 => HandshakeVersion::RtmpeXtea,
        other => other,
    }
}

struct Sent {
    c1: Box<Block>,
    /// Scheme and digest of our C1 (digest handshake only).
    c1_digest: Option<(DigestScheme, [u8; DIGEST_LEN])>,
    dh: Option<DhKeyPair>,
}

enum ClientState {
    Idle,
    AwaitS0S1(Box<Sent>),
    AwaitS2(Box<Pending>),
    Done,
    Failed,
}

/// Client side: writes C0/C1, reads S0/S1/S2, writes C2.
pub struct ClientHandshake {
    requested: HandshakeVersion,
    /// C1 version bytes and digest scheme.
    hello_version: ([u8; 4], DigestScheme),
    digest: bool,
    random: Randomness,
    state: ClientState,
}

impl ClientHandshake {
    /// `digest` selects the digest handshake for plain RTMP (RTMPE always uses it).
    pub fn new(version: HandshakeVersion, digest: bool, rng: &mut dyn RngCore) -> Self {
        // librtmp's pairings: FP10 (128.x, scheme B) for types 8/9, FP9 (9.x, scheme A) for 0x06
        // so that a librtmp-style server keeps type 6, and 10.x with scheme A for plain digest.
        let hello_version = match version {
            HandshakeVersion::Plain => (CLIENT_VERSION_DIGEST, DigestScheme::A),
            HandshakeVersion::Rtmpe => (CLIENT_VERSION_RTMPE6, DigestScheme::A),
            HandshakeVersion::RtmpeXtea | HandshakeVersion::RtmpeBlowfish => {
                (CLIENT_VERSION_RTMPE, DigestScheme::B)
            }
        };
        ClientHandshake {
            requested: version,
            hello_version,
            digest: digest || version.is_encrypted(),
            random: Randomness::draw(rng),
            state: ClientState::Idle,
        }
    }

    /// Appends C0 and C1 to `out`. Later calls do nothing.
    pub fn start(&mut self, out: &mut BytesMut) {
        if !matches!(self.state, ClientState::Idle) {
            return;
        }
        let encrypted = self.requested.is_encrypted();
        let dh = encrypted.then(|| DhKeyPair::from_random_bytes(self.random.dh_private));
        let (version, scheme) = self.hello_version;
        let (c1, c1_digest) = if self.digest {
            let signing = Signing {
                scheme,
                digest_key: FP_DIGEST_KEY,
                dh_public: dh.as_ref().map(DhKeyPair::public_key),
                key_for_ffmpeg_publishers: false,
            };
            let (c1, digest) = hello_block(version, &self.random.hello, Some(signing));
            (c1, digest.map(|d| (scheme, d)))
        } else {
            (hello_block([0; 4], &self.random.hello, None).0, None)
        };
        out.reserve(1 + HANDSHAKE_SIZE);
        out.put_u8(self.requested.to_byte());
        out.extend_from_slice(&c1[..]);
        self.state = ClientState::AwaitS0S1(Box::new(Sent { c1, c1_digest, dh }));
    }

    /// Consumes S0/S1/S2 from `input`, appends C2 to `out`, returns the outcome when done. C2 is
    /// written as soon as S1 is in; bytes after S2 stay in `input`. Fails if `start` was not
    /// called, and after an error or the outcome.
    pub fn handle_input(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<HandshakeOutcome>> {
        let result = self.advance(input, out);
        if result.is_err() {
            self.state = ClientState::Failed;
        }
        result
    }

    fn advance(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<Option<HandshakeOutcome>> {
        loop {
            match &self.state {
                ClientState::Idle => return Err(Error::Handshake("client handshake not started")),
                ClientState::AwaitS0S1(_) => {
                    let Some(&s0) = input.first() else { return Ok(None) };
                    let version = self.accept_version(s0)?;
                    if input.len() < 1 + HANDSHAKE_SIZE {
                        return Ok(None);
                    }
                    let s0s1 = input.split_to(1 + HANDSHAKE_SIZE);
                    let ClientState::AwaitS0S1(sent) =
                        std::mem::replace(&mut self.state, ClientState::Failed)
                    else {
                        unreachable!("matched above")
                    };
                    let pending = self.answer_s1(version, sent, as_block(&s0s1[1..]), out)?;
                    self.state = ClientState::AwaitS2(Box::new(pending));
                }
                ClientState::AwaitS2(_) => {
                    if input.len() < HANDSHAKE_SIZE {
                        return Ok(None);
                    }
                    let s2 = input.split_to(HANDSHAKE_SIZE);
                    let ClientState::AwaitS2(pending) = std::mem::replace(&mut self.state, ClientState::Done)
                    else {
                        unreachable!("matched above")
                    };
                    return Ok(Some(pending.finish(as_block(&s2))));
                }
                ClientState::Done => return Err(Error::Handshake("handshake already complete")),
                ClientState::Failed => return Err(Error::Handshake("handshake already failed")),
            }
        }
    }

    /// A server may answer an RTMPE request with another RTMPE type (0x06 → 0x08): follow it.
    fn accept_version(&self, s0: u8) -> Result<HandshakeVersion> {
        let version = HandshakeVersion::from_byte(s0).ok_or(Error::Handshake("unknown S0 version"))?;
        if version.is_encrypted() != self.requested.is_encrypted() {
            return Err(Error::Handshake("server answered with the other protocol (plain vs RTMPE)"));
        }
        Ok(version)
    }

    /// Writes C2 for this S1 and says what S2 may be.
    fn answer_s1(
        &self,
        version: HandshakeVersion,
        sent: Box<Sent>,
        s1: &Block,
        out: &mut BytesMut,
    ) -> Result<Pending> {
        let encrypted = version.is_encrypted();
        let server_digest = match sent.c1_digest {
            // A server that zeroes its version bytes declines the digest handshake.
            Some((scheme, _)) if encrypted || s1[4..8] != [0; 4] => find_digest(s1, FMS_DIGEST_KEY, scheme),
            _ => None,
        };
        let (Some((scheme, s1_digest)), Some((_, c1_digest))) = (server_digest, sent.c1_digest) else {
            if encrypted {
                return Err(Error::Handshake("RTMPE S1 carries no valid digest"));
            }
            // Simple handshake (asked for, or the server did not sign): C2 echoes S1.
            out.extend_from_slice(s1);
            return Ok(Pending {
                requested: self.requested,
                version,
                hello: sent.c1,
                signature_key: None,
                cipher: None,
            });
        };

        let cipher = match &sent.dh {
            Some(dh) => {
                let server_public = peer_dh_key(s1, scheme);
                let secret = dh.shared_secret(server_public)?;
                let (out_key, in_key) = rc4_keys(&secret, dh.public_key(), server_public);
                Some(Rc4Pair::from_keys(&out_key, &in_key))
            }
            None => None,
        };
        let c2 = response_block(&self.random.response, &signature_key(&GENUINE_FP_KEY, &s1_digest), version);
        out.extend_from_slice(&c2[..]);
        Ok(Pending {
            requested: self.requested,
            version,
            hello: sent.c1,
            signature_key: Some(signature_key(&GENUINE_FMS_KEY, &c1_digest)),
            cipher,
        })
    }
}

/// Fuzz entry: feeds `data` to a server handshake (fixed-seed rng) in pieces whose sizes come
/// from the data itself, then decrypts whatever follows a completed RTMPE handshake.
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub(crate) fn fuzz_server_handshake(data: &[u8]) {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut server = ServerHandshake::new(EncryptionPolicy::Allow, &mut rng);
    let (piece, data) = match data.split_first() {
        Some((&first, rest)) => (usize::from(first).max(1), rest),
        None => return,
    };
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    for part in data.chunks(piece) {
        input.extend_from_slice(part);
        match server.handle_input(&mut input, &mut out) {
            Ok(None) => {}
            Ok(Some(mut outcome)) => {
                if let Some(cipher) = outcome.cipher.as_mut() {
                    cipher.decrypt(&mut input);
                }
                return;
            }
            Err(_) => return,
        }
    }
}
