//! ARM under `/arm/…` (mirroring `https://management.azure.com`): user-assigned managed identities
//! and their federated identity credentials (`Microsoft.ManagedIdentity`), the subscriptions and
//! resource groups they live in, and the anonymous cloud metadata `az cloud register` reads.
//!
//! - `GET /metadata/endpoints?api-version=…` (no token): the cloud's endpoints, all pointing at the
//!   emulator (login endpoint, ARM, `microsoftGraphResourceId` = its `/graph/`).
//! - `GET /subscriptions`, `GET /subscriptions/{id}`: the caller's tenant's subscriptions;
//!   `GET /subscriptions/{id}/resourcegroups[/{rg}]`, `PUT …/resourcegroups/{rg}`.
//! - Any request under a subscription the directory does not have answers `404
//!   SubscriptionNotFound`; under a resource group it does not have, `404 ResourceGroupNotFound`.
//!
//! `…/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities[/{name}[/federatedIdentityCredentials[/{fic}]]]`
//! with `GET`, `PUT`, `DELETE` (and list). Every request needs a supported `api-version`. Credential
//! writes to one identity are serialised by a per-identity lock held for `armWriteHoldMs`; a
//! concurrent writer gets `409 ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`.

use std::time::Duration;

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{
    app::{App, AppState},
    auth::{BearerError, Caller, utc, verify_bearer},
    credentials::{self, Credential, Violation},
    state::{Identity, PersistFailed, ResourceGroup, Subscription, is_guid, now_ms, valid_group_name},
    wire::{ArmError, path_segments},
};

mod fics;
use fics::*;

mod subscriptions;
use subscriptions::*;

/// api-versions of `Microsoft.ManagedIdentity` that carry federated identity credentials.
pub const API_VERSIONS: &[&str] = &[
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
    "2025-01-31-preview",
    "2025-05-31-preview",
    "2026-04-30",
    "2026-05-31",
];
/// api-versions whose credentials may carry `claimsMatchingExpression`.
const FLEXIBLE_API_VERSIONS: &[&str] = &["2025-01-31-preview", "2025-05-31-preview"];
const IDENTITY_TYPE: &str = "Microsoft.ManagedIdentity/userAssignedIdentities";
const FIC_TYPE: &str = "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials";

impl From<PersistFailed> for ArmError {
    fn from(_: PersistFailed) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Encountered internal server error while persisting the change.",
        )
    }
}

fn auth_error(err: BearerError, allowed: &[String]) -> ArmError {
    match err {
        BearerError::Missing => ArmError::unauthorized(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        ),
        BearerError::Malformed => {
            ArmError::unauthorized("InvalidAuthenticationToken", "The access token is invalid.")
        }
        BearerError::Signature => ArmError::unauthorized(
            "InvalidAuthenticationToken",
            "The received access token is not valid: at least one of the claims 'puid' or 'altsecid' or 'oid' should be present. If you are accessing as application please make sure service principal is properly created in the tenant.",
        ),
        BearerError::Expired { exp, now } => ArmError::unauthorized(
            "ExpiredAuthenticationToken",
            format!(
                "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                utc(exp),
                utc(now)
            ),
        ),
        BearerError::NotYetValid => {
            ArmError::unauthorized("InvalidAuthenticationToken", "The access token is not yet valid.")
        }
        BearerError::Audience(aud) => ArmError::unauthorized(
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{aud}'. It should exactly match with one of the allowed audiences {}.",
                allowed
                    .iter()
                    .map(|a| format!("'{a}'"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        BearerError::Issuer(iss) => ArmError::unauthorized(
            "InvalidAuthenticationTokenTenant",
            format!("The access token is from the wrong issuer '{iss}'."),
        ),
    }
}

fn wrong_tenant(caller: &Caller, base: &str, owner: &str) -> ArmError {
    ArmError::unauthorized(
        "InvalidAuthenticationTokenTenant",
        format!(
            "The access token is from the wrong issuer '{}'. It must match the tenant '{base}/{owner}/' associated with this subscription. Please use the authority (URL) '{base}/{owner}' to get the token.",
            caller.issuer
        ),
    )
}

fn violation(v: Violation) -> ArmError {
    match v {
        Violation::Missing(_) => ArmError::bad_request(
            "The request format was unexpected. Federated Identity Credential must specify 'issuer', 'subject' and 'audience'.",
        ),
        Violation::InvalidName(name) => {
            ArmError::bad_request(format!("Federated Identity Credential name '{name}' is invalid."))
        }
        Violation::TooLong(field) => ArmError::bad_request(format!(
            "The '{field}' of a Federated Identity Credential must not be longer than {} characters.",
            credentials::MAX_VALUE_LEN
        )),
        Violation::AudienceCount => {
            ArmError::bad_request("Federated identity credentials must have exactly one audience.")
        }
        Violation::SubjectXorExpression => ArmError::bad_request(
            "Either 'subject' or 'claimsMatchingExpression' must be defined, but not both.",
        ),
        Violation::DuplicateName(name) => ArmError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Federated Identity Credential '{name}' already exists."),
        ),
        Violation::DuplicateIssuerSubject { .. } => {
            ArmError::bad_request("Issuer and subject combination already exists for this Managed Identity.")
        }
        Violation::Limit(max) => ArmError::bad_request(format!(
            "Too many Federated Identity Credentials. A managed identity can have at most {max} Federated Identity Credentials."
        )),
    }
}

/// `404 SubscriptionNotFound`, as ARM answers for a subscription that does not exist or that the
/// caller cannot see (recorded: Azure/azure-cli#33657; `statusCode: 404`:
/// microsoft/AzureStorageExplorer#5298).
fn subscription_not_found(id: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "SubscriptionNotFound",
        format!("The subscription '{id}' could not be found."),
    )
}

/// `404 ResourceGroupNotFound` (recorded `Status=404 Code="ResourceGroupNotFound" Message="Resource
/// group 'XXXRG' could not be found."`: pulumi/pulumi#3891; Azure/azure-cli#22736).
fn group_not_found(group: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "ResourceGroupNotFound",
        format!("Resource group '{group}' could not be found."),
    )
}

fn identity_not_found(group: &str, name: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!(
            "The Resource '{IDENTITY_TYPE}/{name}' under resource group '{group}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

fn parent_not_found() -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "ParentResourceNotFound",
        "The parent user-assigned identity doesn't exist.",
    )
}

// === addressing ===

#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    subscription: String,
    group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Identities(Scope),
    Identity(Scope, String),
    Credentials(Scope, String),
    Credential(Scope, String, String),
}

impl Target {
    fn scope(&self) -> &Scope {
        match self {
            Self::Identities(s)
            | Self::Identity(s, _)
            | Self::Credentials(s, _)
            | Self::Credential(s, _, _) => s,
        }
    }
}

fn parse_target(segments: &[String]) -> Result<Target, ArmError> {
    let not_found = || {
        ArmError::new(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The resource type could not be found in the namespace 'Microsoft.ManagedIdentity'.",
        )
    };
    let literal = |i: usize, text: &str| segments.get(i).is_some_and(|s| s.eq_ignore_ascii_case(text));
    if !(literal(0, "subscriptions")
        && literal(2, "resourceGroups")
        && literal(4, "providers")
        && literal(5, "Microsoft.ManagedIdentity")
        && literal(6, "userAssignedIdentities"))
    {
        return Err(not_found());
    }
    let subscription = segments[1].clone();
    if !is_guid(&subscription) {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidSubscriptionId",
            format!("The provided subscription identifier '{subscription}' is malformed or invalid."),
        ));
    }
    let scope = Scope {
        subscription,
        group: segments[3].clone(),
    };
    match &segments[7..] {
        [] => Ok(Target::Identities(scope)),
        [name] => Ok(Target::Identity(scope, name.clone())),
        [name, fics] if fics.eq_ignore_ascii_case("federatedIdentityCredentials") => {
            Ok(Target::Credentials(scope, name.clone()))
        }
        [name, fics, fic] if fics.eq_ignore_ascii_case("federatedIdentityCredentials") => {
            Ok(Target::Credential(scope, name.clone(), fic.clone()))
        }
        _ => Err(not_found()),
    }
}

fn check_api_version(query: &Map<String, Value>) -> Result<&'static str, ArmError> {
    let Some(version) = query.get("api-version").and_then(Value::as_str) else {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    };
    if let Some(known) = API_VERSIONS.iter().find(|v| v.eq_ignore_ascii_case(version)) {
        return Ok(known);
    }
    let well_formed = {
        let date = version.strip_suffix("-preview").unwrap_or(version);
        date.len() == 10 && jiff::civil::Date::strptime("%Y-%m-%d", date).is_ok()
    };
    let supported = API_VERSIONS.join(", ");
    if well_formed {
        Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for location 'westeurope' and API version '{version}' for type 'userAssignedIdentities'. The supported api-versions are '{supported}'."
            ),
        ))
    } else {
        Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!("The api-version '{version}' is invalid. The supported versions are '{supported}'."),
        ))
    }
}

// === handler ===

struct Ctx<'a> {
    app: &'a App,
    caller: Caller,
    api_version: &'static str,
    query: Map<String, Value>,
    path: String,
}

/// Every `/arm/…` request.
pub(crate) async fn handle(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match dispatch(&app, &method, &uri, &headers, &body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn dispatch(
    app: &App,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ArmError> {
    let segments = path_segments(uri.path(), "/arm");
    let query: Map<String, Value> = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
        .collect();
    let literal = |i: usize, text: &str| segments.get(i).is_some_and(|s| s.eq_ignore_ascii_case(text));
    // Served without a token, as real ARM serves it: `az cloud register` reads it anonymously.
    if segments.len() == 2 && literal(0, "metadata") && literal(1, "endpoints") {
        return if *method == Method::GET {
            Ok(Json(cloud_metadata(&app.base_url)).into_response())
        } else {
            Err(method_not_allowed(method))
        };
    }
    let audiences = app.arm_audiences();
    let allowed: Vec<&str> = audiences.iter().map(String::as_str).collect();
    let caller = verify_bearer(app, headers, &allowed).map_err(|e| auth_error(e, &audiences))?;
    if literal(0, "subscriptions")
        && (segments.len() <= 2 || (literal(2, "resourceGroups") && segments.len() <= 4))
    {
        let api_version = check_any_api_version(&query)?;
        return subscriptions(app, &caller, method, &segments, api_version, body).await;
    }
    let path = uri.path().strip_prefix("/arm").unwrap_or_default().to_owned();
    let target = parse_target(&segments)?;
    let api_version = check_api_version(&query)?;
    check_scope(app, &caller, target.scope()).await?;
    let ctx = Ctx {
        app,
        caller,
        api_version,
        query,
        path,
    };
    match (method.clone(), target) {
        (Method::GET, Target::Identities(scope)) => list_identities(&ctx, &scope).await,
        (Method::GET, Target::Identity(scope, name)) => get_identity(&ctx, &scope, &name).await,
        (Method::PUT, Target::Identity(scope, name)) => put_identity(&ctx, &scope, &name, body).await,
        (Method::DELETE, Target::Identity(scope, name)) => delete_identity(&ctx, &scope, &name).await,
        (Method::GET, Target::Credentials(scope, name)) => list_credentials(&ctx, &scope, &name).await,
        (Method::GET, Target::Credential(scope, name, fic)) => {
            get_credential(&ctx, &scope, &name, &fic).await
        }
        (Method::PUT, Target::Credential(scope, name, fic)) => {
            put_credential(&ctx, &scope, &name, &fic, body).await
        }
        (Method::DELETE, Target::Credential(scope, name, fic)) => {
            delete_credential(&ctx, &scope, &name, &fic).await
        }
        (method, _) => Err(method_not_allowed(&method)),
    }
}

fn method_not_allowed(method: &Method) -> ArmError {
    ArmError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("The requested method '{method}' is not allowed for this resource."),
    )
}

/// The subscription must exist and belong to the caller's tenant (a subscription of another
/// tenant answers `401 InvalidAuthenticationTokenTenant`, naming the right authority), and the
/// resource group must exist in it.
async fn check_scope(app: &App, caller: &Caller, scope: &Scope) -> Result<(), ArmError> {
    let found = app
        .store
        .read(|s| {
            s.subscription(&scope.subscription)
                .map(|(t, sub)| (t.id.clone(), sub.group(&scope.group).is_some()))
        })
        .await;
    let Some((owner, group_exists)) = found else {
        return Err(subscription_not_found(&scope.subscription));
    };
    if !owner.eq_ignore_ascii_case(&caller.tenant_id) {
        return Err(wrong_tenant(caller, &app.base_url, &owner));
    }
    if !group_exists {
        return Err(group_not_found(&scope.group));
    }
    Ok(())
}

/// `api-version` for the subscription and resource group APIs (Microsoft.Resources): required and
/// date-shaped; every date is served.
fn check_any_api_version(query: &Map<String, Value>) -> Result<String, ArmError> {
    let Some(version) = query.get("api-version").and_then(Value::as_str) else {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    };
    let date = version.strip_suffix("-preview").unwrap_or(version);
    if date.len() == 10 && jiff::civil::Date::strptime("%Y-%m-%d", date).is_ok() {
        Ok(version.to_string())
    } else {
        Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!("The api-version '{version}' is invalid."),
        ))
    }
}

/// The body of `GET /metadata/endpoints?api-version=2022-09-01`: the emulator's own cloud, in the
/// shape Azure's public cloud publishes (read by `az cloud register --endpoint-resource-manager`).
pub(crate) fn cloud_metadata(base: &str) -> Value {
    let host = url::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    json!({
        "portal": format!("{base}/portal"),
        "authentication": {
            "loginEndpoint": format!("{base}/"),
            "audiences": ["https://management.core.windows.net/", format!("{base}/arm/")],
            "tenant": "common",
            "identityProvider": "AAD",
        },
        "media": format!("{base}/media/"),
        "graphAudience": format!("{base}/graph/"),
        "graph": format!("{base}/graph/"),
        "name": "WifEmulator",
        "suffixes": {
            "azureDataLakeStoreFileSystem": host,
            "acrLoginServer": host,
            "sqlServerHostname": host,
            "azureDataLakeAnalyticsCatalogAndJob": host,
            "keyVaultDns": host,
            "storage": host,
            "azureFrontDoorEndpointSuffix": host,
            "storageSyncEndpointSuffix": host,
            "mhsmDns": host,
            "mysqlServerEndpoint": host,
            "postgresqlServerEndpoint": host,
            "mariadbServerEndpoint": host,
            "synapseAnalytics": host,
            "attestationEndpoint": host,
        },
        "batch": format!("{base}/batch/"),
        "resourceManager": format!("{base}/arm/"),
        "vmImageAliasDoc": format!("{base}/arm/vmImageAliasDoc"),
        "activeDirectoryDataLake": format!("{base}/datalake/"),
        "sqlManagement": format!("{base}/sql/"),
        "microsoftGraphResourceId": format!("{base}/graph/"),
        "appInsightsResourceId": format!("{base}/appinsights"),
        "appInsightsTelemetryChannelResourceId": format!("{base}/appinsights/v2/track"),
        "attestationResourceId": format!("{base}/attest"),
        "synapseAnalyticsResourceId": format!("{base}/synapse"),
        "logAnalyticsResourceId": format!("{base}/loganalytics"),
        "ossrDbmsResourceId": format!("{base}/ossrdbms"),
    })
}

fn identity_json(identity: &Identity, tenant_id: &str) -> Value {
    json!({
        "id": identity.resource_id(),
        "name": identity.name,
        "type": IDENTITY_TYPE,
        "location": identity.location,
        "tags": identity.tags,
        "properties": {
            "tenantId": tenant_id,
            "principalId": identity.principal_id,
            "clientId": identity.client_id,
        },
    })
}

fn credential_json(ctx: &Ctx<'_>, identity: &Identity, c: &Credential) -> Value {
    let mut properties = json!({
        "issuer": c.issuer,
        "subject": c.subject,
        "audiences": c.audiences,
    });
    if FLEXIBLE_API_VERSIONS.contains(&ctx.api_version) {
        properties["claimsMatchingExpression"] = c.claims_matching_expression.clone().unwrap_or(Value::Null);
    }
    json!({
        "id": format!("{}/federatedIdentityCredentials/{}", identity.resource_id(), c.name),
        "name": c.name,
        "type": FIC_TYPE,
        "properties": properties,
    })
}

async fn find_identity(ctx: &Ctx<'_>, scope: &Scope, name: &str) -> Option<(String, Identity)> {
    ctx.app
        .store
        .read(|s| {
            let (ti, ii) = s.identity_position(&scope.subscription, &scope.group, name)?;
            Some((s.tenants[ti].id.clone(), s.tenants[ti].identities[ii].clone()))
        })
        .await
}

async fn list_identities(ctx: &Ctx<'_>, scope: &Scope) -> Result<Response, ArmError> {
    let identities = ctx
        .app
        .store
        .read(|s| {
            s.tenants
                .iter()
                .flat_map(|t| t.identities.iter().map(move |i| (t.id.clone(), i.clone())))
                .filter(|(_, i)| {
                    i.subscription_id.eq_ignore_ascii_case(&scope.subscription)
                        && i.resource_group.eq_ignore_ascii_case(&scope.group)
                })
                .collect::<Vec<_>>()
        })
        .await;
    let value: Vec<Value> = identities.iter().map(|(t, i)| identity_json(i, t)).collect();
    Ok(Json(json!({ "value": value })).into_response())
}

async fn get_identity(ctx: &Ctx<'_>, scope: &Scope, name: &str) -> Result<Response, ArmError> {
    let (tenant, identity) = find_identity(ctx, scope, name)
        .await
        .ok_or_else(|| identity_not_found(&scope.group, name))?;
    Ok(Json(identity_json(&identity, &tenant)).into_response())
}

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ArmError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: 'the request body must be a JSON object'.",
        )),
        Err(e) => Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: '{e}'."),
        )),
    }
}

fn valid_resource_name(name: &str) -> bool {
    (3..=128).contains(&name.len())
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

async fn put_identity(ctx: &Ctx<'_>, scope: &Scope, name: &str, body: &[u8]) -> Result<Response, ArmError> {
    let map = parse_body(body)?;
    if !valid_resource_name(name) {
        return Err(ArmError::bad_request(format!(
            "Resource name {name} is invalid. The name can be 3-128 characters long and can contain only letters, digits, '-' and '_', starting with a letter or digit."
        )));
    }
    let location = match map.get("location") {
        Some(Value::String(l)) if !l.is_empty() => l.clone(),
        _ => {
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "LocationRequired",
                "The location property is required for this definition.",
            ));
        }
    };
    let tags = match map.get("tags") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(tags)) => tags.clone(),
        Some(_) => return Err(ArmError::bad_request("The 'tags' property must be an object.")),
    };
    let caller_tenant = ctx.caller.tenant_id.clone();
    let (created, tenant, identity) = ctx
        .app
        .store
        .update(|s| {
            if let Some((ti, ii)) = s.identity_position(&scope.subscription, &scope.group, name) {
                let tenant = &mut s.tenants[ti];
                let identity = &mut tenant.identities[ii];
                identity.location = location;
                identity.tags = tags;
                return Ok::<_, ArmError>((false, tenant.id.clone(), identity.clone()));
            }
            let tenant = s
                .tenant_mut(&caller_tenant)
                .ok_or_else(|| auth_error(BearerError::Issuer(ctx.caller.issuer.clone()), &[]))?;
            let identity = Identity {
                subscription_id: scope.subscription.to_ascii_lowercase(),
                resource_group: scope.group.clone(),
                name: name.to_string(),
                location,
                tags,
                client_id: Uuid::new_v4().to_string(),
                principal_id: Uuid::new_v4().to_string(),
                credentials: Vec::new(),
            };
            tenant.identities.push(identity.clone());
            Ok((true, tenant.id.clone(), identity))
        })
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    if created {
        tracing::info!(identity = %identity.resource_id(), "arm: created user-assigned identity");
    }
    Ok((status, Json(identity_json(&identity, &tenant))).into_response())
}

async fn delete_identity(ctx: &Ctx<'_>, scope: &Scope, name: &str) -> Result<Response, ArmError> {
    let deleted = ctx
        .app
        .store
        .update(|s| {
            let Some((ti, ii)) = s.identity_position(&scope.subscription, &scope.group, name) else {
                return Ok::<_, ArmError>(false);
            };
            s.tenants[ti].identities.remove(ii);
            Ok(true)
        })
        .await?;
    Ok(if deleted {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    }
    .into_response())
}

#[cfg(test)]
mod tests;
