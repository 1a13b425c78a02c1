//! The token chain: the token the kubelet would write into the mutated pod's volume is signed
//! by the API server with a key its OIDC discovery publishes, for the right subject and audience.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Pod, ServiceAccount},
};
use kube::api::PostParams;
use serde_json::Value;
use wif_e2e::{TestNs, WebhookOptions, WebhookProcess};

use crate::webhook::{CLIENT, labelled};

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn projected_token_of_a_mutated_pod_verifies_against_the_issuers_jwks() {
    let ns = TestNs::new("token").await;
    ns.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    let _hook = WebhookProcess::start(&ns, WebhookOptions::default()).await;
    let pod = ns
        .api::<Pod>()
        .create(&PostParams::default(), &labelled("web", "api"))
        .await
        .unwrap();

    // What the kubelet does for the projected volume: a TokenRequest bound to the pod, with the
    // volume's audience and lifetime.
    let vol = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "azure-identity-token")
        .unwrap();
    let projection = vol.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    let audience = projection.audience.clone().unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.clone()]),
            expiration_seconds: projection.expiration_seconds,
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..TokenRequest::default()
    };
    let issued_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let token = ns
        .api::<ServiceAccount>()
        .create_token_request("api", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();

    // Discovery, anonymously, exactly as Entra reads it.
    let http = wif_emulator::http_client_trusting(&ns.cp.ca_pem()).unwrap();
    let discovery: Value = http
        .get(format!("{}/.well-known/openid-configuration", ns.cp.server))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = discovery["issuer"].as_str().unwrap();
    assert_eq!(issuer, ns.cp.issuer);
    let jwks: JwkSet = http
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();

    let header = jsonwebtoken::decode_header(&token).unwrap();
    let kid = header.kid.clone().expect("kid");
    let jwk = jwks.find(&kid).expect("the signing key is published");
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[audience.as_str()]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .expect("signature and claims verify")
        .claims;
    assert_eq!(claims["sub"], format!("system:serviceaccount:{}:api", ns.name));
    assert_eq!(claims["aud"], serde_json::json!([audience]));
    let exp = claims["exp"].as_u64().unwrap();
    let want = issued_at + projection.expiration_seconds.unwrap() as u64;
    assert!(exp.abs_diff(want) <= 60, "exp {exp} vs expected ~{want}");
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "web", "bound to the pod");

    // A token signed by anyone else does not verify against these keys.
    let mut forged = token.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    assert!(
        jsonwebtoken::decode::<Value>(&forged, &DecodingKey::from_jwk(jwk).unwrap(), &validation).is_err()
    );
}
