//! Which pods still present the client id of the identity a pool binding is leaving: the webhook
//! wrote `AZURE_CLIENT_ID` (or `AZURE_CLIENT_ID_<NAME>` for a named identity) into them at
//! admission, and it never changes while they run, so the previous credential must outlive
//! them. Pure: the caller lists the namespace's pods labelled `azure.workload.identity/use=true`
//! (on demand, only while a binding moves).

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;

/// The variable the webhook injects (a named identity's gets `_<NAME>` appended).
const CLIENT_ID_ENV: &str = "AZURE_CLIENT_ID";

/// At most this many pod names in a message.
const NAMED: usize = 3;

/// Names (sorted) of the pods of ServiceAccount `service_account` that may still run and carry
/// `client_id` in a container's or init container's client id variable. A pod being deleted
/// still runs until it is gone, so it counts; a pod that succeeded or failed does not.
pub(crate) fn holding(pods: &[Pod], service_account: &str, client_id: &str) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .filter(|p| {
            let Some(spec) = p.spec.as_ref() else {
                return false;
            };
            let sa = spec.service_account_name.as_deref().unwrap_or("default");
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            sa == service_account
                && !matches!(phase, Some("Succeeded" | "Failed"))
                && spec
                    .containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
                    .any(|c| presents(c, client_id))
        })
        .map(ResourceExt::name_any)
        .collect();
    names.sort_unstable();
    names
}

/// Whether container `c` has a client id variable whose value is `client_id`.
fn presents(c: &Container, client_id: &str) -> bool {
    c.env.iter().flatten().any(|e| {
        let named = e.name == CLIENT_ID_ENV
            || e.name
                .strip_prefix(CLIENT_ID_ENV)
                .is_some_and(|rest| rest.starts_with('_'));
        named
            && e.value
                .as_deref()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case(client_id))
    })
}

/// The message saying the previous credential is kept for `pods` (at least one).
pub(crate) fn kept_message(on: &str, previous: &str, client_id: &str, pods: &[String], ns: &str) -> String {
    let shown: Vec<String> = pods.iter().take(NAMED).map(|p| format!("{ns}/{p}")).collect();
    let more = pods.len().saturating_sub(NAMED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "the credential on {on} is in place; the one on {previous} is kept while {} pod(s) still use client id {client_id} ({}{more}): it is deleted once they are gone (restart them to finish the move)",
        pods.len(),
        shown.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OLD: &str = "5e3ce6c0-2b1f-4285-8d4b-75ee78787346";
    const NEW: &str = "6f4df7d1-3c20-4396-9e5c-86ff89898457";

    fn pod(name: &str, sa: Option<&str>, phase: Option<&str>, env: &[(&str, &str)], init: bool) -> Pod {
        let env: Vec<_> = env.iter().map(|(n, v)| json!({"name": n, "value": v})).collect();
        let container = json!({"name": "c", "image": "i", "env": env});
        let mut spec = json!({"containers": [{"name": "main", "image": "i"}]});
        if init {
            spec["initContainers"] = json!([container]);
        } else {
            spec["containers"] = json!([container]);
        }
        if let Some(sa) = sa {
            spec["serviceAccountName"] = json!(sa);
        }
        let mut p = json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec});
        if let Some(phase) = phase {
            p["status"] = json!({"phase": phase});
        }
        serde_json::from_value(p).expect("a pod")
    }

    #[test]
    fn only_live_pods_of_the_service_account_with_the_old_client_id_hold_it() {
        let old = [("AZURE_CLIENT_ID", OLD)];
        let cases: Vec<(&str, Pod, bool)> = vec![
            (
                "running",
                pod("p", Some("api"), Some("Running"), &old, false),
                true,
            ),
            (
                "pending",
                pod("p", Some("api"), Some("Pending"), &old, false),
                true,
            ),
            ("no status yet", pod("p", Some("api"), None, &old, false), true),
            (
                "init container",
                pod("p", Some("api"), Some("Pending"), &old, true),
                true,
            ),
            (
                "named identity",
                pod(
                    "p",
                    Some("api"),
                    Some("Running"),
                    &[("AZURE_CLIENT_ID_STORAGE", OLD)],
                    false,
                ),
                true,
            ),
            (
                "other case",
                pod(
                    "p",
                    Some("api"),
                    Some("Running"),
                    &[("AZURE_CLIENT_ID", &OLD.to_uppercase())],
                    false,
                ),
                true,
            ),
            (
                "succeeded",
                pod("p", Some("api"), Some("Succeeded"), &old, false),
                false,
            ),
            (
                "failed",
                pod("p", Some("api"), Some("Failed"), &old, false),
                false,
            ),
            (
                "other ServiceAccount",
                pod("p", Some("web"), Some("Running"), &old, false),
                false,
            ),
            (
                "default ServiceAccount",
                pod("p", None, Some("Running"), &old, false),
                false,
            ),
            (
                "the new client id",
                pod(
                    "p",
                    Some("api"),
                    Some("Running"),
                    &[("AZURE_CLIENT_ID", NEW)],
                    false,
                ),
                false,
            ),
            (
                "another variable",
                pod(
                    "p",
                    Some("api"),
                    Some("Running"),
                    &[("AZURE_CLIENT_IDS", OLD)],
                    false,
                ),
                false,
            ),
            (
                "no variable",
                pod("p", Some("api"), Some("Running"), &[], false),
                false,
            ),
        ];
        for (what, p, held) in cases {
            assert_eq!(
                holding(&[p], "api", OLD),
                if held { vec!["p".to_owned()] } else { Vec::new() },
                "{what}"
            );
        }
        let default = pod("d", None, Some("Running"), &old, false);
        assert_eq!(
            holding(&[default], "default", OLD),
            ["d"],
            "no name means default"
        );
    }

    #[test]
    fn a_pod_being_deleted_still_holds_it_and_names_come_sorted() {
        let old = [("AZURE_CLIENT_ID", OLD)];
        let mut leaving = pod("b", Some("api"), Some("Running"), &old, false);
        leaving.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        let pods = [
            leaving,
            pod("a", Some("api"), Some("Running"), &old, false),
            pod("c", Some("api"), Some("Succeeded"), &old, false),
        ];
        assert_eq!(holding(&pods, "api", OLD), ["a", "b"]);
    }

    #[test]
    fn the_message_names_a_few_pods_and_counts_the_rest() {
        let pods: Vec<String> = (1..=5).map(|i| format!("p{i}")).collect();
        let m = kept_message("app B", "app A", OLD, &pods, "ns");
        assert!(m.contains("5 pod(s) still use client id"), "{m}");
        assert!(m.contains("ns/p1, ns/p2, ns/p3 and 2 more"), "{m}");
        assert!(!m.contains("p4"), "{m}");
        let one = kept_message("app B", "app A", OLD, &pods[..1], "ns");
        assert!(one.contains("(ns/p1)"), "{one}");
    }
}
