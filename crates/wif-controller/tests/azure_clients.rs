//! The Graph and ARM clients against `wif-emulator` (in process): CRUD, error mapping, the
//! plan applied end to end, retries of injected 429/5xx honouring `Retry-After`, and
//! per-identity serialisation avoiding ARM's concurrent-write 409.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use wif_api::UserAssignedIdentityId;
use wif_controller::{
    azure::{
        Azure, AzureHttp, CredentialSpec, Parent, RetryConfig, TokenProvider,
        arm::{self, ArmClient},
        graph::GraphClient,
        http::{Api, Service},
        http_client,
    },
    directory::Directory,
    naming,
    plan::{self, Ownership, Step},
};
use wif_emulator::{
    AdminClient, ApplicationSeed, Emulator, EmulatorConfig, FaultRule, Faults, IdentitySeed, Seed,
    ServerError, SettingsPatch, TenantSeed, Throttle,
};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CONTROLLER: &str = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
const APP: &str = "5e3ce6c0-2b1f-4285-8d4b-75ee78787346";
const SUB: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";
const ISSUER: &str = "https://issuer.example/cluster/";
const AUD: &str = "api://AzureADTokenExchange";

/// Tokens minted by the emulator's admin API for the controller's application (the test
/// stand-in for the controller's workload identity).
struct Minted(AdminClient);

impl TokenProvider for Minted {
    fn token<'a>(
        &'a self,
        tenant: &'a str,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<String, wif_exchange::Error>> {
        Box::pin(async move {
            let resource = scope.trim_end_matches("/.default");
            self.0
                .mint_token(tenant, CONTROLLER, resource)
                .await
                .map_err(|e| wif_exchange::Error::Internal(e.to_string()))
        })
    }
}

fn spec(name: &str, subject: &str, description: Option<String>) -> CredentialSpec {
    CredentialSpec {
        name: name.into(),
        issuer: ISSUER.into(),
        subject: subject.into(),
        audience: AUD.into(),
        description,
    }
}

#[tokio::test]
async fn graph_and_arm_clients_against_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(EmulatorConfig::new(dir.path())).await.unwrap();
    let admin = emulator.admin().clone();
    admin
        .seed(&Seed {
            tenants: vec![TenantSeed {
                id: TENANT.into(),
                applications: vec![
                    ApplicationSeed {
                        display_name: "wif-controller".into(),
                        app_id: Some(CONTROLLER.into()),
                        ..ApplicationSeed::default()
                    },
                    ApplicationSeed {
                        display_name: "api".into(),
                        app_id: Some(APP.into()),
                        ..ApplicationSeed::default()
                    },
                ],
                user_assigned_identities: vec![IdentitySeed {
                    subscription_id: SUB.into(),
                    resource_group: "demo".into(),
                    name: "api-identity".into(),
                    ..IdentitySeed::default()
                }],
                ..TenantSeed::default()
            }],
        })
        .await
        .unwrap();
    let http = http_client(
        &[("emulator".into(), emulator.ca_pem().as_bytes().to_vec())],
        Duration::from_secs(5),
    )
    .unwrap();
    let retry = RetryConfig {
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(2),
    };
    let azure_http = Arc::new(AzureHttp::new(
        http,
        Arc::new(Minted(admin.clone())),
        retry,
        Duration::from_secs(10),
        None,
    ));
    let azure = Azure {
        graph: GraphClient::new(
            azure_http.clone(),
            &emulator.graph_url(),
            "https://graph.microsoft.com/.default",
        ),
        arm: ArmClient::new(
            azure_http.clone(),
            &emulator.arm_url(),
            "https://management.azure.com/.default",
        ),
    };

    // --- Graph: resolve, create, list, update, delete -------------------------------------
    assert!(
        azure
            .graph
            .find_application(TENANT, "00000000-0000-0000-0000-000000000000")
            .await
            .unwrap()
            .is_none()
    );
    let app = azure.graph.find_application(TENANT, APP).await.unwrap().unwrap();
    assert_eq!(app.app_id, APP);
    let parent = Parent::Application {
        tenant: TENANT.into(),
        client_id: APP.into(),
        object_id: app.object_id.clone(),
    };
    let desc = naming::description("c1", "payments", "api");
    let wanted = spec(
        "wif-payments-api-x",
        "system:serviceaccount:payments:api",
        Some(desc.clone()),
    );
    let ours = Ownership {
        backend: parent.backend(),
        marker: naming::marker("c1", "payments", "api"),
        names: vec![wanted.name.clone()],
        recorded_id: None,
    };
    let p = plan::plan(&wanted, &azure.list(&parent).await.unwrap(), &ours, 20);
    assert_eq!(p.steps, vec![Step::Create]);
    let created = azure.create(&parent, &wanted).await.unwrap();
    assert_eq!(created.issuer, ISSUER);
    assert_eq!(created.description.as_deref(), Some(desc.as_str()));
    let listed = azure.list(&parent).await.unwrap();
    assert!(plan::plan(&wanted, &listed, &ours, 20).is_in_sync());
    // Graph refuses a duplicate name with 409 and a duplicate issuer+subject with 400.
    let dup = azure.create(&parent, &wanted).await.unwrap_err();
    assert_eq!(dup.status(), Some(409), "{dup}");
    let pair = azure
        .create(
            &parent,
            &spec("another-name", "system:serviceaccount:payments:api", None),
        )
        .await
        .unwrap_err();
    assert_eq!(
        pair.code(),
        Some("InvalidFederatedIdentityCredentialValue"),
        "{pair}"
    );
    // Drift out of band → planned update in place → in sync.
    let mut drifted = wanted.clone();
    drifted.audience = "api://other".into();
    azure
        .update(&parent, &created.id, &created.name, &drifted)
        .await
        .unwrap();
    let listed = azure.list(&parent).await.unwrap();
    let p = plan::plan(&wanted, &listed, &ours, 20);
    assert!(
        matches!(p.steps.as_slice(), [Step::Update { adopt: false, .. }]),
        "{p:?}"
    );
    azure
        .update(&parent, &created.id, &created.name, &wanted)
        .await
        .unwrap();
    assert_eq!(
        azure.get(&parent, &wanted.name).await.unwrap().unwrap().audiences,
        vec![AUD]
    );
    assert!(azure.delete(&parent, &created.id, &created.name).await.unwrap());
    assert!(
        !azure.delete(&parent, &created.id, &created.name).await.unwrap(),
        "already gone"
    );
    assert!(azure.get(&parent, &wanted.name).await.unwrap().is_none());

    // --- ARM --------------------------------------------------------------------------------
    let id = UserAssignedIdentityId::parse(&format!(
        "/subscriptions/{SUB}/resourceGroups/demo/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api-identity"
    ))
    .unwrap();
    let identity = azure.arm.get_identity(TENANT, &id).await.unwrap().unwrap();
    assert_eq!(identity.tenant_id, TENANT);
    let missing = UserAssignedIdentityId::parse(&format!(
        "/subscriptions/{SUB}/resourceGroups/demo/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nope"
    ))
    .unwrap();
    assert!(azure.arm.get_identity(TENANT, &missing).await.unwrap().is_none());
    let uami = Parent::Identity {
        tenant: TENANT.into(),
        id: id.clone(),
    };
    let arm_spec = spec("wif-payments-api-y", "system:serviceaccount:payments:api", None);
    let c = azure.create(&uami, &arm_spec).await.unwrap();
    assert!(
        c.id.ends_with("/federatedIdentityCredentials/wif-payments-api-y"),
        "{}",
        c.id
    );
    assert_eq!(azure.list(&uami).await.unwrap().len(), 1);
    assert!(azure.delete(&uami, &c.id, &c.name).await.unwrap());
    assert!(!azure.delete(&uami, &c.id, &c.name).await.unwrap());

    // --- paging: every page is read; a next link outside the API's base is not followed -------
    let paged = ["p-1", "p-2", "p-3"];
    for name in paged {
        let subject = format!("system:serviceaccount:paging:{name}");
        azure.create(&uami, &spec(name, &subject, None)).await.unwrap();
    }
    let first_page = format!(
        "{}{}/federatedIdentityCredentials?api-version={}&$top=1",
        emulator.arm_url(),
        id.resource_id(),
        arm::API_VERSION
    );
    let name = |v: &serde_json::Value| v["name"].as_str().map(str::to_owned);
    let scope = "https://management.azure.com/.default";
    let api = Api::new(azure_http.clone(), Service::Arm, emulator.arm_url(), scope);
    let all = api
        .list_all(TENANT, first_page.clone(), "nextLink", name)
        .await
        .unwrap();
    assert_eq!(all, paged, "three pages of one");
    // The same server under a narrower base: its links (to …/arm/subscriptions) fall outside.
    let narrow = Api::new(
        azure_http.clone(),
        Service::Arm,
        format!("{}/elsewhere", emulator.arm_url()),
        scope,
    );
    let first = narrow
        .list_all(TENANT, first_page, "nextLink", name)
        .await
        .unwrap();
    assert_eq!(first, ["p-1"], "a link outside the base is not followed");
    for c in azure.list(&uami).await.unwrap() {
        assert!(azure.delete(&uami, &c.id, &c.name).await.unwrap());
    }

    // --- retries: 429 with Retry-After, then 503, both absorbed ------------------------------
    admin
        .set_faults(&Faults {
            graph: FaultRule {
                throttle: Some(Throttle {
                    every_nth: Some(1),
                    limit: Some(2),
                    retry_after_seconds: 0.3,
                    ..Throttle::default()
                }),
                server_error: Some(ServerError {
                    every_nth: Some(1),
                    limit: Some(1),
                    status: 503,
                    ..ServerError::default()
                }),
                ..FaultRule::default()
            },
            ..Faults::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    azure.list(&parent).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "two Retry-After waits: {:?}",
        started.elapsed()
    );
    let counters = admin.counters().await.unwrap();
    assert_eq!(counters.graph.throttled, 2);
    assert_eq!(counters.graph.server_errors, 1);
    // Persistent throttling: bounded attempts, then a typed, transient error.
    admin
        .set_faults(&Faults {
            arm: FaultRule {
                throttle: Some(Throttle {
                    every_nth: Some(1),
                    retry_after_seconds: 0.05,
                    ..Throttle::default()
                }),
                ..FaultRule::default()
            },
            ..Faults::default()
        })
        .await
        .unwrap();
    let err = azure.list(&uami).await.unwrap_err();
    assert_eq!(err.status(), Some(429));
    assert!(err.is_transient());
    admin.set_faults(&Faults::default()).await.unwrap();

    // --- 20 per identity: the limit answer maps to CapacityExceeded upstream ----------------
    admin
        .patch_settings(&SettingsPatch {
            max_credentials_per_parent: Some(2),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();
    for i in 0..2 {
        azure
            .create(
                &uami,
                &spec(
                    &format!("fill-{i}"),
                    &format!("system:serviceaccount:x:s{i}"),
                    None,
                ),
            )
            .await
            .unwrap();
    }
    let full = azure.create(&uami, &arm_spec).await.unwrap_err();
    assert_eq!(full.status(), Some(400), "{full}");
    let p = plan::plan(
        &arm_spec,
        &azure.list(&uami).await.unwrap(),
        &Ownership {
            backend: uami.backend(),
            marker: String::new(),
            names: vec![arm_spec.name.clone()],
            recorded_id: None,
        },
        2,
    );
    assert!(matches!(
        p.blocked,
        Some(plan::Blocked::CapacityExceeded { used: 2, limit: 2 })
    ));
    for i in 0..2 {
        let name = format!("fill-{i}");
        azure.delete(&uami, &name, &name).await.unwrap();
    }
    admin
        .patch_settings(&SettingsPatch {
            max_credentials_per_parent: Some(20),
            arm_write_hold_ms: Some(150),
            ..SettingsPatch::default()
        })
        .await
        .unwrap();

    // --- per-identity serialisation: 8 concurrent writers, no 409 reaches ARM ---------------
    let dir = Arc::new(Directory::new(Duration::from_secs(1), Duration::from_secs(60)));
    let before = admin.counters().await.unwrap().arm;
    let writers = (0..8).map(|i| {
        let (azure, dir, uami) = (azure.clone(), dir.clone(), uami.clone());
        tokio::spawn(async move {
            let _lock = dir.lock(&uami.key()).await;
            azure
                .create(
                    &uami,
                    &spec(&format!("w-{i}"), &format!("system:serviceaccount:x:w{i}"), None),
                )
                .await
                .map(drop)
        })
    });
    for w in futures::future::join_all(writers).await {
        w.unwrap().unwrap();
    }
    let after = admin.counters().await.unwrap().arm;
    assert_eq!(
        after.requests - before.requests,
        8,
        "one request per write: no 409 retries"
    );
}
