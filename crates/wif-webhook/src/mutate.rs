//! The pod mutation: a pure function of the pod, its ServiceAccount's metadata and the cluster
//! configuration. No I/O, no clock, no client — the admission server and `wif mutate` both call it.
//!
//! The result is a list of [`Edit`]s rather than a rewritten pod: edits are encoded as a JSON
//! patch that only *adds* (so fields this crate's `k8s-openapi` does not know are never dropped,
//! a bug upstream has), and the same edits can be applied to a typed pod for `wif mutate`.

use std::{borrow::Cow, collections::BTreeSet};

use json_patch::Patch;
use k8s_openapi::{
    api::core::v1::{
        Container, EnvVar, Pod, PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
        VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::ser::{SerializeSeq, Serializer};
use serde_json::value::RawValue;
use wif_api::{
    AUDIENCE_ANNOTATION, CLIENT_ID_ANNOTATION, CONTAINER_IDENTITIES_ANNOTATION, DEFAULT_SERVICE_ACCOUNT,
    DEFAULT_TOKEN_EXPIRATION_SECONDS, ENV_AUTHORITY_HOST, ENV_CLIENT_ID, ENV_FEDERATED_TOKEN_FILE,
    ENV_TENANT_ID, EXTRA_TOKEN_AUDIENCES_ANNOTATION, EXTRA_TOKEN_FILE_SUFFIX,
    INJECT_PROXY_SIDECAR_ANNOTATION, MAX_TOKEN_EXPIRATION_SECONDS, MIN_TOKEN_EXPIRATION_SECONDS,
    MutationConfig, NAMED_CLIENT_ID_PREFIX, NAMED_TENANT_ID_PREFIX, PREFIX, PROXY_SIDECAR_PORT_ANNOTATION,
    SKIP_CONTAINERS_ANNOTATION, TENANT_ID_ANNOTATION, TOKEN_EXPIRATION_ANNOTATION, TOKEN_FILE_NAME,
    TOKEN_FILE_PATH, TOKEN_MOUNT_PATH, TOKEN_VOLUME_NAME, USE_LABEL, USE_LABEL_VALUE,
};

use crate::view::{MetaView, MountView, PodView, SpecView};

/// Admission warnings are shown to `kubectl` users one per line; more than this is noise.
const MAX_WARNINGS: usize = 8;

/// Why a pod is refused. Every message names the object and the field to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The token-expiration annotation is not an integer.
    #[error(
        "annotation {TOKEN_EXPIRATION_ANNOTATION}={value:?} on {object} is not a number of seconds: \
         set it to a whole number between {MIN_TOKEN_EXPIRATION_SECONDS} and {MAX_TOKEN_EXPIRATION_SECONDS}"
    )]
    InvalidTokenExpiration {
        /// `pod ns/name` or `ServiceAccount ns/name`.
        object: String,
        /// The annotation's value as written.
        value: String,
    },
    /// The token-expiration annotation is outside what Entra and the kubelet accept.
    #[error(
        "token expiration {value} not valid. Expected value to be between {MIN_TOKEN_EXPIRATION_SECONDS} \
         and {MAX_TOKEN_EXPIRATION_SECONDS} seconds (annotation {TOKEN_EXPIRATION_ANNOTATION} on {object})"
    )]
    TokenExpirationOutOfRange {
        /// `pod ns/name` or `ServiceAccount ns/name`.
        object: String,
        /// The parsed value.
        value: i64,
    },
    /// A volume with our name exists but does not project the token where SDKs look for it.
    #[error(
        "pod {pod}: volume {TOKEN_VOLUME_NAME:?} already exists but is not a projected ServiceAccount \
         token with path {TOKEN_FILE_NAME:?}; rename that volume or make it one"
    )]
    VolumeNameCollision {
        /// `ns/name` of the pod.
        pod: String,
    },
    /// Another volume already projects the token file under a different name.
    #[error(
        "pod {pod}: volume {volume:?} already projects a ServiceAccount token at path {TOKEN_FILE_NAME:?}; \
         name it {TOKEN_VOLUME_NAME:?} so wif uses it as is, or remove it"
    )]
    TokenPathCollision {
        /// `ns/name` of the pod.
        pod: String,
        /// The other volume's name.
        volume: String,
    },
    /// A container already mounts something else where the token is mounted.
    #[error(
        "pod {pod}: container {container:?} already mounts volume {volume:?} at {TOKEN_MOUNT_PATH}, where \
         the token volume goes; move that mount, or list the container in {SKIP_CONTAINERS_ANNOTATION}"
    )]
    MountPathCollision {
        /// `ns/name` of the pod.
        pod: String,
        /// The container's name.
        container: String,
        /// The volume mounted there.
        volume: String,
    },
    /// One of wif's own annotations (beyond upstream's) has a value it cannot use.
    #[error("annotation {key}={value:?} on {object} is not valid: {reason}")]
    InvalidAnnotation {
        /// `pod ns/name` or `ServiceAccount ns/name`.
        object: String,
        /// The annotation.
        key: &'static str,
        /// Its value as written.
        value: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// `container-identities` names a container the pod does not have.
    #[error(
        "annotation {CONTAINER_IDENTITIES_ANNOTATION}={value:?} on pod {pod} gives container {container:?} \
         the identity {identity:?}, but the pod has no container or init container {container:?}; check the spelling"
    )]
    UnknownContainer {
        /// `ns/name` of the pod.
        pod: String,
        /// The annotation's value as written.
        value: String,
        /// The container named.
        container: String,
        /// The identity named for it.
        identity: String,
    },
    /// `container-identities` names an identity the ServiceAccount does not have.
    #[error(
        "annotation {CONTAINER_IDENTITIES_ANNOTATION}={value:?} on pod {pod} gives container {container:?} \
         the identity {identity:?}, but ServiceAccount {service_account} has no annotation \
         {NAMED_CLIENT_ID_PREFIX}{identity} (its named identities: {known}); annotate it, or fix the name"
    )]
    UnknownIdentity {
        /// `ns/name` of the pod.
        pod: String,
        /// The annotation's value as written.
        value: Box<str>,
        /// The container named.
        container: String,
        /// The identity named for it.
        identity: String,
        /// `ns/name` of the ServiceAccount.
        service_account: Box<str>,
        /// The identity names the ServiceAccount has, or `none`.
        known: Box<str>,
    },
}

/// Which list of the pod spec a container is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    /// `spec.initContainers`
    Init,
    /// `spec.containers`
    Regular,
}

impl ContainerKind {
    fn field(self) -> &'static str {
        match self {
            ContainerKind::Init => "initContainers",
            ContainerKind::Regular => "containers",
        }
    }
}

/// One change to the pod. `create` says whether the target list is absent or empty in the input
/// (the patch then sets the whole list instead of appending).
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Add the projected token volume.
    AddVolume {
        /// The volume.
        volume: Box<Volume>,
        /// `spec.volumes` is absent or empty.
        create: bool,
    },
    /// Append a volume mount to a container.
    AddMount {
        /// The container list.
        kind: ContainerKind,
        /// Index in that list.
        index: usize,
        /// The mount.
        mount: VolumeMount,
        /// The container has no mounts yet.
        create: bool,
    },
    /// Append environment variables to a container.
    AddEnv {
        /// The container list.
        kind: ContainerKind,
        /// Index in that list.
        index: usize,
        /// The variables, in upstream's order.
        vars: Vec<EnvVar>,
        /// The container has no `env` yet.
        create: bool,
    },
}

/// What the webhook does to a pod: edits (possibly none) and warnings for the user.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mutation {
    /// The changes, in the order they are applied.
    pub edits: Vec<Edit>,
    /// Human-readable admission warnings, each saying what to fix.
    pub warnings: Vec<String>,
}

impl Mutation {
    /// True when the pod is left as it is.
    pub fn is_noop(&self) -> bool {
        self.edits.is_empty()
    }

    /// The edits as an RFC 6902 patch that only adds, encoded as JSON. Written straight from the
    /// typed values (no intermediate `serde_json::Value`), and each distinct value is encoded
    /// once: every container gets the same mount and, usually, the same variables.
    pub fn patch_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(128 + 256 * self.edits.len());
        let mut ser = serde_json::Serializer::new(&mut out);
        let mut ops = ser.serialize_seq(None)?;
        let (mut mounts, mut vars) = (Encoded::default(), Encoded::default());
        for edit in &self.edits {
            match edit {
                Edit::AddVolume { volume, create } => {
                    let volume = serde_json::value::to_raw_value(&**volume)?;
                    add(&mut ops, "/spec/volumes", *create, &[&*volume])?;
                }
                Edit::AddMount {
                    kind,
                    index,
                    mount,
                    create,
                } => {
                    let path = format!("/spec/{}/{index}/volumeMounts", kind.field());
                    add(&mut ops, &path, *create, &[mounts.get(mount)?])?;
                }
                Edit::AddEnv {
                    kind,
                    index,
                    vars: list,
                    create,
                } => {
                    let path = format!("/spec/{}/{index}/env", kind.field());
                    for var in list {
                        vars.get(var)?;
                    }
                    let encoded: Vec<&RawValue> = list.iter().filter_map(|v| vars.find(v)).collect();
                    add(&mut ops, &path, *create, &encoded)?;
                }
            }
        }
        ops.end()?;
        Ok(out)
    }

    /// The edits as an RFC 6902 patch (the same as [`Mutation::patch_json`], typed).
    pub fn patch(&self) -> Result<Patch, serde_json::Error> {
        serde_json::from_slice(&self.patch_json()?)
    }

    /// Applies the edits to a typed pod (what `wif mutate` prints).
    pub fn apply(&self, pod: &mut Pod) {
        if self.edits.is_empty() {
            return; // a pod without a spec stays without one
        }
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        for edit in &self.edits {
            match edit {
                Edit::AddVolume { volume, .. } => {
                    spec.volumes.get_or_insert_with(Vec::new).push((**volume).clone())
                }
                Edit::AddMount {
                    kind, index, mount, ..
                } => {
                    if let Some(c) = container_mut(spec, *kind, *index) {
                        c.volume_mounts.get_or_insert_with(Vec::new).push(mount.clone());
                    }
                }
                Edit::AddEnv {
                    kind, index, vars, ..
                } => {
                    if let Some(c) = container_mut(spec, *kind, *index) {
                        c.env.get_or_insert_with(Vec::new).extend(vars.iter().cloned());
                    }
                }
            }
        }
    }
}

fn container_mut(spec: &mut PodSpec, kind: ContainerKind, index: usize) -> Option<&mut Container> {
    match kind {
        ContainerKind::Init => spec.init_containers.as_mut()?.get_mut(index),
        ContainerKind::Regular => spec.containers.get_mut(index),
    }
}

/// One `add` operation of the patch.
#[derive(serde::Serialize)]
struct Add<'a, T: serde::Serialize + ?Sized> {
    op: &'static str,
    path: &'a str,
    value: &'a T,
}

/// Values already encoded for this patch.
struct Encoded<'a, T> {
    seen: Vec<(&'a T, Box<RawValue>)>,
}

impl<T> Default for Encoded<'_, T> {
    fn default() -> Self {
        Self { seen: Vec::new() }
    }
}

impl<'a, T: serde::Serialize + PartialEq> Encoded<'a, T> {
    fn find(&self, value: &T) -> Option<&RawValue> {
        self.seen.iter().find(|(v, _)| *v == value).map(|(_, raw)| &**raw)
    }

    fn get(&mut self, value: &'a T) -> Result<&RawValue, serde_json::Error> {
        let at = match self.seen.iter().position(|(v, _)| *v == value) {
            Some(at) => at,
            None => {
                self.seen.push((value, serde_json::value::to_raw_value(value)?));
                self.seen.len() - 1
            }
        };
        Ok(&self.seen[at].1)
    }
}

/// Appends `items` to the list at `path`: the whole list at once when it does not exist yet
/// (`create`), else one operation per item at `path/-`.
fn add<S: SerializeSeq>(ops: &mut S, path: &str, create: bool, items: &[&RawValue]) -> Result<(), S::Error> {
    if create {
        return ops.serialize_element(&Add {
            op: "add",
            path,
            value: items,
        });
    }
    let path = format!("{path}/-");
    for item in items {
        ops.serialize_element(&Add {
            op: "add",
            path: &path,
            value: item,
        })?;
    }
    Ok(())
}

/// Computes what the webhook does to a typed `pod`, whose ServiceAccount has metadata `sa`
/// (`wif mutate`, tests). The same as [`mutate_view`] on views of them.
pub fn mutate(pod: &Pod, sa: &ObjectMeta, cfg: &MutationConfig) -> Result<Mutation, Denial> {
    mutate_view(&PodView::from(pod), &MetaView::from(sa), cfg)
}

/// Computes what the webhook does to `pod`, whose ServiceAccount has metadata `sa`.
///
/// The namespace in messages is the pod's, falling back to the ServiceAccount's (pods created by
/// controllers arrive without one; the admission server fills it in from the request).
pub fn mutate_view(pod: &PodView<'_>, sa: &MetaView<'_>, cfg: &MutationConfig) -> Result<Mutation, Denial> {
    let meta = &pod.metadata;
    let label = meta.labels.get(USE_LABEL);
    if label != Some(USE_LABEL_VALUE) {
        let mut warnings = Vec::new();
        if let Some(value) = label.filter(|v| v.trim().eq_ignore_ascii_case(USE_LABEL_VALUE)) {
            warnings.push(format!(
                "label {USE_LABEL}={value:?} on pod {}: only the exact value \"true\" enables workload \
                 identity; the pod is left unchanged",
                pod_ref(pod, sa)
            ));
        }
        return Ok(Mutation {
            edits: Vec::new(),
            warnings,
        });
    }
    let pod_name = pod_ref(pod, sa);
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Mutation {
            edits: Vec::new(),
            warnings: vec![format!("pod {pod_name} has no spec; nothing to inject")],
        });
    };

    let expiration = token_expiration(pod, sa, &pod_name)?;
    let audience = audience(pod, sa, &pod_name, cfg)?;
    let extra_tokens = extra_tokens(meta, &pod_name)?;
    let named = named_identities(sa);
    let assigned = container_identities(pod, spec, sa, &named, &pod_name)?;
    let skip = skip_containers(meta);
    let volumes = spec.volumes();

    let mut edits = Vec::new();
    match volumes.iter().find(|v| v.name == TOKEN_VOLUME_NAME) {
        Some(v) if v.projects_token_at(TOKEN_FILE_NAME) => {
            // The user's own token volume (or ours, on reinvocation): their override. It must
            // already carry the extra tokens asked for; wif does not edit a volume it did not add.
            if let Some((file, _)) = extra_tokens.iter().find(|(file, _)| !v.projects_token_at(file)) {
                return Err(Denial::InvalidAnnotation {
                    object: format!("pod {pod_name}"),
                    key: EXTRA_TOKEN_AUDIENCES_ANNOTATION,
                    value: meta
                        .annotations
                        .get(EXTRA_TOKEN_AUDIENCES_ANNOTATION)
                        .unwrap_or_default()
                        .to_owned(),
                    reason: format!(
                        "the pod's own volume {TOKEN_VOLUME_NAME:?} does not project the file {file:?}; add a \
                         serviceAccountToken source with that path to it, or let wif add the volume"
                    ),
                });
            }
        }
        Some(_) => return Err(Denial::VolumeNameCollision { pod: pod_name }),
        None => {
            if let Some(other) = volumes.iter().find(|v| v.projects_token_at(TOKEN_FILE_NAME)) {
                return Err(Denial::TokenPathCollision {
                    pod: pod_name,
                    volume: other.name.to_string(),
                });
            }
            edits.push(Edit::AddVolume {
                volume: Box::new(token_volume(audience, expiration, &extra_tokens)),
                create: volumes.is_empty(),
            });
        }
    }

    let client_id = sa.annotations.get(CLIENT_ID_ANNOTATION).filter(|v| !v.is_empty());
    let tenant_id = sa
        .annotations
        .get(TENANT_ID_ANNOTATION)
        .filter(|v| !v.is_empty())
        .unwrap_or(cfg.tenant_id.as_str());
    let all = spec
        .init_containers()
        .iter()
        .enumerate()
        .map(|(i, c)| (ContainerKind::Init, i, c))
        .chain(
            spec.containers()
                .iter()
                .enumerate()
                .map(|(i, c)| (ContainerKind::Regular, i, c)),
        );
    for (kind, index, container) in all {
        if skip.contains(container.name.trim()) {
            continue;
        }
        let mounts = container.volume_mounts();
        let token_file = match mounts.iter().find(|m| m.name == TOKEN_VOLUME_NAME) {
            Some(own) => token_file_for(own),
            None => {
                if let Some(m) = mounts.iter().find(|m| same_path(&m.mount_path, TOKEN_MOUNT_PATH)) {
                    return Err(Denial::MountPathCollision {
                        pod: pod_name,
                        container: container.name.to_string(),
                        volume: m.name.to_string(),
                    });
                }
                edits.push(Edit::AddMount {
                    kind,
                    index,
                    mount: token_mount(),
                    create: mounts.is_empty(),
                });
                Cow::Borrowed(TOKEN_FILE_PATH)
            }
        };
        let env = container.env();
        let (client_id, tenant_id) = match assigned.iter().find(|(c, _)| *c == container.name.as_ref()) {
            Some((_, identity)) => (identity.client_id, identity.tenant_id.unwrap_or(tenant_id)),
            None => (client_id.unwrap_or_default(), tenant_id),
        };
        let desired = [
            (ENV_CLIENT_ID, client_id),
            (ENV_TENANT_ID, tenant_id),
            (ENV_FEDERATED_TOKEN_FILE, token_file.as_ref()),
            (ENV_AUTHORITY_HOST, cfg.authority_host.as_str()),
        ];
        let named_vars = named.iter().flat_map(|n| {
            std::iter::once((n.client_env.as_str(), n.client_id))
                .chain(n.tenant_env.as_deref().zip(n.tenant_id))
        });
        let vars: Vec<EnvVar> = desired
            .into_iter()
            .chain(named_vars)
            .filter(|(name, value)| !value.is_empty() && !env.iter().any(|e| e.name == *name))
            .map(|(name, value)| EnvVar {
                name: (*name).to_owned(),
                value: Some((*value).to_owned()),
                value_from: None,
            })
            .collect();
        if !vars.is_empty() {
            edits.push(Edit::AddEnv {
                kind,
                index,
                vars,
                create: env.is_empty(),
            });
        }
    }

    let warnings = warnings(
        pod,
        spec,
        sa,
        &skip,
        &pod_name,
        client_id.is_some() || !named.is_empty(),
    );
    Ok(Mutation { edits, warnings })
}

/// A named identity of the ServiceAccount: `client-id.<name>` (and `tenant-id.<name>`).
struct Named<'a> {
    name: &'a str,
    client_id: &'a str,
    tenant_id: Option<&'a str>,
    client_env: String,
    tenant_env: Option<String>,
}

/// The ServiceAccount's named identities with a non-empty client id, by name. Keys whose name is
/// not a lower-case DNS label are skipped (and warned about).
fn named_identities<'a>(sa: &'a MetaView<'_>) -> Vec<Named<'a>> {
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
fn container_identities<'a, 'n>(
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
fn audience<'a>(
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
fn extra_tokens<'a>(meta: &'a MetaView<'_>, pod_name: &str) -> Result<Vec<(String, &'a str)>, Denial> {
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
fn pod_ref(pod: &PodView<'_>, sa: &MetaView<'_>) -> String {
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

fn sa_ref(sa: &MetaView<'_>) -> String {
    let name = sa.name.as_deref().unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    match sa.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// Pod annotation, else ServiceAccount annotation, else the default; empty values count as unset.
fn token_expiration(pod: &PodView<'_>, sa: &MetaView<'_>, pod_name: &str) -> Result<i64, Denial> {
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

fn skip_containers<'a>(meta: &'a MetaView<'_>) -> BTreeSet<&'a str> {
    meta.annotations
        .get(SKIP_CONTAINERS_ANNOTATION)
        .map(|v| v.split(';').map(str::trim).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

fn same_path(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Where the token file is for a container that mounts our volume itself (at any path).
fn token_file_for<'a>(mount: &'a MountView<'_>) -> Cow<'a, str> {
    let dir = mount.mount_path.trim_end_matches('/');
    match mount.sub_path.as_deref() {
        None | Some("") => Cow::Owned(format!("{dir}/{TOKEN_FILE_NAME}")),
        Some(TOKEN_FILE_NAME) => Cow::Borrowed(dir),
        Some(_) => Cow::Borrowed(TOKEN_FILE_PATH),
    }
}

fn token_volume(audience: &str, expiration: i64, extra: &[(String, &str)]) -> Volume {
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

fn token_mount() -> VolumeMount {
    VolumeMount {
        name: TOKEN_VOLUME_NAME.to_owned(),
        mount_path: TOKEN_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

// === warnings ===

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

fn warnings(
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
        for key in map.keys() {
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
