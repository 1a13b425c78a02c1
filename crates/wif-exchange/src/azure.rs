//! `azure_core::credentials::TokenCredential` for [`WorkloadIdentityCredential`] (feature
//! `azure_core`), so `azure_*` SDK clients can use it:
//!
//! ```no_run
//! use std::sync::Arc;
//! use azure_core::credentials::TokenCredential;
//!
//! # fn demo() -> Result<(), wif_exchange::Error> {
//! let credential: Arc<dyn TokenCredential> = Arc::new(wif_exchange::WorkloadIdentityCredential::from_env()?);
//! // e.g. azure_security_keyvault_secrets::SecretClient::new(url, credential, None)
//! # let _ = credential;
//! # Ok(()) }
//! ```
//!
//! azure_core's options carry no tenant, claims or CAE switch, so these requests use the
//! configured tenant without claims; call the inherent
//! [`WorkloadIdentityCredential::get_token`] for those.

use azure_core::{
    credentials::{AccessToken as AzureAccessToken, TokenCredential, TokenRequestOptions as AzureOptions},
    error::ErrorKind,
    time::OffsetDateTime,
};

use crate::{TokenRequestOptions, WorkloadIdentityCredential};

#[async_trait::async_trait]
impl TokenCredential for WorkloadIdentityCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<AzureOptions<'_>>,
    ) -> azure_core::Result<AzureAccessToken> {
        let token = WorkloadIdentityCredential::get_token(self, scopes, &TokenRequestOptions::default())
            .await
            .map_err(|e| {
                let message = e.to_string();
                azure_core::Error::with_error(ErrorKind::Credential, e, message)
            })?;
        Ok(AzureAccessToken::new(
            token.token().expose_secret().to_owned(),
            OffsetDateTime::from(token.expires_on()),
        ))
    }
}
