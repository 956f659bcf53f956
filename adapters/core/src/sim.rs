//! What every backend simulator shares (cargo feature `sim`): the server
//! loop whose connections can be dropped mid-exchange ([`serve`],
//! [`Kill`]), faults armed for the next POSTs that were applied
//! ([`PostFault`], [`ArmedPosts`], [`after_apply`]), forced answers for the
//! next matching requests ([`Injections`]), and a proxy's HTML error page.
//!
//! Each simulator keeps its own world, error dialect and routes; this
//! module holds only the pieces that are the same for all of them, so that
//! a fault means the same thing on every backend (the conformance suite
//! relies on that).

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Extension, Router,
    http::{HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{net::TcpListener, sync::Notify};

/// Locks a simulator's state; a panic elsewhere while it was held leaves it
/// usable, so carry on with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops the connection a request came on (found in the request's
/// extensions when served by [`serve`]).
#[derive(Clone, Debug)]
pub struct Kill(Arc<Notify>);

impl Kill {
    /// Closes the socket now: the client sees a reset or an incomplete
    /// answer. Never returns (the handler's future is dropped with the
    /// connection).
    pub async fn now(&self) -> Response {
        self.0.notify_one();
        std::future::pending().await
    }
}

/// Serves `app` on `listener` until `stop` is notified. Every connection
/// gets its own [`Kill`] in the requests' extensions.
pub fn serve(listener: TcpListener, app: Router, stop: Arc<Notify>) {
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "simulator accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.notified() => return,
            };
            let kill = Arc::new(Notify::new());
            let svc = TowerToHyperService::new(app.clone().layer(Extension(Kill(kill.clone()))));
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = kill.notified() => {}
                }
            });
        }
    });
}

/// What an armed POST meets ([`ArmedPosts::arm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostFault {
    /// The connection breaks before the request reaches the service:
    /// nothing is applied.
    ResetBeforeApply,
    /// Applied, then this status with a proxy's HTML page (a load balancer
    /// that gave up waiting: 502, 504).
    ApplyThenHtml(u16),
    /// Applied, then this status with the service's own error envelope
    /// (5xx, 408).
    ApplyThenError(u16),
    /// Applied, then the connection breaks before the answer.
    ApplyThenReset,
    /// Applied, and answered only after this long (a client with a shorter
    /// timeout sees a timeout).
    ApplyThenDelay(Duration),
    /// Applied, then the usual status with a body of this many bytes.
    ApplyThenHugeBody(usize),
}

#[derive(Debug, Clone)]
struct Armed {
    path_contains: String,
    fault: PostFault,
    times: u32,
}

/// Faults armed for the next POSTs whose path contains a string.
#[derive(Debug, Default)]
pub struct ArmedPosts(Vec<Armed>);

impl ArmedPosts {
    /// The next `times` POSTs whose path contains `path_contains` meet
    /// `fault` ([`PostFault::ResetBeforeApply`]: whatever they are; the
    /// others: only once applied, i.e. answered with a success).
    pub fn arm(&mut self, path_contains: &str, fault: PostFault, times: u32) {
        self.0.push(Armed {
            path_contains: path_contains.into(),
            fault,
            times,
        });
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    fn take(&mut self, path: &str, before: bool) -> Option<PostFault> {
        let p = self.0.iter().position(|a| {
            a.times > 0
                && (a.fault == PostFault::ResetBeforeApply) == before
                && path.contains(&a.path_contains)
        })?;
        let a = &mut self.0[p];
        a.times -= 1;
        let f = a.fault.clone();
        if a.times == 0 {
            self.0.remove(p);
        }
        Some(f)
    }

    /// Uses up an armed [`PostFault::ResetBeforeApply`] for a POST to
    /// `path`, if there is one.
    pub fn take_before_apply(&mut self, path: &str) -> bool {
        self.take(path, true).is_some()
    }

    /// Uses up a fault armed for an applied POST to `path`, if there is one.
    pub fn take_after_apply(&mut self, path: &str) -> Option<PostFault> {
        self.take(path, false)
    }
}

/// What `fault` makes of the answer `resp` to an applied POST; `error`
/// builds the service's own error envelope for a status
/// ([`PostFault::ApplyThenError`]).
pub async fn after_apply(
    fault: PostFault,
    resp: Response,
    kill: Option<&Kill>,
    error: impl FnOnce(StatusCode) -> Response,
) -> Response {
    let status = |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::GATEWAY_TIMEOUT);
    match fault {
        PostFault::ResetBeforeApply => resp,
        PostFault::ApplyThenHtml(s) => html_page(status(s)),
        PostFault::ApplyThenError(s) => error(status(s)),
        PostFault::ApplyThenReset => match kill {
            Some(k) => k.now().await,
            None => resp,
        },
        PostFault::ApplyThenDelay(d) => {
            tokio::time::sleep(d).await;
            resp
        }
        PostFault::ApplyThenHugeBody(n) => {
            let (parts, _) = resp.into_parts();
            Response::from_parts(parts, axum::body::Body::from(vec![b' '; n]))
        }
    }
}

/// An nginx error page with `status`, as a proxy in front of a backend
/// sends it.
pub fn html_page(status: StatusCode) -> Response {
    let body = format!(
        "<html><head><title>{code} {reason}</title></head><body><center><h1>{code} {reason}</h1></center><hr><center>nginx</center></body></html>",
        code = status.as_u16(),
        reason = status.canonical_reason().unwrap_or("Error")
    );
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/html"));
    r
}

#[derive(Debug, Clone)]
struct Injection<T> {
    method: Method,
    path_contains: String,
    times: u32,
    answer: T,
}

/// Forced answers (`T`: what the simulator needs to build one) for the next
/// requests whose method matches and whose path contains a string.
#[derive(Debug)]
pub struct Injections<T>(Vec<Injection<T>>);

impl<T> Default for Injections<T> {
    fn default() -> Self {
        Injections(Vec::new())
    }
}

impl<T: Clone> Injections<T> {
    pub fn push(&mut self, method: Method, path_contains: &str, times: u32, answer: T) {
        if times > 0 {
            self.0.push(Injection {
                method,
                path_contains: path_contains.into(),
                times,
                answer,
            });
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Uses up the first injection matching this request.
    pub fn take(&mut self, method: &Method, path: &str) -> Option<T> {
        let p = self
            .0
            .iter()
            .position(|i| i.method == *method && path.contains(&i.path_contains))?;
        let i = &mut self.0[p];
        i.times -= 1;
        let answer = i.answer.clone();
        if i.times == 0 {
            self.0.remove(p);
        }
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_posts_are_used_up_by_their_phase() {
        let mut a = ArmedPosts::default();
        a.arm("/restore", PostFault::ApplyThenHtml(504), 2);
        a.arm("/restore", PostFault::ResetBeforeApply, 1);
        assert_eq!(a.take_after_apply("/backups"), None);
        assert!(a.take_before_apply("/x/restore"));
        assert!(!a.take_before_apply("/x/restore"), "used up");
        assert_eq!(
            a.take_after_apply("/x/restore"),
            Some(PostFault::ApplyThenHtml(504))
        );
        assert_eq!(
            a.take_after_apply("/x/restore"),
            Some(PostFault::ApplyThenHtml(504))
        );
        assert_eq!(a.take_after_apply("/x/restore"), None);
    }

    #[test]
    fn injections_match_method_and_path() {
        let mut i = Injections::default();
        i.push(Method::POST, "/backups", 1, 503u16);
        i.push(Method::GET, "/backups", 0, 500u16);
        assert_eq!(i.take(&Method::GET, "/v2/p/backups"), None);
        assert_eq!(i.take(&Method::POST, "/v2/p/backups"), Some(503));
        assert_eq!(i.take(&Method::POST, "/v2/p/backups"), None);
    }
}
