//! AMF3 encoder and bounded decoder (with string, object and trait reference tables).

use std::collections::HashMap;

use bytes::BufMut;

use super::{truncate_utf8, Amf3Object, Amf3Value, AmfLimits, Budget, Cursor, COPY_BYTES_PER_VALUE};
use crate::{Error, Result};

/// The AMF3 type markers.
mod marker {
    pub(super) const UNDEFINED: u8 = 0x00;
    pub(super) const NULL: u8 = 0x01;
    pub(super) const FALSE: u8 = 0x02;
    pub(super) const TRUE: u8 = 0x03;
    pub(super) const INTEGER: u8 = 0x04;
    pub(super) const DOUBLE: u8 = 0x05;
    pub(super) const STRING: u8 = 0x06;
    pub(super) const XML_DOCUMENT: u8 = 0x07;
    pub(super) const DATE: u8 = 0x08;
    pub(super) const ARRAY: u8 = 0x09;
    pub(super) const OBJECT: u8 = 0x0A;
    pub(super) const XML: u8 = 0x0B;
    pub(super) const BYTE_ARRAY: u8 = 0x0C;
    pub(super) const VECTOR_INT: u8 = 0x0D;
    pub(super) const VECTOR_UINT: u8 = 0x0E;
    pub(super) const VECTOR_DOUBLE: u8 = 0x0F;
    pub(super) const VECTOR_OBJECT: u8 = 0x10;
    pub(super) const DICTIONARY: u8 = 0x11;
}

/// Largest value of a U29 (29-bit variable-length unsigned integer).
const U29_MAX: u32 = (1 << 29) - 1;
/// Range of the Integer type (signed 29-bit); other integers are written as doubles.
pub(super) const INTEGER_MIN: i32 = -(1 << 28);
pub(super) const INTEGER_MAX: i32 = (1 << 28) - 1;
/// Largest length or count a U29 with its inline flag bit can carry.
const MAX_INLINE_LEN: usize = (1 << 28) - 1;
/// Largest sealed-member count an inline traits header can carry.
const MAX_SEALED_COUNT: usize = (1 << 25) - 1;

/// Externalizable classes (Flex collections and proxies) whose whole custom encoding is one
/// AMF3 value. They decode to an object of that class with one sealed member, `source`, and an
/// object of that exact shape encodes back as externalizable. Other externalizable classes
/// have private encodings and are refused.
pub const EXTERNALIZABLE_WRAPPERS: &[&str] = &[
    "flex.messaging.io.ArrayCollection",
    "flex.messaging.io.ArrayList",
    "flex.messaging.io.ObjectProxy",
    "mx.collections.ArrayCollection",
    "mx.collections.ArrayList",
    "mx.utils.ObjectProxy",
];
const WRAPPER_MEMBER: &str = "source";

/// Appends the AMF3 encoding of `value` to `out` (fresh reference tables).
///
/// Repeated non-empty strings are written as string references; traits are always inline and
/// objects are never referenced (the tree has no shared nodes). `Integer`s outside the 29-bit
/// range are written as doubles. Array and dynamic-member entries with an empty key cannot be
/// represented (the empty key ends the list) and are skipped.
pub fn encode(value: &Amf3Value, out: &mut impl BufMut) {
    Encoder::default().value(value, out);
}

#[derive(Default)]
struct Encoder {
    strings: HashMap<String, u32>,
}

impl Encoder {
    fn value(&mut self, value: &Amf3Value, out: &mut impl BufMut) {
        match value {
            Amf3Value::Undefined => out.put_u8(marker::UNDEFINED),
            Amf3Value::Null => out.put_u8(marker::NULL),
            Amf3Value::Boolean(false) => out.put_u8(marker::FALSE),
            Amf3Value::Boolean(true) => out.put_u8(marker::TRUE),
            Amf3Value::Integer(i) if (INTEGER_MIN..=INTEGER_MAX).contains(i) => {
                out.put_u8(marker::INTEGER);
                put_u29(*i as u32 & U29_MAX, out);
            }
            Amf3Value::Integer(i) => {
                out.put_u8(marker::DOUBLE);
                out.put_f64(f64::from(*i));
            }
            Amf3Value::Double(d) => {
                out.put_u8(marker::DOUBLE);
                out.put_f64(*d);
            }
            Amf3Value::String(s) => {
                out.put_u8(marker::STRING);
                self.string(s, out);
            }
            Amf3Value::XmlDocument(s) => {
                out.put_u8(marker::XML_DOCUMENT);
                put_inline_bytes(s.as_bytes(), out);
            }
            Amf3Value::Date(millis) => {
                out.put_u8(marker::DATE);
                put_u29(1, out);
                out.put_f64(*millis);
            }
            Amf3Value::Array { associative, dense } => {
                out.put_u8(marker::ARRAY);
                let count = put_inline_len(dense.len(), out);
                self.pairs(associative, out);
                for item in &dense[..count] {
                    self.value(item, out);
                }
            }
            Amf3Value::Object(object) => {
                out.put_u8(marker::OBJECT);
                self.object(object, out);
            }
            Amf3Value::Xml(s) => {
                out.put_u8(marker::XML);
                put_inline_bytes(s.as_bytes(), out);
            }
            Amf3Value::ByteArray(bytes) => {
                out.put_u8(marker::BYTE_ARRAY);
                put_inline_bytes(bytes, out);
            }
            Amf3Value::VectorInt { fixed, items } => {
                out.put_u8(marker::VECTOR_INT);
                let count = put_vector_header(items.len(), *fixed, out);
                items[..count].iter().for_each(|i| out.put_i32(*i));
            }
            Amf3Value::VectorUint { fixed, items } => {
                out.put_u8(marker::VECTOR_UINT);
                let count = put_vector_header(items.len(), *fixed, out);
                items[..count].iter().for_each(|i| out.put_u32(*i));
            }
            Amf3Value::VectorDouble { fixed, items } => {
                out.put_u8(marker::VECTOR_DOUBLE);
                let count = put_vector_header(items.len(), *fixed, out);
                items[..count].iter().for_each(|d| out.put_f64(*d));
            }
            Amf3Value::VectorObject { fixed, type_name, items } => {
                out.put_u8(marker::VECTOR_OBJECT);
                let count = put_vector_header(items.len(), *fixed, out);
                self.string(type_name, out);
                for item in &items[..count] {
                    self.value(item, out);
                }
            }
            Amf3Value::Dictionary { weak_keys, entries } => {
                out.put_u8(marker::DICTIONARY);
                let count = put_vector_header(entries.len(), *weak_keys, out);
                for (key, value) in &entries[..count] {
                    self.value(key, out);
                    self.value(value, out);
                }
            }
        }
    }

    fn object(&mut self, object: &Amf3Object, out: &mut impl BufMut) {
        if is_wrapper_shape(object) {
            // Inline object, inline traits, externalizable.
            put_u29(0b0111, out);
            self.string(&object.class_name, out);
            self.value(&object.sealed[0].1, out);
            return;
        }
        let sealed = &object.sealed[..object.sealed.len().min(MAX_SEALED_COUNT)];
        let dynamic_flag = if object.dynamic.is_some() { 0b1000 } else { 0 };
        put_u29(((sealed.len() as u32) << 4) | dynamic_flag | 0b0011, out);
        self.string(&object.class_name, out);
        for (name, _) in sealed {
            self.string(name, out);
        }
        for (_, value) in sealed {
            self.value(value, out);
        }
        if let Some(dynamic) = &object.dynamic {
            self.pairs(dynamic, out);
        }
    }

    /// Key/value pairs ended by the empty string.
    fn pairs(&mut self, pairs: &[(String, Amf3Value)], out: &mut impl BufMut) {
        for (key, value) in pairs.iter().filter(|(key, _)| !key.is_empty()) {
            self.string(key, out);
            self.value(value, out);
        }
        put_u29(1, out);
    }

    fn string(&mut self, s: &str, out: &mut impl BufMut) {
        if let Some(&index) = self.strings.get(s) {
            put_u29(index << 1, out);
            return;
        }
        let s = truncate_utf8(s, MAX_INLINE_LEN);
        put_inline_bytes(s.as_bytes(), out);
        // The empty string is never put in the table; references must fit in 28 bits.
        if !s.is_empty() && self.strings.len() < MAX_INLINE_LEN {
            self.strings.insert(s.to_owned(), self.strings.len() as u32);
        }
    }
}

fn is_wrapper_shape(object: &Amf3Object) -> bool {
    EXTERNALIZABLE_WRAPPERS.contains(&object.class_name.as_str())
        && object.dynamic.is_none()
        && object.sealed.len() == 1
        && object.sealed[0].0 == WRAPPER_MEMBER
}

/// Writes a U29: 1 to 4 bytes, 7 bits per byte with a continuation bit, the 4th byte all 8 bits.
fn put_u29(v: u32, out: &mut impl BufMut) {
    debug_assert!(v <= U29_MAX);
    if v < 0x80 {
        out.put_u8(v as u8);
    } else if v < 0x4000 {
        out.put_slice(&[(v >> 7) as u8 | 0x80, (v & 0x7F) as u8]);
    } else if v < 0x20_0000 {
        out.put_slice(&[(v >> 14) as u8 | 0x80, ((v >> 7) & 0x7F) as u8 | 0x80, (v & 0x7F) as u8]);
    } else {
        out.put_slice(&[
            (v >> 22) as u8 | 0x80,
            ((v >> 15) & 0x7F) as u8 | 0x80,
            ((v >> 8) & 0x7F) as u8 | 0x80,
            (v & 0xFF) as u8,
        ]);
    }
}

/// Writes `len` with the inline flag, cut to what a U29 can carry; returns the length written.
fn put_inline_len(len: usize, out: &mut impl BufMut) -> usize {
    let len = len.min(MAX_INLINE_LEN);
    put_u29(((len as u32) << 1) | 1, out);
    len
}

fn put_inline_bytes(bytes: &[u8], out: &mut impl BufMut) {
    let len = put_inline_len(bytes.len(), out);
    out.put_slice(&bytes[..len]);
}

/// Count with the inline flag, then the fixed-length (or weak-keys) byte.
fn put_vector_header(len: usize, flag: bool, out: &mut impl BufMut) -> usize {
    let len = put_inline_len(len, out);
    out.put_u8(u8::from(flag));
    len
}

/// Decodes one AMF3 value from the start of `buf`; returns it and the bytes consumed.
pub fn decode(buf: &[u8], limits: AmfLimits) -> Result<(Amf3Value, usize)> {
    let mut d = Amf3Decoder::new(buf, limits);
    let v = d.next_value()?;
    Ok((v, d.position()))
}

/// Reads AMF3 values; reference tables live as long as the decoder.
///
/// An object reference is resolved by decoding the referenced bytes again (without touching
/// the tables), so a copy costs values and depth like the original and cannot nest itself.
/// After an error the decoder's state is unspecified; drop it.
pub struct Amf3Decoder<'a> {
    cur: Cursor<'a>,
    budget: Budget,
    /// Depth of the values `next_value` returns (1, or the depth of an AMF0 switch marker).
    top_depth: usize,
    strings: Vec<String>,
    objects: Vec<ObjectSlot>,
    traits: Vec<Traits>,
    /// Non-zero while re-decoding a referenced object: the tables are complete for it already.
    replaying: usize,
}

/// Where a referenceable value starts (its marker), and whether it has been fully decoded.
struct ObjectSlot {
    start: usize,
    complete: bool,
}

#[derive(Clone)]
struct Traits {
    class_name: String,
    sealed_names: Vec<String>,
    dynamic: bool,
    externalizable: bool,
}

/// A U29 header: either a reference into a table or an inline value with its length/count.
enum Header {
    Reference(usize),
    Inline(usize),
}

impl<'a> Amf3Decoder<'a> {
    /// A decoder at the start of `buf`, with empty reference tables.
    pub fn new(buf: &'a [u8], limits: AmfLimits) -> Self {
        Self::nested(Cursor::new(buf), Budget::new(limits), 1)
    }

    /// A decoder for the value after an AMF0 switch marker, continuing that decoder's position
    /// and budget.
    pub(super) fn nested(cur: Cursor<'a>, budget: Budget, depth: usize) -> Self {
        Amf3Decoder {
            cur,
            budget,
            top_depth: depth,
            strings: Vec::new(),
            objects: Vec::new(),
            traits: Vec::new(),
            replaying: 0,
        }
    }

    pub(super) fn into_parts(self) -> (Cursor<'a>, Budget) {
        (self.cur, self.budget)
    }

    /// Decodes the value at the current position (references resolve against earlier values).
    pub fn next_value(&mut self) -> Result<Amf3Value> {
        self.read_value(self.top_depth)
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.cur.pos
    }

    fn read_value(&mut self, depth: usize) -> Result<Amf3Value> {
        self.budget.check_depth(depth)?;
        self.budget.charge(1)?;
        let start = self.cur.pos;
        let value = match self.cur.u8()? {
            marker::UNDEFINED => Amf3Value::Undefined,
            marker::NULL => Amf3Value::Null,
            marker::FALSE => Amf3Value::Boolean(false),
            marker::TRUE => Amf3Value::Boolean(true),
            marker::INTEGER => {
                let raw = self.read_u29()?;
                // Sign-extend from 29 bits.
                Amf3Value::Integer(((raw << 3) as i32) >> 3)
            }
            marker::DOUBLE => Amf3Value::Double(self.cur.f64()?),
            marker::STRING => Amf3Value::String(self.read_string()?),
            marker::XML_DOCUMENT => self.read_xml(start, depth, Amf3Value::XmlDocument)?,
            marker::XML => self.read_xml(start, depth, Amf3Value::Xml)?,
            marker::DATE => match self.read_header()? {
                Header::Reference(index) => self.resolve(index, start, depth)?,
                Header::Inline(_) => {
                    let slot = self.begin_object(start);
                    let millis = self.cur.f64()?;
                    self.finish_object(slot);
                    Amf3Value::Date(millis)
                }
            },
            marker::ARRAY => match self.read_header()? {
                Header::Reference(index) => self.resolve(index, start, depth)?,
                Header::Inline(count) => {
                    let slot = self.begin_object(start);
                    let associative = self.read_pairs(depth)?;
                    let dense = self.read_values(count, start, depth)?;
                    self.finish_object(slot);
                    Amf3Value::Array { associative, dense }
                }
            },
            marker::OBJECT => self.read_object(start, depth)?,
            marker::BYTE_ARRAY => match self.read_header()? {
                Header::Reference(index) => self.resolve(index, start, depth)?,
                Header::Inline(len) => {
                    let slot = self.begin_object(start);
                    let bytes = self.read_bytes(len)?.to_vec();
                    self.finish_object(slot);
                    Amf3Value::ByteArray(bytes)
                }
            },
            marker @ (marker::VECTOR_INT | marker::VECTOR_UINT | marker::VECTOR_DOUBLE) => {
                self.read_number_vector(marker, start, depth)?
            }
            marker::VECTOR_OBJECT => match self.read_header()? {
                Header::Reference(index) => self.resolve(index, start, depth)?,
                Header::Inline(count) => {
                    let slot = self.begin_object(start);
                    let fixed = self.cur.u8()? != 0;
                    let type_name = self.read_string()?;
                    let items = self.read_values(count, start, depth)?;
                    self.finish_object(slot);
                    Amf3Value::VectorObject { fixed, type_name, items }
                }
            },
            marker::DICTIONARY => match self.read_header()? {
                Header::Reference(index) => self.resolve(index, start, depth)?,
                Header::Inline(count) => {
                    let slot = self.begin_object(start);
                    let weak_keys = self.cur.u8()? != 0;
                    // Two values per entry, each at least one byte.
                    if count > self.cur.remaining() / 2 {
                        return Err(Error::amf("AMF3 dictionary count exceeds the remaining data", start));
                    }
                    self.budget.check_room(count.saturating_mul(2))?;
                    let mut entries = Vec::with_capacity(count);
                    for _ in 0..count {
                        let key = self.read_value(depth + 1)?;
                        let value = self.read_value(depth + 1)?;
                        entries.push((key, value));
                    }
                    self.finish_object(slot);
                    Amf3Value::Dictionary { weak_keys, entries }
                }
            },
            _ => return Err(Error::amf("unknown AMF3 type marker", start)),
        };
        Ok(value)
    }

    fn read_u29(&mut self) -> Result<u32> {
        let mut v = 0u32;
        for _ in 0..3 {
            let b = self.cur.u8()?;
            v = (v << 7) | u32::from(b & 0x7F);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Ok((v << 8) | u32::from(self.cur.u8()?))
    }

    /// The low bit of a U29 header: 0 = reference (index in the rest), 1 = inline value.
    fn read_header(&mut self) -> Result<Header> {
        let v = self.read_u29()? as usize;
        Ok(if v & 1 == 0 { Header::Reference(v >> 1) } else { Header::Inline(v >> 1) })
    }

    fn read_bytes(&mut self, len: usize) -> Result<&'a [u8]> {
        self.budget.check_len(len)?;
        if self.replaying > 0 {
            self.charge_copy(len)?;
        }
        self.cur.take(len)
    }

    fn read_utf8(&mut self, len: usize) -> Result<String> {
        Ok(String::from_utf8_lossy(self.read_bytes(len)?).into_owned())
    }

    fn charge_copy(&mut self, bytes: usize) -> Result<()> {
        self.budget.charge(bytes / COPY_BYTES_PER_VALUE)
    }

    /// A string through the string table (UTF-8-vr); invalid UTF-8 is replaced, not refused.
    fn read_string(&mut self) -> Result<String> {
        let at = self.cur.pos;
        match self.read_header()? {
            Header::Reference(index) => {
                let s = self
                    .strings
                    .get(index)
                    .ok_or(Error::amf("AMF3 string reference out of range", at))?
                    .clone();
                self.charge_copy(s.len())?;
                Ok(s)
            }
            Header::Inline(len) => {
                let s = self.read_utf8(len)?;
                if !s.is_empty() && self.replaying == 0 {
                    self.strings.push(s.clone());
                }
                Ok(s)
            }
        }
    }

    fn read_xml(&mut self, start: usize, depth: usize, wrap: fn(String) -> Amf3Value) -> Result<Amf3Value> {
        match self.read_header()? {
            Header::Reference(index) => self.resolve(index, start, depth),
            Header::Inline(len) => {
                let slot = self.begin_object(start);
                let text = self.read_utf8(len)?;
                self.finish_object(slot);
                Ok(wrap(text))
            }
        }
    }

    /// Registers a referenceable value in the object table before its contents are read (the
    /// order references count in); nothing is registered while replaying.
    fn begin_object(&mut self, start: usize) -> Option<usize> {
        if self.replaying > 0 {
            return None;
        }
        self.objects.push(ObjectSlot { start, complete: false });
        Some(self.objects.len() - 1)
    }

    fn finish_object(&mut self, slot: Option<usize>) {
        if let Some(index) = slot {
            self.objects[index].complete = true;
        }
    }

    /// An object reference: decode the referenced bytes again, in place of the reference.
    fn resolve(&mut self, index: usize, at: usize, depth: usize) -> Result<Amf3Value> {
        let slot = self.objects.get(index).ok_or(Error::amf("AMF3 object reference out of range", at))?;
        if !slot.complete {
            return Err(Error::amf("AMF3 object refers to itself or an enclosing object (a cycle)", at));
        }
        let resume = self.cur.pos;
        self.cur.pos = slot.start;
        self.replaying += 1;
        let value = self.read_value(depth);
        self.replaying -= 1;
        self.cur.pos = resume;
        value
    }

    /// Key/value pairs ended by the empty string (array associative part, dynamic members).
    fn read_pairs(&mut self, depth: usize) -> Result<Vec<(String, Amf3Value)>> {
        let mut pairs = Vec::new();
        loop {
            let key = self.read_string()?;
            if key.is_empty() {
                return Ok(pairs);
            }
            self.budget.charge(1)?;
            let value = self.read_value(depth + 1)?;
            pairs.push((key, value));
        }
    }

    /// `count` values, refused before reserving if they cannot fit in the data or the budget.
    fn read_values(&mut self, count: usize, at: usize, depth: usize) -> Result<Vec<Amf3Value>> {
        if count > self.cur.remaining() {
            return Err(Error::amf("AMF3 item count exceeds the remaining data", at));
        }
        self.budget.check_room(count)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.read_value(depth + 1)?);
        }
        Ok(items)
    }

    fn read_number_vector(&mut self, marker: u8, start: usize, depth: usize) -> Result<Amf3Value> {
        let count = match self.read_header()? {
            Header::Reference(index) => return self.resolve(index, start, depth),
            Header::Inline(count) => count,
        };
        let slot = self.begin_object(start);
        let fixed = self.cur.u8()? != 0;
        let item_size = if marker == marker::VECTOR_DOUBLE { 8 } else { 4 };
        if count > self.cur.remaining() / item_size {
            return Err(Error::amf("AMF3 vector count exceeds the remaining data", start));
        }
        self.budget.charge(count)?;
        let value = match marker {
            marker::VECTOR_INT => Amf3Value::VectorInt {
                fixed,
                items: (0..count).map(|_| self.cur.i32()).collect::<Result<_>>()?,
            },
            marker::VECTOR_UINT => Amf3Value::VectorUint {
                fixed,
                items: (0..count).map(|_| self.cur.u32()).collect::<Result<_>>()?,
            },
            _ => Amf3Value::VectorDouble {
                fixed,
                items: (0..count).map(|_| self.cur.f64()).collect::<Result<_>>()?,
            },
        };
        self.finish_object(slot);
        Ok(value)
    }

    fn read_object(&mut self, start: usize, depth: usize) -> Result<Amf3Value> {
        let at = self.cur.pos;
        let header = self.read_u29()? as usize;
        if header & 0b1 == 0 {
            return self.resolve(header >> 1, start, depth);
        }
        let slot = self.begin_object(start);
        let traits = if header & 0b10 == 0 {
            let traits = self
                .traits
                .get(header >> 2)
                .ok_or(Error::amf("AMF3 traits reference out of range", at))?
                .clone();
            let name_bytes: usize = traits.sealed_names.iter().map(String::len).sum();
            self.charge_copy(traits.class_name.len() + name_bytes)?;
            traits
        } else if header & 0b100 != 0 {
            let class_name = self.read_string()?;
            self.register_traits(Traits {
                class_name,
                sealed_names: Vec::new(),
                dynamic: false,
                externalizable: true,
            })
        } else {
            let dynamic = header & 0b1000 != 0;
            let count = header >> 4;
            let class_name = self.read_string()?;
            // Each name is at least one byte and one value.
            if count > self.cur.remaining() {
                return Err(Error::amf("AMF3 sealed member count exceeds the remaining data", at));
            }
            self.budget.check_room(count)?;
            let mut sealed_names = Vec::with_capacity(count);
            for _ in 0..count {
                self.budget.charge(1)?;
                sealed_names.push(self.read_string()?);
            }
            self.register_traits(Traits { class_name, sealed_names, dynamic, externalizable: false })
        };

        if traits.externalizable {
            if !EXTERNALIZABLE_WRAPPERS.contains(&traits.class_name.as_str()) {
                return Err(Error::amf(
                    "AMF3 externalizable object of a class with a private encoding (only Flex \
                     collection and proxy wrappers are supported)",
                    at,
                ));
            }
            let source = self.read_value(depth + 1)?;
            self.finish_object(slot);
            return Ok(Amf3Value::Object(Amf3Object {
                class_name: traits.class_name,
                sealed: vec![(WRAPPER_MEMBER.to_owned(), source)],
                dynamic: None,
            }));
        }

        // A referenced trait may list more members than the data left can hold.
        if traits.sealed_names.len() > self.cur.remaining() {
            return Err(Error::amf("AMF3 sealed member count exceeds the remaining data", at));
        }
        self.budget.check_room(traits.sealed_names.len())?;
        let mut sealed = Vec::with_capacity(traits.sealed_names.len());
        for name in traits.sealed_names {
            self.budget.charge(1)?;
            let value = self.read_value(depth + 1)?;
            sealed.push((name, value));
        }
        let dynamic = if traits.dynamic { Some(self.read_pairs(depth)?) } else { None };
        self.finish_object(slot);
        Ok(Amf3Value::Object(Amf3Object { class_name: traits.class_name, sealed, dynamic }))
    }

    fn register_traits(&mut self, traits: Traits) -> Traits {
        if self.replaying == 0 {
            self.traits.push(traits.clone());
        }
        traits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(value: &Amf3Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode(value, &mut out);
        out
    }

    fn dec(buf: &[u8]) -> Result<Amf3Value> {
        dec_with(buf, AmfLimits::default())
    }

    /// Decodes exactly one value that must use the whole buffer.
    fn dec_with(buf: &[u8], limits: AmfLimits) -> Result<Amf3Value> {
        let (value, used) = decode(buf, limits)?;
        assert_eq!(used, buf.len(), "trailing bytes after {value:?}");
        Ok(value)
    }

    fn known(value: Amf3Value, bytes: &[u8]) {
        assert_eq!(enc(&value), bytes, "encoding of {value:?}");
        assert_eq!(dec(bytes).unwrap(), value);
    }

    fn s(text: &str) -> Amf3Value {
        Amf3Value::String(text.into())
    }

    fn dense(items: Vec<Amf3Value>) -> Amf3Value {
        Amf3Value::Array { associative: vec![], dense: items }
    }

    fn anonymous(pairs: &[(&str, Amf3Value)]) -> Amf3Value {
        Amf3Value::Object(Amf3Object {
            class_name: String::new(),
            sealed: vec![],
            dynamic: Some(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()),
        })
    }

    fn typed(class_name: &str, sealed: &[(&str, Amf3Value)]) -> Amf3Value {
        Amf3Value::Object(Amf3Object {
            class_name: class_name.into(),
            sealed: sealed.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            dynamic: None,
        })
    }

    #[test]
    fn scalars_known_bytes() {
        known(Amf3Value::Undefined, b"\x00");
        known(Amf3Value::Null, b"\x01");
        known(Amf3Value::Boolean(false), b"\x02");
        known(Amf3Value::Boolean(true), b"\x03");
        known(Amf3Value::Double(1.5), b"\x05\x3f\xf8\x00\x00\x00\x00\x00\x00");
        known(s("abc"), b"\x06\x07abc");
        known(s(""), b"\x06\x01");
        known(Amf3Value::XmlDocument("<a/>".into()), b"\x07\x09<a/>");
        known(Amf3Value::Xml("<a/>".into()), b"\x0b\x09<a/>");
        known(Amf3Value::Date(1.5), b"\x08\x01\x3f\xf8\x00\x00\x00\x00\x00\x00");
        known(Amf3Value::ByteArray(vec![1, 2, 3]), b"\x0c\x07\x01\x02\x03");
    }

    #[test]
    fn u29_integers_known_bytes() {
        let cases: &[(i32, &[u8])] = &[
            (0, b"\x04\x00"),
            (1, b"\x04\x01"),
            (127, b"\x04\x7f"),
            (128, b"\x04\x81\x00"),
            (16_383, b"\x04\xff\x7f"),
            (16_384, b"\x04\x81\x80\x00"),
            (0x1F_FFFF, b"\x04\xff\xff\x7f"),
            (0x20_0000, b"\x04\x80\xc0\x80\x00"),
            (INTEGER_MAX, b"\x04\xbf\xff\xff\xff"),
            (-1, b"\x04\xff\xff\xff\xff"),
            (INTEGER_MIN, b"\x04\xc0\x80\x80\x00"),
        ];
        for (n, bytes) in cases {
            known(Amf3Value::Integer(*n), bytes);
        }
        // Outside 29 bits an integer is written as a double.
        assert_eq!(enc(&Amf3Value::Integer(1 << 28)), b"\x05\x41\xb0\x00\x00\x00\x00\x00\x00");
        assert_eq!(dec(b"\x05\x41\xb0\x00\x00\x00\x00\x00\x00").unwrap(), Amf3Value::Double(268_435_456.0));
        assert!(dec(b"\x04\x80").is_err());
    }

    #[test]
    fn containers_known_bytes() {
        known(dense(vec![Amf3Value::Integer(1), Amf3Value::Integer(2)]), b"\x09\x05\x01\x04\x01\x04\x02");
        known(
            Amf3Value::Array { associative: vec![("a".into(), Amf3Value::Null)], dense: vec![] },
            b"\x09\x01\x03a\x01\x01",
        );
        known(anonymous(&[("a", Amf3Value::Integer(1))]), b"\x0a\x0b\x01\x03a\x04\x01\x01");
        known(typed("Foo", &[("x", Amf3Value::Integer(1))]), b"\x0a\x13\x07Foo\x03x\x04\x01");
        known(
            Amf3Value::Object(Amf3Object {
                class_name: "Foo".into(),
                sealed: vec![("x".into(), Amf3Value::Null)],
                dynamic: Some(vec![("y".into(), Amf3Value::Boolean(true))]),
            }),
            b"\x0a\x1b\x07Foo\x03x\x01\x03y\x03\x01",
        );
        known(
            Amf3Value::VectorInt { fixed: false, items: vec![1, -1] },
            b"\x0d\x05\x00\x00\x00\x00\x01\xff\xff\xff\xff",
        );
        known(Amf3Value::VectorUint { fixed: true, items: vec![u32::MAX] }, b"\x0e\x03\x01\xff\xff\xff\xff");
        known(
            Amf3Value::VectorDouble { fixed: false, items: vec![1.5] },
            b"\x0f\x03\x00\x3f\xf8\x00\x00\x00\x00\x00\x00",
        );
        known(
            Amf3Value::VectorObject { fixed: false, type_name: "*".into(), items: vec![Amf3Value::Null] },
            b"\x10\x03\x00\x03*\x01",
        );
        known(
            Amf3Value::Dictionary { weak_keys: false, entries: vec![(Amf3Value::Integer(1), s("a"))] },
            b"\x11\x03\x00\x04\x01\x06\x03a",
        );
    }

    #[test]
    fn string_references() {
        // Encoder and decoder agree: the second "abc" is string reference 0.
        known(dense(vec![s("abc"), s("abc")]), b"\x09\x05\x01\x06\x07abc\x06\x00");
        // Keys share the table with values.
        known(
            dense(vec![
                anonymous(&[("a", Amf3Value::Integer(1))]),
                anonymous(&[("a", Amf3Value::Integer(2))]),
            ]),
            b"\x09\x05\x01\x0a\x0b\x01\x03a\x04\x01\x01\x0a\x0b\x01\x00\x04\x02\x01",
        );
        // The empty string is never in the table: reference 0 is "abc".
        known(dense(vec![s(""), s("abc"), s("abc")]), b"\x09\x07\x01\x06\x01\x06\x07abc\x06\x00");
        assert!(matches!(dec(b"\x06\x00"), Err(Error::Amf { offset: 1, .. })));
        // Tables live as long as the decoder.
        let mut d = Amf3Decoder::new(b"\x06\x07abc\x06\x00", AmfLimits::default());
        assert_eq!(d.next_value().unwrap(), s("abc"));
        assert_eq!(d.next_value().unwrap(), s("abc"));
        assert_eq!(d.position(), 7);
    }

    #[test]
    fn object_references_resolve_to_copies() {
        let obj = anonymous(&[("a", Amf3Value::Integer(1))]);
        // Array is object 0, the inner object is object 1.
        let bytes = b"\x09\x05\x01\x0a\x0b\x01\x03a\x04\x01\x01\x0a\x02";
        assert_eq!(dec(bytes).unwrap(), dense(vec![obj.clone(), obj]));
        // Dates, byte arrays and XML go through the object table too.
        let date = b"\x09\x05\x01\x08\x01\x3f\xf8\x00\x00\x00\x00\x00\x00\x08\x02";
        assert_eq!(dec(date).unwrap(), dense(vec![Amf3Value::Date(1.5), Amf3Value::Date(1.5)]));
        let bytes_ref = b"\x09\x05\x01\x0c\x07\x01\x02\x03\x0c\x02";
        let byte_array = Amf3Value::ByteArray(vec![1, 2, 3]);
        assert_eq!(dec(bytes_ref).unwrap(), dense(vec![byte_array.clone(), byte_array]));
        let xml_ref = b"\x09\x05\x01\x0b\x03x\x0b\x02";
        assert_eq!(
            dec(xml_ref).unwrap(),
            dense(vec![Amf3Value::Xml("x".into()), Amf3Value::Xml("x".into())])
        );
        assert!(matches!(dec(b"\x0a\x02"), Err(Error::Amf { .. })));
    }

    #[test]
    fn trait_references() {
        let bytes = b"\x09\x05\x01\x0a\x13\x07Foo\x03x\x04\x01\x0a\x01\x04\x02";
        assert_eq!(
            dec(bytes).unwrap(),
            dense(vec![
                typed("Foo", &[("x", Amf3Value::Integer(1))]),
                typed("Foo", &[("x", Amf3Value::Integer(2))])
            ])
        );
        assert!(matches!(dec(b"\x0a\x05"), Err(Error::Amf { .. })));
    }

    #[test]
    fn resolving_a_reference_leaves_the_tables_alone() {
        // Foo{x:1}; ref to it; Bar{y:2} (inline traits 1); Bar{y:3} by trait ref 1; ref object 3;
        // string ref 3 ("y"). Had the copy re-registered Foo's strings, traits or object, every
        // later index would point at the wrong entry.
        let bytes = [
            &b"\x09\x0d\x01"[..],
            b"\x0a\x13\x07Foo\x03x\x04\x01",
            b"\x0a\x02",
            b"\x0a\x13\x07Bar\x03y\x04\x02",
            b"\x0a\x05\x04\x03",
            b"\x0a\x06",
            b"\x06\x06",
        ]
        .concat();
        let foo = typed("Foo", &[("x", Amf3Value::Integer(1))]);
        let bar3 = typed("Bar", &[("y", Amf3Value::Integer(3))]);
        assert_eq!(
            dec(&bytes).unwrap(),
            dense(vec![
                foo.clone(),
                foo,
                typed("Bar", &[("y", Amf3Value::Integer(2))]),
                bar3.clone(),
                bar3,
                s("y")
            ])
        );
    }

    #[test]
    fn self_reference_is_an_error() {
        // Object 0 has a member referring to object 0.
        let err = dec(b"\x0a\x0b\x01\x03a\x0a\x00\x01").unwrap_err();
        assert!(matches!(err, Error::Amf { reason, .. } if reason.contains("cycle")));
        // An array holding itself.
        assert!(dec(b"\x09\x03\x01\x09\x00").is_err());
    }

    #[test]
    fn reference_copies_are_charged_to_the_budget() {
        // Object 1: an array of 1,000 integers; then an array of 1,000 references to it.
        let mut bomb = b"\x09\x05\x01".to_vec();
        encode_len_header(0x09, 1000, &mut bomb);
        bomb.push(0x01);
        bomb.extend(b"\x04\x01".repeat(1000));
        encode_len_header(0x09, 1000, &mut bomb);
        bomb.push(0x01);
        bomb.extend(b"\x09\x02".repeat(1000));
        assert!(bomb.len() < 10_000);
        assert!(matches!(dec(&bomb), Err(Error::LimitExceeded { what: "AMF value count", .. })));

        // A few references fit.
        let mut few = b"\x09\x07\x01\x09\x07\x01\x04\x01\x04\x02\x04\x03".to_vec();
        few.extend(b"\x09\x02\x09\x02");
        let inner = dense(vec![Amf3Value::Integer(1), Amf3Value::Integer(2), Amf3Value::Integer(3)]);
        assert_eq!(dec(&few).unwrap(), dense(vec![inner.clone(), inner.clone(), inner]));
    }

    #[test]
    fn string_and_trait_reference_copies_are_charged_by_size() {
        let long = "z".repeat(100_000);
        let mut strings = Vec::new();
        encode_len_header(0x09, 1001, &mut strings);
        strings.push(0x01);
        encode(&s(&long), &mut strings);
        strings.extend(b"\x06\x00".repeat(1000));
        assert!(matches!(dec(&strings), Err(Error::LimitExceeded { what: "AMF value count", .. })));

        // A trait whose one member name is 100 kB, then 1,000 objects using it by reference.
        let mut traits = Vec::new();
        encode_len_header(0x09, 1001, &mut traits);
        traits.extend(b"\x01\x0a\x13\x01");
        put_inline_bytes(long.as_bytes(), &mut traits);
        traits.push(0x01);
        traits.extend(b"\x0a\x01\x01".repeat(1000));
        assert!(matches!(dec(&traits), Err(Error::LimitExceeded { what: "AMF value count", .. })));
    }

    #[test]
    fn references_obey_the_depth_limit() {
        // [A, [ref A]] where A = [[null]]: the copy of A sits one level deeper than A.
        let bytes = b"\x09\x05\x01\x09\x03\x01\x09\x03\x01\x01\x09\x03\x01\x09\x02";
        let limits = |max_depth| AmfLimits { max_depth, ..AmfLimits::default() };
        assert_eq!(dec_with(bytes, limits(4)).unwrap_err(), Error::limit("AMF nesting depth", 5, 4));
        let a = dense(vec![dense(vec![Amf3Value::Null])]);
        assert_eq!(dec_with(bytes, limits(5)).unwrap(), dense(vec![a.clone(), dense(vec![a])]));
    }

    #[test]
    fn depth_bombs_are_refused_for_every_container() {
        let mut wrapper = vec![0x0a, 0x07];
        put_inline_bytes(b"flex.messaging.io.ArrayCollection", &mut wrapper);
        let bombs: [(&str, Vec<u8>); 5] = [
            ("array", b"\x09\x03\x01".repeat(10_000)),
            ("object", b"\x0a\x0b\x01\x03a".repeat(10_000)),
            ("dictionary", b"\x11\x03\x00\x01".repeat(10_000)),
            ("vector", b"\x10\x03\x00\x01".repeat(10_000)),
            ("externalizable", wrapper.repeat(10_000)),
        ];
        let lax = AmfLimits { max_depth: usize::MAX, max_values: usize::MAX, max_string_len: usize::MAX };
        for (name, bomb) in bombs {
            assert_eq!(dec(&bomb).unwrap_err(), Error::limit("AMF nesting depth", 33, 32), "{name}");
            let err = dec_with(&bomb, lax).unwrap_err();
            assert_eq!(err, Error::limit("AMF nesting depth", 129, 128), "{name}");
        }
    }

    /// Writes `marker` and an inline U29 length/count header.
    fn encode_len_header(marker: u8, len: usize, out: &mut Vec<u8>) {
        out.push(marker);
        put_inline_len(len, out);
    }

    #[test]
    fn huge_count_and_length_fields_fail_before_allocating() {
        let max = MAX_INLINE_LEN;
        let mut cases = Vec::new();
        for (marker, tail) in [
            (0x09, &b"\x01\x01"[..]),
            (0x0d, b"\x00"),
            (0x0e, b"\x00"),
            (0x0f, b"\x00"),
            (0x10, b"\x00\x01"),
            (0x11, b"\x00\x01"),
            (0x0c, b""),
            (0x06, b"abc"),
            (0x07, b""),
            (0x0b, b""),
        ] {
            let mut bytes = Vec::new();
            encode_len_header(marker, max, &mut bytes);
            bytes.extend_from_slice(tail);
            cases.push(bytes);
        }
        let mut sealed = vec![0x0a];
        put_u29(((MAX_SEALED_COUNT as u32) << 4) | 0b0011, &mut sealed);
        sealed.extend(b"\x01\x03a");
        cases.push(sealed);
        for bytes in cases {
            assert!(dec(&bytes).is_err(), "{bytes:02x?}");
        }
        let limits = AmfLimits { max_string_len: 2, ..AmfLimits::default() };
        assert_eq!(dec_with(b"\x06\x07abc", limits).unwrap_err(), Error::limit("AMF string length", 3, 2));
    }

    #[test]
    fn externalizable_wrappers_and_others() {
        let mut bytes = vec![0x0a, 0x07];
        put_inline_bytes(b"flex.messaging.io.ArrayCollection", &mut bytes);
        bytes.extend(b"\x09\x05\x01\x04\x01\x04\x02");
        let collection = typed(
            "flex.messaging.io.ArrayCollection",
            &[("source", dense(vec![Amf3Value::Integer(1), Amf3Value::Integer(2)]))],
        );
        known(collection.clone(), &bytes);
        // A second one by trait reference: traits index 0, U29 0b01.
        let mut two = b"\x09\x05\x01".to_vec();
        two.extend(&bytes);
        two.extend(b"\x0a\x01\x01");
        assert_eq!(
            dec(&two).unwrap(),
            dense(vec![
                collection,
                typed("flex.messaging.io.ArrayCollection", &[("source", Amf3Value::Null)])
            ])
        );

        let mut private = vec![0x0a, 0x07];
        put_inline_bytes(b"com.example.Thing", &mut private);
        private.extend(b"\x01");
        let err = dec(&private).unwrap_err();
        assert!(matches!(err, Error::Amf { reason, offset: 1 } if reason.contains("externalizable")));
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        assert_eq!(dec(b"\x06\x09caf\xe9").unwrap(), s("caf\u{FFFD}"));
    }

    #[test]
    fn unknown_marker_and_truncation_are_errors() {
        assert!(matches!(dec(b"\x12"), Err(Error::Amf { offset: 0, .. })));
        let full = enc(&typed("Foo", &[("x", Amf3Value::Double(2.0)), ("y", s("text"))]));
        for len in 0..full.len() {
            assert!(decode(&full[..len], AmfLimits::default()).is_err(), "prefix of {len} bytes");
        }
    }

    #[test]
    fn value_helpers() {
        let obj = Amf3Value::Object(Amf3Object {
            class_name: String::new(),
            sealed: vec![("a".into(), Amf3Value::Integer(1))],
            dynamic: Some(vec![("b".into(), Amf3Value::Double(2.5))]),
        });
        assert_eq!(obj.get("a").and_then(Amf3Value::as_f64), Some(1.0));
        assert_eq!(obj.get("b").and_then(Amf3Value::as_f64), Some(2.5));
        assert_eq!(obj.get("c"), None);
        assert_eq!(s("x").as_str(), Some("x"));
    }

    fn number() -> impl Strategy<Value = f64> {
        any::<f64>().prop_filter("NaN never compares equal", |n| !n.is_nan())
    }

    fn key() -> BoxedStrategy<String> {
        prop_oneof!["[a-z]{1,3}", any::<String>().prop_filter("empty ends a list", |k| !k.is_empty())].boxed()
    }

    fn amf3_value() -> impl Strategy<Value = Amf3Value> {
        let leaf = prop_oneof![
            Just(Amf3Value::Undefined),
            Just(Amf3Value::Null),
            any::<bool>().prop_map(Amf3Value::Boolean),
            (INTEGER_MIN..=INTEGER_MAX).prop_map(Amf3Value::Integer),
            number().prop_map(Amf3Value::Double),
            prop_oneof!["[a-c]{0,2}", any::<String>()].prop_map(Amf3Value::String),
            any::<String>().prop_map(Amf3Value::XmlDocument),
            any::<String>().prop_map(Amf3Value::Xml),
            number().prop_map(Amf3Value::Date),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(Amf3Value::ByteArray),
            (any::<bool>(), prop::collection::vec(any::<i32>(), 0..6))
                .prop_map(|(fixed, items)| Amf3Value::VectorInt { fixed, items }),
            (any::<bool>(), prop::collection::vec(any::<u32>(), 0..6))
                .prop_map(|(fixed, items)| Amf3Value::VectorUint { fixed, items }),
            (any::<bool>(), prop::collection::vec(number(), 0..6))
                .prop_map(|(fixed, items)| Amf3Value::VectorDouble { fixed, items }),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let pairs = prop::collection::vec((key(), inner.clone()), 0..5);
            let names = prop_oneof![Just(String::new()), "[A-Z][a-z]{0,3}", any::<String>()];
            prop_oneof![
                (pairs.clone(), prop::collection::vec(inner.clone(), 0..5))
                    .prop_map(|(associative, dense)| Amf3Value::Array { associative, dense }),
                (names, prop::collection::vec(("[a-c]{0,2}", inner.clone()), 0..4), prop::option::of(pairs))
                    .prop_map(|(class_name, sealed, dynamic)| Amf3Value::Object(Amf3Object {
                        class_name,
                        sealed,
                        dynamic
                    })),
                inner.clone().prop_map(|source| Amf3Value::Object(Amf3Object {
                    class_name: "flex.messaging.io.ArrayCollection".into(),
                    sealed: vec![("source".into(), source)],
                    dynamic: None,
                })),
                (any::<bool>(), "[a-z.]{0,6}", prop::collection::vec(inner.clone(), 0..5)).prop_map(
                    |(fixed, type_name, items)| Amf3Value::VectorObject { fixed, type_name, items }
                ),
                (any::<bool>(), prop::collection::vec((inner.clone(), inner), 0..4))
                    .prop_map(|(weak_keys, entries)| Amf3Value::Dictionary { weak_keys, entries }),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(value in amf3_value()) {
            let bytes = enc(&value);
            let (decoded, used) = decode(&bytes, AmfLimits::default()).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(decoded, value);
        }

        #[test]
        fn inside_amf0_round_trip(value in amf3_value()) {
            let wrapped = crate::amf::Amf0Value::Avmplus(value);
            let mut bytes = Vec::new();
            crate::amf::encode_amf0(&wrapped, &mut bytes);
            prop_assert_eq!(crate::amf::decode_amf0_all(&bytes, AmfLimits::default()).unwrap(), vec![wrapped]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, AmfLimits::default());
        }

        #[test]
        fn mutated_encodings_never_panic(
            value in amf3_value(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = enc(&value);
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            crate::amf::fuzz_decode(&bytes);
        }
    }
}
