//! Pool usage: a binding naming a `FederatedIdentityPool` gets one line with the pool's usage
//! (per identity, as the controller counted it) and where the binding is placed.

use kube::{Api, Client};
use wif_api::FederatedIdentityPool;

use super::{entra::BindingView, report::Out};
use crate::doctor::Check;

/// The line for `binding` naming pool `name` (`pool`: the pool, if it exists). Pure.
pub(crate) fn usage(binding: &BindingView, name: &str, pool: Option<&FederatedIdentityPool>) -> Check {
    let title = format!("pool {name}");
    let Some(pool) = pool else {
        return Check::fail(
            title,
            format!(
                "binding {} names FederatedIdentityPool {name}, which does not exist",
                binding.name
            ),
            "create the pool, or fix spec.identity.pool.name of the binding",
        );
    };
    let Some(status) = pool.status.as_ref().filter(|s| !s.identities.is_empty()) else {
        return Check::skip(title, "the controller has not counted the pool's identities yet");
    };
    let per_identity: Vec<String> = status
        .identities
        .iter()
        .map(|i| {
            if i.usable {
                format!("{} {}/{}", i.identity, i.used, i.used + i.free)
            } else {
                format!(
                    "{} unusable ({}: {})",
                    i.identity,
                    i.reason,
                    i.message.as_deref().unwrap_or("")
                )
            }
        })
        .collect();
    let placed = binding
        .placement
        .as_deref()
        .map_or_else(|| "not placed".to_owned(), |p| format!("placed on {p}"));
    let detail = format!(
        "{} of {} credentials used ({}); binding {} {placed}",
        status.used,
        status.capacity,
        per_identity.join(", "),
        binding.name
    );
    let full = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Full" && c.status == "True");
    if binding.placement.is_none() && full {
        return Check::fail(
            title,
            detail,
            "the pool is full: add an identity to spec.identities, raise spec.capacityPerIdentity (at most 20) or delete bindings",
        );
    }
    Check::pass(title, detail)
}

/// One line per pool the bindings name.
pub(crate) async fn check(out: &mut Out, client: &Client, bindings: &[BindingView]) {
    let api: Api<FederatedIdentityPool> = Api::all(client.clone());
    for b in bindings {
        let Some(name) = b.pool.as_deref() else {
            continue;
        };
        match api.get_opt(name).await {
            Ok(pool) => out.add(usage(b, name, pool.as_ref())),
            Err(e) => out.add(Check::skip(
                format!("pool {name}"),
                format!("cannot read the pool: {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::doctor::report::Status;

    fn view(placement: Option<&str>) -> BindingView {
        BindingView {
            name: "api".into(),
            ready: None,
            credential: None,
            tenant_id: None,
            client_id: None,
            identity_name: None,
            pool: Some("shared".into()),
            placement: placement.map(str::to_owned),
        }
    }

    fn pool(full: bool) -> FederatedIdentityPool {
        serde_json::from_value(json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityPool",
            "metadata": {"name": "shared"},
            "spec": {"identities": [{"application": {"clientId": "a"}}, {"application": {"clientId": "b"}}]},
            "status": {"identityCount": 2, "used": if full { 40 } else { 25 }, "capacity": 40,
                "identities": [
                    {"identity": "a", "used": 20, "free": 0, "usable": true, "reason": "Usable"},
                    {"identity": "b", "used": if full { 20 } else { 5 }, "free": if full { 0 } else { 15 }, "usable": true, "reason": "Usable"},
                ],
                "conditions": [{"type": "Full", "status": if full { "True" } else { "False" }, "reason": "x", "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    #[test]
    fn usage_lines() {
        let ok = usage(&view(Some("b")), "shared", Some(&pool(false)));
        assert_eq!(ok.status, Status::Pass);
        assert!(
            ok.detail.contains("25 of 40 credentials used (a 20/20, b 5/20)"),
            "{}",
            ok.detail
        );
        assert!(ok.detail.contains("placed on b"), "{}", ok.detail);
        let full = usage(&view(None), "shared", Some(&pool(true)));
        assert_eq!(full.status, Status::Fail);
        assert!(full.fix.unwrap().contains("add an identity"));
        let missing = usage(&view(None), "shared", None);
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.detail.contains("does not exist"));
    }
}
