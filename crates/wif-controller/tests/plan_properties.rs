//! Properties of `plan()` over generated identities (names, issuers, subjects, audiences and
//! descriptions drawn from small sets, so that collisions with the desired credential, other
//! bindings' markers and hand-made credentials are common):
//! - it never updates or deletes a credential wif does not own, and adopts only an identical,
//!   unmarked one;
//! - it never creates beyond the per-identity limit;
//! - carrying out a plan that is not blocked, then planning again, plans nothing (idempotent).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use wif_controller::{
    azure::{CredentialSpec, FederatedCredential},
    naming,
    plan::{Backend, Ownership, Step, plan},
};

const CLUSTER: &str = "c1";
const ISSUER: &str = "https://issuer.example/cluster/";
const SUBJECT: &str = "system:serviceaccount:payments:api";
const AUDIENCE: &str = "api://AzureADTokenExchange";

fn desired(backend: Backend, name: &str) -> CredentialSpec {
    CredentialSpec {
        name: name.to_owned(),
        issuer: ISSUER.to_owned(),
        subject: SUBJECT.to_owned(),
        audience: AUDIENCE.to_owned(),
        description: (backend == Backend::Graph).then(|| naming::description(CLUSTER, "payments", "api")),
    }
}

fn credential() -> impl Strategy<Value = FederatedCredential> {
    let default_name = naming::default_credential_name(CLUSTER, "payments", "api");
    (
        prop::sample::select(vec![
            default_name,
            "custom".into(),
            "hand-made".into(),
            "other".into(),
        ]),
        prop::sample::select(vec![ISSUER, "https://other.example/"]),
        prop::sample::select(vec![SUBJECT, "system:serviceaccount:payments:other"]),
        prop::sample::select(vec![AUDIENCE, "api://other"]),
        prop::sample::select(vec![
            None,
            Some(naming::description(CLUSTER, "payments", "api")),
            Some(naming::description(CLUSTER, "payments", "another-binding")),
            Some("created by hand".to_owned()),
        ]),
    )
        .prop_map(
            |(name, issuer, subject, audience, description)| FederatedCredential {
                id: String::new(),
                name,
                issuer: issuer.to_owned(),
                subject: subject.to_owned(),
                audiences: vec![audience.to_owned()],
                description,
            },
        )
}

/// An identity's credentials as Entra keeps them: names and issuer+subject pairs unique.
fn observed() -> impl Strategy<Value = Vec<FederatedCredential>> {
    prop::collection::vec(credential(), 0..6).prop_map(|all| {
        let mut kept: Vec<FederatedCredential> = Vec::new();
        for c in all {
            let taken = kept.iter().any(|k| {
                k.name.eq_ignore_ascii_case(&c.name) || (k.issuer == c.issuer && k.subject == c.subject)
            });
            if !taken {
                kept.push(FederatedCredential {
                    id: format!("id-{}", kept.len()),
                    ..c
                });
            }
        }
        kept
    })
}

#[derive(Debug)]
struct Case {
    desired: CredentialSpec,
    observed: Vec<FederatedCredential>,
    ours: Ownership,
    limit: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![Backend::Graph, Backend::Arm]),
        prop::sample::select(vec![
            naming::default_credential_name(CLUSTER, "payments", "api"),
            "custom".to_owned(),
        ]),
        observed(),
        prop::option::of(0usize..6),
        any::<bool>(),
        1usize..6,
    )
        .prop_map(|(backend, name, observed, recorded, record_name, limit)| {
            let recorded = recorded.and_then(|i| observed.get(i));
            let mut names = vec![naming::default_credential_name(CLUSTER, "payments", "api")];
            names.extend(recorded.filter(|_| record_name).map(|c| c.name.clone()));
            Case {
                desired: desired(backend, &name),
                ours: Ownership {
                    backend,
                    marker: naming::marker(CLUSTER, "payments", "api"),
                    names,
                    recorded_id: recorded.map(|c| c.id.clone()),
                },
                observed,
                limit,
            }
        })
}

/// What Entra holds after `steps`.
fn carry_out(
    observed: &[FederatedCredential],
    desired: &CredentialSpec,
    steps: &[Step],
) -> Vec<FederatedCredential> {
    let mut now = observed.to_vec();
    let written = |id: &str| FederatedCredential {
        id: id.to_owned(),
        name: desired.name.clone(),
        issuer: desired.issuer.clone(),
        subject: desired.subject.clone(),
        audiences: vec![desired.audience.clone()],
        description: desired.description.clone(),
    };
    for step in steps {
        match step {
            Step::Create => now.push(written("created")),
            Step::Update { id, .. } => {
                let c = now
                    .iter_mut()
                    .find(|c| &c.id == id)
                    .expect("updates an existing credential");
                *c = written(id);
            }
            Step::Delete { id, .. } => now.retain(|c| &c.id != id),
        }
    }
    now
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_touches_a_credential_wif_does_not_own(c in case()) {
        let p = plan(&c.desired, &c.observed, &c.ours, c.limit);
        for step in &p.steps {
            match step {
                Step::Create => {}
                Step::Delete { id, .. } | Step::Update { id, adopt: false, .. } => {
                    let target = c.observed.iter().find(|o| &o.id == id).expect("an observed credential");
                    prop_assert!(c.ours.owns(target), "{step:?} on {target:?}");
                }
                Step::Update { id, adopt: true, .. } => {
                    let target = c.observed.iter().find(|o| &o.id == id).expect("an observed credential");
                    prop_assert!(c.desired.matches(target, false), "adopts only an identical credential");
                    prop_assert!(!naming::has_any_marker(target.description.as_deref()), "never another binding's");
                }
            }
        }
        if p.blocked.is_some() {
            prop_assert!(p.steps.is_empty(), "a conflict writes nothing");
        }
    }

    #[test]
    fn never_creates_beyond_the_limit(c in case()) {
        let p = plan(&c.desired, &c.observed, &c.ours, c.limit);
        if p.steps.contains(&Step::Create) {
            let after = carry_out(&c.observed, &c.desired, &p.steps);
            prop_assert!(after.len() <= c.limit, "{} credentials, limit {}", after.len(), c.limit);
        }
    }

    #[test]
    fn a_carried_out_plan_plans_nothing_more(c in case()) {
        let p = plan(&c.desired, &c.observed, &c.ours, c.limit);
        if p.blocked.is_some() {
            return Ok(()); // a conflict writes nothing: nothing to carry out
        }
        let after = carry_out(&c.observed, &c.desired, &p.steps);
        // What the controller records after a write: the credential now at the desired name.
        let recorded = after.iter().find(|a| a.name.eq_ignore_ascii_case(&c.desired.name)).expect("the desired credential exists");
        let ours = Ownership {
            names: [c.ours.names.clone(), vec![recorded.name.clone()]].concat(),
            recorded_id: Some(recorded.id.clone()),
            ..c.ours.clone()
        };
        let again = plan(&c.desired, &after, &ours, c.limit);
        prop_assert!(again.is_in_sync(), "{:?} after {:?}", again, p.steps);
    }
}
