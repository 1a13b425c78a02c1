//! Status conditions, computed purely from what one reconcile observed.
//!
//! `lastTransitionTime` changes only when a condition's status changes (the Kubernetes API
//! conventions); reason and message follow the latest observation. `Ready` is the conjunction of
//! the others and carries the reason and message of the first one that is not `True`, so
//! `kubectl get` shows what to fix.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `Ready`: everything below is `True`.
pub const READY: &str = "Ready";
/// `Permitted`: a FederatedIdentityPolicy grants the identity to the namespace.
pub const PERMITTED: &str = "Permitted";
/// `IdentityResolved`: the application or managed identity exists and is reachable.
pub const IDENTITY_RESOLVED: &str = "IdentityResolved";
/// `CredentialSynced`: the federated identity credential matches the spec.
pub const CREDENTIAL_SYNCED: &str = "CredentialSynced";
/// `ServiceAccountReady`: the ServiceAccount exists (and is annotated when asked).
pub const SERVICE_ACCOUNT_READY: &str = "ServiceAccountReady";
/// `Propagated`: the credential reads back consistently (and a real exchange succeeded).
pub const PROPAGATED: &str = "Propagated";

/// The conditions behind `Ready`, in the order `Ready` reports them.
pub const PARTS: [&str; 5] = [
    PERMITTED,
    IDENTITY_RESOLVED,
    CREDENTIAL_SYNCED,
    SERVICE_ACCOUNT_READY,
    PROPAGATED,
];

/// The state of one condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// `True`.
    True,
    /// `False`.
    False,
    /// `Unknown` (not evaluated, or waiting).
    Unknown,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// One observation: a state, a `PascalCase` reason and a message saying what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The state.
    pub state: State,
    /// A bounded, `PascalCase` reason.
    pub reason: &'static str,
    /// A human-readable message.
    pub message: String,
}

impl Check {
    /// `True` with a reason and message.
    pub fn ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            state: State::True,
            reason,
            message: message.into(),
        }
    }

    /// `False` with a reason and a message saying what to fix.
    pub fn fail(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            state: State::False,
            reason,
            message: message.into(),
        }
    }

    /// `Unknown` with a reason and message.
    pub fn unknown(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            state: State::Unknown,
            reason,
            message: message.into(),
        }
    }
}

/// What one reconcile observed, one [`Check`] per condition behind `Ready`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observations {
    /// `Permitted`.
    pub permitted: Check,
    /// `IdentityResolved`.
    pub identity: Check,
    /// `CredentialSynced`.
    pub credential: Check,
    /// `ServiceAccountReady`.
    pub service_account: Check,
    /// `Propagated`.
    pub propagated: Check,
}

impl Observations {
    /// Every condition `Unknown` with `reason`, e.g. before anything was evaluated.
    pub fn unknown(reason: &'static str, message: &str) -> Self {
        let u = || Check::unknown(reason, message);
        Self {
            permitted: u(),
            identity: u(),
            credential: u(),
            service_account: u(),
            propagated: u(),
        }
    }

    /// The checks with their condition types, in `Ready` order.
    pub fn parts(&self) -> [(&'static str, &Check); 5] {
        [
            (PERMITTED, &self.permitted),
            (IDENTITY_RESOLVED, &self.identity),
            (CREDENTIAL_SYNCED, &self.credential),
            (SERVICE_ACCOUNT_READY, &self.service_account),
            (PROPAGATED, &self.propagated),
        ]
    }

    /// The `Ready` check derived from the others.
    pub fn ready(&self) -> Check {
        match self.parts().into_iter().find(|(_, c)| c.state != State::True) {
            None => Check::ok("Ready", "the credential is in place and honoured"),
            Some((kind, c)) => Check {
                state: if c.state == State::False {
                    State::False
                } else {
                    State::Unknown
                },
                reason: c.reason,
                message: format!("{kind}: {}", c.message),
            },
        }
    }
}

/// The new condition list: `Ready` first, then the parts; `lastTransitionTime` is kept from
/// `old` for every condition whose status did not change.
pub fn compute(
    old: &[Condition],
    observed: &Observations,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let ready = observed.ready();
    std::iter::once((READY, &ready))
        .chain(observed.parts())
        .map(|(kind, check)| {
            let previous = old.iter().find(|c| c.type_ == kind);
            let status = check.state.as_str();
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: kind.to_owned(),
                status: status.to_owned(),
                reason: check.reason.to_owned(),
                message: truncate(&check.message, 1024),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// A condition whose status or reason changed between `old` and `new`: what Events report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Condition type.
    pub kind: String,
    /// New status.
    pub status: String,
    /// New reason.
    pub reason: String,
    /// New message.
    pub message: String,
}

/// The conditions of `new` whose (status, reason) differ from `old`.
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<Transition> {
    new.iter()
        .filter(|n| {
            !old.iter()
                .any(|o| o.type_ == n.type_ && o.status == n.status && o.reason == n.reason)
        })
        .map(|n| Transition {
            kind: n.type_.clone(),
            status: n.status.clone(),
            reason: n.reason.clone(),
            message: n.message.clone(),
        })
        .collect()
}

/// The condition of `kind` in `conditions`.
pub fn find<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == kind)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_true() -> Observations {
        Observations {
            permitted: Check::ok("Granted", "policy p"),
            identity: Check::ok("Resolved", "app"),
            credential: Check::ok("Created", "created"),
            service_account: Check::ok("Annotated", "ok"),
            propagated: Check::ok("Verified", "exchange ok"),
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn ready_when_everything_is_true() {
        let c = compute(&[], &all_true(), Some(3), t(100));
        assert_eq!(c.len(), 6);
        assert_eq!(c[0].type_, READY);
        assert_eq!(c[0].status, "True");
        assert!(c.iter().all(|c| c.observed_generation == Some(3)));
        assert!(c.iter().all(|c| c.last_transition_time == Time(t(100))));
    }

    #[test]
    fn ready_reports_the_first_failure() {
        let mut o = all_true();
        o.service_account = Check::fail("ServiceAccountNotFound", "create ServiceAccount payments/api");
        o.propagated = Check::unknown("AwaitingServiceAccount", "needs the ServiceAccount");
        let ready = &compute(&[], &o, None, t(1))[0];
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "ServiceAccountNotFound");
        assert_eq!(
            ready.message,
            "ServiceAccountReady: create ServiceAccount payments/api"
        );
    }

    #[test]
    fn unknown_parts_make_ready_unknown() {
        let mut o = all_true();
        o.propagated = Check::unknown("ReadBackPending", "waiting");
        assert_eq!(o.ready().state, State::Unknown);
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = compute(&[], &all_true(), Some(1), t(100));
        let mut o = all_true();
        o.credential = Check::ok("InSync", "nothing to do"); // reason changes, status does not
        o.propagated = Check::fail("TokenExchangeFailed", "AADSTS70021");
        let second = compute(&first, &o, Some(2), t(200));
        let by = |k: &str| find(&second, k).unwrap();
        assert_eq!(by(CREDENTIAL_SYNCED).last_transition_time, Time(t(100)));
        assert_eq!(by(CREDENTIAL_SYNCED).reason, "InSync");
        assert_eq!(by(PROPAGATED).last_transition_time, Time(t(200)));
        assert_eq!(by(READY).last_transition_time, Time(t(200)));
        assert_eq!(by(PERMITTED).observed_generation, Some(2));
    }

    #[test]
    fn transitions_list_status_or_reason_changes_only() {
        let first = compute(&[], &all_true(), Some(1), t(100));
        assert_eq!(transitions(&[], &first).len(), 6);
        let same = compute(&first, &all_true(), Some(1), t(150));
        assert!(transitions(&first, &same).is_empty());
        let mut o = all_true();
        o.credential = Check::ok("Updated", "updated in place");
        let changed = compute(&first, &o, Some(2), t(200));
        let tr = transitions(&first, &changed);
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].kind, CREDENTIAL_SYNCED);
        assert_eq!(tr[0].reason, "Updated");
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let s = "é".repeat(1000);
        let cut = truncate(&s, 1024);
        assert!(cut.len() <= 1024);
        assert!(cut.ends_with("..."));
        assert_eq!(truncate("short", 10), "short");
    }
}
