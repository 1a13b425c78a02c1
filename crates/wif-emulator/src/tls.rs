//! The emulator's CA (persisted as `ca.pem` + `ca-key.pem`), its serving certificate (made fresh
//! at each start, signed by the CA) and the rustls configs, all on the `ring` provider.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};

use crate::{Error, Result, state::write_atomic};

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const CA_COMMON_NAME: &str = "wif emulator CA";

/// The `ring` crypto provider, used for every TLS config of this crate.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA and the serving config.
pub(crate) struct Tls {
    pub(crate) ca_pem: String,
    pub(crate) ca_path: PathBuf,
    pub(crate) server_config: Arc<rustls::ServerConfig>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "wif");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Loads the CA from `dir` (or creates it) and issues a serving certificate for 127.0.0.1,
/// ::1, localhost and `extra_hosts`.
pub(crate) async fn load_or_create(dir: &Path, extra_hosts: &[String]) -> Result<Tls> {
    let ca_path = dir.join(CA_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let existing = match (
        tokio::fs::read_to_string(&ca_path).await,
        tokio::fs::read_to_string(&key_path).await,
    ) {
        (Ok(cert), Ok(key)) => Some((cert, key)),
        _ => None,
    };
    let (ca_pem, ca_key) = match existing {
        Some((cert, key)) => (cert, KeyPair::from_pem(&key).map_err(Error::Certificate)?),
        None => {
            let key = KeyPair::generate().map_err(Error::Certificate)?;
            let cert = ca_params().self_signed(&key).map_err(Error::Certificate)?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), true).await?;
            write_atomic(&ca_path, cert.pem().as_bytes(), false).await?;
            tracing::info!(path = %ca_path.display(), "created a new emulator CA");
            (cert.pem(), key)
        }
    };
    // Re-creating the issuer from the same DN and key yields certificates that chain to the
    // persisted CA certificate.
    let issuer = Issuer::new(ca_params(), ca_key);

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for host in extra_hosts {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
            names.push(host.clone());
        }
    }
    let mut params = CertificateParams::new(names).map_err(Error::Certificate)?;
    params.distinguished_name.push(DnType::CommonName, "wif emulator");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf_key = KeyPair::generate().map_err(Error::Certificate)?;
    let leaf = params.signed_by(&leaf_key, &issuer).map_err(Error::Certificate)?;

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key_der)
        .map_err(Error::Tls)?;
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        ca_pem,
        ca_path,
        server_config: Arc::new(server_config),
    })
}

/// Parses every certificate of a PEM bundle.
pub(crate) fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut reader = pem.as_bytes();
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// A rustls client config trusting `extra` CAs (PEM bundles), plus the system roots if asked.
pub(crate) fn client_config(extra: &[String], system_roots: bool) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    if system_roots {
        let native = rustls_native_certs::load_native_certs();
        for err in &native.errors {
            tracing::debug!(error = %err, "skipped an unreadable system root");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "loaded system roots");
    }
    for pem in extra {
        for cert in parse_pem_certs(pem)? {
            roots.add(cert).map_err(|e| e.to_string())?;
        }
    }
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// The host of a URL, for the serving certificate's SANs (IP literals unbracketed).
pub(crate) fn url_host(url: &url::Url) -> Option<String> {
    match url.host()? {
        url::Host::Domain(d) => Some(d.to_string()),
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip).to_string()),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip).to_string()),
    }
}
