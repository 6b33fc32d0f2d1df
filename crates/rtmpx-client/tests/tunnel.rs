//! The RTMPT client transport against a scripted tunnel server that echoes what it receives,
//! over plain HTTP (rtmpt) and HTTPS (rtmpts). It checks the wire format (paths, sequence
//! numbers, headers), keep-alive, responses split into single bytes, reconnecting after
//! `Connection: close`, and the final `/close`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpx_client::transport;
use rtmpx_client::{ClientOptions, RtmpUrl};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Default)]
struct Log {
    /// (connection number, request path) in arrival order.
    requests: Vec<(usize, String)>,
    bad_headers: Vec<String>,
}

/// Serves one echo tunnel: every 7th response closes the connection, every 3rd is written one
/// byte at a time.
async fn echo_server(listener: TcpListener, tls: Option<TlsAcceptor>, log: Arc<Mutex<Log>>) {
    let pending = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut answered = 0usize;
    for conn in 0.. {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let mut stream: Box<dyn Duplex> = match &tls {
            None => Box::new(tcp),
            Some(acceptor) => match acceptor.accept(tcp).await {
                Ok(s) => Box::new(s),
                Err(_) => return,
            },
        };
        let mut buf = Vec::new();
        loop {
            let Some((path, body)) = read_request(&mut stream, &mut buf, &log).await else { break };
            log.lock().unwrap().requests.push((conn, path.clone()));
            let mut reply = Vec::new();
            if path == "/open/1" {
                reply.extend_from_slice(b"s3ss10n\n");
            } else if path.starts_with("/send/") || path.starts_with("/idle/") {
                if path.starts_with("/send/") {
                    pending.lock().unwrap().extend_from_slice(&body);
                }
                reply.push(1);
                // Echo at most 5000 bytes per answer, so the client must keep polling.
                let mut p = pending.lock().unwrap();
                let n = p.len().min(5000);
                reply.extend(p.drain(..n));
            } else if !path.starts_with("/close/") {
                log.lock().unwrap().bad_headers.push(format!("unexpected path {path}"));
            }
            answered += 1;
            let close = answered.is_multiple_of(7);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-fcs\r\nContent-Length: {}\r\n{}\r\n",
                reply.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            let mut response = head.into_bytes();
            response.extend_from_slice(&reply);
            if answered.is_multiple_of(3) {
                for b in &response {
                    if stream.write_all(&[*b]).await.is_err() {
                        return;
                    }
                }
            } else if stream.write_all(&response).await.is_err() {
                return;
            }
            let _ = stream.flush().await;
            if close || path.starts_with("/close/") {
                let _ = stream.shutdown().await;
                break;
            }
        }
    }
}

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

async fn read_request(
    stream: &mut Box<dyn Duplex>,
    buf: &mut Vec<u8>,
    log: &Mutex<Log>,
) -> Option<(String, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) = req.parse(buf).ok()? {
            let path = req.path?.to_owned();
            let header = |name: &str| {
                req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.to_vec())
            };
            if req.method != Some("POST") || req.version != Some(1) {
                log.lock().unwrap().bad_headers.push(format!("{path}: not an HTTP/1.1 POST"));
            }
            if header("content-type").as_deref() != Some(&b"application/x-fcs"[..]) {
                log.lock().unwrap().bad_headers.push(format!("{path}: content type"));
            }
            if header("host").is_none() {
                log.lock().unwrap().bad_headers.push(format!("{path}: no Host"));
            }
            let len: usize = std::str::from_utf8(&header("content-length")?).ok()?.parse().ok()?;
            while buf.len() < head_len + len {
                read_more(stream, buf).await?;
            }
            let body = buf[head_len..head_len + len].to_vec();
            buf.drain(..head_len + len);
            return Some((path, body));
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut Box<dyn Duplex>, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// Echoes 300 KB through the tunnel, idles, closes, then checks what the server saw.
async fn echo_through_tunnel(scheme: &str, tls: Option<TlsAcceptor>, opts: ClientOptions) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Log::default()));
    let server = tokio::spawn(echo_server(listener, tls, log.clone()));

    let url = RtmpUrl::parse(&format!("{scheme}://localhost:{port}/live/s")).unwrap();
    let mut stream = transport::open(&url, &opts).await.expect("open tunnel");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let (mut reader, mut writer) = tokio::io::split(&mut stream);
    let write = async {
        for piece in data.chunks(10_000) {
            writer.write_all(piece).await.unwrap();
        }
        writer.flush().await.unwrap();
    };
    let read = async {
        let mut got = vec![0u8; data.len()];
        reader.read_exact(&mut got).await.unwrap();
        got
    };
    let (_, got) = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(write, read) })
        .await
        .expect("echo in time");
    assert!(got == data, "echoed bytes differ");

    // Nothing to send: the client polls with idle requests.
    tokio::time::sleep(Duration::from_millis(150)).await;
    stream.shutdown().await.unwrap();
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !log.lock().unwrap().requests.iter().any(|(_, p)| p.starts_with("/close/")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("/close sent");

    let log = log.lock().unwrap();
    assert!(log.bad_headers.is_empty(), "{:?}", log.bad_headers);
    assert_eq!(log.requests[0].1, "/open/1");
    // Every later request names the session and counts up from 0 without gaps.
    for (seq, (_, path)) in log.requests[1..].iter().enumerate() {
        let parts: Vec<&str> = path.split('/').collect();
        assert_eq!(parts.len(), 4, "{path}");
        assert!(["send", "idle", "close"].contains(&parts[1]), "{path}");
        assert_eq!((parts[2], parts[3]), ("s3ss10n", seq.to_string().as_str()), "{path}");
    }
    let idles = log.requests.iter().filter(|(_, p)| p.starts_with("/idle/")).count();
    assert!(idles >= 2, "only {idles} idle polls");
    // The server closed every 7th connection and the client carried on over new ones.
    let connections = log.requests.last().unwrap().0 + 1;
    assert!(connections >= log.requests.len() / 7, "{connections} connections");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpt_carries_bytes_both_ways_and_closes() {
    echo_through_tunnel("rtmpt", None, ClientOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmpts_carries_bytes_both_ways_and_closes() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = rtmpx_testkit::TempDir::new("client-tunnel");
    let ca = dir.path().join("cert.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let mut opts = ClientOptions::default();
    opts.tls.ca_file = Some(ca);
    echo_through_tunnel("rtmpts", Some(TlsAcceptor::from(Arc::new(config))), opts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_error_status_fails_the_open() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
    });
    let url = RtmpUrl::parse(&format!("rtmpt://127.0.0.1:{port}/live/s")).unwrap();
    let err = transport::open(&url, &ClientOptions::default()).await.err().expect("open must fail");
    assert!(err.to_string().contains("404"), "{err}");
}
