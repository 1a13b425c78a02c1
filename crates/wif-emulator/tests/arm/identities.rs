//! User-assigned identities: put, get, list, delete, and one made through ARM exchanges tokens.

use super::*;

#[tokio::test]
async fn identities_put_get_list_delete() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let url = format!("{}?{ARM_API}", env.identity_url("new-identity"));
    let (status, created) = arm
        .call(
            Method::PUT,
            &url,
            Some(json!({"location": "westeurope", "tags": {"team": "pay"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created:#}");
    assert_eq!(created["name"], "new-identity");
    assert_eq!(
        created["type"],
        "Microsoft.ManagedIdentity/userAssignedIdentities"
    );
    assert_eq!(created["properties"]["tenantId"], TENANT);
    let client_id = created["properties"]["clientId"]
        .as_str()
        .expect("clientId")
        .to_string();
    assert!(created["properties"]["principalId"].is_string());
    assert!(
        created["id"]
            .as_str()
            .is_some_and(|id| id.starts_with(&format!("/subscriptions/{SUBSCRIPTION}/resourcegroups/rg/")))
    );

    let (status, again) = arm.put_in_westeurope(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["properties"]["clientId"],
        client_id.as_str(),
        "ids are stable"
    );

    let (status, got) = arm.call(Method::GET, &url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["properties"]["clientId"], client_id.as_str());

    let list_url = format!(
        "{}/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities?{ARM_API}",
        env.emulator.arm_url()
    );
    let (status, list) = arm.call(Method::GET, &list_url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["value"].as_array().map(Vec::len), Some(2));

    let (status, body) = arm.call(Method::PUT, &url, Some(json!({}))).await;
    assert_arm_error(status, &body, 400, "LocationRequired");
    let (status, body) = arm
        .call(
            Method::GET,
            &format!("{}?{ARM_API}", env.identity_url("missing")),
            None,
        )
        .await;
    assert_arm_error(status, &body, 404, "ResourceNotFound");

    let (status, _) = arm.call(Method::DELETE, &url, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = arm.call(Method::DELETE, &url, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn an_identity_created_through_arm_can_exchange_tokens() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let (status, identity) = arm
        .put_in_westeurope(&format!("{}?{ARM_API}", env.identity_url("fresh")))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let client_id = identity["properties"]["clientId"]
        .as_str()
        .expect("clientId")
        .to_string();
    let body = json!({"properties": {"issuer": env.issuer.url, "subject": SUBJECT, "audiences": [AUDIENCE]}});
    let (status, _) = arm
        .call(Method::PUT, arm.fic_url("fresh", "kind-demo-api"), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, token) = env
        .exchange(&client_id, &env.issuer.rs256(&env.issuer.claims(SUBJECT)))
        .await;
    assert_eq!(status, StatusCode::OK, "{token:#}");
    assert_eq!(
        claims_of(token["access_token"].as_str().expect("token"))["oid"],
        identity["properties"]["principalId"]
    );
}
