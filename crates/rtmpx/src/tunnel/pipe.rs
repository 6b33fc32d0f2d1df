//! A bounded in-memory duplex byte pipe between an HTTP tunnel and its gateway session.
//!
//! Like `tokio::io::duplex`, plus two observations the tunnel needs to answer a request as soon
//! as the session has reacted to it, without guessing with timers: whether the session is parked
//! reading with nothing left to read (it has consumed the request and written its reply), and
//! whether its last write was followed by a flush (a batch of output is complete).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::sync::lock;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Default)]
struct Channel {
    buf: BytesMut,
    capacity: usize,
    reader_gone: bool,
    writer_gone: bool,
    /// The reader found the buffer empty and is waiting for bytes.
    reader_parked: bool,
    /// The writer's last operation was a flush.
    flushed: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Someone waits for `reader_parked` or `flushed`.
    watch_waker: Option<Waker>,
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

type Shared = Arc<Mutex<Channel>>;

/// One end: reads what the other end writes and the other way round.
pub struct PipeEnd {
    rx: Shared,
    tx: Shared,
}

/// Two connected ends; each direction buffers at most `capacity` bytes.
pub fn pipe(capacity: usize) -> (PipeEnd, PipeEnd) {
    assert!(capacity > 0);
    // Nothing written yet counts as flushed.
    let channel = || Arc::new(Mutex::new(Channel { capacity, flushed: true, ..Channel::default() }));
    let (a, b) = (channel(), channel());
    (PipeEnd { rx: a.clone(), tx: b.clone() }, PipeEnd { rx: b, tx: a })
}

impl PipeEnd {
    /// Hands up to `max` buffered bytes to `take`; `Ready(0)` at end of stream.
    fn poll_take(&self, cx: Option<&mut Context<'_>>, max: usize, take: impl FnOnce(&[u8])) -> Poll<usize> {
        let mut ch = lock(&self.rx);
        if ch.buf.is_empty() {
            if ch.writer_gone {
                return Poll::Ready(0);
            }
            if let Some(cx) = cx {
                ch.reader_parked = true;
                ch.read_waker = Some(cx.waker().clone());
                wake(&mut ch.watch_waker);
            }
            return Poll::Pending;
        }
        let n = ch.buf.len().min(max);
        take(&ch.buf[..n]);
        ch.buf.advance(n);
        ch.reader_parked = false;
        wake(&mut ch.write_waker);
        Poll::Ready(n)
    }

    pub fn poll_read_from(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let max = buf.remaining();
        self.poll_take(Some(cx), max, |bytes| buf.put_slice(bytes)).map(|_| Ok(()))
    }

    /// Appends up to `max` buffered bytes to `out`; `Ready(0)` at end of stream (or `max == 0`).
    pub fn poll_read_into(&self, cx: &mut Context<'_>, out: &mut BytesMut, max: usize) -> Poll<usize> {
        if max == 0 {
            return Poll::Ready(0);
        }
        self.poll_take(Some(cx), max, |bytes| out.extend_from_slice(bytes))
    }

    /// Like [`PipeEnd::poll_read_into`] without waiting: `None` when nothing is buffered.
    pub fn try_read_into(&self, out: &mut BytesMut, max: usize) -> Option<usize> {
        match self.poll_take(None, max, |bytes| out.extend_from_slice(bytes)) {
            Poll::Ready(n) => Some(n),
            Poll::Pending => None,
        }
    }

    pub fn poll_write_to(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut ch = lock(&self.tx);
        if ch.reader_gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = ch.capacity - ch.buf.len();
        if room == 0 {
            ch.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        ch.buf.extend_from_slice(&data[..n]);
        ch.flushed = false;
        wake(&mut ch.read_waker);
        Poll::Ready(Ok(n))
    }

    /// Ready when the other end is parked reading with nothing left to read, or is gone.
    pub fn poll_peer_parked(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut ch = lock(&self.tx);
        if ch.reader_gone || (ch.buf.is_empty() && ch.reader_parked) {
            return Poll::Ready(());
        }
        ch.watch_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready when the other end's last write was followed by a flush, or it is gone.
    pub fn poll_peer_flushed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut ch = lock(&self.rx);
        if ch.writer_gone || ch.flushed {
            return Poll::Ready(());
        }
        ch.watch_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Bytes waiting to be read at this end.
    #[cfg(test)]
    pub fn readable(&self) -> usize {
        lock(&self.rx).buf.len()
    }
}

impl AsyncRead for PipeEnd {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.poll_read_from(cx, buf)
    }
}

impl AsyncWrite for PipeEnd {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_to(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut ch = lock(&self.tx);
        ch.flushed = true;
        wake(&mut ch.watch_waker);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut ch = lock(&self.tx);
        ch.writer_gone = true;
        wake(&mut ch.read_waker);
        wake(&mut ch.watch_waker);
        Poll::Ready(Ok(()))
    }
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        let mut tx = lock(&self.tx);
        tx.writer_gone = true;
        wake(&mut tx.read_waker);
        wake(&mut tx.watch_waker);
        drop(tx);
        let mut rx = lock(&self.rx);
        rx.reader_gone = true;
        // Nobody will read these bytes any more.
        rx.buf = BytesMut::new();
        wake(&mut rx.write_waker);
        wake(&mut rx.watch_waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_flow_both_ways_and_eof_follows_drop() {
        let (mut a, mut b) = pipe(8);
        a.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(b.read(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        b.write_all(b"back").await.unwrap();
        drop(b);
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"back", "bytes written before the drop are still delivered");
        assert_eq!(a.write(b"x").await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_full_pipe_blocks_the_writer() {
        let (mut a, mut b) = pipe(4);
        assert_eq!(a.write(b"123456").await.unwrap(), 4);
        assert!(tokio::time::timeout(Duration::from_millis(20), a.write(b"5")).await.is_err());
        let mut buf = [0u8; 2];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(a.write(b"56").await.unwrap(), 2);
        assert_eq!(b.readable(), 4);
    }

    #[tokio::test]
    async fn parked_means_consumed_and_waiting() {
        let (mut client, mut gateway) = pipe(64);
        client.write_all(b"ping").await.unwrap();
        let parked = |end: &PipeEnd| end.poll_peer_parked(&mut Context::from_waker(Waker::noop())).is_ready();
        assert!(!parked(&client), "the gateway has not read yet");
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            gateway.read_exact(&mut buf).await.unwrap();
            gateway.write_all(b"pong").await.unwrap();
            gateway.flush().await.unwrap();
            let mut more = [0u8; 1];
            let _ = gateway.read(&mut more).await;
        });
        poll_fn(|cx| client.poll_peer_parked(cx)).await;
        poll_fn(|cx| client.poll_peer_flushed(cx)).await;
        assert_eq!(client.readable(), 4, "the reply is complete once the peer is parked again");
        drop(client);
        echo.await.unwrap();
    }
}
