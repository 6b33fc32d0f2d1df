//! The RTMP handshake, server and client roles: C0/C1/C2 ↔ S0/S1/S2.
//!
//! Plain (version byte 3) with the simple (echo) and digest ("complex", FP9+) forms, and RTMPE
//! (version bytes 6, 8, 9): Diffie-Hellman keys in the digest handshake, RC4 on every byte after.
// CONTRACT (implemented by the handshake work): keep these public signatures.

use bytes::BytesMut;
use rand::RngCore;

use crate::Result;

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
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            3 => Some(Self::Plain),
            6 => Some(Self::Rtmpe),
            8 => Some(Self::RtmpeXtea),
            9 => Some(Self::RtmpeBlowfish),
            _ => None,
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            Self::Plain => 3,
            Self::Rtmpe => 6,
            Self::RtmpeXtea => 8,
            Self::RtmpeBlowfish => 9,
        }
    }

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

/// The two RC4 streams of an RTMPE session, already advanced past the discarded prefix.
pub struct Rc4Pair {
    _private: (),
}

impl Rc4Pair {
    /// Encrypts bytes we send, in place.
    pub fn encrypt(&mut self, data: &mut [u8]) {
        let _ = data;
        todo!()
    }
    /// Decrypts bytes we received, in place.
    pub fn decrypt(&mut self, data: &mut [u8]) {
        let _ = data;
        todo!()
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
    /// Whether the peer's C2/S2 signature checked out (always true for the simple handshake).
    pub peer_signature_ok: bool,
    /// RTMPE: the ciphers for every byte after the handshake.
    pub cipher: Option<Rc4Pair>,
}

/// Server side: reads C0/C1/C2, writes S0/S1/S2.
pub struct ServerHandshake {
    _private: (),
}

impl ServerHandshake {
    /// All randomness (S1, the DH private key) is drawn from `rng` here, so tests can be exact.
    pub fn new(policy: EncryptionPolicy, rng: &mut dyn RngCore) -> Self {
        let _ = (policy, rng);
        todo!()
    }

    /// Consumes handshake bytes from the front of `input` (bytes after C2 stay there: they are
    /// the first chunks, encrypted under RTMPE) and appends what to send to `out`. Returns the
    /// outcome once C2 has been read.
    pub fn handle_input(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<HandshakeOutcome>> {
        let _ = (input, out);
        todo!()
    }
}

/// Client side: writes C0/C1, reads S0/S1/S2, writes C2.
pub struct ClientHandshake {
    _private: (),
}

impl ClientHandshake {
    /// `digest` selects the digest handshake for plain RTMP (RTMPE always uses it).
    pub fn new(version: HandshakeVersion, digest: bool, rng: &mut dyn RngCore) -> Self {
        let _ = (version, digest, rng);
        todo!()
    }

    /// Appends C0 and C1 to `out`.
    pub fn start(&mut self, out: &mut BytesMut) {
        let _ = out;
        todo!()
    }

    /// Consumes S0/S1/S2 from `input`, appends C2 to `out`, returns the outcome when done.
    pub fn handle_input(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<HandshakeOutcome>> {
        let _ = (input, out);
        todo!()
    }
}
