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

mod request;
use request::*;

mod fics;
use fics::*;

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

#[cfg(test)]
mod tests;
