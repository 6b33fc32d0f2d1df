//! HTTP-FLV players served outside hyper: a connection whose first request is a plain
//! `GET /app/stream.flv` gets its answer head and body written here, over the raw stream, so an
//! idle player keeps no HTTP connection state (hyper's read and write buffers) for its lifetime.
//! Everything else on the port (RTMPT, WebSocket, HEAD, OPTIONS, bad heads) stays with hyper.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::debug;

use super::http::{decide, Answer, FlvBody, FlvConn};
use super::FlvSession;
use crate::error::Error;
use crate::session::{SessionContext, Transport};

/// Headers a player request may carry before it is left to hyper (which takes 100).
const MAX_HEADERS: usize = 64;

/// The request in `head` when it is one this module answers: a complete HTTP/1.x `GET` of a
/// `.flv` path without a WebSocket upgrade. `None` leaves the connection to hyper.
pub fn player_request(head: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(_))) || parsed.method != Some("GET") {
        return None;
    }
    let path = parsed.path?;
    super::route(path.split_once('?').map_or(path, |(p, _)| p))?;
    let version = if parsed.version? == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut request = Request::builder().method(Method::GET).uri(path).version(version).body(()).ok()?;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        request.headers_mut().append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let upgrade = request.headers().contains_key(header::UPGRADE);
    (!upgrade).then_some(request)
}

/// Answers `request` (read from `io`) and plays the stream until either side ends it.
pub async fn serve<S>(
    request: Request<()>,
    mut io: S,
    peer: SocketAddr,
    transport: Transport,
    ctx: Arc<SessionContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write_timeout = ctx.config().timeouts.write;
    let chunked = request.version() == Version::HTTP_11;
    let conn = FlvConn { ctx, peer, transport, write_timed_out: Arc::default(), upgrade: Default::default() };
    let answer = {
        let mut request = request;
        // Boxed: authorisation's futures do not stay in an idle player's task.
        Box::pin(decide(&mut request, &conn)).await
    };
    drop(conn);
    let (response, mut session) = match answer {
        Answer::Done(response) => {
            let head = head_of(&response, "Content-Length: 0\r\n");
            let _ = timeout(write_timeout, async {
                io.write_all(&head).await?;
                io.shutdown().await
            })
            .await;
            return;
        }
        Answer::Play(response, session) => (response, session),
    };
    let framing = if chunked { "Transfer-Encoding: chunked\r\n" } else { "" };
    let mut pieces = VecDeque::from([Bytes::from(head_of(&response, framing))]);
    drop(response);
    let clean = play(&mut io, &mut session, &mut pieces, chunked).await;
    if clean {
        // The body ends like hyper ends it: the last chunk, then the close.
        let _ = timeout(write_timeout, async {
            if chunked {
                io.write_all(b"0\r\n\r\n").await?;
            }
            io.shutdown().await
        })
        .await;
    }
}

/// Writes `pieces` (the answer head first), then the player's tags as they come. Returns false
/// when the connection failed (nothing more can be written).
async fn play<S>(io: &mut S, session: &mut FlvSession, pieces: &mut VecDeque<Bytes>, chunked: bool) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ctx = session.context().clone();
    let write_timeout = ctx.config().timeouts.write;
    let entry = session.entry();
    let mut shutdown = ctx.shutdown_signal();
    // A player sends nothing after its request: the first read shows a close; after data, reads
    // stop and the client's further bytes wait in the kernel (never buffered here).
    let mut reading = true;
    let mut probe = [0u8; 64];
    let mut live = true;
    loop {
        if !pieces.is_empty() {
            match timeout(write_timeout, write_pieces(io, pieces)).await {
                Ok(Ok(())) => {}
                // A player that goes away is a normal end (as with hyper): only a stall is logged.
                Ok(Err(e)) => {
                    debug!(session = session.id(), "http-flv write: {e}");
                    return false;
                }
                Err(_) => {
                    session.end(Error::Timeout("the client stopped reading"));
                    return false;
                }
            }
        }
        if !live {
            return true;
        }
        let wait_deadline = session.wait_deadline();
        let Some(player) = session.player() else { return true };
        tokio::select! {
            () = crate::fan_out::sleep_until_opt(wait_deadline.map(Into::into)) => {
                session.wait_expired();
                return true;
            }
            why = entry.kicked() => {
                session.end(Error::Kicked(why));
                return true;
            }
            _ = super::shutting_down(&mut shutdown) => {
                session.end(Error::Kicked("gateway shutting down"));
                return true;
            }
            read = io.read(&mut probe), if reading => match read {
                Ok(0) => return false,
                Ok(n) => {
                    session.add_in(n);
                    reading = false;
                }
                Err(e) => {
                    debug!(session = session.id(), "http-flv read: {e}");
                    return false;
                }
            },
            _ = player.changed() => {
                let mut tags = VecDeque::new();
                live = session.take_queued(&mut tags);
                let length: usize = tags.iter().map(Bytes::len).sum();
                if length > 0 {
                    if chunked {
                        pieces.push_back(Bytes::from(format!("{length:X}\r\n")));
                    }
                    pieces.extend(tags);
                    if chunked {
                        pieces.push_back(Bytes::from_static(b"\r\n"));
                    }
                }
            }
        }
    }
}

/// Writes every piece, gathered into few system calls, and flushes (TLS holds records back).
async fn write_pieces<S: AsyncWrite + Unpin>(io: &mut S, pieces: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !pieces.is_empty() {
        let mut written = {
            let slices: Vec<IoSlice<'_>> = pieces.iter().take(64).map(|p| IoSlice::new(p)).collect();
            io.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(front) = pieces.front_mut() else { break };
            if front.len() <= written {
                written -= front.len();
                pieces.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    io.flush().await
}

/// The answer's status line and headers (Title-Case, as hyper writes them on these ports) with
/// `framing` and a `Date`.
fn head_of(response: &Response<FlvBody>, framing: &str) -> Vec<u8> {
    let status = response.status();
    let reason = status.canonical_reason().unwrap_or("");
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", status.as_str()).into_bytes();
    for (name, value) in response.headers() {
        let mut upper = true;
        for c in name.as_str().chars() {
            head.push(if upper { c.to_ascii_uppercase() } else { c } as u8);
            upper = c == '-';
        }
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(framing.as_bytes());
    head.extend_from_slice(
        format!("Date: {}\r\n\r\n", httpdate::fmt_http_date(SystemTime::now())).as_bytes(),
    );
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_flv_gets_are_taken() {
        let taken =
            player_request(b"GET /live/cam.flv?key=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\n\r\n").unwrap();
        assert_eq!(taken.uri().query(), Some("key=1"));
        assert_eq!(taken.version(), Version::HTTP_11);
        assert_eq!(taken.headers()["user-agent"], "x");
        assert_eq!(
            player_request(b"GET /live/cam.flv HTTP/1.0\r\n\r\n").unwrap().version(),
            Version::HTTP_10
        );
        for left in [
            &b"HEAD /live/cam.flv HTTP/1.1\r\n\r\n"[..],
            b"POST /open/1 HTTP/1.1\r\n\r\n",
            b"GET /live/cam HTTP/1.1\r\n\r\n",
            b"GET /live/cam.flv HTTP/9.9\r\n\r\n",
            b"GET /live/cam.flv HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /live/cam.flv HTTP/1.1\r\nHost: a\r\n",
            b"GET /live/cam.flv HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(player_request(left).is_none(), "{}", String::from_utf8_lossy(left));
        }
    }

    #[test]
    fn heads_are_title_case() {
        let mut response = Response::new(FlvBody::empty());
        response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        let head = String::from_utf8(head_of(&response, "Transfer-Encoding: chunked\r\n")).unwrap();
        assert!(head.starts_with(
            "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nTransfer-Encoding: chunked\r\nDate: "
        ));
        assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
    }
}
