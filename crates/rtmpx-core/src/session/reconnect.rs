//! Enhanced RTMP's reconnect request: the server asks a client to move to another (or the same)
//! server, the client connects there and then leaves (veovera enhanced-rtmp v2, "Reconnect
//! Request"). Only clients that set the Reconnect bit of `capsEx` in `connect` get it.

use crate::amf::Amf0Value;

/// The `capsEx` bit a client sets in `connect` when it follows reconnect requests.
pub const CAPS_EX_RECONNECT: u32 = 0x01;

/// The `onStatus` code of the request.
pub const RECONNECT_REQUEST_CODE: &str = "NetConnection.Connect.ReconnectRequest";

/// `onStatus` (transaction 0, null command object) with this in the info object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectRequest {
    /// Where to reconnect: absolute (`rtmp://host/app`) or relative to the current tcUrl
    /// (`//host/app`, `/app`). `None`: the current tcUrl.
    pub tc_url: Option<String>,
    /// Human-readable reason.
    pub description: String,
}

impl ReconnectRequest {
    /// The info object: `code`, `level` "status", `description`, and `tcUrl` when set.
    pub fn info(&self) -> Amf0Value {
        let mut props = vec![
            ("code", Amf0Value::from(RECONNECT_REQUEST_CODE)),
            ("level", super::StatusLevel::Status.into()),
            ("description", Amf0Value::from(self.description.as_str())),
        ];
        if let Some(tc_url) = &self.tc_url {
            props.push(("tcUrl", Amf0Value::from(tc_url.as_str())));
        }
        Amf0Value::object(props)
    }

    /// Reads a request from an `onStatus` info object; `None` for any other status. An empty
    /// `tcUrl` means the current one.
    pub fn from_info(info: &Amf0Value) -> Option<Self> {
        let text = |key: &str| info.get(key).and_then(Amf0Value::as_str);
        if text("code")? != RECONNECT_REQUEST_CODE {
            return None;
        }
        Some(ReconnectRequest {
            tc_url: text("tcUrl").filter(|url| !url.is_empty()).map(str::to_owned),
            description: text("description").unwrap_or_default().to_owned(),
        })
    }
}

/// The `capsEx` number of a `connect` command object (0 when absent or not a number).
pub fn caps_ex(properties: &[(String, Amf0Value)]) -> u32 {
    properties
        .iter()
        .find(|(key, _)| key == "capsEx")
        .and_then(|(_, value)| value.as_f64())
        .filter(|n| n.is_finite() && *n >= 0.0 && *n <= f64::from(u32::MAX))
        .map_or(0, |n| n as u32)
}
