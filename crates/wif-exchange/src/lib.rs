//! Entra (Azure AD) workload identity for Rust workloads.
//!
//! [`WorkloadIdentityCredential`] exchanges the Kubernetes projected ServiceAccount token at
//! Entra's v2 token endpoint (`client_credentials` with a `jwt-bearer` client assertion) for an
//! access token, the way every Azure SDK's `WorkloadIdentityCredential` does, plus:
//!
//! - a cache keyed by tenant, scope, claims and CAE, refreshed in the background from Entra's
//!   `refresh_in` (else at half the lifetime) while the cached token keeps being served;
//! - single-flight: concurrent callers needing a new token share one request;
//! - the token file is re-read when kubelet rotates it;
//! - bounded, jittered retries honouring `Retry-After` on 429/5xx and network errors, never on
//!   400/401;
//! - typed errors carrying the HTTP status, the AADSTS code, Entra's message, trace and
//!   correlation ids, and a hint for the common workload-identity mistakes;
//! - HTTPS only, rustls (`ring`), trusting the system store plus `SSL_CERT_FILE`;
//! - the access token and the assertion never appear in `Debug`, `Display`, errors or logs.
//!
//! ```no_run
//! use wif_exchange::{TokenRequestOptions, WorkloadIdentityCredential};
//!
//! # async fn demo() -> Result<(), wif_exchange::Error> {
//! // AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE (and AZURE_AUTHORITY_HOST)
//! // are injected by the workload identity webhook.
//! let credential = WorkloadIdentityCredential::from_env()?;
//! let token = credential
//!     .get_token(&["https://vault.azure.net/.default"], &TokenRequestOptions::default())
//!     .await?;
//! let header = format!("Bearer {}", token.token().expose_secret());
//! # let _ = header;
//! # Ok(())
//! # }
//! ```
//!
//! Errors explain themselves:
//!
//! ```
//! # use wif_exchange::Error;
//! # fn show(err: &Error) {
//! if let Some(code) = err.aadsts() {
//!     eprintln!("AADSTS{code}: {err}");
//! }
//! if let Some(hint) = err.hint() {
//!     eprintln!("hint: {hint}");
//! }
//! # }
//! ```
//!
//! Features: `cli` (default) provides the [`cli`] module behind `wif token`; `azure_core`
//! implements `azure_core::credentials::TokenCredential` so `azure_*` SDK clients can use the
//! credential.

mod assertion;
#[cfg(feature = "azure_core")]
mod azure;
mod cache;
#[cfg(feature = "cli")]
pub mod cli;
mod credential;
pub mod env;
mod error;
mod response;
mod retry;
mod tls;
mod token;

pub use credential::{DEFAULT_AUTHORITY_HOST, WorkloadIdentityCredential, WorkloadIdentityCredentialBuilder};
pub use error::{EntraError, Error, Result, TransportErrorKind, hint_for_code};
pub use retry::RetryPolicy;
pub use token::{AccessToken, Secret, TokenRequestOptions};
