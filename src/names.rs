//! Resource names (`backends/{backend}/serviceInstances/{guid}`, its
//! backups `…/backups/{backup}`, `jobs/{uuid}`)
//! parsed into parts, with the reason when they are malformed.

use custos_adapter_core::{Resource, ResourceKind};
use uuid::Uuid;

/// Longest accepted resource name; longer input is refused, not truncated.
pub const MAX_NAME_LEN: usize = 512;
/// Longest accepted resource id segment.
pub const MAX_ID_LEN: usize = 128;

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub backend: String,
    pub resource: Resource,
}

impl Target {
    pub fn name(&self) -> String {
        format!(
            "backends/{}/{}/{}",
            self.backend,
            self.resource.kind.collection(),
            self.resource.id
        )
    }
}

/// `[a-z]([a-z0-9-]{0,61}[a-z0-9])?`, the config's backend names.
pub fn valid_backend_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !s.ends_with('-')
}

/// Resource ids: letters, digits and `-._~` (URL-safe without escaping),
/// but not dots alone: `.` and `..` would be path segments that URL
/// resolution removes, sending a call to another resource of the backend.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        && !s.chars().all(|c| c == '.')
}

/// Parses `backends/{backend}/{collection}/{id}`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    if s.is_empty() {
        return Err("required; a name like backends/{backend}/serviceInstances/{guid}".into());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} characters"));
    }
    let parts: Vec<&str> = s.split('/').collect();
    let [b, backend, coll, id] = parts.as_slice() else {
        return Err(format!(
            "{s:?} is not of the form backends/{{backend}}/{{collection}}/{{id}}"
        ));
    };
    if *b != "backends" {
        return Err(format!("{s:?} must start with backends/"));
    }
    if !valid_backend_name(backend) {
        return Err(format!("backend {backend:?} is not a valid backend name"));
    }
    let Some(kind) = ResourceKind::from_collection(coll) else {
        return Err(format!(
            "collection {coll:?} is unknown; use serviceInstances, servers, volumes or resources"
        ));
    };
    if !valid_id(id) {
        return Err(format!(
            "id {id:?} must be 1-{MAX_ID_LEN} letters, digits or -._~"
        ));
    }
    Ok(Target {
        backend: backend.to_string(),
        resource: Resource {
            kind,
            id: normalise_id(id),
        },
    })
}

/// Parses a backup's name, `backends/{backend}/{collection}/{id}/backups/{backup}`,
/// into its target and the backend's backup id.
pub fn parse_backup_name(s: &str) -> Result<(Target, String), String> {
    if s.is_empty() {
        return Err(
            "required; a name like backends/{backend}/serviceInstances/{guid}/backups/{backup}"
                .into(),
        );
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} characters"));
    }
    let Some((target, backup)) = s.rsplit_once("/backups/") else {
        return Err(format!(
            "{:?} is not of the form backends/{{backend}}/{{collection}}/{{id}}/backups/{{backup}}",
            truncate(s)
        ));
    };
    let t = parse_target(target)?;
    if !valid_id(backup) {
        return Err(format!(
            "backup id {:?} must be 1-{MAX_ID_LEN} letters, digits or -._~",
            truncate(backup)
        ));
    }
    Ok((t, backup.to_string()))
}

/// A backup's resource name.
pub fn backup_name(target: &str, backup_id: &str) -> String {
    format!("{target}/backups/{backup_id}")
}

/// GUIDs (CF service instances, OpenStack servers and volumes) are case
/// insensitive: a hyphenated UUID is lower-cased, so that two spellings of
/// one target are one target (one job at a time). Other ids are kept as
/// given.
pub fn normalise_id(id: &str) -> String {
    if id.len() == 36 && Uuid::try_parse(id).is_ok() {
        id.to_ascii_lowercase()
    } else {
        id.to_string()
    }
}

/// A stored target name in today's spelling (GUIDs in lower case); names
/// that do not parse are kept as they are.
pub fn normalise_target(s: &str) -> String {
    parse_target(s)
        .map(|t| t.name())
        .unwrap_or_else(|_| s.to_string())
}

/// Parses `backends/{backend}`.
pub fn parse_backend(s: &str) -> Result<String, String> {
    match s.strip_prefix("backends/") {
        Some(b) if valid_backend_name(b) => Ok(b.to_string()),
        _ => Err(format!("{s:?} is not of the form backends/{{backend}}")),
    }
}

/// Parses `jobs/{uuid}`.
pub fn parse_job_name(s: &str) -> Result<Uuid, String> {
    if s.is_empty() {
        return Err("required; a name like jobs/{uuid}".into());
    }
    let id = s
        .strip_prefix("jobs/")
        .ok_or_else(|| format!("{:?} must be of the form jobs/{{uuid}}", truncate(s)))?;
    Uuid::parse_str(id).map_err(|_| format!("{:?} is not a job uuid", truncate(id)))
}

pub fn job_name(id: Uuid) -> String {
    format!("jobs/{id}")
}

/// Shortens user input before it is echoed in an error.
pub fn truncate(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(80).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names() {
        let (t, b) = parse_backup_name(
            "backends/cf/serviceInstances/ABCDEF01-0000-4000-8000-000000000001/backups/b-1",
        )
        .unwrap();
        assert_eq!(t.backend, "cf");
        assert_eq!(t.resource.id, "abcdef01-0000-4000-8000-000000000001");
        assert_eq!(b, "b-1");
        assert_eq!(
            backup_name(&t.name(), &b),
            "backends/cf/serviceInstances/abcdef01-0000-4000-8000-000000000001/backups/b-1"
        );
        for bad in [
            "",
            "backends/cf/serviceInstances/x",
            "backends/cf/serviceInstances/x/backups/",
            "backends/cf/serviceInstances/x/backups/a/b",
            "backends/cf/things/x/backups/b",
            "backends/cf/serviceInstances/x/backups/b c",
            "backends/cf/serviceInstances/../backups/b",
            "backends/cf/serviceInstances/x/backups/..",
            "backends/cf/serviceInstances/./backups/b",
        ] {
            assert!(parse_backup_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets() {
        let t = parse_target("backends/cf-prod/serviceInstances/abc-1").unwrap();
        assert_eq!(t.backend, "cf-prod");
        assert_eq!(t.resource.kind, ResourceKind::ServiceInstance);
        assert_eq!(t.name(), "backends/cf-prod/serviceInstances/abc-1");
        for bad in [
            "",
            "backends/cf",
            "backend/cf/serviceInstances/x",
            "backends/CF/serviceInstances/x",
            "backends/cf/instances/x",
            "backends/cf/serviceInstances/",
            "backends/cf/serviceInstances/a b",
            "backends/cf/serviceInstances/x/y",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert!(parse_target(&format!("backends/cf/volumes/{}", "x".repeat(600))).is_err());
        // One target, however the GUID is spelled; other ids are kept.
        let upper =
            parse_target("backends/cf/serviceInstances/6B0E2A8C-3F4D-4E5A-9B1C-2D3E4F5A6B7C");
        assert_eq!(
            upper.unwrap().name(),
            "backends/cf/serviceInstances/6b0e2a8c-3f4d-4e5a-9b1c-2d3e4f5a6b7c"
        );
        assert_eq!(
            parse_target("backends/cf/volumes/Disk-A")
                .unwrap()
                .resource
                .id,
            "Disk-A"
        );
    }

    #[test]
    fn job_names() {
        let id = Uuid::now_v7();
        assert_eq!(parse_job_name(&job_name(id)).unwrap(), id);
        assert!(parse_job_name("jobs/nope").is_err());
        assert!(parse_job_name("").is_err());
    }
}
