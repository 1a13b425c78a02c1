//! `wif doctor`: why does this pod (or ServiceAccount) not get an Entra token? Reads what the
//! cluster holds, asks the API server what it would do, and prints one line per check.
//!
//! - [`checks`] and [`entra`]: the judgement, pure functions of what was read (table-tested);
//! - [`probes`]: the reading and trying (API server, TLS handshake, dry-run pod, Entra);
//! - [`unmutated`]: `--namespace` / `--all-namespaces` alone, the labelled pods left unmutated;
//! - [`report`]: the lines and the exit status.
//!
//! [`diagnose`] runs the steps in order; each step prints its checks as it makes them.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::{Api, Client};
use wif_api::{
    AUDIENCE_ANNOTATION, CLIENT_ID_ANNOTATION, DEFAULT_AUDIENCE, ENV_AUTHORITY_HOST, ENV_TENANT_ID,
    TENANT_ID_ANNOTATION, USE_LABEL, USE_LABEL_VALUE,
};

mod checks;
mod entra;
mod pool;
mod probes;
mod report;
pub(crate) mod unmutated;

pub(crate) use report::{Check, Report};

use self::{
    checks::Identity,
    entra::{BindingView, Expected},
    report::Out,
};

/// Flags of `wif doctor`.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
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
pub(crate) fn run(args: DoctorArgs) -> ExitCode {
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

/// What doctor looks at: the namespace, the pod (when one was named) and its ServiceAccount.
struct Subject {
    ns: String,
    ns_labels: BTreeMap<String, String>,
    pod: Option<Pod>,
    sa_name: String,
    sa: ServiceAccount,
}

/// The identities the ServiceAccount names: its default client id and the named ones.
struct Identities {
    client_id: Option<String>,
    named: Vec<Identity>,
}

/// What Entra's side was checked with: the bindings, what the credential must say, the token.
struct EntraSide {
    bindings: Option<Vec<BindingView>>,
    expected: Option<Expected>,
    token: Option<String>,
}

/// The flags of `--exchange`.
struct ExchangeArgs {
    authority_host: Option<String>,
    tenant_id: Option<String>,
    scope: String,
    ca_file: Option<PathBuf>,
    timeout: Duration,
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
        let client = kube_client().await?;
        return unmutated::scan(&client, namespace.as_deref()).await;
    }
    anyhow::ensure!(
        pod.is_some() || service_account.is_some(),
        "say what to check: --pod [NAMESPACE/]NAME, --namespace NS [--service-account NAME], or --all-namespaces"
    );
    let client = kube_client().await?;
    let (ns, pod_name) = checks::target(pod, namespace, client.default_namespace());
    let mut out = Out(Report::default());
    // What must exist for anything else to make sense: namespace, pod, ServiceAccount.
    let Some(subject) = subject(&mut out, &client, ns, pod_name, service_account).await? else {
        return Ok(out.0);
    };
    let ids = identities(&mut out, &subject);
    webhook(&mut out, &client, webhook_config.as_deref(), &subject, timeout).await?;
    if let Some(p) = &subject.pod {
        out.add(checks::injection(p, ids.client_id.as_deref(), &ids.named));
    }
    let side = entra_side(&mut out, &client, &subject).await;
    credentials(&mut out, &side, &ids);
    if exchange {
        let args = ExchangeArgs {
            authority_host,
            tenant_id,
            scope,
            ca_file,
            timeout,
        };
        exchanges(&mut out, &subject, &side, &ids, args).await?;
    }
    Ok(out.0)
}

async fn kube_client() -> anyhow::Result<Client> {
    Client::try_default()
        .await
        .context("failed to create a Kubernetes client (KUBECONFIG or in-cluster)")
}

/// The namespace, the pod (if named) and the ServiceAccount; None once one is missing (the
/// failed check says so).
async fn subject(
    out: &mut Out,
    client: &Client,
    ns: String,
    pod_name: Option<String>,
    service_account: Option<String>,
) -> anyhow::Result<Option<Subject>> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let fix = || "check the name: kubectl get namespaces".to_owned();
    let Some(namespace) = probes::exists(out, namespaces, &ns, "namespace", fix).await? else {
        return Ok(None);
    };
    let ns_labels = namespace.metadata.labels.unwrap_or_default();
    let pod = match &pod_name {
        Some(name) => {
            let pods = Api::<Pod>::namespaced(client.clone(), &ns);
            let fix = || format!("check the name: kubectl -n {ns} get pods");
            let Some(pod) = probes::exists(out, pods, name, "pod", fix).await? else {
                return Ok(None);
            };
            Some(pod)
        }
        None => None,
    };
    let sa_name = checks::service_account_name(pod.as_ref(), service_account);
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    let fix =
        || format!("create it, or fix the pod's serviceAccountName: kubectl -n {ns} get serviceaccounts");
    let Some(sa) = probes::exists(out, accounts, &sa_name, "ServiceAccount", fix).await? else {
        return Ok(None);
    };
    Ok(Some(Subject {
        ns,
        ns_labels,
        pod,
        sa_name,
        sa,
    }))
}

/// The pod's label and the ServiceAccount's identities.
fn identities(out: &mut Out, subject: &Subject) -> Identities {
    match &subject.pod {
        Some(p) => out.add(checks::label(&p.metadata)),
        None => out.add(Check::skip(
            "pod label",
            format!(
                "no pod given; pods of {} need the label {USE_LABEL}: \"{USE_LABEL_VALUE}\"",
                subject.sa_name
            ),
        )),
    }
    let meta = &subject.sa.metadata;
    let (check, client_id) = checks::client_id(meta);
    let (named_check, named) = checks::named_identities(meta);
    if client_id.is_none() && !named.is_empty() && !checks::annotation_present(meta, CLIENT_ID_ANNOTATION) {
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
    Identities { client_id, named }
}

/// The webhook: configured, selecting this namespace, reachable with a verifying caBundle, and
/// actually called by the API server; and no other workload identity webhook beside it.
async fn webhook(
    out: &mut Out,
    client: &Client,
    config: Option<&str>,
    subject: &Subject,
    timeout: Duration,
) -> anyhow::Result<()> {
    let hook = probes::webhook(out, client, config, &subject.ns, &subject.ns_labels).await?;
    out.add(unmutated::other_webhooks(client, Some(&subject.ns_labels)).await);
    if let Some((config, hook)) = &hook {
        out.add(probes::ca_bundle(client, config, hook, timeout).await);
        out.add(probes::admission(client, &subject.ns, &subject.sa_name, hook).await);
    }
    Ok(())
}

/// Entra's side: the bindings, and what the API server really issues. The audience is the pod's
/// token's; without a pod, what the webhook would project for the ServiceAccount (its audience
/// annotation, else the default).
async fn entra_side(out: &mut Out, client: &Client, subject: &Subject) -> EntraSide {
    let Subject {
        ns, pod, sa_name, sa, ..
    } = subject;
    let audience = pod
        .as_ref()
        .and_then(checks::pod_audience)
        .or_else(|| checks::annotation(&sa.metadata, AUDIENCE_ANNOTATION))
        .unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned());
    let bindings = probes::bindings(out, client, ns, sa_name).await;
    if let Some(views) = &bindings {
        pool::check(out, client, views).await;
    }
    let issuer = probes::discovered_issuer(client).await;
    let expected = issuer.as_ref().ok().map(|issuer| Expected {
        issuer: issuer.clone(),
        subject: format!("system:serviceaccount:{ns}:{sa_name}"),
        audience,
    });
    let token = match (&expected, &issuer) {
        (Some(expected), _) => {
            match probes::service_account_token(client, ns, sa_name, &expected.audience).await {
                Ok(token) => {
                    out.add(entra::token_claims(expected, &entra::jwt_claims(&token)));
                    Some(token)
                }
                Err(why) => {
                    out.add(Check::skip("API server token", why));
                    None
                }
            }
        }
        (None, Err(why)) => {
            out.add(Check::fail(
                "service-account issuer",
                format!("cannot read /.well-known/openid-configuration: {why}"),
                "the API server must serve its discovery document (--service-account-issuer, \
                 --service-account-jwks-uri) and Entra must reach it at the issuer URL",
            ));
            None
        }
        (None, Ok(_)) => None,
    };
    EntraSide {
        bindings,
        expected,
        token,
    }
}

/// Every identity's federated credential (the default one, then each named one) against what
/// the API server issues.
fn credentials(out: &mut Out, side: &EntraSide, ids: &Identities) {
    let Some(expected) = &side.expected else {
        return;
    };
    let default = Identity {
        name: None,
        client_id: ids.client_id.clone().unwrap_or_default(),
        tenant_id: None,
    };
    let skip_default = ids.client_id.is_none() && !ids.named.is_empty();
    for identity in std::iter::once(&default)
        .chain(&ids.named)
        .skip(usize::from(skip_default))
    {
        let binding = side
            .bindings
            .as_deref()
            .and_then(|b| BindingView::find(b, identity));
        out.add(entra::credential(expected, binding).for_identity(identity.name.as_deref()));
    }
}

/// `--exchange`: the ServiceAccount token exchanged at Entra for each identity.
async fn exchanges(
    out: &mut Out,
    subject: &Subject,
    side: &EntraSide,
    ids: &Identities,
    args: ExchangeArgs,
) -> anyhow::Result<()> {
    let ExchangeArgs {
        authority_host,
        tenant_id,
        scope,
        ca_file,
        timeout,
    } = args;
    let pod = subject.pod.as_ref();
    let binding_tenant = side
        .bindings
        .as_ref()
        .and_then(|b| b.iter().find_map(|b| b.tenant_id.clone()));
    let tenant = tenant_id
        .or_else(|| checks::annotation(&subject.sa.metadata, TENANT_ID_ANNOTATION))
        .or_else(|| pod.and_then(|p| checks::pod_env(p, ENV_TENANT_ID)))
        .or(binding_tenant);
    let authority = authority_host
        .or_else(|| pod.and_then(|p| checks::pod_env(p, ENV_AUTHORITY_HOST)))
        .unwrap_or_else(|| wif_exchange::DEFAULT_AUTHORITY_HOST.to_owned());
    let ca = match &ca_file {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("failed to read --ca-file {}", path.display()))?,
        ),
        None => None,
    };
    let exchanger = probes::Exchanger {
        authority,
        scope,
        ca,
        timeout,
    };
    let token = side.token.as_deref();
    let has_named = !ids.named.is_empty();
    let check = match entra::exchange_inputs(token, ids.client_id.as_deref(), tenant.as_deref(), has_named) {
        Ok((token, client_id, tenant)) => exchanger.exchange(token, client_id, tenant).await,
        Err(check) => check,
    };
    out.add(check);
    for identity in &ids.named {
        let tenant = identity.tenant_id.as_deref().or(tenant.as_deref());
        let check = match entra::exchange_inputs(token, Some(&identity.client_id), tenant, false) {
            Ok((token, client_id, tenant)) => exchanger.exchange(token, client_id, tenant).await,
            Err(check) => check,
        };
        out.add(check.for_identity(identity.name.as_deref()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
