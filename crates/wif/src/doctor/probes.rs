//! What `wif doctor` reads and tries: objects of the cluster, the webhook configuration, a TLS
//! handshake with the webhook, a dry-run pod, the bindings, the issuer, a ServiceAccount token and
//! an Entra exchange. Each probe hands what it found to [`super::checks`] / [`super::entra`], or
//! returns the check of what could not be done.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context;
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration, ServiceReference},
    core::v1::Pod,
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams},
};
use serde_json::{Value, json};
use wif_api::{TOKEN_VOLUME_NAME, USE_LABEL, USE_LABEL_VALUE};

use super::{
    checks,
    entra::{self, BindingView},
    report::{Check, Out},
};

/// Reads a named object; a missing one is a failed check (and the end of the run).
pub(crate) async fn exists<K>(
    out: &mut Out,
    api: Api<K>,
    name: &str,
    what: &'static str,
    fix: impl FnOnce() -> String,
) -> anyhow::Result<Option<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(obj)) => Ok(Some(obj)),
        Ok(None) => {
            out.add(Check::fail(what, format!("{name} not found"), fix()));
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("failed to read {what} {name}")),
    }
}

// === webhook ===

/// Finds wif's webhook; prefers one that selects the namespace.
pub(crate) async fn webhook(
    out: &mut Out,
    client: &Client,
    name: Option<&str>,
    ns: &str,
    ns_labels: &BTreeMap<String, String>,
) -> anyhow::Result<Option<(String, MutatingWebhook)>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let configs = match name {
        Some(name) => match api
            .get_opt(name)
            .await
            .context("failed to read MutatingWebhookConfigurations")?
        {
            Some(c) => vec![c],
            None => {
                out.add(Check::fail(
                    "webhook configuration",
                    format!("MutatingWebhookConfiguration {name} not found"),
                    "install wif: helm install wif charts/wif -n wif-system --create-namespace --set azure.tenantId=<tenant>",
                ));
                return Ok(None);
            }
        },
        None => {
            api.list(&ListParams::default())
                .await
                .context("failed to list MutatingWebhookConfigurations")?
                .items
        }
    };
    let (check, hook) = checks::choose_webhook(checks::wif_webhooks(configs), ns, ns_labels);
    out.add(check);
    Ok(hook)
}

/// The caBundle verifies the certificate the webhook serves (directly for `url:` webhooks; for
/// `service:` webhooks the API server's own call, checked next, is the proof).
pub(crate) async fn ca_bundle(
    client: &Client,
    config: &str,
    hook: &MutatingWebhook,
    timeout: Duration,
) -> Check {
    const NAME: &str = "caBundle";
    let bundle = hook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let certs: Vec<_> = rustls_pemfile::certs(&mut bundle.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Check::fail(
            NAME,
            format!("{config} has no caBundle: the API server cannot trust the webhook"),
            "self-managed certificates: check that a webhook pod is running (it publishes the caBundle at start-up); \
             cert-manager: check the Certificate and the cainjector; existing Secret: set certs.existingSecret.caBundle",
        );
    }
    if let Some(url) = &hook.client_config.url {
        return match verify_tls(url, certs, timeout).await {
            Ok(addr) => Check::pass(NAME, format!("verifies the certificate served at {addr}")),
            Err(TlsProblem::Connect(e)) => Check::fail(
                NAME,
                format!("cannot connect to {url}: {e}"),
                "start the webhook, or fix the url in the webhook configuration",
            ),
            Err(TlsProblem::Certificate(e)) => Check::fail(
                NAME,
                format!("the certificate served at {url} does not verify against {config}'s caBundle: {e}"),
                "publish the CA that signed the webhook's certificate in the caBundle (self-managed: restart a \
                 webhook pod; cert-manager: check the cainjector; existing Secret: update certs.existingSecret.caBundle)",
            ),
        };
    }
    let Some(service) = &hook.client_config.service else {
        return Check::fail(
            NAME,
            format!("{config} names neither a url nor a service"),
            "helm upgrade the wif release",
        );
    };
    service_endpoints(client, service, checks::certs_len(&bundle)).await
}

/// A `service:` webhook: a ready endpoint behind the Service (the API server's call, checked
/// next, proves the caBundle); `certs`: how many certificates the caBundle holds.
async fn service_endpoints(client: &Client, service: &ServiceReference, certs: usize) -> Check {
    const NAME: &str = "caBundle";
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &service.namespace);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={}", service.name));
    match slices.list(&lp).await {
        Ok(list) => {
            let ready = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                .count();
            if ready == 0 {
                Check::fail(
                    NAME,
                    format!(
                        "no ready endpoint behind Service {}/{}: no webhook pod is ready to present its certificate",
                        service.namespace, service.name
                    ),
                    format!(
                        "kubectl -n {} get pods -l app.kubernetes.io/component=webhook; kubectl -n {} logs deploy/{}",
                        service.namespace, service.namespace, service.name
                    ),
                )
            } else {
                Check::skip(
                    NAME,
                    format!(
                        "{} certificate(s) in the caBundle; the webhook behind Service {}/{} is reachable only in the \
                         cluster, so the API server's call below is the check",
                        certs, service.namespace, service.name
                    ),
                )
            }
        }
        Err(e) => Check::skip(NAME, format!("cannot list the Service's endpoints: {e}")),
    }
}

enum TlsProblem {
    Connect(String),
    Certificate(String),
}

/// TLS handshake with `url`'s host, trusting only `roots`; the address on success.
async fn verify_tls(
    url: &str,
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    timeout: Duration,
) -> Result<String, TlsProblem> {
    let parsed = url::Url::parse(url).map_err(|e| TlsProblem::Connect(format!("invalid url: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| TlsProblem::Connect("the url has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store.add(cert).map_err(|e| {
            TlsProblem::Certificate(format!("the caBundle holds an unusable certificate: {e}"))
        })?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(store)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| TlsProblem::Connect(format!("invalid host {host}: {e}")))?;
    let addr = format!("{host}:{port}");
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| TlsProblem::Connect(format!("timed out after {timeout:?}")))?
        .map_err(|e| TlsProblem::Connect(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Err(_) => Err(TlsProblem::Connect(format!(
            "TLS handshake timed out after {timeout:?}"
        ))),
        Ok(Ok(_)) => Ok(addr),
        Ok(Err(e)) => match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(cert)) => {
                Err(TlsProblem::Certificate(checks::describe_cert_error(cert)))
            }
            Some(other) => Err(TlsProblem::Connect(other.to_string())),
            None => Err(TlsProblem::Connect(e.to_string())),
        },
    }
}

/// A dry-run pod through the API server: the real path, with the API server's own TLS check of
/// the caBundle and the configuration's selectors.
pub(crate) async fn admission(client: &Client, ns: &str, sa: &str, hook: &MutatingWebhook) -> Check {
    const NAME: &str = "API server calls the webhook";
    let probe: Pod = match serde_json::from_value(json!({
        "metadata": {"generateName": "wif-doctor-", "labels": {USE_LABEL: USE_LABEL_VALUE}},
        "spec": {
            "serviceAccountName": sa,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "wif-doctor", "image": "wif-doctor.invalid/probe:1",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
            }]
        }
    })) {
        Ok(p) => p,
        Err(e) => return Check::skip(NAME, format!("cannot build the probe pod: {e}")),
    };
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match Api::<Pod>::namespaced(client.clone(), ns)
        .create(&pp, &probe)
        .await
    {
        Ok(p) => {
            let mutated = p
                .spec
                .and_then(|s| s.volumes)
                .is_some_and(|v| v.iter().any(|v| v.name == TOKEN_VOLUME_NAME));
            if mutated {
                Check::pass(NAME, format!("a dry-run labelled pod in {ns} comes back mutated"))
            } else {
                Check::fail(
                    NAME,
                    format!("a dry-run labelled pod in {ns} comes back without the token volume"),
                    "the API server did not call the webhook: check the configuration's selectors and rules (helm upgrade the wif release)",
                )
            }
        }
        Err(kube::Error::Api(e)) => {
            let msg = e.message.clone();
            if msg.contains("x509") || msg.contains("certificate") {
                Check::fail(
                    NAME,
                    format!("the API server does not trust the webhook's certificate: {msg}"),
                    "publish the CA that signed the webhook's certificate in the caBundle (self-managed: restart a webhook \
                     pod; cert-manager: check the cainjector; existing Secret: update certs.existingSecret.caBundle)",
                )
            } else if msg.contains(&format!("\"{}\" denied", hook.name)) {
                Check::fail(
                    NAME,
                    format!("the webhook refuses pods of {sa}: {msg}"),
                    "fix what the message names (annotations of the pod or ServiceAccount)",
                )
            } else if msg.contains("failed calling webhook") || msg.contains("failed to call webhook") {
                Check::fail(
                    NAME,
                    format!("the API server cannot reach the webhook: {msg}"),
                    "check that webhook pods are running and ready, and that the API server can reach them (network policies, firewall to port 9443)",
                )
            } else if e.code == 403 && e.reason == "Forbidden" && msg.contains("cannot create resource") {
                Check::skip(NAME, format!("no permission to create (dry-run) pods in {ns}"))
            } else {
                Check::skip(
                    NAME,
                    format!("the dry-run pod was refused before the webhook was judged: {msg}"),
                )
            }
        }
        Err(e) => Check::skip(NAME, format!("dry-run pod creation failed: {e}")),
    }
}

// === bindings, issuer, token ===

fn binding_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("azure.workload.identity", "v1alpha1", "FederatedIdentityBinding"),
        "federatedidentitybindings",
    )
}

/// Bindings of the ServiceAccount, read through the dynamic API (no dependency on the CRD types).
/// None when they cannot be read (the check says why).
pub(crate) async fn bindings(out: &mut Out, client: &Client, ns: &str, sa: &str) -> Option<Vec<BindingView>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &binding_resource());
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let views: Vec<BindingView> = list
                .items
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .filter_map(|v| BindingView::from_json(&v, sa))
                .collect();
            out.add(entra::binding_ready(ns, sa, &views));
            Some(views)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            out.add(Check::fail(
                "FederatedIdentityBinding",
                "the FederatedIdentityBinding CRD is not installed",
                "install or upgrade wif with Helm (it installs the CRDs): helm upgrade --install wif charts/wif -n wif-system \
                 --set azure.tenantId=<tenant>; or create the federated credential yourself",
            ));
            None
        }
        Err(e) => {
            out.add(Check::skip(
                "FederatedIdentityBinding",
                format!("cannot list bindings: {e}"),
            ));
            None
        }
    }
}

/// The issuer of the API server's discovery document, byte for byte.
pub(crate) async fn discovered_issuer(client: &Client) -> Result<String, String> {
    let request = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = client.request_text(request).await.map_err(|e| e.to_string())?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    doc["issuer"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the document has no issuer".to_owned())
}

/// A short-lived token for the ServiceAccount, as the kubelet would project it. Never printed.
pub(crate) async fn service_account_token(
    client: &Client,
    ns: &str,
    sa: &str,
    audience: &str,
) -> Result<String, String> {
    wif_controller::propagation::service_account_token(client, ns, sa, audience)
        .await
        .map_err(|e| match e {
            kube::Error::Api(e) if e.code == 403 => {
                format!("no permission to request a token for {sa} (serviceaccounts/token create)")
            }
            e => format!("TokenRequest failed: {e}"),
        })?
        .ok_or_else(|| "TokenRequest returned no token".to_owned())
}

/// How doctor exchanges ServiceAccount tokens at Entra (`--exchange`).
pub(crate) struct Exchanger {
    /// Entra authority host.
    pub(crate) authority: String,
    /// Scope requested.
    pub(crate) scope: String,
    /// Extra PEM CA trusted.
    pub(crate) ca: Option<Vec<u8>>,
    /// Timeout of the call.
    pub(crate) timeout: Duration,
}

impl Exchanger {
    /// Exchanges `token` for an access token of `client_id` in `tenant`; the token is never shown.
    pub(crate) async fn exchange(&self, token: &str, client_id: &str, tenant: &str) -> Check {
        let Self {
            authority,
            scope,
            ca,
            timeout,
        } = self;
        const NAME: &str = "token exchange";
        let timeout = *timeout;
        let mut builder = wif_exchange::WorkloadIdentityCredential::builder()
            .client_id(client_id)
            .tenant_id(tenant)
            .authority_host(authority)
            .assertion(token.to_owned())
            .timeout(timeout)
            .retry_policy(wif_exchange::RetryPolicy::none());
        if let Some(ca) = ca.clone() {
            builder = builder.add_root_certificates_pem(ca);
        }
        let credential = match builder.build() {
            Ok(c) => c,
            Err(e) => {
                return Check::fail(
                    NAME,
                    format!("cannot set up the exchange: {e}"),
                    "check --authority-host and --tenant-id",
                );
            }
        };
        match credential
            .get_token(&[scope.as_str()], &wif_exchange::TokenRequestOptions::default())
            .await
        {
            Ok(token) => {
                let minutes = token
                    .expires_on()
                    .duration_since(std::time::SystemTime::now())
                    .map(|d| d.as_secs() / 60)
                    .unwrap_or(0);
                Check::pass(
                    NAME,
                    format!(
                        "Entra ({authority}) issued an access token for {scope}, valid {minutes} min (not shown)"
                    ),
                )
            }
            Err(e) => {
                let fix = e.hint().map(str::to_owned).unwrap_or_else(|| {
                    "compare the federated credential with the issuer, subject and audience above".to_owned()
                });
                Check::fail(NAME, format!("{e}"), fix)
            }
        }
    }
}
