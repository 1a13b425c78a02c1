//! Names and ownership markers: what makes a credential recognisably ours.
//!
//! - The default credential name is deterministic in (cluster, namespace, binding): a restart
//!   or a lost status finds the same credential again, and on ARM (no description field) the
//!   name *is* the ownership marker.
//! - On Graph the description carries `[wif-owner cluster=<id> binding=<ns>/<name>]`, so several
//!   clusters (or a blue/green pair) can share an application without touching each other's
//!   credentials.

use sha2::{Digest, Sha256};

/// Longest credential name accepted by both Graph and ARM.
pub(crate) const MAX_CREDENTIAL_NAME: usize = 120;
/// Characters of the hash suffix of a default name (base32: 5 bits each, 80 bits).
const HASH_CHARS: usize = 16;
/// Opening of the ownership marker in a Graph description.
pub(crate) const MARKER_PREFIX: &str = "[wif-owner ";
/// Longest field manager name the API server accepts.
const MAX_FIELD_MANAGER: usize = 128;

/// Field manager of every write the controller makes to bindings (finalizer, status).
pub(crate) const FIELD_MANAGER: &str = "wif-controller";

/// Whether `name` is valid on Graph and ARM: `^[a-zA-Z0-9][a-zA-Z0-9-_]{2,119}$`.
#[cfg(test)]
fn is_valid_credential_name(name: &str) -> bool {
    (3..=MAX_CREDENTIAL_NAME).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let mut buffer = 0u32;
    let mut bits = 0u32;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    base32_lower(&hasher.finalize())
}

/// The default credential name of a binding: `wif-<namespace>-<name>-<hash>`, the readable part
/// shortened (and dots turned into dashes) so the whole is at most 120 characters and valid on
/// both Graph and ARM; the hash covers the cluster identity, namespace and binding name.
pub fn default_credential_name(cluster_id: &str, namespace: &str, binding: &str) -> String {
    let hash: String = digest(&[cluster_id, namespace, binding])
        .chars()
        .take(HASH_CHARS)
        .collect();
    let readable: String = format!("wif-{namespace}-{binding}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let room = MAX_CREDENTIAL_NAME - HASH_CHARS - 1;
    let readable = readable[..readable.len().min(room)].trim_end_matches('-');
    format!("{readable}-{hash}")
}

/// The ownership marker of one binding in one cluster.
pub fn marker(cluster_id: &str, namespace: &str, binding: &str) -> String {
    format!("{MARKER_PREFIX}cluster={cluster_id} binding={namespace}/{binding}]")
}

/// The Graph description the controller writes: a sentence for humans plus the marker.
pub fn description(cluster_id: &str, namespace: &str, binding: &str) -> String {
    format!(
        "Managed by wif for FederatedIdentityBinding {namespace}/{binding}; do not edit. {}",
        marker(cluster_id, namespace, binding)
    )
}

/// Whether a description carries *some* wif ownership marker (ours or another binding's).
pub fn has_any_marker(description: Option<&str>) -> bool {
    description.is_some_and(|d| d.contains(MARKER_PREFIX))
}

/// Field manager of the ServiceAccount annotations written for one binding. One manager per
/// binding: two bindings of one ServiceAccount each own what they wrote, and server-side apply
/// refuses (instead of overwriting) a value another writer owns.
pub(crate) fn service_account_manager(binding: &str) -> String {
    let name = format!("wif-controller.{binding}");
    if name.len() <= MAX_FIELD_MANAGER {
        name
    } else {
        format!("wif-controller.{}", &digest(&[binding])[..32])
    }
}

/// Whether a cluster identity is usable inside names and markers.
pub(crate) fn is_valid_cluster_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const CLUSTER: &str = "5f0c6a1e-6a5d-4c52-9a3b-0d0f6f1f2e3d";

    #[rstest]
    #[case("payments", "api")]
    #[case("a", "b")]
    #[case("ns.with.dots", "binding.with.dots")]
    #[case(&"n".repeat(63), &"b".repeat(253))]
    fn default_names_are_valid_on_graph_and_arm(#[case] ns: &str, #[case] name: &str) {
        let n = default_credential_name(CLUSTER, ns, name);
        assert!(is_valid_credential_name(&n), "{n}");
        assert!(n.len() <= MAX_CREDENTIAL_NAME);
        assert!(n.starts_with("wif-"), "{n}");
    }

    #[test]
    fn default_names_are_deterministic_and_distinct() {
        let a = default_credential_name(CLUSTER, "payments", "api");
        assert_eq!(a, default_credential_name(CLUSTER, "payments", "api"));
        assert_ne!(a, default_credential_name("other-cluster", "payments", "api"));
        assert_ne!(a, default_credential_name(CLUSTER, "payments", "api2"));
        // the separator keeps "a"+"b-c" and "a-b"+"c" apart
        assert_ne!(
            default_credential_name(CLUSTER, "a", "b-c"),
            default_credential_name(CLUSTER, "a-b", "c")
        );
        assert!(a.starts_with("wif-payments-api-"), "{a}");
    }

    #[rstest]
    #[case("abc", true)]
    #[case("a_b-c", true)]
    #[case("ab", false)]
    #[case("-ab", false)]
    #[case("ab=", false)]
    #[case(&"a".repeat(120), true)]
    #[case(&"a".repeat(121), false)]
    fn credential_name_rule(#[case] name: &str, #[case] valid: bool) {
        assert_eq!(is_valid_credential_name(name), valid);
    }

    #[test]
    fn markers_identify_one_binding() {
        let d = description(CLUSTER, "payments", "api");
        assert!(d.contains(&marker(CLUSTER, "payments", "api")));
        assert!(!d.contains(&marker(CLUSTER, "payments", "ap")));
        assert!(has_any_marker(Some(&d)));
        assert!(!has_any_marker(Some("created by hand")));
        assert!(!has_any_marker(None));
        assert!(d.len() <= 600);
    }

    #[test]
    fn field_managers_fit() {
        assert_eq!(service_account_manager("api"), "wif-controller.api");
        let long = service_account_manager(&"x".repeat(253));
        assert!(long.len() <= 128, "{long}");
        assert_ne!(long, service_account_manager(&"y".repeat(253)));
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32_lower(b""), "");
    }

    #[test]
    fn cluster_ids() {
        assert!(is_valid_cluster_id(CLUSTER));
        assert!(is_valid_cluster_id("prod-westeurope"));
        assert!(!is_valid_cluster_id(""));
        assert!(!is_valid_cluster_id("has space"));
        assert!(!is_valid_cluster_id("close]bracket"));
    }
}
