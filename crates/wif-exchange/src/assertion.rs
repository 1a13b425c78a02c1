//! Where the client assertion comes from: the projected token file (re-read when kubelet rotates
//! it), a fixed value, or a caller's callback.

use std::{
    error::Error as StdError,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures::future::BoxFuture;

use crate::{error::Error, token::Secret};

/// A caller-supplied source of client assertions.
pub(crate) type AssertionCallback =
    Arc<dyn Fn() -> BoxFuture<'static, Result<String, Box<dyn StdError + Send + Sync>>> + Send + Sync>;

/// Even when its metadata looks unchanged, the file is read again after this long (guards
/// against a rewrite that keeps size and mtime, on filesystems with coarse timestamps).
const MAX_FILE_CACHE_AGE: Duration = Duration::from_secs(300);

pub(crate) enum AssertionSource {
    File(TokenFile),
    Fixed(Secret),
    Callback(AssertionCallback),
}

impl fmt::Debug for AssertionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(file) => f.debug_tuple("File").field(&file.path).finish(),
            Self::Fixed(s) => f.debug_tuple("Fixed").field(s).finish(),
            Self::Callback(_) => f.write_str("Callback"),
        }
    }
}

impl AssertionSource {
    /// The current assertion.
    pub(crate) async fn get(&self) -> Result<Secret, Error> {
        match self {
            Self::File(file) => file.read().await,
            Self::Fixed(s) => Ok(s.clone()),
            Self::Callback(cb) => {
                let value = cb()
                    .await
                    .map_err(|e| Error::AssertionCallback { source: Arc::from(e) })?;
                let value = value.trim();
                if value.is_empty() {
                    let empty: Box<dyn StdError + Send + Sync> =
                        "the callback returned an empty assertion".into();
                    return Err(Error::AssertionCallback {
                        source: Arc::from(empty),
                    });
                }
                Ok(Secret::from(value.to_owned()))
            }
        }
    }
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    ino: u64,
    #[cfg(unix)]
    dev: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            ino: meta.ino(),
            #[cfg(unix)]
            dev: meta.dev(),
        }
    }
}

/// The projected ServiceAccount token file. Read lazily (it need not exist when the credential is
/// built), and again whenever its metadata (mtime, size, inode: kubelet swaps a symlink) changes.
pub(crate) struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(Stamp, Instant, Secret)>>,
}

impl TokenFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: Mutex::new(None),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    async fn read(&self) -> Result<Secret, Error> {
        let unreadable = |e: std::io::Error| Error::TokenFileUnreadable {
            path: self.path.clone(),
            source: Arc::new(e),
        };
        let stamp = Stamp::of(&tokio::fs::metadata(&self.path).await.map_err(unreadable)?);
        if let Some((s, at, secret)) = &*self.lock()
            && *s == stamp
            && at.elapsed() < MAX_FILE_CACHE_AGE
        {
            return Ok(secret.clone());
        }
        let bytes = tokio::fs::read(&self.path).await.map_err(unreadable)?;
        let invalid = |problem| Error::TokenFileInvalid {
            path: self.path.clone(),
            problem,
        };
        let text = String::from_utf8(bytes).map_err(|_| invalid("is not UTF-8 text"))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(invalid("is empty"));
        }
        let secret = Secret::from(text.to_owned());
        tracing::debug!(path = %self.path.display(), "read the federated token file");
        *self.lock() = Some((stamp, Instant::now(), secret.clone()));
        Ok(secret)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Stamp, Instant, Secret)>> {
        // The guarded value is always consistent (plain assignments), so a poisoned lock is usable.
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_is_reread_when_it_changes_and_errors_name_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let src = AssertionSource::File(TokenFile::new(path.clone()));

        let err = src.get().await.expect_err("missing file");
        assert!(matches!(err, Error::TokenFileUnreadable { .. }));
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert!(err.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"), "{err}");

        std::fs::write(&path, "  \n").expect("write");
        let err = src.get().await.expect_err("empty file");
        assert!(
            matches!(
                err,
                Error::TokenFileInvalid {
                    problem: "is empty",
                    ..
                }
            ),
            "{err}"
        );

        std::fs::write(&path, b"\xff\xfe").expect("write");
        assert!(matches!(
            src.get().await,
            Err(Error::TokenFileInvalid {
                problem: "is not UTF-8 text",
                ..
            })
        ));

        std::fs::write(&path, "first.jwt\n").expect("write");
        assert_eq!(src.get().await.expect("read").expose_secret(), "first.jwt");
        std::fs::write(&path, "second.jwt.longer").expect("write");
        assert_eq!(
            src.get().await.expect("re-read").expose_secret(),
            "second.jwt.longer"
        );
    }

    #[tokio::test]
    async fn unchanged_file_is_not_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "aaaa").expect("write");
        let file = TokenFile::new(path.clone());
        let src = AssertionSource::File(file);
        assert_eq!(src.get().await.expect("read").expose_secret(), "aaaa");
        // Same stamp in the cache but different content: proves the cached copy is served.
        if let AssertionSource::File(f) = &src {
            let mut guard = f.lock();
            if let Some((_, _, secret)) = guard.as_mut() {
                *secret = Secret::new("cached");
            }
        }
        assert_eq!(src.get().await.expect("cached").expose_secret(), "cached");
    }

    #[tokio::test]
    async fn callback_errors_and_empty_values_are_typed() {
        let cb: AssertionCallback = Arc::new(|| Box::pin(async { Err("vault unreachable".into()) }));
        let err = AssertionSource::Callback(cb).get().await.expect_err("fails");
        assert!(matches!(err, Error::AssertionCallback { .. }));
        assert!(err.to_string().contains("vault unreachable"));
        let cb: AssertionCallback = Arc::new(|| Box::pin(async { Ok(String::new()) }));
        assert!(matches!(
            AssertionSource::Callback(cb).get().await,
            Err(Error::AssertionCallback { .. })
        ));
    }
}
