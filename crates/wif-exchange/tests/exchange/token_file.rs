//! The projected token file: read again when kubelet rotates it; its problems name the file.

use super::*;

/// Kubelet's atomic writer: `token -> ..data/token`, `..data -> ..<timestamp>`, swapped by rename.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_file_is_read_again() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let write_version = |name: &str, content: &str| {
        let v = dir.path().join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("azure-identity-token"), content).unwrap();
        let tmp = dir.path().join("..data_tmp");
        symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    };
    write_version("..2026_01_01_first", "jwt-version-one");
    symlink(
        "..data/azure-identity-token",
        dir.path().join("azure-identity-token"),
    )
    .unwrap();

    let server = TestServer::issuing().await;
    let cred = server
        .builder()
        .token_file(dir.path().join("azure-identity-token"))
        .build()
        .unwrap();
    let other_scope = "https://storage.azure.com/.default";
    cred.get_token(&[SCOPE], &opts()).await.unwrap();
    // Unchanged file: the next exchange presents the same assertion.
    cred.get_token(&["https://management.azure.com/.default"], &opts())
        .await
        .unwrap();
    write_version("..2026_01_01_second", "jwt-version-two-rotated");
    cred.get_token(&[other_scope], &opts()).await.unwrap();

    let seen: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.form["client_assertion"].clone())
        .collect();
    assert_eq!(
        seen,
        ["jwt-version-one", "jwt-version-one", "jwt-version-two-rotated"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_problems_are_typed_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-token");
    let server = TestServer::issuing().await;
    let cred = server.builder().token_file(&path).build().unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(matches!(err, Error::TokenFileUnreadable { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
    std::fs::write(&path, "").unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(matches!(err, Error::TokenFileInvalid { .. }), "{err:?}");
    assert_eq!(server.count(), 0);
    // It appears later: works without rebuilding the credential.
    std::fs::write(&path, "late.jwt").unwrap();
    cred.get_token(&[SCOPE], &opts()).await.unwrap();
    assert_eq!(server.requests()[0].form["client_assertion"], "late.jwt");
}
