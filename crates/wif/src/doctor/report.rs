//! One line per check, as `wif doctor` prints them, and the report they make.

use std::{borrow::Cow, fmt};

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// It is as it should be.
    Pass,
    /// It is not; the check carries a fix.
    Fail,
    /// It could not be checked; the detail says why.
    Skip,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Outcome.
    pub status: Status,
    /// What was checked, a few words (and, for a named identity, its name in parentheses).
    pub name: Cow<'static, str>,
    /// What was found.
    pub detail: String,
    /// What to do, for a failure.
    pub fix: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn pass(name: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Pass,
            name: name.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    /// A failed check and how to fix it.
    pub fn fail(
        name: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Fail,
            name: name.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check that could not be made, and why.
    pub fn skip(name: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self {
            status: Status::Skip,
            name: name.into(),
            detail: reason.into(),
            fix: None,
        }
    }
}

impl Check {
    /// The same check, named for the identity `name` (`<check> (<name>)`); the default
    /// identity's checks keep their plain names.
    #[must_use]
    pub fn for_identity(mut self, name: Option<&str>) -> Self {
        if let Some(name) = name {
            self.name = format!("{} ({name})", self.name).into();
        }
        self
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Skip => "-",
        };
        write!(f, "{mark} {}: {}", self.name, self.detail)?;
        if self.status == Status::Skip {
            write!(f, " (skipped)")?;
        }
        if let Some(fix) = &self.fix {
            write!(f, " → fix: {fix}")?;
        }
        Ok(())
    }
}

/// Every check made, in order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Adds a check.
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// True when no check failed (skipped checks say why and do not fail the run).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// `N passed, N failed, N skipped`.
    pub fn summary(&self) -> String {
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        format!(
            "{} passed, {} failed, {} skipped",
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Skip)
        )
    }
}

// === the pod and its ServiceAccount ===

/// Prints each check as it is made, so a slow step shows where it is.
pub(crate) struct Out(pub(crate) Report);

impl Out {
    /// Prints the check and adds it to the report.
    pub(crate) fn add(&mut self, check: Check) {
        println!("{check}");
        self.0.push(check);
    }
}
