//! Admission warnings: wif's keys in the wrong place or misspelt, and pods that will not get what
//! their owner expects.

use std::collections::BTreeSet;

use wif_api::{
    AUDIENCE_ANNOTATION, CLIENT_ID_ANNOTATION, CONTAINER_IDENTITIES_ANNOTATION,
    EXTRA_TOKEN_AUDIENCES_ANNOTATION, INJECT_PROXY_SIDECAR_ANNOTATION, NAMED_CLIENT_ID_PREFIX,
    NAMED_TENANT_ID_PREFIX, PREFIX, PROXY_SIDECAR_PORT_ANNOTATION, SKIP_CONTAINERS_ANNOTATION,
    TENANT_ID_ANNOTATION, TOKEN_EXPIRATION_ANNOTATION, USE_LABEL,
};

use crate::view::{MetaView, PodView, SpecView};

use super::inputs::sa_ref;

/// Admission warnings are shown to `kubectl` users one per line; more than this is noise.
const MAX_WARNINGS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    PodLabel,
    PodAnnotation,
    SaLabel,
    SaAnnotation,
}

impl Place {
    /// "label" or "annotation".
    fn kind(self) -> &'static str {
        match self {
            Place::PodLabel | Place::SaLabel => "label",
            Place::PodAnnotation | Place::SaAnnotation => "annotation",
        }
    }

    /// Where wif reads a key, for "reads it as …" messages.
    fn describe(self) -> &'static str {
        match self {
            Place::PodLabel => "a pod label",
            Place::PodAnnotation => "a pod annotation",
            Place::SaLabel => "a ServiceAccount label",
            Place::SaAnnotation => "a ServiceAccount annotation",
        }
    }
}

/// Where each key belongs. The `use` label on a ServiceAccount is accepted because upstream's
/// documentation once asked for it.
const PLACEMENT: &[(&str, &[Place])] = &[
    (USE_LABEL, &[Place::PodLabel, Place::SaLabel]),
    (CLIENT_ID_ANNOTATION, &[Place::SaAnnotation]),
    (TENANT_ID_ANNOTATION, &[Place::SaAnnotation]),
    (
        TOKEN_EXPIRATION_ANNOTATION,
        &[Place::PodAnnotation, Place::SaAnnotation],
    ),
    (SKIP_CONTAINERS_ANNOTATION, &[Place::PodAnnotation]),
    (INJECT_PROXY_SIDECAR_ANNOTATION, &[Place::PodAnnotation]),
    (PROXY_SIDECAR_PORT_ANNOTATION, &[Place::PodAnnotation]),
    (CONTAINER_IDENTITIES_ANNOTATION, &[Place::PodAnnotation]),
    (AUDIENCE_ANNOTATION, &[Place::PodAnnotation, Place::SaAnnotation]),
    (EXTRA_TOKEN_AUDIENCES_ANNOTATION, &[Place::PodAnnotation]),
];

pub(super) fn warnings(
    pod: &PodView<'_>,
    spec: &SpecView<'_>,
    sa: &MetaView<'_>,
    skip: &BTreeSet<&str>,
    pod_name: &str,
    has_client_id: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let sa_name = sa_ref(sa);
    if !has_client_id {
        out.push(format!(
            "ServiceAccount {sa_name} has no {CLIENT_ID_ANNOTATION} annotation, so AZURE_CLIENT_ID is not \
             set: annotate it with the client id of the Entra application or managed identity"
        ));
    }
    let pod_object = format!("pod {pod_name}");
    let sa_object = format!("ServiceAccount {sa_name}");
    let sources = [
        (&pod.metadata.labels, Place::PodLabel, pod_object.as_str()),
        (
            &pod.metadata.annotations,
            Place::PodAnnotation,
            pod_object.as_str(),
        ),
        (&sa.labels, Place::SaLabel, sa_object.as_str()),
        (&sa.annotations, Place::SaAnnotation, sa_object.as_str()),
    ];
    for (map, place, object) in sources {
        // In key order, as a typed pod's maps hold them, not the order the request wrote them.
        let mut keys: Vec<&str> = map.keys().collect();
        keys.sort_unstable();
        for key in keys {
            if let Some(w) = key_warning(key, place, object) {
                out.push(w);
            }
        }
    }
    if pod
        .metadata
        .annotations
        .get(INJECT_PROXY_SIDECAR_ANNOTATION)
        .is_some()
    {
        out.push(format!(
            "{pod_object}: {INJECT_PROXY_SIDECAR_ANNOTATION} is not supported by wif and no proxy sidecar is \
             injected; Azure SDKs read the token file in AZURE_FEDERATED_TOKEN_FILE directly, so remove the \
             annotation"
        ));
    }
    let names: BTreeSet<&str> = spec
        .init_containers()
        .iter()
        .chain(spec.containers())
        .map(|c| c.name.as_ref())
        .collect();
    for name in skip.iter().filter(|n| !names.contains(*n)) {
        out.push(format!(
            "{pod_object}: {SKIP_CONTAINERS_ANNOTATION} names {name:?}, which matches no container or init \
             container; check the spelling (names are separated by ';')"
        ));
    }
    if out.len() > MAX_WARNINGS {
        let more = out.len() - (MAX_WARNINGS - 1);
        out.truncate(MAX_WARNINGS - 1);
        out.push(format!(
            "{more} more warnings not shown; run `wif mutate` on the pod to see them all"
        ));
    }
    out
}

fn key_warning(key: &str, place: Place, object: &str) -> Option<String> {
    let suffix = key.strip_prefix(PREFIX)?;
    let named = [NAMED_CLIENT_ID_PREFIX, NAMED_TENANT_ID_PREFIX]
        .into_iter()
        .find_map(|prefix| Some((prefix, key.strip_prefix(prefix)?)));
    if let Some((prefix, name)) = named {
        if place != Place::SaAnnotation {
            return Some(format!(
                "{key} is {} {} on {object}, but wif reads it only as a ServiceAccount annotation",
                if place.kind() == "label" { "a" } else { "an" },
                place.kind()
            ));
        }
        if !wif_api::is_identity_name(name) {
            return Some(format!(
                "annotation {key} on {object} is ignored: {name:?} is not a lower-case DNS label (a-z, 0-9, \
                 '-'); rename it, e.g. {prefix}{}",
                name.to_ascii_lowercase().replace(['_', '.', ' '], "-")
            ));
        }
        return None;
    }
    if let Some((_, places)) = PLACEMENT.iter().find(|(k, _)| *k == key) {
        if places.contains(&place) {
            return None;
        }
        let wanted = places
            .iter()
            .map(|p| p.describe())
            .collect::<Vec<_>>()
            .join(" or ");
        let article = if place.kind() == "label" { "a" } else { "an" };
        return Some(format!(
            "{key} is {article} {} on {object}, but wif reads it only as {wanted}",
            place.kind()
        ));
    }
    let nearest = PLACEMENT
        .iter()
        .map(|(k, _)| *k)
        .max_by(|a, b| {
            let sa =
                strsim::normalized_damerau_levenshtein(&normalise(suffix), &normalise(&a[PREFIX.len()..]));
            let sb =
                strsim::normalized_damerau_levenshtein(&normalise(suffix), &normalise(&b[PREFIX.len()..]));
            sa.total_cmp(&sb)
        })
        .unwrap_or(CLIENT_ID_ANNOTATION);
    Some(format!(
        "unknown {} {key} on {object}: wif does not read it; did you mean {nearest}?",
        place.kind()
    ))
}

/// `clientId`, `client_id` and `Client-ID` are all attempts at `client-id`.
fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, ch) in s.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(match ch {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        });
    }
    out.replace("--", "-")
}
