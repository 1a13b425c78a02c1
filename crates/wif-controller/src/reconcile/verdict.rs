//! The decisions of a reconcile, as pure functions of what it observed: every check behind
//! `Ready`, every failure with the message that says what to fix, how a credential sync ended
//! and the final [`Verdict`]. No I/O, no clock: each is table-tested below.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use wif_api::{CredentialStatus, FederatedIdentityBindingStatus, PolicyDecision, UserAssignedIdentityId};

use super::target::{Target, parent_from_status};
use crate::{
    azure::{AzureError, CredentialSpec, FederatedCredential, Parent},
    conditions::{self, Check, Observations, State},
    directory::ResolvedIdentity,
    plan::{Blocked, Plan, Step},
    propagation::{ExchangeError, ReadBack},
    reasons::Reason,
    service_account::Applied,
};

/// A failed step: the condition reason and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The condition reason.
    pub reason: Reason,
    /// What to fix.
    pub message: String,
}

impl Failure {
    /// A failure with `reason` and `message`.
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// How an apply ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Everything is `True`: resync later (spread per identity).
    Synced {
        /// The identity's key, which spreads its resyncs.
        parent_key: String,
    },
    /// Something is `Unknown` (waiting): retry with backoff.
    Pending,
    /// Something is `False`.
    Failed(Failure),
}

/// The verdict of a complete set of observations.
pub(crate) fn conclude(obs: &Observations, parent_key: String) -> Verdict {
    if let Some((_, c)) = obs.parts().into_iter().find(|(_, c)| c.state == State::False) {
        return Verdict::Failed(Failure::new(c.reason, c.message.clone()));
    }
    if obs.parts().iter().any(|(_, c)| c.state != State::True) {
        return Verdict::Pending;
    }
    Verdict::Synced { parent_key }
}

/// Marks the checks from `stage` on (0 = identity, 1 = credential, …) as not evaluated.
pub(crate) fn blocked_from(obs: &mut Observations, stage: usize, reason: Reason, why: &str) {
    let message = format!("not evaluated: {why}");
    let checks = [
        &mut obs.identity,
        &mut obs.credential,
        &mut obs.service_account,
        &mut obs.propagated,
    ];
    for check in checks.into_iter().skip(stage) {
        *check = Check::unknown(reason, message.clone());
    }
}

/// `Permitted` from the policy decision.
pub(crate) fn permission(
    decision: PolicyDecision,
    target: &Target,
    namespace: &str,
) -> Result<Check, Failure> {
    match decision {
        PolicyDecision::Granted { policy } => Ok(Check::ok(
            Reason::Granted,
            format!(
                "FederatedIdentityPolicy {policy} grants {} to namespace {namespace}",
                target.describe(),
            ),
        )),
        PolicyDecision::Denied { message } => Err(Failure::new(Reason::NotPermitted, message)),
    }
}

/// `IdentityResolved=True`.
pub(crate) fn resolved(target: &Target, r: &ResolvedIdentity) -> Check {
    Check::ok(
        Reason::Resolved,
        format!(
            "{} resolved: client id {} in tenant {}",
            target.describe(),
            r.client_id,
            r.tenant_id
        ),
    )
}

/// The identity the status recorded, when the binding now resolves to another one (our
/// credential there goes first).
pub(crate) fn moved_from(
    old: &FederatedIdentityBindingStatus,
    now: &Parent,
    default_tenant: &str,
) -> Option<Parent> {
    parent_from_status(old, default_tenant)
        .filter(|previous| !previous.display().eq_ignore_ascii_case(&now.display()))
}

/// No application has the client id.
pub(crate) fn application_not_found(client_id: &str, tenant: &str) -> Failure {
    Failure::new(
        Reason::ApplicationNotFound,
        format!(
            "no application with client id {client_id} in tenant {tenant}: check \
             spec.identity.application.clientId (the Application (client) ID, not the object id) \
             and spec.identity.tenantId, and that the controller's identity may read the application"
        ),
    )
}

/// The user-assigned identity does not exist.
pub(crate) fn identity_not_found(id: &UserAssignedIdentityId) -> Failure {
    Failure::new(
        Reason::IdentityNotFound,
        format!(
            "user-assigned identity {id} does not exist: check spec.identity.userAssignedIdentity.resourceId \
             (subscription, resource group and name) and that the controller may read it"
        ),
    )
}

/// Whether a resolution failure means nothing of ours can be on that identity (cleanup).
pub(crate) fn is_gone(f: &Failure) -> bool {
    matches!(
        f.reason,
        Reason::ApplicationNotFound | Reason::IdentityNotFound | Reason::InvalidResourceId
    )
}

/// Maps a Graph/ARM error to a condition reason and a message saying what to fix.
pub(crate) fn azure_failure(e: &AzureError, doing: &str, on: &str) -> Failure {
    let status = e.status();
    let message = e.api_message().unwrap_or_default().to_ascii_lowercase();
    match e {
        AzureError::Token { tenant, source, .. } => {
            let hint = source.hint().map(|h| format!(" (hint: {h})")).unwrap_or_default();
            Failure::new(
                Reason::AuthenticationFailed,
                format!(
                    "the controller could not get a token for tenant {tenant} to {doing} {on}: {source}{hint}. \
                     Check the controller's own identity, or allow the tenant with --additionally-allowed-tenants"
                ),
            )
        }
        _ if status == Some(401) => Failure::new(
            Reason::AuthenticationFailed,
            format!("{e}: the controller's token was refused; check that its identity exists in that tenant"),
        ),
        _ if status == Some(403) => Failure::new(
            Reason::Forbidden,
            format!(
                "{e}: the controller's identity may not {doing} {on}; grant it Application.ReadWrite.OwnedBy and \
                 ownership of the application (Graph), or the Managed Identity Contributor role on the identity (ARM)"
            ),
        ),
        _ if status == Some(400)
            && (message.contains("maximum") || message.contains("too many federated")) =>
        {
            Failure::new(
                Reason::CapacityExceeded,
                format!(
                    "{e}: the identity holds the maximum number of federated credentials; delete unused ones or bind another identity"
                ),
            )
        }
        _ if (status == Some(400) && e.code() == Some("InvalidFederatedIdentityCredentialValue"))
            || message.contains("issuer and subject combination already exists") =>
        {
            Failure::new(
                Reason::Conflict,
                format!(
                    "{e}: another credential on {on} trusts the same issuer and subject; wif does not modify credentials it does not own"
                ),
            )
        }
        _ if e.is_transient() => Failure::new(
            Reason::AzureUnavailable,
            format!("{e} (retries exhausted; trying again later)"),
        ),
        _ => Failure::new(Reason::AzureError, format!("failed to {doing} {on}: {e}")),
    }
}

/// Why the plan writes nothing, as a failure naming the credential in the way.
pub(crate) fn blocked(blocked: Blocked, on: &str, desired: &CredentialSpec) -> Failure {
    match blocked {
        Blocked::NameTaken {
            id,
            name,
            other_owner,
        } => Failure::new(
            Reason::Conflict,
            format!(
                "credential name {name} on {on} is taken by a credential (id {id}) {} with other values; \
                 wif does not modify it. Set spec.credentialName to another name, or remove that credential",
                if other_owner {
                    "owned by another wif binding or cluster"
                } else {
                    "that wif does not own"
                }
            ),
        ),
        Blocked::IssuerSubjectTaken { id, name } => Failure::new(
            Reason::Conflict,
            format!(
                "credential {name} (id {id}) on {on}, not owned by wif, already trusts issuer {} and subject {}; \
                 Entra allows one credential per issuer and subject. wif leaves it untouched: delete it, or bind \
                 another identity",
                desired.issuer, desired.subject
            ),
        ),
        Blocked::CapacityExceeded { used, limit } => Failure::new(
            Reason::CapacityExceeded,
            format!(
                "{on} already has {used} of its {limit} federated identity credentials; wif evicts nothing. \
                 Delete unused credentials, or bind another application or identity"
            ),
        ),
    }
}

/// How the credential ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Synced {
    /// Created.
    Created,
    /// Corrected in place.
    Updated,
    /// An identical credential became ours.
    Adopted,
    /// Nothing to write.
    InSync,
    /// Served by the credential of the bindings of the same ServiceAccount and audience.
    Shared,
}

/// How carrying out `plan` ends the sync.
pub(crate) fn synced(plan: &Plan) -> Synced {
    if plan.steps.iter().any(|s| matches!(s, Step::Create)) {
        Synced::Created
    } else if plan.adopts {
        Synced::Adopted
    } else if plan.steps.iter().any(|s| matches!(s, Step::Update { .. })) {
        Synced::Updated
    } else {
        Synced::InSync
    }
}

/// The credential as the status records it.
pub(crate) fn credential_status(c: &FederatedCredential, parent: &Parent) -> CredentialStatus {
    CredentialStatus {
        id: c.id.clone(),
        name: c.name.clone(),
        parent: parent.display(),
        issuer: c.issuer.clone(),
        subject: c.subject.clone(),
        audiences: c.audiences.clone(),
    }
}

/// `CredentialSynced=True`; in sync keeps the reason and message of the last write.
pub(crate) fn credential(outcome: Synced, name: &str, on: &str, old: &[Condition]) -> Check {
    match outcome {
        Synced::Created => Check::ok(Reason::Created, format!("created credential {name} on {on}")),
        Synced::Updated => Check::ok(
            Reason::Updated,
            format!("corrected credential {name} on {on} in place"),
        ),
        Synced::Adopted => Check::ok(
            Reason::Adopted,
            format!("adopted the identical credential {name} on {on}"),
        ),
        Synced::Shared => Check::ok(
            Reason::Shared,
            format!("credential {name} on {on} serves every binding of this ServiceAccount and audience"),
        ),
        Synced::InSync => match conditions::find(old, conditions::CREDENTIAL_SYNCED) {
            Some(c) if c.status == "True" => {
                let reason = match Reason::parse(&c.reason) {
                    Some(r @ (Reason::Created | Reason::Updated | Reason::Adopted)) => r,
                    _ => Reason::InSync,
                };
                Check::ok(reason, c.message.clone())
            }
            _ => Check::ok(
                Reason::InSync,
                format!("credential {name} on {on} matches the spec"),
            ),
        },
    }
}

/// `ServiceAccountReady=False`: it does not exist.
pub(crate) fn service_account_missing(ns: &str, sa: &str) -> Check {
    Check::fail(
        Reason::ServiceAccountNotFound,
        format!(
            "ServiceAccount {ns}/{sa} does not exist: create it (the credential already trusts its tokens) \
             or fix spec.serviceAccountName"
        ),
    )
}

/// `ServiceAccountReady=Unknown`: it exists and waits for the credential.
pub(crate) fn service_account_waiting(ns: &str, sa: &str) -> Check {
    Check::unknown(
        Reason::AwaitingCredential,
        format!("ServiceAccount {ns}/{sa} exists; it is annotated once the credential is in place"),
    )
}

/// `ServiceAccountReady=False`: its pods get tokens for another audience than the credential
/// trusts (the audience annotation, or the default when it has none).
pub(crate) fn audience_mismatch(ns: &str, sa: &str, found: &str, audience: &str) -> Check {
    Check::fail(
        Reason::AudienceMismatch,
        format!(
            "ServiceAccount {ns}/{sa}'s pods get tokens for audience {found:?} (annotation {} or the default), \
             but this binding's credential trusts {audience:?}: Entra would answer AADSTS700212; make \
             spec.audience and the annotation agree",
            wif_api::AUDIENCE_ANNOTATION
        ),
    )
}

/// `ServiceAccountReady` from the result of annotating it (`identity_name`: the binding's named
/// identity, whose annotations carry the `.<name>` suffix).
pub(crate) fn service_account(
    applied: &Result<Applied, kube::Error>,
    annotate: bool,
    ns: &str,
    sa: &str,
    r: &ResolvedIdentity,
    identity_name: Option<&str>,
) -> Check {
    let suffix = identity_name.map(|n| format!(".{n}")).unwrap_or_default();
    match applied {
        Ok(Applied::Done) if annotate => Check::ok(
            Reason::Annotated,
            format!(
                "ServiceAccount {ns}/{sa} carries client-id{suffix} {} and tenant-id{suffix} {}",
                r.client_id, r.tenant_id
            ),
        ),
        Ok(Applied::Done) => Check::ok(
            Reason::Exists,
            format!("ServiceAccount {ns}/{sa} exists (not annotated: annotateServiceAccount is false)"),
        ),
        Ok(Applied::Conflict(why)) => Check::fail(
            Reason::AnnotationConflict,
            format!(
                "ServiceAccount {ns}/{sa} already has a different client-id or tenant-id annotation written by \
                 someone else ({why}); remove it, or set annotateServiceAccount: false"
            ),
        ),
        Ok(Applied::Stale) => Check::unknown(
            Reason::ServiceAccountChanged,
            format!("ServiceAccount {ns}/{sa} changed while it was being annotated"),
        ),
        Err(e) => Check::fail(
            Reason::KubernetesApi,
            format!("failed to annotate ServiceAccount {ns}/{sa}: {e}"),
        ),
    }
}

/// The `Propagated=True` of the last reconcile, when nothing changed since (no write, same
/// credential, same generation): propagation is not probed again.
pub(crate) fn propagation_kept(
    old: &FederatedIdentityBindingStatus,
    credential: Option<&CredentialStatus>,
    wrote: bool,
    generation: Option<i64>,
) -> Option<Check> {
    let previous = conditions::find(&old.conditions, conditions::PROPAGATED)?;
    let unchanged = !wrote
        && old.credential.as_ref() == credential
        && previous.status == "True"
        && previous.observed_generation == generation;
    let reason = match Reason::parse(&previous.reason) {
        Some(Reason::Verified) => Reason::Verified,
        _ => Reason::ReadBack,
    };
    unchanged.then(|| Check::ok(reason, previous.message.clone()))
}

/// `Propagated` after reading back: `None` when it read back consistently.
pub(crate) fn read_back(result: &Result<ReadBack, AzureError>) -> Option<Check> {
    match result {
        Ok(ReadBack::Consistent) => None,
        Ok(ReadBack::Inconsistent(detail)) => Some(Check::unknown(
            Reason::ReadBackPending,
            format!("the credential does not read back yet: {detail}"),
        )),
        Err(e) => Some(Check::unknown(
            Reason::ReadBackPending,
            format!("reading the credential back failed: {e}"),
        )),
    }
}

/// `Propagated=True` without an exchange check.
pub(crate) fn read_back_only(count: u32) -> Check {
    Check::ok(
        Reason::ReadBack,
        format!(
            "the credential read back consistently {count} time(s); Entra may take a few minutes more to honour it"
        ),
    )
}

/// `Propagated` from a real token exchange.
pub(crate) fn exchanged(result: &Result<(), ExchangeError>, ns: &str, sa: &str, client_id: &str) -> Check {
    match result {
        Ok(()) => Check::ok(
            Reason::Verified,
            format!(
                "a token of ServiceAccount {ns}/{sa} was exchanged for an access token as client {client_id}"
            ),
        ),
        Err(e) => {
            let code = e.aadsts().map(|c| format!("AADSTS{c}: ")).unwrap_or_default();
            Check::fail(
                Reason::TokenExchangeFailed,
                format!(
                    "{code}{} (a new credential can take minutes to be honoured; retrying with backoff)",
                    e.explain()
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, message: &str) -> AzureError {
        AzureError::Api {
            service: crate::azure::Service::Graph,
            method: "POST".into(),
            path: "/x".into(),
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn azure_errors_become_reasons_that_say_what_to_fix() {
        let cases = [
            (api(403, "Authorization_RequestDenied", ""), Reason::Forbidden),
            (
                api(
                    400,
                    "Request_BadRequest",
                    "Maximum of 20 federated identity credentials can be added",
                ),
                Reason::CapacityExceeded,
            ),
            (
                api(400, "InvalidFederatedIdentityCredentialValue", "dup"),
                Reason::Conflict,
            ),
            (api(503, "ServiceUnavailable", ""), Reason::AzureUnavailable),
            (api(418, "Teapot", ""), Reason::AzureError),
            (
                api(401, "InvalidAuthenticationToken", ""),
                Reason::AuthenticationFailed,
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(azure_failure(&error, "create", "app").reason, reason, "{error}");
        }
        assert!(
            azure_failure(&api(403, "x", ""), "create", "app")
                .message
                .contains("Application.ReadWrite.OwnedBy")
        );
    }

    fn obs(states: [State; 5]) -> Observations {
        let check = |s| Check {
            state: s,
            reason: Reason::NotEvaluated,
            message: "m".into(),
        };
        Observations {
            permitted: check(states[0]),
            identity: check(states[1]),
            credential: check(states[2]),
            service_account: check(states[3]),
            propagated: check(states[4]),
        }
    }

    #[test]
    fn the_verdict_is_failed_on_any_false_then_pending_on_any_unknown() {
        use State::{False, True, Unknown};
        assert_eq!(
            conclude(&obs([True; 5]), "k".into()),
            Verdict::Synced {
                parent_key: "k".into()
            }
        );
        assert_eq!(
            conclude(&obs([True, True, True, True, Unknown]), "k".into()),
            Verdict::Pending
        );
        assert!(matches!(
            conclude(&obs([True, Unknown, False, True, True]), "k".into()),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn blocked_stages_are_unknown_from_the_stage_on() {
        let mut o = obs([State::True; 5]);
        blocked_from(
            &mut o,
            2,
            Reason::AwaitingCredential,
            "the credential is not synced",
        );
        assert_eq!(o.credential.state, State::True);
        assert_eq!(o.service_account.reason, Reason::AwaitingCredential);
        assert_eq!(
            o.propagated.message,
            "not evaluated: the credential is not synced"
        );
    }

    fn condition(type_: &str, status: &str, reason: &str, generation: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: "kept".into(),
            observed_generation: Some(generation),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
        }
    }

    #[test]
    fn an_unchanged_credential_keeps_the_last_write_and_propagation() {
        let old = [condition(conditions::CREDENTIAL_SYNCED, "True", "Created", 1)];
        let kept = credential(Synced::InSync, "c", "applications/o", &old);
        assert_eq!((kept.reason, kept.message.as_str()), (Reason::Created, "kept"));
        let fresh = credential(Synced::InSync, "c", "applications/o", &[]);
        assert_eq!(fresh.reason, Reason::InSync);

        let status = FederatedIdentityBindingStatus {
            conditions: vec![condition(conditions::PROPAGATED, "True", "Verified", 1)],
            ..FederatedIdentityBindingStatus::default()
        };
        assert_eq!(
            propagation_kept(&status, None, false, Some(1)).map(|c| c.reason),
            Some(Reason::Verified)
        );
        assert_eq!(
            propagation_kept(&status, None, true, Some(1)),
            None,
            "a write probes again"
        );
        assert_eq!(
            propagation_kept(&status, None, false, Some(2)),
            None,
            "a new generation too"
        );
    }

    #[test]
    fn plans_end_as_the_write_they_make() {
        let plan = |steps: Vec<Step>, adopts| Plan {
            steps,
            blocked: None,
            adopts,
        };
        assert_eq!(synced(&plan(vec![Step::Create], false)), Synced::Created);
        assert_eq!(synced(&plan(vec![], true)), Synced::Adopted);
        let update = Step::Update {
            id: "i".into(),
            name: "n".into(),
            adopt: false,
        };
        assert_eq!(synced(&plan(vec![update], false)), Synced::Updated);
        assert_eq!(synced(&plan(vec![], false)), Synced::InSync);
    }
}
