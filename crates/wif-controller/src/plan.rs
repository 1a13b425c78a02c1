//! What to do to an identity's credentials: a pure function of the desired credential, the
//! credentials Entra holds and what we own. No I/O; table-tested below.
//!
//! Rules:
//! - A credential is *ours* when it carries this binding's marker (Graph description), has a
//!   name we own (the deterministic name or the one recorded in status; ARM has no description)
//!   or the id recorded in status.
//! - The credential at the desired name is updated in place when it is ours, adopted when it is
//!   identical (same issuer, subject, audience; on Graph our marker is added, on ARM nothing is
//!   written) and left alone otherwise (a conflict).
//! - Any other credential with our issuer+subject is deleted when it is ours (a renamed
//!   binding) and is a conflict when it is not (Entra keeps issuer+subject unique per identity).
//! - Our credentials with other issuer/subject values are stale (e.g. the name changed with the
//!   subject) and deleted.
//! - A conflict means no write at all. Creating beyond the per-identity limit is refused up
//!   front, never by evicting someone else's credential.

use crate::azure::{CredentialSpec, FederatedCredential};

/// Which API holds the credentials (ownership is proven differently on each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Microsoft Graph (applications): ownership by description marker.
    Graph,
    /// ARM (user-assigned identities): ownership by name.
    Arm,
}

/// What identifies our credentials on one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// The backend.
    pub backend: Backend,
    /// The exact marker of this binding (Graph descriptions).
    pub marker: String,
    /// Names that are ours (case-insensitive): the deterministic default name and the name
    /// recorded in status.
    pub names: Vec<String>,
    /// The id recorded in status, if any.
    pub recorded_id: Option<String>,
}

impl Ownership {
    /// Whether `c` is ours.
    pub fn owns(&self, c: &FederatedCredential) -> bool {
        let by_marker = self.backend == Backend::Graph
            && c.description.as_deref().is_some_and(|d| d.contains(&self.marker));
        let by_name = self.names.iter().any(|n| n.eq_ignore_ascii_case(&c.name));
        let by_id = self
            .recorded_id
            .as_deref()
            .is_some_and(|id| id.eq_ignore_ascii_case(&c.id));
        match self.backend {
            // On Graph a name alone proves nothing (anyone can pick any name): the marker does,
            // or the id we recorded, unless another binding's marker is on it now.
            Backend::Graph => {
                by_marker || (by_id && !crate::naming::has_any_marker(c.description.as_deref()))
            }
            Backend::Arm => by_name || by_id,
        }
    }
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the desired credential.
    Create,
    /// Update the existing credential (same name) to the desired values.
    Update {
        /// Entra's id of the credential.
        id: String,
        /// Its name.
        name: String,
        /// Whether this takes ownership of an identical, unowned credential.
        adopt: bool,
    },
    /// Delete one of our credentials.
    Delete {
        /// Entra's id.
        id: String,
        /// Its name.
        name: String,
    },
}

/// Why nothing may be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// The desired name is held by a credential that is not ours and not identical.
    NameTaken {
        /// The holder's id.
        id: String,
        /// The name.
        name: String,
        /// Whether it carries another wif binding's marker.
        other_owner: bool,
    },
    /// Another credential, not ours, already holds the issuer+subject pair.
    IssuerSubjectTaken {
        /// Its id.
        id: String,
        /// Its name.
        name: String,
    },
    /// Creating would exceed the per-identity limit.
    CapacityExceeded {
        /// Credentials the identity keeps after our deletions.
        used: usize,
        /// The limit.
        limit: usize,
    },
}

/// The plan for one binding on one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Writes, in order (deletions first: issuer+subject must be free before a create).
    pub steps: Vec<Step>,
    /// Set when nothing may be written.
    pub blocked: Option<Blocked>,
    /// Whether an identical credential we did not own becomes ours.
    pub adopts: bool,
}

impl Plan {
    /// Nothing to write and nothing blocking.
    pub fn is_in_sync(&self) -> bool {
        self.steps.is_empty() && self.blocked.is_none()
    }
}

fn same_pair(desired: &CredentialSpec, c: &FederatedCredential) -> bool {
    c.issuer == desired.issuer && c.subject == desired.subject
}

/// Plans the writes that make `observed` hold `desired`, touching only what `ours` owns.
pub fn plan(
    desired: &CredentialSpec,
    observed: &[FederatedCredential],
    ours: &Ownership,
    limit: usize,
) -> Plan {
    let mut steps = Vec::new();
    let mut adopts = false;
    let at_name = observed
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(&desired.name));

    // Others holding our issuer+subject, and our stale credentials.
    for c in observed {
        if c.name.eq_ignore_ascii_case(&desired.name) {
            continue;
        }
        if ours.owns(c) {
            steps.push(Step::Delete {
                id: c.id.clone(),
                name: c.name.clone(),
            });
        } else if same_pair(desired, c) {
            return blocked(Blocked::IssuerSubjectTaken {
                id: c.id.clone(),
                name: c.name.clone(),
            });
        }
    }

    match at_name {
        Some(c) if ours.owns(c) => {
            if !desired.matches(c, ours.backend == Backend::Graph) {
                steps.push(Step::Update {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    adopt: false,
                });
            }
        }
        Some(c) => {
            let identical = desired.matches(c, false);
            let other_owner = crate::naming::has_any_marker(c.description.as_deref());
            if !identical || other_owner {
                return blocked(Blocked::NameTaken {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    other_owner,
                });
            }
            adopts = true;
            if ours.backend == Backend::Graph {
                // Identical: take ownership by adding our marker to the description.
                steps.push(Step::Update {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    adopt: true,
                });
            }
        }
        None => {
            let deleted = steps.len();
            let used = observed.len().saturating_sub(deleted);
            if used >= limit {
                return blocked(Blocked::CapacityExceeded { used, limit });
            }
            steps.push(Step::Create);
        }
    }
    Plan {
        steps,
        blocked: None,
        adopts,
    }
}

fn blocked(reason: Blocked) -> Plan {
    Plan {
        steps: Vec::new(),
        blocked: Some(reason),
        adopts: false,
    }
}

/// The deletions that remove every credential of ours from `observed` (binding deleted, or no
/// longer permitted).
pub(crate) fn plan_cleanup(observed: &[FederatedCredential], ours: &Ownership) -> Vec<Step> {
    observed
        .iter()
        .filter(|c| ours.owns(c))
        .map(|c| Step::Delete {
            id: c.id.clone(),
            name: c.name.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::naming;

    const ISSUER: &str = "https://oidc.example/cluster/";
    const SUBJECT: &str = "system:serviceaccount:payments:api";
    const AUD: &str = "api://AzureADTokenExchange";
    const CLUSTER: &str = "c1";
    const NAME: &str = "wif-payments-api-aaaaaaaaaaaaaaaa";

    fn desired(backend: Backend) -> CredentialSpec {
        CredentialSpec {
            name: NAME.into(),
            issuer: ISSUER.into(),
            subject: SUBJECT.into(),
            audience: AUD.into(),
            description: (backend == Backend::Graph).then(|| naming::description(CLUSTER, "payments", "api")),
        }
    }

    fn ours(backend: Backend) -> Ownership {
        Ownership {
            backend,
            marker: naming::marker(CLUSTER, "payments", "api"),
            names: vec![NAME.into()],
            recorded_id: None,
        }
    }

    fn fic(
        id: &str,
        name: &str,
        issuer: &str,
        subject: &str,
        aud: &str,
        description: Option<&str>,
    ) -> FederatedCredential {
        FederatedCredential {
            id: id.into(),
            name: name.into(),
            issuer: issuer.into(),
            subject: subject.into(),
            audiences: vec![aud.into()],
            description: description.map(Into::into),
        }
    }

    fn our_desc() -> String {
        naming::description(CLUSTER, "payments", "api")
    }

    fn mine(id: &str, name: &str) -> FederatedCredential {
        fic(id, name, ISSUER, SUBJECT, AUD, Some(&our_desc()))
    }

    fn filler(n: usize) -> Vec<FederatedCredential> {
        (0..n)
            .map(|i| {
                fic(
                    &format!("f{i}"),
                    &format!("other-{i}"),
                    ISSUER,
                    &format!("system:serviceaccount:x:sa{i}"),
                    AUD,
                    None,
                )
            })
            .collect()
    }

    fn update(id: &str, adopt: bool) -> Step {
        Step::Update {
            id: id.into(),
            name: NAME.into(),
            adopt,
        }
    }

    #[rstest]
    // empty identity → create
    #[case::create_graph(Backend::Graph, vec![], vec![Step::Create], None, false)]
    #[case::create_arm(Backend::Arm, vec![], vec![Step::Create], None, false)]
    // ours and identical → nothing
    #[case::in_sync_graph(Backend::Graph, vec![mine("1", NAME)], vec![], None, false)]
    #[case::in_sync_arm(Backend::Arm, vec![fic("1", NAME, ISSUER, SUBJECT, AUD, None)], vec![], None, false)]
    // name matches case-insensitively (Entra names are case-insensitive)
    #[case::name_case(Backend::Arm, vec![fic("1", &NAME.to_uppercase(), ISSUER, SUBJECT, AUD, None)], vec![], None, false)]
    // ours, audience drifted → update in place
    #[case::audience_drift(Backend::Graph, vec![fic("1", NAME, ISSUER, SUBJECT, "api://other", Some(&our_desc()))], vec![update("1", false)], None, false)]
    #[case::issuer_drift_arm(Backend::Arm, vec![fic("1", NAME, "https://old/", SUBJECT, AUD, None)], vec![update("1", false)], None, false)]
    // byte-exact: a trailing slash is drift
    #[case::trailing_slash(Backend::Arm, vec![fic("1", NAME, "https://oidc.example/cluster", SUBJECT, AUD, None)], vec![update("1", false)], None, false)]
    // ours on Graph, description edited but marker kept → corrected
    #[case::description_drift(Backend::Graph, vec![fic("1", NAME, ISSUER, SUBJECT, AUD, Some(&format!("edited {}", naming::marker(CLUSTER, "payments", "api"))))], vec![update("1", false)], None, false)]
    // identical, unowned, on Graph → adopt by writing the marker
    #[case::adopt_graph(Backend::Graph, vec![fic("1", NAME, ISSUER, SUBJECT, AUD, None)], vec![update("1", true)], None, true)]
    // identical at an explicit (unowned) name on ARM → adopt without a write
    #[case::adopt_arm_explicit(Backend::Arm, vec![fic("1", "explicit", ISSUER, SUBJECT, AUD, None)], vec![], None, true)]
    // name held by a different, unowned credential → conflict, no write
    #[case::name_taken(Backend::Graph, vec![fic("1", NAME, ISSUER, "system:serviceaccount:x:y", AUD, None)], vec![],
        Some(Blocked::NameTaken { id: "1".into(), name: NAME.into(), other_owner: false }), false)]
    // name held by another binding's credential, even identical → conflict
    #[case::other_owner(Backend::Graph, vec![fic("1", NAME, ISSUER, SUBJECT, AUD, Some(&naming::description("c2", "payments", "api")))], vec![],
        Some(Blocked::NameTaken { id: "1".into(), name: NAME.into(), other_owner: true }), false)]
    // foreign credential with our issuer+subject under another name → conflict, untouched
    #[case::foreign_pair(Backend::Graph, vec![fic("9", "hand-made", ISSUER, SUBJECT, AUD, None)], vec![],
        Some(Blocked::IssuerSubjectTaken { id: "9".into(), name: "hand-made".into() }), false)]
    #[case::foreign_pair_arm(Backend::Arm, vec![fic("9", "hand-made", ISSUER, SUBJECT, "api://x", None)], vec![],
        Some(Blocked::IssuerSubjectTaken { id: "9".into(), name: "hand-made".into() }), false)]
    // our credential under an old name (renamed binding) → delete it, then create
    #[case::renamed(Backend::Graph, vec![mine("1", "old-name")], vec![Step::Delete { id: "1".into(), name: "old-name".into() }, Step::Create], None, false)]
    // foreign credentials with other subjects are none of our business
    #[case::unrelated(Backend::Graph, filler(3), vec![Step::Create], None, false)]
    // at the limit → capacity exceeded, nothing evicted
    #[case::full(Backend::Arm, filler(20), vec![], Some(Blocked::CapacityExceeded { used: 20, limit: 20 }), false)]
    #[case::one_slot_left(Backend::Arm, filler(19), vec![Step::Create], None, false)]
    fn plans(
        #[case] backend: Backend,
        #[case] observed: Vec<FederatedCredential>,
        #[case] steps: Vec<Step>,
        #[case] blocked: Option<Blocked>,
        #[case] adopts: bool,
    ) {
        let mut d = desired(backend);
        if observed.iter().any(|c| c.name == "explicit") {
            d.name = "explicit".into();
        }
        let p = plan(&d, &observed, &ours(backend), 20);
        assert_eq!(p.steps, steps);
        assert_eq!(p.blocked, blocked);
        assert_eq!(p.adopts, adopts);
    }

    #[test]
    fn at_the_limit_an_owned_stale_credential_makes_room() {
        let mut observed = filler(19);
        observed.push(mine("1", "old-name"));
        let p = plan(&desired(Backend::Graph), &observed, &ours(Backend::Graph), 20);
        assert_eq!(
            p.steps,
            vec![
                Step::Delete {
                    id: "1".into(),
                    name: "old-name".into()
                },
                Step::Create
            ]
        );
    }

    #[test]
    fn graph_name_alone_is_not_ownership() {
        // A hand-made credential that happens to have our deterministic name but other values.
        let c = fic(
            "1",
            NAME,
            ISSUER,
            "system:serviceaccount:other:sa",
            AUD,
            Some("mine, not yours"),
        );
        assert!(!ours(Backend::Graph).owns(&c));
        // ... but on ARM the deterministic name is the marker.
        assert!(ours(Backend::Arm).owns(&c));
    }

    #[test]
    fn recorded_id_is_ownership_unless_another_marker_is_present() {
        let mut o = ours(Backend::Graph);
        o.recorded_id = Some("42".into());
        assert!(o.owns(&fic("42", "x", ISSUER, SUBJECT, AUD, None)));
        assert!(!o.owns(&fic(
            "42",
            "x",
            ISSUER,
            SUBJECT,
            AUD,
            Some(&naming::description("c2", "n", "b"))
        )));
    }

    #[test]
    fn cleanup_deletes_only_ours() {
        let mut observed = filler(2);
        observed.push(mine("1", NAME));
        observed.push(fic("2", "hand-made", ISSUER, SUBJECT, AUD, None));
        assert_eq!(
            plan_cleanup(&observed, &ours(Backend::Graph)),
            vec![Step::Delete {
                id: "1".into(),
                name: NAME.into()
            }]
        );
        assert!(plan_cleanup(&filler(3), &ours(Backend::Arm)).is_empty());
    }
}
