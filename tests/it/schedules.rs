//! Backup schedules through the real daemon: on-time firing, never on
//! create, catch-up after the daemon was down (RUN_ONCE and SKIP), no
//! double fire across `kill -9`, retention against the VBS simulator,
//! refused input, and the CLI.

use std::{path::Path, time::Duration};

use chrono::{DateTime, Utc};
use custos::api::pb;
use custos_cf_v3::sim::{SimConfig, Simulator};
use custos_vbs_v2::sim::SimConfig as VbsSimConfig;
use tonic::Code;

use crate::harness::*;

fn when(t: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    let t = t.unwrap();
    DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
}

/// The due time a scheduled job was made for (from its request id).
fn due_of(j: &pb::Job) -> DateTime<Utc> {
    let ms: i64 = j.request_id.rsplit('/').next().unwrap().parse().unwrap();
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn schedule(target: String, cron: &str) -> pb::Schedule {
    pb::Schedule {
        target,
        cron: cron.into(),
        ..Default::default()
    }
}

async fn create(c: &mut Client, id: &str, s: pb::Schedule) -> pb::Schedule {
    c.create_schedule(pb::CreateScheduleRequest {
        schedule_id: id.into(),
        schedule: Some(s),
        validate_only: false,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn jobs_of(c: &mut Client, id: &str) -> Vec<pb::Job> {
    c.list_jobs(pb::ListJobsRequest {
        page_size: 1000,
        page_token: String::new(),
        filter: format!("schedule=\"schedules/{id}\""),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .jobs
}

async fn get(c: &mut Client, id: &str) -> pb::Schedule {
    c.get_schedule(pb::GetScheduleRequest {
        name: format!("schedules/{id}"),
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn an_every_second_schedule_fires_on_time_and_not_on_create() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(50),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let s = create(&mut c, "every-second", schedule(target(0), "* * * * * *")).await;
    assert_eq!(s.name, "schedules/every-second");
    assert_eq!(s.next_run_times.len(), 5);
    let created = when(&s.create_time);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let jobs = jobs_of(&mut c, "every-second").await;
    assert!((2..=5).contains(&jobs.len()), "{} jobs", jobs.len());
    for j in &jobs {
        let due = due_of(j);
        assert!(due > created, "no run for the creation instant");
        assert_eq!(due.timestamp_subsec_millis(), 0, "on whole seconds");
        let late = when(&j.create_time) - due;
        assert!(
            // Generous: the suite shares two cores with the build.
            late >= chrono::Duration::zero() && late < chrono::Duration::seconds(2),
            "job made {late} after its due time"
        );
        assert_eq!(j.schedule, "schedules/every-second");
        assert_eq!(j.created_by, "schedules/every-second");
        assert_eq!(j.target, target(0));
    }
    let s = get(&mut c, "every-second").await;
    assert!(!s.last_job.is_empty());
    // RunSchedule: a job now, outside the cron.
    c.pause_schedule(pb::PauseScheduleRequest {
        name: "schedules/every-second".into(),
        validate_only: false,
    })
    .await
    .unwrap();
    // Overlap SKIP: RunSchedule waits for no one, so let the last run end.
    let last = get(&mut c, "every-second").await.last_job;
    wait_done(&mut c, &last, Duration::from_secs(20)).await;
    let n = jobs_of(&mut c, "every-second").await.len();
    let j = c
        .run_schedule(pb::RunScheduleRequest {
            name: "schedules/every-second".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.schedule, "schedules/every-second");
    assert_eq!(j.created_by, "ops", "RunSchedule: the caller");
    let j = wait_done(&mut c, &j.name, Duration::from_secs(20)).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}", j.message);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(jobs_of(&mut c, "every-second").await.len(), n + 1, "paused");
}

/// Stops the daemon (kill -9) for `down`, then starts it again; returns
/// the new daemon and the instants it went down and came back.
async fn down_for(
    d: Daemon,
    sim: &Simulator,
    dir: &Path,
    down: Duration,
) -> (Daemon, DateTime<Utc>, DateTime<Utc>) {
    let mut d = d;
    d.kill9();
    let stopped = Utc::now();
    tokio::time::sleep(down).await;
    let back = Utc::now();
    let d = d.restart_after_kill9(sim, dir);
    (d, stopped, back)
}

#[tokio::test]
async fn downtime_is_caught_up_once_or_skipped_and_kill_nine_never_fires_twice() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(50),
            ..Default::default()
        },
        2,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    // Overlap ALLOW: under load a run may outlast two seconds, and an
    // overlap skip would replace the "missed" record this test reads.
    let mut once = schedule(target(0), "*/2 * * * * *");
    once.overlap_policy = pb::schedule::OverlapPolicy::Allow as i32;
    create(&mut c, "once", once).await;
    let mut skip = schedule(target(1), "*/2 * * * * *");
    skip.catch_up = pb::schedule::CatchUp::Skip as i32;
    skip.overlap_policy = pb::schedule::OverlapPolicy::Allow as i32;
    create(&mut c, "skip", skip).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Down across at least three due times.
    let (d, stopped, back) = down_for(d, &sim, dir.path(), Duration::from_millis(6500)).await;
    let mut c = d.op().await;
    // The daemon records the window it missed in last_skip (its latest due
    // time); RUN_ONCE runs exactly that one, SKIP none of the window.
    let mut skips = Vec::new();
    for id in ["once", "skip"] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let k = loop {
            let s = get(&mut c, id).await;
            if let Some(k) = s.last_skip.filter(|k| k.reason == "missed") {
                break k;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id}: no missed window recorded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(k.message.contains("due time"), "{}", k.message);
        skips.push(when(&k.time));
    }
    assert!(
        skips
            .iter()
            .all(|t| *t > stopped && *t < back + chrono::Duration::seconds(5))
    );
    let in_window = |jobs: &[pb::Job], until: DateTime<Utc>| {
        jobs.iter()
            .filter(|j| {
                let due = due_of(j);
                due > stopped && due <= until
            })
            .map(due_of)
            .collect::<Vec<_>>()
    };
    let once = jobs_of(&mut c, "once").await;
    assert_eq!(
        in_window(&once, skips[0]),
        [skips[0]],
        "RUN_ONCE: one run, for the latest due time of the missed window"
    );
    let skipped = jobs_of(&mut c, "skip").await;
    assert!(in_window(&skipped, skips[1]).is_empty(), "SKIP: none");

    // kill -9 at once after fires, twice: never two jobs for a due time.
    let mut d = d;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(2100)).await;
        d = down_for(d, &sim, dir.path(), Duration::from_millis(10))
            .await
            .0;
    }
    let mut c = d.op().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in ["once", "skip"] {
        let jobs = jobs_of(&mut c, id).await;
        let mut dues: Vec<i64> = jobs.iter().map(|j| due_of(j).timestamp_millis()).collect();
        let n = dues.len();
        dues.sort();
        dues.dedup();
        assert_eq!(dues.len(), n, "{id}: one job per due time");
    }
}

#[tokio::test]
async fn retention_deletes_the_schedules_old_backups_on_vbs_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (vbs, ids, d) = start_vbs(
        dir.path(),
        VbsSimConfig {
            backup_duration: Duration::from_millis(100),
            delete_duration: Duration::from_millis(100),
            ..Default::default()
        },
    )
    .await;
    let mut c = d.op().await;
    let target = format!("backends/vbs/volumes/{}", ids.volume_id);
    let mut s = schedule(target.clone(), "* * * * * *");
    s.retention = Some(pb::Retention {
        keep_last: 2,
        ..Default::default()
    });
    create(&mut c, "keep-two", s).await;
    // Five or so runs, a deletion after each from the third on.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    c.pause_schedule(pb::PauseScheduleRequest {
        name: "schedules/keep-two".into(),
        validate_only: false,
    })
    .await
    .unwrap();
    // Wait until every run and every deletion it caused has ended (each
    // success starts retention, which may start one more deletion).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let jobs = loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let jobs = jobs_of(&mut c, "keep-two").await;
        if jobs.iter().all(is_terminal) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let again = jobs_of(&mut c, "keep-two").await;
            if again.len() == jobs.len() && again.iter().all(is_terminal) {
                break again;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs did not settle"
        );
    };
    let made: Vec<&pb::Job> = jobs
        .iter()
        .filter(|j| j.kind == pb::job::Kind::Backup as i32 && state(j) == "SUCCEEDED")
        .collect();
    assert!(made.len() >= 3, "{} backups", made.len());
    let deletes: Vec<&pb::Job> = jobs
        .iter()
        .filter(|j| j.kind == pb::job::Kind::DeleteBackup as i32)
        .collect();
    assert!(!deletes.is_empty());
    assert!(
        deletes.iter().all(|j| state(j) == "SUCCEEDED"),
        "{deletes:?}"
    );
    // On VBS: the schedule's two newest backups and the seed's, nothing else.
    let on_vbs: Vec<String> = vbs
        .backups()
        .into_iter()
        .filter(|b| b.volume_id == ids.volume_id)
        .map(|b| b.id)
        .collect();
    assert!(on_vbs.contains(&ids.backup_id), "the seed's backup stays");
    let ours: Vec<&String> = on_vbs.iter().filter(|b| **b != ids.backup_id).collect();
    assert_eq!(ours.len(), 2, "{on_vbs:?}");
    // The newest two of the schedule's (jobs are newest first).
    for j in made.iter().take(2) {
        assert!(ours.contains(&&j.backup_id), "{}", j.backup_id);
    }
}

// The CLI runs as a blocking child process: the simulator needs a thread
// of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_by_field_and_the_cli_drives_one() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let mut bad = schedule(target(0), "61 * * * *");
    bad.time_zone = "Europe/Berln".into();
    bad.retention = Some(pb::Retention {
        keep_last: 3,
        ..Default::default()
    });
    let e = c
        .create_schedule(pb::CreateScheduleRequest {
            schedule_id: "bad".into(),
            schedule: Some(bad),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut v = violations(&e);
    v.sort();
    assert_eq!(
        v,
        ["schedule.cron", "schedule.retention", "schedule.time_zone"],
        "{e:?}"
    );
    assert!(e.message().contains("Europe/Berln"), "{}", e.message());
    let e = c
        .create_schedule(pb::CreateScheduleRequest {
            schedule_id: "Bad_Id".into(),
            schedule: Some(schedule(target(0), "@daily")),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), ["schedule_id"]);
    // validate_only creates nothing.
    let v = c
        .create_schedule(pb::CreateScheduleRequest {
            schedule_id: "nightly".into(),
            schedule: Some(schedule(target(0), "0 2 * * *")),
            validate_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.next_run_times.len(), 5);
    let e = c
        .get_schedule(pb::GetScheduleRequest {
            name: "schedules/nightly".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_custos"))
            .args(args)
            .env("CUSTOS_ENDPOINT", format!("http://{}", d.addr))
            .env("CUSTOS_TOKEN", OP_TOKEN)
            .output()
            .unwrap()
    };
    let ok = |o: std::process::Output| {
        assert!(
            o.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let t = target(0);
    let out = ok(run(&[
        "schedule",
        "create",
        "nightly",
        &t,
        "--cron",
        "30 2 * * *",
        "--time-zone",
        "Europe/Berlin",
        "-o",
        "json",
    ]));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["name"], "schedules/nightly");
    assert_eq!(s["timeZone"], "Europe/Berlin");
    // 02:30 in Berlin is 00:30 or 01:30 UTC.
    let first = s["nextRunTimes"][0].as_str().unwrap().to_string();
    assert!(
        first.contains("T00:30:00") || first.contains("T01:30:00"),
        "{first}"
    );
    assert!(ok(run(&["schedule", "list"])).contains("schedules/nightly"));
    // validate_only on update changes nothing.
    let v = c
        .update_schedule(pb::UpdateScheduleRequest {
            schedule: Some(pb::Schedule {
                name: "schedules/nightly".into(),
                cron: "0 4 * * *".into(),
                ..Default::default()
            }),
            update_mask: vec!["cron".into()],
            validate_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.cron, "0 4 * * *");
    assert_eq!(get(&mut c, "nightly").await.cron, "30 2 * * *");
    // No mask (AIP-134): only the fields set change; a pause stays.
    c.pause_schedule(pb::PauseScheduleRequest {
        name: "schedules/nightly".into(),
        validate_only: false,
    })
    .await
    .unwrap();
    let u = c
        .update_schedule(pb::UpdateScheduleRequest {
            schedule: Some(pb::Schedule {
                name: "schedules/nightly".into(),
                cron: "45 2 * * *".into(),
                ..Default::default()
            }),
            update_mask: vec![],
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.cron, "45 2 * * *");
    assert!(u.paused, "still paused");
    assert_eq!(u.time_zone, "Europe/Berlin");
    // The scheduler's request ids are not the clients'.
    let mut r = backup_req(0, "custos-schedule/nightly/1800000000000");
    r.target = t.clone();
    let e = c.create_backup(r).await.unwrap_err();
    assert_eq!(violations(&e), ["request_id"]);
    let out = ok(run(&[
        "schedule",
        "update",
        "nightly",
        "--cron",
        "0 3 * * 1-5",
        "-o",
        "json",
    ]));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["cron"], "0 3 * * 1-5");
    assert_eq!(s["timeZone"], "Europe/Berlin", "untouched by the mask");
    assert!(ok(run(&["schedule", "pause", "nightly"])).contains("paused"));
    ok(run(&["schedule", "resume", "nightly"]));
    assert!(!get(&mut c, "nightly").await.paused);
    let out = ok(run(&["schedule", "run", "nightly", "--wait", "-o", "json"]));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["state"], "SUCCEEDED");
    assert_eq!(j["schedule"], "schedules/nightly");
    assert!(ok(run(&["job", "list", "--schedule", "nightly"])).contains(&t));
    ok(run(&["schedule", "delete", "nightly", "--yes"]));
    let o = run(&["schedule", "get", "nightly"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NotFound"));
    // The job stays.
    assert!(ok(run(&["job", "list", "--schedule", "nightly"])).contains(&t));
}

/// RunSchedule with a request id is safe to retry: the retry gets the run's
/// job, even while it runs (where the overlap policy refuses a new run);
/// the same id for another schedule is refused.
#[tokio::test]
async fn run_schedule_with_a_request_id_is_idempotent() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_secs(3),
            ..Default::default()
        },
        2,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    // Due once a year: only RunSchedule runs these.
    create(&mut c, "nightly", schedule(target(0), "0 0 3 1 1 *")).await;
    create(&mut c, "other", schedule(target(1), "0 0 3 1 1 *")).await;
    let run = |name: &str, rid: &str| pb::RunScheduleRequest {
        name: format!("schedules/{name}"),
        request_id: rid.into(),
        ..Default::default()
    };
    let first = c
        .run_schedule(run("nightly", "run-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.request_id, "run-1");
    let again = c
        .run_schedule(run("nightly", "run-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.name, first.name, "the retry gets the same job");
    assert!(!is_terminal(&again), "and the job was still running");
    let e = c.run_schedule(run("nightly", "")).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "a new run overlaps: {e:?}"
    );
    let e = c.run_schedule(run("other", "run-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = c
        .run_schedule(run("nightly", "custos-mine"))
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["request_id"]);
    let done = wait_done(&mut c, &first.name, Duration::from_secs(30)).await;
    assert_eq!(state(&done), "SUCCEEDED", "{}", done.message);
    assert_eq!(jobs_of(&mut c, "nightly").await.len(), 1);
    assert_eq!(sim.counters().backup_submits, 1);
}

/// Issue 12 (P5): hundreds of schedules due in the same second are fired
/// in batches (jobs made durable together, then the schedules' records);
/// the daemon is killed (-9) at different points of that, and started
/// again at once: every schedule has exactly one job for each of those
/// due times and for the next one, none lost, none twice.
#[tokio::test]
async fn many_schedules_due_together_survive_kill_nine_without_loss_or_duplicate() {
    const N: usize = 300;
    const PERIOD: i64 = 5;
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(20),
            ..Default::default()
        },
        10,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    for i in 0..N {
        let mut s = schedule(target(i % 10), &format!("*/{PERIOD} * * * * *"));
        s.overlap_policy = pb::schedule::OverlapPolicy::Allow as i32;
        create(&mut c, &format!("m{i}"), s).await;
    }
    let next_due = |after: DateTime<Utc>| {
        let s = (after.timestamp() / PERIOD + 1) * PERIOD;
        DateTime::from_timestamp(s, 0).unwrap()
    };
    let until = |t: DateTime<Utc>| (t - Utc::now()).to_std().unwrap_or_default();
    // Killed shortly after a due second, twice (within the firing of the
    // 300, in a debug build here: 44 of them had started at +60 ms).
    let mut d = d;
    let mut dues = Vec::new();
    for after_ms in [60, 130] {
        let due = next_due(Utc::now());
        tokio::time::sleep(until(due + chrono::Duration::milliseconds(after_ms))).await;
        d = d.restart_after_kill9(&sim, dir.path());
        dues.push(due);
    }
    // And the next due time with the daemon up.
    let last = next_due(Utc::now());
    dues.push(last);
    tokio::time::sleep(until(last + chrono::Duration::milliseconds(2500))).await;
    let mut c = d.op().await;
    let mut by: std::collections::HashMap<String, Vec<DateTime<Utc>>> = Default::default();
    let mut token = String::new();
    loop {
        let p = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for j in &p.jobs {
            by.entry(j.schedule.clone()).or_default().push(due_of(j));
        }
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    for i in 0..N {
        let name = format!("schedules/m{i}");
        let mut got = by.remove(&name).unwrap_or_default();
        let n = got.len();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), n, "{name}: two jobs for one due time: {got:?}");
        for due in &dues {
            assert!(
                got.contains(due),
                "{name}: no job for {due}: {got:?}\n{}",
                d.logs()
            );
        }
    }
}
