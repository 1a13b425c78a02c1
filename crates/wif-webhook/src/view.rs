//! What the mutation reads of a pod and a ServiceAccount, and no more.
//!
//! The admission path decodes a review straight into these views: strings are borrowed from the
//! request body, and everything the mutation never reads (images, probes, resources, other
//! teams' annotations, `managedFields`) is skipped without being allocated. Decoding a whole
//! typed `Pod` costs several times the mutation itself; the views make the webhook's work per
//! request a small multiple of the transport's.
//!
//! The same views are built from typed objects ([`PodView::from`], [`MetaView::from`]) for
//! `wif mutate` and the tests, so there is one mutation for both.

use std::{borrow::Cow, fmt};

use k8s_openapi::{
    api::core::v1::{Container, Pod, Volume},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};
use wif_api::PREFIX;

/// A pod as the mutation sees it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodView<'a> {
    /// Names and the `azure.workload.identity/` labels and annotations.
    #[serde(borrow, default)]
    pub metadata: MetaView<'a>,
    /// Volumes and containers.
    #[serde(borrow, default)]
    pub spec: Option<SpecView<'a>>,
}

/// Object metadata, keeping only the labels and annotations under [`PREFIX`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetaView<'a> {
    /// `metadata.name`.
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub name: Option<Cow<'a, str>>,
    /// `metadata.generateName`.
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub generate_name: Option<Cow<'a, str>>,
    /// `metadata.namespace`.
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub namespace: Option<Cow<'a, str>>,
    /// Labels under [`PREFIX`].
    #[serde(borrow, default)]
    pub labels: WifKeys<'a>,
    /// Annotations under [`PREFIX`].
    #[serde(borrow, default)]
    pub annotations: WifKeys<'a>,
}

impl MetaView<'_> {
    /// The same metadata owning its strings (what the ServiceAccount cache keeps).
    pub fn into_owned(self) -> MetaView<'static> {
        MetaView {
            name: self.name.map(own),
            generate_name: self.generate_name.map(own),
            namespace: self.namespace.map(own),
            labels: self.labels.into_owned(),
            annotations: self.annotations.into_owned(),
        }
    }
}

/// The labels or annotations of an object whose keys start with [`PREFIX`], in input order.
/// Other keys are skipped while decoding; a repeated key keeps its last value, as a map would.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WifKeys<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> WifKeys<'a> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }

    /// The keys and values, in input order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// The keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }

    /// Number of keys kept.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `key` if it is under [`PREFIX`]; returns whether it was kept.
    pub fn insert(&mut self, key: Cow<'a, str>, value: Cow<'a, str>) -> bool {
        if !key.starts_with(PREFIX) {
            return false;
        }
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
        true
    }

    fn into_owned(self) -> WifKeys<'static> {
        WifKeys(self.0.into_iter().map(|(k, v)| (own(k), own(v))).collect())
    }
}

impl<'a, K: Into<Cow<'a, str>>, V: Into<Cow<'a, str>>> FromIterator<(K, V)> for WifKeys<'a> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut keys = WifKeys::default();
        for (k, v) in iter {
            keys.insert(k.into(), v.into());
        }
        keys
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for WifKeys<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = WifKeys<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(WifKeys::default())
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(WifKeys::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys = WifKeys::default();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    if key.starts_with(PREFIX) {
                        let Text(value) = map.next_value()?;
                        keys.insert(key, value);
                    } else {
                        // Values of other keys (last-applied-configuration, …) are never read.
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(keys)
            }
        }
        deserializer.deserialize_option(KeysVisitor)
    }
}

/// A string borrowed from the input unless it has escapes. (`Cow<str>` borrows only as a struct
/// field marked `borrow`; as a map key or value it would always copy.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// The pod spec as the mutation sees it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpecView<'a> {
    /// `spec.serviceAccountName`.
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub service_account_name: Option<Cow<'a, str>>,
    /// `spec.volumes`.
    #[serde(borrow, default)]
    pub volumes: Option<Vec<VolumeView<'a>>>,
    /// `spec.initContainers`.
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<ContainerView<'a>>>,
    /// `spec.containers`.
    #[serde(borrow, default)]
    pub containers: Option<Vec<ContainerView<'a>>>,
}

impl SpecView<'_> {
    /// The volumes, empty when absent.
    pub fn volumes(&self) -> &[VolumeView<'_>] {
        self.volumes.as_deref().unwrap_or_default()
    }

    /// The init containers, empty when absent.
    pub fn init_containers(&self) -> &[ContainerView<'_>] {
        self.init_containers.as_deref().unwrap_or_default()
    }

    /// The containers, empty when absent.
    pub fn containers(&self) -> &[ContainerView<'_>] {
        self.containers.as_deref().unwrap_or_default()
    }
}

/// A volume: its name, and whether it projects a ServiceAccount token at the SDKs' file name.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct VolumeView<'a> {
    /// `name`.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// `projected`.
    #[serde(borrow, default)]
    pub projected: Option<ProjectedView<'a>>,
}

impl VolumeView<'_> {
    /// Whether a source projects a ServiceAccount token at `path`.
    pub fn projects_token_at(&self, path: &str) -> bool {
        self.projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.service_account_token.as_ref())
            .any(|t| t.path == path)
    }
}

/// `volume.projected`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ProjectedView<'a> {
    /// `sources`.
    #[serde(borrow, default)]
    pub sources: Option<Vec<ProjectionView<'a>>>,
}

/// One projected source.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionView<'a> {
    /// `serviceAccountToken`.
    #[serde(borrow, default)]
    pub service_account_token: Option<TokenProjectionView<'a>>,
}

/// `serviceAccountToken` of a projected source.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TokenProjectionView<'a> {
    /// `path`.
    #[serde(borrow, default)]
    pub path: Cow<'a, str>,
}

/// A container: its name, the names of its variables, its mounts.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView<'a> {
    /// `name`.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// `env`, names only.
    #[serde(borrow, default)]
    pub env: Option<Vec<EnvView<'a>>>,
    /// `volumeMounts`.
    #[serde(borrow, default)]
    pub volume_mounts: Option<Vec<MountView<'a>>>,
}

impl ContainerView<'_> {
    /// The variables, empty when absent.
    pub fn env(&self) -> &[EnvView<'_>] {
        self.env.as_deref().unwrap_or_default()
    }

    /// The mounts, empty when absent.
    pub fn volume_mounts(&self) -> &[MountView<'_>] {
        self.volume_mounts.as_deref().unwrap_or_default()
    }
}

/// An environment variable's name.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct EnvView<'a> {
    /// `name`.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
}

/// A volume mount.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MountView<'a> {
    /// `name`.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// `mountPath`.
    #[serde(borrow, default)]
    pub mount_path: Cow<'a, str>,
    /// `subPath`.
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub sub_path: Option<Cow<'a, str>>,
}

fn opt_text<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<Text<'a>>::deserialize(d)?.map(|t| t.0))
}

fn own(s: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(s.into_owned())
}

fn borrowed(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(Cow::Borrowed)
}

fn wif_keys(map: &Option<std::collections::BTreeMap<String, String>>) -> WifKeys<'_> {
    map.iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

impl<'a> From<&'a ObjectMeta> for MetaView<'a> {
    fn from(meta: &'a ObjectMeta) -> Self {
        MetaView {
            name: borrowed(&meta.name),
            generate_name: borrowed(&meta.generate_name),
            namespace: borrowed(&meta.namespace),
            labels: wif_keys(&meta.labels),
            annotations: wif_keys(&meta.annotations),
        }
    }
}

impl<'a> From<&'a Pod> for PodView<'a> {
    fn from(pod: &'a Pod) -> Self {
        PodView {
            metadata: (&pod.metadata).into(),
            spec: pod.spec.as_ref().map(|spec| SpecView {
                service_account_name: borrowed(&spec.service_account_name),
                volumes: spec
                    .volumes
                    .as_ref()
                    .map(|v| v.iter().map(VolumeView::from).collect()),
                init_containers: spec
                    .init_containers
                    .as_ref()
                    .map(|c| c.iter().map(ContainerView::from).collect()),
                containers: Some(spec.containers.iter().map(ContainerView::from).collect()),
            }),
        }
    }
}

impl<'a> From<&'a Volume> for VolumeView<'a> {
    fn from(volume: &'a Volume) -> Self {
        VolumeView {
            name: Cow::Borrowed(&volume.name),
            projected: volume.projected.as_ref().map(|p| ProjectedView {
                sources: p.sources.as_ref().map(|sources| {
                    sources
                        .iter()
                        .map(|s| ProjectionView {
                            service_account_token: s.service_account_token.as_ref().map(|t| {
                                TokenProjectionView {
                                    path: Cow::Borrowed(&t.path),
                                }
                            }),
                        })
                        .collect()
                }),
            }),
        }
    }
}

impl<'a> From<&'a Container> for ContainerView<'a> {
    fn from(c: &'a Container) -> Self {
        ContainerView {
            name: Cow::Borrowed(&c.name),
            env: c.env.as_ref().map(|env| {
                env.iter()
                    .map(|e| EnvView {
                        name: Cow::Borrowed(&e.name),
                    })
                    .collect()
            }),
            volume_mounts: c.volume_mounts.as_ref().map(|mounts| {
                mounts
                    .iter()
                    .map(|m| MountView {
                        name: Cow::Borrowed(&m.name),
                        mount_path: Cow::Borrowed(&m.mount_path),
                        sub_path: borrowed(&m.sub_path),
                    })
                    .collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_wif_keys_and_borrows_plain_strings() {
        let json = br#"{"metadata":{"name":"p","labels":{"app":"x","azure.workload.identity/use":"true"},
            "annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"big\":[1,2,3]}",
            "azure.workload.identity/skip-containers":"a;b","azure.workload.identity/skip-containers":"c"}},
            "spec":{"containers":[{"name":"app","image":"i","env":[{"name":"A","value":"1"}]}]}}"#;
        let pod: PodView<'_> = serde_json::from_slice(json).unwrap();
        assert_eq!(pod.metadata.labels.len(), 1);
        assert_eq!(
            pod.metadata.labels.get("azure.workload.identity/use"),
            Some("true")
        );
        assert_eq!(pod.metadata.annotations.len(), 1, "repeated key keeps one entry");
        assert_eq!(
            pod.metadata
                .annotations
                .get("azure.workload.identity/skip-containers"),
            Some("c")
        );
        assert!(matches!(pod.metadata.name, Some(Cow::Borrowed("p"))));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.containers()[0].env()[0].name, "A");
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let json = br#"{"metadata":{"annotations":{"azure.workload.identity/skip-containers":"a\u003bb"}}}"#;
        let pod: PodView<'_> = serde_json::from_slice(json).unwrap();
        assert_eq!(
            pod.metadata
                .annotations
                .get("azure.workload.identity/skip-containers"),
            Some("a;b")
        );
    }

    #[test]
    fn null_maps_and_lists_are_empty() {
        let json =
            br#"{"metadata":{"labels":null,"annotations":null},"spec":{"volumes":null,"containers":null}}"#;
        let pod: PodView<'_> = serde_json::from_slice(json).unwrap();
        assert!(pod.metadata.labels.is_empty());
        let spec = pod.spec.unwrap();
        assert!(spec.volumes().is_empty() && spec.containers().is_empty());
    }

    #[test]
    fn wrong_types_in_read_fields_are_errors() {
        for json in [
            &br#"{"metadata":{"labels":{"azure.workload.identity/use":true}}}"#[..],
            br#"{"spec":{"containers":"app"}}"#,
            br#"{"spec":{"containers":[{"name":1}]}}"#,
        ] {
            assert!(
                serde_json::from_slice::<PodView<'_>>(json).is_err(),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn wrong_types_elsewhere_are_skipped() {
        let json = br#"{"metadata":{"labels":{"app":1}},"spec":{"containers":[{"name":"a","image":7}]}}"#;
        assert!(serde_json::from_slice::<PodView<'_>>(json).is_ok());
    }
}
