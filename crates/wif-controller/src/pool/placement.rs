//! Placement and accounting of pool bindings: pure functions of what the identities hold.
//!
//! Rules, in order:
//! 1. **Sticky**: the identity recorded in the binding's status is kept while it is still in the
//!    pool and usable, and either holds our credential or still has a free slot for it.
//! 2. **Adoption**: a credential of ours found on a usable identity of the pool (a crash between
//!    creating it and recording it) is kept there: never a second one.
//! 3. **Least used** usable identity with a free slot, ties by order in the pool.
//! 4. Otherwise the pool is full.
//!
//! An identity never receives a credential beyond `capacity` (every credential counts, foreign
//! ones included, plus slots reserved by placements recorded but not yet created), and never a
//! second credential with a subject it already trusts (Entra refuses duplicate issuer+subject).

/// What placement knows about one identity of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The identity's key ([`wif_api::PoolIdentity::key`]).
    pub key: String,
    /// Whether it could be read (resolved and listed).
    pub usable: bool,
    /// Credentials it holds (all of them, ours included) plus slots reserved for other bindings
    /// placed on it whose credential is not created yet.
    pub used: u32,
    /// Whether it holds this binding's credential.
    pub ours: bool,
    /// Whether a credential that is not ours already trusts this binding's issuer+subject.
    pub subject_taken: bool,
}

impl Candidate {
    fn fits(&self, capacity: u32) -> bool {
        self.usable && !self.subject_taken && self.used < capacity
    }
}

/// Where a binding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The recorded identity (index into the candidates).
    Keep(usize),
    /// An identity holding our credential although the status did not record it.
    Adopt(usize),
    /// A new placement on the least-used identity with a free slot.
    Place(usize),
    /// No usable identity has a free slot.
    Full,
}

impl Decision {
    /// The chosen identity, if any.
    pub fn index(self) -> Option<usize> {
        match self {
            Self::Keep(i) | Self::Adopt(i) | Self::Place(i) => Some(i),
            Self::Full => None,
        }
    }
}

/// Places one binding. `recorded` is the key of the identity its status names, if any.
pub fn place(candidates: &[Candidate], capacity: u32, recorded: Option<&str>) -> Decision {
    if let Some(i) = recorded.and_then(|r| candidates.iter().position(|c| c.key == r)) {
        let c = &candidates[i];
        if c.usable && !c.subject_taken && (c.ours || c.used < capacity) {
            return Decision::Keep(i);
        }
    }
    if let Some(i) = candidates
        .iter()
        .position(|c| c.usable && c.ours && !c.subject_taken)
    {
        return Decision::Adopt(i);
    }
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.fits(capacity))
        .min_by_key(|(i, c)| (c.used, *i))
        .map_or(Decision::Full, |(i, _)| Decision::Place(i))
}

/// Usage of a pool: per-identity free slots and the thresholds of its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Credentials on the usable identities.
    pub used: u32,
    /// Slots of the usable identities.
    pub capacity: u32,
    /// Whether `used` reached [`wif_api::pool::NEARLY_FULL_PERCENT`] of `capacity`.
    pub nearly_full: bool,
    /// Whether no usable identity has a free slot.
    pub full: bool,
}

/// Sums a pool's usage from `(usable, used)` per identity.
pub fn usage(identities: &[(bool, u32)], capacity_per_identity: u32) -> Usage {
    let usable: Vec<u32> = identities.iter().filter(|(ok, _)| *ok).map(|(_, u)| *u).collect();
    let used: u32 = usable.iter().map(|u| (*u).min(capacity_per_identity)).sum();
    let capacity = capacity_per_identity.saturating_mul(usable.len() as u32);
    let full = usable.iter().all(|u| *u >= capacity_per_identity);
    Usage {
        used,
        capacity,
        nearly_full: capacity > 0
            && u64::from(used) * 100 >= u64::from(capacity) * u64::from(wif_api::pool::NEARLY_FULL_PERCENT),
        full,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;

    fn c(key: &str, used: u32) -> Candidate {
        Candidate {
            key: key.into(),
            usable: true,
            used,
            ours: false,
            subject_taken: false,
        }
    }

    #[rstest]
    #[case::least_used(vec![c("a", 5), c("b", 3), c("c", 4)], None, Decision::Place(1))]
    #[case::ties_by_order(vec![c("a", 3), c("b", 3)], None, Decision::Place(0))]
    #[case::sticky_even_if_busier(vec![c("a", 19), c("b", 0)], Some("a"), Decision::Keep(0))]
    #[case::sticky_with_ours_when_full(
        vec![Candidate { ours: true, ..c("a", 20) }, c("b", 0)], Some("a"), Decision::Keep(0))]
    #[case::recorded_full_without_ours_moves(vec![c("a", 20), c("b", 7)], Some("a"), Decision::Place(1))]
    #[case::recorded_removed_from_pool(vec![c("b", 7), c("c", 2)], Some("gone"), Decision::Place(1))]
    #[case::recorded_unusable(
        vec![Candidate { usable: false, ours: true, ..c("a", 1) }, c("b", 9)], Some("a"), Decision::Place(1))]
    #[case::adopts_unrecorded(vec![c("a", 0), Candidate { ours: true, ..c("b", 20) }], None, Decision::Adopt(1))]
    #[case::skips_taken_subject(vec![Candidate { subject_taken: true, ..c("a", 0) }, c("b", 5)], None, Decision::Place(1))]
    #[case::skips_unusable(vec![Candidate { usable: false, ..c("a", 0) }, c("b", 5)], None, Decision::Place(1))]
    #[case::full(vec![c("a", 20), c("b", 21)], None, Decision::Full)]
    #[case::empty(vec![], None, Decision::Full)]
    fn decisions(#[case] candidates: Vec<Candidate>, #[case] recorded: Option<&str>, #[case] want: Decision) {
        assert_eq!(place(&candidates, 20, recorded), want);
    }

    #[test]
    fn usage_counts_usable_identities_and_thresholds() {
        let u = usage(&[(true, 18), (true, 18), (false, 0)], 20);
        assert_eq!((u.used, u.capacity, u.nearly_full, u.full), (36, 40, true, false));
        let u = usage(&[(true, 20), (true, 25)], 20);
        assert_eq!((u.used, u.capacity, u.nearly_full, u.full), (40, 40, true, true));
        let u = usage(&[(true, 3)], 20);
        assert!(!u.nearly_full && !u.full);
        let u = usage(&[(false, 3)], 20);
        assert_eq!((u.capacity, u.full), (0, true));
    }

    /// A simulated pool: per identity the bindings (by subject) holding a credential there,
    /// plus foreign credentials.
    #[derive(Clone, Debug)]
    struct Sim {
        foreign: Vec<Vec<u32>>,
        placed: Vec<Vec<(usize, u32)>>,
        usable: Vec<bool>,
    }

    impl Sim {
        fn candidates(&self, binding: usize, subject: u32) -> Vec<Candidate> {
            (0..self.placed.len())
                .map(|i| Candidate {
                    key: format!("id{i}"),
                    usable: self.usable[i],
                    used: (self.foreign[i].len() + self.placed[i].len()) as u32,
                    ours: self.placed[i].iter().any(|(b, _)| *b == binding),
                    subject_taken: self.foreign[i].contains(&subject)
                        || self.placed[i].iter().any(|(b, s)| *b != binding && *s == subject),
                })
                .collect()
        }
    }

    proptest! {
        /// Placing bindings one by one (each re-evaluated twice) never exceeds capacity, never
        /// puts one subject twice on an identity, and re-evaluating a placed binding keeps it.
        #[test]
        fn placement_is_safe_and_stable(
            capacity in 1u32..=20,
            foreign in prop::collection::vec(prop::collection::vec(0u32..40, 0..22), 1..6),
            bindings in prop::collection::vec(0u32..40, 0..120),
            unusable in prop::collection::vec(any::<bool>(), 6),
        ) {
            let n = foreign.len();
            let mut sim = Sim {
                placed: vec![Vec::new(); n],
                usable: (0..n).map(|i| !unusable[i] || i == 0).collect(),
                foreign: foreign.clone(),
            };
            let mut recorded: Vec<Option<String>> = vec![None; bindings.len()];
            for (b, subject) in bindings.iter().enumerate() {
                let decision = place(&sim.candidates(b, *subject), capacity, None);
                if let Some(i) = decision.index() {
                    prop_assert!(matches!(decision, Decision::Place(_)));
                    let before = sim.foreign[i].len() + sim.placed[i].len();
                    prop_assert!((before as u32) < capacity, "placed on a full identity");
                    prop_assert!(sim.usable[i]);
                    sim.placed[i].push((b, *subject));
                    recorded[b] = Some(format!("id{i}"));
                } else {
                    // Full: truly no usable identity with room for this subject.
                    for (i, c) in sim.candidates(b, *subject).iter().enumerate() {
                        prop_assert!(!c.fits(capacity), "identity {i} had room: {c:?}");
                    }
                }
                // Stable under re-evaluation, for every binding placed so far.
                for (other, s) in bindings.iter().enumerate().take(b + 1) {
                    let again = place(&sim.candidates(other, *s), capacity, recorded[other].as_deref());
                    let want = recorded[other].as_ref().map(|r| r.trim_start_matches("id").parse::<usize>().unwrap_or(usize::MAX));
                    prop_assert_eq!(again.index().filter(|_| want.is_some()), want);
                    if want.is_some() {
                        prop_assert!(matches!(again, Decision::Keep(_)));
                    }
                }
            }
            for i in 0..n {
                let ours = sim.placed[i].len() as u32;
                let foreign_count = sim.foreign[i].len() as u32;
                prop_assert!(ours == 0 || ours + foreign_count <= capacity, "identity {} over capacity", i);
                let mut subjects: Vec<u32> = sim.placed[i].iter().map(|(_, s)| *s).collect();
                subjects.sort_unstable();
                let len = subjects.len();
                subjects.dedup();
                prop_assert_eq!(subjects.len(), len, "duplicate subject on identity {}", i);
                for s in &subjects {
                    prop_assert!(!sim.foreign[i].contains(s), "subject clashes with a foreign credential");
                }
            }
        }

        /// A crash after a credential is created but before it is recorded: the binding is
        /// adopted where its credential is, never placed a second time.
        #[test]
        fn unrecorded_credentials_are_adopted(
            used in prop::collection::vec(0u32..=20, 1..8),
            at in 0usize..8,
        ) {
            let at = at % used.len();
            let candidates: Vec<Candidate> = used.iter().enumerate().map(|(i, u)| Candidate {
                key: format!("id{i}"),
                usable: true,
                used: *u + u32::from(i == at),
                ours: i == at,
                subject_taken: false,
            }).collect();
            prop_assert_eq!(place(&candidates, 20, None), Decision::Adopt(at));
        }
    }
}
