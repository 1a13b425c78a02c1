//! Identities a binding can name, parsed and compared the way Entra and ARM compare them.

use std::fmt;

/// ARM's resource type of a user-assigned managed identity.
pub(crate) const USER_ASSIGNED_IDENTITY_TYPE: &str = "Microsoft.ManagedIdentity/userAssignedIdentities";

/// Whether `s` is a GUID (`8-4-4-4-12` hex digits).
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The subject of a Kubernetes ServiceAccount token: `system:serviceaccount:<ns>:<name>`.
pub fn service_account_subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A parsed user-assigned managed identity resource id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserAssignedIdentityId {
    /// Subscription id (a GUID).
    pub subscription_id: String,
    /// Resource group.
    pub resource_group: String,
    /// Identity name.
    pub name: String,
}

/// Why a resource id is not one of a user-assigned identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed resource id {id:?}: {problem}; expected /subscriptions/<subscription-guid>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"
)]
pub struct ResourceIdError {
    /// The rejected id.
    pub id: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl UserAssignedIdentityId {
    /// Parses `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}`.
    /// Segment names are case-insensitive, as in ARM.
    pub fn parse(id: &str) -> Result<Self, ResourceIdError> {
        let err = |problem| ResourceIdError {
            id: id.to_owned(),
            problem,
        };
        if id.trim() != id || id.is_empty() {
            return Err(err("it is empty or has surrounding whitespace"));
        }
        let Some(rest) = id.strip_prefix('/') else {
            return Err(err("it must start with '/'"));
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let [subs, sub, rgs, rg, providers, namespace, kind, name] = segments.as_slice() else {
            return Err(err("it does not have the 8 segments of an identity id"));
        };
        let literal = |actual: &str, want: &str| actual.eq_ignore_ascii_case(want);
        if !literal(subs, "subscriptions")
            || !literal(rgs, "resourceGroups")
            || !literal(providers, "providers")
        {
            return Err(err(
                "the subscriptions/resourceGroups/providers segments are wrong",
            ));
        }
        if !literal(namespace, "Microsoft.ManagedIdentity") || !literal(kind, "userAssignedIdentities") {
            return Err(err(
                "it is not a Microsoft.ManagedIdentity/userAssignedIdentities resource",
            ));
        }
        if !is_guid(sub) {
            return Err(err("the subscription id is not a GUID"));
        }
        if rg.is_empty() || rg.len() > 90 {
            return Err(err("the resource group name must be 1-90 characters"));
        }
        let name_ok = (3..=128).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if !name_ok {
            return Err(err(
                "the identity name must be 3-128 letters, digits, '-' or '_', starting with a letter or digit",
            ));
        }
        Ok(Self {
            subscription_id: (*sub).to_owned(),
            resource_group: (*rg).to_owned(),
            name: (*name).to_owned(),
        })
    }

    /// The canonical resource id (ARM's casing of the fixed segments).
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/{USER_ASSIGNED_IDENTITY_TYPE}/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }

    /// A case-folded key: ARM resource ids are case-insensitive.
    pub fn key(&self) -> String {
        self.resource_id().to_ascii_lowercase()
    }
}

impl fmt::Display for UserAssignedIdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource_id())
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const SUB: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";

    #[test]
    fn parses_and_canonicalises() {
        let id = UserAssignedIdentityId::parse(&format!(
            "/subscriptions/{SUB}/resourcegroups/Demo/providers/microsoft.managedidentity/userassignedidentities/api"
        ))
        .unwrap();
        assert_eq!(id.resource_group, "Demo");
        assert_eq!(id.name, "api");
        assert_eq!(
            id.resource_id(),
            format!(
                "/subscriptions/{SUB}/resourceGroups/Demo/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api"
            )
        );
        assert_eq!(id.key(), id.resource_id().to_ascii_lowercase());
    }

    #[rstest]
    #[case::empty("", "empty")]
    #[case::relative("subscriptions/x", "start with")]
    #[case::short("/subscriptions/x/resourceGroups/y", "8 segments")]
    #[case::not_guid(
        "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api",
        "not a GUID"
    )]
    #[case::wrong_type(
        "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
        "userAssignedIdentities"
    )]
    #[case::bad_name(
        "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a",
        "3-128"
    )]
    #[case::trailing_slash(
        "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api/",
        "8 segments"
    )]
    fn rejects_malformed_ids(#[case] id: &str, #[case] why: &str) {
        let err = UserAssignedIdentityId::parse(id).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert!(err.to_string().contains("expected /subscriptions/"), "{err}");
    }

    #[test]
    fn guids() {
        assert!(is_guid("5e3ce6c0-2b1f-4285-8d4b-75ee78787346"));
        assert!(is_guid("5E3CE6C0-2B1F-4285-8D4B-75EE78787346"));
        assert!(!is_guid("5e3ce6c0-2b1f-4285-8d4b-75ee7878734"));
        assert!(!is_guid("5e3ce6c0x2b1f-4285-8d4b-75ee78787346"));
    }

    #[test]
    fn subject_format() {
        assert_eq!(
            service_account_subject("ns", "api"),
            "system:serviceaccount:ns:api"
        );
    }
}
