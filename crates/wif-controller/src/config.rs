//! Everything `wif controller` needs, as a plain struct (the binary fills it from flags; tests
//! build it directly).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use wif_api::Cloud;

use crate::{azure::RetryConfig, leader::LeaderConfig};

/// The controller's own Azure identity (workload identity through `wif-exchange`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialConfig {
    /// Tenant of the controller's identity (also the default tenant of bindings).
    pub tenant_id: String,
    /// Client id of the controller's identity.
    pub client_id: String,
    /// The projected ServiceAccount token file.
    pub token_file: PathBuf,
    /// Other tenants the controller may authenticate to (`*` for any); a binding naming
    /// another tenant is refused with a condition.
    pub additionally_allowed_tenants: Vec<String>,
}

/// Where Graph, ARM and Entra are, and how to reach them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureEndpoints {
    /// The cloud (default audience, token scopes).
    pub cloud: Cloud,
    /// Entra authority host, e.g. `https://login.microsoftonline.com/`.
    pub authority_host: String,
    /// Graph endpoint without version, e.g. `https://graph.microsoft.com`.
    pub graph_endpoint: String,
    /// ARM endpoint, e.g. `https://management.azure.com`.
    pub arm_endpoint: String,
    /// Scope of Graph tokens (defaults to the cloud's Graph resource).
    pub graph_scope: String,
    /// Scope of ARM tokens (defaults to the cloud's ARM resource).
    pub arm_scope: String,
    /// Extra CA bundles (origin, PEM) trusted for Graph, ARM and the authority.
    pub extra_ca_pems: Vec<(String, Vec<u8>)>,
    /// Retries of one Graph/ARM call.
    pub retry: RetryConfig,
    /// Timeout of one Graph/ARM request.
    pub request_timeout: Duration,
}

impl AzureEndpoints {
    /// The public endpoints of `cloud`.
    pub fn for_cloud(cloud: Cloud) -> Self {
        Self {
            cloud,
            authority_host: cloud.authority_host().to_owned(),
            graph_endpoint: cloud.graph_endpoint().to_owned(),
            arm_endpoint: cloud.arm_endpoint().to_owned(),
            graph_scope: format!("{}/.default", cloud.graph_endpoint()),
            arm_scope: format!("{}/.default", cloud.arm_endpoint()),
            extra_ca_pems: Vec::new(),
            retry: RetryConfig::default(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// How the controller decides a credential is honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropagationConfig {
    /// Consecutive consistent reads required after a write.
    pub readback_count: u32,
    /// Pause between those reads.
    pub readback_interval: Duration,
    /// Also exchange a real token for the bound ServiceAccount before `Propagated=True`.
    pub verify_token_exchange: bool,
    /// Scope of that test exchange.
    pub verify_scope: String,
}

impl Default for PropagationConfig {
    fn default() -> Self {
        Self {
            readback_count: 3,
            readback_interval: Duration::from_secs(1),
            verify_token_exchange: false,
            verify_scope: "https://graph.microsoft.com/.default".to_owned(),
        }
    }
}

/// The whole configuration of the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// The controller's own identity.
    pub credential: CredentialConfig,
    /// Azure endpoints.
    pub azure: AzureEndpoints,
    /// The service-account issuer; discovered from the API server when `None`.
    pub issuer: Option<String>,
    /// The cluster identity in ownership markers and default names; the uid of namespace
    /// `kube-system` when `None`.
    pub cluster_id: Option<String>,
    /// Audience of credentials whose binding names none; the cloud's when `None`.
    pub default_audience: Option<String>,
    /// Watch bindings of this namespace only (default: all namespaces).
    pub watch_namespace: Option<String>,
    /// Watch bindings only in namespaces whose labels match this selector.
    pub watch_namespace_selector: Option<String>,
    /// Periodic resync (drift correction) interval.
    pub resync_interval: Duration,
    /// Random spread added to each binding's resync.
    pub resync_jitter: Duration,
    /// Parallel reconciles.
    pub concurrency: u16,
    /// Credentials one identity may hold (Entra's limit is 20).
    pub max_credentials_per_identity: usize,
    /// First delay of the per-binding exponential backoff.
    pub backoff_base: Duration,
    /// Largest delay of the per-binding backoff.
    pub backoff_max: Duration,
    /// Propagation checks.
    pub propagation: PropagationConfig,
    /// Leader election; `None` runs as the only replica.
    pub leader: Option<LeaderConfig>,
    /// Plain-HTTP address of `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// The unmutated-pod reconciler.
    pub unmutated: crate::unmutated::UnmutatedConfig,
}

impl ControllerConfig {
    /// Defaults around the required identity settings.
    pub fn new(credential: CredentialConfig, cloud: Cloud) -> Self {
        Self {
            credential,
            azure: AzureEndpoints::for_cloud(cloud),
            issuer: None,
            cluster_id: None,
            default_audience: None,
            watch_namespace: None,
            watch_namespace_selector: None,
            resync_interval: Duration::from_secs(600),
            resync_jitter: Duration::from_secs(5),
            concurrency: 32,
            max_credentials_per_identity: 20,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            propagation: PropagationConfig::default(),
            leader: None,
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9441)),
            unmutated: crate::unmutated::UnmutatedConfig::default(),
        }
    }

    /// The audience of a binding that names none.
    pub fn default_audience(&self) -> String {
        self.default_audience
            .clone()
            .unwrap_or_else(|| self.azure.cloud.token_exchange_audience().to_owned())
    }
}
