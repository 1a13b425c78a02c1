//! The `azure_core` `TokenCredential` implementation, as an `azure_*` SDK client would call it.
#![cfg(feature = "azure_core")]
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use azure_core::{credentials::TokenCredential, error::ErrorKind};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_get_tokens_and_typed_errors() {
    let server = TestServer::start(|n, _| {
        if n == 1 {
            Reply::token("sdk-token", 3600, None)
        } else {
            Reply::entra(400, "invalid_request", 700212, "aud")
        }
    })
    .await;
    let credential: Arc<dyn TokenCredential> = Arc::new(server.credential());
    let token = credential.get_token(&[SCOPE], None).await.unwrap();
    assert_eq!(token.token.secret(), "sdk-token");
    let left = token.expires_on - azure_core::time::OffsetDateTime::now_utc();
    assert!((left - time_secs(3600)).abs() < time_secs(10), "{left}");
    // Cached: same token, no request.
    credential.get_token(&[SCOPE], None).await.unwrap();
    assert_eq!(server.count(), 1);

    let err = credential
        .get_token(&["https://storage.azure.com/.default"], None)
        .await
        .unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::Credential);
    assert!(err.to_string().contains("AADSTS700212"), "{err}");
    let inner = err.downcast_ref::<wif_exchange::Error>().unwrap();
    assert_eq!(inner.aadsts(), Some(700212));
    assert!(!format!("{err:?}").contains(ASSERTION));
}

fn time_secs(s: i64) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(Duration::from_secs(s.unsigned_abs())).unwrap()
}
