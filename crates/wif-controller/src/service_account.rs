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
use wif_api::{
    AUDIENCE_ANNOTATION, CLIENT_ID_ANNOTATION, NAMED_CLIENT_ID_PREFIX, NAMED_TENANT_ID_PREFIX,
    TENANT_ID_ANNOTATION,
};

/// A ServiceAccount as the controller caches it.
pub(crate) type CachedServiceAccount = PartialObjectMeta<ServiceAccount>;

/// The annotations `manager` owns on `sa`, from its managedFields.
pub(crate) fn owned_annotations(sa: &CachedServiceAccount, manager: &str) -> Vec<String> {
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

/// Drops the managedFields entries of other managers before `sa` is cached: ownership is all
/// the controller reads from them, and on a big cluster every ServiceAccount's entries (each a
/// decoded JSON tree) cost more memory than the rest of its metadata.
pub(crate) fn keep_own_managed_fields(sa: &mut CachedServiceAccount) {
    if let Some(entries) = sa.metadata.managed_fields.as_mut() {
        entries.retain(|m| {
            m.manager
                .as_deref()
                .is_some_and(|manager| manager.starts_with(crate::CONTROLLER_NAME))
        });
    }
}

/// What the annotations of a ServiceAccount need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AnnotationPlan {
    /// Already as wanted and owned by us.
    Nothing,
    /// Apply these annotations.
    Apply(BTreeMap<String, String>),
    /// Release what we own (annotations not wanted any more).
    Release,
}

/// What a binding writes on its ServiceAccount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Wanted<'a> {
    /// The identity's client id.
    pub client_id: &'a str,
    /// Its tenant.
    pub tenant_id: &'a str,
    /// `spec.identityName`: written as `client-id.<name>` / `tenant-id.<name>` instead.
    pub identity_name: Option<&'a str>,
    /// The binding's audience when it is not the install's default: pods must then get tokens
    /// for it, so the ServiceAccount carries `azure.workload.identity/audience`.
    pub audience: Option<&'a str>,
}

impl Wanted<'_> {
    /// The annotations, by key.
    pub(crate) fn annotations(&self) -> BTreeMap<String, String> {
        let (client_key, tenant_key) = match self.identity_name {
            Some(name) => (
                format!("{NAMED_CLIENT_ID_PREFIX}{name}"),
                format!("{NAMED_TENANT_ID_PREFIX}{name}"),
            ),
            None => (CLIENT_ID_ANNOTATION.to_owned(), TENANT_ID_ANNOTATION.to_owned()),
        };
        let mut out: BTreeMap<String, String> = [
            (client_key, self.client_id.to_owned()),
            (tenant_key, self.tenant_id.to_owned()),
        ]
        .into();
        if let Some(audience) = self.audience {
            out.insert(AUDIENCE_ANNOTATION.to_owned(), audience.to_owned());
        }
        out
    }
}

/// The ServiceAccount's audience annotation, when it disagrees with the binding's `audience`
/// (`default` when the annotation is absent) and the binding will not write it itself: pods of
/// that ServiceAccount get tokens for another audience than the credential trusts, and Entra
/// answers AADSTS700212. `writes` says whether the binding writes the annotation.
pub(crate) fn audience_mismatch(
    sa: &CachedServiceAccount,
    manager: &str,
    audience: &str,
    default: &str,
    writes: bool,
) -> Option<String> {
    let current = sa
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUDIENCE_ANNOTATION))
        .map(|v| v.trim())
        .filter(|v| !v.is_empty());
    if current.unwrap_or(default) == audience {
        return None;
    }
    let ours = owned_annotations(sa, manager)
        .iter()
        .any(|k| k == AUDIENCE_ANNOTATION);
    match current {
        _ if ours => None,      // we wrote it: the next apply rewrites or releases it
        None if writes => None, // absent: we are about to write it
        other => Some(other.unwrap_or(default).to_owned()),
    }
}

/// Decides what to do, purely: `want` is what the binding writes when it asks for annotations.
pub(crate) fn annotation_plan(
    sa: &CachedServiceAccount,
    manager: &str,
    want: Option<Wanted<'_>>,
) -> AnnotationPlan {
    let owned = owned_annotations(sa, manager);
    match want {
        None if owned.is_empty() => AnnotationPlan::Nothing,
        None => AnnotationPlan::Release,
        Some(want) => {
            let wanted = want.annotations();
            let current = sa.metadata.annotations.clone().unwrap_or_default();
            let in_place = wanted
                .iter()
                .all(|(k, v)| current.get(k) == Some(v) && owned.iter().any(|o| o == k))
                && owned.iter().all(|o| wanted.contains_key(o));
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
pub(crate) enum Applied {
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
pub(crate) async fn apply(
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
    fn only_our_managed_fields_are_cached_and_ownership_reads_the_same() {
        let mut s = sa(
            &[],
            &[
                (M, "Apply", ours_fields()),
                ("wif-controller.other", "Apply", ours_fields()),
                (
                    "kubectl-client-side-apply",
                    "Update",
                    json!({"f:metadata": {"f:labels": {}}}),
                ),
                ("kube-controller-manager", "Update", json!({"f:secrets": {}})),
            ],
        );
        let before = owned_annotations(&s, M);
        keep_own_managed_fields(&mut s);
        let managers: Vec<_> = s
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert_eq!(managers, vec![M.to_owned(), "wif-controller.other".to_owned()]);
        assert_eq!(owned_annotations(&s, M), before);
    }

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

    fn want<'a>(client_id: &'a str, tenant_id: &'a str) -> Option<Wanted<'a>> {
        Some(Wanted {
            client_id,
            tenant_id,
            identity_name: None,
            audience: None,
        })
    }

    #[test]
    fn plans() {
        let annotated = [(CLIENT_ID_ANNOTATION, "c"), (TENANT_ID_ANNOTATION, "t")];
        // already ours and right
        let s = sa(&annotated, &[(M, "Apply", ours_fields())]);
        assert_eq!(annotation_plan(&s, M, want("c", "t")), AnnotationPlan::Nothing);
        // right values written by someone else: take co-ownership (so we can release later)
        let s = sa(&annotated, &[]);
        assert!(matches!(
            annotation_plan(&s, M, want("c", "t")),
            AnnotationPlan::Apply(_)
        ));
        // wrong value
        let s = sa(&annotated, &[(M, "Apply", ours_fields())]);
        assert!(matches!(
            annotation_plan(&s, M, want("c2", "t")),
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
    fn a_named_binding_writes_named_keys_and_a_custom_audience() {
        let w = Wanted {
            client_id: "c",
            tenant_id: "t",
            identity_name: Some("reader"),
            audience: Some("api://custom"),
        };
        assert_eq!(
            w.annotations(),
            BTreeMap::from([
                (
                    "azure.workload.identity/audience".to_owned(),
                    "api://custom".to_owned()
                ),
                (
                    "azure.workload.identity/client-id.reader".to_owned(),
                    "c".to_owned()
                ),
                (
                    "azure.workload.identity/tenant-id.reader".to_owned(),
                    "t".to_owned()
                ),
            ])
        );
        // The default binding's keys on the same ServiceAccount are not this binding's business.
        let s = sa(&[(CLIENT_ID_ANNOTATION, "other")], &[]);
        match annotation_plan(&s, M, Some(w)) {
            AnnotationPlan::Apply(a) => assert!(!a.contains_key(CLIENT_ID_ANNOTATION)),
            other => panic!("{other:?}"),
        }
        // An annotation we own but no longer want (the audience went back to the default) is
        // released by applying again.
        let owned = json!({"f:metadata": {"f:annotations": {
            "f:azure.workload.identity/client-id": {}, "f:azure.workload.identity/tenant-id": {},
            "f:azure.workload.identity/audience": {}}}});
        let s = sa(
            &[
                (CLIENT_ID_ANNOTATION, "c"),
                (TENANT_ID_ANNOTATION, "t"),
                (AUDIENCE_ANNOTATION, "api://old"),
            ],
            &[(M, "Apply", owned)],
        );
        assert!(matches!(annotation_plan(&s, M, want("c", "t")), AnnotationPlan::Apply(a) if a.len() == 2));
    }

    #[test]
    fn audience_mismatches() {
        const D: &str = "api://AzureADTokenExchange";
        let hand = |v: &str| sa(&[(AUDIENCE_ANNOTATION, v)], &[]);
        // agreement, either way
        assert_eq!(audience_mismatch(&sa(&[], &[]), M, D, D, false), None);
        assert_eq!(audience_mismatch(&hand("api://x"), M, "api://x", D, true), None);
        // the binding will write it
        assert_eq!(audience_mismatch(&sa(&[], &[]), M, "api://x", D, true), None);
        // a hand-written one differs: from the default, or from the binding's
        assert_eq!(
            audience_mismatch(&hand("api://x"), M, D, D, true).as_deref(),
            Some("api://x")
        );
        assert_eq!(
            audience_mismatch(&hand("api://y"), M, "api://x", D, true).as_deref(),
            Some("api://y")
        );
        // absent while the binding does not annotate: tokens carry the default
        assert_eq!(
            audience_mismatch(&sa(&[], &[]), M, "api://x", D, false).as_deref(),
            Some(D)
        );
        // ours: rewritten or released by the next apply
        let ours = sa(
            &[(AUDIENCE_ANNOTATION, "api://old")],
            &[(
                M,
                "Apply",
                json!({"f:metadata": {"f:annotations": {"f:azure.workload.identity/audience": {}}}}),
            )],
        );
        assert_eq!(audience_mismatch(&ours, M, D, D, true), None);
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
