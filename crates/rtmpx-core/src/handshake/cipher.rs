//! RC4, the cipher RTMPE runs on every byte after the handshake.
//!
//! Written here rather than taken from the `rc4` crate for one reason: RC4 is a chain of
//! dependent table loads, so one stream leaves most of the CPU idle, and a fan-out to many RTMPE
//! players has many independent streams at hand. [`Rc4Stream::apply_pair`] runs two of them in one
//! loop, 1.7x the bytes per second of either crate or OpenSSL on one stream (BENCHMARKS.md). The
//! `rc4` crate stays as the reference the tests compare against.

use super::HANDSHAKE_SIZE;
use super::RC4_KEY_LEN;

/// One direction of an RTMPE session's RC4.
#[derive(Clone)]
pub struct Rc4Stream {
    state: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4Stream {
    /// A stream keyed with `key` and advanced past the 1536 keystream bytes RTMPE throws away.
    pub fn new(key: &[u8; RC4_KEY_LEN]) -> Self {
        let mut stream = Self::keyed(key);
        let mut discard = [0u8; HANDSHAKE_SIZE];
        stream.apply(&mut discard);
        stream
    }

    /// The key schedule alone (plain RC4, nothing discarded).
    fn keyed(key: &[u8]) -> Self {
        let mut state = [0u8; 256];
        for (n, slot) in state.iter_mut().enumerate() {
            *slot = n as u8;
        }
        let mut j = 0u8;
        for n in 0..256 {
            j = j.wrapping_add(state[n]).wrapping_add(key[n % key.len()]);
            state.swap(n, usize::from(j));
        }
        Rc4Stream { state, i: 0, j: 0 }
    }

    #[inline(always)]
    fn next_byte(&mut self) -> u8 {
        self.i = self.i.wrapping_add(1);
        let si = self.state[usize::from(self.i)];
        self.j = self.j.wrapping_add(si);
        let sj = self.state[usize::from(self.j)];
        self.state[usize::from(self.i)] = sj;
        self.state[usize::from(self.j)] = si;
        self.state[usize::from(si.wrapping_add(sj))]
    }

    /// Encrypts or decrypts (the same operation) in place.
    pub fn apply(&mut self, data: &mut [u8]) {
        for byte in data {
            *byte ^= self.next_byte();
        }
    }

    /// `a.apply(a_data); b.apply(b_data)` in one loop: the two streams' table loads overlap.
    pub fn apply_pair(a: &mut Rc4Stream, a_data: &mut [u8], b: &mut Rc4Stream, b_data: &mut [u8]) {
        let common = a_data.len().min(b_data.len());
        let (a_common, a_rest) = a_data.split_at_mut(common);
        let (b_common, b_rest) = b_data.split_at_mut(common);
        for (x, y) in a_common.iter_mut().zip(b_common.iter_mut()) {
            *x ^= a.next_byte();
            *y ^= b.next_byte();
        }
        a.apply(a_rest);
        b.apply(b_rest);
    }
}

impl std::fmt::Debug for Rc4Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rc4Stream(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rc4::{KeyInit, Rc4, StreamCipher};

    fn reference(key: &[u8; RC4_KEY_LEN], skip: usize, data: &mut [u8]) {
        let mut rc4 = Rc4::new_from_slice(key).unwrap();
        let mut discard = vec![0u8; skip];
        rc4.apply_keystream(&mut discard);
        rc4.apply_keystream(data);
    }

    #[test]
    fn rfc6229_key_schedule_vector() {
        // RFC 6229, 128-bit key 0x0102..10, keystream at offset 0.
        let key: Vec<u8> = (1..=16).collect();
        let mut stream = Rc4Stream::keyed(&key);
        let mut block = [0u8; 16];
        stream.apply(&mut block);
        assert_eq!(
            block,
            [0x9a, 0xc7, 0xcc, 0x9a, 0x60, 0x9d, 0x1e, 0xf7, 0xb2, 0x93, 0x28, 0x99, 0xcd, 0xe4, 0x1b, 0x97]
        );
    }

    proptest! {
        #[test]
        fn matches_the_rc4_crate_split_anywhere(
            key in any::<[u8; RC4_KEY_LEN]>(),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            cut in 0usize..3000,
        ) {
            let mut ours = data.clone();
            let cut = cut.min(data.len());
            let mut stream = Rc4Stream::new(&key);
            stream.apply(&mut ours[..cut]);
            stream.apply(&mut ours[cut..]);
            let mut theirs = data;
            reference(&key, HANDSHAKE_SIZE, &mut theirs);
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn a_pair_equals_each_stream_alone(
            key_a in any::<[u8; RC4_KEY_LEN]>(),
            key_b in any::<[u8; RC4_KEY_LEN]>(),
            a_data in proptest::collection::vec(any::<u8>(), 0..2000),
            b_data in proptest::collection::vec(any::<u8>(), 0..2000),
            a_before in 0usize..300,
        ) {
            // Stream a has already been used (its position differs from b's).
            let mut a = Rc4Stream::new(&key_a);
            a.apply(&mut vec![0u8; a_before]);
            let mut b = Rc4Stream::new(&key_b);
            let (mut a_ours, mut b_ours) = (a_data.clone(), b_data.clone());
            Rc4Stream::apply_pair(&mut a, &mut a_ours, &mut b, &mut b_ours);
            // Both continue where the pair left them.
            let mut a_next = [0u8; 8];
            let mut b_next = [0u8; 8];
            a.apply(&mut a_next);
            b.apply(&mut b_next);

            let mut a_theirs = [a_data, vec![0; 8]].concat();
            reference(&key_a, HANDSHAKE_SIZE + a_before, &mut a_theirs);
            let mut b_theirs = [b_data, vec![0; 8]].concat();
            reference(&key_b, HANDSHAKE_SIZE, &mut b_theirs);
            prop_assert_eq!([a_ours, a_next.to_vec()].concat(), a_theirs);
            prop_assert_eq!([b_ours, b_next.to_vec()].concat(), b_theirs);
        }
    }
}
