//! Adapter-private state (`Intent::state`, `RemoteHandle::state`) as JSON:
//! the daemon stores the strings and never reads them.

use serde::{Serialize, de::DeserializeOwned};

use crate::BackendError;

/// Reads state written by [`encode`]; an empty string is the default.
pub fn decode<T: DeserializeOwned + Default>(s: &str) -> Result<T, BackendError> {
    if s.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(s)
        .map_err(|e| BackendError::permanent(format!("stored adapter state is unreadable: {e}")))
}

pub fn encode<T: Serialize>(v: &T) -> Result<String, BackendError> {
    serde_json::to_string(v)
        .map_err(|e| BackendError::permanent(format!("cannot encode adapter state: {e}")))
}
