//! TLS acceptance for RTMPS (and RTMPTS): a certificate store that picks certificates by SNI
//! and reloads on demand, and an acceptor that bounds each handshake in time.
//!
//! The acceptor wraps any byte stream, so the HTTP tunnel can reuse it for RTMPTS. Reloading
//! swaps the store's certificates for new handshakes; established sessions keep their keys.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::acme::Acme;
use crate::certinfo::Expiry;
use crate::config::acme::ChallengeKind;
use crate::config::{CertPaths, Config, Proto, TlsSection};
use crate::devcert;
use crate::error::{Error, Result};
use crate::sync::{read, write};

/// Largest certificate or key file read; real chains are a few KiB.
const MAX_PEM_FILE: u64 = 1 << 20;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One certificate chain with its key, as loaded from its files.
struct LoadedCert {
    paths: CertPaths,
    key: Arc<CertifiedKey>,
    fingerprint: String,
    /// Each name it serves and when it expires, for `/metrics`.
    expiries: Vec<Expiry>,
}

/// The certificates of one TLS listener (or of the generated development certificate).
pub struct CertStore {
    sources: Vec<CertPaths>,
    current: RwLock<Arc<Vec<LoadedCert>>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("sources", &self.sources).finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads every chain and key; the first is the default for clients that send no (or an
    /// unknown) server name.
    pub fn load(sources: Vec<CertPaths>) -> Result<Arc<Self>> {
        let certs = load_all(&sources)?;
        for cert in &certs {
            info!(cert = %cert.paths.cert.display(), fingerprint = %cert.fingerprint, "TLS certificate loaded");
        }
        Ok(Arc::new(CertStore { sources, current: RwLock::new(Arc::new(certs)) }))
    }

    /// Reads the files again. All or nothing: on any error the certificates in use stay.
    pub fn reload(&self) -> Result<()> {
        let certs = load_all(&self.sources)?;
        for cert in &certs {
            info!(cert = %cert.paths.cert.display(), fingerprint = %cert.fingerprint, "TLS certificate reloaded");
        }
        *write(&self.current) = Arc::new(certs);
        Ok(())
    }

    /// The names of the certificates in use and when each expires (`/metrics`).
    pub fn expiries(&self) -> Vec<Expiry> {
        read(&self.current).iter().flat_map(|c| c.expiries.iter().cloned()).collect()
    }

    /// SHA-256 fingerprints (`AB:CD:...`) of the leaf certificates in use, in configured order.
    pub fn fingerprints(&self) -> Vec<String> {
        read(&self.current).iter().map(|c| c.fingerprint.clone()).collect()
    }

    pub(crate) fn select(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = read(&self.current).clone();
        let by_name = server_name.and_then(|name| {
            let name = ServerName::try_from(name).ok()?;
            certs.iter().find(|c| covers(&c.key, &name))
        });
        by_name.or_else(|| certs.first()).map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(client_hello.server_name())
    }
}

/// Listeners on the ACME certificate: it serves clients without SNI and those asking for one of
/// its names; the development certificate (when `tls.acme.dev_fallback`) serves other names and
/// stands in until the first certificate is issued.
#[derive(Debug)]
struct AcmeResolver {
    acme: Arc<Acme>,
    fallback: Option<Arc<CertStore>>,
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name();
        let current = self.acme.certificate();
        match &current {
            Some(issued) if name.is_none_or(|n| issued.covers(n)) => Some(issued.key.clone()),
            _ => self.fallback.as_ref().and_then(|dev| dev.select(name)).or(current.map(|c| c.key.clone())),
        }
    }
}

/// Whether the leaf certificate's names cover `name` (SAN DNS names and wildcards, IPs).
fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(leaf) = key.cert.first() else { return false };
    webpki::EndEntityCert::try_from(leaf).is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
}

/// Reads and parses a chain and its key as a listener would, and checks that they match.
pub fn check_files(paths: &CertPaths) -> Result<()> {
    load_one(paths).map(drop)
}

fn load_all(sources: &[CertPaths]) -> Result<Vec<LoadedCert>> {
    sources.iter().map(load_one).collect()
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>> {
    let cert_error = |message: String| Error::Certificate { path: path.display().to_string(), message };
    let meta = std::fs::metadata(path).map_err(|e| cert_error(e.to_string()))?;
    if meta.len() > MAX_PEM_FILE {
        return Err(cert_error(format!("{} bytes is too large for a PEM file", meta.len())));
    }
    std::fs::read(path).map_err(|e| cert_error(e.to_string()))
}

fn load_one(paths: &CertPaths) -> Result<LoadedCert> {
    let cert_error =
        |path: &Path, message: String| Error::Certificate { path: path.display().to_string(), message };
    let chain_pem = read_pem_file(&paths.cert)?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| cert_error(&paths.cert, format!("bad PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error(&paths.cert, "no CERTIFICATE block".into()));
    };
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| cert_error(&paths.cert, format!("not a usable certificate: {e}")))?;
    let fingerprint = fingerprint(leaf);
    // For `/metrics` only: a leaf rustls takes but x509-parser does not just shows no expiry.
    let expiries = match crate::certinfo::leaf_facts(leaf.as_ref()) {
        Ok(facts) => {
            let not_after = facts.not_after;
            let names = facts.dns_names.into_iter().chain(facts.ip_addresses);
            names.map(|name| Expiry { name, source: "file", not_after }).collect()
        }
        Err(e) => {
            warn!(cert = %paths.cert.display(), "no expiry for /metrics: {e}");
            Vec::new()
        }
    };

    let key_pem = read_pem_file(&paths.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        cert_error(&paths.key, format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"))
    })?;
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| cert_error(&paths.key, format!("does not fit {}: {e}", paths.cert.display())))?;
    Ok(LoadedCert { paths: paths.clone(), key: Arc::new(key), fingerprint, expiries })
}

/// SHA-256 of a certificate's DER, as `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// TLS 1.2 and 1.3 with rustls' default (safe) cipher suites, certificates from `store`.
pub fn server_config(store: Arc<dyn ResolvesServerCert>, settings: &TlsSection) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(store);
    // librtmp (GnuTLS build) treats gnutls_record_recv's GNUTLS_E_AGAIN, which GnuTLS returns
    // after consuming a post-handshake NewSessionTicket, as a failed read: no tickets by default.
    config.send_tls13_tickets = settings.tls13_session_tickets;
    Arc::new(config)
}

/// Accepts TLS on any byte stream, bounded by the handshake timeout.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
    /// Set where TLS-ALPN-01 validations are answered (ACME listeners of proto rtmps).
    acme_validation: Option<Arc<Acme>>,
}

impl TlsAcceptor {
    pub fn new(store: Arc<dyn ResolvesServerCert>, settings: &TlsSection) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(store, settings));
        TlsAcceptor { acceptor, handshake_timeout: settings.handshake_timeout, acme_validation: None }
    }

    /// Runs the server side of the TLS handshake. rustls bounds what a handshake may buffer;
    /// the timeout bounds how long a stalled peer holds the connection.
    pub async fn accept<IO>(&self, io: IO, peer: SocketAddr) -> Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            match &self.acme_validation {
                Some(acme) => accept_or_validate(acme, self.acceptor.config().clone(), io).await,
                None => self.acceptor.accept(io).await.map(Some),
            }
        };
        let stream = tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| Error::TlsHandshake(format!("no handshake within {:?}", self.handshake_timeout)))?
            .map_err(|e| Error::TlsHandshake(describe_handshake_error(&e)))?
            .ok_or(Error::AcmeValidation)?;
        let (_, conn) = stream.get_ref();
        debug!(
            %peer,
            version = ?conn.protocol_version(),
            cipher = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
            sni = conn.server_name().unwrap_or("-"),
            "TLS handshake complete"
        );
        Ok(stream)
    }
}

/// Reads the ClientHello first: one offering ALPN `acme-tls/1` is a CA validating TLS-ALPN-01
/// (RFC 8737), answered with the challenge certificate and closed (`None`); any other goes on
/// with `config`.
async fn accept_or_validate<IO>(
    acme: &Acme,
    config: Arc<ServerConfig>,
    io: IO,
) -> io::Result<Option<TlsStream<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
    let hello = start.client_hello();
    if !hello.alpn().is_some_and(|mut offered| offered.any(|p| p == crate::acme::ACME_TLS_ALPN)) {
        return start.into_stream(config).await.map(Some);
    }
    let name = hello.server_name().unwrap_or_default().to_owned();
    let Some(key) = acme.challenges().tls_alpn01(&name) else {
        return Err(io::Error::other(format!(
            "acme-tls/1 handshake for {name:?}, which has no pending challenge"
        )));
    };
    let mut validation = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    validation.alpn_protocols = vec![crate::acme::ACME_TLS_ALPN.to_vec()];
    // The connection ends right after the handshake: nothing to resume.
    validation.send_tls13_tickets = 0;
    let mut stream = start.into_stream(Arc::new(validation)).await?;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    debug!(name, "answered an ACME tls-alpn-01 validation");
    Ok(None)
}

fn describe_handshake_error(e: &io::Error) -> String {
    let hint = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            " (the client does not speak TLS: plain RTMP or HTTP sent to a TLS port?)"
        }
        Some(rustls::Error::AlertReceived(_)) => {
            " (the client rejected the handshake, e.g. it does not trust the certificate)"
        }
        _ => "",
    };
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return "the client closed the connection mid-handshake".into();
    }
    format!("{e}{hint}")
}

/// The TLS side of the configured listeners.
pub struct ListenerTls {
    /// One per listener, in configured order; `None` for plain listeners.
    pub acceptors: Vec<Option<TlsAcceptor>>,
    /// Every distinct certificate store, for SIGHUP.
    pub stores: Vec<Arc<CertStore>>,
}

/// Loads the certificates of every TLS listener. Those without certificates share the ACME
/// certificate when `[tls.acme]` is set (`acme`), else the development certificate, generated
/// when missing.
pub fn listener_acceptors(config: &Config, acme: Option<&Arc<Acme>>) -> Result<ListenerTls> {
    let mut stores: Vec<Arc<CertStore>> = Vec::new();
    let mut dev_store: Option<Arc<CertStore>> = None;
    let mut acceptors = Vec::new();
    for lc in &config.listeners {
        if !lc.proto.is_tls() {
            acceptors.push(None);
            continue;
        }
        if let Some(acme) = acme.filter(|_| lc.tls.acme || lc.tls.is_empty()) {
            let fallback = match (&dev_store, acme.settings().dev_fallback) {
                (_, false) => None,
                (Some(dev), true) => Some(dev.clone()),
                (None, true) => {
                    let store = dev_certificate(config)?;
                    stores.push(store.clone());
                    dev_store = Some(store.clone());
                    Some(store)
                }
            };
            let resolver = Arc::new(AcmeResolver { acme: acme.clone(), fallback });
            let mut acceptor = TlsAcceptor::new(resolver, &config.tls);
            if lc.proto == Proto::Rtmps && acme.settings().wants(ChallengeKind::TlsAlpn01) {
                acceptor.acme_validation = Some(acme.clone());
            }
            acceptors.push(Some(acceptor));
            continue;
        }
        let store = match (&dev_store, lc.tls.is_empty()) {
            (_, false) => CertStore::load(lc.tls.to_vec())?,
            (Some(dev), true) => dev.clone(),
            (None, true) => {
                let store = dev_certificate(config)?;
                dev_store = Some(store.clone());
                store
            }
        };
        if !stores.iter().any(|s| Arc::ptr_eq(s, &store)) {
            stores.push(store.clone());
        }
        acceptors.push(Some(TlsAcceptor::new(store, &config.tls)));
    }
    Ok(ListenerTls { acceptors, stores })
}

fn dev_certificate(config: &Config) -> Result<Arc<CertStore>> {
    let dir = &config.tls.cert_dir;
    let (files, generated) = devcert::ensure(dir, &config.tls.hosts)?;
    if generated {
        warn!(
            "generated a self-signed development certificate for {} in {}: players must skip \
             verification or trust {}; set tls = [{{ cert, key }}] on the listener for a real one",
            devcert::names(&config.tls.hosts).join(", "),
            dir.display(),
            files.ca_cert.display()
        );
    } else {
        warn!(
            "using the self-signed development certificate in {}: players must skip verification or trust {}",
            dir.display(),
            files.ca_cert.display()
        );
    }
    CertStore::load(vec![files.leaf()])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devcert;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::UnixTime;
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Checks the handshake signatures for real but trusts any certificate, and remembers it.
    #[derive(Debug)]
    struct RecordingVerifier {
        provider: Arc<CryptoProvider>,
        seen: std::sync::Mutex<Vec<String>>,
        /// Skip the signature checks too: webpki cannot read a TLS-ALPN-01 certificate (its
        /// critical acmeIdentifier extension), so the handshake signature cannot be checked.
        skip_signatures: bool,
    }

    impl ServerCertVerifier for RecordingVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            self.seen.lock().unwrap().push(fingerprint(end_entity));
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            if self.skip_signatures {
                return Ok(HandshakeSignatureValid::assertion());
            }
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            if self.skip_signatures {
                return Ok(HandshakeSignatureValid::assertion());
            }
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    }

    fn fixture(name: &str) -> CertPaths {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        CertPaths { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
    }

    /// Handshakes in memory with `sni` and `version`; returns the leaf fingerprint the client saw
    /// and the version negotiated, after echoing one message through.
    async fn handshake(
        acceptor: &TlsAcceptor,
        sni: &str,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> std::result::Result<(String, rustls::ProtocolVersion), String> {
        let verifier = Arc::new(RecordingVerifier {
            provider: provider(),
            seen: Default::default(),
            skip_signatures: false,
        });
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let server = async move {
            let mut tls = acceptor.accept(server_io, peer).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(&buf).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(tls)
        };
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let client = async move {
            let mut tls = connector.connect(name, client_io).await.map_err(|e| e.to_string())?;
            tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"hello");
            Ok::<_, String>(tls.get_ref().1.protocol_version().unwrap())
        };
        let (server, client) = tokio::join!(server, client);
        let _server = server?;
        let version = client?;
        let seen = verifier.seen.lock().unwrap().clone();
        Ok((seen.first().cloned().unwrap_or_default(), version))
    }

    /// Handshakes offering `alpn` without exchanging data; returns the server's outcome and what
    /// the client saw (leaf fingerprint, negotiated ALPN).
    async fn handshake_offering(
        acceptor: &TlsAcceptor,
        sni: &str,
        alpn: &[&[u8]],
    ) -> (std::result::Result<(), String>, std::result::Result<(String, Option<Vec<u8>>), String>) {
        let skip_signatures = alpn.contains(&crate::acme::ACME_TLS_ALPN);
        let verifier =
            Arc::new(RecordingVerifier { provider: provider(), seen: Default::default(), skip_signatures });
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let server =
            async move { acceptor.accept(server_io, peer).await.map(drop).map_err(|e| e.to_string()) };
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let client = async move {
            let tls = connector.connect(name, client_io).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        };
        let (server, client) = tokio::join!(server, client);
        let seen = verifier.seen.lock().unwrap().first().cloned().unwrap_or_default();
        (server, client.map(|alpn| (seen, alpn)))
    }

    /// A self-signed certificate and key for `names`, PEM, as an ACME cache file holds them.
    fn issued_pem(names: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        format!("{}{}", params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn acme_listeners_answer_tls_alpn01_and_pick_certificates_by_name() {
        let dir = tempdir("acme-alpn");
        let settings = format!(
            "domains = [\"media.example.com\"]\ncache_dir = {:?}\nchallenges = [\"tls-alpn-01\"]\n",
            dir.display().to_string()
        );
        let acme = Acme::new(toml::from_str(&settings).unwrap());
        let dev = CertStore::load(vec![fixture("p256")]).unwrap();
        let dev_fingerprint = dev.fingerprints()[0].clone();
        let resolver = Arc::new(AcmeResolver { acme: acme.clone(), fallback: Some(dev) });
        let mut acceptor = TlsAcceptor::new(resolver, &TlsSection::default());
        acceptor.acme_validation = Some(acme.clone());

        // Before the first issuance everyone gets the development certificate, with or without ALPN.
        for alpn in [&[][..], &[&b"http/1.1"[..]][..]] {
            let (server, client) = handshake_offering(&acceptor, "media.example.com", alpn).await;
            server.unwrap();
            assert_eq!(client.unwrap(), (dev_fingerprint.clone(), None));
        }

        // The CA's validation handshake: the challenge certificate with ALPN acme-tls/1, then the
        // connection carries nothing else.
        let mut posted = crate::acme::challenge::Posted::new(acme.challenges());
        posted.tls_alpn01("media.example.com", &[9; 32]).unwrap();
        let challenge_fingerprint =
            fingerprint(&acme.challenges().tls_alpn01("media.example.com").unwrap().cert[0]);
        let (server, client) = handshake_offering(&acceptor, "media.example.com", &[b"acme-tls/1"]).await;
        let server = server.unwrap_err();
        assert!(server.contains("tls-alpn-01"), "{server}");
        assert_eq!(client.unwrap(), (challenge_fingerprint, Some(b"acme-tls/1".to_vec())));
        let (server, client) = handshake_offering(&acceptor, "other.example.com", &[b"acme-tls/1"]).await;
        assert!(server.unwrap_err().contains("no pending challenge"), "refused without a challenge");
        assert!(client.is_err());
        drop(posted);
        let (server, _) = handshake_offering(&acceptor, "media.example.com", &[b"acme-tls/1"]).await;
        assert!(server.unwrap_err().contains("no pending challenge"), "the answer ends with the order");

        // Issued: its names and clients without SNI get it, other names the fallback.
        let issued = crate::acme::Issued::parse(issued_pem(&["media.example.com"]).as_bytes()).unwrap();
        let acme_fingerprint = fingerprint(&issued.key.cert[0]);
        acme.install(issued);
        let (_, client) = handshake_offering(&acceptor, "Media.Example.COM", &[]).await;
        assert_eq!(client.unwrap().0, acme_fingerprint);
        let (_, client) = handshake_offering(&acceptor, "localhost", &[]).await;
        assert_eq!(client.unwrap().0, dev_fingerprint);
    }

    fn acceptor(sources: Vec<CertPaths>) -> (TlsAcceptor, Arc<CertStore>) {
        let store = CertStore::load(sources).unwrap();
        (TlsAcceptor::new(store.clone(), &TlsSection::default()), store)
    }

    #[tokio::test]
    async fn rsa_ecdsa_and_ed25519_keys_all_serve_tls12_and_tls13() {
        // RSA (PKCS#1 key), ECDSA P-256 (SEC1 key), Ed25519 (PKCS#8 key), made by openssl.
        for name in ["rsa", "p256", "ed25519"] {
            let (acceptor, store) = acceptor(vec![fixture(name)]);
            let expected = store.fingerprints()[0].clone();
            for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
                let (seen, negotiated) = handshake(&acceptor, "localhost", version).await.unwrap();
                assert_eq!(seen, expected, "{name}");
                assert_eq!(negotiated, version.version, "{name}");
            }
        }
    }

    #[tokio::test]
    async fn sni_picks_the_certificate_whose_names_match_and_defaults_to_the_first() {
        let dir = tempdir("sni");
        let a = devcert::generate(&dir.join("a"), &["a.example".to_string()]).unwrap();
        let b = devcert::generate(&dir.join("b"), &["b.example".to_string(), "*.wild.example".to_string()])
            .unwrap();
        let (acceptor, store) = acceptor(vec![a.leaf(), b.leaf()]);
        let [fa, fb] = <[String; 2]>::try_from(store.fingerprints()).unwrap();
        assert_ne!(fa, fb);
        let v13 = &rustls::version::TLS13;
        assert_eq!(handshake(&acceptor, "a.example", v13).await.unwrap().0, fa);
        assert_eq!(handshake(&acceptor, "b.example", v13).await.unwrap().0, fb);
        assert_eq!(handshake(&acceptor, "x.wild.example", v13).await.unwrap().0, fb);
        assert_eq!(handshake(&acceptor, "unknown.example", v13).await.unwrap().0, fa);
        // An IP address sends no SNI: the default.
        assert_eq!(handshake(&acceptor, "127.0.0.1", v13).await.unwrap().0, fa);
    }

    #[tokio::test]
    async fn reload_swaps_for_new_handshakes_and_keeps_the_old_on_errors() {
        let dir = tempdir("reload");
        let first = devcert::generate(&dir.join("one"), &[]).unwrap();
        let second = devcert::generate(&dir.join("two"), &[]).unwrap();
        let live = CertPaths { cert: dir.join("live.pem"), key: dir.join("live.key") };
        std::fs::copy(&first.cert, &live.cert).unwrap();
        std::fs::copy(&first.key, &live.key).unwrap();
        let (acceptor, store) = acceptor(vec![live.clone()]);
        let old = store.fingerprints()[0].clone();
        assert_eq!(handshake(&acceptor, "localhost", &rustls::version::TLS13).await.unwrap().0, old);

        std::fs::copy(&second.cert, &live.cert).unwrap();
        std::fs::copy(&second.key, &live.key).unwrap();
        store.reload().unwrap();
        let new = store.fingerprints()[0].clone();
        assert_ne!(new, old);
        assert_eq!(handshake(&acceptor, "localhost", &rustls::version::TLS13).await.unwrap().0, new);

        // A key that does not belong to the certificate, then garbage: both refused, `new` stays.
        std::fs::copy(&first.key, &live.key).unwrap();
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        std::fs::write(&live.cert, "not a certificate").unwrap();
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        assert_eq!(store.fingerprints(), std::slice::from_ref(&new));
        assert_eq!(handshake(&acceptor, "localhost", &rustls::version::TLS13).await.unwrap().0, new);
    }

    #[tokio::test]
    async fn a_stalled_or_non_tls_client_fails_in_bounded_time() {
        let settings = TlsSection { handshake_timeout: Duration::from_secs(1), ..TlsSection::default() };
        let acceptor = TlsAcceptor::new(CertStore::load(vec![fixture("p256")]).unwrap(), &settings);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();

        let (_client, server_io) = tokio::io::duplex(1024);
        let started = std::time::Instant::now();
        let err = acceptor.accept(server_io, peer).await.unwrap_err().to_string();
        assert!(err.contains("no handshake within 1s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));

        // Plain RTMP C0+C1 on the TLS port.
        let (mut client, server_io) = tokio::io::duplex(4096);
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[0u8; 1536]);
        client.write_all(&c0c1).await.unwrap();
        let err = acceptor.accept(server_io, peer).await.unwrap_err().to_string();
        assert!(err.contains("does not speak TLS"), "{err}");
    }

    #[test]
    fn fingerprint_matches_openssl_format() {
        let der = CertificateDer::from(vec![1u8, 2, 3]);
        let fp = fingerprint(&der);
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("03:90:58:C6:F2:C0:CB:49"), "{fp}");
    }

    #[test]
    fn missing_and_mismatched_files_name_the_file() {
        let missing = CertPaths { cert: "/nonexistent/c.pem".into(), key: "/nonexistent/k.pem".into() };
        assert!(CertStore::load(vec![missing]).unwrap_err().to_string().contains("/nonexistent/c.pem"));
        let mixed = CertPaths { cert: fixture("rsa").cert, key: fixture("p256").key };
        let err = CertStore::load(vec![mixed]).unwrap_err().to_string();
        assert!(err.contains("p256.key") && err.contains("does not fit"), "{err}");
    }

    /// A fresh directory, removed when dropped.
    pub(crate) struct TempDir(std::path::PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn tempdir(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "rtmpx-tls-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
