//! RTMPE key agreement: Diffie-Hellman over the 1024-bit Oakley group 2 (generator 2), and the RC4
//! streams derived from the shared secret.

use crypto_bigint::modular::ConstMontyForm;
use crypto_bigint::{const_monty_params, U1024};

use super::digest::hmac_sha256;
use crate::{Error, Result};

/// Length of a DH public key and of the shared secret: big endian, left-padded with zeros.
pub const DH_KEY_LEN: usize = 128;

/// Length of each RC4 key.
pub const RC4_KEY_LEN: usize = 16;

/// The RFC 2409 group 2 prime, big endian hex.
const PRIME_HEX: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22\
    514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B\
    0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF";

/// The DH modulus p.
pub(super) const PRIME: U1024 = U1024::from_be_hex(PRIME_HEX);

const_monty_params!(Oakley2, U1024, PRIME_HEX, "The RFC 2409 group 2 prime as a Montgomery modulus");

type GroupElement = ConstMontyForm<Oakley2, { U1024::LIMBS }>;

/// Our half of a Diffie-Hellman exchange.
pub(super) struct DhKeyPair {
    private: U1024,
    public: [u8; DH_KEY_LEN],
}

impl DhKeyPair {
    /// Turns 128 random bytes into a private exponent in [2, 2^1023) and computes the public key.
    pub(super) fn from_random_bytes(mut bytes: [u8; DH_KEY_LEN]) -> Self {
        // Below 2^1023 keeps the exponent under p (whose top 64 bits are set) without a reduction.
        bytes[0] &= 0x7f;
        let mut private = U1024::from_be_slice(&bytes);
        if private <= U1024::ONE {
            private = U1024::from_u64(2);
        }
        let public = GroupElement::new(&U1024::from_u64(2)).pow(&private).retrieve();
        DhKeyPair { private, public: public.to_be_bytes().into() }
    }

    pub(super) fn public_key(&self) -> &[u8; DH_KEY_LEN] {
        &self.public
    }

    /// (peer's key)^private mod p, left-padded to 128 bytes. Rejects keys outside [2, p-2], which
    /// would force the secret to 0, 1 or ±1.
    pub(super) fn shared_secret(&self, peer_public: &[u8]) -> Result<[u8; DH_KEY_LEN]> {
        let peer = validate_public_key(peer_public)?;
        let secret = GroupElement::new(&peer).pow(&self.private).retrieve();
        Ok(secret.to_be_bytes().into())
    }
}

/// Parses a 128-byte public key and checks 1 < y < p-1.
pub(super) fn validate_public_key(bytes: &[u8]) -> Result<U1024> {
    if bytes.len() != DH_KEY_LEN {
        return Err(Error::Handshake("DH public key has the wrong length"));
    }
    let y = U1024::from_be_slice(bytes);
    let p_minus_one = PRIME.wrapping_sub(&U1024::ONE);
    if y <= U1024::ONE || y >= p_minus_one {
        return Err(Error::Handshake("DH public key out of range"));
    }
    Ok(y)
}

/// The two RC4 keys: (for what we send, for what we receive). Each side keys its sending stream
/// with HMAC(secret, the peer's public key) and its receiving stream with HMAC(secret, its own).
pub(super) fn rc4_keys(
    secret: &[u8; DH_KEY_LEN],
    own_public: &[u8; DH_KEY_LEN],
    peer_public: &[u8; DH_KEY_LEN],
) -> ([u8; RC4_KEY_LEN], [u8; RC4_KEY_LEN]) {
    let first16 = |public: &[u8; DH_KEY_LEN]| {
        let mac = hmac_sha256(secret, &[public]);
        let mut key = [0; RC4_KEY_LEN];
        key.copy_from_slice(&mac[..RC4_KEY_LEN]);
        key
    };
    (first16(peer_public), first16(own_public))
}
