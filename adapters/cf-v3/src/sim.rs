//! A simulator of the CF v3 API that Custos uses: the root document, UAA's
//! `/oauth/token`, service instances with `last_operation`, backups, restores
//! and `/v3/jobs`, with CF's error envelopes, rate-limit headers and job
//! progress (`PROCESSING` → `POLLING` → `COMPLETE`/`FAILED`).
//!
//! Switches ([`SimConfig`]) add latency, job duration, faults (5xx, 429 with
//! an epoch `Retry-After` in seconds or milliseconds, connection resets
//! before or after the request is applied, slow answers that time out),
//! short token lifetimes, a `last_operation` that shows late, and odd
//! `Location`s (another origin, none, garbage). [`Simulator::arm_post`]
//! makes the next POSTs fail *after* they were applied (504 HTML from a
//! load balancer, 5xx/408 envelopes, resets, timeouts, huge bodies);
//! [`Simulator::foreign_last_operation`] shows someone else's operation.
//! Counters ([`Counters`]) let tests prove nothing was submitted twice.
//! [`Simulator::add_running_job`] adds a job already running, as if
//! accepted before a daemon restart (the benchmark's P4 writes their URLs
//! into a daemon's store); each job counts its polls
//! ([`Simulator::job_polls`], [`Counters::jobs_polled`]).
//!
//! `last_operation` as this simulator models it [INF: CC's docs do not say
//! what the OSMAPI backup extension puts there]: `type` is `update`, the
//! `description` names the work (`backup in progress`, `restore
//! succeeded`, `restore failed: <detail>`), `created_at` is when the
//! operation started and `updated_at` when it last changed.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use chrono::{SecondsFormat, Utc};
pub use custos_adapter_core::sim::PostFault;
use custos_adapter_core::sim::{ArmedPosts, Injections, Kill, after_apply, lock, serve};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Notify, time::Instant};

pub use crate::wire::CfError;
use crate::wire::{BackupEntry, ErrorEnvelope, RestoreBody, TokenResponse};

/// Behaviour switches; change them at run time with [`Simulator::configure`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Added to every answer.
    pub latency: Duration,
    /// How long a backup or restore job runs.
    pub job_duration: Duration,
    /// Share of requests answered 502/503/500 with a CF envelope.
    pub error_rate: f64,
    /// Share of requests answered 429 with `Retry-After` as epoch seconds.
    pub throttle_rate: f64,
    /// Share of requests whose connection is dropped before they are read.
    pub reset_rate: f64,
    /// Share of GETs answered 200 with a truncated, malformed JSON body.
    pub malformed_rate: f64,
    /// Share of accepted POSTs whose connection is dropped *after* they
    /// were applied (the client cannot know they were).
    pub reset_after_apply_rate: f64,
    /// Share of requests answered only after `slow_delay` (a client with a
    /// shorter timeout sees a timeout; POSTs are applied first).
    pub slow_rate: f64,
    pub slow_delay: Duration,
    /// Lifetime of issued tokens (`expires_in`); expired ones get 401
    /// `CF-InvalidAuthToken`.
    pub token_lifetime: Duration,
    pub client_id: String,
    pub client_secret: String,
    /// Password-grant users.
    pub users: Vec<(String, String)>,
    /// Tokens accepted without UAA (for `type = "token"` backends).
    pub static_tokens: Vec<String>,
    /// Send `Location: /v3/jobs/{guid}` (relative) instead of an absolute URL.
    pub relative_location: bool,
    /// Apply `slow_rate` to API POSTs (`/v3/...`) only, not to reads or
    /// token requests.
    pub slow_only_posts: bool,
    /// Leave `last_operation` out of service instances (a CC that does not
    /// track backup operations there), so reconciliation cannot tell.
    pub omit_last_operation: bool,
    /// 429s carry `Retry-After` as epoch *milliseconds* (a backend seen in
    /// the wild) instead of CF's epoch seconds.
    pub retry_after_millis: bool,
    /// Send `Location` on this origin (e.g. `http://127.0.0.2:PORT`)
    /// instead of the simulator's own.
    pub location_base: Option<String>,
    /// Answer an accepted POST 202 without a `Location`.
    pub omit_location: bool,
    /// Send this verbatim as the `Location` of an accepted POST.
    pub raw_location: Option<String>,
    /// The instance's `last_operation` shows an accepted operation only
    /// this long after it was applied (a slow CC); the job URL is at once.
    pub last_operation_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Duration::ZERO,
            job_duration: Duration::from_millis(300),
            error_rate: 0.0,
            throttle_rate: 0.0,
            reset_rate: 0.0,
            reset_after_apply_rate: 0.0,
            malformed_rate: 0.0,
            slow_rate: 0.0,
            slow_delay: Duration::from_secs(5),
            token_lifetime: Duration::from_secs(43199),
            client_id: "custos".into(),
            client_secret: "custos-secret".into(),
            users: vec![("admin".into(), "admin-password".into())],
            static_tokens: Vec::new(),
            relative_location: false,
            slow_only_posts: false,
            omit_last_operation: false,
            retry_after_millis: false,
            location_base: None,
            omit_location: false,
            raw_location: None,
            last_operation_delay: Duration::ZERO,
        }
    }
}

/// What the simulator counted; every field only grows.
#[derive(Debug, Default)]
pub struct Counters {
    /// Accepted `POST .../backups` (202).
    pub backup_submits: AtomicU64,
    /// Accepted `POST .../actions/restore` (202).
    pub restore_submits: AtomicU64,
    pub token_grants: AtomicU64,
    pub job_polls: AtomicU64,
    /// Jobs polled at least once (each counted once, however often it
    /// was polled).
    pub jobs_polled: AtomicU64,
    pub requests: AtomicU64,
    pub faults: AtomicU64,
    pub rejected_tokens: AtomicU64,
    /// Requests being answered now, and the most ever at once.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub backup_submits: u64,
    pub restore_submits: u64,
    pub token_grants: u64,
    pub job_polls: u64,
    pub jobs_polled: u64,
    pub requests: u64,
    pub faults: u64,
    pub rejected_tokens: u64,
    pub max_in_flight: u64,
}

/// A forced answer for the next `times` requests whose method matches and
/// whose path contains `path_contains`.
#[derive(Debug, Clone)]
pub struct Injection {
    pub method: Method,
    pub path_contains: String,
    pub status: u16,
    pub error: CfError,
    pub times: u32,
}

/// A CF error entry, for [`Injection`] and [`Simulator::fail_next_job`].
pub fn cf_error(code: i64, title: &str, detail: &str) -> CfError {
    CfError {
        code,
        title: title.to_string(),
        detail: detail.to_string(),
    }
}

/// What a restore request carried, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRestore {
    pub instance: String,
    pub body: Value,
}

#[derive(Debug, Clone)]
struct LastOp {
    kind: &'static str,
    /// The work, named in `description`: `backup`, `restore`, ...
    work: String,
    state: &'static str,
    description: String,
    created_at: String,
    updated_at: String,
}

impl LastOp {
    fn to_json(&self) -> Value {
        json!({"type": self.kind, "state": self.state, "description": self.description,
               "created_at": self.created_at, "updated_at": self.updated_at})
    }
}

#[derive(Debug, Clone)]
struct Instance {
    name: String,
    backups: Vec<BackupEntry>,
    last_operation: Option<LastOp>,
    /// An operation applied but not yet shown (`last_operation_delay`).
    pending_last_operation: Option<(Instant, LastOp)>,
    /// The job running on the instance, if any.
    busy_job: Option<String>,
}

#[derive(Debug, Clone)]
enum JobWork {
    Backup,
    Restore,
}

#[derive(Debug, Clone)]
struct SimJob {
    instance: String,
    work: JobWork,
    created_at: String,
    started: Instant,
    duration: Duration,
    /// `None` while running.
    outcome: Option<Result<(), CfError>>,
    /// Decided at submit: the job will fail with this error.
    fail_with: Option<CfError>,
    updated_at: String,
    /// `GET /v3/jobs/{guid}` answered for this job.
    polls: u64,
}

#[derive(Default)]
struct World {
    instances: HashMap<String, Instance>,
    jobs: HashMap<String, SimJob>,
    tokens: HashMap<String, Instant>,
    /// Forced answers: status and CF error.
    injections: Injections<(u16, CfError)>,
    fail_next_jobs: HashMap<String, CfError>,
    restores: Vec<ReceivedRestore>,
    armed_posts: ArmedPosts,
}

struct Inner {
    cfg: Mutex<SimConfig>,
    world: Mutex<World>,
    counters: Counters,
    base_url: String,
}

/// A running simulator. Dropping it does not stop the server; call
/// [`Simulator::shutdown`] or let the runtime end.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: Arc<Notify>,
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Simulator {
    /// Binds `addr` (use port 0 for a free port) and serves until shutdown.
    pub async fn start(addr: SocketAddr, cfg: SimConfig) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            cfg: Mutex::new(cfg),
            world: Mutex::new(World::default()),
            counters: Counters::default(),
            base_url: format!("http://{addr}"),
        });
        let stop = Arc::new(Notify::new());
        serve(listener, router(inner.clone()), stop.clone());
        Ok(Simulator { inner, addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the value for a backend's `endpoint`.
    pub fn url(&self) -> String {
        self.inner.base_url.clone()
    }

    pub fn shutdown(&self) {
        self.stop.notify_one();
    }

    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut lock(&self.inner.cfg));
    }

    pub fn config(&self) -> SimConfig {
        lock(&self.inner.cfg).clone()
    }

    /// Adds a service instance with no backups.
    pub fn add_instance(&self, guid: &str, name: &str) {
        lock(&self.inner.world).instances.insert(
            guid.to_string(),
            Instance {
                name: name.to_string(),
                backups: Vec::new(),
                last_operation: None,
                pending_last_operation: None,
                busy_job: None,
            },
        );
    }

    /// Adds a finished backup to an instance.
    pub fn add_backup(&self, guid: &str, backup_id: &str, created_at: i64) {
        if let Some(i) = lock(&self.inner.world).instances.get_mut(guid) {
            i.backups.push(BackupEntry {
                id: backup_id.to_string(),
                created_at,
            });
        }
    }

    pub fn backups(&self, guid: &str) -> Vec<String> {
        let mut w = lock(&self.inner.world);
        advance(&mut w);
        w.instances
            .get(guid)
            .map(|i| i.backups.iter().map(|b| b.id.clone()).collect())
            .unwrap_or_default()
    }

    /// A backup job already running on `guid` for `duration` from now, as
    /// if accepted earlier (by a daemon before its restart): the instance
    /// is busy and shows it in `last_operation`, and `GET /v3/jobs/{job}`
    /// answers for it. Returns the job's URL (the `Location` a submit
    /// would have given), or `None` when the instance is unknown, busy, or
    /// the job guid is taken. Counts no submit.
    pub fn add_running_job(&self, guid: &str, job: &str, duration: Duration) -> Option<String> {
        let mut w = lock(&self.inner.world);
        if w.jobs.contains_key(job) {
            return None;
        }
        let inst = w.instances.get_mut(guid)?;
        if inst.busy_job.is_some() {
            return None;
        }
        let ts = now_rfc3339();
        inst.busy_job = Some(job.to_string());
        inst.last_operation = Some(LastOp {
            kind: "update",
            work: "backup".into(),
            state: "in progress",
            description: "backup in progress".into(),
            created_at: ts.clone(),
            updated_at: ts.clone(),
        });
        w.jobs.insert(
            job.to_string(),
            SimJob {
                instance: guid.to_string(),
                work: JobWork::Backup,
                created_at: ts.clone(),
                started: Instant::now(),
                duration,
                outcome: None,
                fail_with: None,
                updated_at: ts,
                polls: 0,
            },
        );
        Some(format!("{}/v3/jobs/{job}", self.inner.base_url))
    }

    /// How often `GET /v3/jobs/{job}` was answered for this job (`None`:
    /// no such job).
    pub fn job_polls(&self, job: &str) -> Option<u64> {
        lock(&self.inner.world).jobs.get(job).map(|j| j.polls)
    }

    /// Forces the next matching requests to fail.
    pub fn inject(&self, inj: Injection) {
        lock(&self.inner.world).injections.push(
            inj.method,
            &inj.path_contains,
            inj.times,
            (inj.status, inj.error),
        );
    }

    /// The next `times` POSTs whose path contains `path_contains` meet
    /// `fault`. An `ApplyThen…` fault is used up only by a POST that was
    /// applied (202); one refused (404, 409, ...) is answered as usual.
    pub fn arm_post(&self, path_contains: &str, fault: PostFault, times: u32) {
        lock(&self.inner.world)
            .armed_posts
            .arm(path_contains, fault, times);
    }

    /// Forgets every injection and armed POST fault not yet used.
    pub fn clear_faults(&self) {
        let mut w = lock(&self.inner.world);
        w.injections.clear();
        w.armed_posts.clear();
    }

    /// Whether a job is running on `guid`.
    pub fn busy(&self, guid: &str) -> bool {
        let mut w = lock(&self.inner.world);
        advance(&mut w);
        w.instances.get(guid).is_some_and(|i| i.busy_job.is_some())
    }

    /// Someone else's operation on `guid`, started `age` ago: the instance's
    /// `last_operation` becomes `{type: update, description: "<work>
    /// <state>", state}` (`state`: `in progress`, `succeeded` or `failed`).
    /// It does not keep the instance busy.
    pub fn foreign_last_operation(
        &self,
        guid: &str,
        work: &str,
        state: &'static str,
        age: Duration,
    ) {
        let now = Utc::now();
        let started = chrono::Duration::from_std(age)
            .ok()
            .and_then(|a| now.checked_sub_signed(a))
            .unwrap_or(now);
        let ts = started.to_rfc3339_opts(SecondsFormat::Millis, true);
        if let Some(i) = lock(&self.inner.world).instances.get_mut(guid) {
            i.last_operation = Some(LastOp {
                kind: "update",
                work: work.to_string(),
                state,
                description: format!("{work} {state}"),
                created_at: ts.clone(),
                updated_at: ts,
            });
        }
    }

    /// The next job started on `guid` ends `FAILED` with `error`.
    pub fn fail_next_job(&self, guid: &str, error: CfError) {
        lock(&self.inner.world)
            .fail_next_jobs
            .insert(guid.to_string(), error);
    }

    /// Every restore request received, in order.
    pub fn restores(&self) -> Vec<ReceivedRestore> {
        lock(&self.inner.world).restores.clone()
    }

    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.inner.counters;
        CounterSnapshot {
            backup_submits: c.backup_submits.load(Ordering::SeqCst),
            restore_submits: c.restore_submits.load(Ordering::SeqCst),
            token_grants: c.token_grants.load(Ordering::SeqCst),
            job_polls: c.job_polls.load(Ordering::SeqCst),
            jobs_polled: c.jobs_polled.load(Ordering::SeqCst),
            requests: c.requests.load(Ordering::SeqCst),
            faults: c.faults.load(Ordering::SeqCst),
            rejected_tokens: c.rejected_tokens.load(Ordering::SeqCst),
            max_in_flight: c.max_in_flight.load(Ordering::SeqCst),
        }
    }

    /// Seeds three instances with backups, for dev mode and demos.
    pub fn seed_demo(&self) -> Vec<String> {
        let now = Utc::now().timestamp();
        let ids = [
            ("6b0e2a8c-3f4d-4e5a-9b1c-2d3e4f5a6b7c", "orders-db"),
            ("0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0", "billing-db"),
            ("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "search-cache"),
        ];
        for (i, (guid, name)) in ids.iter().enumerate() {
            self.add_instance(guid, name);
            for k in 0..2 {
                self.add_backup(
                    guid,
                    &format!("bkp-{name}-{k}"),
                    now - 86_400 * (2 - k) - i as i64,
                );
            }
        }
        ids.iter().map(|(g, _)| g.to_string()).collect()
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/oauth/token", post(token))
        .route("/v3/service_instances/{guid}", get(get_instance))
        .route(
            "/v3/service_instances/{guid}/backups",
            post(create_backup).get(list_backups),
        )
        .route(
            "/v3/service_instances/{guid}/actions/restore",
            post(restore),
        )
        .route("/v3/jobs/{guid}", get(get_job))
        .layer(middleware::from_fn_with_state(inner.clone(), faults))
        .with_state(inner)
}

fn cf_error_response(status: StatusCode, code: i64, title: &str, detail: &str) -> Response {
    let env = ErrorEnvelope {
        errors: vec![CfError {
            code,
            title: title.to_string(),
            detail: detail.to_string(),
        }],
    };
    (status, Json(env)).into_response()
}

/// 422 `CF-UnprocessableEntity`, CF's answer to a request it cannot use.
fn unprocessable(detail: &str) -> Response {
    cf_error_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        10008,
        "CF-UnprocessableEntity",
        detail,
    )
}

fn rate_limit_headers(h: &mut HeaderMap, reset: i64, remaining: u64) {
    let set = |h: &mut HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(h, "x-ratelimit-limit", "20000".into());
    set(h, "x-ratelimit-remaining", remaining.to_string());
    set(h, "x-ratelimit-reset", reset.to_string());
}

/// Latency, random faults, injections, and the rate-limit headers CF puts on
/// every answer.
async fn faults(
    State(inner): State<Arc<Inner>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    inner.counters.requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&inner.counters);
    let cfg = lock(&inner.cfg).clone();
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    let kill = req.extensions().get::<Kill>().cloned();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let reset_epoch = Utc::now().timestamp() + 1;

    let injected = lock(&inner.world).injections.take(&method, &path);
    if let Some((status, e)) = injected {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = cf_error_response(status, e.code, &e.title, &e.detail);
        if status == StatusCode::TOO_MANY_REQUESTS {
            // CF's 429 always says when to come back.
            throttle_headers(resp.headers_mut(), &cfg, reset_epoch);
        }
        return resp;
    }

    // Armed faults meet API POSTs only (not token requests):
    // `ResetBeforeApply` whatever they are, the others once applied (202).
    let api_post = method == Method::POST && path.starts_with("/v3/");
    if api_post
        && lock(&inner.world).armed_posts.take_before_apply(&path)
        && let Some(k) = &kill
    {
        inner.counters.faults.fetch_add(1, Ordering::SeqCst);
        return k.now().await;
    }

    let (reset, throttle, error, slow, reset_after, malformed) = {
        let mut rng = rand::rng();
        (
            rng.random_bool(cfg.reset_rate.clamp(0.0, 1.0)),
            rng.random_bool(cfg.throttle_rate.clamp(0.0, 1.0)),
            rng.random_bool(cfg.error_rate.clamp(0.0, 1.0)),
            rng.random_bool(cfg.slow_rate.clamp(0.0, 1.0)),
            rng.random_bool(cfg.reset_after_apply_rate.clamp(0.0, 1.0)),
            rng.random_bool(cfg.malformed_rate.clamp(0.0, 1.0)),
        )
    };
    if reset && let Some(k) = &kill {
        inner.counters.faults.fetch_add(1, Ordering::SeqCst);
        return k.now().await;
    }
    if throttle {
        inner.counters.faults.fetch_add(1, Ordering::SeqCst);
        // CF: Retry-After carries the same epoch as X-RateLimit-Reset, and
        // the body is JSON sent as text/plain.
        let body = serde_json::to_string(&ErrorEnvelope {
            errors: vec![CfError {
                code: 10013,
                title: "CF-RateLimitExceeded".into(),
                detail: "Rate Limit Exceeded".into(),
            }],
        })
        .unwrap_or_default();
        let mut resp = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        throttle_headers(h, &cfg, reset_epoch);
        return resp;
    }
    if error {
        inner.counters.faults.fetch_add(1, Ordering::SeqCst);
        let pick = rand::rng().random_range(0..3);
        return match pick {
            0 => cf_error_response(
                StatusCode::BAD_GATEWAY,
                10001,
                "CF-ServerError",
                "An unknown error occurred.",
            ),
            1 => cf_error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                10015,
                "CF-ServiceUnavailable",
                "Service broker is unavailable.",
            ),
            _ => cf_error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                10001,
                "CF-ServerError",
                "An unknown error occurred.",
            ),
        };
    }
    if malformed && method == Method::GET {
        inner.counters.faults.fetch_add(1, Ordering::SeqCst);
        let mut resp = (StatusCode::OK, "{\"backups\": [{\"id\": ").into_response();
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return resp;
    }
    let mut resp = next.run(req).await;
    rate_limit_headers(resp.headers_mut(), reset_epoch, 19_999);
    let applied_post = method == Method::POST && resp.status() == StatusCode::ACCEPTED;
    let armed = if api_post && applied_post {
        lock(&inner.world).armed_posts.take_after_apply(&path)
    } else {
        None
    };
    if let Some(fault) = armed {
        inner.counters.faults.fetch_add(1, Ordering::SeqCst);
        return after_apply(fault, resp, kill.as_ref(), cf_server_error).await;
    }
    if applied_post
        && reset_after
        && let Some(k) = &kill
    {
        inner.counters.faults.fetch_add(1, Ordering::SeqCst);
        return k.now().await;
    }
    if slow && (api_post || !cfg.slow_only_posts) {
        inner.counters.faults.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(cfg.slow_delay).await;
    }
    resp
}

/// Rate-limit headers and `Retry-After` of a 429: the reset epoch, in
/// seconds as CF sends it, or in milliseconds with `retry_after_millis`.
fn throttle_headers(h: &mut HeaderMap, cfg: &SimConfig, reset_epoch: i64) {
    rate_limit_headers(h, reset_epoch, 0);
    let value = if cfg.retry_after_millis {
        reset_epoch.saturating_mul(1000).to_string()
    } else {
        reset_epoch.to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert("retry-after", v);
    }
}

/// CF's envelope for a server-side error with `status` (an applied POST
/// answered [`PostFault::ApplyThenError`]).
fn cf_server_error(status: StatusCode) -> Response {
    match status.as_u16() {
        502 | 503 => cf_error_response(
            status,
            10015,
            "CF-ServiceUnavailable",
            "Service broker is unavailable.",
        ),
        408 => cf_error_response(status, 10001, "CF-ServerError", "Request timed out."),
        _ => cf_error_response(
            status,
            10001,
            "CF-ServerError",
            "An unknown error occurred.",
        ),
    }
}

/// Counts a request as in flight until dropped (also when its connection
/// is dropped mid-answer).
struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn enter(c: &'a Counters) -> Self {
        let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Moves every job whose time has come to its end, applying its effect.
fn advance(w: &mut World) {
    let now = Instant::now();
    let ts = now_rfc3339();
    for inst in w.instances.values_mut() {
        if inst
            .pending_last_operation
            .as_ref()
            .is_some_and(|(at, _)| now >= *at)
        {
            inst.last_operation = inst.pending_last_operation.take().map(|(_, lo)| lo);
        }
    }
    let due: Vec<String> = w
        .jobs
        .iter()
        .filter(|(_, j)| j.outcome.is_none() && now >= j.started + j.duration)
        .map(|(g, _)| g.clone())
        .collect();
    for g in due {
        let Some(job) = w.jobs.get_mut(&g) else {
            continue;
        };
        let outcome = match job.fail_with.clone() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        job.outcome = Some(outcome.clone());
        job.updated_at = ts.clone();
        let (instance, work) = (job.instance.clone(), job.work.clone());
        if let Some(inst) = w.instances.get_mut(&instance) {
            inst.busy_job = None;
            let lo = match inst.pending_last_operation.as_mut() {
                Some((_, lo)) => Some(lo),
                None => inst.last_operation.as_mut(),
            };
            if let Some(lo) = lo {
                lo.updated_at = ts.clone();
                match &outcome {
                    Ok(()) => {
                        lo.state = "succeeded";
                        lo.description = format!("{} succeeded", lo.work);
                    }
                    Err(e) => {
                        lo.state = "failed";
                        lo.description = format!("{} failed: {}", lo.work, e.detail);
                    }
                }
            }
            if matches!(work, JobWork::Backup) && outcome.is_ok() {
                inst.backups.push(BackupEntry {
                    id: uuid::Uuid::new_v4().to_string(),
                    created_at: Utc::now().timestamp(),
                });
            }
        }
    }
}

async fn root(State(inner): State<Arc<Inner>>) -> Response {
    let b = &inner.base_url;
    Json(json!({"links": {
        "self": {"href": b},
        "cloud_controller_v3": {"href": format!("{b}/v3"), "meta": {"version": "3.180.0"}},
        "login": {"href": b},
        "uaa": {"href": b},
    }}))
    .into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    username: Option<String>,
    password: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, desc: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": desc})),
    )
        .into_response()
}

async fn token(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let cfg = lock(&inner.cfg).clone();
    let form: TokenForm = match parse_token_form(&body) {
        Some(f) => f,
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "malformed form body",
            );
        }
    };
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials");
    };
    if id != cfg.client_id || secret != cfg.client_secret {
        return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials");
    }
    match form.grant_type.as_str() {
        "client_credentials" => {}
        "password" => {
            let ok = cfg.users.iter().any(|(u, p)| {
                Some(u.as_str()) == form.username.as_deref()
                    && Some(p.as_str()) == form.password.as_deref()
            });
            if !ok {
                return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials");
            }
        }
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            );
        }
    }
    let value = format!("sim-{}", uuid::Uuid::new_v4().simple());
    lock(&inner.world)
        .tokens
        .insert(value.clone(), Instant::now() + cfg.token_lifetime);
    inner.counters.token_grants.fetch_add(1, Ordering::SeqCst);
    Json(TokenResponse {
        access_token: value,
        token_type: "bearer".into(),
        expires_in: Some(cfg.token_lifetime.as_secs().max(1)),
        scope: Some("cloud_controller.read cloud_controller.write".into()),
        jti: Some(uuid::Uuid::new_v4().simple().to_string()),
    })
    .into_response()
}

fn parse_token_form(body: &[u8]) -> Option<TokenForm> {
    let pairs: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    Some(TokenForm {
        grant_type: pairs.get("grant_type")?.clone(),
        username: pairs.get("username").cloned(),
        password: pairs.get("password").cloned(),
    })
}

/// Checks `Authorization: bearer <token>` (scheme case-insensitive).
fn authorize(inner: &Inner, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(token) = token else {
        return Err(Box::new(cf_error_response(
            StatusCode::UNAUTHORIZED,
            10002,
            "CF-NotAuthenticated",
            "Authentication error",
        )));
    };
    if lock(&inner.cfg).static_tokens.iter().any(|t| t == token) {
        return Ok(());
    }
    let valid = lock(&inner.world)
        .tokens
        .get(token)
        .is_some_and(|exp| Instant::now() < *exp);
    if valid {
        Ok(())
    } else {
        inner
            .counters
            .rejected_tokens
            .fetch_add(1, Ordering::SeqCst);
        Err(Box::new(cf_error_response(
            StatusCode::UNAUTHORIZED,
            1000,
            "CF-InvalidAuthToken",
            "Invalid Auth Token",
        )))
    }
}

fn not_found_instance() -> Response {
    cf_error_response(
        StatusCode::NOT_FOUND,
        10010,
        "CF-ResourceNotFound",
        "Service instance not found",
    )
}

async fn get_instance(
    State(inner): State<Arc<Inner>>,
    Path(guid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&inner, &headers) {
        return *r;
    }
    let mut w = lock(&inner.world);
    advance(&mut w);
    let Some(i) = w.instances.get(&guid) else {
        return not_found_instance();
    };
    let b = &inner.base_url;
    let mut v = json!({
        "guid": guid,
        "name": i.name,
        "type": "managed",
        "last_operation": i.last_operation.as_ref().map(LastOp::to_json),
        "links": {"self": {"href": format!("{b}/v3/service_instances/{guid}")}},
    });
    if lock(&inner.cfg).omit_last_operation
        && let Some(o) = v.as_object_mut()
    {
        o.remove("last_operation");
    }
    Json(v).into_response()
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<String>,
}

async fn list_backups(
    State(inner): State<Arc<Inner>>,
    Path(guid): Path<String>,
    Query(q): Query<LimitQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&inner, &headers) {
        return *r;
    }
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => None,
        Some(Ok(n)) if n >= 1 => Some(n),
        Some(_) => {
            return unprocessable("Limit must be a positive integer");
        }
    };
    let mut w = lock(&inner.world);
    advance(&mut w);
    let Some(i) = w.instances.get(&guid) else {
        return not_found_instance();
    };
    let mut backups = i.backups.clone();
    backups.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    if let Some(n) = limit {
        backups.truncate(n);
    }
    Json(json!({"backups": backups})).into_response()
}

/// Starts a job on an instance, or answers 404/409.
fn start_job(inner: &Inner, guid: &str, work: JobWork, kind: &'static str) -> Response {
    let c = lock(&inner.cfg).clone();
    let (duration, relative) = (c.job_duration, c.relative_location);
    let mut w = lock(&inner.world);
    advance(&mut w);
    let fail_with = w.fail_next_jobs.remove(guid);
    let Some(inst) = w.instances.get_mut(guid) else {
        return not_found_instance();
    };
    if inst.busy_job.is_some() {
        return cf_error_response(
            StatusCode::CONFLICT,
            60016,
            "CF-AsyncServiceInstanceOperationInProgress",
            &format!(
                "An operation for service instance {} is in progress.",
                inst.name
            ),
        );
    }
    let job_guid = uuid::Uuid::new_v4().to_string();
    let ts = now_rfc3339();
    inst.busy_job = Some(job_guid.clone());
    let lo = LastOp {
        kind: "update",
        work: kind.to_string(),
        state: "in progress",
        description: format!("{kind} in progress"),
        created_at: ts.clone(),
        updated_at: ts.clone(),
    };
    if c.last_operation_delay.is_zero() {
        inst.last_operation = Some(lo);
        inst.pending_last_operation = None;
    } else {
        inst.pending_last_operation = Some((Instant::now() + c.last_operation_delay, lo));
    }
    w.jobs.insert(
        job_guid.clone(),
        SimJob {
            instance: guid.to_string(),
            work,
            created_at: ts.clone(),
            started: Instant::now(),
            duration,
            outcome: None,
            fail_with,
            updated_at: ts,
            polls: 0,
        },
    );
    let mut resp = StatusCode::ACCEPTED.into_response();
    let base = match (&c.location_base, relative) {
        (Some(b), _) => b.trim_end_matches('/'),
        (None, true) => "",
        (None, false) => inner.base_url.as_str(),
    };
    let location = match &c.raw_location {
        Some(raw) => raw.clone(),
        None => format!("{base}/v3/jobs/{job_guid}"),
    };
    if !c.omit_location
        && let Ok(v) = HeaderValue::from_str(&location)
    {
        resp.headers_mut().insert("location", v);
    }
    resp
}

async fn create_backup(
    State(inner): State<Arc<Inner>>,
    Path(guid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&inner, &headers) {
        return *r;
    }
    let resp = start_job(&inner, &guid, JobWork::Backup, "backup");
    if resp.status() == StatusCode::ACCEPTED {
        inner.counters.backup_submits.fetch_add(1, Ordering::SeqCst);
    }
    resp
}

async fn restore(
    State(inner): State<Arc<Inner>>,
    Path(guid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&inner, &headers) {
        return *r;
    }
    let raw: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return unprocessable(&format!("Request invalid due to parse error: {e}"));
            }
        }
    };
    let req: RestoreBody = match serde_json::from_value(raw.clone()) {
        Ok(r) => r,
        Err(e) => {
            return unprocessable(&e.to_string());
        }
    };
    if let Some(ts) = &req.target_timestamp
        && chrono::DateTime::parse_from_rfc3339(ts).is_err()
    {
        return unprocessable("Target timestamp must be an RFC 3339 date-time");
    }
    {
        let w = lock(&inner.world);
        if !w.instances.contains_key(&guid) {
            return not_found_instance();
        }
        let from = req.source_service_instance_guid.as_deref().unwrap_or(&guid);
        let Some(src) = w.instances.get(from) else {
            return unprocessable("Source service instance not found");
        };
        if let Some(b) = &req.backup_id
            && !src.backups.iter().any(|x| &x.id == b)
        {
            return unprocessable(&format!("Backup {b} not found"));
        }
    }
    let resp = start_job(&inner, &guid, JobWork::Restore, "restore");
    if resp.status() == StatusCode::ACCEPTED {
        inner
            .counters
            .restore_submits
            .fetch_add(1, Ordering::SeqCst);
        lock(&inner.world).restores.push(ReceivedRestore {
            instance: guid,
            body: raw,
        });
    }
    resp
}

async fn get_job(
    State(inner): State<Arc<Inner>>,
    Path(guid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&inner, &headers) {
        return *r;
    }
    inner.counters.job_polls.fetch_add(1, Ordering::SeqCst);
    let mut w = lock(&inner.world);
    advance(&mut w);
    let Some(j) = w.jobs.get_mut(&guid) else {
        return cf_error_response(
            StatusCode::NOT_FOUND,
            10010,
            "CF-ResourceNotFound",
            "Job not found",
        );
    };
    j.polls += 1;
    if j.polls == 1 {
        inner.counters.jobs_polled.fetch_add(1, Ordering::SeqCst);
    }
    let j = &*j;
    let (state, errors) = match &j.outcome {
        Some(Ok(())) => ("COMPLETE", vec![]),
        Some(Err(e)) => ("FAILED", vec![e.clone()]),
        None if j.started.elapsed() < j.duration / 3 => ("PROCESSING", vec![]),
        None => ("POLLING", vec![]),
    };
    let operation = match j.work {
        JobWork::Backup => "service_instance.backup",
        JobWork::Restore => "service_instance.restore",
    };
    let b = &inner.base_url;
    Json(json!({
        "guid": guid,
        "created_at": j.created_at,
        "updated_at": j.updated_at,
        "operation": operation,
        "state": state,
        "errors": errors,
        "warnings": [],
        "links": {
            "self": {"href": format!("{b}/v3/jobs/{guid}")},
            "service_instances": {"href": format!("{b}/v3/service_instances/{}", j.instance)},
        },
    }))
    .into_response()
}
