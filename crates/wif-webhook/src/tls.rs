//! Serving certificates that can be replaced while the server runs.
//!
//! The listener keeps one rustls `ServerConfig` whose certificate resolver reads an `ArcSwap`, so a
//! new certificate applies to the next handshake and open connections are never dropped. Files
//! are polled by content rather than watched by inode: the kubelet updates Secret volumes by
//! swapping a `..data` symlink, which inode watches miss.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwapOption;
use rustls::{
    ServerConfig,
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;

/// Failure to load or parse a certificate and key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate PEM holds no certificate.
    #[error("no certificate found in the certificate PEM {0}")]
    NoCertificate(String),
    /// The key PEM holds no usable private key.
    #[error("no usable private key in the key PEM {what}: {reason}")]
    BadKey {
        /// Where the key came from.
        what: String,
        /// Why it is unusable.
        reason: String,
    },
}

/// Resolves every handshake to the current certificate.
#[derive(Default)]
pub struct CertStore {
    current: ArcSwapOption<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl CertStore {
    /// An empty store; handshakes fail until [`CertStore::set`] is called.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the certificate used for new handshakes.
    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Some(Arc::new(key)));
    }

    /// Parses a PEM certificate chain and key and makes them current.
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<(), TlsError> {
        self.set(certified_key(cert_pem, key_pem, what)?);
        Ok(())
    }

    /// Whether a certificate has been loaded.
    pub(crate) fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// The leaf certificate currently served (DER), if any.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.load().as_ref().and_then(|k| k.cert.first().cloned())
    }

    /// A rustls server configuration that resolves through this store, offering `h2` (when
    /// `http2`) and `http/1.1` in ALPN, in that order of preference.
    pub fn server_config(self: &Arc<Self>, http2: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth().with_cert_resolver(self.clone()));
        // ring's default provider supports the default protocol versions; failing here is a
        // build misconfiguration, so fall back to the plain builder's defaults.
        let mut config = builder.unwrap_or_else(|_| {
            ServerConfig::builder()
                .with_no_client_auth()
                .with_cert_resolver(self.clone())
        });
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// Parses a PEM chain and private key into a rustls `CertifiedKey`.
pub(crate) fn certified_key(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    let signing = any_supported_type(&key).map_err(|e| TlsError::BadKey {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(CertifiedKey::new(certs, signing))
}

/// A certificate and key read from two files and reloaded when their contents change.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl CertFiles {
    fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    }

    /// Loads both files into `store`; returns what was loaded so later polls can compare.
    pub fn load_into(&self, store: &CertStore) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let cert = Self::read(&self.cert)?;
        let key = Self::read(&self.key)?;
        store.set_pem(&cert, &key, &self.cert.display().to_string())?;
        Ok((cert, key))
    }

    /// Polls the files every `interval` until `stop`, loading them whenever both parse and
    /// either changed. A half-written or mismatched pair keeps the previous certificate.
    pub async fn watch(self, store: Arc<CertStore>, interval: Duration, stop: CancellationToken) {
        let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
        loop {
            match (Self::read(&self.cert), Self::read(&self.key)) {
                (Ok(cert), Ok(key)) => {
                    let changed = last.as_ref().is_none_or(|(c, k)| *c != cert || *k != key);
                    if changed {
                        match store.set_pem(&cert, &key, &self.cert.display().to_string()) {
                            Ok(()) => {
                                tracing::info!(cert = %self.cert.display(), "serving certificate loaded");
                                last = Some((cert, key));
                            }
                            Err(error) => {
                                tracing::error!(%error, "new certificate rejected; still serving the previous one");
                            }
                        }
                    }
                }
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "certificate files unreadable; still serving the previous one");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
