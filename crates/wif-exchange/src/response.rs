//! Parsing of the token endpoint's answers: the success body, Entra's error body (or whatever a
//! proxy put there instead), and `Retry-After`.

use std::time::Duration;

use serde_json::Value;

use crate::{
    error::{EntraError, Error},
    token::Secret,
};

/// The fields of a successful token response that we use.
pub(crate) struct TokenResponse {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_in: Duration,
    pub refresh_in: Option<Duration>,
}

/// Parses a 2xx body. Error messages never quote the body: it holds the access token.
pub(crate) fn parse_success(status: u16, body: &[u8]) -> Result<TokenResponse, Error> {
    let invalid = |reason: String| Error::InvalidResponse { status, reason };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "body is not JSON ({} bytes, {})",
            body.len(),
            e.classify_name()
        ))
    })?;
    let Value::Object(obj) = value else {
        return Err(invalid("body is not a JSON object".into()));
    };
    let access_token = match obj.get("access_token") {
        Some(Value::String(s)) if !s.trim().is_empty() => Secret::from(s.trim().to_owned()),
        Some(Value::String(_)) => return Err(invalid("access_token is empty".into())),
        Some(_) => return Err(invalid("access_token is not a string".into())),
        None => {
            let what = obj
                .get("error")
                .and_then(Value::as_str)
                .map(|e| format!(" (error {e:?})"))
                .unwrap_or_default();
            return Err(invalid(format!("access_token is missing{what}")));
        }
    };
    let expires_in = seconds(obj.get("expires_in"))
        .ok_or_else(|| invalid("expires_in is missing or not a number of seconds".into()))?;
    if expires_in.is_zero() {
        return Err(invalid("expires_in is 0".into()));
    }
    let token_type = obj
        .get("token_type")
        .and_then(Value::as_str)
        .unwrap_or("Bearer")
        .to_owned();
    Ok(TokenResponse {
        access_token,
        token_type,
        expires_in,
        refresh_in: seconds(obj.get("refresh_in")),
    })
}

/// Seconds as a JSON number or a numeric string (some STSs send strings).
fn seconds(v: Option<&Value>) -> Option<Duration> {
    let secs = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Longest excerpt of a non-Entra body kept in an error.
const EXCERPT_CHARS: usize = 200;

/// Builds the error for a non-2xx answer. `secrets` (the assertion) are scrubbed from every
/// field, in case an endpoint echoes the request.
pub(crate) fn parse_error(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    secrets: &[&str],
) -> EntraError {
    let mut err = EntraError::with_status(status);
    err.retry_after = retry_after;
    let scrub = |s: &str| -> String {
        secrets
            .iter()
            .filter(|x| !x.is_empty())
            .fold(s.to_owned(), |acc, x| acc.replace(x, "[REDACTED]"))
    };
    let text_field = |obj: &serde_json::Map<String, Value>, k: &str| -> Option<String> {
        obj.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(&scrub)
    };
    // Short fields end up in one-line messages: no control characters.
    let short_field = |obj: &serde_json::Map<String, Value>, k: &str| -> Option<String> {
        text_field(obj, k).map(|s| s.replace(|c: char| c.is_control(), " "))
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) if obj.contains_key("error") || obj.contains_key("error_description") => {
            err.error = short_field(&obj, "error");
            err.error_description = text_field(&obj, "error_description");
            err.error_codes = match obj.get("error_codes") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|c| match c {
                        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                        Value::String(s) => s.trim().parse().ok(),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            err.trace_id = short_field(&obj, "trace_id");
            err.correlation_id = short_field(&obj, "correlation_id");
            err.timestamp = short_field(&obj, "timestamp");
            err.error_uri = short_field(&obj, "error_uri");
            err.suberror = short_field(&obj, "suberror");
            err.claims = text_field(&obj, "claims");
        }
        Ok(other) => err.body_excerpt = excerpt(&scrub(&other.to_string())),
        Err(_) => err.body_excerpt = excerpt(&scrub(&String::from_utf8_lossy(body))),
    }
    err
}

/// A short, single-line, printable excerpt; the `<title>` of an HTML page.
fn excerpt(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let text = match (lower.find("<title>"), lower.find("</title>")) {
        (Some(a), Some(b)) if a + 7 <= b => &text[a + 7..b],
        _ => text,
    };
    let mut out = String::new();
    for word in text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() > EXCERPT_CHARS {
            out = out.chars().take(EXCERPT_CHARS).collect();
            out.push('…');
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn success_body() {
        let r = parse_success(
            200,
            br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0","refresh_in":1799}"#,
        )
        .expect("valid");
        assert_eq!(r.access_token.expose_secret(), "eyJ0");
        assert_eq!(r.expires_in, Duration::from_secs(3599));
        assert_eq!(r.refresh_in, Some(Duration::from_secs(1799)));
        // strings for numbers, no token_type
        let r = parse_success(200, br#"{"expires_in":"3600","access_token":"x"}"#).expect("valid");
        assert_eq!(r.expires_in, Duration::from_secs(3600));
        assert_eq!(r.token_type, "Bearer");
        assert!(r.refresh_in.is_none());
    }

    #[test]
    fn bad_success_bodies_are_typed_and_never_quote_the_body() {
        for (body, want) in [
            (
                &br#"{"expires_in":3600,"access_token":""}"#[..],
                "access_token is empty",
            ),
            (br#"{"expires_in":3600}"#, "access_token is missing"),
            (br#"{"access_token":"SECRETTOKEN"}"#, "expires_in is missing"),
            (
                br#"{"access_token":"SECRETTOKEN","expires_in":0}"#,
                "expires_in is 0",
            ),
            (
                br#"{"access_token":"SECRETTOKEN","expires_in":-5}"#,
                "expires_in is missing",
            ),
            (
                br#"{"access_token":"SECRETTOKEN","expires_in":"soon"}"#,
                "expires_in is missing",
            ),
            (br#"{"access_token":"SECRETTOKEN","#, "truncated"),
            (b"<html>SECRETTOKEN</html>", "not JSON"),
            (br#"["SECRETTOKEN"]"#, "not a JSON object"),
        ] {
            let e = parse_success(200, body).err().expect("invalid");
            let s = format!("{e} {e:?}");
            assert!(matches!(e, Error::InvalidResponse { status: 200, .. }), "{s}");
            assert!(s.contains(want), "{s}");
            assert!(!s.contains("SECRETTOKEN"), "{s}");
        }
    }

    #[test]
    fn entra_error_body() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS700211: No matching federated identity record found for presented assertion issuer 'https://x'.\r\nTrace ID: 1\r\nCorrelation ID: 2\r\nTimestamp: 3","error_codes":[700211],"timestamp":"2024-08-05 10:07:04Z","trace_id":"tr","correlation_id":"co","error_uri":"https://login.microsoftonline.com/error?code=700211"}"#;
        let e = parse_error(400, None, body, &[]);
        assert_eq!(e.error.as_deref(), Some("invalid_client"));
        assert_eq!(e.error_codes, vec![700211]);
        assert_eq!(e.aadsts(), Some(700211));
        assert_eq!(e.trace_id.as_deref(), Some("tr"));
        assert_eq!(e.correlation_id.as_deref(), Some("co"));
        assert!(e.hint().is_some_and(|h| h.contains("issuer")));
        assert!(
            e.message()
                .is_some_and(|m| m.starts_with("No matching federated identity record"))
        );
    }

    #[test]
    fn html_and_text_bodies_become_excerpts() {
        let e = parse_error(
            502,
            None,
            b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
            &[],
        );
        assert_eq!(e.body_excerpt.as_deref(), Some("502 Bad Gateway"));
        assert_eq!(e.aadsts(), None);
        let long = "x ".repeat(1000);
        let e = parse_error(500, None, long.as_bytes(), &[]);
        assert!(
            e.body_excerpt
                .as_ref()
                .is_some_and(|s| s.chars().count() <= EXCERPT_CHARS + 1)
        );
        let e = parse_error(500, None, b"", &[]);
        assert!(e.body_excerpt.is_none());
        let e = parse_error(503, None, br#"{"message":"upstream down"}"#, &[]);
        assert_eq!(e.body_excerpt.as_deref(), Some(r#"{"message":"upstream down"}"#));
    }

    #[test]
    fn echoed_assertion_is_scrubbed() {
        let body = br#"{"error":"invalid_request","error_description":"AADSTS50027: bad token eyJhbGciOi.assertion.sig"}"#;
        let e = parse_error(400, None, body, &["eyJhbGciOi.assertion.sig"]);
        let s = format!("{e} {e:?}");
        assert!(!s.contains("eyJhbGciOi.assertion.sig"), "{s}");
        assert!(s.contains("[REDACTED]"));
        let e = parse_error(
            400,
            None,
            b"client_assertion=eyJhbGciOi.assertion.sig&x=1",
            &["eyJhbGciOi.assertion.sig"],
        );
        assert!(!format!("{e:?}").contains("eyJhbGciOi.assertion.sig"));
    }

    proptest! {
        #[test]
        fn error_parser_never_panics_and_stays_one_line(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let e = parse_error(status, None, &body, &[]);
            let _ = e.hint();
            let _ = e.aadsts();
            let shown = e.to_string();
            prop_assert!(!shown.contains('\n'));
            let _ = parse_success(status, &body);
        }

        #[test]
        fn error_parser_handles_arbitrary_entra_shaped_json(
            error in ".{0,40}", desc in ".{0,300}", codes in proptest::collection::vec(any::<i64>(), 0..4), trace in ".{0,40}"
        ) {
            let body = serde_json::json!({"error": error, "error_description": desc, "error_codes": codes, "trace_id": trace});
            let e = parse_error(400, None, body.to_string().as_bytes(), &[]);
            let _ = e.aadsts();
            let _ = e.message();
            prop_assert!(!e.to_string().contains(['\n', '\r']));
        }

        #[test]
        fn a_token_response_parses_to_its_values_and_errors_never_quote_it(
            token in "eyJ[A-Za-z0-9._-]{8,200}",
            expires in 1u32..200_000,
            as_string in any::<bool>(),
            refresh in proptest::option::of(1u32..100_000),
            token_type in proptest::option::of("[A-Za-z]{1,10}"),
        ) {
            let mut body = serde_json::json!({"access_token": token});
            body["expires_in"] = if as_string { serde_json::json!(expires.to_string()) } else { serde_json::json!(expires) };
            if let Some(r) = refresh {
                body["refresh_in"] = serde_json::json!(r);
            }
            if let Some(t) = &token_type {
                body["token_type"] = serde_json::json!(t);
            }
            let r = parse_success(200, body.to_string().as_bytes()).expect("a valid token response");
            prop_assert_eq!(r.access_token.expose_secret(), token.as_str());
            prop_assert_eq!(r.expires_in, Duration::from_secs(u64::from(expires)));
            prop_assert_eq!(r.refresh_in, refresh.map(|r| Duration::from_secs(u64::from(r))));
            prop_assert_eq!(r.token_type, token_type.unwrap_or_else(|| "Bearer".to_owned()));

            // The same body without a usable lifetime is refused without quoting the token.
            body["expires_in"] = serde_json::json!("soon");
            let Err(e) = parse_success(200, body.to_string().as_bytes()) else {
                return Err(TestCaseError::fail("a response without a lifetime parsed"));
            };
            prop_assert!(!e.to_string().contains(token.as_str()));
        }

        #[test]
        fn retry_after_never_panics(v in ".{0,64}") {
            let _ = crate::retry::parse_retry_after(&v, std::time::SystemTime::now());
        }
    }
}
