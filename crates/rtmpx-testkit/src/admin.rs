//! The gateway's admin listener: its address and plain HTTP/1.1 requests to it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::Gateway;

/// The admin listener's address, from the gateway's start-up log.
pub fn admin_addr(gw: &Gateway) -> SocketAddr {
    let logs = gw.logs();
    let at =
        logs.find("admin listener on ").unwrap_or_else(|| panic!("no admin listener announced:\n{logs}"));
    let rest = &logs[at + "admin listener on ".len()..];
    rest.split_whitespace().next().unwrap().trim_end_matches(':').parse().unwrap()
}

pub struct HttpReply {
    pub status: u16,
    /// Lower-cased.
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> HttpReply {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting to admin");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("reading the admin reply");
    let raw = String::from_utf8(raw).expect("UTF-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    HttpReply { status, headers: head.to_ascii_lowercase(), body: body.to_owned() }
}
