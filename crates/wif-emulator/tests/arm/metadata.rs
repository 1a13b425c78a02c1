//! Cloud metadata, subscriptions and resource groups.

use super::*;

#[tokio::test]
async fn cloud_metadata_is_served_anonymously_and_points_at_the_emulator() {
    let env = Env::start().await;
    let base = env.emulator.base_url();
    let response = env
        .http
        .get(format!(
            "{}/metadata/endpoints?api-version=2022-09-01",
            env.emulator.arm_url()
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    // The fields `az cloud register` maps (azure-cli's `_arm_to_cli_mapper`).
    assert_eq!(
        body["authentication"]["loginEndpoint"],
        format!("{base}/"),
        "{body:#}"
    );
    assert_eq!(
        body["authentication"]["audiences"][0], "https://management.core.windows.net/",
        "{body:#}"
    );
    assert_eq!(body["resourceManager"], format!("{base}/arm/"), "{body:#}");
    assert_eq!(
        body["microsoftGraphResourceId"],
        format!("{base}/graph/"),
        "{body:#}"
    );
    assert!(
        body["name"].is_string() && body["suffixes"]["keyVaultDns"].is_string(),
        "{body:#}"
    );

    // Everything else still needs a token.
    let response = env
        .http
        .get(format!(
            "{}/subscriptions?api-version=2022-12-01",
            env.emulator.arm_url()
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn subscriptions_and_resource_groups_are_listed_and_missing_ones_get_arm_errors() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let root = env.emulator.arm_url();
    let api = "api-version=2022-12-01";

    let (status, body) = arm
        .call(Method::GET, format!("{root}/subscriptions?{api}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["count"], json!({ "type": "Total", "value": 1 }), "{body:#}");
    let sub = &body["value"][0];
    assert_eq!(sub["subscriptionId"], SUBSCRIPTION, "{body:#}");
    assert_eq!(sub["id"], format!("/subscriptions/{SUBSCRIPTION}"), "{body:#}");
    assert_eq!(sub["tenantId"], TENANT, "{body:#}");
    assert_eq!(sub["state"], "Enabled", "{body:#}");

    let (status, body) = arm
        .call(
            Method::GET,
            format!("{root}/subscriptions/{SUBSCRIPTION}?{api}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["displayName"], "wif emulator subscription", "{body:#}");

    let unknown = "00000000-0000-0000-0000-0000000000aa";
    let (status, body) = arm
        .call(Method::GET, format!("{root}/subscriptions/{unknown}?{api}"), None)
        .await;
    assert_arm_error(status, &body, 404, "SubscriptionNotFound");
    assert_eq!(
        body["error"]["message"],
        format!("The subscription '{unknown}' could not be found.")
    );
    let (status, body) = arm
        .call(
            Method::GET,
            format!("{root}/subscriptions/{unknown}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities?{ARM_API}"),
            None,
        )
        .await;
    assert_arm_error(status, &body, 404, "SubscriptionNotFound");

    // Resource groups: the identity's `rg` exists, others do not until created.
    let groups = format!("{root}/subscriptions/{SUBSCRIPTION}/resourcegroups");
    let (status, body) = arm.call(Method::GET, format!("{groups}?{api}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["value"][0]["name"], "rg", "{body:#}");
    assert_eq!(
        body["value"][0]["type"], "Microsoft.Resources/resourceGroups",
        "{body:#}"
    );
    let (status, body) = arm
        .call(Method::GET, format!("{groups}/missing?{api}"), None)
        .await;
    assert_arm_error(status, &body, 404, "ResourceGroupNotFound");
    assert_eq!(
        body["error"]["message"],
        "Resource group 'missing' could not be found."
    );
    let in_missing = format!(
        "{root}/subscriptions/{SUBSCRIPTION}/resourceGroups/missing/providers/Microsoft.ManagedIdentity/userAssignedIdentities/fresh-mi?{ARM_API}"
    );
    let (status, body) = arm.put_in_westeurope(&in_missing).await;
    assert_arm_error(status, &body, 404, "ResourceGroupNotFound");

    let (status, body) = arm.put_in_westeurope(format!("{groups}/missing?{api}")).await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let (status, _) = arm.put_in_westeurope(format!("{groups}/missing?{api}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = arm.put_in_westeurope(&in_missing).await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let (status, body) = arm.put_in_westeurope(format!("{groups}/bad.?{api}")).await;
    assert_arm_error(status, &body, 400, "InvalidResourceGroup");

    // Subscriptions seeded through the admin API appear; another tenant sees none of ours.
    let seeded = "11111111-2222-4333-8444-555555555555";
    env.emulator
        .admin()
        .seed(&Seed {
            tenants: vec![TenantSeed {
                id: TENANT.into(),
                subscriptions: vec![wif_emulator::SubscriptionSeed {
                    id: seeded.into(),
                    display_name: Some("second".into()),
                    resource_groups: vec![wif_emulator::ResourceGroupSeed {
                        name: "team".into(),
                        location: None,
                    }],
                }],
                ..TenantSeed::default()
            }],
        })
        .await
        .expect("seed");
    let (_, body) = arm
        .call(Method::GET, format!("{root}/subscriptions?{api}"), None)
        .await;
    assert_eq!(body["count"]["value"], 2, "{body:#}");
    let (status, _) = arm
        .call(
            Method::GET,
            format!("{root}/subscriptions/{seeded}/resourcegroups/team?{api}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let other = env.other_tenant_bearer(ARM).await;
    let (_, body) = env
        .call(&other, Method::GET, &format!("{root}/subscriptions?{api}"), None)
        .await;
    assert_eq!(body["value"], json!([]), "{body:#}");
    let (status, body) = env
        .call(
            &other,
            Method::GET,
            &format!("{root}/subscriptions/{SUBSCRIPTION}?{api}"),
            None,
        )
        .await;
    assert_arm_error(status, &body, 404, "SubscriptionNotFound");
}
