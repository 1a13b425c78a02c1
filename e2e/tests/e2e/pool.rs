//! Identity pools end to end: `wif controller` against the real API server and the emulator,
//! bindings naming a `FederatedIdentityPool` placed over its identities, past Entra's
//! 20-credentials-per-identity ceiling.
//!
//! The control plane is shared with the other tests: the controller of the fill test watches
//! the namespaces labelled `wif-e2e-pool=<its namespace>` (`--watch-namespace-selector`), one
//! binding in each of 55 of them; the others watch their one namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use wif_api::{FederatedIdentityBinding, FederatedIdentityPolicy, FederatedIdentityPool};
use wif_controller::naming;
use wif_e2e::{
    TestNs, WebhookOptions, WebhookProcess,
    controller::{
        ControllerEnv, ControllerOptions, ControllerProcess, TENANT, binding, cluster_id, condition,
        eventually, is_ready,
    },
    entra::{claims, service_account_token},
};

const POOL_A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
const POOL_B: &str = "0a1b2c3d-0000-4000-8000-00000000000b";
const POOL_C: &str = "0a1b2c3d-0000-4000-8000-00000000000c";
const T: Duration = Duration::from_secs(120);
/// The label of every namespace of one test (the policy's and the fill test's selector).
const POOL_LABEL: &str = "wif-e2e-pool";

fn tenant() -> Value {
    json!({"applications": [
        {"displayName": "pool-a", "appId": POOL_A},
        {"displayName": "pool-b", "appId": POOL_B},
        {"displayName": "pool-c", "appId": POOL_C},
    ]})
}

/// A pool and a policy granting it to `ns`, both named after the namespace; deleted on drop.
struct PoolGuard {
    name: String,
    client: kube::Client,
}

impl PoolGuard {
    async fn create(ns: &TestNs, apps: &[&str], capacity: u32) -> Self {
        let name = format!("e2e-{}", ns.name);
        let pool: FederatedIdentityPool = serde_json::from_value(json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityPool",
            "metadata": {"name": name},
            "spec": {
                "identities": apps.iter().map(|a| json!({"application": {"clientId": a}})).collect::<Vec<_>>(),
                "capacityPerIdentity": capacity,
            }
        }))
        .unwrap();
        Api::<FederatedIdentityPool>::all(ns.client.clone())
            .create(&PostParams::default(), &pool)
            .await
            .expect("create pool");
        let policy: FederatedIdentityPolicy = serde_json::from_value(json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {POOL_LABEL: ns.name}},
                "pools": [name],
            }
        }))
        .unwrap();
        Api::<FederatedIdentityPolicy>::all(ns.client.clone())
            .create(&PostParams::default(), &policy)
            .await
            .expect("create policy");
        Self {
            name,
            client: ns.client.clone(),
        }
    }

    async fn set_identities(&self, apps: &[&str]) {
        let patch = json!({"spec": {"identities": apps.iter().map(|a| json!({"application": {"clientId": a}})).collect::<Vec<_>>()}});
        Api::<FederatedIdentityPool>::all(self.client.clone())
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch pool");
    }

    async fn get(&self) -> FederatedIdentityPool {
        Api::<FederatedIdentityPool>::all(self.client.clone())
            .get(&self.name)
            .await
            .expect("the pool")
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        // Best effort, without blocking the runtime of the test.
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    let dp = DeleteParams::default();
                    let _ = Api::<FederatedIdentityPool>::all(client.clone())
                        .delete(&name, &dp)
                        .await;
                    let _ = Api::<FederatedIdentityPolicy>::all(client)
                        .delete(&name, &dp)
                        .await;
                });
            }
        });
    }
}

struct World {
    ns: TestNs,
    env: ControllerEnv,
    pool: PoolGuard,
}

/// Labels `ns` as one of the namespaces of the test whose main namespace is `main`.
async fn label(ns: &TestNs, main: &str) {
    let patch = json!({"metadata": {"labels": {POOL_LABEL: main}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(ns.client.clone())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label namespace");
}

async fn world(prefix: &str, apps: &[&str], capacity: u32) -> World {
    let ns = TestNs::new(prefix).await;
    label(&ns, &ns.name).await;
    let env = ControllerEnv::start(&ns, tenant(), json!({})).await;
    let pool = PoolGuard::create(&ns, apps, capacity).await;
    World { ns, env, pool }
}

impl World {
    fn bindings(&self) -> Api<FederatedIdentityBinding> {
        self.ns.api()
    }

    /// ServiceAccount and binding `name` (same name), naming the pool.
    async fn bind(&self, name: &str) {
        self.bind_in(&self.ns, name).await;
    }

    /// [`Self::bind`] in namespace `ns`.
    async fn bind_in(&self, ns: &TestNs, name: &str) {
        ns.service_account(name, &[]).await;
        let b = binding(name, name, json!({"pool": {"name": self.pool.name}}), json!({}));
        ns.api::<FederatedIdentityBinding>()
            .create(&PostParams::default(), &b)
            .await
            .expect("create binding");
    }

    /// Bindings `name` in each of `namespaces`, once all are Ready.
    async fn all_ready_in(&self, namespaces: &[TestNs], name: &str) -> Vec<FederatedIdentityBinding> {
        let wanted: BTreeSet<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
        let all = Api::<FederatedIdentityBinding>::all(self.ns.client.clone());
        eventually(&format!("{} bindings Ready", wanted.len()), T, || async {
            let list = all.list(&Default::default()).await.ok()?;
            let ready: Vec<FederatedIdentityBinding> = list
                .items
                .into_iter()
                .filter(|b| {
                    b.name_any() == name
                        && wanted.contains(b.namespace().unwrap_or_default().as_str())
                        && is_ready(b)
                })
                .collect();
            (ready.len() == wanted.len()).then_some(ready)
        })
        .await
    }

    async fn all_ready(&self, names: &[String]) -> Vec<FederatedIdentityBinding> {
        eventually(&format!("{} bindings Ready", names.len()), T, || async {
            let list = self.bindings().list(&Default::default()).await.ok()?;
            let ready: Vec<FederatedIdentityBinding> = list
                .items
                .into_iter()
                .filter(|b| names.contains(&b.name_any()) && is_ready(b))
                .collect();
            (ready.len() == names.len()).then_some(ready)
        })
        .await
    }

    /// Credentials per pool application.
    async fn usage(&self) -> BTreeMap<&'static str, Vec<Value>> {
        let mut out = BTreeMap::new();
        for app in [POOL_A, POOL_B, POOL_C] {
            out.insert(app, self.env.app_credentials(app).await);
        }
        out
    }

    /// A ServiceAccount token of `sa` exchanged at the emulator for `client_id`; the access
    /// token's `appid`, or the error.
    async fn exchange(&self, sa: &str, client_id: &str) -> Result<String, String> {
        self.exchange_in(&self.ns, sa, client_id).await
    }

    /// [`Self::exchange`] for a ServiceAccount of namespace `ns`.
    async fn exchange_in(&self, ns: &TestNs, sa: &str, client_id: &str) -> Result<String, String> {
        let assertion = service_account_token(ns, sa, Duration::from_secs(3600)).await;
        let http = self.env.entra.http_client().map_err(|e| e.to_string())?;
        let response = http
            .post(self.env.entra.token_endpoint(TENANT))
            .form(&[
                ("client_id", client_id),
                ("scope", "https://management.azure.com/.default"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        let token = body["access_token"].as_str().ok_or("no access_token")?;
        Ok(claims(token)["appid"].as_str().unwrap_or_default().to_owned())
    }

    async fn client_id_annotation(&self, sa: &str) -> Option<String> {
        Self::client_id_annotation_in(&self.ns, sa).await
    }

    async fn client_id_annotation_in(ns: &TestNs, sa: &str) -> Option<String> {
        ns.api::<ServiceAccount>()
            .get(sa)
            .await
            .ok()?
            .annotations()
            .get(wif_api::CLIENT_ID_ANNOTATION)
            .cloned()
    }
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i:02}")).collect()
}

fn assert_capacity(usage: &BTreeMap<&str, Vec<Value>>, capacity: usize) {
    for (app, credentials) in usage {
        assert!(
            credentials.len() <= capacity,
            "{app} holds {} credentials",
            credentials.len()
        );
        let subjects: BTreeSet<&str> = credentials.iter().filter_map(|c| c["subject"].as_str()).collect();
        assert_eq!(subjects.len(), credentials.len(), "duplicate subject on {app}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the control plane"]
async fn a_pool_of_three_holds_sixty_bindings_and_the_sixty_first_waits_for_a_slot() {
    let w = world("pool-fill", &[POOL_A, POOL_B, POOL_C], 20).await;
    // 55 namespaces, one binding each, all watched through the label selector.
    let mut namespaces = Vec::with_capacity(55);
    for i in 0..55 {
        let ns = TestNs::new(&format!("pool-fill{i:02}")).await;
        label(&ns, &w.ns.name).await;
        namespaces.push(ns);
    }
    let opts = ControllerOptions {
        overrides: vec![
            ("--concurrency", "16".into()),
            (
                "--watch-namespace-selector",
                format!("{POOL_LABEL}={}", w.ns.name),
            ),
        ],
        ..ControllerOptions::default()
    };
    let ctl = ControllerProcess::start(&w.ns, &w.env, &opts).await;
    for ns in &namespaces {
        w.bind_in(ns, "b").await;
    }
    let ready = w.all_ready_in(&namespaces, "b").await;
    let usage = w.usage().await;
    assert_capacity(&usage, 20);
    assert_eq!(usage.values().map(Vec::len).sum::<usize>(), 55, "{usage:?}");
    // Every binding's ServiceAccount token exchanges for a token of its assigned identity.
    for b in &ready {
        let status = b.status.as_ref().unwrap();
        let client_id = status.client_id.clone().unwrap();
        assert_eq!(status.placement.as_ref().unwrap().identity, client_id);
        let ns = namespaces
            .iter()
            .find(|n| Some(&n.name) == b.namespace().as_ref())
            .unwrap();
        let sa = &b.spec.service_account_name;
        assert_eq!(
            World::client_id_annotation_in(ns, sa).await.as_deref(),
            Some(client_id.as_str())
        );
        assert_eq!(
            w.exchange_in(ns, sa, &client_id).await.unwrap(),
            client_id,
            "{sa}"
        );
    }

    // Up to 60, then the 61st does not fit.
    let more = names("c", 0..5);
    for n in &more {
        w.bind(n).await;
    }
    w.all_ready(&more).await;
    assert_capacity(&w.usage().await, 20);
    w.bind("overflow").await;
    eventually("the 61st binding PoolFull", T, || async {
        let b = w.bindings().get("overflow").await.ok()?;
        (condition(&b, "Ready")?.1 == "PoolFull").then_some(())
    })
    .await;
    eventually("pool status Full", T, || async {
        let p = w.pool.get().await;
        let s = p.status?;
        (s.used == 60
            && s.capacity == 60
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Full" && c.status == "True"))
        .then_some(())
    })
    .await;

    // A slot frees: the 61st is placed.
    namespaces[0]
        .api::<FederatedIdentityBinding>()
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    let placed = w.all_ready(&["overflow".to_owned()]).await;
    let client_id = placed[0].status.as_ref().unwrap().client_id.clone().unwrap();
    assert_eq!(w.exchange("overflow", &client_id).await.unwrap(), client_id);
    assert_capacity(&w.usage().await, 20);
    let metrics = ctl.metrics().await;
    assert!(
        metrics.contains("wif_identity_credentials{identity="),
        "{metrics}"
    );
    assert!(metrics.contains("wif_identity_capacity{identity="), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane"]
async fn a_controller_killed_during_placement_leaves_no_orphan_and_no_duplicate() {
    let kills: usize = std::env::var("WIF_E2E_POOL_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let w = world("pool-kill", &[POOL_A, POOL_B], 5).await;
    // Latency makes each placement long enough to be cut in the middle.
    w.env
        .entra
        .admin()
        .set_faults(&serde_json::from_value(json!({"graph": {"latencyMs": 40}})).unwrap())
        .await
        .unwrap();
    let all = names("k", 0..9);
    let opts = ControllerOptions::default();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut created = 0;
    let mut cut_with_work_done = 0;
    for _ in 0..kills {
        if created < all.len() {
            w.bind(&all[created]).await;
            created += 1;
        }
        let before: usize = w.usage().await.values().map(Vec::len).sum();
        let mut ctl = ControllerProcess::spawn(&w.ns, &w.env, &opts);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2000))).await;
        ctl.kill();
        // Never over capacity, even mid-way.
        let usage = w.usage().await;
        assert_capacity(&usage, 5);
        if usage.values().map(Vec::len).sum::<usize>() > before {
            cut_with_work_done += 1;
        }
    }
    assert!(
        cut_with_work_done > 0,
        "no controller placed anything before being killed: the kills proved nothing"
    );
    for n in &all[created..] {
        w.bind(n).await;
    }
    let ctl = ControllerProcess::start(&w.ns, &w.env, &opts).await;
    let ready = w.all_ready(&all).await;
    let usage = w.usage().await;
    assert_capacity(&usage, 5);
    // Exactly one credential per binding, where its status says: no orphan, no duplicate.
    let mut found: Vec<(String, String)> = usage
        .iter()
        .flat_map(|(app, cs)| {
            cs.iter()
                .map(|c| (app.to_string(), c["name"].as_str().unwrap_or_default().to_owned()))
        })
        .collect();
    found.sort();
    let mut want: Vec<(String, String)> = ready
        .iter()
        .map(|b| {
            let s = b.status.as_ref().unwrap();
            (
                s.client_id.clone().unwrap(),
                naming::default_credential_name(&cluster_id(&w.ns), &w.ns.name, &b.name_any()),
            )
        })
        .collect();
    want.sort();
    assert_eq!(found, want, "{}", ctl.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane"]
async fn an_identity_removed_from_the_pool_moves_its_bindings_without_a_failed_exchange() {
    let w = world("pool-move", &[POOL_A, POOL_B], 20).await;
    let ctl = ControllerProcess::start(&w.ns, &w.env, &ControllerOptions::default()).await;
    let all = names("m", 0..4);
    for n in &all {
        w.bind(n).await;
    }
    let ready = w.all_ready(&all).await;
    let on_a: Vec<String> = ready
        .iter()
        .filter(|b| b.status.as_ref().unwrap().client_id.as_deref() == Some(POOL_A))
        .map(|b| b.spec.service_account_name.clone())
        .collect();
    assert!(!on_a.is_empty(), "least used, ties by order: some land on A");

    // A leaves, C joins. While the bindings move, every ServiceAccount's current client id
    // keeps exchanging: the annotation never names an identity without the credential. (A
    // read and an exchange are two steps: when the exchange fails because the switch and the
    // old credential's deletion both fell between them, the annotation has moved on, and the
    // identity it names now must exchange.)
    w.pool.set_identities(&[POOL_B, POOL_C]).await;
    let deadline = std::time::Instant::now() + T;
    let mut rounds = 0;
    loop {
        for sa in &all {
            let client_id = w.client_id_annotation(sa).await.expect("annotated");
            let mut got = w.exchange(sa, &client_id).await.map(|id| (id, client_id.clone()));
            if got.is_err() {
                let now = w.client_id_annotation(sa).await.expect("annotated");
                if now != client_id {
                    got = w.exchange(sa, &now).await.map(|id| (id, now));
                }
            }
            match got {
                Ok((id, wanted)) => assert_eq!(id, wanted, "{sa}"),
                Err(e) => panic!("{sa} failed mid-move: {e}\n{}", ctl.logs()),
            }
        }
        rounds += 1;
        let moved = w.env.app_credentials(POOL_A).await.is_empty()
            && w.bindings()
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .all(|b| {
                    is_ready(b) && b.status.as_ref().and_then(|s| s.client_id.as_deref()) != Some(POOL_A)
                });
        if moved {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bindings did not move\n{}",
            ctl.logs()
        );
    }
    assert!(rounds >= 1);
    for sa in &on_a {
        let client_id = w.client_id_annotation(sa).await.unwrap();
        assert_ne!(client_id, POOL_A);
        assert_eq!(w.exchange(sa, &client_id).await.unwrap(), client_id);
    }
    assert_capacity(&w.usage().await, 20);
}

/// A pod of ServiceAccount `sa` labelled for the webhook, held unscheduled by a scheduling gate:
/// an API object only, which no node runs.
fn held_pod(name: &str, sa: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {wif_api::USE_LABEL: wif_api::USE_LABEL_VALUE}},
        "spec": {
            "serviceAccountName": sa,
            "schedulingGates": [{"name": "wif.e2e/never"}],
            "containers": [{"name": "app", "image": "busybox"}]
        }
    }))
    .unwrap()
}

/// The `AZURE_CLIENT_ID` values of a stored pod's containers.
fn client_ids(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.env.iter().flatten())
        .filter(|e| e.name == "AZURE_CLIENT_ID")
        .filter_map(|e| e.value.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane"]
async fn a_moved_binding_keeps_the_old_credential_while_a_pod_still_uses_the_old_client_id() {
    let w = world("pool-hold", &[POOL_A], 20).await;
    let _hook = WebhookProcess::start(&w.ns, WebhookOptions::default()).await;
    let ctl = ControllerProcess::start(&w.ns, &w.env, &ControllerOptions::default()).await;
    w.bind("held").await;
    let ready = w.all_ready(&["held".to_owned()]).await;
    assert_eq!(
        ready[0].status.as_ref().unwrap().client_id.as_deref(),
        Some(POOL_A)
    );
    // Admitted while the ServiceAccount names A: the webhook writes A's client id into it.
    let pods = w.ns.api::<Pod>();
    let pod = pods
        .create(&PostParams::default(), &held_pod("held-0", "held"))
        .await
        .expect("create pod");
    assert_eq!(client_ids(&pod), [POOL_A], "mutated by the webhook");

    // A leaves, B joins: the binding moves and the ServiceAccount switches, but A's credential
    // stays while the pod runs with A's client id.
    w.pool.set_identities(&[POOL_B]).await;
    let moved = eventually("the binding moved, the old credential kept", T, || async {
        let b = w.bindings().get("held").await.ok()?;
        let kept = condition(&b, "CredentialSynced").is_some_and(|(_, r, _)| r == "PreviousKept");
        (is_ready(&b) && kept && b.status.as_ref()?.client_id.as_deref() == Some(POOL_B)).then_some(b)
    })
    .await;
    let (_, _, message) = condition(&moved, "CredentialSynced").unwrap();
    assert!(
        message.contains(&format!(
            "1 pod(s) still use client id {POOL_A} ({}/held-0)",
            w.ns.name
        )),
        "{message}"
    );
    let placement = moved.status.as_ref().unwrap().placement.clone().unwrap();
    assert_eq!(placement.previous_client_id.as_deref(), Some(POOL_A));
    assert_eq!(w.client_id_annotation("held").await.as_deref(), Some(POOL_B));
    // Both identities exchange the ServiceAccount's tokens: the old pod and new ones authenticate.
    assert_eq!(
        w.exchange("held", POOL_A).await.unwrap(),
        POOL_A,
        "{}",
        ctl.logs()
    );
    assert_eq!(w.exchange("held", POOL_B).await.unwrap(), POOL_B);
    // Looked at again (every 10 s) while the pod is there: still kept, reported once.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(w.env.app_credentials(POOL_A).await.len(), 1, "{}", ctl.logs());
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(w.ns.client.clone(), &w.ns.name)
        .list(&Default::default())
        .await
        .unwrap();
    let kept: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("PreviousKept"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].series.is_none(), "published once: {kept:?}");

    // The pod goes (unscheduled: at once): the old credential is deleted.
    pods.delete("held-0", &DeleteParams::default()).await.unwrap();
    eventually("the old credential deleted", Duration::from_secs(60), || async {
        w.env.app_credentials(POOL_A).await.is_empty().then_some(())
    })
    .await;
    eventually("the move over, the binding Ready", T, || async {
        let b = w.bindings().get("held").await.ok()?;
        let p = b.status.as_ref()?.placement.clone()?;
        (is_ready(&b) && p.previous.is_none() && p.previous_client_id.is_none()).then_some(())
    })
    .await;
    assert_eq!(w.env.app_credentials(POOL_B).await.len(), 1);
    assert!(w.exchange("held", POOL_A).await.is_err(), "A no longer trusts it");
    assert_eq!(w.exchange("held", POOL_B).await.unwrap(), POOL_B);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane"]
async fn two_bindings_of_one_service_account_share_one_credential_until_the_last_goes() {
    let w = world("pool-share", &[POOL_A, POOL_B], 20).await;
    let ctl = ControllerProcess::start(&w.ns, &w.env, &ControllerOptions::default()).await;
    w.ns.service_account("shared", &[]).await;
    for name in ["first", "second"] {
        let b = binding(name, "shared", json!({"pool": {"name": w.pool.name}}), json!({}));
        w.bindings()
            .create(&PostParams::default(), &b)
            .await
            .expect("create binding");
    }
    let both = ["first".to_owned(), "second".to_owned()];
    let ready = w.all_ready(&both).await;
    let ids: BTreeSet<String> = ready
        .iter()
        .map(|b| b.status.as_ref().unwrap().client_id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "both on one identity: {ids:?}");
    let client_id = ids.into_iter().next().unwrap();
    let usage = w.usage().await;
    assert_eq!(
        usage.values().map(Vec::len).sum::<usize>(),
        1,
        "one credential for both: {usage:?}\n{}",
        ctl.logs()
    );
    assert_eq!(w.exchange("shared", &client_id).await.unwrap(), client_id);

    // The binding that created it goes: the credential stays for the other one.
    let creator = usage.values().flatten().next().unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let (gone, stays) = if creator == naming::default_credential_name(&cluster_id(&w.ns), &w.ns.name, "first")
    {
        ("first", "second")
    } else {
        ("second", "first")
    };
    w.bindings().delete(gone, &DeleteParams::default()).await.unwrap();
    eventually("the binding that went is gone", T, || async {
        w.bindings().get_opt(gone).await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(w.usage().await.values().map(Vec::len).sum::<usize>(), 1, "kept");
    assert_eq!(w.exchange("shared", &client_id).await.unwrap(), client_id);
    w.all_ready(&[stays.to_owned()]).await;

    // The last one goes: deleted.
    w.bindings()
        .delete(stays, &DeleteParams::default())
        .await
        .unwrap();
    eventually("no credential left", T, || async {
        (w.usage().await.values().map(Vec::len).sum::<usize>() == 0).then_some(())
    })
    .await;
}
