//! Benchmark: N schedules (default 10,000) all due in the same second.
//!
//! ```sh
//! cargo build --release && cargo run --release --example schedule_bench -- 10000
//! ```
//!
//! Starts the CF simulator in process (100 service instances), the release
//! `custos` daemon as a child process on a temporary data dir, creates N
//! schedules over gRPC (64 at a time) whose cron names one second about a
//! minute ahead, and prints:
//! - how long creating them took;
//! - the daemon's resident memory and CPU while idle with N schedules
//!   (10 s before the due second);
//! - how long after the due second until all N jobs exist (ListJobs);
//! - the daemon's memory afterwards.
//!
//! Figures depend on the machine; `docs/measurements.md` has ours.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{Timelike, Utc};
use custos::api::pb::{self, backup_service_client::BackupServiceClient};
use custos_cf_v3::sim::{SimConfig, Simulator};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

const TOKEN: &str = "bench-token-0123456789";
const INSTANCES: usize = 100;

/// Adds the bearer token (Clone, so clients can be shared by tasks).
#[derive(Clone)]
struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Client = BackupServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

async fn client(addr: &str) -> Client {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let h: MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    BackupServiceClient::with_interceptor(ch, Bearer(h))
}

/// (resident KiB, CPU seconds user+system) of a process, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (rss, ticks / 100.0)
}

async fn count_jobs(c: &mut Client) -> usize {
    let mut n = 0;
    let mut token = String::new();
    loop {
        let r = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 1000,
                page_token: token,
                filter: String::new(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        n += r.jobs.len();
        if r.next_page_token.is_empty() {
            return n;
        }
        token = r.next_page_token;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let bin = std::env::var("CUSTOS_BIN").unwrap_or_else(|_| {
        let exe = std::env::current_exe().unwrap();
        // target/release/examples/schedule_bench → target/release/custos
        exe.parent()
            .and_then(|p| p.parent())
            .unwrap()
            .join("custos")
            .display()
            .to_string()
    });
    let sim = Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            job_duration: Duration::from_millis(20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let guids: Vec<String> = (0..INSTANCES)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    for g in &guids {
        sim.add_instance(g, g);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("custos.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
[limits]
max_running_jobs = 64
per_backend_running_jobs = 64
[[tokens]]
name = "bench"
role = "operator"
token_env = "BENCH_TOKEN"
[[backends]]
name = "cf"
kind = "cf_v3"
endpoint = "{endpoint}"
[backends.auth]
type = "uaa"
client_id = "{cid}"
client_secret_env = "BENCH_CF_SECRET"
"#,
            data = dir.path().join("data").display(),
            endpoint = sim.url(),
            cid = sim.config().client_id,
        ),
    )
    .unwrap();
    let mut child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env("BENCH_TOKEN", TOKEN)
        .env("BENCH_CF_SECRET", sim.config().client_secret)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} (build it with cargo build --release): {e}")
        });
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(a) = l.strip_prefix("custos: listening on ") {
            break a.trim().to_string();
        }
    };
    let (rss0, _) = usage(pid);
    println!("daemon {bin} (pid {pid}) on {addr}; {n} schedules over {INSTANCES} targets");
    println!(
        "idle, no schedules: {:.1} MiB resident",
        rss0 as f64 / 1024.0
    );

    // One second, ~75 s ahead (UTC), named in every schedule's cron.
    let due = {
        let t = Utc::now() + chrono::Duration::seconds(75);
        t.with_nanosecond(0).unwrap()
    };
    let cron = format!("{} {} {} * * *", due.second(), due.minute(), due.hour());
    let started = Instant::now();
    let c = client(&addr).await;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut c = c.clone();
        let sem = sem.clone();
        let target = format!("backends/cf/serviceInstances/{}", guids[i % INSTANCES]);
        let cron = cron.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            c.create_schedule(pb::CreateScheduleRequest {
                schedule_id: format!("bench-{i}"),
                schedule: Some(pb::Schedule {
                    target,
                    cron,
                    overlap_policy: pb::schedule::OverlapPolicy::Allow as i32,
                    ..Default::default()
                }),
                validate_only: false,
            })
            .await
            .unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let made = started.elapsed();
    println!(
        "created {n} schedules in {:.1} s ({:.0}/s)",
        made.as_secs_f64(),
        n as f64 / made.as_secs_f64()
    );
    let until_due = (due - Utc::now()).to_std().unwrap_or_default();
    if until_due < Duration::from_secs(12) {
        println!("creating took too long for the idle measurement; rerun with fewer schedules");
    } else {
        tokio::time::sleep(until_due - Duration::from_secs(11)).await;
        let (rss_a, cpu_a) = usage(pid);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (_, cpu_b) = usage(pid);
        println!(
            "idle with {n} schedules: {:.1} MiB resident, CPU {:.2} % of one core over 10 s",
            rss_a as f64 / 1024.0,
            (cpu_b - cpu_a) * 10.0
        );
    }
    let mut c = c;
    let until_due = (due - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_due).await;
    let t0 = Instant::now();
    loop {
        let have = count_jobs(&mut c).await;
        if have >= n {
            let took = t0.elapsed();
            println!(
                "all {n} jobs existed {:.2} s after the due second ({have} counted)",
                took.as_secs_f64()
            );
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            println!("only {have} of {n} jobs after 600 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (rss1, _) = usage(pid);
    println!("after firing: {:.1} MiB resident", rss1 as f64 / 1024.0);
    let _ = child.kill();
    let _ = child.wait();
}
