//! One HTTP path for Graph and ARM: a bearer token from the controller's own workload identity,
//! bounded retries of 429, 5xx and ARM's concurrent-write 409 honouring `Retry-After`, typed
//! errors, and a count of every request by service, method and status.

use std::{fmt, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use wif_exchange::{RetryPolicy, TokenRequestOptions, WorkloadIdentityCredential};

use crate::metrics::Metrics;

/// ARM's code for concurrent credential writes under one identity: retried, not reported.
pub(crate) const ARM_CONCURRENT_WRITES: &str =
    "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity";

/// Largest response body read.
const MAX_BODY: usize = 4 << 20;

/// Gives access tokens to the Graph and ARM clients.
pub trait TokenProvider: Send + Sync + 'static {
    /// An access token for `scope` (`<resource>/.default`) in `tenant`.
    fn token<'a>(
        &'a self,
        tenant: &'a str,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<String, wif_exchange::Error>>;
}

/// The production provider: the controller's own workload identity. Tokens are cached and
/// refreshed by `wif-exchange`.
impl TokenProvider for WorkloadIdentityCredential {
    fn token<'a>(
        &'a self,
        tenant: &'a str,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<String, wif_exchange::Error>> {
        Box::pin(async move {
            let mut options = TokenRequestOptions::default();
            if !tenant.eq_ignore_ascii_case(self.tenant_id()) {
                options = options.with_tenant_id(tenant);
            }
            let token = self.get_token(&[scope], &options).await?;
            Ok(token.token().expose_secret().to_owned())
        })
    }
}

/// The Azure API a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelValue)]
pub enum Service {
    /// Microsoft Graph.
    Graph,
    /// Azure Resource Manager.
    Arm,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Graph => "Microsoft Graph",
            Self::Arm => "ARM",
        })
    }
}

/// A failed Graph or ARM call.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    /// The controller could not get an access token (its own identity, or the tenant).
    #[error("failed to get an access token for {service} in tenant {tenant}: {source}")]
    Token {
        /// The API.
        service: Service,
        /// The tenant asked for.
        tenant: String,
        /// wif-exchange's error (AADSTS code and hint included).
        #[source]
        source: wif_exchange::Error,
    },
    /// The API answered with an error status (after retries, when retryable).
    #[error("{service} answered HTTP {status} {code} to {method} {path}: {message}")]
    Api {
        /// The API.
        service: Service,
        /// HTTP method.
        method: String,
        /// URL path (no query).
        path: String,
        /// HTTP status.
        status: u16,
        /// The error code of the body (`Request_ResourceNotFound`, `BadRequest`, …).
        code: String,
        /// The error message of the body.
        message: String,
    },
    /// No answer (connection, TLS, timeout), after retries.
    #[error("failed to call {service} {method} {path} after {attempts} attempt(s): {source}")]
    Transport {
        /// The API.
        service: Service,
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
        /// Attempts made.
        attempts: u32,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// A success status with a body that is not what the API documents.
    #[error("{service} answered {method} {path} with an unexpected body: {reason}")]
    Decode {
        /// The API.
        service: Service,
        /// HTTP method.
        method: String,
        /// URL path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl AzureError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of the body, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The message of the body, for API errors.
    pub(crate) fn api_message(&self) -> Option<&str> {
        match self {
            Self::Api { message, .. } => Some(message),
            _ => None,
        }
    }

    /// 404.
    pub(crate) fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Worth retrying later without a spec change (throttling, server or network trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { status, code, .. } => {
                *status == 429 || *status >= 500 || (*status == 409 && code == ARM_CONCURRENT_WRITES)
            }
            Self::Transport { .. } => true,
            Self::Token { source, .. } => source.is_transient(),
            Self::Decode { .. } => false,
        }
    }
}

/// How failed calls are retried within one operation (a reconcile retries again later, with
/// its own backoff).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// Base of the jittered exponential backoff.
    pub base_delay: Duration,
    /// Cap of one delay, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryConfig {
    /// The delay before retry `retry` (0-based): drawn from `[d/2, d]` with
    /// `d = min(max_delay, base · 2^retry)`, raised to the server's `Retry-After`, capped
    /// (`wif-exchange`'s backoff, the one the token exchange uses).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        RetryPolicy::default()
            .with_initial_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .delay(retry, retry_after)
    }
}

/// The wait a Graph or ARM answer asks for (`Retry-After`, `retry-after-ms`,
/// `x-ms-retry-after-ms`), read as the token exchange reads it.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    wif_exchange::retry::retry_after(headers, std::time::SystemTime::now())
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status (2xx).
    pub status: u16,
    /// The JSON body (`Null` when empty).
    pub body: Value,
}

/// The shared HTTP path of the Graph and ARM clients.
pub struct AzureHttp {
    client: reqwest::Client,
    tokens: Arc<dyn TokenProvider>,
    retry: RetryConfig,
    timeout: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for AzureHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureHttp")
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One Azure API (Graph or ARM) behind the shared HTTP path: where it is and which token it takes.
#[derive(Debug, Clone)]
pub struct Api {
    http: Arc<AzureHttp>,
    service: Service,
    /// Base URL, without a trailing slash.
    pub base: String,
    scope: String,
}

impl Api {
    /// `service` at `base`, called with tokens for `scope`.
    pub fn new(http: Arc<AzureHttp>, service: Service, base: String, scope: &str) -> Self {
        Self {
            http,
            service,
            base,
            scope: scope.to_owned(),
        }
    }

    /// Sends one request; the answer keeps its status.
    pub async fn send(
        &self,
        tenant: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Answer, AzureError> {
        self.http
            .send(Call {
                service: self.service,
                scope: &self.scope,
                tenant,
                method,
                url,
                body,
            })
            .await
    }

    /// Sends one request and returns the JSON body.
    pub async fn call(
        &self,
        tenant: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, AzureError> {
        self.send(tenant, method, url, body).await.map(|a| a.body)
    }

    /// Every item of the paged list at `url`, each read by `parse`; the next page's link is
    /// the body's `next_key` and is followed only when it points at this API's base, so a
    /// forged link cannot send our token elsewhere.
    pub async fn list_all<T>(
        &self,
        tenant: &str,
        mut url: String,
        next_key: &str,
        parse: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<T>, AzureError> {
        let mut out = Vec::new();
        loop {
            let body = self.call(tenant, Method::GET, &url, None).await?;
            let items = body
                .get("value")
                .and_then(Value::as_array)
                .ok_or_else(|| self.decode_error("GET", &url, "list without value".into()))?;
            for item in items {
                out.push(
                    parse(item)
                        .ok_or_else(|| self.decode_error("GET", &url, format!("unexpected item {item}")))?,
                );
            }
            match body.get(next_key).and_then(Value::as_str) {
                Some(next) if next.starts_with(&self.base) => url = next.to_owned(),
                _ => return Ok(out),
            }
        }
    }

    /// The object at `url` read by `parse`; `None` when the API answers 404.
    pub async fn get_opt<T>(
        &self,
        tenant: &str,
        url: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<Option<T>, AzureError> {
        match self.call(tenant, Method::GET, url, None).await {
            Ok(body) => parse(&body)
                .map(Some)
                .map_err(|reason| self.decode_error("GET", url, reason)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An answer that does not have the expected shape; names the path without base or query.
    pub(crate) fn decode_error(&self, method: &str, url: &str, reason: String) -> AzureError {
        AzureError::Decode {
            service: self.service,
            method: method.to_owned(),
            path: url
                .trim_start_matches(&self.base)
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned(),
            reason,
        }
    }
}

/// A request to send.
pub struct Call<'a> {
    /// The API.
    pub service: Service,
    /// Token scope (`<resource>/.default`).
    pub scope: &'a str,
    /// Tenant the token is for.
    pub tenant: &'a str,
    /// HTTP method.
    pub method: Method,
    /// Full URL.
    pub url: &'a str,
    /// JSON body.
    pub body: Option<&'a Value>,
}

impl AzureHttp {
    /// An HTTP path with this client (redirects must be off), token provider and retry policy.
    pub fn new(
        client: reqwest::Client,
        tokens: Arc<dyn TokenProvider>,
        retry: RetryConfig,
        timeout: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            client,
            tokens,
            retry,
            timeout,
            metrics,
        }
    }

    fn count(&self, service: Service, method: &Method, status: &str) {
        if let Some(m) = &self.metrics {
            m.azure_request(service, method.as_str(), status);
        }
    }

    /// Sends `call`, retrying transient failures; `Ok` only for a 2xx answer.
    pub async fn send(&self, call: Call<'_>) -> Result<Answer, AzureError> {
        let path = request_path(call.url);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.attempt(&call, &path, attempt).await? {
                Step::Answer(answer) => return Ok(answer),
                Step::Retry(delay) => tokio::time::sleep(delay).await,
            }
        }
    }

    /// One try of `call`: the answer, the delay before the next try, or the final error.
    async fn attempt(&self, call: &Call<'_>, path: &str, attempt: u32) -> Result<Step, AzureError> {
        let Call {
            service,
            scope,
            tenant,
            method,
            url,
            body,
        } = call;
        let (service, can_retry) = (*service, attempt < self.retry.max_attempts);
        let transport = |source| AzureError::Transport {
            service,
            method: method.to_string(),
            path: path.to_owned(),
            attempts: attempt,
            source,
        };
        let token = self.token(service, tenant, scope).await?;
        let mut request = self
            .client
            .request(method.clone(), *url)
            .bearer_auth(token)
            .timeout(self.timeout)
            .header("client-request-id", uuid_v4());
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = std::time::Instant::now();
        let response = match request.send().await {
            Ok(r) => r,
            Err(source) => {
                self.count(service, method, "transport");
                if can_retry {
                    let delay = self.retry.delay(attempt - 1, None);
                    tracing::debug!(%service, method = %method, %path, attempt, error = %source, ?delay, "retrying after a transport error");
                    return Ok(Step::Retry(delay));
                }
                return Err(transport(source));
            }
        };
        let status = response.status();
        self.count(service, method, status.as_str());
        let wait = retry_after(response.headers());
        let bytes = match read_body(response).await {
            Ok(b) => b,
            Err(_) if can_retry => return Ok(Step::Retry(self.retry.delay(attempt - 1, None))),
            Err(source) => return Err(transport(source)),
        };
        tracing::trace!(%service, method = %method, %path, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "azure call");
        if status.is_success() {
            let body = success_body(&bytes).map_err(|reason| AzureError::Decode {
                service,
                method: method.to_string(),
                path: path.to_owned(),
                reason,
            })?;
            return Ok(Step::Answer(Answer {
                status: status.as_u16(),
                body,
            }));
        }
        let (code, message) = error_body(&bytes, status);
        if retryable(status, &code) && can_retry {
            let delay = self.retry.delay(attempt - 1, wait);
            tracing::debug!(%service, method = %method, %path, status = status.as_u16(), %code, attempt, ?delay, "retrying");
            return Ok(Step::Retry(delay));
        }
        Err(AzureError::Api {
            service,
            method: method.to_string(),
            path: path.to_owned(),
            status: status.as_u16(),
            code,
            message,
        })
    }
}

impl AzureHttp {
    /// A token for `scope` in `tenant`.
    async fn token(&self, service: Service, tenant: &str, scope: &str) -> Result<String, AzureError> {
        self.tokens
            .token(tenant, scope)
            .await
            .map_err(|source| AzureError::Token {
                service,
                tenant: tenant.to_owned(),
                source,
            })
    }
}

/// What one try of a call ends with, short of a final error.
enum Step {
    /// A 2xx answer.
    Answer(Answer),
    /// A transient failure: try again after this delay.
    Retry(Duration),
}

/// The path of `url`, without scheme, host or query (for logs and errors).
fn request_path(url: &str) -> String {
    url.split('?')
        .next()
        .unwrap_or(url)
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
        .unwrap_or_default()
}

/// The JSON body of a 2xx answer (`null` when empty).
fn success_body(bytes: &[u8]) -> Result<Value, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))
}

/// Whether an error answer is worth another try: throttling, most 5xx, and ARM's
/// concurrent-write conflict.
fn retryable(status: StatusCode, code: &str) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
        || (status == StatusCode::CONFLICT && code == ARM_CONCURRENT_WRITES)
}

async fn read_body(response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut response = response;
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if out.len() + chunk.len() > MAX_BODY {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `(code, message)` of a Graph or ARM error body: `{"error":{"code","message"}}`, where Graph's
/// message may be `{"lang","value"}`. Anything else: the status text and the body's start.
pub(crate) fn error_body(bytes: &[u8], status: StatusCode) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("Error").replace(' ', ""));
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str().or_else(|| m.get("value").and_then(Value::as_str)))
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned());
    (code, message)
}

/// A request id: a random (v4) UUID, as Graph and ARM expect in `client-request-id`.
fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2.128")])),
            Some(Duration::from_millis(2128))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "150")])),
            Some(Duration::from_millis(150))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")])), None);
        assert_eq!(retry_after(&headers(&[])), None);
        let past = retry_after(&headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]));
        assert_eq!(past, Some(Duration::ZERO));
    }

    #[test]
    fn delays_are_jittered_raised_by_retry_after_and_capped() {
        let r = RetryConfig {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        for _ in 0..100 {
            let d = r.delay(1, None);
            assert!(
                (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&d),
                "{d:?}"
            );
        }
        assert_eq!(r.delay(0, Some(Duration::from_secs(1))), Duration::from_secs(1));
        assert_eq!(r.delay(0, Some(Duration::from_secs(60))), Duration::from_secs(2));
        assert!(r.delay(30, None) <= Duration::from_secs(2));
    }

    #[test]
    fn error_bodies_of_graph_and_arm() {
        let graph = br#"{"error":{"code":"Request_ResourceNotFound","message":"Resource 'x' does not exist","innerError":{}}}"#;
        assert_eq!(
            error_body(graph, StatusCode::NOT_FOUND),
            (
                "Request_ResourceNotFound".into(),
                "Resource 'x' does not exist".into()
            )
        );
        let lang = br#"{"error":{"code":"BadRequest","message":{"lang":"en","value":"bad"}}}"#;
        assert_eq!(error_body(lang, StatusCode::BAD_REQUEST).1, "bad");
        let (code, message) = error_body(b"<html>gateway</html>", StatusCode::BAD_GATEWAY);
        assert_eq!(code, "BadGateway");
        assert!(message.contains("gateway"));
    }

    #[test]
    fn transient_errors() {
        let api = |status, code: &str| AzureError::Api {
            service: Service::Arm,
            method: "PUT".into(),
            path: "/x".into(),
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(api(429, "TooManyRequests").is_transient());
        assert!(api(503, "ServiceUnavailable").is_transient());
        assert!(api(409, ARM_CONCURRENT_WRITES).is_transient());
        assert!(!api(409, "Conflict").is_transient());
        assert!(!api(400, "BadRequest").is_transient());
        assert!(api(404, "NotFound").is_not_found());
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = uuid_v4();
        assert!(wif_api::is_guid(&id), "{id}");
    }
}
