//! The CPU cost of a fan-out's sends alone, per delivered GB, four ways: `writev` per player (what
//! rtmpx does), `sendmsg` per player, and one io_uring submission per frame for all players
//! (`IORING_OP_WRITEV`, and `IORING_OP_SENDMSG` on registered files).
//!
//! One process on CPU 0 paces the bench stream's frames (AAC 372 B every 23.22 ms, H.264 10,965
//! B every 40 ms with an 87,719 B keyframe every 50 frames, as `rtmpx-bench` sends them) and writes
//! each to every player's loopback socket in rtmpx's layout (a 12-byte chunk header, then
//! 4,096-byte chunks with a 1-byte header before each continuation); a child process on CPU 1
//! drains all sockets with epoll. No RTMP work: only what the kernel charges the sender.
//!
//! With `--ingest`, the other direction: a child process on CPU 1 plays PUBLISHERS publishers of
//! that stream (one write per frame, their clocks spread over a video frame's 40 ms), and this
//! process on CPU 0 only waits in epoll and reads each ready socket into one 16 KiB buffer until
//! it would block: the floor of any server that reads frames as they arrive.
//!
//! Usage: `cargo run --release --manifest-path scripts/send_path/Cargo.toml -- [PLAYERS ...]
//! [--rounds N] [--seconds S] [--ingest]` (defaults: 200 1000 players or 200 publishers, 4
//! rounds, 6 s measured after 2 s). The modes alternate within each round, so a drift of the
//! host's speed hits them alike.
//!
//! `unsafe` is everywhere here (epoll, `sendmsg`, io_uring submissions whose iovecs must outlive
//! them): fine for a measurement, and the reason this is not in the gateway as it stands.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODES: [&str; 4] = ["writev", "sendmsg", "uring-writev", "uring-sendmsg-fixed"];
const SENDER_CPU: usize = 0;
const READER_CPU: usize = 1;
const WARM_UP: Duration = Duration::from_secs(2);

fn pin(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
    }
}

/// CPU seconds of this process, all threads (io_uring's workers included).
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn chunked<'a>(header: &'a [u8], continuation: &'a [u8], payload: &'a [u8]) -> Vec<IoSlice<'a>> {
    let mut pieces = vec![IoSlice::new(header)];
    for (n, chunk) in payload.chunks(4096).enumerate() {
        if n > 0 {
            pieces.push(IoSlice::new(continuation));
        }
        pieces.push(IoSlice::new(chunk));
    }
    pieces
}

/// Edge-triggered epoll over a set of sockets, reporting them by index.
struct Readable {
    epoll: i32,
    events: Vec<libc::epoll_event>,
}

impl Readable {
    fn new(socks: &[TcpStream]) -> Self {
        let epoll = unsafe { libc::epoll_create1(0) };
        for (n, s) in socks.iter().enumerate() {
            let mut event =
                libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: n as u64 };
            unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut event) };
        }
        Readable { epoll, events: vec![libc::epoll_event { events: 0, u64: 0 }; 256] }
    }

    /// The sockets that became readable, waiting up to `timeout_ms` (-1: no limit).
    fn wait(&mut self, timeout_ms: i32) -> Vec<usize> {
        let ready = unsafe { libc::epoll_wait(self.epoll, self.events.as_mut_ptr(), 256, timeout_ms) };
        self.events[..ready.max(0) as usize].iter().map(|e| e.u64 as usize).collect()
    }
}

/// The child's side of [`spawn_peer`]: on its own CPU, `count` sockets to the measured process.
fn connect_to_parent(port: u16, count: usize) -> Vec<TcpStream> {
    pin(READER_CPU);
    (0..count).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect()
}

/// The child: connects `players` sockets and reads until the sender closes them.
fn reader(port: u16, players: usize) {
    let mut socks = connect_to_parent(port, players);
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    let mut readable = Readable::new(&socks);
    let mut buf = vec![0u8; 256 * 1024];
    let mut open = players;
    while open > 0 {
        for n in readable.wait(-1) {
            let s = &mut socks[n];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        open -= 1;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// The bench stream's frames in order: (due after the stream's start, payload).
struct Schedule {
    video_frames: u64,
    audio_frames: u64,
}

impl Schedule {
    fn new() -> Self {
        Schedule { video_frames: 0, audio_frames: 0 }
    }

    /// The next frame: when it is due and which of keyframe (0), inter frame (1), audio (2).
    fn next(&mut self) -> (Duration, usize) {
        let video_at = Duration::from_micros(self.video_frames * 40_000);
        let audio_at = Duration::from_micros(self.audio_frames * 23_220);
        if video_at <= audio_at {
            self.video_frames += 1;
            (video_at, if (self.video_frames - 1).is_multiple_of(50) { 0 } else { 1 })
        } else {
            self.audio_frames += 1;
            (audio_at, 2)
        }
    }
}

fn payloads() -> [Vec<u8>; 3] {
    [vec![1u8; 87_719], vec![2u8; 10_965], vec![3u8; 372]]
}

/// The ingest child: `publishers` sockets, each sending the stream with its clock shifted by
/// its share of 40 ms, until `until` has passed.
fn writer(port: u16, publishers: usize, until: Duration) {
    let mut socks = connect_to_parent(port, publishers);
    for s in &socks {
        s.set_nodelay(true).unwrap();
    }
    let (header, continuation) = ([0u8; 12], [0xc4u8; 1]);
    let payloads = payloads();
    let start = Instant::now();
    let shift = |n: usize| Duration::from_micros(40_000 * n as u64 / publishers as u64);
    let mut next: Vec<(Schedule, (Duration, usize))> = (0..publishers)
        .map(|n| {
            let mut schedule = Schedule::new();
            let (at, kind) = schedule.next();
            (schedule, (at + shift(n), kind))
        })
        .collect();
    while start.elapsed() < until {
        let now = start.elapsed();
        let mut earliest = now + Duration::from_millis(1);
        for (n, (schedule, due)) in next.iter_mut().enumerate() {
            while due.0 <= now {
                let pieces = chunked(&header, &continuation, &payloads[due.1]);
                let total: usize = pieces.iter().map(|p| p.len()).sum();
                match socks[n].write_vectored(&pieces) {
                    Ok(written) => assert_eq!(written, total, "the reader fell behind"),
                    // The reader has finished measuring and closed its end.
                    Err(_) => return,
                }
                let (at, kind) = schedule.next();
                *due = (at + shift(n), kind);
            }
            earliest = earliest.min(due.0);
        }
        if let Some(wait) = earliest.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Starts this program as the peer (`args`: its role and what follows the port) and accepts the
/// `count` sockets it connects.
fn spawn_peer(role: &str, count: usize, extra: &[String]) -> (Child, Vec<TcpStream>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([role, &port, &count.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let socks = (0..count).map(|_| listener.accept().unwrap().0).collect();
    (child, socks)
}

/// The measured stretch of a trial: CPU and bytes count from the end of the warm-up on.
struct Window {
    start: Instant,
    length: Duration,
    cpu_at_start: Option<f64>,
    bytes: u64,
}

impl Window {
    fn new(seconds: f64) -> Self {
        Window {
            start: Instant::now(),
            length: Duration::from_secs_f64(seconds),
            cpu_at_start: None,
            bytes: 0,
        }
    }

    /// Whether the trial goes on; starts the count once the warm-up is over.
    fn running(&mut self) -> bool {
        let elapsed = self.start.elapsed();
        if self.cpu_at_start.is_none() && elapsed >= WARM_UP {
            self.cpu_at_start = Some(cpu_seconds());
            self.bytes = 0;
        }
        elapsed < WARM_UP + self.length
    }

    /// CPU seconds per GB counted.
    fn cpu_per_gb(&self) -> f64 {
        (cpu_seconds() - self.cpu_at_start.expect("the window ran")) / (self.bytes as f64 / 1e9)
    }
}

/// One ingest trial: CPU seconds per received GB of a process that only reads.
fn ingest_trial(publishers: usize, seconds: f64) -> f64 {
    let until = WARM_UP + Duration::from_secs_f64(seconds) + Duration::from_secs(1);
    let (mut child, mut socks) = spawn_peer("writer", publishers, &[until.as_secs_f64().to_string()]);
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    let mut readable = Readable::new(&socks);
    let mut buf = vec![0u8; 16 * 1024];
    let mut window = Window::new(seconds);
    while window.running() {
        for n in readable.wait(100) {
            let s = &mut socks[n];
            // As tokio does: a read that did not fill the buffer means the socket is drained.
            while let Ok(n @ 1..) = s.read(&mut buf) {
                window.bytes += n as u64;
                if n < buf.len() {
                    break;
                }
            }
        }
    }
    let cpu_per_gb = window.cpu_per_gb();
    drop(socks);
    child.wait().unwrap();
    cpu_per_gb
}

/// One trial: returns CPU seconds per delivered GB.
fn trial(mode: &str, players: usize, seconds: f64) -> f64 {
    let (mut child, mut socks) = spawn_peer("reader", players, &[]);
    for s in &socks {
        s.set_nodelay(true).unwrap();
    }
    let (header, continuation) = ([0u8; 12], [0xc4u8; 1]);
    let payloads = payloads();
    let mut ring = io_uring::IoUring::new(4096).unwrap();
    let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();
    ring.submitter().register_files(&fds).unwrap();

    let mut window = Window::new(seconds);
    let mut schedule = Schedule::new();
    let mut short = 0u64;
    loop {
        let (at, kind) = schedule.next();
        let payload = &payloads[kind];
        if let Some(wait) = at.checked_sub(window.start.elapsed()) {
            std::thread::sleep(wait);
        }
        if !window.running() {
            break;
        }
        let pieces = chunked(&header, &continuation, payload);
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = pieces.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = pieces.len();
        match mode {
            "writev" => {
                for s in socks.iter_mut() {
                    short += u64::from(s.write_vectored(&pieces).unwrap() < total);
                }
            }
            "sendmsg" => {
                for s in &socks {
                    short += u64::from(
                        unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_DONTWAIT) } < total as isize,
                    );
                }
            }
            _ => {
                {
                    let mut queue = ring.submission();
                    for (n, fd) in fds.iter().enumerate() {
                        let entry = if mode == "uring-writev" {
                            io_uring::opcode::Writev::new(
                                io_uring::types::Fd(*fd),
                                msg.msg_iov,
                                pieces.len() as u32,
                            )
                            .build()
                        } else {
                            io_uring::opcode::SendMsg::new(io_uring::types::Fixed(n as u32), &msg).build()
                        };
                        // The pieces and `msg` live until every completion below has been reaped.
                        unsafe { queue.push(&entry.user_data(n as u64)).unwrap() };
                    }
                }
                ring.submit_and_wait(players).unwrap();
                for completion in ring.completion() {
                    short += u64::from(completion.result() < total as i32);
                }
            }
        }
        window.bytes += (total * players) as u64;
    }
    let cpu_per_gb = window.cpu_per_gb();
    // The ring holds the registered sockets open: it goes first, so the reader sees them close.
    drop(ring);
    drop(socks);
    child.wait().unwrap();
    assert_eq!(short, 0, "{mode}: short writes (the reader fell behind); the figure would not compare");
    cpu_per_gb
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("reader") => return reader(args[1].parse().unwrap(), args[2].parse().unwrap()),
        Some("writer") => {
            let until = Duration::from_secs_f64(args[3].parse().unwrap());
            return writer(args[1].parse().unwrap(), args[2].parse().unwrap(), until);
        }
        _ => {}
    }
    let (mut counts, mut rounds, mut seconds, mut ingest) = (Vec::new(), 4, 6.0, false);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--rounds" => rounds = rest.next().unwrap().parse().unwrap(),
            "--seconds" => seconds = rest.next().unwrap().parse().unwrap(),
            "--ingest" => ingest = true,
            n => counts.push(n.parse::<usize>().unwrap()),
        }
    }
    pin(SENDER_CPU);
    if ingest {
        let publishers = counts.first().copied().unwrap_or(200);
        let figures: Vec<f64> = (0..rounds).map(|_| ingest_trial(publishers, seconds)).collect();
        let each: Vec<String> = figures.iter().map(|f| format!("{f:.3}")).collect();
        println!(
            "ingest floor, {publishers} publishers: CPU s per received GB {} (median {:.3})",
            each.join(", "),
            median(figures)
        );
        return;
    }
    if counts.is_empty() {
        counts = vec![200, 1000];
    }
    println!("| players | mode | CPU s per delivered GB, each round | median | × writev |");
    println!("|---:|---|---|---:|---:|");
    for players in counts {
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
        for _ in 0..rounds {
            for (n, mode) in MODES.iter().enumerate() {
                results[n].push(trial(mode, players, seconds));
            }
        }
        let base = median(results[0].clone());
        for (mode, figures) in MODES.iter().zip(results) {
            let each: Vec<String> = figures.iter().map(|f| format!("{f:.3}")).collect();
            let m = median(figures);
            println!("| {players} | {mode} | {} | {m:.3} | {:.2} |", each.join(", "), m / base);
        }
    }
}
