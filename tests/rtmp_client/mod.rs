//! A raw RTMP client for the auth and adversarial tests: rtmpx-core's client role over a real
//! TCP or TLS socket, so a test sees exactly what the gateway sent (status codes, closes).

#![allow(dead_code)] // each test binary uses a different part

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
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
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

/// Connects over `wire` with `version` to `app`, does `intent`, and reports how it went.
/// `tc_url` is what the client claims (the gateway forwards it to callbacks).
pub fn attempt(
    mut wire: Box<dyn Wire>,
    version: HandshakeVersion,
    app: &str,
    tc_url: &str,
    intent: Intent,
    limit: Duration,
) -> (Outcome, Box<dyn Wire>) {
    let mut config = ClientConfig::new(app, tc_url);
    config.version = version;
    let mut session = ClientSession::new(config, &mut rand::thread_rng());
    match &intent {
        Intent::Publish(name) => session.publish(name),
        Intent::Play(name) => session.play(name),
        Intent::Connect => {}
    }
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(bytes) = session.poll_transmit() {
            if let Err(e) = wire.write_all(&bytes).and_then(|_| wire.flush()) {
                return (Outcome::Closed(format!("write: {e}")), wire);
            }
        }
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Rejected { code, description } => {
                    return (Outcome::Rejected { code, description }, wire)
                }
                ClientEvent::PublishStarted { .. } | ClientEvent::PlayStarted { .. } => {
                    return (Outcome::Started, wire)
                }
                ClientEvent::Connected if matches!(intent, Intent::Connect) => {
                    return (Outcome::Started, wire)
                }
                _ => {}
            }
        }
        if Instant::now() > deadline {
            return (Outcome::Closed("deadline".into()), wire);
        }
        match wire.read(&mut buf) {
            Ok(0) => return (Outcome::Closed("end of stream".into()), wire),
            Ok(n) => {
                if let Err(e) = session.handle_input(&buf[..n]) {
                    return (Outcome::Closed(format!("client session: {e}")), wire);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return (Outcome::Closed(format!("read: {e}")), wire),
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
