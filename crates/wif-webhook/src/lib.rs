//! The wif mutating admission webhook.
//!
//! [`mutate()`] is the whole policy, as a pure function; [`admission`] decodes reviews and
//! encodes answers; [`server`] serves them over HTTPS with reloadable certificates ([`tls`]);
//! [`service_accounts`] caches ServiceAccount metadata; [`selfcert`] manages its own CA;
//! [`validate`] refuses bindings no `FederatedIdentityPolicy` grants (and malformed policies).

#![deny(missing_docs)]

pub mod admission;
pub mod metrics;
pub mod mutate;
pub mod run;
pub mod selfcert;
pub mod server;
pub mod service_accounts;
pub mod tls;
pub mod validate;

pub use mutate::{ContainerKind, Denial, Edit, Mutation, mutate};
