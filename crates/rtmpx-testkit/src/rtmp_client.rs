//! A raw RTMP client for the auth and adversarial tests: rtmpx-core's client role over a real
//! TCP or TLS socket, so a test sees exactly what the gateway sent (status codes, closes).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtmpx_core::handshake::HandshakeVersion;
use rtmpx_core::session::{ClientConfig, ClientEvent, ClientSession};

/// A byte stream with a read timeout: TCP or TLS.
pub trait Wire: Read + Write + Send {}
impl<T: Read + Write + Send> Wire for T {}

/// Plain TCP with a short read timeout (so the driver can poll).
pub fn tcp(addr: SocketAddr) -> Box<dyn Wire> {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    stream.set_nodelay(true).unwrap();
    Box::new(stream)
}

/// TLS (any certificate accepted: the gateway uses its development certificate).
pub fn tls(addr: SocketAddr) -> Box<dyn Wire> {
    tls_with_read_timeout(addr, Duration::from_millis(20))
}

/// TLS as [`tls`], with reads that wait up to `read_timeout`.
pub fn tls_with_read_timeout(addr: SocketAddr, read_timeout: Duration) -> Box<dyn Wire> {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    Box::new(rustls::StreamOwned::new(connection, stream))
}

#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// What the client wants after connect.
#[derive(Debug, Clone)]
pub enum Intent {
    /// Connect only.
    Connect,
    Publish(String),
    Play(String),
}

/// How a short client session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The publish or play started (or connect succeeded for [`Intent::Connect`]).
    Started,
    /// The gateway refused with this code and description.
    Rejected { code: String, description: String },
    /// The gateway closed the connection (or the deadline passed) before either.
    Closed(String),
}

/// A client session on a socket, after [`attempt`].
pub struct Conn {
    pub session: ClientSession,
    pub wire: Box<dyn Wire>,
    /// The stream id of a started publish or play.
    pub stream_id: Option<u32>,
    buf: Vec<u8>,
}

impl Conn {
    /// Writes what the session has queued; false once the socket failed.
    pub fn flush(&mut self) -> bool {
        while let Some(bytes) = self.session.poll_transmit() {
            if self.wire.write_all(&bytes).and_then(|_| self.wire.flush()).is_err() {
                return false;
            }
        }
        true
    }

    /// Reads and handles what arrives for about `duration`; returns the events, or `Err` with
    /// the events so far when the connection ended.
    pub fn pump(&mut self, duration: Duration) -> Result<Vec<ClientEvent>, Vec<ClientEvent>> {
        let deadline = Instant::now() + duration;
        let mut events = Vec::new();
        loop {
            if !self.flush() {
                return Err(events);
            }
            match self.wire.read(&mut self.buf) {
                Ok(0) => return Err(events),
                Ok(n) => {
                    if self.session.handle_input(&self.buf[..n]).is_err() {
                        return Err(events);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Err(events),
            }
            while let Some(event) = self.session.poll_event() {
                events.push(event);
            }
            if Instant::now() >= deadline {
                return Ok(events);
            }
        }
    }
}

/// Connects over `wire` with `version` to `app`, does `intent`, and reports how it went.
/// `tc_url` is what the client claims (the gateway forwards it to callbacks).
pub fn attempt(
    wire: Box<dyn Wire>,
    version: HandshakeVersion,
    app: &str,
    tc_url: &str,
    intent: Intent,
    limit: Duration,
) -> (Outcome, Conn) {
    let mut config = ClientConfig::new(app, tc_url);
    config.version = version;
    let mut session = ClientSession::new(config, &mut rand::thread_rng());
    match &intent {
        Intent::Publish(name) => session.publish(name),
        Intent::Play(name) => session.play(name),
        Intent::Connect => {}
    }
    let mut conn = Conn { session, wire, stream_id: None, buf: vec![0u8; 64 * 1024] };
    let deadline = Instant::now() + limit;
    loop {
        if !conn.flush() {
            return (Outcome::Closed("write failed".into()), conn);
        }
        while let Some(event) = conn.session.poll_event() {
            match event {
                ClientEvent::Rejected { code, description } => {
                    return (Outcome::Rejected { code, description }, conn)
                }
                ClientEvent::PublishStarted { stream_id } | ClientEvent::PlayStarted { stream_id } => {
                    conn.stream_id = Some(stream_id);
                    return (Outcome::Started, conn);
                }
                ClientEvent::Connected if matches!(intent, Intent::Connect) => {
                    return (Outcome::Started, conn)
                }
                _ => {}
            }
        }
        if Instant::now() > deadline {
            return (Outcome::Closed("deadline".into()), conn);
        }
        match conn.wire.read(&mut conn.buf) {
            Ok(0) => return (Outcome::Closed("end of stream".into()), conn),
            Ok(n) => {
                if let Err(e) = conn.session.handle_input(&conn.buf[..n]) {
                    return (Outcome::Closed(format!("client session: {e}")), conn);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return (Outcome::Closed(format!("read: {e}")), conn),
        }
    }
}

/// Reads until the peer closes; true when it did within `limit`.
pub fn closed_within(wire: &mut dyn Wire, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match wire.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}
