//! `[tls.acme]`: where certificates come from (the ACME directory), for which names, and how
//! the challenges are answered. Validated with the rest of the configuration.

use std::path::PathBuf;

use std::time::Duration;

use serde::Deserialize;

use super::{ListenerConfig, Proto};

/// Let's Encrypt's production directory, the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// The ACME directory URL of the CA.
    #[serde(default = "lets_encrypt")]
    pub directory: String,
    /// DNS names the certificate covers; the first names the cached files.
    pub domains: Vec<String>,
    /// Account contacts, e.g. `mailto:ops@example.com`.
    #[serde(default)]
    pub contact: Vec<String>,
    /// PEM roots trusted for the ACME server's HTTPS besides the web roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The account key and the certificates, reused across restarts.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Challenge types offered to the CA, in order of preference.
    #[serde(default = "default_challenges")]
    pub challenges: Vec<ChallengeKind>,
    /// Serve the development certificate while no ACME certificate exists yet, and to clients
    /// asking for a name the ACME certificate does not cover.
    #[serde(default = "yes")]
    pub dev_fallback: bool,
    /// `retry_initial_secs`: first wait after a failed order; doubles up to `retry_max_secs`.
    #[serde(
        rename = "retry_initial_secs",
        default = "default_retry_initial",
        deserialize_with = "super::duration::secs"
    )]
    pub retry_initial: Duration,
    /// `retry_max_secs`: the longest wait between two orders.
    #[serde(
        rename = "retry_max_secs",
        default = "default_retry_max",
        deserialize_with = "super::duration::secs"
    )]
    pub retry_max: Duration,
    /// `order_timeout_secs`: bounds one whole order (account, challenges, issuance) and each
    /// request in it.
    #[serde(
        rename = "order_timeout_secs",
        default = "default_order_timeout",
        deserialize_with = "super::duration::secs"
    )]
    pub order_timeout: Duration,
}

/// How the CA checks that rtmpx controls a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChallengeKind {
    /// `GET /.well-known/acme-challenge/TOKEN` on port 80: an `rtmp` or `rtmpt` listener there.
    #[serde(rename = "http-01")]
    Http01,
    /// A TLS handshake with ALPN `acme-tls/1` on port 443: an `rtmps` listener there.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

fn lets_encrypt() -> String {
    LETS_ENCRYPT.into()
}
fn default_cache_dir() -> PathBuf {
    PathBuf::from("acme")
}
fn default_challenges() -> Vec<ChallengeKind> {
    vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01]
}
fn yes() -> bool {
    true
}
fn default_retry_initial() -> Duration {
    Duration::from_secs(60)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_order_timeout() -> Duration {
    Duration::from_secs(120)
}

impl AcmeSection {
    /// Checks the section; the message names the key (`tls.acme.*`).
    pub fn validate(&self) -> Result<(), String> {
        let url = self.directory.parse::<hyper::Uri>().ok();
        if !url.as_ref().is_some_and(|u| u.scheme_str() == Some("https") && u.host().is_some()) {
            return Err(format!("tls.acme.directory: {:?} is not an https:// URL", self.directory));
        }
        if self.domains.is_empty() {
            return Err("tls.acme.domains: name at least one domain".into());
        }
        for (i, domain) in self.domains.iter().enumerate() {
            let valid = !domain.is_empty()
                && domain.len() <= 253
                && !domain.ends_with('.')
                && domain.parse::<std::net::IpAddr>().is_err()
                && rustls::pki_types::ServerName::try_from(domain.as_str()).is_ok()
                && !domain.contains('*');
            if !valid {
                return Err(format!(
                    "tls.acme.domains[{i}]: {domain:?} is not a DNS name (wildcards need DNS-01)"
                ));
            }
            if self.domains[..i].iter().any(|d| d.eq_ignore_ascii_case(domain)) {
                return Err(format!("tls.acme.domains[{i}]: {domain:?} is listed twice"));
            }
        }
        if let Some(bad) = self.contact.iter().find(|c| !c.starts_with("mailto:") || c.len() < 10) {
            return Err(format!("tls.acme.contact: {bad:?} must look like \"mailto:ops@example.com\""));
        }
        if self.challenges.is_empty() {
            return Err("tls.acme.challenges: choose \"http-01\", \"tls-alpn-01\" or both".into());
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err("tls.acme.retry_initial_secs must be at least 1 and at most retry_max_secs".into());
        }
        super::in_range("tls.acme.order_timeout_secs", self.order_timeout.as_secs(), 5..=3600)
    }

    pub fn wants(&self, kind: ChallengeKind) -> bool {
        self.challenges.contains(&kind)
    }
}

/// `[tls.acme]` with the listeners that must answer its challenges.
pub fn validate(settings: &AcmeSection, listeners: &[ListenerConfig]) -> std::result::Result<(), String> {
    settings.validate()?;
    let http = listeners.iter().any(|l| matches!(l.proto, Proto::Rtmp | Proto::Rtmpt));
    let tls = listeners.iter().any(|l| l.proto == Proto::Rtmps);
    let answerable = settings.challenges.iter().any(|kind| match kind {
        ChallengeKind::Http01 => http,
        ChallengeKind::TlsAlpn01 => tls,
    });
    if !answerable {
        return Err("tls.acme.challenges: no listener can answer them (http-01 needs an rtmp or rtmpt \
                    listener on port 80, tls-alpn-01 an rtmps listener on port 443)"
            .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:80\"\n\
                        [[listener]]\nproto = \"rtmps\"\naddr = \"127.0.0.1:443\"\ntls = \"acme\"\n\
                        [[app]]\nname = \"live\"\n";

    fn parse(acme: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{BASE}[tls.acme]\n{acme}"), "t").map_err(|e| e.to_string())
    }

    #[test]
    fn the_section_parses_with_defaults() {
        let c = parse("domains = [\"media.example.com\"]\n").unwrap();
        let acme = c.tls.acme.as_ref().unwrap();
        assert_eq!(acme.directory, LETS_ENCRYPT);
        assert_eq!(acme.challenges, [ChallengeKind::Http01, ChallengeKind::TlsAlpn01]);
        assert_eq!(acme.cache_dir, PathBuf::from("acme"));
        assert!(acme.dev_fallback);
        assert!(c.listeners[1].tls.acme && c.listeners[1].tls.is_empty());
        let c =
            parse("domains = [\"a.example\"]\nchallenges = [\"tls-alpn-01\"]\nca_file = \"/etc/ca.pem\"\n")
                .unwrap();
        assert_eq!(c.tls.acme.unwrap().challenges, [ChallengeKind::TlsAlpn01]);
    }

    #[test]
    fn the_documented_section_parses() {
        let documented = include_str!("../../../../config/rtmpx.toml");
        let section: String = documented
            .lines()
            .skip_while(|l| *l != "# [tls.acme]")
            .map_while(|l| l.strip_prefix("# "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(section.lines().count() >= 11, "{section}");
        let c = Config::from_toml(&format!("{BASE}{section}"), "rtmpx.toml").unwrap();
        assert_eq!(c.tls.acme.unwrap().domains, ["media.example.com"]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = |acme: &str| parse(acme).unwrap_err();
        assert!(
            err("domains = [\"a.example\"]\ndirectory = \"http://ca/dir\"\n").contains("tls.acme.directory")
        );
        assert!(err("domains = []\n").contains("tls.acme.domains"));
        assert!(err("domains = [\"*.example.com\"]\n").contains("tls.acme.domains[0]"));
        assert!(err("domains = [\"a.example\", \"A.example\"]\n").contains("twice"));
        assert!(err("domains = [\"10.0.0.1\"]\n").contains("tls.acme.domains[0]"));
        assert!(
            err("domains = [\"a.example\"]\ncontact = [\"ops@example.com\"]\n").contains("tls.acme.contact")
        );
        assert!(err("domains = [\"a.example\"]\nchallenges = [\"dns-01\"]\n").contains("dns-01"));
        assert!(err("domains = [\"a.example\"]\nchallenges = []\n").contains("tls.acme.challenges"));
        assert!(err("domains = [\"a.example\"]\norder_timeout_secs = 1\n").contains("order_timeout_secs"));
        assert!(err("domains = [\"a.example\"]\nbogus = 1\n").contains("bogus"));
        // A challenge no listener can answer.
        let only_tls =
            "[[listener]]\nproto = \"rtmps\"\naddr = \"127.0.0.1:443\"\n[[app]]\nname = \"live\"\n\
                        [tls.acme]\ndomains = [\"a.example\"]\nchallenges = [\"http-01\"]\n";
        assert!(Config::from_toml(only_tls, "t").unwrap_err().to_string().contains("no listener can answer"));
        // `tls = "acme"` needs the section, on a TLS listener; other words are refused.
        assert!(Config::from_toml(BASE, "t").unwrap_err().to_string().contains("needs a [tls.acme]"));
        let bogus = BASE.replace("tls = \"acme\"", "tls = \"letsencrypt\"");
        assert!(Config::from_toml(&bogus, "t").unwrap_err().to_string().contains("\"acme\" or a list"));
    }
}
