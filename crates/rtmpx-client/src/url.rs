//! RTMP URLs: `scheme://host[:port]/app[/instance]/stream[?query]`.

use std::fmt;

use crate::error::{Error, Result};

/// The transport (and encryption) a URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain RTMP over TCP.
    Rtmp,
    /// RTMP over TLS.
    Rtmps,
    /// RTMP tunnelled through HTTP polling.
    Rtmpt,
    /// RTMPT over HTTPS.
    Rtmpts,
    /// RTMP with the RTMPE handshake and RC4 over TCP.
    Rtmpe,
    /// RTMPE inside the HTTP tunnel.
    Rtmpte,
}

impl Scheme {
    /// Every scheme, in the order of the docs.
    pub const ALL: [Scheme; 6] =
        [Scheme::Rtmp, Scheme::Rtmps, Scheme::Rtmpt, Scheme::Rtmpts, Scheme::Rtmpe, Scheme::Rtmpte];

    /// The scheme as written in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Rtmp => "rtmp",
            Scheme::Rtmps => "rtmps",
            Scheme::Rtmpt => "rtmpt",
            Scheme::Rtmpts => "rtmpts",
            Scheme::Rtmpe => "rtmpe",
            Scheme::Rtmpte => "rtmpte",
        }
    }

    /// The port when the URL names none (what librtmp and ffmpeg use).
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Rtmp | Scheme::Rtmpe => 1935,
            Scheme::Rtmps | Scheme::Rtmpts => 443,
            Scheme::Rtmpt | Scheme::Rtmpte => 80,
        }
    }

    /// RTMPE handshake and RC4 inside whatever transport carries it.
    pub fn is_encrypted(self) -> bool {
        matches!(self, Scheme::Rtmpe | Scheme::Rtmpte)
    }

    /// The transport runs over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Rtmps | Scheme::Rtmpts)
    }

    /// The transport is the HTTP polling tunnel.
    pub fn is_tunnel(self) -> bool {
        matches!(self, Scheme::Rtmpt | Scheme::Rtmpts | Scheme::Rtmpte)
    }

    fn parse(name: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed RTMP URL.
///
/// The app is the first path element when there are two, and everything but the last element when
/// there are more (`rtmp://h/app/instance/stream` has app `app/instance`, as in ffmpeg). The stream
/// keeps its query string (`stream?key=...`), which servers use for keys and tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    /// The transport and handshake to use.
    pub scheme: Scheme,
    /// Host name or IP address, without the brackets of an IPv6 literal.
    pub host: String,
    /// The given port, else the scheme's default (1935, 443 or 80).
    pub port: u16,
    /// The application, sent in `connect`.
    pub app: String,
    /// May be empty (a URL naming only the app, for connect-only use).
    pub stream: String,
    /// `scheme://host[:port]/app`, sent in `connect`.
    pub tc_url: String,
}

impl RtmpUrl {
    /// Parses `scheme://host[:port]/app[/...]/stream`.
    pub fn parse(s: &str) -> Result<Self> {
        let fail = |reason| Error::Url { url: s.to_owned(), reason };
        let (scheme_name, rest) = s.split_once("://").ok_or_else(|| fail("missing scheme://"))?;
        let scheme = Scheme::parse(scheme_name)
            .ok_or_else(|| fail("scheme must be rtmp, rtmps, rtmpt, rtmpts, rtmpe or rtmpte"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(fail("user names and passwords in the authority are not supported"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| fail("bad host or port"))?;
        if host.is_empty() {
            return Err(fail("missing host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| fail("bad port"))?,
            None => scheme.default_port(),
        };

        // The query belongs to the stream: split the path before it, keep it on the last element.
        let (path, query) = match path.find('?') {
            Some(i) => path.split_at(i),
            None => (path, ""),
        };
        let path = path.trim_end_matches('/');
        let elements: Vec<&str> = path.split('/').collect();
        if elements.iter().any(|e| e.is_empty()) {
            return Err(fail("missing app or empty path element"));
        }
        let (app, stream) = match elements.as_slice() {
            [app] => ((*app).to_owned(), String::new()),
            [app, stream] => ((*app).to_owned(), format!("{stream}{query}")),
            [app_parts @ .., stream] => (app_parts.join("/"), format!("{stream}{query}")),
            [] => return Err(fail("missing app")),
        };
        let (app, stream) = if stream.is_empty() { (format!("{app}{query}"), stream) } else { (app, stream) };
        let tc_url = format!("{}://{}/{}", scheme, authority, app);
        Ok(RtmpUrl { scheme, host: host.to_owned(), port, app, stream, tc_url })
    }

    /// Where to go when the server asks us to reconnect (Enhanced RTMP): `tc_url` absolute
    /// (`rtmps://h:443/app`) or relative to ours (`//h/app`, `/app`), `None` for our own. The
    /// stream (and its query) stays.
    pub fn reconnect_target(&self, tc_url: Option<&str>) -> Result<RtmpUrl> {
        let Some(tc_url) = tc_url.map(str::trim).filter(|u| !u.is_empty()) else { return Ok(self.clone()) };
        let absolute = if tc_url.contains("://") {
            tc_url.to_owned()
        } else if let Some(rest) = tc_url.strip_prefix("//") {
            format!("{}://{rest}", self.scheme)
        } else {
            format!("{}://{}/{}", self.scheme, self.authority(), tc_url.trim_start_matches('/'))
        };
        // The query of a tcUrl belongs to the app; parse with a stand-in stream after the path.
        let (base, query) = match absolute.find('?') {
            Some(i) => absolute.split_at(i),
            None => (absolute.as_str(), ""),
        };
        let mut url = RtmpUrl::parse(&format!("{}/s", base.trim_end_matches('/')))?;
        url.app.push_str(query);
        url.tc_url.push_str(query);
        url.stream = self.stream.clone();
        Ok(url)
    }

    /// `host:port` with brackets around an IPv6 literal, for connecting and the HTTP Host header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for RtmpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}/{}", self.scheme, self.authority(), self.app)?;
        if !self.stream.is_empty() {
            write!(f, "/{}", self.stream)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for RtmpUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RtmpUrl::parse(s)
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> RtmpUrl {
        RtmpUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn app_and_stream() {
        let u = parse("rtmp://example.com/live/cam1");
        assert_eq!(u.scheme, Scheme::Rtmp);
        assert_eq!((u.host.as_str(), u.port), ("example.com", 1935));
        assert_eq!((u.app.as_str(), u.stream.as_str()), ("live", "cam1"));
        assert_eq!(u.tc_url, "rtmp://example.com/live");
    }

    #[test]
    fn default_ports_per_scheme() {
        let ports: Vec<u16> = Scheme::ALL.iter().map(|s| parse(&format!("{s}://h/a/b")).port).collect();
        assert_eq!(ports, [1935, 443, 80, 443, 1935, 80]);
    }

    #[test]
    fn scheme_is_case_insensitive_and_flags_are_right() {
        let u = parse("RTMPTE://h:8080/a/b");
        assert_eq!(u.scheme, Scheme::Rtmpte);
        assert!(u.scheme.is_encrypted() && u.scheme.is_tunnel() && !u.scheme.is_tls());
        assert!(Scheme::Rtmpts.is_tls() && Scheme::Rtmpts.is_tunnel() && !Scheme::Rtmpts.is_encrypted());
        assert!(Scheme::Rtmps.is_tls() && !Scheme::Rtmps.is_tunnel());
        assert_eq!(u.tc_url, "rtmpte://h:8080/a");
    }

    #[test]
    fn explicit_port_and_query_stay_with_the_stream() {
        let u = parse("rtmps://live.example.com:4443/app/key123?token=a/b&x=1");
        assert_eq!(u.port, 4443);
        assert_eq!(u.app, "app");
        assert_eq!(u.stream, "key123?token=a/b&x=1");
        assert_eq!(u.tc_url, "rtmps://live.example.com:4443/app");
    }

    #[test]
    fn three_or_more_elements_put_all_but_the_last_in_the_app() {
        let u = parse("rtmp://h/vod/inst/mp4:file.mp4");
        assert_eq!((u.app.as_str(), u.stream.as_str()), ("vod/inst", "mp4:file.mp4"));
        assert_eq!(u.tc_url, "rtmp://h/vod/inst");
        let u = parse("rtmp://h/a/b/c/d");
        assert_eq!((u.app.as_str(), u.stream.as_str()), ("a/b/c", "d"));
    }

    #[test]
    fn app_only_urls_have_an_empty_stream() {
        let u = parse("rtmp://h/live");
        assert_eq!((u.app.as_str(), u.stream.as_str()), ("live", ""));
        let u = parse("rtmp://h/live/");
        assert_eq!((u.app.as_str(), u.stream.as_str()), ("live", ""));
        let u = parse("rtmp://h/live?auth=x");
        assert_eq!((u.app.as_str(), u.stream.as_str()), ("live?auth=x", ""));
        assert_eq!(u.tc_url, "rtmp://h/live?auth=x");
    }

    #[test]
    fn ipv6_hosts() {
        let u = parse("rtmp://[::1]:1936/live/s");
        assert_eq!((u.host.as_str(), u.port), ("::1", 1936));
        assert_eq!(u.authority(), "[::1]:1936");
        assert_eq!(u.tc_url, "rtmp://[::1]:1936/live");
        let u = parse("rtmpe://[fe80::1]/live/s");
        assert_eq!((u.host.as_str(), u.port), ("fe80::1", 1935));
    }

    #[test]
    fn display_round_trips() {
        for s in ["rtmp://h:1935/live/s", "rtmpts://h:443/a/b/c?k=v", "rtmp://[::1]:99/live"] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
    }

    #[test]
    fn reconnect_targets_resolve_against_the_current_url() {
        let current = parse("rtmps://a.example.com:4443/live/cam?key=1");
        assert_eq!(current.reconnect_target(None).unwrap(), current);
        let moved = current.reconnect_target(Some("rtmp://10.0.0.2:1936/origin")).unwrap();
        assert_eq!((moved.scheme, moved.host.as_str(), moved.port), (Scheme::Rtmp, "10.0.0.2", 1936));
        assert_eq!((moved.app.as_str(), moved.stream.as_str()), ("origin", "cam?key=1"));
        assert_eq!(moved.tc_url, "rtmp://10.0.0.2:1936/origin");
        let moved = current.reconnect_target(Some("//b.example.com/live")).unwrap();
        assert_eq!((moved.scheme, moved.host.as_str(), moved.port), (Scheme::Rtmps, "b.example.com", 443));
        assert_eq!(moved.tc_url, "rtmps://b.example.com/live");
        let moved = current.reconnect_target(Some("/other/inst")).unwrap();
        assert_eq!(
            (moved.host.as_str(), moved.port, moved.app.as_str()),
            ("a.example.com", 4443, "other/inst")
        );
        assert_eq!(moved.tc_url, "rtmps://a.example.com:4443/other/inst");
        let moved = current.reconnect_target(Some("rtmp://h/live?token=x")).unwrap();
        assert_eq!((moved.app.as_str(), moved.tc_url.as_str()), ("live?token=x", "rtmp://h/live?token=x"));
        assert!(current.reconnect_target(Some("http://h/live")).is_err());
        assert!(current.reconnect_target(Some("rtmp://")).is_err());
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "http://h/live/s",
            "rtmp:/h/live/s",
            "rtmp://h",
            "rtmp://h/",
            "rtmp:///live/s",
            "rtmp://h:0/live/s",
            "rtmp://h:99999/live/s",
            "rtmp://h:x/live/s",
            "rtmp://h//s",
            "rtmp://h/live//s",
            "rtmp://user:pw@h/live/s",
            "rtmp://[::1/live/s",
            "rtmp://[::1]x/live/s",
            "live/s",
        ] {
            assert!(RtmpUrl::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
