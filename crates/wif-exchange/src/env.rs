//! The environment variables read by [`WorkloadIdentityCredential::from_env`](crate::WorkloadIdentityCredential::from_env)
//! (the names every Azure SDK uses; the wif webhook injects the first four).

/// Entra tenant id.
pub const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
/// Client id of the app registration or user-assigned managed identity.
pub const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// Path of the projected ServiceAccount token.
pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// Authority host, e.g. `https://login.microsoftonline.com/`.
pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// `;`-separated tenants a request may name besides `AZURE_TENANT_ID` (`*`: any).
pub const AZURE_ADDITIONALLY_ALLOWED_TENANTS: &str = "AZURE_ADDITIONALLY_ALLOWED_TENANTS";
/// `1` or `true`: per-request tenants are ignored.
pub const AZURE_IDENTITY_DISABLE_MULTITENANTAUTH: &str = "AZURE_IDENTITY_DISABLE_MULTITENANTAUTH";
/// PEM file of CA certificates trusted in addition to the system store.
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// `AZURE_CLIENT_ID_<NAME>`: the client id of the ServiceAccount's identity named `name`
/// (annotation `azure.workload.identity/client-id.<name>`): upper-cased, `-` → `_`.
pub fn named_client_id(name: &str) -> String {
    named(AZURE_CLIENT_ID, name)
}

/// `AZURE_TENANT_ID_<NAME>`: the tenant of the identity named `name`, when it has its own.
pub fn named_tenant_id(name: &str) -> String {
    named(AZURE_TENANT_ID, name)
}

fn named(base: &str, name: &str) -> String {
    let suffix: String = name
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("{base}_{suffix}")
}

/// Whether `name` can name an identity: a lower-case DNS label, as the webhook requires.
pub(crate) fn is_identity_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(ok)
        && name.ends_with(ok)
        && name.chars().all(|c| ok(c) || c == '-')
}
