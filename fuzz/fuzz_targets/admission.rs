//! Any bytes the API server (or anyone reaching the port) can send: decoding never panics, and a
//! decoded pod's mutation is consistent (the patch applies and gives the typed result) and
//! idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wif_api::{Cloud, MutationConfig};
use wif_webhook::{admission::decode, mutate, service_accounts::cached};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode(data) else { return };
    let Some(pod) = request.object else { return };
    let cfg = MutationConfig::new("72f988bf-86f1-41af-91ab-2d7cd011db47", Cloud::Public);
    let sa = cached("payments", "payments-api", &[("azure.workload.identity/client-id", "cid")]);
    let Ok(mutation) = mutate(&pod, &sa.metadata, &cfg) else { return };
    let mut typed = pod.clone();
    mutation.apply(&mut typed);
    let mut raw = serde_json::to_value(&pod).expect("a decoded pod re-encodes");
    json_patch::patch(&mut raw, &mutation.patch()).expect("our patch applies to the pod it was made for");
    assert_eq!(raw, serde_json::to_value(&typed).expect("encodes"), "patch and typed result agree");
    let again = mutate(&typed, &sa.metadata, &cfg).expect("a mutated pod is allowed again");
    assert!(again.is_noop(), "mutation is idempotent");
});
