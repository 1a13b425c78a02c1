//! Well-formed reviews: the patch, the namespace and service account, refusals, warnings and
//! updates.

use super::*;

#[tokio::test]
async fn valid_review_gets_a_json_patch_for_the_pod() {
    let (router, _) = router(&Limits::default());
    let a = answer(&router, &review()).await;
    assert_eq!(a["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(a["kind"], "AdmissionReview");
    assert_eq!(a["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(a["response"]["allowed"], true);
    assert_eq!(a["response"]["patchType"], "JSONPatch");
    let mut pod = review()["request"]["object"].clone();
    json_patch::patch(
        &mut pod,
        &serde_json::from_value::<json_patch::Patch>(Value::Array(patch_of(&a))).unwrap(),
    )
    .unwrap();
    for c in pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["spec"]["initContainers"].as_array().unwrap())
    {
        let env = c["env"].as_array().unwrap();
        assert!(
            env.contains(&json!({"name": "AZURE_CLIENT_ID", "value": "cid-1"})),
            "{}",
            c["name"]
        );
        assert!(env.contains(&json!({"name": "AZURE_TENANT_ID", "value": "tenant-1"})));
        assert!(
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "azure-identity-token")
        );
    }
    assert!(
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "azure-identity-token")
    );
}

#[tokio::test]
async fn namespace_comes_from_the_request() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], true);
    r["request"]["namespace"] = json!("elsewhere");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], false);
    assert!(
        a["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("elsewhere/payments-api")
    );
}

#[tokio::test]
async fn missing_service_account_is_refused_naming_it() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["spec"]["serviceAccountName"] = json!("ghost");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], false);
    let msg = a["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.contains("ServiceAccount payments/ghost not found"), "{msg}");
}

#[tokio::test]
async fn empty_service_account_name_means_default() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["spec"]["serviceAccountName"] = json!("");
    let a = answer(&router, &r).await;
    let patch = serde_json::to_string(&patch_of(&a)).unwrap();
    assert!(patch.contains("cid-default"), "{patch}");
}

#[tokio::test]
async fn unlabelled_pod_is_allowed_without_a_patch() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]["labels"]["azure.workload.identity/use"] = json!("false");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], true);
    assert!(a["response"].get("patch").is_none());
}

#[tokio::test]
async fn policy_refusal_is_a_denied_review_with_the_reason() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"]["azure.workload.identity/service-account-token-expiration"] =
        json!("60");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], false);
    assert_eq!(a["response"]["status"]["code"], 400);
    assert!(
        a["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("between 3600 and 86400")
    );
}

#[tokio::test]
async fn warnings_reach_the_review() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"]["azure.workload.identity/clientId"] = json!("x");
    let a = answer(&router, &r).await;
    let w = a["response"]["warnings"].as_array().expect("warnings");
    assert!(
        w[0].as_str()
            .unwrap()
            .contains("did you mean azure.workload.identity/client-id")
    );
}

#[tokio::test]
async fn update_operations_are_allowed_untouched() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["operation"] = json!("UPDATE");
    r["request"]["oldObject"] = r["request"]["object"].clone();
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], true);
    assert!(a["response"].get("patch").is_none());
}
