//! Federated credentials on an identity: put, get, list, delete, the validation rules and the
//! concurrent-write 409.

use super::*;

#[tokio::test]
async fn credentials_put_get_list_delete() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let url = arm.fic_url(IDENTITY, "payments-api");
    let (status, created) = arm
        .call(Method::PUT, &url, Some(fic_body("system:serviceaccount:pay:api")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created:#}");
    assert_eq!(created["name"], "payments-api");
    assert_eq!(
        created["type"],
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials"
    );
    assert_eq!(created["properties"]["subject"], "system:serviceaccount:pay:api");
    assert_eq!(created["properties"]["audiences"], json!([AUDIENCE]));
    assert!(created["id"].as_str().is_some_and(|id| id.ends_with(&format!(
        "/userAssignedIdentities/{IDENTITY}/federatedIdentityCredentials/payments-api"
    ))));

    let (status, updated) = arm
        .call(
            Method::PUT,
            &url,
            Some(fic_body("system:serviceaccount:pay:worker")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        updated["properties"]["subject"],
        "system:serviceaccount:pay:worker"
    );
    let (status, got) = arm.call(Method::GET, &url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, updated);

    let list = format!(
        "{}/federatedIdentityCredentials?{ARM_API}",
        env.identity_url(IDENTITY)
    );
    let (status, body) = arm.call(Method::GET, &list, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["value"].as_array().map(Vec::len),
        Some(2),
        "seeded + created"
    );
    let (_, page) = arm.call(Method::GET, &format!("{list}&$top=1"), None).await;
    assert_eq!(page["value"].as_array().map(Vec::len), Some(1));
    let next = page["nextLink"].as_str().expect("nextLink").to_string();
    let (_, page2) = arm.call(Method::GET, &next, None).await;
    assert_eq!(page2["value"].as_array().map(Vec::len), Some(1));
    assert!(page2.get("nextLink").is_none());
    assert_ne!(page["value"][0]["name"], page2["value"][0]["name"]);

    let (status, _) = arm.call(Method::DELETE, &url, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = arm.call(Method::DELETE, &url, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = arm.call(Method::GET, &url, None).await;
    assert_arm_error(status, &body, 404, "NotFound");

    let orphan = arm.fic_url("no-such-identity", "payments-api");
    let (status, body) = arm.call(Method::PUT, &orphan, Some(fic_body("s"))).await;
    assert_arm_error(status, &body, 404, "ParentResourceNotFound");
    assert_eq!(
        body["error"]["message"],
        "The parent user-assigned identity doesn't exist."
    );
}

#[tokio::test]
async fn credential_rules() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let cases = [
        (
            "ab",
            fic_body("s1"),
            "Federated Identity Credential name 'ab' is invalid.",
        ),
        (
            "two-audiences",
            json!({"properties": {"issuer": "https://i", "subject": "s", "audiences": [AUDIENCE, "x"]}}),
            "Federated identity credentials must have exactly one audience.",
        ),
        (
            "empty",
            json!({"properties": {}}),
            "Federated Identity Credential from HTTP body has empty properties",
        ),
        (
            "no-properties",
            json!({}),
            "Federated Identity Credential from HTTP body has empty properties",
        ),
        (
            "no-subject",
            json!({"properties": {"issuer": "https://i", "audiences": [AUDIENCE]}}),
            "The request format was unexpected. Federated Identity Credential must specify 'issuer', 'subject' and 'audience'.",
        ),
        (
            "duplicate",
            json!({"properties": {"issuer": env.issuer.url, "subject": SUBJECT, "audiences": [AUDIENCE]}}),
            "Issuer and subject combination already exists for this Managed Identity.",
        ),
    ];
    for (name, body, message) in cases {
        let (status, err) = arm
            .call(Method::PUT, arm.fic_url(IDENTITY, name), Some(body))
            .await;
        assert_arm_error(status, &err, 400, "BadRequest");
        assert_eq!(err["error"]["message"], message, "{name}");
    }
    let response = env
        .http
        .put(arm.fic_url(IDENTITY, "not-json"))
        .bearer_auth(&arm.token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("send");
    assert_arm_response(response, 400, "InvalidRequestContent").await;

    // 20 per identity: 1 is seeded.
    for i in 0..19 {
        let (status, body) = arm
            .call(
                Method::PUT,
                arm.fic_url(IDENTITY, &format!("bulk-{i}")),
                Some(fic_body(&format!("s-{i}"))),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body:#}");
    }
    let (status, body) = arm
        .call(
            Method::PUT,
            arm.fic_url(IDENTITY, "one-too-many"),
            Some(fic_body("s-21")),
        )
        .await;
    assert_arm_error(status, &body, 400, "BadRequest");
    // Updating one of the 20 in place is still allowed.
    let (status, _) = arm
        .call(
            Method::PUT,
            arm.fic_url(IDENTITY, "bulk-0"),
            Some(fic_body("s-0b")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_writes_to_one_identity_get_409() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    env.emulator
        .admin()
        .patch_settings(&SettingsPatch {
            arm_write_hold_ms: Some(600),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    let (a, b) = tokio::join!(
        arm.call(
            Method::PUT,
            arm.fic_url(IDENTITY, "writer-a"),
            Some(fic_body("a"))
        ),
        arm.call(
            Method::PUT,
            arm.fic_url(IDENTITY, "writer-b"),
            Some(fic_body("b"))
        ),
    );
    let mut statuses = [a.0.as_u16(), b.0.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{a:?} {b:?}");
    let conflict = if a.0 == StatusCode::CONFLICT { &a.1 } else { &b.1 };
    assert_arm_error(
        StatusCode::CONFLICT,
        conflict,
        409,
        "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
    );
    let id = format!(
        "/subscriptions/{SUBSCRIPTION}/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/{IDENTITY}"
    );
    assert_eq!(
        conflict["error"]["message"],
        format!(
            "Too many Federated Identity Credentials are written concurrently for the managed identity '{id}'. Concurrent Federated Identity Credentials writes under the same managed identity are not supported."
        )
    );

    // Different identities may be written in parallel; sequential writes are fine.
    let other = format!("{}?{ARM_API}", env.identity_url("second"));
    let (status, _) = arm.put_in_westeurope(&other).await;
    assert_eq!(status, StatusCode::CREATED);
    let (a, b) = tokio::join!(
        arm.call(
            Method::PUT,
            arm.fic_url(IDENTITY, "parallel-a"),
            Some(fic_body("pa"))
        ),
        arm.call(
            Method::PUT,
            arm.fic_url("second", "parallel-b"),
            Some(fic_body("pb"))
        ),
    );
    assert_eq!(
        (a.0, b.0),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{a:?} {b:?}"
    );

    // Concurrent deletes collide too.
    let (a, b) = tokio::join!(
        arm.call(Method::DELETE, arm.fic_url(IDENTITY, "parallel-a"), None),
        arm.call(Method::DELETE, arm.fic_url(IDENTITY, "writer-a"), None),
    );
    let mut statuses = [a.0.as_u16(), b.0.as_u16()];
    statuses.sort_unstable();
    assert!(statuses[1] == 409, "{a:?} {b:?}");
}
