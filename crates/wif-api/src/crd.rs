//! The custom resources: [`FederatedIdentityBinding`] (namespaced) and
//! [`FederatedIdentityPolicy`] (cluster-scoped), group `azure.workload.identity`, version
//! `v1alpha1`.
//!
//! Server-side validation is CEL (`x-kubernetes-validations`) plus `maxLength`s, so a malformed
//! binding is refused by `kubectl apply` itself; the controller still checks everything again
//! (a CRD can be installed without its rules, or be older than the controller).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of wif's custom resources.
pub const GROUP: &str = "azure.workload.identity";
/// API version of wif's custom resources.
pub const VERSION: &str = "v1alpha1";

/// CEL: a GUID, as Entra client and tenant ids are written.
const GUID_RULE: &str =
    "self.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')";

/// Binds a ServiceAccount of this namespace to an Entra application or a user-assigned managed
/// identity: the controller creates the matching federated identity credential (issuer = the
/// cluster's service-account issuer, subject = `system:serviceaccount:<namespace>:<name>`),
/// annotates the ServiceAccount and reports in `status` when tokens will be honoured.
// Each printcolumn repeats `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "azure.workload.identity",
    version = "v1alpha1",
    kind = "FederatedIdentityBinding",
    namespaced,
    status = "FederatedIdentityBindingStatus",
    derive = "PartialEq",
    shortname = "fib",
    category = "wif",
    doc = "Binds a ServiceAccount to an Entra application or user-assigned managed identity through a federated identity credential managed by wif.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Identity",
        type_ = "string",
        description = "Client id of the bound application or managed identity",
        json_path = ".status.clientId"
    ),
    printcolumn(
        name = "Credential",
        type_ = "string",
        description = "Name of the federated identity credential",
        json_path = ".status.credential.name"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Subject",
        type_ = "string",
        priority = 1,
        json_path = ".status.credential.subject"
    ),
    printcolumn(
        name = "Issuer",
        type_ = "string",
        priority = 1,
        json_path = ".status.credential.issuer"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct FederatedIdentityBindingSpec {
    /// Name of the ServiceAccount, in the binding's namespace, whose tokens the identity will
    /// trust. The credential's subject is `system:serviceaccount:<namespace>:<serviceAccountName>`.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
            .message("serviceAccountName must be a DNS subdomain: lower-case letters, digits, '-' and '.'")
    )]
    pub service_account_name: String,

    /// The Entra identity to bind: exactly one of `application` (an app registration, through
    /// Microsoft Graph) or `userAssignedIdentity` (a managed identity, through ARM).
    pub identity: IdentityReference,

    /// Binds a named identity of the ServiceAccount instead of its default one: the controller
    /// then writes `azure.workload.identity/client-id.<identityName>` (and `tenant-id.<identityName>`),
    /// and pods get `AZURE_CLIENT_ID_<IDENTITYNAME>`. Several bindings may share a ServiceAccount:
    /// one default, the others named. A lower-case DNS label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
            .message("identityName must be a lower-case DNS label: lower-case letters, digits and '-'")
    )]
    pub identity_name: Option<String>,

    /// Audience of the credential, the `aud` the ServiceAccount token must carry. Defaults to
    /// the cloud's token-exchange audience (`api://AzureADTokenExchange` on the public cloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 600))]
    #[x_kube(
        validation = Rule::new("!self.contains('*') && self.trim() == self && !self.contains(' ')")
            .message("audience must not contain '*' or whitespace (Entra matches it byte for byte)")
    )]
    pub audience: Option<String>,

    /// Name of the federated identity credential. Defaults to a deterministic name derived from
    /// the cluster, namespace and binding name (valid on both Graph and ARM). Changing it
    /// replaces the credential (names are immutable in Entra).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 120))]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-zA-Z0-9][a-zA-Z0-9_-]{2,119}$')")
            .message("credentialName must be 3-120 characters: letters, digits, '-' and '_', starting with a letter or digit")
    )]
    pub credential_name: Option<String>,

    /// What happens to the credential when the binding is deleted: `Delete` (default) removes
    /// it, `Orphan` leaves it in Entra.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Whether the controller writes `azure.workload.identity/client-id` (and `tenant-id`) on
    /// the ServiceAccount. Annotations it wrote are removed when the binding is deleted.
    #[serde(default = "default_true")]
    pub annotate_service_account: bool,
}

fn default_true() -> bool {
    true
}

/// Exactly one Entra identity, plus the tenant it lives in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.application) ? 1 : 0) + (has(self.userAssignedIdentity) ? 1 : 0) + (has(self.pool) ? 1 : 0) == 1")
        .message("exactly one of identity.application, identity.userAssignedIdentity or identity.pool must be set")
)]
pub struct IdentityReference {
    /// An Entra application registration, addressed by its client (application) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<ApplicationReference>,

    /// A user-assigned managed identity, addressed by its ARM resource id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_assigned_identity: Option<UserAssignedIdentityReference>,

    /// A FederatedIdentityPool: the controller places the credential on one of its identities
    /// (least used with a free slot) and records the placement in `status.placement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<crate::pool::PoolReference>,

    /// Tenant of the identity (GUID or verified domain). Defaults to the controller's tenant;
    /// the controller must be allowed to authenticate to any other. (A pool's identities carry
    /// their own tenant.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9.-]*$')")
            .message("tenantId must be a GUID or a domain name")
    )]
    pub tenant_id: Option<String>,
}

/// An Entra application registration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationReference {
    /// Client (application) id of the app registration, a GUID.
    #[schemars(length(min = 36, max = 36))]
    #[x_kube(validation = Rule::new(GUID_RULE).message("clientId must be a GUID"))]
    pub client_id: String,
}

/// A user-assigned managed identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UserAssignedIdentityReference {
    /// ARM resource id:
    /// `/subscriptions/<sub>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(
        validation = Rule::new("self.matches('(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\\\\.ManagedIdentity/userAssignedIdentities/[^/]+$')")
            .message("resourceId must look like /subscriptions/<sub>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>")
    )]
    pub resource_id: String,
}

/// What happens to the federated identity credential when its binding is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the credential (only if wif owns it).
    #[default]
    Delete,
    /// Leave the credential in Entra.
    Orphan,
}

/// Observed state of a FederatedIdentityBinding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederatedIdentityBindingStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The federated identity credential as last written or read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialStatus>,

    /// Resolved client id of the identity (what the ServiceAccount is annotated with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,

    /// Resolved tenant of the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,

    /// Where a binding naming a pool is placed, recorded before its credential is created and
    /// kept while the credential works (sticky across restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementStatus>,

    /// `Ready`, `Permitted`, `IdentityResolved`, `CredentialSynced`, `ServiceAccountReady`,
    /// `Propagated`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The identity of a pool a binding is placed on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// Name of the pool.
    pub pool: String,
    /// The identity as the pool lists it (client id or resource id).
    pub identity: String,
    /// The credential on the identity the binding is moving away from (removed from the pool),
    /// deleted once the new one is propagated and the ServiceAccount switched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<CredentialStatus>,
    /// Tenant of the previous identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_tenant_id: Option<String>,
    /// Client id of the previous identity: pods started before the ServiceAccount switched carry
    /// it in `AZURE_CLIENT_ID`, and the previous credential is kept while any of them runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_client_id: Option<String>,
}

/// A federated identity credential, as Entra holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialStatus {
    /// Entra's id: a GUID on Graph, the ARM resource id on ARM.
    pub id: String,
    /// Name of the credential.
    pub name: String,
    /// Where it lives: `applications/<objectId>` (Graph) or the identity's ARM resource id.
    pub parent: String,
    /// Issuer, byte for byte.
    pub issuer: String,
    /// Subject, byte for byte.
    pub subject: String,
    /// Audiences (exactly one).
    pub audiences: Vec<String>,
}

/// Grants the namespaces its `namespaceSelector` selects the right to bind the listed
/// identities. Without a policy granting it, a binding is refused (default deny).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "azure.workload.identity",
    version = "v1alpha1",
    kind = "FederatedIdentityPolicy",
    derive = "PartialEq",
    shortname = "fipol",
    category = "wif",
    doc = "Grants namespaces the right to bind Entra identities with FederatedIdentityBindings (default deny).",
    printcolumn(name = "Applications", type_ = "string", json_path = ".spec.applications"),
    printcolumn(
        name = "Identities",
        type_ = "string",
        json_path = ".spec.userAssignedIdentities"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("size(self.applications) + size(self.userAssignedIdentities) + (has(self.pools) ? size(self.pools) : 0) > 0")
        .message("a policy must grant at least one application, userAssignedIdentity or pool (or '*')")
)]
pub struct FederatedIdentityPolicySpec {
    /// Namespaces the grant applies to. `{}` selects every namespace.
    pub namespace_selector: LabelSelector,

    /// Client ids of Entra applications the selected namespaces may bind; `*` grants every
    /// application.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 36)))]
    #[x_kube(
        validation = Rule::new("self.all(x, x == '*' || x.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'))")
            .message("applications must be client ids (GUIDs) or '*'")
    )]
    pub applications: Vec<PolicyEntry>,

    /// ARM resource ids of user-assigned managed identities the selected namespaces may bind;
    /// `*` grants every identity.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 400)))]
    #[x_kube(
        validation = Rule::new("self.all(x, x == '*' || x.matches('(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\\\\.ManagedIdentity/userAssignedIdentities/[^/]+$'))")
            .message("userAssignedIdentities must be ARM resource ids of user-assigned identities or '*'")
    )]
    pub user_assigned_identities: Vec<PolicyEntry>,

    /// Names of FederatedIdentityPools the selected namespaces may bind; `*` grants every pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    #[x_kube(
        validation = Rule::new("self.all(x, x == '*' || x.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'))")
            .message("pools must be names of FederatedIdentityPools or '*'")
    )]
    pub pools: Vec<PolicyEntry>,
}

/// One granted identity (a client id or resource id) or `*`.
pub type PolicyEntry = String;

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use super::*;

    fn schema_of(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Value {
        serde_json::to_value(&crd.spec.versions[0].schema).unwrap()
    }

    #[test]
    fn binding_crd_has_names_columns_and_status() {
        let crd = FederatedIdentityBinding::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("federatedidentitybindings.azure.workload.identity")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        for want in ["Ready", "Identity", "Credential", "Reason", "Age"] {
            assert!(columns.contains(&want), "{columns:?}");
        }
        assert!(version.subresources.as_ref().unwrap().status.is_some());
    }

    #[test]
    fn binding_schema_carries_cel_rules_and_lengths() {
        let schema = schema_of(&FederatedIdentityBinding::crd()).to_string();
        for needle in [
            "(has(self.application) ? 1 : 0) + (has(self.userAssignedIdentity) ? 1 : 0) + (has(self.pool) ? 1 : 0) == 1",
            "^[a-zA-Z0-9][a-zA-Z0-9_-]{2,119}$",
            "\"maxLength\":120",
            "\"maxLength\":600",
            "x-kubernetes-validations",
        ] {
            assert!(schema.contains(needle), "missing {needle} in {schema}");
        }
    }

    #[test]
    fn policy_crd_is_cluster_scoped() {
        let crd = FederatedIdentityPolicy::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert!(schema_of(&crd).to_string().contains("size(self.applications)"));
    }

    #[test]
    fn binding_defaults_fill_in() {
        let spec: FederatedIdentityBindingSpec = serde_json::from_value(json!({
            "serviceAccountName": "api",
            "identity": {"application": {"clientId": "5e3ce6c0-2b1f-4285-8d4b-75ee78787346"}}
        }))
        .unwrap();
        assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
        assert!(spec.annotate_service_account);
        assert_eq!(spec.audience, None);
        assert_eq!(spec.credential_name, None);
    }

    #[test]
    fn every_property_has_a_description() {
        fn walk(path: &str, v: &Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    let here = format!("{path}.{name}");
                    // metadata and k8s-provided types (conditions, label selectors) are not ours
                    if here == ".metadata"
                        || here.contains("conditions")
                        || here.contains("namespaceSelector.")
                    {
                        continue;
                    }
                    if prop.get("description").is_none() {
                        missing.push(here.clone());
                    }
                    walk(&here, prop, missing);
                    if let Some(items) = prop.get("items") {
                        walk(&here, items, missing);
                    }
                }
            }
        }
        for crd in [
            FederatedIdentityBinding::crd(),
            FederatedIdentityPolicy::crd(),
            crate::pool::FederatedIdentityPool::crd(),
        ] {
            let schema = schema_of(&crd);
            let root = &schema["openAPIV3Schema"];
            let mut missing = Vec::new();
            walk("", &root["properties"]["spec"], &mut missing);
            if let Some(status) = root["properties"].get("status") {
                walk(".status", status, &mut missing);
            }
            assert!(missing.is_empty(), "no description: {missing:?}");
        }
    }
}
