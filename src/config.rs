//! The configuration file (`custos.toml`, see `config.md`): one serde
//! struct, unknown keys refused with their name and line, secrets resolved
//! from `*_env` / `*_file` references.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use custos_adapter_core::Secret;
use serde::Deserialize;

/// A configuration problem, said so that an operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
/// Where the store lives when the config does not say (the systemd
/// unit's `StateDirectory`).
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/custos")
}
fn default_job_history() -> Dur {
    Dur(Duration::from_secs(30 * 86_400))
}
fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// A duration written with a unit (`"500ms"`, `"30s"`, `"5m"`, `"6h"`,
/// `"30d"`), parsed once when the file is read: a bad one is an error that
/// names the key and the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC address (health and reflection included).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Prometheus text on `GET /metrics`; accepted, served by a later
    /// release (a warning says so at start).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The store; created 0700 if missing.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The store's engine: `"sled"` (the default, in `data_dir/db`) or
    /// `"redb"` (in `data_dir/custos.redb`). A data dir holding the other
    /// engine's store is refused at start.
    #[serde(default)]
    pub store_engine: crate::store::StoreEngine,
    #[serde(default)]
    pub log_format: LogFormat,
    /// `error`, `warn`, `info` (default), `debug`, `trace`, or a filter
    /// such as `info,custos::engine=debug`; `RUST_LOG` overrides it.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Finished jobs are pruned after this long.
    #[serde(default = "default_job_history")]
    pub job_history: Dur,
    /// Graceful-shutdown deadline.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Allows literal secrets in this file (refused otherwise, so that a
    /// secret is never committed by accident).
    #[serde(default)]
    pub allow_inline_secrets: bool,
    #[serde(default)]
    pub limits: Limits,
    /// TLS on the gRPC listener (and mutual TLS with `client_ca_file`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

/// `[tls]`: PEM files; the key file must be readable by its owner only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate signed by this CA (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// The PEM contents of `[tls]`, read and checked.
pub struct TlsFiles {
    pub cert: String,
    pub key: Secret,
    pub client_ca: Option<String>,
}

impl TlsConfig {
    /// Reads the files (the key's permissions checked like a secret's).
    pub fn read(&self) -> Result<TlsFiles, ConfigError> {
        let read = |key: &str, p: &Path| {
            std::fs::read_to_string(p).map_err(|e| {
                ConfigError::Invalid(format!("tls.{key}: cannot read {}: {e}", p.display()))
            })
        };
        check_secret_file("tls.key", &self.key_file)?;
        Ok(TlsFiles {
            cert: read("cert_file", &self.cert_file)?,
            key: Secret::new(read("key_file", &self.key_file)?),
            client_ca: self
                .client_ca_file
                .as_ref()
                .map(|p| read("client_ca_file", p))
                .transpose()?,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_max_running() -> usize {
    256
}
fn default_per_backend() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Backend calls in flight at once, all backends together.
    #[serde(default = "default_max_running")]
    pub max_running_jobs: usize,
    /// Backend calls in flight at once, per backend.
    #[serde(default = "default_per_backend")]
    pub per_backend_running_jobs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_running_jobs: default_max_running(),
            per_backend_running_jobs: default_per_backend(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Get, List and Watch only.
    Reader,
    /// Everything.
    Operator,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub kind: String,
    pub endpoint: String,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub vault_id: Option<String>,
    pub auth: AuthConfig,
    /// One HTTP call (default 30s).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// First poll delay (default 1s), backing off to `poll_max_interval`.
    #[serde(default)]
    pub poll_interval: Option<Dur>,
    /// Longest poll delay (default 60s).
    #[serde(default)]
    pub poll_max_interval: Option<Dur>,
    /// Give up waiting for one remote operation after this (default 6h).
    #[serde(default)]
    pub operation_timeout: Option<Dur>,
    /// Retries of retryable failures per step (default 10). "Operation in
    /// progress" answers are retried until `operation_timeout` instead.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// The longest `Retry-After` honoured (default 5m): a longer one is
    /// cut to this (plus jitter), so that no backend can park a job.
    #[serde(default)]
    pub max_retry_after: Option<Dur>,
}

/// `[backends.auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    Uaa {
        #[serde(default)]
        token_url: Option<String>,
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        client_secret: Option<Secret>,
        #[serde(default)]
        client_secret_env: Option<String>,
        #[serde(default)]
        client_secret_file: Option<PathBuf>,
        /// `client_credentials` (default) or `password`.
        #[serde(default)]
        grant: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<Secret>,
        #[serde(default)]
        password_env: Option<String>,
        #[serde(default)]
        password_file: Option<PathBuf>,
    },
    Token {
        #[serde(default)]
        token: Option<Secret>,
        #[serde(default)]
        token_env: Option<String>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    Keystone {
        auth_url: String,
        #[serde(default)]
        user_name: Option<String>,
        #[serde(default)]
        user_domain_name: Option<String>,
        #[serde(default)]
        password: Option<Secret>,
        #[serde(default)]
        password_env: Option<String>,
        #[serde(default)]
        password_file: Option<PathBuf>,
        #[serde(default)]
        application_credential_id: Option<String>,
        #[serde(default)]
        application_credential_secret: Option<Secret>,
        #[serde(default)]
        application_credential_secret_env: Option<String>,
        #[serde(default)]
        application_credential_secret_file: Option<PathBuf>,
    },
}

/// Per-backend timing, resolved from the optional keys.
#[derive(Debug, Clone, Copy)]
pub struct BackendTiming {
    pub timeout: Duration,
    pub poll_interval: Duration,
    pub poll_max_interval: Duration,
    pub operation_timeout: Duration,
    pub max_retries: u32,
    pub max_retry_after: Duration,
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"6h"`, `"30d"`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        format!(
            "{value:?} is not a duration: {e} (use a number with a unit: 500ms, 30s, 5m, 6h, 30d)"
        )
    })
}

impl Config {
    /// Reads and checks a config file. Relative paths in it (`data_dir`,
    /// every `*_file`) are taken from the file's folder, not from wherever
    /// the daemon was started.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text, path)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    /// Makes the relative paths of the config relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        if let Some(t) = &mut self.tls {
            fix(&mut t.cert_file);
            fix(&mut t.key_file);
            if let Some(c) = &mut t.client_ca_file {
                fix(c);
            }
        }
        for t in &mut self.tokens {
            if let Some(f) = &mut t.token_file {
                fix(f);
            }
        }
        for b in &mut self.backends {
            let files: Vec<&mut Option<PathBuf>> = match &mut b.auth {
                AuthConfig::Uaa {
                    client_secret_file,
                    password_file,
                    ..
                } => vec![client_secret_file, password_file],
                AuthConfig::Token { token_file, .. } => vec![token_file],
                AuthConfig::Keystone {
                    password_file,
                    application_credential_secret_file,
                    ..
                } => vec![password_file, application_credential_secret_file],
            };
            for f in files.into_iter().flatten() {
                fix(f);
            }
        }
    }

    /// Parses and checks a config text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if let Some(l) = &self.log_level {
            // A bare word would be taken as a module name: only levels,
            // or `module=level` directives.
            const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
            let directives_ok = l
                .split(',')
                .map(str::trim)
                .all(|d| LEVELS.contains(&d.to_ascii_lowercase().as_str()) || d.contains('='));
            if !directives_ok || tracing_subscriber::EnvFilter::try_new(l).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "log_level {l:?}: use error, warn, info, debug or trace, or directives like info,custos::engine=debug"
                )));
            }
        }
        if self.limits.max_running_jobs == 0 || self.limits.per_backend_running_jobs == 0 {
            return Err(ConfigError::Invalid(
                "[limits]: max_running_jobs and per_backend_running_jobs must be at least 1".into(),
            ));
        }
        let mut names = HashSet::new();
        for b in &self.backends {
            if !crate::names::valid_backend_name(&b.name) {
                return Err(ConfigError::Invalid(format!(
                    "backend name {:?}: use 1-63 lowercase letters, digits and '-', starting with a letter",
                    b.name
                )));
            }
            if !names.insert(b.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "backend name {:?} is used twice",
                    b.name
                )));
            }
            let t = b.timing();
            if t.timeout.is_zero() || t.poll_interval.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "backend {:?}: timeout and poll_interval must be more than zero",
                    b.name
                )));
            }
        }
        let mut tnames = HashSet::new();
        for t in &self.tokens {
            if !tnames.insert(t.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "token name {:?} is used twice",
                    t.name
                )));
            }
        }
        Ok(())
    }

    pub fn job_history(&self) -> Duration {
        self.job_history.0
    }

    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout.0
    }

    /// An empty config for `--dev` and tests.
    pub fn empty() -> Config {
        Config {
            listen: default_listen(),
            metrics_listen: None,
            data_dir: default_data_dir(),
            store_engine: Default::default(),
            log_format: LogFormat::Text,
            log_level: None,
            job_history: default_job_history(),
            shutdown_timeout: default_shutdown_timeout(),
            allow_inline_secrets: false,
            limits: Limits::default(),
            tls: None,
            tokens: Vec::new(),
            backends: Vec::new(),
        }
    }
}

impl BackendConfig {
    /// The timing keys with their defaults.
    pub fn timing(&self) -> BackendTiming {
        let d = |v: Option<Dur>, def: u64| v.map(|x| x.0).unwrap_or(Duration::from_secs(def));
        BackendTiming {
            timeout: d(self.timeout, 30),
            poll_interval: d(self.poll_interval, 1),
            poll_max_interval: d(self.poll_max_interval, 60),
            operation_timeout: d(self.operation_timeout, 6 * 3600),
            max_retries: self.max_retries.unwrap_or(10),
            max_retry_after: d(self.max_retry_after, 300),
        }
    }
}

/// Resolves one secret from its literal, `_env` or `_file` form. Exactly one
/// form may be given; literals need `allow_inline_secrets`; files must not
/// be readable by group or others.
pub fn resolve_secret(
    key: &str,
    literal: &Option<Secret>,
    env: &Option<String>,
    file: &Option<PathBuf>,
    allow_inline: bool,
) -> Result<Option<Secret>, ConfigError> {
    let given = [literal.is_some(), env.is_some(), file.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given > 1 {
        return Err(ConfigError::Invalid(format!(
            "{key}: give only one of {key}, {key}_env, {key}_file"
        )));
    }
    if let Some(v) = literal {
        if !allow_inline {
            return Err(ConfigError::Invalid(format!(
                "{key}: a literal secret in the config file is refused; use {key}_env or {key}_file (or set allow_inline_secrets = true)"
            )));
        }
        return Ok(Some(v.clone()));
    }
    if let Some(var) = env {
        return std::env::var(var)
            .map(|v| Some(Secret::new(v)))
            .map_err(|_| {
                ConfigError::Invalid(format!("{key}_env: environment variable {var} is not set"))
            });
    }
    if let Some(path) = file {
        check_secret_file(key, path)?;
        let s = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Invalid(format!("{key}_file: cannot read {}: {e}", path.display()))
        })?;
        return Ok(Some(Secret::new(s.trim_end_matches(['\n', '\r']))));
    }
    Ok(None)
}

#[cfg(unix)]
fn check_secret_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        ConfigError::Invalid(format!("{key}_file: cannot read {}: {e}", path.display()))
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigError::Invalid(format!(
            "{key}_file: {} is readable by others; chmod 600 it",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_secret_file(_key: &str, _path: &Path) -> Result<(), ConfigError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = Config::parse(
            "listen = \"127.0.0.1:1\"\nlisten_adress = \"x\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen_adress"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn unknown_key_in_backend_auth_is_named() {
        let text = r#"
[[backends]]
name = "cf"
kind = "cf_v3"
endpoint = "http://x"
[backends.auth]
type = "uaa"
client_id = "a"
client_secret_envv = "B"
"#;
        let e = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("client_secret_envv"), "{e}");
    }

    #[test]
    fn durations_and_defaults() {
        let c = Config::parse("job_history = \"2d\"\n", Path::new("c")).unwrap();
        assert_eq!(c.job_history(), Duration::from_secs(2 * 86_400));
        assert_eq!(c.limits.max_running_jobs, 256);
        let e = Config::parse(
            "listen = \"127.0.0.1:1\"\njob_history = \"soon\"\n",
            Path::new("c"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("job_history") && e.contains("line 2"), "{e}");
        assert!(e.contains("not a duration"), "{e}");
    }

    #[test]
    fn store_engine_defaults_to_sled_and_a_bad_one_is_named() {
        use crate::store::StoreEngine;
        let c = Config::parse("listen = \"127.0.0.1:1\"\n", Path::new("c")).unwrap();
        assert_eq!(c.store_engine, StoreEngine::Sled);
        let c = Config::parse("store_engine = \"redb\"\n", Path::new("c")).unwrap();
        assert_eq!(c.store_engine, StoreEngine::Redb);
        let c = Config::parse("store_engine = \"sled\"\n", Path::new("c")).unwrap();
        assert_eq!(c.store_engine, StoreEngine::Sled);
        for bad in ["\"rocksdb\"", "\"Redb\"", "1"] {
            let e = Config::parse(
                &format!("listen = \"127.0.0.1:1\"\nstore_engine = {bad}\n"),
                Path::new("c"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("store_engine") && e.contains("line 2"), "{e}");
        }
        let e = Config::parse("store_engine = \"rocksdb\"\n", Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"sled\"") && e.contains("\"redb\""), "{e}");
    }

    #[test]
    fn inline_secrets_refused_unless_allowed() {
        let lit = Some(Secret::new("s3cret"));
        let e = resolve_secret("client_secret", &lit, &None, &None, false).unwrap_err();
        assert!(e.to_string().contains("client_secret_env"));
        assert_eq!(
            resolve_secret("client_secret", &lit, &None, &None, true).unwrap(),
            lit
        );
    }

    #[test]
    fn debug_of_a_config_shows_no_secret() {
        let text = r#"
allow_inline_secrets = true
[[tokens]]
name = "ops"
role = "operator"
token = "client-token-3f9a1c77e2"
[[backends]]
name = "cf"
kind = "cf_v3"
endpoint = "http://x"
[backends.auth]
type = "uaa"
client_id = "a"
client_secret = "uaa-secret-88d1b0"
grant = "password"
username = "u"
password = "user-password-71c2"
"#;
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        let shown = format!("{c:?}");
        for s in [
            "client-token-3f9a1c77e2",
            "uaa-secret-88d1b0",
            "user-password-71c2",
        ] {
            assert!(!shown.contains(s), "{s} in {shown}");
        }
        assert!(shown.contains("***"));
    }

    #[test]
    fn secret_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "tok\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(resolve_secret("token", &None, &None, &Some(p.clone()), false).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            resolve_secret("token", &None, &None, &Some(p), false)
                .unwrap()
                .unwrap()
                .expose(),
            "tok"
        );
    }
}
