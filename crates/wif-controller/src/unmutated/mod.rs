//! The unmutated-pod reconciler: finds pods labelled `azure.workload.identity/use: "true"` that
//! lack what the webhook would inject today ([`check`]), reports each once (Event `NotMutated`
//! or `NoClientId` with the likely cause, gauge `wif_unmutated_pods{namespace}`), and with
//! recycling on evicts controller-owned ones through the Eviction API once a dry-run create of a
//! copy proves the webhook injects again.
//!
//! Memory: the pod watch streams full pods (the check reads containers and volumes) but keeps
//! nothing for a mutated pod; only problem pods are remembered, as a few strings each. State is
//! recomputed from the cluster on every (re)list, so a restart loses nothing.

pub mod check;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::events::Recorder;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, ServiceAccount};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{EvictParams, PartialObjectMeta, PostParams},
    runtime::{
        WatchStreamExt,
        events::{Event as KubeEvent, EventType},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio_util::sync::CancellationToken;
use wif_api::{MutationConfig, USE_LABEL, USE_LABEL_VALUE};
use wif_webhook::coexist;

use self::check::{OwnWebhook, Verdict, WebhookFacts, check, check_config, likely_cause};

/// Settings of the reconciler (`wif controller --unmutated-pods …`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmutatedConfig {
    /// Run the reconciler at all.
    pub enabled: bool,
    /// Evict controller-owned unmutated pods once the webhook injects again.
    pub recycle: bool,
    /// At most this many evictions per minute.
    pub evictions_per_minute: u32,
    /// Re-list (and re-check every labelled pod) this often: ServiceAccounts change.
    pub resync: Duration,
    /// First delay after a blocked or failed eviction; doubles up to five minutes.
    pub retry_base: Duration,
}

impl Default for UnmutatedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            recycle: false,
            evictions_per_minute: 10,
            resync: Duration::from_secs(300),
            retry_base: Duration::from_secs(5),
        }
    }
}

const MAX_RETRY: Duration = Duration::from_secs(300);
/// How long one owner stays "being recycled" if its evicted pod never disappears.
const OWNER_HOLD: Duration = Duration::from_secs(300);

/// Label set of the gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    /// The pod's namespace.
    pub namespace: String,
}

/// The reconciler's metrics (top-level names, no prefix).
#[derive(Debug, Clone, Default)]
pub struct UnmutatedMetrics {
    /// Labelled pods lacking the injection (or a client id), by namespace.
    pub unmutated: Family<NamespaceLabels, Gauge<i64, AtomicI64>>,
    /// Pods evicted so that their owner recreates them mutated.
    pub recycled: Counter,
    /// Evictions refused (PodDisruptionBudget, RBAC, API errors); retried with backoff.
    pub eviction_failures: Counter,
    /// Other workload identity webhooks selecting the same label.
    pub other_webhooks: Gauge<i64, AtomicI64>,
}

impl UnmutatedMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "wif_unmutated_pods",
            "Pods labelled azure.workload.identity/use=true that lack what the webhook injects",
            m.unmutated.clone(),
        );
        registry.register(
            "wif_unmutated_pods_recycled",
            "Unmutated pods evicted so that their controller recreates them mutated",
            m.recycled.clone(),
        );
        registry.register(
            "wif_unmutated_eviction_failures",
            "Evictions of unmutated pods refused (PodDisruptionBudget, RBAC, API error)",
            m.eviction_failures.clone(),
        );
        registry.register(
            "wif_other_webhook_configurations",
            "Other workload identity webhooks (AKS add-on, upstream, a second wif) selecting the same pod label",
            m.other_webhooks.clone(),
        );
        m
    }
}

/// The controller that owns a pod.
#[derive(Clone, Debug)]
struct Owner {
    kind: String,
    name: String,
    uid: String,
}

/// What is remembered of a problem pod.
#[derive(Debug)]
struct Entry {
    namespace: String,
    name: String,
    owner: Option<Owner>,
    verdict: Verdict,
    cause: String,
    reported: bool,
    blocked_reported: bool,
    seen: u64,
    next_try: Instant,
    backoff: Duration,
    evicted: bool,
}

/// What the likely cause needs to know of the webhook configurations that apply to pods of
/// `namespace` (judged by its `kubernetes.io/metadata.name` label; `None`: any namespace).
pub fn facts(all: &[coexist::Claimant], namespace: Option<&str>) -> WebhookFacts {
    let labels: std::collections::BTreeMap<String, String> = namespace
        .map(|ns| [("kubernetes.io/metadata.name".to_owned(), ns.to_owned())].into())
        .unwrap_or_default();
    let applies = |c: &&coexist::Claimant| namespace.is_none() || c.selects_namespace(&labels);
    let all: Vec<coexist::Claimant> = all.iter().filter(applies).cloned().collect();
    let all = all.as_slice();
    let own = all
        .iter()
        .find(|c| c.owner == coexist::Owner::Wif)
        .map(|c| OwnWebhook {
            name: c.configuration.clone(),
            created: c.created,
            failure_policy: c.failure_policy.clone(),
        });
    WebhookFacts {
        others: coexist::conflicts(all, None)
            .iter()
            .map(|c| c.describe())
            .collect(),
        own,
    }
}

/// Runs the reconciler until `stop`. Events and evictions only while `leading`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    cfg: UnmutatedConfig,
    watch_namespace: Option<String>,
    tenant_id: String,
    recorder: Recorder,
    metrics: UnmutatedMetrics,
    leading: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    if !cfg.enabled {
        tracing::info!("unmutated-pod reconciler disabled");
        return;
    }
    let (sa_store, sa_writer) = reflector::store::<PartialObjectMeta<ServiceAccount>>();

    let (pods, sas): (Api<Pod>, Api<PartialObjectMeta<ServiceAccount>>) = match &watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let sa_events = watcher(sas, watcher::Config::default())
        .default_backoff()
        .modify(|sa| sa.managed_fields_mut().clear())
        .reflect(sa_writer)
        .for_each(|_| async {});
    let sa_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = sa_events => {}
            }
        }
    });
    tokio::select! {
        () = stop.cancelled() => return,
        r = sa_store.wait_until_ready() => if r.is_err() { return },
    }
    let evict_client = if cfg.recycle {
        without_retries(client.clone()).await
    } else {
        client.clone()
    };
    let mut r = Reconciler {
        client: client.clone(),
        evict_client,
        pods,
        sa_store,
        check_cfg: check_config(&tenant_id),
        cfg,
        recorder,
        metrics,
        entries: HashMap::new(),
        busy_owners: HashMap::new(),
        evictions: VecDeque::new(),
        claimants: Vec::new(),
        generation: 0,
        logged_conflicts: false,
        gauge_namespaces: Default::default(),
    };
    r.run(&leading, &stop).await;
    sa_task.abort();
}

/// A client for the dry-run create and the eviction that does not retry 429/503 on its own.
/// kube's default client retries a 429 up to 15 times with a doubling delay — minutes — so a
/// PodDisruptionBudget's refusal would block the reconciler (no other pod handled, no Event)
/// instead of being reported and backed off here. Falls back to `shared` (with the 15 s bound
/// around each call) when the configuration cannot be read again.
async fn without_retries(shared: Client) -> Client {
    let built = match kube::Config::infer().await {
        Ok(mut config) => {
            config.default_retry = false;
            Client::try_from(config).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    built.unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot build a client without retries for evictions; a refused eviction may be retried by the client");
        shared
    })
}

struct Reconciler {
    client: Client,
    /// Dry-run creates and evictions: no client-side retries (see [`without_retries`]).
    evict_client: Client,
    pods: Api<Pod>,
    sa_store: Store<PartialObjectMeta<ServiceAccount>>,
    check_cfg: MutationConfig,
    cfg: UnmutatedConfig,
    recorder: Recorder,
    metrics: UnmutatedMetrics,
    /// Problem pods by uid.
    entries: HashMap<String, Entry>,
    /// Owner uid → (pod uid being recycled, since).
    busy_owners: HashMap<String, (String, Instant)>,
    /// Eviction times in the last minute.
    evictions: VecDeque<Instant>,
    claimants: Vec<coexist::Claimant>,
    generation: u64,
    logged_conflicts: bool,
    gauge_namespaces: std::collections::HashSet<String>,
}

impl Reconciler {
    async fn run(&mut self, leading: &AtomicBool, stop: &CancellationToken) {
        let selector = format!("{USE_LABEL}={USE_LABEL_VALUE}");
        loop {
            self.refresh_facts().await;
            let mut pods = watcher(self.pods.clone(), watcher::Config::default().labels(&selector))
                .default_backoff()
                .boxed();
            let resync = tokio::time::sleep(self.cfg.resync);
            tokio::pin!(resync);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = &mut resync => break,
                    _ = tick.tick() => {
                        if leading.load(Ordering::Acquire) {
                            self.act().await;
                        }
                    }
                    event = pods.next() => match event {
                        Some(Ok(e)) => self.on_event(e),
                        Some(Err(error)) => tracing::warn!(%error, "watching labelled pods failed; retrying"),
                        None => break,
                    },
                }
            }
        }
    }

    async fn refresh_facts(&mut self) {
        match coexist::detect(&self.client).await {
            Ok(all) => {
                let conflicts = coexist::conflicts(&all, None);
                if !self.logged_conflicts {
                    coexist::log_conflicts(&all, None);
                    self.logged_conflicts = true;
                }
                self.metrics
                    .other_webhooks
                    .set(i64::try_from(conflicts.len()).unwrap_or(i64::MAX));
                self.claimants = all;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot list MutatingWebhookConfigurations; causes will be less precise")
            }
        }
    }

    fn on_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.generation += 1,
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.observe(&pod),
            watcher::Event::InitDone => {
                let generation = self.generation;
                self.entries.retain(|_, e| e.seen >= generation);
                self.update_gauges();
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.uid().unwrap_or_default();
                self.entries.remove(&uid);
                self.busy_owners.retain(|_, (p, _)| *p != uid);
                self.update_gauges();
            }
        }
    }

    fn observe(&mut self, pod: &Pod) {
        let Some(uid) = pod.uid() else { return };
        let done = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if done {
            self.entries.remove(&uid);
            return;
        }
        let namespace = pod.namespace().unwrap_or_default();
        let sa_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or(wif_api::DEFAULT_SERVICE_ACCOUNT);
        let sa = self
            .sa_store
            .get(&ObjectRef::new(sa_name).within(&namespace))
            .map(|sa| sa.metadata.clone());
        let verdict = check(pod, sa.as_ref(), &self.check_cfg);
        if verdict == Verdict::Mutated {
            if self.entries.remove(&uid).is_some() {
                self.update_gauges();
            }
            return;
        }
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let cause = likely_cause(&verdict, created, &facts(&self.claimants, Some(&namespace)));
        let generation = self.generation;
        let owner = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| Owner {
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
            });
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let base = self.cfg.retry_base;
        let entry = self.entries.entry(uid).or_insert_with(|| Entry {
            namespace,
            name: pod.name_any(),
            owner,
            verdict: verdict.clone(),
            cause: cause.clone(),
            reported: false,
            blocked_reported: false,
            seen: generation,
            next_try: Instant::now(),
            backoff: base,
            evicted: false,
        });
        entry.seen = generation;
        entry.evicted |= deleting;
        if entry.verdict != verdict {
            // e.g. the ServiceAccount gained a client id: say it again, in the new words.
            entry.verdict = verdict;
            entry.reported = false;
        }
        entry.cause = cause;
        if generation > 0 {
            self.update_gauges();
        }
    }

    fn update_gauges(&mut self) {
        let mut counts: HashMap<String, i64> = HashMap::new();
        for e in self.entries.values() {
            *counts.entry(e.namespace.clone()).or_default() += 1;
        }
        // Namespaces that went back to zero keep a series at 0 rather than vanishing.
        for ns in &self.gauge_namespaces {
            if !counts.contains_key(ns) {
                self.metrics
                    .unmutated
                    .get_or_create(&NamespaceLabels {
                        namespace: ns.clone(),
                    })
                    .set(0);
            }
        }
        for (ns, n) in counts {
            self.metrics
                .unmutated
                .get_or_create(&NamespaceLabels {
                    namespace: ns.clone(),
                })
                .set(n);
            self.gauge_namespaces.insert(ns);
        }
    }

    /// Reports new problem pods and, with recycling on, evicts what may be evicted.
    async fn act(&mut self) {
        let now = Instant::now();
        let mut to_report = Vec::new();
        for (uid, e) in &mut self.entries {
            if !e.reported {
                e.reported = true;
                to_report.push((
                    uid.clone(),
                    e.namespace.clone(),
                    e.name.clone(),
                    e.verdict.clone(),
                    e.cause.clone(),
                ));
            }
        }
        for (uid, ns, name, verdict, cause) in to_report {
            let reason = verdict.reason().unwrap_or("NotMutated");
            let note = format!("{}; likely cause: {}", verdict.describe(), cause);
            tracing::warn!(namespace = %ns, pod = %name, reason, %note, "labelled pod without workload identity");
            self.event(&ns, &name, &uid, EventType::Warning, reason, note)
                .await;
        }
        if !self.cfg.recycle {
            return;
        }
        self.busy_owners
            .retain(|_, (_, since)| since.elapsed() < OWNER_HOLD);
        while self
            .evictions
            .front()
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.evictions.pop_front();
        }
        let candidates: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.verdict.recyclable()
                    && !e.evicted
                    && e.next_try <= now
                    && e.owner
                        .as_ref()
                        .is_some_and(|o| !self.busy_owners.contains_key(&o.uid))
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        let mut owners_this_round = Vec::new();
        for uid in candidates {
            if self.evictions.len() >= self.cfg.evictions_per_minute as usize {
                break;
            }
            let Some(e) = self.entries.get(&uid) else { continue };
            let Some(owner) = e.owner.clone() else { continue };
            if owners_this_round.contains(&owner.uid) || self.busy_owners.contains_key(&owner.uid) {
                continue;
            }
            owners_this_round.push(owner.uid.clone());
            let (ns, name) = (e.namespace.clone(), e.name.clone());
            self.recycle(&uid, &ns, &name, &owner).await;
        }
    }

    async fn recycle(&mut self, uid: &str, ns: &str, name: &str, owner: &Owner) {
        tracing::debug!(namespace = %ns, pod = %name, owner_kind = %owner.kind, owner = %owner.name,
            "recycling: does the webhook inject again (dry-run create)?");
        let api: Api<Pod> = Api::namespaced(self.evict_client.clone(), ns);
        let proof = tokio::time::timeout(Duration::from_secs(15), self.webhook_injects(&api, name)).await;
        let proof = proof.unwrap_or_else(|_| Ok(false));
        match proof {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(namespace = %ns, pod = %name, "the webhook does not inject yet (dry-run create); not evicting");
                self.retry_later(uid);
                return;
            }
            Err(error) => {
                tracing::info!(namespace = %ns, pod = %name, %error, "dry-run create failed; not evicting");
                self.retry_later(uid);
                return;
            }
        }
        tracing::debug!(namespace = %ns, pod = %name, "the webhook injects again (dry-run); evicting");
        let evicted = tokio::time::timeout(Duration::from_secs(15), api.evict(name, &EvictParams::default()))
            .await
            .unwrap_or_else(|_| {
                Err(kube::Error::Service(
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "eviction timed out").into(),
                ))
            });
        match evicted {
            Ok(_) => {
                self.metrics.recycled.inc();
                self.evictions.push_back(Instant::now());
                self.busy_owners
                    .insert(owner.uid.clone(), (uid.to_owned(), Instant::now()));
                if let Some(e) = self.entries.get_mut(uid) {
                    e.evicted = true;
                }
                tracing::info!(namespace = %ns, pod = %name, owner_kind = %owner.kind, owner = %owner.name,
                    "evicted an unmutated pod; its controller recreates it through the webhook");
                let note = format!(
                    "evicted so that {} {} recreates it with workload identity (the webhook injects again)",
                    owner.kind, owner.name
                );
                self.event(ns, name, uid, EventType::Normal, "Recycled", note)
                    .await;
            }
            Err(error) => {
                self.metrics.eviction_failures.inc();
                let blocked = matches!(&error, kube::Error::Api(s) if s.code == 429);
                let why = if blocked {
                    "a PodDisruptionBudget does not allow it now".to_owned()
                } else {
                    error.to_string()
                };
                let delay = self.retry_later(uid);
                tracing::warn!(namespace = %ns, pod = %name, reason = %why, retry_in_s = delay.as_secs(), "eviction refused");
                let first = self
                    .entries
                    .get_mut(uid)
                    .map(|e| !std::mem::replace(&mut e.blocked_reported, true))
                    .unwrap_or(false);
                if first {
                    let note = format!("cannot evict this unmutated pod: {why}; retrying with backoff");
                    self.event(ns, name, uid, EventType::Warning, "EvictionBlocked", note)
                        .await;
                }
            }
        }
    }

    /// Backs the pod off (doubling up to five minutes); returns the delay.
    fn retry_later(&mut self, uid: &str) -> Duration {
        let Some(e) = self.entries.get_mut(uid) else {
            return self.cfg.retry_base;
        };
        let delay = e.backoff;
        e.next_try = Instant::now() + delay;
        e.backoff = (e.backoff * 2).min(MAX_RETRY);
        delay
    }

    /// Creates a copy of the pod with `dryRun=All` and checks the API server's answer: the
    /// webhook injects again when the copy comes back mutated.
    async fn webhook_injects(&self, api: &Api<Pod>, name: &str) -> Result<bool, kube::Error> {
        let pod = api.get(name).await?;
        let mut copy = Pod {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{}-", truncate(name, 50))),
                namespace: pod.metadata.namespace.clone(),
                labels: pod.metadata.labels.clone(),
                annotations: pod.metadata.annotations.clone(),
                ..Default::default()
            },
            spec: pod.spec.clone(),
            status: None,
        };
        if let Some(spec) = copy.spec.as_mut() {
            spec.node_name = None;
        }
        let params = PostParams {
            dry_run: true,
            field_manager: Some(crate::CONTROLLER_NAME.to_owned()),
        };
        let answer = api.create(&params, &copy).await?;
        let sa = answer
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| wif_api::DEFAULT_SERVICE_ACCOUNT.to_owned());
        let ns = answer.namespace().unwrap_or_default();
        let sa = self
            .sa_store
            .get(&ObjectRef::new(&sa).within(&ns))
            .map(|s| s.metadata.clone());
        Ok(check(&answer, sa.as_ref(), &self.check_cfg) == Verdict::Mutated)
    }

    async fn event(&self, ns: &str, name: &str, uid: &str, kind: EventType, reason: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some(Pod::kind(&()).into_owned()),
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            uid: Some(uid.to_owned()),
            ..ObjectReference::default()
        };
        let event = KubeEvent {
            type_: kind,
            reason: reason.to_owned(),
            note: Some(truncate(&note, 1000).to_owned()),
            action: "CheckMutation".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, namespace = %ns, pod = %name, reason, "failed to publish an Event");
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
