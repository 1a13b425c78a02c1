//! Why the webhook left a pod alone (or refused it), as admission warnings and as the counter
//! `wif_admission_total{result,reason}`. Pure functions; the admission handler calls them.
//!
//! Pods without `azure.workload.identity/use: "true"` reach the webhook only through the
//! chart's `explain` webhook (value `webhook.explainSkips`); for them the usual mistakes are
//! named: a label value other than `true`, the label on the ServiceAccount instead of the pod,
//! the client-id annotation on the pod instead of the ServiceAccount, a misspelt key under
//! `azure.workload.identity/`, a missing ServiceAccount.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use wif_api::{CLIENT_ID_ANNOTATION, KNOWN_KEYS, PREFIX, USE_LABEL, USE_LABEL_VALUE};

use crate::view::{MetaView, PodView};

/// How an admission ended, for the counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Result_ {
    /// The pod was patched.
    Mutated,
    /// Allowed unchanged.
    Skipped,
    /// Denied.
    Refused,
}

impl Result_ {
    fn label(self) -> &'static str {
        match self {
            Result_::Mutated => "mutated",
            Result_::Skipped => "skipped",
            Result_::Refused => "refused",
        }
    }
}

/// The bounded set of reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Mutated as asked.
    Injected,
    /// Mutated, but the ServiceAccount has no client id.
    NoClientId,
    /// Labelled and already carrying everything (reinvocation, the user's own override).
    AlreadyMutated,
    /// Not a CREATE.
    NotCreate,
    /// No label and nothing that looks like an attempt at one.
    NotLabelled,
    /// The label with a value other than `true`.
    LabelValue,
    /// The label on the ServiceAccount instead of the pod.
    LabelOnServiceAccount,
    /// The `use` key as a pod annotation instead of a label.
    LabelAsAnnotation,
    /// The client-id annotation on the pod instead of the ServiceAccount.
    ClientIdOnPod,
    /// A key under `azure.workload.identity/` that wif does not know.
    MisspeltKey,
    /// The pod's ServiceAccount does not exist.
    ServiceAccountMissing,
    /// An annotation with an invalid value, or a collision with the user's volumes/mounts.
    InvalidPod,
    /// The ServiceAccount could not be read, or the patch not encoded.
    Error,
}

impl Reason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Injected => "injected",
            Reason::NoClientId => "no_client_id",
            Reason::AlreadyMutated => "already_mutated",
            Reason::NotCreate => "not_create",
            Reason::NotLabelled => "not_labelled",
            Reason::LabelValue => "label_value",
            Reason::LabelOnServiceAccount => "label_on_service_account",
            Reason::LabelAsAnnotation => "label_as_annotation",
            Reason::ClientIdOnPod => "client_id_on_pod",
            Reason::MisspeltKey => "misspelt_key",
            Reason::ServiceAccountMissing => "service_account_missing",
            Reason::InvalidPod => "invalid_pod",
            Reason::Error => "error",
        }
    }
}

/// Label set of `wif_admission_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AdmissionLabels {
    /// `mutated`, `skipped` or `refused`.
    pub result: &'static str,
    /// See [`Reason::label`].
    pub reason: &'static str,
}

/// `wif_admission_total{result,reason}`.
#[derive(Clone, Debug, Default)]
pub struct AdmissionCounter(Family<AdmissionLabels, Counter>);

impl AdmissionCounter {
    /// Creates and registers the counter (top-level name).
    pub fn new(registry: &mut Registry) -> Self {
        let c = Self::default();
        registry.register(
            "wif_admission",
            "Pod admissions by result and reason (every skip explained)",
            c.0.clone(),
        );
        c
    }

    /// Counts one admission.
    pub fn inc(&self, result: Result_, reason: Reason) {
        self.0
            .get_or_create(&AdmissionLabels {
                result: result.label(),
                reason: reason.label(),
            })
            .inc();
    }
}

/// Why a pod without `azure.workload.identity/use: "true"` was not mutated, and the warnings
/// to show. `sa`: the ServiceAccount's metadata, `None` when it does not exist.
pub(crate) fn explain_unlabelled(
    pod: &PodView<'_>,
    sa: Option<&MetaView<'_>>,
    pod_ref: &str,
) -> (Reason, Vec<String>) {
    let meta = &pod.metadata;
    let mut out: Vec<(Reason, String)> = Vec::new();
    if let Some(value) = meta.labels.get(USE_LABEL) {
        out.push((
            Reason::LabelValue,
            format!(
                "label {USE_LABEL}={value:?} on pod {pod_ref}: only the exact value \"{USE_LABEL_VALUE}\" enables \
                 workload identity; the pod is left unchanged"
            ),
        ));
    }
    if meta.annotations.get(USE_LABEL).is_some() {
        out.push((
            Reason::LabelAsAnnotation,
            format!(
                "pod {pod_ref} has {USE_LABEL} as an annotation; it must be a label \
                 ({USE_LABEL}: \"{USE_LABEL_VALUE}\" under metadata.labels); the pod is left unchanged"
            ),
        ));
    }
    let sa_name = sa_ref(pod, sa);
    if let Some(sa) = sa
        && sa.labels.get(USE_LABEL).is_some()
    {
        out.push((
            Reason::LabelOnServiceAccount,
            format!(
                "ServiceAccount {sa_name} is labelled {USE_LABEL}, but the webhook selects pods: put the label \
                 {USE_LABEL}: \"{USE_LABEL_VALUE}\" on pod {pod_ref} (its template); the pod is left unchanged"
            ),
        ));
    }
    if meta.annotations.get(CLIENT_ID_ANNOTATION).is_some() {
        out.push((
            Reason::ClientIdOnPod,
            format!(
                "pod {pod_ref} has annotation {CLIENT_ID_ANNOTATION}, which wif reads on the ServiceAccount \
                 {sa_name}: move it there, and label the pod {USE_LABEL}: \"{USE_LABEL_VALUE}\"; the pod is left unchanged"
            ),
        ));
    }
    for (keys, kind) in [(&meta.labels, "label"), (&meta.annotations, "annotation")] {
        for key in keys.keys() {
            if let Some(nearest) = misspelt(key) {
                out.push((
                    Reason::MisspeltKey,
                    format!(
                        "unknown {kind} {key} on pod {pod_ref}: wif does not read it; did you mean {nearest}? \
                         The pod is left unchanged"
                    ),
                ));
            }
        }
    }
    if sa.is_none() && !out.is_empty() {
        out.push((
            Reason::ServiceAccountMissing,
            format!("ServiceAccount {sa_name} of pod {pod_ref} does not exist"),
        ));
    }
    let reason = out.first().map(|(r, _)| *r).unwrap_or(Reason::NotLabelled);
    (reason, out.into_iter().map(|(_, w)| w).collect())
}

/// The known key nearest to `key` when `key` is under the prefix but unknown (named identity
/// and audience keys, `client-id.<name>`, count as known).
pub(crate) fn misspelt(key: &str) -> Option<&'static str> {
    let suffix = key.strip_prefix(PREFIX)?;
    if KNOWN_KEYS.contains(&key)
        || EXTRA_KNOWN
            .iter()
            .any(|k| suffix == *k || suffix.starts_with(&format!("{k}.")))
    {
        return None;
    }
    KNOWN_KEYS.iter().copied().max_by(|a, b| {
        let sa = strsim::normalized_damerau_levenshtein(suffix, &a[PREFIX.len()..]);
        let sb = strsim::normalized_damerau_levenshtein(suffix, &b[PREFIX.len()..]);
        sa.total_cmp(&sb)
    })
}

/// Keys beyond upstream's that other wif features read (named identities, audiences).
const EXTRA_KNOWN: &[&str] = &[
    "client-id",
    "tenant-id",
    "audience",
    "extra-token-audiences",
    "container-identities",
];

fn sa_ref(pod: &PodView<'_>, sa: Option<&MetaView<'_>>) -> String {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = sa
        .and_then(|s| s.name.as_deref())
        .or(pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()))
        .filter(|s| !s.is_empty())
        .unwrap_or(wif_api::DEFAULT_SERVICE_ACCOUNT);
    format!("{ns}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::ObjectMeta};
    use rstest::rstest;
    use std::collections::BTreeMap;

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        })
    }

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("x".into()),
            namespace: Some("ns".into()),
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        }
    }

    #[rstest]
    #[case::nothing(&[], &[], Some((&[][..], &[][..])), Reason::NotLabelled, "")]
    #[case::capital_true(&[(USE_LABEL, "True")], &[], Some((&[][..], &[][..])), Reason::LabelValue, "only the exact value")]
    #[case::yes(&[(USE_LABEL, "yes")], &[], Some((&[][..], &[][..])), Reason::LabelValue, "\"yes\"")]
    #[case::label_on_sa(&[], &[], Some((&[(USE_LABEL, "true")][..], &[][..])), Reason::LabelOnServiceAccount, "selects pods")]
    #[case::client_id_on_pod(&[], &[(CLIENT_ID_ANNOTATION, "c")], Some((&[][..], &[][..])), Reason::ClientIdOnPod, "move it there")]
    #[case::use_as_annotation(&[], &[(USE_LABEL, "true")], Some((&[][..], &[][..])), Reason::LabelAsAnnotation, "must be a label")]
    #[case::misspelt(&[("azure.workload.identity/usee", "true")], &[], Some((&[][..], &[][..])), Reason::MisspeltKey, "did you mean azure.workload.identity/use?")]
    #[case::sa_missing(&[(USE_LABEL, "True")], &[], None, Reason::LabelValue, "does not exist")]
    fn reasons(
        #[case] labels: &[(&str, &str)],
        #[case] annotations: &[(&str, &str)],
        #[case] sa: Option<(Pairs<'_>, Pairs<'_>)>,
        #[case] reason: Reason,
        #[case] text: &str,
    ) {
        let pod = Pod {
            metadata: meta(labels, annotations),
            ..Pod::default()
        };
        let sa_meta = sa.map(|(l, a)| meta(l, a));
        let (got, warnings) = explain_unlabelled(
            &PodView::from(&pod),
            sa_meta.as_ref().map(MetaView::from).as_ref(),
            "ns/x",
        );
        assert_eq!(got, reason);
        if text.is_empty() {
            assert!(warnings.is_empty(), "{warnings:?}");
        } else {
            assert!(
                warnings.iter().any(|w| w.contains(text)),
                "{text} not in {warnings:?}"
            );
        }
    }

    #[test]
    fn named_identity_keys_are_not_misspelt() {
        assert_eq!(misspelt("azure.workload.identity/client-id.reader"), None);
        assert_eq!(misspelt("azure.workload.identity/audience"), None);
        assert_eq!(
            misspelt("azure.workload.identity/client-idd"),
            Some(CLIENT_ID_ANNOTATION)
        );
        assert_eq!(misspelt("example.com/use"), None);
    }
}
