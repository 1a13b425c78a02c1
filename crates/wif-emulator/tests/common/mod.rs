//! Shared fixtures: a tiny HTTPS OIDC issuer (discovery + JWKS, RS256 and ES256 keys) standing in
//! for a Kubernetes API server, and an emulator seeded to trust it.
#![allow(dead_code)] // each test binary uses a subset

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{Json, Router, extract::State, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use reqwest::{Method, StatusCode};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair},
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceExt;
use wif_emulator::{
    ApplicationSeed, Config, CredentialSeed, Emulator, EmulatorConfig, Handle, IdentitySeed, Seed, TenantSeed,
};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const OTHER_TENANT: &str = "0d0a3c4e-7d0b-4a50-9d55-3a2b6f4b7c11";
/// The workload's application (has a federated credential for [`SUBJECT`]).
pub const APP_ID: &str = "5e3ce6c0-2b1f-4285-8d4b-75ee78787346";
/// The controller's application (used to call Graph and ARM).
pub const CONTROLLER_APP_ID: &str = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
pub const SUBSCRIPTION: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";
pub const IDENTITY: &str = "api-identity";
pub const IDENTITY_CLIENT_ID: &str = "3f2e1d0c-9b8a-4765-a432-10fedcba9876";
pub const SUBJECT: &str = "system:serviceaccount:demo:api";
pub const AUDIENCE: &str = "api://AzureADTokenExchange";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const GRAPH: &str = "https://graph.microsoft.com";
pub const ARM: &str = "https://management.azure.com";
pub const ARM_API: &str = "api-version=2023-01-31";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One RSA key per test binary (generating RSA keys is slow in debug builds).
fn rsa_key() -> &'static (Vec<u8>, String) {
    static KEY: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
        let der = key.to_pkcs8_der().expect("der").as_bytes().to_vec();
        let pem = key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
        (der, pem)
    })
}

/// A second RSA key, for the emulator's signing key (copied into each state dir).
fn emulator_key_pem() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
        key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string()
    })
}

/// A CA and a serving config for 127.0.0.1, for test HTTPS servers.
pub fn test_tls() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test issuer CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("server config");
    (ca.pem(), Arc::new(config))
}

/// Serves `router` over TLS on 127.0.0.1:0 until the returned sender is dropped.
pub async fn serve_tls(router: Router, tls: Arc<rustls::ServerConfig>) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut rx) = watch::channel(false);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let acceptor = acceptor.clone();
                    let router = router.clone();
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(tcp).await else { return };
                        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            router.clone().oneshot(req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
                _ = rx.changed() => break,
            }
        }
    });
    (addr, tx)
}

#[derive(Clone)]
struct IssuerState {
    jwks: Arc<Mutex<Value>>,
    requests: Arc<AtomicUsize>,
}

/// An OIDC issuer like a Kubernetes API server: `{url}/.well-known/openid-configuration` and
/// `{url}/openid/v1/jwks`, over HTTPS with its own CA.
pub struct TestIssuer {
    pub url: String,
    pub ca_pem: String,
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    /// An RSA key that is never published.
    rogue: EcdsaKeyPair,
    default_jwks: Value,
    state: IssuerState,
    _shutdown: watch::Sender<bool>,
}

impl TestIssuer {
    pub async fn start() -> Self {
        let rng = SystemRandom::new();
        let rsa = RsaKeyPair::from_pkcs8(&rsa_key().0).expect("rsa");
        let ec_pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec key");
        let ec = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            ec_pkcs8.as_ref(),
            &rng,
        )
        .expect("ec");
        let rogue_pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("rogue key");
        let rogue = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            rogue_pkcs8.as_ref(),
            &rng,
        )
        .expect("rogue");
        let rsa_public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
        let point = ec.public_key().as_ref();
        let jwks = json!({ "keys": [
            { "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "rsa-1", "n": b64(&rsa_public.n), "e": b64(&rsa_public.e) },
            { "kty": "EC", "use": "sig", "alg": "ES256", "kid": "ec-1", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]) },
        ]});
        let (ca_pem, tls) = test_tls();
        let state = IssuerState {
            jwks: Arc::new(Mutex::new(jwks.clone())),
            requests: Arc::new(AtomicUsize::new(0)),
        };
        // The URL is only known after binding; the discovery handler reads it from a cell.
        let url_cell: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
        let router = {
            let cell = url_cell.clone();
            let st = state.clone();
            Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    get(move |State(st): State<IssuerState>| {
                        let url = cell.lock().expect("lock").clone();
                        async move {
                            st.requests.fetch_add(1, Ordering::SeqCst);
                            Json(json!({
                                "issuer": url,
                                "jwks_uri": format!("{url}/openid/v1/jwks"),
                                "response_types_supported": ["id_token"],
                                "subject_types_supported": ["public"],
                                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                            }))
                        }
                    }),
                )
                .route(
                    "/openid/v1/jwks",
                    get(|State(st): State<IssuerState>| async move {
                        st.requests.fetch_add(1, Ordering::SeqCst);
                        Json(st.jwks.lock().expect("lock").clone())
                    }),
                )
                .with_state(st)
        };
        let (addr, shutdown) = serve_tls(router, tls).await;
        let url = format!("https://127.0.0.1:{}", addr.port());
        *url_cell.lock().expect("lock") = url.clone();
        Self {
            url,
            ca_pem,
            rsa,
            ec,
            rogue,
            default_jwks: jwks,
            state,
            _shutdown: shutdown,
        }
    }

    /// Standard claims of a projected service account token for `sub`.
    pub fn claims(&self, sub: &str) -> Value {
        let now = now();
        json!({
            "iss": self.url,
            "sub": sub,
            "aud": [AUDIENCE],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": { "namespace": "demo", "serviceaccount": { "name": "api" } },
        })
    }

    fn signing_input(alg: &str, kid: &str, claims: &Value) -> String {
        let header = json!({ "alg": alg, "kid": kid, "typ": "JWT" });
        format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    pub fn rs256(&self, claims: &Value) -> String {
        let input = Self::signing_input("RS256", "rsa-1", claims);
        let mut sig = vec![0u8; self.rsa.public().modulus_len()];
        self.rsa
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .expect("sign");
        format!("{input}.{}", b64(&sig))
    }

    pub fn es256(&self, claims: &Value) -> String {
        let input = Self::signing_input("ES256", "ec-1", claims);
        let sig = self
            .ec
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64(sig.as_ref()))
    }

    /// Signed by a key the JWKS does not publish, under kid `kid`.
    pub fn es256_unpublished(&self, claims: &Value, kid: &str) -> String {
        let input = Self::signing_input("ES256", kid, claims);
        let sig = self
            .rogue
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64(sig.as_ref()))
    }

    /// Replaces the published JWKS.
    pub fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().expect("lock") = jwks;
    }

    pub fn restore_jwks(&self) {
        self.set_jwks(self.default_jwks.clone());
    }

    /// Discovery + JWKS requests served so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

/// The directory every test starts from: the workload app (FIC for [`SUBJECT`] from `issuer`),
/// the controller app (no FIC; used to call Graph/ARM), one identity with a FIC, and a second
/// tenant.
pub fn seed_config(issuer: &str) -> Config {
    let credential = |name: &str| CredentialSeed {
        name: name.into(),
        issuer: issuer.into(),
        subject: SUBJECT.into(),
        audiences: None,
        description: None,
    };
    Config {
        tenants: vec![
            TenantSeed {
                id: TENANT.into(),
                domains: vec!["contoso.onmicrosoft.com".into()],
                applications: vec![
                    ApplicationSeed {
                        display_name: "workload".into(),
                        app_id: Some(APP_ID.into()),
                        federated_identity_credentials: vec![credential("kind-demo-api")],
                        ..ApplicationSeed::default()
                    },
                    ApplicationSeed {
                        display_name: "controller".into(),
                        app_id: Some(CONTROLLER_APP_ID.into()),
                        client_secrets: vec!["controller-secret".into()],
                        ..ApplicationSeed::default()
                    },
                ],
                // The identity brings its subscription and resource group `rg` along.
                subscriptions: Vec::new(),
                user_assigned_identities: vec![IdentitySeed {
                    subscription_id: SUBSCRIPTION.into(),
                    resource_group: "rg".into(),
                    name: IDENTITY.into(),
                    client_id: Some(IDENTITY_CLIENT_ID.into()),
                    federated_identity_credentials: vec![credential("kind-demo-api")],
                    ..IdentitySeed::default()
                }],
            },
            TenantSeed {
                id: OTHER_TENANT.into(),
                ..TenantSeed::default()
            },
        ],
        ..Config::default()
    }
}

/// Places the shared signing key in a state dir (so each test does not generate one).
pub fn preseed_key(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("signing-key.pem"), emulator_key_pem()).expect("key");
}

/// An emulator trusting a test issuer, and an HTTP client trusting the emulator.
pub struct Env {
    pub issuer: TestIssuer,
    pub emulator: Handle,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let issuer = TestIssuer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        preseed_key(dir.path());
        let mut config = seed_config(&issuer.url);
        adjust(&mut config);
        let emulator = Emulator::start(
            EmulatorConfig::new(dir.path())
                .with_config(config)
                .trust_ca_pem(issuer.ca_pem.clone()),
        )
        .await
        .expect("emulator starts");
        let http = emulator.http_client().expect("client");
        Self {
            issuer,
            emulator,
            http,
            dir,
        }
    }

    /// POSTs a form to a tenant's token endpoint.
    pub async fn token(&self, tenant: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.emulator.token_endpoint(tenant))
            .form(form)
            .send()
            .await
            .expect("token request");
        let status = response.status();
        (status, response.json().await.expect("json body"))
    }

    /// The standard federated exchange for `client_id` with `assertion`.
    pub async fn exchange(&self, client_id: &str, assertion: &str) -> (StatusCode, Value) {
        self.token(
            TENANT,
            &[
                ("client_id", client_id),
                ("scope", "https://graph.microsoft.com/.default"),
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion),
            ],
        )
        .await
    }

    /// A controller token for Graph or ARM.
    pub async fn bearer(&self, resource: &str) -> String {
        self.emulator
            .admin()
            .mint_token(TENANT, CONTROLLER_APP_ID, resource)
            .await
            .expect("mint")
    }

    /// A token for `resource` of an application ("elsewhere") seeded into [`OTHER_TENANT`]
    /// (seeds it: call once per emulator).
    pub async fn other_tenant_bearer(&self, resource: &str) -> String {
        let other_app = "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
        self.emulator
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
        self.emulator
            .admin()
            .mint_token(OTHER_TENANT, other_app, resource)
            .await
            .expect("mint")
    }

    /// `method url` with a bearer token and an optional JSON body: the status and the JSON body
    /// (`Null` when empty).
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, body)
    }

    /// `GET url` with a bearer token, for tests that read headers.
    pub async fn get(&self, url: &str, token: &str) -> reqwest::Response {
        self.http.get(url).bearer_auth(token).send().await.expect("send")
    }

    pub fn graph(&self, path: &str) -> String {
        format!("{}/v1.0/{path}", self.emulator.graph_url())
    }

    pub fn identity_url(&self, name: &str) -> String {
        format!(
            "{}/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
            self.emulator.arm_url()
        )
    }
}

/// Asserts an Entra error body: status, `error`, AADSTS code, and the full shape.
#[track_caller]
pub fn assert_aad(status: StatusCode, body: &Value, want_status: u16, error: &str, code: u64) {
    assert_eq!(status.as_u16(), want_status, "status; body: {body:#}");
    assert_eq!(body["error"], error, "error; body: {body:#}");
    assert_eq!(body["error_codes"], json!([code]), "codes; body: {body:#}");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "description: {description}"
    );
    assert!(description.contains("Trace ID: ") && description.contains("Correlation ID: "));
    for field in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(body[field].is_string(), "{field} missing: {body:#}");
    }
}

/// Decodes a JWT's claims without verifying.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json")
}
