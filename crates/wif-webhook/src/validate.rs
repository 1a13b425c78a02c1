//! The validating endpoint for `FederatedIdentityBinding`s, `FederatedIdentityPolicy`s and
//! `FederatedIdentityPool`s.
//!
//! A binding is refused at `kubectl apply` when no `FederatedIdentityPolicy` grants its identity
//! to its namespace (default deny), or when its identity is malformed; the message names the
//! policy gap (a binding naming a pool needs a policy granting the pool by name). A policy or a
//! pool (empty, capacity outside 1-20, an identity listed twice) is refused when it is malformed. The decisions are pure functions
//! ([`validate_binding`], [`validate_policy`]); the HTTP layer decodes the review, reads the
//! policy and namespace caches and answers. The controller re-checks every binding, so a stale
//! cache here can delay a grant, never widen one.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    core::{
        DynamicObject, PartialObjectMeta, Status,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use tokio_util::sync::CancellationToken;
use wif_api::{
    FederatedIdentityBinding, FederatedIdentityPolicy, PolicyDecision, RequestedIdentity,
    UserAssignedIdentityId,
};

/// What the validating endpoint reads: policies and namespace labels, from watches.
#[derive(Clone)]
pub(crate) struct PolicyCache {
    policies: Store<FederatedIdentityPolicy>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    synced: Arc<AtomicBool>,
    /// Asked once, briefly, when a namespace is not cached yet (created a moment ago).
    client: Option<Client>,
}

impl PolicyCache {
    /// Starts cluster-wide watches of policies and namespace metadata; they run until `stop`.
    /// Without the CRDs installed the policy watch retries (logged) and bindings are refused.
    pub(crate) fn spawn(client: Client, stop: CancellationToken) -> Self {
        let (policies, policy_writer) = reflector::store();
        let (namespaces, ns_writer) = reflector::store();
        let policy_events = watcher(
            Api::<FederatedIdentityPolicy>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(policy_writer)
        .touched_objects();
        let ns_events = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|ns| ns.metadata.managed_fields = None)
        .reflect(ns_writer)
        .touched_objects();
        let drive = |name: &'static str,
                     stream: futures::stream::BoxStream<'static, Result<(), watcher::Error>>,
                     stop: CancellationToken| async move {
            let mut stream = stream;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    item = stream.next() => match item {
                        Some(Ok(())) => {}
                        Some(Err(error)) => tracing::warn!(%error, watch = name, "watch error; retrying"),
                        None => return,
                    }
                }
            }
        };
        tokio::spawn(drive(
            "federatedidentitypolicies",
            policy_events.map(|r| r.map(drop)).boxed(),
            stop.clone(),
        ));
        tokio::spawn(drive("namespaces", ns_events.map(|r| r.map(drop)).boxed(), stop));
        let synced = Arc::new(AtomicBool::new(false));
        {
            let (policies, namespaces, synced) = (policies.clone(), namespaces.clone(), synced.clone());
            tokio::spawn(async move {
                if policies.wait_until_ready().await.is_ok() && namespaces.wait_until_ready().await.is_ok() {
                    tracing::info!(policies = policies.len(), "policy cache synced");
                    synced.store(true, Ordering::Release);
                }
            });
        }
        Self {
            policies,
            namespaces,
            synced,
            client: Some(client),
        }
    }

    /// A cache holding exactly these policies and namespaces (tests).
    #[cfg(test)]
    pub(crate) fn fixed(
        policies: Vec<FederatedIdentityPolicy>,
        namespaces: &[(&str, &[(&str, &str)])],
    ) -> Self {
        use kube::runtime::reflector::store::Writer;
        let mut pw: Writer<FederatedIdentityPolicy> = Writer::default();
        for p in policies {
            pw.apply_watcher_event(&watcher::Event::Apply(p));
        }
        let mut nw: Writer<PartialObjectMeta<Namespace>> = Writer::default();
        for (name, labels) in namespaces {
            let mut ns = PartialObjectMeta::<Namespace>::default();
            ns.metadata.name = Some((*name).to_owned());
            ns.metadata.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
            nw.apply_watcher_event(&watcher::Event::Apply(ns));
        }
        Self {
            policies: pw.as_reader(),
            namespaces: nw.as_reader(),
            synced: Arc::new(AtomicBool::new(true)),
            client: None,
        }
    }

    /// Whether both initial lists arrived.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Labels of a namespace: from the cache, else (a namespace created a moment ago) one read
    /// with a short timeout, else only the `kubernetes.io/metadata.name` label every namespace
    /// carries.
    async fn labels(&self, namespace: &str) -> BTreeMap<String, String> {
        if let Some(ns) = self.namespaces.get(&ObjectRef::new(namespace)) {
            return ns.metadata.labels.clone().unwrap_or_default();
        }
        if let Some(client) = &self.client {
            let api: Api<Namespace> = Api::all(client.clone());
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(2), api.get_metadata_opt(namespace))
                    .await;
            if let Ok(Ok(Some(ns))) = read {
                return ns.metadata.labels.unwrap_or_default();
            }
        }
        [("kubernetes.io/metadata.name".to_owned(), namespace.to_owned())].into()
    }
}

/// Decides on a binding in `namespace` (labels `labels`) given every policy: `Ok(warnings)` to
/// admit, `Err(message)` to refuse.
pub(crate) fn validate_binding(
    binding: &FederatedIdentityBinding,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    policies: &[&FederatedIdentityPolicy],
) -> Result<Vec<String>, String> {
    let requested = RequestedIdentity::from_spec(&binding.spec.identity)?;
    if let RequestedIdentity::UserAssignedIdentity { resource_id } = requested {
        UserAssignedIdentityId::parse(resource_id)
            .map_err(|e| format!("spec.identity.userAssignedIdentity.resourceId: {e}"))?;
    }
    match wif_api::policy::evaluate(namespace, labels, requested, policies.iter().copied()) {
        PolicyDecision::Granted { .. } => Ok(Vec::new()),
        PolicyDecision::Denied { message } => Err(message),
    }
}

/// Decides on a policy: `Err` lists every problem.
pub(crate) fn validate_policy(policy: &FederatedIdentityPolicy) -> Result<Vec<String>, String> {
    let problems = wif_api::policy::validate_policy(&policy.spec);
    let mut warnings = Vec::new();
    if policy.spec.applications.iter().any(|a| a == "*")
        || policy.spec.user_assigned_identities.iter().any(|a| a == "*")
        || policy.spec.pools.iter().any(|a| a == "*")
    {
        warnings.push("this policy grants every identity ('*') to the namespaces it selects".to_owned());
    }
    if policy
        .spec
        .namespace_selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && policy
            .spec
            .namespace_selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
    {
        warnings.push("the empty namespaceSelector selects every namespace".to_owned());
    }
    if problems.is_empty() {
        Ok(warnings)
    } else {
        Err(problems.join("; "))
    }
}

/// Decides on a pool: `Err` lists every problem, each naming its field.
pub(crate) fn validate_pool(pool: &wif_api::FederatedIdentityPool) -> Result<Vec<String>, String> {
    let problems = wif_api::pool::validate_pool(&pool.spec);
    if problems.is_empty() {
        Ok(Vec::new())
    } else {
        Err(problems.join("; "))
    }
}

/// State of the validating routes.
#[derive(Clone)]
pub(crate) struct ValidationState {
    /// Policies and namespaces.
    pub cache: PolicyCache,
}

fn answer(response: AdmissionResponse) -> Response {
    axum::Json(response.into_review()).into_response()
}

fn verdict(
    request: &AdmissionRequest<DynamicObject>,
    decision: Result<Vec<String>, String>,
) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(request);
    match decision {
        Ok(warnings) => {
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            response
        }
        Err(message) => {
            let mut denied = response.deny(&message);
            denied.result = Status::failure(&message, "Forbidden").with_code(403);
            denied
        }
    }
}

/// Answers one review for a binding or a policy.
pub(crate) async fn review(state: &ValidationState, body: &[u8]) -> Response {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("request body is not an admission.k8s.io/v1 AdmissionReview: {e}"),
            )
                .into_response();
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return answer(AdmissionResponse::invalid("the review has no request")),
    };
    // Deletions free what was granted: never refused.
    if request.operation == Operation::Delete || request.operation == Operation::Connect {
        return answer(AdmissionResponse::from(&request));
    }
    let Some(object) = request.object.clone() else {
        return answer(verdict(&request, Err("the review carries no object".into())));
    };
    let value = match serde_json::to_value(&object) {
        Ok(v) => v,
        Err(e) => return answer(verdict(&request, Err(format!("unreadable object: {e}")))),
    };
    let decision = match request.kind.kind.as_str() {
        "FederatedIdentityBinding" => match serde_json::from_value::<FederatedIdentityBinding>(value) {
            Err(e) => Err(format!("not a valid FederatedIdentityBinding: {e}")),
            Ok(binding) => {
                let namespace = request
                    .namespace
                    .clone()
                    .or(binding.metadata.namespace.clone())
                    .unwrap_or_default();
                if !state.cache.is_synced() {
                    Err(
                        "the policy cache of the wif webhook has not synced yet; retry in a few seconds"
                            .to_owned(),
                    )
                } else {
                    let labels = state.cache.labels(&namespace).await;
                    let policies = state.cache.policies.state();
                    let refs: Vec<&FederatedIdentityPolicy> = policies.iter().map(AsRef::as_ref).collect();
                    let d = validate_binding(&binding, &namespace, &labels, &refs);
                    match &d {
                        Ok(_) => {
                            tracing::info!(%namespace, binding = ?binding.metadata.name, "binding admitted")
                        }
                        Err(why) => {
                            tracing::info!(%namespace, binding = ?binding.metadata.name, reason = %why, "binding refused")
                        }
                    }
                    d
                }
            }
        },
        "FederatedIdentityPolicy" => match serde_json::from_value::<FederatedIdentityPolicy>(value) {
            Err(e) => Err(format!("not a valid FederatedIdentityPolicy: {e}")),
            Ok(policy) => validate_policy(&policy),
        },
        "FederatedIdentityPool" => match serde_json::from_value::<wif_api::FederatedIdentityPool>(value) {
            Err(e) => Err(format!("not a valid FederatedIdentityPool: {e}")),
            Ok(pool) => validate_pool(&pool),
        },
        other => Err(format!(
            "this endpoint validates FederatedIdentityBindings, FederatedIdentityPolicies and FederatedIdentityPools, not {other}"
        )),
    };
    answer(verdict(&request, decision))
}

/// `POST` routes for [`wif_api::VALIDATE_BINDING_PATH`], [`wif_api::VALIDATE_POLICY_PATH`] and
/// [`wif_api::VALIDATE_POOL_PATH`] (each accepts any of the kinds), reading at most `max_body` bytes.
pub(crate) fn router(state: ValidationState, max_body: usize) -> Router {
    let handler = move |State(state): State<ValidationState>, req: Request<Body>| async move {
        match axum::body::to_bytes(req.into_body(), max_body).await {
            Ok(body) => review(&state, &body).await,
            Err(_) => (
                StatusCode::BAD_REQUEST,
                format!("request body exceeds {max_body} bytes"),
            )
                .into_response(),
        }
    };
    Router::new()
        .route(wif_api::VALIDATE_BINDING_PATH, post(handler))
        .route(wif_api::VALIDATE_POLICY_PATH, post(handler))
        .route(wif_api::VALIDATE_POOL_PATH, post(handler))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use rstest::rstest;
    use serde_json::{Value, json};
    use tower::ServiceExt;
    use wif_api::FederatedIdentityPolicySpec;

    use super::*;

    const APP: &str = "5e3ce6c0-2b1f-4285-8d4b-75ee78787346";
    const UAMI: &str = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/demo/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api";

    fn policy(name: &str, team: &str, apps: &[&str], uamis: &[&str]) -> FederatedIdentityPolicy {
        FederatedIdentityPolicy {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: FederatedIdentityPolicySpec {
                namespace_selector: LabelSelector {
                    match_labels: Some([("team".to_owned(), team.to_owned())].into()),
                    match_expressions: None,
                },
                applications: apps.iter().map(|s| (*s).into()).collect(),
                user_assigned_identities: uamis.iter().map(|s| (*s).into()).collect(),
                pools: vec!["shared".into()],
            },
        }
    }

    fn binding(identity: Value) -> FederatedIdentityBinding {
        serde_json::from_value(json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
            "metadata": {"name": "b", "namespace": "payments"},
            "spec": {"serviceAccountName": "api", "identity": identity}
        }))
        .unwrap()
    }

    fn labels(team: &str) -> BTreeMap<String, String> {
        [("team".to_owned(), team.to_owned())].into()
    }

    #[rstest]
    #[case::granted_app(json!({"application": {"clientId": APP}}), "pay", None)]
    #[case::granted_uami(json!({"userAssignedIdentity": {"resourceId": UAMI}}), "pay", None)]
    #[case::other_namespace(json!({"application": {"clientId": APP}}), "dev", Some("no FederatedIdentityPolicy grants application"))]
    #[case::ungranted_app(json!({"application": {"clientId": "11111111-2222-3333-4444-555555555555"}}), "pay",
        Some("policies selecting this namespace (grant) do not list it"))]
    #[case::bad_client_id(json!({"application": {"clientId": "nope"}}), "pay", Some("not a GUID"))]
    #[case::malformed_resource_id(json!({"userAssignedIdentity": {"resourceId": "/subscriptions/x/resourceGroups/y"}}), "pay",
        Some("malformed resource id"))]
    #[case::both(json!({"application": {"clientId": APP}, "userAssignedIdentity": {"resourceId": UAMI}}), "pay",
        Some("exactly one"))]
    #[case::granted_pool(json!({"pool": {"name": "shared"}}), "pay", None)]
    #[case::ungranted_pool(json!({"pool": {"name": "other"}}), "pay",
        Some("policies selecting this namespace (grant) do not list it in spec.pools"))]
    #[case::pool_in_other_namespace(json!({"pool": {"name": "shared"}}), "dev", Some("no FederatedIdentityPolicy grants pool shared"))]
    #[case::pool_and_app(json!({"pool": {"name": "shared"}, "application": {"clientId": APP}}), "pay",
        Some("exactly one"))]
    fn binding_decisions(#[case] identity: Value, #[case] team: &str, #[case] refused: Option<&str>) {
        let p = policy("grant", "pay", &[APP], &[UAMI]);
        let decision = validate_binding(&binding(identity), "payments", &labels(team), &[&p]);
        match (decision, refused) {
            (Ok(_), None) => {}
            (Err(message), Some(needle)) => assert!(message.contains(needle), "{message}"),
            (d, want) => panic!("got {d:?}, wanted refusal {want:?}"),
        }
    }

    #[test]
    fn pool_decisions_name_the_field() {
        let pool = |v: Value| -> wif_api::FederatedIdentityPool {
            serde_json::from_value(json!({
                "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityPool",
                "metadata": {"name": "shared"}, "spec": v
            }))
            .unwrap()
        };
        assert!(validate_pool(&pool(json!({"identities": [{"application": {"clientId": APP}}]}))).is_ok());
        let dup = validate_pool(&pool(json!({"identities": [
            {"application": {"clientId": APP}}, {"application": {"clientId": APP.to_uppercase()}}
        ]})))
        .unwrap_err();
        assert!(
            dup.contains("spec.identities[1] lists the same identity"),
            "{dup}"
        );
        let cap = validate_pool(&pool(
            json!({"identities": [{"application": {"clientId": APP}}], "capacityPerIdentity": 21}),
        ))
        .unwrap_err();
        assert!(cap.contains("spec.capacityPerIdentity"), "{cap}");
        let empty = validate_pool(&pool(json!({"identities": []}))).unwrap_err();
        assert!(empty.contains("spec.identities"), "{empty}");
    }

    #[test]
    fn policy_decisions() {
        assert!(validate_policy(&policy("p", "pay", &[APP], &[])).is_ok());
        let star = validate_policy(&policy("p", "pay", &["*"], &[])).unwrap();
        assert!(star[0].contains("every identity"));
        let err = validate_policy(&policy("p", "pay", &["bad"], &["/nope"])).unwrap_err();
        assert!(
            err.contains("spec.applications[0]") && err.contains("spec.userAssignedIdentities[0]"),
            "{err}"
        );
    }

    fn review_body(kind: &str, operation: &str, object: Value) -> Vec<u8> {
        let group = "azure.workload.identity";
        let resource = if kind == "FederatedIdentityBinding" {
            "federatedidentitybindings"
        } else {
            "federatedidentitypolicies"
        };
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": group, "version": "v1alpha1", "kind": kind},
                "resource": {"group": group, "version": "v1alpha1", "resource": resource},
                "requestKind": {"group": group, "version": "v1alpha1", "kind": kind},
                "requestResource": {"group": group, "version": "v1alpha1", "resource": resource},
                "name": "b", "namespace": "payments", "operation": operation,
                "userInfo": {"username": "alice"},
                "object": object, "oldObject": null, "dryRun": false
            }
        }))
        .unwrap()
    }

    async fn post(router: Router, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let response = router
            .oneshot(Request::post(path).body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn router_with(policies: Vec<FederatedIdentityPolicy>) -> Router {
        router(
            ValidationState {
                cache: PolicyCache::fixed(policies, &[("payments", &[("team", "pay")])]),
            },
            1 << 20,
        )
    }

    #[tokio::test]
    async fn http_admits_granted_and_refuses_ungranted_bindings() {
        let object = serde_json::to_value(binding(json!({"application": {"clientId": APP}}))).unwrap();
        let (status, body) = post(
            router_with(vec![policy("grant", "pay", &[APP], &[])]),
            wif_api::VALIDATE_BINDING_PATH,
            review_body("FederatedIdentityBinding", "CREATE", object.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["response"]["uid"], "u-1");
        assert_eq!(body["response"]["allowed"], true);

        let (_, body) = post(
            router_with(vec![]),
            wif_api::VALIDATE_BINDING_PATH,
            review_body("FederatedIdentityBinding", "UPDATE", object.clone()),
        )
        .await;
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(body["response"]["status"]["code"], 403);
        let message = body["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("denied by default"), "{message}");

        // Deleting is always allowed.
        let (_, body) = post(
            router_with(vec![]),
            wif_api::VALIDATE_BINDING_PATH,
            review_body("FederatedIdentityBinding", "DELETE", Value::Null),
        )
        .await;
        assert_eq!(body["response"]["allowed"], true);
    }

    #[tokio::test]
    async fn http_validates_policies_and_rejects_garbage() {
        let bad = serde_json::to_value(policy("p", "pay", &["not-a-guid"], &[])).unwrap();
        let (_, body) = post(
            router_with(vec![]),
            wif_api::VALIDATE_POLICY_PATH,
            review_body("FederatedIdentityPolicy", "CREATE", bad),
        )
        .await;
        assert_eq!(body["response"]["allowed"], false);
        let (status, _) = post(
            router_with(vec![]),
            wif_api::VALIDATE_POLICY_PATH,
            b"not json".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn an_uncached_namespace_still_matches_by_its_name_label() {
        let cache = PolicyCache::fixed(Vec::new(), &[]);
        let labels = cache.labels("brand-new").await;
        assert_eq!(
            labels.get("kubernetes.io/metadata.name").map(String::as_str),
            Some("brand-new")
        );
    }

    #[tokio::test]
    async fn an_unsynced_cache_refuses_bindings() {
        let cache = PolicyCache::fixed(
            vec![policy("grant", "pay", &["*"], &[])],
            &[("payments", &[("team", "pay")])],
        );
        cache.synced.store(false, Ordering::Release);
        let r = router(ValidationState { cache }, 1 << 20);
        let object = serde_json::to_value(binding(json!({"application": {"clientId": APP}}))).unwrap();
        let (_, body) = post(
            r,
            wif_api::VALIDATE_BINDING_PATH,
            review_body("FederatedIdentityBinding", "CREATE", object),
        )
        .await;
        assert_eq!(body["response"]["allowed"], false);
        assert!(
            body["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("not synced")
        );
    }
}
