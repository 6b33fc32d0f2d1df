//! AMF0 (Action Message Format 0) encoder and bounded decoder.

use bytes::BufMut;

use super::amf3::{self, Amf3Decoder};
use super::{truncate_utf8, Amf0Value, AmfLimits, Budget, Cursor, Properties};
use crate::{Error, Result};

/// The AMF0 type markers.
mod marker {
    pub(super) const NUMBER: u8 = 0x00;
    pub(super) const BOOLEAN: u8 = 0x01;
    pub(super) const STRING: u8 = 0x02;
    pub(super) const OBJECT: u8 = 0x03;
    pub(super) const MOVIECLIP: u8 = 0x04;
    pub(super) const NULL: u8 = 0x05;
    pub(super) const UNDEFINED: u8 = 0x06;
    pub(super) const REFERENCE: u8 = 0x07;
    pub(super) const ECMA_ARRAY: u8 = 0x08;
    pub(super) const OBJECT_END: u8 = 0x09;
    pub(super) const STRICT_ARRAY: u8 = 0x0A;
    pub(super) const DATE: u8 = 0x0B;
    pub(super) const LONG_STRING: u8 = 0x0C;
    pub(super) const UNSUPPORTED: u8 = 0x0D;
    pub(super) const RECORDSET: u8 = 0x0E;
    pub(super) const XML_DOCUMENT: u8 = 0x0F;
    pub(super) const TYPED_OBJECT: u8 = 0x10;
    pub(super) const AVMPLUS: u8 = 0x11;
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
    /// A decoder at the start of `buf`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amf::{Amf3Object, Amf3Value};
    use proptest::prelude::*;

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn enc(value: &Amf0Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode(value, &mut out);
        out
    }

    fn dec(buf: &[u8]) -> Result<Vec<Amf0Value>> {
        decode_all(buf, AmfLimits::default())
    }

    /// Checks both directions: the bytes decode to `value`, and `value` encodes to the bytes.
    fn known(value: Amf0Value, bytes: &[u8]) {
        assert_eq!(enc(&value), bytes, "encoding of {value:?}");
        assert_eq!(dec(bytes).unwrap(), vec![value]);
    }

    fn s(text: &str) -> Amf0Value {
        Amf0Value::from(text)
    }

    #[test]
    fn scalars_known_bytes() {
        known(Amf0Value::Number(1.0), b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00");
        known(Amf0Value::Number(-0.0), b"\x00\x80\x00\x00\x00\x00\x00\x00\x00");
        known(Amf0Value::Boolean(true), b"\x01\x01");
        known(Amf0Value::Boolean(false), b"\x01\x00");
        known(s("abc"), b"\x02\x00\x03abc");
        known(s(""), b"\x02\x00\x00");
        known(Amf0Value::Null, b"\x05");
        known(Amf0Value::Undefined, b"\x06");
        known(Amf0Value::Unsupported, b"\x0d");
        known(
            Amf0Value::Date { millis: 1.5, time_zone: -60 },
            b"\x0b\x3f\xf8\x00\x00\x00\x00\x00\x00\xff\xc4",
        );
        known(Amf0Value::XmlDocument("<a/>".into()), b"\x0f\x00\x00\x00\x04<a/>");
        // Any non-zero byte is true.
        assert_eq!(dec(b"\x01\x7f").unwrap(), vec![Amf0Value::Boolean(true)]);
    }

    #[test]
    fn containers_known_bytes() {
        known(
            Amf0Value::object([("a", Amf0Value::Number(2.0)), ("b", Amf0Value::Null)]),
            b"\x03\x00\x01a\x00\x40\x00\x00\x00\x00\x00\x00\x00\x00\x01b\x05\x00\x00\x09",
        );
        known(Amf0Value::Object(vec![]), b"\x03\x00\x00\x09");
        known(
            Amf0Value::EcmaArray(vec![("k".into(), s("v"))]),
            b"\x08\x00\x00\x00\x01\x00\x01k\x02\x00\x01v\x00\x00\x09",
        );
        known(
            Amf0Value::StrictArray(vec![Amf0Value::Boolean(true), Amf0Value::Null]),
            b"\x0a\x00\x00\x00\x02\x01\x01\x05",
        );
        known(
            Amf0Value::TypedObject {
                class_name: "Cls".into(),
                properties: vec![("x".into(), Amf0Value::Undefined)],
            },
            b"\x10\x00\x03Cls\x00\x01x\x06\x00\x00\x09",
        );
    }

    #[test]
    fn long_string_chosen_by_length() {
        let short = "x".repeat(0xFFFF);
        let bytes = enc(&s(&short));
        assert_eq!(&bytes[..3], b"\x02\xff\xff");
        assert_eq!(bytes.len(), 3 + 0xFFFF);

        let long = "y".repeat(0x10000);
        let bytes = enc(&s(&long));
        assert_eq!(&bytes[..5], b"\x0c\x00\x01\x00\x00");
        assert_eq!(bytes.len(), 5 + 0x10000);
        assert_eq!(dec(&bytes).unwrap(), vec![s(&long)]);
        // A long string marker holding a short string decodes as the same String.
        assert_eq!(dec(b"\x0c\x00\x00\x00\x02hi").unwrap(), vec![s("hi")]);
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        // "café" in Latin-1.
        let values = dec(b"\x02\x00\x04caf\xe9").unwrap();
        assert_eq!(values, vec![s("caf\u{FFFD}")]);
        let values = dec(b"\x03\x00\x02\xff\xfe\x05\x00\x00\x09").unwrap();
        assert_eq!(values[0].properties().unwrap()[0].0, "\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn ffmpeg_connect_command() {
        let body = cat(&[
            b"\x02\x00\x07connect",
            b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00",
            b"\x03",
            b"\x00\x03app\x02\x00\x04live",
            b"\x00\x04type\x02\x00\x0anonprivate",
            b"\x00\x08flashVer\x02\x00\x24FMLE/3.0 (compatible; Lavf59.27.100)",
            b"\x00\x05tcUrl\x02\x00\x1artmp://127.0.0.1:1935/live",
            b"\x00\x00\x09",
        ]);
        let values = dec(&body).unwrap();
        assert_eq!(values.len(), 3);
        assert_eq!(values[0].as_str(), Some("connect"));
        assert_eq!(values[1].as_f64(), Some(1.0));
        let command = &values[2];
        assert_eq!(command.get("app").and_then(Amf0Value::as_str), Some("live"));
        assert_eq!(command.get("type").and_then(Amf0Value::as_str), Some("nonprivate"));
        assert_eq!(
            command.get("flashVer").and_then(Amf0Value::as_str),
            Some("FMLE/3.0 (compatible; Lavf59.27.100)")
        );
        assert_eq!(command.get("tcUrl").and_then(Amf0Value::as_str), Some("rtmp://127.0.0.1:1935/live"));
        assert_eq!(command.get("swfUrl"), None);

        let rebuilt = [
            s("connect"),
            Amf0Value::Number(1.0),
            Amf0Value::object([
                ("app", s("live")),
                ("type", s("nonprivate")),
                ("flashVer", s("FMLE/3.0 (compatible; Lavf59.27.100)")),
                ("tcUrl", s("rtmp://127.0.0.1:1935/live")),
            ]),
        ];
        let mut out = Vec::new();
        rebuilt.iter().for_each(|v| encode(v, &mut out));
        assert_eq!(out, body);
    }

    fn on_metadata_body(with_end_marker: bool) -> Vec<u8> {
        cat(&[
            b"\x02\x00\x0d@setDataFrame",
            b"\x02\x00\x0aonMetaData",
            b"\x08\x00\x00\x00\x05",
            b"\x00\x08duration\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\x00\x05width\x00\x40\x94\x00\x00\x00\x00\x00\x00",
            b"\x00\x06height\x00\x40\x86\x80\x00\x00\x00\x00\x00",
            b"\x00\x0cvideocodecid\x00\x40\x1c\x00\x00\x00\x00\x00\x00",
            b"\x00\x07encoder\x02\x00\x0dLavf59.27.100",
            if with_end_marker { b"\x00\x00\x09" } else { b"" },
        ])
    }

    #[test]
    fn on_metadata_ecma_array() {
        let values = dec(&on_metadata_body(true)).unwrap();
        assert_eq!(values[0].as_str(), Some("@setDataFrame"));
        assert_eq!(values[1].as_str(), Some("onMetaData"));
        let meta = &values[2];
        assert!(matches!(meta, Amf0Value::EcmaArray(p) if p.len() == 5));
        assert_eq!(meta.get("duration").and_then(Amf0Value::as_f64), Some(0.0));
        assert_eq!(meta.get("width").and_then(Amf0Value::as_f64), Some(1280.0));
        assert_eq!(meta.get("height").and_then(Amf0Value::as_f64), Some(720.0));
        assert_eq!(meta.get("videocodecid").and_then(Amf0Value::as_f64), Some(7.0));
        assert_eq!(meta.get("encoder").and_then(Amf0Value::as_str), Some("Lavf59.27.100"));

        let mut out = Vec::new();
        values.iter().for_each(|v| encode(v, &mut out));
        assert_eq!(out, on_metadata_body(true));
    }

    #[test]
    fn ecma_array_without_end_marker_at_buffer_end() {
        let strict = dec(&on_metadata_body(true)).unwrap();
        assert_eq!(dec(&on_metadata_body(false)).unwrap(), strict);
        // Only the end marker missing after the empty key is accepted too.
        let mut empty_key_only = on_metadata_body(false);
        empty_key_only.extend_from_slice(b"\x00\x00");
        assert_eq!(dec(&empty_key_only).unwrap(), strict);
        // The count is advisory: a wrong count changes nothing.
        let mut wrong_count = on_metadata_body(true);
        wrong_count[30] = 0x63;
        assert_eq!(dec(&wrong_count).unwrap(), strict);
        // An object (not an ECMA array) missing its end marker is malformed.
        assert!(matches!(dec(b"\x03\x00\x01a\x05"), Err(Error::Amf { .. })));
    }

    #[test]
    fn connect_result_with_object_encoding_3() {
        let body = cat(&[
            b"\x02\x00\x07_result",
            b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00",
            b"\x03",
            b"\x00\x06fmsVer\x02\x00\x0dFMS/3,0,1,123",
            b"\x00\x0ccapabilities\x00\x40\x3f\x00\x00\x00\x00\x00\x00",
            b"\x00\x00\x09",
            b"\x03",
            b"\x00\x05level\x02\x00\x06status",
            b"\x00\x04code\x02\x00\x1dNetConnection.Connect.Success",
            b"\x00\x0bdescription\x02\x00\x15Connection succeeded.",
            b"\x00\x0eobjectEncoding\x00\x40\x08\x00\x00\x00\x00\x00\x00",
            b"\x00\x00\x09",
        ]);
        let values = dec(&body).unwrap();
        assert_eq!(values.len(), 4);
        assert_eq!(values[0].as_str(), Some("_result"));
        assert_eq!(values[2].get("capabilities").and_then(Amf0Value::as_f64), Some(31.0));
        let info = &values[3];
        assert_eq!(info.get("code").and_then(Amf0Value::as_str), Some("NetConnection.Connect.Success"));
        assert_eq!(info.get("objectEncoding").and_then(Amf0Value::as_f64), Some(3.0));
        let mut out = Vec::new();
        values.iter().for_each(|v| encode(v, &mut out));
        assert_eq!(out, body);
    }

    #[test]
    fn avmplus_switch_decodes_one_amf3_value() {
        // An AMF3 command body as Flash Player sends it: the info object after the switch.
        let body = cat(&[
            b"\x02\x00\x08onStatus",
            b"\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\x05",
            // 0x11, then an anonymous dynamic AMF3 object {code: "NetStream.Play.Start", n: 5}.
            b"\x11\x0a\x0b\x01\x09code\x06\x29NetStream.Play.Start\x03n\x04\x05\x01",
            b"\x11\x06\x07abc",
        ]);
        let values = dec(&body).unwrap();
        assert_eq!(values.len(), 5);
        let Amf0Value::Avmplus(info) = &values[3] else { panic!("not avmplus: {:?}", values[3]) };
        assert_eq!(info.get("code").and_then(Amf3Value::as_str), Some("NetStream.Play.Start"));
        assert_eq!(info.get("n"), Some(&Amf3Value::Integer(5)));
        assert_eq!(values[4].as_str(), Some("abc"));
        let mut out = Vec::new();
        values.iter().for_each(|v| encode(v, &mut out));
        assert_eq!(out, body);
        assert_eq!(Amf0Value::Avmplus(Amf3Value::Double(2.5)).as_f64(), Some(2.5));
    }

    #[test]
    fn amf3_tables_are_fresh_after_each_switch() {
        // The second switch refers to string 0, which only the first switch defined.
        assert!(matches!(dec(b"\x11\x06\x07abc\x11\x06\x00"), Err(Error::Amf { .. })));
    }

    #[test]
    fn references_are_checked_against_objects_seen() {
        let values = dec(b"\x03\x00\x00\x09\x07\x00\x00").unwrap();
        assert_eq!(values[1], Amf0Value::Reference(0));
        assert_eq!(enc(&values[1]), b"\x07\x00\x00");
        assert!(matches!(dec(b"\x03\x00\x00\x09\x07\x00\x01"), Err(Error::Amf { offset: 4, .. })));
        assert!(matches!(dec(b"\x07\x00\x00"), Err(Error::Amf { .. })));
    }

    #[test]
    fn reserved_and_unexpected_markers_are_errors() {
        for bad in [&b"\x04"[..], b"\x0e", b"\x09", b"\x12", b"\xff", b"\x05\x09"] {
            assert!(matches!(dec(bad), Err(Error::Amf { .. })), "{bad:?}");
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let full = enc(&Amf0Value::object([("key", s("value")), ("n", Amf0Value::Number(3.0))]));
        for len in 1..full.len() {
            assert!(dec(&full[..len]).is_err(), "prefix of {len} bytes");
        }
    }

    #[test]
    fn decoder_reports_position_and_end() {
        let mut d = Amf0Decoder::new(b"\x05\x02\x00\x01x", AmfLimits::default());
        assert_eq!(d.next_value().unwrap(), Some(Amf0Value::Null));
        assert_eq!(d.position(), 1);
        assert_eq!(d.next_value().unwrap(), Some(s("x")));
        assert_eq!(d.position(), 5);
        assert_eq!(d.next_value().unwrap(), None);
    }

    #[test]
    fn depth_bomb_is_refused_without_overflowing_the_stack() {
        let mut bomb = b"\x0a\x00\x00\x00\x01".repeat(10_000);
        bomb.push(0x05);
        let err = dec(&bomb).unwrap_err();
        assert_eq!(err, Error::limit("AMF nesting depth", 33, 32));
        // Even with limits that allow it, the ceiling protects the stack.
        let lax = AmfLimits { max_depth: usize::MAX, max_values: usize::MAX, ..AmfLimits::default() };
        assert!(matches!(decode_all(&bomb, lax), Err(Error::LimitExceeded { .. })));
        // Nested objects, and AMF3 arrays behind a switch, count the same way.
        let objects = b"\x03\x00\x01a".repeat(10_000);
        assert!(matches!(dec(&objects), Err(Error::LimitExceeded { .. })));
        let mut mixed = b"\x0a\x00\x00\x00\x01".repeat(20);
        mixed.push(0x11);
        mixed.extend(b"\x09\x03\x01".repeat(10_000));
        assert_eq!(dec(&mixed).unwrap_err(), Error::limit("AMF nesting depth", 33, 32));
    }

    #[test]
    fn exact_depth_limit_is_allowed() {
        let limits = AmfLimits { max_depth: 3, ..AmfLimits::default() };
        assert!(decode_all(b"\x0a\x00\x00\x00\x01\x0a\x00\x00\x00\x01\x05", limits).is_ok());
        let four_deep = b"\x0a\x00\x00\x00\x01\x0a\x00\x00\x00\x01\x0a\x00\x00\x00\x01\x05";
        assert_eq!(decode_all(four_deep, limits).unwrap_err(), Error::limit("AMF nesting depth", 4, 3));
    }

    #[test]
    fn huge_count_and_length_fields_fail_before_allocating() {
        for bad in [
            &b"\x0a\xff\xff\xff\xff\x05\x05"[..],
            b"\x0c\xff\xff\xff\xff abc",
            b"\x0f\xff\xff\xff\xff",
            b"\x02\xff\xffabc",
            b"\x08\xff\xff\xff\xff\x00",
        ] {
            assert!(dec(bad).is_err(), "{bad:?}");
        }
        let limits = AmfLimits { max_string_len: 4, ..AmfLimits::default() };
        assert_eq!(
            decode_all(b"\x02\x00\x05hello", limits).unwrap_err(),
            Error::limit("AMF string length", 5, 4)
        );
    }

    #[test]
    fn value_count_limit_covers_the_whole_buffer() {
        let limits = AmfLimits { max_values: 5, ..AmfLimits::default() };
        // Three top-level values and an object with one key and value: 5 values in all.
        let ok = b"\x05\x05\x03\x00\x01a\x05\x00\x00\x09";
        assert_eq!(decode_all(ok, limits).unwrap().len(), 3);
        let too_many = b"\x05\x05\x05\x03\x00\x01a\x05\x00\x00\x09";
        assert!(matches!(decode_all(too_many, limits), Err(Error::LimitExceeded { .. })));
        // A strict array announcing more items than the budget is refused up front.
        let array = [&b"\x0a\x00\x00\x00\x0a"[..], &[0x05; 10]].concat();
        assert!(matches!(decode_all(&array, limits), Err(Error::LimitExceeded { .. })));
    }

    #[test]
    fn over_long_keys_are_cut_at_a_char_boundary() {
        let key = format!("{}é", "k".repeat(0xFFFE)); // 0x10000 bytes; 'é' straddles the limit
        let bytes = enc(&Amf0Value::object([(key.as_str(), Amf0Value::Null)]));
        assert_eq!(&bytes[1..3], b"\xff\xfe");
        let decoded = dec(&bytes).unwrap();
        assert_eq!(decoded[0].properties().unwrap()[0].0, "k".repeat(0xFFFE));
    }

    fn key() -> BoxedStrategy<String> {
        prop_oneof![Just(String::new()), "[a-zA-Z_]{1,8}", any::<String>()].boxed()
    }

    fn number() -> impl Strategy<Value = f64> {
        any::<f64>().prop_filter("NaN never compares equal", |n| !n.is_nan())
    }

    fn amf3_scalar() -> impl Strategy<Value = Amf3Value> {
        prop_oneof![
            Just(Amf3Value::Null),
            any::<bool>().prop_map(Amf3Value::Boolean),
            (super::amf3::INTEGER_MIN..=super::amf3::INTEGER_MAX).prop_map(Amf3Value::Integer),
            number().prop_map(Amf3Value::Double),
            any::<String>().prop_map(Amf3Value::String),
            "[a-z]{1,4}".prop_map(|name| Amf3Value::Object(Amf3Object {
                class_name: String::new(),
                sealed: vec![],
                dynamic: Some(vec![(name.clone(), Amf3Value::String(name))]),
            })),
        ]
    }

    pub(crate) fn amf0_value() -> impl Strategy<Value = Amf0Value> {
        let leaf = prop_oneof![
            number().prop_map(Amf0Value::Number),
            any::<bool>().prop_map(Amf0Value::Boolean),
            any::<String>().prop_map(Amf0Value::String),
            Just(Amf0Value::Null),
            Just(Amf0Value::Undefined),
            Just(Amf0Value::Unsupported),
            (number(), any::<i16>()).prop_map(|(millis, time_zone)| Amf0Value::Date { millis, time_zone }),
            any::<String>().prop_map(Amf0Value::XmlDocument),
            amf3_scalar().prop_map(Amf0Value::Avmplus),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let props = prop::collection::vec((key(), inner.clone()), 0..6);
            prop_oneof![
                props.clone().prop_map(Amf0Value::Object),
                props.clone().prop_map(Amf0Value::EcmaArray),
                prop::collection::vec(inner, 0..6).prop_map(Amf0Value::StrictArray),
                (any::<String>(), props)
                    .prop_map(|(class_name, properties)| Amf0Value::TypedObject { class_name, properties }),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(values in prop::collection::vec(amf0_value(), 0..4)) {
            let mut out = Vec::new();
            values.iter().for_each(|v| encode(v, &mut out));
            prop_assert_eq!(dec(&out).unwrap(), values);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            crate::amf::fuzz_decode(&bytes);
        }

        /// Damaged valid encodings reach deeper than random bytes do.
        #[test]
        fn mutated_encodings_never_panic(
            value in amf0_value(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = enc(&value);
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            crate::amf::fuzz_decode(&bytes);
            let cut = cut.index(bytes.len() + 1);
            crate::amf::fuzz_decode(&bytes[..cut]);
        }
    }
}
