//! Transports: each turns a URL into a duplex byte stream that carries RTMP bytes.
//!
//! - rtmp, rtmpe: TCP.
//! - rtmps: TLS over TCP.
//! - rtmpt, rtmpte: the HTTP polling tunnel over TCP; rtmpts: the tunnel over TLS.
//!
//! RTMPE is not a transport matter: the session encrypts and decrypts at its byte boundary.

mod tls;
mod tunnel;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use tls::TlsOptions;
pub use tunnel::HttpTunnel;

use crate::error::{Error, Result};
use crate::url::RtmpUrl;
use crate::ClientOptions;

/// A duplex byte stream any transport produces.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Any transport, as one type (the connection does not care which).
pub type BoxedStream = Box<dyn Stream>;

/// Opens the transport for `url`: the returned stream carries the RTMP handshake and chunks.
pub async fn open(url: &RtmpUrl, opts: &ClientOptions) -> Result<BoxedStream> {
    let connector = Connector::new(url, opts)?;
    if url.scheme.is_tunnel() {
        let tunnel = HttpTunnel::open(connector, url.authority(), opts.tunnel_poll_interval).await?;
        Ok(Box::new(tunnel))
    } else {
        connector.connect().await.map_err(Error::io("connecting"))
    }
}

/// Opens TCP or TLS connections to one server; the tunnel reopens through it after a
/// `Connection: close`.
#[derive(Clone)]
pub(crate) struct Connector {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(url: &RtmpUrl, opts: &ClientOptions) -> Result<Self> {
        let tls = if url.scheme.is_tls() {
            let config = tls::client_config(&opts.tls)?;
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| Error::Tls(format!("server name {:?}: {e}", url.host)))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Connector { host: url.host.clone(), port: url.port, tls, timeout: opts.connect_timeout })
    }

    pub(crate) async fn connect(&self) -> io::Result<BoxedStream> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => Ok(Box::new(tcp) as BoxedStream),
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), tcp).await?;
                    Ok(Box::new(tls) as BoxedStream)
                }
            }
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
    }
}
