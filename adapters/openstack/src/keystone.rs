//! Keystone v3 (and IAM, which speaks it) tokens: `POST {auth_url}/auth/tokens`
//! with a password identity scoped to the backend's project, or with an
//! application credential (already project-scoped); the token comes back in
//! `X-Subject-Token` and goes out as `X-Auth-Token`. Tokens are cached and
//! refreshed before `expires_at` (at 80 % of their life, see
//! [`TokenCache`]), and dropped after a 401, whether Keystone's own or an
//! API gateway's (`APIGW.0301`, `APIG.0301`): [`Keystone::send`] then makes
//! the call once more with a fresh token. A 401 proves the request was not
//! applied, so this is safe for a submit too.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use custos_adapter_core::{
    BackendError, ErrorDetail, ErrorKind, Secret,
    http::{self, Reply},
    token::{Token, TokenCache},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Who the daemon is to Keystone.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A user: name, the domain the user is in, password.
    Password {
        user_name: String,
        user_domain_name: String,
        password: Secret,
    },
    /// An application credential (it carries its project scope).
    ApplicationCredential { id: String, secret: Secret },
}

/// How an OpenStack-style adapter authenticates.
#[derive(Clone, Debug)]
pub enum KeystoneAuth {
    /// Tokens from Keystone at `auth_url` (e.g. `https://iam.example.com/v3`).
    Keystone {
        auth_url: String,
        credentials: Credentials,
    },
    /// A fixed token, sent as it is.
    Fixed(Secret),
}

/// Lifetime assumed for a token whose answer has no usable `expires_at`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The token source of one backend.
pub struct Keystone {
    http: reqwest::Client,
    auth: KeystoneAuth,
    project_id: String,
    tokens: TokenCache,
}

impl std::fmt::Debug for Keystone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No token: the cache holds one.
        f.debug_struct("Keystone")
            .field("auth", &self.auth)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

impl Keystone {
    /// `project_id` scopes password tokens and is checked against the
    /// token Keystone issues.
    pub fn new(
        auth: KeystoneAuth,
        project_id: impl Into<String>,
        http: reqwest::Client,
    ) -> Result<Keystone, BackendError> {
        if let KeystoneAuth::Keystone { auth_url, .. } = &auth {
            let u = url::Url::parse(auth_url).map_err(|e| {
                BackendError::permanent(format!("auth_url {auth_url:?} is not a URL: {e}"))
            })?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(BackendError::permanent(format!(
                    "auth_url {auth_url:?} must be http or https"
                )));
            }
        }
        Ok(Keystone {
            http,
            auth,
            project_id: project_id.into(),
            tokens: TokenCache::new(),
        })
    }

    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// The current token, fetching one if needed.
    pub async fn token(&self) -> Result<String, BackendError> {
        match &self.auth {
            KeystoneAuth::Fixed(t) => Ok(t.expose().to_string()),
            KeystoneAuth::Keystone {
                auth_url,
                credentials,
            } => self.tokens.get(|| self.issue(auth_url, credentials)).await,
        }
    }

    /// Sends the request `build` makes, with `X-Auth-Token`. After a 401
    /// the token is dropped and the request sent once more with a fresh
    /// one; any answer is returned (the adapter maps its error dialect),
    /// transport failures become errors (`maybe_applied` for a request
    /// that is not `idempotent`).
    pub async fn send(
        &self,
        what: &str,
        idempotent: bool,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Reply, BackendError> {
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let req = build()
                .header("X-Auth-Token", &token)
                .header("Accept", "application/json");
            let reply = http::send(req, what, idempotent).await?;
            // A request that changes something is sent again only when the
            // 401 is provably a token refusal (Keystone's or the gateway's
            // own envelope); any other 401 (a proxy's page) may hide an
            // applied request and goes back to the adapter's rule.
            if reply.status == StatusCode::UNAUTHORIZED
                && !refreshed
                && matches!(self.auth, KeystoneAuth::Keystone { .. })
                && (idempotent || is_token_refusal(&reply.body))
            {
                tracing::debug!(%what, "token refused (401); fetching a fresh one");
                self.tokens.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            return Ok(reply);
        }
    }

    async fn issue(&self, auth_url: &str, c: &Credentials) -> Result<Token, BackendError> {
        let body = match c {
            Credentials::Password {
                user_name,
                user_domain_name,
                password,
            } => json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": user_name, "password": password.expose(),
                    "domain": {"name": user_domain_name}}}},
                "scope": {"project": {"id": self.project_id}}}}),
            Credentials::ApplicationCredential { id, secret } => json!({"auth": {
                "identity": {"methods": ["application_credential"],
                    "application_credential": {"id": id, "secret": secret.expose()}}}}),
        };
        let url = format!("{}/auth/tokens", auth_url.trim_end_matches('/'));
        let req = self.http.post(&url).json(&body);
        let reply = http::send(req, "requesting a Keystone token", true).await?;
        if !reply.status.is_success() {
            return Err(refusal(&reply));
        }
        let token = reply
            .headers
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                BackendError::transient(format!(
                    "Keystone answered {} without an X-Subject-Token header",
                    reply.status.as_u16()
                ))
            })?
            .to_string();
        let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        if let Some(p) = v["token"]["project"]["id"].as_str()
            && p != self.project_id
        {
            return Err(BackendError::permanent(format!(
                "Keystone issued a token for project {p}, but this backend's project_id is {}; check the credentials' scope",
                self.project_id
            )));
        }
        let lifetime = v["token"]["expires_at"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| {
                let now: DateTime<Utc> = SystemTime::now().into();
                (t.with_timezone(&Utc) - now)
                    .to_std()
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(Token {
            value: token,
            lifetime: Some(lifetime),
        })
    }
}

/// Whether a 401 body is a token refusal in Keystone's shape
/// (`{"error":{"code":401,...}}`) or an API gateway's (`APIGW.0301`,
/// `APIG.0301`).
pub fn is_token_refusal(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    v["error"]["code"].as_u64() == Some(401)
        || matches!(
            v["error_code"].as_str(),
            Some("APIGW.0301") | Some("APIG.0301")
        )
}

/// Keystone's refusal of a token request: `{"error":{"code","title","message"}}`.
fn refusal(reply: &Reply) -> BackendError {
    let code = reply.status.as_u16();
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let message = v["error"]["message"].as_str().map(str::to_string);
    let title = v["error"]["title"].as_str().map(str::to_string);
    let kind = match code {
        400 | 401 => ErrorKind::Unauthorized,
        _ => http::kind_for_status(code),
    };
    let mut e = BackendError::new(
        kind,
        format!(
            "Keystone refused the token request ({code}): {}",
            message.clone().unwrap_or_else(|| "no message".into())
        ),
    )
    .with_details(vec![ErrorDetail {
        http_status: Some(code),
        code: None,
        title,
        detail: message,
    }]);
    e.retry_after = http::retry_after(&reply.headers, SystemTime::now());
    e
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_envelopes_are_token_refusals() {
        use super::is_token_refusal;
        assert!(is_token_refusal(
            br#"{"error":{"code":401,"title":"Unauthorized","message":"x"}}"#
        ));
        assert!(is_token_refusal(
            br#"{"error_code":"APIGW.0301","error_msg":"decrypt token fail"}"#
        ));
        assert!(is_token_refusal(
            br#"{"error_code":"APIG.0301","error_msg":"x"}"#
        ));
        assert!(!is_token_refusal(
            b"<html>401 Authorization Required</html>"
        ));
        assert!(!is_token_refusal(
            br#"{"error_code":"BackupService.8600","error_msg":"x"}"#
        ));
    }
}
