//! The api-version is required and checked; malformed requests get ARM errors, never a 500.

use super::*;

#[tokio::test]
async fn api_version_is_required_and_checked() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let base = env.identity_url(IDENTITY);
    let (status, body) = arm.call(Method::GET, &base, None).await;
    assert_arm_error(status, &body, 400, "MissingApiVersionParameter");
    let (status, body) = arm
        .call(Method::GET, &format!("{base}?api-version=2020-01-01"), None)
        .await;
    assert_arm_error(status, &body, 400, "NoRegisteredProviderFound");
    let (status, body) = arm
        .call(Method::GET, &format!("{base}?api-version=latest"), None)
        .await;
    assert_arm_error(status, &body, 400, "InvalidApiVersionParameter");
    for version in ["2023-01-31", "2024-11-30", "2025-01-31-preview"] {
        let (status, body) = arm
            .call(Method::GET, &format!("{base}?api-version={version}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{version}: {body:#}");
    }
}

#[tokio::test]
async fn malformed_arm_requests_get_arm_errors_never_500() {
    let env = Env::start().await;
    let arm = Arm::new(&env).await;
    let root = env.emulator.arm_url();
    for (method, url, want, code) in [
        (
            Method::GET,
            format!(
                "{root}/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/disks?{ARM_API}"
            ),
            404,
            "InvalidResourceType",
        ),
        (
            Method::GET,
            format!("{root}/subscriptions?api-version=latest"),
            400,
            "InvalidApiVersionParameter",
        ),
        (
            Method::DELETE,
            format!("{root}/subscriptions/{SUBSCRIPTION}?api-version=2022-12-01"),
            405,
            "MethodNotAllowed",
        ),
        (
            Method::GET,
            format!(
                "{root}/subscriptions/nope/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities?{ARM_API}"
            ),
            400,
            "InvalidSubscriptionId",
        ),
        (
            Method::POST,
            format!("{}?{ARM_API}", env.identity_url(IDENTITY)),
            405,
            "MethodNotAllowed",
        ),
        (
            Method::GET,
            format!(
                "{}/federatedIdentityCredentials/a/b?{ARM_API}",
                env.identity_url(IDENTITY)
            ),
            404,
            "InvalidResourceType",
        ),
    ] {
        let (status, body) = arm.call(method.clone(), &url, None).await;
        assert_arm_error(status, &body, want, code);
    }
}
