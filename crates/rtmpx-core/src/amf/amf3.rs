//! AMF3 encoder and bounded decoder (with string, object and trait reference tables).
// CONTRACT (implemented by the AMF work): keep these signatures.

use bytes::BufMut;

use super::{Amf3Value, AmfLimits};
use crate::Result;

/// Appends the AMF3 encoding of `value` to `out` (fresh reference tables).
pub fn encode(value: &Amf3Value, out: &mut impl BufMut) {
    let _ = (value, out);
    todo!("AMF3 encoder")
}

/// Decodes one AMF3 value from the start of `buf`; returns it and the bytes consumed.
pub fn decode(buf: &[u8], limits: AmfLimits) -> Result<(Amf3Value, usize)> {
    let mut d = Amf3Decoder::new(buf, limits);
    let v = d.next_value()?;
    Ok((v, d.position()))
}

/// Reads AMF3 values; reference tables live as long as the decoder.
pub struct Amf3Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: AmfLimits,
}

impl<'a> Amf3Decoder<'a> {
    pub fn new(buf: &'a [u8], limits: AmfLimits) -> Self {
        Amf3Decoder { buf, pos: 0, limits }
    }

    pub fn next_value(&mut self) -> Result<Amf3Value> {
        let _ = (self.buf, self.pos, self.limits);
        todo!("AMF3 decoder")
    }

    pub fn position(&self) -> usize {
        self.pos
    }
}
