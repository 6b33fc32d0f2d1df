//! The HTTPS client instant-acme talks to the CA with: one connection per request (an order
//! makes a dozen), rustls with the ring provider, the web roots plus `tls.acme.ca_file`, and
//! every request bounded in time and in the size of its answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, HOST};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

/// Largest answer accepted from the CA (certificate chains are a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

pub struct AcmeHttp {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl AcmeHttp {
    /// Trusts the web roots and, when given, every certificate in the PEM file `ca_file`.
    pub fn new(ca_file: Option<&std::path::Path>, timeout: Duration) -> Result<AcmeHttp, String> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("tls.acme.ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("tls.acme.ca_file {}: no CERTIFICATE in it", path.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("tls.acme.ca_file {}: {e}", path.display()))?;
            }
        }
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(AcmeHttp { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), timeout })
    }
}

type Reply = Result<BytesResponse, instant_acme::Error>;

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        request: hyper::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Reply> + Send>> {
        let (tls, timeout) = (self.tls.clone(), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, send(tls, request)).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(message)) => Err(instant_acme::Error::Other(message.into())),
                Err(_) => Err(instant_acme::Error::Other(format!("no answer within {timeout:?}").into())),
            }
        })
    }
}

async fn send(
    tls: tokio_rustls::TlsConnector,
    mut request: hyper::Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, String> {
    let uri = request.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(format!("{uri}: the CA must be reached over https"));
    }
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{uri}: {e}"))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{uri}: {e}"))?;
    let stream = tls.connect(name, tcp).await.map_err(|e| format!("{uri}: TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{uri}: {e}"))?;
    tokio::spawn(connection);
    // HTTP/1.1 wants the origin form and a Host header.
    let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or(host);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *request.uri_mut() = path.parse().map_err(|e| format!("{uri}: {e}"))?;
    request.headers_mut().insert(HOST, HeaderValue::from_str(&authority).map_err(|e| e.to_string())?);
    let response = sender.send_request(request).await.map_err(|e| format!("{uri}: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("{uri}: reading the answer: {e}"))?
        .to_bytes();
    Ok(BytesResponse::from(hyper::Response::from_parts(parts, Full::new(body))))
}
