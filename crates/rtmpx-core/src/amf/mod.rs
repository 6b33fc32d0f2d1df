//! AMF0 and AMF3: the value types, an encoder and a bounded decoder.
//!
//! Commands (message types 20 and 17) and data messages (18 and 15) are sequences of AMF0 values;
//! an AMF0 value may switch to AMF3 with the `avmplus-object` marker (0x11).

mod amf0;
mod amf3;

pub use amf0::{decode_all as decode_amf0_all, encode as encode_amf0, Amf0Decoder};
pub use amf3::{decode as decode_amf3, encode as encode_amf3, Amf3Decoder, EXTERNALIZABLE_WRAPPERS};

use crate::{Error, Result};

/// Nesting beyond this is refused whatever `max_depth` says: the decoders recurse, and this
/// keeps them inside a 2 MiB thread stack even in debug builds (about 5 KiB per level there).
pub const DEPTH_CEILING: usize = 128;

/// Values resolved through a reference are copies; each such copy of string or byte data is
/// charged one extra value per this many bytes, so references cannot multiply memory unboundedly.
pub const COPY_BYTES_PER_VALUE: usize = 64;

/// Runs both decoders over arbitrary bytes and ignores the outcome (the body of a fuzz target:
/// it must never panic, hang or allocate without bound).
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub(crate) fn fuzz_decode(data: &[u8]) {
    let limits = AmfLimits::default();
    let _ = decode_amf0_all(data, limits);
    let mut amf3 = Amf3Decoder::new(data, limits);
    while amf3.position() < data.len() && amf3.next_value().is_ok() {}
}

/// Ordered key/value pairs (anonymous objects, ECMA arrays): order is kept because some
/// clients read properties in the order they were written.
pub type Properties = Vec<(String, Amf0Value)>;

/// Bounds every decoder obeys, so hostile input cannot allocate or recurse without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmfLimits {
    /// Nesting of objects/arrays (a top-level value is depth 1); never more than [`DEPTH_CEILING`].
    pub max_depth: usize,
    /// Total number of values (including nested ones and keys) decoded from one buffer. Values
    /// copied by resolving AMF3 references count again (see [`COPY_BYTES_PER_VALUE`]).
    pub max_values: usize,
    /// Length of any one string or byte array, in bytes.
    pub max_string_len: usize,
}

impl Default for AmfLimits {
    fn default() -> Self {
        AmfLimits { max_depth: 32, max_values: 65_536, max_string_len: 1 << 20 }
    }
}

/// An AMF0 value. `Avmplus` carries a value written in AMF3 after the 0x11 switch marker.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    /// A double (0x00); AMF0 has no integers.
    Number(f64),
    /// 0x01.
    Boolean(bool),
    /// Short (0x02) or long (0x0C) string; the encoder picks the form by length.
    String(String),
    /// Anonymous object (0x03), properties in wire order.
    Object(Properties),
    /// 0x05.
    Null,
    /// 0x06.
    Undefined,
    /// Index into the objects decoded so far in this buffer (0x07).
    Reference(u16),
    /// Associative array (0x08); the count field is advisory and not trusted.
    EcmaArray(Properties),
    /// Dense array (0x0A).
    StrictArray(Vec<Amf0Value>),
    /// Milliseconds since the epoch and the (ignored by everyone) time-zone field.
    Date {
        /// Milliseconds since the Unix epoch.
        millis: f64,
        /// Minutes from UTC; written as 0 by everyone.
        time_zone: i16,
    },
    /// 0x0D: a value the sender could not serialise.
    Unsupported,
    /// XML as text (0x0F).
    XmlDocument(String),
    /// Object with a registered class name (0x10).
    TypedObject {
        /// The registered ActionScript class.
        class_name: String,
        /// Members in wire order.
        properties: Properties,
    },
    /// An AMF3 value behind the 0x11 switch marker.
    Avmplus(Amf3Value),
}

/// An AMF3 value. References (strings, objects, traits) are resolved by the decoder and
/// re-created by the encoder for repeated strings; the tree itself has no references.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf3Value {
    /// 0x00.
    Undefined,
    /// 0x01.
    Null,
    /// False (0x02) or true (0x03).
    Boolean(bool),
    /// 29-bit signed integer.
    Integer(i32),
    /// 0x05.
    Double(f64),
    /// 0x06.
    String(String),
    /// Legacy XML document (0x07).
    XmlDocument(String),
    /// Milliseconds since the Unix epoch (0x08).
    Date(f64),
    /// Array (0x09): an associative part and a dense part.
    Array {
        /// Named members, in wire order.
        associative: Vec<(String, Amf3Value)>,
        /// Indexed members.
        dense: Vec<Amf3Value>,
    },
    /// 0x0A.
    Object(Amf3Object),
    /// E4X XML (0x0B).
    Xml(String),
    /// 0x0C.
    ByteArray(Vec<u8>),
    /// Vector of int (0x0D).
    VectorInt {
        /// Whether the vector has a fixed length.
        fixed: bool,
        /// The elements.
        items: Vec<i32>,
    },
    /// Vector of uint (0x0E).
    VectorUint {
        /// Whether the vector has a fixed length.
        fixed: bool,
        /// The elements.
        items: Vec<u32>,
    },
    /// Vector of Number (0x0F).
    VectorDouble {
        /// Whether the vector has a fixed length.
        fixed: bool,
        /// The elements.
        items: Vec<f64>,
    },
    /// Vector of objects of one type (0x10).
    VectorObject {
        /// Whether the vector has a fixed length.
        fixed: bool,
        /// The element type's class name ("*" for any).
        type_name: String,
        /// The elements.
        items: Vec<Amf3Value>,
    },
    /// Dictionary (0x11): keys may be any value.
    Dictionary {
        /// Whether the sender's keys were weakly referenced (no meaning on the wire).
        weak_keys: bool,
        /// Key/value pairs in wire order.
        entries: Vec<(Amf3Value, Amf3Value)>,
    },
}

/// An AMF3 object: sealed members in trait order, then dynamic members.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Amf3Object {
    /// Empty for an anonymous object.
    pub class_name: String,
    /// Members the traits declare.
    pub sealed: Vec<(String, Amf3Value)>,
    /// Members of a dynamic object (`None`: the traits are not dynamic).
    pub dynamic: Option<Vec<(String, Amf3Value)>>,
}

impl Amf0Value {
    /// The string inside `String`, `XmlDocument` or an AMF3 string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) | Amf0Value::XmlDocument(s) => Some(s),
            Amf0Value::Avmplus(Amf3Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The number inside `Number`, or an AMF3 integer/double.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            Amf0Value::Avmplus(Amf3Value::Integer(i)) => Some(f64::from(*i)),
            Amf0Value::Avmplus(Amf3Value::Double(d)) => Some(*d),
            _ => None,
        }
    }

    /// The boolean inside `Boolean` or an AMF3 boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Amf0Value::Boolean(b) => Some(*b),
            Amf0Value::Avmplus(Amf3Value::Boolean(b)) => Some(*b),
            _ => None,
        }
    }

    /// A property of an object, ECMA array or typed object (AMF0). For a value behind the AMF3
    /// switch, match `Avmplus` and use [`Amf3Value::get`].
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        match self {
            Amf0Value::Object(p) | Amf0Value::EcmaArray(p) => {
                p.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            Amf0Value::TypedObject { properties, .. } => {
                properties.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// The properties of an object-like value (object, ECMA array, typed object).
    pub fn properties(&self) -> Option<&Properties> {
        match self {
            Amf0Value::Object(p) | Amf0Value::EcmaArray(p) => Some(p),
            Amf0Value::TypedObject { properties, .. } => Some(properties),
            _ => None,
        }
    }

    /// Shorthand for building objects: `Amf0Value::object([("code", "x".into())])`.
    pub fn object<K: Into<String>>(props: impl IntoIterator<Item = (K, Amf0Value)>) -> Self {
        Amf0Value::Object(props.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl From<&str> for Amf0Value {
    fn from(s: &str) -> Self {
        Amf0Value::String(s.to_owned())
    }
}
impl From<String> for Amf0Value {
    fn from(s: String) -> Self {
        Amf0Value::String(s)
    }
}
impl From<f64> for Amf0Value {
    fn from(n: f64) -> Self {
        Amf0Value::Number(n)
    }
}
impl From<bool> for Amf0Value {
    fn from(b: bool) -> Self {
        Amf0Value::Boolean(b)
    }
}

impl Amf3Value {
    /// The string inside `String`, `XmlDocument` or `Xml`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf3Value::String(s) | Amf3Value::XmlDocument(s) | Amf3Value::Xml(s) => Some(s),
            _ => None,
        }
    }

    /// The number inside `Integer` or `Double`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf3Value::Integer(i) => Some(f64::from(*i)),
            Amf3Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    /// A member of an object (sealed first, then dynamic) or a key of an array's associative part.
    pub fn get(&self, key: &str) -> Option<&Amf3Value> {
        fn find<'v>(pairs: &'v [(String, Amf3Value)], key: &str) -> Option<&'v Amf3Value> {
            pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
        }
        match self {
            Amf3Value::Object(o) => {
                find(&o.sealed, key).or_else(|| o.dynamic.as_deref().and_then(|d| find(d, key)))
            }
            Amf3Value::Array { associative, .. } => find(associative, key),
            _ => None,
        }
    }
}

/// Bounds-checked big-endian reads over the input buffer.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::amf("data ends in the middle of a value", self.pos));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn i16(&mut self) -> Result<i16> {
        self.array().map(i16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32> {
        self.array().map(i32::from_be_bytes)
    }

    fn f64(&mut self) -> Result<f64> {
        self.array().map(f64::from_be_bytes)
    }

    /// `len` bytes as text; invalid UTF-8 (Latin-1 from some clients) is replaced, not refused.
    fn text(&mut self, len: usize, budget: &Budget) -> Result<String> {
        budget.check_len(len)?;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

/// What one buffer may still cost: shared by an AMF0 decoder and the AMF3 decoders it starts.
#[derive(Clone, Copy)]
struct Budget {
    limits: AmfLimits,
    values: usize,
}

impl Budget {
    fn new(limits: AmfLimits) -> Self {
        Budget { limits, values: 0 }
    }

    fn charge(&mut self, n: usize) -> Result<()> {
        self.values = self.values.saturating_add(n);
        if self.values > self.limits.max_values {
            return Err(Error::limit("AMF value count", self.values, self.limits.max_values));
        }
        Ok(())
    }

    /// Refuses a count field before anything is reserved for it (each item costs one value).
    fn check_room(&self, items: usize) -> Result<()> {
        let wanted = self.values.saturating_add(items);
        if wanted > self.limits.max_values {
            return Err(Error::limit("AMF value count", wanted, self.limits.max_values));
        }
        Ok(())
    }

    fn check_depth(&self, depth: usize) -> Result<()> {
        let max = self.limits.max_depth.min(DEPTH_CEILING);
        if depth > max {
            return Err(Error::limit("AMF nesting depth", depth, max));
        }
        Ok(())
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.limits.max_string_len {
            return Err(Error::limit("AMF string length", len, self.limits.max_string_len));
        }
        Ok(())
    }
}

/// The longest prefix of `s` that fits in `max` bytes without splitting a character (the
/// encoders cannot fail, so a string too long for its length field is cut).
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
