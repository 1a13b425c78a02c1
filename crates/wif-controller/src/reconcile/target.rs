//! Target resolution: the identity a spec names, where its credentials live, and the credential
//! the binding wants there. Everything here is pure except [`resolve`], which asks Graph or ARM
//! once per identity (client ids and resource ids do not move) and caches the answer.

use std::sync::Arc;

use kube::ResourceExt;
use wif_api::{
    FederatedIdentityBinding, FederatedIdentityBindingStatus, IdentityReference, RequestedIdentity,
    UserAssignedIdentityId, service_account_subject,
};

use super::verdict::{self, Failure};
use crate::{
    azure::{CredentialSpec, Parent},
    context::{Context, Settings},
    directory::ResolvedIdentity,
    naming,
    plan::{Backend, Ownership},
    reasons::Reason,
    share::Sharer,
};

/// The identity named in a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// An application by client id.
    Application(String),
    /// A user-assigned identity by resource id (not parsed yet).
    UserAssignedIdentity(String),
    /// A pool by name: placed on one of its identities.
    Pool(String),
}

impl Target {
    /// Checks the spec's identity: exactly one kind, a GUID client id
    /// ([`RequestedIdentity::from_spec`], as the validating webhook checks it).
    pub(crate) fn from_spec(identity: &IdentityReference) -> Result<Self, String> {
        Ok(match RequestedIdentity::from_spec(identity)? {
            RequestedIdentity::Application { client_id } => Self::Application(client_id.to_owned()),
            RequestedIdentity::UserAssignedIdentity { resource_id } => {
                Self::UserAssignedIdentity(resource_id.to_owned())
            }
            RequestedIdentity::Pool { name } => Self::Pool(name.to_owned()),
        })
    }

    /// What a policy is asked about.
    pub(super) fn requested(&self) -> RequestedIdentity<'_> {
        match self {
            Self::Application(client_id) => RequestedIdentity::Application { client_id },
            Self::UserAssignedIdentity(resource_id) => {
                RequestedIdentity::UserAssignedIdentity { resource_id }
            }
            Self::Pool(name) => RequestedIdentity::Pool { name },
        }
    }

    /// `application <id>` or `user-assigned identity <id>`, for messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Application(c) => format!("application {c}"),
            Self::UserAssignedIdentity(r) => format!("user-assigned identity {r}"),
            Self::Pool(name) => format!("pool {name}"),
        }
    }

    /// The key of a resolution in the directory's cache.
    fn cache_key(&self, tenant: &str) -> String {
        match self {
            Self::Application(c) => format!("app/{}/{}", tenant.to_ascii_lowercase(), c.to_ascii_lowercase()),
            Self::UserAssignedIdentity(r) => {
                format!("uami/{}/{}", tenant.to_ascii_lowercase(), r.to_ascii_lowercase())
            }
            Self::Pool(name) => format!("pool/{name}"),
        }
    }
}

/// The tenant of a binding: its spec's, else the controller's default.
pub(super) fn tenant(b: &FederatedIdentityBinding, settings: &Settings) -> String {
    b.spec
        .identity
        .tenant_id
        .clone()
        .unwrap_or_else(|| settings.default_tenant.clone())
}

/// Rebuilds the parent recorded in a status (to clean up where we wrote before).
pub(super) fn parent_from_status(
    status: &FederatedIdentityBindingStatus,
    default_tenant: &str,
) -> Option<Parent> {
    let credential = status.credential.as_ref()?;
    let tenant = status
        .tenant_id
        .clone()
        .unwrap_or_else(|| default_tenant.to_owned());
    if let Some(object_id) = credential.parent.strip_prefix("applications/") {
        return Some(Parent::Application {
            tenant,
            client_id: status.client_id.clone().unwrap_or_default(),
            object_id: object_id.to_owned(),
        });
    }
    UserAssignedIdentityId::parse(&credential.parent)
        .ok()
        .map(|id| Parent::Identity { tenant, id })
}

/// Ownership of this binding's credentials on `parent`.
pub(super) fn ownership(
    settings: &Settings,
    b: &FederatedIdentityBinding,
    parent: &Parent,
    extra_names: &[String],
) -> Ownership {
    let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
    let status = b.status.as_ref();
    let recorded = status
        .and_then(|s| s.credential.as_ref())
        .filter(|c| c.parent.eq_ignore_ascii_case(&parent.display()));
    let mut names = vec![naming::default_credential_name(&settings.cluster_id, &ns, &name)];
    names.extend(recorded.map(|c| c.name.clone()));
    names.extend(extra_names.iter().cloned());
    Ownership {
        backend: parent.backend(),
        marker: naming::marker(&settings.cluster_id, &ns, &name),
        names,
        recorded_id: recorded.map(|c| c.id.clone()),
    }
}

/// The audience a binding's credential trusts.
fn audience(settings: &Settings, b: &FederatedIdentityBinding) -> String {
    b.spec
        .audience
        .clone()
        .unwrap_or_else(|| settings.default_audience.clone())
}

/// The other bindings of `b`'s ServiceAccount and audience: they share one credential per
/// identity with `b`. Those being deleted count for using a credential (theirs exists until
/// they release it), not for taking one over (`alive_only`).
pub(super) fn sharing(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    alive_only: bool,
) -> Vec<Arc<FederatedIdentityBinding>> {
    let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
    let wanted = audience(&ctx.settings, b);
    ctx.stores
        .bindings_of_service_account(&ns, &b.spec.service_account_name)
        .into_iter()
        .filter(|o| {
            o.name_any() != name
                && (!alive_only || o.metadata.deletion_timestamp.is_none())
                && audience(&ctx.settings, o) == wanted
        })
        .collect()
}

/// What the bindings sharing with a binding ([`sharing`]) own and want on `parent`.
pub(super) fn sharers_on(
    settings: &Settings,
    sharing: &[Arc<FederatedIdentityBinding>],
    parent: &Parent,
) -> Vec<Sharer> {
    sharing
        .iter()
        .map(|o| Sharer {
            binding: format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
            ownership: ownership(settings, o, parent, &[]),
            desired: desired(settings, o, parent),
        })
        .collect()
}

/// [`sharers_on`] of [`sharing`].
pub(super) fn sharers(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    parent: &Parent,
    alive_only: bool,
) -> Vec<Sharer> {
    sharers_on(&ctx.settings, &sharing(ctx, b, alive_only), parent)
}

/// The credential a binding wants on `parent`.
pub(super) fn desired(settings: &Settings, b: &FederatedIdentityBinding, parent: &Parent) -> CredentialSpec {
    let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
    CredentialSpec {
        name: b
            .spec
            .credential_name
            .clone()
            .unwrap_or_else(|| naming::default_credential_name(&settings.cluster_id, &ns, &name)),
        issuer: settings.issuer.clone(),
        subject: service_account_subject(&ns, &b.spec.service_account_name),
        audience: audience(settings, b),
        description: (parent.backend() == Backend::Graph)
            .then(|| naming::description(&settings.cluster_id, &ns, &name)),
    }
}

/// Resolves the spec's identity (cached: client ids and resource ids do not move).
pub(super) async fn resolve(
    ctx: &Context,
    target: &Target,
    tenant: &str,
) -> Result<ResolvedIdentity, Failure> {
    let cache_key = target.cache_key(tenant);
    if let Some(hit) = ctx.directory.resolved(&cache_key) {
        return Ok(hit);
    }
    let resolved = match target {
        Target::Application(client_id) => resolve_application(ctx, client_id, tenant).await?,
        Target::UserAssignedIdentity(resource_id) => resolve_identity(ctx, resource_id, tenant).await?,
        // A pool is placed (see `pooled`), never resolved as one identity.
        Target::Pool(name) => {
            return Err(Failure::new(
                Reason::InvalidPool,
                format!("pool {name} names no single identity"),
            ));
        }
    };
    ctx.directory.remember(cache_key, resolved.clone());
    Ok(resolved)
}

async fn resolve_application(
    ctx: &Context,
    client_id: &str,
    tenant: &str,
) -> Result<ResolvedIdentity, Failure> {
    let app = ctx
        .azure
        .graph
        .find_application(tenant, client_id)
        .await
        .map_err(|e| verdict::azure_failure(&e, "look up", &format!("application {client_id}")))?
        .ok_or_else(|| verdict::application_not_found(client_id, tenant))?;
    Ok(ResolvedIdentity {
        parent: Parent::Application {
            tenant: tenant.to_owned(),
            client_id: app.app_id.clone(),
            object_id: app.object_id,
        },
        client_id: app.app_id,
        tenant_id: tenant.to_owned(),
    })
}

async fn resolve_identity(
    ctx: &Context,
    resource_id: &str,
    tenant: &str,
) -> Result<ResolvedIdentity, Failure> {
    let id = UserAssignedIdentityId::parse(resource_id).map_err(|e| {
        Failure::new(
            Reason::InvalidResourceId,
            format!("spec.identity.userAssignedIdentity.resourceId: {e}"),
        )
    })?;
    let identity = ctx
        .azure
        .arm
        .get_identity(tenant, &id)
        .await
        .map_err(|e| verdict::azure_failure(&e, "read", &format!("identity {id}")))?
        .ok_or_else(|| verdict::identity_not_found(&id))?;
    Ok(ResolvedIdentity {
        parent: Parent::Identity {
            tenant: tenant.to_owned(),
            id,
        },
        client_id: identity.client_id,
        tenant_id: identity.tenant_id,
    })
}

#[cfg(test)]
mod tests {
    use wif_api::{ApplicationReference, CredentialStatus, UserAssignedIdentityReference};

    use super::*;

    #[test]
    fn targets_from_specs() {
        let app = IdentityReference {
            application: Some(ApplicationReference {
                client_id: "5e3ce6c0-2b1f-4285-8d4b-75ee78787346".into(),
            }),
            ..IdentityReference::default()
        };
        assert!(matches!(Target::from_spec(&app), Ok(Target::Application(_))));
        let bad = IdentityReference {
            application: Some(ApplicationReference {
                client_id: "nope".into(),
            }),
            ..IdentityReference::default()
        };
        assert!(Target::from_spec(&bad).unwrap_err().contains("not a GUID"));
        let both = IdentityReference {
            user_assigned_identity: Some(UserAssignedIdentityReference {
                resource_id: "/x".into(),
            }),
            ..app.clone()
        };
        assert!(Target::from_spec(&both).unwrap_err().contains("exactly one"));
        assert!(Target::from_spec(&IdentityReference::default()).is_err());
    }

    #[test]
    fn parents_round_trip_through_status() {
        let rid = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api";
        let status = |parent: &str| FederatedIdentityBindingStatus {
            credential: Some(CredentialStatus {
                parent: parent.into(),
                ..CredentialStatus::default()
            }),
            tenant_id: Some("t".into()),
            client_id: Some("c".into()),
            ..FederatedIdentityBindingStatus::default()
        };
        let app = parent_from_status(&status("applications/oid"), "d").unwrap();
        assert_eq!(app.display(), "applications/oid");
        assert_eq!(app.tenant(), "t");
        let uami = parent_from_status(&status(rid), "d").unwrap();
        assert_eq!(uami.display(), rid);
        assert!(parent_from_status(&status("garbage"), "d").is_none());
        assert!(parent_from_status(&FederatedIdentityBindingStatus::default(), "d").is_none());
    }
}
