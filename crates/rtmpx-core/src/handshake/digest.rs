//! The digest ("complex", FP9+) handshake: keys, digest and DH-key positions, HMAC-SHA256 digests
//! and the C2/S2 signatures.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::HANDSHAKE_SIZE;

/// Length of a digest, a signature and a signature key (SHA-256).
pub(super) const DIGEST_LEN: usize = 32;

/// Bytes of a C2/S2 covered by its signature (all but the trailing signature).
pub(super) const SIGNED_LEN: usize = HANDSHAKE_SIZE - DIGEST_LEN;

/// "Genuine Adobe Flash Player 001" + 32 bytes; C1 digests use the first 30 bytes.
pub(super) const GENUINE_FP_KEY: [u8; 62] = *b"Genuine Adobe Flash Player 001\
    \xF0\xEE\xC2\x4A\x80\x68\xBE\xE8\x2E\x00\xD0\xD1\x02\x9E\x7E\x57\
    \x6E\xEC\x5D\x2D\x29\x80\x6F\xAB\x93\xB8\xE6\x36\xCF\xEB\x31\xAE";

/// "Genuine Adobe Flash Media Server 001" + the same 32 bytes; S1 digests use the first 36 bytes.
pub(super) const GENUINE_FMS_KEY: [u8; 68] = *b"Genuine Adobe Flash Media Server 001\
    \xF0\xEE\xC2\x4A\x80\x68\xBE\xE8\x2E\x00\xD0\xD1\x02\x9E\x7E\x57\
    \x6E\xEC\x5D\x2D\x29\x80\x6F\xAB\x93\xB8\xE6\x36\xCF\xEB\x31\xAE";

/// The text part of [`GENUINE_FP_KEY`], the key of a C1 digest.
pub(super) const FP_DIGEST_KEY: &[u8] = GENUINE_FP_KEY.split_at(30).0;
/// The text part of [`GENUINE_FMS_KEY`], the key of an S1 digest.
pub(super) const FMS_DIGEST_KEY: &[u8] = GENUINE_FMS_KEY.split_at(36).0;

pub(super) type Block = [u8; HANDSHAKE_SIZE];

/// Where the digest (and, under RTMPE, the DH public key) sits in a C1/S1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DigestScheme {
    /// Digest in bytes 12..771 (offset from bytes 8..11), DH key in 772..1531 (offset from 1532..1535).
    A,
    /// Digest in bytes 776..1535 (offset from 772..775), DH key in 8..767 (offset from 768..771).
    B,
}

fn sum4(block: &Block, at: usize) -> usize {
    block[at..at + 4].iter().map(|&b| usize::from(b)).sum()
}

impl DigestScheme {
    pub(super) fn digest_offset(self, block: &Block) -> usize {
        match self {
            Self::A => sum4(block, 8) % 728 + 12,
            Self::B => sum4(block, 772) % 728 + 776,
        }
    }

    pub(super) fn dh_key_offset(self, block: &Block) -> usize {
        match self {
            Self::A => sum4(block, 1532) % 632 + 772,
            Self::B => sum4(block, 768) % 632 + 8,
        }
    }
}

pub(super) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Equality without an early exit, so a peer cannot time its way to a valid digest.
pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256 over the block with the 32 digest bytes at `offset` left out.
pub(super) fn compute_digest(block: &Block, offset: usize, key: &[u8]) -> [u8; DIGEST_LEN] {
    hmac_sha256(key, &[&block[..offset], &block[offset + DIGEST_LEN..]])
}

/// Computes the block's digest by `scheme` and writes it in place; returns it.
pub(super) fn embed_digest(block: &mut Block, scheme: DigestScheme, key: &[u8]) -> [u8; DIGEST_LEN] {
    let offset = scheme.digest_offset(block);
    let digest = compute_digest(block, offset, key);
    block[offset..offset + DIGEST_LEN].copy_from_slice(&digest);
    digest
}

/// The scheme whose digest checks out, trying `first` then the other one.
pub(super) fn find_digest(
    block: &Block,
    key: &[u8],
    first: DigestScheme,
) -> Option<(DigestScheme, [u8; DIGEST_LEN])> {
    let second = match first {
        DigestScheme::A => DigestScheme::B,
        DigestScheme::B => DigestScheme::A,
    };
    [first, second].into_iter().find_map(|scheme| {
        let offset = scheme.digest_offset(block);
        let expected = compute_digest(block, offset, key);
        let found = &block[offset..offset + DIGEST_LEN];
        ct_eq(&expected, found).then_some((scheme, expected))
    })
}

/// The key of a C2/S2 signature: HMAC(full fixed key, the peer's C1/S1 digest).
pub(super) fn signature_key(full_key: &[u8], peer_digest: &[u8; DIGEST_LEN]) -> [u8; DIGEST_LEN] {
    hmac_sha256(full_key, &[peer_digest])
}

/// The untransformed signature of a C2/S2: HMAC(signature key, its first 1504 bytes).
pub(super) fn signature(key: &[u8; DIGEST_LEN], block: &Block) -> [u8; DIGEST_LEN] {
    hmac_sha256(key, &[&block[..SIGNED_LEN]])
}
