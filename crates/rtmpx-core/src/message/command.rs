//! Command messages (types 20 and 17): name, transaction id, command object, arguments.

use bytes::BufMut;

use crate::amf::{encode_amf0, Amf0Decoder, Amf0Value, AmfLimits};
use crate::{Error, Result};

/// An AMF command message (types 20 and 17): name, transaction and arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The method called (`connect`, `publish`, `_result`, ...).
    pub name: String,
    /// Pairs a call with its `_result`/`_error`; 0 when no answer is expected.
    pub transaction_id: f64,
    /// The command object (often `Null`).
    pub object: Amf0Value,
    /// The values after the command object.
    pub args: Vec<Amf0Value>,
}

impl Command {
    /// A command with these parts.
    pub fn new(name: &str, transaction_id: f64, object: Amf0Value, args: Vec<Amf0Value>) -> Self {
        Command { name: name.to_owned(), transaction_id, object, args }
    }

    /// Parses a command body. `amf3` is true for message type 17, whose body starts with a
    /// format byte (0) and then carries AMF0 values that may switch to AMF3.
    pub fn parse(payload: &[u8], amf3: bool, limits: AmfLimits) -> Result<Self> {
        let body = if amf3 && payload.first() == Some(&0) { &payload[1..] } else { payload };
        let mut decoder = Amf0Decoder::new(body, limits);
        let name = match decoder.next_value()? {
            Some(v) => v
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Protocol("command name is not a string".into()))?,
            None => return Err(Error::Protocol("empty command message".into())),
        };
        // Some clients omit the transaction id and object on notifications: default them.
        let transaction_id = decoder.next_value()?.and_then(|v| v.as_f64()).unwrap_or(0.0);
        let object = decoder.next_value()?.unwrap_or(Amf0Value::Null);
        let mut args = Vec::new();
        while let Some(v) = decoder.next_value()? {
            args.push(v);
        }
        Ok(Command { name, transaction_id, object, args })
    }

    /// Appends the AMF0 body of this command.
    pub fn encode(&self, out: &mut impl BufMut) {
        encode_amf0(&Amf0Value::String(self.name.clone()), out);
        encode_amf0(&Amf0Value::Number(self.transaction_id), out);
        encode_amf0(&self.object, out);
        for arg in &self.args {
            encode_amf0(arg, out);
        }
    }

    /// The argument at `index` (after the command object), if present.
    pub fn arg(&self, index: usize) -> Option<&Amf0Value> {
        self.args.get(index)
    }
}
