//! helm against the test control plane; the runner and the chart's objects are `wif-chart`'s.

pub use wif_chart::*;

use crate::ControlPlane;

/// helm against the test control plane.
pub fn on(cp: &ControlPlane) -> Helm {
    Helm::with_kubeconfig(cp.kubeconfig.clone())
}
