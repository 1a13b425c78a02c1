//! Microsoft Graph: applications and their `federatedIdentityCredentials` (v1.0).

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use super::{
    CredentialSpec, FederatedCredential,
    http::{Api, AzureError, AzureHttp, Service},
};

/// An application registration, as far as the controller needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Application {
    /// Object id (addresses the application in Graph).
    pub object_id: String,
    /// Client (application) id.
    pub app_id: String,
    /// Display name, for messages.
    pub display_name: Option<String>,
}

/// The Graph client.
#[derive(Debug, Clone)]
pub struct GraphClient {
    api: Api,
}

impl GraphClient {
    /// A client of `endpoint` (e.g. `https://graph.microsoft.com`, no version) requesting tokens
    /// for `scope` (e.g. `https://graph.microsoft.com/.default`).
    pub fn new(http: Arc<AzureHttp>, endpoint: &str, scope: &str) -> Self {
        Self {
            api: Api::new(
                http,
                Service::Graph,
                format!("{}/v1.0", endpoint.trim_end_matches('/')),
                scope,
            ),
        }
    }

    /// The application with client id `client_id`; `None` if the tenant has none (or the
    /// controller may not see it).
    pub async fn find_application(
        &self,
        tenant: &str,
        client_id: &str,
    ) -> Result<Option<Application>, AzureError> {
        // The client id was checked to be a GUID: no quote can end the key literal.
        let url = format!(
            "{}/applications(appId='{client_id}')?$select=id,appId,displayName",
            self.api.base
        );
        self.api
            .get_opt(tenant, &url, |body| {
                let object_id = body
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or("application without id")?;
                Ok(Application {
                    object_id: object_id.to_owned(),
                    app_id: body
                        .get("appId")
                        .and_then(Value::as_str)
                        .unwrap_or(client_id)
                        .to_owned(),
                    display_name: body.get("displayName").and_then(Value::as_str).map(str::to_owned),
                })
            })
            .await
    }

    fn credentials_url(&self, object_id: &str) -> String {
        format!(
            "{}/applications/{object_id}/federatedIdentityCredentials",
            self.api.base
        )
    }

    /// Every federated credential of the application (pages followed on the same host only).
    pub async fn list(&self, tenant: &str, object_id: &str) -> Result<Vec<FederatedCredential>, AzureError> {
        self.api
            .list_all(tenant, self.credentials_url(object_id), "@odata.nextLink", parse)
            .await
    }

    /// One credential by name (or id).
    pub async fn get(
        &self,
        tenant: &str,
        object_id: &str,
        name: &str,
    ) -> Result<Option<FederatedCredential>, AzureError> {
        let url = format!("{}/{name}", self.credentials_url(object_id));
        self.api
            .get_opt(tenant, &url, |body| {
                parse(body).ok_or_else(|| "bad credential".into())
            })
            .await
    }

    /// Creates a credential; Graph answers the stored object.
    pub async fn create(
        &self,
        tenant: &str,
        object_id: &str,
        spec: &CredentialSpec,
    ) -> Result<FederatedCredential, AzureError> {
        let url = self.credentials_url(object_id);
        let body = json!({
            "name": spec.name,
            "issuer": spec.issuer,
            "subject": spec.subject,
            "audiences": [spec.audience],
            "description": spec.description,
        });
        let answer = self.api.call(tenant, Method::POST, &url, Some(&body)).await?;
        parse(&answer).ok_or_else(|| self.api.decode_error("POST", &url, "bad credential".into()))
    }

    /// Updates issuer, subject, audiences and description in place (Graph answers 204).
    pub async fn update(
        &self,
        tenant: &str,
        object_id: &str,
        id: &str,
        spec: &CredentialSpec,
    ) -> Result<(), AzureError> {
        let url = format!("{}/{id}", self.credentials_url(object_id));
        let body = json!({
            "issuer": spec.issuer,
            "subject": spec.subject,
            "audiences": [spec.audience],
            "description": spec.description,
        });
        self.api
            .call(tenant, Method::PATCH, &url, Some(&body))
            .await
            .map(drop)
    }

    /// Deletes a credential; `false` when it was already gone.
    pub async fn delete(&self, tenant: &str, object_id: &str, id: &str) -> Result<bool, AzureError> {
        let url = format!("{}/{id}", self.credentials_url(object_id));
        match self.api.call(tenant, Method::DELETE, &url, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn parse(v: &Value) -> Option<FederatedCredential> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(FederatedCredential {
        id: s("id")?,
        name: s("name")?,
        issuer: s("issuer").unwrap_or_default(),
        // Flexible credentials have no subject; they can never equal ours.
        subject: s("subject").unwrap_or_default(),
        audiences: v
            .get("audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
        description: s("description"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_graph_credentials() {
        let v = json!({"id": "d9b7", "name": "n", "issuer": "https://i", "subject": "s",
                       "audiences": ["api://AzureADTokenExchange"], "description": null});
        let c = parse(&v).unwrap();
        assert_eq!(c.audiences, vec!["api://AzureADTokenExchange"]);
        assert_eq!(c.description, None);
        let flexible = json!({"id": "x", "name": "f", "issuer": "https://i", "subject": null,
                              "audiences": ["a"]});
        assert_eq!(parse(&flexible).unwrap().subject, "");
        assert!(parse(&json!({"name": "no id"})).is_none());
    }
}
