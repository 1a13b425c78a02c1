//! An in-process reconcile harness, in the manner of kube-rs controller-rs's `fixtures.rs`: the
//! Kubernetes API is a `tower-test` mock answered by [`ApiServer`] (which records every call and
//! keeps the one binding under test), and Graph/ARM is the real emulator, started in process on
//! port 0. A reconcile runs in milliseconds, without a control plane.

use std::{
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use http::{Request, Response};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Client,
    client::Body,
    core::PartialObjectMeta,
    runtime::{
        events::Reporter,
        reflector::{self, store::Writer},
        watcher,
    },
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use wif_api::{FederatedIdentityBinding, FederatedIdentityPolicy, FederatedIdentityPool};
use wif_emulator::{
    AdminClient, ApplicationSeed, CredentialSeed, Emulator, EmulatorConfig, Handle, Seed, TenantSeed,
};

use crate::{
    azure::{Azure, AzureHttp, Parent, RetryConfig, TokenProvider, arm::ArmClient, graph::GraphClient},
    binding_index::SharedBindingIndex,
    context::{Backoff, Context, Settings, Stores},
    directory::Directory,
    events::Recorder,
    leader::Leadership,
    metrics::Metrics,
    propagation::ReadBackConfig,
};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CONTROLLER: &str = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
pub const APP: &str = "5e3ce6c0-2b1f-4285-8d4b-75ee78787346";
/// A second application, for pools.
pub const APP2: &str = "6f4df7d1-3c20-4396-9e5c-86ff89898457";
pub const ISSUER: &str = "https://issuer.example/cluster/";
pub const CLUSTER: &str = "c1";
pub const NS: &str = "payments";
pub const SA: &str = "api";

/// One call the reconcile made to the API server.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    /// The query string, undecoded.
    pub query: String,
    pub body: Value,
}

impl Call {
    /// `PATCH /apis/.../status`, for assertions.
    pub fn is(&self, method: &str, path_suffix: &str) -> bool {
        self.method == method && self.path.ends_with(path_suffix)
    }
}

/// What the mocked API server holds: the binding under test, the pods it lists and the calls
/// made.
#[derive(Default)]
struct ApiState {
    binding: Value,
    pods: Vec<Value>,
    calls: Vec<Call>,
}

/// The mocked API server: answers binding patches (finalizer, status) from the binding it keeps,
/// pod lists from the pods it holds, and echoes ServiceAccount applies and Events.
#[derive(Clone, Default)]
pub struct ApiServer(Arc<Mutex<ApiState>>);

impl ApiServer {
    fn state(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The binding as the API server holds it now.
    pub fn binding(&self) -> FederatedIdentityBinding {
        serde_json::from_value(self.state().binding.clone()).expect("a binding")
    }

    /// Replaces the pods it lists.
    pub fn set_pods(&self, pods: Vec<Value>) {
        self.state().pods = pods;
    }

    fn answer(&self, method: &str, path: &str, query: &str, body: Value) -> Value {
        let mut state = self.state();
        state.calls.push(Call {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            body: body.clone(),
        });
        if method == "GET" && path.ends_with("/pods") {
            return json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": state.pods});
        }
        if path.contains("/federatedidentitybindings/") {
            if path.ends_with("/status") {
                state.binding["status"] = body["status"].clone();
            } else if let Ok(patch) = serde_json::from_value::<json_patch::Patch>(body) {
                // The API server reads an absent list as null (kube's finalizer patch tests it).
                if state.binding["metadata"].get("finalizers").is_none() {
                    state.binding["metadata"]["finalizers"] = Value::Null;
                }
                json_patch::patch(&mut state.binding, &patch).expect("a JSON patch that applies");
            }
            return state.binding.clone();
        }
        body
    }

    fn spawn(self, mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (method, path) = (request.method().to_string(), request.uri().path().to_owned());
                let query = request.uri().query().unwrap_or_default().to_owned();
                let bytes = request.into_body().collect_bytes().await.expect("a body");
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let answer = self.answer(&method, &path, &query, body);
                let response = Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                    .expect("a response");
                send.send_response(response);
            }
        })
    }
}

/// Tokens minted by the emulator's admin API for the controller's application.
struct Minted(AdminClient);

impl TokenProvider for Minted {
    fn token<'a>(
        &'a self,
        tenant: &'a str,
        scope: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<String, wif_exchange::Error>> {
        Box::pin(async move {
            let resource = scope.trim_end_matches("/.default");
            self.0
                .mint_token(tenant, CONTROLLER, resource)
                .await
                .map_err(|e| wif_exchange::Error::Internal(e.to_string()))
        })
    }
}

/// What the watch caches hold when the reconcile runs.
#[derive(Default)]
pub struct World {
    pub policies: Vec<FederatedIdentityPolicy>,
    pub service_accounts: Vec<PartialObjectMeta<ServiceAccount>>,
    pub credentials: Vec<CredentialSeed>,
    /// Credentials on `APP2`.
    pub credentials2: Vec<CredentialSeed>,
    pub pools: Vec<FederatedIdentityPool>,
    /// Other bindings in the binding cache (only the reconciled one is on the API server).
    pub others: Vec<FederatedIdentityBinding>,
}

impl World {
    /// A policy granting `APP` to every namespace, and the ServiceAccount.
    pub fn granted() -> Self {
        Self {
            policies: vec![policy(APP)],
            service_accounts: vec![service_account(NS, SA)],
            ..Self::default()
        }
    }
}

/// The harness: a [`Context`] whose client talks to [`ApiServer`] and whose Azure is the
/// emulator.
pub struct Harness {
    pub ctx: Arc<Context>,
    pub api: ApiServer,
    pools: Writer<FederatedIdentityPool>,
    _emulator: Handle,
    server: JoinHandle<()>,
    _state_dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The emulator's signing key file, in its state directory.
const SIGNING_KEY: &str = "signing-key.pem";

/// One emulator signing key per test binary: generating an RSA key takes seconds in a debug
/// build, so the first emulator's key is copied into every other state directory.
fn signing_key() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let dir = tempfile::tempdir().expect("a tempdir");
                let emulator = Emulator::start(EmulatorConfig::new(dir.path()))
                    .await
                    .expect("the emulator starts");
                emulator.shutdown().await;
                std::fs::read(dir.path().join(SIGNING_KEY)).expect("the emulator wrote its key")
            })
        })
        .join()
        .expect("the key is generated")
    })
}

fn filled<K>(objects: Vec<K>) -> reflector::Store<K>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut writer = Writer::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    writer.as_reader()
}

/// Graph and ARM clients against the emulator, authenticated by tokens its admin API mints.
fn azure(emulator: &Handle, admin: AdminClient) -> Azure {
    let http = crate::azure::http_client(
        &[("emulator".into(), emulator.ca_pem().as_bytes().to_vec())],
        Duration::from_secs(5),
    )
    .expect("an HTTP client");
    let retry = RetryConfig {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    };
    let azure_http = Arc::new(AzureHttp::new(
        http,
        Arc::new(Minted(admin)),
        retry,
        Duration::from_secs(5),
        None,
    ));
    Azure {
        graph: GraphClient::new(
            azure_http.clone(),
            &emulator.graph_url(),
            "https://graph.microsoft.com/.default",
        ),
        arm: ArmClient::new(
            azure_http,
            &emulator.arm_url(),
            "https://management.azure.com/.default",
        ),
    }
}

impl Harness {
    /// Starts the emulator (seeded with the controller's app, `APP` and `world.credentials` on
    /// it) and the mocked API server holding `binding`.
    pub async fn start(binding: &FederatedIdentityBinding, world: World) -> Self {
        let state_dir = tempfile::tempdir().expect("a tempdir");
        std::fs::write(state_dir.path().join(SIGNING_KEY), signing_key()).expect("the key is written");
        let emulator = Emulator::start(EmulatorConfig::new(state_dir.path()))
            .await
            .expect("the emulator starts");
        let admin = emulator.admin().clone();
        admin
            .seed(&seed(world.credentials, world.credentials2))
            .await
            .expect("seeded");
        let azure = azure(&emulator, admin);

        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let api = ApiServer::default();
        api.state().binding = serde_json::to_value(binding).expect("json");
        let server = api.clone().spawn(handle);

        let namespace: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}
        }))
        .expect("a namespace");
        let mut pools = Writer::default();
        pools.apply_watcher_event(&watcher::Event::Init);
        for p in world.pools {
            pools.apply_watcher_event(&watcher::Event::InitApply(p));
        }
        pools.apply_watcher_event(&watcher::Event::InitDone);
        let bindings: Vec<FederatedIdentityBinding> =
            std::iter::once(binding.clone()).chain(world.others).collect();
        let stores = Stores {
            binding_index: SharedBindingIndex::of(bindings.clone()),
            bindings: filled(bindings),
            policies: filled(world.policies),
            pools: pools.as_reader(),
            namespaces: filled(vec![namespace]),
            service_accounts: filled(world.service_accounts),
        };
        let reporter = Reporter {
            controller: crate::CONTROLLER_NAME.to_owned(),
            instance: None,
        };
        let ctx = Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            azure,
            directory: Directory::new(Duration::from_secs(30), Duration::from_secs(300)),
            stores,
            metrics: Arc::new(Metrics::new(&mut Registry::default())),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            leadership: Leadership::always(),
            settings: settings(),
            exchange: None,
        };
        Self {
            ctx: Arc::new(ctx),
            api,
            pools,
            _emulator: emulator,
            server,
            _state_dir: state_dir,
        }
    }

    /// Replaces a pool in the watch cache (as a watch event would).
    pub fn set_pool(&mut self, pool: FederatedIdentityPool) {
        self.pools.apply_watcher_event(&watcher::Event::Apply(pool));
    }

    /// The application `APP` as a parent of credentials.
    pub async fn app_parent(&self) -> Parent {
        self.parent_of(APP).await
    }

    /// An application as a parent of credentials.
    /// The federated credentials Entra holds on application `client_id`.
    pub async fn credentials_on(&self, client_id: &str) -> Vec<crate::azure::FederatedCredential> {
        let parent = self.parent_of(client_id).await;
        self.ctx.azure.list(&parent).await.expect("Graph lists")
    }

    pub async fn parent_of(&self, client_id: &str) -> Parent {
        let app = self
            .ctx
            .azure
            .graph
            .find_application(TENANT, client_id)
            .await
            .expect("Graph answers")
            .expect("the app exists");
        Parent::Application {
            tenant: TENANT.into(),
            client_id: client_id.into(),
            object_id: app.object_id,
        }
    }
}

fn settings() -> Settings {
    Settings {
        issuer: ISSUER.into(),
        cluster_id: CLUSTER.into(),
        default_tenant: TENANT.into(),
        default_audience: "api://AzureADTokenExchange".into(),
        resync_interval: Duration::from_secs(600),
        resync_jitter: Duration::from_secs(60),
        max_credentials: 20,
        namespace_selector: None,
        readback: ReadBackConfig {
            count: 1,
            interval: Duration::from_millis(1),
        },
    }
}

fn seed(credentials: Vec<CredentialSeed>, credentials2: Vec<CredentialSeed>) -> Seed {
    Seed {
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
                    federated_identity_credentials: credentials,
                    ..ApplicationSeed::default()
                },
                ApplicationSeed {
                    display_name: "api2".into(),
                    app_id: Some(APP2.into()),
                    federated_identity_credentials: credentials2,
                    ..ApplicationSeed::default()
                },
            ],
            ..TenantSeed::default()
        }],
    }
}

/// A binding of ServiceAccount `NS/SA` to the application `client_id`.
pub fn binding(name: &str, client_id: &str) -> FederatedIdentityBinding {
    serde_json::from_value(json!({
        "apiVersion": "azure.workload.identity/v1alpha1",
        "kind": "FederatedIdentityBinding",
        "metadata": {"name": name, "namespace": NS, "uid": "u-1", "generation": 1, "resourceVersion": "1"},
        "spec": {"serviceAccountName": SA, "identity": {"application": {"clientId": client_id}}}
    }))
    .expect("a binding")
}

/// A binding of ServiceAccount `NS/SA` to the pool `pool`.
pub fn pool_binding(name: &str, pool: &str) -> FederatedIdentityBinding {
    serde_json::from_value(json!({
        "apiVersion": "azure.workload.identity/v1alpha1",
        "kind": "FederatedIdentityBinding",
        "metadata": {"name": name, "namespace": NS, "uid": "u-1", "generation": 1, "resourceVersion": "1"},
        "spec": {"serviceAccountName": SA, "identity": {"pool": {"name": pool}}}
    }))
    .expect("a binding")
}

/// A pool of applications.
pub fn pool(name: &str, client_ids: &[&str], capacity: u32) -> FederatedIdentityPool {
    let identities: Vec<Value> = client_ids
        .iter()
        .map(|c| json!({"application": {"clientId": c}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "azure.workload.identity/v1alpha1",
        "kind": "FederatedIdentityPool",
        "metadata": {"name": name, "generation": 1},
        "spec": {"identities": identities, "capacityPerIdentity": capacity}
    }))
    .expect("a pool")
}

/// A policy granting pool `name` to every namespace.
pub fn pool_policy(name: &str) -> FederatedIdentityPolicy {
    serde_json::from_value(json!({
        "apiVersion": "azure.workload.identity/v1alpha1",
        "kind": "FederatedIdentityPolicy",
        "metadata": {"name": "pools"},
        "spec": {"namespaceSelector": {}, "pools": [name]}
    }))
    .expect("a policy")
}

/// `b` with the finalizer (as after its first reconcile).
pub fn finalized(mut b: FederatedIdentityBinding) -> FederatedIdentityBinding {
    b.metadata.finalizers = Some(vec![wif_api::BINDING_FINALIZER.to_owned()]);
    b
}

/// `b` being deleted.
pub fn deleted(mut b: FederatedIdentityBinding) -> FederatedIdentityBinding {
    b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    b
}

/// A policy granting `client_id` to every namespace.
pub fn policy(client_id: &str) -> FederatedIdentityPolicy {
    serde_json::from_value(json!({
        "apiVersion": "azure.workload.identity/v1alpha1",
        "kind": "FederatedIdentityPolicy",
        "metadata": {"name": "all"},
        "spec": {"namespaceSelector": {}, "applications": [client_id]}
    }))
    .expect("a policy")
}

/// A ServiceAccount as the metadata cache holds it.
pub fn service_account(ns: &str, name: &str) -> PartialObjectMeta<ServiceAccount> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "uid": "sa-1"}
    }))
    .expect("a ServiceAccount")
}

/// The reason of condition `kind` in the binding's status.
pub fn reason(b: &FederatedIdentityBinding, kind: &str) -> String {
    let status = b.status.as_ref().expect("a status");
    crate::conditions::find(&status.conditions, kind)
        .expect("the condition")
        .reason
        .clone()
}
