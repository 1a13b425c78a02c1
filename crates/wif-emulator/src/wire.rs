//! Error bodies of the three APIs the emulator plays: the Entra token endpoint (OAuth2 error with
//! an `AADSTS` code), Microsoft Graph (OData error with `innerError`) and ARM (`CloudError`).

use axum::{
    Json,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use uuid::Uuid;

/// Entra's documented error lookup page; real responses point there, so the emulator's do too.
const ERROR_URI: &str = "https://login.microsoftonline.com/error";

/// `2025-04-22 01:01:11Z`, the timestamp format of Entra error bodies.
pub(crate) fn entra_timestamp() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// `2023-02-02T21:29:38`, the `innerError.date` format of Graph.
fn graph_date() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// The caller's `client-request-id` header, if it is a GUID (Entra and Graph echo it back).
pub(crate) fn client_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .map(|id| id.to_string())
}

fn insert_header(response: &mut Response, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// The percent-decoded, non-empty segments of a request path below `prefix` (`/arm`, `/graph`).
pub(crate) fn path_segments(path: &str, prefix: &str) -> Vec<String> {
    path.strip_prefix(prefix)
        .unwrap_or_default()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// `Retry-After` as configured: an integer when whole, else a decimal (Graph sends `2.128`).
pub(crate) fn retry_after_value(seconds: f64) -> String {
    // `Display` for f64 is the shortest exact form: 2.0 → "2", 2.128 → "2.128".
    format!("{}", seconds.max(0.0))
}

// === Entra token endpoint ===

/// An Entra (`login.microsoftonline.com`) OAuth2 error.
#[derive(Debug, Clone)]
pub(crate) struct AadError {
    pub(crate) status: StatusCode,
    /// The OAuth2 `error` value (`invalid_request`, `invalid_client`, …).
    pub(crate) error: &'static str,
    /// The AADSTS number.
    pub(crate) code: u32,
    /// The text after `AADSTSnnnn: `.
    pub(crate) message: String,
    pub(crate) correlation_id: Option<String>,
    pub(crate) retry_after: Option<f64>,
}

impl AadError {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        code: u32,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            code,
            message: message.into(),
            correlation_id: None,
            retry_after: None,
        }
    }

    /// `400 invalid_request`.
    pub(crate) fn invalid_request(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", code, message)
    }

    /// `401 invalid_client`, the class of every federated-credential mismatch.
    pub(crate) fn invalid_client(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
    }

    /// `AADSTS900144`, a required body parameter is missing.
    pub(crate) fn missing_parameter(name: &str) -> Self {
        Self::invalid_request(
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    pub(crate) fn with_correlation(mut self, correlation_id: Option<String>) -> Self {
        self.correlation_id = correlation_id;
        self
    }
}

impl IntoResponse for AadError {
    fn into_response(self) -> Response {
        let trace_id = Uuid::new_v4().to_string();
        let correlation_id = self.correlation_id.unwrap_or_else(|| Uuid::new_v4().to_string());
        let timestamp = entra_timestamp();
        let description = format!(
            "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}",
            self.code, self.message
        );
        let body = json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("{ERROR_URI}?code={}", self.code),
        });
        let mut response = (self.status, Json(body)).into_response();
        insert_header(&mut response, header::CACHE_CONTROL, "no-store, no-cache");
        insert_header(
            &mut response,
            HeaderName::from_static("x-ms-request-id"),
            &trace_id,
        );
        if let Some(seconds) = self.retry_after {
            insert_header(&mut response, header::RETRY_AFTER, &retry_after_value(seconds));
        }
        response
    }
}

// === Microsoft Graph ===

/// A Microsoft Graph OData error.
#[derive(Debug, Clone)]
pub(crate) struct GraphError {
    pub(crate) status: StatusCode,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) client_request_id: Option<String>,
    pub(crate) retry_after: Option<f64>,
    pub(crate) www_authenticate: bool,
}

impl GraphError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
            client_request_id: None,
            retry_after: None,
            www_authenticate: false,
        }
    }

    /// `400 Request_BadRequest`, the directory's generic validation error.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Request_BadRequest", message)
    }

    /// `404 Request_ResourceNotFound` for an application or credential (by id or name).
    pub(crate) fn not_found(key: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            format!(
                "Resource '{key}' does not exist or one of its queried reference-property objects are not present."
            ),
        )
    }

    /// `401 InvalidAuthenticationToken`.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", message);
        err.www_authenticate = true;
        err
    }

    pub(crate) fn with_request_id(mut self, id: Option<String>) -> Self {
        self.client_request_id = id;
        self
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let request_id = Uuid::new_v4().to_string();
        let client_request_id = self.client_request_id.unwrap_or_else(|| request_id.clone());
        let mut inner = json!({
            "date": graph_date(),
            "request-id": request_id,
            "client-request-id": client_request_id,
        });
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            inner["code"] = Value::from("429");
            inner["status"] = Value::from("429");
        }
        let body = json!({ "error": { "code": self.code, "message": self.message, "innerError": inner } });
        let mut response = (self.status, Json(body)).into_response();
        insert_header(&mut response, HeaderName::from_static("request-id"), &request_id);
        insert_header(
            &mut response,
            HeaderName::from_static("client-request-id"),
            &client_request_id,
        );
        if let Some(seconds) = self.retry_after {
            insert_header(&mut response, header::RETRY_AFTER, &retry_after_value(seconds));
            insert_header(
                &mut response,
                HeaderName::from_static("x-ms-throttle-information"),
                "ResourceUnitLimitExceeded",
            );
        }
        if self.www_authenticate {
            insert_header(
                &mut response,
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
            );
        }
        response
    }
}

// === ARM ===

/// An Azure Resource Manager `CloudError`.
#[derive(Debug, Clone)]
pub(crate) struct ArmError {
    pub(crate) status: StatusCode,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) retry_after: Option<f64>,
    pub(crate) www_authenticate: Option<String>,
}

impl ArmError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// `400 BadRequest`, Microsoft.ManagedIdentity's validation error.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// A `401`, with the `WWW-Authenticate` challenge ARM sends.
    pub(crate) fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut err = Self::new(StatusCode::UNAUTHORIZED, code, message.clone());
        err.www_authenticate = Some(format!(
            "Bearer authorization_uri=\"https://login.windows.net/\", error=\"invalid_token\", error_description=\"{}\"",
            message.replace('"', "'")
        ));
        err
    }
}

impl IntoResponse for ArmError {
    fn into_response(self) -> Response {
        let request_id = Uuid::new_v4().to_string();
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        insert_header(
            &mut response,
            HeaderName::from_static("x-ms-request-id"),
            &request_id,
        );
        insert_header(
            &mut response,
            HeaderName::from_static("x-ms-correlation-request-id"),
            &request_id,
        );
        insert_header(
            &mut response,
            HeaderName::from_static("x-ms-failure-cause"),
            "gateway",
        );
        if let Some(seconds) = self.retry_after {
            insert_header(&mut response, header::RETRY_AFTER, &retry_after_value(seconds));
        }
        if let Some(challenge) = &self.www_authenticate {
            insert_header(&mut response, header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_keeps_fractions_and_prints_integers_plainly() {
        assert_eq!(retry_after_value(2.0), "2");
        assert_eq!(retry_after_value(2.128), "2.128");
        assert_eq!(retry_after_value(0.5), "0.5");
    }

    #[test]
    fn entra_timestamp_has_entra_format() {
        let ts = entra_timestamp();
        assert_eq!(ts.len(), "2025-04-22 01:01:11Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
    }
}
