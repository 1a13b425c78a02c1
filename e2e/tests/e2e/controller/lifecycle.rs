//! A binding's life: created, changed, drifted out of band and deleted, for an application and
//! for a managed identity (`deletionPolicy: Orphan` leaves the credential).

use super::*;

/// create → exact credential, SA annotated, Ready; audience change → in place; out-of-band
/// delete → recreated; out-of-band edit → corrected; delete → gone, finalizer and annotations
/// removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn application_binding_lifecycle_and_drift() {
    let s = setup("ctl-app", tenant(json!([])), json!({})).await;
    let _policy = PolicyGuard::grant(&s.ns, "", &[APP_A], &[]).await;
    s.ns.service_account("api", &[]).await;
    let ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    let logs = || ctl.logs();

    s.create(binding("api", "api", app(APP_A), json!({}))).await;
    let b = wait_binding(&s.ns, "api", T, logs, is_ready).await;

    let creds = s.env.app_credentials(APP_A).await;
    assert_eq!(creds.len(), 1, "{creds:#?}");
    let c = &creds[0];
    assert_eq!(
        c["issuer"],
        s.ns.cp.issuer.as_str(),
        "issuer byte for byte as discovered"
    );
    assert_eq!(c["subject"], s.subject("api").as_str());
    assert_eq!(c["audiences"], json!([AUD]));
    assert_eq!(c["name"], s.default_name("api").as_str());
    assert!(c["description"].as_str().unwrap().contains(&naming::marker(
        &cluster_id(&s.ns),
        &s.ns.name,
        "api"
    )));
    let status = b.status.clone().unwrap();
    assert_eq!(status.client_id.as_deref(), Some(APP_A));
    assert_eq!(status.tenant_id.as_deref(), Some(TENANT));
    let recorded = status.credential.unwrap();
    assert_eq!(recorded.id, c["id"].as_str().unwrap());
    assert_eq!(recorded.issuer, s.ns.cp.issuer);
    for kind in [
        "Permitted",
        "IdentityResolved",
        "CredentialSynced",
        "ServiceAccountReady",
        "Propagated",
    ] {
        assert_eq!(condition(&b, kind).unwrap().0, "True", "{kind}");
    }
    let annotations = s.annotations("api").await;
    assert_eq!(
        annotations.get(wif_api::CLIENT_ID_ANNOTATION).map(String::as_str),
        Some(APP_A)
    );
    assert_eq!(
        annotations.get(wif_api::TENANT_ID_ANNOTATION).map(String::as_str),
        Some(TENANT)
    );
    let first_id = c["id"].as_str().unwrap().to_owned();

    // Audience changed → the same credential, updated in place.
    s.patch_spec("api", json!({"audience": "api://custom-audience"}))
        .await;
    wait_binding(&s.ns, "api", T, logs, |b| {
        is_ready(b)
            && b.status
                .as_ref()
                .and_then(|s| s.credential.as_ref())
                .map(|c| c.audiences.clone())
                == Some(vec!["api://custom-audience".to_owned()])
    })
    .await;
    let creds = s.env.app_credentials(APP_A).await;
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0]["id"], first_id.as_str(), "updated in place");
    assert_eq!(creds[0]["audiences"], json!(["api://custom-audience"]));

    // Deleted out of band → recreated on the next resync.
    let oid = s.env.app_object_id(APP_A).await;
    let (status, _) = s
        .env
        .out_of_band(
            Method::DELETE,
            &format!("/graph/v1.0/applications/{oid}/federatedIdentityCredentials/{first_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let recreated = eventually("the credential to be recreated", T, || async {
        let creds = s.env.app_credentials(APP_A).await;
        (creds.len() == 1 && creds[0]["id"] != first_id.as_str()).then(|| creds[0].clone())
    })
    .await;
    assert_eq!(recreated["subject"], s.subject("api").as_str());

    // Edited out of band → corrected.
    let id = recreated["id"].as_str().unwrap();
    let (status, _) = s
        .env
        .out_of_band(
            Method::PATCH,
            &format!("/graph/v1.0/applications/{oid}/federatedIdentityCredentials/{id}"),
            Some(json!({"subject": "system:serviceaccount:elsewhere:intruder"})),
        )
        .await;
    assert_eq!(status, 204);
    eventually("the edit to be corrected", T, || async {
        let creds = s.env.app_credentials(APP_A).await;
        (creds.len() == 1 && creds[0]["subject"] == s.subject("api").as_str() && creds[0]["id"] == id)
            .then_some(())
    })
    .await;

    let wanted = [
        "CredentialCreated",
        "CredentialUpdated",
        "ServiceAccountAnnotated",
    ];
    let reasons = s.event_reasons("api", &wanted).await;
    for want in wanted {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} Event in {reasons:?}"
        );
    }

    // Deleted → credential gone, finalizer removed, annotations removed.
    s.bindings()
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the binding to be gone", T, || async {
        s.bindings().get_opt("api").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        s.env.app_credentials(APP_A).await.is_empty(),
        "credential deleted"
    );
    let annotations = s.annotations("api").await;
    assert!(
        !annotations.contains_key(wif_api::CLIENT_ID_ANNOTATION),
        "{annotations:?}"
    );
    assert!(!ctl.logs().contains("panicked"));
}

/// A managed identity through ARM; `deletionPolicy: Orphan` leaves the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn managed_identity_binding_and_orphan_policy() {
    let s = setup("ctl-mi", tenant(json!([])), json!({})).await;
    let _policy = PolicyGuard::grant(&s.ns, "", &[], &[&identity_id("api-identity")]).await;
    s.ns.service_account("worker", &[]).await;
    let ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    let logs = || ctl.logs();

    s.create(binding("mi", "worker", uami("api-identity"), json!({})))
        .await;
    let b = wait_binding(&s.ns, "mi", T, logs, is_ready).await;
    let creds = s.env.identity_credentials("api-identity").await;
    assert_eq!(creds.len(), 1);
    assert_eq!(
        creds[0]["name"],
        s.default_name("mi").as_str(),
        "deterministic name on ARM"
    );
    assert_eq!(creds[0]["issuer"], s.ns.cp.issuer.as_str());
    assert_eq!(creds[0]["subject"], s.subject("worker").as_str());
    let state = s.env.state().await;
    let identity_client = state["tenants"][0]["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "api-identity")
        .unwrap()["clientId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        b.status.unwrap().client_id.as_deref(),
        Some(identity_client.as_str())
    );
    assert_eq!(
        s.annotations("worker").await.get(wif_api::CLIENT_ID_ANNOTATION),
        Some(&identity_client)
    );

    s.patch_spec("mi", json!({"deletionPolicy": "Orphan"})).await;
    wait_binding(&s.ns, "mi", T, logs, is_ready).await;
    s.bindings().delete("mi", &DeleteParams::default()).await.unwrap();
    eventually("the binding to be gone", T, || async {
        s.bindings().get_opt("mi").await.unwrap().is_none().then_some(())
    })
    .await;
    let creds = s.env.identity_credentials("api-identity").await;
    assert_eq!(creds.len(), 1, "Orphan leaves the credential");
    assert!(
        s.event_reasons("mi", &["CredentialOrphaned"])
            .await
            .iter()
            .any(|r| r == "CredentialOrphaned")
    );
}
