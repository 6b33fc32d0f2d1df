//! The self-signed development certificate: a local CA (`ca.pem`, `ca.key`) and a leaf
//! (`cert.pem`, `key.pem`) for localhost, 127.0.0.1, ::1 and the configured host names.
//!
//! Clients either skip verification or trust `ca.pem`. An existing CA is reused when the leaf is
//! made again, so trust given once survives new host names and rotation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::config::CertPaths;
use crate::error::{Error, Result};

const CA_NAME: &str = "rtmpx development CA";
const LEAF_DAYS: i64 = 365;
const CA_DAYS: i64 = 3650;

/// Where the development certificate's four files live.
#[derive(Debug, Clone)]
pub struct DevCert {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevCert {
    pub fn in_dir(dir: &Path) -> Self {
        DevCert {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// The leaf chain and key, as a listener loads them.
    pub fn leaf(&self) -> CertPaths {
        CertPaths { cert: self.cert.clone(), key: self.key.clone() }
    }
}

/// The names the leaf covers: the loopback names first, then `hosts`, without repeats.
pub fn names(hosts: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    for host in hosts {
        let host = host.trim().to_ascii_lowercase();
        if !host.is_empty() && !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

/// Uses the certificate in `dir` when its files exist, else generates one; `true` when generated.
pub fn ensure(dir: &Path, hosts: &[String]) -> Result<(DevCert, bool)> {
    let files = DevCert::in_dir(dir);
    if files.cert.exists() && files.key.exists() {
        return Ok((files, false));
    }
    Ok((generate(dir, hosts)?, true))
}

/// Writes a new leaf (and a CA when `dir` has none) for `names(hosts)`.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<DevCert> {
    let files = DevCert::in_dir(dir);
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let gen_error =
        |e: rcgen::Error| Error::Certificate { path: dir.display().to_string(), message: e.to_string() };

    let today = days_since_epoch();
    let (ca_key, new_ca) = if files.ca_cert.exists() && files.ca_key.exists() {
        let pem = std::fs::read_to_string(&files.ca_key)
            .map_err(Error::io(format!("reading {}", files.ca_key.display())))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| Error::Certificate {
            path: files.ca_key.display().to_string(),
            message: format!("not a usable CA key: {e}"),
        })?;
        (key, false)
    } else {
        (KeyPair::generate().map_err(gen_error)?, true)
    };
    // Rebuilt from the same name and key, the CA signs leaves that chain to the ca.pem on disk.
    let ca = ca_params(today).self_signed(&ca_key).map_err(gen_error)?;

    let mut leaf = CertificateParams::new(names(hosts)).map_err(gen_error)?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, "rtmpx development certificate");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    set_validity(&mut leaf, today - 1, today + LEAF_DAYS);
    let leaf_key = KeyPair::generate().map_err(gen_error)?;
    let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key).map_err(gen_error)?;

    if new_ca {
        write_atomically(&files.ca_key, ca_key.serialize_pem().as_bytes(), true)?;
        write_atomically(&files.ca_cert, ca.pem().as_bytes(), false)?;
    }
    // Key first: a reload between the two writes then fails on the mismatch and keeps the old pair.
    write_atomically(&files.key, leaf_key.serialize_pem().as_bytes(), true)?;
    write_atomically(&files.cert, leaf.pem().as_bytes(), false)?;
    Ok(files)
}

fn ca_params(today: i64) -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, CA_NAME);
    ca.distinguished_name.push(DnType::OrganizationName, "rtmpx");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut ca, today - 1, today + CA_DAYS);
    ca
}

fn write_atomically(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let write = || -> std::io::Result<()> {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(Error::io(format!("writing {}", path.display())))
}

fn days_since_epoch() -> i64 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (secs / 86_400) as i64
}

/// Valid from midnight UTC of day `from` to that of day `to`, days counted from 1970-01-01.
fn set_validity(params: &mut CertificateParams, from: i64, to: i64) {
    let midnight = |days| {
        let (y, m, d) = civil_from_days(days);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = midnight(from);
    params.not_after = midnight(to);
}

fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{fingerprint, CertStore};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[test]
    fn civil_dates_known_answers() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn names_start_with_loopback_and_skip_repeats() {
        let hosts = ["Example.COM".to_string(), "localhost".to_string(), "example.com".to_string()];
        assert_eq!(names(&hosts), ["localhost", "127.0.0.1", "::1", "example.com"]);
    }

    fn verify(ca: &Path, leaf: &Path, name: &str) -> std::result::Result<(), String> {
        let ca = CertificateDer::from_pem_file(ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let leaf = CertificateDer::from_pem_file(leaf).unwrap();
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        ee.verify_for_usage(
            algs.all,
            &roots.roots,
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| e.to_string())?;
        ee.verify_is_valid_for_subject_name(&ServerName::try_from(name).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn generated_leaf_chains_to_the_ca_and_a_regenerated_one_reuses_it() {
        let dir = crate::tls::tests::tempdir("devcert");
        let (files, generated) = ensure(&dir, &["media.example".to_string()]).unwrap();
        assert!(generated);
        for name in ["localhost", "127.0.0.1", "::1", "media.example"] {
            verify(&files.ca_cert, &files.cert, name).unwrap();
        }
        assert!(verify(&files.ca_cert, &files.cert, "other.example").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(&files.ca_key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let store = CertStore::load(vec![files.leaf()]).unwrap();
        let first = store.fingerprints()[0].clone();

        // ensure() keeps what is there; generate() makes a new leaf under the same CA.
        assert!(!ensure(&dir, &[]).unwrap().1);
        let ca_before = std::fs::read(&files.ca_cert).unwrap();
        let again = generate(&dir, &["other.example".to_string()]).unwrap();
        assert_eq!(std::fs::read(&again.ca_cert).unwrap(), ca_before);
        verify(&again.ca_cert, &again.cert, "other.example").unwrap();
        store.reload().unwrap();
        assert_ne!(store.fingerprints()[0], first);
        let leaf = CertificateDer::from_pem_file(&again.cert).unwrap();
        assert_eq!(store.fingerprints()[0], fingerprint(&leaf));

        // A CA from elsewhere does not verify the leaf.
        let other = crate::tls::tests::tempdir("devcert-other");
        let other = generate(&other, &[]).unwrap();
        assert!(verify(&other.ca_cert, &again.cert, "localhost").is_err());
    }
}
