//! Apply: the stages of a reconcile in order, each observing, deciding (a function of
//! [`verdict`]) and acting, into a [`Report`] published once at the end.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::ListParams, runtime::controller::Action};
use wif_api::{FederatedIdentityBinding, USE_LABEL, USE_LABEL_VALUE};

use super::{
    act, holders, key_of, pooled,
    status::{self, Note, Report},
    target::{self, Target},
    verdict::{self, Failure, Verdict},
};
use crate::{
    Error,
    azure::CredentialSpec,
    conditions::{self, Check},
    context::Context,
    directory::{ResolvedIdentity, next_resync},
    metrics::ReconcileLabels,
    naming, propagation,
    reasons::Reason,
    service_account::{self, AnnotationPlan},
};

/// How soon a binding whose previous credential is kept for pods that still use it is looked at
/// again (pods are not watched: they are listed on each look).
const PREVIOUS_RECHECK: Duration = Duration::from_secs(10);

/// Applies a binding: evaluate, publish, and requeue as the verdict says.
pub(super) async fn apply(b: &FederatedIdentityBinding, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(b);
    let mut run = Apply::new(ctx, b);
    let verdict = run.evaluate().await;
    let recheck = run.recheck;
    status::publish(ctx, b, run.report).await?;
    match verdict {
        Verdict::Synced { parent_key } => {
            ctx.backoff.reset(&key);
            if let Some(after) = recheck {
                return Ok(Action::requeue(after));
            }
            let now = std::time::SystemTime::now();
            Ok(Action::requeue(next_resync(
                &parent_key,
                ctx.settings.resync_interval,
                ctx.settings.resync_jitter,
                now,
            )))
        }
        Verdict::Pending => Ok(Action::requeue(ctx.backoff.next(&key))),
        Verdict::Failed(f) => Err(Error::Degraded {
            reason: f.reason,
            message: f.message,
        }),
    }
}

/// One apply in progress.
struct Apply<'a> {
    ctx: &'a Context,
    b: &'a FederatedIdentityBinding,
    ns: String,
    report: Report,
    /// The credential serving the binding when it is shared (another name, another marker):
    /// what the read-back looks for instead of the desired one.
    serving: Option<CredentialSpec>,
    /// Look again this soon even when everything is `True` (something outside the binding is
    /// waited for).
    recheck: Option<Duration>,
}

impl<'a> Apply<'a> {
    fn new(ctx: &'a Context, b: &'a FederatedIdentityBinding) -> Self {
        Self {
            ctx,
            b,
            ns: b.namespace().unwrap_or_default(),
            report: Report::new(b.status.clone().unwrap_or_default()),
            serving: None,
            recheck: None,
        }
    }

    /// Runs the stages; stops at the first that fails everything after it.
    async fn evaluate(&mut self) -> Verdict {
        let target = match Target::from_spec(&self.b.spec.identity) {
            Ok(t) => t,
            Err(message) => return self.invalid_spec(message),
        };
        if let Err(f) = self.permitted(&target).await {
            return Verdict::Failed(f);
        }
        if let Target::Pool(pool) = &target {
            return self.evaluate_pooled(pool).await;
        }
        let resolved = match self.resolve(&target).await {
            Ok(r) => r,
            Err(f) => return Verdict::Failed(f),
        };
        if let Err(f) = self.leave_previous(&resolved).await {
            return Verdict::Failed(f);
        }
        let desired = target::desired(&self.ctx.settings, self.b, &resolved.parent);
        let limit = self.ctx.settings.max_credentials;
        let (credential_ok, wrote) = self.sync(&resolved, &desired, limit).await;
        let desired = self.serving.take().unwrap_or(desired);
        let sa_exists = self.service_account(&resolved, credential_ok).await;
        if credential_ok {
            self.report.obs.propagated = self.propagation(&resolved, &desired, wrote, sa_exists).await;
        } else {
            self.report.obs.propagated = Check::unknown(
                Reason::AwaitingCredential,
                "not evaluated: the credential is not synced",
            );
        }
        verdict::conclude(&self.report.obs, resolved.parent.key())
    }

    /// A binding naming a pool: placed (the placement recorded before any write), synced on
    /// the chosen identity, then, when it moves, the ServiceAccount keeps the previous identity
    /// until the new credential is propagated, and the previous credential goes last.
    async fn evaluate_pooled(&mut self, pool: &str) -> Verdict {
        let placed = match pooled::place(self.ctx, self.b, pool, &self.report.old).await {
            Ok(p) => p,
            Err(f) => {
                self.report.obs.identity = Check::fail(f.reason, f.message.clone());
                verdict::blocked_from(
                    &mut self.report.obs,
                    1,
                    Reason::IdentityNotResolved,
                    "the binding is not placed on an identity of its pool",
                );
                return Verdict::Failed(f);
            }
        };
        let resolved = placed.resolved.clone();
        self.report.obs.identity = Check::ok(
            Reason::Placed,
            format!(
                "placed on {} (client id {}) of pool {pool}",
                placed.placement.identity, resolved.client_id
            ),
        );
        self.report.client_id = Some(resolved.client_id.clone());
        self.report.tenant_id = Some(resolved.tenant_id.clone());
        self.report.placement = Some(placed.placement.clone());
        let desired = target::desired(&self.ctx.settings, self.b, &resolved.parent);
        let (credential_ok, wrote) = self.sync(&resolved, &desired, placed.capacity).await;
        let desired = self.serving.take().unwrap_or(desired);
        // Written (or refused): the identity's list now counts it.
        if let Some((parent_key, name)) = &placed.reservation {
            self.ctx.directory.release(parent_key, name);
        }
        let previous = pooled::previous_parent(&placed.placement, &self.ctx.settings.default_tenant);
        let Some(previous) = previous else {
            let sa_exists = self.service_account(&resolved, credential_ok).await;
            self.report.obs.propagated = if credential_ok {
                self.propagation(&resolved, &desired, wrote, sa_exists).await
            } else {
                Check::unknown(
                    Reason::AwaitingCredential,
                    "not evaluated: the credential is not synced",
                )
            };
            return verdict::conclude(&self.report.obs, resolved.parent.key());
        };
        self.move_to(&resolved, &desired, &previous, credential_ok, wrote)
            .await;
        verdict::conclude(&self.report.obs, resolved.parent.key())
    }

    /// Moving from `previous`: the new credential must be propagated before the ServiceAccount
    /// switches, and the old credential is deleted last, once no pod presents its client id.
    async fn move_to(
        &mut self,
        resolved: &ResolvedIdentity,
        desired: &CredentialSpec,
        previous: &crate::azure::Parent,
        credential_ok: bool,
        wrote: bool,
    ) {
        let (ns, sa_name) = (self.ns.clone(), self.b.spec.service_account_name.clone());
        let waiting = |why: &str| {
            Check::unknown(
                Reason::Moving,
                format!(
                    "moving to {}: ServiceAccount {ns}/{sa_name} keeps the previous identity until {why}",
                    resolved.parent.display()
                ),
            )
        };
        if !credential_ok {
            self.report.obs.service_account = waiting("the new credential is synced");
            self.report.obs.propagated = Check::unknown(
                Reason::AwaitingCredential,
                "not evaluated: the credential is not synced",
            );
            return;
        }
        let sa_exists = self.ctx.stores.service_account(&ns, &sa_name).is_some();
        let propagated = self.propagation(resolved, desired, wrote, sa_exists).await;
        let ready = propagated.state == crate::conditions::State::True;
        self.report.obs.propagated = propagated;
        if !ready {
            self.report.obs.service_account = waiting("the new credential is propagated");
            return;
        }
        self.service_account(resolved, true).await;
        if self.report.obs.service_account.state != crate::conditions::State::True {
            return;
        }
        let previous_client_id = self
            .report
            .placement
            .as_ref()
            .and_then(|p| p.previous_client_id.clone());
        if let Some(client_id) = previous_client_id
            && self.previous_in_use(resolved, previous, &client_id).await
        {
            return;
        }
        match act::remove_ours(self.ctx, self.b, previous, None, &mut self.report.events).await {
            Ok(_) => {
                if let Some(p) = self.report.placement.as_mut() {
                    p.previous = None;
                    p.previous_tenant_id = None;
                    p.previous_client_id = None;
                }
                self.report.events.push(Note::normal(
                    Reason::PlacementMoved,
                    format!(
                        "moved to {} (client id {}); the credential on {} is deleted",
                        resolved.parent.display(),
                        resolved.client_id,
                        previous.display()
                    ),
                ));
            }
            Err(f) => {
                self.report.obs.credential = Check::fail(
                    f.reason,
                    format!("deleting the credential on the previous identity: {}", f.message),
                );
            }
        }
    }

    /// Whether pods of the binding's ServiceAccount may still present `client_id`, the previous
    /// identity's (the webhook wrote it into their environment at admission): then its
    /// credential stays, `CredentialSynced` says for which pods (an Event once), and the binding
    /// is looked at again soon. The namespace's labelled pods are listed on demand, only while a
    /// binding moves; when they cannot be listed, the credential stays too.
    async fn previous_in_use(
        &mut self,
        resolved: &ResolvedIdentity,
        previous: &crate::azure::Parent,
        client_id: &str,
    ) -> bool {
        let (on, left) = (resolved.parent.display(), previous.display());
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let selector = format!("{USE_LABEL}={USE_LABEL_VALUE}");
        let pods = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing pods to finish a move failed");
                self.report.obs.credential = Check::unknown(
                    Reason::PreviousKept,
                    format!(
                        "the credential on {on} is in place; the one on {left} is kept: listing the pods of namespace {} \
                         that may still use client id {client_id} failed: {e} (the controller needs list on pods)",
                        self.ns
                    ),
                );
                return true;
            }
        };
        let sa = &self.b.spec.service_account_name;
        let held = holders::holding(&pods, sa, client_id);
        if held.is_empty() {
            return false;
        }
        let message = holders::kept_message(&on, &left, client_id, &held, &self.ns);
        let entering = conditions::find(&self.report.old.conditions, conditions::CREDENTIAL_SYNCED)
            .is_none_or(|c| c.reason != Reason::PreviousKept.as_str());
        if entering {
            self.report
                .events
                .push(Note::normal(Reason::PreviousKept, message.clone()));
        }
        tracing::info!(pods = held.len(), client_id, previous = %left, "previous credential kept while pods use its client id");
        self.report.obs.credential = Check::ok(Reason::PreviousKept, message);
        self.recheck = Some(PREVIOUS_RECHECK);
        true
    }

    fn invalid_spec(&mut self, message: String) -> Verdict {
        let obs = &mut self.report.obs;
        obs.permitted = Check::unknown(Reason::InvalidSpec, "not evaluated: the identity is invalid");
        obs.identity = Check::fail(Reason::InvalidSpec, message.clone());
        verdict::blocked_from(obs, 1, Reason::InvalidSpec, "the identity is invalid");
        Verdict::Failed(Failure::new(Reason::InvalidSpec, message))
    }

    /// Default deny: re-checked here whatever the webhook said; a binding no longer permitted
    /// loses its credential.
    async fn permitted(&mut self, target: &Target) -> Result<(), Failure> {
        let labels = self.ctx.stores.namespace_labels(&self.ns);
        let policies = self.ctx.stores.policies();
        let decision = wif_api::policy::evaluate(
            &self.ns,
            &labels,
            target.requested(),
            policies.iter().map(AsRef::as_ref),
        );
        match verdict::permission(decision, target, &self.ns) {
            Ok(check) => {
                self.report.obs.permitted = check;
                Ok(())
            }
            Err(f) => {
                self.report.obs.permitted = Check::fail(f.reason, f.message.clone());
                verdict::blocked_from(
                    &mut self.report.obs,
                    0,
                    Reason::NotPermitted,
                    "the binding is not permitted",
                );
                self.revoke().await;
                Err(f)
            }
        }
    }

    async fn resolve(&mut self, target: &Target) -> Result<ResolvedIdentity, Failure> {
        let tenant = target::tenant(self.b, &self.ctx.settings);
        match target::resolve(self.ctx, target, &tenant).await {
            Ok(resolved) => {
                self.report.obs.identity = verdict::resolved(target, &resolved);
                self.report.client_id = Some(resolved.client_id.clone());
                self.report.tenant_id = Some(resolved.tenant_id.clone());
                Ok(resolved)
            }
            Err(f) => {
                self.report.obs.identity = Check::fail(f.reason, f.message.clone());
                verdict::blocked_from(
                    &mut self.report.obs,
                    1,
                    Reason::IdentityNotResolved,
                    "the identity is not resolved",
                );
                Err(f)
            }
        }
    }

    /// The identity changed: our credential on the previous one goes first.
    async fn leave_previous(&mut self, resolved: &ResolvedIdentity) -> Result<(), Failure> {
        let settings = &self.ctx.settings;
        let Some(previous) =
            verdict::moved_from(&self.report.old, &resolved.parent, &settings.default_tenant)
        else {
            return Ok(());
        };
        match act::remove_ours(self.ctx, self.b, &previous, None, &mut self.report.events).await {
            Ok(_) => {
                self.report.credential = None;
                Ok(())
            }
            Err(f) => {
                self.report.obs.credential = Check::fail(
                    f.reason,
                    format!(
                        "removing the credential from the previous identity: {}",
                        f.message
                    ),
                );
                verdict::blocked_from(
                    &mut self.report.obs,
                    2,
                    Reason::AwaitingCredential,
                    "the credential is not synced",
                );
                Err(f)
            }
        }
    }

    /// Syncs the credential; whether it is in place, and whether anything was written.
    async fn sync(
        &mut self,
        resolved: &ResolvedIdentity,
        desired: &CredentialSpec,
        limit: usize,
    ) -> (bool, bool) {
        let before = self.report.events.len();
        let synced = act::sync(
            self.ctx,
            self.b,
            &resolved.parent,
            desired,
            limit,
            &mut self.report.events,
        )
        .await;
        let wrote = self.report.events.len() > before;
        match synced {
            Ok((credential, outcome)) => {
                let on = resolved.parent.display();
                if outcome == verdict::Synced::Shared {
                    self.serving = Some(CredentialSpec {
                        name: credential.name.clone(),
                        description: credential.description.clone(),
                        ..desired.clone()
                    });
                }
                self.report.credential = Some(verdict::credential_status(&credential, &resolved.parent));
                self.report.obs.credential =
                    verdict::credential(outcome, &credential.name, &on, &self.report.old.conditions);
                (true, wrote)
            }
            Err(f) => {
                self.report.obs.credential = Check::fail(f.reason, f.message);
                (false, wrote)
            }
        }
    }

    /// Not permitted (any more): remove the credential this binding owns.
    async fn revoke(&mut self) {
        let Some(parent) = target::parent_from_status(&self.report.old, &self.ctx.settings.default_tenant)
        else {
            return;
        };
        let events = &mut self.report.events;
        match act::remove_ours(self.ctx, self.b, &parent, None, events).await {
            Ok(n) => {
                self.report.credential = None;
                if n > 0 {
                    events.push(Note::warning(
                        Reason::CredentialRevoked,
                        format!(
                            "no policy grants this identity any more: deleted {n} credential(s) from {}",
                            parent.display()
                        ),
                    ));
                }
            }
            Err(f) => events.push(Note::warning(
                Reason::RevocationFailed,
                format!(
                    "could not delete the credential of a binding that is no longer permitted: {}",
                    f.message
                ),
            )),
        }
    }

    /// Checks the ServiceAccount and, once the credential is in place, annotates it (pods must
    /// not be pointed at an identity that does not trust them); whether it exists.
    async fn service_account(&mut self, resolved: &ResolvedIdentity, credential_ok: bool) -> bool {
        let (ctx, spec, ns) = (self.ctx, &self.b.spec, self.ns.as_str());
        let sa_name = &spec.service_account_name;
        let Some(sa) = ctx.stores.service_account(ns, sa_name) else {
            self.report.obs.service_account = verdict::service_account_missing(ns, sa_name);
            return false;
        };
        if !credential_ok {
            self.report.obs.service_account = verdict::service_account_waiting(ns, sa_name);
            return true;
        }
        let manager = naming::service_account_manager(&self.b.name_any());
        let default_audience = ctx.settings.default_audience.as_str();
        let audience = spec.audience.as_deref().unwrap_or(default_audience);
        if let Some(found) = service_account::audience_mismatch(
            &sa,
            &manager,
            audience,
            default_audience,
            spec.annotate_service_account,
        ) {
            self.report.obs.service_account = verdict::audience_mismatch(ns, sa_name, &found, audience);
            return true;
        }
        let want = spec.annotate_service_account.then_some(service_account::Wanted {
            client_id: &resolved.client_id,
            tenant_id: &resolved.tenant_id,
            identity_name: spec.identity_name.as_deref(),
            audience: (audience != default_audience).then_some(audience),
        });
        let plan = service_account::annotation_plan(&sa, &manager, want);
        if plan != AnnotationPlan::Nothing && !ctx.leadership.is_leader() {
            self.report.obs.service_account =
                Check::unknown(Reason::NotLeader, "this replica is not the leader");
            return true;
        }
        let applied = service_account::apply(&ctx.client, &sa, &manager, &plan).await;
        let annotate = spec.annotate_service_account;
        if annotate
            && matches!(applied, Ok(service_account::Applied::Done))
            && matches!(plan, AnnotationPlan::Apply(_))
        {
            self.report.events.push(Note::normal(
                Reason::ServiceAccountAnnotated,
                format!(
                    "annotated ServiceAccount {ns}/{sa_name} with client id {}",
                    resolved.client_id
                ),
            ));
        }
        self.report.obs.service_account = verdict::service_account(
            &applied,
            annotate,
            ns,
            sa_name,
            resolved,
            spec.identity_name.as_deref(),
        );
        true
    }

    /// `Propagated`: kept while nothing changed, else read back, then (when enabled) a real
    /// token exchange once the ServiceAccount exists.
    async fn propagation(
        &self,
        resolved: &ResolvedIdentity,
        desired: &CredentialSpec,
        wrote: bool,
        sa_exists: bool,
    ) -> Check {
        let ctx = self.ctx;
        let report = &self.report;
        let generation = self.b.metadata.generation;
        if let Some(kept) =
            verdict::propagation_kept(&report.old, report.credential.as_ref(), wrote, generation)
        {
            return kept;
        }
        let read =
            propagation::read_back(&ctx.azure, &resolved.parent, desired, &ctx.settings.readback).await;
        if let Some(pending) = verdict::read_back(&read) {
            return pending;
        }
        let Some(exchange) = &ctx.exchange else {
            return verdict::read_back_only(ctx.settings.readback.count);
        };
        if !sa_exists {
            return Check::unknown(
                Reason::AwaitingServiceAccount,
                "the token exchange is verified once the ServiceAccount exists",
            );
        }
        let sa = &self.b.spec.service_account_name;
        let (ns, client_id) = (self.ns.as_str(), resolved.client_id.as_str());
        let result = propagation::exchange(
            &ctx.client,
            exchange,
            ns,
            sa,
            &desired.audience,
            client_id,
            &resolved.tenant_id,
        )
        .await;
        let label = if result.is_ok() { "success" } else { "failure" };
        ctx.metrics
            .verifications
            .get_or_create(&ReconcileLabels { result: label })
            .inc();
        verdict::exchanged(&result, ns, sa, client_id)
    }
}
