//! Microsoft Graph: applications and federatedIdentityCredentials CRUD, every validation rule,
//! bearer-token checks, and malformed requests.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wif_emulator::SettingsPatch;

struct Graph<'a> {
    env: &'a Env,
    token: String,
}

impl Graph<'_> {
    async fn new(env: &Env) -> Graph<'_> {
        let token = env.bearer(GRAPH).await;
        Graph { env, token }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.env
            .call(&self.token, method, &self.env.graph(path), body)
            .await
    }

    async fn create_app(&self, name: &str) -> Value {
        let (status, body) = self
            .call(Method::POST, "applications", Some(json!({ "displayName": name })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body:#}");
        body
    }
}

fn fic(name: &str, subject: &str) -> Value {
    json!({
        "name": name,
        "issuer": "https://kubernetes.default.svc",
        "subject": subject,
        "audiences": [AUDIENCE],
    })
}

#[track_caller]
fn assert_graph_error(status: StatusCode, body: &Value, want: u16, code: &str) {
    assert_eq!(status.as_u16(), want, "{body:#}");
    assert_eq!(body["error"]["code"], code, "{body:#}");
    assert!(body["error"]["message"].is_string(), "{body:#}");
    let inner = &body["error"]["innerError"];
    for field in ["date", "request-id", "client-request-id"] {
        assert!(inner[field].is_string(), "innerError.{field}: {body:#}");
    }
}

#[tokio::test]
async fn graph_requires_a_graph_token_issued_by_the_emulator() {
    let env = Env::start().await;
    let url = env.graph("applications");
    let response = env.http.get(&url).send().await.expect("send");
    assert!(response.headers().contains_key("www-authenticate"));
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_graph_error(status, &body, 401, "InvalidAuthenticationToken");
    assert_eq!(body["error"]["message"], "Access token is empty.");

    // Signed by someone else (the test issuer).
    let mut foreign = env.issuer.claims(SUBJECT);
    foreign["aud"] = json!(GRAPH);
    let foreign = env.issuer.rs256(&foreign);
    // The emulator's own token, but for ARM.
    let arm = env.bearer(ARM).await;
    for (token, message) in [
        ("garbage", "CompactToken parsing failed with error code: 80049217"),
        (
            foreign.as_str(),
            "Access token validation failure. Invalid signature.",
        ),
        (arm.as_str(), "Access token validation failure. Invalid audience."),
    ] {
        let response = env.get(&url, token).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_graph_error(status, &body, 401, "InvalidAuthenticationToken");
        assert_eq!(body["error"]["message"], message);
    }

    // Expired.
    env.emulator
        .admin()
        .patch_settings(&SettingsPatch {
            token_lifetime_seconds: Some(1),
            clock_skew_seconds: Some(0),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    let short = env.bearer(GRAPH).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let response = env.get(&url, &short).await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_graph_error(status, &body, 401, "InvalidAuthenticationToken");
    assert_eq!(
        body["error"]["message"],
        "Lifetime validation failed, the token is expired."
    );

    // A token obtained through the real exchange works.
    env.emulator.admin().reset().await.expect("reset");
    let (status, body) = env
        .exchange(APP_ID, &env.issuer.rs256(&env.issuer.claims(SUBJECT)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let response = env
        .http
        .get(&url)
        .bearer_auth(body["access_token"].as_str().expect("token"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn applications_create_get_list_update_delete() {
    let env = Env::start().await;
    let graph = Graph::new(&env).await;
    let app = graph.create_app("payments").await;
    let id = app["id"].as_str().expect("id").to_string();
    let app_id = app["appId"].as_str().expect("appId").to_string();
    assert_ne!(id, app_id);
    assert_eq!(app["displayName"], "payments");
    assert!(
        app["@odata.context"]
            .as_str()
            .is_some_and(|c| c.ends_with("$metadata#applications/$entity"))
    );

    for path in [
        format!("applications/{id}"),
        format!("applications(appId='{app_id}')"),
    ] {
        let (status, body) = graph.call(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body:#}");
        assert_eq!(body["appId"], app_id.as_str());
    }
    let (status, body) = graph
        .call(
            Method::GET,
            &format!("applications?$filter=appId eq '{app_id}'&$select=id,appId"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["value"][0]["id"], id.as_str());
    assert!(
        body["value"][0].get("displayName").is_none(),
        "$select projects: {body:#}"
    );
    let (status, body) = graph
        .call(
            Method::GET,
            "applications?$filter=appId eq '00000000-0000-0000-0000-000000000000'",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["value"], json!([]));

    let (status, _) = graph
        .call(
            Method::PATCH,
            &format!("applications/{id}"),
            Some(json!({"displayName": "billing"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body) = graph.call(Method::GET, &format!("applications/{id}"), None).await;
    assert_eq!(body["displayName"], "billing");

    let (status, body) = graph
        .call(
            Method::POST,
            "applications",
            Some(json!({"displayName": "x", "appId": app_id})),
        )
        .await;
    assert_graph_error(status, &body, 400, "Request_BadRequest");
    let (status, body) = graph.call(Method::POST, "applications", Some(json!({}))).await;
    assert_graph_error(status, &body, 400, "Request_BadRequest");

    let (status, _) = graph
        .call(Method::DELETE, &format!("applications/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = graph.call(Method::GET, &format!("applications/{id}"), None).await;
    assert_graph_error(status, &body, 404, "Request_ResourceNotFound");
    assert_eq!(
        body["error"]["message"],
        format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        )
    );
}

#[tokio::test]
async fn applications_are_scoped_to_the_callers_tenant() {
    let env = Env::start().await;
    let token = env.other_tenant_bearer(GRAPH).await;
    let response = env
        .http
        .get(env.graph(&format!("applications(appId='{APP_ID}')")))
        .bearer_auth(token)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn federated_credentials_crud_by_id_name_and_app_id() {
    let env = Env::start().await;
    let graph = Graph::new(&env).await;
    let app = graph.create_app("payments").await;
    let id = app["id"].as_str().expect("id");
    let app_id = app["appId"].as_str().expect("appId");
    let base = format!("applications/{id}/federatedIdentityCredentials");
    let by_app_id = format!("applications(appId='{app_id}')/federatedIdentityCredentials");

    let (status, created) = graph
        .call(
            Method::POST,
            &format!("{base}/"),
            Some(fic("payments-api", "system:serviceaccount:pay:api")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created:#}");
    assert!(created["id"].is_string());
    assert_eq!(created["description"], Value::Null);
    assert_eq!(created["audiences"], json!([AUDIENCE]));
    assert!(
        created["@odata.context"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!(
                "$metadata#applications('{id}')/federatedIdentityCredentials/$entity"
            )))
    );
    let fic_id = created["id"].as_str().expect("id");

    let (status, list) = graph.call(Method::GET, &by_app_id, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["value"].as_array().map(Vec::len), Some(1));
    let (_, filtered) = graph
        .call(
            Method::GET,
            &format!("{base}?$filter=subject eq 'system:serviceaccount:pay:api'"),
            None,
        )
        .await;
    assert_eq!(filtered["value"].as_array().map(Vec::len), Some(1));
    let (_, filtered) = graph
        .call(Method::GET, &format!("{base}?$filter=name eq 'nope'"), None)
        .await;
    assert_eq!(filtered["value"], json!([]));

    for key in [fic_id, "payments-api"] {
        let (status, body) = graph.call(Method::GET, &format!("{by_app_id}/{key}"), None).await;
        assert_eq!(status, StatusCode::OK, "{key}: {body:#}");
        assert_eq!(body["id"], fic_id);
    }

    // Update: 204, new values visible; name is immutable.
    let (status, body) = graph
        .call(
            Method::PATCH,
            &format!("{base}/payments-api"),
            Some(json!({"subject": "system:serviceaccount:pay:worker", "description": "worker"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body:#}");
    let (_, body) = graph.call(Method::GET, &format!("{base}/{fic_id}"), None).await;
    assert_eq!(body["subject"], "system:serviceaccount:pay:worker");
    assert_eq!(body["description"], "worker");
    assert_eq!(body["name"], "payments-api");
    let (status, body) = graph
        .call(
            Method::PATCH,
            &format!("{base}/{fic_id}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_graph_error(status, &body, 400, "Request_BadRequest");
    let (status, _) = graph
        .call(
            Method::PATCH,
            &format!("{base}/{fic_id}"),
            Some(json!({"name": "payments-api"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "sending the same name is fine");

    // Upsert by name key.
    let upsert = format!("{base}(name='upserted')");
    let mut body = fic("ignored", "system:serviceaccount:pay:cron");
    body.as_object_mut().expect("object").remove("name");
    let (status, err) = graph.call(Method::PATCH, &upsert, Some(body.clone())).await;
    assert_graph_error(status, &err, 404, "Request_ResourceNotFound");
    let response = env
        .http
        .patch(env.graph(&upsert))
        .bearer_auth(&graph.token)
        .header("Prefer", "create-if-missing")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
    let (status, _) = graph
        .call(Method::PATCH, &upsert, Some(json!({"description": "d"})))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Delete by name, then by id.
    let (status, _) = graph
        .call(Method::DELETE, &format!("{base}/upserted"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = graph
        .call(Method::DELETE, &format!("{by_app_id}/{fic_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = graph.call(Method::GET, &format!("{base}/{fic_id}"), None).await;
    assert_graph_error(status, &body, 404, "Request_ResourceNotFound");
    let (status, body) = graph
        .call(Method::DELETE, &format!("{base}/payments-api"), None)
        .await;
    assert_graph_error(status, &body, 404, "Request_ResourceNotFound");
    let (_, list) = graph.call(Method::GET, &base, None).await;
    assert_eq!(list["value"], json!([]));
}

#[tokio::test]
async fn federated_credential_validation_rules() {
    let env = Env::start().await;
    let graph = Graph::new(&env).await;
    let app = graph.create_app("rules").await;
    let base = format!(
        "applications/{}/federatedIdentityCredentials",
        app["id"].as_str().expect("id")
    );
    let post = |body: Value| graph.call(Method::POST, &base, Some(body));

    // Names: 3–120 characters, letters/digits/-/_ starting with a letter or digit.
    let (status, _) = post(fic(&"n".repeat(120), "s-120")).await;
    assert_eq!(status, StatusCode::CREATED);
    for bad in [
        "n".repeat(121),
        "ab".into(),
        "-leading".into(),
        "has space".into(),
        "dot.ted".into(),
    ] {
        let (status, body) = post(fic(&bad, "s-bad")).await;
        assert_graph_error(status, &body, 400, "Request_BadRequest");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("is invalid")),
            "{body:#}"
        );
    }

    let (status, _) = post(fic("first", "system:serviceaccount:a:one")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = post(fic("first", "system:serviceaccount:a:two")).await;
    assert_graph_error(status, &body, 409, "Request_MultipleObjectsWithSameKeyValue");
    assert_eq!(
        body["error"]["message"],
        "FederatedIdentityCredential with name first already exists."
    );
    let (status, body) = post(fic("FIRST", "system:serviceaccount:a:two")).await;
    assert_graph_error(status, &body, 409, "Request_MultipleObjectsWithSameKeyValue");

    let (status, body) = post(fic("second", "system:serviceaccount:a:one")).await;
    assert_graph_error(status, &body, 400, "InvalidFederatedIdentityCredentialValue");
    assert_eq!(
        body["error"]["message"],
        "The combination of issuer and subject must be unique for the application. Issuer https://kubernetes.default.svc and Subject: system:serviceaccount:a:one already exist. paramName: FederatedIdentityCredential.Subject, paramValue: system:serviceaccount:a:one, objectType: Microsoft.Online.DirectoryServices.Application"
    );

    let mut two = fic("two-audiences", "s2");
    two["audiences"] = json!([AUDIENCE, "api://other"]);
    let mut none = fic("no-audience", "s3");
    none["audiences"] = json!([]);
    for body in [two, none] {
        let (status, err) = post(body).await;
        assert_graph_error(status, &err, 400, "Request_BadRequest");
        assert_eq!(
            err["error"]["message"],
            "Federated identity credentials must have exactly one audience."
        );
    }
    let mut long = fic("long-subject", &"s".repeat(601));
    let (status, err) = post(long.clone()).await;
    assert_graph_error(status, &err, 400, "Request_BadRequest");
    long["subject"] = json!("s".repeat(600));
    let (status, _) = post(long).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut no_issuer = fic("no-issuer", "s4");
    no_issuer.as_object_mut().expect("object").remove("issuer");
    let (status, err) = post(no_issuer).await;
    assert_graph_error(status, &err, 400, "Request_BadRequest");
    let mut unknown = fic("unknown-prop", "s5");
    unknown["colour"] = json!("blue");
    let (status, err) = post(unknown).await;
    assert_graph_error(status, &err, 400, "BadRequest");
    let mut flexible = fic("flexible", "s6");
    flexible["claimsMatchingExpression"] = json!({"languageVersion": 1, "value": "claims['sub'] eq 'x'"});
    let (status, err) = post(flexible).await;
    assert_graph_error(status, &err, 400, "BadRequest");

    // An update may not collide with another credential's issuer+subject either.
    let (status, err) = graph
        .call(
            Method::PATCH,
            &format!("{base}/long-subject"),
            Some(json!({"subject": "system:serviceaccount:a:one"})),
        )
        .await;
    assert_graph_error(status, &err, 400, "InvalidFederatedIdentityCredentialValue");

    // 20 per application: 3 exist, 17 more fit, the 21st is refused.
    for i in 0..17 {
        let (status, body) = post(fic(
            &format!("bulk-{i}"),
            &format!("system:serviceaccount:bulk:{i}"),
        ))
        .await;
        assert_eq!(status, StatusCode::CREATED, "credential {}: {body:#}", i + 4);
    }
    let (status, body) = post(fic("one-too-many", "system:serviceaccount:bulk:21")).await;
    assert_graph_error(status, &body, 400, "Request_BadRequest");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Maximum of 20")),
        "{body:#}"
    );
    let (_, list) = graph.call(Method::GET, &base, None).await;
    assert_eq!(list["value"].as_array().map(Vec::len), Some(20));
}

#[tokio::test]
async fn beta_accepts_flexible_credentials_without_subject() {
    let env = Env::start().await;
    let graph = Graph::new(&env).await;
    let app = graph.create_app("flexible").await;
    let url = format!(
        "{}/beta/applications/{}/federatedIdentityCredentials",
        env.emulator.graph_url(),
        app["id"].as_str().expect("id")
    );
    let expression = json!({"languageVersion": 1, "value": "claims['sub'] matches 'repo:org/*'"});
    let send = |body: Value| env.http.post(&url).bearer_auth(&graph.token).json(&body).send();
    let response = send(json!({
        "name": "github", "issuer": "https://token.actions.githubusercontent.com",
        "audiences": [AUDIENCE], "claimsMatchingExpression": expression,
    }))
    .await
    .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["subject"], Value::Null);
    assert_eq!(body["claimsMatchingExpression"], expression);
    let response = send(json!({
        "name": "both", "issuer": "https://token.actions.githubusercontent.com", "subject": "x",
        "audiences": [AUDIENCE], "claimsMatchingExpression": expression,
    }))
    .await
    .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn malformed_graph_requests_get_graph_errors_never_500() {
    let env = Env::start().await;
    let graph = Graph::new(&env).await;
    let app = graph.create_app("malformed").await;
    let base = format!(
        "applications/{}/federatedIdentityCredentials",
        app["id"].as_str().expect("id")
    );
    let cases: Vec<(Method, String, Option<&str>, u16, &str)> = vec![
        (Method::GET, "users".into(), None, 400, "BadRequest"),
        (Method::GET, format!("{base}/x/y"), None, 400, "BadRequest"),
        (
            Method::GET,
            format!("{base}?$filter=startswith(name,'a')"),
            None,
            400,
            "BadRequest",
        ),
        (
            Method::GET,
            format!("{base}?$filter=audiences eq 'a'"),
            None,
            400,
            "Request_UnsupportedQuery",
        ),
        (
            Method::GET,
            format!("{base}?$top=0"),
            None,
            400,
            "Request_UnsupportedQuery",
        ),
        (Method::POST, base.clone(), Some("{not json"), 400, "BadRequest"),
        (Method::POST, base.clone(), Some("[1,2]"), 400, "BadRequest"),
        (Method::POST, base.clone(), Some(""), 400, "BadRequest"),
        (
            Method::POST,
            base.clone(),
            Some(r#"{"name": 5}"#),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            base.clone(),
            Some(r#"{"name":"n1","issuer":"i","subject":"s","audiences":"a"}"#),
            400,
            "Request_BadRequest",
        ),
        (Method::PUT, base.clone(), Some("{}"), 405, "Request_BadRequest"),
        (
            Method::GET,
            "applications(appId='nope')".into(),
            None,
            404,
            "Request_ResourceNotFound",
        ),
        (
            Method::GET,
            "applications(appId='unterminated".into(),
            None,
            400,
            "BadRequest",
        ),
    ];
    for (method, path, body, want, code) in cases {
        let mut request = env
            .http
            .request(method.clone(), env.graph(&path))
            .bearer_auth(&graph.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON"));
        assert_eq!(status.as_u16(), want, "{method} {path}: {body:#}");
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body:#}");
    }
    let response = env
        .http
        .get(format!("{}/v2.0/applications", env.emulator.graph_url()))
        .bearer_auth(&graph.token)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn graph_accepts_tokens_for_its_own_url_and_pages_credentials() {
    let env = Env::start().await;
    // az asks for a token whose resource is the cloud's Graph endpoint: the emulator's /graph/.
    for resource in [format!("{}/", env.emulator.graph_url()), env.emulator.graph_url()] {
        let token = env
            .emulator
            .admin()
            .mint_token(TENANT, CONTROLLER_APP_ID, &resource)
            .await
            .expect("mint");
        let (status, body) = env
            .call(&token, Method::GET, &env.graph("applications"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{resource}: {body:#}");
    }

    let graph = Graph::new(&env).await;
    let app = graph.create_app("paged").await;
    let base = format!(
        "applications/{}/federatedIdentityCredentials",
        app["id"].as_str().expect("id")
    );
    for i in 0..5 {
        let (status, body) = graph
            .call(
                Method::POST,
                &base,
                Some(fic(&format!("page-{i}"), &format!("s{i}"))),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body:#}");
    }
    let mut names = Vec::new();
    let mut url = env.graph(&format!("{base}?$top=2"));
    for _ in 0..10 {
        let (status, body) = env.call(&graph.token, Method::GET, &url, None).await;
        assert_eq!(status, StatusCode::OK, "{body:#}");
        assert!(body["value"].as_array().expect("value").len() <= 2, "{body:#}");
        names.extend(
            body["value"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["name"].as_str().expect("name").to_string()),
        );
        match body["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(names, ["page-0", "page-1", "page-2", "page-3", "page-4"]);
}
