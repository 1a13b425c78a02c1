//! Odd input: no spec, a thousand containers, generated names, fields our types do not know.

use super::*;

#[test]
fn pod_without_spec_passes_through() {
    let mut p = pod();
    p.spec = None;
    let m = mutate(&p, &annotated_sa(), &cfg()).unwrap();
    assert!(m.is_noop());
    // `wif mutate` prints the pod as it was: no empty spec appears (found by `make fuzz`).
    let mut out = p.clone();
    m.apply(&mut out);
    assert_eq!(out, p);
}

#[test]
fn a_thousand_containers_are_all_mutated() {
    let p = pod().with_spec(|s| s.containers = (0..1000).map(|i| container(&format!("c{i}"))).collect());
    let (out, _) = mutated(&p, &annotated_sa(), &cfg());
    assert!(out.spec.as_ref().unwrap().containers.iter().all(has_token_mount));
}

#[test]
fn generated_name_is_used_in_messages() {
    let mut p = pod().annotate("azure.workload.identity/service-account-token-expiration", "1");
    p.metadata.name = None;
    p.metadata.generate_name = Some("web-".into());
    let msg = mutate(&p, &annotated_sa(), &cfg()).unwrap_err().to_string();
    assert!(msg.contains("pod apps/web-*"), "{msg}");
}

#[test]
fn fields_unknown_to_our_types_survive_the_patch() {
    let mut raw = serde_json::to_value(pod()).unwrap();
    raw["spec"]["futureField"] = json!({"x": 1});
    raw["spec"]["containers"][0]["futureContainerField"] = json!(true);
    let typed: Pod = serde_json::from_value(raw.clone()).unwrap();
    let m = mutate(&typed, &annotated_sa(), &cfg()).unwrap();
    json_patch::patch(&mut raw, &m.patch().unwrap()).unwrap();
    assert_eq!(raw["spec"]["futureField"], json!({"x": 1}));
    assert_eq!(raw["spec"]["containers"][0]["futureContainerField"], json!(true));
    assert_eq!(raw["spec"]["containers"][0]["env"].as_array().unwrap().len(), 4);
}
