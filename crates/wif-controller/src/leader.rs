//! Lease-based leader election (`coordination.k8s.io/v1`), as client-go does it: a candidate
//! takes the Lease when it is free, held by itself, or not renewed for `lease_duration` as this
//! process observed it (local clocks only, no cross-node clock comparison); the leader renews
//! every `retry_period` and considers itself leader only until `renew_deadline` after the last
//! successful renewal started. Writes to Azure check [`Leadership::is_leader`] right before
//! they are sent, so a replica that lost the Lease stops writing even mid-reconcile.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio_util::sync::CancellationToken;

/// Leader election settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name, plus something unique per process).
    pub identity: String,
    /// How long a Lease is honoured without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica may act as the leader right now. Cheap to clone and to check.
#[derive(Clone, Debug, Default)]
pub struct Leadership {
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// A leadership that is always held (leader election disabled: a single replica).
    pub fn always() -> Self {
        let l = Self::default();
        l.extend(Instant::now() + Duration::from_secs(100 * 365 * 86400));
        l
    }

    /// Whether the Lease is held and was renewed recently enough.
    pub(crate) fn is_leader(&self) -> bool {
        self.valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| Instant::now() < t)
    }

    fn extend(&self, until: Instant) {
        *self.valid_until.lock().unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    fn revoke(&self) {
        *self.valid_until.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// How holding the Lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HoldEnd {
    /// Another replica took it, or renewal failed past the deadline.
    Lost,
    /// `stop` was cancelled.
    Stopped,
}

/// What identifies one version of a Lease record: holder, renew time, transitions.
type LeaseRecord = (Option<String>, Option<MicroTime>, Option<i32>);

/// Competes for and holds one Lease.
pub(crate) struct Elector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    leadership: Leadership,
    /// The last Lease record seen (holder, renew time, transitions) and when it was first seen.
    observed: Option<(LeaseRecord, Instant)>,
}

impl Elector {
    /// An elector for the Lease in `cfg`; `leadership` reflects its state.
    pub fn new(client: Client, cfg: LeaderConfig, leadership: Leadership) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            leadership,
            observed: None,
        }
    }

    /// The leadership flag this elector maintains.
    pub(crate) fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Retries every `retry_period` until the Lease is ours (`true`) or `stop` (`false`).
    pub async fn acquire(&mut self, stop: &CancellationToken) -> bool {
        loop {
            let started = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    self.leadership.extend(started + self.cfg.renew_deadline);
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "acquired the leader Lease");
                    return true;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, lease = %self.cfg.name, "failed to read or take the leader Lease")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
    }

    /// Renews the Lease until it is lost or `stop`.
    pub async fn hold(&mut self, stop: &CancellationToken) -> HoldEnd {
        loop {
            tokio::select! {
                () = stop.cancelled() => return HoldEnd::Stopped,
                () = tokio::time::sleep(self.cfg.retry_period) => {}
            }
            let started = Instant::now();
            let renewed = tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire_or_renew()).await;
            match renewed {
                Ok(Ok(true)) => self.leadership.extend(started + self.cfg.renew_deadline),
                Ok(Ok(false)) => {
                    tracing::warn!(lease = %self.cfg.name, "another replica holds the leader Lease now");
                    self.leadership.revoke();
                    return HoldEnd::Lost;
                }
                Ok(Err(error)) => tracing::warn!(%error, "failed to renew the leader Lease"),
                Err(_) => tracing::warn!("renewing the leader Lease timed out"),
            }
            if !self.leadership.is_leader() {
                tracing::warn!(lease = %self.cfg.name, "could not renew the leader Lease before the deadline");
                self.leadership.revoke();
                return HoldEnd::Lost;
            }
        }
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&mut self) {
        self.leadership.revoke();
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.cfg.name, "released the leader Lease"),
            Err(error) => tracing::warn!(%error, "failed to release the leader Lease"),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One attempt: `Ok(true)` when the Lease is ours after it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.clone(),
            spec.lease_transitions,
        );
        let observed_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.cfg.identity.as_str());
        let their_duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(self.lease_seconds())).unwrap_or(0),
        );
        if holder.is_some() && !mine && observed_at.elapsed() < their_duration {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time: if mine {
                spec.acquire_time
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if mine { transitions } else { transitions + 1 }),
            ..spec
        });
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_expires() {
        let l = Leadership::default();
        assert!(!l.is_leader());
        l.extend(Instant::now() + Duration::from_secs(5));
        assert!(l.is_leader());
        l.extend(Instant::now() - Duration::from_millis(1));
        assert!(!l.is_leader());
        assert!(Leadership::always().is_leader());
        let clone = l.clone();
        l.extend(Instant::now() + Duration::from_secs(5));
        assert!(clone.is_leader());
        l.revoke();
        assert!(!clone.is_leader());
    }
}
