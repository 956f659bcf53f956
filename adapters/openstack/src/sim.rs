//! A Keystone v3 simulator, the piece the CBR and VBS simulators mount at
//! `/v3/auth/tokens`: users and application credentials, project-scoped
//! tokens with an expiry you can make short, `X-Subject-Token`, and
//! [`KeystoneSim::check`] for the simulated APIs to validate
//! `X-Auth-Token`. Refusals have Keystone's shape
//! (`{"error":{"code","title","message"}}` with `WWW-Authenticate`).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

#[derive(Debug)]
struct Ks {
    project_id: String,
    /// (user name, domain name) → password.
    users: HashMap<(String, String), String>,
    /// application credential id → secret.
    app_creds: HashMap<String, String>,
    lifetime: Duration,
    /// token → expiry.
    tokens: HashMap<String, DateTime<Utc>>,
    /// Tokens accepted without Keystone (a fixed `type = "token"`).
    static_tokens: Vec<String>,
    /// Every token issued, revoked or not (for tests that look for leaks).
    issued: Vec<String>,
}

/// Shared Keystone state; cheap to clone.
#[derive(Clone, Debug)]
pub struct KeystoneSim {
    ks: Arc<Mutex<Ks>>,
    grants: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeystoneSim {
    /// Tokens are scoped to `project_id` and live a day, as IAM's do.
    pub fn new(project_id: &str) -> KeystoneSim {
        KeystoneSim {
            ks: Arc::new(Mutex::new(Ks {
                project_id: project_id.to_string(),
                users: HashMap::new(),
                app_creds: HashMap::new(),
                lifetime: Duration::from_secs(86_400),
                tokens: HashMap::new(),
                static_tokens: Vec::new(),
                issued: Vec::new(),
            })),
            grants: Arc::new(AtomicU64::new(0)),
            rejected: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn project_id(&self) -> String {
        lock(&self.ks).project_id.clone()
    }

    pub fn add_user(&self, name: &str, domain: &str, password: &str) {
        lock(&self.ks)
            .users
            .insert((name.into(), domain.into()), password.into());
    }

    pub fn add_application_credential(&self, id: &str, secret: &str) {
        lock(&self.ks).app_creds.insert(id.into(), secret.into());
    }

    pub fn add_static_token(&self, token: &str) {
        lock(&self.ks).static_tokens.push(token.into());
    }

    /// The life of tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        lock(&self.ks).lifetime = d;
    }

    /// Invalidates every issued token (as a password change does).
    pub fn revoke_all(&self) {
        lock(&self.ks).tokens.clear();
    }

    /// Tokens issued so far.
    pub fn grants(&self) -> u64 {
        self.grants.load(Ordering::SeqCst)
    }

    /// Every token issued so far, revoked ones included.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.ks).issued.clone()
    }

    /// Requests refused for a missing, unknown or expired token.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::SeqCst)
    }

    /// Whether `X-Auth-Token` holds a valid token; counts refusals.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let ok = headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| {
                let ks = lock(&self.ks);
                ks.static_tokens.iter().any(|s| s == t)
                    || ks.tokens.get(t).is_some_and(|exp| *exp > Utc::now())
            });
        if !ok {
            self.rejected.fetch_add(1, Ordering::SeqCst);
        }
        ok
    }

    /// `POST /v3/auth/tokens`, to merge into a simulator's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v3/auth/tokens", post(issue))
            .with_state(self.clone())
    }
}

/// Keystone's 401.
pub fn unauthorized(message: &str) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"code": 401, "title": "Unauthorized", "message": message}})),
    )
        .into_response();
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Keystone uri=\"/v3\""),
    );
    r
}

async fn issue(State(k): State<KeystoneSim>, body: axum::body::Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": 400, "title": "Bad Request", "message": "Expecting to find auth in request body."}})),
        )
            .into_response();
    };
    let id = &v["auth"]["identity"];
    let methods: Vec<&str> = id["methods"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut ks = lock(&k.ks);
    let project_id = ks.project_id.clone();
    let accepted = if methods == ["password"] {
        let u = &id["password"]["user"];
        let key = (
            u["name"].as_str().unwrap_or_default().to_string(),
            u["domain"]["name"].as_str().unwrap_or_default().to_string(),
        );
        let scoped = v["auth"]["scope"]["project"]["id"].as_str() == Some(project_id.as_str());
        ks.users.get(&key).map(String::as_str) == u["password"].as_str() && scoped
    } else if methods == ["application_credential"] {
        let c = &id["application_credential"];
        c["id"]
            .as_str()
            .and_then(|i| ks.app_creds.get(i))
            .map(String::as_str)
            == c["secret"].as_str()
    } else {
        false
    };
    if !accepted {
        return unauthorized("The request you have made requires authentication.");
    }
    let token = format!("ks-{}", uuid::Uuid::new_v4().simple());
    let expires =
        Utc::now() + chrono::Duration::from_std(ks.lifetime).unwrap_or(chrono::Duration::hours(24));
    ks.tokens.insert(token.clone(), expires);
    ks.issued.push(token.clone());
    drop(ks);
    k.grants.fetch_add(1, Ordering::SeqCst);
    let body = json!({"token": {
        "methods": methods,
        "expires_at": expires.to_rfc3339_opts(SecondsFormat::Micros, true),
        "issued_at": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "project": {"id": project_id, "name": "sim-project", "domain": {"name": "sim"}},
        "roles": [{"name": "member"}],
        "catalog": [],
    }});
    let mut r = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(h) = HeaderValue::from_str(&token) {
        r.headers_mut().insert("x-subject-token", h);
    }
    r
}
