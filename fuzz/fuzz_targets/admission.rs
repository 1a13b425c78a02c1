//! Any bytes the API server (or anyone reaching the port) can send: decoding never panics; the
//! webhook's borrowed view of a pod mutates exactly like the typed pod `wif mutate` reads
//! (whenever the object is a valid typed pod); the patch applies and gives the typed result; and
//! mutation is idempotent.
#![no_main]

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use libfuzzer_sys::fuzz_target;
use wif_api::{Cloud, MutationConfig};
use wif_webhook::{admission::decode, mutate, mutate_view, service_accounts::cached};

const CLIENT_ID: (&str, &str) = ("azure.workload.identity/client-id", "cid");

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode(data) else { return };
    let Some(view) = request.object.as_ref() else { return };
    let cfg = MutationConfig::new("72f988bf-86f1-41af-91ab-2d7cd011db47", Cloud::Public);
    let from_view = mutate_view(view, &cached("payments", "payments-api", &[CLIENT_ID]), &cfg);

    // Skipped strings are not unescaped, so a review whose unread parts hold an invalid escape
    // (`"\udc00"`) decodes here but not as a `Value`; there is nothing to compare then.
    let Ok(review) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Some(object) = review.pointer("/request/object") else { return };
    let Ok(pod) = serde_json::from_value::<Pod>(object.clone()) else { return };
    let sa = ObjectMeta {
        name: Some("payments-api".into()),
        namespace: Some("payments".into()),
        annotations: Some([(CLIENT_ID.0.to_owned(), CLIENT_ID.1.to_owned())].into()),
        ..ObjectMeta::default()
    };
    let typed_result = mutate(&pod, &sa, &cfg);
    assert_eq!(from_view, typed_result, "the view and the typed pod mutate alike");

    let Ok(mutation) = typed_result else { return };
    let mut typed = pod.clone();
    mutation.apply(&mut typed);
    let mut raw = serde_json::to_value(&pod).expect("a decoded pod re-encodes");
    json_patch::patch(&mut raw, &mutation.patch().expect("the patch encodes"))
        .expect("our patch applies to the pod it was made for");
    assert_eq!(raw, serde_json::to_value(&typed).expect("encodes"), "patch and typed result agree");
    let again = mutate(&typed, &sa, &cfg).expect("a mutated pod is allowed again");
    assert!(again.is_noop(), "mutation is idempotent");
});
