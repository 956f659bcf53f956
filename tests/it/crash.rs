//! kill -9 of the daemon with jobs in flight: a restart on the same data
//! dir finishes every job and submits nothing twice.

use std::time::Duration;

use custos::api::pb;
use custos_cf_v3::sim::SimConfig;

use crate::harness::*;

/// The generated config with `store_engine` set.
fn on(engine: &str) -> Opts {
    Opts {
        extra: format!("store_engine = \"{engine}\""),
        ..Opts::default()
    }
}

#[tokio::test]
async fn kill_nine_with_fifty_jobs_in_flight_then_resume() {
    kill_nine_with_fifty_jobs_in_flight(&Opts::default()).await;
}

/// The same with `store_engine = "redb"`: what was acknowledged (a
/// creation, each change a driver flushed before acting) survives kill -9.
#[tokio::test]
async fn kill_nine_with_fifty_jobs_in_flight_then_resume_on_redb() {
    let dir = kill_nine_with_fifty_jobs_in_flight(&on("redb")).await;
    let data = dir.path().join("data");
    assert!(data.join("custos.redb").is_file());
    assert!(!data.join("db").exists(), "no sled store beside it");
}

async fn kill_nine_with_fifty_jobs_in_flight(opts: &Opts) -> tempfile::TempDir {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(1500),
            ..Default::default()
        },
        50,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), opts);
    let mut c = d.op().await;
    let mut names = Vec::new();
    for i in 0..50 {
        names.push(start_backup(&mut c, i, &format!("crash-{i}")).await.name);
    }
    // Some submitted, some polling, maybe some between intent and handle.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = sim.counters().backup_submits;
    let d = d.restart_after_kill9(&sim, dir.path());
    let mut c = d.op().await;
    expect_all_succeed(&mut c, &names, Duration::from_secs(90), &d).await;
    assert_eq!(
        sim.counters().backup_submits,
        50,
        "submitted before the kill: {before}"
    );
    for i in 0..50 {
        assert_eq!(sim.backups(&inst(i)).len(), 2, "instance {i}");
    }
    // Idempotency keys survived the crash too.
    let again = start_backup(&mut c, 7, "crash-7").await;
    assert_eq!(again.name, names[7]);
    let list = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 100,
            page_token: String::new(),
            filter: "state=SUCCEEDED".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.jobs.len(), 50);
    drop(d);
    dir
}

/// The store writes a creation key by key on sled (its record last, so
/// a crash keeps a prefix of it). Killed during a burst of restores sent
/// at once with request ids, the daemon comes back with each request
/// either made (its retry gets that job) or not (its retry makes it): a
/// retry is never refused for good, and no instance is restored twice.
#[tokio::test]
async fn kill_nine_in_a_burst_of_restores_then_each_retry_gets_one_job() {
    const N: usize = 40;
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(300),
            ..Default::default()
        },
        N,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(d.op().await);
    }
    let req = |i: usize| {
        let mut r = restore_req(i);
        r.backup_id = format!("seed-{i}");
        r.request_id = format!("00000000-0000-4000-8000-{i:012}");
        r
    };
    let mut sent = tokio::task::JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let r = req(i);
        sent.spawn(async move { (i, c.restore(r).await.map(|j| j.into_inner().name)) });
    }
    // Some answered, some in flight, some not yet sent.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let d = d.restart_after_kill9(&sim, dir.path());
    let mut before = std::collections::HashMap::new();
    while let Some(r) = sent.join_next().await {
        if let (i, Ok(name)) = r.unwrap() {
            before.insert(i, name);
        }
    }
    eprintln!("acknowledged before the kill: {} of {N}", before.len());
    let mut c = d.op().await;
    for i in 0..N {
        let name = c
            .restore(req(i))
            .await
            .unwrap_or_else(|e| panic!("the retry of request {i}: {e}\n{}", d.logs()))
            .into_inner()
            .name;
        if let Some(first) = before.get(&i) {
            assert_eq!(&name, first, "request {i} was acknowledged as another job");
        }
        let j = wait_done(&mut c, &name, Duration::from_secs(60)).await;
        assert!(
            state(&j) == "SUCCEEDED" || j.message.contains("outcome unknown"),
            "{i}: {}: {}",
            state(&j),
            j.message
        );
    }
    no_instance_restored_twice(&sim);
}

#[tokio::test]
async fn kill_nine_during_restores_never_restores_twice() {
    kill_nine_during_restores(&Opts::default()).await;
}

#[tokio::test]
async fn kill_nine_during_restores_never_restores_twice_on_redb() {
    kill_nine_during_restores(&on("redb")).await;
}

async fn kill_nine_during_restores(opts: &Opts) {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(1000),
            ..Default::default()
        },
        20,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), opts);
    let mut c = d.op().await;
    let mut names = Vec::new();
    for i in 0..20 {
        let mut r = restore_req(i);
        r.backup_id = format!("seed-{i}");
        names.push(c.restore(r).await.unwrap().into_inner().name);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d = d.restart_after_kill9(&sim, dir.path());
    let mut c = d.op().await;
    for n in &names {
        let j = wait_done(&mut c, n, Duration::from_secs(60)).await;
        // Either finished, or failed saying the outcome is unknown; never run twice.
        assert!(
            state(&j) == "SUCCEEDED" || j.message.contains("outcome unknown"),
            "{}: {}",
            state(&j),
            j.message
        );
    }
    assert!(sim.counters().restore_submits <= 20);
    no_instance_restored_twice(&sim);
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_jobs_resume() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(1500),
            ..Default::default()
        },
        2,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let a = start_backup(&mut c, 0, "").await;
    // A watch stream open across the drain.
    let mut watch = c
        .watch_job(pb::WatchJobRequest {
            name: a.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.signal("TERM");
    // The stream ends cleanly and soon, with UNAVAILABLE saying why.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("the watch stream ended with the daemon");
    // The job was still running: the stream was cut by the drain.
    let e = ended.expect("the daemon ended the stream with a status");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let status = d.child.wait().unwrap();
    assert!(status.success(), "graceful exit: {status:?}\n{}", d.logs());
    let config = d.config.clone();
    drop(d);
    let d = Daemon::start_with(&config, &sim, dir.path()).expect("restart");
    let mut c = d.op().await;
    assert_eq!(
        state(&wait_done(&mut c, &a.name, Duration::from_secs(30)).await),
        "SUCCEEDED"
    );
    assert_eq!(sim.counters().backup_submits, 1);
}

/// A Kubernetes-style gRPC probe watching health sees the drain: both the
/// overall service (`""`) and `custos.v1.BackupService` turn NOT_SERVING on
/// SIGTERM, and the daemon still exits cleanly within `shutdown_timeout`
/// although the probes keep their streams open.
#[tokio::test]
async fn health_turns_not_serving_during_the_drain() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    // The harness's config has shutdown_timeout = "2s".
    let mut d = Daemon::start(&sim, dir.path(), &Opts::default());
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch);
    let mut probes = Vec::new();
    for service in ["", "custos.v1.BackupService"] {
        let mut s = h
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = s.message().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
        probes.push((service, s));
    }
    let started = std::time::Instant::now();
    d.signal("TERM");
    for (service, s) in &mut probes {
        let next = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .unwrap_or_else(|_| panic!("{service:?}: no health change during the drain"))
            .unwrap()
            .unwrap();
        assert_eq!(next.status(), ServingStatus::NotServing, "{service:?}");
    }
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", d.logs());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "exited within shutdown_timeout (and some slack): {:?}",
        started.elapsed()
    );
}

/// The names of sled's page-table snapshots in the daemon's store.
fn sled_snapshots(data: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("db"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
        .collect();
    v.sort();
    v
}

/// Issue 12 (P4): sled reads every log message written since its last
/// snapshot at each open, and writes a snapshot only while it opens. A
/// graceful stop now opens the store once more once the daemon is done
/// with it, so that the next start reads only what was written after
/// (a kill -9 does not: its next start reads the log). The daemon says
/// so in its log, exits 0, and the next start has every job.
#[tokio::test]
async fn a_graceful_stop_checkpoints_the_store_for_the_next_start() {
    let sim = sim(SimConfig::default(), 20).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let names = create_backups(&mut c, 0..20).await;
    expect_all_succeed(&mut c, &names, Duration::from_secs(30), &d).await;
    drop(c);
    let before = sled_snapshots(&data);
    d.signal("TERM");
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", d.logs());
    assert!(
        d.logs().contains("store checkpointed"),
        "the stop says it checkpointed:\n{}",
        d.logs()
    );
    let after = sled_snapshots(&data);
    assert!(
        after.last() > before.last(),
        "a newer snapshot: {before:?} then {after:?}"
    );
    let config = d.config.clone();
    drop(d);
    let d = Daemon::start_with(&config, &sim, dir.path()).expect("restart");
    let mut c = d.op().await;
    for name in &names {
        let job = c
            .get_job(pb::GetJobRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state(&job), "SUCCEEDED", "{name}");
    }
}

/// Review finding: `systemctl reload` (SIGHUP) ended a daemon without
/// `[tls]` (the signal's default action). It is logged and ignored.
#[tokio::test]
async fn sighup_without_tls_does_not_end_the_daemon() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&sim, dir.path(), &Opts::default());
    for _ in 0..2 {
        d.signal("HUP");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.logs().contains("SIGHUP: nothing to reload") {
        assert!(std::time::Instant::now() < deadline, "{}", d.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.child.try_wait().unwrap().is_none(), "still running");
    let mut c = d.op().await;
    c.list_backends(pb::ListBackendsRequest::default())
        .await
        .unwrap();
}

/// A data dir that holds the other engine's store: the daemon does not
/// serve (exits non-zero) and says why, naming `store_engine` and the path
/// found; `config check` says the same; the store is left as it was.
#[tokio::test]
async fn a_data_dir_of_the_other_engine_is_refused() {
    let sim = sim(SimConfig::default(), 1).await;
    for (first, second) in [("sled", "redb"), ("redb", "sled")] {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::start(&sim, dir.path(), &on(first));
        let mut c = d.op().await;
        let job = start_backup(&mut c, 0, "before").await;
        d.kill9();
        drop(d);
        let data = dir.path().join("data");
        let found = data.join(if first == "sled" { "db" } else { "custos.redb" });
        assert!(found.exists(), "{}", found.display());

        let config = dir.path().join("other.toml");
        std::fs::write(&config, crate::harness::config(&sim, &data, &on(second))).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_custos"))
            .args(["config", "check"])
            .arg(&config)
            .env("CUSTOS_IT_OP", OP_TOKEN)
            .env("CUSTOS_IT_RO", RO_TOKEN)
            .env("CUSTOS_IT_CF_SECRET", sim.config().client_secret)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{first} -> {second}: {said}");
        assert!(said.contains("store_engine") && said.contains(&found.display().to_string()));

        let logs = match Daemon::start_with(&config, &sim, dir.path()) {
            Err(logs) => logs,
            Ok(mut d) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                let status = loop {
                    if let Some(s) = d.child.try_wait().unwrap() {
                        break s;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{first} -> {second}: still running\n{}",
                        d.logs()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                };
                assert!(!status.success(), "{first} -> {second}: {status:?}");
                d.logs()
            }
        };
        for want in [
            "store_engine".to_string(),
            format!("\"{second}\""),
            found.display().to_string(),
            format!("holds a {first} store"),
        ] {
            assert!(
                logs.contains(&want),
                "{first} -> {second}: {want} not in\n{logs}"
            );
        }
        let made = data.join(if second == "sled" {
            "db"
        } else {
            "custos.redb"
        });
        assert!(
            !made.exists(),
            "{first} -> {second}: created {}",
            made.display()
        );

        // The first engine still has the job.
        let d = Daemon::start(&sim, dir.path(), &on(first));
        let mut c = d.op().await;
        let j = c
            .get_job(pb::GetJobRequest {
                name: job.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(j.name, job.name);
    }
}

/// Finding (issue 12, P4): the daemon bound its port and printed
/// `listening` before it had opened its store, so while a large store
/// opened, connections were accepted and nothing answered: a health probe
/// hung instead of being told. Now it listens only once the store is
/// open, so a probe right after `listening` is answered.
/// What it relies on: opening this store takes longer than the 500 ms the
/// probe is given (0.57 s from spawn to `listening` here, debug build);
/// on a much faster machine the old order could pass it.
/// `a_daemon_that_cannot_listen_drives_no_job` checks the order of
/// listening and resuming without timing.
#[tokio::test]
async fn a_probe_is_answered_as_soon_as_the_daemon_says_it_listens() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A store that takes a while to open: many finished jobs written
    // since it was last opened (sled reads its log on open).
    let finished = (0..40_000)
        .map(|_| {
            let mut r = backup_record(0);
            r.state = custos::job::JobState::Succeeded;
            r.end_time = Some(chrono::Utc::now());
            r.message = "x".repeat(1500);
            r
        })
        .collect();
    seed_store(&data, finished);
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_millis(500),
        HealthClient::new(ch).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("a health check right after `listening` got no answer")
    .unwrap();
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
}

/// Review finding: two daemons could take the same port while both were
/// starting (with SO_REUSEADDR, two sockets may bind one address while
/// neither listens), and the one whose `listen` then failed had already
/// resumed its jobs and started its scheduler. It now listens right after
/// opening its store, so the one that cannot listen drives no job.
#[tokio::test]
async fn a_daemon_that_cannot_listen_drives_no_job() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A job waiting to run, as a stopped daemon left it.
    seed_store(&data, vec![backup_record(0)]);
    let config = dir.path().join("custos.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
allow_inline_secrets = true

[[backends]]
name = "cf"
kind = "cf_v3"
endpoint = "{endpoint}"
[backends.auth]
type = "uaa"
client_id = "{id}"
client_secret = "{secret}"
"#,
            data = data.display(),
            endpoint = sim.url(),
            id = sim.config().client_id,
            secret = sim.config().client_secret,
        ),
    )
    .unwrap();
    let cfg = custos::config::Config::load(&config).unwrap();
    // Another daemon bound the same address first, and listened first.
    let other = custos::server::bind("127.0.0.1:0").await.unwrap();
    let addr = other.local_addr().unwrap().to_string();
    let mine = custos::server::bind(&addr).await.unwrap();
    let _other = other.listen(16).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let ran = tokio::time::timeout(
        Duration::from_secs(20),
        custos::server::run(
            cfg,
            mine,
            custos::server::Mode {
                insecure: true,
                banner: None,
            },
            stop.clone(),
        ),
    )
    .await
    .expect("run returned");
    assert!(ran.is_err(), "it cannot listen");
    // Time for a driver it might have started to reach the backend.
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.cancel();
    let c = sim.counters();
    assert_eq!((c.requests, c.backup_submits), (0, 0), "{c:?}");
}

/// Each instance the simulator restored, it restored once.
fn no_instance_restored_twice(sim: &custos_cf_v3::sim::Simulator) {
    let mut per_instance = std::collections::HashMap::new();
    for r in sim.restores() {
        *per_instance.entry(r.instance).or_insert(0) += 1;
    }
    assert!(per_instance.values().all(|n| *n == 1), "{per_instance:?}");
}
