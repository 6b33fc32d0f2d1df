//! HTTP-FLV and WebSocket-FLV players: `http://host:port/app/stream.flv` (a chunked or
//! close-delimited response body) and `ws://...` (binary messages), read as FLV tags.

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// An HTTP-FLV or WebSocket-FLV play URL.
#[derive(Debug, Clone)]
pub struct FlvUrl {
    pub websocket: bool,
    pub host: String,
    pub port: u16,
    pub app: String,
    /// The stream name (without `.flv`).
    pub stream: String,
    /// `?...` or empty.
    pub query: String,
}

impl FlvUrl {
    /// `None` when `s` is not an `http://` or `ws://` URL.
    pub fn parse(s: &str) -> Option<Result<FlvUrl, String>> {
        let (websocket, rest) = match s.split_once("://")? {
            ("http", rest) => (false, rest),
            ("ws", rest) => (true, rest),
            _ => return None,
        };
        let parse = || {
            let (authority, path) = rest.split_once('/').ok_or("no path")?;
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, port.parse::<u16>().map_err(|e| format!("port: {e}"))?),
                None => (authority, 80),
            };
            let (path, query) = match path.split_once('?') {
                Some((path, query)) => (path, format!("?{query}")),
                None => (path, String::new()),
            };
            let (app, file) = path.split_once('/').ok_or("want /app/stream.flv")?;
            let stream = file.strip_suffix(".flv").ok_or("want /app/stream.flv")?;
            Ok(FlvUrl {
                websocket,
                host: host.trim_matches(['[', ']']).to_owned(),
                port,
                app: app.to_owned(),
                stream: stream.to_owned(),
                query,
            })
        };
        Some(parse())
    }

    pub fn variant(&self) -> &'static str {
        if self.websocket {
            "ws-flv"
        } else {
            "http-flv"
        }
    }

    fn path(&self, stream: &str) -> String {
        format!("/{}/{stream}.flv{}", self.app, self.query)
    }
}

/// Plays `stream`, calling `on_bytes` with every byte count read (0 once a WebSocket is open)
/// and `on_tag` with each tag's
/// type (8 audio, 9 video, 18 data) and body. Returns when the server ends the stream.
pub async fn play(
    url: &FlvUrl,
    stream: &str,
    mut on_bytes: impl FnMut(usize),
    mut on_tag: impl FnMut(u8, &[u8]),
) -> Result<(), String> {
    let socket =
        TcpStream::connect((url.host.as_str(), url.port)).await.map_err(|e| format!("connect: {e}"))?;
    let _ = socket.set_nodelay(true);
    let mut reader = FlvReader::default();
    if url.websocket {
        let request = format!("ws://{}:{}{}", url.host, url.port, url.path(stream));
        let (mut ws, _) =
            tokio_tungstenite::client_async(request, socket).await.map_err(|e| format!("upgrade: {e}"))?;
        // Upgraded: the player is connected (a stream that is not live yet sends nothing).
        on_bytes(0);
        while let Some(message) = ws.next().await {
            match message.map_err(|e| format!("websocket: {e}"))? {
                Message::Binary(data) => {
                    on_bytes(data.len());
                    reader.feed(&data, &mut on_tag)?;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        return Ok(());
    }
    let mut socket = socket;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: rtmpx-bench\r\n\r\n",
        url.path(stream),
        url.host,
        url.port
    );
    socket.write_all(request.as_bytes()).await.map_err(|e| format!("request: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut body = Body::default();
    loop {
        let n = socket.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return if head.is_empty() { Err("closed before an answer".into()) } else { Ok(()) };
        }
        on_bytes(n);
        let mut data = &buf[..n];
        if !body.started {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if head.len() > 16 * 1024 {
                    return Err("answer head too long".into());
                }
                continue;
            };
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            if !text.starts_with("http/1.1 200") && !text.starts_with("http/1.0 200") {
                return Err(format!("answer: {}", text.lines().next().unwrap_or("")));
            }
            body.started = true;
            body.chunked = text.contains("transfer-encoding: chunked");
            let rest = head.split_off(end + 4);
            body.feed(&rest, &mut reader, &mut on_tag)?;
            continue;
        }
        body.feed(std::mem::take(&mut data), &mut reader, &mut on_tag)?;
    }
}

/// A response body, de-chunked when it is chunked.
#[derive(Default)]
struct Body {
    started: bool,
    chunked: bool,
    /// Bytes left in the current chunk (then its CRLF).
    left: usize,
    /// A chunk size line being read.
    line: Vec<u8>,
    /// CRLF bytes to skip after a chunk.
    skip: usize,
}

impl Body {
    fn feed(
        &mut self,
        mut data: &[u8],
        reader: &mut FlvReader,
        on_tag: &mut impl FnMut(u8, &[u8]),
    ) -> Result<(), String> {
        if !self.chunked {
            return reader.feed(data, on_tag);
        }
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
            } else if self.left > 0 {
                let n = self.left.min(data.len());
                reader.feed(&data[..n], on_tag)?;
                self.left -= n;
                data = &data[n..];
                if self.left == 0 {
                    self.skip = 2;
                }
            } else {
                let Some(end) = data.iter().position(|&b| b == b'\n') else {
                    self.line.extend_from_slice(data);
                    return Ok(());
                };
                self.line.extend_from_slice(&data[..end]);
                data = &data[end + 1..];
                let line = String::from_utf8_lossy(&self.line).trim().to_owned();
                self.line.clear();
                let size = line.split(';').next().unwrap_or("");
                self.left =
                    usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
                if self.left == 0 {
                    return Err("the server ended the stream".into());
                }
            }
        }
        Ok(())
    }
}

/// FLV tags from a byte stream in arbitrary pieces.
#[derive(Default)]
struct FlvReader {
    pending: Vec<u8>,
    header_seen: bool,
}

impl FlvReader {
    fn feed(&mut self, data: &[u8], on_tag: &mut impl FnMut(u8, &[u8])) -> Result<(), String> {
        self.pending.extend_from_slice(data);
        let mut at = 0;
        if !self.header_seen {
            if self.pending.len() < 13 {
                return Ok(());
            }
            if !self.pending.starts_with(b"FLV") {
                return Err("not an FLV stream".into());
            }
            self.header_seen = true;
            at = 13;
        }
        while self.pending.len() - at >= 11 {
            let h = &self.pending[at..at + 11];
            let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
            if self.pending.len() - at < 11 + size + 4 {
                break;
            }
            on_tag(h[0] & 0x1f, &self.pending[at + 11..at + 11 + size]);
            at += 11 + size + 4;
        }
        self.pending.drain(..at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = FlvUrl::parse("ws://127.0.0.1:1935/live/x.flv?key=k").unwrap().unwrap();
        assert!(url.websocket);
        assert_eq!((url.host.as_str(), url.port, url.app.as_str()), ("127.0.0.1", 1935, "live"));
        assert_eq!(url.path("x-1"), "/live/x-1.flv?key=k");
        assert!(FlvUrl::parse("rtmp://h/live/x").is_none());
        assert!(FlvUrl::parse("http://h/live/x").unwrap().is_err());
    }

    #[test]
    fn chunked_flv_in_odd_pieces() {
        let mut flv = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        for (kind, body) in [(9u8, &b"video"[..]), (8, b"au")] {
            flv.extend_from_slice(&[kind, 0, 0, body.len() as u8, 0, 0, 0, 0, 0, 0, 0]);
            flv.extend_from_slice(body);
            flv.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
        }
        let mut chunked = Vec::new();
        for piece in flv.chunks(7) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        let mut body = Body { started: true, chunked: true, ..Body::default() };
        let mut reader = FlvReader::default();
        let mut tags = Vec::new();
        for piece in chunked.chunks(3) {
            body.feed(piece, &mut reader, &mut |kind, data| tags.push((kind, data.to_vec()))).unwrap();
        }
        assert_eq!(tags, [(9, b"video".to_vec()), (8, b"au".to_vec())]);
    }
}
