//! The admin HTTP listener: `/metrics` (Prometheus), the JSON API under `/api/v1/` and a status
//! page at `/`. Off unless the configuration has an `[admin]` table; binds to localhost by
//! default and, with `token` set, wants `Authorization: Bearer TOKEN` (or `?token=TOKEN`, for
//! browsers) on every request. Without a token, requests must name the admin listener by an IP
//! address or `localhost` in `Host`: a web page whose name resolves to 127.0.0.1 (DNS rebinding)
//! cannot read or drive the API.

mod api;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::logsafe::Throttle;
use crate::metrics::{MetricsView, Out, RelaySample};
use crate::registry::Registry;
use crate::relay::RelayManager;
use crate::reload::Reloader;
use crate::tunnel::TransportContext;

// `[admin]` is parsed with the rest of the configuration in the library target.
pub use crate::config::AdminSection;

const STATUS_PAGE: &str = include_str!("status.html");
/// The live preview (`/watch/APP/STREAM`): WebSocket-FLV decoded with WebCodecs onto a canvas.
const PREVIEW_PAGE: &str = include_str!("preview.html");

struct Admin {
    transport: Arc<TransportContext>,
    relays: RelayManager,
    /// Bound listeners that serve HTTP-FLV/WebSocket-FLV: (inside TLS, address), for the preview page.
    flv_listeners: Vec<(bool, SocketAddr)>,
    reloader: Arc<Reloader>,
    token: Option<String>,
    /// Host names accepted without a token besides addresses and `localhost` (`admin.hosts`).
    hosts: Vec<String>,
}

/// Binds the admin listener and serves it until the returned task is aborted.
pub async fn start(
    settings: &AdminSection,
    transport: Arc<TransportContext>,
    relays: RelayManager,
    reloader: Arc<Reloader>,
    flv_listeners: Vec<(bool, SocketAddr)>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(settings.addr)
        .await
        .map_err(Error::io(format!("binding the admin listener on {}", settings.addr)))?;
    let local = listener.local_addr().map_err(Error::io("reading the admin listener's address"))?;
    info!(
        "admin listener on {local}: status page http://{local}/ metrics http://{local}/metrics api http://{local}/api/v1/"
    );
    if settings.token.is_none() && !local.ip().is_loopback() {
        warn!(
            "the admin listener on {local} is reachable from other hosts and has no token: set admin.token"
        );
    }
    let admin = Arc::new(Admin {
        transport,
        relays,
        flv_listeners,
        reloader,
        token: settings.token.clone(),
        hosts: settings.hosts.clone(),
    });
    Ok(tokio::spawn(async move {
        let failed_log = Throttle::new(Duration::from_secs(10));
        let mut failures = 0u32;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if let Some(held_back) = failed_log.allow() {
                        warn!(held_back, "admin accept failed: {e}");
                    }
                    tokio::time::sleep(crate::descriptors::accept_backoff(failures)).await;
                    continue;
                }
            };
            failures = 0;
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    debug!(%peer, "admin connection: {e}");
                }
            });
        }
    }))
}

/// `/metrics`: the Prometheus text of everything the gateway counts, read now.
pub fn render_metrics(transport: &TransportContext, relays: &RelayManager) -> String {
    let ctx = &transport.session;
    let relays = relays.states().into_iter().map(|r| RelaySample {
        app: r.app,
        stream: r.stream,
        direction: r.direction.as_str(),
        url: r.url,
        state: r.state.as_str(),
        bytes: r.bytes,
        reconnects: r.reconnects,
    });
    let mut cluster = Out::default();
    if let Some(directory) = &ctx.cluster {
        directory.render_metrics(&mut cluster);
    }
    let mut expiries: Vec<_> =
        transport.certificates.get().into_iter().flatten().flat_map(|s| s.expiries()).collect();
    let acme = transport.acme.get();
    expiries.extend(acme.into_iter().flat_map(|acme| acme.expiries()));
    let mut tls = Out::default();
    crate::certinfo::render_expiries(&mut tls, expiries);
    let mut tls = tls.into_string();
    if let Some(acme) = acme {
        acme.render_metrics(&mut tls);
    }
    crate::metrics::render(&MetricsView {
        streams: ctx.router.streams(),
        worker_busy: ctx.load.busy(),
        write_batching: ctx.load.batching(),
        rtmpe_seals: crate::session::rtmpe_seal_counts(),
        relays: relays.collect(),
        cluster: cluster.into_string(),
        rtmpt_sessions: transport.tunnels.len(),
        rtmpt_sessions_expired: transport.tunnels.expired_total(),
        tls,
        ..MetricsView::sessions(&ctx.metrics, ctx.sessions.live())
    })
}

/// Samples every session's byte counters for the bitrate window. Runs until aborted.
pub async fn sample_bitrates(sessions: Arc<Registry>) {
    let mut tick = tokio::time::interval(crate::registry::SAMPLE_EVERY);
    loop {
        tick.tick().await;
        sessions.sample_rates();
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"null".to_vec());
    reply(status, "application/json", body)
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// Equal-time comparison, so the token cannot be guessed byte by byte from response times.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Largest request body the API reads.
const MAX_REQUEST_BODY: usize = 4096;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconnectBody {
    #[serde(rename = "tcUrl")]
    tc_url: Option<String>,
}

/// `%XX` escapes and `+` of a query value decoded (invalid escapes stay as they are).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// The credentials of `Authorization: Bearer CREDENTIALS` (the scheme in any case, RFC 9110).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, credentials) = header.trim_start().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// Whether `Host` names this machine by address, as `localhost` or as one of `names` (with or
/// without a port), not by a DNS name an attacker's page could point at 127.0.0.1.
fn host_is_known(host: &str, names: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => {
            return bracketed.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::Ipv4Addr>().is_ok()
        || names.iter().any(|known| known.eq_ignore_ascii_case(name))
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(expected) = &self.token else {
            // No Host at all is no browser; a browser always sends the name it resolved.
            let host = req.headers().get(HOST).map(|v| v.to_str().unwrap_or(""));
            return host.is_none_or(|host| host_is_known(host, &self.hosts));
        };
        let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let given = header.and_then(bearer).or_else(|| query_param(req.uri().query(), "token"));
        given.is_some_and(|given| same_secret(given.as_bytes(), expected.as_bytes()))
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        if !self.authorized(&req) {
            if self.token.is_none() {
                return error(
                    StatusCode::MISDIRECTED_REQUEST,
                    "without admin.token the admin API answers only requests to an IP address, localhost or a name in admin.hosts",
                );
            }
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
            response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return response;
        }
        let path = req.uri().path().trim_end_matches('/');
        let method = req.method();
        let ctx = &self.transport.session;
        match (method, path) {
            (&Method::GET, "") => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                render_metrics(&self.transport, &self.relays),
            ),
            (&Method::GET, "/api/v1/streams") => json(StatusCode::OK, &api::streams(ctx)),
            (&Method::GET, "/api/v1/sessions") => json(StatusCode::OK, &api::sessions(ctx)),
            (&Method::GET, "/api/v1/relays") => json(StatusCode::OK, &self.relays.states()),
            (&Method::GET, p) if p.starts_with("/watch/") => self.preview(&req, &p["/watch/".len()..]),
            (&Method::GET, "/api/v1/cluster") => match &ctx.cluster {
                Some(cluster) => json(StatusCode::OK, &cluster.view()),
                None => error(StatusCode::NOT_FOUND, "no [cluster] configured"),
            },
            (&Method::POST, "/api/v1/reload") => self.reload().await,
            (
                _,
                "" | "/metrics" | "/api/v1/streams" | "/api/v1/sessions" | "/api/v1/relays"
                | "/api/v1/cluster" | "/api/v1/reload",
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
            (_, p) if p.starts_with("/api/v1/sessions/") && p.ends_with("/reconnect") => {
                let id = &p["/api/v1/sessions/".len()..p.len() - "/reconnect".len()];
                let Ok(id) = id.parse::<u64>() else {
                    return error(StatusCode::NOT_FOUND, "no such session");
                };
                if *method != Method::POST {
                    return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
                }
                self.reconnect(id, req).await
            }
            (_, p) if p.starts_with("/api/v1/sessions/") => {
                let Ok(id) = p["/api/v1/sessions/".len()..].parse::<u64>() else {
                    return error(StatusCode::NOT_FOUND, "no such session");
                };
                match *method {
                    Method::GET => match api::session(ctx, id) {
                        Some(s) => json(StatusCode::OK, &s),
                        None => error(StatusCode::NOT_FOUND, "no such session"),
                    },
                    Method::DELETE => {
                        if ctx.sessions.kick(id, "kicked through the admin API") {
                            ctx.metrics.kicked();
                            info!(session = id, "session kicked through the admin API");
                            json(StatusCode::ACCEPTED, &serde_json::json!({ "kicked": id }))
                        } else {
                            error(StatusCode::NOT_FOUND, "no such session")
                        }
                    }
                    _ => error(StatusCode::METHOD_NOT_ALLOWED, "use GET or DELETE"),
                }
            }
            _ => {
                error(StatusCode::NOT_FOUND, "not found; try /, /metrics, /api/v1/streams, /api/v1/sessions")
            }
        }
    }

    /// `POST /api/v1/sessions/<id>/reconnect`: asks the session's client to reconnect (Enhanced
    /// RTMP), to `tcUrl` (JSON body or query) or where it is. Only clients whose `connect`
    /// announced the capability, unless `force=1`.
    async fn reconnect(&self, id: u64, req: Request<Incoming>) -> Reply {
        let query = req.uri().query().map(str::to_owned);
        let force = matches!(query_param(query.as_deref(), "force"), Some("1" | "true"));
        let mut tc_url = query_param(query.as_deref(), "tcUrl").map(percent_decode);
        let body = http_body_util::Limited::new(req.into_body(), MAX_REQUEST_BODY);
        let Ok(body) = http_body_util::BodyExt::collect(body).await.map(|b| b.to_bytes()) else {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 4 KiB or broken");
        };
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<ReconnectBody>(&body) {
                Ok(parsed) => tc_url = parsed.tc_url.or(tc_url),
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
            }
        }
        let tc_url = tc_url.filter(|url| !url.is_empty());
        if let Some(url) = &tc_url {
            if url.len() > 1024 || url.chars().any(char::is_control) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "tcUrl: at most 1024 characters, no control characters",
                );
            }
        }
        let Some(entry) = self.transport.session.sessions.get(id) else {
            return error(StatusCode::NOT_FOUND, "no such session");
        };
        let capable = entry.reconnect_capable();
        if !capable && !force {
            return error(
                StatusCode::CONFLICT,
                "the client did not announce the Reconnect capability (capsEx) in connect; force=1 sends anyway",
            );
        }
        info!(
            session = id,
            tc_url = tc_url.as_deref().unwrap_or("(the same)"),
            capable,
            "reconnect requested through the admin API"
        );
        entry.request_reconnect(crate::registry::ReconnectOrder {
            tc_url: tc_url.clone(),
            description: "reconnect requested by the operator".into(),
        });
        json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "reconnect": id, "tcUrl": tc_url, "capable": capable }),
        )
    }

    /// The preview page of `app/stream`, pointed at the first listener that serves WebSocket-FLV
    /// (plain before TLS), on the host name the browser used for this page. The page's query
    /// (a play `key` or token, not the admin token) goes along to the stream.
    fn preview(&self, req: &Request<Incoming>, app_stream: &str) -> Reply {
        let Some((app, stream)) = app_stream.split_once('/').filter(|(a, s)| !a.is_empty() && !s.is_empty())
        else {
            return error(StatusCode::NOT_FOUND, "use /watch/APP/STREAM");
        };
        let listeners = &self.flv_listeners;
        let Some((tls, addr)) = listeners.iter().min_by_key(|(tls, _)| *tls).copied() else {
            return error(
                StatusCode::NOT_FOUND,
                "no listener serves WebSocket-FLV (listener http_flv = false)",
            );
        };
        let authority = req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        let host = if host.is_empty() { addr.ip().to_string() } else { host.to_owned() };
        let query: Vec<&str> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("token="))
            .collect();
        let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
        let scheme = if tls { "wss" } else { "ws" };
        let source = format!("{scheme}://{host}:{}/{app}/{stream}.flv{query}", addr.port());
        let source = serde_json::to_string(&source).unwrap_or_default().replace('<', "\\u003c");
        let title =
            serde_json::to_string(&format!("{app}/{stream}")).unwrap_or_default().replace('<', "\\u003c");
        let page = PREVIEW_PAGE.replace("\"__SOURCE__\"", &source).replace("\"__TITLE__\"", &title);
        reply(StatusCode::OK, "text/html; charset=utf-8", page)
    }

    async fn reload(&self) -> Reply {
        let reloader = self.reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(report)) => json(StatusCode::OK, &report),
            Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("reload task failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abcdefgh", b"abcdefgh"));
        assert!(!same_secret(b"abcdefgx", b"abcdefgh"));
        assert!(!same_secret(b"abcdefg", b"abcdefgh"));
        assert!(!same_secret(b"", b"abcdefgh"));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("rtmp%3A%2F%2Fh%3A1936%2Flive"), "rtmp://h:1936/live");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc ", "\tBeArEr\tabc"] {
            assert_eq!(bearer(header), Some("abc"), "{header:?}");
        }
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn only_addresses_localhost_and_listed_names_pass_without_a_token() {
        let listed = ["rtmpx".to_string()];
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "localhost",
            "LocalHost:8080",
            "[::1]:8080",
            "[::1]",
            "10.0.0.5:80",
            "rtmpx:8080",
        ] {
            assert!(host_is_known(host, &listed), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.nip.io:8080",
            "",
            "[::1",
            "localhost.evil",
            "rtmpx.evil",
        ] {
            assert!(!host_is_known(host, &listed), "{host}");
        }
    }

    #[test]
    fn token_query_parameter() {
        assert_eq!(query_param(Some("a=1&token=xyz"), "token"), Some("xyz"));
        assert_eq!(query_param(Some("tokens=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }

    #[test]
    fn admin_section_parses_and_validates() {
        let base = "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:1935\"\n[[app]]\nname = \"live\"\n";
        let c = crate::config::Config::from_toml(&format!("{base}[admin]\n"), "t").unwrap();
        assert_eq!(c.admin.unwrap().addr, std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
        let c = crate::config::Config::from_toml(
            &format!("{base}[admin]\naddr = \"127.0.0.1:0\"\ntoken = \"s3cret-token\"\n"),
            "t",
        )
        .unwrap();
        assert_eq!(c.admin.unwrap().token.as_deref(), Some("s3cret-token"));
        assert!(crate::config::Config::from_toml(base, "t").unwrap().admin.is_none());
        let err = crate::config::Config::from_toml(&format!("{base}[admin]\ntoken = \"short\"\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.token"), "{err}");
        let err = crate::config::Config::from_toml(&format!("{base}[admin]\nport = 1\n"), "t").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }
}
