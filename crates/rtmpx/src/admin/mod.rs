//! The admin HTTP listener: `/metrics` (Prometheus), the JSON API under `/api/v1/` and a status
//! page at `/`. Off unless the configuration has an `[admin]` table; binds to localhost by
//! default and, with `token` set, wants `Authorization: Bearer TOKEN` (or `?token=TOKEN`, for
//! browsers) on every request.

mod api;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::reload::Reloader;
use crate::server::Shared;

// `[admin]` is parsed with the rest of the configuration in the library target.
pub use crate::config::AdminSection;

const STATUS_PAGE: &str = include_str!("status.html");

struct Admin {
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    token: Option<String>,
}

/// Binds the admin listener and serves it until the returned task is aborted.
pub async fn start(
    settings: &AdminSection,
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
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
    let admin = Arc::new(Admin { shared, reloader, token: settings.token.clone() });
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("admin accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
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

/// Samples every session's byte counters for the bitrate window. Runs until aborted.
pub async fn sample_bitrates(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(crate::registry::SAMPLE_EVERY);
    loop {
        tick.tick().await;
        shared.sessions.sample_rates();
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

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(expected) = &self.token else { return true };
        let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let given = header
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| query_param(req.uri().query(), "token"));
        given.is_some_and(|given| same_secret(given.trim().as_bytes(), expected.as_bytes()))
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        if !self.authorized(&req) {
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
            response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return response;
        }
        let path = req.uri().path().trim_end_matches('/');
        let method = req.method();
        let shared = &self.shared;
        match (method, path) {
            (&Method::GET, "") => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(shared),
            ),
            (&Method::GET, "/api/v1/streams") => json(StatusCode::OK, &api::streams(shared)),
            (&Method::GET, "/api/v1/sessions") => json(StatusCode::OK, &api::sessions(shared)),
            (&Method::GET, "/api/v1/relays") => json(StatusCode::OK, &shared.relay_states()),
            (&Method::GET, "/api/v1/cluster") => match &shared.cluster {
                Some(cluster) => json(StatusCode::OK, &cluster.view()),
                None => error(StatusCode::NOT_FOUND, "no [cluster] configured"),
            },
            (&Method::POST, "/api/v1/reload") => self.reload().await,
            (
                _,
                "" | "/metrics" | "/api/v1/streams" | "/api/v1/sessions" | "/api/v1/relays"
                | "/api/v1/cluster" | "/api/v1/reload",
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
            (_, p) if p.starts_with("/api/v1/sessions/") => {
                let Ok(id) = p["/api/v1/sessions/".len()..].parse::<u64>() else {
                    return error(StatusCode::NOT_FOUND, "no such session");
                };
                match *method {
                    Method::GET => match api::session(shared, id) {
                        Some(s) => json(StatusCode::OK, &s),
                        None => error(StatusCode::NOT_FOUND, "no such session"),
                    },
                    Method::DELETE => {
                        if shared.sessions.kick(id, "kicked through the admin API") {
                            shared.metrics.kicked();
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
