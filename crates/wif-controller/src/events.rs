//! Events (`events.k8s.io/v1`) on the objects wif reconciles, in memory that does not grow with
//! the cluster.
//!
//! kube-runtime's `Recorder` keeps every Event it published, whole, for six minutes so that a
//! repeat becomes a series, and scans all of them on every publish. A controller converging
//! 10,000 bindings publishes tens of thousands of Events inside that window. This [`Recorder`]
//! keeps only what a repeat needs (a hash of the Event, its name and count), for at most
//! [`CAPACITY`] Events: forgetting one only means that its next repeat starts a new Event.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex, PoisonError},
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event as K8sEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Reporter},
};
use serde_json::json;

/// How long a published Event is remembered to fold its repeats into a series (client-go and
/// kube-runtime use six minutes too).
const TTL: SignedDuration = SignedDuration::from_mins(6);

/// The most Events remembered at once.
pub(crate) const CAPACITY: usize = 4096;

/// Publishes Events as one reporting controller instance. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Arc<Reporter>,
    seen: Arc<Mutex<Correlator>>,
}

impl Recorder {
    /// A recorder writing with `client` as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter: Arc::new(reporter),
            seen: Arc::default(),
        }
    }

    /// Creates the Event on `regarding`, or, when the same Event was published within six
    /// minutes, counts it in that Event's series.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = key(&self.reporter, ev, regarding);
        let now = Timestamp::now();
        let repeat = self.correlator().repeat(key, now);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        if let Some(Seen { name, count, .. }) = repeat {
            let series = json!({"series": EventSeries { count, last_observed_time: MicroTime(now) }});
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Deleted meanwhile (the API server keeps Events for an hour): start a new one.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        let event = self.new_event(ev, regarding, now);
        let name = event.metadata.name.clone().unwrap_or_default();
        events.create(&PostParams::default(), &event).await?;
        self.correlator().remember(key, name, now);
        Ok(())
    }

    fn correlator(&self) -> std::sync::MutexGuard<'_, Correlator> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new_event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            type_: Some(type_name(ev.type_).to_owned()),
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            ..K8sEvent::default()
        }
    }
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// What makes two Events the same Event: everything but the time. Unlike kube-runtime, the note
/// is part of it, so a different message is a new Event rather than a repeat of an old text.
fn key(reporter: &Reporter, ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    (&reporter.controller, &reporter.instance).hash(&mut h);
    (type_name(ev.type_), &ev.reason, &ev.action, &ev.note).hash(&mut h);
    for r in std::iter::once(regarding).chain(&ev.secondary) {
        (&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid).hash(&mut h);
    }
    h.finish()
}

/// One remembered Event.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Remembered Events by [`key`], at most [`CAPACITY`] of them, none older than [`TTL`].
#[derive(Default)]
struct Correlator {
    seen: HashMap<u64, Seen>,
}

impl Correlator {
    /// Counts a repeat of `key` seen within [`TTL`] and returns the Event with its new count.
    fn repeat(&mut self, key: u64, now: Timestamp) -> Option<Seen> {
        let seen = self.seen.get_mut(&key).filter(|s| s.last + TTL > now)?;
        seen.count = seen.count.saturating_add(1).max(2);
        seen.last = now;
        Some(seen.clone())
    }

    /// Remembers a newly created Event, first forgetting expired ones when full, then all.
    fn remember(&mut self, key: u64, name: String, now: Timestamp) {
        if self.seen.len() >= CAPACITY {
            self.seen.retain(|_, s| s.last + TTL > now);
        }
        if self.seen.len() >= CAPACITY {
            self.seen.clear();
        }
        self.seen.insert(
            key,
            Seen {
                name,
                count: 1,
                last: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_secs(seconds)
    }

    #[test]
    fn a_repeat_within_six_minutes_counts_in_the_series() {
        let mut c = Correlator::default();
        assert_eq!(c.repeat(1, t(0)), None);
        c.remember(1, "b.1".into(), t(0));
        let second = c.repeat(1, t(10)).expect("a repeat");
        assert_eq!((second.name.as_str(), second.count), ("b.1", 2));
        assert_eq!(c.repeat(1, t(20)).map(|s| s.count), Some(3));
        // Six minutes after the last repeat it is a new Event.
        assert_eq!(c.repeat(1, t(20 + 360)), None);
        assert_eq!(c.repeat(2, t(30)), None, "another key is not a repeat");
    }

    #[test]
    fn memory_is_bounded_and_expired_events_go_first() {
        let mut c = Correlator::default();
        for k in 0..CAPACITY as u64 - 1 {
            c.remember(k, format!("e.{k}"), t(0));
        }
        c.remember(u64::MAX, "recent".into(), t(300));
        assert_eq!(c.seen.len(), CAPACITY);
        // Full: the ones from t=0 have expired at t=400, the recent one stays.
        c.remember(u64::MAX - 1, "new".into(), t(400));
        assert_eq!(c.seen.len(), 2);
        assert!(c.repeat(u64::MAX, t(401)).is_some());
        // Full of live Events: all are forgotten rather than growing.
        let mut c = Correlator::default();
        for k in 0..=CAPACITY as u64 * 2 {
            c.remember(k, String::new(), t(0));
            assert!(c.seen.len() <= CAPACITY);
        }
    }

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn regarding(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("FederatedIdentityBinding".into()),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn the_key_tells_events_apart_by_object_reason_and_note() {
        let r = Reporter::from("wif-controller");
        let base = key(&r, &event("Denied", "no policy"), &regarding("a", "1"));
        assert_eq!(base, key(&r, &event("Denied", "no policy"), &regarding("a", "1")));
        for other in [
            key(&r, &event("Denied", "another text"), &regarding("a", "1")),
            key(&r, &event("Expired", "no policy"), &regarding("a", "1")),
            key(&r, &event("Denied", "no policy"), &regarding("b", "1")),
            key(&r, &event("Denied", "no policy"), &regarding("a", "2")),
        ] {
            assert_ne!(base, other);
        }
    }

    /// Requests the echo API server received: method, path, body.
    type Calls = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

    /// A client whose API server records each request and answers it with its own body.
    fn echo() -> (Client, Calls) {
        let (service, mut handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (method, path) = (request.method().to_string(), request.uri().path().to_owned());
                let bytes = request.into_body().collect_bytes().await.expect("a body");
                seen.lock().expect("calls").push((
                    method,
                    path,
                    serde_json::from_slice(&bytes).expect("json"),
                ));
                let response = http::Response::builder()
                    .status(200)
                    .body(kube::client::Body::from(bytes.to_vec()))
                    .expect("a response");
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), calls)
    }

    #[tokio::test]
    async fn a_repeat_patches_the_series_and_a_new_note_creates_an_event() {
        let (client, calls) = echo();
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "wif-controller".into(),
                instance: Some("pod-1".into()),
            },
        );
        let at = regarding("api", "u-1");
        recorder
            .publish(&event("Denied", "no policy"), &at)
            .await
            .expect("create");
        recorder
            .publish(&event("Denied", "no policy"), &at)
            .await
            .expect("repeat");
        recorder
            .publish(&event("Denied", "another"), &at)
            .await
            .expect("create");
        let calls = calls.lock().expect("calls").clone();
        let methods: Vec<&str> = calls.iter().map(|(m, ..)| m.as_str()).collect();
        assert_eq!(methods, ["POST", "PATCH", "POST"]);
        let (_, path, created) = &calls[0];
        assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/ns/events");
        assert_eq!(created["reason"], "Denied");
        assert_eq!(created["type"], "Warning");
        assert_eq!(created["note"], "no policy");
        assert_eq!(created["reportingController"], "wif-controller");
        assert_eq!(created["reportingInstance"], "pod-1");
        assert_eq!(created["regarding"]["uid"], "u-1");
        let name = created["metadata"]["name"].as_str().expect("a name");
        assert!(name.starts_with("api."), "{name}");
        let (_, path, patch) = &calls[1];
        assert_eq!(
            path,
            &format!("/apis/events.k8s.io/v1/namespaces/ns/events/{name}")
        );
        assert_eq!(patch["series"]["count"], 2);
        assert!(patch["series"]["lastObservedTime"].is_string(), "{patch}");
    }
}
