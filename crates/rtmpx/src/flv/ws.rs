//! WebSocket-FLV: the FLV byte stream in binary messages (each holds whole tags), after hyper
//! has answered the upgrade. The client may ping and close; any data it sends ends the session
//! (1008, a play socket takes none).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::FlvSession;
use crate::error::Error;

/// Largest message a client may send (only control frames are expected).
const MAX_CLIENT_MESSAGE: usize = 4096;

/// An accepted WebSocket player waiting for its connection to switch protocols.
pub struct Job {
    pub session: FlvSession,
    pub on_upgrade: OnUpgrade,
}

/// Plays the session's stream on the upgraded connection until either side ends it.
pub async fn run(job: Job) {
    let Job { mut session, on_upgrade } = job;
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            session.end(Error::Io {
                context: "switching to WebSocket".into(),
                source: std::io::Error::other(e),
            });
            return;
        }
    };
    // Small buffers: an idle player should cost little memory, and clients send next to nothing.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (mut sink, mut incoming) = ws.split();
    let ctx = session.context().clone();
    let write_timeout = ctx.config().timeouts.write;
    let entry = session.entry();
    let mut shutdown = ctx.shutdown_signal();
    let mut pieces = VecDeque::new();
    let close = |code: CloseCode, reason: &'static str| {
        Message::Close(Some(CloseFrame { code, reason: reason.into() }))
    };
    let goodbye = loop {
        let wait_deadline = session.wait_deadline();
        let Some(player) = session.player() else { break None };
        tokio::select! {
            () = crate::fan_out::sleep_until_opt(wait_deadline.map(Into::into)) => {
                session.wait_expired();
                break Some(close(CloseCode::Away, "the stream was not published"));
            }
            why = entry.kicked() => {
                session.end(Error::Kicked(why));
                break Some(close(CloseCode::Away, why));
            }
            _ = super::shutting_down(&mut shutdown) => {
                session.end(Error::Kicked("gateway shutting down"));
                break Some(close(CloseCode::Away, "gateway shutting down"));
            }
            message = incoming.next() => match message {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(message)) => {
                    session.add_in(message.len());
                    session.end(Error::Denied("the client sent data on a play socket".into()));
                    break Some(close(CloseCode::Policy, "play sockets take no data"));
                }
                Some(Err(e)) => {
                    debug!(session = session.id(), "websocket: {e}");
                    session.end(Error::Io { context: "reading the WebSocket".into(), source: std::io::Error::other(e) });
                    break None;
                }
            },
            _ = player.changed() => {
                let live = session.take_queued(&mut pieces);
                if !pieces.is_empty() {
                    let message = join(&mut pieces);
                    let sent = timeout(write_timeout, sink.send(Message::Binary(message))).await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            session.end(Error::Io { context: "writing to the client".into(), source: std::io::Error::other(e) });
                            break None;
                        }
                        Err(_) => {
                            session.end(Error::Timeout("the client stopped reading"));
                            break None;
                        }
                    }
                }
                if !live {
                    break Some(close(CloseCode::Normal, "the stream was unpublished"));
                }
            }
        }
    };
    if let Some(goodbye) = goodbye {
        let _ = timeout(write_timeout, sink.send(goodbye)).await;
    }
}

/// One message of the pieces (they share payloads; a message needs them in one buffer).
fn join(pieces: &mut VecDeque<Bytes>) -> Bytes {
    let mut message = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in pieces.drain(..) {
        message.extend_from_slice(&piece);
    }
    message.freeze()
}
