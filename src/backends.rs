//! Builds adapters from `[[backends]]`. Adding a backend kind is one arm
//! here and one crate under `adapters/` (OpenStack-style kinds share
//! `keystone_auth`).

use std::sync::Arc;

use custos_adapter_core::{Backend, BackendKind, Secret};
use custos_cbr_v3::{CbrConfig, CbrV3};
use custos_cf_v3::{CfAuth, CfConfig, CfV3, Grant};
use custos_openstack::{Credentials, KeystoneAuth};
use custos_vbs_v2::{VbsConfig, VbsV2};

use crate::config::{AuthConfig, BackendConfig, ConfigError, resolve_secret};

/// The adapter for one configured backend.
pub fn build(b: &BackendConfig, allow_inline: bool) -> Result<Arc<dyn Backend>, ConfigError> {
    let ctx = |m: String| ConfigError::Invalid(format!("backend {:?}: {m}", b.name));
    let kind: BackendKind = b.kind.parse().map_err(ctx)?;
    let timing = b.timing();
    match kind {
        BackendKind::CfV3 => {
            let auth = match &b.auth {
                AuthConfig::Uaa {
                    token_url,
                    client_id,
                    client_secret,
                    client_secret_env,
                    client_secret_file,
                    grant,
                    username,
                    password,
                    password_env,
                    password_file,
                } => {
                    let secret = resolve_secret(
                        "client_secret",
                        client_secret,
                        client_secret_env,
                        client_secret_file,
                        allow_inline,
                    )
                    .map_err(|e| ctx(e.to_string()))?;
                    let grant = match grant.as_deref().unwrap_or("client_credentials") {
                        "client_credentials" => Grant::ClientCredentials,
                        "password" => {
                            let password = resolve_secret(
                                "password",
                                password,
                                password_env,
                                password_file,
                                allow_inline,
                            )
                            .map_err(|e| ctx(e.to_string()))?
                            .ok_or_else(|| {
                                ctx("the password grant needs password_env or password_file".into())
                            })?;
                            Grant::Password {
                                username: username.clone().ok_or_else(|| {
                                    ctx("the password grant needs username".into())
                                })?,
                                password,
                            }
                        }
                        other => {
                            return Err(ctx(format!(
                                "auth.grant {other:?}: use client_credentials or password"
                            )));
                        }
                    };
                    let (client_id, secret) = match (&grant, client_id, secret) {
                        (_, Some(id), Some(s)) => (id.clone(), s),
                        // The cf CLI's public client for the password grant.
                        (Grant::Password { .. }, None, None) => ("cf".into(), Secret::default()),
                        (_, None, _) => return Err(ctx("auth.client_id is required".into())),
                        (_, Some(_), None) => {
                            return Err(ctx(
                                "auth.client_secret_env or client_secret_file is required".into(),
                            ));
                        }
                    };
                    CfAuth::Uaa {
                        token_url: token_url.clone(),
                        client_id,
                        client_secret: secret,
                        grant,
                    }
                }
                AuthConfig::Token {
                    token,
                    token_env,
                    token_file,
                } => CfAuth::Token(
                    resolve_secret("token", token, token_env, token_file, allow_inline)
                        .map_err(|e| ctx(e.to_string()))?
                        .ok_or_else(|| ctx("auth.token_env or token_file is required".into()))?,
                ),
                AuthConfig::Keystone { .. } => {
                    return Err(ctx(
                        "cf_v3 backends use auth type \"uaa\" or \"token\"".into()
                    ));
                }
            };
            let cf = CfV3::new(CfConfig {
                endpoint: b.endpoint.clone(),
                auth,
                timeout: timing.timeout,
            })
            .map_err(|e| ctx(e.to_string()))?;
            Ok(Arc::new(cf))
        }
        BackendKind::CbrV3 => {
            let project_id = b
                .project_id
                .clone()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| ctx("project_id is required for cbr_v3 backends".into()))?;
            let auth = keystone_auth(&b.auth, allow_inline).map_err(ctx)?;
            let cbr = CbrV3::new(CbrConfig {
                endpoint: b.endpoint.clone(),
                project_id,
                vault_id: b.vault_id.clone().filter(|v| !v.is_empty()),
                auth,
                timeout: timing.timeout,
            })
            .map_err(|e| ctx(e.to_string()))?;
            Ok(Arc::new(cbr))
        }
        BackendKind::VbsV2 => {
            let project_id = b
                .project_id
                .clone()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| ctx("project_id is required for vbs_v2 backends".into()))?;
            if b.vault_id.is_some() {
                return Err(ctx(
                    "vault_id is a cbr_v3 key; vbs_v2 backends keep backups beside the volume"
                        .into(),
                ));
            }
            let auth = keystone_auth(&b.auth, allow_inline).map_err(ctx)?;
            let vbs = VbsV2::new(VbsConfig {
                endpoint: b.endpoint.clone(),
                project_id,
                auth,
                timeout: timing.timeout,
            })
            .map_err(|e| ctx(e.to_string()))?;
            Ok(Arc::new(vbs))
        }
    }
}

/// `[backends.auth]` of an OpenStack-style backend: `type = "keystone"`
/// with a password user or an application credential, or `type = "token"`.
fn keystone_auth(a: &AuthConfig, allow_inline: bool) -> Result<KeystoneAuth, String> {
    match a {
        AuthConfig::Keystone {
            auth_url,
            user_name,
            user_domain_name,
            password,
            password_env,
            password_file,
            application_credential_id,
            application_credential_secret,
            application_credential_secret_env,
            application_credential_secret_file,
        } => {
            let credentials = match (application_credential_id, user_name) {
                (Some(_), Some(_)) => {
                    return Err(
                        "auth: give either application_credential_id or user_name, not both".into(),
                    );
                }
                (Some(id), None) => Credentials::ApplicationCredential {
                    id: id.clone(),
                    secret: resolve_secret(
                        "application_credential_secret",
                        application_credential_secret,
                        application_credential_secret_env,
                        application_credential_secret_file,
                        allow_inline,
                    )
                    .map_err(|e| e.to_string())?
                    .ok_or("auth.application_credential_secret_env or _file is required")?,
                },
                (None, Some(user)) => Credentials::Password {
                    user_name: user.clone(),
                    user_domain_name: user_domain_name
                        .clone()
                        .ok_or("auth.user_domain_name is required with user_name")?,
                    password: resolve_secret(
                        "password",
                        password,
                        password_env,
                        password_file,
                        allow_inline,
                    )
                    .map_err(|e| e.to_string())?
                    .ok_or("auth.password_env or password_file is required")?,
                },
                (None, None) => {
                    return Err(
                        "auth: keystone needs user_name (+ user_domain_name, password_env) or application_credential_id (+ application_credential_secret_env)".into(),
                    );
                }
            };
            Ok(KeystoneAuth::Keystone {
                auth_url: auth_url.clone(),
                credentials,
            })
        }
        AuthConfig::Token {
            token,
            token_env,
            token_file,
        } => Ok(KeystoneAuth::Fixed(
            resolve_secret("token", token, token_env, token_file, allow_inline)
                .map_err(|e| e.to_string())?
                .ok_or("auth.token_env or token_file is required")?,
        )),
        AuthConfig::Uaa { .. } => {
            Err("this backend uses auth type \"keystone\" or \"token\", not \"uaa\"".into())
        }
    }
}
