//! Whole reconciles of bindings naming a pool, in process (mocked API server, emulator).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use wif_emulator::CredentialSeed;

use super::{fixtures::*, reconcile};
use crate::{Error, conditions, naming, reasons::Reason};

fn foreign(name: &str, subject: &str) -> CredentialSeed {
    CredentialSeed {
        name: name.into(),
        issuer: "https://someone.else/".into(),
        subject: subject.into(),
        ..CredentialSeed::default()
    }
}

fn pool_world(capacity: u32) -> World {
    World {
        policies: vec![pool_policy("shared")],
        service_accounts: vec![service_account(NS, SA)],
        pools: vec![pool("shared", &[APP, APP2], capacity)],
        ..World::default()
    }
}

fn degraded_reason(e: &Error) -> Option<Reason> {
    match e {
        Error::Finalizer(inner) => match inner.as_ref() {
            kube::runtime::finalizer::Error::ApplyFailed(Error::Degraded { reason, .. }) => Some(*reason),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn a_pool_binding_lands_on_the_least_used_identity_recorded_before_the_write() {
    let mut world = pool_world(20);
    world.credentials = vec![foreign("other-1", "system:serviceaccount:x:y")];
    let b = finalized(pool_binding("api", "shared"));
    let h = Harness::start(&b, world).await;
    reconcile(Arc::new(b), h.ctx.clone()).await.unwrap();

    assert_eq!(h.credentials_on(APP).await.len(), 1, "APP untouched");
    let on_app2 = h.credentials_on(APP2).await;
    assert_eq!(on_app2.len(), 1);
    assert_eq!(
        on_app2[0].name,
        naming::default_credential_name(CLUSTER, NS, "api")
    );

    let stored = h.api.binding();
    let status = stored.status.as_ref().unwrap();
    assert_eq!(reason(&stored, conditions::READY), "Ready");
    assert_eq!(status.client_id.as_deref(), Some(APP2));
    let placement = status.placement.as_ref().expect("placement recorded");
    assert_eq!(
        (placement.pool.as_str(), placement.identity.as_str()),
        ("shared", APP2)
    );

    // The first status write carries the placement and no credential yet.
    let calls = h.api.calls();
    let first_status = calls
        .iter()
        .find(|c| c.is("PATCH", "/federatedidentitybindings/api/status"))
        .expect("a status write");
    assert_eq!(first_status.body["status"]["placement"]["identity"], APP2);
    assert!(
        first_status.body["status"].get("credential").is_none(),
        "{:?}",
        first_status.body
    );
    // The ServiceAccount gets the chosen identity's client id.
    assert!(
        calls
            .iter()
            .any(|c| c.path.contains("/serviceaccounts/") && c.body.to_string().contains(APP2)),
        "{calls:?}"
    );

    // Re-evaluated: kept (sticky), nothing written.
    let before = h.credentials_on(APP2).await;
    reconcile(Arc::new(h.api.binding()), h.ctx.clone()).await.unwrap();
    assert_eq!(h.credentials_on(APP2).await, before);
    assert_eq!(h.api.binding().status.unwrap().placement.unwrap().identity, APP2);
}

#[tokio::test]
async fn a_full_pool_says_pool_full_and_writes_nothing() {
    let mut world = pool_world(1);
    world.credentials = vec![foreign("other-1", "system:serviceaccount:x:y")];
    world.credentials2 = vec![foreign("other-2", "system:serviceaccount:x:z")];
    let b = finalized(pool_binding("api", "shared"));
    let h = Harness::start(&b, world).await;
    let err = reconcile(Arc::new(b), h.ctx.clone()).await.unwrap_err();
    assert_eq!(degraded_reason(&err), Some(Reason::PoolFull), "{err}");
    let stored = h.api.binding();
    assert_eq!(reason(&stored, conditions::READY), "PoolFull");
    assert!(stored.status.unwrap().placement.is_none());
    for app in [APP, APP2] {
        assert_eq!(h.credentials_on(app).await.len(), 1);
    }
}

#[tokio::test]
async fn a_credential_of_ours_left_by_a_crash_is_adopted_not_duplicated() {
    let mut world = pool_world(20);
    // Ours (marker in the description) on APP2, though the status recorded nothing.
    world.credentials2 = vec![CredentialSeed {
        name: naming::default_credential_name(CLUSTER, NS, "api"),
        issuer: ISSUER.into(),
        subject: format!("system:serviceaccount:{NS}:{SA}"),
        description: Some(naming::description(CLUSTER, NS, "api")),
        ..CredentialSeed::default()
    }];
    let b = finalized(pool_binding("api", "shared"));
    let h = Harness::start(&b, world).await;
    reconcile(Arc::new(b), h.ctx.clone()).await.unwrap();
    assert!(h.credentials_on(APP).await.is_empty(), "no duplicate");
    assert_eq!(h.credentials_on(APP2).await.len(), 1);
    let status = h.api.binding().status.unwrap();
    assert_eq!(status.placement.unwrap().identity, APP2);
}

#[tokio::test]
async fn an_identity_removed_from_the_pool_moves_its_binding_then_deletes_the_old_credential() {
    let mut world = pool_world(20);
    world.pools = vec![pool("shared", &[APP], 20)];
    let b = finalized(pool_binding("api", "shared"));
    let h = Harness::start(&b, world).await;
    reconcile(Arc::new(b), h.ctx.clone()).await.unwrap();
    assert_eq!(h.api.binding().status.unwrap().client_id.as_deref(), Some(APP));

    let old = h.credentials_on(APP).await;
    assert_eq!(old.len(), 1);

    // APP leaves the pool, APP2 joins.
    let mut h = h;
    h.set_pool(pool("shared", &[APP2], 20));
    reconcile(Arc::new(h.api.binding()), h.ctx.clone()).await.unwrap();
    let new = h.credentials_on(APP2).await;
    assert_eq!(new.len(), 1, "the new credential");
    assert!(
        h.credentials_on(APP).await.is_empty(),
        "the old one is deleted once the new one is propagated"
    );
    let stored = h.api.binding();
    let status = stored.status.as_ref().unwrap();
    assert_eq!(status.client_id.as_deref(), Some(APP2));
    let placement = status.placement.as_ref().unwrap();
    assert_eq!(placement.identity, APP2);
    assert!(placement.previous.is_none());
    assert_eq!(reason(&stored, conditions::READY), "Ready");
    // The ServiceAccount switched only after the new credential was propagated, then the
    // old credential went: the recorded placement kept the old credential until then.
    let calls = h.api.calls();
    let moving = calls
        .iter()
        .filter(|c| c.is("PATCH", "/federatedidentitybindings/api/status"))
        .find(|c| c.body["status"]["placement"]["identity"] == APP2)
        .expect("the new placement recorded");
    assert_eq!(
        moving.body["status"]["placement"]["previous"]["parent"],
        old_parent_display(&h).await
    );
}

async fn old_parent_display(h: &Harness) -> String {
    h.parent_of(APP).await.display()
}

/// A pod of the binding's ServiceAccount as the webhook left it: labelled, with `client_id` in
/// `AZURE_CLIENT_ID`, in `phase`.
fn mutated_pod(name: &str, client_id: &str, phase: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {wif_api::USE_LABEL: wif_api::USE_LABEL_VALUE}},
        "spec": {"serviceAccountName": SA, "containers": [{"name": "app", "image": "app",
            "env": [{"name": "AZURE_CLIENT_ID", "value": client_id}]}]},
        "status": {"phase": phase}
    })
}

fn kept_events(h: &Harness) -> usize {
    h.api
        .calls()
        .iter()
        .filter(|c| c.path.contains("/events") && c.body["reason"] == "PreviousKept")
        .count()
}

#[tokio::test]
async fn the_old_credential_stays_while_a_pod_still_presents_the_old_client_id() {
    let mut world = pool_world(20);
    world.pools = vec![pool("shared", &[APP], 20)];
    let b = finalized(pool_binding("api", "shared"));
    let mut h = Harness::start(&b, world).await;
    reconcile(Arc::new(b), h.ctx.clone()).await.unwrap();
    assert_eq!(h.api.binding().status.unwrap().client_id.as_deref(), Some(APP));
    // A pod started before the move: the webhook gave it APP's client id.
    h.api.set_pods(vec![
        mutated_pod("api-old", APP, "Running"),
        mutated_pod("api-done", APP, "Succeeded"),
    ]);

    // APP leaves the pool: the binding moves, the ServiceAccount switches, the old credential
    // stays for the pod, and the binding is Ready and looked at again soon.
    h.set_pool(pool("shared", &[APP2], 20));
    let action = reconcile(Arc::new(h.api.binding()), h.ctx.clone()).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(10))
    );
    assert_eq!(h.credentials_on(APP2).await.len(), 1);
    assert_eq!(h.credentials_on(APP).await.len(), 1, "kept for the pod");
    let stored = h.api.binding();
    assert_eq!(reason(&stored, conditions::READY), "Ready");
    assert_eq!(reason(&stored, conditions::CREDENTIAL_SYNCED), "PreviousKept");
    let status = stored.status.as_ref().unwrap();
    let synced = conditions::find(&status.conditions, conditions::CREDENTIAL_SYNCED).unwrap();
    assert!(
        synced
            .message
            .contains(&format!("1 pod(s) still use client id {APP} ({NS}/api-old)")),
        "{}",
        synced.message
    );
    assert_eq!(status.client_id.as_deref(), Some(APP2));
    let placement = status.placement.as_ref().unwrap();
    assert_eq!(placement.identity, APP2);
    assert!(placement.previous.is_some());
    assert_eq!(placement.previous_client_id.as_deref(), Some(APP));
    let calls = h.api.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.path.contains("/serviceaccounts/") && c.body.to_string().contains(APP2)),
        "the ServiceAccount switched"
    );
    let listed = calls
        .iter()
        .find(|c| c.is("GET", &format!("/namespaces/{NS}/pods")))
        .expect("pods listed");
    assert!(
        listed
            .query
            .contains("labelSelector=azure.workload.identity%2Fuse%3Dtrue"),
        "{}",
        listed.query
    );
    assert_eq!(kept_events(&h), 1);

    // Looked at again while the pod runs: still kept, no second Event.
    reconcile(Arc::new(h.api.binding()), h.ctx.clone()).await.unwrap();
    assert_eq!(h.credentials_on(APP).await.len(), 1);
    assert_eq!(reason(&h.api.binding(), conditions::READY), "Ready");
    assert_eq!(kept_events(&h), 1, "one Event, not one per look");

    // The pod is gone: the old credential goes, and the move is over.
    h.api.set_pods(vec![mutated_pod("api-new", APP2, "Running")]);
    let action = reconcile(Arc::new(h.api.binding()), h.ctx.clone()).await.unwrap();
    assert_ne!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(10))
    );
    assert!(
        h.credentials_on(APP).await.is_empty(),
        "deleted once no pod uses it"
    );
    let stored = h.api.binding();
    assert_eq!(reason(&stored, conditions::READY), "Ready");
    let placement = stored.status.unwrap().placement.unwrap();
    assert!(placement.previous.is_none() && placement.previous_client_id.is_none());
}
