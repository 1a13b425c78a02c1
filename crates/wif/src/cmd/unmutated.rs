//! Flags of the unmutated-pod reconciler, flattened into `wif controller`.

use std::time::Duration;

use clap::Args;
use wif_controller::unmutated::UnmutatedConfig;

/// Flags of the unmutated-pod reconciler.
#[derive(Debug, Args)]
pub(crate) struct UnmutatedArgs {
    /// Watch pods labelled azure.workload.identity/use=true and report those the webhook did not
    /// mutate (Event NotMutated, gauge wif_unmutated_pods).
    #[arg(long, env = "WIF_UNMUTATED_PODS", default_value_t = true, action = clap::ArgAction::Set)]
    unmutated_pods: bool,
    /// Evict controller-owned unmutated pods (Eviction API, so PodDisruptionBudgets hold) once a
    /// dry-run create proves the webhook injects again; bare pods are only reported.
    #[arg(long, env = "WIF_RECYCLE_UNMUTATED", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    recycle_unmutated: bool,
    /// At most this many evictions of unmutated pods per minute.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    recycle_per_minute: u32,
    /// Re-check every labelled pod this often (ServiceAccounts change).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    unmutated_resync: Duration,
    /// First retry delay after a refused eviction (doubles up to 5m).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    recycle_retry: Duration,
}

impl UnmutatedArgs {
    /// The reconciler's settings.
    pub(crate) fn config(&self) -> UnmutatedConfig {
        UnmutatedConfig {
            enabled: self.unmutated_pods,
            recycle: self.recycle_unmutated,
            evictions_per_minute: self.recycle_per_minute,
            resync: self.unmutated_resync.max(Duration::from_secs(1)),
            retry_base: self.recycle_retry.max(Duration::from_millis(100)),
        }
    }
}
