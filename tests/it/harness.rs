//! The test harness: a CF simulator in the test process, the real `custos`
//! binary as a child process on a free port, and gRPC clients.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use custos::api::pb::{self, backup_service_client::BackupServiceClient};
use custos_cf_v3::sim::{SimConfig, Simulator};
use tonic::{Request, Status, service::interceptor::InterceptedService, transport::Channel};

pub const OP_TOKEN: &str = "it-operator-token-0123456789";
pub const RO_TOKEN: &str = "it-reader-token-0123456789ab";

/// The interceptor that adds the bearer token.
pub type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
pub type Client = BackupServiceClient<InterceptedService<Channel, AddToken>>;

/// A simulator with `n` service instances `inst(0..n)`.
pub async fn sim(cfg: SimConfig, n: usize) -> Simulator {
    let s = Simulator::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    for i in 0..n {
        s.add_instance(&inst(i), &format!("db-{i}"));
        s.add_backup(&inst(i), &format!("seed-{i}"), 1_700_000_000);
    }
    s
}

/// The guid of test instance `i`.
pub fn inst(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

pub fn target(i: usize) -> String {
    format!("backends/cf/serviceInstances/{}", inst(i))
}

/// Options of the generated config.
#[derive(Clone)]
pub struct Opts {
    pub max_retries: u32,
    pub timeout: &'static str,
    /// Top-level keys, before the tables.
    pub extra: String,
    /// More keys of the `cf` backend.
    pub backend_extra: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            max_retries: 20,
            timeout: "2s",
            extra: String::new(),
            backend_extra: String::new(),
        }
    }
}

pub fn config(sim: &Simulator, data_dir: &Path, o: &Opts) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
shutdown_timeout = "2s"
{extra}

[[tokens]]
name = "ops"
role = "operator"
token_env = "CUSTOS_IT_OP"

[[tokens]]
name = "ro"
role = "reader"
token_env = "CUSTOS_IT_RO"

[[backends]]
name = "cf"
kind = "cf_v3"
endpoint = "{endpoint}"
timeout = "{timeout}"
poll_interval = "100ms"
poll_max_interval = "400ms"
max_retries = {retries}
{backend_extra}
[backends.auth]
type = "uaa"
client_id = "{cid}"
client_secret_env = "CUSTOS_IT_CF_SECRET"
"#,
        data = data_dir.display(),
        extra = o.extra,
        endpoint = sim.url(),
        timeout = o.timeout,
        retries = o.max_retries,
        backend_extra = o.backend_extra,
        cid = sim.config().client_id,
    )
}

/// The daemon as a child process.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    /// `metrics_listen`'s address, once the daemon printed it.
    metrics: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Daemon {
    /// Starts `custos serve --config` and waits for its listening line.
    pub fn start(sim: &Simulator, dir: &Path, o: &Opts) -> Daemon {
        let config = dir.join("custos.toml");
        std::fs::write(&config, self::config(sim, &dir.join("data"), o)).unwrap();
        Self::start_with(&config, sim, dir).expect("daemon did not start")
    }

    pub fn start_with(config: &Path, sim: &Simulator, dir: &Path) -> Result<Daemon, String> {
        let log = dir.join(format!("daemon-{}.log", uuid::Uuid::new_v4().simple()));
        // CUSTOS_IT_BIN runs the suite against another build (e.g. an
        // older release, to see a test fail there).
        let bin = std::env::var("CUSTOS_IT_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_custos").to_string());
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .env("CUSTOS_IT_OP", OP_TOKEN)
            .env("CUSTOS_IT_RO", RO_TOKEN)
            .env("CUSTOS_IT_CF_SECRET", sim.config().client_secret)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let metrics = std::sync::Arc::new(std::sync::Mutex::new(None));
        let m2 = metrics.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("custos: metrics on ") {
                    *m2.lock().unwrap() = Some(a.trim().to_string());
                }
                if let Some(a) = line.strip_prefix("custos: listening on ") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Ok(Daemon {
                child,
                addr,
                metrics,
                log,
                config: config.to_path_buf(),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::fs::read_to_string(&log).unwrap_or_default())
            }
        }
    }

    /// The metrics address the daemon printed (waits up to 10 s for it).
    pub fn metrics_addr(&self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = self.metrics.lock().unwrap().clone() {
                return a;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon printed no metrics address"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self, token: Option<&str>) -> Client {
        connect(&self.addr, token).await
    }

    pub async fn op(&self) -> Client {
        self.client(Some(OP_TOKEN)).await
    }

    /// Sends the signal `name` (`TERM`: a graceful stop, `HUP`); returns
    /// at once.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// kill -9, then a new daemon on the same config and data dir.
    pub fn restart_after_kill9(mut self, sim: &Simulator, dir: &Path) -> Daemon {
        self.kill9();
        let config = self.config.clone();
        drop(self);
        Daemon::start_with(&config, sim, dir).expect("restart")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the daemon at `addr`, sending `token` when given.
pub async fn connect(addr: &str, token: Option<&str>) -> Client {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header: Option<tonic::metadata::MetadataValue<_>> =
        token.map(|t| format!("Bearer {t}").parse().unwrap());
    let f: AddToken = Box::new(move |mut r: Request<()>| {
        if let Some(h) = &header {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    });
    BackupServiceClient::with_interceptor(ch, f)
}

pub fn backup_req(i: usize, request_id: &str) -> pb::CreateBackupRequest {
    pb::CreateBackupRequest {
        target: target(i),
        request_id: request_id.to_string(),
        labels: Default::default(),
        incremental: false,
        validate_only: false,
    }
}

pub fn restore_req(i: usize) -> pb::RestoreRequest {
    pb::RestoreRequest {
        target: target(i),
        ..Default::default()
    }
}

pub fn is_terminal(j: &pb::Job) -> bool {
    use pb::job::State;
    [State::Succeeded, State::Failed, State::Cancelled]
        .iter()
        .any(|s| *s as i32 == j.state)
}

pub fn state(j: &pb::Job) -> &'static str {
    pb::job::State::try_from(j.state)
        .map(|s| s.as_str_name())
        .unwrap_or("?")
}

/// Starts a backup of test instance `i`; the job as created.
pub async fn start_backup(c: &mut Client, i: usize, request_id: &str) -> pb::Job {
    c.create_backup(backup_req(i, request_id))
        .await
        .unwrap()
        .into_inner()
}

/// Starts a backup of each test instance in `instances`; the job names.
pub async fn create_backups(c: &mut Client, instances: std::ops::Range<usize>) -> Vec<String> {
    let mut names = Vec::new();
    for i in instances {
        let req = backup_req(i, "");
        names.push(c.create_backup(req).await.unwrap().into_inner().name);
    }
    names
}

/// Waits for every job and asserts it SUCCEEDED (with the daemon's log
/// when not).
pub async fn expect_all_succeed(c: &mut Client, names: &[String], limit: Duration, d: &Daemon) {
    for n in names {
        let j = wait_done(c, n, limit).await;
        assert_eq!(state(&j), "SUCCEEDED", "{n}: {}\n{}", j.message, d.logs());
        if pb::job::Kind::try_from(j.kind) == Ok(pb::job::Kind::Backup) {
            assert!(!j.backup_id.is_empty(), "{n}: no backup id");
        }
    }
}

/// Polls `GetJob` until the job ends (or panics after `limit`).
pub async fn wait_done(c: &mut Client, name: &str, limit: Duration) -> pb::Job {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let j = c
            .get_job(pb::GetJobRequest {
                name: name.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        if is_terminal(&j) {
            return j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {name} did not end in {limit:?}: {} {}",
            state(&j),
            j.message
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The field names of a status's `BadRequest` violations.
pub fn violations(s: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// One OpenStack-style backend (`cbr_v3`, `vbs_v2`) with a Keystone
/// password user, as a test's daemon sees it.
pub struct KeystoneBackend<'a> {
    pub kind: &'a str,
    pub endpoint: String,
    pub auth_url: String,
    pub project_id: &'a str,
    /// `cbr_v3` only.
    pub vault_id: Option<&'a str>,
    pub user: &'a str,
    pub domain: &'a str,
    pub password: &'a str,
}

/// Writes a config with `b` as backend `name` (its password in a 0600
/// file, as operators keep it) and starts the daemon on it. The harness's
/// CF simulator stays idle beside it.
pub async fn start_keystone_daemon(dir: &Path, name: &str, b: KeystoneBackend<'_>) -> Daemon {
    let cf = sim(SimConfig::default(), 0).await;
    let pw = dir.join(format!("{name}.password"));
    std::fs::write(&pw, b.password).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let vault = b
        .vault_id
        .map(|v| format!("vault_id = \"{v}\"\n"))
        .unwrap_or_default();
    let config = dir.join("custos.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
shutdown_timeout = "2s"

[[tokens]]
name = "ops"
role = "operator"
token_env = "CUSTOS_IT_OP"

[[backends]]
name = "{name}"
kind = "{kind}"
endpoint = "{endpoint}"
project_id = "{project}"
{vault}timeout = "2s"
poll_interval = "100ms"
poll_max_interval = "400ms"
[backends.auth]
type = "keystone"
auth_url = "{auth_url}"
user_name = "{user}"
user_domain_name = "{domain}"
password_file = "{pw}"
"#,
            data = dir.join("data").display(),
            kind = b.kind,
            endpoint = b.endpoint,
            project = b.project_id,
            auth_url = b.auth_url,
            user = b.user,
            domain = b.domain,
            pw = pw.display(),
        ),
    )
    .unwrap();
    Daemon::start_with(&config, &cf, dir).expect("daemon")
}

/// A VBS simulator with the demo world, and a daemon whose backend `vbs`
/// points at it.
pub async fn start_vbs(
    dir: &Path,
    cfg: custos_vbs_v2::sim::SimConfig,
) -> (
    custos_vbs_v2::sim::Simulator,
    custos_vbs_v2::sim::DemoIds,
    Daemon,
) {
    let vbs = custos_vbs_v2::sim::Simulator::start("127.0.0.1:0".parse().unwrap(), cfg.clone())
        .await
        .unwrap();
    let ids = vbs.seed_demo();
    let d = start_keystone_daemon(
        dir,
        "vbs",
        KeystoneBackend {
            kind: "vbs_v2",
            endpoint: vbs.url(),
            auth_url: vbs.auth_url(),
            project_id: &ids.project_id,
            vault_id: None,
            user: &cfg.user_name,
            domain: &cfg.user_domain,
            password: &cfg.password,
        },
    )
    .await;
    (vbs, ids, d)
}

/// A backup job of test instance `i` on backend `cf`, PENDING, as
/// `CreateBackup` makes it: for tests that write a store before the
/// daemon starts.
pub fn backup_record(i: usize) -> custos::job::JobRecord {
    let op = custos_adapter_core::Operation::CreateBackup {
        resource: custos_adapter_core::Resource {
            kind: custos_adapter_core::ResourceKind::ServiceInstance,
            id: inst(i),
        },
        incremental: false,
    };
    custos::job::JobRecord::new(
        custos::job::JobKind::Backup,
        target(i),
        "cf".into(),
        op,
        Default::default(),
    )
}

/// Writes `recs` (1,000 to a batch) into the sled store of `data`, made
/// if missing, flushes and closes it, as a stopped daemon leaves a store.
pub fn seed_store(data: &Path, recs: Vec<custos::job::JobRecord>) {
    let data = data.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = custos::store::Store::open(&data).unwrap();
            for chunk in recs.chunks(1000) {
                store.put_jobs(chunk).unwrap();
            }
            store.flush().await.unwrap();
        });
    })
    .join()
    .unwrap();
}
