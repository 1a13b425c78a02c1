//! Table tests of the pure checks ([`super::checks`]) and of the report.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use rstest::rstest;
use serde_json::json;

use k8s_openapi::{
    api::{
        admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use serde_json::Value;
use std::collections::BTreeMap;

use wif_api::{CONTAINER_IDENTITIES_ANNOTATION, MUTATE_PATH, SKIP_CONTAINERS_ANNOTATION};

use super::{checks::*, entra::*, report::*};

fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
    let map = |kv: &[(&str, &str)]| Some(kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
    ObjectMeta {
        name: Some("api".into()),
        namespace: Some("team".into()),
        labels: map(labels),
        annotations: map(annotations),
        ..ObjectMeta::default()
    }
}

const ID: &str = "11111111-2222-3333-4444-555555555555";

#[rstest]
#[case(&[("azure.workload.identity/use", "true")], Status::Pass, "")]
#[case(&[("azure.workload.identity/use", "True")], Status::Fail, "exact lower-case")]
#[case(&[("azure.workload.identity/use", "false")], Status::Fail, "not \"true\"")]
#[case(&[("azure.workload.identity/used", "true")], Status::Fail, "found")]
#[case(&[], Status::Fail, "no azure.workload.identity/use")]
fn label_is_exactly_true(#[case] labels: &[(&str, &str)], #[case] status: Status, #[case] says: &str) {
    let check = label(&meta(labels, &[]));
    assert_eq!(check.status, status, "{check}");
    assert!(check.detail.contains(says), "{check}");
    assert_eq!(check.fix.is_some(), status == Status::Fail);
}

#[rstest]
#[case(&[("azure.workload.identity/client-id", ID)], Status::Pass)]
#[case(&[("azure.workload.identity/client-id", "")], Status::Fail)]
#[case(&[("azure.workload.identity/client-id", "my-app")], Status::Fail)]
#[case(&[("azure.workload.identity/client_id", ID)], Status::Fail)]
fn client_id_must_be_a_guid(#[case] annotations: &[(&str, &str)], #[case] status: Status) {
    let (check, _) = client_id(&meta(&[], annotations));
    assert_eq!(check.status, status, "{check}");
}

#[test]
fn misspelt_client_id_annotation_is_named() {
    let (check, id) = client_id(&meta(&[], &[("azure.workload.identity/client_id", ID)]));
    assert!(check.detail.contains("client_id"), "{check}");
    assert_eq!(id, None);
}

fn injected_pod(client: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "team"},
        "spec": {
            "volumes": [{"name": "azure-identity-token", "projected": {"sources": [
                {"serviceAccountToken": {"path": "azure-identity-token", "audience": "api://AzureADTokenExchange"}}]}}],
            "containers": [{"name": "app", "image": "x",
                "env": [{"name": "AZURE_CLIENT_ID", "value": client}, {"name": "AZURE_TENANT_ID", "value": "t"},
                        {"name": "AZURE_FEDERATED_TOKEN_FILE", "value": "/f"}, {"name": "AZURE_AUTHORITY_HOST", "value": "https://h/"}],
                "volumeMounts": [{"name": "azure-identity-token", "mountPath": "/var/run/secrets/azure/tokens"}]}]
        }
    }))
    .unwrap()
}

#[test]
fn injected_pod_passes_and_a_stale_client_id_fails() {
    assert_eq!(injection(&injected_pod(ID), Some(ID), &[]).status, Status::Pass);
    let stale = injection(
        &injected_pod("00000000-0000-0000-0000-000000000000"),
        Some(ID),
        &[],
    );
    assert_eq!(stale.status, Status::Fail);
    assert!(stale.detail.contains("ServiceAccount says"), "{stale}");
    assert!(stale.fix.unwrap().contains("recreate"));
}

#[test]
fn unmutated_pod_fails_with_recreate_fix() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}]}}))
    .unwrap();
    let check = injection(&pod, Some(ID), &[]);
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("did not mutate"), "{check}");
}

#[test]
fn skipped_containers_are_not_required_to_be_injected() {
    let mut pod = injected_pod(ID);
    let spec = pod.spec.as_mut().unwrap();
    spec.containers
        .push(serde_json::from_value(json!({"name": "proxy", "image": "x"})).unwrap());
    assert_eq!(injection(&pod, Some(ID), &[]).status, Status::Fail);
    pod.metadata.annotations = Some([(SKIP_CONTAINERS_ANNOTATION.to_owned(), "proxy".to_owned())].into());
    assert_eq!(injection(&pod, Some(ID), &[]).status, Status::Pass);
}

const READER: &str = "22222222-2222-2222-2222-222222222222";

#[test]
fn named_identities_are_listed_and_bad_ones_named() {
    let (check, found) = named_identities(&meta(&[], &[("azure.workload.identity/client-id", ID)]));
    assert_eq!(check, None, "no named keys: no line, as upstream");
    assert!(found.is_empty());

    let (check, found) = named_identities(&meta(
        &[],
        &[
            ("azure.workload.identity/client-id.reader", READER),
            ("azure.workload.identity/tenant-id.reader", "t2"),
        ],
    ));
    let check = check.unwrap();
    assert_eq!(check.status, Status::Pass, "{check}");
    assert!(check.detail.contains(&format!("reader={READER}")), "{check}");
    assert_eq!(
        found,
        vec![Identity {
            name: Some("reader".into()),
            client_id: READER.into(),
            tenant_id: Some("t2".into())
        }]
    );

    for (key, value, says) in [
        (
            "azure.workload.identity/client-id.Reader",
            READER,
            "lower-case DNS label",
        ),
        (
            "azure.workload.identity/client-id.reader",
            "my-app",
            "not a client id",
        ),
        (
            "azure.workload.identity/tenant-id.writer",
            "t",
            "client-id.writer",
        ),
    ] {
        let (check, _) = named_identities(&meta(&[], &[(key, value)]));
        let check = check.unwrap();
        assert_eq!(check.status, Status::Fail, "{check}");
        assert!(check.detail.contains(says), "{check}");
    }
}

#[test]
fn injection_checks_named_variables_and_container_identities() {
    let reader = Identity {
        name: Some("reader".into()),
        client_id: READER.into(),
        tenant_id: None,
    };
    let mut pod = injected_pod(ID);
    let check = injection(&pod, Some(ID), std::slice::from_ref(&reader));
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("no AZURE_CLIENT_ID_READER"), "{check}");
    let env = pod.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap();
    env.push(serde_json::from_value(json!({"name": "AZURE_CLIENT_ID_READER", "value": READER})).unwrap());
    assert_eq!(
        injection(&pod, Some(ID), std::slice::from_ref(&reader)).status,
        Status::Pass
    );
    // The pod assigns the container the reader identity: AZURE_CLIENT_ID must be reader's.
    pod.metadata.annotations = Some(
        [(
            CONTAINER_IDENTITIES_ANNOTATION.to_owned(),
            "app=reader".to_owned(),
        )]
        .into(),
    );
    let check = injection(&pod, Some(ID), std::slice::from_ref(&reader));
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("its identity \"reader\""), "{check}");
    pod.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap()[0].value = Some(READER.into());
    assert_eq!(injection(&pod, Some(ID), &[reader]).status, Status::Pass);
}

#[test]
fn bindings_are_found_per_identity() {
    let view = |name: &str, client: &str, identity: Option<&str>| BindingView {
        name: name.into(),
        ready: None,
        credential: None,
        tenant_id: None,
        client_id: Some(client.into()),
        identity_name: identity.map(Into::into),
        pool: None,
        placement: None,
    };
    let all = [
        view("named", "x", Some("reader")),
        view("by-client", READER, None),
        view("default", ID, None),
    ];
    let default = Identity {
        name: None,
        client_id: ID.into(),
        tenant_id: None,
    };
    let reader = Identity {
        name: Some("reader".into()),
        client_id: READER.into(),
        tenant_id: None,
    };
    assert_eq!(BindingView::find(&all, &default).unwrap().name, "default");
    assert_eq!(BindingView::find(&all, &reader).unwrap().name, "named");
    assert_eq!(BindingView::find(&all[1..], &reader).unwrap().name, "by-client");
    assert_eq!(
        Check::pass("token exchange", "ok")
            .for_identity(Some("reader"))
            .to_string(),
        "✓ token exchange (reader): ok"
    );
}

fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| (*v).into()).collect()),
    }
}

#[rstest]
#[case(LabelSelector::default(), &[], true)]
#[case(LabelSelector { match_expressions: Some(vec![expr("kubernetes.io/metadata.name", "NotIn", &["kube-system", "wif"])]), ..Default::default() }, &[("kubernetes.io/metadata.name", "team")], true)]
#[case(LabelSelector { match_expressions: Some(vec![expr("kubernetes.io/metadata.name", "NotIn", &["kube-system", "wif"])]), ..Default::default() }, &[("kubernetes.io/metadata.name", "wif")], false)]
#[case(LabelSelector { match_expressions: Some(vec![expr("env", "In", &["prod"])]), ..Default::default() }, &[], false)]
#[case(LabelSelector { match_expressions: Some(vec![expr("env", "Exists", &[])]), ..Default::default() }, &[("env", "x")], true)]
#[case(LabelSelector { match_expressions: Some(vec![expr("env", "DoesNotExist", &[])]), ..Default::default() }, &[("env", "x")], false)]
#[case(LabelSelector { match_labels: Some([("a".to_owned(), "b".to_owned())].into()), ..Default::default() }, &[("a", "c")], false)]
fn selectors_follow_kubernetes_semantics(
    #[case] selector: LabelSelector,
    #[case] labels: &[(&str, &str)],
    #[case] matches: bool,
) {
    let labels = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    assert_eq!(selector_matches(&selector, &labels), matches);
}

#[rstest]
#[case("https://issuer.example/x", "https://issuer.example/x", None)]
#[case(
    "https://issuer.example/x",
    "https://issuer.example/x/",
    Some("has a trailing slash")
)]
#[case(
    "https://issuer.example/x/",
    "https://issuer.example/x",
    Some("lacks the trailing slash")
)]
#[case(
    "https://issuer.example/X",
    "https://issuer.example/x",
    Some("upper/lower case")
)]
#[case(
    "system:serviceaccount:a:b",
    "system:serviceaccount:a:c",
    Some("different value")
)]
fn differences_are_explained(#[case] expected: &str, #[case] actual: &str, #[case] says: Option<&str>) {
    let got = difference(expected, actual);
    match says {
        None => assert_eq!(got, None),
        Some(s) => assert!(got.as_deref().unwrap_or_default().contains(s), "{got:?}"),
    }
}

fn expected() -> Expected {
    Expected {
        issuer: "https://127.0.0.1:6443".into(),
        subject: "system:serviceaccount:team:api".into(),
        audience: "api://AzureADTokenExchange".into(),
    }
}

fn binding(ready: &str, issuer: &str) -> Value {
    json!({
        "metadata": {"name": "api"},
        "spec": {"serviceAccountName": "api"},
        "status": {
            "conditions": [{"type": "Ready", "status": ready, "reason": "Propagated", "message": "m"}],
            "credential": {"issuer": issuer, "subject": "system:serviceaccount:team:api",
                           "audiences": ["api://AzureADTokenExchange"]}
        }
    })
}

#[test]
fn ready_binding_with_exact_credential_passes() {
    let view = BindingView::from_json(&binding("True", "https://127.0.0.1:6443"), "api").unwrap();
    assert_eq!(
        binding_ready("team", "api", std::slice::from_ref(&view)).status,
        Status::Pass
    );
    assert_eq!(credential_matches(&expected(), &view).status, Status::Pass);
}

#[test]
fn trailing_slash_in_the_credential_issuer_is_flagged() {
    let view = BindingView::from_json(&binding("True", "https://127.0.0.1:6443/"), "api").unwrap();
    let check = credential_matches(&expected(), &view);
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("trailing slash"), "{check}");
}

#[test]
fn binding_for_another_service_account_is_ignored_and_missing_binding_fails() {
    assert_eq!(BindingView::from_json(&binding("True", "x"), "other"), None);
    let check = binding_ready("team", "other", &[]);
    assert_eq!(check.status, Status::Fail);
    assert!(check.fix.unwrap().contains("FederatedIdentityBinding"));
}

#[test]
fn not_ready_binding_reports_reason() {
    let view = BindingView::from_json(&binding("False", "x"), "api").unwrap();
    let check = binding_ready("team", "api", &[view]);
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("Propagated"), "{check}");
}

#[test]
fn token_claims_must_match_discovery() {
    let good = json!({"iss": "https://127.0.0.1:6443", "sub": "system:serviceaccount:team:api",
                      "aud": ["api://AzureADTokenExchange"]});
    assert_eq!(token_claims(&expected(), &good).status, Status::Pass);
    let bad = json!({"iss": "https://127.0.0.1:6443/", "sub": "system:serviceaccount:team:api", "aud": "x"});
    let check = token_claims(&expected(), &bad);
    assert_eq!(check.status, Status::Fail);
    assert!(
        check.detail.contains("trailing slash") && check.detail.contains("lacks"),
        "{check}"
    );
}

#[test]
fn report_lines_and_exit_status() {
    let mut report = Report::default();
    report.push(Check::pass("a", "fine"));
    report.push(Check::skip("b", "no pod given"));
    assert!(report.ok());
    report.push(Check::fail("c", "broken", "do this"));
    assert!(!report.ok());
    assert_eq!(report.checks[2].to_string(), "✗ c: broken → fix: do this");
    assert_eq!(report.checks[1].to_string(), "- b: no pod given (skipped)");
    assert_eq!(report.summary(), "1 passed, 1 failed, 1 skipped");
}

fn hook(name: &str, path: &str, namespace_selector: Option<LabelSelector>) -> (String, MutatingWebhook) {
    let hook: MutatingWebhook = serde_json::from_value(json!({
        "name": name,
        "clientConfig": {"service": {"namespace": "wif-system", "name": "wif", "path": path}},
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
    }))
    .unwrap();
    (
        format!("{name}-config"),
        MutatingWebhook {
            namespace_selector,
            ..hook
        },
    )
}

#[test]
fn the_webhook_that_selects_the_namespace_is_chosen_and_two_are_a_failure() {
    let labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
    let other_team = LabelSelector {
        match_labels: Some(BTreeMap::from([("team".to_owned(), "b".to_owned())])),
        ..LabelSelector::default()
    };
    let configs: Vec<MutatingWebhookConfiguration> =
        vec![serde_json::from_value(json!({"metadata": {"name": "unrelated"}, "webhooks": []})).unwrap()];
    let (check, chosen) = choose_webhook(wif_webhooks(configs), "ns", &labels);
    assert_eq!((check.status, chosen.is_none()), (Status::Fail, true));
    assert!(
        check.detail.contains("no MutatingWebhookConfiguration"),
        "{check}"
    );

    let (check, chosen) = choose_webhook(
        vec![
            hook("b", MUTATE_PATH, Some(other_team.clone())),
            hook("a", MUTATE_PATH, None),
        ],
        "ns",
        &labels,
    );
    assert_eq!(check.status, Status::Pass, "{check}");
    assert_eq!(chosen.map(|(c, _)| c).as_deref(), Some("a-config"));

    let (check, chosen) = choose_webhook(vec![hook("b", MUTATE_PATH, Some(other_team))], "ns", &labels);
    assert_eq!((check.status, chosen.is_none()), (Status::Fail, true));
    assert!(check.detail.contains("excludes namespace ns"), "{check}");

    let (check, chosen) = choose_webhook(
        vec![hook("a", MUTATE_PATH, None), hook("c", MUTATE_PATH, None)],
        "ns",
        &labels,
    );
    assert_eq!(check.status, Status::Fail);
    assert!(
        check.detail.starts_with("a-config and c-config all mutate"),
        "{check}"
    );
    assert_eq!(chosen.map(|(c, _)| c).as_deref(), Some("a-config"));
}

#[test]
fn only_webhooks_at_the_mutating_path_are_wif_s() {
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "mixed"},
        "webhooks": [hook("x", "/other", None).1, hook("y", MUTATE_PATH, None).1],
    }))
    .unwrap();
    let found: Vec<String> = wif_webhooks(vec![config])
        .into_iter()
        .map(|(c, h)| format!("{c}/{}", h.name))
        .collect();
    assert_eq!(found, ["mixed/y"]);
}

#[rstest]
#[case(None, Some("c"), Some("t"), false, Err(Status::Skip))]
#[case(Some("jwt"), None, Some("t"), true, Err(Status::Skip))]
#[case(Some("jwt"), None, Some("t"), false, Err(Status::Fail))]
#[case(Some("jwt"), Some("c"), None, false, Err(Status::Fail))]
#[case(Some("jwt"), Some("c"), Some("t"), false, Ok(("jwt", "c", "t")))]
fn an_exchange_needs_a_token_a_client_id_and_a_tenant(
    #[case] token: Option<&str>,
    #[case] client_id: Option<&str>,
    #[case] tenant: Option<&str>,
    #[case] has_named: bool,
    #[case] want: Result<(&str, &str, &str), Status>,
) {
    let got = exchange_inputs(token, client_id, tenant, has_named).map_err(|c| c.status);
    assert_eq!(got, want);
}

#[rstest]
#[case(Some("other/web"), Some("ns"), ("other", Some("web")))]
#[case(Some("web"), Some("ns"), ("ns", Some("web")))]
#[case(Some("web"), None, ("kube-ns", Some("web")))]
#[case(None, None, ("kube-ns", None))]
fn the_pod_flag_may_carry_its_namespace(
    #[case] pod: Option<&str>,
    #[case] namespace: Option<&str>,
    #[case] want: (&str, Option<&str>),
) {
    let (ns, name) = target(pod.map(str::to_owned), namespace.map(str::to_owned), "kube-ns");
    assert_eq!((ns.as_str(), name.as_deref()), want);
}
