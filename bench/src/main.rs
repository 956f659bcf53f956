//! `custos-bench`: the benchmarks of issue 12 against the real daemon.
//!
//! ```sh
//! cargo build --release -j2 && target/release/custos-bench all
//! target/release/custos-bench p1 --duration 20 --json
//! cargo run -q -p custos-bench -- all --quick     # CI: runs, checks no speed
//! ```
//!
//! Each figure starts its own `custos` daemon (a child process on a fresh
//! data dir; by default the `custos` next to this executable) and the CF
//! simulators in this process, and reports the measured value, its baseline
//! from the same run, the ratio and the goal. `docs/benchmarks.md` has the
//! last full run. The figures: P1 intake, P2 orchestration (N backups end
//! to end against a plain reqwest client making the same CF calls), P3
//! waiting, P4 recovery (a start on a store seeded with finished and live
//! jobs through the `custos` library), P5 schedules, P6 store.

mod daemon;
mod floor;
mod load;
mod p1;
mod p2;
mod p3;
mod p4;
mod p5;
mod p6;
mod report;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};
use custos::store::StoreEngine;
use report::Figure;

#[derive(Parser, Debug)]
#[command(
    name = "custos-bench",
    about = "Benchmarks of the custos daemon (issue 12): value, same-run baseline, ratio, goal"
)]
struct Cli {
    #[command(subcommand)]
    which: Which,
    /// The daemon binary [default: `custos` next to this executable].
    #[arg(long, global = true)]
    custos: Option<PathBuf>,
    /// One JSON object with every figure on stdout (the table goes to
    /// stderr).
    #[arg(long, global = true)]
    json: bool,
    /// The daemon's store engine (`store_engine` in the config it is
    /// given), and that of the store P4 writes: sled or redb [default:
    /// sled].
    #[arg(long, global = true, value_parser = parse_store)]
    store: Option<StoreEngine>,
    /// Tiny sizes (for CI: checks that the tool runs, in seconds); flags
    /// given explicitly still win.
    #[arg(long, global = true)]
    quick: bool,
    /// Concurrent gRPC streams over the one channel (P1 load; creations
    /// in P3, P5, P6) [default: 64].
    #[arg(long, global = true)]
    streams: Option<usize>,

    /// CF simulators (backends `cf0`..) the service instances are spread
    /// over; one simulator scans all its instances and jobs on every
    /// request, so one alone would be the wall [default: 20].
    #[arg(long, global = true)]
    sims: Option<usize>,

    /// P1: seconds of each measured load [default: 10].
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// P1: seconds of warm-up before each load [default: 2].
    #[arg(long, global = true)]
    warmup: Option<f64>,
    /// P1: service instances the creations are spread over [default: 1000].
    #[arg(long, global = true)]
    p1_targets: Option<usize>,

    /// P2: backup jobs run end to end, one per target [default: 10000].
    #[arg(long, global = true)]
    p2_jobs: Option<usize>,
    /// P2: the backend's poll_interval, on both sides [default: 1s, the
    /// config default].
    #[arg(long, global = true)]
    p2_poll_interval: Option<String>,
    /// P2: give up on a side after this many seconds [default: 900].
    #[arg(long, global = true)]
    p2_timeout: Option<f64>,

    /// P3: jobs waiting at once, one per target [default: 100000].
    #[arg(long, global = true)]
    p3_jobs: Option<usize>,
    /// P3: seconds of the measurement window [default: 30].
    #[arg(long, global = true)]
    p3_window: Option<f64>,
    /// P3: seconds between the last submit and the window [default: until
    /// the poll backoff reaches poll_max_interval, 63 s with the defaults].
    #[arg(long, global = true)]
    p3_settle: Option<f64>,
    /// P3: the backend's poll_interval [default: 1s, the config default].
    #[arg(long, global = true)]
    p3_poll_interval: Option<String>,
    /// P3: the backend's poll_max_interval [default: 60s, the config default].
    #[arg(long, global = true)]
    p3_poll_max_interval: Option<String>,
    /// P3: give up when not all jobs are submitted after this many seconds
    /// [default: 1200].
    #[arg(long, global = true)]
    p3_submit_timeout: Option<f64>,

    /// P4: finished jobs in the store at the start [default: 1000000].
    #[arg(long, global = true)]
    p4_finished: Option<usize>,
    /// P4: live jobs (RUNNING, polling) in the store at the start, one per
    /// target [default: 10000].
    #[arg(long, global = true)]
    p4_live: Option<usize>,
    /// P4: give up when not SERVING or not all live jobs polled after this
    /// many seconds [default: 300].
    #[arg(long, global = true)]
    p4_timeout: Option<f64>,
    /// P4: keep the folder of the full run (config, log, data dir; the
    /// daemon stopped gracefully) and print its path, to profile the start
    /// by hand.
    #[arg(long, global = true)]
    p4_keep: bool,

    /// P5: schedules due in the same second [default: 10000].
    #[arg(long, global = true)]
    p5_schedules: Option<usize>,
    /// P5: service instances they target [default: 100].
    #[arg(long, global = true)]
    p5_instances: Option<usize>,
    /// P5: seconds from the start until the due second [default: 75].
    #[arg(long, global = true)]
    p5_lead: Option<f64>,

    /// P6: finished jobs made [default: 100000].
    #[arg(long, global = true)]
    p6_jobs: Option<usize>,
    /// P6: service instances they target [default: 1000].
    #[arg(long, global = true)]
    p6_targets: Option<usize>,
    /// P6: give up when the jobs have not ended after this many seconds
    /// [default: 1800].
    #[arg(long, global = true)]
    p6_finish_timeout: Option<f64>,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// Every figure: P1 to P6.
    All,
    /// P1 intake: CreateBackup/s against Health/Check/s (goal ratio >= 0.5).
    P1,
    /// P2 orchestration: N backups end to end against a plain HTTP client
    /// making the same calls (goal time ratio <= 1.3).
    P2,
    /// P3 waiting: RSS, CPU and poll rate with many jobs waiting.
    P3,
    /// P4 recovery: a start with 1,000,000 finished and 10,000 live jobs
    /// stored (goals SERVING <= 1 s, all live jobs polled <= 5 s).
    P4,
    /// P5 schedules: 10,000 schedules due in one second (goal <= 1 s).
    P5,
    /// P6 store: bytes on disk per finished job, before and after pruning.
    P6,
    /// (Internal) P3's plain poll client, a process of its own: a JSON
    /// spec on stdin, its measurement on stdout.
    #[command(hide = true)]
    PollClient,
}

fn parse_store(s: &str) -> Result<StoreEngine, String> {
    StoreEngine::from_name(s).ok_or_else(|| format!("{s:?}: expected sled or redb"))
}

/// `explicit`, else the quick size, else the full one.
fn pick<T>(explicit: Option<T>, quick: bool, tiny: T, full: T) -> T {
    explicit.unwrap_or(if quick { tiny } else { full })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.which == Which::PollClient {
        return match floor::poll_client_main().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("custos-bench poll-client: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("custos-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the figures; false when one of them could not be measured (a goal
/// missed is not a failure: this is a benchmark, not a test).
async fn run(cli: Cli) -> Result<bool> {
    let bin = daemon::find_binary(cli.custos.as_deref())?;
    let q = cli.quick;
    let streams = pick(cli.streams, q, 16, 64);
    let sims = pick(cli.sims, q, 2, 20);
    let want = |w: Which| cli.which == Which::All || cli.which == w;
    let mut figures: Vec<Figure> = Vec::new();
    let log = |s: &str| {
        if !cli.json {
            eprintln!("custos-bench: {s}");
        }
    };
    daemon::set_store_engine(cli.store.unwrap_or_default());
    log(&format!(
        "daemon {}, store_engine {}",
        bin.display(),
        daemon::store_engine()
    ));

    if want(Which::P1) {
        let a = p1::Args {
            duration: pick(cli.duration, q, 1.0, 10.0),
            warmup: pick(cli.warmup, q, 0.2, 2.0),
            streams,
            targets: pick(cli.p1_targets, q, 20, 1000),
            sims,
        };
        log("P1 intake ...");
        figures.push(timed("P1", "intake", p1::run(&bin, &a)).await);
    }
    if want(Which::P2) {
        let a = p2::Args {
            jobs: pick(cli.p2_jobs, q, 100, 10_000),
            poll_interval: pick(cli.p2_poll_interval.clone(), q, "100ms".into(), "1s".into()),
            streams,
            sims,
            timeout: pick(cli.p2_timeout, q, 60.0, 900.0),
        };
        log("P2 orchestration ...");
        figures.push(timed("P2", "orchestration", p2::run(&bin, &a)).await);
    }
    if want(Which::P3) {
        let a = p3::Args {
            jobs: pick(cli.p3_jobs, q, 200, 100_000),
            window: pick(cli.p3_window, q, 1.0, 30.0),
            settle: cli.p3_settle.or(q.then_some(0.0)),
            poll_interval: pick(cli.p3_poll_interval.clone(), q, "1s".into(), "1s".into()),
            poll_max_interval: pick(
                cli.p3_poll_max_interval.clone(),
                q,
                "60s".into(),
                "60s".into(),
            ),
            streams,
            submit_timeout: pick(cli.p3_submit_timeout, q, 60.0, 1200.0),
            sims,
        };
        log("P3 waiting ...");
        figures.push(timed("P3", "waiting", p3::run(&bin, &a)).await);
    }
    if want(Which::P4) {
        let a = p4::Args {
            finished: pick(cli.p4_finished, q, 2_000, 1_000_000),
            live: pick(cli.p4_live, q, 50, 10_000),
            sims,
            timeout: pick(cli.p4_timeout, q, 60.0, 300.0),
            keep: cli.p4_keep,
        };
        log("P4 recovery ...");
        figures.push(timed("P4", "recovery", p4::run(&bin, &a)).await);
    }
    if want(Which::P5) {
        let a = p5::Args {
            schedules: pick(cli.p5_schedules, q, 50, 10_000),
            instances: pick(cli.p5_instances, q, 10, 100),
            lead: pick(cli.p5_lead, q, 3.0, 75.0),
            streams,
            sims,
        };
        log("P5 schedules ...");
        figures.push(timed("P5", "schedules", p5::run(&bin, &a)).await);
    }
    if want(Which::P6) {
        let a = p6::Args {
            jobs: pick(cli.p6_jobs, q, 200, 100_000),
            targets: pick(cli.p6_targets, q, 20, 1000),
            streams,
            finish_timeout: pick(cli.p6_finish_timeout, q, 60.0, 1800.0),
            sims,
        };
        log("P6 store ...");
        figures.push(timed("P6", "store", p6::run(&bin, &a)).await);
    }

    let ok = figures.iter().all(|f| f.error.is_none());
    if cli.json {
        let out = serde_json::json!({
            "machine": machine(),
            "custos": bin.display().to_string(),
            "quick": q,
            "figures": figures,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        // The table too, on stderr, so that one run gives both.
        eprintln!("{}", report::table(&figures));
    } else {
        println!("{}", report::table(&figures));
        println!("machine: {}", machine());
    }
    Ok(ok)
}

/// Runs one figure, keeping its error in the report.
async fn timed(
    id: &'static str,
    name: &'static str,
    fut: impl std::future::Future<Output = Result<Figure>>,
) -> Figure {
    let t = Instant::now();
    let mut f = fut.await.unwrap_or_else(|e| {
        let mut f = Figure::new(id, name, serde_json::Value::Null);
        f.error = Some(format!("{e:#}"));
        f
    });
    f.seconds = t.elapsed().as_secs_f64();
    f
}

/// Cores, memory and kernel of this machine.
fn machine() -> serde_json::Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    serde_json::json!({ "cores": cores, "mem_mib": mem_mib, "kernel": kernel })
}
