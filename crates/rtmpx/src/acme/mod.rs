//! Certificates from any ACME CA (RFC 8555), issued and renewed by the gateway itself.
//!
//! [`Acme`] holds the current certificate for `tls.acme.domains`; TLS listeners with
//! `tls = "acme"` read it at every handshake, so a renewal reaches new clients at once and live
//! sessions keep their keys. The challenges are answered by the transports: HTTP-01 on the ports
//! that serve HTTP ([`challenge::http01_response`]), TLS-ALPN-01 by the TLS acceptor. The
//! protocol and its signatures are instant-acme's; this module schedules, caches and counts.

mod cache;
pub mod challenge;
pub use crate::config::acme as config;
mod http_client;
mod order;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

pub use challenge::{http01_response, Challenges, ACME_TLS_ALPN, CHALLENGE_PATH};
use config::AcmeSection;

use crate::certinfo::unix_now as now;
use crate::error::{Error, Result};
use crate::sync::{read, write};

/// An issued certificate in use.
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (lower case).
    pub names: Vec<String>,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    /// When the renewal starts: two thirds into the lifetime, a little earlier by jitter.
    renew_at: i64,
}

impl Issued {
    /// Reads the chain and key of `pem` (as the cache holds them).
    pub fn parse(pem: &[u8]) -> std::result::Result<Issued, String> {
        let chain = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("bad PEM: {e}"))?;
        let leaf = chain.first().ok_or("no CERTIFICATE")?.clone();
        let private = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
        let key = CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider())
            .map_err(|e| format!("key and certificate: {e}"))?;
        let facts = crate::certinfo::leaf_facts(leaf.as_ref())?;
        let (not_before, not_after, names) = (facts.not_before, facts.not_after, facts.dns_names);
        let lifetime = (not_after - not_before).max(1);
        // Up to 1/20 of the lifetime earlier, so many gateways do not renew in lockstep.
        let jitter = rand::random::<u64>() % (lifetime as u64 / 20 + 1);
        let renew_at = not_before + lifetime * 2 / 3 - jitter as i64;
        Ok(Issued { key: Arc::new(key), names, serial: facts.serial, not_before, not_after, renew_at })
    }

    /// Whether its renewal time has come.
    pub fn due(&self) -> bool {
        now() >= self.renew_at
    }

    /// Whether the certificate names every domain (case-insensitive).
    pub fn covers_all(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.covers(d))
    }

    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The ACME state of the gateway: settings, current certificate, challenges, counters.
pub struct Acme {
    settings: AcmeSection,
    cache: cache::Cache,
    challenges: Challenges,
    current: RwLock<Option<Arc<Issued>>>,
    orders_ok: AtomicU64,
    orders_failed: AtomicU64,
}

impl Acme {
    /// Loads the cached certificate when it is usable (it covers the domains and has not
    /// expired); no network: the first order runs in [`Acme::run`].
    pub fn new(settings: AcmeSection) -> Arc<Acme> {
        let cache = cache::Cache::new(&settings);
        let cached = match cache.certificate() {
            Ok(Some(pem)) => match Issued::parse(&pem) {
                Ok(issued) if issued.covers_all(&settings.domains) && issued.not_after > now() => {
                    Some(issued)
                }
                Ok(_) => {
                    info!(file = %cache.certificate_path().display(), "cached ACME certificate expired or covers other names; ordering a new one");
                    None
                }
                Err(e) => {
                    warn!(file = %cache.certificate_path().display(), "cached ACME certificate unusable: {e}");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                warn!("ACME cache: {e}");
                None
            }
        };
        if let Some(issued) = &cached {
            info!(
                domains = %settings.domains.join(","),
                serial = %issued.serial,
                expires_in_secs = issued.not_after - now(),
                renew_in_secs = (issued.renew_at - now()).max(0),
                "using the cached ACME certificate"
            );
        }
        Arc::new(Acme {
            cache,
            settings,
            challenges: Challenges::default(),
            current: RwLock::new(cached.map(Arc::new)),
            orders_ok: AtomicU64::new(0),
            orders_failed: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &AcmeSection {
        &self.settings
    }

    pub fn challenges(&self) -> &Challenges {
        &self.challenges
    }

    /// The certificate in use, if one was issued or cached.
    pub fn certificate(&self) -> Option<Arc<Issued>> {
        read(&self.current).clone()
    }

    /// New handshakes get `issued` from now on.
    pub(crate) fn install(&self, issued: Issued) -> Arc<Issued> {
        let issued = Arc::new(issued);
        *write(&self.current) = Some(issued.clone());
        issued
    }

    /// Runs one order and puts its certificate in use (and in the cache). Counted either way.
    pub async fn renew(&self) -> Result<Arc<Issued>> {
        let timeout = self.settings.order_timeout;
        let result =
            match tokio::time::timeout(timeout, order::order(&self.settings, &self.cache, &self.challenges))
                .await
            {
                Ok(Ok(pem)) => Issued::parse(pem.as_bytes())
                    .map_err(|e| format!("the CA sent an unusable certificate: {e}"))
                    .and_then(|issued| self.cache.save_certificate(&pem).map(|()| issued)),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    Err(format!("no certificate within tls.acme.order_timeout_secs ({}s)", timeout.as_secs()))
                }
            };
        match result {
            Ok(issued) => {
                self.orders_ok.fetch_add(1, Ordering::Relaxed);
                info!(
                    domains = %self.settings.domains.join(","),
                    serial = %issued.serial,
                    expires_in_secs = issued.not_after - now(),
                    file = %self.cache.certificate_path().display(),
                    "ACME certificate issued"
                );
                Ok(self.install(issued))
            }
            Err(e) => {
                self.orders_failed.fetch_add(1, Ordering::Relaxed);
                Err(Error::Acme(e))
            }
        }
    }

    /// Orders when there is no certificate and renews at two thirds of its lifetime, retrying
    /// failures with doubling waits; a failure keeps the certificate in use. Runs until dropped.
    pub async fn run(self: Arc<Self>) {
        let initial = self.settings.retry_initial;
        let mut backoff = initial;
        loop {
            if let Some(current) = self.certificate() {
                let wait = (current.renew_at - now()).max(0) as u64;
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            match self.renew().await {
                Ok(_) => backoff = initial,
                Err(e) => {
                    let e = match e {
                        Error::Acme(message) => message,
                        other => other.to_string(),
                    };
                    let keeping = match self.certificate() {
                        Some(c) => {
                            format!("keeping certificate {} (expires in {}s)", c.serial, c.not_after - now())
                        }
                        None => "no ACME certificate yet".into(),
                    };
                    // ±10 %, so gateways that failed together do not retry together.
                    let wait = backoff.mul_f64(0.9 + rand::random::<f64>() * 0.2);
                    warn!(
                        failed_total = self.orders_failed.load(Ordering::Relaxed),
                        "ACME order for {} failed: {e}; {keeping}; retrying in {:.1}s",
                        self.settings.domains.join(","),
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.settings.retry_max);
                }
            }
        }
    }

    /// The names of the certificate in use and when it expires, for
    /// `rtmpx_tls_certificate_expiry_seconds`.
    pub fn expiries(&self) -> Vec<crate::certinfo::Expiry> {
        let Some(current) = self.certificate() else { return Vec::new() };
        let expiry = |name: &String| crate::certinfo::Expiry {
            name: name.clone(),
            source: "acme",
            not_after: current.not_after,
        };
        current.names.iter().map(expiry).collect()
    }

    /// `rtmpx_acme_orders_total{result}`.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP rtmpx_acme_orders_total ACME orders by result.\n# TYPE rtmpx_acme_orders_total counter\n\
             rtmpx_acme_orders_total{{result=\"ok\"}} {}\nrtmpx_acme_orders_total{{result=\"failed\"}} {}",
            self.orders_ok.load(Ordering::Relaxed),
            self.orders_failed.load(Ordering::Relaxed)
        );
    }
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").field("domains", &self.settings.domains).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(names: &[&str], not_before: i64, not_after: i64) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_before as u64);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after as u64);
        format!("{}{}", params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime_with_jitter() {
        let start = now() - 10;
        let lifetime = 90 * 86_400;
        for _ in 0..20 {
            let issued =
                Issued::parse(pem(&["Media.Example.com", "b.example"], start, start + lifetime).as_bytes())
                    .unwrap();
            assert_eq!((issued.not_before, issued.not_after), (start, start + lifetime));
            let at = issued.renew_at - start;
            assert!((lifetime * 2 / 3 - lifetime / 20..=lifetime * 2 / 3).contains(&at), "{at}");
            assert!(!issued.due());
            assert!(issued.covers_all(&["media.example.com".into(), "B.EXAMPLE".into()]));
            assert!(!issued.covers("c.example"));
        }
        let old = Issued::parse(pem(&["a.example"], start - 100, start + 5).as_bytes()).unwrap();
        assert!(old.due());
        assert!(Issued::parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(Issued::parse(b"").is_err());
    }
}
