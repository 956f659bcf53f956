//! The daemon under test (the real `custos` binary as a child process),
//! the CF simulator in this process, gRPC clients, and what `/proc` says
//! about the daemon.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use custos::{
    api::pb::{self, backup_service_client::BackupServiceClient},
    store::StoreEngine,
};
use custos_cf_v3::sim::{CounterSnapshot, SimConfig, Simulator};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::Channel,
};

pub const TOKEN: &str = "bench-token-0123456789";

/// Adds the bearer token (Clone, so one channel serves many tasks).
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

pub type Client = BackupServiceClient<InterceptedService<Channel, Bearer>>;
pub type Health =
    tonic_health::pb::health_client::HealthClient<InterceptedService<Channel, Bearer>>;

/// The guid of simulated service instance `i`.
pub fn guid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// CF simulators in this process, service instance `i` on simulator
/// `i % n`, which is backend `cf{i % n}`. Several, because the simulator
/// looks through all its instances and jobs under one lock on every
/// request (`advance` in `adapters/cf-v3/src/sim.rs`), so one simulator
/// holding 100,000 instances or jobs answers only a few hundred requests a
/// second and would be the wall, not the daemon.
pub struct Sims(pub Vec<Simulator>);

impl Sims {
    /// `shards` simulators holding `instances` service instances between them.
    pub async fn start(job_duration: Duration, instances: usize, shards: usize) -> Result<Sims> {
        let shards = shards.clamp(1, instances.max(1));
        let mut sims = Vec::with_capacity(shards);
        for _ in 0..shards {
            sims.push(
                Simulator::start(
                    "127.0.0.1:0".parse()?,
                    SimConfig {
                        job_duration,
                        ..Default::default()
                    },
                )
                .await?,
            );
        }
        for i in 0..instances {
            let g = guid(i);
            sims[i % shards].add_instance(&g, &g);
        }
        Ok(Sims(sims))
    }

    /// The target name of instance `i`.
    pub fn target(&self, i: usize) -> String {
        format!(
            "backends/cf{}/serviceInstances/{}",
            i % self.0.len(),
            guid(i)
        )
    }

    /// (backup submits, job polls) of all the simulators.
    pub fn counters(&self) -> (u64, u64) {
        self.0.iter().fold((0, 0), |(s, p), sim| {
            let c = sim.counters();
            (s + c.backup_submits, p + c.job_polls)
        })
    }

    /// One counter summed over all the simulators, e.g.
    /// `sims.sum(|c| c.requests)`.
    pub fn sum(&self, f: impl Fn(&CounterSnapshot) -> u64) -> u64 {
        self.0.iter().map(|sim| f(&sim.counters())).sum()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The store engine of every daemon this run starts (`--store`), and of
/// the store P4 writes itself; set once by `main`, sled when not set.
static STORE_ENGINE: std::sync::OnceLock<StoreEngine> = std::sync::OnceLock::new();

/// Sets the engine for the whole run (the first call wins).
pub fn set_store_engine(engine: StoreEngine) {
    let _ = STORE_ENGINE.set(engine);
}

/// The engine of this run (`--store`; sled by default).
pub fn store_engine() -> StoreEngine {
    STORE_ENGINE.get().copied().unwrap_or_default()
}

/// The keys of the bench's `custos.toml` that a figure may set; every
/// one is written explicitly (and printed), none left to the defaults.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DaemonConfig {
    /// `store_engine`: the run's `--store`.
    pub store_engine: String,
    pub job_history: String,
    pub max_running_jobs: u32,
    pub per_backend_running_jobs: u32,
    pub timeout: String,
    pub poll_interval: String,
    pub poll_max_interval: String,
}

impl Default for DaemonConfig {
    /// The defaults of `config.md`, with the run's `--store`.
    fn default() -> Self {
        DaemonConfig {
            store_engine: store_engine().name().into(),
            job_history: "30d".into(),
            max_running_jobs: 256,
            per_backend_running_jobs: 64,
            timeout: "30s".into(),
            poll_interval: "1s".into(),
            poll_max_interval: "60s".into(),
        }
    }
}

impl DaemonConfig {
    pub fn render(&self, sims: &Sims, data_dir: &Path) -> String {
        let mut out = format!(
            r#"listen = "127.0.0.1:0"
data_dir = "{data}"
store_engine = "{engine}"
job_history = "{history}"
shutdown_timeout = "5s"

[limits]
max_running_jobs = {max}
per_backend_running_jobs = {per}

[[tokens]]
name = "bench"
role = "operator"
token_env = "BENCH_TOKEN"
"#,
            data = data_dir.display(),
            engine = self.store_engine,
            history = self.job_history,
            max = self.max_running_jobs,
            per = self.per_backend_running_jobs,
        );
        for (k, sim) in sims.0.iter().enumerate() {
            out.push_str(&format!(
                r#"
[[backends]]
name = "cf{k}"
kind = "cf_v3"
endpoint = "{endpoint}"
timeout = "{timeout}"
poll_interval = "{pi}"
poll_max_interval = "{pmax}"
[backends.auth]
type = "uaa"
client_id = "{cid}"
client_secret_env = "BENCH_CF_SECRET"
"#,
                endpoint = sim.url(),
                timeout = self.timeout,
                pi = self.poll_interval,
                pmax = self.poll_max_interval,
                cid = sim.config().client_id,
            ));
        }
        out
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "store_engine={} max_running_jobs={} per_backend_running_jobs={} timeout={} poll_interval={} poll_max_interval={} job_history={}",
            self.store_engine,
            self.max_running_jobs,
            self.per_backend_running_jobs,
            self.timeout,
            self.poll_interval,
            self.poll_max_interval,
            self.job_history
        )
    }
}

/// Finds the daemon binary: `--custos`, else `custos` next to this
/// executable (`target/release/custos` for `target/release/custos-bench`).
pub fn find_binary(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("this executable has no folder")?
            .join("custos"),
    };
    if !path.is_file() {
        bail!(
            "the daemon binary {} does not exist: run `cargo build --release` first (or pass --custos PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// A running daemon on a data dir of its own (removed on drop).
pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub addr: String,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    secret: String,
}

impl Daemon {
    /// Writes the config into a fresh temporary folder and starts the daemon.
    pub fn start(bin: &Path, sims: &Sims, cfg: &DaemonConfig) -> Result<Daemon> {
        Daemon::start_in(Daemon::fresh_dir()?, bin, sims, cfg)
    }

    /// A fresh temporary folder for a daemon (removed on drop); its data
    /// dir will be [`Daemon::data_dir_of`] it.
    pub fn fresh_dir() -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new().prefix("custos-bench-").tempdir()?)
    }

    /// Where a daemon started in `dir` keeps its store.
    pub fn data_dir_of(dir: &Path) -> PathBuf {
        dir.join("data")
    }

    /// Starts the daemon in `dir` (made by [`Daemon::fresh_dir`], perhaps
    /// with a store already written into its data dir). Returns once the
    /// daemon says it listens, which it does before it opens the store.
    pub fn start_in(
        dir: tempfile::TempDir,
        bin: &Path,
        sims: &Sims,
        cfg: &DaemonConfig,
    ) -> Result<Daemon> {
        // Every simulator has the same (default) client secret.
        let secret = sims
            .0
            .first()
            .context("no simulator")?
            .config()
            .client_secret;
        let (child, pid, addr) = spawn(bin, dir.path(), sims, cfg, &secret)?;
        Ok(Daemon {
            child,
            pid,
            addr,
            dir,
            bin: bin.to_path_buf(),
            secret,
        })
    }

    /// Leaves the daemon's folder (config, log, data dir) in place when
    /// this is dropped; returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    pub fn data_dir(&self) -> PathBuf {
        Daemon::data_dir_of(self.dir.path())
    }

    /// Stops the daemon with SIGTERM (a graceful stop: the store flushed)
    /// and waits for it, at most `limit` (then SIGKILL).
    pub fn stop(&mut self, limit: Duration) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the daemon did not stop within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again on the same data dir with another config.
    pub fn restart(&mut self, sims: &Sims, cfg: &DaemonConfig) -> Result<()> {
        let (child, pid, addr) = spawn(&self.bin, self.dir.path(), sims, cfg, &self.secret)?;
        self.child = child;
        self.pid = pid;
        self.addr = addr;
        Ok(())
    }

    pub async fn client(&self) -> Result<(Client, Health)> {
        let ch = Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?;
        let h: MetadataValue<_> = format!("Bearer {TOKEN}").parse()?;
        let bearer = Bearer(h);
        Ok((
            BackupServiceClient::with_interceptor(ch.clone(), bearer.clone())
                .max_decoding_message_size(64 << 20),
            tonic_health::pb::health_client::HealthClient::with_interceptor(ch, bearer),
        ))
    }

    pub fn usage(&self) -> Usage {
        usage(self.pid)
    }

    /// The daemon's log (stderr), for errors.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A wrapper given as `--custos` (`exec perf record -- custos "$@"`)
        // runs the daemon as its child: it goes too, not left running.
        for pid in children(self.pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child processes of `pid` (from `/proc`; none when unreadable).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn spawn(
    bin: &Path,
    dir: &Path,
    sims: &Sims,
    cfg: &DaemonConfig,
    secret: &str,
) -> Result<(Child, u32, String)> {
    let config = dir.join("custos.toml");
    std::fs::write(&config, cfg.render(sims, &Daemon::data_dir_of(dir)))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))?;
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env("BENCH_TOKEN", TOKEN)
        .env("BENCH_CF_SECRET", secret)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = child.id();
    let out = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { return };
            if let Some(a) = l.strip_prefix("custos: listening on ") {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(addr) => Ok((child, pid, addr)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            Err(anyhow!(
                "the daemon did not say it was listening; its log:\n{log}"
            ))
        }
    }
}

/// What `/proc` says about a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident memory (VmRSS), KiB.
    pub rss_kib: u64,
    /// CPU seconds, user + system.
    pub cpu_s: f64,
}

pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses): utime
    // and stime are the 14th and 15th of the line, 12th and 13th here.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    Usage {
        rss_kib,
        cpu_s: ticks / 100.0,
    }
}

/// Counts the jobs `filter` matches, paging through `ListJobs`.
pub async fn count_jobs(c: &mut Client, filter: &str) -> Result<usize> {
    let mut n = 0;
    let mut token = String::new();
    loop {
        let r = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 1000,
                page_token: token,
                filter: filter.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner();
        n += r.jobs.len();
        if r.next_page_token.is_empty() {
            return Ok(n);
        }
        token = r.next_page_token;
    }
}

/// Bytes of a folder's files: (apparent length, allocated as `du` counts).
pub fn dir_size(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let Ok(rd) = std::fs::read_dir(p) else {
        return (0, 0);
    };
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            let (a, b) = dir_size(&e.path());
            apparent += a;
            allocated += b;
        } else {
            apparent += m.len();
            allocated += m.blocks() * 512;
        }
    }
    (apparent, allocated)
}
