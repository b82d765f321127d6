//! TLS for the HTTP endpoints (rustls with ring). The certificate and key
//! are read again when their files change, so a rotated certificate (e.g.
//! by cert-manager) is served without a restart; a broken rotation keeps
//! the last good pair and says so.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
        sign::CertifiedKey,
    },
};

use super::webconfig::{ClientAuth, TlsSettings, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS set-up: {0}")]
    Setup(String),
}

/// The acceptor for `settings`; fails if any file is unreadable or the key
/// does not match the certificate.
pub fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (settings.min_version..=settings.max_version).contains(version))
    .map(|(_, supported)| supported)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|error| TlsError::Setup(error.to_string()))?;
    let builder = match &settings.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::VerifyIfGiven { ca_file } | ClientAuth::Require { ca_file } => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_file)? {
                roots.add(cert).map_err(|error| TlsError::File {
                    path: ca_file.clone(),
                    reason: error.to_string(),
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if matches!(settings.client_auth, ClientAuth::VerifyIfGiven { .. }) {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|error| TlsError::Setup(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let resolver = ReloadingCert::load(
        settings.cert_file.clone(),
        settings.key_file.clone(),
        provider,
    )?;
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| file_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(error.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Serves the certificate from files, reloaded when they change.
#[derive(Debug)]
struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
}

impl ReloadingCert {
    fn load(
        cert_file: PathBuf,
        key_file: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let modified = (modified(&cert_file), modified(&key_file));
        let key = certified_key(&cert_file, &key_file, &provider)?;
        Ok(Self {
            cert_file,
            key_file,
            provider,
            current: Mutex::new(Loaded { key, modified }),
        })
    }

    /// The current pair, re-read first if either file changed since.
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().ok()?;
        let now = (modified(&self.cert_file), modified(&self.key_file));
        if now != current.modified {
            // Remember the attempt either way: a broken rotation is
            // reported once, not at every handshake.
            current.modified = now;
            match certified_key(&self.cert_file, &self.key_file, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                    current.key = key;
                }
                Err(error) => tracing::warn!(
                    %error,
                    "cannot reload the TLS certificate; still serving the previous one"
                ),
            }
        }
        Some(current.key.clone())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs(cert_file)?;
    let key_error = |reason: String| TlsError::File {
        path: key_file.to_path_buf(),
        reason,
    };
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|error| key_error(error.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| key_error(error.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|_| {
        key_error(format!(
            "does not match the certificate in {}",
            cert_file.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: PathBuf,
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn self_signed(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn files(tag: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("connmon-tls-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn settings(files: &Files) -> TlsSettings {
        TlsSettings {
            cert_file: files.dir.join("tls.crt"),
            key_file: files.dir.join("tls.key"),
            client_auth: ClientAuth::None,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
        }
    }

    #[test]
    fn a_key_that_does_not_match_is_named() {
        let files = files("mismatch");
        let (cert, _) = self_signed("a.example");
        let (_, other_key) = self_signed("b.example");
        fs::write(files.dir.join("tls.crt"), cert).unwrap();
        fs::write(files.dir.join("tls.key"), other_key).unwrap();
        let error = acceptor(&settings(&files)).err().unwrap().to_string();
        assert!(error.contains("does not match the certificate"), "{error}");
    }

    #[test]
    fn missing_or_empty_files_are_named() {
        let files = files("missing");
        let error = acceptor(&settings(&files)).err().unwrap().to_string();
        assert!(error.contains("tls.crt"), "{error}");
        fs::write(files.dir.join("tls.crt"), "not pem").unwrap();
        let error = acceptor(&settings(&files)).err().unwrap().to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn a_rotated_certificate_is_served_and_a_broken_one_is_not() {
        let files = files("rotate");
        let (cert, key) = self_signed("first.example");
        fs::write(files.dir.join("tls.crt"), &cert).unwrap();
        fs::write(files.dir.join("tls.key"), &key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = ReloadingCert::load(
            files.dir.join("tls.crt"),
            files.dir.join("tls.key"),
            provider,
        )
        .unwrap();
        let first = resolver.current().unwrap();

        // A rotation writes both files; the mtime moves on.
        let (cert2, key2) = self_signed("second.example");
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        for (name, text) in [("tls.crt", &cert2), ("tls.key", &key2)] {
            let path = files.dir.join(name);
            fs::write(&path, text).unwrap();
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        let second = resolver.current().unwrap();
        assert_ne!(first.cert, second.cert, "the new certificate is served");

        // Half a rotation (new cert, old key) keeps the last good pair.
        let path = files.dir.join("tls.crt");
        fs::write(&path, &cert).unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(5))
            .unwrap();
        let kept = resolver.current().unwrap();
        assert_eq!(kept.cert, second.cert);
    }
}
