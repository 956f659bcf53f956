//! Client authentication: bearer tokens from the config, each with a role,
//! checked by an interceptor on every `BackupService` call (health and
//! reflection are mounted without it).

use std::{collections::HashMap, sync::Arc};

use tonic::{Request, Status};

use super::{ApiError, error};
use crate::config::Role;

fn unauthenticated(reason: &'static str, message: &str) -> Status {
    ApiError::Unauthenticated {
        reason,
        message: message.to_string(),
    }
    .into()
}

/// Who is calling, put in the request's extensions by the interceptor.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The token table, kept as SHA-256 digests (the tokens themselves are not
/// kept in memory); `open` admits everyone as an operator (`--insecure`,
/// or `--dev` without tokens).
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<Vec<([u8; 32], Caller)>>,
    open: bool,
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Auth {
    pub fn new(tokens: HashMap<String, Caller>, open: bool) -> Auth {
        Auth {
            tokens: Arc::new(
                tokens
                    .into_iter()
                    .map(|(t, c)| (digest(t.as_bytes()), c))
                    .collect(),
            ),
            open,
        }
    }

    /// The interceptor.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if self.open && self.tokens.is_empty() {
            req.extensions_mut().insert(Caller {
                name: "anonymous".into(),
                role: Role::Operator,
            });
            return Ok(req);
        }
        let Some(value) = req.metadata().get("authorization") else {
            return Err(unauthenticated(
                error::TOKEN_MISSING,
                "missing authorization metadata: send 'authorization: Bearer <token>'",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_string())
            .ok_or_else(|| {
                unauthenticated(
                    error::TOKEN_MALFORMED,
                    "authorization must be 'Bearer <token>'",
                )
            })?;
        // Digests compared in constant time, against every token, without
        // stopping early.
        let presented = digest(presented.as_bytes());
        let mut found: Option<&Caller> = None;
        for (tok, caller) in self.tokens.iter() {
            if bool::from(subtle::ConstantTimeEq::ct_eq(&tok[..], &presented[..])) {
                found = Some(caller);
            }
        }
        let Some(caller) = found.cloned() else {
            return Err(unauthenticated(error::TOKEN_UNKNOWN, "unknown token"));
        };
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The audit record of a mutating call: who (the token's name), what
/// (the RPC), on what (the target or name) and the job it made, if any.
pub fn audit(caller: &Caller, method: &str, object: &str, job: Option<&str>) {
    tracing::info!(
        target: "custos::audit",
        caller = %caller.name,
        method,
        object,
        job = job.unwrap_or(""),
        "audit"
    );
}

/// Refuses the call unless the caller has `role` (operators may do all);
/// returns who is calling.
#[allow(clippy::result_large_err)]
pub fn require<T>(req: &Request<T>, role: Role) -> Result<Caller, Status> {
    let Some(caller) = req.extensions().get::<Caller>() else {
        return Err(unauthenticated(error::TOKEN_MISSING, "no caller"));
    };
    match (role, caller.role) {
        (_, Role::Operator) | (Role::Reader, Role::Reader) => Ok(caller.clone()),
        (Role::Operator, Role::Reader) => Err(ApiError::PermissionDenied {
            reason: error::ROLE_INSUFFICIENT,
            message: format!(
                "token {:?} has the reader role; this call needs an operator token",
                caller.name
            ),
            metadata: vec![
                ("required_role", "operator".into()),
                ("role", "reader".into()),
            ],
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let mut m = HashMap::new();
        m.insert(
            "op-token".to_string(),
            Caller {
                name: "ops".into(),
                role: Role::Operator,
            },
        );
        m.insert(
            "read-token".to_string(),
            Caller {
                name: "ro".into(),
                role: Role::Reader,
            },
        );
        Auth::new(m, false)
    }

    fn req(h: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = h {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        r
    }

    fn reason(s: &Status) -> String {
        use tonic_types::StatusExt;
        let i = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!(i.domain, "custos");
        i.reason
    }

    #[test]
    fn tokens_and_roles() {
        let a = auth();
        for (h, why) in [
            (None, "TOKEN_MISSING"),
            (Some("Bearer nope"), "TOKEN_UNKNOWN"),
            (Some("Basic op-token"), "TOKEN_MALFORMED"),
        ] {
            let e = a.check(req(h)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert_eq!(reason(&e), why);
        }
        let r = a.check(req(Some("bearer read-token"))).unwrap();
        assert!(require(&r, Role::Reader).is_ok());
        let e = require(&r, Role::Operator).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(reason(&e), "ROLE_INSUFFICIENT");
        let r = a.check(req(Some("Bearer op-token"))).unwrap();
        assert_eq!(require(&r, Role::Operator).unwrap().name, "ops");
    }
}
