//! Bindings of one ServiceAccount and audience share one credential per identity: whole
//! reconciles in process (mocked API server, emulator).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use wif_emulator::CredentialSeed;

use super::{fixtures::*, reconcile};
use crate::{conditions, naming};

/// The credential binding `name` (of `NS/SA`) created on `APP`.
fn created_by(name: &str) -> CredentialSeed {
    CredentialSeed {
        name: naming::default_credential_name(CLUSTER, NS, name),
        issuer: ISSUER.into(),
        subject: format!("system:serviceaccount:{NS}:{SA}"),
        audiences: None,
        description: Some(naming::description(CLUSTER, NS, name)),
    }
}

#[tokio::test]
async fn a_second_binding_of_the_service_account_shares_the_first_ones_credential() {
    let first = finalized(binding("first", APP));
    let second = finalized(binding("second", APP));
    let world = World {
        credentials: vec![created_by("first")],
        others: vec![first],
        ..World::granted()
    };
    let h = Harness::start(&second, world).await;
    reconcile(Arc::new(second), h.ctx.clone()).await.unwrap();

    let list = h.ctx.azure.list(&h.app_parent().await).await.unwrap();
    assert_eq!(list.len(), 1, "no second credential: {list:?}");
    assert_eq!(
        list[0].name,
        naming::default_credential_name(CLUSTER, NS, "first")
    );
    assert_eq!(
        list[0].description.as_deref(),
        Some(naming::description(CLUSTER, NS, "first").as_str()),
        "untouched"
    );
    let stored = h.api.binding();
    assert_eq!(reason(&stored, conditions::READY), "Ready");
    assert_eq!(reason(&stored, conditions::CREDENTIAL_SYNCED), "Shared");
    let recorded = stored.status.as_ref().unwrap().credential.as_ref().unwrap();
    assert_eq!(recorded.id, list[0].id);
}

#[tokio::test]
async fn the_credential_outlives_its_creator_while_another_binding_needs_it() {
    // "first" goes while "second" shares its credential: kept, handed over to "second".
    let second = finalized(binding("second", APP));
    let world = World {
        credentials: vec![created_by("first")],
        others: vec![second.clone()],
        ..World::granted()
    };
    let first = deleted(finalized(binding("first", APP)));
    let h = Harness::start(&first, world).await;
    reconcile(Arc::new(first), h.ctx.clone()).await.unwrap();
    let list = h.ctx.azure.list(&h.app_parent().await).await.unwrap();
    assert_eq!(list.len(), 1, "kept for the other binding");
    assert_eq!(
        list[0].name,
        naming::default_credential_name(CLUSTER, NS, "first")
    );
    assert_eq!(
        list[0].description.as_deref(),
        Some(naming::description(CLUSTER, NS, "second").as_str()),
        "handed over: the marker is the remaining binding's"
    );
    assert!(
        h.api.binding().metadata.finalizers.unwrap_or_default().is_empty(),
        "the binding that went is released"
    );
    drop(h);

    // "second" is then served by it under its first name, without a write.
    let handed_over = CredentialSeed {
        description: Some(naming::description(CLUSTER, NS, "second")),
        ..created_by("first")
    };
    let world = World {
        credentials: vec![handed_over.clone()],
        ..World::granted()
    };
    let h = Harness::start(&second, world).await;
    reconcile(Arc::new(second.clone()), h.ctx.clone()).await.unwrap();
    let list = h.ctx.azure.list(&h.app_parent().await).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, handed_over.name, "not recreated under another name");
    let stored = h.api.binding();
    assert_eq!(reason(&stored, conditions::READY), "Ready");
    drop(h);

    // The last binding that needs it goes: deleted.
    let world = World {
        credentials: vec![handed_over],
        ..World::granted()
    };
    let last = deleted(stored);
    let h = Harness::start(&last, world).await;
    reconcile(Arc::new(last), h.ctx.clone()).await.unwrap();
    assert!(h.ctx.azure.list(&h.app_parent().await).await.unwrap().is_empty());
}
