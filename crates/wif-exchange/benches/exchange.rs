//! Cached `get_token` latency (goal: under 1 µs).
//!
//! `cargo bench -p wif-exchange --bench exchange`
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::{SCOPE, TestServer};
use criterion::{Criterion, criterion_group, criterion_main};
use wif_exchange::TokenRequestOptions;

fn cached_get_token(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(TestServer::issuing());
    let cred = server.credential();
    let plain = TokenRequestOptions::default();
    let cae = TokenRequestOptions::default()
        .with_cae(true)
        .with_claims(r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#);
    rt.block_on(async {
        cred.get_token(&[SCOPE], &plain).await.unwrap();
        cred.get_token(&[SCOPE], &cae).await.unwrap();
    });

    let mut group = c.benchmark_group("get_token");
    group.bench_function("cached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cred.get_token(black_box(&[SCOPE]), &plain).await.unwrap()) })
    });
    group.bench_function("cached_cae_with_claims", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cred.get_token(black_box(&[SCOPE]), &cae).await.unwrap()) })
    });
    group.finish();
    assert_eq!(
        server.count(),
        2,
        "every benchmarked call was served from the cache"
    );
}

criterion_group!(benches, cached_get_token);
criterion_main!(benches);
