//! Tests of `state`.

use super::*;
use crate::config::{ApplicationSeed, IdentitySeed, TenantSeed};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn seed() -> Seed {
    Seed {
        tenants: vec![TenantSeed {
            id: TENANT.into(),
            domains: vec!["contoso.onmicrosoft.com".into()],
            applications: vec![ApplicationSeed {
                display_name: "app".into(),
                app_id: Some("5e3ce6c0-2b1f-4285-8d4b-75ee78787346".into()),
                federated_identity_credentials: vec![CredentialSeed {
                    name: "fic".into(),
                    issuer: "https://issuer".into(),
                    subject: "system:serviceaccount:a:b".into(),
                    ..CredentialSeed::default()
                }],
                ..ApplicationSeed::default()
            }],
            subscriptions: vec![crate::config::SubscriptionSeed {
                id: "0b1f6471-1bf0-4dda-aec3-cb9272f09590".into(),
                display_name: Some("dev".into()),
                resource_groups: vec![crate::config::ResourceGroupSeed {
                    name: "shared".into(),
                    location: Some("northeurope".into()),
                }],
            }],
            user_assigned_identities: vec![IdentitySeed {
                subscription_id: "0b1f6471-1bf0-4dda-aec3-cb9272f09590".into(),
                resource_group: "rg".into(),
                name: "mi".into(),
                ..IdentitySeed::default()
            }],
        }],
    }
}

#[test]
fn seeding_is_idempotent() {
    let mut state = State::default();
    state.apply_seed(&seed(), &Settings::default()).expect("seeds");
    let once = state.clone();
    state
        .apply_seed(&seed(), &Settings::default())
        .expect("seeds again");
    assert_eq!(state, once);
    let tenant = state.tenant("CONTOSO.onmicrosoft.com").expect("by domain");
    assert_eq!(
        tenant.applications[0].credentials[0].audiences,
        vec![DEFAULT_AUDIENCE]
    );
    assert!(tenant.client("5E3CE6C0-2B1F-4285-8D4B-75EE78787346").is_some());
    assert!(tenant.client(&tenant.identities[0].client_id).is_some());
}

#[test]
fn subscriptions_and_groups_are_seeded_and_implied_by_identities() {
    let mut state = State::default();
    state.apply_seed(&seed(), &Settings::default()).expect("seeds");
    let (tenant, sub) = state
        .subscription("0B1F6471-1BF0-4DDA-AEC3-CB9272F09590")
        .expect("subscription");
    assert_eq!(tenant.id, TENANT);
    assert_eq!(sub.display_name, "dev");
    assert_eq!(
        sub.group("SHARED").map(|g| g.location.as_str()),
        Some("northeurope")
    );
    // The identity's group exists although the seed did not list it.
    assert_eq!(sub.group("rg").map(|g| g.location.as_str()), Some("westeurope"));

    // A state file from before subscriptions existed gains them on load.
    let mut old = state.clone();
    old.tenants[0].subscriptions.clear();
    old.normalize();
    assert!(old.subscription("0b1f6471-1bf0-4dda-aec3-cb9272f09590").is_some());

    let mut bad = seed();
    bad.tenants[0].subscriptions[0].resource_groups[0].name = "ends-with-dot.".into();
    let err = State::default()
        .apply_seed(&bad, &Settings::default())
        .expect_err("refused");
    assert!(err.contains("resource group name"), "{err}");
}

#[test]
fn seeding_refuses_invalid_credentials_and_foreign_subscriptions() {
    let mut bad = seed();
    bad.tenants[0].applications[0].federated_identity_credentials[0].name = "x".into();
    assert!(State::default().apply_seed(&bad, &Settings::default()).is_err());

    let mut state = State::default();
    state.apply_seed(&seed(), &Settings::default()).expect("seeds");
    let mut other = seed();
    other.tenants[0].id = "00000000-0000-0000-0000-000000000001".into();
    other.tenants[0].applications.clear();
    assert!(state.apply_seed(&other, &Settings::default()).is_err());
}

/// A store in a fresh directory, with `seed()` applied through `update`.
async fn seeded_store(persist: bool) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), persist).await.expect("opens");
    store
        .update(|s| {
            s.apply_seed(&seed(), &Settings::default())
                .map_err(|_| PersistFailed)
        })
        .await
        .expect("updates");
    (dir, store)
}

#[tokio::test]
async fn store_persists_and_reloads() {
    let (dir, _store) = seeded_store(true).await;
    let reopened = Store::open(dir.path(), true).await.expect("reopens");
    let count = reopened.read(|s| s.tenants.len()).await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_store_without_persistence_changes_in_memory_and_writes_nothing() {
    let (dir, store) = seeded_store(false).await;
    assert_eq!(store.read(|s| s.tenants.len()).await, 1, "the change is served");
    assert!(!dir.path().join(STATE_FILE).exists(), "nothing written");
    let reopened = Store::open(dir.path(), true).await.expect("reopens");
    assert_eq!(reopened.read(|s| s.tenants.len()).await, 0);
}
