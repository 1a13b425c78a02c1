//! The writes of a reconcile: a plan's steps carried out on Graph or ARM under the identity's
//! lock (leader only), each one reported as an Event. What to write is decided by
//! [`plan`](crate::plan) from a list observed under the same lock.

use wif_api::FederatedIdentityBinding;

use super::{
    status::Note,
    target,
    verdict::{self, Failure, Synced},
};
use crate::{
    azure::{CredentialSpec, FederatedCredential, Parent},
    context::Context,
    directory::Listing,
    plan::{self, Backend, Step},
    reasons::Reason,
    share,
};

/// Executes `steps` on `parent`, under the identity lock held by the caller; returns the
/// credential at the desired name afterwards.
async fn execute(
    ctx: &Context,
    listing: &mut Listing,
    parent: &Parent,
    desired: &CredentialSpec,
    steps: &[Step],
    events: &mut Vec<Note>,
) -> Result<Option<FederatedCredential>, Failure> {
    let mut result = None;
    for step in steps {
        if !ctx.leadership.is_leader() {
            listing.invalidate();
            return Err(Failure::new(
                Reason::NotLeader,
                "this replica lost the leader Lease before writing; the new leader takes over",
            ));
        }
        if let Some(written) = write(ctx, listing, parent, desired, step, events).await? {
            result = Some(written);
        }
    }
    Ok(result)
}

/// One step; the credential it created or updated.
async fn write(
    ctx: &Context,
    listing: &mut Listing,
    parent: &Parent,
    desired: &CredentialSpec,
    step: &Step,
    events: &mut Vec<Note>,
) -> Result<Option<FederatedCredential>, Failure> {
    let on = parent.display();
    match step {
        Step::Create => {
            let created = ctx.azure.create(parent, desired).await.map_err(|e| {
                listing.invalidate();
                verdict::azure_failure(&e, "create a federated credential on", &on)
            })?;
            tracing::info!(credential = %created.name, parent = %on, "created federated credential");
            events.push(Note::normal(
                Reason::CredentialCreated,
                format!("created federated credential {} on {on}", created.name),
            ));
            listing.upsert(created.clone());
            Ok(Some(created))
        }
        Step::Update { id, name, adopt } => {
            let updated = ctx.azure.update(parent, id, name, desired).await.map_err(|e| {
                listing.invalidate();
                verdict::azure_failure(&e, "update a federated credential on", &on)
            })?;
            let (reason, verb) = if *adopt {
                (Reason::CredentialAdopted, "adopted identical")
            } else {
                (Reason::CredentialUpdated, "corrected")
            };
            tracing::info!(credential = %name, parent = %on, adopt, "updated federated credential");
            events.push(Note::normal(
                reason,
                format!("{verb} federated credential {name} on {on}"),
            ));
            listing.upsert(updated.clone());
            Ok(Some(updated))
        }
        Step::Delete { id, name } => {
            ctx.azure.delete(parent, id, name).await.map_err(|e| {
                listing.invalidate();
                verdict::azure_failure(&e, "delete a federated credential on", &on)
            })?;
            tracing::info!(credential = %name, parent = %on, "deleted federated credential");
            events.push(Note::normal(
                Reason::CredentialDeleted,
                format!("deleted federated credential {name} (ours) from {on}"),
            ));
            listing.remove(name);
            Ok(None)
        }
    }
}

/// Lists (or reuses the identity's fresh list), plans and writes; a create is refused when the
/// identity already holds `limit` credentials (or the configured maximum).
pub(super) async fn sync(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    parent: &Parent,
    desired: &CredentialSpec,
    limit: usize,
    events: &mut Vec<Note>,
) -> Result<(FederatedCredential, Synced), Failure> {
    let on = parent.display();
    let started = std::time::Instant::now();
    let mut listing = ctx.directory.lock(&parent.key()).await;
    ctx.metrics.waited("identity_lock", started);
    let observed = match listing.fresh(ctx.directory.list_ttl) {
        Some(list) => list,
        None => {
            let list = ctx
                .azure
                .list(parent)
                .await
                .map_err(|e| verdict::azure_failure(&e, "list the federated credentials of", &on))?;
            listing.set(list.clone());
            list
        }
    };
    let ours = target::ownership(&ctx.settings, b, parent, &[]);
    let sharers = target::sharers(ctx, b, parent, false);
    if let Some(c) = share::shared(desired, &observed, &ours, &sharers) {
        return Ok((c.clone(), Synced::Shared));
    }
    let plan = plan::plan(desired, &observed, &ours, limit.min(ctx.settings.max_credentials));
    if let Some(blocked) = plan.blocked {
        return Err(verdict::blocked(blocked, &on, desired));
    }
    let written = execute(ctx, &mut listing, parent, desired, &plan.steps, events).await?;
    let current = written.or_else(|| {
        observed
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&desired.name))
            .cloned()
    });
    drop(listing);
    let credential = current
        .ok_or_else(|| Failure::new(Reason::AzureError, "the credential vanished while it was written"))?;
    let outcome = verdict::synced(&plan);
    if outcome == Synced::Adopted && plan.steps.is_empty() {
        events.push(Note::normal(
            Reason::CredentialAdopted,
            format!(
                "adopted identical federated credential {} on {on}",
                credential.name
            ),
        ));
    }
    Ok((credential, outcome))
}

/// Deletes every credential of ours on `parent` (cleanup, revocation, identity change).
pub(super) async fn remove_ours(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    parent: &Parent,
    desired: Option<&CredentialSpec>,
    events: &mut Vec<Note>,
) -> Result<usize, Failure> {
    let on = parent.display();
    let mut listing = ctx.directory.lock(&parent.key()).await;
    // Always a fresh list: deletion decisions are not made on cached data.
    let observed = match ctx.azure.list(parent).await {
        Ok(l) => l,
        Err(e) if e.is_not_found() => return Ok(0),
        Err(e) => {
            return Err(verdict::azure_failure(
                &e,
                "list the federated credentials of",
                &on,
            ));
        }
    };
    listing.set(observed.clone());
    // On ARM a credential at the name the spec declares, trusting exactly our issuer and
    // subject, is the one we created or adopted (even if the status never recorded it).
    let extra: Vec<String> = desired
        .filter(|_| parent.backend() == Backend::Arm)
        .filter(|d| {
            observed.iter().any(|c| {
                c.name.eq_ignore_ascii_case(&d.name) && c.issuer == d.issuer && c.subject == d.subject
            })
        })
        .map(|d| vec![d.name.clone()])
        .unwrap_or_default();
    let steps = plan::plan_cleanup(&observed, &target::ownership(&ctx.settings, b, parent, &extra));
    let sharers = target::sharers(ctx, b, parent, true);
    let deletes = keep_shared(ctx, &mut listing, parent, &observed, steps, &sharers, events).await?;
    execute(
        ctx,
        &mut listing,
        parent,
        desired.unwrap_or(&placeholder()),
        &deletes,
        events,
    )
    .await?;
    Ok(deletes.len())
}

/// Of the deletions of a binding that goes, carries out the hand-overs of credentials another
/// binding of the same ServiceAccount and audience still needs ([`share::release`]); the
/// deletions left.
async fn keep_shared(
    ctx: &Context,
    listing: &mut Listing,
    parent: &Parent,
    observed: &[FederatedCredential],
    steps: Vec<Step>,
    sharers: &[share::Sharer],
    events: &mut Vec<Note>,
) -> Result<Vec<Step>, Failure> {
    let mut deletes = Vec::with_capacity(steps.len());
    for step in steps {
        let Step::Delete { id, name } = &step else {
            continue;
        };
        let Some(c) = observed.iter().find(|c| c.id == *id) else {
            continue;
        };
        let to = match share::release(c, parent.backend(), sharers) {
            share::Release::Delete => {
                deletes.push(step);
                continue;
            }
            share::Release::Keep(i) => &sharers[i],
            share::Release::HandOver(i) => {
                let update = Step::Update {
                    id: id.clone(),
                    name: name.clone(),
                    adopt: false,
                };
                let to = &sharers[i];
                execute(ctx, listing, parent, &to.desired, &[update], events).await?;
                to
            }
        };
        events.push(Note::normal(
            Reason::CredentialKept,
            format!(
                "kept federated credential {name} on {} for binding {}, which shares it",
                parent.display(),
                to.binding
            ),
        ));
    }
    Ok(deletes)
}

/// The desired credential of a removal, which only deletes.
fn placeholder() -> CredentialSpec {
    CredentialSpec {
        name: String::new(),
        issuer: String::new(),
        subject: String::new(),
        audience: String::new(),
        description: None,
    }
}
