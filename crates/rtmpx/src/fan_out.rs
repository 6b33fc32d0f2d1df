//! The publisher's side of fan-out, shared by publishing sessions and pull relays: frames go to
//! the router from the publisher's task, and while batching the players' held media is written
//! once per window for the whole stream (no timer or wake-up per player).

use std::sync::Arc;
use std::time::Duration;

use rtmpx_router::{Frame, Publisher};
use tokio::time::Instant;

use crate::config::ServerSection;
use crate::load::Load;

/// How long players' media waits to share a write now: `server.write_coalesce_ms` always, else
/// `server.write_coalesce_under_load_ms` (grown while saturated) while the workers are busy.
#[derive(Clone)]
pub(crate) struct Batching {
    load: Arc<Load>,
    always: Duration,
    under_load: Duration,
}

impl Batching {
    pub(crate) fn new(server: &ServerSection, load: Arc<Load>) -> Batching {
        Batching {
            load,
            always: Duration::from_millis(server.write_coalesce_ms),
            under_load: Duration::from_millis(server.write_coalesce_under_load_ms),
        }
    }

    /// The window now; zero: write at once.
    pub(crate) fn window(&self) -> Duration {
        self.load.batch_window(self.always, self.under_load)
    }
}

/// Runs one fan-out (the router writing to every caught-up player from the publisher's task):
/// the session layer pairs RTMPE players' encryption inside it.
pub(crate) type Scope = fn(&mut dyn FnMut());

/// A [`Scope`] that only runs the fan-out.
#[cfg(test)]
pub(crate) fn plain(fan_out: &mut dyn FnMut()) {
    fan_out()
}

/// One publisher's fan-out and its batch window.
pub(crate) struct FanOut {
    batching: Batching,
    scope: Scope,
    /// When the running batch window ends.
    flush_at: Option<Instant>,
    /// The last frame [`offer`](Self::offer)ed: it goes out once it is known whether another
    /// one of the same read follows.
    offered: Option<Frame>,
}

impl FanOut {
    pub(crate) fn new(batching: Batching, scope: Scope) -> FanOut {
        FanOut { batching, scope, flush_at: None, offered: None }
    }

    /// Takes a frame of the read being handled; [`finish`](Self::finish) when the read is done.
    /// When one read holds several frames, players write them all at once with the last one
    /// (one system call per player and read, no added wait).
    pub(crate) async fn offer(&mut self, publisher: &Publisher, frame: Frame) {
        if frame.payload.is_empty() {
            // The router drops it: it must not be the one that ends a run.
            return;
        }
        if let Some(previous) = self.offered.replace(frame) {
            self.fan(publisher, previous, true).await;
        }
    }

    /// Sends the last offered frame: the read is handled, or something other than media comes.
    pub(crate) async fn finish(&mut self, publisher: &Publisher) {
        if let Some(last) = self.offered.take() {
            self.send(publisher, last).await;
        }
    }

    /// Hands a frame to the router, which writes it to every caught-up player from here (the
    /// session driver's `DirectPlayer`; RTMPE players are encrypted in pairs). tokio's cooperative
    /// budget (128 I/O operations per task poll) would make every write after the 128th report
    /// "would block" and fall back to a task wake-up, so this runs unconstrained: it is bounded by
    /// the number of players and never waits. Starts a batch window when batching and none runs.
    pub(crate) async fn send(&mut self, publisher: &Publisher, frame: Frame) {
        self.fan(publisher, frame, false).await
    }

    /// [`send`](Self::send); `more`: players may hold it for the write of the next frame.
    async fn fan(&mut self, publisher: &Publisher, frame: Frame, more: bool) {
        let mut frame = Some(frame);
        let mut send = || match frame.take() {
            Some(frame) if more => publisher.send_more(frame),
            Some(frame) => publisher.send(frame),
            None => {}
        };
        tokio::task::unconstrained(async { (self.scope)(&mut send) }).await;
        if self.flush_at.is_none() {
            let window = self.batching.window();
            if !window.is_zero() {
                self.flush_at = Some(Instant::now() + window);
            }
        }
    }

    /// Resolves when the batch window ends, and closes it; never while none runs.
    pub(crate) async fn window_end(&mut self) {
        sleep_until_opt(self.flush_at).await;
        self.flush_at = None;
    }

    /// Writes what the players' sessions hold, once for the whole stream (a window ended).
    pub(crate) async fn flush(&self, publisher: &Publisher) {
        tokio::task::unconstrained(async { (self.scope)(&mut || publisher.flush_direct()) }).await
    }
}

/// Sleeps until `deadline`; never without one.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtmpx_router::{Router, SessionInfo, StreamKey};

    fn fan_out(always_ms: u64, under_load_ms: u64, load: Arc<Load>) -> FanOut {
        let server = ServerSection {
            write_coalesce_ms: always_ms,
            write_coalesce_under_load_ms: under_load_ms,
            ..Default::default()
        };
        FanOut::new(Batching::new(&server, load), plain)
    }

    fn publisher(router: &Router) -> Publisher {
        let info = SessionInfo { id: 1, peer: "p".into(), variant: "rtmp" };
        router.publish(StreamKey::new("live", "s"), info).unwrap()
    }

    fn audio(ts: u32) -> Frame {
        Frame::audio(ts, Bytes::from_static(&[0xaf, 0x01, 0x21]))
    }

    async fn ends_within(fan_out: &mut FanOut, limit: Duration) -> bool {
        tokio::time::timeout(limit, fan_out.window_end()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_opens_with_a_frame_and_closes_when_it_ends() {
        let router = Router::new(Default::default());
        let publisher = publisher(&router);
        let mut fan_out = fan_out(20, 0, Arc::default());
        assert!(!ends_within(&mut fan_out, Duration::from_secs(1)).await, "a window without frames");
        let opened = Instant::now();
        fan_out.send(&publisher, audio(0)).await;
        tokio::time::advance(Duration::from_millis(15)).await;
        fan_out.send(&publisher, audio(15)).await; // the same window
        assert!(ends_within(&mut fan_out, Duration::from_secs(1)).await);
        assert_eq!(opened.elapsed(), Duration::from_millis(20));
        // Closed: nothing ends again until a frame opens the next window.
        assert!(!ends_within(&mut fan_out, Duration::from_secs(1)).await);
        fan_out.send(&publisher, audio(30)).await;
        assert!(ends_within(&mut fan_out, Duration::from_millis(20)).await);
    }

    /// Records whether each frame came with more behind it.
    #[derive(Default)]
    struct RunSink(std::sync::Mutex<Vec<(u32, bool)>>);

    impl rtmpx_router::DirectSink for RunSink {
        fn try_send(&self, frame: &Frame, _: u32, more: bool) -> rtmpx_router::DirectSend {
            self.0.lock().unwrap().push((frame.timestamp, more));
            rtmpx_router::DirectSend::Sent
        }
    }

    #[tokio::test]
    async fn offered_frames_go_out_with_more_behind_them_until_the_read_is_finished() {
        let router = Router::new(Default::default());
        let publisher = publisher(&router);
        let mut player = router
            .play(StreamKey::new("live", "s"), SessionInfo { id: 2, peer: "q".into(), variant: "rtmp" });
        // Caught up (its queue empty), so frames go to its sink.
        assert!(matches!(player.try_recv(), Some(rtmpx_router::PlayerEvent::PublishStarted)));
        let sink = Arc::new(RunSink::default());
        player.set_direct_sink(Some(sink.clone()));
        let mut fan_out = fan_out(0, 0, Arc::default());
        fan_out.offer(&publisher, audio(0)).await;
        assert!(sink.0.lock().unwrap().is_empty(), "the first frame waits to know whether more follow");
        fan_out.offer(&publisher, audio(10)).await;
        fan_out.offer(&publisher, audio(20)).await;
        fan_out.finish(&publisher).await;
        fan_out.finish(&publisher).await; // nothing left: no second send
        fan_out.offer(&publisher, audio(30)).await;
        // Empty frames are dropped by the router: one must not be what ends the run.
        fan_out.offer(&publisher, Frame::audio(35, Bytes::new())).await;
        fan_out.finish(&publisher).await;
        assert_eq!(*sink.0.lock().unwrap(), [(0, true), (10, true), (20, false), (30, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn windows_under_load_follow_the_load() {
        let router = Router::new(Default::default());
        let publisher = publisher(&router);
        let load = Arc::<Load>::default();
        let mut fan_out = fan_out(0, 20, load.clone());
        fan_out.send(&publisher, audio(0)).await;
        assert!(!ends_within(&mut fan_out, Duration::from_secs(1)).await, "batched while idle");
        load.update(0.95, true);
        fan_out.send(&publisher, audio(40)).await;
        assert!(ends_within(&mut fan_out, Duration::from_millis(20)).await);
    }
}
