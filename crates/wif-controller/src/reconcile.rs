//! The reconciler: one binding at a time, through a finalizer.
//!
//! Apply, in order: the identity in the spec is well formed → a policy grants it to the
//! namespace (else our credential is revoked and nothing is written) → the identity resolves →
//! under the identity's lock, the credential list (shared by the identity's bindings) is planned
//! against and written (leader only) → the ServiceAccount is annotated → the credential reads
//! back (and optionally a real exchange succeeds) → conditions, status and Events.
//!
//! Every failure is a condition with a reason and a message that says what to fix, an Event,
//! and a retry with per-binding exponential backoff; never a crash, never a write to a
//! credential we do not own.

use std::{sync::Arc, time::Instant};

use jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as Finalizer, finalizer},
    },
};
use serde_json::json;
use wif_api::{
    BINDING_FINALIZER, CredentialStatus, DeletionPolicy, FederatedIdentityBinding,
    FederatedIdentityBindingStatus, IdentityReference, PolicyDecision, RequestedIdentity,
    UserAssignedIdentityId, is_guid, service_account_subject,
};

use crate::{
    Error,
    azure::{AzureError, CredentialSpec, FederatedCredential, Parent},
    conditions::{self, Check, Observations, PROPAGATED, State},
    context::Context,
    directory::{ResolvedIdentity, next_resync},
    naming,
    plan::{self, Backend, Blocked, Ownership, Step},
    propagation::{self, ReadBack},
    service_account::{self, AnnotationPlan, Applied},
};

/// kube-runtime's reconcile entry point.
pub async fn reconcile(binding: Arc<FederatedIdentityBinding>, ctx: Arc<Context>) -> Result<Action, Error> {
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
    let api: Api<FederatedIdentityBinding> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, BINDING_FINALIZER, binding, |event| async {
        match event {
            Finalizer::Apply(b) => apply(&b, ctx).await,
            Finalizer::Cleanup(b) => cleanup(&b, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// kube-runtime's error policy: exponential backoff per binding.
pub fn error_policy(binding: Arc<FederatedIdentityBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&binding);
    let delay = ctx.backoff.next(&key);
    if error.is_not_found() {
        tracing::debug!(binding = %key, "binding gone meanwhile");
    } else {
        tracing::warn!(binding = %key, category = error.category(), error = %error, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    }
    Action::requeue(delay)
}

fn key_of(b: &FederatedIdentityBinding) -> String {
    format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any())
}

/// The identity named in a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An application by client id.
    Application(String),
    /// A user-assigned identity by resource id (not parsed yet).
    UserAssignedIdentity(String),
}

impl Target {
    /// Checks the spec's identity: exactly one kind, a GUID client id.
    pub fn from_spec(identity: &IdentityReference) -> Result<Self, String> {
        match (&identity.application, &identity.user_assigned_identity) {
            (Some(app), None) => {
                if is_guid(&app.client_id) {
                    Ok(Self::Application(app.client_id.clone()))
                } else {
                    Err(format!(
                        "spec.identity.application.clientId {:?} is not a GUID: use the application (client) id of the app registration",
                        app.client_id
                    ))
                }
            }
            (None, Some(uami)) => Ok(Self::UserAssignedIdentity(uami.resource_id.clone())),
            _ => Err(
                "set exactly one of spec.identity.application and spec.identity.userAssignedIdentity".into(),
            ),
        }
    }

    fn requested(&self) -> RequestedIdentity<'_> {
        match self {
            Self::Application(client_id) => RequestedIdentity::Application { client_id },
            Self::UserAssignedIdentity(resource_id) => {
                RequestedIdentity::UserAssignedIdentity { resource_id }
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Application(c) => format!("application {c}"),
            Self::UserAssignedIdentity(r) => format!("user-assigned identity {r}"),
        }
    }
}

/// A failed step: the condition reason and what to fix.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    message: String,
}

fn failure(reason: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        reason,
        message: message.into(),
    }
}

/// Maps a Graph/ARM error to a condition reason and a message saying what to fix.
fn azure_failure(e: &AzureError, doing: &str, on: &str) -> Failure {
    let status = e.status();
    let message = e.api_message().unwrap_or_default().to_ascii_lowercase();
    match e {
        AzureError::Token { tenant, source, .. } => {
            let hint = source.hint().map(|h| format!(" (hint: {h})")).unwrap_or_default();
            failure(
                "AuthenticationFailed",
                format!(
                    "the controller could not get a token for tenant {tenant} to {doing} {on}: {source}{hint}. \
                     Check the controller's own identity, or allow the tenant with --additionally-allowed-tenants"
                ),
            )
        }
        _ if status == Some(401) => failure(
            "AuthenticationFailed",
            format!("{e}: the controller's token was refused; check that its identity exists in that tenant"),
        ),
        _ if status == Some(403) => failure(
            "Forbidden",
            format!(
                "{e}: the controller's identity may not {doing} {on}; grant it Application.ReadWrite.OwnedBy and \
                 ownership of the application (Graph), or the Managed Identity Contributor role on the identity (ARM)"
            ),
        ),
        _ if status == Some(400)
            && (message.contains("maximum") || message.contains("too many federated")) =>
        {
            failure(
                "CapacityExceeded",
                format!(
                    "{e}: the identity holds the maximum number of federated credentials; delete unused ones or bind another identity"
                ),
            )
        }
        _ if (status == Some(400) && e.code() == Some("InvalidFederatedIdentityCredentialValue"))
            || message.contains("issuer and subject combination already exists") =>
        {
            failure(
                "Conflict",
                format!(
                    "{e}: another credential on {on} trusts the same issuer and subject; wif does not modify credentials it does not own"
                ),
            )
        }
        _ if e.is_transient() => failure(
            "AzureUnavailable",
            format!("{e} (retries exhausted; trying again later)"),
        ),
        _ => failure("AzureError", format!("failed to {doing} {on}: {e}")),
    }
}

/// Rebuilds the parent recorded in a status (to clean up where we wrote before).
fn parent_from_status(status: &FederatedIdentityBindingStatus, default_tenant: &str) -> Option<Parent> {
    let credential = status.credential.as_ref()?;
    let tenant = status
        .tenant_id
        .clone()
        .unwrap_or_else(|| default_tenant.to_owned());
    if let Some(object_id) = credential.parent.strip_prefix("applications/") {
        return Some(Parent::Application {
            tenant,
            client_id: status.client_id.clone().unwrap_or_default(),
            object_id: object_id.to_owned(),
        });
    }
    UserAssignedIdentityId::parse(&credential.parent)
        .ok()
        .map(|id| Parent::Identity { tenant, id })
}

/// Ownership of this binding's credentials on `parent`.
fn ownership(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    parent: &Parent,
    extra_names: &[String],
) -> Ownership {
    let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
    let status = b.status.as_ref();
    let recorded = status
        .and_then(|s| s.credential.as_ref())
        .filter(|c| c.parent.eq_ignore_ascii_case(&parent.display()));
    let mut names = vec![naming::default_credential_name(
        &ctx.settings.cluster_id,
        &ns,
        &name,
    )];
    names.extend(recorded.map(|c| c.name.clone()));
    names.extend(extra_names.iter().cloned());
    Ownership {
        backend: parent.backend(),
        marker: naming::marker(&ctx.settings.cluster_id, &ns, &name),
        names,
        recorded_id: recorded.map(|c| c.id.clone()),
    }
}

/// The credential a binding wants on `parent`.
fn desired(ctx: &Context, b: &FederatedIdentityBinding, parent: &Parent) -> CredentialSpec {
    let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
    CredentialSpec {
        name: b
            .spec
            .credential_name
            .clone()
            .unwrap_or_else(|| naming::default_credential_name(&ctx.settings.cluster_id, &ns, &name)),
        issuer: ctx.settings.issuer.clone(),
        subject: service_account_subject(&ns, &b.spec.service_account_name),
        audience: b
            .spec
            .audience
            .clone()
            .unwrap_or_else(|| ctx.settings.default_audience.clone()),
        description: (parent.backend() == Backend::Graph)
            .then(|| naming::description(&ctx.settings.cluster_id, &ns, &name)),
    }
}

/// Resolves the spec's identity (cached: client ids and resource ids do not move).
async fn resolve(ctx: &Context, target: &Target, tenant: &str) -> Result<ResolvedIdentity, Failure> {
    let cache_key = match target {
        Target::Application(c) => format!("app/{}/{}", tenant.to_ascii_lowercase(), c.to_ascii_lowercase()),
        Target::UserAssignedIdentity(r) => {
            format!("uami/{}/{}", tenant.to_ascii_lowercase(), r.to_ascii_lowercase())
        }
    };
    if let Some(hit) = ctx.directory.resolved(&cache_key) {
        return Ok(hit);
    }
    let resolved = match target {
        Target::Application(client_id) => {
            let app = ctx
                .azure
                .graph
                .find_application(tenant, client_id)
                .await
                .map_err(|e| azure_failure(&e, "look up", &format!("application {client_id}")))?
                .ok_or_else(|| {
                    failure(
                        "ApplicationNotFound",
                        format!(
                            "no application with client id {client_id} in tenant {tenant}: check \
                             spec.identity.application.clientId (the Application (client) ID, not the object id) \
                             and spec.identity.tenantId, and that the controller's identity may read the application"
                        ),
                    )
                })?;
            ResolvedIdentity {
                parent: Parent::Application {
                    tenant: tenant.to_owned(),
                    client_id: app.app_id.clone(),
                    object_id: app.object_id,
                },
                client_id: app.app_id,
                tenant_id: tenant.to_owned(),
            }
        }
        Target::UserAssignedIdentity(resource_id) => {
            let id = UserAssignedIdentityId::parse(resource_id).map_err(|e| {
                failure(
                    "InvalidResourceId",
                    format!("spec.identity.userAssignedIdentity.resourceId: {e}"),
                )
            })?;
            let identity = ctx
                .azure
                .arm
                .get_identity(tenant, &id)
                .await
                .map_err(|e| azure_failure(&e, "read", &format!("identity {id}")))?
                .ok_or_else(|| {
                    failure(
                        "IdentityNotFound",
                        format!(
                            "user-assigned identity {id} does not exist: check spec.identity.userAssignedIdentity.resourceId \
                             (subscription, resource group and name) and that the controller may read it"
                        ),
                    )
                })?;
            ResolvedIdentity {
                parent: Parent::Identity {
                    tenant: tenant.to_owned(),
                    id,
                },
                client_id: identity.client_id,
                tenant_id: identity.tenant_id,
            }
        }
    };
    ctx.directory.remember(cache_key, resolved.clone());
    Ok(resolved)
}

/// How the credential ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Synced {
    Created,
    Updated,
    Adopted,
    InSync,
}

/// Executes `steps` on `parent`, under the identity lock held by the caller; returns the
/// credential at the desired name afterwards.
async fn execute(
    ctx: &Context,
    listing: &mut crate::directory::Listing,
    parent: &Parent,
    desired: &CredentialSpec,
    steps: &[Step],
    events: &mut Vec<Note>,
) -> Result<Option<FederatedCredential>, Failure> {
    let on = parent.display();
    let mut result = None;
    for step in steps {
        if !ctx.leadership.is_leader() {
            listing.invalidate();
            return Err(failure(
                "NotLeader",
                "this replica lost the leader Lease before writing; the new leader takes over",
            ));
        }
        match step {
            Step::Create => {
                let created = ctx.azure.create(parent, desired).await.map_err(|e| {
                    listing.invalidate();
                    azure_failure(&e, "create a federated credential on", &on)
                })?;
                tracing::info!(credential = %created.name, parent = %on, "created federated credential");
                events.push(Note::normal(
                    "CredentialCreated",
                    format!("created federated credential {} on {on}", created.name),
                ));
                listing.upsert(created.clone());
                result = Some(created);
            }
            Step::Update { id, name, adopt } => {
                let updated = ctx.azure.update(parent, id, name, desired).await.map_err(|e| {
                    listing.invalidate();
                    azure_failure(&e, "update a federated credential on", &on)
                })?;
                let (reason, verb) = if *adopt {
                    ("CredentialAdopted", "adopted identical")
                } else {
                    ("CredentialUpdated", "corrected")
                };
                tracing::info!(credential = %name, parent = %on, adopt, "updated federated credential");
                events.push(Note::normal(
                    reason,
                    format!("{verb} federated credential {name} on {on}"),
                ));
                listing.upsert(updated.clone());
                result = Some(updated);
            }
            Step::Delete { id, name } => {
                ctx.azure.delete(parent, id, name).await.map_err(|e| {
                    listing.invalidate();
                    azure_failure(&e, "delete a federated credential on", &on)
                })?;
                tracing::info!(credential = %name, parent = %on, "deleted federated credential");
                events.push(Note::normal(
                    "CredentialDeleted",
                    format!("deleted federated credential {name} (ours) from {on}"),
                ));
                listing.remove(name);
            }
        }
    }
    Ok(result)
}

/// Lists (or reuses the identity's fresh list), plans and writes.
async fn sync(
    ctx: &Context,
    b: &FederatedIdentityBinding,
    parent: &Parent,
    desired: &CredentialSpec,
    events: &mut Vec<Note>,
) -> Result<(FederatedCredential, Synced), Failure> {
    let on = parent.display();
    let mut listing = ctx.directory.lock(&parent.key()).await;
    let observed = match listing.fresh(ctx.directory.list_ttl) {
        Some(list) => list.to_vec(),
        None => {
            let list = ctx
                .azure
                .list(parent)
                .await
                .map_err(|e| azure_failure(&e, "list the federated credentials of", &on))?;
            listing.set(list.clone());
            list
        }
    };
    let ours = ownership(ctx, b, parent, &[]);
    let plan = plan::plan(desired, &observed, &ours, ctx.settings.max_credentials);
    if let Some(blocked) = plan.blocked {
        return Err(match blocked {
            Blocked::NameTaken {
                id,
                name,
                other_owner,
            } => failure(
                "Conflict",
                format!(
                    "credential name {name} on {on} is taken by a credential (id {id}) {} with other values; \
                     wif does not modify it. Set spec.credentialName to another name, or remove that credential",
                    if other_owner {
                        "owned by another wif binding or cluster"
                    } else {
                        "that wif does not own"
                    }
                ),
            ),
            Blocked::IssuerSubjectTaken { id, name } => failure(
                "Conflict",
                format!(
                    "credential {name} (id {id}) on {on}, not owned by wif, already trusts issuer {} and subject {}; \
                     Entra allows one credential per issuer and subject. wif leaves it untouched: delete it, or bind \
                     another identity",
                    desired.issuer, desired.subject
                ),
            ),
            Blocked::CapacityExceeded { used, limit } => failure(
                "CapacityExceeded",
                format!(
                    "{on} already has {used} of its {limit} federated identity credentials; wif evicts nothing. \
                     Delete unused credentials, or bind another application or identity"
                ),
            ),
        });
    }
    let written = execute(ctx, &mut listing, parent, desired, &plan.steps, events).await?;
    let current = written.or_else(|| {
        observed
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&desired.name))
            .cloned()
    });
    drop(listing);
    let credential =
        current.ok_or_else(|| failure("AzureError", "the credential vanished while it was written"))?;
    let outcome = if plan.steps.iter().any(|s| matches!(s, Step::Create)) {
        Synced::Created
    } else if plan.adopts {
        if plan.steps.is_empty() {
            events.push(Note::normal(
                "CredentialAdopted",
                format!(
                    "adopted identical federated credential {} on {on}",
                    credential.name
                ),
            ));
        }
        Synced::Adopted
    } else if plan.steps.iter().any(|s| matches!(s, Step::Update { .. })) {
        Synced::Updated
    } else {
        Synced::InSync
    };
    Ok((credential, outcome))
}

/// Deletes every credential of ours on `parent` (cleanup, revocation, identity change).
async fn remove_ours(
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
        Err(e) => return Err(azure_failure(&e, "list the federated credentials of", &on)),
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
    let steps = plan::plan_cleanup(&observed, &ownership(ctx, b, parent, &extra));
    execute(
        ctx,
        &mut listing,
        parent,
        desired.unwrap_or(&placeholder()),
        &steps,
        events,
    )
    .await?;
    Ok(steps.len())
}

fn placeholder() -> CredentialSpec {
    CredentialSpec {
        name: String::new(),
        issuer: String::new(),
        subject: String::new(),
        audience: String::new(),
        description: None,
    }
}

/// An Event to publish.
#[derive(Debug)]
struct Note {
    kind: EventType,
    reason: &'static str,
    note: String,
}

impl Note {
    fn normal(reason: &'static str, note: String) -> Self {
        Self {
            kind: EventType::Normal,
            reason,
            note,
        }
    }

    fn warning(reason: &'static str, note: String) -> Self {
        Self {
            kind: EventType::Warning,
            reason,
            note,
        }
    }
}

/// The `&'static` reason of a kept `Propagated=True` condition.
fn propagated_reason(reason: &str) -> &'static str {
    match reason {
        "Verified" => "Verified",
        _ => "ReadBack",
    }
}

/// The `&'static` reason of a kept `CredentialSynced=True` condition.
fn synced_reason(reason: &str) -> &'static str {
    match reason {
        "Created" => "Created",
        "Updated" => "Updated",
        "Adopted" => "Adopted",
        _ => "InSync",
    }
}

/// How an apply ended.
enum Verdict {
    Synced { parent_key: String },
    Pending,
    Failed(Failure),
}

struct Apply<'a> {
    ctx: &'a Context,
    b: &'a FederatedIdentityBinding,
    ns: String,
    name: String,
    old: FederatedIdentityBindingStatus,
    obs: Observations,
    credential: Option<CredentialStatus>,
    client_id: Option<String>,
    tenant_id: Option<String>,
    events: Vec<Note>,
}

impl<'a> Apply<'a> {
    fn new(ctx: &'a Context, b: &'a FederatedIdentityBinding) -> Self {
        let old = b.status.clone().unwrap_or_default();
        Self {
            ctx,
            b,
            ns: b.namespace().unwrap_or_default(),
            name: b.name_any(),
            credential: old.credential.clone(),
            client_id: old.client_id.clone(),
            tenant_id: old.tenant_id.clone(),
            old,
            obs: Observations::unknown("NotEvaluated", "not evaluated yet"),
            events: Vec::new(),
        }
    }

    fn blocked_from(&mut self, stage: usize, reason: &'static str, why: &str) {
        let message = format!("not evaluated: {why}");
        let checks = [
            &mut self.obs.identity,
            &mut self.obs.credential,
            &mut self.obs.service_account,
            &mut self.obs.propagated,
        ];
        for check in checks.into_iter().skip(stage) {
            *check = Check::unknown(reason, message.clone());
        }
    }

    async fn evaluate(&mut self) -> Verdict {
        let ctx = self.ctx;
        let spec = &self.b.spec;
        let target = match Target::from_spec(&spec.identity) {
            Ok(t) => t,
            Err(message) => {
                self.obs.permitted = Check::unknown("InvalidSpec", "not evaluated: the identity is invalid");
                self.obs.identity = Check::fail("InvalidSpec", message.clone());
                self.blocked_from(1, "InvalidSpec", "the identity is invalid");
                return Verdict::Failed(failure("InvalidSpec", message));
            }
        };

        // Default deny: re-checked here whatever the webhook said.
        let labels = ctx.stores.namespace_labels(&self.ns);
        let policies = ctx.stores.policies();
        match wif_api::policy::evaluate(
            &self.ns,
            &labels,
            target.requested(),
            policies.iter().map(AsRef::as_ref),
        ) {
            PolicyDecision::Granted { policy } => {
                self.obs.permitted = Check::ok(
                    "Granted",
                    format!(
                        "FederatedIdentityPolicy {policy} grants {} to namespace {}",
                        target.describe(),
                        self.ns
                    ),
                );
            }
            PolicyDecision::Denied { message } => {
                self.obs.permitted = Check::fail("NotPermitted", message.clone());
                self.blocked_from(0, "NotPermitted", "the binding is not permitted");
                self.revoke().await;
                return Verdict::Failed(failure("NotPermitted", message));
            }
        }

        let tenant = spec
            .identity
            .tenant_id
            .clone()
            .unwrap_or_else(|| ctx.settings.default_tenant.clone());
        let resolved = match resolve(ctx, &target, &tenant).await {
            Ok(r) => r,
            Err(f) => {
                self.obs.identity = Check::fail(f.reason, f.message.clone());
                self.blocked_from(1, "IdentityNotResolved", "the identity is not resolved");
                return Verdict::Failed(f);
            }
        };
        self.obs.identity = Check::ok(
            "Resolved",
            format!(
                "{} resolved: client id {} in tenant {}",
                target.describe(),
                resolved.client_id,
                resolved.tenant_id
            ),
        );
        self.client_id = Some(resolved.client_id.clone());
        self.tenant_id = Some(resolved.tenant_id.clone());

        // The identity changed: our credential on the previous one goes first.
        if let Some(previous) = parent_from_status(&self.old, &ctx.settings.default_tenant)
            && !previous
                .display()
                .eq_ignore_ascii_case(&resolved.parent.display())
        {
            match remove_ours(ctx, self.b, &previous, None, &mut self.events).await {
                Ok(_) => self.credential = None,
                Err(f) => {
                    self.obs.credential = Check::fail(
                        f.reason,
                        format!(
                            "removing the credential from the previous identity: {}",
                            f.message
                        ),
                    );
                    self.blocked_from(2, "AwaitingCredential", "the credential is not synced");
                    return Verdict::Failed(f);
                }
            }
        }

        let desired = desired(ctx, self.b, &resolved.parent);
        let before = self.events.len();
        let synced = sync(ctx, self.b, &resolved.parent, &desired, &mut self.events).await;
        let wrote = self.events.len() > before;
        let credential_ok = match synced {
            Ok((credential, outcome)) => {
                self.credential = Some(CredentialStatus {
                    id: credential.id.clone(),
                    name: credential.name.clone(),
                    parent: resolved.parent.display(),
                    issuer: credential.issuer.clone(),
                    subject: credential.subject.clone(),
                    audiences: credential.audiences.clone(),
                });
                let on = resolved.parent.display();
                self.obs.credential = match outcome {
                    Synced::Created => Check::ok(
                        "Created",
                        format!("created credential {} on {on}", credential.name),
                    ),
                    Synced::Updated => Check::ok(
                        "Updated",
                        format!("corrected credential {} on {on} in place", credential.name),
                    ),
                    Synced::Adopted => Check::ok(
                        "Adopted",
                        format!("adopted the identical credential {} on {on}", credential.name),
                    ),
                    Synced::InSync => {
                        match conditions::find(&self.old.conditions, conditions::CREDENTIAL_SYNCED) {
                            Some(c) if c.status == "True" => {
                                Check::ok(synced_reason(&c.reason), c.message.clone())
                            }
                            _ => Check::ok(
                                "InSync",
                                format!("credential {} on {on} matches the spec", credential.name),
                            ),
                        }
                    }
                };
                true
            }
            Err(f) => {
                self.obs.credential = Check::fail(f.reason, f.message);
                false
            }
        };

        let sa_exists = self.service_account(&resolved, credential_ok).await;

        if credential_ok {
            self.propagation(&resolved, &desired, wrote, sa_exists).await;
        } else {
            self.obs.propagated = Check::unknown(
                "AwaitingCredential",
                "not evaluated: the credential is not synced",
            );
        }

        if let Some((_, c)) = self
            .obs
            .parts()
            .into_iter()
            .find(|(_, c)| c.state == State::False)
        {
            return Verdict::Failed(failure(c.reason, c.message.clone()));
        }
        if self.obs.parts().iter().any(|(_, c)| c.state != State::True) {
            return Verdict::Pending;
        }
        Verdict::Synced {
            parent_key: resolved.parent.key(),
        }
    }

    /// Not permitted (any more): remove the credential this binding owns.
    async fn revoke(&mut self) {
        let Some(parent) = parent_from_status(&self.old, &self.ctx.settings.default_tenant) else {
            return;
        };
        match remove_ours(self.ctx, self.b, &parent, None, &mut self.events).await {
            Ok(n) => {
                self.credential = None;
                if n > 0 {
                    self.events.push(Note::warning(
                        "CredentialRevoked",
                        format!(
                            "no policy grants this identity any more: deleted {n} credential(s) from {}",
                            parent.display()
                        ),
                    ));
                }
            }
            Err(f) => self.events.push(Note::warning(
                "RevocationFailed",
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
        let ctx = self.ctx;
        let spec = &self.b.spec;
        let sa_name = &spec.service_account_name;
        let Some(sa) = ctx.stores.service_account(&self.ns, sa_name) else {
            self.obs.service_account = Check::fail(
                "ServiceAccountNotFound",
                format!(
                    "ServiceAccount {}/{sa_name} does not exist: create it (the credential already trusts its tokens) \
                     or fix spec.serviceAccountName",
                    self.ns
                ),
            );
            return false;
        };
        if !credential_ok {
            self.obs.service_account = Check::unknown(
                "AwaitingCredential",
                format!(
                    "ServiceAccount {}/{sa_name} exists; it is annotated once the credential is in place",
                    self.ns
                ),
            );
            return true;
        }
        let manager = naming::service_account_manager(&self.name);
        let default_audience = ctx.settings.default_audience.as_str();
        let audience = spec.audience.as_deref().unwrap_or(default_audience);
        if let Some(found) = service_account::audience_mismatch(
            &sa,
            &manager,
            audience,
            default_audience,
            spec.annotate_service_account,
        ) {
            self.obs.service_account = Check::fail(
                "AudienceMismatch",
                format!(
                    "ServiceAccount {}/{sa_name}'s pods get tokens for audience {found:?} (annotation {} or the \
                     default), but this binding's credential trusts {audience:?}: Entra would answer AADSTS700212; \
                     make spec.audience and the annotation agree",
                    self.ns,
                    wif_api::AUDIENCE_ANNOTATION
                ),
            );
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
            self.obs.service_account = Check::unknown("NotLeader", "this replica is not the leader");
            return true;
        }
        self.obs.service_account = match service_account::apply(&ctx.client, &sa, &manager, &plan).await {
            Ok(Applied::Done) if spec.annotate_service_account => {
                if matches!(plan, AnnotationPlan::Apply(_)) {
                    self.events.push(Note::normal(
                        "ServiceAccountAnnotated",
                        format!(
                            "annotated ServiceAccount {}/{sa_name} with client id {}",
                            self.ns, resolved.client_id
                        ),
                    ));
                }
                let suffix = spec
                    .identity_name
                    .as_deref()
                    .map(|n| format!(".{n}"))
                    .unwrap_or_default();
                Check::ok(
                    "Annotated",
                    format!(
                        "ServiceAccount {}/{sa_name} carries client-id{suffix} {} and tenant-id{suffix} {}",
                        self.ns, resolved.client_id, resolved.tenant_id
                    ),
                )
            }
            Ok(Applied::Done) => Check::ok(
                "Exists",
                format!(
                    "ServiceAccount {}/{sa_name} exists (not annotated: annotateServiceAccount is false)",
                    self.ns
                ),
            ),
            Ok(Applied::Conflict(why)) => Check::fail(
                "AnnotationConflict",
                format!(
                    "ServiceAccount {}/{sa_name} already has a different client-id or tenant-id annotation written by \
                     someone else ({why}); remove it, or set annotateServiceAccount: false",
                    self.ns
                ),
            ),
            Ok(Applied::Stale) => Check::unknown(
                "ServiceAccountChanged",
                format!(
                    "ServiceAccount {}/{sa_name} changed while it was being annotated",
                    self.ns
                ),
            ),
            Err(e) => Check::fail(
                "KubernetesApi",
                format!("failed to annotate ServiceAccount {}/{sa_name}: {e}", self.ns),
            ),
        };
        true
    }

    async fn propagation(
        &mut self,
        resolved: &ResolvedIdentity,
        desired: &CredentialSpec,
        wrote: bool,
        sa_exists: bool,
    ) {
        let ctx = self.ctx;
        let previous = conditions::find(&self.old.conditions, PROPAGATED);
        let unchanged = !wrote
            && self.old.credential == self.credential
            && previous
                .is_some_and(|c| c.status == "True" && c.observed_generation == self.b.metadata.generation);
        if let Some(c) = previous.filter(|_| unchanged) {
            self.obs.propagated = Check::ok(propagated_reason(&c.reason), c.message.clone());
            return;
        }
        match propagation::read_back(&ctx.azure, &resolved.parent, desired, &ctx.settings.readback).await {
            Ok(ReadBack::Consistent) => {}
            Ok(ReadBack::Inconsistent(detail)) => {
                self.obs.propagated = Check::unknown(
                    "ReadBackPending",
                    format!("the credential does not read back yet: {detail}"),
                );
                return;
            }
            Err(e) => {
                self.obs.propagated = Check::unknown(
                    "ReadBackPending",
                    format!("reading the credential back failed: {e}"),
                );
                return;
            }
        }
        let Some(exchange) = &ctx.exchange else {
            self.obs.propagated = Check::ok(
                "ReadBack",
                format!(
                    "the credential read back consistently {} time(s); Entra may take a few minutes more to honour it",
                    ctx.settings.readback.count
                ),
            );
            return;
        };
        if !sa_exists {
            self.obs.propagated = Check::unknown(
                "AwaitingServiceAccount",
                "the token exchange is verified once the ServiceAccount exists",
            );
            return;
        }
        let sa = &self.b.spec.service_account_name;
        let result = propagation::exchange(
            &ctx.client,
            exchange,
            &self.ns,
            sa,
            &desired.audience,
            &resolved.client_id,
            &resolved.tenant_id,
        )
        .await;
        match result {
            Ok(()) => {
                ctx.metrics
                    .verifications
                    .get_or_create(&crate::metrics::ReconcileLabels { result: "success" })
                    .inc();
                self.obs.propagated = Check::ok(
                    "Verified",
                    format!(
                        "a token of ServiceAccount {}/{sa} was exchanged for an access token as client {}",
                        self.ns, resolved.client_id
                    ),
                );
            }
            Err(e) => {
                ctx.metrics
                    .verifications
                    .get_or_create(&crate::metrics::ReconcileLabels { result: "failure" })
                    .inc();
                let code = e.aadsts().map(|c| format!("AADSTS{c}: ")).unwrap_or_default();
                self.obs.propagated = Check::fail(
                    "TokenExchangeFailed",
                    format!(
                        "{code}{} (a new credential can take minutes to be honoured; retrying with backoff)",
                        e.explain()
                    ),
                );
            }
        }
    }

    /// Writes the status (only if it changed) and publishes Events for what changed.
    async fn publish(self) -> Result<(), Error> {
        let ctx = self.ctx;
        let generation = self.b.metadata.generation;
        let conditions = conditions::compute(&self.old.conditions, &self.obs, generation, Timestamp::now());
        let wrote_credential = self.events.iter().any(|n| n.reason.starts_with("Credential"));
        let mut notes = self.events;
        for t in conditions::transitions(&self.old.conditions, &conditions) {
            // A write already has its own Event; its condition change would repeat it.
            if wrote_credential && t.kind == conditions::CREDENTIAL_SYNCED && t.status == "True" {
                continue;
            }
            let reason: &'static str = leak_reason(&t.reason);
            let kind = if t.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            notes.push(Note {
                kind,
                reason,
                note: format!("{} is {}: {}", t.kind, t.status, t.message),
            });
        }
        let status = FederatedIdentityBindingStatus {
            observed_generation: generation,
            credential: self.credential,
            client_id: self.client_id,
            tenant_id: self.tenant_id,
            conditions,
        };
        if status != self.old {
            let api: Api<FederatedIdentityBinding> = Api::namespaced(ctx.client.clone(), &self.ns);
            let patch = json!({
                "apiVersion": FederatedIdentityBinding::api_version(&()),
                "kind": FederatedIdentityBinding::kind(&()),
                "status": status,
            });
            api.patch_status(
                &self.name,
                &PatchParams::apply(naming::FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::Kube)?;
        }
        publish_events(ctx, self.b, notes).await;
        Ok(())
    }
}

/// Condition reasons are a fixed set of literals; map the string back to one of them.
fn leak_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Ready",
        "Granted",
        "NotPermitted",
        "InvalidSpec",
        "Resolved",
        "ApplicationNotFound",
        "IdentityNotFound",
        "InvalidResourceId",
        "IdentityNotResolved",
        "AuthenticationFailed",
        "Forbidden",
        "Created",
        "Updated",
        "Adopted",
        "InSync",
        "Conflict",
        "CapacityExceeded",
        "AzureUnavailable",
        "AzureError",
        "NotLeader",
        "AwaitingCredential",
        "Annotated",
        "Exists",
        "ServiceAccountNotFound",
        "AnnotationConflict",
        "AudienceMismatch",
        "ServiceAccountChanged",
        "KubernetesApi",
        "ReadBack",
        "ReadBackPending",
        "Verified",
        "TokenExchangeFailed",
        "AwaitingServiceAccount",
        "NotEvaluated",
    ];
    KNOWN
        .iter()
        .find(|k| **k == reason)
        .copied()
        .unwrap_or("StateChanged")
}

async fn publish_events(ctx: &Context, b: &FederatedIdentityBinding, notes: Vec<Note>) {
    let reference = b.object_ref(&());
    for n in notes {
        let event = Event {
            type_: n.kind,
            reason: n.reason.to_owned(),
            note: Some(conditions::truncate(&n.note, 1000)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(%error, reason = n.reason, "failed to publish an Event");
        }
    }
}

async fn apply(b: &FederatedIdentityBinding, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(b);
    let mut run = Apply::new(ctx, b);
    let verdict = run.evaluate().await;
    run.publish().await?;
    match verdict {
        Verdict::Synced { parent_key } => {
            ctx.backoff.reset(&key);
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

/// The binding is being deleted: remove our credential (policy `Delete`) and our annotations.
async fn cleanup(b: &FederatedIdentityBinding, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
    let status = b.status.clone().unwrap_or_default();
    let mut notes = Vec::new();
    let fail = |f: Failure| Error::Degraded {
        reason: f.reason,
        message: format!("cleanup: {}", f.message),
    };
    match b.spec.deletion_policy {
        DeletionPolicy::Orphan => {
            if let Some(c) = &status.credential {
                notes.push(Note::normal(
                    "CredentialOrphaned",
                    format!(
                        "left federated credential {} on {} (deletionPolicy: Orphan)",
                        c.name, c.parent
                    ),
                ));
            }
        }
        DeletionPolicy::Delete => {
            let mut parents: Vec<(Parent, Option<CredentialSpec>)> = Vec::new();
            if let Some(p) = parent_from_status(&status, &ctx.settings.default_tenant) {
                parents.push((p, None));
            }
            // The spec's identity too: the status may never have recorded a credential we wrote.
            if let Ok(target) = Target::from_spec(&b.spec.identity) {
                let tenant = b
                    .spec
                    .identity
                    .tenant_id
                    .clone()
                    .unwrap_or_else(|| ctx.settings.default_tenant.clone());
                match resolve(ctx, &target, &tenant).await {
                    Ok(r) => {
                        let d = desired(ctx, b, &r.parent);
                        match parents.iter_mut().find(|(p, _)| p.key() == r.parent.key()) {
                            Some(entry) => entry.1 = Some(d),
                            None => parents.push((r.parent, Some(d))),
                        }
                    }
                    // Gone, malformed: nothing of ours can be there.
                    Err(f)
                        if matches!(
                            f.reason,
                            "ApplicationNotFound" | "IdentityNotFound" | "InvalidResourceId"
                        ) => {}
                    Err(f) => {
                        publish_events(ctx, b, vec![Note::warning("CleanupFailed", f.message.clone())]).await;
                        return Err(fail(f));
                    }
                }
            }
            for (parent, d) in &parents {
                if let Err(f) = remove_ours(ctx, b, parent, d.as_ref(), &mut notes).await {
                    notes.push(Note::warning("CleanupFailed", f.message.clone()));
                    publish_events(ctx, b, notes).await;
                    return Err(fail(f));
                }
                // Deleted means gone: read back once.
                if let Some(d) = d
                    && let Ok(Some(c)) = ctx.azure.get(parent, &d.name).await
                    && ownership(ctx, b, parent, &[]).owns(&c)
                {
                    publish_events(ctx, b, notes).await;
                    return Err(Error::Degraded {
                        reason: "ReadBackPending",
                        message: format!("credential {} still reads back after its deletion", c.name),
                    });
                }
            }
        }
    }
    if let Some(sa) = ctx.stores.service_account(&ns, &b.spec.service_account_name) {
        let manager = naming::service_account_manager(&name);
        let plan = service_account::annotation_plan(&sa, &manager, None);
        match service_account::apply(&ctx.client, &sa, &manager, &plan).await {
            Ok(_) => {
                if plan == AnnotationPlan::Release {
                    notes.push(Note::normal(
                        "ServiceAccountReleased",
                        format!(
                            "removed the annotations this binding wrote on ServiceAccount {ns}/{}",
                            b.spec.service_account_name
                        ),
                    ));
                }
            }
            Err(e) => {
                publish_events(ctx, b, notes).await;
                return Err(Error::Kube(e));
            }
        }
    }
    publish_events(ctx, b, notes).await;
    ctx.backoff.reset(&key_of(b));
    tracing::info!(namespace = %ns, binding = %name, policy = ?b.spec.deletion_policy, "binding cleaned up");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use wif_api::{ApplicationReference, UserAssignedIdentityReference};

    use super::*;

    #[test]
    fn targets_from_specs() {
        let app = IdentityReference {
            application: Some(ApplicationReference {
                client_id: "5e3ce6c0-2b1f-4285-8d4b-75ee78787346".into(),
            }),
            ..IdentityReference::default()
        };
        assert!(matches!(Target::from_spec(&app), Ok(Target::Application(_))));
        let bad = IdentityReference {
            application: Some(ApplicationReference {
                client_id: "nope".into(),
            }),
            ..IdentityReference::default()
        };
        assert!(Target::from_spec(&bad).unwrap_err().contains("not a GUID"));
        let both = IdentityReference {
            user_assigned_identity: Some(UserAssignedIdentityReference {
                resource_id: "/x".into(),
            }),
            ..app.clone()
        };
        assert!(Target::from_spec(&both).unwrap_err().contains("exactly one"));
        assert!(Target::from_spec(&IdentityReference::default()).is_err());
    }

    #[test]
    fn parents_round_trip_through_status() {
        let rid = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api";
        let status = |parent: &str| FederatedIdentityBindingStatus {
            credential: Some(CredentialStatus {
                parent: parent.into(),
                ..CredentialStatus::default()
            }),
            tenant_id: Some("t".into()),
            client_id: Some("c".into()),
            ..FederatedIdentityBindingStatus::default()
        };
        let app = parent_from_status(&status("applications/oid"), "d").unwrap();
        assert_eq!(app.display(), "applications/oid");
        assert_eq!(app.tenant(), "t");
        let uami = parent_from_status(&status(rid), "d").unwrap();
        assert_eq!(uami.display(), rid);
        assert!(parent_from_status(&status("garbage"), "d").is_none());
        assert!(parent_from_status(&FederatedIdentityBindingStatus::default(), "d").is_none());
    }

    #[test]
    fn azure_errors_become_reasons_that_say_what_to_fix() {
        let api = |status, code: &str, message: &str| AzureError::Api {
            service: crate::azure::Service::Graph,
            method: "POST".into(),
            path: "/x".into(),
            status,
            code: code.into(),
            message: message.into(),
        };
        assert_eq!(
            azure_failure(&api(403, "Authorization_RequestDenied", ""), "create", "app").reason,
            "Forbidden"
        );
        assert_eq!(
            azure_failure(
                &api(
                    400,
                    "Request_BadRequest",
                    "Maximum of 20 federated identity credentials can be added"
                ),
                "create",
                "app"
            )
            .reason,
            "CapacityExceeded"
        );
        assert_eq!(
            azure_failure(
                &api(400, "InvalidFederatedIdentityCredentialValue", "dup"),
                "create",
                "app"
            )
            .reason,
            "Conflict"
        );
        assert_eq!(
            azure_failure(&api(503, "ServiceUnavailable", ""), "list", "app").reason,
            "AzureUnavailable"
        );
        assert_eq!(
            azure_failure(&api(418, "Teapot", ""), "list", "app").reason,
            "AzureError"
        );
        assert!(
            azure_failure(&api(403, "x", ""), "create", "app")
                .message
                .contains("Application.ReadWrite.OwnedBy")
        );
    }

    #[test]
    fn every_reason_is_known() {
        for r in [
            "Conflict",
            "CapacityExceeded",
            "ServiceAccountNotFound",
            "TokenExchangeFailed",
            "Verified",
        ] {
            assert_eq!(leak_reason(r), r);
        }
        assert_eq!(leak_reason("whatever"), "StateChanged");
    }
}
