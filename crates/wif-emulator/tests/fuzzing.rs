//! The fuzz targets' in-process router (`wif_emulator::fuzzing`) answers like the served one.

use wif_emulator::fuzzing::{self, Service, Target};

#[test]
fn the_fuzzing_target_routes_token_graph_and_arm_requests() {
    let target = Target::new().expect("target");
    // A form without grant_type: AADSTS900144, 400.
    assert_eq!(
        target.request(Service::Token, "POST", "", b"client_id=x"),
        Some(400)
    );
    // Graph and ARM accept the minted tokens.
    let apps = target.request(Service::Graph, "GET", "v1.0/applications", b"");
    assert_eq!(apps, Some(200));
    let identity = format!(
        "subscriptions/{}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id?api-version=2023-01-31",
        fuzzing::SUBSCRIPTION
    );
    assert_eq!(target.request(Service::Arm, "GET", &identity, b""), Some(200));
    // A JSON body that is not JSON is refused, not a panic.
    let created = target.request(Service::Graph, "POST", "v1.0/applications", b"{not json");
    assert_eq!(created, Some(400));
    assert_eq!(
        target.request(Service::Graph, "GET", "bad path with spaces", b""),
        None
    );
}

#[test]
fn assertions_are_checked_before_keys_are_fetched() {
    assert!(!fuzzing::assertion("not.a.jwt", 0));
    // {"alg":"RS256"} . {"iss":"i","sub":"s","aud":"a","iat":100,"exp":200} . signature
    let token =
        "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJpIiwic3ViIjoicyIsImF1ZCI6ImEiLCJpYXQiOjEwMCwiZXhwIjoyMDB9.c2ln";
    assert!(
        fuzzing::assertion(token, 150),
        "well-formed and within its time range"
    );
    assert!(!fuzzing::assertion(token, 1_000), "expired");
}
