//! What cannot be done is a condition, never a crash: conflicts, capacity and bad input.

use super::*;

/// A foreign credential with our issuer+subject → Conflict, untouched; the 21st credential on an
/// identity → CapacityExceeded, nothing evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn conflicts_and_capacity_are_conditions() {
    let ns = TestNs::new("ctl-conflict").await;
    let subject = format!("system:serviceaccount:{}:api", ns.name);
    let fillers: Vec<Value> = (0..19)
        .map(|i| json!({"name": format!("other-{i}"), "issuer": "https://elsewhere.example", "subject": format!("sa-{i}")}))
        .collect();
    let tenant = json!({
        "applications": [{"displayName": "api", "appId": APP_A, "federatedIdentityCredentials": [
            {"name": "hand-made", "issuer": ns.cp.issuer, "subject": subject, "description": "made by hand"}]}],
        "userAssignedIdentities": [{"subscriptionId": SUBSCRIPTION, "resourceGroup": "e2e", "name": "busy",
            "federatedIdentityCredentials": fillers}],
    });
    let env = ControllerEnv::start(&ns, tenant, json!({})).await;
    let s = Setup { ns, env };
    let _policy = PolicyGuard::grant(&s.ns, "", &[APP_A], &[&identity_id("busy")]).await;
    s.ns.service_account("api", &[]).await;
    s.ns.service_account("second", &[]).await;
    s.ns.service_account("third", &[]).await;
    let ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    let logs = || ctl.logs();
    let before = s.env.app_credentials(APP_A).await;

    s.create(binding("conflict", "api", app(APP_A), json!({}))).await;
    let b = wait_binding(&s.ns, "conflict", T, logs, |b| {
        condition(b, "CredentialSynced").is_some_and(|c| c.0 == "False" && c.1 == "Conflict")
    })
    .await;
    let (_, reason, message) = condition(&b, "Ready").unwrap();
    assert_eq!(reason, "Conflict");
    assert!(
        message.contains("hand-made") && message.contains("untouched"),
        "{message}"
    );
    assert_eq!(
        s.env.app_credentials(APP_A).await,
        before,
        "the foreign credential is untouched"
    );

    // 19 foreign credentials: the 20th is ours, the 21st is refused.
    s.create(binding("twentieth", "third", uami("busy"), json!({})))
        .await;
    wait_binding(&s.ns, "twentieth", T, logs, is_ready).await;
    s.create(binding("twenty-first", "second", uami("busy"), json!({})))
        .await;
    let b = wait_binding(&s.ns, "twenty-first", T, logs, |b| {
        condition(b, "CredentialSynced").is_some_and(|c| c.0 == "False" && c.1 == "CapacityExceeded")
    })
    .await;
    assert!(
        condition(&b, "Ready").unwrap().2.contains("20 of its 20"),
        "{:?}",
        condition(&b, "Ready")
    );
    let creds = s.env.identity_credentials("busy").await;
    assert_eq!(creds.len(), 20);
    assert_eq!(
        creds
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with("other-"))
            .count(),
        19
    );
    let reasons = s.event_reasons("twenty-first", &["CapacityExceeded"]).await;
    assert!(reasons.iter().any(|r| r == "CapacityExceeded"), "{reasons:?}");
    // Still there after a few resyncs: no write, no eviction.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(s.env.identity_credentials("busy").await.len(), 20);
    assert_eq!(s.env.app_credentials(APP_A).await, before);
}

/// Bad input is a condition with a reason and a fix-it message, an Event, and backoff — the
/// controller keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn bad_input_is_reported_not_crashed_on() {
    let s = setup("ctl-bad", tenant(json!([])), json!({})).await;
    let _policy = PolicyGuard::grant(&s.ns, "", &["*"], &["*"]).await;
    s.ns.service_account("api", &[]).await;
    let mut ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    let bad_sub = "/subscriptions/not-a-guid/resourceGroups/e2e/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api-identity";
    let cases = [
        (
            "missing-sa",
            binding("missing-sa", "ghost", app(APP_A), json!({})),
            "ServiceAccountReady",
            "ServiceAccountNotFound",
            "create it",
        ),
        (
            "unknown-app",
            binding(
                "unknown-app",
                "api",
                app("00000000-0000-0000-0000-000000000001"),
                json!({}),
            ),
            "IdentityResolved",
            "ApplicationNotFound",
            "spec.identity.application.clientId",
        ),
        (
            "bad-rid",
            binding(
                "bad-rid",
                "api",
                json!({"userAssignedIdentity": {"resourceId": bad_sub}}),
                json!({}),
            ),
            "IdentityResolved",
            "InvalidResourceId",
            "subscription id is not a GUID",
        ),
        (
            "unknown-mi",
            binding("unknown-mi", "api", uami("no-such-identity"), json!({})),
            "IdentityResolved",
            "IdentityNotFound",
            "does not exist",
        ),
        (
            "other-tenant",
            binding(
                "other-tenant",
                "api",
                json!({"application": {"clientId": APP_B}, "tenantId": "11111111-1111-1111-1111-111111111111"}),
                json!({}),
            ),
            "IdentityResolved",
            "AuthenticationFailed",
            "additionally-allowed-tenants",
        ),
    ];
    for (_, b, ..) in &cases {
        s.create(b.clone()).await;
    }
    for (name, _, kind, reason, hint) in &cases {
        let b = wait_binding(
            &s.ns,
            name,
            T,
            || ctl.logs(),
            |b| condition(b, kind).is_some_and(|c| c.0 == "False" && c.1 == *reason),
        )
        .await;
        let (status, ready_reason, message) = condition(&b, "Ready").unwrap();
        assert_eq!(status, "False", "{name}");
        assert_eq!(ready_reason, *reason, "{name}");
        assert!(message.contains(hint), "{name}: {message}");
        let reasons = s.event_reasons(name, &[*reason]).await;
        assert!(
            reasons.iter().any(|r| r == reason),
            "{name}: no {reason} Event in {reasons:?}"
        );
    }
    // A missing ServiceAccount still gets its credential; creating the SA completes it.
    assert_eq!(s.env.app_credentials(APP_A).await.len(), 1);
    s.ns.service_account("ghost", &[]).await;
    wait_binding(&s.ns, "missing-sa", T, || ctl.logs(), is_ready).await;
    // Nothing was written for the others.
    assert!(s.env.app_credentials(APP_B).await.is_empty());
    assert!(s.env.identity_credentials("api-identity").await.is_empty());

    // Backoff, not a hot loop: few reconciles of the failing bindings over 5 s, and no crash.
    let failing = |text: &str| {
        [
            "ApplicationNotFound",
            "InvalidResourceId",
            "IdentityNotFound",
            "AuthenticationFailed",
        ]
        .iter()
        .map(|r| wif_e2e::controller::metric_sum(text, "wif_controller_reconciles_total", &[("result", r)]))
        .sum::<f64>()
    };
    let before = failing(&ctl.metrics().await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = failing(&ctl.metrics().await);
    // With --backoff-max 3s (jittered down to 1.5 s) each binding is retried about 4 times in
    // 5 s, plus reconciles triggered by its own status and Event writes; a hot loop would be
    // hundreds. The bound leaves room for a slow, loaded machine.
    assert!(
        after - before <= 60.0,
        "4 failing bindings reconciled {} times in 5 s",
        after - before
    );
    assert!(
        !ctl.process.exited(),
        "the controller is still running:\n{}",
        ctl.logs()
    );
    ctl.kill();
}
