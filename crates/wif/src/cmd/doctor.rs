//! `wif doctor`: why does this pod (or ServiceAccount) not get an Entra token? Reads what the
//! cluster holds, asks the API server what it would do, and prints one line per check; the
//! judgement itself is in [`crate::doctor`].

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Args;
use k8s_openapi::{
    api::{
        admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration},
        core::v1::{Namespace, Pod, ServiceAccount},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams},
};
use serde_json::{Value, json};
use wif_api::{
    AUDIENCE_ANNOTATION, CLIENT_ID_ANNOTATION, DEFAULT_AUDIENCE, DEFAULT_SERVICE_ACCOUNT, ENV_AUTHORITY_HOST,
    ENV_TENANT_ID, MUTATE_PATH, TENANT_ID_ANNOTATION, TOKEN_VOLUME_NAME, USE_LABEL, USE_LABEL_VALUE,
};

use crate::doctor::{self, BindingView, Check, Expected, Identity, Report};

/// Flags of `wif doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Without --pod or --service-account: list the labelled pods of every namespace that the
    /// webhook did not mutate (see --namespace for one namespace).
    #[arg(long, short = 'A', conflicts_with_all = ["pod", "service_account", "namespace"])]
    all_namespaces: bool,
    /// Pod to check: NAME (in --namespace) or NAMESPACE/NAME.
    #[arg(long, conflicts_with = "service_account")]
    pod: Option<String>,
    /// Namespace of the pod or ServiceAccount (default: the kubeconfig's). Alone: list the
    /// namespace's labelled pods that the webhook did not mutate, with the cause.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// ServiceAccount to check, when there is no pod yet.
    #[arg(long)]
    service_account: Option<String>,
    /// wif's MutatingWebhookConfiguration (default: every configuration with a webhook at
    /// /mutate-v1-pod).
    #[arg(long)]
    webhook_config: Option<String>,
    /// Also exchange a fresh ServiceAccount token at Entra (never printed).
    #[arg(long)]
    exchange: bool,
    /// Entra authority for --exchange (default: the pod's AZURE_AUTHORITY_HOST, else
    /// https://login.microsoftonline.com/).
    #[arg(long)]
    authority_host: Option<String>,
    /// Tenant for --exchange (default: the ServiceAccount's tenant-id annotation, else the pod's
    /// AZURE_TENANT_ID, else the binding's).
    #[arg(long)]
    tenant_id: Option<String>,
    /// Scope requested by --exchange.
    #[arg(long, default_value = "https://management.azure.com/.default")]
    scope: String,
    /// Extra PEM CA trusted by --exchange (e.g. a local emulator's).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Timeout of each network call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Prints the report; exit 0 only if every check passed (skipped ones say why), 1 otherwise,
/// 2 when doctor could not run at all.
pub fn run(args: DoctorArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(diagnose(args)) {
        Ok(report) => {
            println!("{}", report.summary());
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints each check as it is made, so a slow step shows where it is.
struct Out(Report);

impl Out {
    fn add(&mut self, check: Check) {
        println!("{check}");
        self.0.push(check);
    }
}

async fn diagnose(args: DoctorArgs) -> anyhow::Result<Report> {
    let DoctorArgs {
        pod,
        namespace,
        service_account,
        webhook_config,
        exchange,
        authority_host,
        tenant_id,
        scope,
        ca_file,
        timeout,
        all_namespaces,
    } = args;
    if pod.is_none() && service_account.is_none() && (all_namespaces || namespace.is_some()) {
        let client = Client::try_default()
            .await
            .context("failed to create a Kubernetes client (KUBECONFIG or in-cluster)")?;
        return super::doctor_unmutated::scan(&client, namespace.as_deref()).await;
    }
    anyhow::ensure!(
        pod.is_some() || service_account.is_some(),
        "say what to check: --pod [NAMESPACE/]NAME, --namespace NS [--service-account NAME], or --all-namespaces"
    );
    let client = Client::try_default()
        .await
        .context("failed to create a Kubernetes client (KUBECONFIG or in-cluster)")?;
    let (ns, pod_name) = match pod.as_deref().map(|p| p.split_once('/')) {
        Some(Some((ns, name))) => (ns.to_owned(), Some(name.to_owned())),
        Some(None) => (
            namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            pod.clone(),
        ),
        None => (
            namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            None,
        ),
    };
    let mut out = Out(Report::default());

    // What must exist for anything else to make sense: namespace, pod, ServiceAccount.
    let Some(namespace) = exists(
        &mut out,
        Api::<Namespace>::all(client.clone()),
        &ns,
        "namespace",
        || "check the name: kubectl get namespaces".to_owned(),
    )
    .await?
    else {
        return Ok(out.0);
    };
    let ns_labels = namespace.metadata.labels.clone().unwrap_or_default();
    let pod = match &pod_name {
        Some(name) => {
            let found = exists(
                &mut out,
                Api::<Pod>::namespaced(client.clone(), &ns),
                name,
                "pod",
                || format!("check the name: kubectl -n {ns} get pods"),
            )
            .await?;
            let Some(pod) = found else { return Ok(out.0) };
            Some(pod)
        }
        None => None,
    };
    let sa_name = match (&pod, service_account) {
        (Some(p), _) => p
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned()),
        (None, Some(sa)) => sa,
        (None, None) => DEFAULT_SERVICE_ACCOUNT.to_owned(),
    };
    let Some(sa) = exists(
        &mut out,
        Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        &sa_name,
        "ServiceAccount",
        || format!("create it, or fix the pod's serviceAccountName: kubectl -n {ns} get serviceaccounts"),
    )
    .await?
    else {
        return Ok(out.0);
    };

    // The pod and its ServiceAccount.
    match &pod {
        Some(p) => out.add(doctor::label(&p.metadata)),
        None => out.add(Check::skip(
            "pod label",
            format!("no pod given; pods of {sa_name} need the label {USE_LABEL}: \"{USE_LABEL_VALUE}\""),
        )),
    }
    let (check, client_id) = doctor::client_id(&sa.metadata);
    let (named_check, named) = doctor::named_identities(&sa.metadata);
    if client_id.is_none() && !named.is_empty() && !annotation_present(&sa.metadata, CLIENT_ID_ANNOTATION) {
        out.add(Check::skip(
            "ServiceAccount client id",
            format!(
                "no {CLIENT_ID_ANNOTATION} annotation, so no AZURE_CLIENT_ID: containers use the named identities \
                 (AZURE_CLIENT_ID_<NAME>, or their own through azure.workload.identity/container-identities)"
            ),
        ));
    } else {
        out.add(check);
    }
    if let Some(check) = named_check {
        out.add(check);
    }

    // The webhook: configured, selecting this namespace, reachable with a verifying caBundle,
    // and actually called by the API server.
    let hook = webhook(&mut out, &client, webhook_config.as_deref(), &ns, &ns_labels).await?;
    out.add(super::doctor_unmutated::other_webhooks(&client, Some(&ns_labels)).await);
    if let Some((config, hook)) = &hook {
        out.add(ca_bundle(&client, config, hook, timeout).await);
        out.add(admission(&client, &ns, &sa_name, hook).await);
    }
    if let Some(p) = &pod {
        out.add(doctor::injection(p, client_id.as_deref(), &named));
    }

    // Entra's side: binding, credential, and what the API server really issues.
    // What the pod's token carries; without a pod, what the webhook would project for the
    // ServiceAccount (its audience annotation, else the default).
    let audience = pod
        .as_ref()
        .and_then(pod_audience)
        .or_else(|| annotation(&sa.metadata, AUDIENCE_ANNOTATION))
        .unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned());
    let bindings = bindings(&mut out, &client, &ns, &sa_name).await;
    let issuer = discovered_issuer(&client).await;
    let expected = issuer.as_ref().ok().map(|issuer| Expected {
        issuer: issuer.clone(),
        subject: format!("system:serviceaccount:{ns}:{sa_name}"),
        audience: audience.clone(),
    });
    let token = match &expected {
        Some(expected) => match service_account_token(&client, &ns, &sa_name, &expected.audience).await {
            Ok(token) => {
                out.add(doctor::token_claims(expected, &jwt_claims(&token)));
                Some(token)
            }
            Err(why) => {
                out.add(Check::skip("API server token", why));
                None
            }
        },
        None => {
            if let Err(why) = &issuer {
                out.add(Check::fail(
                    "service-account issuer",
                    format!("cannot read /.well-known/openid-configuration: {why}"),
                    "the API server must serve its discovery document (--service-account-issuer, \
                     --service-account-jwks-uri) and Entra must reach it at the issuer URL",
                ));
            }
            None
        }
    };
    // Every identity of the ServiceAccount: the default one, then each named one.
    let identities: Vec<Identity> = std::iter::once(Identity {
        name: None,
        client_id: client_id.clone().unwrap_or_default(),
        tenant_id: None,
    })
    .chain(named.iter().cloned())
    .collect();
    if let Some(expected) = &expected {
        let skip_default = client_id.is_none() && !named.is_empty();
        for identity in identities.iter().skip(usize::from(skip_default)) {
            let binding = bindings.as_deref().and_then(|b| BindingView::find(b, identity));
            let check = match binding {
                Some(b) => doctor::credential_matches(expected, b),
                None => Check::skip(
                    "credential issuer/subject/audience",
                    format!(
                        "no binding to compare; Entra's federated credential must say issuer={} subject={} audience={}",
                        expected.issuer, expected.subject, expected.audience
                    ),
                ),
            };
            out.add(check.for_identity(identity.name.as_deref()));
        }
    }

    if exchange {
        let binding_tenant = bindings
            .as_ref()
            .and_then(|b| b.iter().find_map(|b| b.tenant_id.clone()));
        let tenant = tenant_id
            .or_else(|| annotation(&sa.metadata, TENANT_ID_ANNOTATION))
            .or_else(|| pod.as_ref().and_then(|p| pod_env(p, ENV_TENANT_ID)))
            .or(binding_tenant);
        let authority = authority_host
            .or_else(|| pod.as_ref().and_then(|p| pod_env(p, ENV_AUTHORITY_HOST)))
            .unwrap_or_else(|| wif_exchange::DEFAULT_AUTHORITY_HOST.to_owned());
        let ca = match &ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("failed to read --ca-file {}", path.display()))?,
            ),
            None => None,
        };
        let check = match (token.clone(), client_id, tenant.clone()) {
            (None, _, _) => Check::skip(
                "token exchange",
                "no ServiceAccount token to exchange (see above)",
            ),
            (_, None, _) if !named.is_empty() => Check::skip(
                "token exchange",
                "no default identity; the named ones are exchanged below",
            ),
            (_, None, _) => Check::fail(
                "token exchange",
                "no client id to exchange for",
                format!("annotate the ServiceAccount with {CLIENT_ID_ANNOTATION}"),
            ),
            (_, _, None) => Check::fail(
                "token exchange",
                "no tenant known",
                "pass --tenant-id, or annotate the ServiceAccount with azure.workload.identity/tenant-id",
            ),
            (Some(token), Some(client_id), Some(tenant)) => {
                exchange_token(
                    token,
                    &client_id,
                    &tenant,
                    &authority,
                    &scope,
                    ca.clone(),
                    timeout,
                )
                .await
            }
        };
        out.add(check);
        for identity in named.iter() {
            let tenant = identity.tenant_id.clone().or_else(|| tenant.clone());
            let check = match (&token, tenant) {
                (None, _) => Check::skip(
                    "token exchange",
                    "no ServiceAccount token to exchange (see above)",
                ),
                (_, None) => Check::fail(
                    "token exchange",
                    "no tenant known",
                    "pass --tenant-id, or annotate the ServiceAccount with azure.workload.identity/tenant-id",
                ),
                (Some(token), Some(tenant)) => {
                    exchange_token(
                        token.clone(),
                        &identity.client_id,
                        &tenant,
                        &authority,
                        &scope,
                        ca.clone(),
                        timeout,
                    )
                    .await
                }
            };
            out.add(check.for_identity(identity.name.as_deref()));
        }
    }
    Ok(out.0)
}

/// Reads a named object; a missing one is a failed check (and the end of the run).
async fn exists<K>(
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

fn annotation_present(meta: &ObjectMeta, key: &str) -> bool {
    meta.annotations.as_ref().is_some_and(|a| a.contains_key(key))
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations
        .as_ref()?
        .get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A literal value of `name` in the pod's first container that has it.
fn pod_env(pod: &Pod, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
        .filter(|v| !v.is_empty())
}

/// Audience of the pod's projected token volume.
fn pod_audience(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == TOKEN_VOLUME_NAME)?
        .projected
        .as_ref()?
        .sources
        .iter()
        .flatten()
        .find_map(|s| s.service_account_token.as_ref()?.audience.clone())
}

// === webhook ===

/// Finds wif's webhook; prefers one that selects the namespace.
async fn webhook(
    out: &mut Out,
    client: &Client,
    name: Option<&str>,
    ns: &str,
    ns_labels: &BTreeMap<String, String>,
) -> anyhow::Result<Option<(String, MutatingWebhook)>> {
    const NAME: &str = "webhook configuration";
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
                    NAME,
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
    let candidates: Vec<(String, MutatingWebhook)> = configs
        .into_iter()
        .flat_map(|c| {
            let config = c.metadata.name.clone().unwrap_or_default();
            c.webhooks
                .into_iter()
                .flatten()
                .filter(|h| {
                    let path = h
                        .client_config
                        .service
                        .as_ref()
                        .and_then(|s| s.path.clone())
                        .or_else(|| {
                            h.client_config
                                .url
                                .as_deref()
                                .and_then(|u| url::Url::parse(u).ok())
                                .map(|u| u.path().to_owned())
                        });
                    path.as_deref() == Some(MUTATE_PATH)
                })
                .map(move |h| (config.clone(), h))
                .collect::<Vec<_>>()
        })
        .collect();
    if candidates.is_empty() {
        out.add(Check::fail(
            NAME,
            format!("no MutatingWebhookConfiguration has a webhook at {MUTATE_PATH}"),
            "install wif: helm install wif charts/wif -n wif-system --create-namespace --set azure.tenantId=<tenant>",
        ));
        return Ok(None);
    }
    let checks: Vec<(String, MutatingWebhook, Check)> = candidates
        .into_iter()
        .map(|(config, hook)| {
            let check = doctor::webhook_selects(&config, &hook, ns, ns_labels);
            (config, hook, check)
        })
        .collect();
    let selecting: Vec<&(String, MutatingWebhook, Check)> = checks
        .iter()
        .filter(|(_, _, c)| c.status == doctor::Status::Pass)
        .collect();
    match selecting.as_slice() {
        [] => {
            // None selects this namespace: say why the first one passes it by.
            if let Some((_, _, check)) = checks.into_iter().next() {
                out.add(check);
            }
            Ok(None)
        }
        [one] => {
            out.add(one.2.clone());
            Ok(Some((one.0.clone(), one.1.clone())))
        }
        [first, rest @ ..] => {
            let others: Vec<&str> = rest.iter().map(|(c, _, _)| c.as_str()).collect();
            out.add(Check::fail(
                "webhook selects the namespace",
                format!(
                    "{} and {} all mutate labelled pods in {ns} (two installations, or wif next to upstream's webhook)",
                    first.0,
                    others.join(", ")
                ),
                "uninstall one of them, or narrow its namespaceSelector",
            ));
            Ok(Some((first.0.clone(), first.1.clone())))
        }
    }
}

/// The caBundle verifies the certificate the webhook serves (directly for `url:` webhooks; for
/// `service:` webhooks the API server's own call, checked next, is the proof).
async fn ca_bundle(client: &Client, config: &str, hook: &MutatingWebhook, timeout: Duration) -> Check {
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
                        certs_len(&bundle),
                        service.namespace,
                        service.name
                    ),
                )
            }
        }
        Err(e) => Check::skip(NAME, format!("cannot list the Service's endpoints: {e}")),
    }
}

fn certs_len(bundle: &[u8]) -> usize {
    rustls_pemfile::certs(&mut &bundle[..])
        .filter(Result::is_ok)
        .count()
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
                Err(TlsProblem::Certificate(describe_cert_error(cert)))
            }
            Some(other) => Err(TlsProblem::Connect(other.to_string())),
            None => Err(TlsProblem::Connect(e.to_string())),
        },
    }
}

fn describe_cert_error(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match e {
        E::UnknownIssuer | E::BadSignature => "it is not signed by a CA in the caBundle".into(),
        E::Expired | E::ExpiredContext { .. } => "it has expired".into(),
        E::NotValidYet | E::NotValidYetContext { .. } => "it is not valid yet (clock skew?)".into(),
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            "it is not valid for the host name in the url".into()
        }
        other => format!("{other:?}"),
    }
}

/// A dry-run pod through the API server: the real path, with the API server's own TLS check of
/// the caBundle and the configuration's selectors.
async fn admission(client: &Client, ns: &str, sa: &str, hook: &MutatingWebhook) -> Check {
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
async fn bindings(out: &mut Out, client: &Client, ns: &str, sa: &str) -> Option<Vec<BindingView>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &binding_resource());
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let views: Vec<BindingView> = list
                .items
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .filter_map(|v| BindingView::from_json(&v, sa))
                .collect();
            out.add(doctor::binding_ready(ns, sa, &views));
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
async fn discovered_issuer(client: &Client) -> Result<String, String> {
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
async fn service_account_token(
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

/// The claims of a JWT, unverified (the API server just issued it).
fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    jwt.split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

#[allow(clippy::too_many_arguments)]
async fn exchange_token(
    token: String,
    client_id: &str,
    tenant: &str,
    authority: &str,
    scope: &str,
    ca: Option<Vec<u8>>,
    timeout: Duration,
) -> Check {
    const NAME: &str = "token exchange";
    let mut builder = wif_exchange::WorkloadIdentityCredential::builder()
        .client_id(client_id)
        .tenant_id(tenant)
        .authority_host(authority)
        .assertion(token)
        .timeout(timeout)
        .retry_policy(wif_exchange::RetryPolicy::none());
    if let Some(ca) = ca {
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
        .get_token(&[scope], &wif_exchange::TokenRequestOptions::default())
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
