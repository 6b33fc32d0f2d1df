//! The cache directory: the account key and the certificate (chain and key in one PEM file),
//! per CA directory, each written atomically (temporary file, fsync, rename) and private (0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;

use super::config::AcmeSection;

pub struct Cache {
    dir: PathBuf,
    certificate: PathBuf,
}

impl Cache {
    /// `cache_dir/<directory URL as a file name>/`: a certificate from one CA is never taken
    /// for one from another (staging and production, say).
    pub fn new(settings: &AcmeSection) -> Cache {
        let dir = settings.cache_dir.join(slug(&settings.directory));
        let certificate = dir.join(format!("{}.pem", settings.domains[0].to_ascii_lowercase()));
        Cache { dir, certificate }
    }

    pub fn certificate_path(&self) -> &Path {
        &self.certificate
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.key")
    }

    pub fn account_key(&self) -> Result<Option<PrivatePkcs8KeyDer<'static>>, String> {
        let path = self.account_path();
        match read_small(&path)? {
            None => Ok(None),
            Some(pem) => PrivatePkcs8KeyDer::from_pem_slice(&pem)
                .map(Some)
                .map_err(|e| format!("{}: no PKCS#8 key: {e}", path.display())),
        }
    }

    pub fn save_account_key(&self, key: &PrivatePkcs8KeyDer<'_>) -> Result<(), String> {
        let pem = pem_block("PRIVATE KEY", key.secret_pkcs8_der());
        write_atomically(&self.account_path(), pem.as_bytes())
    }

    /// The cached certificate chain and key, PEM.
    pub fn certificate(&self) -> Result<Option<Vec<u8>>, String> {
        read_small(&self.certificate)
    }

    pub fn save_certificate(&self, pem: &str) -> Result<(), String> {
        write_atomically(&self.certificate, pem.as_bytes())
    }
}

fn slug(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect()
}

fn read_small(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(meta) if meta.len() > 1 << 20 => return Err(format!("{}: too large", path.display())),
        Ok(_) => {}
    }
    std::fs::read(path).map(Some).map_err(|e| format!("{}: {e}", path.display()))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// A crash leaves the old file or the new one, never half of either.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let dir = path.parent().expect("cache files live in a directory");
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        rand::random::<u32>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_per_directory_and_replaced_whole() {
        let root = crate::tls::tests::tempdir("acme-cache");
        let settings = |directory: &str| AcmeSection {
            directory: directory.into(),
            domains: vec!["Media.Example.com".into()],
            contact: vec![],
            ca_file: None,
            cache_dir: root.to_path_buf(),
            challenges: vec![super::super::config::ChallengeKind::Http01],
            dev_fallback: true,
            retry_initial: std::time::Duration::from_secs(1),
            retry_max: std::time::Duration::from_secs(2),
            order_timeout: std::time::Duration::from_secs(10),
        };
        let staging = Cache::new(&settings("https://acme-staging-v02.api.letsencrypt.org/directory"));
        let production = Cache::new(&settings("https://acme-v02.api.letsencrypt.org/directory"));
        assert!(staging
            .certificate_path()
            .ends_with("acme-staging-v02.api.letsencrypt.org-directory/media.example.com.pem"));
        staging.save_certificate("one").unwrap();
        staging.save_certificate("two").unwrap();
        assert_eq!(staging.certificate().unwrap().unwrap(), b"two");
        assert_eq!(production.certificate().unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(staging.certificate_path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(staging.certificate_path().parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files stay behind");

        let key = PrivatePkcs8KeyDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        staging.save_account_key(&key).unwrap();
        assert_eq!(staging.account_key().unwrap().unwrap().secret_pkcs8_der(), key.secret_pkcs8_der());
        assert_eq!(production.account_key().unwrap(), None);
    }
}
