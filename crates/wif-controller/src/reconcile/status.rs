//! What a reconcile publishes: its [`Report`] becomes conditions, a status (written once, only
//! when it changed, with server-side apply) and Events (what was written, and every condition
//! that changed). [`conditions_and_notes`] is the pure part.

use jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType},
};
use serde_json::json;
use wif_api::{CredentialStatus, FederatedIdentityBinding, FederatedIdentityBindingStatus};

use crate::{
    Error,
    conditions::{self, Observations, State},
    context::Context,
    naming,
    reasons::Reason,
};

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Note {
    /// Normal or Warning.
    pub kind: EventType,
    /// The Event's reason.
    pub reason: Reason,
    /// What happened.
    pub note: String,
}

impl Note {
    /// A `Normal` Event.
    pub(crate) fn normal(reason: Reason, note: String) -> Self {
        Self {
            kind: EventType::Normal,
            reason,
            note,
        }
    }

    /// A `Warning` Event.
    pub(crate) fn warning(reason: Reason, note: String) -> Self {
        Self {
            kind: EventType::Warning,
            reason,
            note,
        }
    }
}

/// What one apply observed and did, to be published.
#[derive(Debug)]
pub(crate) struct Report {
    /// The status before this reconcile.
    pub old: FederatedIdentityBindingStatus,
    /// One check per condition behind `Ready`.
    pub obs: Observations,
    /// The credential to record.
    pub credential: Option<CredentialStatus>,
    /// The resolved client id.
    pub client_id: Option<String>,
    /// The resolved tenant.
    pub tenant_id: Option<String>,
    /// Where a pool binding is placed.
    pub placement: Option<wif_api::PlacementStatus>,
    /// Events of what was written.
    pub events: Vec<Note>,
}

impl Report {
    /// Starts from the binding's current status, every condition not evaluated.
    pub(crate) fn new(old: FederatedIdentityBindingStatus) -> Self {
        Self {
            credential: old.credential.clone(),
            client_id: old.client_id.clone(),
            tenant_id: old.tenant_id.clone(),
            placement: old.placement.clone(),
            old,
            obs: Observations::unknown(Reason::NotEvaluated, "not evaluated yet"),
            events: Vec::new(),
        }
    }
}

/// The new status and the Events to publish: the writes, then each condition that changed
/// (except `CredentialSynced=True` after a write, which would repeat the write's Event, and a
/// change whose reason an Event of this reconcile already reports).
pub(crate) fn conditions_and_notes(
    report: Report,
    generation: Option<i64>,
    now: Timestamp,
) -> (FederatedIdentityBindingStatus, Vec<Note>) {
    let conditions = conditions::compute(&report.old.conditions, &report.obs, generation, now);
    let wrote_credential = report.events.iter().any(|n| n.reason.is_credential_write());
    let reported: Vec<Reason> = report.events.iter().map(|n| n.reason).collect();
    let mut notes = report.events;
    for t in conditions::transitions(&report.old.conditions, &report.obs) {
        let written = wrote_credential && t.kind == conditions::CREDENTIAL_SYNCED && t.state == State::True;
        if written || !conditions::worth_an_event(&report.old.conditions, &t) {
            continue;
        }
        if reported.contains(&t.reason) {
            continue;
        }
        let kind = if t.state == State::True {
            EventType::Normal
        } else {
            EventType::Warning
        };
        notes.push(Note {
            kind,
            reason: t.reason,
            note: format!("{} is {}: {}", t.kind, t.state.as_str(), t.message),
        });
    }
    let status = FederatedIdentityBindingStatus {
        observed_generation: generation,
        credential: report.credential,
        client_id: report.client_id,
        tenant_id: report.tenant_id,
        placement: report.placement,
        conditions,
    };
    (status, notes)
}

/// Writes the status (only if it changed) and publishes Events for what changed.
pub(crate) async fn publish(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    report: Report,
) -> Result<(), Error> {
    let old = report.old.clone();
    let (status, notes) = conditions_and_notes(report, b.metadata.generation, Timestamp::now());
    if status != old {
        apply_status(ctx, b, &status).await?;
    }
    publish_events(ctx, b, notes).await;
    Ok(())
}

/// Server-side applies `status` as the binding's whole status (wif's field manager, forced).
pub(crate) async fn apply_status(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    status: &FederatedIdentityBindingStatus,
) -> Result<(), Error> {
    let api: Api<FederatedIdentityBinding> =
        Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": FederatedIdentityBinding::api_version(&()),
        "kind": FederatedIdentityBinding::kind(&()),
        "status": status,
    });
    let started = std::time::Instant::now();
    let written = api
        .patch_status(
            &b.name_any(),
            &PatchParams::apply(naming::FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await;
    ctx.metrics.waited("status_write", started);
    written.map_err(Error::Kube)?;
    Ok(())
}

/// Publishes Events on the binding; a failure is logged, never fatal.
pub(crate) async fn publish_events(ctx: &Context, b: &FederatedIdentityBinding, notes: Vec<Note>) {
    let reference = b.object_ref(&());
    for n in notes {
        let event = Event {
            type_: n.kind,
            reason: n.reason.as_str().to_owned(),
            note: Some(conditions::truncate(&n.note, 1000)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(%error, reason = %n.reason, "failed to publish an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::Check;

    fn all_true() -> Observations {
        Observations {
            permitted: Check::ok(Reason::Granted, "policy p"),
            identity: Check::ok(Reason::Resolved, "app"),
            credential: Check::ok(Reason::Created, "created"),
            service_account: Check::ok(Reason::Annotated, "ok"),
            propagated: Check::ok(Reason::ReadBack, "read back"),
        }
    }

    #[test]
    fn a_write_is_reported_once_and_other_changes_as_conditions() {
        let mut report = Report::new(FederatedIdentityBindingStatus::default());
        report.obs = all_true();
        report
            .events
            .push(Note::normal(Reason::CredentialCreated, "created c".into()));
        let (status, notes) = conditions_and_notes(report, Some(1), Timestamp::UNIX_EPOCH);
        assert_eq!(status.conditions.len(), 6);
        let reasons: Vec<_> = notes.iter().map(|n| n.reason).collect();
        assert_eq!(
            reasons,
            [Reason::CredentialCreated, Reason::Ready],
            "the parts on the way to Ready are conditions, not Events"
        );
        assert!(notes.iter().all(|n| n.kind == EventType::Normal));
    }

    #[test]
    fn a_change_an_event_already_reports_is_not_repeated() {
        let mut first = Report::new(FederatedIdentityBindingStatus::default());
        first.obs = all_true();
        let (status, _) = conditions_and_notes(first, Some(1), Timestamp::UNIX_EPOCH);
        let mut kept = Report::new(status);
        kept.obs = all_true();
        kept.obs.credential = Check::ok(Reason::PreviousKept, "kept for pod p");
        kept.events
            .push(Note::normal(Reason::PreviousKept, "kept for pod p".into()));
        let (_, notes) = conditions_and_notes(kept, Some(1), Timestamp::UNIX_EPOCH);
        let reasons: Vec<_> = notes.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, [Reason::PreviousKept]);
    }

    #[test]
    fn an_unchanged_report_publishes_nothing() {
        let mut first = Report::new(FederatedIdentityBindingStatus::default());
        first.obs = all_true();
        let (status, _) = conditions_and_notes(first, Some(1), Timestamp::UNIX_EPOCH);
        let mut again = Report::new(status.clone());
        again.obs = all_true();
        let (next, notes) = conditions_and_notes(again, Some(1), Timestamp::now());
        assert_eq!(next, status, "lastTransitionTime kept");
        assert!(notes.is_empty());
    }
}
