//! What the gateway reads from a leaf certificate (names, serial, validity) for renewal, logs and
//! `/metrics`, whether it came from files or from an ACME CA.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::Out;

/// The facts of one leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    /// DNS names among its subject alternative names (lower case).
    pub dns_names: Vec<String>,
    /// IP addresses among its subject alternative names.
    pub ip_addresses: Vec<String>,
    pub serial: String,
    /// Validity, in Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Parses a DER leaf certificate.
pub fn leaf_facts(der: &[u8]) -> Result<LeafFacts, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("leaf: {e}"))?;
    let validity = x509.validity();
    let mut facts = LeafFacts {
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        serial: x509.raw_serial_as_string(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    };
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    facts.dns_names.push(dns.to_ascii_lowercase());
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_text(bytes) {
                        facts.ip_addresses.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(facts)
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// One series of `rtmpx_tls_certificate_expiry_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expiry {
    pub name: String,
    /// `acme` or `file` (the development certificate is a file too).
    pub source: &'static str,
    pub not_after: i64,
}

/// `rtmpx_tls_certificate_expiry_seconds{name,source}`: seconds until each certificate in use
/// expires, per name it serves (a name served by several certificates of one source shows the
/// one that expires first).
pub fn render_expiries(out: &mut Out, mut expiries: Vec<Expiry>) {
    expiries.sort();
    expiries.dedup_by(|later, earlier| later.name == earlier.name && later.source == earlier.source);
    const NAME: &str = "rtmpx_tls_certificate_expiry_seconds";
    out.header(
        NAME,
        "gauge",
        "Seconds until the certificate in use for a name expires (source: acme or file).",
    );
    let now = unix_now();
    for Expiry { name, source, not_after } in &expiries {
        out.sample_signed(NAME, &[("name", name), ("source", source)], not_after - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_a_generated_certificate_and_one_series_per_name_and_source() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["Media.Example".into(), "127.0.0.1".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        let facts = leaf_facts(cert.der()).unwrap();
        assert_eq!(facts.dns_names, ["media.example"]);
        assert_eq!(facts.ip_addresses, ["127.0.0.1"]);
        assert_eq!(facts.not_after, 1_925_078_400); // 2031-01-02T00:00:00Z
        assert!(leaf_facts(b"not a certificate").is_err());

        let series = |name: &str, source, not_after| Expiry { name: name.into(), source, not_after };
        let mut text = Out::default();
        let far = unix_now() + 1000;
        render_expiries(
            &mut text,
            vec![
                series("a", "file", far + 50),
                series("a", "file", far),
                series("a", "acme", far),
                series("b\"", "file", far),
            ],
        );
        let out = text.into_string();
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("rtmpx_tls_certificate_expiry_seconds{name=\"a\",source=\"acme\"} "),
            "{out}"
        );
        let soonest: i64 = lines[1].rsplit(' ').next().unwrap().parse().unwrap();
        assert!((990..=1000).contains(&soonest), "the earlier of two file certificates for a: {out}");
        assert!(lines[2].contains("name=\"b\\\"\""), "label values are escaped: {out}");
    }
}
