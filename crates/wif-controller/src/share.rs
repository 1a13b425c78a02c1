//! Bindings of one ServiceAccount and audience share one credential per identity: Entra refuses
//! a second credential with the same issuer and subject on an identity, and one credential
//! trusting that subject and audience serves them all. Ownership of that credential is derived
//! from the set of bindings that want it, and it is reference counted: a binding that goes
//! keeps it for the others.
//!
//! Pure: which credential serves a binding without a write ([`shared`]), and what a binding
//! that goes does to each credential it owns ([`release`]).

use crate::{
    azure::{CredentialSpec, FederatedCredential},
    plan::{Backend, Ownership},
};

/// Another binding of the same ServiceAccount and audience (alive: not being deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharer {
    /// `namespace/name`, for Events.
    pub binding: String,
    /// Its ownership on this identity.
    pub ownership: Ownership,
    /// The credential it wants on this identity.
    pub desired: CredentialSpec,
}

/// The credential that serves `desired` without a write: one trusting exactly its issuer,
/// subject and audience, owned by a sharer (whatever its name: it may even be this binding's
/// own name, when a binding that went and came back handed it over meanwhile), or owned by this
/// binding under another name (kept: deleting it to create it again under the new name would cut
/// running pods off between the two writes). `None`: the plan decides.
pub fn shared<'a>(
    desired: &CredentialSpec,
    observed: &'a [FederatedCredential],
    ours: &Ownership,
    sharers: &[Sharer],
) -> Option<&'a FederatedCredential> {
    let by_sharer = |c: &FederatedCredential| sharers.iter().any(|s| s.ownership.owns(c));
    if let Some(c) = observed
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(&desired.name))
    {
        return (!ours.owns(c) && desired.matches(c, false) && by_sharer(c)).then_some(c);
    }
    observed
        .iter()
        .find(|c| desired.matches(c, false) && (ours.owns(c) || by_sharer(c)))
}

/// What a binding that goes does to one credential it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Nobody else wants it (or the one who does cannot take it over): delete it.
    Delete,
    /// Kept: the sharer at this index wants it and already owns it (ARM: by the name its status
    /// recorded).
    Keep(usize),
    /// Kept and handed over to the sharer at this index: on Graph its description (the ownership
    /// marker) is rewritten to that binding's.
    HandOver(usize),
}

/// What happens to credential `c`, owned by a binding that goes, given the bindings that share
/// its ServiceAccount and audience.
pub fn release(c: &FederatedCredential, backend: Backend, sharers: &[Sharer]) -> Release {
    let wanting = || {
        sharers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.desired.matches(c, false))
    };
    if let Some((i, _)) = wanting().find(|(_, s)| s.ownership.owns(c)) {
        return Release::Keep(i);
    }
    match (backend, wanting().next()) {
        // A Graph description carries the marker: rewriting it hands the credential over.
        (Backend::Graph, Some((i, _))) => Release::HandOver(i),
        // An ARM credential is owned by name, and a name never changes: only a sharer whose
        // status recorded this name can take it over; otherwise it goes, and the sharer
        // creates its own.
        _ => Release::Delete,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;
    use crate::naming;

    const CLUSTER: &str = "c1";
    const ISSUER: &str = "https://issuer.example/";
    const SUBJECT: &str = "system:serviceaccount:payments:api";
    const AUD: &str = "api://AzureADTokenExchange";

    fn desired(backend: Backend, binding: &str) -> CredentialSpec {
        CredentialSpec {
            name: naming::default_credential_name(CLUSTER, "payments", binding),
            issuer: ISSUER.into(),
            subject: SUBJECT.into(),
            audience: AUD.into(),
            description: (backend == Backend::Graph)
                .then(|| naming::description(CLUSTER, "payments", binding)),
        }
    }

    fn ownership(backend: Backend, binding: &str, recorded: Option<&str>) -> Ownership {
        let mut names = vec![naming::default_credential_name(CLUSTER, "payments", binding)];
        names.extend(recorded.map(str::to_owned));
        Ownership {
            backend,
            marker: naming::marker(CLUSTER, "payments", binding),
            names,
            recorded_id: None,
        }
    }

    fn sharer(backend: Backend, binding: &str, recorded: Option<&str>) -> Sharer {
        Sharer {
            binding: format!("payments/{binding}"),
            ownership: ownership(backend, binding, recorded),
            desired: desired(backend, binding),
        }
    }

    /// The credential `binding` created.
    fn created_by(backend: Backend, binding: &str) -> FederatedCredential {
        let d = desired(backend, binding);
        FederatedCredential {
            id: format!("id-{binding}"),
            name: d.name,
            issuer: d.issuer,
            subject: d.subject,
            audiences: vec![d.audience],
            description: d.description,
        }
    }

    #[rstest]
    #[case::graph_sharer_owns(Backend::Graph, vec!["a"], Some(0))]
    #[case::arm_sharer_owns(Backend::Arm, vec!["a"], Some(0))]
    #[case::no_sharer(Backend::Graph, vec![], None)]
    #[case::another_subject_only(Backend::Arm, vec!["x"], None)]
    fn the_second_binding_shares_the_first_ones_credential(
        #[case] backend: Backend,
        #[case] sharers: Vec<&str>,
        #[case] want: Option<usize>,
    ) {
        let observed = vec![created_by(backend, "a")];
        let mut sharers: Vec<Sharer> = sharers.iter().map(|s| sharer(backend, s, None)).collect();
        if let Some(s) = sharers.iter_mut().find(|s| s.binding == "payments/x") {
            // Another binding of this cluster, another ServiceAccount: owns nothing here.
            s.ownership.marker = naming::marker(CLUSTER, "payments", "x");
        }
        let got = shared(
            &desired(backend, "b"),
            &observed,
            &ownership(backend, "b", None),
            &sharers,
        );
        assert_eq!(
            got.map(|c| c.name.clone()),
            want.map(|i| observed[i].name.clone())
        );
    }

    #[test]
    fn an_own_credential_at_the_desired_name_is_not_shared() {
        let observed = vec![created_by(Backend::Arm, "b")];
        let got = shared(
            &desired(Backend::Arm, "b"),
            &observed,
            &ownership(Backend::Arm, "b", None),
            &[sharer(Backend::Arm, "a", None)],
        );
        assert!(got.is_none(), "the plan handles it");
    }

    #[test]
    fn another_audience_is_not_shared() {
        let mut other = created_by(Backend::Graph, "a");
        other.audiences = vec!["api://other".into()];
        let observed = [other];
        let got = shared(
            &desired(Backend::Graph, "b"),
            &observed,
            &ownership(Backend::Graph, "b", None),
            &[sharer(Backend::Graph, "a", None)],
        );
        assert!(got.is_none());
    }

    #[test]
    fn a_handed_over_credential_is_kept_under_its_name() {
        // Graph: "a" went and handed its credential to "b" (b's marker in the description).
        let mut c = created_by(Backend::Graph, "a");
        c.description = desired(Backend::Graph, "b").description;
        let got = shared(
            &desired(Backend::Graph, "b"),
            std::slice::from_ref(&c),
            &ownership(Backend::Graph, "b", None),
            &[],
        );
        assert_eq!(got, Some(&c));
    }

    #[rstest]
    #[case::nobody_else(Backend::Graph, vec![], Release::Delete)]
    #[case::graph_hand_over(Backend::Graph, vec![("b", None)], Release::HandOver(0))]
    #[case::arm_recorded_keeps(Backend::Arm, vec![("b", Some("A"))], Release::Keep(0))]
    #[case::arm_unrecorded_deletes(Backend::Arm, vec![("b", None)], Release::Delete)]
    #[case::prefers_the_owner(Backend::Arm, vec![("b", None), ("c", Some("A"))], Release::Keep(1))]
    fn a_binding_that_goes_keeps_what_others_need(
        #[case] backend: Backend,
        #[case] sharers: Vec<(&str, Option<&str>)>,
        #[case] want: Release,
    ) {
        let c = created_by(backend, "a");
        let recorded = c.name.clone();
        let sharers: Vec<Sharer> = sharers
            .iter()
            .map(|(b, r)| sharer(backend, b, r.map(|_| recorded.as_str())))
            .collect();
        assert_eq!(release(&c, backend, &sharers), want);
    }

    proptest! {
        /// Bindings of one ServiceAccount come and go in any order: whoever remains is always
        /// served by the one credential, and it is deleted exactly when the last one goes.
        #[test]
        fn the_credential_lives_while_a_binding_wants_it(
            graph in any::<bool>(),
            order in prop::collection::vec(0usize..4, 1..12),
        ) {
            let backend = if graph { Backend::Graph } else { Backend::Arm };
            let names = ["a", "b", "c", "d"];
            // Who is alive, and which name each one's status recorded.
            let mut alive: Vec<(usize, Option<String>)> = Vec::new();
            let mut credential: Option<FederatedCredential> = None;
            for step in order {
                if let Some(pos) = alive.iter().position(|(b, _)| *b == step) {
                    // Binding `step` goes.
                    let (gone, recorded) = alive.remove(pos);
                    let ours = ownership(backend, names[gone], recorded.as_deref());
                    if let Some(c) = credential.clone().filter(|c| ours.owns(c)) {
                        let sharers: Vec<Sharer> = alive.iter().map(|(b, r)| sharer(backend, names[*b], r.as_deref())).collect();
                        match release(&c, backend, &sharers) {
                            Release::Delete => credential = None,
                            Release::Keep(i) => prop_assert!(sharers[i].ownership.owns(&c)),
                            Release::HandOver(i) => {
                                let mut c = c;
                                c.description = sharers[i].desired.description.clone();
                                credential = Some(c);
                            }
                        }
                    }
                } else {
                    alive.push((step, None));
                }
                // Every binding alive syncs: it is served by the credential, or creates it.
                for k in 0..alive.len() {
                    let (b, _) = alive[k].clone();
                    let d = desired(backend, names[b]);
                    let ours = ownership(backend, names[b], alive[k].1.as_deref());
                    let sharers: Vec<Sharer> = alive.iter().filter(|(o, _)| *o != b).map(|(o, r)| sharer(backend, names[*o], r.as_deref())).collect();
                    let observed: Vec<FederatedCredential> = credential.iter().cloned().collect();
                    let served = shared(&d, &observed, &ours, &sharers).cloned();
                    let name = match (served, &credential) {
                        (Some(c), _) => c.name,
                        (None, Some(c)) => {
                            // The plan's case: its own credential at its own name, else the
                            // plan would refuse (taken by someone else).
                            prop_assert!(
                                c.name.eq_ignore_ascii_case(&d.name) && ours.owns(c),
                                "{} is not served by {} ({:?})", names[b], c.name, c.description
                            );
                            c.name.clone()
                        }
                        (None, None) => {
                            let c = created_by(backend, names[b]);
                            credential = Some(c.clone());
                            c.name
                        }
                    };
                    alive[k].1 = Some(name);
                }
            }
            prop_assert_eq!(credential.is_some(), !alive.is_empty());
        }
    }
}
