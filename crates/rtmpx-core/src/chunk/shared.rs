//! A payload that many connections send alike: its chunked form is laid out once.

use std::sync::OnceLock;

use bytes::Bytes;

use super::ContinuationHeader;

/// A message payload cut into chunks with the continuation headers in between
/// (`payload[..size]`, header, `payload[size..2 * size]`, …), without the first chunk's header,
/// which each connection writes itself. Built once, for the first chunk size and continuation
/// header asked for; every connection with the same ones then sends one shared piece instead
/// of a header and a payload slice per chunk. Cloning keeps what was built.
#[derive(Debug, Default, Clone)]
pub struct ChunkedBody(OnceLock<Layout>);

#[derive(Debug, Clone)]
struct Layout {
    chunk_size: u32,
    continuation: ContinuationHeader,
    body: Bytes,
}

impl ChunkedBody {
    /// The chunked form of `payload` (always the same payload for one `ChunkedBody`), built now
    /// if nothing was; `None` when it was built for another chunk size or continuation header.
    pub fn get_or_build(
        &self,
        payload: &[u8],
        chunk_size: u32,
        continuation: ContinuationHeader,
    ) -> Option<&Bytes> {
        let layout = self.0.get_or_init(|| Layout {
            chunk_size,
            continuation,
            body: interleave(payload, chunk_size as usize, continuation.as_bytes()),
        });
        (layout.chunk_size == chunk_size && layout.continuation == continuation).then_some(&layout.body)
    }

    /// Whether a chunked form was built (tests, memory accounting).
    pub fn is_built(&self) -> bool {
        self.0.get().is_some()
    }
}

fn interleave(payload: &[u8], chunk_size: usize, continuation: &[u8]) -> Bytes {
    let continuations = payload.len().saturating_sub(1) / chunk_size.max(1);
    let mut body = Vec::with_capacity(payload.len() + continuations * continuation.len());
    for (i, chunk) in payload.chunks(chunk_size.max(1)).enumerate() {
        if i > 0 {
            body.extend_from_slice(continuation);
        }
        body.extend_from_slice(chunk);
    }
    Bytes::from(body)
}
