//! Relay configuration: `push`/`pull` inside `[[app]]`, and the `[relay]` section.

use std::path::PathBuf;
use std::time::Duration;

use rtmpx_client::RtmpUrl;
use serde::Deserialize;

/// One upstream every stream published to the app (or those matching `streams`) is pushed to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The upstream app: `scheme://host[:port]/app[/instance][?query]`.
    pub url: String,
    /// The stream name upstream: "keep", "rename:{name}_hd" or "fixed:KEY".
    #[serde(default)]
    pub name: NameMapping,
    /// Only streams whose name matches this glob (`*` any run, `?` one character).
    #[serde(default)]
    pub streams: Option<String>,
}

impl PushConfig {
    pub fn matches(&self, stream_name: &str) -> bool {
        self.streams.as_deref().is_none_or(|pattern| glob_match(pattern, stream_name))
    }
}

/// Where a stream that is not live locally is pulled from when a player asks for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// The upstream app; the local stream name is played there.
    pub url: String,
    /// `linger_secs`: how long the pull stays up after the last local player left.
    #[serde(rename = "linger_secs", default = "default_linger", deserialize_with = "super::duration::secs")]
    pub linger: Duration,
}

fn default_linger() -> Duration {
    Duration::from_secs(5)
}

/// How a local stream name becomes the upstream one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum NameMapping {
    /// The local name.
    #[default]
    Keep,
    /// A template; `{name}` is replaced by the local name.
    Rename(String),
    /// One fixed name, e.g. a platform's stream key (kept out of logs and stats).
    Fixed(String),
}

impl TryFrom<String> for NameMapping {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let bad = |why: &str| format!("name {text:?}: {why}");
        if text == "keep" {
            return Ok(NameMapping::Keep);
        }
        if let Some(template) = text.strip_prefix("rename:") {
            if template.is_empty() || template.contains(['/', ' ']) {
                return Err(bad("the rename template must be non-empty without '/' or spaces"));
            }
            return Ok(NameMapping::Rename(template.to_owned()));
        }
        if let Some(key) = text.strip_prefix("fixed:") {
            if key.is_empty() || key.contains(['/', ' ']) {
                return Err(bad("the fixed name must be non-empty without '/' or spaces"));
            }
            return Ok(NameMapping::Fixed(key.to_owned()));
        }
        Err(bad("expected \"keep\", \"rename:TEMPLATE\" or \"fixed:NAME\""))
    }
}

impl NameMapping {
    pub fn apply(&self, local: &str) -> String {
        match self {
            NameMapping::Keep => local.to_owned(),
            NameMapping::Rename(template) => template.replace("{name}", local),
            NameMapping::Fixed(key) => key.clone(),
        }
    }

    /// Whether the upstream name is a secret (a platform stream key).
    pub fn is_secret(&self) -> bool {
        matches!(self, NameMapping::Fixed(_))
    }
}

/// `[relay]`: what every push and pull shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// PEM CA certificates trusted for rtmps/rtmpts upstreams besides the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any upstream certificate (development only).
    pub insecure: bool,
    /// `backoff_initial_ms`: first wait after a failed connection; doubles on each failure up to
    /// `backoff_max_ms`.
    #[serde(rename = "backoff_initial_ms", deserialize_with = "super::duration::millis")]
    pub backoff_initial: Duration,
    /// `backoff_max_ms`: the longest wait between two attempts.
    #[serde(rename = "backoff_max_ms", deserialize_with = "super::duration::millis")]
    pub backoff_max: Duration,
    /// Bound on media queued for one push relay; past it the relay drops to the next keyframe.
    pub max_relay_queue_bytes: usize,
    /// `connect_timeout_secs`: transport, handshake, connect and publish/play answer.
    #[serde(rename = "connect_timeout_secs", deserialize_with = "super::duration::secs")]
    pub connect_timeout: Duration,
    /// Announce Enhanced RTMP's Reconnect capability and move when an upstream asks.
    pub follow_reconnect: bool,
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            ca_file: None,
            insecure: false,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_millis(30_000),
            max_relay_queue_bytes: 8 << 20,
            connect_timeout: Duration::from_secs(10),
            follow_reconnect: true,
        }
    }
}

impl RelaySection {
    pub fn validate(&self) -> Result<(), String> {
        if self.backoff_initial < Duration::from_millis(10) || self.backoff_max < self.backoff_initial {
            return Err(
                "relay.backoff_initial_ms must be at least 10 and at most relay.backoff_max_ms".into()
            );
        }
        if self.max_relay_queue_bytes < 64 * 1024 {
            return Err(format!(
                "relay.max_relay_queue_bytes: {} is below 65536",
                self.max_relay_queue_bytes
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err("relay.connect_timeout_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// Checks the relays of `app[index]`.
pub fn validate_app(index: usize, push: &[PushConfig], pull: Option<&PullConfig>) -> Result<(), String> {
    for (i, p) in push.iter().enumerate() {
        upstream_app(&p.url).map_err(|e| format!("app[{index}].push[{i}].url: {e}"))?;
        if p.streams.as_deref().is_some_and(str::is_empty) {
            return Err(format!("app[{index}].push[{i}].streams: empty pattern"));
        }
    }
    if let Some(pull) = pull {
        upstream_app(&pull.url).map_err(|e| format!("app[{index}].pull.url: {e}"))?;
        if pull.linger > Duration::from_secs(3600) {
            return Err(format!("app[{index}].pull.linger_secs: {} is above 3600", pull.linger.as_secs()));
        }
    }
    Ok(())
}

/// A relay URL names the upstream app: every path element is the app (`rtmp://h/app/instance`
/// has app `app/instance`), and a query stays on it. The stream is added per relay.
pub fn upstream_app(url: &str) -> Result<RtmpUrl, String> {
    let mut parsed = RtmpUrl::parse(url).map_err(|e| e.to_string())?;
    if !parsed.stream.is_empty() {
        parsed.app = format!("{}/{}", parsed.app, parsed.stream);
        parsed.tc_url = format!("{}/{}", parsed.tc_url, parsed.stream);
        parsed.stream.clear();
    }
    Ok(parsed)
}

/// `scheme://host:port/app[/name]` without queries, for logs and stats; a secret name shows
/// as `<key>`.
pub fn redacted(app_url: &RtmpUrl, name: &str, secret: bool) -> String {
    let app = app_url.app.split('?').next().unwrap_or_default();
    let name = if secret { "<key>" } else { name.split('?').next().unwrap_or_default() };
    format!("{}://{}/{}/{}", app_url.scheme, app_url.authority(), app, name)
}

/// Glob with `*` (any run, also empty) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and which text position it currently covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((star_p, star_t)) = star {
            pi = star_p + 1;
            ti = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_mappings_parse_and_apply() {
        let m = |s: &str| NameMapping::try_from(s.to_owned());
        assert_eq!(m("keep").unwrap().apply("cam"), "cam");
        assert_eq!(m("rename:{name}_hd").unwrap().apply("cam"), "cam_hd");
        assert_eq!(m("rename:x-{name}-{name}").unwrap().apply("a"), "x-a-a");
        let fixed = m("fixed:abcd-1234").unwrap();
        assert_eq!(fixed.apply("cam"), "abcd-1234");
        assert!(fixed.is_secret() && !m("keep").unwrap().is_secret());
        for bad in ["", "Keep", "rename:", "fixed:", "fixed:a/b", "rename:a b", "other:x"] {
            assert!(m(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("cam*", "cam1", true),
            ("cam*", "cam", true),
            ("cam*", "xcam", false),
            ("*_hd", "a_hd", true),
            ("*_hd", "a_hd2", false),
            ("c?m", "cam", true),
            ("c?m", "cm", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*bc", "abcbc", true),
            ("exact", "exact", true),
            ("exact", "exact2", false),
            ("**x", "abx", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn upstream_app_urls() {
        let u = upstream_app("rtmp://origin/live").unwrap();
        assert_eq!((u.app.as_str(), u.stream.as_str(), u.port), ("live", "", 1935));
        assert_eq!(u.tc_url, "rtmp://origin/live");
        let u = upstream_app("rtmps://a.example.com:4443/app/inst?tok=1").unwrap();
        assert_eq!((u.app.as_str(), u.stream.as_str()), ("app/inst?tok=1", ""));
        assert_eq!(u.tc_url, "rtmps://a.example.com:4443/app/inst?tok=1");
        assert!(upstream_app("http://h/live").is_err());
        assert!(upstream_app("rtmp://h").is_err());
    }

    #[test]
    fn redaction_hides_keys_and_queries() {
        let u = upstream_app("rtmp://a.rtmp.youtube.com/live2?secret=1").unwrap();
        assert_eq!(redacted(&u, "abcd-efgh", true), "rtmp://a.rtmp.youtube.com:1935/live2/<key>");
        assert_eq!(redacted(&u, "cam?tok=2", false), "rtmp://a.rtmp.youtube.com:1935/live2/cam");
    }

    #[test]
    fn push_stream_filter() {
        let p = PushConfig { url: "rtmp://h/live".into(), name: NameMapping::Keep, streams: None };
        assert!(p.matches("x"));
        let p = PushConfig { streams: Some("hd_*".into()), ..p };
        assert!(p.matches("hd_1") && !p.matches("sd_1"));
    }

    #[test]
    fn relay_section_limits() {
        assert!(RelaySection::default().validate().is_ok());
        let bad = RelaySection {
            backoff_initial: Duration::from_millis(1000),
            backoff_max: Duration::from_millis(10),
            ..RelaySection::default()
        };
        assert!(bad.validate().unwrap_err().contains("backoff"));
        let bad = RelaySection { max_relay_queue_bytes: 10, ..RelaySection::default() };
        assert!(bad.validate().unwrap_err().contains("max_relay_queue_bytes"));
    }
}
