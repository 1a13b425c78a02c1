//! The default-deny rule: which namespaces may bind which identities. One pure function, used by
//! the validating webhook at `kubectl apply` and re-checked by the controller before it writes.

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};

use crate::{
    crd::{FederatedIdentityPolicy, FederatedIdentityPolicySpec, IdentityReference},
    identity::{UserAssignedIdentityId, is_guid},
};

/// The identity a binding asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestedIdentity<'a> {
    /// An application, by client id.
    Application {
        /// Client id.
        client_id: &'a str,
    },
    /// A user-assigned managed identity, by resource id.
    UserAssignedIdentity {
        /// ARM resource id.
        resource_id: &'a str,
    },
    /// A FederatedIdentityPool, by name.
    Pool {
        /// Name of the pool.
        name: &'a str,
    },
}

impl<'a> RequestedIdentity<'a> {
    /// The identity a binding's spec names: exactly one kind, and for an application a GUID
    /// client id. `Err` says what to fix. (A resource id is parsed where it is used, with
    /// [`UserAssignedIdentityId::parse`].)
    pub fn from_spec(identity: &'a IdentityReference) -> Result<Self, String> {
        match (&identity.application, &identity.user_assigned_identity, &identity.pool) {
            (Some(app), None, None) if is_guid(&app.client_id) => Ok(Self::Application {
                client_id: &app.client_id,
            }),
            (Some(app), None, None) => Err(format!(
                "spec.identity.application.clientId {:?} is not a GUID: use the application (client) id of the app registration",
                app.client_id
            )),
            (None, Some(uami), None) => Ok(Self::UserAssignedIdentity {
                resource_id: &uami.resource_id,
            }),
            (None, None, Some(pool)) if !pool.name.is_empty() => Ok(Self::Pool { name: &pool.name }),
            (None, None, Some(_)) => Err("spec.identity.pool.name must name a FederatedIdentityPool".into()),
            _ => Err(
                "set exactly one of spec.identity.application, spec.identity.userAssignedIdentity and spec.identity.pool"
                    .into(),
            ),
        }
    }
}

impl RequestedIdentity<'_> {
    fn describe(&self) -> String {
        match self {
            Self::Application { client_id } => format!("application {client_id}"),
            Self::UserAssignedIdentity { resource_id } => format!("user-assigned identity {resource_id}"),
            Self::Pool { name } => format!("pool {name}"),
        }
    }

    fn field(&self) -> &'static str {
        match self {
            Self::Application { .. } => "spec.applications",
            Self::UserAssignedIdentity { .. } => "spec.userAssignedIdentities",
            Self::Pool { .. } => "spec.pools",
        }
    }

    fn listed_in(&self, spec: &FederatedIdentityPolicySpec) -> bool {
        match self {
            Self::Application { client_id } => spec
                .applications
                .iter()
                .any(|e| e == "*" || e.eq_ignore_ascii_case(client_id)),
            Self::UserAssignedIdentity { resource_id } => {
                let wanted = canonical_resource_key(resource_id);
                spec.user_assigned_identities
                    .iter()
                    .any(|e| e == "*" || canonical_resource_key(e) == wanted)
            }
            Self::Pool { name } => spec.pools.iter().any(|e| e == "*" || e == name),
        }
    }
}

fn canonical_resource_key(id: &str) -> String {
    UserAssignedIdentityId::parse(id)
        .map(|id| id.key())
        .unwrap_or_else(|_| id.to_ascii_lowercase())
}

/// The verdict on one binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyDecision {
    /// Granted by the named policy.
    Granted {
        /// Name of the first policy (by name) that grants it.
        policy: String,
    },
    /// Refused; the message names the gap and how to close it.
    Denied {
        /// Human-readable explanation.
        message: String,
    },
}

impl PolicyDecision {
    /// Whether the binding is granted.
    #[cfg(test)]
    pub(crate) fn is_granted(&self) -> bool {
        matches!(self, Self::Granted { .. })
    }
}

/// Whether a policy's namespaceSelector selects a namespace with these labels; `Err` when the
/// selector is invalid (such a policy selects nothing).
pub fn selects(
    spec: &FederatedIdentityPolicySpec,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let selector = Selector::try_from(spec.namespace_selector.clone()).map_err(|e| e.0)?;
    Ok(selector.matches(namespace_labels))
}

/// Decides whether a binding in `namespace` (with `namespace_labels`) may bind `identity`, given
/// every `FederatedIdentityPolicy` in the cluster. No policy granting it means denied.
pub fn evaluate<'p>(
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    identity: RequestedIdentity<'_>,
    policies: impl IntoIterator<Item = &'p FederatedIdentityPolicy>,
) -> PolicyDecision {
    let mut policies: Vec<&FederatedIdentityPolicy> = policies.into_iter().collect();
    policies.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let name = |p: &FederatedIdentityPolicy| p.metadata.name.clone().unwrap_or_default();

    let mut selecting = Vec::new();
    let mut listing = Vec::new();
    let mut invalid = Vec::new();
    for policy in &policies {
        let selected = match selects(&policy.spec, namespace_labels) {
            Ok(s) => s,
            Err(why) => {
                invalid.push(format!("{} ({why})", name(policy)));
                false
            }
        };
        let listed = identity.listed_in(&policy.spec);
        if selected && listed {
            return PolicyDecision::Granted { policy: name(policy) };
        }
        if selected {
            selecting.push(name(policy));
        }
        if listed {
            listing.push(name(policy));
        }
    }

    let what = identity.describe();
    let mut message = format!("no FederatedIdentityPolicy grants {what} to namespace {namespace}");
    if policies.is_empty() {
        message.push_str(
            ": there are no FederatedIdentityPolicies, and bindings are denied by default; ask a cluster \
             administrator to create one",
        );
    } else {
        if !selecting.is_empty() {
            message.push_str(&format!(
                "; policies selecting this namespace ({}) do not list it in {}",
                selecting.join(", "),
                identity.field()
            ));
        }
        if !listing.is_empty() {
            message.push_str(&format!(
                "; policies listing it ({}) do not select this namespace with their namespaceSelector",
                listing.join(", ")
            ));
        }
        if selecting.is_empty() && listing.is_empty() {
            message.push_str("; no policy selects this namespace or lists this identity");
        }
        if !invalid.is_empty() {
            message.push_str(&format!(
                "; ignored policies with an invalid namespaceSelector: {}",
                invalid.join(", ")
            ));
        }
    }
    message.push_str(&format!(
        ". To allow it, a FederatedIdentityPolicy must both select namespace {namespace} and list the identity in {}",
        identity.field()
    ));
    PolicyDecision::Denied { message }
}

/// Checks a policy for mistakes the schema cannot express; each problem is one message.
pub fn validate_policy(spec: &FederatedIdentityPolicySpec) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(why) = Selector::try_from(spec.namespace_selector.clone()) {
        problems.push(format!("spec.namespaceSelector is invalid: {}", why.0));
    }
    if spec.applications.is_empty() && spec.user_assigned_identities.is_empty() && spec.pools.is_empty() {
        problems.push(
            "the policy grants nothing: list client ids in spec.applications, resource ids in \
             spec.userAssignedIdentities or pool names in spec.pools (or '*')"
                .to_owned(),
        );
    }
    for (i, entry) in spec.pools.iter().enumerate() {
        let ok = entry == "*"
            || (!entry.is_empty()
                && entry.len() <= 253
                && entry
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
        if !ok {
            problems.push(format!(
                "spec.pools[{i}] {entry:?} is neither the name of a FederatedIdentityPool nor '*'"
            ));
        }
    }
    for (i, entry) in spec.applications.iter().enumerate() {
        if entry != "*" && !is_guid(entry) {
            problems.push(format!(
                "spec.applications[{i}] {entry:?} is neither a client id (GUID) nor '*'"
            ));
        }
    }
    for (i, entry) in spec.user_assigned_identities.iter().enumerate() {
        if entry != "*"
            && let Err(e) = UserAssignedIdentityId::parse(entry)
        {
            problems.push(format!("spec.userAssignedIdentities[{i}]: {e}"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use rstest::rstest;

    use super::*;

    const APP: &str = "5e3ce6c0-2b1f-4285-8d4b-75ee78787346";
    const OTHER_APP: &str = "11111111-2222-3333-4444-555555555555";
    const UAMI: &str = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/demo/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api";

    fn policy(name: &str, labels: &[(&str, &str)], apps: &[&str], uamis: &[&str]) -> FederatedIdentityPolicy {
        FederatedIdentityPolicy {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: FederatedIdentityPolicySpec {
                namespace_selector: LabelSelector {
                    match_labels: Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
                    match_expressions: None,
                },
                applications: apps.iter().map(|s| (*s).into()).collect(),
                user_assigned_identities: uamis.iter().map(|s| (*s).into()).collect(),
                pools: Vec::new(),
            },
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    const APP_ID: RequestedIdentity<'static> = RequestedIdentity::Application { client_id: APP };

    #[rstest]
    #[case::no_policy(vec![], APP_ID, false, "there are no FederatedIdentityPolicies")]
    #[case::granted(vec![policy("p", &[("team", "pay")], &[APP], &[])], APP_ID, true, "p")]
    #[case::granted_case_insensitive(
        vec![policy("p", &[("team", "pay")], &[&APP.to_uppercase()], &[])], APP_ID, true, "p")]
    #[case::star(vec![policy("all", &[], &["*"], &[])], APP_ID, true, "all")]
    #[case::selects_but_not_listed(
        vec![policy("p", &[("team", "pay")], &[OTHER_APP], &[])], APP_ID, false,
        "policies selecting this namespace (p) do not list it in spec.applications")]
    #[case::listed_but_not_selected(
        vec![policy("q", &[("team", "other")], &[APP], &[])], APP_ID, false,
        "policies listing it (q) do not select this namespace")]
    #[case::app_grant_is_not_uami_grant(
        vec![policy("p", &[("team", "pay")], &["*"], &[])],
        RequestedIdentity::UserAssignedIdentity { resource_id: UAMI }, false, "spec.userAssignedIdentities")]
    #[case::uami_case_insensitive(
        vec![policy("p", &[("team", "pay")], &[], &[&UAMI.to_lowercase()])],
        RequestedIdentity::UserAssignedIdentity { resource_id: UAMI }, true, "p")]
    #[case::first_by_name_wins(
        vec![policy("z", &[], &["*"], &[]), policy("a", &[("team", "pay")], &[APP], &[])], APP_ID, true, "a")]
    fn decisions(
        #[case] policies: Vec<FederatedIdentityPolicy>,
        #[case] identity: RequestedIdentity<'static>,
        #[case] granted: bool,
        #[case] needle: &str,
    ) {
        let decision = evaluate("payments", &labels(&[("team", "pay")]), identity, &policies);
        match decision {
            PolicyDecision::Granted { policy } => {
                assert!(granted, "unexpectedly granted by {policy}");
                assert_eq!(policy, needle);
            }
            PolicyDecision::Denied { message } => {
                assert!(!granted, "unexpectedly denied: {message}");
                assert!(message.contains(needle), "{message}");
                assert!(message.contains("namespace payments"), "{message}");
            }
        }
    }

    #[test]
    fn pools_are_granted_by_name() {
        let mut p = policy("p", &[("team", "pay")], &["*"], &["*"]);
        let pool = RequestedIdentity::Pool { name: "shared" };
        let PolicyDecision::Denied { message } =
            evaluate("payments", &labels(&[("team", "pay")]), pool, [&p])
        else {
            panic!("an application/identity wildcard must not grant a pool");
        };
        assert!(
            message.contains("pool shared") && message.contains("spec.pools"),
            "{message}"
        );
        p.spec.pools = vec!["shared".into()];
        assert!(evaluate("payments", &labels(&[("team", "pay")]), pool, [&p]).is_granted());
        let other = RequestedIdentity::Pool { name: "other" };
        assert!(!evaluate("payments", &labels(&[("team", "pay")]), other, [&p]).is_granted());
        assert!(!evaluate("dev", &labels(&[("team", "dev")]), pool, [&p]).is_granted());
        p.spec.pools = vec!["*".into()];
        assert!(evaluate("payments", &labels(&[("team", "pay")]), other, [&p]).is_granted());
        p.spec.pools = vec!["Bad_Name".into()];
        assert!(validate_policy(&p.spec)[0].contains("spec.pools[0]"));
        let only_pools = FederatedIdentityPolicySpec {
            pools: vec!["shared".into()],
            ..policy("q", &[], &[], &[]).spec
        };
        assert!(validate_policy(&only_pools).is_empty());
    }

    #[test]
    fn invalid_selector_selects_nothing_and_is_reported() {
        let mut p = policy("broken", &[], &["*"], &[]);
        p.spec.namespace_selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "team".into(),
            operator: "Matches".into(),
            values: None,
        }]);
        let decision = evaluate("payments", &labels(&[]), APP_ID, [&p]);
        let PolicyDecision::Denied { message } = decision else {
            panic!("granted");
        };
        assert!(message.contains("invalid namespaceSelector: broken"), "{message}");
        assert_eq!(validate_policy(&p.spec).len(), 1);
    }

    #[test]
    fn match_expressions_select() {
        let mut p = policy("expr", &[], &[APP], &[]);
        p.spec.namespace_selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "team".into(),
            operator: "In".into(),
            values: Some(vec!["pay".into(), "ops".into()]),
        }]);
        assert!(evaluate("n", &labels(&[("team", "ops")]), APP_ID, [&p]).is_granted());
        assert!(!evaluate("n", &labels(&[("team", "dev")]), APP_ID, [&p]).is_granted());
    }

    #[test]
    fn policy_validation_names_each_bad_entry() {
        let p = policy("p", &[], &["not-a-guid", "*", APP], &["/subscriptions/x", UAMI]);
        let problems = validate_policy(&p.spec);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("spec.applications[0]"));
        assert!(problems[1].contains("spec.userAssignedIdentities[0]"));
        assert!(validate_policy(&policy("ok", &[], &[APP], &[UAMI]).spec).is_empty());
        assert_eq!(validate_policy(&policy("empty", &[], &[], &[]).spec).len(), 1);
    }
}
