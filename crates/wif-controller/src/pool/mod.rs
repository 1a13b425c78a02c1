//! `FederatedIdentityPool`s: placement (pure, [`placement`]) and the pool reconciler, which
//! writes each pool's usage (every credential of every identity, ours and foreign, from the
//! identity's real list) to its status, the `wif_identity_*` gauges, and Events when the pool
//! reaches 90 % and when it is full.

pub mod placement;

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use serde_json::json;
use wif_api::{FederatedIdentityPool, FederatedIdentityPoolStatus, PoolIdentityStatus, pool::validate_pool};

use crate::{
    Error,
    context::Context,
    metrics::IdentityLabels,
    naming,
    reasons::Reason,
    reconcile::pooled::{current_list, resolve_entry},
};

/// How often a pool's usage is re-counted when nothing triggers it.
pub const POOL_RESYNC: Duration = Duration::from_secs(10);

/// One pool condition: type, whether true, reason, message.
type Cond = (&'static str, bool, Reason, String);

/// The pool's conditions from its usage (pure).
pub fn conditions(usable: usize, total: usize, usage: &placement::Usage, problems: &[String]) -> Vec<Cond> {
    let ready = if !problems.is_empty() {
        ("Ready", false, Reason::InvalidPool, problems.join("; "))
    } else if usable == 0 {
        (
            "Ready",
            false,
            Reason::NoUsableIdentity,
            format!("none of the {total} identities can be read: see status.identities"),
        )
    } else {
        (
            "Ready",
            true,
            Reason::PoolReady,
            format!("{usable} of {total} identities usable"),
        )
    };
    let load = format!("{} of {} credentials used", usage.used, usage.capacity);
    let nearly = if usage.nearly_full {
        ("NearlyFull", true, Reason::PoolNearlyFull, load.clone())
    } else {
        ("NearlyFull", false, Reason::PoolHasRoom, load.clone())
    };
    let full = if usage.full {
        (
            "Full",
            true,
            Reason::PoolFull,
            format!("{load}: no usable identity has a free slot; add an identity to the pool"),
        )
    } else {
        ("Full", false, Reason::PoolHasRoom, load)
    };
    vec![ready, nearly, full]
}

fn to_conditions(old: &[Condition], new: &[Cond], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    new.iter()
        .map(|(kind, ok, reason, message)| {
            let status = if *ok { "True" } else { "False" };
            let last_transition_time = match old.iter().find(|c| c.type_ == *kind) {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: (*kind).to_owned(),
                status: status.to_owned(),
                reason: reason.as_str().to_owned(),
                message: crate::conditions::truncate(message, 1024),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Whether condition `kind` just became true.
fn became_true(old: &[Condition], new: &[Condition], kind: &str) -> bool {
    let is_true = |cs: &[Condition]| cs.iter().any(|c| c.type_ == kind && c.status == "True");
    is_true(new) && !is_true(old)
}

/// The bindings a change of `pool` should wake: those naming it that wait for the pool (`Ready`
/// false because of it: a `PoolFull` binding is placed as soon as a slot frees) or whose identity
/// left the pool. Bindings busy with their credential are not woken (they retry on their own):
/// while a pool fills, its status changes every few seconds.
pub fn waiting_bindings(
    bindings: &[Arc<wif_api::FederatedIdentityBinding>],
    pool: &FederatedIdentityPool,
) -> Vec<kube::runtime::reflector::ObjectRef<wif_api::FederatedIdentityBinding>> {
    let name = pool.name_any();
    let keys: Vec<String> = pool
        .spec
        .identities
        .iter()
        .map(wif_api::PoolIdentity::key)
        .collect();
    bindings
        .iter()
        .filter(|b| b.spec.identity.pool.as_ref().is_some_and(|p| p.name == name))
        .filter(|b| {
            let status = b.status.as_ref();
            let waits = status.is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status != "True"
                        && [Reason::PoolFull, Reason::PoolNotFound, Reason::InvalidPool]
                            .iter()
                            .any(|r| r.as_str() == c.reason)
                })
            });
            let left = status.and_then(|s| s.placement.as_ref()).is_some_and(|p| {
                !keys
                    .iter()
                    .any(|k| crate::reconcile::pooled::same_identity(&p.identity, k))
            });
            waits || left
        })
        .map(|b| kube::runtime::reflector::ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// kube-runtime's reconcile of a pool: count, publish, requeue.
pub async fn reconcile(pool: Arc<FederatedIdentityPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let capacity = pool.spec.capacity_per_identity;
    let mut identities = Vec::with_capacity(pool.spec.identities.len());
    for entry in &pool.spec.identities {
        let status = identity_status(&ctx, entry, capacity).await;
        let labels = IdentityLabels {
            identity: entry.id().to_owned(),
        };
        ctx.metrics
            .identity_credentials
            .get_or_create(&labels)
            .set(i64::from(status.used));
        ctx.metrics
            .identity_capacity
            .get_or_create(&labels)
            .set(i64::from(if status.usable { capacity } else { 0 }));
        identities.push(status);
    }
    let old = pool.status.clone().unwrap_or_default();
    let (status, usage) = pool_status(&pool, &old, identities);
    if status != old && ctx.leadership.is_leader() {
        publish(&ctx, &pool, &old, &status, &usage).await?;
    }
    Ok(Action::requeue(POOL_RESYNC))
}

/// One identity's usage, from its current list (read without waiting for a write in flight).
async fn identity_status(ctx: &Context, entry: &wif_api::PoolIdentity, capacity: u32) -> PoolIdentityStatus {
    let mut status = PoolIdentityStatus {
        identity: entry.id().to_owned(),
        ..PoolIdentityStatus::default()
    };
    let listed = match resolve_entry(ctx, entry).await {
        Ok(resolved) => {
            status.client_id = Some(resolved.client_id.clone());
            current_list(ctx, &resolved.parent).await
        }
        Err(f) => Err(f),
    };
    match listed {
        Err(f) => {
            status.reason = f.reason.as_str().to_owned();
            status.message = Some(f.message);
        }
        Ok(list) => {
            status.used = u32::try_from(list.len()).unwrap_or(u32::MAX);
            status.free = capacity.saturating_sub(status.used);
            status.usable = true;
            status.reason = Reason::Usable.as_str().to_owned();
        }
    }
    status
}

/// The pool's status from its identities' usage (pure).
fn pool_status(
    pool: &FederatedIdentityPool,
    old: &FederatedIdentityPoolStatus,
    identities: Vec<PoolIdentityStatus>,
) -> (FederatedIdentityPoolStatus, placement::Usage) {
    let problems = validate_pool(&pool.spec);
    let pairs: Vec<(bool, u32)> = identities.iter().map(|i| (i.usable, i.used)).collect();
    let usage = placement::usage(&pairs, pool.spec.capacity_per_identity);
    let usable = pairs.iter().filter(|(ok, _)| *ok).count();
    let conds = conditions(usable, pairs.len(), &usage, &problems);
    let generation = pool.metadata.generation;
    let status = FederatedIdentityPoolStatus {
        observed_generation: generation,
        identity_count: u32::try_from(identities.len()).unwrap_or(u32::MAX),
        used: usage.used,
        capacity: usage.capacity,
        identities,
        conditions: to_conditions(&old.conditions, &conds, generation, Timestamp::now()),
    };
    (status, usage)
}

/// Writes the pool's status, and a Warning Event for each of NearlyFull and Full that became
/// true.
async fn publish(
    ctx: &Context,
    pool: &FederatedIdentityPool,
    old: &FederatedIdentityPoolStatus,
    status: &FederatedIdentityPoolStatus,
    usage: &placement::Usage,
) -> Result<(), Error> {
    let name = pool.name_any();
    let api: Api<FederatedIdentityPool> = Api::all(ctx.client.clone());
    let patch = json!({
        "apiVersion": FederatedIdentityPool::api_version(&()),
        "kind": FederatedIdentityPool::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(naming::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    let reference = pool.object_ref(&());
    for (kind, reason) in [("NearlyFull", Reason::PoolNearlyFull), ("Full", Reason::PoolFull)] {
        if became_true(&old.conditions, &status.conditions, kind) {
            let event = Event {
                type_: EventType::Warning,
                reason: reason.as_str().to_owned(),
                note: Some(format!(
                    "pool {name}: {} of {} credentials used ({kind})",
                    usage.used, usage.capacity
                )),
                action: "Count".to_owned(),
                secondary: None,
            };
            if let Err(error) = ctx.recorder.publish(&event, &reference).await {
                tracing::debug!(%error, "failed to publish a pool Event");
            }
        }
    }
    tracing::info!(pool = %name, used = usage.used, capacity = usage.capacity, "pool usage");
    Ok(())
}

/// kube-runtime's error policy of pools.
pub fn error_policy(pool: Arc<FederatedIdentityPool>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(pool = %pool.name_any(), %error, "pool reconcile failed");
    Action::requeue(POOL_RESYNC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_usage() {
        let u = placement::usage(&[(true, 18), (true, 18)], 20);
        let c = conditions(2, 2, &u, &[]);
        assert_eq!(
            c.iter().map(|(k, ok, r, _)| (*k, *ok, *r)).collect::<Vec<_>>(),
            [
                ("Ready", true, Reason::PoolReady),
                ("NearlyFull", true, Reason::PoolNearlyFull),
                ("Full", false, Reason::PoolHasRoom)
            ]
        );
        let u = placement::usage(&[(true, 20), (false, 0)], 20);
        let c = conditions(1, 2, &u, &[]);
        assert!(c[2].1 && c[2].3.contains("20 of 20"), "{c:?}");
        let u = placement::usage(&[(false, 0)], 20);
        let c = conditions(0, 1, &u, &[]);
        assert_eq!((c[0].1, c[0].2), (false, Reason::NoUsableIdentity));
        let c = conditions(1, 1, &u, &["spec.capacityPerIdentity 0".into()]);
        assert_eq!(c[0].2, Reason::InvalidPool);
    }

    #[test]
    fn a_pool_change_wakes_only_the_bindings_waiting_for_it() {
        let pool: FederatedIdentityPool = serde_json::from_value(json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityPool",
            "metadata": {"name": "p"},
            "spec": {"identities": [{"application": {"clientId": "0a1b2c3d-0000-4000-8000-00000000000a"}}]}
        }))
        .unwrap();
        let binding =
            |name: &str, ready: &str, reason: &str, on: &str| -> Arc<wif_api::FederatedIdentityBinding> {
                Arc::new(
                    serde_json::from_value(json!({
                        "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
                        "metadata": {"name": name, "namespace": "ns"},
                        "spec": {"serviceAccountName": "sa", "identity": {"pool": {"name": "p"}}},
                        "status": {
                            "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "",
                                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                            "placement": {"pool": "p", "identity": on},
                        }
                    }))
                    .unwrap(),
                )
            };
        let here = "0a1b2c3d-0000-4000-8000-00000000000a";
        let gone = "0a1b2c3d-0000-4000-8000-00000000000b";
        let bindings = vec![
            binding("full", "False", "PoolFull", here),
            binding("creating", "False", "AwaitingCredential", here),
            binding("ready", "True", "Ready", here),
            binding("left", "True", "Ready", gone),
        ];
        let woken: Vec<String> = waiting_bindings(&bindings, &pool)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(woken, ["full", "left"]);
    }

    #[test]
    fn transitions_keep_times_and_detect_rises() {
        let t0 = Timestamp::UNIX_EPOCH;
        let u = placement::usage(&[(true, 1)], 20);
        let low = to_conditions(&[], &conditions(1, 1, &u, &[]), Some(1), t0);
        let u = placement::usage(&[(true, 20)], 20);
        let high = to_conditions(&low, &conditions(1, 1, &u, &[]), Some(1), Timestamp::now());
        assert!(became_true(&low, &high, "Full") && became_true(&low, &high, "NearlyFull"));
        assert!(!became_true(&high, &high, "Full"));
        assert_eq!(
            low[0].last_transition_time, high[0].last_transition_time,
            "Ready unchanged"
        );
    }
}
