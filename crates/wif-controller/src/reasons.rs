//! Every reason the controller writes, spelled once: the reasons of status conditions, of
//! Events, and the bounded categories of [`Error::Degraded`](crate::Error::Degraded).
//!
//! A [`Reason`] is `PascalCase` and drawn from this fixed set, so it is safe as a metric label
//! and as an Event reason; nothing else turns strings into reasons.

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])+ $name:ident ),+ $(,)?) => {
        /// A condition or Event reason.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $(#[doc = $doc])+ $name, )+
        }

        impl Reason {
            /// Every reason.
            pub const ALL: &[Reason] = &[$(Reason::$name),+];

            /// The `PascalCase` name written to conditions and Events.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)+
                }
            }
        }
    };
}

reasons! {
    // --- Ready, and conditions not evaluated yet
    /// Every condition behind `Ready` is `True`.
    Ready,
    /// Nothing was evaluated yet.
    NotEvaluated,
    // --- Permitted
    /// A FederatedIdentityPolicy grants the identity to the namespace.
    Granted,
    /// No policy grants the identity to the namespace.
    NotPermitted,
    /// The spec's identity is malformed.
    InvalidSpec,
    // --- IdentityResolved
    /// The identity exists.
    Resolved,
    /// No application has the spec's client id.
    ApplicationNotFound,
    /// The user-assigned identity does not exist.
    IdentityNotFound,
    /// The user-assigned identity's resource id is malformed.
    InvalidResourceId,
    /// Later conditions wait for the identity.
    IdentityNotResolved,
    /// The binding's credential is placed on an identity of its pool.
    Placed,
    /// No identity of the binding's pool has a free slot.
    PoolFull,
    /// The binding names a pool that does not exist.
    PoolNotFound,
    /// The binding's pool is malformed.
    InvalidPool,
    /// The binding moves to another identity of its pool (its identity left the pool).
    Moving,
    /// The controller could not authenticate to Graph or ARM.
    AuthenticationFailed,
    /// The controller's identity may not do what the binding needs.
    Forbidden,
    // --- CredentialSynced
    /// The credential was created.
    Created,
    /// The credential was corrected in place.
    Updated,
    /// An identical credential became ours.
    Adopted,
    /// The credential already matched the spec.
    InSync,
    /// One credential serves the bindings of one ServiceAccount and audience.
    Shared,
    /// The credential is in place; the one on the identity the binding moved away from is kept
    /// while pods started before the move still present that identity's client id.
    PreviousKept,
    /// Another credential holds the name, or the issuer and subject.
    Conflict,
    /// The identity holds the maximum number of credentials.
    CapacityExceeded,
    /// Graph or ARM kept failing transiently.
    AzureUnavailable,
    /// Graph or ARM refused the request.
    AzureError,
    /// This replica is not (any more) the leader.
    NotLeader,
    /// Later conditions wait for the credential.
    AwaitingCredential,
    // --- ServiceAccountReady
    /// The ServiceAccount carries the identity's annotations.
    Annotated,
    /// The ServiceAccount exists (annotations not asked for).
    Exists,
    /// The ServiceAccount does not exist.
    ServiceAccountNotFound,
    /// Someone else wrote different identity annotations.
    AnnotationConflict,
    /// The ServiceAccount's audience annotation (or the default) differs from the binding's.
    AudienceMismatch,
    /// The ServiceAccount was replaced while it was annotated.
    ServiceAccountChanged,
    /// A Kubernetes API call failed.
    KubernetesApi,
    // --- Propagated
    /// The credential read back consistently.
    ReadBack,
    /// The credential does not read back (yet).
    ReadBackPending,
    /// A real token exchange succeeded.
    Verified,
    /// The token exchange failed.
    TokenExchangeFailed,
    /// The exchange waits for the ServiceAccount.
    AwaitingServiceAccount,
    // --- Events only
    /// Event: a credential was created.
    CredentialCreated,
    /// Event: a credential was corrected.
    CredentialUpdated,
    /// Event: an identical credential became ours.
    CredentialAdopted,
    /// Event: a credential of ours was deleted.
    CredentialDeleted,
    /// Event: a credential of a binding that went is kept for another binding of the same
    /// ServiceAccount and audience.
    CredentialKept,
    /// Event: the credential of a binding no longer permitted was deleted.
    CredentialRevoked,
    /// Event: the credential was left in place (deletionPolicy Orphan).
    CredentialOrphaned,
    /// Event: revoking the credential failed.
    RevocationFailed,
    /// Event: cleaning up a deleted binding failed.
    CleanupFailed,
    /// Event: the ServiceAccount was annotated.
    ServiceAccountAnnotated,
    /// Event: the annotations of a deleted binding were removed.
    ServiceAccountReleased,
    // --- Pools
    /// Pool: at least one identity is usable and has a free slot.
    PoolReady,
    /// Pool: no identity could be read.
    NoUsableIdentity,
    /// Pool: 90 % of its capacity is used.
    PoolNearlyFull,
    /// Pool: below 90 % of its capacity.
    PoolHasRoom,
    /// Pool identity: bindings may be placed on it.
    Usable,
    /// Event: a binding's credential moved to another identity of its pool.
    PlacementMoved,
}

impl Reason {
    /// The reason named `s`, if it is one of ours (a condition read back from a status).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// Whether an Event with this reason reports a write to a federated credential.
    pub fn is_credential_write(self) -> bool {
        self.as_str().starts_with("Credential")
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_pascal_case_and_parses_back() {
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(s.chars().next().is_some_and(|c| c.is_ascii_uppercase()), "{s}");
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
            assert_eq!(Reason::parse(s), Some(*r));
        }
        assert_eq!(Reason::parse("whatever"), None);
    }

    #[test]
    fn credential_writes_are_the_credential_events() {
        assert!(Reason::CredentialCreated.is_credential_write());
        assert!(Reason::CredentialRevoked.is_credential_write());
        assert!(!Reason::Created.is_credential_write());
        assert!(!Reason::ServiceAccountAnnotated.is_credential_write());
    }
}
