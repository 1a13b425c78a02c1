//! The reconciler: one binding at a time, through a finalizer.
//!
//! Apply, in order: the identity in the spec is well formed → a policy grants it to the
//! namespace (else our credential is revoked and nothing is written) → the identity resolves →
//! under the identity's lock, the credential list (shared by the identity's bindings) is planned
//! against and written (leader only) → the ServiceAccount is annotated → the credential reads
//! back (and optionally a real exchange succeeds) → conditions, status and Events.
//!
//! Every stage observes, decides, then acts, and the decisions are pure functions of what was
//! observed:
//!
//! | module      | does                                                                 |
//! |-------------|----------------------------------------------------------------------|
//! | [`target`]  | reads the spec's identity, resolves it (cached), the desired credential |
//! | [`verdict`] | pure: every check, failure message, outcome and the final verdict      |
//! | `act`       | writes: credential steps under the identity lock, annotations, probes  |
//! | `apply`     | runs the stages in order, collecting a [`status::Report`]              |
//! | [`status`]  | pure conditions and Events from a report, then one status write        |
//! | `cleanup`   | the deletion path                                                      |
//!
//! Every failure is a condition with a reason and a message that says what to fix, an Event,
//! and a retry with per-binding exponential backoff; never a crash, never a write to a
//! credential we do not own.

mod act;
mod apply;
mod cleanup;
mod holders;
pub(crate) mod pooled;
pub(crate) mod status;
pub(crate) mod target;
pub(crate) mod verdict;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod share_tests;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Instant};

use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};
use wif_api::{BINDING_FINALIZER, FederatedIdentityBinding};

use crate::{Error, context::Context};

/// kube-runtime's reconcile entry point.
pub(crate) async fn reconcile(
    binding: Arc<FederatedIdentityBinding>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.queue_depth.inc();
    let result = run(binding, &ctx).await;
    ctx.metrics.queue_depth.dec();
    let label = match &result {
        Ok(_) => "success",
        Err(e) => e.category(),
    };
    ctx.metrics.reconciled(label, started.elapsed().as_secs_f64());
    result
}

#[tracing::instrument(name = "reconcile", skip_all, fields(namespace = tracing::field::Empty, binding = %binding.name_any(), generation = binding.metadata.generation))]
async fn run(binding: Arc<FederatedIdentityBinding>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let namespace = binding.namespace().ok_or(Error::NoNamespace)?;
    tracing::Span::current().record("namespace", namespace.as_str());
    ctx.stores.wait_ready(std::time::Duration::from_secs(60)).await?;
    if !ctx.stores.namespace_selected(&ctx.settings, &namespace) {
        // Another controller's, or not opted in: not even our finalizer is added.
        tracing::debug!("namespace not matched by --watch-namespace-selector: left alone");
        return Ok(Action::await_change());
    }
    let api: Api<FederatedIdentityBinding> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, BINDING_FINALIZER, binding, |event| async {
        match event {
            Finalizer::Apply(b) => apply::apply(&b, ctx).await,
            Finalizer::Cleanup(b) => cleanup::cleanup(&b, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// kube-runtime's error policy: exponential backoff per binding.
pub(crate) fn error_policy(
    binding: Arc<FederatedIdentityBinding>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = key_of(&binding);
    let delay = ctx.backoff.next(&key);
    if error.is_not_found() {
        tracing::debug!(binding = %key, "binding gone meanwhile");
    } else {
        tracing::warn!(binding = %key, category = error.category(), error = %error, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    }
    Action::requeue(delay)
}

/// `namespace/name`: the key of a binding's backoff.
fn key_of(b: &FederatedIdentityBinding) -> String {
    format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any())
}
