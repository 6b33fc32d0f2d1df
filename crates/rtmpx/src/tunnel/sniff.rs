//! Port sharing: tell RTMP from HTTP by a connection's first byte, then hand the whole stream on.
//! An HTTP connection must then send its first request's head within the handshake timeout too
//! ([`read_head`]): a byte that looks like a method buys no more time than an RTMP handshake.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Longest request head (request line and headers) accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest method accepted (`OPTIONS` is 7; room for extensions).
const MAX_METHOD: usize = 16;

/// What the first byte says. RTMP's C0 is the version (3, or 6/8/9 for RTMPE); an HTTP request
/// starts with an upper-case ASCII method (`POST`, `GET`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstByte {
    Http,
    Rtmp,
}

pub fn classify(first: u8) -> FirstByte {
    if first.is_ascii_uppercase() {
        FirstByte::Http
    } else {
        FirstByte::Rtmp
    }
}

/// Reads one byte and returns a stream that replays it before the rest. `Ok(None)` when the
/// peer closed without sending anything.
pub async fn sniff<S>(mut stream: S) -> io::Result<Option<(FirstByte, Prefixed<S>)>>
where
    S: AsyncRead + Unpin,
{
    let mut first = [0u8; 1];
    if stream.read(&mut first).await? == 0 {
        return Ok(None);
    }
    Ok(Some((classify(first[0]), Prefixed { read: first.to_vec(), replayed: 0, inner: stream })))
}

/// Reads on until the first request's head is complete (`\r\n\r\n`), at most [`MAX_HEAD`]
/// bytes; everything read is replayed. An error at once when the bytes cannot start a request
/// (the method is not upper-case letters followed by a space), when the peer closes first or
/// when it sends more.
pub async fn read_head<S>(mut stream: Prefixed<S>) -> io::Result<Prefixed<S>>
where
    S: AsyncRead + Unpin,
{
    let mut chunk = [0u8; 4096];
    loop {
        let method_end = stream.read.iter().position(|&b| b == b' ').unwrap_or(stream.read.len());
        let method = &stream.read[..method_end];
        if method.len() > MAX_METHOD || !method.iter().all(u8::is_ascii_uppercase) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not an HTTP request"));
        }
        if stream.read.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(stream);
        }
        if stream.read.len() >= MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP request head over 64 KiB"));
        }
        let room = (MAX_HEAD - stream.read.len()).min(chunk.len());
        let n = stream.inner.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        stream.read.extend_from_slice(&chunk[..n]);
    }
}

/// A stream with the bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<S> {
    read: Vec<u8>,
    replayed: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// The bytes read and not yet replayed (after [`read_head`]: the first request's head).
    pub fn buffered(&self) -> &[u8] {
        &self.read[self.replayed..]
    }

    /// The stream without the buffered bytes (their request is answered apart).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() > 0 && this.replayed < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.replayed);
            buf.put_slice(&this.read[this.replayed..this.replayed + n]);
            this.replayed += n;
            if this.replayed == this.read.len() {
                // Replayed: the buffer goes back.
                this.read = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn rtmp_versions_and_http_methods() {
        for c0 in [0x03, 0x06, 0x08, 0x09] {
            assert_eq!(classify(c0), FirstByte::Rtmp);
        }
        for method in ["POST", "GET", "HEAD", "OPTIONS"] {
            assert_eq!(classify(method.as_bytes()[0]), FirstByte::Http);
        }
        assert_eq!(classify(b'p'), FirstByte::Rtmp, "lower case is no HTTP method");
    }

    #[tokio::test]
    async fn the_sniffed_byte_is_replayed() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"POST /open/1 HTTP/1.1\r\n").await.unwrap();
        drop(client);
        let (kind, mut stream) = sniff(server).await.unwrap().unwrap();
        assert_eq!(kind, FirstByte::Http);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"POST /open/1 HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_request_head_is_read_whole_and_replayed() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let request = b"POST /open/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n\x00";
        client.write_all(request).await.unwrap();
        drop(client);
        let (_, stream) = sniff(server).await.unwrap().unwrap();
        let mut stream = read_head(stream).await.unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, request);
    }

    #[tokio::test]
    async fn garbage_after_a_method_letter_gets_no_head() {
        async fn head_of(bytes: &[u8]) -> Option<io::Result<()>> {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            client.write_all(bytes).await.unwrap();
            let (_, stream) = sniff(server).await.unwrap().unwrap();
            let read = tokio::time::timeout(std::time::Duration::from_millis(50), read_head(stream)).await;
            read.ok().map(|r| r.map(drop))
        }
        // Not a method: refused at once.
        for garbage in [&b"G\x01\x02garbage"[..], b"GARBAGEGARBAGEGARBAGE", b"Get / HTTP/1.1\r\n\r\n"] {
            let refused = head_of(garbage).await.expect("refused at once");
            assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::InvalidData, "{garbage:?}");
        }
        // A head that never ends: refused after 64 KiB, not read for ever.
        let endless = [&b"POST /open/1 HTTP/1.1\r\nX: "[..], &vec![b'x'; 256 * 1024]].concat();
        assert_eq!(head_of(&endless).await.unwrap().unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A head that stops half way waits (the caller's handshake timeout ends it).
        assert!(head_of(b"POST /open/1 HTTP/1.1\r\nHost: x\r\n").await.is_none());
        assert!(head_of(b"POS").await.is_none());
    }

    #[tokio::test]
    async fn a_silent_close_is_none() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        assert!(sniff(server).await.unwrap().is_none());
    }
}
