//! The wif mutating admission webhook.
//!
//! [`mutate_view()`] is the whole policy, as a pure function of the parts of a pod it reads
//! ([`view`]); [`mutate()`] runs it on a typed pod. [`admission`] decodes reviews straight into
//! those views and encodes answers; [`server`] serves them over HTTPS with reloadable certificates ([`tls`]);
//! [`service_accounts`] caches ServiceAccount metadata; [`selfcert`] manages its own CA;
//! [`validate`] refuses bindings no `FederatedIdentityPolicy` grants (and malformed policies).

pub mod admission;
pub mod coexist;
pub mod metrics;
pub mod mutate;
pub mod run;
pub mod selfcert;
pub mod server;
pub mod service_accounts;
mod skips;
pub mod tls;
mod validate;
mod view;

pub use mutate::{ContainerKind, Denial, Edit, Mutation, mutate, mutate_view};
pub use view::{MetaView, PodView};
