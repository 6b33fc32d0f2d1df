//! The RTMPT client: RTMP bytes carried by HTTP/1.1 POST polling on one keep-alive connection.
//!
//! `POST /open/1` returns a session id; then each `POST /send/<id>/<seq>` carries what the
//! RTMP side wrote, and `POST /idle/<id>/<seq>` asks for news when there is nothing to send.
//! Every answer is one polling-interval byte followed by the server's queued RTMP bytes.
//! `POST /close/<id>/<seq>` ends the session.
//!
//! A background task runs the polling loop; the caller gets one end of an in-memory duplex
//! pipe, so the tunnel is a plain `AsyncRead + AsyncWrite`. The pipe's capacity bounds what is
//! buffered in each direction.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

use super::{BoxedStream, Connector};
use crate::error::{Error, Result};

/// Bytes buffered in each direction between the caller and the polling task.
const PIPE_CAPACITY: usize = 256 * 1024;
/// Largest body of one `send` request.
const MAX_SEND: usize = 64 * 1024;
/// Largest response head and body we accept.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;
/// First idle poll delay; it doubles while the server has nothing, up to the configured maximum.
const MIN_POLL: Duration = Duration::from_millis(5);

/// A duplex stream over an RTMPT session. Dropping it (or shutting down its write side) sends
/// `/close` once everything written has been sent.
pub struct HttpTunnel {
    pipe: DuplexStream,
    failure: Arc<Mutex<Option<String>>>,
    session_id: String,
}

impl HttpTunnel {
    pub(crate) async fn open(connector: Connector, host: String, max_poll: Duration) -> Result<Self> {
        let mut http =
            HttpClient { connector, host, stream: None, buf: BytesMut::new(), request: Vec::new() };
        let body = http.post("/open/1", &[0]).await.map_err(Error::io("opening the RTMPT session"))?;
        let session_id = parse_session_id(&body).ok_or_else(|| Error::Io {
            context: "opening the RTMPT session",
            source: io::Error::new(io::ErrorKind::InvalidData, "the server sent no usable session id"),
        })?;
        let (pipe, far_end) = tokio::io::duplex(PIPE_CAPACITY);
        let failure = Arc::new(Mutex::new(None));
        let poller = Poller { http, id: session_id.clone(), seq: 0, pipe: far_end, max_poll };
        let task_failure = failure.clone();
        tokio::spawn(async move {
            if let Err(e) = poller.run().await {
                *task_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        });
        Ok(HttpTunnel { pipe, failure, session_id })
    }

    /// The id the server gave this tunnel session.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The polling task's error, once it has stopped on one.
    fn failure(&self) -> Option<io::Error> {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.as_ref().map(|msg| io::Error::other(format!("RTMPT tunnel: {msg}")))
    }
}

/// The session id is the body up to its trailing white space (servers end it with `\n`).
fn parse_session_id(body: &[u8]) -> Option<String> {
    let id = std::str::from_utf8(body).ok()?.trim_end();
    let usable = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    usable.then(|| id.to_owned())
}

impl AsyncRead for HttpTunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.pipe).poll_read(cx, buf) {
            // End of the pipe: a clean close, unless the polling task failed.
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                Poll::Ready(self.failure().map_or(Ok(()), Err))
            }
            other => other,
        }
    }
}

impl AsyncWrite for HttpTunnel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.pipe).poll_write(cx, data) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.failure().unwrap_or(e))),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_shutdown(cx)
    }
}

/// What the caller has written, looked at without waiting.
enum Outgoing {
    Data(usize),
    Nothing,
    Closed,
}

struct Poller {
    http: HttpClient,
    id: String,
    seq: u64,
    pipe: DuplexStream,
    max_poll: Duration,
}

impl Poller {
    async fn run(mut self) -> io::Result<()> {
        let mut out = vec![0u8; MAX_SEND];
        let mut delay = MIN_POLL;
        let mut poll_at_once = false;
        loop {
            let mut outgoing = self.take_now(&mut out)?;
            if matches!(outgoing, Outgoing::Nothing) && !poll_at_once {
                outgoing = tokio::select! {
                    read = self.pipe.read(&mut out) => match read? {
                        0 => Outgoing::Closed,
                        n => Outgoing::Data(n),
                    },
                    _ = tokio::time::sleep(delay) => Outgoing::Nothing,
                };
            }
            let response = match outgoing {
                Outgoing::Closed => return self.close().await,
                Outgoing::Data(n) => self.request("send", &out[..n]).await?,
                Outgoing::Nothing => self.request("idle", &[0]).await?,
            };
            // The first byte is the server's polling-interval hint; like ffmpeg we keep our own pace.
            let data = response.get(1..).unwrap_or_default();
            if !data.is_empty() && self.pipe.write_all(data).await.is_err() {
                // The caller dropped the stream: nobody reads any more.
                return self.close().await;
            }
            poll_at_once = !data.is_empty();
            delay = if poll_at_once || matches!(outgoing, Outgoing::Data(_)) {
                MIN_POLL
            } else {
                (delay * 2).min(self.max_poll.max(MIN_POLL))
            };
        }
    }

    fn take_now(&mut self, out: &mut [u8]) -> io::Result<Outgoing> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = ReadBuf::new(out);
        match Pin::new(&mut self.pipe).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Ok(Outgoing::Closed),
            Poll::Ready(Ok(())) => Ok(Outgoing::Data(buf.filled().len())),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(Outgoing::Nothing),
        }
    }

    async fn request(&mut self, command: &str, body: &[u8]) -> io::Result<Bytes> {
        let path = format!("/{command}/{}/{}", self.id, self.seq);
        self.seq += 1;
        self.http.post(&path, body).await
    }

    async fn close(&mut self) -> io::Result<()> {
        // Best effort: the server also times idle sessions out.
        let _ = self.request("close", &[0]).await;
        Ok(())
    }
}

/// A minimal HTTP/1.1 client: POST with Content-Length on one keep-alive connection, reopened
/// when the server closes it.
struct HttpClient {
    connector: Connector,
    /// The Host header value.
    host: String,
    stream: Option<BoxedStream>,
    /// Received bytes not yet consumed.
    buf: BytesMut,
    request: Vec<u8>,
}

impl HttpClient {
    async fn post(&mut self, path: &str, body: &[u8]) -> io::Result<Bytes> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                self.buf.clear();
                self.connector.connect().await?
            }
        };
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rtmpx-client\r\nContent-Type: application/x-fcs\r\n\
             Cache-Control: no-cache\r\nConnection: Keep-Alive\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        stream.write_all(&self.request).await?;
        stream.flush().await?;

        let head = read_head(&mut stream, &mut self.buf).await?;
        if head.status != 200 {
            return Err(io::Error::other(format!("{path}: HTTP status {}", head.status)));
        }
        let body = match head.content_length {
            Some(len) => {
                fill(&mut stream, &mut self.buf, len).await?;
                self.buf.split_to(len).freeze()
            }
            None if head.close => {
                // No length: the body runs to the end of the connection.
                while read_more(&mut stream, &mut self.buf).await? > 0 {
                    if self.buf.len() > MAX_BODY {
                        return Err(too_large("response body"));
                    }
                }
                self.buf.split().freeze()
            }
            None => return Err(invalid("a keep-alive response without Content-Length")),
        };
        if !head.close {
            self.stream = Some(stream);
        }
        Ok(body)
    }
}

struct ResponseHead {
    status: u16,
    content_length: Option<usize>,
    /// The server closes the connection after this response.
    close: bool,
}

async fn read_head(stream: &mut BoxedStream, buf: &mut BytesMut) -> io::Result<ResponseHead> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf).map_err(|e| invalid(&format!("bad HTTP response: {e}")))? {
            httparse::Status::Complete(head_len) => {
                let status = response.code.unwrap_or(0);
                let mut head =
                    ResponseHead { status, content_length: None, close: response.version == Some(0) };
                for h in response.headers.iter() {
                    let value = std::str::from_utf8(h.value).unwrap_or("").trim();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let len: usize = value.parse().map_err(|_| invalid("bad Content-Length"))?;
                        if len > MAX_BODY {
                            return Err(too_large("response body"));
                        }
                        head.content_length = Some(len);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(invalid("chunked responses are not supported by RTMPT"));
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        if value.eq_ignore_ascii_case("close") {
                            head.close = true;
                        } else if value.eq_ignore_ascii_case("keep-alive") {
                            head.close = false;
                        }
                    }
                }
                buf.advance(head_len);
                return Ok(head);
            }
            httparse::Status::Partial => {
                if buf.len() > MAX_HEAD {
                    return Err(too_large("response head"));
                }
                if read_more(stream, buf).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before a response",
                    ));
                }
            }
        }
    }
}

/// Reads until `buf` holds at least `len` bytes.
async fn fill(stream: &mut BoxedStream, buf: &mut BytesMut, len: usize) -> io::Result<()> {
    buf.reserve(len.saturating_sub(buf.len()));
    while buf.len() < len {
        if read_more(stream, buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a response"));
        }
    }
    Ok(())
}

async fn read_more(stream: &mut BoxedStream, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(16 * 1024);
    stream.read_buf(buf).await
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn too_large(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what} too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        assert_eq!(parse_session_id(b"1234abcd\n").as_deref(), Some("1234abcd"));
        assert_eq!(parse_session_id(b"x\r\n").as_deref(), Some("x"));
        assert_eq!(parse_session_id(b"\n"), None);
        assert_eq!(parse_session_id(b"a/b\n"), None);
        assert_eq!(parse_session_id(b"a b\n"), None);
        assert_eq!(parse_session_id(&[0xff, b'\n']), None);
    }
}
