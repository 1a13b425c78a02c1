//! The binding is being deleted: remove our credential (policy `Delete`) and our annotations,
//! then let the finalizer go.

use kube::{ResourceExt, runtime::controller::Action};
use wif_api::{DeletionPolicy, FederatedIdentityBinding, FederatedIdentityBindingStatus};

use super::{
    act, key_of,
    status::{Note, publish_events},
    target::{self, Target},
    verdict::{self, Failure},
};
use crate::{
    Error,
    azure::{CredentialSpec, Parent},
    context::Context,
    naming,
    reasons::Reason,
    service_account::{self, AnnotationPlan},
};

/// Cleans up a binding being deleted.
pub(super) async fn cleanup(b: &FederatedIdentityBinding, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
    let status = b.status.clone().unwrap_or_default();
    let mut notes = Vec::new();
    match b.spec.deletion_policy {
        DeletionPolicy::Orphan => {
            if let Some(c) = &status.credential {
                notes.push(Note::normal(
                    Reason::CredentialOrphaned,
                    format!(
                        "left federated credential {} on {} (deletionPolicy: Orphan)",
                        c.name, c.parent
                    ),
                ));
            }
        }
        DeletionPolicy::Delete => {
            if let Err(e) = delete_ours(ctx, b, &status, &mut notes).await {
                publish_events(ctx, b, notes).await;
                return Err(e);
            }
        }
    }
    if let Err(e) = release_service_account(ctx, b, &mut notes).await {
        publish_events(ctx, b, notes).await;
        return Err(Error::Kube(e));
    }
    publish_events(ctx, b, notes).await;
    ctx.backoff.reset(&key_of(b));
    tracing::info!(namespace = %ns, binding = %name, policy = ?b.spec.deletion_policy, "binding cleaned up");
    Ok(Action::await_change())
}

fn cleanup_failed(f: Failure) -> Error {
    Error::Degraded {
        reason: f.reason,
        message: format!("cleanup: {}", f.message),
    }
}

/// Where our credentials may be: the identity the status recorded, and the spec's (the status
/// may never have recorded a credential we wrote), with the credential wanted there.
async fn parents(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    status: &FederatedIdentityBindingStatus,
) -> Result<Vec<(Parent, Option<CredentialSpec>)>, Failure> {
    let mut parents: Vec<(Parent, Option<CredentialSpec>)> = Vec::new();
    if let Some(p) = target::parent_from_status(status, &ctx.settings.default_tenant) {
        parents.push((p, None));
    }
    let Ok(spec_target) = Target::from_spec(&b.spec.identity) else {
        return Ok(parents);
    };
    if matches!(spec_target, Target::Pool(_)) {
        for (p, d) in super::pooled::parents(ctx, b, status).await {
            match parents.iter_mut().find(|(q, _)| q.key() == p.key()) {
                Some(entry) => entry.1 = entry.1.take().or(d),
                None => parents.push((p, d)),
            }
        }
        return Ok(parents);
    }
    let tenant = target::tenant(b, &ctx.settings);
    match target::resolve(ctx, &spec_target, &tenant).await {
        Ok(r) => {
            let d = target::desired(&ctx.settings, b, &r.parent);
            match parents.iter_mut().find(|(p, _)| p.key() == r.parent.key()) {
                Some(entry) => entry.1 = Some(d),
                None => parents.push((r.parent, Some(d))),
            }
        }
        // Gone, malformed: nothing of ours can be there.
        Err(f) if verdict::is_gone(&f) => {}
        Err(f) => return Err(f),
    }
    Ok(parents)
}

/// Deletes our credentials, and checks that each deleted one no longer reads back.
async fn delete_ours(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    status: &FederatedIdentityBindingStatus,
    notes: &mut Vec<Note>,
) -> Result<(), Error> {
    let parents = match parents(ctx, b, status).await {
        Ok(p) => p,
        Err(f) => {
            notes.push(Note::warning(Reason::CleanupFailed, f.message.clone()));
            return Err(cleanup_failed(f));
        }
    };
    for (parent, d) in &parents {
        if let Err(f) = act::remove_ours(ctx, b, parent, d.as_ref(), notes).await {
            notes.push(Note::warning(Reason::CleanupFailed, f.message.clone()));
            return Err(cleanup_failed(f));
        }
        // Deleted means gone: read back once.
        if let Some(d) = d
            && let Ok(Some(c)) = ctx.azure.get(parent, &d.name).await
            && target::ownership(&ctx.settings, b, parent, &[]).owns(&c)
        {
            return Err(Error::Degraded {
                reason: Reason::ReadBackPending,
                message: format!("credential {} still reads back after its deletion", c.name),
            });
        }
    }
    Ok(())
}

/// Removes the annotations this binding wrote on its ServiceAccount.
async fn release_service_account(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    notes: &mut Vec<Note>,
) -> Result<(), kube::Error> {
    let (ns, sa_name) = (b.namespace().unwrap_or_default(), &b.spec.service_account_name);
    let Some(sa) = ctx.stores.service_account(&ns, sa_name) else {
        return Ok(());
    };
    let manager = naming::service_account_manager(&b.name_any());
    let plan = service_account::annotation_plan(&sa, &manager, None);
    service_account::apply(&ctx.client, &sa, &manager, &plan).await?;
    if plan == AnnotationPlan::Release {
        notes.push(Note::normal(
            Reason::ServiceAccountReleased,
            format!("removed the annotations this binding wrote on ServiceAccount {ns}/{sa_name}"),
        ));
    }
    Ok(())
}
