//! AMF0 (Action Message Format 0) encoder and bounded decoder.

use bytes::BufMut;

use super::amf3::{self, Amf3Decoder};
use super::{truncate_utf8, Amf0Value, AmfLimits, Budget, Cursor, Properties};
use crate::{Error, Result};

/// The AMF0 type markers.
mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const MOVIECLIP: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const REFERENCE: u8 = 0x07;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0A;
    pub const DATE: u8 = 0x0B;
    pub const LONG_STRING: u8 = 0x0C;
    pub const UNSUPPORTED: u8 = 0x0D;
    pub const RECORDSET: u8 = 0x0E;
    pub const XML_DOCUMENT: u8 = 0x0F;
    pub const TYPED_OBJECT: u8 = 0x10;
    pub const AVMPLUS: u8 = 0x11;
}

/// Appends the AMF0 encoding of `value` to `out`.
///
/// Strings longer than 0xFFFF bytes use the long-string marker. Fields that cannot hold their
/// data (an object key over 0xFFFF bytes, over 2^32-1 items) are cut at the field's maximum.
pub fn encode(value: &Amf0Value, out: &mut impl BufMut) {
    match value {
        Amf0Value::Number(n) => {
            out.put_u8(marker::NUMBER);
            out.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            out.put_u8(marker::BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Amf0Value::String(s) if s.len() > usize::from(u16::MAX) => {
            out.put_u8(marker::LONG_STRING);
            put_long_utf8(s, out);
        }
        Amf0Value::String(s) => {
            out.put_u8(marker::STRING);
            put_short_utf8(s, out);
        }
        Amf0Value::Object(props) => {
            out.put_u8(marker::OBJECT);
            put_properties(props, out);
        }
        Amf0Value::Null => out.put_u8(marker::NULL),
        Amf0Value::Undefined => out.put_u8(marker::UNDEFINED),
        Amf0Value::Reference(index) => {
            out.put_u8(marker::REFERENCE);
            out.put_u16(*index);
        }
        Amf0Value::EcmaArray(props) => {
            out.put_u8(marker::ECMA_ARRAY);
            out.put_u32(u32::try_from(props.len()).unwrap_or(u32::MAX));
            put_properties(props, out);
        }
        Amf0Value::StrictArray(items) => {
            out.put_u8(marker::STRICT_ARRAY);
            let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
            out.put_u32(count);
            for item in items.iter().take(count as usize) {
                encode(item, out);
            }
        }
        Amf0Value::Date { millis, time_zone } => {
            out.put_u8(marker::DATE);
            out.put_f64(*millis);
            out.put_i16(*time_zone);
        }
        Amf0Value::Unsupported => out.put_u8(marker::UNSUPPORTED),
        Amf0Value::XmlDocument(s) => {
            out.put_u8(marker::XML_DOCUMENT);
            put_long_utf8(s, out);
        }
        Amf0Value::TypedObject { class_name, properties } => {
            out.put_u8(marker::TYPED_OBJECT);
            put_short_utf8(class_name, out);
            put_properties(properties, out);
        }
        Amf0Value::Avmplus(value) => {
            out.put_u8(marker::AVMPLUS);
            amf3::encode(value, out);
        }
    }
}

fn put_short_utf8(s: &str, out: &mut impl BufMut) {
    let s = truncate_utf8(s, usize::from(u16::MAX));
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_long_utf8(s: &str, out: &mut impl BufMut) {
    let s = truncate_utf8(s, u32::MAX as usize);
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn put_properties(props: &Properties, out: &mut impl BufMut) {
    for (key, value) in props {
        put_short_utf8(key, out);
        encode(value, out);
    }
    out.put_u16(0);
    out.put_u8(marker::OBJECT_END);
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
///
/// After an error the decoder's state is unspecified; drop it.
pub struct Amf0Decoder<'a> {
    cur: Cursor<'a>,
    budget: Budget,
    /// Objects, typed objects, ECMA and strict arrays seen so far: the AMF0 reference table.
    complex_values: usize,
}

impl<'a> Amf0Decoder<'a> {
    pub fn new(buf: &'a [u8], limits: AmfLimits) -> Self {
        Amf0Decoder { cur: Cursor::new(buf), budget: Budget::new(limits), complex_values: 0 }
    }

    /// The next value, or `None` at the end of the buffer.
    pub fn next_value(&mut self) -> Result<Option<Amf0Value>> {
        if self.cur.remaining() == 0 {
            return Ok(None);
        }
        self.read_value(1).map(Some)
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.cur.pos
    }

    fn read_value(&mut self, depth: usize) -> Result<Amf0Value> {
        self.budget.check_depth(depth)?;
        self.budget.charge(1)?;
        let at = self.cur.pos;
        let value = match self.cur.u8()? {
            marker::NUMBER => Amf0Value::Number(self.cur.f64()?),
            marker::BOOLEAN => Amf0Value::Boolean(self.cur.u8()? != 0),
            marker::STRING => Amf0Value::String(self.read_short_utf8()?),
            marker::OBJECT => {
                self.complex_values += 1;
                Amf0Value::Object(self.read_properties(depth, false)?)
            }
            marker::MOVIECLIP => return Err(Error::amf("AMF0 movieclip marker (0x04) is reserved", at)),
            marker::NULL => Amf0Value::Null,
            marker::UNDEFINED => Amf0Value::Undefined,
            marker::REFERENCE => {
                let index = self.cur.u16()?;
                if usize::from(index) >= self.complex_values {
                    return Err(Error::amf("AMF0 reference to an object not decoded yet", at));
                }
                Amf0Value::Reference(index)
            }
            marker::ECMA_ARRAY => {
                self.complex_values += 1;
                let _advisory_count = self.cur.u32()?;
                Amf0Value::EcmaArray(self.read_properties(depth, true)?)
            }
            marker::OBJECT_END => return Err(Error::amf("AMF0 object-end marker outside an object", at)),
            marker::STRICT_ARRAY => {
                self.complex_values += 1;
                let count = self.cur.u32()? as usize;
                // Every item takes at least one byte and one value: refuse before reserving.
                if count > self.cur.remaining() {
                    return Err(Error::amf("AMF0 strict array count exceeds the remaining data", at));
                }
                self.budget.check_room(count)?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.read_value(depth + 1)?);
                }
                Amf0Value::StrictArray(items)
            }
            marker::DATE => Amf0Value::Date { millis: self.cur.f64()?, time_zone: self.cur.i16()? },
            marker::LONG_STRING => Amf0Value::String(self.read_long_utf8()?),
            marker::UNSUPPORTED => Amf0Value::Unsupported,
            marker::RECORDSET => return Err(Error::amf("AMF0 recordset marker (0x0E) is reserved", at)),
            marker::XML_DOCUMENT => Amf0Value::XmlDocument(self.read_long_utf8()?),
            marker::TYPED_OBJECT => {
                self.complex_values += 1;
                let class_name = self.read_short_utf8()?;
                let properties = self.read_properties(depth, false)?;
                Amf0Value::TypedObject { class_name, properties }
            }
            marker::AVMPLUS => {
                // One AMF3 value with fresh reference tables, sharing this buffer's budget.
                let mut inner = Amf3Decoder::nested(self.cur, self.budget, depth);
                let value = inner.next_value()?;
                (self.cur, self.budget) = inner.into_parts();
                Amf0Value::Avmplus(value)
            }
            _ => return Err(Error::amf("unknown AMF0 type marker", at)),
        };
        Ok(value)
    }

    fn read_short_utf8(&mut self) -> Result<String> {
        let len = usize::from(self.cur.u16()?);
        self.cur.text(len, &self.budget)
    }

    fn read_long_utf8(&mut self) -> Result<String> {
        let len = self.cur.u32()? as usize;
        self.cur.text(len, &self.budget)
    }

    /// Key/value pairs up to the empty key + object-end marker. With `lenient_end` (ECMA
    /// arrays), the end of the buffer also ends the list: some encoders omit the end marker.
    fn read_properties(&mut self, depth: usize, lenient_end: bool) -> Result<Properties> {
        let mut props = Vec::new();
        loop {
            if lenient_end && self.cur.remaining() == 0 {
                break;
            }
            let key = self.read_short_utf8()?;
            if key.is_empty() {
                if lenient_end && self.cur.remaining() == 0 {
                    break;
                }
                if self.cur.peek_u8() == Some(marker::OBJECT_END) {
                    self.cur.pos += 1;
                    break;
                }
                // Otherwise an empty key with a value: legal, if odd.
            }
            self.budget.charge(1)?;
            let value = self.read_value(depth + 1)?;
            props.push((key, value));
        }
        Ok(props)
    }
}
