//! `serve --dev`: a throwaway data dir, the simulators in process with
//! seeded resources, backends configured for them, and a printed token.

use std::{net::SocketAddr, time::Duration};

use custos_adapter_core::Secret;
use custos_cbr_v3::sim as cbr;
use custos_cf_v3::sim::{SimConfig, Simulator};
use custos_vbs_v2::sim as vbs;

use crate::config::{AuthConfig, BackendConfig, Config, Dur, Role, TokenConfig};

/// What dev mode started; keep it alive while the daemon runs.
pub struct DevEnv {
    pub config: Config,
    pub token: String,
    /// Removed when dropped.
    pub data_dir: tempfile::TempDir,
    pub cf: Simulator,
    pub cf_instances: Vec<String>,
    pub cbr: cbr::Simulator,
    pub cbr_ids: cbr::DemoIds,
    pub vbs: vbs::Simulator,
    pub vbs_ids: vbs::DemoIds,
}

/// A backend of an OpenStack-style simulator, with its Keystone password
/// user.
#[allow(clippy::too_many_arguments)]
fn keystone_backend(
    name: &str,
    kind: &str,
    endpoint: String,
    auth_url: String,
    project_id: &str,
    vault_id: Option<String>,
    user: (&str, &str, &str),
) -> BackendConfig {
    let (user_name, user_domain, password) = user;
    BackendConfig {
        name: name.into(),
        kind: kind.into(),
        endpoint,
        project_id: Some(project_id.into()),
        vault_id,
        auth: AuthConfig::Keystone {
            auth_url,
            user_name: Some(user_name.into()),
            user_domain_name: Some(user_domain.into()),
            password: Some(Secret::new(password)),
            password_env: None,
            password_file: None,
            application_credential_id: None,
            application_credential_secret: None,
            application_credential_secret_env: None,
            application_credential_secret_file: None,
        },
        timeout: Some(Dur(Duration::from_secs(10))),
        poll_interval: Some(Dur(Duration::from_millis(500))),
        poll_max_interval: Some(Dur(Duration::from_secs(5))),
        operation_timeout: None,
        max_retries: None,
        max_retry_after: None,
    }
}

pub async fn start(listen: &str) -> anyhow::Result<DevEnv> {
    let data_dir = tempfile::Builder::new().prefix("custos-dev-").tempdir()?;
    let sim_cfg = SimConfig {
        job_duration: Duration::from_secs(2),
        ..SimConfig::default()
    };
    let (client_id, client_secret) = (sim_cfg.client_id.clone(), sim_cfg.client_secret.clone());
    let cf = Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), sim_cfg).await?;
    let cf_instances = cf.seed_demo();
    let cbr_cfg = cbr::SimConfig {
        restore_duration: Duration::from_secs(3),
        backup_duration: Duration::from_secs(2),
        ..cbr::SimConfig::default()
    };
    let cbr = cbr::Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), cbr_cfg.clone()).await?;
    let cbr_ids = cbr.seed_demo();
    let vbs_cfg = vbs::SimConfig {
        restore_duration: Duration::from_secs(3),
        backup_duration: Duration::from_secs(2),
        ..vbs::SimConfig::default()
    };
    let vbs = vbs::Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), vbs_cfg.clone()).await?;
    let vbs_ids = vbs.seed_demo();
    let token = format!("dev-{}", uuid::Uuid::new_v4().simple());
    let mut config = Config::empty();
    config.listen = listen.to_string();
    config.data_dir = data_dir.path().join("data");
    // Dev secrets are generated here, never read from a file.
    config.allow_inline_secrets = true;
    config.tokens.push(TokenConfig {
        name: "dev".into(),
        role: Role::Operator,
        token: Some(Secret::new(token.clone())),
        token_env: None,
        token_file: None,
    });
    config.backends.push(BackendConfig {
        name: "cf-dev".into(),
        kind: "cf_v3".into(),
        endpoint: cf.url(),
        project_id: None,
        vault_id: None,
        auth: AuthConfig::Uaa {
            token_url: None,
            client_id: Some(client_id),
            client_secret: Some(Secret::new(client_secret)),
            client_secret_env: None,
            client_secret_file: None,
            grant: None,
            username: None,
            password: None,
            password_env: None,
            password_file: None,
        },
        timeout: Some(Dur(Duration::from_secs(10))),
        poll_interval: Some(Dur(Duration::from_millis(500))),
        poll_max_interval: Some(Dur(Duration::from_secs(5))),
        operation_timeout: None,
        max_retries: None,
        max_retry_after: None,
    });
    config.backends.push(keystone_backend(
        "cbr-dev",
        "cbr_v3",
        cbr.url(),
        cbr.auth_url(),
        &cbr_ids.project_id,
        Some(cbr_ids.vault_id.clone()),
        (&cbr_cfg.user_name, &cbr_cfg.user_domain, &cbr_cfg.password),
    ));
    config.backends.push(keystone_backend(
        "vbs-dev",
        "vbs_v2",
        vbs.url(),
        vbs.auth_url(),
        &vbs_ids.project_id,
        None,
        (&vbs_cfg.user_name, &vbs_cfg.user_domain, &vbs_cfg.password),
    ));
    Ok(DevEnv {
        config,
        token,
        data_dir,
        cf,
        cf_instances,
        cbr,
        cbr_ids,
        vbs,
        vbs_ids,
    })
}

impl DevEnv {
    /// The banner with the token and commands to try.
    pub fn banner(&self, addr: SocketAddr) -> String {
        let i = &self.cf_instances;
        let t = |n: usize| format!("backends/cf-dev/serviceInstances/{}", i[n % i.len()]);
        let c = &self.cbr_ids;
        let server = format!("backends/cbr-dev/servers/{}", c.server_id);
        let disk = format!("backends/cbr-dev/volumes/{}", c.data_volume_id);
        let v = &self.vbs_ids;
        let vol = format!("backends/vbs-dev/volumes/{}", v.volume_id);
        let in_use = format!("backends/vbs-dev/volumes/{}", v.in_use_volume_id);
        format!(
            "\ncustos dev mode — nothing here is kept\n\
             \x20 data dir      {}\n\
             \x20 CF simulator  {} (service instances: {})\n\n\
             Try, in another shell:\n\
             \x20 export CUSTOS_ENDPOINT=http://{addr}\n\
             \x20 export CUSTOS_TOKEN={}\n\
             \x20 custos backends\n\
             \x20 custos backup list {}\n\
             \x20 custos backup create {} --wait\n\
             \x20 custos restore {} --backup bkp-orders-db-1 --wait\n\
             \x20 custos restore {} --at 2026-01-01T00:00:00Z --restore-point pitr --wait\n\
             \x20 custos restore {} --backup bkp-orders-db-0 --from {} --wait\n\
             \n\
             \x20 # v3 project backups (CBR simulator {}): a server with two disks\n\
             \x20 custos backup list {}\n\
             \x20 custos restore {} --backup {} --map {}={} --map {}={} --wait\n\
             \x20 custos restore {} --backup {} --wait\n\
             \x20 custos backup create {} --wait\n\
             \n\
             \x20 # v2 VBS disk restores (VBS simulator {}): volumes and their backups\n\
             \x20 custos backup list {}\n\
             \x20 custos restore {} --backup {} --validate-only\n\
             \x20 custos restore {} --backup {} --wait\n\
             \x20 custos backup create {} --wait\n\
             \x20 custos backup create {} --incremental --wait\n\
             \x20 custos restore {} --backup {} --validate-only   # in use: refused\n\
             \x20 custos job list\n",
            self.data_dir.path().display(),
            self.cf.url(),
            i.join(", "),
            self.token,
            t(0),
            t(0),
            t(0),
            t(1),
            t(2),
            t(0),
            self.cbr.url(),
            server,
            server,
            c.server_backup_id,
            c.system_child_id,
            c.system_volume_id,
            c.data_child_id,
            c.data_volume_id,
            disk,
            c.disk_backup_id,
            server,
            self.vbs.url(),
            vol,
            vol,
            v.backup_id,
            vol,
            v.backup_id,
            vol,
            vol,
            in_use,
            v.backup_id,
        )
    }
}

/// `custos simulate --kind KIND`: one simulator, seeded, until a signal.
pub async fn simulate(
    kind: &str,
    listen: std::net::SocketAddr,
    job_seconds: f64,
) -> anyhow::Result<i32> {
    match kind {
        "cf_v3" => {
            let cfg = custos_cf_v3::sim::SimConfig {
                job_duration: std::time::Duration::from_secs_f64(job_seconds.max(0.0)),
                ..Default::default()
            };
            let sim = custos_cf_v3::sim::Simulator::start(listen, cfg.clone()).await?;
            let ids = sim.seed_demo();
            println!("custos: cf_v3 simulator listening on {}", sim.url());
            println!("  UAA client: {} / {}", cfg.client_id, cfg.client_secret);
            println!("  service instances: {}", ids.join(", "));
            crate::server::shutdown_on_signal().cancelled().await;
            Ok(0)
        }
        "cbr_v3" => {
            let d = std::time::Duration::from_secs_f64(job_seconds.max(0.0));
            let cfg = custos_cbr_v3::sim::SimConfig {
                restore_duration: d,
                backup_duration: d,
                ..Default::default()
            };
            let sim = custos_cbr_v3::sim::Simulator::start(listen, cfg.clone()).await?;
            let ids = sim.seed_demo();
            println!("custos: cbr_v3 simulator listening on {}", sim.url());
            println!("  auth_url: {}", sim.auth_url());
            println!("  project_id: {}", ids.project_id);
            println!(
                "  user: {} (domain {}) / password {}",
                cfg.user_name, cfg.user_domain, cfg.password
            );
            println!("  vault: {}", ids.vault_id);
            println!(
                "  server {} with volumes {} (40 GB), {} (100 GB)",
                ids.server_id, ids.system_volume_id, ids.data_volume_id
            );
            println!(
                "  server backup {} (children {}, {}); disk backup {}",
                ids.server_backup_id, ids.system_child_id, ids.data_child_id, ids.disk_backup_id
            );
            crate::server::shutdown_on_signal().cancelled().await;
            Ok(0)
        }
        "vbs_v2" => {
            let d = std::time::Duration::from_secs_f64(job_seconds.max(0.0));
            let cfg = custos_vbs_v2::sim::SimConfig {
                restore_duration: d,
                backup_duration: d,
                ..Default::default()
            };
            let sim = custos_vbs_v2::sim::Simulator::start(listen, cfg.clone()).await?;
            let ids = sim.seed_demo();
            println!("custos: vbs_v2 simulator listening on {}", sim.url());
            println!("  auth_url: {}", sim.auth_url());
            println!("  project_id: {}", ids.project_id);
            println!(
                "  user: {} (domain {}) / password {}",
                cfg.user_name, cfg.user_domain, cfg.password
            );
            println!(
                "  volumes: {} (10 GiB, available), {} (10 GiB, in-use), {} (1 GiB, available)",
                ids.volume_id, ids.in_use_volume_id, ids.small_volume_id
            );
            println!("  backup {} of {}", ids.backup_id, ids.volume_id);
            crate::server::shutdown_on_signal().cancelled().await;
            Ok(0)
        }
        other => anyhow::bail!("unknown --kind {other:?}: use cf_v3, cbr_v3 or vbs_v2"),
    }
}
