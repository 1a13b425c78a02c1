//! [`FederatedIdentityPool`] (cluster-scoped): interchangeable Entra identities, so that more
//! bindings than one identity's 20 federated credentials can share one role.
//!
//! The schema refuses an empty pool, a capacity outside `1..=20` and an identity listed twice
//! (CEL, message naming the field); [`validate_pool`] repeats every check (with case-insensitive
//! comparison of ids) for the validating endpoint and the controller.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{
    crd::{ApplicationReference, UserAssignedIdentityReference},
    identity::{UserAssignedIdentityId, is_guid},
};

/// Entra's (and ARM's) ceiling of federated credentials per identity.
pub(crate) const MAX_CREDENTIALS_PER_IDENTITY: u32 = 20;
/// Percentage of a pool's capacity at which it is `NearlyFull`.
pub const NEARLY_FULL_PERCENT: u32 = 90;

/// CEL: no identity twice.
/// (Exact comparison here keeps the rule's cost low; [`validate_pool`] also folds case.)
const DUPLICATE_RULE: &str = "self.all(x, self.exists_one(y, (has(x.application) && has(y.application) && x.application.clientId == y.application.clientId) || (has(x.userAssignedIdentity) && has(y.userAssignedIdentity) && x.userAssignedIdentity.resourceId == y.userAssignedIdentity.resourceId)))";

/// A pool of interchangeable identities.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "azure.workload.identity",
    version = "v1alpha1",
    kind = "FederatedIdentityPool",
    status = "FederatedIdentityPoolStatus",
    derive = "PartialEq",
    shortname = "fip",
    category = "wif",
    doc = "Interchangeable Entra identities: bindings naming the pool are placed on the least-used identity with a free slot.",
    printcolumn(name = "Identities", type_ = "integer", json_path = ".status.identityCount"),
    printcolumn(
        name = "Used",
        type_ = "integer",
        description = "Federated credentials on the pool's identities (ours and foreign)",
        json_path = ".status.used"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "integer",
        description = "Credentials the pool's usable identities may hold",
        json_path = ".status.capacity"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct FederatedIdentityPoolSpec {
    /// The identities, in order of preference on ties: applications (client ids) and/or
    /// user-assigned identities (resource ids), each optionally in its own tenant. At least one;
    /// none twice.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new(DUPLICATE_RULE).message("spec.identities must not list the same identity twice")
    )]
    pub identities: Vec<PoolIdentity>,

    /// Credentials wif may place on each identity, counting every credential the identity holds
    /// (foreign ones included). 1-20 (Entra's ceiling); lower it to leave room for credentials
    /// made by hand.
    #[serde(default = "default_capacity")]
    #[schemars(range(min = 1, max = 20))]
    pub capacity_per_identity: u32,
}

fn default_capacity() -> u32 {
    MAX_CREDENTIALS_PER_IDENTITY
}

/// One identity of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.application) != has(self.userAssignedIdentity)")
        .message("each of spec.identities must set exactly one of application or userAssignedIdentity")
)]
pub struct PoolIdentity {
    /// An Entra application registration, addressed by its client (application) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<ApplicationReference>,

    /// A user-assigned managed identity, addressed by its ARM resource id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_assigned_identity: Option<UserAssignedIdentityReference>,

    /// Tenant of the identity (GUID or verified domain). Defaults to the controller's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9.-]*$')")
            .message("tenantId must be a GUID or a domain name")
    )]
    pub tenant_id: Option<String>,
}

impl PoolIdentity {
    /// The identity's id as written (client id or resource id), for status and messages.
    pub fn id(&self) -> &str {
        match (&self.application, &self.user_assigned_identity) {
            (Some(a), _) => &a.client_id,
            (None, Some(u)) => &u.resource_id,
            (None, None) => "",
        }
    }

    /// A case-folded key: two entries with the same key are the same identity.
    pub fn key(&self) -> String {
        match (&self.application, &self.user_assigned_identity) {
            (Some(a), _) => format!("app:{}", a.client_id.to_ascii_lowercase()),
            (None, Some(u)) => format!(
                "uami:{}",
                UserAssignedIdentityId::parse(&u.resource_id)
                    .map(|id| id.key())
                    .unwrap_or_else(|_| u.resource_id.to_ascii_lowercase())
            ),
            (None, None) => String::new(),
        }
    }
}

/// A binding's reference to a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PoolReference {
    /// Name of the (cluster-scoped) FederatedIdentityPool.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
            .message("pool.name must be a DNS subdomain: lower-case letters, digits, '-' and '.'")
    )]
    pub name: String,
}

/// Observed state of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederatedIdentityPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of identities in the pool.
    #[serde(default)]
    pub identity_count: u32,
    /// Credentials on the usable identities (ours and foreign).
    #[serde(default)]
    pub used: u32,
    /// Credentials the usable identities may hold (`capacityPerIdentity` × usable identities).
    #[serde(default)]
    pub capacity: u32,
    /// Per identity, in spec order.
    #[serde(default)]
    pub identities: Vec<PoolIdentityStatus>,
    /// `Ready` (at least one identity usable), `NearlyFull` (≥ 90 % used), `Full`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Usage of one identity of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolIdentityStatus {
    /// The identity as the spec lists it (client id or resource id).
    pub identity: String,
    /// Client id (what ServiceAccounts placed here are annotated with), once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Credentials it holds, all of them (from its real list).
    pub used: u32,
    /// Slots left under `capacityPerIdentity`.
    pub free: u32,
    /// Whether bindings may be placed on it.
    pub usable: bool,
    /// `Usable`, or why not (`IdentityNotFound`, `Forbidden`, `AzureError`, …).
    pub reason: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Checks a pool for mistakes the schema may not catch (an older CRD, case differences); each
/// problem is one message naming the field.
pub fn validate_pool(spec: &FederatedIdentityPoolSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.identities.is_empty() {
        problems.push("spec.identities must list at least one identity".to_owned());
    }
    if !(1..=MAX_CREDENTIALS_PER_IDENTITY).contains(&spec.capacity_per_identity) {
        problems.push(format!(
            "spec.capacityPerIdentity {} is outside 1-{MAX_CREDENTIALS_PER_IDENTITY} (Entra allows at most {MAX_CREDENTIALS_PER_IDENTITY} federated credentials per identity)",
            spec.capacity_per_identity
        ));
    }
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (i, entry) in spec.identities.iter().enumerate() {
        match (&entry.application, &entry.user_assigned_identity) {
            (Some(a), None) if !is_guid(&a.client_id) => problems.push(format!(
                "spec.identities[{i}].application.clientId {:?} is not a GUID",
                a.client_id
            )),
            (None, Some(u)) => {
                if let Err(e) = UserAssignedIdentityId::parse(&u.resource_id) {
                    problems.push(format!(
                        "spec.identities[{i}].userAssignedIdentity.resourceId: {e}"
                    ));
                }
            }
            (Some(_), None) => {}
            _ => problems.push(format!(
                "spec.identities[{i}] must set exactly one of application or userAssignedIdentity"
            )),
        }
        let key = entry.key();
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            problems.push(format!(
                "spec.identities[{i}] lists the same identity as spec.identities[{first}] ({})",
                entry.id()
            ));
        } else {
            seen.push((key, i));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::json;

    use super::*;

    const APP: &str = "5e3ce6c0-2b1f-4285-8d4b-75ee78787346";
    const UAMI: &str = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/demo/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api";

    fn spec(v: serde_json::Value) -> FederatedIdentityPoolSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pool_crd_is_cluster_scoped_with_columns_and_bounds() {
        let crd = FederatedIdentityPool::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["fip".to_owned()][..])
        );
        let version = &crd.spec.versions[0];
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Identities", "Used", "Capacity", "Ready", "Age"]);
        let schema = serde_json::to_string(&version.schema).unwrap();
        for needle in [
            "\"minimum\":1",
            "\"maximum\":20",
            "\"minItems\":1",
            "spec.identities must not list the same identity twice",
            "exactly one of application or userAssignedIdentity",
        ] {
            assert!(schema.contains(needle), "missing {needle} in {schema}");
        }
    }

    #[test]
    fn capacity_defaults_to_twenty() {
        let s = spec(json!({"identities": [{"application": {"clientId": APP}}]}));
        assert_eq!(s.capacity_per_identity, 20);
        assert!(validate_pool(&s).is_empty());
    }

    #[test]
    fn validation_names_each_field() {
        let empty = spec(json!({"identities": [], "capacityPerIdentity": 21}));
        let problems = validate_pool(&empty);
        assert!(
            problems.iter().any(|p| p.contains("spec.identities must list")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("spec.capacityPerIdentity 21")),
            "{problems:?}"
        );
        let zero =
            spec(json!({"identities": [{"application": {"clientId": APP}}], "capacityPerIdentity": 0}));
        assert!(validate_pool(&zero)[0].contains("spec.capacityPerIdentity 0"));
        let dup = spec(json!({"identities": [
            {"userAssignedIdentity": {"resourceId": UAMI}},
            {"application": {"clientId": APP}},
            {"application": {"clientId": APP.to_uppercase()}},
            {"userAssignedIdentity": {"resourceId": UAMI.to_lowercase()}},
        ]}));
        let problems = validate_pool(&dup);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("spec.identities[2] lists the same identity as spec.identities[1]"));
        assert!(problems[1].contains("spec.identities[3] lists the same identity as spec.identities[0]"));
        let bad = spec(json!({"identities": [{"application": {"clientId": "x"}}, {}]}));
        let problems = validate_pool(&bad);
        assert!(
            problems[0].contains("spec.identities[0].application.clientId"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("spec.identities[1] must set exactly one"),
            "{problems:?}"
        );
    }
}
