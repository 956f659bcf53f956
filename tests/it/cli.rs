//! The CLI's conventions, black-box: the real `custos` binary as a child
//! process against the real daemon and the CF simulator. Request ids
//! (printed, sent, a re-run makes no second job), `--wait` (the job's name
//! first, across a daemon restart, Ctrl-C, the reconnect bound), lists that
//! follow page tokens, exit codes, and confirmation of destructive
//! commands.
//!
//! Multi-threaded runtimes: the CLI runs as a blocking child process while
//! the simulator answers on this runtime.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use custos::api::pb;
use custos_cf_v3::sim::{SimConfig, cf_error};

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

/// The CLI against `endpoint` with the operator token; stdin is not a
/// terminal. `CUSTOS_IT_BIN` runs another build's CLI (as the harness
/// does for the daemon), e.g. to see these tests fail on an older one.
fn cli(endpoint: &str, args: &[&str]) -> Command {
    let bin =
        std::env::var("CUSTOS_IT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_custos").to_string());
    let mut c = Command::new(bin);
    c.args(args)
        .env("CUSTOS_ENDPOINT", endpoint)
        .env("CUSTOS_TOKEN", OP_TOKEN)
        .env_remove("CUSTOS_CA_FILE")
        .stdin(Stdio::null());
    c
}

fn run(d: &Daemon, args: &[&str]) -> Output {
    cli(&format!("http://{}", d.addr), args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// The value of the first `key: value` line of `s`.
fn line_value(s: &str, key: &str) -> Option<String> {
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .map(|v| v.trim().to_string())
}

async fn get(c: &mut Client, name: &str) -> pb::Job {
    c.get_job(pb::GetJobRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn count_jobs(c: &mut Client, filter: &str) -> usize {
    c.list_jobs(pb::ListJobsRequest {
        page_size: 1000,
        page_token: String::new(),
        filter: filter.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .jobs
    .len()
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CLI child whose output is read as it comes.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Each stderr line as it arrives.
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let o2 = stdout.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let err = child.stderr.take().unwrap();
        let e2 = stderr.clone();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                e2.lock().unwrap().push_str(&format!("{l}\n"));
                let _ = tx.send(l);
            }
        });
        Running {
            child,
            stdout,
            stderr,
            lines,
        }
    }

    /// Waits (bounded) for a stderr line starting with `prefix`; returns
    /// the rest of it.
    fn wait_line(&self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!(
                    "no line {prefix:?} on stderr in {limit:?}:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Waits (bounded) for the process to exit; its exit code.
    async fn exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the reader threads take the last bytes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the CLI did not exit in {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon on a fixed port (a restart must come back where the CLI
/// looks for it).
fn daemon_on_fixed_port(sim: &custos_cf_v3::sim::Simulator, dir: &std::path::Path) -> Daemon {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(sim, &dir.join("data"), &Opts::default()).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let path = dir.join("custos.toml");
    std::fs::write(&path, cfg).unwrap();
    Daemon::start_with(&path, sim, dir).expect("daemon")
}

/// A restore without `--request-id` sends a fresh UUID v4 and prints it
/// (on stderr with `-o json`); re-running with the same `--request-id`
/// answers the first job: no second job, no second restore on the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_printed_sent_and_a_rerun_makes_no_second_job() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let t = target(0);

    let o = run(&d, &["restore", &t, "--backup", "seed-0", "-o", "json"]);
    assert!(o.status.success(), "{}", show(&o));
    let printed = line_value(&text(&o.stderr), "request_id").expect("a request id on stderr");
    let id = uuid::Uuid::parse_str(&printed).expect("a UUID");
    assert_eq!(id.get_version_num(), 4, "{printed}");
    // stdout is still one JSON document.
    let first: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let first_name = first["name"].as_str().unwrap().to_string();
    // The id printed is the one the job was created with.
    assert_eq!(get(&mut c, &first_name).await.request_id, printed);
    wait_done(&mut c, &first_name, T).await;

    // The same command with --request-id, twice: one job.
    let rid = "cli-rerun-0001";
    let args = [
        "restore",
        &t,
        "--backup",
        "seed-0",
        "--request-id",
        rid,
        "--wait",
        "-o",
        "json",
    ];
    let o1 = run(&d, &args);
    assert_eq!(o1.status.code(), Some(0), "{}", show(&o1));
    assert_eq!(
        line_value(&text(&o1.stderr), "request_id").as_deref(),
        Some(rid)
    );
    let j1: serde_json::Value = serde_json::from_slice(&o1.stdout).unwrap();
    assert_eq!(j1["state"], "SUCCEEDED");
    let o2 = run(&d, &args);
    assert_eq!(o2.status.code(), Some(0), "{}", show(&o2));
    let j2: serde_json::Value = serde_json::from_slice(&o2.stdout).unwrap();
    assert_eq!(j2["name"], j1["name"], "the re-run answers the first job");
    assert_ne!(j1["name"].as_str(), Some(first_name.as_str()));

    assert_eq!(count_jobs(&mut c, "kind=RESTORE").await, 2);
    assert_eq!(sim.counters().restore_submits, 2, "one per job, none more");

    // Table output prints the request id on stdout, first.
    let o = run(&d, &["backup", "create", &t]);
    assert!(o.status.success(), "{}", show(&o));
    let out = text(&o.stdout);
    let first_line = out.lines().next().unwrap_or_default();
    let id = first_line.strip_prefix("request_id: ").expect(&out);
    uuid::Uuid::parse_str(id).unwrap();
}

/// `--wait` names the job first (before any outcome), then follows it
/// across a kill -9 and restart of the daemon, and reports its end; the
/// restore ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_names_the_job_first_and_survives_a_daemon_restart() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_secs(4),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon_on_fixed_port(&sim, dir.path());
    let endpoint = format!("http://{}", d.addr);
    let t = target(0);
    let mut w = Running::spawn(cli(
        &endpoint,
        &["restore", &t, "--backup", "seed-0", "--wait", "-o", "json"],
    ));
    let name = w.wait_line("job: ", T);
    assert!(name.starts_with("jobs/"), "{name}");
    assert!(w.stdout().is_empty(), "nothing on stdout before the end");
    let mut c = d.op().await;
    assert!(
        !is_terminal(&get(&mut c, &name).await),
        "named while running"
    );
    until("the restore submitted", T, || {
        sim.counters().restore_submits == 1
    })
    .await;

    let d = d.restart_after_kill9(&sim, dir.path());
    let code = w.exit(Duration::from_secs(60)).await;
    assert_eq!(
        code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}\n{}",
        w.stdout(),
        w.stderr(),
        d.logs()
    );
    let j: serde_json::Value = serde_json::from_str(&w.stdout()).unwrap();
    assert_eq!(j["name"], name.as_str());
    assert_eq!(j["state"], "SUCCEEDED");
    assert!(w.stderr().contains("reconnect"), "{}", w.stderr());
    assert_eq!(sim.counters().restore_submits, 1);
}

/// Ctrl-C while waiting stops watching (not the job) and says how to
/// resume; with the daemon gone for longer than --reconnect-timeout the
/// CLI gives up with exit 5 and the same advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_and_a_lost_daemon_say_how_to_watch_again() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_secs(60),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&sim, dir.path(), &Opts::default());
    let endpoint = format!("http://{}", d.addr);
    let t = target(0);
    let mut c = d.op().await;

    // Table output: the request id and the job's name on stdout first;
    // without a terminal, a line per state on stderr. Once one is
    // printed, the CLI is watching.
    let mut w = Running::spawn(cli(&endpoint, &["backup", "create", &t, "--wait"]));
    let state = w.wait_line("", T);
    assert!(
        state.starts_with("PENDING") || state.starts_with("RUNNING"),
        "{state}"
    );
    until("the job's name on stdout", T, || {
        line_value(&w.stdout(), "job").is_some()
    })
    .await;
    let name = line_value(&w.stdout(), "job").unwrap();
    let lines: Vec<String> = w.stdout().lines().map(str::to_string).collect();
    assert!(lines[0].starts_with("request_id: "), "{lines:?}");
    assert_eq!(lines[1], format!("job: {name}"));
    let status = Command::new("kill")
        .args(["-INT", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(w.exit(T).await, Some(130), "{}", w.stderr());
    assert!(
        w.stderr().contains(&format!("custos job watch {name}")),
        "{}",
        w.stderr()
    );
    assert!(!is_terminal(&get(&mut c, &name).await), "the job goes on");
    assert_eq!(lines.len(), 2, "nothing more on stdout: {lines:?}");

    let mut w = Running::spawn(cli(
        &endpoint,
        &["job", "watch", &name, "--reconnect-timeout", "2s"],
    ));
    let _watching = w.wait_line("", T);
    d.kill9();
    let started = Instant::now();
    assert_eq!(w.exit(T).await, Some(5), "{}", w.stderr());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        w.stderr().contains(&format!("custos job watch {name}")),
        "{}",
        w.stderr()
    );
    assert!(w.stdout().is_empty(), "no half answer on stdout");
}

/// `job list`: the first page by default, with a hint on stderr when more
/// exist; `--all` follows every page; `--limit N` stops after N (across
/// pages). `schedule list --all` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_follow_page_tokens_and_never_stop_silently() {
    let sim = sim(SimConfig::default(), 7).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let mut names = create_backups(&mut c, 0..7).await;
    names.sort();
    let list = |args: &[&str]| {
        let mut a = vec!["job", "list", "-o", "json"];
        a.extend_from_slice(args);
        let o = run(&d, &a);
        assert!(o.status.success(), "{}", show(&o));
        // The list response message, every page merged.
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let got: Vec<String> = v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_string())
            .collect();
        (got, text(&o.stderr))
    };

    let (mut all, err) = list(&["--all", "--page-size", "2"]);
    all.sort();
    assert_eq!(all, names, "every page");
    assert!(!err.contains("more"), "{err}");

    let (page, err) = list(&["--page-size", "2"]);
    assert_eq!(page.len(), 2);
    assert!(err.contains("--all"), "a hint with the flag: {err}");

    let (limited, err) = list(&["--limit", "3", "--page-size", "2"]);
    assert_eq!(limited.len(), 3, "across two pages");
    assert!(err.contains("--limit 3") && err.contains("--all"), "{err}");
    // Newest first: the three newest jobs.
    assert_eq!(
        limited,
        names.iter().rev().take(3).cloned().collect::<Vec<_>>()
    );

    let (exact, err) = list(&["--limit", "7", "--page-size", "2"]);
    assert_eq!(exact.len(), 7);
    assert!(!err.contains("more"), "nothing more: {err}");
    let (default, err) = list(&[]);
    assert_eq!(default.len(), 7);
    assert!(err.is_empty(), "{err}");

    // Table output: the hint on stderr, not among the rows.
    let o = run(&d, &["job", "list", "--page-size", "2"]);
    assert_eq!(text(&o.stdout).lines().count(), 3, "{}", show(&o));
    assert!(text(&o.stderr).contains("--all"));

    for id in ["a", "b", "c"] {
        c.create_schedule(pb::CreateScheduleRequest {
            schedule_id: id.into(),
            schedule: Some(pb::Schedule {
                target: target(0),
                cron: "0 2 * * *".into(),
                ..Default::default()
            }),
            validate_only: false,
        })
        .await
        .unwrap();
    }
    let o = run(
        &d,
        &[
            "schedule",
            "list",
            "--all",
            "--page-size",
            "1",
            "-o",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schedules"].as_array().unwrap().len(), 3);
    let o = run(&d, &["schedule", "list", "--page-size", "1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["schedules"].as_array().unwrap().len(), 1);
    assert!(text(&o.stderr).contains("--all"), "{}", show(&o));
}

/// Exit codes: 1 a failed job (--wait), 2 usage / unreachable daemon /
/// refused token, 3 not found, 4 refused requests (invalid argument,
/// failed precondition, a request id reused for another request); the
/// table is in `--help`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_what_happened() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let t = target(0);

    sim.fail_next_job(&inst(0), cf_error(10001, "CF-ServerError", "restore broke"));
    let o = run(&d, &["restore", &t, "--backup", "seed-0", "--wait"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));

    let o = run(
        &d,
        &["job", "get", &format!("jobs/{}", uuid::Uuid::now_v7())],
    );
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    let o = run(
        &d,
        &["job", "watch", &format!("jobs/{}", uuid::Uuid::now_v7())],
    );
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));

    // INVALID_ARGUMENT: a server restore without mappings is CBR's; CF has
    // none.
    let o = run(&d, &["restore", &t, "--map", "a=b"]);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(text(&o.stderr).contains("mappings"), "{}", show(&o));
    // FAILED_PRECONDITION: CF cannot delete backups.
    let o = run(&d, &["backup", "delete", &t, "seed-0", "--yes"]);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    // ALREADY_EXISTS: a request id reused for a different request.
    let o = run(
        &d,
        &["backup", "create", &t, "--request-id", "cli-reused-1"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = run(
        &d,
        &[
            "restore",
            &t,
            "--backup",
            "seed-0",
            "--request-id",
            "cli-reused-1",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));

    // A token the daemon does not know.
    let o = cli(&format!("http://{}", d.addr), &["job", "list"])
        .env("CUSTOS_TOKEN", "not-a-token-of-this-daemon")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = cli(&format!("http://127.0.0.1:{port}"), &["job", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(text(&o.stderr).contains("cannot connect"), "{}", show(&o));
    // A usage error.
    let o = run(&d, &["job", "list", "--limit", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));

    let o = run(&d, &["--help"]);
    let help = text(&o.stdout);
    assert!(help.contains("Exit codes"), "{help}");
    for line in [
        "  3    not found",
        "  4    the request was refused",
        "  130  interrupted",
    ] {
        assert!(help.contains(line), "{line:?} in\n{help}");
    }
}

/// `backup delete` and `schedule delete` without `--yes` and without a
/// terminal are refused before anything is sent; with `--yes` they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destructive_commands_need_yes_without_a_terminal() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let t = target(0);

    let o = run(&d, &["backup", "delete", &t, "seed-0"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(text(&o.stderr).contains("--yes"), "{}", show(&o));
    assert!(
        !text(&o.stderr).contains("FailedPrecondition"),
        "nothing was sent: {}",
        show(&o)
    );
    assert_eq!(count_jobs(&mut c, "kind=DELETE_BACKUP").await, 0);

    c.create_schedule(pb::CreateScheduleRequest {
        schedule_id: "nightly".into(),
        schedule: Some(pb::Schedule {
            target: t.clone(),
            cron: "0 2 * * *".into(),
            ..Default::default()
        }),
        validate_only: false,
    })
    .await
    .unwrap();
    let o = run(&d, &["schedule", "delete", "nightly"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(text(&o.stderr).contains("--yes"), "{}", show(&o));
    let req = || pb::GetScheduleRequest {
        name: "schedules/nightly".into(),
    };
    assert!(c.get_schedule(req()).await.is_ok(), "still there");
    let o = run(&d, &["schedule", "delete", "nightly", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let e = c.get_schedule(req()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}
