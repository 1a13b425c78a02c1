//! Self-managed certificates: the webhook keeps its own CA and serving certificate in a Secret,
//! publishes the CA in the caBundle of its webhook configurations, and rotates before expiry.
//!
//! Several replicas share one Secret. Writes use the Secret's `resourceVersion` as a
//! precondition, so when two replicas race to create or rotate, one wins and the others adopt its
//! result on their next read. The caBundle is patched only when it differs, with a `test` on the
//! configuration's `resourceVersion`, for the same reason.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use base64::Engine;
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
        core::v1::Secret,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::tls::CertStore;

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_BUNDLE: &str = "ca-bundle.crt";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_NOT_AFTER: &str = "wif.azure.workload.identity/ca-not-after";
const CERT_NOT_AFTER: &str = "wif.azure.workload.identity/cert-not-after";

/// Failure in self-managed certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum SelfManagedError {
    /// Generating or signing a certificate failed.
    #[error("failed to generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The Secret holding the certificates could not be read or written.
    #[error("failed to {action} Secret {namespace}/{name}: {source}")]
    Secret {
        /// What was attempted.
        action: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The webhook configuration could not be patched.
    #[error("failed to publish the caBundle in webhook configuration {name}: {source}")]
    WebhookConfig {
        /// Its name.
        name: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Secret holds a certificate that cannot be served.
    #[error("Secret {0} holds an unusable certificate: {1}")]
    Unusable(String, crate::tls::TlsError),
}

/// Settings of self-managed certificates.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    /// Namespace of the Secret (the webhook's own).
    pub namespace: String,
    /// Name of the Secret.
    pub secret_name: String,
    /// MutatingWebhookConfigurations whose caBundle to keep in sync.
    pub webhook_configs: Vec<String>,
    /// DNS names of the serving certificate (`<service>.<ns>.svc`, …).
    pub dns_names: Vec<String>,
    /// IP addresses of the serving certificate (for a webhook reached by `url:`, as in local runs).
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// Lifetime of the CA.
    pub ca_validity: Duration,
    /// Lifetime of a serving certificate.
    pub cert_validity: Duration,
    /// How long before expiry a certificate (or the CA) is replaced.
    pub renew_before: Duration,
    /// How often the Secret and caBundle are checked.
    pub check_interval: Duration,
    /// How soon a check that could not publish everything (a webhook configuration not created
    /// yet, a lost race, an API error) is repeated.
    pub retry_interval: Duration,
}

impl SelfManaged {
    /// Defaults for a Service `service` in `namespace`: CA 10 years, certificate 1 year, renewed
    /// 90 days before expiry, checked hourly.
    pub fn new(namespace: &str, service: &str, secret_name: &str, webhook_configs: Vec<String>) -> Self {
        Self {
            namespace: namespace.to_owned(),
            secret_name: secret_name.to_owned(),
            webhook_configs,
            dns_names: vec![
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ],
            ip_addresses: Vec::new(),
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            cert_validity: Duration::from_secs(365 * 24 * 3600),
            renew_before: Duration::from_secs(90 * 24 * 3600),
            check_interval: Duration::from_secs(3600),
            retry_interval: Duration::from_secs(10),
        }
    }

    fn err(&self, action: &'static str) -> impl FnOnce(kube::Error) -> SelfManagedError + '_ {
        move |source| SelfManagedError::Secret {
            action,
            namespace: self.namespace.clone(),
            name: self.secret_name.clone(),
            source: Box::new(source),
        }
    }

    /// Makes sure a valid certificate exists, loads it into `store` and publishes the caBundle;
    /// true when every configured MutatingWebhookConfiguration holds it.
    pub async fn ensure(&self, client: &Client, store: &CertStore) -> Result<bool, SelfManagedError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        // A lost race (409) means another replica wrote first: read again and use its result.
        let mut attempt = 0;
        let secret = loop {
            attempt += 1;
            let existing = secrets
                .get_opt(&self.secret_name)
                .await
                .map_err(self.err("read"))?;
            let now = OffsetDateTime::now_utc();
            match self.plan(existing.as_ref(), now) {
                Plan::Keep => break existing,
                plan => {
                    let desired = self.issue(existing.as_ref(), plan, now)?;
                    let result = match &existing {
                        Some(current) => {
                            let mut next = current.clone();
                            next.data = desired.data;
                            next.metadata.annotations = desired.metadata.annotations;
                            secrets
                                .replace(&self.secret_name, &PostParams::default(), &next)
                                .await
                        }
                        None => secrets.create(&PostParams::default(), &desired).await,
                    };
                    match result {
                        Ok(written) => {
                            tracing::info!(secret = %self.secret_name, "serving certificate issued");
                            break Some(written);
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => continue,
                        Err(e) => return Err(self.err("write")(e)),
                    }
                }
            }
        };
        let data = secret.as_ref().and_then(|s| s.data.as_ref());
        let get = |k: &str| {
            data.and_then(|d| d.get(k))
                .map(|b| b.0.clone())
                .unwrap_or_default()
        };
        let secret_ref = format!("{}/{}", self.namespace, self.secret_name);
        store
            .set_pem(&get(TLS_CERT), &get(TLS_KEY), &secret_ref)
            .map_err(|e| SelfManagedError::Unusable(secret_ref.clone(), e))?;
        let bundle = {
            let b = get(CA_BUNDLE);
            if b.is_empty() { get(CA_CERT) } else { b }
        };
        self.publish_ca_bundle(client, &bundle).await
    }

    /// Checks every `check_interval` until `stop`; sooner (`retry_interval`) while the last
    /// check could not publish everything. `published` is what the first [`Self::ensure`] said.
    pub async fn run(self, client: Client, store: Arc<CertStore>, stop: CancellationToken, published: bool) {
        let mut complete = published;
        loop {
            let wait = if complete {
                self.check_interval
            } else {
                self.retry_interval
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            complete = match self.ensure(&client, &store).await {
                Ok(complete) => complete,
                Err(error) => {
                    tracing::error!(%error, "certificate check failed; will retry");
                    false
                }
            };
        }
    }

    fn plan(&self, secret: Option<&Secret>, now: OffsetDateTime) -> Plan {
        let Some(secret) = secret else { return Plan::NewCa };
        let data = secret.data.clone().unwrap_or_default();
        let has = |k: &str| data.get(k).is_some_and(|v| !v.0.is_empty());
        if !(has(CA_CERT) && has(CA_KEY) && has(TLS_CERT) && has(TLS_KEY)) {
            return Plan::NewCa;
        }
        let expiry = |k: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        };
        let renew = now + self.renew_before;
        match (expiry(CA_NOT_AFTER), expiry(CERT_NOT_AFTER)) {
            (Some(ca), _) if ca <= renew => Plan::NewCa,
            (Some(_), Some(cert)) if cert > renew => Plan::Keep,
            (Some(_), _) => Plan::NewCert,
            (None, _) => Plan::NewCa,
        }
    }

    fn issue(
        &self,
        existing: Option<&Secret>,
        plan: Plan,
        now: OffsetDateTime,
    ) -> Result<Secret, SelfManagedError> {
        let old = existing.and_then(|s| s.data.clone()).unwrap_or_default();
        let old_str = |k: &str| old.get(k).map(|b| String::from_utf8_lossy(&b.0).into_owned());
        let (ca_pem, ca_key_pem, ca_not_after, bundle) = match (plan, old_str(CA_CERT), old_str(CA_KEY)) {
            (Plan::NewCert, Some(cert), Some(key)) => {
                let not_after = existing
                    .and_then(|s| s.metadata.annotations.as_ref())
                    .and_then(|a| a.get(CA_NOT_AFTER).cloned())
                    .unwrap_or_default();
                let bundle = old_str(CA_BUNDLE).unwrap_or_else(|| cert.clone());
                (cert, key, not_after, bundle)
            }
            _ => {
                let ca = generate_ca("wif-webhook-ca", now, self.ca_validity)?;
                // Keep trusting the previous CA until every replica serves the new certificate.
                let bundle = match old_str(CA_CERT) {
                    Some(previous) if !previous.is_empty() => format!("{}{previous}", ca.cert_pem),
                    _ => ca.cert_pem.clone(),
                };
                let not_after = (now + self.ca_validity).unix_timestamp().to_string();
                (ca.cert_pem, ca.key_pem, not_after, bundle)
            }
        };
        let leaf = issue_cert(
            &ca_pem,
            &ca_key_pem,
            &self.dns_names,
            &self.ip_addresses,
            now,
            self.cert_validity,
        )?;
        let data = BTreeMap::from([
            (CA_CERT.to_owned(), ByteString(ca_pem.into_bytes())),
            (CA_KEY.to_owned(), ByteString(ca_key_pem.into_bytes())),
            (CA_BUNDLE.to_owned(), ByteString(bundle.into_bytes())),
            (TLS_CERT.to_owned(), ByteString(leaf.cert_pem.into_bytes())),
            (TLS_KEY.to_owned(), ByteString(leaf.key_pem.into_bytes())),
        ]);
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(self.secret_name.clone()),
                namespace: Some(self.namespace.clone()),
                annotations: Some(BTreeMap::from([
                    (CA_NOT_AFTER.to_owned(), ca_not_after),
                    (
                        CERT_NOT_AFTER.to_owned(),
                        (now + self.cert_validity).unix_timestamp().to_string(),
                    ),
                ])),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "wif-webhook".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Secret::default()
        })
    }

    async fn publish_ca_bundle(&self, client: &Client, bundle: &[u8]) -> Result<bool, SelfManagedError> {
        let mut complete = true;
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        for name in &self.webhook_configs {
            let wrap = |source| SelfManagedError::WebhookConfig {
                name: name.clone(),
                source: Box::new(source),
            };
            match mutating.get_opt(name).await.map_err(wrap)? {
                Some(cfg) => {
                    let current = cfg
                        .webhooks
                        .iter()
                        .flatten()
                        .map(|h| h.client_config.ca_bundle.as_ref());
                    complete &= patch_ca_bundle(
                        &mutating,
                        name,
                        current,
                        cfg.metadata.resource_version.clone(),
                        bundle,
                    )
                    .await
                    .map_err(wrap)?;
                }
                None => {
                    // Helm creates webhook configurations after Deployments: look again soon.
                    tracing::warn!(config = %name, "MutatingWebhookConfiguration not found yet; caBundle not published");
                    complete = false;
                }
            }
            // The validating configuration of the same name (bindings and policies), when there
            // is one and this webhook may read it (the Helm chart grants it by name).
            match validating.get_opt(name).await {
                Ok(Some(cfg)) => {
                    let current = cfg
                        .webhooks
                        .iter()
                        .flatten()
                        .map(|h| h.client_config.ca_bundle.as_ref());
                    complete &= patch_ca_bundle(
                        &validating,
                        name,
                        current,
                        cfg.metadata.resource_version.clone(),
                        bundle,
                    )
                    .await
                    .map_err(wrap)?;
                }
                Ok(None) => {}
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    tracing::debug!(config = %name, "no access to a ValidatingWebhookConfiguration of this name")
                }
                Err(e) => return Err(wrap(e)),
            }
        }
        Ok(complete)
    }
}

/// Sets every webhook's caBundle in configuration `name` to `bundle`, unless all already hold
/// it; guarded by `resource_version`, so a replica that lost a race (false) checks again soon.
async fn patch_ca_bundle<'a, K>(
    api: &Api<K>,
    name: &str,
    current: impl Iterator<Item = Option<&'a ByteString>>,
    resource_version: Option<String>,
    bundle: &[u8],
) -> Result<bool, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut ops = Vec::new();
    for (i, ca) in current.enumerate() {
        if ca.map(|b| b.0.as_slice()) != Some(bundle) {
            ops.push(serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": base64::engine::general_purpose::STANDARD.encode(bundle),
            }));
        }
    }
    if ops.is_empty() {
        return Ok(true);
    }
    ops.insert(
        0,
        serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}),
    );
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    match api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => {
            tracing::info!(config = %name, "caBundle published");
            Ok(true)
        }
        // Another replica patched first; the next check re-reads.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {
            tracing::debug!(config = %name, "caBundle patch lost a race");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Keep,
    NewCert,
    NewCa,
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct PemPair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generates a self-signed CA (ECDSA P-256).
pub fn generate_ca(
    common_name: &str,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<PemPair, rcgen::Error> {
    let key = KeyPair::generate()?;
    let params = ca_params(common_name, now, validity)?;
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ca_params(
    common_name: &str,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, "wif");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + validity;
    Ok(params)
}

/// Issues a serving certificate for `dns_names` and `ips`, signed by the PEM CA.
pub fn issue_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    dns_names: &[String],
    ips: &[std::net::IpAddr],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<PemPair, rcgen::Error> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().map(String::as_str).unwrap_or("wif-webhook"),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + validity;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager() -> SelfManaged {
        SelfManaged::new(
            "wif-system",
            "wif-webhook",
            "wif-webhook-tls",
            vec!["wif".to_owned()],
        )
    }

    #[test]
    fn missing_secret_needs_a_new_ca() {
        assert_eq!(manager().plan(None, OffsetDateTime::now_utc()), Plan::NewCa);
    }

    #[test]
    fn fresh_secret_is_kept_and_an_expiring_one_is_renewed() {
        let m = manager();
        let now = OffsetDateTime::now_utc();
        let secret = m.issue(None, Plan::NewCa, now).unwrap();
        assert_eq!(m.plan(Some(&secret), now), Plan::Keep);
        // Past the renewal point of the serving certificate but not of the CA.
        let later = now + m.cert_validity - m.renew_before + Duration::from_secs(60);
        assert_eq!(m.plan(Some(&secret), later), Plan::NewCert);
        let renewed = m.issue(Some(&secret), Plan::NewCert, later).unwrap();
        let d = |s: &Secret, k: &str| s.data.as_ref().unwrap()[k].0.clone();
        assert_eq!(d(&renewed, CA_CERT), d(&secret, CA_CERT), "the CA is kept");
        assert_ne!(
            d(&renewed, TLS_CERT),
            d(&secret, TLS_CERT),
            "the certificate is new"
        );
        // The renewed certificate is served and chains to the same CA.
        CertStore::new()
            .set_pem(&d(&renewed, TLS_CERT), &d(&renewed, TLS_KEY), "t")
            .unwrap();
    }

    #[test]
    fn ca_rotation_keeps_the_old_ca_in_the_bundle() {
        let m = manager();
        let now = OffsetDateTime::now_utc();
        let secret = m.issue(None, Plan::NewCa, now).unwrap();
        let rotated = m.issue(Some(&secret), Plan::NewCa, now).unwrap();
        let s = |s: &Secret, k: &str| String::from_utf8(s.data.as_ref().unwrap()[k].0.clone()).unwrap();
        let bundle = s(&rotated, CA_BUNDLE);
        assert!(bundle.contains(&s(&rotated, CA_CERT)));
        assert!(bundle.contains(&s(&secret, CA_CERT)));
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    }

    #[test]
    fn pem_pair_debug_hides_the_key() {
        let ca = generate_ca("t", OffsetDateTime::now_utc(), Duration::from_secs(3600)).unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
