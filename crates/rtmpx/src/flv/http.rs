//! HTTP-FLV: `GET /app/stream.flv` answered with a never-ending `video/x-flv` body, and the
//! WebSocket upgrade of the same URL (handed to [`super::ws`] once hyper has switched protocols).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::{FlvSession, PlayRequest, Refusal};
use crate::error::Error;
use crate::session::{SessionContext, Transport};
use crate::sync::lock;

/// The connection an FLV request arrived on.
pub struct FlvConn {
    pub ctx: Arc<SessionContext>,
    pub peer: SocketAddr,
    pub transport: Transport,
    /// Set by the write-timeout wrapper of this connection ([`super::deadline`]).
    pub write_timed_out: Arc<AtomicBool>,
    /// An accepted WebSocket player, run by the connection's task after the 101 is sent.
    pub upgrade: Mutex<Option<super::ws::Job>>,
}

/// Answers a non-POST request on a port that serves HTTP-FLV: the players, their CORS
/// preflight, and 404 for any other path.
pub async fn answer(mut request: Request<Incoming>, conn: &FlvConn) -> Response<FlvBody> {
    match decide(&mut request, conn).await {
        Answer::Done(response) => response,
        Answer::Play(response, session) => {
            response.map(|_| FlvBody::streaming(*session, conn.write_timed_out.clone()))
        }
    }
}

/// What a request gets: a whole answer, or a player's answer head and its session.
pub(super) enum Answer {
    Done(Response<FlvBody>),
    Play(Response<FlvBody>, Box<FlvSession>),
}

pub(super) async fn decide<B>(request: &mut Request<B>, conn: &FlvConn) -> Answer {
    let config = conn.ctx.config();
    let origin = config.http_flv.allow_origin.clone();
    let with_cors = |mut response: Response<FlvBody>| {
        if let Ok(value) = HeaderValue::from_str(&origin) {
            if !origin.is_empty() {
                response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
            }
        }
        response
    };
    let Some((app, stream)) = super::route(request.uri().path()) else {
        return Answer::Done(with_cors(status(StatusCode::NOT_FOUND)));
    };
    let (app, stream) = (app.to_owned(), stream.to_owned());
    let method = request.method().clone();
    if method == Method::OPTIONS {
        let mut response = status(StatusCode::NO_CONTENT);
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
        return Answer::Done(with_cors(response));
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = status(StatusCode::METHOD_NOT_ALLOWED);
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        return Answer::Done(with_cors(response));
    }
    let websocket = method == Method::GET && wants_websocket(request.headers());
    let accept_key = if websocket {
        match websocket_key(request.headers()) {
            Ok(key) => Some(key),
            Err(code) => {
                let mut response = status(code);
                if code == StatusCode::UPGRADE_REQUIRED {
                    let version = HeaderValue::from_static("13");
                    response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, version);
                }
                return Answer::Done(with_cors(response));
            }
        }
    } else {
        None
    };
    let tls = matches!(conn.transport, Transport::Tls | Transport::HttpTls);
    let scheme = match (tls, websocket) {
        (false, false) => "http",
        (true, false) => "https",
        (false, true) => "ws",
        (true, true) => "wss",
    };
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let host = text(header::HOST).unwrap_or_else(|| "localhost".into());
    let play = PlayRequest {
        app: &app,
        stream: match request.uri().query() {
            Some(query) if !query.is_empty() => format!("{stream}?{query}"),
            _ => stream,
        },
        tc_url: format!("{scheme}://{host}/{app}"),
        page_url: text(header::REFERER).or_else(|| text(header::ORIGIN)),
        user_agent: text(header::USER_AGENT),
    };
    let variant = super::variant(conn.transport, websocket);
    let subscribe = method == Method::GET;
    let session = match FlvSession::open(&conn.ctx, conn.peer, variant, play, subscribe).await {
        Ok(session) => session,
        Err(Refusal::NotFound) => return Answer::Done(with_cors(status(StatusCode::NOT_FOUND))),
        Err(Refusal::Forbidden) => return Answer::Done(with_cors(status(StatusCode::FORBIDDEN))),
    };
    if let Some(accept) = accept_key {
        let on_upgrade = hyper::upgrade::on(&mut *request);
        *lock(&conn.upgrade) = Some(super::ws::Job { session, on_upgrade });
        let mut response = status(StatusCode::SWITCHING_PROTOCOLS);
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        return Answer::Done(response);
    }
    let mut response = Response::new(FlvBody::open_ended_empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/x-flv"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // One player per connection: the response ends the connection.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let response = with_cors(response);
    if subscribe {
        Answer::Play(response, Box::new(session))
    } else {
        Answer::Done(response)
    }
}

fn status(code: StatusCode) -> Response<FlvBody> {
    let mut response = Response::new(FlvBody::empty());
    *response.status_mut() = code;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

/// The `Sec-WebSocket-Accept` for a valid RFC 6455 upgrade request, or the status refusing it
/// (426 asks for version 13).
fn websocket_key(headers: &HeaderMap) -> Result<HeaderValue, StatusCode> {
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(StatusCode::UPGRADE_REQUIRED);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|k| k.len() == 24) else {
        return Err(StatusCode::BAD_REQUEST);
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::from_str(&accept).map_err(|_| StatusCode::BAD_REQUEST)
}

/// The body of an FLV answer: empty, or the player's tags for as long as the stream lasts.
pub struct FlvBody {
    stream: Option<Box<Streaming>>,
    /// An empty body of unknown length (a HEAD answer carries no `Content-Length`).
    open_ended: bool,
}

struct Streaming {
    session: FlvSession,
    pending: VecDeque<Bytes>,
    /// Resolves when the player's queue has something (kept across polls).
    changed: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// A kick from the admin API or the gateway shutting down.
    stop: Pin<Box<dyn Future<Output = &'static str> + Send>>,
    /// The end of a wait for the stream's publisher ([`FlvSession::wait_deadline`]).
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    write_timed_out: Arc<AtomicBool>,
    finished: bool,
}

impl FlvBody {
    pub fn empty() -> Self {
        FlvBody { stream: None, open_ended: false }
    }

    fn open_ended_empty() -> Self {
        FlvBody { stream: None, open_ended: true }
    }

    fn streaming(session: FlvSession, write_timed_out: Arc<AtomicBool>) -> Self {
        let entry = session.entry();
        let mut shutdown = session.context().shutdown_signal();
        let stop = Box::pin(async move {
            tokio::select! {
                why = entry.kicked() => why,
                _ = super::shutting_down(&mut shutdown) => "gateway shutting down",
            }
        });
        let wait = session.wait_deadline().map(|at| Box::pin(tokio::time::sleep_until(at.into())));
        let streaming = Streaming {
            session,
            wait,
            pending: VecDeque::new(),
            changed: None,
            stop,
            write_timed_out,
            finished: false,
        };
        FlvBody { stream: Some(Box::new(streaming)), open_ended: false }
    }
}

impl Body for FlvBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(s) = self.stream.as_deref_mut() else { return Poll::Ready(None) };
        loop {
            if let Some(piece) = s.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            if s.finished {
                return Poll::Ready(None);
            }
            if let Poll::Ready(why) = s.stop.as_mut().poll(cx) {
                s.session.end(Error::Kicked(why));
                s.finished = true;
                continue;
            }
            if s.session.wait_deadline().is_none() {
                s.wait = None;
            } else if s.wait.as_mut().is_some_and(|wait| wait.as_mut().poll(cx).is_ready()) {
                s.session.wait_expired();
                s.finished = true;
                continue;
            }
            if !s.session.take_queued(&mut s.pending) {
                s.finished = true;
                continue;
            }
            if !s.pending.is_empty() {
                continue;
            }
            let Some(player) = s.session.player() else {
                s.finished = true;
                continue;
            };
            let changed = s.changed.get_or_insert_with(|| Box::pin(player.changed_owned()));
            ready!(changed.as_mut().poll(cx));
            s.changed = None;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none() && !self.open_ended
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if self.write_timed_out.load(Ordering::Relaxed) {
            self.session.end(Error::Timeout("the client stopped reading"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    #[test]
    fn websocket_upgrades_are_checked() {
        let good = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert!(wants_websocket(&headers(&good)));
        // RFC 6455's example.
        assert_eq!(websocket_key(&headers(&good)).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let old_version = headers(&[good[0], good[1], ("sec-websocket-version", "8"), good[3]]);
        assert_eq!(websocket_key(&old_version).unwrap_err(), StatusCode::UPGRADE_REQUIRED);
        let no_key = headers(&good[..3]);
        assert_eq!(websocket_key(&no_key).unwrap_err(), StatusCode::BAD_REQUEST);
        let not_upgrade = headers(&[good[0], ("connection", "close"), good[2], good[3]]);
        assert_eq!(websocket_key(&not_upgrade).unwrap_err(), StatusCode::BAD_REQUEST);
        assert!(!wants_websocket(&headers(&[("connection", "close")])));
    }
}
