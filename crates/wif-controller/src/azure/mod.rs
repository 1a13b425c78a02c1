//! Graph and ARM federated identity credential clients behind one facade ([`Azure`]), so the
//! reconciler treats applications and managed identities alike.

pub mod arm;
pub mod graph;
pub mod http;

use std::{sync::Arc, time::Duration};

use wif_api::UserAssignedIdentityId;

pub use self::{
    arm::{ArmClient, ManagedIdentity},
    graph::{Application, GraphClient},
    http::{AzureError, AzureHttp, RetryConfig, Service, TokenProvider},
};
use crate::plan::Backend;

/// A federated identity credential as Graph or ARM returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedCredential {
    /// Graph: a GUID; ARM: the credential's resource id.
    pub id: String,
    /// Name (unique per identity, case-insensitive).
    pub name: String,
    /// Issuer.
    pub issuer: String,
    /// Subject (empty for flexible credentials).
    pub subject: String,
    /// Audiences.
    pub audiences: Vec<String>,
    /// Description (Graph only).
    pub description: Option<String>,
}

/// The credential a binding wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialSpec {
    /// Name.
    pub name: String,
    /// Issuer, byte for byte as discovered.
    pub issuer: String,
    /// `system:serviceaccount:<ns>:<sa>`.
    pub subject: String,
    /// The one audience.
    pub audience: String,
    /// Description with the ownership marker (Graph); `None` on ARM.
    pub description: Option<String>,
}

impl CredentialSpec {
    /// Whether `c` holds exactly these values (byte-exact issuer, subject and audience; the
    /// description too when `with_description`).
    pub fn matches(&self, c: &FederatedCredential, with_description: bool) -> bool {
        c.issuer == self.issuer
            && c.subject == self.subject
            && c.audiences.len() == 1
            && c.audiences[0] == self.audience
            && (!with_description || c.description == self.description)
    }
}

/// Where credentials live: an application (Graph) or a user-assigned identity (ARM).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Parent {
    /// An application registration.
    Application {
        /// Tenant.
        tenant: String,
        /// Client id.
        client_id: String,
        /// Object id.
        object_id: String,
    },
    /// A user-assigned managed identity.
    Identity {
        /// Tenant.
        tenant: String,
        /// Resource id.
        id: UserAssignedIdentityId,
    },
}

impl Parent {
    /// Serialisation key: one per identity across the whole controller.
    pub fn key(&self) -> String {
        match self {
            Self::Application {
                tenant, object_id, ..
            } => {
                format!(
                    "graph/{}/{}",
                    tenant.to_ascii_lowercase(),
                    object_id.to_ascii_lowercase()
                )
            }
            Self::Identity { id, .. } => format!("arm{}", id.key()),
        }
    }

    /// What `status.credential.parent` says.
    pub fn display(&self) -> String {
        match self {
            Self::Application { object_id, .. } => format!("applications/{object_id}"),
            Self::Identity { id, .. } => id.resource_id(),
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        match self {
            Self::Application { tenant, .. } | Self::Identity { tenant, .. } => tenant,
        }
    }

    /// Which API holds its credentials.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Application { .. } => Backend::Graph,
            Self::Identity { .. } => Backend::Arm,
        }
    }
}

/// Graph and ARM together.
#[derive(Debug, Clone)]
pub struct Azure {
    /// Graph.
    pub graph: GraphClient,
    /// ARM.
    pub arm: ArmClient,
}

impl Azure {
    /// Every credential of `parent`.
    pub async fn list(&self, parent: &Parent) -> Result<Vec<FederatedCredential>, AzureError> {
        match parent {
            Parent::Application {
                tenant, object_id, ..
            } => self.graph.list(tenant, object_id).await,
            Parent::Identity { tenant, id } => self.arm.list(tenant, id).await,
        }
    }

    /// One credential by name.
    pub async fn get(&self, parent: &Parent, name: &str) -> Result<Option<FederatedCredential>, AzureError> {
        match parent {
            Parent::Application {
                tenant, object_id, ..
            } => self.graph.get(tenant, object_id, name).await,
            Parent::Identity { tenant, id } => self.arm.get(tenant, id, name).await,
        }
    }

    /// Creates the credential.
    pub async fn create(
        &self,
        parent: &Parent,
        spec: &CredentialSpec,
    ) -> Result<FederatedCredential, AzureError> {
        match parent {
            Parent::Application {
                tenant, object_id, ..
            } => self.graph.create(tenant, object_id, spec).await,
            Parent::Identity { tenant, id } => self.arm.put(tenant, id, spec).await,
        }
    }

    /// Updates credential `id` (named `name`) to `spec` in place; returns the new state.
    pub async fn update(
        &self,
        parent: &Parent,
        id: &str,
        name: &str,
        spec: &CredentialSpec,
    ) -> Result<FederatedCredential, AzureError> {
        match parent {
            Parent::Application {
                tenant, object_id, ..
            } => {
                self.graph.update(tenant, object_id, id, spec).await?;
                Ok(FederatedCredential {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    issuer: spec.issuer.clone(),
                    subject: spec.subject.clone(),
                    audiences: vec![spec.audience.clone()],
                    description: spec.description.clone(),
                })
            }
            Parent::Identity { tenant, id: identity } => {
                // The name of an existing credential keeps its stored casing.
                let spec = CredentialSpec {
                    name: name.to_owned(),
                    ..spec.clone()
                };
                self.arm.put(tenant, identity, &spec).await
            }
        }
    }

    /// Deletes credential `id` (named `name`); `false` when it was already gone.
    pub async fn delete(&self, parent: &Parent, id: &str, name: &str) -> Result<bool, AzureError> {
        match parent {
            Parent::Application {
                tenant, object_id, ..
            } => self.graph.delete(tenant, object_id, id).await,
            Parent::Identity { tenant, id: identity } => self.arm.delete(tenant, identity, name).await,
        }
    }
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An extra CA bundle is not PEM certificates.
    #[error("failed to read CA certificates from {origin}: {reason}")]
    Ca {
        /// Where they came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// reqwest refused the configuration.
    #[error("failed to build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// The HTTP client for Graph, ARM and the token endpoint: rustls (ring), the system roots plus
/// `extra_ca_pems`, no redirects (a redirect would carry the bearer token or assertion along).
pub fn http_client(
    extra_ca_pems: &[(String, Vec<u8>)],
    connect_timeout: Duration,
) -> Result<reqwest::Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A bad system certificate must not stop the controller; the others still work.
        let _ = roots.add(cert);
    }
    for (origin, pem) in extra_ca_pems {
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| ClientError::Ca {
                origin: origin.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(ClientError::Ca {
                origin: origin.clone(),
                reason: "no PEM certificate found".into(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ClientError::Ca {
                origin: origin.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Ca {
            origin: "rustls".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("wif-controller/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ClientError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fic(issuer: &str, subject: &str, aud: &[&str], description: Option<&str>) -> FederatedCredential {
        FederatedCredential {
            id: "1".into(),
            name: "n".into(),
            issuer: issuer.into(),
            subject: subject.into(),
            audiences: aud.iter().map(|s| (*s).into()).collect(),
            description: description.map(Into::into),
        }
    }

    #[test]
    fn matching_is_byte_exact() {
        let spec = CredentialSpec {
            name: "n".into(),
            issuer: "https://i/".into(),
            subject: "s".into(),
            audience: "a".into(),
            description: Some("d".into()),
        };
        assert!(spec.matches(&fic("https://i/", "s", &["a"], Some("d")), true));
        assert!(!spec.matches(&fic("https://i", "s", &["a"], Some("d")), true));
        assert!(!spec.matches(&fic("https://i/", "S", &["a"], Some("d")), true));
        assert!(!spec.matches(&fic("https://i/", "s", &["a", "b"], Some("d")), true));
        assert!(!spec.matches(&fic("https://i/", "s", &["a"], None), true));
        assert!(spec.matches(&fic("https://i/", "s", &["a"], None), false));
    }

    #[test]
    fn parents_have_distinct_keys() {
        let id = UserAssignedIdentityId::parse(
            "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/Api",
        )
        .unwrap();
        let arm = Parent::Identity {
            tenant: "t".into(),
            id,
        };
        assert!(arm.key().starts_with("arm/subscriptions/"));
        assert_eq!(arm.key(), arm.key().to_ascii_lowercase());
        let app = Parent::Application {
            tenant: "T".into(),
            client_id: "c".into(),
            object_id: "O".into(),
        };
        assert_eq!(app.key(), "graph/t/o");
        assert_eq!(app.display(), "applications/O");
    }
}
