//! The session's side of its transport: reads land in a per-thread scratch buffer and go straight
//! into the protocol state; output leaves in vectored writes. [`SessionIo`] is the one lock both
//! the session's task and, for caught-up players, the publisher's task ([`super::direct`]) write
//! through; `task_flush` says which of them may write now.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes};
use rtmpx_core::session::ServerSession;
use rtmpx_router::{DirectSend, Frame, PlayerEvent};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::timeout;

use crate::error::{Error, Result};
use crate::registry::SessionEntry;
use crate::sync::lock;

const READ_BUFFER: usize = 16 * 1024;
/// Pieces handed to one vectored write (Linux takes up to 1024 iovecs; 64 cover a 64 KiB batch
/// of 4 KiB chunks with their headers).
const MAX_IOVECS: usize = 64;

thread_local! {
    /// Reads land here and go straight into the session, so an idle connection holds no read
    /// buffer of its own (memory per idle player is a target).
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUFFER].into_boxed_slice());
}

/// Reads what the stream has into the thread's scratch buffer and feeds it to the session.
/// Returns the bytes read (0 at end of stream) and the session's verdict on them. On the first
/// read, `admit_first` sees the first byte (C0) before the session does any work for it.
pub(super) fn poll_read_into(
    out: &SessionIo,
    cx: &mut Context<'_>,
    admit_first: Option<&dyn Fn(u8) -> Result<()>>,
) -> Poll<std::io::Result<(usize, Result<()>)>> {
    READ_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        let mut out = out.lock();
        let out = &mut *out;
        match Pin::new(&mut out.stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let data = buf.filled();
                let verdict = match (data.first(), admit_first) {
                    (None, _) => Ok(()),
                    (Some(&c0), Some(admit)) => {
                        admit(c0).and_then(|()| out.session.handle_input(data).map_err(Error::from))
                    }
                    (Some(_), None) => out.session.handle_input(data).map_err(Error::from),
                };
                Poll::Ready(Ok((data.len(), verdict)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// A duplex byte stream a session runs over (TCP, TLS, an HTTP tunnel's pipe).
pub(super) trait Transported: AsyncRead + AsyncWrite + Send + Unpin {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Transported for S {}

/// A session's core state and its transport, shared by the session's task and, while the session
/// plays and is caught up, by the publisher's task ([`DirectPlayer`]). Locked briefly and never
/// across an await.
pub(super) struct SessionIo {
    pub(super) state: Mutex<IoState>,
}

pub(super) struct IoState {
    pub(super) session: ServerSession,
    /// The transport, read by the task and written by whoever holds the lock (one lock for both
    /// directions: cheaper than splitting it, and reads happen only in the task anyway).
    pub(super) stream: Box<dyn Transported>,
    /// Output pieces not yet written (chunk headers and slices of shared payloads).
    pub(super) pending: VecDeque<Bytes>,
    /// Whether media payloads go out uncopied (the writer takes vectored writes).
    pub(super) shared_payloads: bool,
    /// Set while a write waits for the socket (or failed): only the task writes then, with its
    /// own waker, and the publisher queues frames instead.
    pub(super) task_flush: bool,
    /// A direct write's error, for the task to report.
    pub(super) failed: Option<std::io::Error>,
    pub(super) bytes_out: u64,
    pub(super) entry: Arc<SessionEntry>,
}

impl SessionIo {
    pub(super) fn lock(&self) -> MutexGuard<'_, IoState> {
        // Nothing in IoState is left half-updated by a panic; keep serving.
        lock(&self.state)
    }
}

impl IoState {
    /// Moves what the session produced into `pending`, counting it.
    pub(super) fn collect(&mut self) {
        while let Some(piece) = self.session.poll_transmit() {
            self.bytes_out += piece.len() as u64;
            self.entry.add_out(piece.len());
            self.pending.push_back(piece);
        }
    }

    /// Writes everything pending, then flushes the writer (TLS buffers records).
    pub(super) fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
        self.collect();
        ready!(poll_write_pieces(&mut self.stream, &mut self.pending, cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Whether a task other than the session's may write now: the session's own task is not
    /// writing (after a full socket or an error only it writes, with its own waker).
    pub(super) fn publisher_may_write(&self) -> bool {
        !self.task_flush && self.pending.is_empty()
    }

    /// Writes from a task that is not the session's: on Pending (socket full) or an error the
    /// session's task is woken to wait with its own waker and report.
    pub(super) fn write_now(&mut self) -> DirectSend {
        match self.poll_write_out(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => DirectSend::Sent,
            Poll::Ready(Err(e)) => {
                self.failed = Some(e);
                self.task_flush = true;
                DirectSend::SentWakeTask
            }
            Poll::Pending => {
                self.task_flush = true;
                DirectSend::SentWakeTask
            }
        }
    }

    pub(super) fn encode(&mut self, stream_id: u32, frame: &Frame, timestamp: u32) {
        let kind = frame.kind;
        if self.shared_payloads {
            self.session.send_media_shared(stream_id, kind, timestamp, &frame.payload);
        } else {
            self.session.send_media(stream_id, kind, timestamp, &frame.payload);
        }
    }
}

/// Writes everything the session has queued, with the task's waker, under one write timeout for
/// the whole batch. The publisher stays off the writer until this is done.
pub(super) async fn flush(out: &SessionIo, write_timeout: std::time::Duration) -> Result<()> {
    {
        let mut st = out.lock();
        st.collect();
        if st.pending.is_empty() && st.failed.is_none() && !st.task_flush {
            return Ok(());
        }
        st.task_flush = true;
    }
    let written = timeout(
        write_timeout,
        poll_fn(|cx| {
            let mut st = out.lock();
            let poll = st.poll_write_out(cx);
            if poll.is_ready() {
                st.task_flush = false;
            }
            poll
        }),
    )
    .await;
    match written {
        Ok(result) => result.map_err(Error::io("writing to the client")),
        Err(_) => Err(Error::Timeout("the client stopped reading")),
    }
}

/// Writes and drops pieces of `pending`, up to [`MAX_IOVECS`] per system call, until it is empty
/// or the writer would block. What was written is gone from `pending` at once.
fn poll_write_pieces<W>(
    writer: &mut W,
    pending: &mut VecDeque<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    while !pending.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = pending.len().min(MAX_IOVECS);
        for (slice, piece) in slices.iter_mut().zip(pending.iter()) {
            *slice = IoSlice::new(piece);
        }
        let written = ready!(Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..count]))?;
        if written == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        consume(pending, written);
    }
    Poll::Ready(Ok(()))
}

/// Drops the first `n` bytes of the pieces.
fn consume(pending: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = pending.front_mut() else { return };
        if front.len() <= n {
            n -= front.len();
            pending.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

/// Encodes one router event for the player on `stream_id`. Returns whether it was a media frame
/// (which may wait for write coalescing).
pub(super) fn deliver(event: PlayerEvent, out: &mut IoState, stream_id: u32) -> bool {
    match event {
        PlayerEvent::PublishStarted => {
            out.session.notify_publish(stream_id);
            false
        }
        PlayerEvent::Unpublished => {
            out.session.notify_unpublish(stream_id);
            false
        }
        PlayerEvent::Frame(frame) => {
            out.encode(stream_id, &frame, frame.timestamp);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `max` bytes per write, vectored or not.
    struct Trickle {
        written: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.written.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut room = self.max;
            for buf in bufs {
                let n = buf.len().min(room);
                self.written.extend_from_slice(&buf[..n]);
                room -= n;
            }
            self.calls += 1;
            Poll::Ready(Ok(self.max - room))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn pieces_are_written_in_order_across_partial_writes() {
        let pieces: Vec<Bytes> =
            (0..200u32).map(|i| Bytes::from(vec![i as u8; (i % 7 + 1) as usize])).collect();
        let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        let mut pending: VecDeque<Bytes> = pieces.into_iter().collect();
        let mut sink = Trickle { written: Vec::new(), max: 5, calls: 0 };
        poll_fn(|cx| poll_write_pieces(&mut sink, &mut pending, cx)).await.unwrap();
        assert!(pending.is_empty());
        assert_eq!(sink.written, expected);
        assert_eq!(sink.calls, expected.len().div_ceil(5));
    }

    #[test]
    fn consume_splits_a_piece() {
        let mut pending: VecDeque<Bytes> =
            [&b"abc"[..], b"defg", b"h"].into_iter().map(Bytes::from_static).collect();
        consume(&mut pending, 5);
        assert_eq!(pending, [Bytes::from_static(b"fg"), Bytes::from_static(b"h")]);
        consume(&mut pending, 3);
        assert!(pending.is_empty());
        consume(&mut pending, 1);
    }

    /// A session whose transport is one end of a `duplex` pipe taking `capacity` bytes; the other
    /// end plays the client.
    fn session_io(capacity: usize) -> (Arc<SessionIo>, tokio::io::DuplexStream) {
        use rand::SeedableRng;
        let (client, server) = tokio::io::duplex(capacity);
        let registry = Arc::new(crate::registry::Registry::new(Arc::default()));
        let guard = crate::registry::SessionGuard::open(
            &registry,
            1,
            "127.0.0.1:1".parse().unwrap(),
            crate::metrics::Variant::Rtmp,
        );
        let session = ServerSession::new(Default::default(), &mut rand::rngs::StdRng::seed_from_u64(1));
        let io = SessionIo {
            state: Mutex::new(IoState {
                session,
                stream: Box::new(server),
                pending: VecDeque::new(),
                shared_payloads: false,
                task_flush: false,
                failed: None,
                bytes_out: 0,
                entry: guard.shared_entry(),
            }),
        };
        (Arc::new(io), client)
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| i as u8).collect()
    }

    #[tokio::test]
    async fn the_publisher_writes_at_once_while_the_socket_takes_it() {
        let (io, mut client) = session_io(4096);
        {
            let mut st = io.lock();
            assert!(st.publisher_may_write());
            st.pending.push_back(Bytes::from(bytes(1000)));
            assert_eq!(st.write_now(), DirectSend::Sent);
            assert!(!st.task_flush && st.pending.is_empty() && st.publisher_may_write());
        }
        let mut got = vec![0; 1000];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got).await.unwrap();
        assert_eq!(got, bytes(1000));
    }

    #[tokio::test]
    async fn a_full_socket_hands_the_writes_to_the_task_until_it_drained_them() {
        let (io, mut client) = session_io(1024);
        {
            let mut st = io.lock();
            st.pending.push_back(Bytes::from(bytes(5000)));
            // The socket takes 1024 bytes, then would block: the task takes over with its waker.
            assert_eq!(st.write_now(), DirectSend::SentWakeTask);
            assert!(st.task_flush, "the task writes now");
            assert!(!st.publisher_may_write(), "the publisher queues instead");
            assert_eq!(st.pending.iter().map(|p| p.len()).sum::<usize>(), 5000 - 1024);
        }
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 5000];
            tokio::io::AsyncReadExt::read_exact(&mut client, &mut got).await.unwrap();
            got
        });
        flush(&io, std::time::Duration::from_secs(5)).await.unwrap();
        assert_eq!(reader.await.unwrap(), bytes(5000), "every byte once, in order");
        let st = io.lock();
        assert!(!st.task_flush && st.pending.is_empty());
        assert!(st.publisher_may_write(), "the publisher may write again");
    }

    #[tokio::test]
    async fn a_failed_direct_write_is_reported_by_the_task() {
        let (io, client) = session_io(1024);
        drop(client);
        {
            let mut st = io.lock();
            st.pending.push_back(Bytes::from(bytes(10)));
            assert_eq!(st.write_now(), DirectSend::SentWakeTask);
            assert!(st.failed.is_some() && st.task_flush && !st.publisher_may_write());
        }
        let err = flush(&io, std::time::Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().starts_with("writing to the client"), "{err}");
        assert!(io.lock().failed.is_none(), "reported once");
    }

    #[tokio::test]
    async fn a_task_flush_that_times_out_keeps_the_publisher_off() {
        let (io, _client) = session_io(16);
        io.lock().pending.push_back(Bytes::from(bytes(100)));
        let err = flush(&io, std::time::Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        let st = io.lock();
        assert!(st.task_flush && !st.publisher_may_write(), "only the task writes to a stalled client");
    }
}
