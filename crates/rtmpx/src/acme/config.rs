//! `[tls.acme]`: where certificates come from (the ACME directory), for which names, and how
//! the challenges are answered. Validated with the rest of the configuration.

use std::path::PathBuf;

use serde::Deserialize;

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
    /// First wait after a failed order; doubles up to `retry_max_secs`.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_secs: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
    /// Bounds one whole order (account, challenges, issuance) and each request in it.
    #[serde(default = "default_order_timeout")]
    pub order_timeout_secs: u64,
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
fn default_retry_initial() -> u64 {
    60
}
fn default_retry_max() -> u64 {
    6 * 3600
}
fn default_order_timeout() -> u64 {
    120
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
        if self.retry_initial_secs == 0 || self.retry_max_secs < self.retry_initial_secs {
            return Err("tls.acme.retry_initial_secs must be at least 1 and at most retry_max_secs".into());
        }
        if !(5..=3600).contains(&self.order_timeout_secs) {
            return Err(format!(
                "tls.acme.order_timeout_secs: {} is outside 5..=3600",
                self.order_timeout_secs
            ));
        }
        Ok(())
    }

    pub fn wants(&self, kind: ChallengeKind) -> bool {
        self.challenges.contains(&kind)
    }
}
