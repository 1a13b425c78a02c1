//! The admission path without the network, on a realistic review (8.8 KB pod, 3 containers and an
//! init container): decoding (into the mutation's borrowed view, and — for comparison in the same
//! run — into kube's typed `AdmissionReview<Pod>`), the mutation, the patch, and the whole answer.

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionReview;
use prometheus_client::registry::Registry;
use wif_api::{Cloud, MutationConfig};
use wif_webhook::{
    admission::{AdmissionState, decode, review},
    metrics::Metrics,
    mutate_view,
    service_accounts::{cached, static_cache},
};

/// Indented for people to read; the API server sends compact JSON, so the benchmark does too.
const REVIEW_INDENTED: &[u8] = include_bytes!("../tests/data/review-pod.json");

fn compact() -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_slice(REVIEW_INDENTED).expect("fixture is JSON");
    serde_json::to_vec(&value).expect("encodes")
}

fn bench(c: &mut Criterion) {
    let review_body = compact();
    let body = review_body.as_slice();
    let cfg = MutationConfig::new("72f988bf-86f1-41af-91ab-2d7cd011db47", Cloud::Public);
    let sa = cached(
        "payments",
        "payments-api",
        &[("azure.workload.identity/client-id", "cid")],
    );
    let request = decode(body).expect("fixture decodes");
    let pod = request.object.expect("fixture has a pod");
    c.bench_function("decode_review_typed_k8s_openapi", |b| {
        b.iter(|| serde_json::from_slice::<AdmissionReview<Pod>>(black_box(body)))
    });
    c.bench_function("decode_review", |b| b.iter(|| decode(black_box(body))));
    c.bench_function("mutate", |b| b.iter(|| mutate_view(black_box(&pod), &sa, &cfg)));
    c.bench_function("mutate_and_encode_patch", |b| {
        b.iter(|| mutate_view(black_box(&pod), &sa, &cfg).map(|m| m.patch_json()))
    });

    let state = AdmissionState {
        config: Arc::new(cfg.clone()),
        service_accounts: static_cache([sa.clone()]),
        metrics: Arc::new(Metrics::new(&mut Registry::default())),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    c.bench_function("review_whole_answer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let answer = review(&state, black_box(body)).await.expect("answer");
                serde_json::to_vec(&answer)
            })
        })
    });
}

criterion_group!(benches, bench);

/// The floor: reading the review through serde_json while keeping nothing.
fn skip(c: &mut Criterion) {
    let review_body = compact();
    let body = review_body.as_slice();
    c.bench_function("skip_review_ignoredany", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)))
    });
}
criterion_group!(skipping, skip);
criterion_main!(benches, skipping);
