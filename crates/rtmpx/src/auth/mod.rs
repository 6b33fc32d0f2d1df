//! Publish/play authorisation and per-app/per-stream limits.
//!
//! Checks run in this order, and every configured one must pass:
//! 1. the app allows the action at all (`publish`/`play`);
//! 2. IP lists: `deny_*` refuses, a non-empty `allow_*` must match;
//! 3. static keys (`publish_keys`/`play_keys`): the `key` query parameter, or else the stream
//!    name itself, equals one of the keys;
//! 4. a signed token (`[app.token]`, see [`token`]);
//! 5. the HTTP callback (`on_publish`/`on_play`), which may also rename the stream;
//! 6. the limits: publishers per app, players per stream.
//!
//! Local checks come first so bad requests never reach the callback backend. A denial carries
//! the code the client gets in `onStatus` and a reason that is logged.

pub mod callback;
pub use crate::config::cidr;
pub mod query;
pub mod quota;
pub mod token;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtmpx_core::session::{ConnectRequest, PlayRequest, PublishMode};

use crate::config::Config;
use crate::logsafe::Escaped;
use callback::{Answer, Notifier};
use query::{param, parse_query, split_name, Form};
use quota::{Quotas, Slot};

/// Fields named by nginx-rtmp that a client's own query parameters may not override.
const RESERVED_FIELDS: &[&str] = &[
    "app", "flashver", "swfurl", "tcurl", "pageurl", "addr", "clientid", "call", "name", "type", "start",
    "duration", "reset", "epoch",
];

/// Longest app or stream name accepted, in bytes (nginx-rtmp's limit too): names end up in logs,
/// metrics and the admin API.
pub const MAX_NAME: usize = 256;
/// Longest query after a stream name, in bytes (keys and tokens are far shorter).
pub const MAX_QUERY: usize = 4096;

/// Who a connection is, as accepted by `connect` (kept for later decisions and callbacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: u64,
    pub addr: SocketAddr,
    /// The configured app this client is connected to (after any `on_connect` redirect).
    pub app: String,
    pub flash_ver: String,
    pub swf_url: String,
    pub tc_url: String,
    pub page_url: String,
    /// The connect's own query parameters (`app?x=y` or the tcUrl's query).
    pub connect_args: Vec<(String, String)>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The `onStatus` code for the client (connect denials always send `NetConnection.Connect.Rejected`).
    pub code: &'static str,
    /// The reason, for the log and the client's `description`.
    pub reason: String,
}

impl Denial {
    fn publish(reason: impl Into<String>) -> Self {
        Denial { code: "NetStream.Publish.Denied", reason: reason.into() }
    }
    fn play(reason: impl Into<String>) -> Self {
        Denial { code: "NetStream.Play.Failed", reason: reason.into() }
    }
    fn bad_name(action: Action, reason: impl Into<String>) -> Self {
        let code = match action {
            Action::Publish => "NetStream.Publish.BadName",
            Action::Play => "NetStream.Play.StreamNotFound",
        };
        Denial { code, reason: reason.into() }
    }
}

/// An allowed publish or play: the stream name to use, its limit slot and, when configured,
/// the `on_done` notifications sent when it is dropped.
#[derive(Debug)]
pub struct Grant {
    /// The stream name without its query (after any callback redirect).
    pub name: String,
    _slot: Slot,
    done: Option<DoneNotice>,
}

impl Grant {
    /// The publish or play never started (e.g. the stream already had a publisher): no `on_done`.
    pub fn cancel(mut self) {
        self.done = None;
    }
}

#[derive(Debug)]
struct DoneNotice {
    notifier: NotifierHandle,
    /// (url, call name)
    targets: Vec<(String, &'static str)>,
    form: Form,
    timeout: Duration,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            for (url, call) in done.targets {
                let mut form = done.form.clone();
                form.add("call", call);
                done.notifier.0.notify(url, form.into_string(), done.timeout);
            }
        }
    }
}

#[derive(Clone)]
struct NotifierHandle(Notifier);

impl std::fmt::Debug for NotifierHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notifier")
    }
}

/// The authoriser every session shares.
#[derive(Clone, Default)]
pub struct Gate {
    quotas: Quotas,
    notifier: Notifier,
}

/// `live`, `live/`, `/live` and `live?x=y` all name the app `live`.
pub fn normalize_app(app: &str) -> &str {
    split_name(app).0.trim_matches('/')
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a client asks to do with a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Play,
}

impl Action {
    /// "publish" or "play", for logs.
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Play => "play",
        }
    }
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publisher and player slots in use (for leak checks).
    #[cfg(test)]
    pub fn quota_entries(&self) -> usize {
        self.quotas.entries()
    }

    /// Decides a `connect`: the app must exist, and `on_connect` (if set) must allow it.
    /// A 3xx from `on_connect` moves the client to the app named by `Location`.
    pub async fn connect(
        &self,
        config: &Config,
        id: u64,
        addr: SocketAddr,
        request: &ConnectRequest,
    ) -> Result<Client, Denial> {
        let rejected = |reason: String| Denial { code: "NetConnection.Connect.Rejected", reason };
        let app = normalize_app(&request.app).to_owned();
        if app.len() > MAX_NAME {
            return Err(rejected(format!("Application name longer than {MAX_NAME} bytes.")));
        }
        let Some(app_config) = config.app(&app) else {
            return Err(rejected(format!("Application '{app}' does not exist.")));
        };
        let (_, app_query) = split_name(&request.app);
        let tc_url = request.tc_url.clone().unwrap_or_default();
        let query = if app_query.is_empty() { split_name(&tc_url).1 } else { app_query };
        let mut client = Client {
            id,
            addr,
            app,
            flash_ver: request.flash_ver.clone().unwrap_or_default(),
            swf_url: request.swf_url.clone().unwrap_or_default(),
            tc_url: tc_url.clone(),
            page_url: request.page_url.clone().unwrap_or_default(),
            connect_args: parse_query(query),
        };
        if let Some(url) = &app_config.callbacks.on_connect {
            let mut form = Form::default();
            form.add("app", &client.app)
                .add("flashver", &client.flash_ver)
                .add("swfurl", &client.swf_url)
                .add("tcurl", &client.tc_url)
                .add("pageurl", &client.page_url)
                .add("addr", &client.addr.ip().to_string())
                .add("clientid", &client.id.to_string())
                .add("epoch", "0")
                .add("call", "connect");
            add_args(&mut form, &client.connect_args);
            match self.notifier.call(url, form.into_string(), app_config.callbacks.timeout).await {
                Answer::Allow => {}
                Answer::Redirect(location) => {
                    let target = normalize_app(&location);
                    if config.app(target).is_none() {
                        return Err(rejected(format!(
                            "on_connect redirected to app '{target}', which does not exist"
                        )));
                    }
                    client.app = target.to_owned();
                }
                Answer::Deny(why) => return Err(rejected(format!("connect denied: {why}"))),
            }
        }
        Ok(client)
    }

    /// Decides a `publish` of `requested` (a stream name with an optional query).
    pub async fn publish(
        &self,
        config: &Config,
        client: &Client,
        requested: &str,
        mode: PublishMode,
    ) -> Result<Grant, Denial> {
        let kind = match mode {
            PublishMode::Live => "live",
            PublishMode::Record => "record",
            PublishMode::Append => "append",
        };
        self.decide(config, client, requested, Action::Publish, |form| {
            form.add("type", kind);
        })
        .await
    }

    /// Decides a `play` of `requested` (a stream name with an optional query).
    pub async fn play(
        &self,
        config: &Config,
        client: &Client,
        requested: &str,
        request: PlayRequest,
    ) -> Result<Grant, Denial> {
        // nginx-rtmp sends these as unsigned 32-bit numbers (so -2 becomes 4294967294, and the
        // duration "until the end", -1, 4294967295).
        let as_u32 = |v: f64| if v.is_finite() { (v as i64 as u32).to_string() } else { "0".into() };
        self.decide(config, client, requested, Action::Play, |form| {
            form.add("start", &as_u32(request.start.as_f64()))
                .add("duration", &request.duration.unwrap_or(u32::MAX).to_string())
                .add("reset", if request.reset { "1" } else { "0" });
        })
        .await
    }

    async fn decide(
        &self,
        config: &Config,
        client: &Client,
        requested: &str,
        action: Action,
        extra_fields: impl FnOnce(&mut Form),
    ) -> Result<Grant, Denial> {
        let publish = action == Action::Publish;
        let deny = |reason: String| if publish { Denial::publish(reason) } else { Denial::play(reason) };
        let Some(app) = config.app(&client.app) else {
            return Err(deny(format!("application '{}' is no longer configured", client.app)));
        };
        let (name, query) = split_name(requested);
        let mut name = name.to_owned();
        let mut args = parse_query(query);
        if name.is_empty() {
            return Err(Denial::bad_name(action, "empty stream name"));
        }
        if name.len() > MAX_NAME {
            return Err(Denial::bad_name(action, format!("stream name longer than {MAX_NAME} bytes")));
        }
        if query.len() > MAX_QUERY {
            return Err(Denial::bad_name(action, format!("stream name query longer than {MAX_QUERY} bytes")));
        }
        let (allowed, allow, deny_list, keys, verb) = if publish {
            (
                app.publish,
                &app.auth.allow_publish,
                &app.auth.deny_publish,
                &app.auth.publish_keys,
                "publishing",
            )
        } else {
            (app.play, &app.auth.allow_play, &app.auth.deny_play, &app.auth.play_keys, "playing")
        };
        if !allowed {
            return Err(deny(format!("{verb} is not allowed in app '{}'", app.name)));
        }
        cidr::permitted(client.addr.ip(), allow, deny_list)
            .map_err(|why| deny(format!("{verb} refused for {}: {why}", client.addr.ip())))?;
        if !keys.is_empty() {
            let presented = param(&args, "key").unwrap_or(&name);
            if !keys.iter().any(|k| token::constant_time_eq(k.as_bytes(), presented.as_bytes())) {
                return Err(deny(format!("{verb} refused: stream key not accepted")));
            }
        }
        if let Some(t) = app.auth.token.as_ref().filter(|t| if publish { t.publish } else { t.play }) {
            token::verify(t.secret.as_bytes(), &app.name, &name, &args, now_unix(), t.max_ttl_secs)
                .map_err(|why| deny(format!("{verb} refused: {why}")))?;
        }
        let base_form = |name: &str, args: &[(String, String)]| {
            let mut form = session_form(client);
            form.add("name", name);
            add_args(&mut form, args);
            form
        };
        let callback = if publish { &app.callbacks.on_publish } else { &app.callbacks.on_play };
        if let Some(url) = callback {
            let mut form = session_form(client);
            form.add("call", if publish { "publish" } else { "play" }).add("name", &name);
            extra_fields(&mut form);
            add_args(&mut form, &args);
            match self.notifier.call(url, form.into_string(), app.callbacks.timeout).await {
                Answer::Allow => {}
                Answer::Redirect(location) => {
                    if location.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("rtmp://")) {
                        return Err(deny(format!(
                            "{verb} refused: the callback asked for a relay to {location}, which rtmpx does not do"
                        )));
                    }
                    let (new_name, new_query) = split_name(location.trim_start_matches('/'));
                    if new_name.is_empty() || new_name.len() > MAX_NAME {
                        return Err(deny(format!(
                            "{verb} refused: the callback redirected to an empty name or one longer than {MAX_NAME} bytes"
                        )));
                    }
                    tracing::info!(session = client.id, from = %Escaped(&name), to = %Escaped(new_name), "callback renamed the stream");
                    name = new_name.to_owned();
                    if !new_query.is_empty() {
                        args = parse_query(new_query);
                    }
                }
                Answer::Deny(why) => return Err(deny(format!("{verb} refused: {why}"))),
            }
        }
        let slot = if publish {
            let limit = app.limits.max_publishers.unwrap_or(config.limits.max_publishers_per_app);
            self.quotas.publisher(&app.name, limit).ok_or_else(|| {
                deny(format!("limit hit: max_publishers_per_app ({limit}) in app '{}'", app.name))
            })?
        } else {
            let limit = app.limits.max_players_per_stream.unwrap_or(config.limits.max_players_per_stream);
            self.quotas.player(&app.name, &name, limit).ok_or_else(|| {
                deny(format!("limit hit: max_players_per_stream ({limit}) on {}/{name}", app.name))
            })?
        };
        let mut targets = Vec::new();
        let specific = if publish {
            ("publish_done", &app.callbacks.on_publish_done)
        } else {
            ("play_done", &app.callbacks.on_play_done)
        };
        if let Some(url) = specific.1 {
            targets.push((url.clone(), specific.0));
        }
        if let Some(url) = &app.callbacks.on_done {
            targets.push((url.clone(), "done"));
        }
        let done = (!targets.is_empty()).then(|| DoneNotice {
            notifier: NotifierHandle(self.notifier.clone()),
            targets,
            form: base_form(&name, &args),
            timeout: app.callbacks.timeout,
        });
        Ok(Grant { name, _slot: slot, done })
    }
}

/// The session fields nginx-rtmp sends with every app-level callback.
fn session_form(client: &Client) -> Form {
    let mut form = Form::default();
    form.add("app", &client.app)
        .add("flashver", &client.flash_ver)
        .add("swfurl", &client.swf_url)
        .add("tcurl", &client.tc_url)
        .add("pageurl", &client.page_url)
        .add("addr", &client.addr.ip().to_string())
        .add("clientid", &client.id.to_string());
    form
}

/// The client's own query parameters, after ours; ones that would shadow ours are dropped
/// (with nginx-rtmp a client could send `&addr=…` and a backend reading the last value would
/// believe it). Names are compared loosely, as backends may read them: `ADDR`, ` addr`,
/// `addr[]`, `addr.` and `a-ddr` all count as `addr`.
fn add_args(form: &mut Form, args: &[(String, String)]) {
    for (k, v) in args {
        if !shadows_a_field(k) {
            form.add(k, v);
        }
    }
}

/// Whether a client's parameter name could be read as one of ours: lower case, up to any `[`
/// (PHP arrays), letters and digits only.
fn shadows_a_field(name: &str) -> bool {
    let base = name.split('[').next().unwrap_or_default();
    let folded: String =
        base.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    RESERVED_FIELDS.contains(&folded.as_str())
}

#[cfg(test)]
mod tests;
