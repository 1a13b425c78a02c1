//! A [`Mutation`]'s edits as an RFC 6902 patch, or applied to a typed pod.

use json_patch::Patch;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde::ser::{SerializeSeq, Serializer};
use serde_json::value::RawValue;

use super::{ContainerKind, Edit, Mutation};

impl Mutation {
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
                    let path = ContainerList(*kind, *index, "volumeMounts");
                    add(&mut ops, path, *create, &[mounts.get(mount)?])?;
                }
                Edit::AddEnv {
                    kind,
                    index,
                    vars: list,
                    create,
                } => {
                    for var in list {
                        vars.get(var)?;
                    }
                    let encoded: Vec<&RawValue> = list.iter().filter_map(|v| vars.find(v)).collect();
                    add(&mut ops, ContainerList(*kind, *index, "env"), *create, &encoded)?;
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
struct Add<'a, P: std::fmt::Display, T: serde::Serialize + ?Sized> {
    op: &'static str,
    #[serde(serialize_with = "display")]
    path: P,
    value: &'a T,
}

/// A path written straight into the patch: no string is built for it.
fn display<S: Serializer>(path: &impl std::fmt::Display, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(path)
}

/// `/spec/<list>/<index>/<field>`: a field of one container.
#[derive(Clone, Copy)]
struct ContainerList(ContainerKind, usize, &'static str);

impl std::fmt::Display for ContainerList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/spec/{}/{}/{}", self.0.field(), self.1, self.2)
    }
}

/// `<list>/-`: the end of a list, where an item is appended.
struct End<P>(P);

impl<P: std::fmt::Display> std::fmt::Display for End<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/-", self.0)
    }
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
fn add<S: SerializeSeq, P: std::fmt::Display + Copy>(
    ops: &mut S,
    path: P,
    create: bool,
    items: &[&RawValue],
) -> Result<(), S::Error> {
    if create {
        return ops.serialize_element(&Add {
            op: "add",
            path,
            value: items,
        });
    }
    for item in items {
        ops.serialize_element(&Add {
            op: "add",
            path: End(path),
            value: item,
        })?;
    }
    Ok(())
}
