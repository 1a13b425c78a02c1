//! When is a credential honoured? First it must read back consistently (Graph and ARM replicas
//! lag behind writes); then, when enabled, a real exchange proves it: a TokenRequest token for
//! the bound ServiceAccount (with the credential's audience) traded at the token endpoint for an
//! access token, with the client id the workload will use.

use std::time::Duration;

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{Api, Client, api::PostParams};
use wif_exchange::{RetryPolicy, TokenRequestOptions, WorkloadIdentityCredential};

use crate::azure::{Azure, AzureError, CredentialSpec, Parent};

/// How read-back is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBackConfig {
    /// Consecutive matching reads required.
    pub count: u32,
    /// Pause between reads.
    pub interval: Duration,
}

/// The result of a read-back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReadBack {
    /// `count` consecutive reads returned the desired credential.
    Consistent,
    /// A read did not (yet) return it; what it returned.
    Inconsistent(String),
}

/// Reads the credential `count` times and checks each read equals `desired`.
pub(crate) async fn read_back(
    azure: &Azure,
    parent: &Parent,
    desired: &CredentialSpec,
    cfg: &ReadBackConfig,
) -> Result<ReadBack, AzureError> {
    for i in 0..cfg.count.max(1) {
        if i > 0 {
            tokio::time::sleep(cfg.interval).await;
        }
        match azure.get(parent, &desired.name).await? {
            Some(c) if desired.matches(&c, parent.backend() == crate::plan::Backend::Graph) => {}
            Some(c) => {
                return Ok(ReadBack::Inconsistent(format!(
                    "read {} of {} returned issuer {:?}, subject {:?}, audiences {:?}",
                    i + 1,
                    cfg.count,
                    c.issuer,
                    c.subject,
                    c.audiences
                )));
            }
            None => {
                return Ok(ReadBack::Inconsistent(format!(
                    "read {} of {} did not find credential {}",
                    i + 1,
                    cfg.count,
                    desired.name
                )));
            }
        }
    }
    Ok(ReadBack::Consistent)
}

/// Settings of the token-exchange check.
#[derive(Clone, Debug)]
pub struct ExchangeConfig {
    /// Entra authority (e.g. `https://login.microsoftonline.com/`).
    pub authority_host: String,
    /// Scope of the test token (`<resource>/.default`).
    pub scope: String,
    /// HTTP client (shared; trusts the configured CAs; no redirects).
    pub http: reqwest::Client,
    /// Timeout of the exchange.
    pub timeout: Duration,
}

/// Why the exchange check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The TokenRequest for the ServiceAccount failed.
    #[error("failed to request a token for ServiceAccount {namespace}/{name}: {source}")]
    TokenRequest {
        /// Namespace.
        namespace: String,
        /// ServiceAccount.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The API server answered without a token.
    #[error("the TokenRequest for ServiceAccount {0}/{1} returned no token")]
    NoToken(String, String),
    /// Entra (or the network) refused the exchange.
    #[error("{source}")]
    Exchange {
        /// wif-exchange's error: AADSTS code, message, hint.
        #[source]
        source: wif_exchange::Error,
    },
}

impl ExchangeError {
    /// The AADSTS code, when Entra answered with one.
    pub fn aadsts(&self) -> Option<u32> {
        match self {
            Self::Exchange { source } => source.aadsts(),
            _ => None,
        }
    }

    /// A message with wif-exchange's hint appended.
    pub fn explain(&self) -> String {
        match self {
            Self::Exchange { source } => match source.hint() {
                Some(hint) => format!("{source} (hint: {hint})"),
                None => source.to_string(),
            },
            other => other.to_string(),
        }
    }
}

/// A short-lived (10 minutes, the API server's minimum) token of a ServiceAccount with
/// `audience`, as the kubelet would project it; `None` when the API server returned none.
pub async fn service_account_token(
    client: &Client,
    namespace: &str,
    service_account: &str,
    audience: &str,
) -> Result<Option<String>, kube::Error> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_owned()]),
            expiration_seconds: Some(600),
            bound_object_ref: None,
        }),
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let answer = api
        .create_token_request(service_account, &PostParams::default(), &request)
        .await?;
    Ok(answer.status.and_then(|s| s.token).filter(|t| !t.is_empty()))
}

/// Requests a ServiceAccount token with `audience` and exchanges it as the workload would.
pub async fn exchange(
    client: &Client,
    cfg: &ExchangeConfig,
    namespace: &str,
    service_account: &str,
    audience: &str,
    client_id: &str,
    tenant_id: &str,
) -> Result<(), ExchangeError> {
    let token = service_account_token(client, namespace, service_account, audience)
        .await
        .map_err(|source| ExchangeError::TokenRequest {
            namespace: namespace.to_owned(),
            name: service_account.to_owned(),
            source,
        })?
        .ok_or_else(|| ExchangeError::NoToken(namespace.to_owned(), service_account.to_owned()))?;
    let credential = WorkloadIdentityCredential::builder()
        .tenant_id(tenant_id)
        .client_id(client_id)
        .assertion(token)
        .authority_host(&cfg.authority_host)
        .http_client(cfg.http.clone())
        .timeout(cfg.timeout)
        // The reconcile is retried with backoff; one attempt here.
        .retry_policy(RetryPolicy::none())
        .build()
        .map_err(|source| ExchangeError::Exchange { source })?;
    credential
        .get_token(&[cfg.scope.as_str()], &TokenRequestOptions::default())
        .await
        .map(drop)
        .map_err(|source| ExchangeError::Exchange { source })
}
