//! Port sharing: tell RTMP from HTTP by a connection's first byte, then hand the whole stream on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

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
    Ok(Some((classify(first[0]), Prefixed { first: Some(first[0]), inner: stream })))
}

/// A stream with one byte already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() > 0 {
            if let Some(byte) = self.first.take() {
                buf.put_slice(&[byte]);
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
    async fn a_silent_close_is_none() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        assert!(sniff(server).await.unwrap().is_none());
    }
}
