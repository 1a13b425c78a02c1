//! Decoding an AdmissionReview, calling [`mutate`](crate::mutate), encoding the answer.

use std::{sync::Arc, time::Instant};

use axum::{
    body::Bytes,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    Status,
    admission::{AdmissionRequest, AdmissionReview, Operation},
};
use serde::Serialize;
use wif_api::{DEFAULT_SERVICE_ACCOUNT, MutationConfig};

use crate::{
    metrics::{Metrics, Outcome},
    mutate::mutate,
    service_accounts::ServiceAccountCache,
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

/// Decodes a review and checks it is a v1 AdmissionReview for a v1 Pod.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<Pod>, ReviewError> {
    let review: AdmissionReview<Pod> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Decode(e.to_string()))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(ReviewError::Decode(format!(
            "got apiVersion {:?} kind {:?}",
            review.types.api_version, review.types.kind
        )));
    }
    let request: AdmissionRequest<Pod> = review
        .try_into()
        .map_err(|_| ReviewError::Decode("the review has no request".to_owned()))?;
    let kind = &request.kind;
    if !kind.group.is_empty() || kind.version != "v1" || kind.kind != "Pod" {
        return Err(ReviewError::WrongKind(format!(
            "{}/{} {}",
            kind.group, kind.version, kind.kind
        )));
    }
    if request.object.is_none() && request.operation == Operation::Create {
        return Err(ReviewError::MissingObject(request.uid.clone()));
    }
    Ok(request)
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
    /// Base64 of the RFC 6902 patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
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
async fn admit(state: &AdmissionState, mut request: AdmissionRequest<Pod>) -> (Decision, Outcome) {
    let uid = std::mem::take(&mut request.uid);
    // Only creation is mutated: a pod's volumes and env cannot change afterwards.
    if request.operation != Operation::Create {
        return (Decision::allow(&uid), Outcome::Unchanged);
    }
    let Some(mut pod) = request.object.take() else {
        return (Decision::allow(&uid), Outcome::Unchanged);
    };
    // Pods created by controllers arrive without a namespace; the request carries it.
    let namespace = request
        .namespace
        .take()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    pod.metadata.namespace = Some(namespace.clone());
    let span = tracing::Span::current();
    span.record("namespace", namespace.as_str());
    span.record(
        "pod",
        pod.metadata
            .name
            .as_deref()
            .or(pod.metadata.generate_name.as_deref())
            .unwrap_or_default(),
    );

    let is_labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(wif_api::USE_LABEL))
        .is_some_and(|v| v == wif_api::USE_LABEL_VALUE);
    if !is_labelled {
        // The objectSelector should have filtered this pod out; a broad configuration must not
        // turn the webhook into a dependency of every pod.
        return (Decision::allow(&uid), Outcome::Unchanged);
    }

    let sa_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_owned();
    let sa = match state.service_accounts.get(&namespace, &sa_name).await {
        Ok((Some(sa), missed)) => {
            if missed {
                state.metrics.cache_misses.inc();
            }
            sa
        }
        Ok((None, _)) => {
            let msg = format!(
                "ServiceAccount {namespace}/{sa_name} not found: create it (annotated with \
                 azure.workload.identity/client-id) before the pod that uses it"
            );
            tracing::info!(service_account = %sa_name, "denied: ServiceAccount not found");
            return (Decision::deny(&uid, msg, 400), Outcome::Denied);
        }
        Err(error) => {
            tracing::error!(%error, "ServiceAccount lookup failed");
            return (Decision::deny(&uid, error.to_string(), 500), Outcome::Error);
        }
    };

    match mutate(&pod, &sa.metadata, &state.config) {
        Ok(mutation) => {
            let mut response = Decision::allow(&uid);
            if !mutation.warnings.is_empty() {
                response.warnings = Some(mutation.warnings.clone());
            }
            if mutation.is_noop() {
                tracing::debug!("nothing to inject");
                return (response, Outcome::Unchanged);
            }
            match serde_json::to_vec(&mutation.patch()) {
                Ok(patch) => {
                    response.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch));
                    response.patch_type = Some("JSONPatch");
                    tracing::info!(service_account = %sa_name, edits = mutation.edits.len(), "pod mutated");
                    (response, Outcome::Mutated)
                }
                Err(error) => {
                    tracing::error!(%error, "failed to encode patch");
                    (
                        Decision::deny(&uid, format!("failed to encode the patch: {error}"), 500),
                        Outcome::Error,
                    )
                }
            }
        }
        Err(denial) => {
            tracing::info!(reason = %denial, "denied");
            (Decision::deny(&uid, denial.to_string(), 400), Outcome::Denied)
        }
    }
}

/// Axum handler body: reads at most `limit` bytes and answers.
pub async fn handle(state: &AdmissionState, body: Bytes) -> Response {
    match review(state, &body).await {
        Ok(review) => axum::Json(review).into_response(),
        Err(e) => e.into_response(),
    }
}
