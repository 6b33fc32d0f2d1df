//! The tunnel session table: unguessable ids, limits per address and in total, expiry.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::rngs::OsRng;
use rand::RngCore;

use super::pipe::PipeEnd;
use crate::session::Transport;
use crate::sync::lock;

/// A tunnel session id: 128 bits from the operating system's CSPRNG, written as 32 lowercase hex
/// digits (clients copy it into URLs, so it stays within [0-9a-f]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 16]);

impl SessionId {
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        OsRng.fill_bytes(&mut bytes);
        SessionId(bytes)
    }

    /// Exactly 32 lowercase hex digits; anything else names no session.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            bytes[i] = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
        }
        Some(SessionId(bytes))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Ids are credentials: logs show only a prefix.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}{:02x}…", self.0[0], self.0[1])
    }
}

/// The HTTP side of one tunnel session's byte pipe, with its request sequencing state.
pub struct TunnelIo {
    /// The tunnel's end of the pipe whose other end the gateway session reads and writes.
    pub pipe: PipeEnd,
    /// The sequence number the next request must carry; the first request sets it.
    pub next_seq: Option<u64>,
    /// Consecutive polls that returned nothing, for the polling-interval byte.
    pub empty_polls: u32,
}

pub struct TunnelSession {
    pub id: SessionId,
    pub transport: Transport,
    pub ip: IpAddr,
    /// Milliseconds since the table's epoch of the last request.
    last_seen_ms: AtomicU64,
    /// The HTTP connection that carried the last request, or [`HUNG_UP`] once that connection
    /// closed: the client hung up and has not come back on another connection yet.
    last_connection: AtomicU64,
    /// When the client hung up (milliseconds since the table's epoch).
    hung_up_ms: AtomicU64,
    /// One request at a time per session, in arrival order.
    pub io: tokio::sync::Mutex<TunnelIo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenRefused {
    TooManySessions,
    TooManyForAddress,
}

/// Sessions closed by one [`SessionTable::expire`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// No request for the idle timeout.
    pub idle: usize,
    /// The client hung up and did not come back within the hang-up timeout.
    pub hung_up: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct TableLimits {
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
}

/// One HTTP connection that carries tunnel requests, numbered by the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId(u64);

/// `last_connection` of a session whose client hung up on its last request's connection.
const HUNG_UP: u64 = 0;

pub struct SessionTable {
    sessions: DashMap<SessionId, Arc<TunnelSession>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    expired: AtomicU64,
    next_connection: AtomicU64,
    epoch: Instant,
    /// Cluster: the first byte of every id, naming this node to the balancer.
    tag: Option<u8>,
}

impl Default for SessionTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionTable {
    pub fn new() -> Self {
        Self::with_tag(None)
    }

    /// A table whose session ids all start with `tag` (120 random bits stay).
    pub fn with_tag(tag: Option<u8>) -> Self {
        SessionTable {
            tag,
            sessions: DashMap::new(),
            per_ip: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            expired: AtomicU64::new(0),
            next_connection: AtomicU64::new(HUNG_UP + 1),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A number for a new HTTP connection, for [`touch`](Self::touch) and
    /// [`hung_up`](Self::hung_up).
    pub fn connection(&self) -> ConnectionId {
        ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers a new session around `pipe` (the HTTP side of the session's duplex stream),
    /// opened by a request on `connection`.
    pub fn open(
        &self,
        ip: IpAddr,
        transport: Transport,
        pipe: PipeEnd,
        limits: TableLimits,
        connection: ConnectionId,
    ) -> Result<Arc<TunnelSession>, OpenRefused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_sessions {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(OpenRefused::TooManySessions);
        }
        {
            let mut per_ip = lock(&self.per_ip);
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= limits.max_sessions_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(OpenRefused::TooManyForAddress);
            }
            *count += 1;
        }
        let io = TunnelIo { pipe, next_seq: None, empty_polls: 0 };
        loop {
            let mut id = SessionId::random();
            if let Some(tag) = self.tag {
                id.0[0] = tag;
            }
            // A repeated id is a 2^-128 event; still, never hand one out twice.
            if let dashmap::Entry::Vacant(slot) = self.sessions.entry(id) {
                let session = Arc::new(TunnelSession {
                    id,
                    transport,
                    ip,
                    last_seen_ms: AtomicU64::new(self.now_ms()),
                    last_connection: AtomicU64::new(connection.0),
                    hung_up_ms: AtomicU64::new(0),
                    io: tokio::sync::Mutex::new(io),
                });
                slot.insert(session.clone());
                return Ok(session);
            }
        }
    }

    /// The live session `id` opened on `transport`, marked as seen now on `connection`. A
    /// session is never reachable from the other transport (an RTMPTS id does not work over
    /// plain HTTP).
    pub fn touch(
        &self,
        id: SessionId,
        transport: Transport,
        connection: ConnectionId,
    ) -> Option<Arc<TunnelSession>> {
        let session = self.sessions.get(&id)?.clone();
        if session.transport != transport {
            return None;
        }
        session.last_seen_ms.store(self.now_ms(), Ordering::Relaxed);
        session.last_connection.store(connection.0, Ordering::Release);
        Some(session)
    }

    /// `connection` closed. A session whose last request came over it has lost its client
    /// (librtmp sends its last request and hangs up without `/close`), unless the client comes
    /// back on another connection within the hang-up timeout, as clients behind a proxy that
    /// opens a connection per request do.
    pub fn hung_up(&self, id: SessionId, connection: ConnectionId) {
        if let Some(session) = self.sessions.get(&id) {
            // The time first: whoever sees HUNG_UP also sees when.
            session.hung_up_ms.store(self.now_ms(), Ordering::Release);
            let _ = session.last_connection.compare_exchange(
                connection.0,
                HUNG_UP,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Forgets a session and releases its places in the limits. Dropping the last reference
    /// closes the pipe, which ends the gateway session.
    pub fn remove(&self, id: SessionId) -> Option<Arc<TunnelSession>> {
        let (_, session) = self.sessions.remove(&id)?;
        self.release(session.ip);
        Some(session)
    }

    fn release(&self, ip: IpAddr) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = lock(&self.per_ip);
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// Removes sessions without a request for `idle`, and sessions whose client hung up
    /// `hung_up` ago without coming back; returns how many of each.
    pub fn expire(&self, idle: Duration, hung_up: Duration) -> Expired {
        let now = self.now_ms();
        let idle_cutoff = now.saturating_sub(idle.as_millis() as u64);
        let hung_up_cutoff = now.saturating_sub(hung_up.as_millis() as u64);
        let why = |s: &TunnelSession| {
            if s.last_seen_ms.load(Ordering::Relaxed) < idle_cutoff {
                Some(false)
            } else if s.last_connection.load(Ordering::Acquire) == HUNG_UP
                && s.hung_up_ms.load(Ordering::Acquire) < hung_up_cutoff
            {
                Some(true)
            } else {
                None
            }
        };
        let stale: Vec<SessionId> =
            self.sessions.iter().filter(|e| why(e.value()).is_some()).map(|e| *e.key()).collect();
        let mut expired = Expired::default();
        for id in stale {
            let mut hang_up = false;
            // Checked again under the shard lock: a request may have arrived meanwhile.
            let still_stale = self.sessions.remove_if(&id, |_, s| why(s).inspect(|&h| hang_up = h).is_some());
            if let Some((_, session)) = still_stale {
                self.release(session.ip);
                if hang_up {
                    expired.hung_up += 1;
                } else {
                    expired.idle += 1;
                }
            }
        }
        self.expired.fetch_add(expired.idle as u64, Ordering::Relaxed);
        expired
    }

    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Sessions closed by [`SessionTable::expire`] for being idle, since start.
    pub fn expired_total(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TableLimits = TableLimits { max_sessions: 3, max_sessions_per_ip: 2 };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    const CONNECTION: ConnectionId = ConnectionId(1);

    fn pipe() -> PipeEnd {
        super::super::pipe::pipe(64).0
    }

    #[test]
    fn ids_round_trip_and_reject_anything_else() {
        let id = SessionId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(text.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(SessionId::parse(&text) == Some(id));
        assert_ne!(SessionId::random().to_string(), text);
        assert!(SessionId::parse("0123456789ABCDEF0123456789abcdef").is_none());
        assert!(SessionId::parse(&text[..31]).is_none());
        assert!(SessionId::parse(&format!("{text}0")).is_none());
        assert!(SessionId::parse("0123456789abcdef0123456789abcdeg").is_none());
        assert!(SessionId::parse("").is_none());
        assert_eq!(SessionId::parse("000102030405060708090a0b0c0d0eff").unwrap().0[15], 0xff);
    }

    #[tokio::test]
    async fn a_tagged_table_starts_every_id_with_its_tag() {
        let table = SessionTable::with_tag(Some(0xa1));
        let limits = TableLimits { max_sessions: 10, max_sessions_per_ip: 10 };
        let ids: Vec<String> = (0..4)
            .map(|_| table.open(ip(1), Transport::Http, pipe(), limits, CONNECTION).unwrap().id.to_string())
            .collect();
        assert!(ids.iter().all(|id| id.starts_with("a1") && id.len() == 32), "{ids:?}");
        assert!(ids[1..].iter().all(|id| id != &ids[0]), "{ids:?}");
    }

    #[tokio::test]
    async fn limits_per_address_and_in_total() {
        let table = SessionTable::new();
        let a = table.open(ip(1), Transport::Http, pipe(), LIMITS, CONNECTION).unwrap();
        table.open(ip(1), Transport::Http, pipe(), LIMITS, CONNECTION).unwrap();
        assert_eq!(
            table.open(ip(1), Transport::Http, pipe(), LIMITS, CONNECTION).err(),
            Some(OpenRefused::TooManyForAddress)
        );
        table.open(ip(2), Transport::Http, pipe(), LIMITS, CONNECTION).unwrap();
        assert_eq!(
            table.open(ip(3), Transport::Http, pipe(), LIMITS, CONNECTION).err(),
            Some(OpenRefused::TooManySessions)
        );
        assert_eq!(table.len(), 3);
        assert!(table.remove(a.id).is_some());
        assert!(table.remove(a.id).is_none(), "removing twice releases once");
        assert_eq!(table.len(), 2);
        table.open(ip(1), Transport::Http, pipe(), LIMITS, CONNECTION).unwrap();
    }

    #[tokio::test]
    async fn lookup_needs_the_same_transport() {
        let table = SessionTable::new();
        let s = table.open(ip(1), Transport::HttpTls, pipe(), LIMITS, CONNECTION).unwrap();
        assert!(table.touch(s.id, Transport::Http, CONNECTION).is_none());
        assert!(table.touch(s.id, Transport::HttpTls, CONNECTION).is_some());
        assert!(table.touch(SessionId::random(), Transport::HttpTls, CONNECTION).is_none());
    }

    #[tokio::test]
    async fn idle_sessions_expire_and_are_counted() {
        let table = SessionTable::new();
        let old = table.open(ip(1), Transport::Http, pipe(), LIMITS, CONNECTION).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let fresh = table.open(ip(1), Transport::Http, pipe(), LIMITS, CONNECTION).unwrap();
        let expired = table.expire(Duration::from_millis(20), Duration::from_secs(60));
        assert_eq!(expired, Expired { idle: 1, hung_up: 0 });
        assert!(table.touch(old.id, Transport::Http, CONNECTION).is_none());
        assert!(table.touch(fresh.id, Transport::Http, CONNECTION).is_some());
        assert_eq!(table.expired_total(), 1);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn a_session_whose_client_hung_up_ends_unless_it_comes_back_on_another_connection() {
        let table = SessionTable::new();
        let (a, b) = (table.connection(), table.connection());
        assert_ne!(a, b);
        let gone = table.open(ip(1), Transport::Http, pipe(), LIMITS, a).unwrap();
        let moved = table.open(ip(1), Transport::Http, pipe(), LIMITS, a).unwrap();
        let elsewhere = table.open(ip(2), Transport::Http, pipe(), LIMITS, b).unwrap();
        // `moved` sends its next request over connection b before a closes; `elsewhere` was
        // never on a.
        table.touch(moved.id, Transport::Http, b).unwrap();
        for id in [gone.id, moved.id, elsewhere.id] {
            table.hung_up(id, a);
        }
        let (idle, grace) = (Duration::from_secs(60), Duration::from_millis(20));
        assert_eq!(table.expire(idle, grace), Expired::default(), "within the grace");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(table.expire(idle, grace), Expired { idle: 0, hung_up: 1 });
        assert!(table.touch(gone.id, Transport::Http, b).is_none());
        assert!(table.touch(moved.id, Transport::Http, b).is_some());
        assert!(table.touch(elsewhere.id, Transport::Http, b).is_some());
        assert_eq!(table.expired_total(), 0, "hang-ups are not idle expiries");

        // A client that hangs up and comes back within the grace keeps its session.
        table.hung_up(moved.id, b);
        table.touch(moved.id, Transport::Http, a).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(table.expire(idle, grace), Expired::default());
    }
}
