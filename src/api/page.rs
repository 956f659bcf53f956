//! Opaque page tokens (AIP-158), bound to the request that made them.
//!
//! A token is base64url (no padding) of: a version byte, the first 8
//! bytes of SHA-256 over the method and the request's other fields (the
//! filter, the target: everything but `page_size` and `page_token`), then
//! the position (a job id, a schedule id, a backend's name, or the
//! backend's own token or marker). A token given with other fields than
//! the ones it was made with is refused, and so is anything that is not a
//! token: `INVALID_ARGUMENT` naming `page_token`. Tokens are not secret
//! and not signed: a client that forges one only moves its own position.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use super::ApiError;

const VERSION: u8 = 1;
const HASH_LEN: usize = 8;
/// Longer tokens are refused before they are decoded.
const MAX_TOKEN: usize = 4096;

/// Reason of a token that is not one (ErrorInfo).
pub const REASON_INVALID: &str = "PAGE_TOKEN_INVALID";
/// Reason of a token made for another request (ErrorInfo).
pub const REASON_MISMATCH: &str = "PAGE_TOKEN_MISMATCH";

/// What a token is bound to: the method and the request's other fields.
pub struct Binding<'a> {
    pub method: &'static str,
    pub fields: &'a [&'a str],
}

impl Binding<'_> {
    fn hash(&self) -> [u8; HASH_LEN] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in std::iter::once(self.method).chain(self.fields.iter().copied()) {
            // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let d = ctx.finish();
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(&d.as_ref()[..HASH_LEN]);
        out
    }

    /// The token of the page after `position`.
    pub fn encode(&self, position: &str) -> String {
        let mut b = Vec::with_capacity(1 + HASH_LEN + position.len());
        b.push(VERSION);
        b.extend_from_slice(&self.hash());
        b.extend_from_slice(position.as_bytes());
        URL_SAFE_NO_PAD.encode(b)
    }

    /// The position in `token`: `None` for the first page (no token).
    pub fn decode(&self, token: &str) -> Result<Option<String>, ApiError> {
        if token.is_empty() {
            return Ok(None);
        }
        let garbage = || {
            ApiError::invalid_with(
                REASON_INVALID,
                "page_token",
                "not a page token of this method: pass the next_page_token of the previous \
                 page, unchanged, or none for the first page",
            )
        };
        if token.len() > MAX_TOKEN {
            return Err(garbage());
        }
        let b = URL_SAFE_NO_PAD.decode(token).map_err(|_| garbage())?;
        if b.len() < 1 + HASH_LEN || b[0] != VERSION {
            return Err(garbage());
        }
        if b[1..1 + HASH_LEN] != self.hash() {
            return Err(ApiError::invalid_with(
                REASON_MISMATCH,
                "page_token",
                format!(
                    "this token was made for a request with other fields (page tokens are \
                     bound to {}): send the same fields as for the first page, or start \
                     again without page_token",
                    self.what()
                ),
            ));
        }
        String::from_utf8(b[1 + HASH_LEN..].to_vec())
            .map(Some)
            .map_err(|_| garbage())
    }

    fn what(&self) -> &'static str {
        match self.method {
            "ListJobs" => "the method and the filter",
            "ListBackups" => "the method and the target",
            _ => "the method",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_field_and_reason(e: ApiError) -> (String, &'static str) {
        match e {
            ApiError::Invalid { reason, violations } => (violations[0].field.clone(), reason),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let a = Binding {
            method: "ListJobs",
            fields: &["state=FAILED"],
        };
        let t = a.encode("0190a3c4-0000-7000-8000-000000000001");
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{t}"
        );
        assert_eq!(
            a.decode(&t).unwrap().as_deref(),
            Some("0190a3c4-0000-7000-8000-000000000001")
        );
        assert_eq!(a.decode("").unwrap(), None);
        // Another filter, another method, fields split differently.
        for other in [
            Binding {
                method: "ListJobs",
                fields: &["state=RUNNING"],
            },
            Binding {
                method: "ListJobs",
                fields: &[""],
            },
            Binding {
                method: "ListSchedules",
                fields: &["state=FAILED"],
            },
            Binding {
                method: "ListJobs",
                fields: &["state=", "FAILED"],
            },
        ] {
            let (field, reason) = err_field_and_reason(other.decode(&t).unwrap_err());
            assert_eq!(field, "page_token");
            assert_eq!(reason, REASON_MISMATCH);
        }
    }

    #[test]
    fn garbage_is_refused() {
        let a = Binding {
            method: "ListBackends",
            fields: &[],
        };
        let long = "A".repeat(MAX_TOKEN + 1);
        let raw_uuid = "0190a3c4-0000-7000-8000-000000000001";
        let bad_version = URL_SAFE_NO_PAD.encode([2u8; 12]);
        let short = URL_SAFE_NO_PAD.encode([1u8; 4]);
        let mut not_utf8 = vec![VERSION];
        not_utf8.extend_from_slice(&a.hash());
        not_utf8.push(0xff);
        let not_utf8 = URL_SAFE_NO_PAD.encode(not_utf8);
        for t in [
            "garbage!",
            "a b",
            raw_uuid,
            &long,
            &bad_version,
            &short,
            &not_utf8,
        ] {
            let (field, reason) = err_field_and_reason(a.decode(t).unwrap_err());
            assert_eq!(
                (field.as_str(), reason),
                ("page_token", REASON_INVALID),
                "{t}"
            );
        }
    }
}
