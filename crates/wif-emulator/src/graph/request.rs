//! Graph request addressing (`applications/{id}`, `applications(appId='…')`, credential keys) and query options (`$filter`, `$select`, `$top`): parsing only.

use super::*;

// === addressing ===

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AppKey {
    Id(String),
    AppId(String),
    UniqueName(String),
}

impl AppKey {
    pub(super) fn text(&self) -> &str {
        match self {
            Self::Id(v) | Self::AppId(v) | Self::UniqueName(v) => v,
        }
    }

    pub(super) fn matches(&self, app: &Application) -> bool {
        match self {
            Self::Id(id) => app.id.eq_ignore_ascii_case(id),
            Self::AppId(app_id) => app.app_id.eq_ignore_ascii_case(app_id),
            Self::UniqueName(name) => app
                .unique_name
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(name)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FicKey {
    /// `…/federatedIdentityCredentials/{id or name}`.
    IdOrName(String),
    /// `…/federatedIdentityCredentials(name='…')`.
    Name(String),
}

impl FicKey {
    pub(super) fn text(&self) -> &str {
        match self {
            Self::IdOrName(v) | Self::Name(v) => v,
        }
    }

    pub(super) fn position(&self, credentials: &[Credential]) -> Option<usize> {
        match self {
            Self::IdOrName(key) => credentials
                .iter()
                .position(|c| c.id.eq_ignore_ascii_case(key))
                .or_else(|| credentials.iter().position(|c| c.name.eq_ignore_ascii_case(key))),
            Self::Name(name) => credentials.iter().position(|c| c.name.eq_ignore_ascii_case(name)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    Applications,
    Application(AppKey),
    Credentials(AppKey),
    Credential(AppKey, FicKey),
}

/// The key of an OData segment: `(prop='value')` or `('value')`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SegmentKey {
    pub(super) prop: Option<String>,
    pub(super) value: String,
}

/// `name(prop='value')` → (name, key with prop); `name('v')` → (name, key without prop);
/// `name` → (name, None).
pub(super) fn split_key(segment: &str) -> Result<(&str, Option<SegmentKey>), GraphError> {
    let Some(open) = segment.find('(') else {
        return Ok((segment, None));
    };
    let inner = segment[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| segment_not_found(segment))?;
    let (prop, raw) = match inner.split_once('=') {
        Some((prop, raw)) if !prop.contains('\'') => (Some(prop.trim().to_string()), raw.trim()),
        _ => (None, inner.trim()),
    };
    let value = match raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        Some(quoted) => quoted.replace("''", "'"),
        None => raw.to_string(),
    };
    Ok((&segment[..open], Some(SegmentKey { prop, value })))
}

pub(super) fn parse_target(segments: &[String]) -> Result<Target, GraphError> {
    let (first, mut rest) = segments.split_first().ok_or_else(|| segment_not_found(""))?;
    let (name, key) = split_key(first)?;
    if !name.eq_ignore_ascii_case("applications") {
        return Err(segment_not_found(name));
    }
    let app_key = match key {
        None => match rest.split_first() {
            None => return Ok(Target::Applications),
            Some((id, tail)) => {
                rest = tail;
                AppKey::Id(id.clone())
            }
        },
        Some(SegmentKey { prop: None, value }) => AppKey::Id(value),
        Some(SegmentKey {
            prop: Some(prop),
            value,
        }) if prop.eq_ignore_ascii_case("appId") => AppKey::AppId(value),
        Some(SegmentKey {
            prop: Some(prop),
            value,
        }) if prop.eq_ignore_ascii_case("uniqueName") => AppKey::UniqueName(value),
        Some(SegmentKey { prop: Some(prop), .. }) => return Err(segment_not_found(&prop)),
    };
    let Some((second, tail)) = rest.split_first() else {
        return Ok(Target::Application(app_key));
    };
    let (name, key) = split_key(second)?;
    if !name.eq_ignore_ascii_case("federatedIdentityCredentials") {
        return Err(segment_not_found(name));
    }
    match (key, tail) {
        (None, []) => Ok(Target::Credentials(app_key)),
        (None, [id]) => Ok(Target::Credential(app_key, FicKey::IdOrName(id.clone()))),
        (
            Some(SegmentKey {
                prop: Some(prop),
                value,
            }),
            [],
        ) if prop.eq_ignore_ascii_case("name") => Ok(Target::Credential(app_key, FicKey::Name(value))),
        (Some(SegmentKey { prop: None, value }), []) => {
            Ok(Target::Credential(app_key, FicKey::IdOrName(value)))
        }
        (_, [.., last]) => Err(segment_not_found(last)),
        (Some(SegmentKey { prop: Some(prop), .. }), []) => Err(segment_not_found(&prop)),
    }
}

// === query options ===

#[derive(Debug, Default)]
pub(super) struct Query {
    pub(super) filter: Option<String>,
    pub(super) select: Option<Vec<String>>,
    pub(super) top: Option<usize>,
    /// The offset a `@odata.nextLink` carries (opaque to clients).
    pub(super) skip: usize,
}

pub(super) fn parse_query(raw: Option<&str>) -> Result<Query, GraphError> {
    let mut query = Query::default();
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "$filter" => query.filter = Some(value.into_owned()),
            "$select" => {
                query.select = Some(
                    value
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            "$top" => {
                let top = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=999).contains(n))
                    .ok_or_else(|| {
                        GraphError::new(
                            StatusCode::BAD_REQUEST,
                            "Request_UnsupportedQuery",
                            format!(
                                "Invalid page size specified: '{value}'. Must be between 1 and 999 inclusive."
                            ),
                        )
                    })?;
                query.top = Some(top);
            }
            "$skiptoken" => {
                query.skip = value.parse::<usize>().map_err(|_| {
                    GraphError::new(
                        StatusCode::BAD_REQUEST,
                        "Request_BadRequest",
                        "The specified page token value has expired and can no longer be included in your request.",
                    )
                })?;
            }
            _ => {}
        }
    }
    Ok(query)
}

/// `prop eq 'value' [and prop eq 'value']…` → pairs (property names as allowed).
pub(super) fn parse_filter(
    filter: &str,
    allowed: &[&'static str],
    resource: &str,
) -> Result<Vec<(&'static str, String)>, GraphError> {
    let invalid = || {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("Invalid filter clause: '{filter}'."),
        )
    };
    let mut clauses = Vec::new();
    let mut rest = filter.trim();
    loop {
        let (prop, after) = rest.split_once(char::is_whitespace).ok_or_else(invalid)?;
        let after = after.trim_start();
        let (op, after) = after.split_once(char::is_whitespace).ok_or_else(invalid)?;
        let prop_name = allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(prop))
            .copied()
            .filter(|_| op.eq_ignore_ascii_case("eq"))
            .ok_or_else(|| {
                GraphError::new(
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    format!(
                        "Unsupported or invalid query filter clause specified for property '{prop}' of resource '{resource}'."
                    ),
                )
            })?;
        let quoted = after.trim_start().strip_prefix('\'').ok_or_else(invalid)?;
        // The value ends at a quote that is not doubled.
        let mut value = String::new();
        let mut chars = quoted.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                    value.push('\'');
                    chars.next();
                } else {
                    end = Some(i + 1);
                    break;
                }
            } else {
                value.push(c);
            }
        }
        let end = end.ok_or_else(invalid)?;
        clauses.push((prop_name, value));
        rest = quoted[end..].trim_start();
        if rest.is_empty() {
            return Ok(clauses);
        }
        let (and, after) = rest.split_once(char::is_whitespace).ok_or_else(invalid)?;
        if !and.eq_ignore_ascii_case("and") {
            return Err(invalid());
        }
        rest = after.trim_start();
    }
}

pub(super) fn project(mut entity: Map<String, Value>, select: Option<&[String]>) -> Value {
    if let Some(select) = select {
        entity.retain(|k, _| k.starts_with("@odata") || select.iter().any(|s| s.eq_ignore_ascii_case(k)));
    }
    Value::Object(entity)
}
