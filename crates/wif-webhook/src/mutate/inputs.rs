//! What the pod and its ServiceAccount ask for, read from their annotations, and the objects wif
//! adds for it.

use std::{borrow::Cow, collections::BTreeSet};

use k8s_openapi::api::core::v1::{
    ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use wif_api::{
    AUDIENCE_ANNOTATION, CONTAINER_IDENTITIES_ANNOTATION, DEFAULT_SERVICE_ACCOUNT,
    DEFAULT_TOKEN_EXPIRATION_SECONDS, EXTRA_TOKEN_AUDIENCES_ANNOTATION, EXTRA_TOKEN_FILE_SUFFIX,
    MAX_TOKEN_EXPIRATION_SECONDS, MIN_TOKEN_EXPIRATION_SECONDS, MutationConfig, NAMED_CLIENT_ID_PREFIX,
    NAMED_TENANT_ID_PREFIX, SKIP_CONTAINERS_ANNOTATION, TOKEN_EXPIRATION_ANNOTATION, TOKEN_FILE_NAME,
    TOKEN_FILE_PATH, TOKEN_MOUNT_PATH, TOKEN_VOLUME_NAME,
};

use crate::view::{MetaView, MountView, PodView, SpecView};

use super::Denial;

/// A named identity of the ServiceAccount: `client-id.<name>` (and `tenant-id.<name>`).
pub(super) struct Named<'a> {
    pub(super) name: &'a str,
    pub(super) client_id: &'a str,
    pub(super) tenant_id: Option<&'a str>,
    pub(super) client_env: String,
    pub(super) tenant_env: Option<String>,
}

/// The ServiceAccount's named identities with a non-empty client id, by name. Keys whose name is
/// not a lower-case DNS label are skipped (and warned about).
pub(super) fn named_identities<'a>(sa: &'a MetaView<'_>) -> Vec<Named<'a>> {
    let mut out: Vec<Named<'a>> = sa
        .annotations
        .iter()
        .filter_map(|(key, client_id)| {
            let name = key.strip_prefix(NAMED_CLIENT_ID_PREFIX)?;
            if !wif_api::is_identity_name(name) || client_id.is_empty() {
                return None;
            }
            let tenant_id = sa
                .annotations
                .iter()
                .find(|(k, v)| k.strip_prefix(NAMED_TENANT_ID_PREFIX) == Some(name) && !v.is_empty())
                .map(|(_, v)| v);
            Some(Named {
                name,
                client_id,
                tenant_id,
                client_env: wif_api::named_client_id_env(name),
                tenant_env: tenant_id.map(|_| wif_api::named_tenant_id_env(name)),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(b.name));
    out
}

/// `container-identities`: each listed container and the named identity it gets.
pub(super) fn container_identities<'a, 'n>(
    pod: &'a PodView<'_>,
    spec: &SpecView<'_>,
    sa: &MetaView<'_>,
    named: &'n [Named<'a>],
    pod_name: &str,
) -> Result<Vec<(&'a str, &'n Named<'a>)>, Denial> {
    let Some(value) = pod.metadata.annotations.get(CONTAINER_IDENTITIES_ANNOTATION) else {
        return Ok(Vec::new());
    };
    let invalid = |reason: String| Denial::InvalidAnnotation {
        object: format!("pod {pod_name}"),
        key: CONTAINER_IDENTITIES_ANNOTATION,
        value: value.to_owned(),
        reason,
    };
    let mut out: Vec<(&'a str, &'n Named<'a>)> = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((container, identity)) = entry.split_once('=').map(|(c, i)| (c.trim(), i.trim())) else {
            return Err(invalid(format!(
                "entry {entry:?} is not <container>=<identity name>; separate entries with ';'"
            )));
        };
        if container.is_empty() || identity.is_empty() {
            return Err(invalid(format!(
                "entry {entry:?} is not <container>=<identity name>; separate entries with ';'"
            )));
        }
        let exists = spec
            .init_containers()
            .iter()
            .chain(spec.containers())
            .any(|c| c.name == container);
        if !exists {
            return Err(Denial::UnknownContainer {
                pod: pod_name.to_owned(),
                value: value.to_owned(),
                container: container.to_owned(),
                identity: identity.to_owned(),
            });
        }
        let Some(found) = named.iter().find(|n| n.name == identity) else {
            let known = if named.is_empty() {
                "none".to_owned()
            } else {
                named.iter().map(|n| n.name).collect::<Vec<_>>().join(", ")
            };
            return Err(Denial::UnknownIdentity {
                pod: pod_name.to_owned(),
                value: value.into(),
                container: container.to_owned(),
                identity: identity.to_owned(),
                service_account: sa_ref(sa).into(),
                known: known.into(),
            });
        };
        match out.iter().find(|(c, _)| *c == container) {
            Some((_, other)) if other.name != found.name => {
                return Err(invalid(format!(
                    "container {container:?} is given two identities, {:?} and {:?}",
                    other.name, found.name
                )));
            }
            Some(_) => {}
            None => out.push((container, found)),
        }
    }
    Ok(out)
}

/// The projected token's audience: pod annotation, else ServiceAccount annotation, else the
/// install's; empty values count as unset.
pub(super) fn audience<'a>(
    pod: &'a PodView<'_>,
    sa: &'a MetaView<'_>,
    pod_name: &str,
    cfg: &'a MutationConfig,
) -> Result<&'a str, Denial> {
    let (value, object) = match pod
        .metadata
        .annotations
        .get(AUDIENCE_ANNOTATION)
        .filter(|v| !v.is_empty())
    {
        Some(v) => (v, format!("pod {pod_name}")),
        None => match sa.annotations.get(AUDIENCE_ANNOTATION).filter(|v| !v.is_empty()) {
            Some(v) => (v, format!("ServiceAccount {}", sa_ref(sa))),
            None => return Ok(cfg.audience.as_str()),
        },
    };
    match wif_api::audience_problem(value) {
        None => Ok(value),
        Some(why) => Err(Denial::InvalidAnnotation {
            object,
            key: AUDIENCE_ANNOTATION,
            value: value.to_owned(),
            reason: format!(
                "{why}; Entra accepts an audience of at most {} characters without whitespace or '*'",
                wif_api::MAX_AUDIENCE_LEN
            ),
        }),
    }
}

/// `extra-token-audiences`: (file name, audience) of each extra token, in the order written.
pub(super) fn extra_tokens<'a>(
    meta: &'a MetaView<'_>,
    pod_name: &str,
) -> Result<Vec<(String, &'a str)>, Denial> {
    let Some(value) = meta.annotations.get(EXTRA_TOKEN_AUDIENCES_ANNOTATION) else {
        return Ok(Vec::new());
    };
    let invalid = |reason: String| Denial::InvalidAnnotation {
        object: format!("pod {pod_name}"),
        key: EXTRA_TOKEN_AUDIENCES_ANNOTATION,
        value: value.to_owned(),
        reason,
    };
    let mut out: Vec<(String, &'a str)> = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, audience)) = entry.split_once('=').map(|(n, a)| (n.trim(), a.trim())) else {
            return Err(invalid(format!(
                "entry {entry:?} is not <name>=<audience>; separate entries with ';'"
            )));
        };
        if !wif_api::is_identity_name(name) {
            return Err(invalid(format!(
                "{name:?} in entry {entry:?} is not a lower-case DNS label (a-z, 0-9, '-'; at most 63)"
            )));
        }
        if let Some(why) = wif_api::audience_problem(audience) {
            return Err(invalid(format!(
                "the audience of {name:?} is not valid: {why}; Entra accepts at most {} characters \
                 without whitespace or '*'",
                wif_api::MAX_AUDIENCE_LEN
            )));
        }
        let file = format!("{name}{EXTRA_TOKEN_FILE_SUFFIX}");
        if file == TOKEN_FILE_NAME {
            return Err(invalid(format!(
                "the name {name:?} would write {file:?}, the Azure token's file; choose another name"
            )));
        }
        if out.iter().any(|(f, _)| *f == file) {
            return Err(invalid(format!("the name {name:?} is given twice")));
        }
        out.push((file, audience));
    }
    Ok(out)
}

/// `ns/name` of the pod for messages; `ns/prefix*` for a pod whose name is generated later.
pub(super) fn pod_ref(pod: &PodView<'_>, sa: &MetaView<'_>) -> String {
    let meta = &pod.metadata;
    let ns = meta
        .namespace
        .as_deref()
        .or(sa.namespace.as_deref())
        .unwrap_or_default();
    let name = match (meta.name.as_deref(), meta.generate_name.as_deref()) {
        (Some(name), _) if !name.is_empty() => name.to_owned(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => "(unnamed)".to_owned(),
    };
    if ns.is_empty() {
        name
    } else {
        format!("{ns}/{name}")
    }
}

pub(super) fn sa_ref(sa: &MetaView<'_>) -> String {
    let name = sa.name.as_deref().unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    match sa.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// Pod annotation, else ServiceAccount annotation, else the default; empty values count as unset.
pub(super) fn token_expiration(pod: &PodView<'_>, sa: &MetaView<'_>, pod_name: &str) -> Result<i64, Denial> {
    let (raw, object) = match pod
        .metadata
        .annotations
        .get(TOKEN_EXPIRATION_ANNOTATION)
        .filter(|v| !v.is_empty())
    {
        Some(v) => (v, format!("pod {pod_name}")),
        None => match sa
            .annotations
            .get(TOKEN_EXPIRATION_ANNOTATION)
            .filter(|v| !v.is_empty())
        {
            Some(v) => (v, format!("ServiceAccount {}", sa_ref(sa))),
            None => return Ok(DEFAULT_TOKEN_EXPIRATION_SECONDS),
        },
    };
    let value: i64 = raw.trim().parse().map_err(|_| Denial::InvalidTokenExpiration {
        object: object.clone(),
        value: raw.to_owned(),
    })?;
    if !(MIN_TOKEN_EXPIRATION_SECONDS..=MAX_TOKEN_EXPIRATION_SECONDS).contains(&value) {
        return Err(Denial::TokenExpirationOutOfRange { object, value });
    }
    Ok(value)
}

pub(super) fn skip_containers<'a>(meta: &'a MetaView<'_>) -> BTreeSet<&'a str> {
    meta.annotations
        .get(SKIP_CONTAINERS_ANNOTATION)
        .map(|v| v.split(';').map(str::trim).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

pub(super) fn same_path(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Where the token file is for a container that mounts our volume itself (at any path).
pub(super) fn token_file_for<'a>(mount: &'a MountView<'_>) -> Cow<'a, str> {
    let dir = mount.mount_path.trim_end_matches('/');
    match mount.sub_path.as_deref() {
        None | Some("") => Cow::Owned(format!("{dir}/{TOKEN_FILE_NAME}")),
        Some(TOKEN_FILE_NAME) => Cow::Borrowed(dir),
        Some(_) => Cow::Borrowed(TOKEN_FILE_PATH),
    }
}

pub(super) fn token_volume(audience: &str, expiration: i64, extra: &[(String, &str)]) -> Volume {
    let source = |audience: &str, path: &str| VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: Some(audience.to_owned()),
            expiration_seconds: Some(expiration),
            path: path.to_owned(),
        }),
        ..VolumeProjection::default()
    };
    let mut sources = Vec::with_capacity(1 + extra.len());
    sources.push(source(audience, TOKEN_FILE_NAME));
    sources.extend(extra.iter().map(|(file, audience)| source(audience, file)));
    Volume {
        name: TOKEN_VOLUME_NAME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: None,
        }),
        ..Volume::default()
    }
}

pub(super) fn token_mount() -> VolumeMount {
    VolumeMount {
        name: TOKEN_VOLUME_NAME.to_owned(),
        mount_path: TOKEN_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}
