//! The TLS client configuration for rtmps and rtmpts.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::{Error, Result};

/// How rtmps/rtmpts verify the server.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// A PEM file of CA certificates trusted in addition to the built-in web roots
    /// (for servers with a private CA or a self-signed certificate).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate for any name. For development against test servers only: it
    /// removes all protection against an active attacker.
    pub dangerous_accept_any_certificate: bool,
}

impl TlsOptions {
    /// Reads the CA file as a connection would, so a bad one is reported before any connects.
    pub fn check(&self) -> Result<()> {
        client_config(self).map(drop)
    }
}

pub(crate) fn client_config(opts: &TlsOptions) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    if opts.dangerous_accept_any_certificate {
        let verifier = Arc::new(AcceptAnyCertificate(provider));
        return Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth());
    }
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = &opts.ca_file {
        let fail = |e: &dyn std::fmt::Display| Error::Tls(format!("CA file {}: {e}", path.display()));
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(&e))? {
            roots.add(cert.map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(fail(&"no certificates in it"));
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Trusts every certificate, but still checks that the server holds the key it presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_problems_are_reported() {
        let dir = std::env::temp_dir().join(format!("rtmpx-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = TlsOptions { ca_file: Some(dir.join("missing.pem")), ..TlsOptions::default() };
        assert!(matches!(client_config(&missing), Err(Error::Tls(_))));

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&TlsOptions { ca_file: Some(empty), ..TlsOptions::default() }).err();
        assert!(err.is_some_and(|e| e.to_string().contains("no certificates")));

        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert!(client_config(&TlsOptions { ca_file: Some(good), ..TlsOptions::default() }).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_and_dangerous_configs_build() {
        assert!(client_config(&TlsOptions::default()).is_ok());
        let dangerous = TlsOptions { dangerous_accept_any_certificate: true, ..TlsOptions::default() };
        assert!(client_config(&dangerous).is_ok());
    }
}
