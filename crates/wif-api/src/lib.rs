//! Names, defaults and shared configuration types of wif.
//!
//! Every label, annotation, environment variable, path and default that crosses a crate boundary
//! (or the wire) lives here, so the webhook, the controller, `wif doctor` and the tests agree on
//! them. The values match upstream Azure Workload Identity so existing manifests keep working.
//! This crate does no I/O.

mod cloud;
pub mod crd;
mod identity;
pub mod policy;
pub mod pool;

pub use cloud::{AuthorityHost, Cloud, CloudError};
pub use crd::{
    ApplicationReference, CredentialStatus, DeletionPolicy, FederatedIdentityBinding,
    FederatedIdentityBindingSpec, FederatedIdentityBindingStatus, FederatedIdentityPolicy,
    FederatedIdentityPolicySpec, IdentityReference, PlacementStatus, UserAssignedIdentityReference,
};
pub use identity::{UserAssignedIdentityId, is_guid, service_account_subject};
pub use policy::{PolicyDecision, RequestedIdentity};
pub use pool::{
    FederatedIdentityPool, FederatedIdentityPoolSpec, FederatedIdentityPoolStatus, PoolIdentity,
    PoolIdentityStatus, PoolReference,
};

/// Prefix shared by every label and annotation wif reads.
pub const PREFIX: &str = "azure.workload.identity/";

/// Pod label that opts a pod in; only the exact value [`USE_LABEL_VALUE`] mutates.
pub const USE_LABEL: &str = "azure.workload.identity/use";
/// The value of [`USE_LABEL`] that opts a pod in.
pub const USE_LABEL_VALUE: &str = "true";

/// ServiceAccount annotation naming the Entra application (or managed identity) client id.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// ServiceAccount annotation overriding the cluster's tenant id.
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// Pod or ServiceAccount annotation setting the projected token's `expirationSeconds`.
pub const TOKEN_EXPIRATION_ANNOTATION: &str = "azure.workload.identity/service-account-token-expiration";
/// Pod annotation: `;`-separated container names the webhook leaves untouched.
pub const SKIP_CONTAINERS_ANNOTATION: &str = "azure.workload.identity/skip-containers";
/// Upstream's proxy-sidecar annotation. wif does not inject a proxy; it warns instead.
pub const INJECT_PROXY_SIDECAR_ANNOTATION: &str = "azure.workload.identity/inject-proxy-sidecar";
/// Upstream's proxy port annotation (only meaningful with the proxy sidecar).
pub const PROXY_SIDECAR_PORT_ANNOTATION: &str = "azure.workload.identity/proxy-sidecar-port";

/// Prefix of a ServiceAccount annotation naming a further identity: `client-id.<name>` (name: a
/// lower-case DNS label, see [`is_identity_name`]). Containers get `AZURE_CLIENT_ID_<NAME>`.
pub const NAMED_CLIENT_ID_PREFIX: &str = "azure.workload.identity/client-id.";
/// Prefix of a ServiceAccount annotation giving a named identity's tenant: `tenant-id.<name>`.
/// Containers get `AZURE_TENANT_ID_<NAME>`.
pub const NAMED_TENANT_ID_PREFIX: &str = "azure.workload.identity/tenant-id.";
/// Pod annotation `"<container>=<name>;…"`: the named identity becomes that container's
/// `AZURE_CLIENT_ID` (and `AZURE_TENANT_ID`, if the identity has a tenant-id annotation).
pub const CONTAINER_IDENTITIES_ANNOTATION: &str = "azure.workload.identity/container-identities";
/// Pod or ServiceAccount annotation setting the projected token's audience (pod wins; both win
/// over the install's default).
pub const AUDIENCE_ANNOTATION: &str = "azure.workload.identity/audience";
/// Pod annotation `"<name>=<audience>;…"`: one more ServiceAccount token per entry, projected
/// into the token volume as the file `<name>-token`.
pub const EXTRA_TOKEN_AUDIENCES_ANNOTATION: &str = "azure.workload.identity/extra-token-audiences";
/// Suffix of an extra token's file name in the token volume (`<name>-token`).
pub const EXTRA_TOKEN_FILE_SUFFIX: &str = "-token";
/// Longest audience Entra accepts in a federated identity credential.
pub const MAX_AUDIENCE_LEN: usize = 600;

/// Whether `name` may name an identity or an extra token: a lower-case DNS label (1-63 of
/// `a-z`, `0-9`, `-`, starting and ending with a letter or digit).
pub fn is_identity_name(name: &str) -> bool {
    let b = name.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(ok)
        && b.last().is_some_and(ok)
        && b.iter().all(|c| ok(c) || *c == b'-')
}

/// `AZURE_CLIENT_ID_<NAME>`: the variable carrying a named identity's client id (`-` → `_`).
pub fn named_client_id_env(name: &str) -> String {
    named_env(ENV_CLIENT_ID, name)
}

/// `AZURE_TENANT_ID_<NAME>`: the variable carrying a named identity's tenant id.
pub fn named_tenant_id_env(name: &str) -> String {
    named_env(ENV_TENANT_ID, name)
}

fn named_env(base: &str, name: &str) -> String {
    let mut out = String::with_capacity(base.len() + 1 + name.len());
    out.push_str(base);
    out.push('_');
    out.extend(name.chars().map(|c| match c {
        '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
    out
}

/// Why `audience` cannot be a token audience, if it cannot: Entra refuses whitespace and `*`
/// in a federated credential's audience, and more than [`MAX_AUDIENCE_LEN`] characters.
pub fn audience_problem(audience: &str) -> Option<&'static str> {
    if audience.is_empty() {
        Some("it is empty")
    } else if audience.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace")
    } else if audience.contains('*') {
        Some("it contains '*'")
    } else if audience.chars().count() > MAX_AUDIENCE_LEN {
        Some("it is longer than 600 characters")
    } else {
        None
    }
}

/// Every pod/ServiceAccount annotation and label key under [`PREFIX`] that wif (or upstream)
/// understands; anything else under the prefix earns a "did you mean" warning.
pub const KNOWN_KEYS: &[&str] = &[
    USE_LABEL,
    CLIENT_ID_ANNOTATION,
    TENANT_ID_ANNOTATION,
    TOKEN_EXPIRATION_ANNOTATION,
    SKIP_CONTAINERS_ANNOTATION,
    INJECT_PROXY_SIDECAR_ANNOTATION,
    PROXY_SIDECAR_PORT_ANNOTATION,
    CONTAINER_IDENTITIES_ANNOTATION,
    AUDIENCE_ANNOTATION,
    EXTRA_TOKEN_AUDIENCES_ANNOTATION,
];

/// Environment variable carrying the client id.
pub const ENV_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// Environment variable carrying the tenant id.
pub const ENV_TENANT_ID: &str = "AZURE_TENANT_ID";
/// Environment variable carrying the path of the projected token file.
pub const ENV_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// Environment variable carrying the Entra authority host.
pub const ENV_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";

/// Name of the projected token volume.
pub const TOKEN_VOLUME_NAME: &str = "azure-identity-token";
/// Directory the token volume is mounted at.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/azure/tokens";
/// File name of the token inside the volume (the projection's `path`).
pub const TOKEN_FILE_NAME: &str = "azure-identity-token";
/// Full path of the token file, the value of `AZURE_FEDERATED_TOKEN_FILE`.
pub const TOKEN_FILE_PATH: &str = "/var/run/secrets/azure/tokens/azure-identity-token";

/// Audience of the projected token that Entra's token exchange expects (public cloud).
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Smallest accepted `expirationSeconds` of the projected token.
pub const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// Largest accepted `expirationSeconds` of the projected token.
pub const MAX_TOKEN_EXPIRATION_SECONDS: i64 = 86400;
/// `expirationSeconds` when neither the pod nor the ServiceAccount says otherwise.
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// ServiceAccount used when a pod names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Path of the mutating admission endpoint (same as upstream, so configurations carry over).
pub const MUTATE_PATH: &str = "/mutate-v1-pod";
/// Path of the validating admission endpoint for `FederatedIdentityBinding`s.
pub const VALIDATE_BINDING_PATH: &str = "/validate-federatedidentitybinding";
/// Path of the validating admission endpoint for `FederatedIdentityPolicy`s.
pub const VALIDATE_POLICY_PATH: &str = "/validate-federatedidentitypolicy";
/// Path of the validating admission endpoint for `FederatedIdentityPool`s.
pub const VALIDATE_POOL_PATH: &str = "/validate-federatedidentitypool";

/// Finalizer the controller puts on every `FederatedIdentityBinding` it manages.
pub const BINDING_FINALIZER: &str = "azure.workload.identity/credential-cleanup";

/// What the mutation needs to know about the cluster; independent of any request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutationConfig {
    /// Tenant used when the ServiceAccount has no tenant-id annotation.
    pub tenant_id: String,
    /// Value of `AZURE_AUTHORITY_HOST`.
    pub authority_host: AuthorityHost,
    /// Audience of the projected token.
    pub audience: String,
}

impl MutationConfig {
    /// Configuration for `tenant_id` in `cloud` with the default audience.
    pub fn new(tenant_id: impl Into<String>, cloud: Cloud) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            authority_host: AuthorityHost::from(cloud),
            audience: DEFAULT_AUDIENCE.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_path_is_mount_path_plus_file_name() {
        assert_eq!(TOKEN_FILE_PATH, format!("{TOKEN_MOUNT_PATH}/{TOKEN_FILE_NAME}"));
    }

    #[test]
    fn identity_names_are_lower_case_dns_labels() {
        for ok in ["a", "storage", "read-only", "x1", &"a".repeat(63)] {
            assert!(is_identity_name(ok), "{ok}");
        }
        for bad in ["", "Storage", "-a", "a-", "a_b", "a.b", "a b", &"a".repeat(64)] {
            assert!(!is_identity_name(bad), "{bad}");
        }
    }

    #[test]
    fn named_variables_are_upper_case_with_underscores() {
        assert_eq!(named_client_id_env("read-only"), "AZURE_CLIENT_ID_READ_ONLY");
        assert_eq!(named_tenant_id_env("storage2"), "AZURE_TENANT_ID_STORAGE2");
    }

    #[test]
    fn audiences_follow_entras_rules() {
        assert_eq!(audience_problem("api://AzureADTokenExchange"), None);
        assert_eq!(audience_problem("sts.amazonaws.com"), None);
        assert_eq!(audience_problem(&"a".repeat(600)), None);
        assert!(audience_problem(&"a".repeat(601)).is_some());
        assert!(audience_problem("a b").is_some());
        assert!(audience_problem("a\tb").is_some());
        assert!(audience_problem("api://*").is_some());
        assert!(audience_problem("").is_some());
    }

    #[test]
    fn every_known_key_carries_the_prefix() {
        for key in KNOWN_KEYS {
            assert!(key.starts_with(PREFIX), "{key}");
        }
    }
}
