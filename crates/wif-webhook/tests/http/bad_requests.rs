//! Bodies that are not a pod's AdmissionReview get 400 with a message, never a panic.

use super::*;

async fn assert_bad_request(body: impl Into<Body>, needle: &str) {
    let (router, _) = router(&Limits {
        max_body_bytes: 64 * 1024,
        ..Limits::default()
    });
    let (status, body) = post(&router, body).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains(needle), "{text:?} should mention {needle:?}");
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_message() {
    assert_bad_request("", "not an admission.k8s.io/v1 AdmissionReview").await;
    assert_bad_request("{\"apiVersion\":", "not an admission.k8s.io/v1 AdmissionReview").await;
    assert_bad_request(
        &REVIEW[..REVIEW.len() / 2],
        "not an admission.k8s.io/v1 AdmissionReview",
    )
    .await;
    assert_bad_request("[1,2,3]", "AdmissionReview").await;
    assert_bad_request(vec![0xff, 0xfe, 0x00], "AdmissionReview").await;
}

#[tokio::test]
async fn wrong_version_gets_400() {
    let mut r = review();
    r["apiVersion"] = json!("admission.k8s.io/v1beta1");
    assert_bad_request(serde_json::to_vec(&r).unwrap(), "admission.k8s.io/v1beta1").await;
}

#[tokio::test]
async fn wrong_kind_gets_400() {
    let mut r = review();
    r["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    assert_bad_request(
        serde_json::to_vec(&r).unwrap(),
        "admits v1 Pods, not apps/v1 Deployment",
    )
    .await;
}

#[tokio::test]
async fn review_without_object_gets_400() {
    let mut r = review();
    r["request"].as_object_mut().unwrap().remove("object");
    assert_bad_request(serde_json::to_vec(&r).unwrap(), "has no object").await;
    let mut r = review();
    r.as_object_mut().unwrap().remove("request");
    assert_bad_request(serde_json::to_vec(&r).unwrap(), "no request").await;
}

#[tokio::test]
async fn oversized_body_gets_400() {
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"]["huge"] = json!("x".repeat(100 * 1024));
    assert_bad_request(serde_json::to_vec(&r).unwrap(), "exceeds 65536 bytes").await;
}

#[tokio::test]
async fn odd_names_and_huge_annotations_do_not_panic() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]["generateName"] = json!("ünï/cødé\u{0}-");
    r["request"]["object"]["metadata"]["annotations"]["azure.workload.identity/skip-containers"] =
        json!(";".repeat(100_000));
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], true);
}
