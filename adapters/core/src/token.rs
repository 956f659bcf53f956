//! A cache for bearer tokens (UAA, Keystone): one fetch at a time, reuse
//! until ~80 % of the lifetime, drop on a 401.

use std::{future::Future, time::Duration};

use tokio::{sync::Mutex, time::Instant};

use crate::BackendError;

/// A token as the identity service issued it.
#[derive(Clone)]
pub struct Token {
    pub value: String,
    /// `None` for tokens that do not expire (fixed tokens from config).
    pub lifetime: Option<Duration>,
}

/// Never prints the token itself.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"***")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

struct Cached {
    value: String,
    refresh_at: Option<Instant>,
}

/// Never prints the token itself.
impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("value", &"***")
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// Holds the current token. The async mutex is held across a fetch, so
/// concurrent callers wait for one fetch instead of starting many.
#[derive(Debug, Default)]
pub struct TokenCache {
    inner: Mutex<Option<Cached>>,
}

/// A token is refreshed after its lifetime less a fifth of it (80 %).
const REFRESH_DIVISOR: u32 = 5;

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached token, or a fresh one from `fetch`.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<String, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, BackendError>>,
    {
        let mut guard = self.inner.lock().await;
        if let Some(c) = guard.as_ref()
            && c.refresh_at.is_none_or(|t| Instant::now() < t)
        {
            return Ok(c.value.clone());
        }
        let token = fetch().await;
        crate::observe::token_refresh(token.is_ok());
        let token = token?;
        // 80 % of the lifetime, in integer arithmetic; a lifetime so long
        // that the instant overflows is one that never needs a refresh.
        let refresh_at = token
            .lifetime
            .and_then(|l| Instant::now().checked_add(l.saturating_sub(l / REFRESH_DIVISOR)));
        *guard = Some(Cached {
            value: token.value.clone(),
            refresh_at,
        });
        Ok(token.value)
    }

    /// Forgets `stale` after the backend refused it; a token fetched by
    /// another caller in the meantime is kept.
    pub async fn invalidate(&self, stale: &str) {
        let mut guard = self.inner.lock().await;
        if guard.as_ref().is_some_and(|c| c.value == stale) {
            *guard = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn debug_never_shows_the_token() {
        let cache = TokenCache::new();
        let t = cache
            .get(|| async {
                Ok(Token {
                    value: "tok-5ec7e7".into(),
                    lifetime: None,
                })
            })
            .await
            .unwrap();
        assert_eq!(t, "tok-5ec7e7");
        let shown = format!("{cache:?}");
        assert!(
            !shown.contains("tok-5ec7e7") && shown.contains("***"),
            "{shown}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_at_eighty_percent_and_after_invalidate() {
        let cache = TokenCache::new();
        let fetches = AtomicU32::new(0);
        let fetch = || async {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            Ok(Token {
                value: format!("t{n}"),
                lifetime: Some(Duration::from_secs(100)),
            })
        };
        assert_eq!(cache.get(fetch).await.unwrap(), "t0");
        tokio::time::advance(Duration::from_secs(79)).await;
        assert_eq!(cache.get(fetch).await.unwrap(), "t0");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get(fetch).await.unwrap(), "t1");
        cache.invalidate("t0").await; // stale: keeps t1
        assert_eq!(cache.get(fetch).await.unwrap(), "t1");
        cache.invalidate("t1").await;
        assert_eq!(cache.get(fetch).await.unwrap(), "t2");
    }

    #[tokio::test]
    async fn huge_lifetimes_do_not_panic() {
        let cache = TokenCache::new();
        for secs in [u64::MAX, u64::MAX / 2, 0] {
            let v = cache
                .get(|| async move {
                    Ok(Token {
                        value: format!("t{secs}"),
                        lifetime: Some(Duration::from_secs(secs)),
                    })
                })
                .await
                .unwrap();
            cache.invalidate(&v).await;
        }
        let fetches = AtomicU32::new(0);
        let fetch = || async {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            Ok(Token {
                value: format!("max{n}"),
                lifetime: Some(Duration::MAX),
            })
        };
        assert_eq!(cache.get(fetch).await.unwrap(), "max0");
        assert_eq!(
            cache.get(fetch).await.unwrap(),
            "max0",
            "kept, not refetched"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }
}
