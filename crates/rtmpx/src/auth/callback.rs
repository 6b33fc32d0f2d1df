//! HTTP callbacks in the style of nginx-rtmp's `on_connect`/`on_publish`/`on_play`/`on_done`:
//! a POST of `application/x-www-form-urlencoded` fields; 2xx allows, 3xx redirects (its
//! `Location` is the new name), anything else, an error or no answer in time denies.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONNECTION, CONTENT_TYPE, LOCATION, USER_AGENT};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, warn};

/// Longest `Location` taken as a stream or app name.
const MAX_LOCATION: usize = 1024;
/// Response bodies are read (so the connection can be reused) up to this size.
const MAX_BODY: usize = 64 * 1024;

/// What a callback said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allow,
    /// 3xx with a `Location`: use this name instead.
    Redirect(String),
    /// Why it was refused (status, error or timeout), for logs.
    Deny(String),
}

/// The HTTP client shared by every session. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Notifier {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(connector);
        Notifier { client }
    }
}

impl Notifier {
    /// POSTs `form` to `url` and waits at most `limit` for the status line and headers.
    pub async fn call(&self, url: &str, form: String, limit: Duration) -> Answer {
        let request = match Request::post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(USER_AGENT, concat!("rtmpx/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(form)))
        {
            Ok(r) => r,
            Err(e) => return Answer::Deny(format!("callback {url}: bad request: {e}")),
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let keep_alive = response.headers().get(CONNECTION).is_none_or(|v| v != "close");
            if keep_alive {
                // Read a bounded body so the connection goes back to the pool.
                let _ = Limited::new(response.into_body(), MAX_BODY).collect().await;
            }
            Ok::<_, hyper_util::client::legacy::Error>((status, location))
        };
        match tokio::time::timeout(limit, exchange).await {
            Err(_) => Answer::Deny(format!("callback {url} did not answer within {} ms", limit.as_millis())),
            Ok(Err(e)) => Answer::Deny(format!("callback {url} failed: {}", error_chain(&e))),
            Ok(Ok((status, location))) => {
                debug!(url, %status, ?location, "callback answered");
                if status.is_success() {
                    Answer::Allow
                } else if status.is_redirection() {
                    match location {
                        Some(l) if !l.is_empty() && l.len() <= MAX_LOCATION => Answer::Redirect(l),
                        Some(_) => Answer::Deny(format!("callback {url} redirected to an unusable Location")),
                        // nginx-rtmp carries on with the old name when there is no Location.
                        None => Answer::Allow,
                    }
                } else {
                    Answer::Deny(format!("callback {url} answered HTTP {}", status.as_u16()))
                }
            }
        }
    }

    /// Sends a notification nobody waits for (`on_done`); failures are logged.
    pub fn notify(&self, url: String, form: String, limit: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let this = self.clone();
        runtime.spawn(async move {
            if let Answer::Deny(why) = this.call(&url, form, limit).await {
                warn!("notification not delivered: {why}");
            }
        });
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
