//! Status conditions, computed purely from what one reconcile observed.
//!
//! `lastTransitionTime` changes only when a condition's status changes (the Kubernetes API
//! conventions); reason and message follow the latest observation. `Ready` is the conjunction of
//! the others and carries the reason and message of the first one that is not `True`, so
//! `kubectl get` shows what to fix.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::reasons::Reason;

/// `Ready`: everything below is `True`.
pub(crate) const READY: &str = "Ready";
/// `Permitted`: a FederatedIdentityPolicy grants the identity to the namespace.
pub(crate) const PERMITTED: &str = "Permitted";
/// `IdentityResolved`: the application or managed identity exists and is reachable.
pub(crate) const IDENTITY_RESOLVED: &str = "IdentityResolved";
/// `CredentialSynced`: the federated identity credential matches the spec.
pub(crate) const CREDENTIAL_SYNCED: &str = "CredentialSynced";
/// `ServiceAccountReady`: the ServiceAccount exists (and is annotated when asked).
pub(crate) const SERVICE_ACCOUNT_READY: &str = "ServiceAccountReady";
/// `Propagated`: the credential reads back consistently (and a real exchange succeeded).
pub(crate) const PROPAGATED: &str = "Propagated";

/// The state of one condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// `True`.
    True,
    /// `False`.
    False,
    /// `Unknown` (not evaluated, or waiting).
    Unknown,
}

impl State {
    /// `True`, `False` or `Unknown`, as in a condition.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// One observation: a state, a `PascalCase` reason and a message saying what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    /// The state.
    pub state: State,
    /// A bounded, `PascalCase` reason.
    pub reason: Reason,
    /// A human-readable message.
    pub message: String,
}

impl Check {
    /// `True` with a reason and message.
    pub(crate) fn ok(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            state: State::True,
            reason,
            message: message.into(),
        }
    }

    /// `False` with a reason and a message saying what to fix.
    pub(crate) fn fail(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            state: State::False,
            reason,
            message: message.into(),
        }
    }

    /// `Unknown` with a reason and message.
    pub(crate) fn unknown(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            state: State::Unknown,
            reason,
            message: message.into(),
        }
    }
}

/// What one reconcile observed, one [`Check`] per condition behind `Ready`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observations {
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
    pub(crate) fn unknown(reason: Reason, message: &str) -> Self {
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
    pub(crate) fn parts(&self) -> [(&'static str, &Check); 5] {
        [
            (PERMITTED, &self.permitted),
            (IDENTITY_RESOLVED, &self.identity),
            (CREDENTIAL_SYNCED, &self.credential),
            (SERVICE_ACCOUNT_READY, &self.service_account),
            (PROPAGATED, &self.propagated),
        ]
    }

    /// The `Ready` check derived from the others.
    pub(crate) fn ready(&self) -> Check {
        match self.parts().into_iter().find(|(_, c)| c.state != State::True) {
            None => Check::ok(Reason::Ready, "the credential is in place and honoured"),
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

/// `Ready` and the parts, in the order of a status.
fn checks(observed: &Observations) -> [(&'static str, Check); 6] {
    let [a, b, c, d, e] = observed.parts();
    [
        (READY, observed.ready()),
        (a.0, a.1.clone()),
        (b.0, b.1.clone()),
        (c.0, c.1.clone()),
        (d.0, d.1.clone()),
        (e.0, e.1.clone()),
    ]
}

/// The new condition list: `Ready` first, then the parts; `lastTransitionTime` is kept from
/// `old` for every condition whose status did not change.
pub(crate) fn compute(
    old: &[Condition],
    observed: &Observations,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    checks(observed)
        .into_iter()
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
                reason: check.reason.as_str().to_owned(),
                message: truncate(&check.message, 1024),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// A condition whose status or reason changed: what Events report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    /// Condition type.
    pub kind: &'static str,
    /// New state.
    pub state: State,
    /// New reason.
    pub reason: Reason,
    /// New message.
    pub message: String,
}

/// The conditions `observed` yields whose (status, reason) differ from `old`.
pub(crate) fn transitions(old: &[Condition], observed: &Observations) -> Vec<Transition> {
    checks(observed)
        .into_iter()
        .filter(|(kind, n)| {
            !old.iter()
                .any(|o| o.type_ == *kind && o.status == n.state.as_str() && o.reason == n.reason.as_str())
        })
        .map(|(kind, n)| Transition {
            kind,
            state: n.state,
            reason: n.reason,
            message: truncate(&n.message, 1024),
        })
        .collect()
}

/// Whether a transition is worth an Event. Problems are (`False`), and so are a recovery from
/// one, losing a `True`, and the binding becoming `Ready`. A part that turns `True` on the way to
/// `Ready` is not: the writes that made it so have their own Events, and a converging binding
/// would otherwise publish one Event per condition (tens of thousands for 10,000 bindings).
pub(crate) fn worth_an_event(old: &[Condition], t: &Transition) -> bool {
    let was = find(old, t.kind).map(|c| c.status.as_str());
    match t.state {
        State::False => true,
        State::Unknown => was == Some("True"),
        State::True => t.kind == READY || was == Some("False"),
    }
}

/// The condition of `kind` in `conditions`.
pub(crate) fn find<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == kind)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
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
            permitted: Check::ok(Reason::Granted, "policy p"),
            identity: Check::ok(Reason::Resolved, "app"),
            credential: Check::ok(Reason::Created, "created"),
            service_account: Check::ok(Reason::Annotated, "ok"),
            propagated: Check::ok(Reason::Verified, "exchange ok"),
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
        o.service_account = Check::fail(
            Reason::ServiceAccountNotFound,
            "create ServiceAccount payments/api",
        );
        o.propagated = Check::unknown(Reason::AwaitingServiceAccount, "needs the ServiceAccount");
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
        o.propagated = Check::unknown(Reason::ReadBackPending, "waiting");
        assert_eq!(o.ready().state, State::Unknown);
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = compute(&[], &all_true(), Some(1), t(100));
        let mut o = all_true();
        o.credential = Check::ok(Reason::InSync, "nothing to do"); // reason changes, status does not
        o.propagated = Check::fail(Reason::TokenExchangeFailed, "AADSTS70021");
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
        assert_eq!(transitions(&[], &all_true()).len(), 6);
        assert!(transitions(&first, &all_true()).is_empty());
        let mut o = all_true();
        o.credential = Check::ok(Reason::Updated, "updated in place");
        let tr = transitions(&first, &o);
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].kind, CREDENTIAL_SYNCED);
        assert_eq!(tr[0].reason, Reason::Updated);
    }

    #[rstest::rstest]
    #[case::a_problem(None, State::False, PERMITTED, true)]
    #[case::a_new_problem_reason(Some("False"), State::False, PERMITTED, true)]
    #[case::progress(None, State::Unknown, PROPAGATED, false)]
    #[case::progress_after_a_problem(Some("False"), State::Unknown, PROPAGATED, false)]
    #[case::lost(Some("True"), State::Unknown, PROPAGATED, true)]
    #[case::a_part_on_the_way(None, State::True, PERMITTED, false)]
    #[case::a_part_after_waiting(Some("Unknown"), State::True, PROPAGATED, false)]
    #[case::a_recovery(Some("False"), State::True, PERMITTED, true)]
    #[case::ready(None, State::True, READY, true)]
    #[case::ready_again(Some("Unknown"), State::True, READY, true)]
    fn events_report_problems_recoveries_and_readiness(
        #[case] was: Option<&str>,
        #[case] state: State,
        #[case] kind: &'static str,
        #[case] worth: bool,
    ) {
        let old: Vec<Condition> = was
            .map(|status| Condition {
                type_: kind.to_owned(),
                status: status.to_owned(),
                reason: "Before".to_owned(),
                message: String::new(),
                last_transition_time: Time(t(0)),
                observed_generation: None,
            })
            .into_iter()
            .collect();
        let t = Transition {
            kind,
            state,
            reason: Reason::Granted,
            message: String::new(),
        };
        assert_eq!(worth_an_event(&old, &t), worth);
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
