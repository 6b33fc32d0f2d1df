//! AMF0 and AMF3: the value types, an encoder and a bounded decoder.
//!
//! Commands (message types 20 and 17) and data messages (18 and 15) are sequences of AMF0 values;
//! an AMF0 value may switch to AMF3 with the `avmplus-object` marker (0x11).

mod amf0;
mod amf3;

pub use amf0::{decode_all as decode_amf0_all, encode as encode_amf0, Amf0Decoder};
pub use amf3::{decode as decode_amf3, encode as encode_amf3, Amf3Decoder};

/// Ordered key/value pairs (anonymous objects, ECMA arrays): order is kept because some
/// clients read properties in the order they were written.
pub type Properties = Vec<(String, Amf0Value)>;

/// Bounds every decoder obeys, so hostile input cannot allocate or recurse without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmfLimits {
    /// Nesting of objects/arrays (a top-level value is depth 1).
    pub max_depth: usize,
    /// Total number of values (including nested ones and keys) decoded from one buffer.
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
    Number(f64),
    Boolean(bool),
    /// Short (0x02) or long (0x0C) string; the encoder picks the form by length.
    String(String),
    Object(Properties),
    Null,
    Undefined,
    /// Index into the objects decoded so far in this buffer (0x07).
    Reference(u16),
    /// Associative array (0x08); the count field is advisory and not trusted.
    EcmaArray(Properties),
    StrictArray(Vec<Amf0Value>),
    /// Milliseconds since the epoch and the (ignored by everyone) time-zone field.
    Date {
        millis: f64,
        time_zone: i16,
    },
    Unsupported,
    XmlDocument(String),
    TypedObject {
        class_name: String,
        properties: Properties,
    },
    Avmplus(Amf3Value),
}

/// An AMF3 value. References (strings, objects, traits) are resolved by the decoder and
/// re-created by the encoder for repeated strings; the tree itself has no references.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf3Value {
    Undefined,
    Null,
    Boolean(bool),
    /// 29-bit signed integer.
    Integer(i32),
    Double(f64),
    String(String),
    XmlDocument(String),
    Date(f64),
    Array {
        associative: Vec<(String, Amf3Value)>,
        dense: Vec<Amf3Value>,
    },
    Object(Amf3Object),
    Xml(String),
    ByteArray(Vec<u8>),
    VectorInt {
        fixed: bool,
        items: Vec<i32>,
    },
    VectorUint {
        fixed: bool,
        items: Vec<u32>,
    },
    VectorDouble {
        fixed: bool,
        items: Vec<f64>,
    },
    VectorObject {
        fixed: bool,
        type_name: String,
        items: Vec<Amf3Value>,
    },
    Dictionary {
        weak_keys: bool,
        entries: Vec<(Amf3Value, Amf3Value)>,
    },
}

/// An AMF3 object: sealed members in trait order, then dynamic members.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Amf3Object {
    pub class_name: String,
    pub sealed: Vec<(String, Amf3Value)>,
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

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Amf0Value::Boolean(b) => Some(*b),
            Amf0Value::Avmplus(Amf3Value::Boolean(b)) => Some(*b),
            _ => None,
        }
    }

    /// A property of an object, ECMA array or typed object (AMF0), or of an AMF3 object.
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
