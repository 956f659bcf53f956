//! Shared HTTP pieces: a client with a per-call timeout, the mapping of
//! transport failures to [`BackendError`], status classes, and `Retry-After`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::{BackendError, ErrorKind, backoff::Backoff};

/// Builds the HTTP client an adapter uses: rustls, a timeout per call.
pub fn client(timeout: Duration) -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("custos/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| BackendError::permanent(format!("cannot build the HTTP client: {e}")))
}

/// A whole HTTP answer, read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: reqwest::StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Sends a request and reads the whole answer; transport failures become
/// [`BackendError`]s (see [`transport_error`]). Any status is returned.
pub async fn send(
    req: reqwest::RequestBuilder,
    what: &str,
    idempotent: bool,
) -> Result<Reply, BackendError> {
    let resp = req
        .send()
        .await
        .map_err(|e| transport_error(&e, what, idempotent))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|e| transport_error(&e, what, idempotent))?
        .to_vec();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Maps a transport failure. A request that failed before a connection was
/// made cannot have been applied; any later failure of a non-idempotent
/// request may have been, and is marked so the caller reconciles.
pub fn transport_error(err: &reqwest::Error, what: &str, idempotent: bool) -> BackendError {
    let connect = err.is_connect();
    let reason = if err.is_timeout() {
        "timed out"
    } else if connect {
        "could not connect"
    } else {
        "the connection failed"
    };
    let mut e = BackendError::transient(format!("{what}: {reason} ({})", error_chain(err)));
    e.maybe_applied = !idempotent && !connect;
    e
}

/// The error and its sources, joined; reqwest's top-level message alone
/// rarely says what broke.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

/// The retry class of an HTTP status, for backends without a richer rule.
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        400 | 422 => ErrorKind::Invalid,
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        408 => ErrorKind::Transient,
        409 => ErrorKind::Busy,
        429 => ErrorKind::Throttled,
        500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// Values of `Retry-After` above this are epoch seconds, not a delay (CF
/// sends the `X-RateLimit-Reset` epoch in `Retry-After`).
const EPOCH_THRESHOLD: u64 = 1_000_000_000;

/// Parses `Retry-After`: delta-seconds, epoch seconds (CF), or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(n) = raw.parse::<u64>() {
        if n < EPOCH_THRESHOLD {
            return Some(Duration::from_secs(n));
        }
        let now_s = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        return Some(Duration::from_secs(n.saturating_sub(now_s)));
    }
    let when = httpdate::parse_http_date(raw).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Runs an idempotent call (a GET) up to `attempts` times while it fails
/// with a retryable error, waiting with backoff in between; waits longer
/// than `max_wait` in total are not made (the caller gets the error).
pub async fn retry_idempotent<T, F, Fut>(
    attempts: u32,
    max_wait: Duration,
    mut call: F,
) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut waited = Duration::ZERO;
    let mut n = 0;
    loop {
        n += 1;
        match call().await {
            Err(e) if e.is_retryable() && n < attempts => {
                let d = backoff.next_delay_honouring(e.retry_after);
                if waited + d > max_wait {
                    return Err(e);
                }
                waited += d;
                tokio::time::sleep(d).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            retry_after(&headers("7"), now),
            Some(Duration::from_secs(7))
        );
        // CF: the epoch of X-RateLimit-Reset.
        assert_eq!(
            retry_after(&headers("1800000042"), now),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            retry_after(&headers("1700000000"), now),
            Some(Duration::ZERO)
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&date), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn status_classes() {
        assert_eq!(kind_for_status(503), ErrorKind::Transient);
        assert_eq!(kind_for_status(429), ErrorKind::Throttled);
        assert_eq!(kind_for_status(422), ErrorKind::Invalid);
        assert_eq!(kind_for_status(409), ErrorKind::Busy);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_idempotent_stops_on_success_and_on_permanent() {
        let mut n = 0;
        let r: Result<u32, _> = retry_idempotent(5, Duration::from_secs(10), || {
            n += 1;
            let v = n;
            async move {
                if v < 3 {
                    Err(BackendError::transient("x"))
                } else {
                    Ok(v)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        let mut m = 0;
        let r: Result<u32, _> = retry_idempotent(5, Duration::from_secs(10), || {
            m += 1;
            async { Err(BackendError::permanent("no")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(m, 1);
    }
}
