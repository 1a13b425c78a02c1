//! `/metrics` counts requests by outcome; `/readyz` says what is missing.

use super::*;

#[tokio::test]
async fn metrics_count_requests_by_outcome() {
    let (state, registry) = state();
    let router = server::admission_router(state.clone(), &Limits::default());
    answer(&router, &review()).await;
    let _ = post(&router, "garbage").await;
    let admin = server::admin_router(registry, Arc::new(|| Ok(())), Arc::new(|| {}));
    let res = admin
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains("wif_webhook_admission_requests_total{outcome=\"Mutated\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wif_webhook_admission_requests_total{outcome=\"Invalid\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wif_webhook_admission_duration_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test]
async fn readyz_reports_what_is_missing() {
    let admin = server::admin_router(
        Arc::new(Mutex::new(Registry::default())),
        Arc::new(|| Err("ServiceAccount cache not synced yet".to_owned())),
        Arc::new(|| {}),
    );
    let res = admin
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ServiceAccount cache not synced yet");
    let res = admin
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
