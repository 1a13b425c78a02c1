//! The cluster's service-account issuer, read from the API server's OIDC discovery document
//! exactly as Entra will compare it: byte for byte, trailing slash and case included.

use kube::Client;
use serde_json::Value;

/// Why the issuer could not be discovered.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The request failed.
    #[error("failed to read /.well-known/openid-configuration from the API server: {0}")]
    Request(#[source] kube::Error),
    /// The document is not what the API server publishes.
    #[error(
        "the API server's /.well-known/openid-configuration has no usable issuer ({0}); set --issuer explicitly"
    )]
    Document(String),
}

/// Reads `issuer` from the API server's `/.well-known/openid-configuration`.
pub(crate) async fn discover(client: &Client) -> Result<String, DiscoveryError> {
    let request = http::Request::get("/.well-known/openid-configuration")
        .body(Vec::new())
        .map_err(|e| DiscoveryError::Document(e.to_string()))?;
    let text = client
        .request_text(request)
        .await
        .map_err(DiscoveryError::Request)?;
    issuer_from_document(&text)
}

/// The `issuer` of a discovery document, unchanged.
pub(crate) fn issuer_from_document(text: &str) -> Result<String, DiscoveryError> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| DiscoveryError::Document(format!("not JSON: {e}")))?;
    let issuer = doc
        .get("issuer")
        .and_then(Value::as_str)
        .ok_or_else(|| DiscoveryError::Document("no issuer field".into()))?;
    check(issuer).map_err(DiscoveryError::Document)?;
    Ok(issuer.to_owned())
}

/// Entra refuses issuers with surrounding whitespace or wildcards and needs an https URL.
pub(crate) fn check(issuer: &str) -> Result<(), String> {
    if issuer.is_empty() || issuer.trim() != issuer {
        return Err(format!(
            "issuer {issuer:?} is empty or has surrounding whitespace"
        ));
    }
    if !issuer.starts_with("https://") {
        return Err(format!("issuer {issuer:?} is not an https:// URL"));
    }
    if issuer.contains('*') || issuer.len() > 600 {
        return Err(format!(
            "issuer {issuer:?} has a wildcard or is longer than 600 characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_is_kept_byte_for_byte() {
        let doc =
            r#"{"issuer":"https://oidc.prod-aks.azure.com/T/I/","jwks_uri":"https://x/openid/v1/jwks"}"#;
        assert_eq!(
            issuer_from_document(doc).unwrap(),
            "https://oidc.prod-aks.azure.com/T/I/"
        );
        let no_slash = r#"{"issuer":"https://127.0.0.1:6443"}"#;
        assert_eq!(issuer_from_document(no_slash).unwrap(), "https://127.0.0.1:6443");
    }

    #[test]
    fn unusable_documents_are_refused() {
        assert!(issuer_from_document("{}").is_err());
        assert!(issuer_from_document("nope").is_err());
        assert!(issuer_from_document(r#"{"issuer":" https://x"}"#).is_err());
        assert!(issuer_from_document(r#"{"issuer":"http://x"}"#).is_err());
    }
}
