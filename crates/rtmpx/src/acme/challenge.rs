//! Answers to the CA's challenges while an order runs: HTTP-01 key authorizations by token
//! (served on the HTTP-capable ports) and TLS-ALPN-01 certificates by domain (served to
//! handshakes that offer ALPN `acme-tls/1`, RFC 8737).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// Where the CA fetches HTTP-01 key authorizations (RFC 8555 §8.3).
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Outstanding challenges are few (one per domain of a running order); more is a bug.
const MAX_PENDING: usize = 256;

#[derive(Default)]
pub struct Challenges {
    http01: Mutex<HashMap<String, String>>,
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization for an HTTP-01 `token`, while its order runs.
    pub fn http01(&self, token: &str) -> Option<String> {
        lock(&self.http01).get(token).cloned()
    }

    /// The validation certificate for `domain` (case-insensitive), while its order runs.
    pub fn tls_alpn01(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn01).get(&domain.to_ascii_lowercase()).cloned()
    }
}

/// The challenges one order put up; taken down when it is dropped (order done or failed).
pub struct Posted<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    domains: Vec<String>,
}

impl<'a> Posted<'a> {
    pub fn new(challenges: &'a Challenges) -> Self {
        Posted { challenges, tokens: Vec::new(), domains: Vec::new() }
    }

    pub fn http01(&mut self, token: String, key_authorization: String) -> Result<(), String> {
        let mut map = lock(&self.challenges.http01);
        if map.len() >= MAX_PENDING {
            return Err("too many pending HTTP-01 challenges".into());
        }
        map.insert(token.clone(), key_authorization);
        self.tokens.push(token);
        Ok(())
    }

    pub fn tls_alpn01(&mut self, domain: &str, key_authorization_digest: &[u8]) -> Result<(), String> {
        let key = validation_certificate(domain, key_authorization_digest)?;
        let domain = domain.to_ascii_lowercase();
        let mut map = lock(&self.challenges.tls_alpn01);
        if map.len() >= MAX_PENDING {
            return Err("too many pending TLS-ALPN-01 challenges".into());
        }
        map.insert(domain.clone(), Arc::new(key));
        self.domains.push(domain);
        Ok(())
    }
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        let mut http = lock(&self.challenges.http01);
        for token in &self.tokens {
            http.remove(token);
        }
        drop(http);
        let mut alpn = lock(&self.challenges.tls_alpn01);
        for domain in &self.domains {
            alpn.remove(domain);
        }
    }
}

/// RFC 8737 §3: a self-signed certificate for `domain` with the critical acmeIdentifier
/// extension holding SHA-256 of the key authorization.
fn validation_certificate(domain: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let fail = |e: rcgen::Error| format!("making the tls-alpn-01 certificate for {domain}: {e}");
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(fail)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(fail)?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `from_der`: its key check parses the certificate with webpki, which refuses the
    // critical acmeIdentifier extension.
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("tls-alpn-01 key for {domain}: {e}"))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// The reply to `method` on `CHALLENGE_PATH` + `token`: the key authorization while its order
/// runs, a bare 404 for anything else (unknown or finished tokens, ACME off, other methods).
pub fn http01_response(
    challenges: Option<&Challenges>,
    method: &Method,
    token: &str,
) -> Response<Full<Bytes>> {
    let answer =
        (method == Method::GET || method == Method::HEAD).then(|| challenges?.http01(token)).flatten();
    let mut response = match answer {
        Some(key_authorization) => {
            let mut response = Response::new(Full::new(Bytes::from(key_authorization)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        None => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    };
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posted_challenges_are_answered_until_the_order_ends() {
        let challenges = Challenges::default();
        {
            let mut posted = Posted::new(&challenges);
            posted.http01("tok".into(), "tok.thumb".into()).unwrap();
            posted.tls_alpn01("Media.Example.com", &[7u8; 32]).unwrap();
            let ok = http01_response(Some(&challenges), &Method::GET, "tok");
            assert_eq!(ok.status(), StatusCode::OK);
            assert_eq!(
                http01_response(Some(&challenges), &Method::GET, "other").status(),
                StatusCode::NOT_FOUND
            );
            assert_eq!(
                http01_response(Some(&challenges), &Method::POST, "tok").status(),
                StatusCode::NOT_FOUND
            );
            assert!(challenges.tls_alpn01("media.example.com").is_some());
        }
        assert_eq!(http01_response(Some(&challenges), &Method::GET, "tok").status(), StatusCode::NOT_FOUND);
        assert_eq!(http01_response(None, &Method::GET, "tok").status(), StatusCode::NOT_FOUND);
        assert!(challenges.tls_alpn01("media.example.com").is_none());
    }

    #[test]
    fn the_validation_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [0xABu8; 32];
        let key = validation_certificate("media.example.com", &digest).unwrap();
        let der = key.cert[0].as_ref().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING (0x04, length 32) of the digest.
        assert_eq!(ext.value, [&[0x04u8, 32][..], &digest[..]].concat());
    }
}
