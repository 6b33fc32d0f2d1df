//! AMF3 encoder and bounded decoder (with string, object and trait reference tables).

use std::collections::HashMap;

use bytes::BufMut;

use super::{truncate_utf8, Amf3Object, Amf3Value, AmfLimits, Budget, Cursor, COPY_BYTES_PER_VALUE};
use crate::{Error, Result};

/// The AMF3 type markers.
mod marker {
    pub const UNDEFINED: u8 = 0x00;
    pub const NULL: u8 = 0x01;
    pub const FALSE: u8 = 0x02;
    pub const TRUE: u8 = 0x03;
    pub const INTEGER: u8 = 0x04;
    pub const DOUBLE: u8 = 0x05;
    pub const STRING: u8 = 0x06;
    pub const XML_DOCUMENT: u8 = 0x07;
    pub const DATE: u8 = 0x08;
    pub const ARRAY: u8 = 0x09;
    pub const OBJECT: u8 = 0x0A;
    pub const XML: u8 = 0x0B;
    pub const BYTE_ARRAY: u8 = 0x0C;
    pub const VECTOR_INT: u8 = 0x0D;
    pub const VECTOR_UINT: u8 = 0x0E;
    pub const VECTOR_DOUBLE: u8 = 0x0F;
    pub const VECTOR_OBJECT: u8 = 0x10;
    pub const DICTIONARY: u8 = 0x11;
}

/// Largest value of a U29 (29-bit variable-length unsigned integer).
const U29_MAX: u32 = (1 << 29) - 1;
/// Range of the Integer type (signed 29-bit); other integers are written as doubles.
pub const INTEGER_MIN: i32 = -(1 << 28);
pub const INTEGER_MAX: i32 = (1 << 28) - 1;
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

    pub fn next_value(&mut self) -> Result<Amf3Value> {
        self.read_value(self.top_depth)
    }

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
