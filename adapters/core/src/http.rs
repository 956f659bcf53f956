//! Shared HTTP pieces: a client with a per-call timeout, the mapping of
//! transport failures to [`BackendError`], status classes, and `Retry-After`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::{BackendError, ErrorKind, backoff::Backoff};

/// How long an idle connection is kept for the next call. Polls reuse a
/// few connections; the others, opened by a burst of submits (up to
/// `per_backend_running_jobs` a backend), are closed after this. reqwest's
/// 90 s kept ~17 MiB of idle connections in P3 (`docs/benchmarks.md`), and
/// is longer than many servers and balancers keep one (60 s is common): a
/// call sent on a connection the server is closing fails.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the HTTP client an adapter uses: rustls, a timeout per call,
/// idle connections kept for [`POOL_IDLE_TIMEOUT`].
///
/// Redirects are not followed: following one would send a POST again (307,
/// 308, with its body, credentials included) or turn it into a GET (301,
/// 302, 303) whose answer would be taken for the POST's. A 3xx is returned
/// like any answer, so a submit answered 3xx is `maybe_applied`.
pub fn client(timeout: Duration) -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
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

/// The most of an answer's body [`send`] reads (4 MiB). Backend answers
/// are small JSON documents; anything longer is a proxy page or a
/// misconfigured endpoint, and is refused instead of buffered.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Sends a request and reads the answer, whose body may be at most
/// [`MAX_BODY_BYTES`] long; transport failures become [`BackendError`]s
/// (see [`transport_error`]). Any status is returned.
pub async fn send(
    req: reqwest::RequestBuilder,
    what: &str,
    idempotent: bool,
) -> Result<Reply, BackendError> {
    send_capped(req, what, idempotent, MAX_BODY_BYTES).await
}

/// [`send`] with a body limit of `limit` bytes. The body is streamed: an
/// answer longer than `limit` is dropped as soon as that is known (from its
/// `Content-Length`, or while reading) and never buffered whole. An over-long
/// answer to a non-idempotent request is `maybe_applied`.
pub async fn send_capped(
    req: reqwest::RequestBuilder,
    what: &str,
    idempotent: bool,
    limit: usize,
) -> Result<Reply, BackendError> {
    let start = std::time::Instant::now();
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            crate::observe::http_request(None, start.elapsed());
            return Err(transport_error(&e, what, idempotent));
        }
    };
    let status = resp.status();
    crate::observe::http_request(Some(status.as_u16()), start.elapsed());
    let headers = resp.headers().clone();
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    if resp.content_length().is_some_and(|n| n > limit_u64) {
        return Err(body_too_long(what, idempotent, limit, status.as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(&e, what, idempotent))?
    {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(body_too_long(what, idempotent, limit, status.as_u16()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn body_too_long(what: &str, idempotent: bool, limit: usize, status: u16) -> BackendError {
    let mut e = BackendError::permanent(format!(
        "{what}: the answer ({status}) has a body longer than {limit} bytes, so it was not read \
         (a proxy's page or a wrong endpoint?)"
    ));
    e.maybe_applied = !idempotent;
    e
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

/// Whether an answer to a non-idempotent request (a submit: a POST or
/// DELETE that changes something) *proves* that the request was not
/// applied, so that sending it again is safe.
///
/// `backend_refusal` is the adapter's judgement of the body: true only when
/// it is the backend's own error envelope (parsed, not a proxy's page) and
/// the backend documents this status as a refusal before anything changes
/// (CF: 401, 403, 404, 409, 422, and 429 for its rate limit).
///
/// The rule, one for every adapter:
/// - 408, any 5xx, and every other status (1xx, 2xx/3xx that the adapter
///   could not use) prove nothing: a load balancer may have given up on a
///   request the backend accepted, or the backend may have failed after
///   applying it;
/// - a 4xx proves the request was refused only with `backend_refusal`: an
///   HTML page or a body of another shape comes from something in between
///   and says nothing about the backend.
///
/// Transport failures are judged by [`transport_error`] (only "could not
/// connect" proves nothing was sent), over-long bodies by [`send`].
pub fn proves_not_applied(status: u16, backend_refusal: bool) -> bool {
    match status {
        408 => false,
        400..=499 => backend_refusal,
        _ => false,
    }
}

/// Applies [`proves_not_applied`] to the error an adapter built from a
/// non-success answer to a submit: unless the answer proves the request
/// was refused, the error is marked `maybe_applied` (the daemon then
/// reconciles instead of sending it again). Adapters call this for every
/// failed answer to a non-idempotent request, and for nothing else.
pub fn classify_submit_failure(
    mut err: BackendError,
    status: u16,
    backend_refusal: bool,
) -> BackendError {
    if !proves_not_applied(status, backend_refusal) && !err.maybe_applied {
        err.maybe_applied = true;
        err.message
            .push_str(" (the request may have been applied before this answer)");
    }
    err
}

/// Numeric `Retry-After` values from this on are epoch timestamps, not a
/// delay (CF sends the `X-RateLimit-Reset` epoch in `Retry-After`).
const EPOCH_SECONDS_FROM: u64 = 1_000_000_000;
/// Numeric `Retry-After` values from this on are epoch *milliseconds*: as
/// seconds they would be after the year 5000, as milliseconds they are
/// after 1973.
const EPOCH_MILLIS_FROM: u64 = 100_000_000_000;

/// Parses `Retry-After` (see [`parse_retry_after`]).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(raw, now)
}

/// Parses a `Retry-After` value in any form seen in the wild: delta
/// seconds (`120`), epoch seconds (CF: `1800000042`), epoch milliseconds
/// (`1800000042000`), or an HTTP date. A time in the past is a zero delay.
/// Never panics: the arithmetic saturates, so a huge value is a huge delay
/// (capping it is the caller's business).
pub fn parse_retry_after(raw: &str, now: SystemTime) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<u64>() {
        if n < EPOCH_SECONDS_FROM {
            return Some(Duration::from_secs(n));
        }
        let at = if n >= EPOCH_MILLIS_FROM {
            Duration::from_millis(n)
        } else {
            Duration::from_secs(n)
        };
        let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        return Some(at.saturating_sub(now));
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
                let total = waited.saturating_add(d);
                if total > max_wait {
                    return Err(e);
                }
                waited = total;
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

    /// A POST answered 307 is not sent again, anywhere, and the 3xx comes
    /// back to the adapter (which counts it as maybe applied).
    #[tokio::test]
    async fn redirects_are_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let s2 = served.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                s2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{addr}/again\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = c.write_all(answer.as_bytes()).await;
            }
        });
        let c = client(Duration::from_secs(5)).unwrap();
        let req = c
            .post(format!("http://{addr}/v3/restore"))
            .body("{\"secret\":\"s\"}");
        let r = send(req, "restoring", false).await.unwrap();
        assert_eq!(r.status.as_u16(), 307);
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
        let e = classify_submit_failure(BackendError::transient("x"), 307, false);
        assert!(e.maybe_applied, "a 3xx to a submit proves nothing");
    }

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
    fn retry_after_epoch_millis_and_huge_values() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // Epoch milliseconds: 1.5 s from now, not 56836 years.
        assert_eq!(
            retry_after(&headers("1800000001500"), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers("1700000000000"), now),
            Some(Duration::ZERO)
        );
        // The largest values saturate instead of panicking.
        assert!(retry_after(&headers(&u64::MAX.to_string()), now).is_some());
        assert!(parse_retry_after(&u64::MAX.to_string(), UNIX_EPOCH).is_some());
        assert_eq!(
            parse_retry_after("18446744073709551616", now),
            None,
            "beyond u64 and not a date"
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        // A clock before 1970 does not panic either.
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert!(parse_retry_after("1800000000", before).is_some());
    }

    #[test]
    fn only_backend_refusals_prove_a_submit_was_not_applied() {
        for s in [400, 401, 403, 404, 409, 422, 429] {
            assert!(proves_not_applied(s, true), "{s} with the envelope");
            assert!(!proves_not_applied(s, false), "{s} from a proxy");
        }
        for s in [408, 500, 502, 503, 504, 200, 204, 302] {
            assert!(!proves_not_applied(s, true), "{s}");
        }
        let e = classify_submit_failure(BackendError::transient("x"), 504, false);
        assert!(e.maybe_applied);
        let e = classify_submit_failure(BackendError::new(ErrorKind::Busy, "x"), 409, true);
        assert!(!e.maybe_applied);
    }

    /// A one-shot HTTP/1.1 server that answers `head` then streams `chunks`
    /// chunks of 64 KiB (chunked encoding, no length), or, with a
    /// `Content-Length` in `head`, whatever `head` says.
    async fn raw_server(head: &'static str, chunks: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..chunks {
                let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
                c.extend_from_slice(&chunk);
                c.extend_from_slice(b"\r\n");
                if s.write_all(&c).await.is_err() {
                    return; // the client hung up: as it should
                }
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn bodies_are_capped_while_streaming() {
        let c = client(Duration::from_secs(5)).unwrap();
        // 100 MiB chunked: refused after 1 MiB, without reading the rest.
        let url = raw_server(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            1600,
        )
        .await;
        let e = send_capped(c.get(&url), "reading", true, 1 << 20)
            .await
            .unwrap_err();
        assert!(e.message.contains("longer than 1048576 bytes"), "{e}");
        assert!(!e.maybe_applied, "a GET");
        // A declared length over the cap on a POST: refused at once, and
        // the POST may have been applied.
        let url = raw_server(
            "HTTP/1.1 202 Accepted\r\ncontent-length: 999999999\r\n\r\n",
            0,
        )
        .await;
        let e = send(c.post(&url), "submitting", false).await.unwrap_err();
        assert!(e.maybe_applied);
        assert!(e.message.contains("longer than"), "{e}");
        // Under the cap: read whole.
        let url = raw_server("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", 2).await;
        let r = send(c.get(&url), "reading", true).await.unwrap();
        assert_eq!(r.body.len(), 128 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_idempotent_survives_a_huge_retry_after() {
        // A short wait first, so that the huge one is added to a non-zero
        // total (where an unchecked sum would overflow).
        let mut n = 0u32;
        let r: Result<(), _> = retry_idempotent(5, Duration::from_secs(10), || {
            n += 1;
            let first = n == 1;
            async move {
                let mut e = BackendError::new(ErrorKind::Throttled, "x");
                e.retry_after = Some(if first {
                    Duration::from_millis(10)
                } else {
                    Duration::MAX
                });
                Err(e)
            }
        })
        .await;
        assert_eq!(r.unwrap_err().kind, ErrorKind::Throttled);
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
