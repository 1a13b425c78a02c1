//! ServiceAccount annotations, written with server-side apply under one field manager per
//! binding. The API server then keeps the books: it refuses to overwrite a value another writer
//! owns (a conflict, reported instead of clobbered), and when the binding goes away applying an
//! empty configuration removes exactly the annotations this binding wrote and nobody else
//! claimed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
};
use serde_json::{Value, json};
use wif_api::{CLIENT_ID_ANNOTATION, TENANT_ID_ANNOTATION};

/// A ServiceAccount as the controller caches it.
pub type CachedServiceAccount = PartialObjectMeta<ServiceAccount>;

/// The annotations `manager` owns on `sa`, from its managedFields.
pub fn owned_annotations(sa: &CachedServiceAccount, manager: &str) -> Vec<String> {
    sa.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.fields_v1.as_ref())
        .filter_map(|f| f.0.get("f:metadata")?.get("f:annotations")?.as_object().cloned())
        .flat_map(|annotations| {
            annotations
                .keys()
                .filter_map(|k| k.strip_prefix("f:").map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the annotations of a ServiceAccount need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnotationPlan {
    /// Already as wanted and owned by us.
    Nothing,
    /// Apply these annotations.
    Apply(BTreeMap<String, String>),
    /// Release what we own (annotations not wanted any more).
    Release,
}

/// Decides what to do, purely: `want` is `Some((client_id, tenant_id))` when the binding asks for
/// annotations.
pub fn annotation_plan(
    sa: &CachedServiceAccount,
    manager: &str,
    want: Option<(&str, &str)>,
) -> AnnotationPlan {
    let owned = owned_annotations(sa, manager);
    match want {
        None if owned.is_empty() => AnnotationPlan::Nothing,
        None => AnnotationPlan::Release,
        Some((client_id, tenant_id)) => {
            let wanted: BTreeMap<String, String> = [
                (CLIENT_ID_ANNOTATION.to_owned(), client_id.to_owned()),
                (TENANT_ID_ANNOTATION.to_owned(), tenant_id.to_owned()),
            ]
            .into();
            let current = sa.metadata.annotations.clone().unwrap_or_default();
            let in_place = wanted
                .iter()
                .all(|(k, v)| current.get(k) == Some(v) && owned.iter().any(|o| o == k));
            if in_place {
                AnnotationPlan::Nothing
            } else {
                AnnotationPlan::Apply(wanted)
            }
        }
    }
}

/// How applying went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Written (or released).
    Done,
    /// Another writer owns one of the annotations with a different value; the API server's
    /// explanation.
    Conflict(String),
    /// The ServiceAccount changed identity (deleted and re-created) since it was read.
    Stale,
}

fn body(sa: &CachedServiceAccount, annotations: Option<&BTreeMap<String, String>>) -> Value {
    let mut metadata = json!({
        "name": sa.metadata.name,
        "namespace": sa.metadata.namespace,
        // A precondition: never (re)create a ServiceAccount that was deleted meanwhile.
        "uid": sa.metadata.uid,
    });
    if let Some(a) = annotations {
        metadata["annotations"] = json!(a);
    }
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata})
}

/// Carries out `plan` on `sa` (a no-op for [`AnnotationPlan::Nothing`]).
pub async fn apply(
    client: &Client,
    sa: &CachedServiceAccount,
    manager: &str,
    plan: &AnnotationPlan,
) -> Result<Applied, kube::Error> {
    let annotations = match plan {
        AnnotationPlan::Nothing => return Ok(Applied::Done),
        AnnotationPlan::Apply(a) => Some(a),
        AnnotationPlan::Release => None,
    };
    let (Some(name), Some(namespace)) = (&sa.metadata.name, &sa.metadata.namespace) else {
        return Ok(Applied::Stale);
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    // No force: a value owned by someone else is a conflict to report, not to overwrite.
    match api
        .patch(
            name,
            &PatchParams::apply(manager),
            &Patch::Apply(body(sa, annotations)),
        )
        .await
    {
        Ok(_) => Ok(Applied::Done),
        Err(kube::Error::Api(e)) if e.code == 409 && e.message.contains("UID") => Ok(Applied::Stale),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Applied::Stale),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Applied::Conflict(e.message)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    use super::*;

    fn sa(annotations: &[(&str, &str)], managed: &[(&str, &str, Value)]) -> CachedServiceAccount {
        let mut s = CachedServiceAccount::default();
        s.metadata.name = Some("api".into());
        s.metadata.namespace = Some("payments".into());
        s.metadata.uid = Some("u1".into());
        s.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        s.metadata.managed_fields = Some(
            managed
                .iter()
                .map(|(manager, op, fields)| ManagedFieldsEntry {
                    manager: Some((*manager).into()),
                    operation: Some((*op).into()),
                    fields_v1: Some(FieldsV1(fields.clone())),
                    ..ManagedFieldsEntry::default()
                })
                .collect(),
        );
        s
    }

    fn ours_fields() -> Value {
        json!({"f:metadata": {"f:annotations": {
            "f:azure.workload.identity/client-id": {}, "f:azure.workload.identity/tenant-id": {}}}})
    }

    const M: &str = "wif-controller.b";

    #[test]
    fn owned_annotations_come_from_our_apply_entries_only() {
        let s = sa(
            &[],
            &[
                (M, "Apply", ours_fields()),
                (
                    "kubectl",
                    "Update",
                    json!({"f:metadata": {"f:annotations": {"f:other": {}}}}),
                ),
            ],
        );
        let mut owned = owned_annotations(&s, M);
        owned.sort();
        assert_eq!(owned, vec![CLIENT_ID_ANNOTATION, TENANT_ID_ANNOTATION]);
        assert!(owned_annotations(&s, "someone-else").is_empty());
    }

    #[test]
    fn plans() {
        let annotated = [(CLIENT_ID_ANNOTATION, "c"), (TENANT_ID_ANNOTATION, "t")];
        // already ours and right
        let s = sa(&annotated, &[(M, "Apply", ours_fields())]);
        assert_eq!(annotation_plan(&s, M, Some(("c", "t"))), AnnotationPlan::Nothing);
        // right values written by someone else: take co-ownership (so we can release later)
        let s = sa(&annotated, &[]);
        assert!(matches!(
            annotation_plan(&s, M, Some(("c", "t"))),
            AnnotationPlan::Apply(_)
        ));
        // wrong value
        let s = sa(&annotated, &[(M, "Apply", ours_fields())]);
        assert!(matches!(
            annotation_plan(&s, M, Some(("c2", "t"))),
            AnnotationPlan::Apply(_)
        ));
        // not wanted, owned → release; not owned → nothing
        assert_eq!(annotation_plan(&s, M, None), AnnotationPlan::Release);
        assert_eq!(
            annotation_plan(&sa(&annotated, &[]), M, None),
            AnnotationPlan::Nothing
        );
    }

    #[test]
    fn apply_body_carries_the_uid_precondition() {
        let s = sa(&[], &[]);
        let b = body(&s, None);
        assert_eq!(b["metadata"]["uid"], "u1");
        assert!(b["metadata"].get("annotations").is_none());
        let a: BTreeMap<String, String> = [("k".to_owned(), "v".to_owned())].into();
        assert_eq!(body(&s, Some(&a))["metadata"]["annotations"]["k"], "v");
    }
}
