//! ARM: user-assigned identities and their federated credentials, api-version, validation rules,
//! concurrent-write 409, bearer-token checks.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wif_emulator::{ApplicationSeed, Seed, SettingsPatch, TenantSeed};

struct Arm<'a> {
    env: &'a Env,
    token: String,
}

impl Arm<'_> {
    async fn new(env: &Env) -> Arm<'_> {
        let token = env.bearer(ARM).await;
        Arm { env, token }
    }

    async fn call(&self, method: Method, url: impl AsRef<str>, body: Option<Value>) -> (StatusCode, Value) {
        self.env.call(&self.token, method, url.as_ref(), body).await
    }

    fn fic_url(&self, identity: &str, fic: &str) -> String {
        format!(
            "{}/federatedIdentityCredentials/{fic}?{ARM_API}",
            self.env.identity_url(identity)
        )
    }
}

fn fic_body(subject: &str) -> Value {
    json!({ "properties": {
        "issuer": "https://oidc.example/cluster",
        "subject": subject,
        "audiences": [AUDIENCE],
    }})
}

#[track_caller]
fn assert_arm_error(status: StatusCode, body: &Value, want: u16, code: &str) {
    assert_eq!(status.as_u16(), want, "{body:#}");
    assert_eq!(body["error"]["code"], code, "{body:#}");
    assert!(body["error"]["message"].is_string(), "{body:#}");
}

#[tokio::test]
async fn arm_requires_an_arm_token_for_the_subscription_tenant() {
    let env = Env::start().await;
    let url = format!("{}?{ARM_API}", env.identity_url(IDENTITY));
    let send = |token: Option<String>| {
        let mut request = env.http.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let response = send(None).await.expect("send");
    assert!(response.headers().contains_key("www-authenticate"));
    let status = response.status();
    assert_arm_error(
        status,
        &response.json().await.expect("json"),
        401,
        "AuthenticationFailed",
    );

    let graph = env.bearer(GRAPH).await;
    let response = send(Some(graph)).await.expect("send");
    let status = response.status();
    assert_arm_error(
        status,
        &response.json().await.expect("json"),
        401,
        "InvalidAuthenticationTokenAudience",
    );

    let mut foreign = env.issuer.claims(SUBJECT);
    foreign["aud"] = json!(ARM);
    let response = send(Some(env.issuer.rs256(&foreign))).await.expect("send");
    let status = response.status();
    assert_arm_error(
        status,
        &response.json().await.expect("json"),
        401,
        "InvalidAuthenticationToken",
    );

    let other_app = "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
    env.emulator
        .admin()
        .seed(&Seed {
            tenants: vec![TenantSeed {
                id: OTHER_TENANT.into(),
                applications: vec![ApplicationSeed {
                    display_name: "elsewhere".into(),
                    app_id: Some(other_app.into()),
                    ..ApplicationSeed::default()
                }],
                ..TenantSeed::default()
            }],
        })
        .await
        .expect("seed");
    let other = env
        .emulator
        .admin()
        .mint_token(OTHER_TENANT, other_app, ARM)
        .await
        .expect("mint");
    let response = send(Some(other)).await.expect("send");
    let status = response.status();
    assert_arm_error(
        status,
        &response.json().await.expect("json"),
        401,
        "InvalidAuthenticationTokenTenant",
    );

    let response = send(Some(env.bearer(ARM).await)).await.expect("send");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn api_version_is_required_and_checked() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let base = env.identity_url(IDENTITY);
    let (status, body) = arm.call(Method::GET, &base, None).await;
    assert_arm_error(status, &body, 400, "MissingApiVersionParameter");
    let (status, body) = arm
        .call(Method::GET, &format!("{base}?api-version=2020-01-01"), None)
        .await;
    assert_arm_error(status, &body, 400, "NoRegisteredProviderFound");
    let (status, body) = arm
        .call(Method::GET, &format!("{base}?api-version=latest"), None)
        .await;
    assert_arm_error(status, &body, 400, "InvalidApiVersionParameter");
    for version in ["2023-01-31", "2024-11-30", "2025-01-31-preview"] {
        let (status, body) = arm
            .call(Method::GET, &format!("{base}?api-version={version}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{version}: {body:#}");
    }
}

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

    let (status, again) = arm
        .call(Method::PUT, &url, Some(json!({"location": "westeurope"})))
        .await;
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
    let status = response.status();
    assert_arm_error(
        status,
        &response.json().await.expect("json"),
        400,
        "InvalidRequestContent",
    );

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
    let (status, _) = arm
        .call(Method::PUT, &other, Some(json!({"location": "westeurope"})))
        .await;
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

#[tokio::test]
async fn an_identity_created_through_arm_can_exchange_tokens() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let (status, identity) = arm
        .call(
            Method::PUT,
            &format!("{}?{ARM_API}", env.identity_url("fresh")),
            Some(json!({"location": "westeurope"})),
        )
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

#[tokio::test]
async fn malformed_arm_requests_get_arm_errors_never_500() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let root = env.emulator.arm_url();
    for (method, url, want, code) in [
        (
            Method::GET,
            format!(
                "{root}/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/disks?{ARM_API}"
            ),
            404,
            "InvalidResourceType",
        ),
        (
            Method::GET,
            format!("{root}/subscriptions?api-version=latest"),
            400,
            "InvalidApiVersionParameter",
        ),
        (
            Method::DELETE,
            format!("{root}/subscriptions/{SUBSCRIPTION}?api-version=2022-12-01"),
            405,
            "MethodNotAllowed",
        ),
        (
            Method::GET,
            format!(
                "{root}/subscriptions/nope/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities?{ARM_API}"
            ),
            400,
            "InvalidSubscriptionId",
        ),
        (
            Method::POST,
            format!("{}?{ARM_API}", env.identity_url(IDENTITY)),
            405,
            "MethodNotAllowed",
        ),
        (
            Method::GET,
            format!(
                "{}/federatedIdentityCredentials/a/b?{ARM_API}",
                env.identity_url(IDENTITY)
            ),
            404,
            "InvalidResourceType",
        ),
    ] {
        let (status, body) = arm.call(method.clone(), &url, None).await;
        assert_arm_error(status, &body, want, code);
    }
}

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
    let (status, body) = arm
        .call(
            Method::PUT,
            &in_missing,
            Some(json!({ "location": "westeurope" })),
        )
        .await;
    assert_arm_error(status, &body, 404, "ResourceGroupNotFound");

    let (status, body) = arm
        .call(
            Method::PUT,
            format!("{groups}/missing?{api}"),
            Some(json!({ "location": "westeurope" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let (status, _) = arm
        .call(
            Method::PUT,
            format!("{groups}/missing?{api}"),
            Some(json!({ "location": "westeurope" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = arm
        .call(
            Method::PUT,
            &in_missing,
            Some(json!({ "location": "westeurope" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let (status, body) = arm
        .call(
            Method::PUT,
            format!("{groups}/bad.?{api}"),
            Some(json!({ "location": "westeurope" })),
        )
        .await;
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

    let other_app = "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
    env.emulator
        .admin()
        .seed(&Seed {
            tenants: vec![TenantSeed {
                id: OTHER_TENANT.into(),
                applications: vec![ApplicationSeed {
                    display_name: "elsewhere".into(),
                    app_id: Some(other_app.into()),
                    ..ApplicationSeed::default()
                }],
                ..TenantSeed::default()
            }],
        })
        .await
        .expect("seed");
    let other = env
        .emulator
        .admin()
        .mint_token(OTHER_TENANT, other_app, ARM)
        .await
        .expect("mint");
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

#[tokio::test]
async fn unsigned_tokens_are_refused_by_arm_and_graph_with_a_challenge() {
    let env = Env::start().await;
    // The emulator's own token with its signature dropped and `alg: none`.
    let real = env.bearer(ARM).await;
    let claims = real.split('.').nth(1).expect("payload").to_string();
    let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
        let response = env
            .get(&format!("{}?{ARM_API}", env.identity_url(IDENTITY)), &token)
            .await;
        assert!(response.headers().contains_key("www-authenticate"));
        let status = response.status();
        assert_arm_error(
            status,
            &response.json().await.expect("json"),
            401,
            "InvalidAuthenticationToken",
        );

        let response = env.get(&env.graph("applications"), &token).await;
        assert!(response.headers().contains_key("www-authenticate"));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
