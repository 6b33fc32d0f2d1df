//! What one RTMPE handshake costs the server (BENCHMARKS.md, SECURITY.md): runs handshakes of
//! each RTMPE type between a client and a server session in memory and times only the server's
//! side, in CPU time of the thread (wall time on a shared machine counts other processes too).
//! `cargo run --release -p rtmpx-core --example rtmpe_handshake_cost [count]`

use std::time::Duration;

use rand::SeedableRng;
use rtmpx_core::handshake::HandshakeVersion;
use rtmpx_core::session::{ClientConfig, ClientSession, ServerConfig, ServerEvent, ServerSession};

/// CPU time this thread has used.
#[allow(unsafe_code)]
fn thread_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn main() {
    let count: u32 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(500);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for version in [
        HandshakeVersion::Plain,
        HandshakeVersion::Rtmpe,
        HandshakeVersion::RtmpeXtea,
        HandshakeVersion::RtmpeBlowfish,
    ] {
        let mut server_time = Duration::ZERO;
        for _ in 0..count {
            let mut config = ClientConfig::new("live", "rtmp://127.0.0.1/live");
            config.version = version;
            let mut client = ClientSession::new(config, &mut rng);
            let started = thread_cpu();
            let mut server = ServerSession::new(ServerConfig::default(), &mut rng);
            server_time += thread_cpu() - started;
            let mut done = false;
            for _ in 0..16 {
                while let Some(bytes) = client.poll_transmit() {
                    let started = thread_cpu();
                    server.handle_input(&bytes).expect("server input");
                    server_time += thread_cpu() - started;
                }
                while let Some(event) = server.poll_event() {
                    done |= matches!(event, ServerEvent::HandshakeComplete { .. });
                }
                while let Some(bytes) = server.poll_transmit() {
                    client.handle_input(&bytes).expect("client input");
                }
                while client.poll_event().is_some() {}
                if done {
                    break;
                }
            }
            assert!(done, "{version:?}: the handshake did not complete");
        }
        let each = server_time / count;
        println!(
            "{version:?}: {count} handshakes, server CPU {:.3} ms each, {:.0} handshakes/s per core",
            each.as_secs_f64() * 1e3,
            1.0 / each.as_secs_f64()
        );
    }
}
