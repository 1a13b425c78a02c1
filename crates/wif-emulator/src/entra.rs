//! The Entra side: OIDC discovery, JWKS, instance discovery and the v2 token endpoint with
//! federated client assertion validation.
//!
//! Token endpoint checks, in this order (each failure answers the listed AADSTS code):
//!
//! | step | failure |
//! |---|---|
//! | tenant path segment well-formed / not `common`/`consumers` / known | 900023 / 9001023 / 90002 |
//! | `grant_type` present / `client_credentials` | 900144 / 70003 |
//! | `client_id`, `scope` present; scope is one `{resource}/.default` | 900144; 70011, 1002012, 700022 |
//! | client is an application (appId) or user-assigned identity (clientId) of the tenant | 700016 |
//! | `client_secret` (applications with seeded secrets only) | 7000215; neither secret nor assertion: 7000218 |
//! | `client_assertion_type` present / jwt-bearer | 900144 / 90011 |
//! | client has federated credentials at all | 70025 |
//! | assertion is a JWS with `iss`, `sub`, `aud`, `exp`, alg RS256/ES256 | 50027 |
//! | `iat` present, `exp - iat` ≤ 25 h | 70023 |
//! | now within `[nbf, exp]` ± skew | 700024 |
//! | `iss` equals (byte for byte) the issuer of a credential | 700211 |
//! | issuer discovery + JWKS fetched over HTTPS / key for `kid` found / signature valid | 90061 / 7000272 / 700027 |
//! | a credential with that issuer has the audience (in `aud`) | 700212 |
//! | … and the subject (exact; 7002138 if it only matches ignoring case) | 700213 |
//!
//! A credential created or updated less than the propagation delay ago is not honoured yet: when
//! only such a credential would match, the answer is `AADSTS70021`.
//!
//! ## Where each code, status and `error` class comes from
//!
//! "[doc]" is Microsoft's list of AADSTS codes, <https://learn.microsoft.com/entra/identity-platform/reference-error-codes>
//! (source `MicrosoftDocs/entra-docs: docs/identity-platform/reference-error-codes.md`), which
//! names codes but not statuses; a recorded response (a GitHub issue quoting the body Entra
//! sent) gives status and class. Where no public record was found, the line says so and the
//! emulator follows RFC 6749 §5.2 (`invalid_client` → 401, the rest → 400).
//!
//! | code | emulator answers | source |
//! |---|---|---|
//! | 900023 | 400 `invalid_request` | recorded 400 `invalid_request`: caddy-dns/azure#3; message: microsoft/Analysis-Services#194 |
//! | 9001023 | 400 `invalid_request` | [doc] (message verbatim); status/class: no record found (RFC 6749) |
//! | 90002 | 400 `invalid_request` | [doc] InvalidTenantName; recorded `400 Bad Request`: sjkp/letsencrypt-siteextension#108 |
//! | 900144 | 400 `invalid_request` | [doc] (message verbatim); [doc] table: missing parameter → `invalid_request` |
//! | 70003 | 400 `unsupported_grant_type` | [doc] UnsupportedGrantType; [doc] `error` table |
//! | 70011 | 400 `invalid_scope` | [doc] InvalidScope; [doc] sample error body (`invalid_scope`, 70011) |
//! | 1002012 | 400 `invalid_scope` | recorded `invalid_scope (AADSTS1002012 …)`: databricks/databricks-sql-nodejs#226; message: microsoftgraph/msgraph-sdk-python#181 |
//! | 700022 | 400 `invalid_scope` | [doc] InvalidMultipleResourcesScope; class: no record found |
//! | 700016 | 400 `unauthorized_client` | [doc] UnauthorizedClient_DoesNotMatchRequest; [doc] `error` table (`unauthorized_client`: app not in the tenant) |
//! | 7000215 | 401 `invalid_client` | [doc]; [doc] `error` table (`invalid_client`: credentials aren't valid) |
//! | 7000218 | 401 `invalid_client` | [doc]; recorded `invalid_client: 7000218`: Azure-Samples/ms-identity-javascript-v2#18 |
//! | 90011 | 400 `invalid_request` | recorded `invalid_request` + "Unexpected client assertion type.": AzureAD/azure-activedirectory-library-for-ruby#53 |
//! | 70025 | 401 `invalid_client` | no public record found; text and class are the emulator's (like the other credential mismatches) |
//! | 50027 | 400 `invalid_request` | [doc] InvalidJwtToken; class: no record found |
//! | 70023 | 401 `invalid_client` | recorded `invalid_client` (2023): Azure/azure-sdk-for-python#32124; an older one (2022) was 400 `invalid_request`: MicrosoftDocs/azure-docs#86916 |
//! | 700024 | 401 `invalid_client` | recorded `invalid_client`: obikuro/Sato#1, dotnet/docker-tools#1310 (MSAL `ErrorCode: invalid_client`) |
//! | 700211 | 401 `invalid_client` | recorded `invalid_client`: Azure/azure-workload-identity#1200 |
//! | 90061 | 400 `invalid_request` | recorded `StatusCode: 400`, `invalid_request`: Azure/azure-workload-identity#605, #608 |
//! | 7000272 | 401 `invalid_client` | recorded `reply status code was 401`, `invalid_client`: Azure/azure-workload-identity#616, #1232 |
//! | 700027 | 401 `invalid_client` | [doc] (message verbatim); class: [doc] `error` table |
//! | 700212 | 401 `invalid_client` | no recorded body found; same family and text as 700211 |
//! | 700213 | 401 `invalid_client` | message: Azure/azure-workload-identity#1200, dotnet/maui#31978; class as 700211 |
//! | 7002138 | 401 `invalid_client` | message: Azure/login#515; class as the sibling 7002137 (401 `invalid_client`, microsoft/Agents#202) |
//! | 70021 | 400 `invalid_request` | recorded `reply status code was 400`, `invalid_request`: Azure/azure-workload-identity `docs/book/src/troubleshooting.md` and #616 |
//! | 900561 | 400 `invalid_request` | [doc] BadResourceRequestInvalidRequest (message verbatim) |
//! | 90055 | 429 `temporarily_unavailable` (injected) | [doc] TenantThrottlingError; status/class: no record found |
//! | 50033 | 5xx `temporarily_unavailable` (injected) | [doc] RetryableError; class: [doc] `error` table |
//! | 50000 | 500 `server_error` | [doc] TokenIssuanceError; class: RFC 6749 |

use std::{collections::HashMap, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    app::{AppState, ClientAuth},
    config::Settings,
    credentials::Matcher,
    jwt::Jwt,
    oidc::KeyError,
    state::{Client, now_ms},
    wire::AadError,
};

pub(crate) mod assertion;
use assertion::*;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const WIF_DOC: &str = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation";
/// Maximum assertion lifetime Entra accepts: 1 day 1 hour.
const MAX_ASSERTION_LIFETIME: i64 = 25 * 3600;
/// Tenant aliases of multi-tenant endpoints.
const MULTI_TENANT: &[&str] = &["common", "organizations", "consumers"];

/// The `{tenant}` path segment, decoded leniently (axum's `Path` would answer a plain-text 400
/// for invalid percent-encoding; Entra answers with its own error shape).
fn tenant_segment(uri: &Uri) -> String {
    let raw = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

fn valid_tenant_syntax(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

fn tenant_not_found(tenant: &str) -> AadError {
    AadError::invalid_request(
        90002,
        format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
        ),
    )
}

fn invalid_tenant_syntax(tenant: &str) -> AadError {
    AadError::invalid_request(
        900023,
        format!(
            "Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid external domain."
        ),
    )
}

// === discovery ===

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub(crate) async fn openid_configuration(State(app): State<AppState>, uri: Uri) -> Response {
    let tenant = tenant_segment(&uri);
    let tenant_id = match resolve_for_discovery(&app, &tenant).await {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let base = &app.base_url;
    let path_tenant = if MULTI_TENANT.contains(&tenant.to_ascii_lowercase().as_str()) {
        tenant.to_ascii_lowercase()
    } else {
        tenant_id.clone()
    };
    let host = url::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let body = json!({
        "token_endpoint": format!("{base}/{path_tenant}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{path_tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": app.issuer(&tenant_id),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": format!("{base}/graph/oidc/userinfo"),
        "authorization_endpoint": format!("{base}/{path_tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{path_tenant}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{path_tenant}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "azp", "appid", "ver"],
        "kerberos_endpoint": format!("{base}/{path_tenant}/kerberos"),
        "tenant_region_scope": "EU",
        "cloud_instance_name": host,
        "cloud_graph_host_name": host,
        "msgraph_host": host,
        "rbac_url": format!("{base}/arm"),
    });
    Json(body).into_response()
}

/// The tenant id for discovery: the real id, or `{tenantid}` for the multi-tenant aliases.
async fn resolve_for_discovery(app: &AppState, tenant: &str) -> Result<String, AadError> {
    if MULTI_TENANT.contains(&tenant.to_ascii_lowercase().as_str()) {
        return Ok("{tenantid}".to_string());
    }
    if !valid_tenant_syntax(tenant) {
        return Err(invalid_tenant_syntax(tenant));
    }
    let found = app.store.read(|s| s.tenant(tenant).map(|t| t.id.clone())).await;
    found.ok_or_else(|| {
        let mut err = tenant_not_found(tenant);
        err.error = "invalid_tenant";
        err
    })
}

/// `GET /{tenant}/discovery/v2.0/keys` (and `/{tenant}/discovery/keys`).
pub(crate) async fn jwks(State(app): State<AppState>, uri: Uri) -> Response {
    let tenant = tenant_segment(&uri);
    let tenant_id = match resolve_for_discovery(&app, &tenant).await {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    Json(json!({ "keys": [app.signing.jwk(&app.issuer(&tenant_id))] })).into_response()
}

/// `GET /common/discovery/instance` (MSAL's instance discovery): the emulator's host is its own
/// only alias.
pub(crate) async fn instance_discovery(State(app): State<AppState>, uri: Uri) -> Response {
    let tenant = tenant_segment(&uri);
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    if !MULTI_TENANT.contains(&tenant.to_ascii_lowercase().as_str()) {
        return AadError::new(
            StatusCode::NOT_FOUND,
            "invalid_request",
            90002,
            "Instance discovery is only served on /common and /organizations.",
        )
        .into_response();
    }
    let host = url::Url::parse(&app.base_url)
        .ok()
        .map(|u| match u.port() {
            Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_string(),
        })
        .unwrap_or_default();
    // The tenant of the authorization endpoint MSAL asks about, else `common`.
    let asked_tenant = query
        .get("authorization_endpoint")
        .and_then(|e| url::Url::parse(e).ok())
        .and_then(|u| u.path_segments().and_then(|mut s| s.next().map(str::to_string)))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "common".into());
    Json(json!({
        "tenant_discovery_endpoint": format!("{}/{asked_tenant}/v2.0/.well-known/openid-configuration", app.base_url),
        "api-version": "1.1",
        "metadata": [{ "preferred_network": host, "preferred_cache": host, "aliases": [host] }],
    }))
    .into_response()
}

// === token endpoint ===

/// `GET /{tenant}/oauth2/v2.0/token`: Entra only takes POST.
pub(crate) async fn token_get(headers: HeaderMap) -> Response {
    AadError::invalid_request(
        900561,
        "The endpoint only accepts POST requests. Received a GET request.",
    )
    .with_correlation(crate::wire::client_request_id(&headers))
    .into_response()
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token(
    State(app): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tenant = tenant_segment(&uri);
    let correlation = crate::wire::client_request_id(&headers);
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
        });
    // A body that is not a form carries no parameters: Entra then reports the first missing one.
    let mut form: HashMap<String, String> = HashMap::new();
    if is_form {
        for (key, value) in url::form_urlencoded::parse(&body) {
            form.entry(key.into_owned()).or_insert_with(|| value.into_owned());
        }
    }
    match exchange(&app, &tenant, &form).await {
        Ok(body) => {
            let mut response = Json(body).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store, no-cache"),
            );
            response
        }
        Err(err) => {
            tracing::info!(
                tenant,
                client_id = form.get("client_id").map(String::as_str).unwrap_or_default(),
                code = err.code,
                "token request refused"
            );
            err.with_correlation(correlation).into_response()
        }
    }
}

fn param<'a>(form: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    form.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

async fn exchange(
    app: &AppState,
    tenant_key: &str,
    form: &HashMap<String, String>,
) -> Result<Value, AadError> {
    if !valid_tenant_syntax(tenant_key) {
        return Err(invalid_tenant_syntax(tenant_key));
    }
    if matches!(tenant_key.to_ascii_lowercase().as_str(), "common" | "consumers") {
        return Err(AadError::invalid_request(
            9001023,
            "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.",
        ));
    }
    let tenant = app
        .store
        .read(|s| s.tenant(tenant_key).cloned())
        .await
        .ok_or_else(|| tenant_not_found(tenant_key))?;

    let grant_type = param(form, "grant_type").ok_or_else(|| AadError::missing_parameter("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = param(form, "client_id").ok_or_else(|| AadError::missing_parameter("client_id"))?;
    let scope = param(form, "scope").ok_or_else(|| AadError::missing_parameter("scope"))?;
    let resource = resource_from_scope(scope)?;
    let client = tenant.client(client_id).ok_or_else(|| {
        AadError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant_key}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        )
    })?;

    let auth = authenticate(app, client, client_id, form).await?;
    let body = app.issue_token(&tenant, client, &resource, auth).map_err(|e| {
        tracing::error!(error = %e, "failed to sign an access token");
        AadError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            50000,
            "There was an error issuing a token.",
        )
    })?;
    tracing::info!(tenant = %tenant.id, client_id, resource, "issued an access token");
    Ok(body)
}

/// How the client proves who it is: a federated client assertion (checked as Entra does) or a
/// client secret.
async fn authenticate(
    app: &AppState,
    client: Client<'_>,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Result<ClientAuth, AadError> {
    let auth = match (param(form, "client_assertion"), param(form, "client_secret")) {
        (Some(assertion), _) => {
            let assertion_type = param(form, "client_assertion_type")
                .ok_or_else(|| AadError::missing_parameter("client_assertion_type"))?;
            if assertion_type != JWT_BEARER {
                return Err(AadError::invalid_request(
                    90011,
                    "Unexpected client assertion type.",
                ));
            }
            validate_assertion(app, client, client_id, assertion).await?;
            ClientAuth::Assertion
        }
        (None, Some(secret)) => {
            let accepted = match client {
                Client::Application(a) => a.client_secrets.iter().any(|s| s == secret),
                Client::Identity(_) => false,
            };
            if !accepted {
                return Err(AadError::invalid_client(
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                ));
            }
            ClientAuth::Secret
        }
        (None, None) => {
            return Err(AadError::invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    };
    Ok(auth)
}

/// `{resource}/.default` → resource. OIDC scopes that MSAL may add are ignored.
pub(crate) fn resource_from_scope(scope: &str) -> Result<String, AadError> {
    let invalid = || {
        AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        )
    };
    let scopes: Vec<&str> = scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .filter(|s| !matches!(*s, "openid" | "profile" | "offline_access" | "email"))
        .collect();
    let mut resources: Vec<&str> = Vec::new();
    for s in &scopes {
        let resource = s.strip_suffix("/.default").ok_or_else(|| {
            AadError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                format!(
                    "The provided value for scope {s} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            )
        })?;
        if resource.is_empty() || resource.chars().any(char::is_control) {
            return Err(invalid());
        }
        if !resources.contains(&resource) {
            resources.push(resource);
        }
    }
    match resources.as_slice() {
        [] => Err(invalid()),
        [one] => Ok((*one).to_string()),
        _ => Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            700022,
            format!(
                "The provided value for the input parameter scope is not valid because it contains more than one resource. Scope {scope} is not valid."
            ),
        )),
    }
}

fn entra_time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S.0000000Z").to_string())
        .unwrap_or_else(|_| secs.to_string())
}

fn no_match(message: String, code: u32) -> AadError {
    AadError::invalid_client(code, message)
}

#[cfg(test)]
mod tests;
