//! Decoding an AdmissionReview, calling [`mutate`](crate::mutate), encoding the answer.

use std::{borrow::Cow, sync::Arc, time::Instant};

use axum::{
    body::Bytes,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use base64::Engine;
use kube::core::Status;
use serde::{Deserialize, Serialize, de::IgnoredAny};
use serde_json::value::RawValue;
use wif_api::{DEFAULT_SERVICE_ACCOUNT, MutationConfig};

use crate::{
    metrics::{Metrics, Outcome},
    mutate::{Mutation, mutate_view},
    service_accounts::{CachedServiceAccount, ServiceAccountCache},
    skips::{Reason, Result_::*},
    view::PodView,
};

/// What a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AdmissionState {
    /// Cluster configuration for the mutation.
    pub config: Arc<MutationConfig>,
    /// ServiceAccount metadata.
    pub service_accounts: ServiceAccountCache,
    /// Metrics to update.
    pub metrics: Arc<Metrics>,
}

/// A request the webhook cannot read; answered with HTTP 400 and the message.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not an `admission.k8s.io/v1` AdmissionReview.
    #[error("request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Decode(String),
    /// The review is for something other than a v1 Pod.
    #[error("this endpoint admits v1 Pods, not {0}")]
    WrongKind(String),
    /// The review carries no object.
    #[error("AdmissionReview request {0} has no object to admit")]
    MissingObject(String),
    /// The body is larger than the limit.
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
}

impl IntoResponse for ReviewError {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.to_string()).into_response()
    }
}

/// What the webhook reads of an AdmissionReview's request; strings borrow from the body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
pub struct Request<'a, O = PodView<'a>> {
    /// Copied into the answer.
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    /// The kind of the object admitted.
    #[serde(borrow)]
    pub kind: Kind<'a>,
    /// The namespace of the request (pods made by controllers have none of their own).
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(borrow)]
    pub operation: Cow<'a, str>,
    /// `kubectl --dry-run=server`.
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// The object, absent for `DELETE`.
    #[serde(default = "none")]
    pub object: Option<O>,
}

fn none<O>() -> Option<O> {
    None
}

/// Group, version and kind of the admitted object.
#[derive(Debug, Deserialize)]
pub struct Kind<'a> {
    /// Empty for core objects.
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    /// `v1`.
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    /// `Pod`.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
struct Envelope<'a, O> {
    #[serde(borrow, default)]
    api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default = "none")]
    request: Option<Request<'a, O>>,
}

/// Decodes a review and checks it is a v1 AdmissionReview for a v1 Pod. Only what the mutation
/// reads is decoded (see [`crate::view`]); the rest of the pod is checked to be JSON and skipped.
pub fn decode(body: &[u8]) -> Result<Request<'_>, ReviewError> {
    let envelope: Envelope<'_, PodView<'_>> = match serde_json::from_slice(body) {
        Ok(e) => e,
        // Say "wrong kind" rather than "bad pod" when the object is not a pod at all.
        Err(e) => {
            return Err(match serde_json::from_slice::<Envelope<'_, IgnoredAny>>(body) {
                Ok(other) => match other.request {
                    Some(r) if !is_pod(&r.kind) => wrong_kind(&r.kind),
                    _ => ReviewError::Decode(e.to_string()),
                },
                Err(_) => ReviewError::Decode(e.to_string()),
            });
        }
    };
    if envelope.api_version != "admission.k8s.io/v1" || envelope.kind != "AdmissionReview" {
        return Err(ReviewError::Decode(format!(
            "got apiVersion {:?} kind {:?}",
            envelope.api_version, envelope.kind
        )));
    }
    let request = envelope
        .request
        .ok_or_else(|| ReviewError::Decode("the review has no request".to_owned()))?;
    if !is_pod(&request.kind) {
        return Err(wrong_kind(&request.kind));
    }
    if request.object.is_none() && request.operation == "CREATE" {
        return Err(ReviewError::MissingObject(request.uid.into_owned()));
    }
    Ok(request)
}

fn is_pod(kind: &Kind<'_>) -> bool {
    kind.group.is_empty() && kind.version == "v1" && kind.kind == "Pod"
}

fn wrong_kind(kind: &Kind<'_>) -> ReviewError {
    ReviewError::WrongKind(format!("{}/{} {}", kind.group, kind.version, kind.kind))
}

/// The AdmissionReview the webhook answers with. kube's own response type encodes the patch as
/// an array of numbers; the API server expects (and this sends) base64, a quarter of the size.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    api_version: &'static str,
    kind: &'static str,
    /// The decision.
    pub response: Decision,
}

/// The `response` of an [`Answer`].
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Copied from the request.
    pub uid: String,
    /// Whether the pod may be created.
    pub allowed: bool,
    /// Why not, when not allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Base64 of the RFC 6902 patch, as a JSON string: base64 never needs escaping, and
    /// scanning a few kilobytes for characters to escape cost more than encoding them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Box<RawValue>>,
    /// `JSONPatch` when there is a patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Admission warnings shown to the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

impl Decision {
    fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            allowed: true,
            ..Self::default()
        }
    }

    fn deny(uid: &str, message: String, code: u16) -> Self {
        let reason = if code >= 500 {
            "InternalError"
        } else {
            "BadRequest"
        };
        Self {
            uid: uid.to_owned(),
            allowed: false,
            status: Some(Status::failure(&message, reason).with_code(code)),
            ..Self::default()
        }
    }

    fn into_answer(self) -> Answer {
        Answer {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            response: self,
        }
    }
}

/// Answers one review body. `Err` means HTTP 400; policy refusals are `Ok` answers with
/// `allowed: false`.
pub async fn review(state: &AdmissionState, body: &[u8]) -> Result<Answer, ReviewError> {
    let started = Instant::now();
    let request = match decode(body) {
        Ok(r) => r,
        Err(e) => {
            state
                .metrics
                .observe(Outcome::Invalid, started.elapsed().as_secs_f64());
            tracing::warn!(error = %e, "invalid admission review");
            return Err(e);
        }
    };
    let (response, outcome) = admit(state, request).await;
    state.metrics.observe(outcome, started.elapsed().as_secs_f64());
    Ok(response.into_answer())
}

#[tracing::instrument(
    name = "admit",
    skip_all,
    fields(uid = %request.uid, namespace = tracing::field::Empty, pod = tracing::field::Empty,
           dry_run = request.dry_run)
)]
async fn admit(state: &AdmissionState, request: Request<'_>) -> (Decision, Outcome) {
    let uid = request.uid.as_ref();
    // Only creation is mutated: a pod's volumes and env cannot change afterwards.
    if request.operation != "CREATE" {
        state.metrics.admissions.inc(Skipped, Reason::NotCreate);
        return (Decision::allow(uid), Outcome::Unchanged);
    }
    let Some(mut pod) = request.object else {
        return (Decision::allow(uid), Outcome::Unchanged);
    };
    // Pods created by controllers arrive without a namespace; the request carries it.
    if let Some(ns) = request.namespace {
        pod.metadata.namespace = Some(ns);
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let span = tracing::Span::current();
    span.record("namespace", namespace);
    span.record("pod", pod_name(&pod));

    if pod.metadata.labels.get(wif_api::USE_LABEL) != Some(wif_api::USE_LABEL_VALUE) {
        // Only the chart's `explain` webhook sends such pods: say why they are left alone.
        // Never refused, whatever happens: a broad configuration must not turn the webhook
        // into a dependency of every pod.
        return (explain_skip(state, &pod, uid).await, Outcome::Unchanged);
    }
    let sa_name = service_account_name(&pod);
    let sa = match service_account(state, namespace, sa_name, uid).await {
        Ok(sa) => sa,
        Err(refused) => return refused,
    };
    match mutate_view(&pod, &sa, &state.config) {
        Ok(mutation) => allow(state, uid, sa_name, &sa, mutation),
        Err(denial) => {
            tracing::info!(reason = %denial, "denied");
            state.metrics.admissions.inc(Refused, Reason::InvalidPod);
            (Decision::deny(uid, denial.to_string(), 400), Outcome::Denied)
        }
    }
}

/// The pod's name, or its `generateName` prefix when the name is not chosen yet.
fn pod_name<'p>(pod: &'p PodView<'_>) -> &'p str {
    pod.metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or_default()
}

/// `spec.serviceAccountName`, `default` when unset or empty.
fn service_account_name<'p>(pod: &'p PodView<'_>) -> &'p str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
}

/// The pod's ServiceAccount from the cache, or the refusal to answer when it does not exist or
/// cannot be looked up.
async fn service_account(
    state: &AdmissionState,
    namespace: &str,
    sa_name: &str,
    uid: &str,
) -> Result<Arc<CachedServiceAccount>, (Decision, Outcome)> {
    match state.service_accounts.get(namespace, sa_name).await {
        Ok((Some(sa), missed)) => {
            if missed {
                state.metrics.cache_misses.inc();
            }
            Ok(sa)
        }
        Ok((None, _)) => {
            let msg = format!(
                "ServiceAccount {namespace}/{sa_name} not found: create it (annotated with \
                 azure.workload.identity/client-id) before the pod that uses it"
            );
            tracing::info!(service_account = %sa_name, "denied: ServiceAccount not found");
            state
                .metrics
                .admissions
                .inc(Refused, Reason::ServiceAccountMissing);
            Err((Decision::deny(uid, msg, 400), Outcome::Denied))
        }
        Err(error) => {
            tracing::error!(%error, "ServiceAccount lookup failed");
            state.metrics.admissions.inc(Refused, Reason::Error);
            Err((Decision::deny(uid, error.to_string(), 500), Outcome::Error))
        }
    }
}

/// The answer for an allowed pod: its patch (if anything is injected) and warnings.
fn allow(
    state: &AdmissionState,
    uid: &str,
    sa_name: &str,
    sa: &CachedServiceAccount,
    mutation: Mutation,
) -> (Decision, Outcome) {
    let mut response = Decision::allow(uid);
    if mutation.is_noop() {
        tracing::debug!("nothing to inject");
        state.metrics.admissions.inc(Skipped, Reason::AlreadyMutated);
        response.warnings = non_empty(mutation.warnings);
        return (response, Outcome::Unchanged);
    }
    match mutation.patch_json().and_then(|patch| base64_string(&patch)) {
        Ok(patch) => {
            tracing::info!(service_account = %sa_name, edits = mutation.edits.len(), "pod mutated");
            let has_client_id = sa
                .annotations
                .get(wif_api::CLIENT_ID_ANNOTATION)
                .is_some_and(|v| !v.is_empty());
            let reason = if has_client_id {
                Reason::Injected
            } else {
                Reason::NoClientId
            };
            state.metrics.admissions.inc(Mutated, reason);
            response.patch = Some(patch);
            response.patch_type = Some("JSONPatch");
            response.warnings = non_empty(mutation.warnings);
            (response, Outcome::Mutated)
        }
        Err(error) => {
            tracing::error!(%error, "failed to encode patch");
            state.metrics.admissions.inc(Refused, Reason::Error);
            (
                Decision::deny(uid, format!("failed to encode the patch: {error}"), 500),
                Outcome::Error,
            )
        }
    }
}

/// Allows a pod without the label, with warnings saying why it is not mutated.
async fn explain_skip(state: &AdmissionState, pod: &PodView<'_>, uid: &str) -> Decision {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let sa_name = service_account_name(pod);
    let pod_ref = format!("{namespace}/{}", pod_name(pod));
    let looked_up = state.service_accounts.get(namespace, sa_name).await;
    let sa = match &looked_up {
        Ok((sa, _)) => sa.as_deref(),
        Err(error) => {
            tracing::warn!(%error, "ServiceAccount lookup failed while explaining a skip");
            None
        }
    };
    let (reason, warnings) = if looked_up.is_err() {
        let (r, mut w) =
            crate::skips::explain_unlabelled(pod, Some(&crate::view::MetaView::default()), &pod_ref);
        w.retain(|w| !w.contains("does not exist"));
        (r, w)
    } else {
        crate::skips::explain_unlabelled(pod, sa, &pod_ref)
    };
    if reason != Reason::NotLabelled {
        tracing::info!(reason = reason.label(), "pod not mutated; warning returned");
    }
    state.metrics.admissions.inc(Skipped, reason);
    let mut response = Decision::allow(uid);
    response.warnings = non_empty(warnings);
    response
}

/// `"<base64 of bytes>"` as a JSON value.
fn base64_string(bytes: &[u8]) -> Result<Box<RawValue>, serde_json::Error> {
    let mut quoted = String::with_capacity(bytes.len().div_ceil(3) * 4 + 2);
    quoted.push('"');
    base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut quoted);
    quoted.push('"');
    RawValue::from_string(quoted)
}

fn non_empty(warnings: Vec<String>) -> Option<Vec<String>> {
    (!warnings.is_empty()).then_some(warnings)
}

/// Axum handler body: reads at most `limit` bytes and answers.
pub async fn handle(state: &AdmissionState, body: Bytes) -> Response {
    match review(state, &body).await {
        Ok(answer) => answer.into_response(),
        Err(e) => e.into_response(),
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        // Sized for the patch at once (axum's `Json` starts at 128 bytes and copies as it grows).
        let decision = &self.response;
        let size = 256
            + decision.patch.as_ref().map_or(0, |p| p.get().len())
            + decision
                .warnings
                .iter()
                .flatten()
                .map(|w| w.len() + 8)
                .sum::<usize>();
        let mut body = Vec::with_capacity(size);
        match serde_json::to_writer(&mut body, &self) {
            Ok(()) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(error) => {
                tracing::error!(%error, "failed to encode the answer");
                (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
            }
        }
    }
}
