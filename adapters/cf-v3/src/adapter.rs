//! The CF v3 adapter: UAA auth, backups, restores, job polling, and
//! reconciliation through the service instance's `last_operation`.

use std::{
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use custos_adapter_core::state::{decode as parse_state, encode as to_json};
use custos_adapter_core::{
    Backend, BackendError, BackendKind, BackupInfo, BackupPage, Capabilities, ErrorDetail,
    ErrorKind, FieldViolation, Intent, Operation, Progress, Reconciled, RemoteHandle, Resource,
    ResourceKind, RestoreSpec, Secret,
    http::{self, Reply, retry_idempotent},
    token::{Token, TokenCache},
};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::wire::{self, BackupList, ErrorEnvelope, RestoreBody, ServiceInstance, TokenResponse};

/// How the adapter authenticates. Secrets print as `***`.
#[derive(Clone, Debug)]
pub enum CfAuth {
    /// UAA OAuth2; the token endpoint is discovered from `GET {endpoint}/`
    /// when `token_url` is not given.
    Uaa {
        token_url: Option<String>,
        client_id: String,
        client_secret: Secret,
        grant: Grant,
    },
    /// A fixed bearer token.
    Token(Secret),
}

#[derive(Clone, Debug)]
pub enum Grant {
    ClientCredentials,
    Password { username: String, password: Secret },
}

/// Everything the adapter needs; built by the daemon from its config.
#[derive(Clone)]
pub struct CfConfig {
    pub endpoint: String,
    pub auth: CfAuth,
    /// One HTTP call.
    pub timeout: Duration,
}

/// The adapter. Cheap to share: one per configured backend.
pub struct CfV3 {
    base: Url,
    endpoint: String,
    auth: CfAuth,
    http: reqwest::Client,
    tokens: TokenCache,
    /// The token endpoint, once discovered.
    token_url: OnceLock<String>,
    /// How far the CC's clock may be behind ours when `reconcile` decides
    /// whether a `last_operation` started after the intent.
    clock_skew: Duration,
    /// One HTTP call's limit (a submit's trace starts within it).
    timeout: Duration,
}

/// What `prepare` records before a submit (stored with the job).
#[derive(Debug, Default, Serialize, Deserialize)]
struct IntentState {
    /// The instance's `last_operation` before the submit.
    last_operation: Option<Value>,
    /// Whether the instance showed a `last_operation` field at all.
    has_last_operation: bool,
    /// For backups: the newest backup time before the submit, and the ids
    /// at that time, so the new backup is recognised without clock skew.
    newest_created_at: Option<i64>,
    newest_ids: Vec<String>,
}

/// What a handle holds: a job URL, or (after reconciliation lost the URL)
/// the instance's `last_operation` to watch.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "watch", rename_all = "snake_case")]
enum HandleState {
    Job {
        url: String,
    },
    LastOperation {
        instance: String,
        /// The `created_at` of the operation being followed, once seen: a
        /// different one later is someone else's operation.
        #[serde(default)]
        created_at: Option<String>,
    },
}

/// What a successful POST gave to follow.
enum Accepted {
    /// The job URL, on the configured endpoint.
    Job(Url),
    /// No usable job URL (none, unparsable, or on another origin, where the
    /// token must not go): follow the instance's `last_operation`; the text
    /// says why.
    LastOperation(String),
}

/// How long after its intent was stored a submit may still have been
/// sent (the wait for a backend slot), beyond the request timeout.
const SUBMIT_WINDOW: Duration = Duration::from_secs(300);

/// The default of [`CfV3::with_clock_skew`].
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(5);

const MAX_LIST_RETRIES: u32 = 4;
const MAX_LIST_WAIT: Duration = Duration::from_secs(3);

impl CfV3 {
    pub fn new(cfg: CfConfig) -> Result<Self, BackendError> {
        let endpoint = cfg.endpoint.trim_end_matches('/').to_string();
        let base = Url::parse(&format!("{endpoint}/")).map_err(|e| {
            BackendError::permanent(format!("endpoint {:?} is not a URL: {e}", cfg.endpoint))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(BackendError::permanent(format!(
                "endpoint {:?} must be http or https",
                cfg.endpoint
            )));
        }
        let token_url = OnceLock::new();
        if let CfAuth::Uaa {
            token_url: Some(u), ..
        } = &cfg.auth
        {
            let _ = token_url.set(u.clone());
        }
        Ok(CfV3 {
            base,
            endpoint,
            auth: cfg.auth,
            http: http::client(cfg.timeout)?,
            tokens: TokenCache::new(),
            token_url,
            clock_skew: DEFAULT_CLOCK_SKEW,
            timeout: cfg.timeout,
        })
    }

    /// How far the CC's clock may be behind the daemon's (default 5 s):
    /// `reconcile` takes a `last_operation` for the submit's only if it
    /// started after the intent was recorded less this.
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    fn url(&self, path: &str) -> Result<Url, BackendError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| BackendError::permanent(format!("bad URL path {path:?}: {e}")))
    }

    fn instance_path(guid: &str) -> String {
        format!("v3/service_instances/{guid}")
    }

    // ---- auth ----------------------------------------------------------

    async fn token(&self) -> Result<String, BackendError> {
        match &self.auth {
            CfAuth::Token(t) => Ok(t.expose().to_string()),
            CfAuth::Uaa { .. } => self.tokens.get(|| self.fetch_token()).await,
        }
    }

    async fn discover_token_url(&self) -> Result<String, BackendError> {
        if let Some(u) = self.token_url.get() {
            return Ok(u.clone());
        }
        let url = self.url("")?;
        let req = self.http.get(url).header("Accept", "application/json");
        let Reply {
            status,
            headers,
            body,
        } = http::send(req, "discovering the UAA endpoint", true).await?;
        if !status.is_success() {
            return Err(cf_error(status, &headers, &body, "GET / (UAA discovery)"));
        }
        let root: Value = serde_json::from_slice(&body).map_err(|e| {
            BackendError::transient(format!("the CF root document is not JSON: {e}"))
        })?;
        let href = ["login", "uaa"]
            .iter()
            .find_map(|k| root["links"][k]["href"].as_str())
            .ok_or_else(|| {
                BackendError::permanent(
                    "the CF root document has no links.login or links.uaa; set token_url",
                )
            })?;
        let u = format!("{}/oauth/token", href.trim_end_matches('/'));
        let _ = self.token_url.set(u.clone());
        Ok(u)
    }

    async fn fetch_token(&self) -> Result<Token, BackendError> {
        let CfAuth::Uaa {
            client_id,
            client_secret,
            grant,
            ..
        } = &self.auth
        else {
            return Err(BackendError::permanent("no UAA configured"));
        };
        let token_url = self.discover_token_url().await?;
        let form: Vec<(&str, &str)> = match grant {
            Grant::ClientCredentials => vec![
                ("grant_type", "client_credentials"),
                ("scope", ""),
                ("client_id", client_id),
                ("client_secret", client_secret.expose()),
            ],
            Grant::Password { username, password } => vec![
                ("grant_type", "password"),
                ("username", username),
                ("password", password.expose()),
            ],
        };
        let req = self
            .http
            .post(&token_url)
            .basic_auth(client_id, Some(client_secret.expose()))
            .header("Accept", "application/json")
            .form(&form);
        let Reply {
            status,
            headers,
            body,
        } = http::send(req, "requesting a UAA token", true).await?;
        if !status.is_success() {
            // OAuth2 errors: {"error","error_description"}.
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let code = v["error"].as_str().map(str::to_string);
            let desc = v["error_description"].as_str().map(str::to_string);
            let mut kind = http::kind_for_status(status.as_u16());
            if status == StatusCode::BAD_REQUEST {
                kind = ErrorKind::Unauthorized;
            }
            let mut e = BackendError::new(
                kind,
                format!(
                    "UAA refused the token request ({}): {}",
                    status.as_u16(),
                    desc.clone().unwrap_or_else(|| "no description".into())
                ),
            )
            .with_details(vec![ErrorDetail {
                http_status: Some(status.as_u16()),
                code,
                title: None,
                detail: desc,
            }]);
            e.retry_after = http::retry_after(&headers, SystemTime::now());
            return Err(e);
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            BackendError::transient(format!("the UAA token response is not valid: {e}"))
        })?;
        Ok(Token {
            value: t.access_token,
            lifetime: t.expires_in.map(Duration::from_secs),
        })
    }

    // ---- one authenticated call -----------------------------------------

    /// One call with the bearer token; after a 401 `CF-InvalidAuthToken` or
    /// `CF-NotAuthenticated` the token is dropped and the call made once
    /// more (CF's own 401 proves nothing was applied, so this is safe for
    /// POSTs too). A failed non-GET follows the submit rule
    /// ([`http::classify_submit_failure`]).
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Reply, BackendError> {
        let idempotent = method == Method::GET;
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header("Authorization", format!("bearer {token}"))
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let reply = http::send(req, what, idempotent).await?;
            if reply.status == StatusCode::UNAUTHORIZED
                && !refreshed
                && matches!(self.auth, CfAuth::Uaa { .. })
                && is_invalid_token(&reply.body)
            {
                self.tokens.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            if !reply.status.is_success() {
                let e = cf_error(reply.status, &reply.headers, &reply.body, what);
                if idempotent {
                    return Err(e);
                }
                let refusal = is_cf_envelope(&reply.body);
                return Err(http::classify_submit_failure(
                    e,
                    reply.status.as_u16(),
                    refusal,
                ));
            }
            return Ok(reply);
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, BackendError> {
        let url = self.url(path)?;
        retry_idempotent(MAX_LIST_RETRIES, MAX_LIST_WAIT, || async {
            let reply = self.call(Method::GET, url.clone(), None, what).await?;
            serde_json::from_slice::<T>(&reply.body).map_err(|e| {
                BackendError::transient(format!(
                    "{what}: the answer is not valid JSON of the expected shape: {e}"
                ))
            })
        })
        .await
    }

    async fn instance(&self, guid: &str) -> Result<(ServiceInstance, bool), BackendError> {
        let v: Value = self
            .get_json(&Self::instance_path(guid), "reading the service instance")
            .await?;
        let has_last_operation = v.get("last_operation").is_some();
        let inst: ServiceInstance = serde_json::from_value(v).map_err(|e| {
            BackendError::transient(format!(
                "the service instance is not of the expected shape: {e}"
            ))
        })?;
        Ok((inst, has_last_operation))
    }

    async fn backups(&self, guid: &str, limit: Option<u32>) -> Result<BackupList, BackendError> {
        let mut path = format!("{}/backups", Self::instance_path(guid));
        if let Some(l) = limit {
            path.push_str(&format!("?limit={l}"));
        }
        self.get_json(&path, "listing backups").await
    }

    /// POSTs a submit. A 2xx is an accepted operation, whatever its
    /// `Location`: one that cannot be followed (missing, unparsable, on
    /// another origin) is followed through `last_operation` instead.
    async fn post(
        &self,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Accepted, BackendError> {
        let url = self.url(path)?;
        let reply = self.call(Method::POST, url.clone(), body, what).await?;
        let status = reply.status.as_u16();
        let Some(raw) = reply.headers.get(reqwest::header::LOCATION) else {
            return Ok(Accepted::LastOperation(format!(
                "CF answered {status} without a Location"
            )));
        };
        let Ok(location) = raw.to_str() else {
            return Ok(Accepted::LastOperation(format!(
                "CF answered {status} with a Location that is not text"
            )));
        };
        // Location may be absolute or relative to the request.
        match url.join(location) {
            Err(e) => Ok(Accepted::LastOperation(format!(
                "CF answered {status} with the Location {location:?}, which is not a URL: {e}"
            ))),
            Ok(job) if self.same_origin(&job).is_err() => Ok(Accepted::LastOperation(format!(
                "CF answered {status} with the job URL {job}, which is not on the configured endpoint, so the token is not sent there"
            ))),
            Ok(job) => Ok(Accepted::Job(job)),
        }
    }

    /// A handle that follows the instance's `last_operation`.
    fn last_operation_handle(
        &self,
        instance: &str,
        why: &str,
    ) -> Result<RemoteHandle, BackendError> {
        Ok(RemoteHandle {
            display: format!(
                "{}v3/service_instances/{instance} (last_operation; {why})",
                self.base
            ),
            state: to_json(&HandleState::LastOperation {
                instance: instance.to_string(),
                created_at: None,
            })?,
        })
    }

    /// The bearer token goes only to the configured API host.
    fn same_origin(&self, u: &Url) -> Result<(), BackendError> {
        if u.origin() != self.base.origin() {
            return Err(BackendError::permanent(format!(
                "refusing to follow the job URL {u}: it is not on the configured endpoint {}",
                self.endpoint
            )));
        }
        Ok(())
    }

    fn restore_body(spec: &RestoreSpec) -> RestoreBody {
        RestoreBody {
            backup_id: spec.backup_id.clone(),
            target_timestamp: spec
                .point_in_time
                .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            restore_point: spec.restore_point.clone(),
            source_service_instance_guid: spec.source.as_ref().map(|s| s.id.clone()),
        }
    }

    fn submit_request(
        op: &Operation,
    ) -> Result<(String, Option<Value>, &'static str), BackendError> {
        match op {
            Operation::CreateBackup { resource, .. } => Ok((
                format!("{}/backups", Self::instance_path(&resource.id)),
                None,
                "creating the backup",
            )),
            Operation::Restore { resource, spec } => {
                let body = serde_json::to_value(Self::restore_body(spec)).map_err(|e| {
                    BackendError::permanent(format!("cannot encode the restore: {e}"))
                })?;
                Ok((
                    format!("{}/actions/restore", Self::instance_path(&resource.id)),
                    Some(body),
                    "starting the restore",
                ))
            }
            Operation::DeleteBackup { .. } => Err(BackendError::unsupported(
                "CF v3 service instances have no API to delete a backup",
            )),
        }
    }

    /// After the remote job completed: the new backup's id, for backups.
    async fn finish(&self, op: &Operation, intent: &IntentState) -> Result<Progress, BackendError> {
        match op {
            Operation::CreateBackup { resource, .. } => {
                let list = self.backups(&resource.id, None).await?;
                let newest = list
                    .backups
                    .iter()
                    .filter(|b| match intent.newest_created_at {
                        None => true,
                        Some(t) => {
                            b.created_at > t
                                || (b.created_at == t && !intent.newest_ids.contains(&b.id))
                        }
                    })
                    .max_by_key(|b| b.created_at);
                Ok(match newest {
                    Some(b) => Progress::Succeeded {
                        message: format!("backup {} created", b.id),
                        backup_id: Some(b.id.clone()),
                    },
                    None => Progress::Succeeded {
                        message: "CF reported the backup job COMPLETE, but no new backup appeared in the instance's backup list, so its id is unknown".into(),
                        backup_id: None,
                    },
                })
            }
            Operation::Restore { spec, .. } => Ok(Progress::Succeeded {
                message: "restore completed".into(),
                backup_id: spec.backup_id.clone(),
            }),
            Operation::DeleteBackup { .. } => Err(BackendError::unsupported("no delete in CF v3")),
        }
    }
}

/// Whether a 401 body is CF's expired/invalid token error or its
/// not-authenticated error (the cases in which a refresh helps).
fn is_invalid_token(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .map(|env| {
            env.errors.iter().any(|e| {
                matches!(e.code, 1000 | 10002)
                    || matches!(
                        e.title.as_str(),
                        "CF-InvalidAuthToken" | "CF-NotAuthenticated"
                    )
            })
        })
        .unwrap_or(false)
}

/// Whether a body is CF's own error envelope (`{"errors":[{"code",
/// "title":"CF-…"}]}`), not a proxy's page or some other JSON.
fn is_cf_envelope(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorEnvelope>(body).is_ok_and(|env| {
        !env.errors.is_empty() && env.errors.iter().all(|e| e.title.starts_with("CF-"))
    })
}

/// What kind of work a `last_operation` describes [INF: CC's docs do not
/// say what the OSMAPI backup extension reports; the simulator, like the
/// brokers seen, names the work in `description` (`restore in progress`,
/// `backup succeeded`), or in `type`]. "restore" is checked first: a
/// restore's description often names its backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TraceWork {
    Backup,
    Restore,
}

fn trace_work(lo: &Value) -> Option<TraceWork> {
    let text = format!(
        "{} {}",
        lo["type"].as_str().unwrap_or(""),
        lo["description"].as_str().unwrap_or("")
    )
    .to_ascii_lowercase();
    if text.contains("restore") {
        Some(TraceWork::Restore)
    } else if text.contains("backup") {
        Some(TraceWork::Backup)
    } else {
        None
    }
}

/// When a `last_operation` started (`created_at`; `updated_at` says
/// nothing about when it started, so it is not used).
fn trace_start(lo: &Value) -> Option<DateTime<Utc>> {
    lo["created_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A `last_operation` in words, for messages.
fn describe_trace(lo: &Value) -> String {
    let f = |k: &str| lo[k].as_str().unwrap_or("?").to_string();
    format!(
        "{:?} (type {}, state {}, started {}, updated {})",
        f("description"),
        f("type"),
        f("state"),
        f("created_at"),
        f("updated_at")
    )
}

/// Maps a CF error response to the core error, keeping code/title/detail.
fn cf_error(status: StatusCode, headers: &HeaderMap, body: &[u8], what: &str) -> BackendError {
    // 429 comes as text/plain with a JSON body: parse regardless of type.
    let env: ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
    let code = status.as_u16();
    let mut kind = http::kind_for_status(code);
    if code == 409
        && !env
            .errors
            .iter()
            .any(|e| e.title == "CF-AsyncServiceInstanceOperationInProgress" || e.code == 60016)
    {
        kind = ErrorKind::Permanent;
    }
    let details: Vec<ErrorDetail> = if env.errors.is_empty() {
        let text = String::from_utf8_lossy(body)
            .chars()
            .take(300)
            .collect::<String>();
        vec![ErrorDetail {
            http_status: Some(code),
            code: None,
            title: None,
            detail: (!text.trim().is_empty()).then_some(text),
        }]
    } else {
        env.errors
            .iter()
            .map(|e| ErrorDetail {
                http_status: Some(code),
                code: Some(e.code.to_string()),
                title: Some(e.title.clone()),
                detail: Some(e.detail.clone()),
            })
            .collect()
    };
    let summary = env
        .errors
        .first()
        .map(|e| format!("{} ({})", e.detail, e.title))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let advice = match kind {
        ErrorKind::Unauthorized => " — the credentials were refused",
        ErrorKind::Forbidden => " — the credentials lack permission for this",
        ErrorKind::NotFound => " — it does not exist",
        ErrorKind::Busy => " — another operation is in progress; will retry",
        ErrorKind::Throttled => " — rate limited; will retry",
        ErrorKind::Transient => " — will retry",
        _ => "",
    };
    let mut e = BackendError::new(
        kind,
        format!("{what}: CF answered {code} {summary}{advice}"),
    )
    .with_details(details);
    e.retry_after = http::retry_after(headers, SystemTime::now());
    e
}

fn epoch_to_time(secs: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(secs, 0).single()
}

/// CF guids are UUIDs in practice; accept the characters CAPI allows.
fn valid_guid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[async_trait]
impl Backend for CfV3 {
    fn kind(&self) -> BackendKind {
        BackendKind::CfV3
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_backup: true,
            list_backups: true,
            delete_backup: false,
            restore: true,
            point_in_time_restore: true,
            cross_instance_restore: true,
            restore_mappings: false,
            incremental_backup: false,
            cancel_running: false,
        }
    }

    fn resource_kinds(&self) -> &'static [ResourceKind] {
        &[ResourceKind::ServiceInstance]
    }

    fn check(&self, op: &Operation) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        let r = op.resource();
        if !valid_guid(&r.id) {
            v.push(FieldViolation::new(
                "target",
                "a CF service instance guid has only letters, digits and '-' (at most 64)",
            ));
        }
        if let Operation::Restore { spec, .. } = op {
            if !spec.mappings.is_empty() {
                v.push(FieldViolation::new(
                    "mappings",
                    "cf_v3 backends restore whole service instances; volume mappings are not supported",
                ));
            }
            if spec.power_on.is_some() {
                v.push(FieldViolation::new(
                    "power_on",
                    "not supported by cf_v3 backends",
                ));
            }
            if spec.resource_id.is_some() {
                v.push(FieldViolation::new(
                    "resource_id",
                    "not supported by cf_v3 backends",
                ));
            }
            if spec.backup_id.is_none() && spec.point_in_time.is_none() {
                v.push(FieldViolation::new(
                    "backup_id",
                    "required unless point_in_time is set",
                ));
            }
            if let Some(s) = &spec.source
                && (s.kind != ResourceKind::ServiceInstance || !valid_guid(&s.id))
            {
                v.push(FieldViolation::new(
                    "source",
                    "must name a service instance of the same backend",
                ));
            }
        }
        v
    }

    async fn list_backups(
        &self,
        resource: &Resource,
        page_size: Option<u32>,
        page_token: &str,
    ) -> Result<BackupPage, BackendError> {
        // CF's list takes only `limit` (newest first): pages are made here,
        // by offset. A backup made between two pages shifts the later ones
        // by one (it may show twice); none is ever skipped for good.
        let offset: u32 = if page_token.is_empty() {
            0
        } else {
            page_token.parse().map_err(|_| {
                BackendError::new(
                    ErrorKind::Invalid,
                    format!("page token {page_token:?} is not one this backend gave"),
                )
            })?
        };
        // One more than the page, to know whether there is a next one.
        let limit = page_size.map(|n| offset.saturating_add(n).saturating_add(1));
        let list = self.backups(&resource.id, limit).await?;
        let mut rest = list.backups.into_iter().skip(offset as usize);
        let page: Vec<_> = match page_size {
            Some(n) => rest.by_ref().take(n as usize).collect(),
            None => rest.by_ref().collect(),
        };
        let more = rest.next().is_some();
        let next_page_token = match page_size {
            Some(n) if more => offset.saturating_add(n).to_string(),
            _ => String::new(),
        };
        Ok(BackupPage {
            backups: page
                .into_iter()
                .map(|b| BackupInfo {
                    created_at: epoch_to_time(b.created_at),
                    id: b.id,
                    state: String::new(),
                })
                .collect(),
            next_page_token,
        })
    }

    async fn validate(&self, op: &Operation) -> Result<String, BackendError> {
        let r = op.resource();
        self.instance(&r.id).await?;
        if let Operation::Restore { spec, .. } = op {
            let from = spec.source.as_ref().unwrap_or(r);
            if let Some(src) = &spec.source {
                self.instance(&src.id).await?;
            }
            if let Some(b) = &spec.backup_id {
                let list = self.backups(&from.id, None).await?;
                if !list.backups.iter().any(|x| &x.id == b) {
                    return Err(BackendError::new(
                        ErrorKind::NotFound,
                        format!("backup {b} not found on service instance {}", from.id),
                    ));
                }
            }
        }
        let (path, body, _) = Self::submit_request(op)?;
        Ok(match body {
            Some(b) => format!("POST {}{} {}", self.base, path, b),
            None => format!("POST {}{}", self.base, path),
        })
    }

    async fn prepare(&self, op: &Operation) -> Result<Intent, BackendError> {
        let r = op.resource();
        let (inst, has_last_operation) = self.instance(&r.id).await?;
        let mut st = IntentState {
            last_operation: inst.last_operation,
            has_last_operation,
            ..Default::default()
        };
        if let Operation::CreateBackup { .. } = op {
            let list = self.backups(&r.id, None).await?;
            st.newest_created_at = list.backups.iter().map(|b| b.created_at).max();
            if let Some(t) = st.newest_created_at {
                st.newest_ids = list
                    .backups
                    .iter()
                    .filter(|b| b.created_at == t)
                    .map(|b| b.id.clone())
                    .collect();
            }
        }
        Ok(Intent {
            state: to_json(&st)?,
            recorded_at: None,
        })
    }

    async fn submit(&self, op: &Operation, _intent: &Intent) -> Result<RemoteHandle, BackendError> {
        let (path, body, what) = Self::submit_request(op)?;
        match self.post(&path, body.as_ref(), what).await? {
            Accepted::Job(job) => Ok(RemoteHandle {
                display: job.to_string(),
                state: to_json(&HandleState::Job {
                    url: job.to_string(),
                })?,
            }),
            Accepted::LastOperation(why) => {
                tracing::warn!(
                    instance = %op.resource().id,
                    "{what}: {why}; following the instance's last_operation"
                );
                self.last_operation_handle(&op.resource().id, &why)
            }
        }
    }

    async fn poll(
        &self,
        op: &Operation,
        intent: &Intent,
        handle: &RemoteHandle,
    ) -> Result<Progress, BackendError> {
        let intent: IntentState = parse_state(&intent.state)?;
        let hs: HandleState = serde_json::from_str(&handle.state)
            .map_err(|e| BackendError::permanent(format!("stored handle is unreadable: {e}")))?;
        match hs {
            HandleState::Job { url } => {
                let url = Url::parse(&url)
                    .map_err(|e| BackendError::permanent(format!("stored job URL is bad: {e}")))?;
                self.same_origin(&url)?;
                let reply = self
                    .call(Method::GET, url, None, "reading the CF job")
                    .await?;
                let job: wire::Job = serde_json::from_slice(&reply.body).map_err(|e| {
                    BackendError::transient(format!("the CF job is not of the expected shape: {e}"))
                })?;
                match job.state.as_str() {
                    "COMPLETE" => self.finish(op, &intent).await,
                    "FAILED" => {
                        let first = job.errors.first().cloned().unwrap_or_default();
                        let details = job
                            .errors
                            .iter()
                            .map(|e| ErrorDetail {
                                http_status: None,
                                code: Some(e.code.to_string()),
                                title: Some(e.title.clone()),
                                detail: Some(e.detail.clone()),
                            })
                            .collect();
                        Ok(Progress::Failed(
                            BackendError::permanent(format!(
                                "the CF job {} failed: {} ({})",
                                job.guid, first.detail, first.title
                            ))
                            .with_details(details),
                        ))
                    }
                    s => Ok(Progress::Running {
                        message: format!("CF job {} is {s}", job.guid),
                        handle: None,
                        percent: None,
                    }),
                }
            }
            HandleState::LastOperation {
                instance,
                created_at,
            } => {
                let (inst, has_last_operation) = self.instance(&instance).await?;
                if !has_last_operation {
                    return Ok(Progress::Failed(BackendError::new(
                        ErrorKind::OutcomeUnknown,
                        format!(
                            "outcome unknown: CF accepted the operation, but gave no job URL that can be followed, and service instance {instance} reports no last_operation: check the instance to see how the operation ended"
                        ),
                    )));
                }
                if instance == op.resource().id && inst.last_operation == intent.last_operation {
                    // Accepted, but the CC does not show it yet.
                    return Ok(Progress::Running {
                        message: format!(
                            "service instance {instance}: waiting for the operation to show in last_operation"
                        ),
                        handle: None,
                        percent: None,
                    });
                }
                let lo = inst.last_operation.unwrap_or(Value::Null);
                let seen = lo["created_at"].as_str().map(str::to_string);
                // Pin the operation followed; another one later is not ours.
                let mut pinned = None;
                match (&created_at, &seen) {
                    (Some(ours), Some(now)) if ours != now => {
                        return Ok(Progress::Failed(BackendError::new(
                            ErrorKind::OutcomeUnknown,
                            format!(
                                "outcome unknown: service instance {instance} now shows another operation ({}) in place of the one followed (created {ours}), so how that one ended cannot be known; check the instance",
                                describe_trace(&lo)
                            ),
                        )));
                    }
                    (None, Some(_)) => pinned = seen.clone(),
                    _ => {}
                }
                match lo["state"].as_str().unwrap_or("") {
                    "succeeded" => self.finish(op, &intent).await,
                    "failed" => Ok(Progress::Failed(
                        BackendError::permanent(format!(
                            "the operation on service instance {instance} failed: {}",
                            lo["description"].as_str().unwrap_or("no description")
                        ))
                        .with_details(vec![ErrorDetail {
                            detail: lo["description"].as_str().map(str::to_string),
                            ..Default::default()
                        }]),
                    )),
                    s => Ok(Progress::Running {
                        message: format!(
                            "service instance {instance}: last operation is {}",
                            if s.is_empty() { "unknown" } else { s }
                        ),
                        handle: match pinned {
                            Some(c) => Some(RemoteHandle {
                                display: handle.display.clone(),
                                state: to_json(&HandleState::LastOperation {
                                    instance: instance.clone(),
                                    created_at: Some(c),
                                })?,
                            }),
                            None => None,
                        },
                        percent: None,
                    }),
                }
            }
        }
    }

    async fn reconcile(&self, op: &Operation, intent: &Intent) -> Result<Reconciled, BackendError> {
        let st: IntentState = parse_state(&intent.state)?;
        let r = op.resource();
        let (inst, has_last_operation) = self.instance(&r.id).await?;
        if !st.has_last_operation && !has_last_operation {
            // No trace either way. A second backup is harmless; a second
            // restore is not.
            return Ok(match op {
                Operation::CreateBackup { .. } => Reconciled::NotSubmitted,
                _ => Reconciled::Unknown(format!(
                    "the restore's submit may or may not have reached CF (the daemon stopped, or the answer was lost), and service instance {} reports no last_operation, so whether the restore started cannot be known; check the instance before restoring again",
                    r.id
                )),
            });
        }
        if inst.last_operation == st.last_operation {
            // No trace (yet): the daemon re-asks over its grace period.
            return Ok(Reconciled::NotSubmitted);
        }
        let lo = inst.last_operation.unwrap_or(Value::Null);
        let want = match op {
            Operation::Restore { .. } => TraceWork::Restore,
            _ => TraceWork::Backup,
        };
        let kind_matches = trace_work(&lo) == Some(want);
        let after_intent = match intent.recorded_at {
            // An intent stored before `recorded_at` existed: the change
            // since `prepare` is all there is to go by.
            None => true,
            // Our submit was sent right after the intent was stored (after
            // a wait for a backend slot at most): a trace that started
            // before, or long after (a restore someone ran by hand while
            // the daemon was down), is not ours.
            Some(at) => {
                let skew = chrono::Duration::from_std(self.clock_skew.max(Duration::from_secs(1)))
                    .unwrap_or_default();
                let late =
                    chrono::Duration::from_std(self.timeout + SUBMIT_WINDOW).unwrap_or_default();
                let from = at.checked_sub_signed(skew).unwrap_or(at);
                let until = at.checked_add_signed(late + skew).unwrap_or(at);
                trace_start(&lo).is_some_and(|t| t >= from && t <= until)
            }
        };
        if kind_matches && after_intent {
            return Ok(Reconciled::Submitted(
                self.last_operation_handle(&r.id, "the job URL was lost")?,
            ));
        }
        // The instance changed, but not with this operation: someone else's.
        Ok(match op {
            Operation::Restore { .. } => Reconciled::Unknown(format!(
                "the restore's submit may or may not have reached CF, and service instance {id} now shows another operation in its last_operation: {trace}{when}. That operation may have replaced the restore's trace, so whether the restore started cannot be known; check the instance (cf curl /v3/service_instances/{id}, and its events) before restoring again",
                id = r.id,
                trace = describe_trace(&lo),
                when = intent
                    .recorded_at
                    .map(|t| format!(
                        ", while this restore was submitted at {}",
                        t.to_rfc3339_opts(SecondsFormat::Millis, true)
                    ))
                    .unwrap_or_default(),
            )),
            // A second backup is harmless.
            _ => Reconciled::NotSubmitted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cf_error_keeps_envelope_and_classifies() {
        let body = br#"{"errors":[{"code":60016,"title":"CF-AsyncServiceInstanceOperationInProgress","detail":"An operation for service instance x is in progress."}]}"#;
        let e = cf_error(
            StatusCode::CONFLICT,
            &HeaderMap::new(),
            body,
            "creating the backup",
        );
        assert_eq!(e.kind, ErrorKind::Busy);
        assert_eq!(
            e.details[0].title.as_deref(),
            Some("CF-AsyncServiceInstanceOperationInProgress")
        );
        let other = br#"{"errors":[{"code":10000,"title":"CF-Other","detail":"x"}]}"#;
        assert_eq!(
            cf_error(StatusCode::CONFLICT, &HeaderMap::new(), other, "x").kind,
            ErrorKind::Permanent
        );
        let e = cf_error(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"<html>", "x");
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(e.details[0].detail.as_deref(), Some("<html>"));
    }

    #[test]
    fn refresh_on_both_cf_auth_errors_and_envelope_recognition() {
        let e1000 = br#"{"errors":[{"code":1000,"title":"CF-InvalidAuthToken","detail":"Invalid Auth Token"}]}"#;
        let e10002 = br#"{"errors":[{"code":10002,"title":"CF-NotAuthenticated","detail":"Authentication error"}]}"#;
        assert!(is_invalid_token(e1000));
        assert!(is_invalid_token(e10002));
        assert!(!is_invalid_token(b"<html>401</html>"));
        assert!(is_cf_envelope(e10002));
        assert!(!is_cf_envelope(b"<html>504 Gateway Time-out</html>"));
        assert!(!is_cf_envelope(b"{}"));
        assert!(!is_cf_envelope(br#"{"errors":[]}"#));
        assert!(!is_cf_envelope(br#"{"message":"upstream timed out"}"#));
    }

    #[test]
    fn trace_work_and_start() {
        let lo = serde_json::json!({"type":"update","state":"in progress",
            "description":"restore from backup b-1 in progress",
            "created_at":"2026-01-02T03:04:05.678Z","updated_at":"2026-01-02T03:04:06Z"});
        assert_eq!(trace_work(&lo), Some(TraceWork::Restore));
        assert_eq!(
            trace_start(&lo),
            DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
                .ok()
                .map(|t| t.with_timezone(&Utc))
        );
        let lo = serde_json::json!({"type":"update","description":"backup succeeded"});
        assert_eq!(trace_work(&lo), Some(TraceWork::Backup));
        assert_eq!(trace_start(&lo), None);
        let lo = serde_json::json!({"type":"update","description":"Updating plan"});
        assert_eq!(trace_work(&lo), None);
        assert_eq!(trace_work(&Value::Null), None);
    }

    #[test]
    fn restore_body_has_only_given_fields() {
        let spec = RestoreSpec {
            point_in_time: Utc.timestamp_opt(1_700_000_000, 0).single(),
            restore_point: Some("pitr".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(CfV3::restore_body(&spec)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"target_timestamp":"2023-11-14T22:13:20Z","restore_point":"pitr"})
        );
    }
}
