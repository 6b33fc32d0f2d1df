//! HTTP callbacks in the style of nginx-rtmp's `on_connect`/`on_publish`/`on_play`/`on_done`:
//! a POST of `application/x-www-form-urlencoded` fields; 2xx allows, 3xx redirects (its
//! `Location` is the new name), anything else, an error or no answer in time denies. A 3xx whose
//! `Location` is missing or unusable (not UTF-8, control characters, empty, too long) denies:
//! carrying on under the client's own name would fail open.

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
            let location = response.headers().get(LOCATION).map(|v| v.as_bytes().to_vec());
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
                debug!(url, %status, location = ?location.as_deref().map(String::from_utf8_lossy), "callback answered");
                if status.is_success() {
                    Answer::Allow
                } else if status.is_redirection() {
                    match usable_location(location.as_deref()) {
                        Ok(name) => Answer::Redirect(name),
                        Err(why) => {
                            Answer::Deny(format!("callback {url} answered HTTP {}: {why}", status.as_u16()))
                        }
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

/// The name a redirect's `Location` gives, taken as it is (UTF-8, not percent-decoded, like
/// nginx-rtmp), or why it cannot be used.
fn usable_location(location: Option<&[u8]>) -> Result<String, &'static str> {
    let bytes = location.ok_or("a redirect without a Location")?;
    let text = std::str::from_utf8(bytes).map_err(|_| "a Location that is not UTF-8")?;
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty Location");
    }
    if text.len() > MAX_LOCATION {
        return Err("a Location longer than 1024 bytes");
    }
    if text.chars().any(char::is_control) {
        return Err("a Location with control characters");
    }
    Ok(text.to_owned())
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

#[cfg(test)]
mod tests {
    use super::usable_location;

    #[test]
    fn only_usable_locations_rename() {
        assert_eq!(usable_location(Some("José".as_bytes())), Ok("José".into()));
        assert_eq!(usable_location(Some(b"Jos%C3%A9")), Ok("Jos%C3%A9".into()));
        assert_eq!(usable_location(Some(b" cam ")), Ok("cam".into()));
        for bad in [&b"Jos\xe9"[..], b"", b"  ", b"a\tb", b"\xff\xfe"] {
            assert!(usable_location(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(usable_location(None).is_err());
        assert!(usable_location(Some(&[b'a'; 1025])).is_err());
    }
}
