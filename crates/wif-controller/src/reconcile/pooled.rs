//! Bindings naming a `FederatedIdentityPool`: placement on one of its identities.
//!
//! Crash safety: the placement is written to the binding's status *before* the credential is
//! created, and every slow-path placement first looks for a credential of this binding on every
//! identity of the pool (adoption). A kill at any point therefore leaves either no credential
//! (the recorded placement is retried) or one credential where the status says (kept).
//!
//! Capacity: placements of one pool are decided one at a time in this process (under the
//! pool's lock), from every identity's last list read *without* its lock (every write of this
//! controller keeps that list current, so a create in flight does not stall the pool), plus the
//! slots reserved by this process and the placements recorded by other bindings whose
//! credential is not listed yet. The slot is reserved before the pool's lock is released and
//! before the placement is recorded, so the status write runs outside the lock. The create
//! itself is planned under the identity's lock against its list with the pool's capacity as the
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
    plan::{Backend, Ownership},
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
    // One lookup per identity when many placements start at once (a cold start): the others
    // wait for it and find it cached.
    let _one = ctx.directory.lock(&format!("resolve/{}", entry.key())).await;
    target::resolve(ctx, &target, &tenant).await
}

/// The identity's credentials: the fresh cached list, else a new list (stored).
pub(crate) async fn listed(
    ctx: &Context,
    listing: &mut Listing,
    parent: &Parent,
) -> Result<Vec<FederatedCredential>, Failure> {
    if let Some(list) = listing.fresh(ctx.directory.list_ttl) {
        return Ok(list);
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

/// What tells this binding's credential (or the one it shares) on one identity.
struct Mine {
    desired: CredentialSpec,
    /// Its ownership, with the desired name on ARM (a credential at that name trusting our
    /// subject is ours even if the status never recorded it).
    ours: Ownership,
    /// Its ownership as the plan sees it.
    owner: Ownership,
    /// The bindings sharing its ServiceAccount and audience, on this identity.
    sharers: Vec<crate::share::Sharer>,
}

impl Mine {
    fn new(
        ctx: &Context,
        b: &FederatedIdentityBinding,
        parent: &Parent,
        sharing: &[std::sync::Arc<FederatedIdentityBinding>],
    ) -> Self {
        let desired = target::desired(&ctx.settings, b, parent);
        let extra: Vec<String> = if parent.backend() == Backend::Arm {
            vec![desired.name.clone()]
        } else {
            Vec::new()
        };
        Self {
            ours: target::ownership(&ctx.settings, b, parent, &extra),
            owner: target::ownership(&ctx.settings, b, parent, &[]),
            sharers: target::sharers_on(&ctx.settings, sharing, parent),
            desired,
        }
    }

    /// Whether `list` holds this binding's credential, or the one it shares.
    fn held(&self, backend: Backend, list: &[FederatedCredential]) -> bool {
        let d = &self.desired;
        list.iter().any(|c| {
            self.ours.owns(c)
                && (backend == Backend::Graph || (c.issuer == d.issuer && c.subject == d.subject))
        }) || (!self.sharers.is_empty() && crate::share::shared(d, list, &self.ours, &self.sharers).is_some())
    }

    /// Whether a credential that is neither ours nor shared with us trusts our subject.
    fn subject_taken(&self, list: &[FederatedCredential]) -> bool {
        let d = &self.desired;
        list.iter().any(|c| {
            !self.owner.owns(c)
                && !self
                    .sharers
                    .iter()
                    .any(|s| s.ownership.owns(c) && d.matches(c, false))
                && !c.name.eq_ignore_ascii_case(&d.name)
                && c.issuer == d.issuer
                && c.subject == d.subject
        })
    }
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

/// The name of the credential a binding's status says it placed or holds (the status's
/// credential when recorded, else its spec's or default name).
fn placed_name(ctx: &Context, b: &FederatedIdentityBinding) -> String {
    b.status
        .as_ref()
        .and_then(|s| s.credential.as_ref())
        .map_or_else(|| credential_name(ctx, b), |c| c.name.clone())
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
            .push(placed_name(ctx, &o));
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
    if let Some(p) = recorded
        && let Some(kept) = keep_recorded(ctx, b, &pool, p).await
    {
        return Ok(kept);
    }
    let (resolved, index, decision, reservation) = decide(ctx, b, &pool, recorded).await?;
    let placement = new_placement(name, &pool.spec.identities[index], recorded, old, &resolved);
    if old.placement.as_ref() != Some(&placement) {
        if let Err(e) = record(ctx, b, old, &placement).await {
            ctx.directory.release(&reservation.0, &reservation.1);
            return Err(Failure::new(
                Reason::KubernetesApi,
                format!("recording the placement in status: {e}"),
            ));
        }
        tracing::info!(pool = name, identity = %placement.identity, ?decision, "placed binding");
    }
    Ok(Placed {
        resolved,
        placement,
        capacity: capacity as usize,
        reservation: Some(reservation),
    })
}

/// Fast path: the recorded identity is in the pool and holds our credential (its list read
/// without its lock when fresh).
async fn keep_recorded(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    pool: &FederatedIdentityPool,
    p: &PlacementStatus,
) -> Option<Placed> {
    let entry = pool
        .spec
        .identities
        .iter()
        .find(|e| same_identity(&p.identity, &e.key()))?;
    let resolved = resolve_entry(ctx, entry).await.ok()?;
    let list = match ctx.directory.peek(&resolved.parent.key()) {
        Some(peeked) if peeked.fresh => peeked.credentials,
        _ => {
            let mut listing = ctx.directory.lock(&resolved.parent.key()).await;
            listed(ctx, &mut listing, &resolved.parent).await.ok()?
        }
    };
    let mine = Mine::new(ctx, b, &resolved.parent, &target::sharing(ctx, b, false));
    mine.held(resolved.parent.backend(), &list).then(|| Placed {
        resolved,
        placement: p.clone(),
        capacity: pool.spec.capacity_per_identity as usize,
        reservation: None,
    })
}

/// An identity's current list: the last one when fetched less than the list TTL ago, or older
/// while a write holds the identity's lock (that write keeps it current); otherwise listed again
/// under the lock.
pub(crate) async fn current_list(
    ctx: &Context,
    parent: &Parent,
) -> Result<Vec<FederatedCredential>, Failure> {
    let key = parent.key();
    let mut listing = match ctx.directory.peek(&key) {
        Some(p) if p.fresh => return Ok(p.credentials),
        Some(p) => match ctx.directory.try_lock(&key) {
            Some(listing) => listing,
            None => return Ok(p.credentials),
        },
        None => ctx.directory.lock(&key).await,
    };
    listed(ctx, &mut listing, parent).await
}

/// Makes sure every identity of the pool is resolved and listed ([`current_list`]),
/// concurrently. `None`: the identity cannot be read (not used).
async fn survey(ctx: &Context, pool: &FederatedIdentityPool) -> Vec<Option<ResolvedIdentity>> {
    let one = |entry: &PoolIdentity| {
        let entry = entry.clone();
        async move {
            let resolved = resolve_entry(ctx, &entry).await.ok()?;
            current_list(ctx, &resolved.parent).await.ok()?;
            Some(resolved)
        }
    };
    futures::future::join_all(pool.spec.identities.iter().map(one)).await
}

/// What placement needs to know about one identity that does not change with this process's
/// placements (computed outside the pool's lock).
struct Prepared {
    parent_key: String,
    backend: Backend,
    mine: Mine,
    /// A binding of the same ServiceAccount and audience has its placement recorded here.
    sharer_recorded: bool,
}

impl Prepared {
    fn new(
        ctx: &Context,
        b: &FederatedIdentityBinding,
        key: &str,
        resolved: &ResolvedIdentity,
        sharing: &[std::sync::Arc<FederatedIdentityBinding>],
    ) -> Self {
        let sharer_recorded = sharing.iter().any(|o| {
            o.status
                .as_ref()
                .and_then(|s| s.placement.as_ref())
                .is_some_and(|p| same_identity(&p.identity, key))
        });
        Self {
            parent_key: resolved.parent.key(),
            backend: resolved.parent.backend(),
            mine: Mine::new(ctx, b, &resolved.parent, sharing),
            sharer_recorded,
        }
    }
}

/// Counts identities for one placement: the parts that do not depend on this process's other
/// placements are prepared outside the pool's lock; [`Count::candidate`] runs under it.
struct Count<'a> {
    ctx: &'a Context,
    elsewhere: std::collections::HashMap<String, Vec<String>>,
    mine: String,
    /// The credential names of the bindings sharing this one's ServiceAccount and audience (to
    /// find their in-process reservations).
    sharing_names: Vec<String>,
}

impl Count<'_> {
    /// Under the pool's lock: reservations, then the list, then the candidate.
    fn candidate(&self, key: String, prepared: Option<&Prepared>) -> Candidate {
        let unusable = |key| Candidate {
            key,
            usable: false,
            used: 0,
            ours: false,
            subject_taken: false,
        };
        let Some(p) = prepared else {
            return unusable(key);
        };
        // Reservations before the list: a create that completes in between is in the list
        // before its reservation is released, so it is counted once either way.
        let reserved = self.ctx.directory.reserved(&p.parent_key);
        let Some(list) = self.ctx.directory.peek(&p.parent_key).map(|p| p.credentials) else {
            return unusable(key);
        };
        // A binding of the same ServiceAccount and audience placed (or being placed) here: the
        // credential is shared, so this binding goes where it is.
        let sharer_here = p.sharer_recorded
            || reserved
                .iter()
                .any(|r| self.sharing_names.iter().any(|n| n.eq_ignore_ascii_case(r)));
        let ours = sharer_here || p.mine.held(p.backend, &list);
        let used = u32::try_from(list.len())
            .unwrap_or(u32::MAX)
            .saturating_add(pending(self.elsewhere.get(&key), reserved, &self.mine, &list));
        Candidate {
            key,
            usable: true,
            used,
            ours,
            subject_taken: p.mine.subject_taken(&list),
        }
    }
}

/// Slow path: survey, then under the pool's lock count every identity, decide, and reserve the
/// slot (the lock is released before the placement is recorded: the reservation holds the slot
/// for the other placements of this process).
async fn decide(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    pool: &FederatedIdentityPool,
    recorded: Option<&PlacementStatus>,
) -> Result<(ResolvedIdentity, usize, placement::Decision, (String, String)), Failure> {
    let name = pool.name_any();
    let capacity = pool.spec.capacity_per_identity;
    // Outside the pool's lock: what does not change with this process's placements (the
    // survey warms the resolutions and lists; statuses come from the cache). Under it: the
    // reservations and the lists, read together.
    let surveyed = std::time::Instant::now();
    let resolved = survey(ctx, pool).await;
    ctx.metrics.waited("pool_survey", surveyed);
    let sharing = target::sharing(ctx, b, false);
    let prepared: Vec<Option<Prepared>> = pool
        .spec
        .identities
        .iter()
        .zip(&resolved)
        .map(|(entry, r)| {
            r.as_ref()
                .map(|r| Prepared::new(ctx, b, &entry.key(), r, &sharing))
        })
        .collect();
    let count = Count {
        ctx,
        elsewhere: placed_elsewhere(ctx, b, &name),
        mine: credential_name(ctx, b),
        sharing_names: sharing.iter().map(|o| credential_name(ctx, o)).collect(),
    };
    // Nothing under the pool's lock awaits: a plain mutex, held for microseconds.
    let started = std::time::Instant::now();
    let pool_lock = ctx.directory.pool_lock(&name);
    let guard = pool_lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ctx.metrics.waited("pool_lock", started);
    let candidates: Vec<Candidate> = pool
        .spec
        .identities
        .iter()
        .zip(&prepared)
        .map(|(entry, p)| count.candidate(entry.key(), p.as_ref()))
        .collect();
    let recorded_key = recorded.and_then(|p| {
        pool.spec
            .identities
            .iter()
            .map(PoolIdentity::key)
            .find(|k| same_identity(&p.identity, k))
    });
    let decision = placement::place(&candidates, capacity, recorded_key.as_deref());
    let Some(index) = decision.index() else {
        return Err(pool_full(&name, &candidates, capacity));
    };
    let Some(chosen) = resolved.get(index).cloned().flatten() else {
        return Err(Failure::new(Reason::AzureError, "the chosen identity vanished"));
    };
    let reservation = (chosen.parent.key(), count.mine);
    ctx.directory.reserve(&reservation.0, &reservation.1);
    drop(guard);
    Ok((chosen, index, decision, reservation))
}

/// The `PoolFull` failure.
fn pool_full(name: &str, candidates: &[Candidate], capacity: u32) -> Failure {
    let usable = candidates.iter().filter(|c| c.usable).count();
    Failure::new(
        Reason::PoolFull,
        format!(
            "no identity of FederatedIdentityPool {name} has a free slot for this binding ({usable} of {} identities usable, {capacity} credentials each, counting every credential they hold): add an identity to the pool, raise spec.capacityPerIdentity (at most 20) or delete bindings; the binding is placed as soon as a slot frees",
            candidates.len()
        ),
    )
}

/// The placement to record on `entry`. Leaving an identity (removed from the pool, or the
/// binding named a single identity before): its credential, as the status recorded it, is
/// deleted only after the new one works and no pod presents its client id any more.
fn new_placement(
    pool: &str,
    entry: &PoolIdentity,
    recorded: Option<&PlacementStatus>,
    old: &FederatedIdentityBindingStatus,
    resolved: &ResolvedIdentity,
) -> PlacementStatus {
    let mut placement = PlacementStatus {
        pool: pool.to_owned(),
        identity: entry.id().to_owned(),
        previous: recorded.and_then(|p| p.previous.clone()),
        previous_tenant_id: recorded.and_then(|p| p.previous_tenant_id.clone()),
        previous_client_id: recorded.and_then(|p| p.previous_client_id.clone()),
    };
    if placement.previous.is_none()
        && let Some(c) = old.credential.as_ref()
        && !c.parent.eq_ignore_ascii_case(&resolved.parent.display())
    {
        placement.previous = Some(c.clone());
        placement.previous_tenant_id = old.tenant_id.clone();
        placement.previous_client_id = old.client_id.clone();
    }
    placement
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
