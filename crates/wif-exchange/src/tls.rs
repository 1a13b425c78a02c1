//! The HTTPS client: rustls with the `ring` provider, trusting the system store plus the CAs in
//! `SSL_CERT_FILE` plus any the builder was given.

use std::{
    path::Path,
    sync::{Arc, OnceLock},
    time::Duration,
};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};

use crate::{env::SSL_CERT_FILE, error::Error};

/// The platform's trusted roots, loaded once per process (it can cost milliseconds).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        // rustls-native-certs replaces the platform store with SSL_CERT_FILE/SSL_CERT_DIR when
        // either is set. We want the platform store *and* SSL_CERT_FILE, so on Unix also read the
        // usual system locations, which it would have read without the variables.
        let mut found = rustls_native_certs::load_native_certs();
        #[cfg(all(unix, not(target_os = "macos")))]
        for dir in openssl_probe::candidate_cert_dirs() {
            found
                .certs
                .extend(rustls_native_certs::load_certs_from_paths(None, Some(dir)).certs);
        }
        for e in &found.errors {
            tracing::debug!(error = %e, "skipped part of the system trust store");
        }
        let mut certs = found.certs;
        certs.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
        certs.dedup();
        certs
    })
}

/// Parses every certificate of a PEM bundle; `origin` names it in errors.
pub(crate) fn parse_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::TrustStore {
            origin: origin.to_owned(),
            reason: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::TrustStore {
            origin: origin.to_owned(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Builds the root store: system store, `SSL_CERT_FILE` (an unreadable or empty file is an error:
/// someone set it on purpose), and `extra` from the builder.
pub(crate) fn root_store(extra: &[CertificateDer<'static>]) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "ignored unparsable certificates of the system trust store"
        );
    }
    if let Some(path) = std::env::var_os(SSL_CERT_FILE).filter(|p| !p.is_empty()) {
        let origin = format!("{SSL_CERT_FILE}={}", Path::new(&path).display());
        let pem = std::fs::read(&path).map_err(|e| Error::TrustStore {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        add_all(&mut roots, parse_pem(&pem, &origin)?, &origin)?;
    }
    add_all(&mut roots, extra.to_vec(), "the builder's CA certificates")?;
    Ok(roots)
}

fn add_all(
    roots: &mut RootCertStore,
    certs: Vec<CertificateDer<'static>>,
    origin: &str,
) -> Result<(), Error> {
    for cert in certs {
        roots.add(cert).map_err(|e| Error::TrustStore {
            origin: origin.to_owned(),
            reason: format!("unusable certificate: {e}"),
        })?;
    }
    Ok(())
}

/// The rustls configuration: `ring` provider, safe default protocol versions, h2 and http/1.1.
pub(crate) fn client_config(extra: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TrustStore {
            origin: "rustls".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(root_store(extra)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The reqwest client used when the caller brings none. No redirects: a redirect must never
/// carry the assertion to another host.
pub(crate) fn http_client(
    extra: &[CertificateDer<'static>],
    connect_timeout: Duration,
) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(extra)?)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .user_agent(concat!("wif-exchange/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::HttpClient { source: Arc::new(e) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_parsing_errors_are_typed() {
        let e = parse_pem(b"not a pem", "test").expect_err("no certs");
        assert!(matches!(e, Error::TrustStore { .. }), "{e}");
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
    }

    #[test]
    fn config_offers_h2_and_builds_a_client() {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&rcgen::KeyPair::generate().expect("key"))
            .expect("cert");
        let certs = parse_pem(ca.pem().as_bytes(), "test").expect("pem");
        let cfg = client_config(&certs).expect("config");
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(http_client(&certs, Duration::from_secs(1)).is_ok());
    }
}
