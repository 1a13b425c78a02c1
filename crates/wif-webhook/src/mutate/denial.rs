//! Why a pod is refused.

use wif_api::{
    CONTAINER_IDENTITIES_ANNOTATION, MAX_TOKEN_EXPIRATION_SECONDS, MIN_TOKEN_EXPIRATION_SECONDS,
    NAMED_CLIENT_ID_PREFIX, SKIP_CONTAINERS_ANNOTATION, TOKEN_EXPIRATION_ANNOTATION, TOKEN_FILE_NAME,
    TOKEN_MOUNT_PATH, TOKEN_VOLUME_NAME,
};

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
