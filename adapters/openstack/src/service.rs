//! One OpenStack-style service API as an adapter calls it: a base URL
//! (`{endpoint}/v3/{project_id}`, `{endpoint}/v2/{project_id}`), Keystone
//! tokens in `X-Auth-Token`, the service's own error dialect, and the
//! submit rule applied to every failed request that changes something.
//! The CBR v3 and VBS v2 adapters differ only in their dialect.

use std::time::Duration;

use custos_adapter_core::{
    BackendError, FieldViolation,
    http::{self, Reply, retry_idempotent},
};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Keystone, KeystoneAuth};

/// How one service words its failures.
#[derive(Clone, Copy)]
pub struct ErrorDialect {
    /// A non-success answer as a [`BackendError`] (kind, and the service's
    /// own code and message kept in its details). The last argument says
    /// what was being done ("starting the restore").
    pub map: fn(StatusCode, &HeaderMap, &[u8], &str) -> BackendError,
    /// Whether a body is the service's own error envelope: only then does a
    /// 4xx prove that a request was refused before anything changed.
    pub is_envelope: fn(&[u8]) -> bool,
}

/// Idempotent reads: tries and the longest total wait between them.
const MAX_GET_TRIES: u32 = 4;
const MAX_GET_WAIT: Duration = Duration::from_secs(3);

/// The client of one service for one project.
pub struct ServiceClient {
    base: String,
    http: reqwest::Client,
    keystone: Keystone,
    dialect: ErrorDialect,
}

impl ServiceClient {
    /// `endpoint` (http or https) and `project_id` (an id, see
    /// [`valid_id`]) are checked; `api_version` is the path segment after
    /// the endpoint (`v3`, `v2`).
    pub fn new(
        endpoint: &str,
        api_version: &str,
        project_id: &str,
        auth: KeystoneAuth,
        timeout: Duration,
        dialect: ErrorDialect,
    ) -> Result<ServiceClient, BackendError> {
        let endpoint = endpoint.trim_end_matches('/');
        let u = url::Url::parse(endpoint).map_err(|e| {
            BackendError::permanent(format!("endpoint {endpoint:?} is not a URL: {e}"))
        })?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(BackendError::permanent(format!(
                "endpoint {endpoint:?} must be an http or https URL"
            )));
        }
        if !valid_id(project_id) {
            return Err(BackendError::permanent(format!(
                "project_id {project_id:?} is not an id (letters, digits, '-', '_')"
            )));
        }
        let http = http::client(timeout)?;
        let keystone = Keystone::new(auth, project_id.to_string(), http.clone())?;
        Ok(ServiceClient {
            base: format!("{endpoint}/{api_version}/{project_id}"),
            http,
            keystone,
            dialect,
        })
    }

    /// `{endpoint}/{version}/{project_id}/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// One call with `X-Auth-Token` (one refresh after a 401, by
    /// [`Keystone::send`]). A failed GET is the dialect's error; a failed
    /// request of any other method also goes through core's
    /// `classify_submit_failure` (maybe applied unless the service's own
    /// envelope proves a refusal).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<Reply, BackendError> {
        let idempotent = method == Method::GET;
        let url = self.url(path);
        let reply = self
            .keystone
            .send(what, idempotent, || {
                let mut r = self.http.request(method.clone(), &url);
                if !query.is_empty() {
                    r = r.query(query);
                }
                if let Some(b) = body {
                    r = r.json(b);
                }
                r
            })
            .await?;
        if reply.status.is_success() {
            return Ok(reply);
        }
        let e = (self.dialect.map)(reply.status, &reply.headers, &reply.body, what);
        if idempotent {
            return Err(e);
        }
        Err(http::classify_submit_failure(
            e,
            reply.status.as_u16(),
            (self.dialect.is_envelope)(&reply.body),
        ))
    }

    /// `DELETE backups/{id}`, the same on every OpenStack-style backup API
    /// (a failure follows the submit rule, as `call` applies it).
    pub async fn delete_backup(&self, backup_id: &str) -> Result<(), BackendError> {
        self.call(
            Method::DELETE,
            &format!("backups/{backup_id}"),
            &[],
            None,
            "deleting the backup",
        )
        .await
        .map(|_| ())
    }

    /// A GET whose answer is JSON of type `T`, retried with backoff while it
    /// fails in a retryable way (an unreadable answer counts as one).
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        what: &str,
    ) -> Result<T, BackendError> {
        retry_idempotent(MAX_GET_TRIES, MAX_GET_WAIT, || async {
            let reply = self.call(Method::GET, path, query, None, what).await?;
            serde_json::from_slice::<T>(&reply.body).map_err(|e| {
                BackendError::transient(format!(
                    "{what}: the answer is not JSON of the expected shape: {e}"
                ))
            })
        })
        .await
    }
}

/// OpenStack ids are UUIDs (project ids: 32 hex digits); accept what they
/// use, nothing that could change a URL.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Adds a violation of `field` unless `id` is [`valid_id`].
pub fn id_violation(v: &mut Vec<FieldViolation>, field: &str, id: &str) {
    if !valid_id(id) {
        v.push(FieldViolation::new(
            field,
            format!("{id:?} is not an id (letters, digits, '-', '_'; at most 64)"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_change_a_url_are_refused() {
        assert!(valid_id("c95fc3e4afe248a49a28828f286a7b38"));
        assert!(valid_id("2748f2f2-4394-4e6e-af8d-8dd34496c024"));
        for bad in ["", "a/b", "a?b", "..", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        let mut v = Vec::new();
        id_violation(&mut v, "backup_id", "../x");
        assert_eq!(v[0].field, "backup_id");
    }
}
