//! Whole reconciles, in process: the mocked API server of [`fixtures`](super::fixtures) and the
//! emulator as Graph. Each runs in milliseconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use kube::runtime::controller::Action;
use wif_emulator::CredentialSeed;

use super::{fixtures::*, reconcile};
use crate::{Error, conditions, naming, reasons::Reason};

fn condition<'a>(
    b: &'a wif_api::FederatedIdentityBinding,
    kind: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let status = b.status.as_ref().expect("a status");
    conditions::find(&status.conditions, kind).expect("the condition")
}

fn degraded_reason(e: &Error) -> Option<Reason> {
    match e {
        Error::Finalizer(inner) => match inner.as_ref() {
            kube::runtime::finalizer::Error::ApplyFailed(Error::Degraded { reason, .. })
            | kube::runtime::finalizer::Error::CleanupFailed(Error::Degraded { reason, .. }) => Some(*reason),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn a_new_binding_gets_the_finalizer_and_nothing_else() {
    let b = binding("api", APP);
    let h = Harness::start(&b, World::granted()).await;
    let action = reconcile(Arc::new(b), h.ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls = h.api.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].is("PATCH", "/federatedidentitybindings/api"),
        "{calls:?}"
    );
    assert_eq!(
        h.api.binding().metadata.finalizers,
        Some(vec![wif_api::BINDING_FINALIZER.to_owned()])
    );
    let parent = h.app_parent().await;
    assert!(
        h.ctx.azure.list(&parent).await.unwrap().is_empty(),
        "nothing written"
    );
}

#[tokio::test]
async fn a_granted_binding_gets_its_credential_annotations_and_ready() {
    let b = finalized(binding("api", APP));
    let h = Harness::start(&b, World::granted()).await;
    let started = std::time::Instant::now();
    let action = reconcile(Arc::new(b), h.ctx.clone()).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_ne!(action, Action::await_change(), "resynced periodically");

    let credentials = h.ctx.azure.list(&h.app_parent().await).await.unwrap();
    assert_eq!(credentials.len(), 1);
    let c = &credentials[0];
    assert_eq!(c.name, naming::default_credential_name(CLUSTER, NS, "api"));
    assert_eq!(
        (c.issuer.as_str(), c.subject.as_str()),
        (ISSUER, "system:serviceaccount:payments:api")
    );

    let stored = h.api.binding();
    assert_eq!(condition(&stored, conditions::READY).status, "True");
    assert_eq!(
        condition(&stored, conditions::CREDENTIAL_SYNCED).reason,
        "Created"
    );
    assert_eq!(stored.status.as_ref().unwrap().client_id.as_deref(), Some(APP));

    let calls = h.api.calls();
    let sa = calls
        .iter()
        .find(|c| c.is("PATCH", "/serviceaccounts/api"))
        .expect("the ServiceAccount is annotated");
    assert_eq!(
        sa.body["metadata"]["annotations"]["azure.workload.identity/client-id"],
        APP
    );
    let events: Vec<&str> = calls
        .iter()
        .filter(|c| c.is("POST", "/events"))
        .filter_map(|c| c.body["reason"].as_str())
        .collect();
    assert!(events.contains(&"CredentialCreated"), "{events:?}");
    assert!(
        !events.contains(&"Created"),
        "the write is reported once: {events:?}"
    );
}

#[tokio::test]
async fn a_second_reconcile_writes_nothing() {
    let b = finalized(binding("api", APP));
    let h = Harness::start(&b, World::granted()).await;
    reconcile(Arc::new(b), h.ctx.clone()).await.unwrap();
    let after_first = h.api.calls().len();
    reconcile(Arc::new(h.api.binding()), h.ctx.clone()).await.unwrap();
    let second: Vec<_> = h.api.calls().split_off(after_first);
    // The ServiceAccount cache of the harness does not see the first annotation, so the
    // annotation is applied again (idempotent server-side apply); nothing else is written.
    assert!(
        second
            .iter()
            .all(|c| c.is("PATCH", "/serviceaccounts/api") || c.path.contains("/events")),
        "no status write: {second:?}"
    );
    assert!(
        !second.iter().any(|c| c.body["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("Credential"))),
        "no credential write: {second:?}"
    );
    assert_eq!(h.ctx.azure.list(&h.app_parent().await).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_binding_no_policy_grants_writes_nothing_and_says_so() {
    let b = finalized(binding("api", APP));
    let world = World {
        policies: Vec::new(),
        ..World::granted()
    };
    let h = Harness::start(&b, world).await;
    let e = reconcile(Arc::new(b), h.ctx.clone()).await.unwrap_err();
    assert_eq!(degraded_reason(&e), Some(Reason::NotPermitted), "{e}");
    assert!(h.ctx.azure.list(&h.app_parent().await).await.unwrap().is_empty());
    let stored = h.api.binding();
    assert_eq!(condition(&stored, conditions::PERMITTED).status, "False");
    assert_eq!(
        condition(&stored, conditions::CREDENTIAL_SYNCED).reason,
        "NotPermitted"
    );
}

#[tokio::test]
async fn a_credential_wif_does_not_own_is_left_untouched() {
    let b = finalized(binding("api", APP));
    let name = naming::default_credential_name(CLUSTER, NS, "api");
    let foreign = CredentialSeed {
        name: name.clone(),
        issuer: "https://someone.else/".into(),
        subject: "system:serviceaccount:payments:api".into(),
        ..CredentialSeed::default()
    };
    let world = World {
        credentials: vec![foreign],
        ..World::granted()
    };
    let h = Harness::start(&b, world).await;
    let e = reconcile(Arc::new(b), h.ctx.clone()).await.unwrap_err();
    assert_eq!(degraded_reason(&e), Some(Reason::Conflict), "{e}");
    let credentials = h.ctx.azure.list(&h.app_parent().await).await.unwrap();
    assert_eq!(credentials.len(), 1);
    assert_eq!(credentials[0].issuer, "https://someone.else/", "not modified");
    let stored = h.api.binding();
    assert_eq!(condition(&stored, conditions::READY).reason, "Conflict");
    assert!(
        !h.api
            .calls()
            .iter()
            .any(|c| c.is("PATCH", "/serviceaccounts/api")),
        "pods are not pointed at an identity that does not trust them"
    );
}

#[tokio::test]
async fn an_unknown_application_is_a_condition_that_says_what_to_fix() {
    let other = "00000000-0000-4000-8000-000000000001";
    let b = finalized(binding("api", other));
    let world = World {
        policies: vec![policy(other)],
        ..World::granted()
    };
    let h = Harness::start(&b, world).await;
    let e = reconcile(Arc::new(b), h.ctx.clone()).await.unwrap_err();
    assert_eq!(degraded_reason(&e), Some(Reason::ApplicationNotFound), "{e}");
    let stored = h.api.binding();
    let resolved = condition(&stored, conditions::IDENTITY_RESOLVED);
    assert_eq!(resolved.status, "False");
    assert!(
        resolved.message.contains("spec.identity.application.clientId"),
        "{}",
        resolved.message
    );
}

#[tokio::test]
async fn deleting_a_binding_deletes_its_credential_and_releases_the_finalizer() {
    let b = finalized(binding("api", APP));
    let h = Harness::start(&b, World::granted()).await;
    reconcile(Arc::new(b), h.ctx.clone()).await.unwrap();
    assert_eq!(h.ctx.azure.list(&h.app_parent().await).await.unwrap().len(), 1);
    let gone = deleted(h.api.binding());
    let action = reconcile(Arc::new(gone), h.ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(h.ctx.azure.list(&h.app_parent().await).await.unwrap().is_empty());
    assert_eq!(
        h.api.binding().metadata.finalizers,
        Some(vec![]),
        "finalizer removed"
    );
}
