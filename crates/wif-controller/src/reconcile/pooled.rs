//! Bindings naming a `FederatedIdentityPool`: placement on one of its identities.
//!
//! Crash safety: the placement is written to the binding's status *before* the credential is
//! created, and every slow-path placement first looks for a credential of this binding on every
//! identity of the pool (adoption). A kill at any point therefore leaves either no credential
//! (the recorded placement is retried) or one credential where the status says (kept).
//!
//! Capacity: placements of one pool are serialised in this process (the pool's lock is held
//! from counting to recording), the count includes slots reserved by this process and placements
//! recorded by other bindings whose credential is not created yet, and the create itself is
//! planned under the identity's lock against its real list with the pool's capacity as the
//! limit (so even a stale count never puts a credential beyond it).

use kube::ResourceExt;
use wif_api::{
    FederatedIdentityBinding, FederatedIdentityBindingStatus, FederatedIdentityPool, PlacementStatus,
    PoolIdentity,
};

use super::{
    target::{self, Target},
    verdict::{self, Failure},
};
use crate::{
    Error,
    azure::{CredentialSpec, FederatedCredential, Parent},
    context::Context,
    directory::{Listing, ResolvedIdentity},
    naming,
    plan::Backend,
    pool::placement::{self, Candidate},
    reasons::Reason,
};

/// Where a pool binding goes, and what it holds while its credential is written.
pub(super) struct Placed {
    /// The chosen identity.
    pub resolved: ResolvedIdentity,
    /// The placement to record (already written when it changed).
    pub placement: PlacementStatus,
    /// The pool's capacity per identity (the limit of the credential plan).
    pub capacity: usize,
    /// The slot reserved for the credential (identity key, name), released by the caller once
    /// the credential is written (slow path only).
    pub reservation: Option<(String, String)>,
}

/// The target of one pool entry.
pub(crate) fn entry_target(entry: &PoolIdentity) -> Option<Target> {
    match (&entry.application, &entry.user_assigned_identity) {
        (Some(a), None) => Some(Target::Application(a.client_id.clone())),
        (None, Some(u)) => Some(Target::UserAssignedIdentity(u.resource_id.clone())),
        _ => None,
    }
}

/// Resolves one pool entry (cached).
pub(crate) async fn resolve_entry(ctx: &Context, entry: &PoolIdentity) -> Result<ResolvedIdentity, Failure> {
    let target = entry_target(entry).ok_or_else(|| {
        Failure::new(
            Reason::InvalidPool,
            "the entry must set exactly one of application or userAssignedIdentity",
        )
    })?;
    let tenant = entry
        .tenant_id
        .clone()
        .unwrap_or_else(|| ctx.settings.default_tenant.clone());
    target::resolve(ctx, &target, &tenant).await
}

/// The identity's credentials: the fresh cached list, else a new list (stored).
pub(crate) async fn listed(
    ctx: &Context,
    listing: &mut Listing,
    parent: &Parent,
) -> Result<Vec<FederatedCredential>, Failure> {
    if let Some(list) = listing.fresh(ctx.directory.list_ttl) {
        return Ok(list.to_vec());
    }
    let list =
        ctx.azure.list(parent).await.map_err(|e| {
            verdict::azure_failure(&e, "list the federated credentials of", &parent.display())
        })?;
    listing.set(list.clone());
    Ok(list)
}

/// The pool a binding names, checked.
async fn pool_of(ctx: &Context, name: &str) -> Result<std::sync::Arc<FederatedIdentityPool>, Failure> {
    if ctx
        .stores
        .wait_pools(std::time::Duration::from_secs(10))
        .await
        .is_err()
    {
        return Err(Failure::new(
            Reason::PoolNotFound,
            "the FederatedIdentityPool cache has not synced: is the FederatedIdentityPool CRD installed? (apply charts/wif/crds/federatedidentitypools.yaml)",
        ));
    }
    let pool = ctx.stores.pool(name).ok_or_else(|| {
        Failure::new(
            Reason::PoolNotFound,
            format!("FederatedIdentityPool {name} does not exist: create it, or fix spec.identity.pool.name"),
        )
    })?;
    let problems = wif_api::pool::validate_pool(&pool.spec);
    if !problems.is_empty() {
        return Err(Failure::new(
            Reason::InvalidPool,
            format!("FederatedIdentityPool {name} is invalid: {}", problems.join("; ")),
        ));
    }
    Ok(pool)
}

/// Whether `list` holds this binding's credential (`desired` names it on ARM).
fn holds_ours(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    parent: &Parent,
    desired: &CredentialSpec,
    list: &[FederatedCredential],
) -> bool {
    let extra: Vec<String> = if parent.backend() == Backend::Arm {
        vec![desired.name.clone()]
    } else {
        Vec::new()
    };
    let ours = target::ownership(&ctx.settings, b, parent, &extra);
    list.iter().any(|c| {
        ours.owns(c)
            && (parent.backend() == Backend::Graph
                || (c.issuer == desired.issuer && c.subject == desired.subject))
    })
}

/// The credential name of a binding (its spec's, else the deterministic default).
fn credential_name(ctx: &Context, b: &FederatedIdentityBinding) -> String {
    b.spec.credential_name.clone().unwrap_or_else(|| {
        naming::default_credential_name(
            &ctx.settings.cluster_id,
            &b.namespace().unwrap_or_default(),
            &b.name_any(),
        )
    })
}

/// Credential names of the other bindings placed on each identity (by pool key) of `pool`, as
/// their statuses recorded (one pass over the binding cache).
fn placed_elsewhere(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    pool: &str,
) -> std::collections::HashMap<String, Vec<String>> {
    let me = (b.namespace(), b.name_any());
    let mut out: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for o in ctx.stores.bindings.state() {
        let Some(p) = o.status.as_ref().and_then(|s| s.placement.as_ref()) else {
            continue;
        };
        if p.pool != pool || (o.namespace(), o.name_any()) == me {
            continue;
        }
        out.entry(recorded_key(&p.identity))
            .or_default()
            .push(credential_name(ctx, &o));
    }
    out
}

/// Slots taken on an identity beyond its list: placements recorded by other bindings (statuses)
/// or made by this process (reservations) whose credential is not in `list` yet.
fn pending(
    recorded: Option<&Vec<String>>,
    reserved: Vec<String>,
    mine: &str,
    list: &[FederatedCredential],
) -> u32 {
    let mut names: Vec<String> = recorded.cloned().unwrap_or_default();
    names.extend(reserved);
    names.retain(|n| !n.eq_ignore_ascii_case(mine) && !list.iter().any(|c| c.name.eq_ignore_ascii_case(n)));
    names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
    names.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    u32::try_from(names.len()).unwrap_or(u32::MAX)
}

/// The pool key of an identity as a status recorded it.
fn recorded_key(recorded: &str) -> String {
    let probe = if recorded.starts_with('/') {
        PoolIdentity {
            user_assigned_identity: Some(wif_api::UserAssignedIdentityReference {
                resource_id: recorded.to_owned(),
            }),
            ..PoolIdentity::default()
        }
    } else {
        PoolIdentity {
            application: Some(wif_api::ApplicationReference {
                client_id: recorded.to_owned(),
            }),
            ..PoolIdentity::default()
        }
    };
    probe.key()
}

/// Whether a recorded identity (as the pool lists it) is the entry with `key`.
pub(crate) fn same_identity(recorded: &str, key: &str) -> bool {
    recorded_key(recorded) == key
}

/// Places a binding on an identity of pool `name`; a new placement is written to the status
/// before returning (so before any credential is created).
pub(super) async fn place(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    name: &str,
    old: &FederatedIdentityBindingStatus,
) -> Result<Placed, Failure> {
    let pool = pool_of(ctx, name).await?;
    let capacity = pool.spec.capacity_per_identity;
    let recorded = old.placement.as_ref().filter(|p| p.pool == name);

    // Fast path: the recorded identity is in the pool and holds our credential.
    if let Some(p) = recorded
        && let Some(entry) = pool
            .spec
            .identities
            .iter()
            .find(|e| same_identity(&p.identity, &e.key()))
        && let Ok(resolved) = resolve_entry(ctx, entry).await
    {
        let desired = target::desired(&ctx.settings, b, &resolved.parent);
        let mut listing = ctx.directory.lock(&resolved.parent.key()).await;
        if let Ok(list) = listed(ctx, &mut listing, &resolved.parent).await
            && holds_ours(ctx, b, &resolved.parent, &desired, &list)
        {
            drop(listing);
            return Ok(Placed {
                resolved,
                placement: p.clone(),
                capacity: capacity as usize,
                reservation: None,
            });
        }
    }

    // Slow path: under the pool's lock, count every identity and decide.
    let guard = ctx.directory.lock(&format!("pool/{name}")).await;
    let elsewhere = placed_elsewhere(ctx, b, name);
    let mine = credential_name(ctx, b);
    let mut candidates = Vec::with_capacity(pool.spec.identities.len());
    let mut resolved_all = Vec::with_capacity(pool.spec.identities.len());
    for entry in &pool.spec.identities {
        let key = entry.key();
        let unusable = |key: String| Candidate {
            key,
            usable: false,
            used: 0,
            ours: false,
            subject_taken: false,
        };
        let Ok(resolved) = resolve_entry(ctx, entry).await else {
            candidates.push(unusable(key));
            resolved_all.push(None);
            continue;
        };
        let desired = target::desired(&ctx.settings, b, &resolved.parent);
        let mut listing = ctx.directory.lock(&resolved.parent.key()).await;
        let Ok(list) = listed(ctx, &mut listing, &resolved.parent).await else {
            candidates.push(unusable(key));
            resolved_all.push(None);
            continue;
        };
        drop(listing);
        let ours = holds_ours(ctx, b, &resolved.parent, &desired, &list);
        let owner = target::ownership(&ctx.settings, b, &resolved.parent, &[]);
        let subject_taken = list.iter().any(|c| {
            !owner.owns(c)
                && !c.name.eq_ignore_ascii_case(&desired.name)
                && c.issuer == desired.issuer
                && c.subject == desired.subject
        });
        let used = u32::try_from(list.len())
            .unwrap_or(u32::MAX)
            .saturating_add(pending(
                elsewhere.get(&key),
                ctx.directory.reserved(&resolved.parent.key()),
                &mine,
                &list,
            ));
        candidates.push(Candidate {
            key,
            usable: true,
            used,
            ours,
            subject_taken,
        });
        resolved_all.push(Some(resolved));
    }
    let recorded_key = recorded.and_then(|p| {
        pool.spec
            .identities
            .iter()
            .map(PoolIdentity::key)
            .find(|k| same_identity(&p.identity, k))
    });
    let decision = placement::place(&candidates, capacity, recorded_key.as_deref());
    let Some(index) = decision.index() else {
        let usable = candidates.iter().filter(|c| c.usable).count();
        return Err(Failure::new(
            Reason::PoolFull,
            format!(
                "no identity of FederatedIdentityPool {name} has a free slot for this binding ({usable} of {} identities usable, {capacity} credentials each, counting every credential they hold): add an identity to the pool, raise spec.capacityPerIdentity (at most 20) or delete bindings; the binding is placed as soon as a slot frees",
                candidates.len()
            ),
        ));
    };
    let Some(resolved) = resolved_all.get(index).cloned().flatten() else {
        return Err(Failure::new(Reason::AzureError, "the chosen identity vanished"));
    };
    let entry = &pool.spec.identities[index];
    let mut placement = PlacementStatus {
        pool: name.to_owned(),
        identity: entry.id().to_owned(),
        previous: recorded.and_then(|p| p.previous.clone()),
        previous_tenant_id: recorded.and_then(|p| p.previous_tenant_id.clone()),
    };
    // Leaving an identity (removed from the pool, or the binding named a single identity
    // before): its credential, as the status recorded it, is deleted only after the new one
    // works.
    if placement.previous.is_none()
        && let Some(c) = old.credential.as_ref()
        && !c.parent.eq_ignore_ascii_case(&resolved.parent.display())
    {
        placement.previous = Some(c.clone());
        placement.previous_tenant_id = old.tenant_id.clone();
    }
    if old.placement.as_ref() != Some(&placement) {
        record(ctx, b, old, &placement).await.map_err(|e| {
            Failure::new(
                Reason::KubernetesApi,
                format!("recording the placement in status: {e}"),
            )
        })?;
        tracing::info!(pool = name, identity = %placement.identity, ?decision, "placed binding");
    }
    // The slot is taken for the next placement of this process; the pool's lock can go (the
    // create itself is checked against the identity's real list under the identity's lock).
    let reservation = (resolved.parent.key(), mine);
    ctx.directory.reserve(&reservation.0, &reservation.1);
    drop(guard);
    Ok(Placed {
        resolved,
        placement,
        capacity: capacity as usize,
        reservation: Some(reservation),
    })
}

/// Writes the status with `placement` (the rest as it was), before any credential is created.
async fn record(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    old: &FederatedIdentityBindingStatus,
    placement: &PlacementStatus,
) -> Result<(), Error> {
    let mut status = old.clone();
    status.placement = Some(placement.clone());
    super::status::apply_status(ctx, b, &status).await
}

/// The parent of the credential a moving binding leaves.
pub(super) fn previous_parent(placement: &PlacementStatus, default_tenant: &str) -> Option<Parent> {
    let credential = placement.previous.clone()?;
    let status = FederatedIdentityBindingStatus {
        credential: Some(credential),
        tenant_id: placement.previous_tenant_id.clone(),
        ..FederatedIdentityBindingStatus::default()
    };
    target::parent_from_status(&status, default_tenant)
}

/// Where a pool binding's credentials may be (for its deletion): the recorded placement's
/// identity and the one it is leaving.
pub(super) async fn parents(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    status: &FederatedIdentityBindingStatus,
) -> Vec<(Parent, Option<CredentialSpec>)> {
    let mut out = Vec::new();
    let Some(p) = status.placement.as_ref() else {
        return out;
    };
    if let Some(pool) = ctx.stores.pool(&p.pool)
        && let Some(entry) = pool
            .spec
            .identities
            .iter()
            .find(|e| same_identity(&p.identity, &e.key()))
        && let Ok(r) = resolve_entry(ctx, entry).await
    {
        let d = target::desired(&ctx.settings, b, &r.parent);
        out.push((r.parent, Some(d)));
    }
    if let Some(previous) = previous_parent(p, &ctx.settings.default_tenant) {
        out.push((previous, None));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_identities_match_pool_keys_case_insensitively() {
        let app = PoolIdentity {
            application: Some(wif_api::ApplicationReference {
                client_id: "5E3CE6C0-2b1f-4285-8d4b-75ee78787346".into(),
            }),
            ..PoolIdentity::default()
        };
        assert!(same_identity("5e3ce6c0-2b1f-4285-8d4b-75ee78787346", &app.key()));
        assert!(!same_identity("11111111-2b1f-4285-8d4b-75ee78787346", &app.key()));
        let rid = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api";
        let uami = PoolIdentity {
            user_assigned_identity: Some(wif_api::UserAssignedIdentityReference {
                resource_id: rid.into(),
            }),
            ..PoolIdentity::default()
        };
        assert!(same_identity(&rid.to_lowercase(), &uami.key()));
        assert!(!same_identity(rid, &app.key()));
    }
}
