//! The pod mutation: a pure function of the pod, its ServiceAccount's metadata and the cluster
//! configuration. No I/O, no clock, no client — the admission server and `wif mutate` both call it.
//!
//! The result is a list of [`Edit`]s rather than a rewritten pod: edits are encoded as a JSON
//! patch that only *adds* (so fields this crate's `k8s-openapi` does not know are never dropped,
//! a bug upstream has), and the same edits can be applied to a typed pod for `wif mutate`.

use std::borrow::Cow;

use k8s_openapi::{
    api::core::v1::{EnvVar, Pod, Volume, VolumeMount},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use wif_api::{
    CLIENT_ID_ANNOTATION, ENV_AUTHORITY_HOST, ENV_CLIENT_ID, ENV_FEDERATED_TOKEN_FILE, ENV_TENANT_ID,
    EXTRA_TOKEN_AUDIENCES_ANNOTATION, MutationConfig, TENANT_ID_ANNOTATION, TOKEN_FILE_NAME, TOKEN_FILE_PATH,
    TOKEN_MOUNT_PATH, TOKEN_VOLUME_NAME, USE_LABEL, USE_LABEL_VALUE,
};

use crate::view::{ContainerView, MetaView, PodView, SpecView};

mod denial;
mod inputs;
mod patch;
mod warnings;

pub use denial::Denial;
use inputs::{
    Named, audience, container_identities, extra_tokens, named_identities, pod_ref, same_path,
    skip_containers, token_expiration, token_file_for, token_mount, token_volume,
};
use warnings::warnings;

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
        return Ok(not_enabled(pod, sa, label));
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

    let mut edits = Vec::new();
    edits.extend(volume_edit(
        pod,
        spec,
        &pod_name,
        audience,
        expiration,
        &extra_tokens,
    )?);
    let client_id = sa.annotations.get(CLIENT_ID_ANNOTATION).filter(|v| !v.is_empty());
    let identity = Identity {
        client_id: client_id.unwrap_or_default(),
        tenant_id: sa
            .annotations
            .get(TENANT_ID_ANNOTATION)
            .filter(|v| !v.is_empty())
            .unwrap_or(cfg.tenant_id.as_str()),
        authority_host: cfg.authority_host.as_str(),
        assigned: &assigned,
        named: &named,
    };
    let init = spec
        .init_containers()
        .iter()
        .enumerate()
        .map(|(i, c)| (ContainerKind::Init, i, c));
    let regular = spec
        .containers()
        .iter()
        .enumerate()
        .map(|(i, c)| (ContainerKind::Regular, i, c));
    for (kind, index, container) in init.chain(regular) {
        if !skip.contains(container.name.trim()) {
            container_edits(&mut edits, kind, index, container, &identity, &pod_name)?;
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

/// A pod without the exact `use` label is left alone, with a warning when the label is nearly
/// right (`"True"`, `" true"`).
fn not_enabled(pod: &PodView<'_>, sa: &MetaView<'_>, label: Option<&str>) -> Mutation {
    let warnings = label
        .filter(|v| v.trim().eq_ignore_ascii_case(USE_LABEL_VALUE))
        .map(|value| {
            format!(
                "label {USE_LABEL}={value:?} on pod {}: only the exact value \"true\" enables workload \
                 identity; the pod is left unchanged",
                pod_ref(pod, sa)
            )
        })
        .into_iter()
        .collect();
    Mutation {
        edits: Vec::new(),
        warnings,
    }
}

/// The token volume to add, if the pod does not have it; a pod whose own volumes collide with it
/// is refused.
fn volume_edit(
    pod: &PodView<'_>,
    spec: &SpecView<'_>,
    pod_name: &str,
    audience: &str,
    expiration: i64,
    extra_tokens: &[(String, &str)],
) -> Result<Option<Edit>, Denial> {
    let volumes = spec.volumes();
    match volumes.iter().find(|v| v.name == TOKEN_VOLUME_NAME) {
        Some(v) if v.projects_token_at(TOKEN_FILE_NAME) => {
            // The user's own token volume (or ours, on reinvocation): their override. It must
            // already carry the extra tokens asked for; wif does not edit a volume it did not add.
            match extra_tokens.iter().find(|(file, _)| !v.projects_token_at(file)) {
                Some((file, _)) => Err(Denial::InvalidAnnotation {
                    object: format!("pod {pod_name}"),
                    key: EXTRA_TOKEN_AUDIENCES_ANNOTATION,
                    value: pod
                        .metadata
                        .annotations
                        .get(EXTRA_TOKEN_AUDIENCES_ANNOTATION)
                        .unwrap_or_default()
                        .to_owned(),
                    reason: format!(
                        "the pod's own volume {TOKEN_VOLUME_NAME:?} does not project the file {file:?}; add a \
                         serviceAccountToken source with that path to it, or let wif add the volume"
                    ),
                }),
                None => Ok(None),
            }
        }
        Some(_) => Err(Denial::VolumeNameCollision {
            pod: pod_name.to_owned(),
        }),
        None => match volumes.iter().find(|v| v.projects_token_at(TOKEN_FILE_NAME)) {
            Some(other) => Err(Denial::TokenPathCollision {
                pod: pod_name.to_owned(),
                volume: other.name.to_string(),
            }),
            None => Ok(Some(Edit::AddVolume {
                volume: Box::new(token_volume(audience, expiration, extra_tokens)),
                create: volumes.is_empty(),
            })),
        },
    }
}

/// Who the containers authenticate as: the ServiceAccount's identity, unless
/// `container-identities` assigns a container one of its named identities.
struct Identity<'a, 'n> {
    client_id: &'a str,
    tenant_id: &'a str,
    authority_host: &'a str,
    assigned: &'n [(&'a str, &'n Named<'a>)],
    named: &'n [Named<'a>],
}

/// The mount and variables one container lacks; a container with something else at the token's
/// mount path is refused.
fn container_edits(
    edits: &mut Vec<Edit>,
    kind: ContainerKind,
    index: usize,
    container: &ContainerView<'_>,
    identity: &Identity<'_, '_>,
    pod_name: &str,
) -> Result<(), Denial> {
    let mounts = container.volume_mounts();
    let token_file = match mounts.iter().find(|m| m.name == TOKEN_VOLUME_NAME) {
        Some(own) => token_file_for(own),
        None => {
            if let Some(m) = mounts.iter().find(|m| same_path(&m.mount_path, TOKEN_MOUNT_PATH)) {
                return Err(Denial::MountPathCollision {
                    pod: pod_name.to_owned(),
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
    let (client_id, tenant_id) = match identity
        .assigned
        .iter()
        .find(|(c, _)| *c == container.name.as_ref())
    {
        Some((_, named)) => (named.client_id, named.tenant_id.unwrap_or(identity.tenant_id)),
        None => (identity.client_id, identity.tenant_id),
    };
    let desired = [
        (ENV_CLIENT_ID, client_id),
        (ENV_TENANT_ID, tenant_id),
        (ENV_FEDERATED_TOKEN_FILE, token_file.as_ref()),
        (ENV_AUTHORITY_HOST, identity.authority_host),
    ];
    let named_vars = identity.named.iter().flat_map(|n| {
        std::iter::once((n.client_env.as_str(), n.client_id)).chain(n.tenant_env.as_deref().zip(n.tenant_id))
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
    Ok(())
}
