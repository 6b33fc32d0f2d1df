//! AMF0 (Action Message Format 0) encoder and bounded decoder.
// CONTRACT (implemented by the AMF work): keep these signatures.

use bytes::BufMut;

use super::{Amf0Value, AmfLimits};
use crate::Result;

/// Appends the AMF0 encoding of `value` to `out`.
pub fn encode(value: &Amf0Value, out: &mut impl BufMut) {
    let _ = (value, out);
    todo!("AMF0 encoder")
}

/// Decodes every value in `buf` (a command or data message body).
pub fn decode_all(buf: &[u8], limits: AmfLimits) -> Result<Vec<Amf0Value>> {
    let mut decoder = Amf0Decoder::new(buf, limits);
    let mut values = Vec::new();
    while let Some(v) = decoder.next_value()? {
        values.push(v);
    }
    Ok(values)
}

/// Reads AMF0 values one at a time from a buffer; limits apply to the whole buffer.
pub struct Amf0Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: AmfLimits,
}

impl<'a> Amf0Decoder<'a> {
    pub fn new(buf: &'a [u8], limits: AmfLimits) -> Self {
        Amf0Decoder { buf, pos: 0, limits }
    }

    /// The next value, or `None` at the end of the buffer.
    pub fn next_value(&mut self) -> Result<Option<Amf0Value>> {
        let _ = (self.buf, self.pos, self.limits);
        todo!("AMF0 decoder")
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}
