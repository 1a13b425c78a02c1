//! Microsoft Graph under `/graph/{v1.0|beta}/…`: `applications` and their
//! `federatedIdentityCredentials`, scoped to the tenant of the caller's token.
//!
//! Addressing: `applications/{objectId}`, `applications(appId='…')`, `applications(uniqueName='…')`;
//! credentials by id, by name segment, or `federatedIdentityCredentials(name='…')` (the upsert key,
//! with `Prefer: create-if-missing`). Queries: `$filter` (`eq`, joined by `and`) on
//! `appId`/`displayName`/`id`/`uniqueName` (applications) and `name`/`subject`/`issuer`
//! (credentials), `$select`, `$top`.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{
    app::{App, AppState},
    auth::{BearerError, Caller, verify_bearer},
    credentials::{self, Credential, Violation},
    state::{Application, PersistFailed, State as Directory, Tenant, now_ms, rfc3339_now},
    wire::{GraphError, client_request_id, path_segments},
};

const FIC_RESOURCE: &str = "FederatedIdentityCredential";

impl From<PersistFailed> for GraphError {
    fn from(_: PersistFailed) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generalException",
            "An error occurred while persisting the change.",
        )
    }
}

fn auth_error(err: BearerError) -> GraphError {
    let message = match err {
        BearerError::Missing => "Access token is empty.",
        BearerError::Malformed => "CompactToken parsing failed with error code: 80049217",
        BearerError::Signature => "Access token validation failure. Invalid signature.",
        BearerError::Expired { .. } => "Lifetime validation failed, the token is expired.",
        BearerError::NotYetValid => "Lifetime validation failed, the token is not yet valid.",
        BearerError::Audience(_) => "Access token validation failure. Invalid audience.",
        BearerError::Issuer(_) => "Access token validation failure. Invalid issuer.",
    };
    GraphError::unauthorized(message)
}

fn segment_not_found(segment: &str) -> GraphError {
    GraphError::new(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        format!("Resource not found for the segment '{segment}'."),
    )
}

fn method_not_allowed() -> GraphError {
    GraphError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Request_BadRequest",
        "Specified HTTP method is not allowed for the request target.",
    )
}

fn unreadable_json() -> GraphError {
    GraphError::new(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
    )
}

fn invalid_value(property: &str, resource: &str) -> GraphError {
    GraphError::bad_request(format!(
        "Invalid value specified for property '{property}' of resource '{resource}'."
    ))
}

fn unknown_property(property: &str, type_name: &str) -> GraphError {
    GraphError::new(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        format!(
            "Property '{property}' does not exist on type '{type_name}'. Make sure to only use property names that are defined by the type."
        ),
    )
}

/// A broken credential rule, in Graph's words.
fn violation(v: Violation) -> GraphError {
    match v {
        Violation::Missing(field) => invalid_value(field, FIC_RESOURCE),
        Violation::InvalidName(name) => GraphError::bad_request(format!(
            "Federated Identity Credential name '{name}' is invalid. The name must be 3 to 120 characters long, start with a letter or digit and contain only letters, digits, '-' and '_'."
        )),
        Violation::TooLong(field) => GraphError::bad_request(format!(
            "Invalid value specified for property '{field}' of resource '{FIC_RESOURCE}'. The value exceeds the maximum length of {} characters.",
            if field == "name" {
                credentials::MAX_NAME_LEN
            } else {
                credentials::MAX_VALUE_LEN
            }
        )),
        Violation::AudienceCount => {
            GraphError::bad_request("Federated identity credentials must have exactly one audience.")
        }
        Violation::SubjectXorExpression => GraphError::bad_request(
            "Either 'subject' or 'claimsMatchingExpression' must be defined, but not both.",
        ),
        Violation::DuplicateName(name) => GraphError::new(
            StatusCode::CONFLICT,
            "Request_MultipleObjectsWithSameKeyValue",
            format!("FederatedIdentityCredential with name {name} already exists."),
        ),
        Violation::DuplicateIssuerSubject { issuer, subject } => GraphError::new(
            StatusCode::BAD_REQUEST,
            "InvalidFederatedIdentityCredentialValue",
            format!(
                "The combination of issuer and subject must be unique for the application. Issuer {issuer} and Subject: {subject} already exist. paramName: FederatedIdentityCredential.Subject, paramValue: {subject}, objectType: Microsoft.Online.DirectoryServices.Application"
            ),
        ),
        Violation::Limit(max) => GraphError::bad_request(format!(
            "Maximum of {max} federated identity credentials can be added to an application."
        )),
    }
}

// === addressing ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum AppKey {
    Id(String),
    AppId(String),
    UniqueName(String),
}

impl AppKey {
    fn text(&self) -> &str {
        match self {
            Self::Id(v) | Self::AppId(v) | Self::UniqueName(v) => v,
        }
    }

    fn matches(&self, app: &Application) -> bool {
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
enum FicKey {
    /// `…/federatedIdentityCredentials/{id or name}`.
    IdOrName(String),
    /// `…/federatedIdentityCredentials(name='…')`.
    Name(String),
}

impl FicKey {
    fn text(&self) -> &str {
        match self {
            Self::IdOrName(v) | Self::Name(v) => v,
        }
    }

    fn position(&self, credentials: &[Credential]) -> Option<usize> {
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
enum Target {
    Applications,
    Application(AppKey),
    Credentials(AppKey),
    Credential(AppKey, FicKey),
}

/// The key of an OData segment: `(prop='value')` or `('value')`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SegmentKey {
    prop: Option<String>,
    value: String,
}

/// `name(prop='value')` → (name, key with prop); `name('v')` → (name, key without prop);
/// `name` → (name, None).
fn split_key(segment: &str) -> Result<(&str, Option<SegmentKey>), GraphError> {
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

fn parse_target(segments: &[String]) -> Result<Target, GraphError> {
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
struct Query {
    filter: Option<String>,
    select: Option<Vec<String>>,
    top: Option<usize>,
    /// The offset a `@odata.nextLink` carries (opaque to clients).
    skip: usize,
}

fn parse_query(raw: Option<&str>) -> Result<Query, GraphError> {
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
fn parse_filter(
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

fn project(mut entity: Map<String, Value>, select: Option<&[String]>) -> Value {
    if let Some(select) = select {
        entity.retain(|k, _| k.starts_with("@odata") || select.iter().any(|s| s.eq_ignore_ascii_case(k)));
    }
    Value::Object(entity)
}

// === handler ===

struct Ctx<'a> {
    app: &'a App,
    caller: Caller,
    version: &'static str,
    query: Query,
}

impl Ctx<'_> {
    fn beta(&self) -> bool {
        self.version == "beta"
    }

    fn metadata(&self) -> String {
        format!("{}/graph/{}/$metadata", self.app.base_url, self.version)
    }

    fn app_json(&self, app: &Application) -> Map<String, Value> {
        let mut entity = json!({
            "id": app.id,
            "deletedDateTime": null,
            "appId": app.app_id,
            "createdDateTime": app.created_date_time,
            "description": app.description,
            "displayName": app.display_name,
            "identifierUris": [],
            "signInAudience": "AzureADMyOrg",
            "tags": [],
        });
        if self.beta() {
            entity["uniqueName"] = json!(app.unique_name);
        }
        match entity {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn fic_json(&self, c: &Credential) -> Map<String, Value> {
        let mut entity = json!({
            "id": c.id,
            "name": c.name,
            "issuer": c.issuer,
            "subject": c.subject,
            "description": c.description,
            "audiences": c.audiences,
        });
        if self.beta() {
            entity["claimsMatchingExpression"] = c.claims_matching_expression.clone().unwrap_or(Value::Null);
        }
        match entity {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// Every `/graph/…` request.
pub(crate) async fn handle(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = client_request_id(&headers);
    let mut response = match dispatch(&app, &method, &uri, &headers, &body).await {
        Ok(response) => response,
        Err(err) => return err.with_request_id(request_id).into_response(),
    };
    let request_id = request_id.unwrap_or_else(|| Uuid::new_v4().to_string());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("client-request-id", value.clone());
        response.headers_mut().insert("request-id", value);
    }
    response
}

async fn dispatch(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, GraphError> {
    let audiences = app.graph_audiences();
    let allowed: Vec<&str> = audiences.iter().map(String::as_str).collect();
    let caller = verify_bearer(app, headers, &allowed).map_err(auth_error)?;
    let tenant_known = app.store.read(|s| s.tenant(&caller.tenant_id).is_some()).await;
    if !tenant_known {
        return Err(auth_error(BearerError::Issuer(caller.issuer)));
    }
    let segments = path_segments(uri.path(), "/graph");
    let Some((version, rest)) = segments.split_first() else {
        return Err(segment_not_found(""));
    };
    let version = match version.as_str() {
        "v1.0" => "v1.0",
        "beta" => "beta",
        other => {
            return Err(GraphError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("Invalid version: {other}"),
            ));
        }
    };
    let target = parse_target(rest)?;
    let ctx = Ctx {
        app,
        caller,
        version,
        query: parse_query(uri.query())?,
    };
    let prefer_create = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("create-if-missing"))
        });
    match (method.clone(), target) {
        (Method::GET, Target::Applications) => list_applications(&ctx).await,
        (Method::POST, Target::Applications) => create_application(&ctx, body).await,
        (Method::GET, Target::Application(key)) => get_application(&ctx, &key).await,
        (Method::PATCH, Target::Application(key)) => update_application(&ctx, &key, body).await,
        (Method::DELETE, Target::Application(key)) => delete_application(&ctx, &key).await,
        (Method::GET, Target::Credentials(key)) => list_credentials(&ctx, &key).await,
        (Method::POST, Target::Credentials(key)) => create_credential(&ctx, &key, body).await,
        (Method::GET, Target::Credential(key, fic)) => get_credential(&ctx, &key, &fic).await,
        (Method::PATCH, Target::Credential(key, fic)) => {
            update_credential(&ctx, &key, &fic, body, prefer_create).await
        }
        (Method::DELETE, Target::Credential(key, fic)) => delete_credential(&ctx, &key, &fic).await,
        _ => Err(method_not_allowed()),
    }
}

fn tenant_of<'s>(state: &'s Directory, caller: &Caller) -> Result<&'s Tenant, GraphError> {
    state
        .tenant(&caller.tenant_id)
        .ok_or_else(|| auth_error(BearerError::Issuer(caller.issuer.clone())))
}

fn tenant_of_mut<'s>(state: &'s mut Directory, caller: &Caller) -> Result<&'s mut Tenant, GraphError> {
    state
        .tenant_mut(&caller.tenant_id)
        .ok_or_else(|| auth_error(BearerError::Issuer(caller.issuer.clone())))
}

fn find_app_mut<'t>(tenant: &'t mut Tenant, key: &AppKey) -> Result<&'t mut Application, GraphError> {
    tenant
        .applications
        .iter_mut()
        .find(|a| key.matches(a))
        .ok_or_else(|| GraphError::not_found(key.text()))
}

async fn list_applications(ctx: &Ctx<'_>) -> Result<Response, GraphError> {
    let clauses = match &ctx.query.filter {
        Some(filter) => parse_filter(
            filter,
            &["appId", "displayName", "id", "uniqueName"],
            "Application",
        )?,
        None => Vec::new(),
    };
    let apps = ctx
        .app
        .store
        .read(|s| tenant_of(s, &ctx.caller).map(|t| t.applications.clone()))
        .await?;
    let value: Vec<Value> = apps
        .iter()
        .filter(|app| {
            clauses.iter().all(|(prop, value)| match *prop {
                "appId" => app.app_id.eq_ignore_ascii_case(value),
                "id" => app.id.eq_ignore_ascii_case(value),
                "displayName" => app.display_name == *value,
                _ => app
                    .unique_name
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(value)),
            })
        })
        .take(ctx.query.top.unwrap_or(100))
        .map(|app| project(ctx.app_json(app), ctx.query.select.as_deref()))
        .collect();
    Ok(
        Json(json!({ "@odata.context": format!("{}#applications", ctx.metadata()), "value": value }))
            .into_response(),
    )
}

fn entity_response(
    status: StatusCode,
    context: String,
    entity: Map<String, Value>,
    select: Option<&[String]>,
) -> Response {
    let mut body = Map::new();
    body.insert("@odata.context".into(), Value::from(context));
    if let Value::Object(projected) = project(entity, select) {
        body.extend(projected);
    }
    (status, Json(Value::Object(body))).into_response()
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, GraphError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(unreadable_json()),
    }
}

fn optional_string(
    map: &Map<String, Value>,
    key: &str,
    resource: &str,
) -> Result<Option<Option<String>>, GraphError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(_) => Err(invalid_value(key, resource)),
    }
}

async fn create_application(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response, GraphError> {
    let map = parse_object(body)?;
    for read_only in ["id", "appId"] {
        if map.contains_key(read_only) {
            return Err(GraphError::bad_request(format!(
                "Property '{read_only}' is read-only and cannot be set."
            )));
        }
    }
    let display_name = match map.get("displayName") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(invalid_value("displayName", "Application")),
    };
    let description = optional_string(&map, "description", "Application")?.flatten();
    let unique_name = optional_string(&map, "uniqueName", "Application")?.flatten();
    let app = ctx
        .app
        .store
        .update(|s| {
            let tenant = tenant_of_mut(s, &ctx.caller)?;
            if let Some(unique) = &unique_name
                && tenant.applications.iter().any(|a| {
                    a.unique_name
                        .as_deref()
                        .is_some_and(|u| u.eq_ignore_ascii_case(unique))
                })
            {
                return Err(GraphError::new(
                    StatusCode::CONFLICT,
                    "Request_MultipleObjectsWithSameKeyValue",
                    "Another object with the same value for property uniqueName already exists.",
                ));
            }
            let app = Application {
                id: Uuid::new_v4().to_string(),
                app_id: Uuid::new_v4().to_string(),
                display_name,
                description,
                unique_name,
                service_principal_id: Uuid::new_v4().to_string(),
                created_date_time: rfc3339_now(),
                client_secrets: Vec::new(),
                credentials: Vec::new(),
            };
            tenant.applications.push(app.clone());
            Ok::<_, GraphError>(app)
        })
        .await?;
    tracing::info!(tenant = %ctx.caller.tenant_id, app_id = %app.app_id, "graph: created application");
    Ok(entity_response(
        StatusCode::CREATED,
        format!("{}#applications/$entity", ctx.metadata()),
        ctx.app_json(&app),
        None,
    ))
}

async fn read_app(ctx: &Ctx<'_>, key: &AppKey) -> Result<Application, GraphError> {
    ctx.app
        .store
        .read(|s| {
            tenant_of(s, &ctx.caller)?
                .applications
                .iter()
                .find(|a| key.matches(a))
                .cloned()
                .ok_or_else(|| GraphError::not_found(key.text()))
        })
        .await
}

async fn get_application(ctx: &Ctx<'_>, key: &AppKey) -> Result<Response, GraphError> {
    let app = read_app(ctx, key).await?;
    Ok(entity_response(
        StatusCode::OK,
        format!("{}#applications/$entity", ctx.metadata()),
        ctx.app_json(&app),
        ctx.query.select.as_deref(),
    ))
}

async fn update_application(ctx: &Ctx<'_>, key: &AppKey, body: &[u8]) -> Result<Response, GraphError> {
    let map = parse_object(body)?;
    for read_only in ["id", "appId"] {
        if map.contains_key(read_only) {
            return Err(GraphError::bad_request(format!(
                "Property '{read_only}' is read-only and cannot be set."
            )));
        }
    }
    let display_name = match map.get("displayName") {
        None => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(_) => return Err(invalid_value("displayName", "Application")),
    };
    let description = optional_string(&map, "description", "Application")?;
    ctx.app
        .store
        .update(|s| {
            let app = find_app_mut(tenant_of_mut(s, &ctx.caller)?, key)?;
            if let Some(name) = display_name {
                app.display_name = name;
            }
            if let Some(description) = description {
                app.description = description;
            }
            Ok::<_, GraphError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_application(ctx: &Ctx<'_>, key: &AppKey) -> Result<Response, GraphError> {
    ctx.app
        .store
        .update(|s| {
            let tenant = tenant_of_mut(s, &ctx.caller)?;
            let index = tenant
                .applications
                .iter()
                .position(|a| key.matches(a))
                .ok_or_else(|| GraphError::not_found(key.text()))?;
            tenant.applications.remove(index);
            Ok::<_, GraphError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_credentials(ctx: &Ctx<'_>, key: &AppKey) -> Result<Response, GraphError> {
    let clauses = match &ctx.query.filter {
        Some(filter) => parse_filter(filter, &["name", "subject", "issuer"], FIC_RESOURCE)?,
        None => Vec::new(),
    };
    let app = read_app(ctx, key).await?;
    let matching: Vec<&Credential> = app
        .credentials
        .iter()
        .filter(|c| {
            clauses.iter().all(|(prop, value)| match *prop {
                "name" => c.name.eq_ignore_ascii_case(value),
                "subject" => c.subject.as_deref() == Some(value.as_str()),
                _ => c.issuer == *value,
            })
        })
        .collect();
    let page_size = ctx.query.top.unwrap_or(usize::MAX);
    let value: Vec<Value> = matching
        .iter()
        .skip(ctx.query.skip)
        .take(page_size)
        .map(|c| project(ctx.fic_json(c), ctx.query.select.as_deref()))
        .collect();
    let mut body = json!({
        "@odata.context": format!("{}#applications('{}')/federatedIdentityCredentials", ctx.metadata(), app.id),
        "value": value,
    });
    // With `$top`, a page that leaves credentials out links to the next one.
    let next = ctx.query.skip.saturating_add(page_size);
    if next < matching.len() {
        let mut link = url::Url::parse(&format!(
            "{}/graph/{}/applications/{}/federatedIdentityCredentials",
            ctx.app.base_url, ctx.version, app.id
        ))
        .map_err(|e| {
            GraphError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "generalException",
                e.to_string(),
            )
        })?;
        {
            let mut pairs = link.query_pairs_mut();
            if let Some(filter) = &ctx.query.filter {
                pairs.append_pair("$filter", filter);
            }
            if let Some(select) = &ctx.query.select {
                pairs.append_pair("$select", &select.join(","));
            }
            pairs.append_pair("$top", &page_size.to_string());
            pairs.append_pair("$skiptoken", &next.to_string());
        }
        body["@odata.nextLink"] = Value::from(link.to_string());
    }
    Ok(Json(body).into_response())
}

async fn get_credential(ctx: &Ctx<'_>, key: &AppKey, fic: &FicKey) -> Result<Response, GraphError> {
    let app = read_app(ctx, key).await?;
    let credential = fic
        .position(&app.credentials)
        .map(|i| &app.credentials[i])
        .ok_or_else(|| GraphError::not_found(fic.text()))?;
    Ok(entity_response(
        StatusCode::OK,
        format!(
            "{}#applications('{}')/federatedIdentityCredentials/$entity",
            ctx.metadata(),
            app.id
        ),
        ctx.fic_json(credential),
        ctx.query.select.as_deref(),
    ))
}

/// A credential body as sent (every property optional; `Some(None)` is an explicit null).
#[derive(Debug, Default)]
struct FicBody {
    name: Option<String>,
    issuer: Option<String>,
    subject: Option<Option<String>>,
    audiences: Option<Vec<String>>,
    description: Option<Option<String>>,
    expression: Option<Option<Value>>,
}

fn parse_fic_body(body: &[u8], beta: bool) -> Result<FicBody, GraphError> {
    let map = parse_object(body)?;
    let mut fic = FicBody::default();
    for (key, value) in &map {
        match key.as_str() {
            k if k.starts_with("@odata.") => {}
            "id" => {}
            "name" => match value {
                Value::String(s) => fic.name = Some(s.clone()),
                _ => return Err(invalid_value("name", FIC_RESOURCE)),
            },
            "issuer" => match value {
                Value::String(s) => fic.issuer = Some(s.clone()),
                _ => return Err(invalid_value("issuer", FIC_RESOURCE)),
            },
            "subject" => fic.subject = optional_string(&map, "subject", FIC_RESOURCE)?,
            "description" => fic.description = optional_string(&map, "description", FIC_RESOURCE)?,
            "audiences" => match value {
                Value::Array(items) => {
                    let audiences: Option<Vec<String>> =
                        items.iter().map(|v| v.as_str().map(str::to_string)).collect();
                    fic.audiences = Some(audiences.ok_or_else(|| invalid_value("audiences", FIC_RESOURCE))?);
                }
                _ => return Err(invalid_value("audiences", FIC_RESOURCE)),
            },
            "claimsMatchingExpression" if beta => match value {
                Value::Null => fic.expression = Some(None),
                Value::Object(_) => fic.expression = Some(Some(value.clone())),
                _ => return Err(invalid_value("claimsMatchingExpression", FIC_RESOURCE)),
            },
            other => {
                return Err(unknown_property(
                    other,
                    "microsoft.graph.federatedIdentityCredential",
                ));
            }
        }
    }
    Ok(fic)
}

fn validate(candidate: &Credential, siblings: &[Credential], ctx: &Ctx<'_>) -> Result<(), GraphError> {
    let settings = ctx.app.settings();
    credentials::validate_name(&candidate.name, settings.strict_credential_names)
        .and_then(|()| credentials::validate_values(candidate))
        .and_then(|()| {
            credentials::check_collisions(siblings, candidate, settings.max_credentials_per_parent)
        })
        .map_err(violation)
}

async fn create_credential(ctx: &Ctx<'_>, key: &AppKey, body: &[u8]) -> Result<Response, GraphError> {
    let fic = parse_fic_body(body, ctx.beta())?;
    let name = fic
        .name
        .clone()
        .ok_or_else(|| invalid_value("name", FIC_RESOURCE))?;
    let (app_id, credential) = insert_credential(ctx, key, name, fic).await?;
    Ok(entity_response(
        StatusCode::CREATED,
        format!(
            "{}#applications('{app_id}')/federatedIdentityCredentials/$entity",
            ctx.metadata()
        ),
        ctx.fic_json(&credential),
        None,
    ))
}

async fn insert_credential(
    ctx: &Ctx<'_>,
    key: &AppKey,
    name: String,
    fic: FicBody,
) -> Result<(String, Credential), GraphError> {
    let delay = ctx.app.settings().propagation_delay_ms;
    let credential = Credential {
        id: Uuid::new_v4().to_string(),
        name,
        issuer: fic.issuer.ok_or_else(|| invalid_value("issuer", FIC_RESOURCE))?,
        subject: fic.subject.flatten(),
        audiences: fic
            .audiences
            .ok_or_else(|| invalid_value("audiences", FIC_RESOURCE))?,
        description: fic.description.flatten(),
        claims_matching_expression: fic.expression.flatten(),
        visible_after_ms: now_ms().saturating_add(delay),
        previous: None,
    };
    let app_id = ctx
        .app
        .store
        .update(|s| {
            let app = find_app_mut(tenant_of_mut(s, &ctx.caller)?, key)?;
            validate(&credential, &app.credentials, ctx)?;
            app.credentials.push(credential.clone());
            Ok::<_, GraphError>(app.id.clone())
        })
        .await?;
    tracing::info!(
        tenant = %ctx.caller.tenant_id,
        application = %app_id,
        credential = %credential.name,
        "graph: created federated identity credential"
    );
    Ok((app_id, credential))
}

async fn update_credential(
    ctx: &Ctx<'_>,
    key: &AppKey,
    fic_key: &FicKey,
    body: &[u8],
    prefer_create: bool,
) -> Result<Response, GraphError> {
    let fic = parse_fic_body(body, ctx.beta())?;
    let exists = fic_key.position(&read_app(ctx, key).await?.credentials).is_some();
    if !exists {
        // Upsert: `PATCH …/federatedIdentityCredentials(name='x')` with `Prefer: create-if-missing`.
        if let (FicKey::Name(name), true) = (fic_key, prefer_create) {
            if fic.name.as_ref().is_some_and(|n| n != name) {
                return Err(GraphError::bad_request(
                    "The name in the request body does not match the key.",
                ));
            }
            let (app_id, credential) = insert_credential(ctx, key, name.clone(), fic).await?;
            return Ok(entity_response(
                StatusCode::CREATED,
                format!(
                    "{}#applications('{app_id}')/federatedIdentityCredentials/$entity",
                    ctx.metadata()
                ),
                ctx.fic_json(&credential),
                None,
            ));
        }
        return Err(GraphError::not_found(fic_key.text()));
    }
    let delay = ctx.app.settings().propagation_delay_ms;
    ctx.app
        .store
        .update(|s| {
            let app = find_app_mut(tenant_of_mut(s, &ctx.caller)?, key)?;
            let index = fic_key
                .position(&app.credentials)
                .ok_or_else(|| GraphError::not_found(fic_key.text()))?;
            let current = &app.credentials[index];
            if let Some(name) = &fic.name
                && name != &current.name
            {
                return Err(GraphError::bad_request(
                    "Property 'name' is read-only and cannot be changed after creation.",
                ));
            }
            let mut updated = current.clone();
            if let Some(issuer) = fic.issuer {
                updated.issuer = issuer;
            }
            if let Some(subject) = fic.subject {
                updated.subject = subject;
            }
            if let Some(audiences) = fic.audiences {
                updated.audiences = audiences;
            }
            if let Some(description) = fic.description {
                updated.description = description;
            }
            if let Some(expression) = fic.expression {
                updated.claims_matching_expression = expression;
            }
            validate(&updated, &app.credentials, ctx)?;
            if updated.matcher() != current.matcher() {
                let now = now_ms();
                updated.previous = current.honoured(now);
                updated.visible_after_ms = now.saturating_add(delay);
            }
            app.credentials[index] = updated;
            Ok::<_, GraphError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_credential(ctx: &Ctx<'_>, key: &AppKey, fic_key: &FicKey) -> Result<Response, GraphError> {
    ctx.app
        .store
        .update(|s| {
            let app = find_app_mut(tenant_of_mut(s, &ctx.caller)?, key)?;
            let index = fic_key
                .position(&app.credentials)
                .ok_or_else(|| GraphError::not_found(fic_key.text()))?;
            app.credentials.remove(index);
            Ok::<_, GraphError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target(&segs("applications")).ok(),
            Some(Target::Applications)
        );
        assert_eq!(
            parse_target(&segs("applications/abc")).ok(),
            Some(Target::Application(AppKey::Id("abc".into())))
        );
        assert_eq!(
            parse_target(&segs("applications(appId='x')/federatedIdentityCredentials/")).ok(),
            Some(Target::Credentials(AppKey::AppId("x".into())))
        );
        assert_eq!(
            parse_target(&segs(
                "applications/abc/federatedIdentityCredentials(name='o''k')"
            ))
            .ok(),
            Some(Target::Credential(
                AppKey::Id("abc".into()),
                FicKey::Name("o'k".into())
            ))
        );
        assert_eq!(
            parse_target(&segs(
                "applications(uniqueName='u')/federatedIdentityCredentials/n1"
            ))
            .ok(),
            Some(Target::Credential(
                AppKey::UniqueName("u".into()),
                FicKey::IdOrName("n1".into())
            ))
        );
        assert!(parse_target(&segs("users")).is_err());
        assert!(parse_target(&segs("applications/abc/owners")).is_err());
        assert!(parse_target(&segs("applications/abc/federatedIdentityCredentials/a/b")).is_err());
    }

    #[test]
    fn filters() {
        let clauses = parse_filter(
            "appId eq 'a''b' and displayName eq 'x y'",
            &["appId", "displayName"],
            "Application",
        )
        .expect("parses");
        assert_eq!(
            clauses,
            vec![("appId", "a'b".to_string()), ("displayName", "x y".to_string())]
        );
        assert_eq!(
            parse_filter("startswith(name,'a')", &["name"], FIC_RESOURCE)
                .err()
                .map(|e| e.status),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            parse_filter("owner eq 'a'", &["name"], FIC_RESOURCE)
                .err()
                .map(|e| e.code),
            Some("Request_UnsupportedQuery".to_string())
        );
        assert!(parse_filter("name eq 'a", &["name"], FIC_RESOURCE).is_err());
        assert!(parse_filter("name eq 'a' or name eq 'b'", &["name"], FIC_RESOURCE).is_err());
    }
}
