//! The controller's errors. [`Error::category`] is the bounded name used in metrics and logs.

use crate::{azure::ClientError, issuer::DiscoveryError, reasons::Reason};

/// `Result` with the controller's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("failed to call the Kubernetes API: {0}")]
    Kube(#[source] kube::Error),

    /// A binding could not be brought to its desired state; the reason is also in its
    /// conditions and Events. Retried with per-binding backoff.
    #[error("binding not reconciled ({reason}): {message}")]
    Degraded {
        /// The condition reason (bounded: a fixed set of `PascalCase` names).
        reason: Reason,
        /// What to fix.
        message: String,
    },

    /// Adding or removing the finalizer, or the apply/cleanup it wraps, failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// The binding has no namespace (not a namespaced object).
    #[error("object has no namespace")]
    NoNamespace,

    /// The watch caches did not sync in time.
    #[error("caches not synced: {0}")]
    NotSynced(&'static str),

    /// The issuer could not be discovered.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),

    /// The cluster identity could not be read.
    #[error("failed to read the cluster identity (uid of namespace kube-system; set --cluster-id): {0}")]
    ClusterId(#[source] kube::Error),

    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),

    /// The controller's own Azure credential could not be configured.
    #[error("failed to configure the controller's workload identity credential: {0}")]
    Credential(#[source] wif_exchange::Error),

    /// The admin listener could not be bound (the message names the address).
    #[error("{0}")]
    Bind(#[source] std::io::Error),
}

impl Error {
    /// A bounded, `PascalCase` name of the error for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApi",
            Self::Degraded { reason, .. } => reason.as_str(),
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                kube::runtime::finalizer::Error::AddFinalizer(_)
                | kube::runtime::finalizer::Error::RemoveFinalizer(_) => "Finalizer",
                _ => "Finalizer",
            },
            Self::NoNamespace => "NoNamespace",
            Self::NotSynced(_) => "NotSynced",
            Self::Discovery(_) => "IssuerDiscovery",
            Self::ClusterId(_) => "ClusterId",
            Self::Config(_) => "Config",
            Self::Client(_) => "HttpClient",
            Self::Credential(_) => "Credential",
            Self::Bind(_) => "Bind",
        }
    }

    /// Whether this is the expected "object was deleted meanwhile" noise.
    pub(crate) fn is_not_found(&self) -> bool {
        let kube_404 = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
        match self {
            Self::Kube(e) => kube_404(e),
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::AddFinalizer(e)
                | kube::runtime::finalizer::Error::RemoveFinalizer(e) => kube_404(e),
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_not_found(),
                _ => false,
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_bounded_names() {
        let e = Error::Degraded {
            reason: Reason::CapacityExceeded,
            message: "identity has 20 of 20".into(),
        };
        assert_eq!(e.category(), "CapacityExceeded");
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(e)));
        assert_eq!(wrapped.category(), "CapacityExceeded");
        assert_eq!(Error::NoNamespace.category(), "NoNamespace");
    }
}
