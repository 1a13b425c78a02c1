//! Federated identity credentials: the stored shape and the rules Graph and ARM both enforce
//! (each API renders a [`Violation`] in its own error shape).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest issuer, subject, audience or description Entra stores.
pub(crate) const MAX_VALUE_LEN: usize = 600;
/// Longest credential name.
pub(crate) const MAX_NAME_LEN: usize = 120;

/// One federated identity credential of an application or a user-assigned identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Credential {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) issuer: String,
    /// `None` only for a flexible credential (Graph beta `claimsMatchingExpression`).
    pub(crate) subject: Option<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) claims_matching_expression: Option<Value>,
    /// Unix time (ms) from which the token endpoint honours the current values.
    #[serde(default)]
    pub(crate) visible_after_ms: u64,
    /// Values honoured until `visible_after_ms` when this credential was updated.
    #[serde(default)]
    pub(crate) previous: Option<Matcher>,
}

/// What the token endpoint matches an assertion against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Matcher {
    pub(crate) issuer: String,
    pub(crate) subject: Option<String>,
    pub(crate) audiences: Vec<String>,
}

impl Credential {
    pub(crate) fn matcher(&self) -> Matcher {
        Matcher {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            audiences: self.audiences.clone(),
        }
    }

    /// The values the token endpoint honours at `now_ms`: the current ones once propagated, the
    /// previous ones (if this was an update) before that.
    pub(crate) fn honoured(&self, now_ms: u64) -> Option<Matcher> {
        if now_ms >= self.visible_after_ms {
            Some(self.matcher())
        } else {
            self.previous.clone()
        }
    }

    /// The current values if they are not honoured yet.
    pub(crate) fn pending(&self, now_ms: u64) -> Option<Matcher> {
        (now_ms < self.visible_after_ms).then(|| self.matcher())
    }
}

/// A broken credential rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A required property is absent or empty.
    Missing(&'static str),
    /// The name breaks the naming rule.
    InvalidName(String),
    /// A value is longer than allowed.
    TooLong(&'static str),
    /// `audiences` does not hold exactly one value.
    AudienceCount,
    /// Both or neither of `subject` and `claimsMatchingExpression`.
    SubjectXorExpression,
    /// Another credential of the parent has this name.
    DuplicateName(String),
    /// Another credential of the parent has this issuer and subject.
    DuplicateIssuerSubject { issuer: String, subject: String },
    /// The parent already has the maximum number of credentials.
    Limit(usize),
}

/// The name rule: strict is `^[a-zA-Z0-9][a-zA-Z0-9-_]{2,119}$` (ARM's pattern, and Entra's
/// published rule); lax is 1–120 URL-safe characters.
pub(crate) fn validate_name(name: &str, strict: bool) -> Result<(), Violation> {
    let invalid = || Violation::InvalidName(name.to_string());
    if strict {
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !first_ok || !rest_ok || name.len() < 3 || name.len() > MAX_NAME_LEN {
            return Err(invalid());
        }
    } else if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '='))
    {
        return Err(invalid());
    }
    Ok(())
}

/// Value rules independent of the other credentials of the parent.
pub(crate) fn validate_values(c: &Credential) -> Result<(), Violation> {
    if c.issuer.is_empty() {
        return Err(Violation::Missing("issuer"));
    }
    if c.issuer.len() > MAX_VALUE_LEN {
        return Err(Violation::TooLong("issuer"));
    }
    match (&c.subject, &c.claims_matching_expression) {
        (Some(_), Some(_)) => return Err(Violation::SubjectXorExpression),
        (None, None) => return Err(Violation::Missing("subject")),
        (Some(s), None) if s.is_empty() => return Err(Violation::Missing("subject")),
        (Some(s), None) if s.len() > MAX_VALUE_LEN => return Err(Violation::TooLong("subject")),
        _ => {}
    }
    if c.audiences.len() != 1 {
        return Err(Violation::AudienceCount);
    }
    if c.audiences.iter().any(|a| a.is_empty()) {
        return Err(Violation::Missing("audiences"));
    }
    if c.audiences.iter().any(|a| a.len() > MAX_VALUE_LEN) {
        return Err(Violation::TooLong("audiences"));
    }
    if c.description.as_ref().is_some_and(|d| d.len() > MAX_VALUE_LEN) {
        return Err(Violation::TooLong("description"));
    }
    Ok(())
}

/// Rules against the parent's other credentials (`existing` may contain `candidate` itself, found
/// by id, when updating). Names are compared case-insensitively, issuer and subject exactly.
pub(crate) fn check_collisions(
    existing: &[Credential],
    candidate: &Credential,
    max: usize,
) -> Result<(), Violation> {
    let others = existing.iter().filter(|c| c.id != candidate.id);
    let mut count = 0;
    for other in others {
        count += 1;
        if other.name.eq_ignore_ascii_case(&candidate.name) {
            return Err(Violation::DuplicateName(candidate.name.clone()));
        }
        if other.issuer == candidate.issuer && other.subject.is_some() && other.subject == candidate.subject {
            return Err(Violation::DuplicateIssuerSubject {
                issuer: candidate.issuer.clone(),
                subject: candidate.subject.clone().unwrap_or_default(),
            });
        }
    }
    if count >= max {
        return Err(Violation::Limit(max));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(id: &str, name: &str, subject: &str) -> Credential {
        Credential {
            id: id.into(),
            name: name.into(),
            issuer: "https://issuer.example".into(),
            subject: Some(subject.into()),
            audiences: vec!["api://AzureADTokenExchange".into()],
            description: None,
            claims_matching_expression: None,
            visible_after_ms: 0,
            previous: None,
        }
    }

    #[test]
    fn strict_names() {
        for ok in ["abc", "a-b_c", "A1", "x".repeat(120).as_str()] {
            if ok.len() >= 3 {
                assert_eq!(validate_name(ok, true), Ok(()), "{ok}");
            }
        }
        for bad in [
            "ab",
            "-abc",
            "_abc",
            "a.bc",
            "a b",
            "abc=",
            &"x".repeat(121),
            "ünï",
        ] {
            assert!(validate_name(bad, true).is_err(), "{bad}");
        }
        assert_eq!(validate_name("abc=", false), Ok(()));
        assert_eq!(validate_name("a", false), Ok(()));
        assert!(validate_name(&"x".repeat(121), false).is_err());
    }

    #[test]
    fn values() {
        assert_eq!(validate_values(&cred("1", "n", "s")), Ok(()));
        let mut c = cred("1", "n", "s");
        c.audiences.push("other".into());
        assert_eq!(validate_values(&c), Err(Violation::AudienceCount));
        c.audiences.clear();
        assert_eq!(validate_values(&c), Err(Violation::AudienceCount));
        let mut c = cred("1", "n", "");
        assert_eq!(validate_values(&c), Err(Violation::Missing("subject")));
        c.subject = Some("s".repeat(601));
        assert_eq!(validate_values(&c), Err(Violation::TooLong("subject")));
    }

    #[test]
    fn collisions() {
        let existing = vec![cred("1", "first", "a"), cred("2", "second", "b")];
        assert_eq!(
            check_collisions(&existing, &cred("3", "FIRST", "c"), 20),
            Err(Violation::DuplicateName("FIRST".into()))
        );
        assert!(matches!(
            check_collisions(&existing, &cred("3", "third", "b"), 20),
            Err(Violation::DuplicateIssuerSubject { .. })
        ));
        // Updating a credential in place does not collide with itself.
        assert_eq!(check_collisions(&existing, &cred("2", "second", "b"), 20), Ok(()));
        assert_eq!(
            check_collisions(&existing, &cred("3", "third", "c"), 2),
            Err(Violation::Limit(2))
        );
        assert_eq!(check_collisions(&existing, &cred("2", "second", "x"), 2), Ok(()));
    }

    #[test]
    fn propagation_honours_previous_values_until_visible() {
        let mut c = cred("1", "n", "new");
        c.visible_after_ms = 1000;
        c.previous = Some(Matcher {
            issuer: c.issuer.clone(),
            subject: Some("old".into()),
            audiences: c.audiences.clone(),
        });
        assert_eq!(c.honoured(999).and_then(|m| m.subject), Some("old".into()));
        assert_eq!(c.pending(999).and_then(|m| m.subject), Some("new".into()));
        assert_eq!(c.honoured(1000).and_then(|m| m.subject), Some("new".into()));
        assert_eq!(c.pending(1000), None);
    }
}
