//! The admission path without the network: decode a realistic review, mutate, encode the patch.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use wif_api::{Cloud, MutationConfig};
use wif_webhook::{admission::decode, mutate, service_accounts::cached};

const REVIEW: &[u8] = include_bytes!("../tests/data/review-pod.json");

fn bench(c: &mut Criterion) {
    let cfg = MutationConfig::new("72f988bf-86f1-41af-91ab-2d7cd011db47", Cloud::Public);
    let sa = cached(
        "payments",
        "payments-api",
        &[("azure.workload.identity/client-id", "cid")],
    );
    let request = decode(REVIEW).expect("fixture decodes");
    let pod = request.object.clone().expect("fixture has a pod");
    c.bench_function("decode_review", |b| b.iter(|| decode(black_box(REVIEW))));
    c.bench_function("mutate", |b| {
        b.iter(|| mutate(black_box(&pod), &sa.metadata, &cfg))
    });
    c.bench_function("mutate_and_encode_patch", |b| {
        b.iter(|| {
            serde_json::to_vec(
                &mutate(black_box(&pod), &sa.metadata, &cfg)
                    .map(|m| m.patch())
                    .ok(),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
