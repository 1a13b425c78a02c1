//! ARM: user-assigned managed identities and their federated identity credentials
//! (`Microsoft.ManagedIdentity`, api-version 2023-01-31).

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};
use wif_api::UserAssignedIdentityId;

use super::{
    CredentialSpec, FederatedCredential,
    http::{Api, AzureError, AzureHttp, Service},
};

/// The api-version the client speaks (stable, carries federated credentials).
pub const API_VERSION: &str = "2023-01-31";

/// A user-assigned managed identity, as far as the controller needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedIdentity {
    /// Client id (what workloads present as `AZURE_CLIENT_ID`).
    pub client_id: String,
    /// Principal (service principal object) id.
    pub principal_id: String,
    /// Tenant the identity lives in.
    pub tenant_id: String,
}

/// The ARM client.
#[derive(Debug, Clone)]
pub struct ArmClient {
    api: Api,
}

impl ArmClient {
    /// A client of `endpoint` (e.g. `https://management.azure.com`) requesting tokens for
    /// `scope` (e.g. `https://management.azure.com/.default`).
    pub fn new(http: Arc<AzureHttp>, endpoint: &str, scope: &str) -> Self {
        Self {
            api: Api::new(
                http,
                Service::Arm,
                endpoint.trim_end_matches('/').to_owned(),
                scope,
            ),
        }
    }

    /// The identity; `None` if it does not exist.
    pub async fn get_identity(
        &self,
        tenant: &str,
        id: &UserAssignedIdentityId,
    ) -> Result<Option<ManagedIdentity>, AzureError> {
        let url = format!("{}{}?api-version={API_VERSION}", self.api.base, id.resource_id());
        self.api
            .get_opt(tenant, &url, |body| {
                let props = body.get("properties");
                let s = |k: &str| {
                    props
                        .and_then(|p| p.get(k))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                match (s("clientId"), s("principalId")) {
                    (Some(client_id), Some(principal_id)) => Ok(ManagedIdentity {
                        client_id,
                        principal_id,
                        tenant_id: s("tenantId").unwrap_or_else(|| tenant.to_owned()),
                    }),
                    _ => Err("identity without clientId/principalId".into()),
                }
            })
            .await
    }

    fn credentials_url(&self, id: &UserAssignedIdentityId, name: Option<&str>) -> String {
        match name {
            Some(name) => format!(
                "{}{}/federatedIdentityCredentials/{name}?api-version={API_VERSION}",
                self.api.base,
                id.resource_id()
            ),
            None => format!(
                "{}{}/federatedIdentityCredentials?api-version={API_VERSION}",
                self.api.base,
                id.resource_id()
            ),
        }
    }

    /// Every credential of the identity (`nextLink` followed on the same host only).
    pub async fn list(
        &self,
        tenant: &str,
        id: &UserAssignedIdentityId,
    ) -> Result<Vec<FederatedCredential>, AzureError> {
        self.api
            .list_all(tenant, self.credentials_url(id, None), "nextLink", parse)
            .await
    }

    /// One credential by name.
    pub async fn get(
        &self,
        tenant: &str,
        id: &UserAssignedIdentityId,
        name: &str,
    ) -> Result<Option<FederatedCredential>, AzureError> {
        let url = self.credentials_url(id, Some(name));
        self.api
            .get_opt(tenant, &url, |body| {
                parse(body).ok_or_else(|| "bad credential".into())
            })
            .await
    }

    /// Creates or replaces the credential `spec.name` (PUT is both on ARM).
    pub async fn put(
        &self,
        tenant: &str,
        id: &UserAssignedIdentityId,
        spec: &CredentialSpec,
    ) -> Result<FederatedCredential, AzureError> {
        let url = self.credentials_url(id, Some(&spec.name));
        let body = json!({
            "properties": {
                "issuer": spec.issuer,
                "subject": spec.subject,
                "audiences": [spec.audience],
            }
        });
        let answer = self.api.call(tenant, Method::PUT, &url, Some(&body)).await?;
        parse(&answer).ok_or_else(|| self.api.decode_error("PUT", &url, "bad credential".into()))
    }

    /// Deletes a credential; `false` when it was already gone (ARM answers 204).
    pub async fn delete(
        &self,
        tenant: &str,
        id: &UserAssignedIdentityId,
        name: &str,
    ) -> Result<bool, AzureError> {
        let url = self.credentials_url(id, Some(name));
        match self.api.send(tenant, Method::DELETE, &url, None).await {
            Ok(answer) => Ok(answer.status != 204),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn parse(v: &Value) -> Option<FederatedCredential> {
    let props = v.get("properties")?;
    let s = |k: &str| props.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(FederatedCredential {
        id: v.get("id").and_then(Value::as_str)?.to_owned(),
        name: v.get("name").and_then(Value::as_str)?.to_owned(),
        issuer: s("issuer").unwrap_or_default(),
        subject: s("subject").unwrap_or_default(),
        audiences: props
            .get("audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
        description: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arm_credentials() {
        let v = json!({
            "id": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i/federatedIdentityCredentials/n",
            "name": "n",
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            "properties": {"issuer": "https://i/", "subject": "system:serviceaccount:a:b", "audiences": ["api://AzureADTokenExchange"]}
        });
        let c = parse(&v).unwrap();
        assert_eq!(c.name, "n");
        assert_eq!(c.issuer, "https://i/");
        assert!(c.description.is_none());
        assert!(parse(&json!({"id": "x", "name": "y"})).is_none());
    }
}
