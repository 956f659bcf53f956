//! The scheduler in process, on the engine with the scripted backend and
//! a clock the test sets: firing, never at once, overlap, catch-up after
//! downtime, no double fire after a crash, pause/resume, retention.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, TimeZone, Utc};
use custos_adapter_core::{Resource, ResourceKind};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    engine::JobIndex,
    test_support::{Scripted, engine, eventually},
};

struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// 2026-06-01 12:00:00 UTC plus `s` seconds.
fn at(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(s)
}

const TARGET: &str = "backends/a/serviceInstances/x";

fn spec(cron: &str) -> ScheduleSpec {
    ScheduleSpec {
        target: TARGET.into(),
        backend: "a".into(),
        resource: Resource {
            kind: ResourceKind::ServiceInstance,
            id: "x".into(),
        },
        cron: cron.into(),
        time_zone: String::new(),
        paused: false,
        overlap: Overlap::Skip,
        catch_up: CatchUp::RunOnce,
        retention: None,
        labels: BTreeMap::new(),
        incremental: false,
    }
}

/// The same spec on the second instance (another target).
fn on_instance_y(s: &mut ScheduleSpec) {
    s.target = "backends/a/serviceInstances/y".into();
    s.resource.id = "y".into();
}

/// Stops the engine and waits for sled to let go of the data dir, so the
/// next `start` on it is a restart.
async fn stop(t: T) {
    t.engine.shutdown(Duration::from_secs(1)).await;
    drop(t);
}

struct T {
    engine: Arc<Engine>,
    sched: Arc<Scheduler>,
    clock: Arc<ManualClock>,
    backend: Arc<Scripted>,
}

async fn start(dir: &std::path::Path, now: DateTime<Utc>) -> T {
    let backend = Scripted::new();
    let engine = engine(dir, vec![("a", backend.clone(), 8)], 8).await;
    let clock = Arc::new(ManualClock(Mutex::new(now)));
    let sched = Scheduler::new(engine.clone(), clock.clone(), CancellationToken::new()).unwrap();
    T {
        engine,
        sched,
        clock,
        backend,
    }
}

impl T {
    /// Moves the clock to `t` and lets the scheduler act.
    async fn tick_at(&self, t: DateTime<Utc>) {
        self.clock.set(t);
        self.sched.tick(t).await;
    }

    fn jobs(&self, id: &str) -> Vec<JobRecord> {
        let name = format!("schedules/{id}");
        self.engine
            .list(&JobIndex::All, None, usize::MAX, |j| {
                j.schedule.as_deref() == Some(name.as_str())
            })
            .unwrap()
            .0
    }

    fn rec(&self, id: &str) -> ScheduleRecord {
        self.sched.get(id).unwrap().0
    }

    async fn all_ended(&self, id: &str) {
        let name = format!("schedules/{id}");
        let e = self.engine.clone();
        eventually("every job of the schedule ended", move || {
            e.list(&JobIndex::All, None, usize::MAX, |j| {
                j.schedule.as_deref() == Some(name.as_str())
            })
            .unwrap()
            .0
            .iter()
            .all(|j| j.state.is_terminal())
        })
        .await;
    }
}

#[tokio::test]
async fn due_times_fire_once_each_and_creating_never_fires() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    // Every second; created at a due instant: not run at once.
    let (rec, next) = t
        .sched
        .create("s".into(), spec("* * * * * *"))
        .await
        .unwrap();
    assert_eq!(rec.fired_until, at(0));
    assert_eq!(next.len(), 5);
    assert_eq!(next[0], at(1));
    t.tick_at(at(0)).await;
    assert!(t.jobs("s").is_empty(), "creating does not fire");
    for s in 1..=3 {
        t.tick_at(at(s)).await;
        t.all_ended("s").await;
    }
    // The same instant again: nothing new.
    t.tick_at(at(3)).await;
    let jobs = t.jobs("s");
    assert_eq!(jobs.len(), 3);
    let mut ids: Vec<_> = jobs.iter().map(|j| j.request_id.clone().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "one request id per due time");
    assert!(jobs.iter().all(|j| j.kind == JobKind::Backup));
    assert_eq!(t.rec("s").last_job, Some(jobs[0].id));
    assert!(t.rec("s").last_skip.is_none());
}

#[tokio::test]
async fn updating_and_resuming_never_fire_at_once_and_pauses_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    t.sched
        .create("s".into(), spec("0 * * * * *"))
        .await
        .unwrap();
    t.sched.pause("s").await.unwrap();
    assert!(t.sched.get("s").unwrap().0.paused);
    // Three due times pass while paused.
    t.tick_at(at(200)).await;
    assert!(t.jobs("s").is_empty());
    let (rec, _) = t.sched.resume("s").await.unwrap();
    let skip = rec.last_skip.unwrap();
    assert_eq!(skip.reason, SkipReason::Paused);
    assert_eq!(skip.time, at(180));
    assert!(skip.message.starts_with("3 due time"), "{}", skip.message);
    t.tick_at(at(200)).await;
    assert!(t.jobs("s").is_empty(), "resuming does not fire");
    // An update at a due instant does not fire either.
    t.clock.set(at(240));
    t.sched
        .update("s", |_| Ok::<_, ScheduleError>(spec("* * * * * *")))
        .await
        .unwrap();
    t.tick_at(at(240)).await;
    assert!(t.jobs("s").is_empty(), "updating does not fire");
    t.tick_at(at(241)).await;
    assert_eq!(t.jobs("s").len(), 1);
}

#[tokio::test]
async fn overlap_skip_records_why_and_allow_runs_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    // The backend hangs in submit: the first run stays RUNNING.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *t.backend.submit_gate.lock().unwrap() = Some(gate.clone());
    t.sched
        .create("s".into(), spec("* * * * * *"))
        .await
        .unwrap();
    t.tick_at(at(1)).await;
    t.tick_at(at(2)).await;
    assert_eq!(t.jobs("s").len(), 1);
    let skip = t.rec("s").last_skip.unwrap();
    assert_eq!(skip.reason, SkipReason::Overlap);
    assert_eq!(skip.time, at(2));
    assert!(skip.message.contains("had not ended"), "{}", skip.message);
    // RunSchedule is refused for the same reason.
    let e = t.sched.run_now("s", "test", None).await.unwrap_err();
    assert!(matches!(e, ScheduleError::Overlap(_)), "{e}");

    let mut allow = spec("* * * * * *");
    allow.overlap = Overlap::Allow;
    on_instance_y(&mut allow);
    t.sched.create("a".into(), allow).await.unwrap();
    t.tick_at(at(3)).await;
    t.tick_at(at(4)).await;
    assert_eq!(t.jobs("a").len(), 2, "ALLOW starts a run each time");
    gate.add_permits(100);
    t.all_ended("s").await;
    t.all_ended("a").await;
}

#[tokio::test]
async fn downtime_runs_once_with_run_once_and_not_at_all_with_skip() {
    let dir = tempfile::tempdir().unwrap();
    {
        let t = start(dir.path(), at(0)).await;
        t.sched
            .create("once".into(), spec("0 * * * * *"))
            .await
            .unwrap();
        let mut skip = spec("0 * * * * *");
        skip.catch_up = CatchUp::Skip;
        on_instance_y(&mut skip);
        t.sched.create("skip".into(), skip).await.unwrap();
        stop(t).await;
    }
    // Down across three due times (12:01, 12:02, 12:03); back at 12:03:30.
    let t = start(dir.path(), at(210)).await;
    t.tick_at(at(210)).await;
    t.all_ended("once").await;
    assert_eq!(t.jobs("once").len(), 1, "RUN_ONCE: one run for the window");
    assert_eq!(
        t.jobs("once")[0].request_id.as_deref(),
        Some(fire_request_id("once", at(180)).as_str())
    );
    let s = t.rec("once").last_skip.unwrap();
    assert_eq!(s.reason, SkipReason::Missed);
    assert!(s.message.contains("3 due time"), "{}", s.message);
    assert!(t.jobs("skip").is_empty(), "SKIP: none");
    let s = t.rec("skip").last_skip.unwrap();
    assert_eq!((s.reason, s.time), (SkipReason::Missed, at(180)));
    // And on time again afterwards.
    t.tick_at(at(240)).await;
    assert_eq!(t.jobs("skip").len(), 1);
    assert_eq!(t.jobs("once").len(), 2);
    t.all_ended("once").await;
    t.all_ended("skip").await;
}

/// A store in `dir` where schedule `s` (made from `spec`, every minute)
/// made the job of 12:01, and the daemon died before the schedule's
/// `fired_until` was stored.
async fn made_before_a_crash(dir: &std::path::Path, spec: ScheduleSpec) {
    let t = start(dir, at(0)).await;
    t.sched.create("s".into(), spec).await.unwrap();
    let rec = t.rec("s");
    t.engine
        .create(new_backup_job(&rec, Some(at(60))).unwrap())
        .await
        .unwrap();
    t.all_ended("s").await;
    stop(t).await;
}

#[tokio::test]
async fn a_crash_after_the_job_was_made_does_not_fire_it_again() {
    let dir = tempfile::tempdir().unwrap();
    made_before_a_crash(dir.path(), spec("0 * * * * *")).await;
    let t = start(dir.path(), at(61)).await;
    assert_eq!(t.rec("s").fired_until, at(0));
    t.tick_at(at(61)).await;
    assert_eq!(t.jobs("s").len(), 1, "the same job, not a second");
    assert_eq!(t.rec("s").fired_until, at(60));
    assert_eq!(t.rec("s").last_job, Some(t.jobs("s")[0].id));
}

/// Finding (issue 12 review): with `catch_up = SKIP`, the job of a due
/// time was made, the daemon died before the schedule's record was
/// stored, and came back after the grace period: the schedule said the due
/// time was "not run" (and pointed at no job), although its job existed
/// and ran. It ran: the schedule now says so.
#[tokio::test]
async fn a_skip_schedule_whose_job_was_made_before_a_crash_says_it_ran() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec("0 * * * * *");
    s.catch_up = CatchUp::Skip;
    made_before_a_crash(dir.path(), s).await;
    // Back 30 s after the due time: later than the grace period.
    let t = start(dir.path(), at(90)).await;
    t.tick_at(at(90)).await;
    let jobs = t.jobs("s");
    assert_eq!(jobs.len(), 1, "the same job, not a second");
    let rec = t.rec("s");
    assert_eq!(rec.fired_until, at(60));
    assert_eq!(rec.last_job, Some(jobs[0].id));
    assert_eq!(rec.last_skip, None, "it was not skipped");
}

#[tokio::test]
async fn retention_keeps_keep_last_and_leaves_other_backups_alone() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    let mut s = spec("* * * * * *");
    s.retention = Some(Retention {
        keep_last: 2,
        max_age: None,
        min_keep: 1,
    });
    t.sched.create("s".into(), s).await.unwrap();
    // A backup of the same target made by hand: never the schedule's to delete.
    let by_hand = t
        .engine
        .create(crate::test_support::backup("a", "x"))
        .await
        .unwrap();
    for i in 1..=4 {
        t.tick_at(at(i)).await;
        t.all_ended("s").await;
    }
    let started = t.sched.apply_retention("s").await.unwrap();
    let doomed: Vec<String> = started
        .iter()
        .map(|j| match &j.op {
            Operation::DeleteBackup { backup_id, .. } => backup_id.clone(),
            _ => panic!(),
        })
        .collect();
    let made: Vec<String> = t
        .jobs("s")
        .iter()
        .filter(|j| j.kind == JobKind::Backup)
        .rev()
        .filter_map(|j| j.backup_id.clone())
        .collect();
    assert_eq!(made.len(), 4);
    assert_eq!(doomed, made[..2], "the two oldest of the schedule's four");
    t.all_ended("s").await;
    // Deletions under way or done are not started again.
    assert!(t.sched.apply_retention("s").await.unwrap().is_empty());
    let deleted = t.backend.deleted.lock().unwrap().clone();
    assert_eq!(deleted.len(), 2);
    let hand = t.engine.get(&by_hand.id).unwrap().unwrap();
    let b = hand.backup_id.expect("the backup made by hand has an id");
    assert!(!deleted.contains(&b), "a backup made by hand stays");
    // The deletions are the schedule's jobs, visible as such.
    assert!(
        t.jobs("s")
            .iter()
            .filter(|j| j.kind == JobKind::DeleteBackup)
            .all(|j| j.state == JobState::Succeeded)
    );
}

#[tokio::test]
async fn deleting_a_schedule_leaves_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    t.sched
        .create("s".into(), spec("* * * * * *"))
        .await
        .unwrap();
    t.tick_at(at(1)).await;
    t.all_ended("s").await;
    t.sched.delete("s").await.unwrap();
    assert!(matches!(t.sched.get("s"), Err(ScheduleError::NotFound(_))));
    assert_eq!(t.jobs("s").len(), 1);
    t.tick_at(at(5)).await;
    assert_eq!(t.jobs("s").len(), 1, "a deleted schedule does not fire");
    assert!(
        t.sched
            .create("s".into(), spec("* * * * * *"))
            .await
            .is_ok(),
        "the id is free again"
    );
    assert!(matches!(
        t.sched.create("s".into(), spec("* * * * * *")).await,
        Err(ScheduleError::AlreadyExists(_))
    ));
}

#[tokio::test]
async fn a_fire_retried_after_a_store_failure_is_not_judged_missed() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    let mut s = spec("0 * * * * *");
    s.catch_up = CatchUp::Skip;
    t.sched.create("s".into(), s).await.unwrap();
    // The store cannot flush when 12:01 is due (nor at the engine's first
    // retry): the job is written but not accepted yet.
    t.engine
        .store()
        .faults
        .fail_flushes
        .store(2, Ordering::SeqCst);
    t.tick_at(at(60)).await;
    assert!(t.jobs("s").is_empty());
    assert_eq!(t.rec("s").fired_until, at(0), "not dealt with yet");
    eventually("the engine's retried flush makes the job durable", || {
        t.jobs("s").len() == 1
    })
    .await;
    // Tried again after the wait: on time as far as catch_up goes.
    t.tick_at(at(66)).await;
    t.all_ended("s").await;
    assert_eq!(
        t.jobs("s").len(),
        1,
        "SKIP must not drop a run that a store error delayed"
    );
    assert!(t.rec("s").last_skip.is_none());
}

#[tokio::test]
async fn an_update_merges_under_the_lock_and_keeps_a_pause() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    t.sched
        .create("s".into(), spec("0 * * * * *"))
        .await
        .unwrap();
    // A client read the schedule (not paused), then someone paused it,
    // then the client's update of the cron lands: the merge sees the pause.
    t.sched.pause("s").await.unwrap();
    let (rec, _) = t
        .sched
        .update("s", |current| {
            let mut s = spec("30 * * * * *");
            s.paused = current.paused;
            Ok::<_, ScheduleError>(s)
        })
        .await
        .unwrap();
    assert!(rec.paused);
    assert_eq!(rec.cron, "30 * * * * *");
}

#[tokio::test]
async fn an_unreadable_schedule_is_reported_and_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    t.sched
        .create("good".into(), spec("0 * * * * *"))
        .await
        .unwrap();
    // A record from a newer release.
    let mut newer = t.rec("good");
    newer.id = "newer".into();
    newer.v = crate::schedule_record::SCHEDULE_VERSION + 1;
    t.engine.store().put_schedule(&newer).unwrap();
    t.engine.store().flush().await.unwrap();
    let again =
        Scheduler::new(t.engine.clone(), t.clock.clone(), CancellationToken::new()).unwrap();
    assert_eq!(again.len(), 1, "the good one is loaded");
    match again.get("newer") {
        Err(ScheduleError::FailedPrecondition(m)) => assert!(m.contains("newer release"), "{m}"),
        other => panic!("{other:?}"),
    }
    // It can be deleted.
    again.delete("newer").await.unwrap();
    assert!(t.engine.store().get_schedule("newer").unwrap().is_none());
}

/// `spec(cron)` on instance `inst`, overlap ALLOW.
fn spec_on(cron: &str, inst: &str) -> ScheduleSpec {
    let mut s = spec(cron);
    s.target = format!("backends/a/serviceInstances/{inst}");
    s.resource.id = inst.into();
    s.overlap = Overlap::Allow;
    s
}

impl T {
    /// Every job, by the schedule that made it.
    fn jobs_by_schedule(&self) -> HashMap<String, Vec<JobRecord>> {
        let mut by = HashMap::<String, Vec<JobRecord>>::new();
        for j in self
            .engine
            .list(&JobIndex::All, None, usize::MAX, |_| true)
            .unwrap()
            .0
        {
            let s = j.schedule.clone().unwrap_or_default();
            by.entry(s.trim_start_matches("schedules/").to_string())
                .or_default()
                .push(j);
        }
        by
    }

    /// Schedules `s0`… on seven instances, every minute at :00.
    async fn many(&self, n: usize, catch_up: CatchUp) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let id = format!("s{i}");
            let mut s = spec_on("0 * * * * *", &format!("x{}", i % 7));
            s.catch_up = catch_up;
            self.sched.create(id.clone(), s).await.unwrap();
            ids.push(id);
        }
        ids
    }

    /// Each of `ids` has exactly one job, for `due`: durable (in the store,
    /// found by its request id), listed, and the schedule's stored record
    /// says so.
    fn fired_once(&self, ids: &[String], due: DateTime<Utc>) {
        let by = self.jobs_by_schedule();
        for id in ids {
            let jobs = by.get(id).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(jobs.len(), 1, "{id}: {jobs:?}");
            let j = &jobs[0];
            let rid = fire_request_id(id, due);
            assert_eq!(j.request_id.as_deref(), Some(rid.as_str()));
            let store = self.engine.store();
            assert_eq!(store.job_for_request(&rid).unwrap(), Some(j.id));
            assert!(store.get_job(&j.id).unwrap().is_some());
            let rec = self.rec(id);
            assert_eq!((rec.fired_until, rec.last_job), (due, Some(j.id)), "{id}");
            let stored = store.get_schedule(id).unwrap().unwrap();
            assert_eq!(stored.fired_until, due, "{id}: stored");
            assert_eq!(stored.last_job, Some(j.id), "{id}: stored");
        }
    }
}

/// Issue 12 (P5): many schedules due at the same second fire in batches:
/// each exactly once, its job durable and listed, its record stored; one
/// whose lock is taken at the time (an API call) fires on its own once
/// free; a paused one does not fire; the same instant again fires nothing.
#[tokio::test]
async fn many_schedules_due_at_once_fire_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    // More than two batches.
    let ids = t.many(2 * FIRE_BATCH + 9, CatchUp::RunOnce).await;
    let mut paused = spec_on("0 * * * * *", "x0");
    paused.paused = true;
    t.sched.create("paused".into(), paused).await.unwrap();
    let busy = t.sched.hold("s1", false).await.unwrap();
    t.clock.set(at(60));
    let sched = t.sched.clone();
    let tick = tokio::spawn(async move { sched.tick(at(60)).await });
    eventually("the others fire", || {
        t.jobs_by_schedule().len() == ids.len() - 1
    })
    .await;
    assert!(t.jobs("s1").is_empty(), "not while its lock is held");
    // The tick does not wait for it.
    tokio::time::timeout(Duration::from_secs(5), tick)
        .await
        .expect("the tick waited for a held lock")
        .unwrap();
    drop(busy);
    eventually("it fires once free", || t.jobs("s1").len() == 1).await;
    t.fired_once(&ids, at(60));
    assert!(t.jobs("paused").is_empty());
    let all = |t: &T| {
        t.engine
            .list(&JobIndex::All, None, usize::MAX, |_| true)
            .unwrap()
            .0
            .len()
    };
    assert_eq!(all(&t), ids.len());
    t.tick_at(at(60)).await;
    t.tick_at(at(61)).await;
    assert_eq!(all(&t), ids.len(), "nothing new before the next due time");
    t.tick_at(at(120)).await;
    assert_eq!(all(&t), 2 * ids.len(), "one more each at the next");
    let by = t.jobs_by_schedule();
    assert!(ids.iter().all(|id| by[id].len() == 2));
}

/// Issue 12 (P5): the jobs of a batch were made durable, and the daemon
/// died before the schedules' records were stored: after the restart each
/// schedule finds its job again, none fires twice.
#[tokio::test]
async fn a_crash_after_a_batch_of_jobs_was_made_fires_none_of_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let t = start(dir.path(), at(0)).await;
        let ids = t.many(FIRE_BATCH + 9, CatchUp::RunOnce).await;
        let news = ids
            .iter()
            .map(|id| new_backup_job(&t.rec(id), Some(at(60))).unwrap())
            .collect();
        for r in t.engine.create_many(news).await {
            r.unwrap();
        }
        stop(t).await;
        ids
    };
    let t = start(dir.path(), at(61)).await;
    assert!(ids.iter().all(|id| t.rec(id).fired_until == at(0)));
    let before: HashMap<String, Uuid> = t
        .jobs_by_schedule()
        .into_iter()
        .map(|(s, j)| (s, j[0].id))
        .collect();
    t.tick_at(at(61)).await;
    t.fired_once(&ids, at(60));
    let by = t.jobs_by_schedule();
    assert!(
        ids.iter().all(|id| by[id][0].id == before[id]),
        "the same jobs"
    );
}

/// Issue 12 (P5): when the flush of a batch's jobs fails, none of them is
/// accepted yet and their schedules are not marked fired; the retry fires
/// each of them exactly once (the job written for its due time, once
/// durable), not judged missed (catch_up SKIP).
#[tokio::test]
async fn a_batch_whose_flush_fails_fires_nothing_then_each_once() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    let ids = t.many(FIRE_BATCH + 9, CatchUp::Skip).await;
    let store = t.engine.store();
    // The batch's flush fails, and the engine's first retry of it.
    store.faults.fail_flushes.store(2, Ordering::SeqCst);
    t.tick_at(at(60)).await;
    let by = t.jobs_by_schedule();
    let mut failed = 0;
    for id in &ids {
        match by.get(id).map(Vec::len).unwrap_or(0) {
            0 => {
                failed += 1;
                assert_eq!(t.rec(id).fired_until, at(0), "{id}: not fired yet");
                let rid = fire_request_id(id, at(60));
                assert!(
                    store.job_for_request(&rid).unwrap().is_some(),
                    "{id}: its job is written, its outcome unknown"
                );
            }
            1 => assert_eq!(t.rec(id).fired_until, at(60), "{id}"),
            n => panic!("{id}: {n} jobs"),
        }
    }
    assert!(failed > 0, "the first flush failed");
    eventually("the engine's retried flush makes the jobs durable", || {
        t.jobs_by_schedule().len() == ids.len()
    })
    .await;
    t.tick_at(at(66)).await;
    t.fired_once(&ids, at(60));
    assert!(ids.iter().all(|id| t.rec(id).last_skip.is_none()));
}

/// Issue 12 (P5): retention looks only at schedules that have one: a
/// schedule without retention whose lock is held (a long API call) does
/// not hold up the retention of the others (it used to take every
/// schedule's lock after every scheduled backup, and all of them after
/// falling behind).
#[tokio::test]
async fn retention_is_not_held_up_by_schedules_without_retention() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    tokio::spawn(t.sched.clone().run_retention());
    let mut kept = spec_on("* * * * * *", "x");
    kept.retention = Some(Retention {
        keep_last: 1,
        max_age: None,
        min_keep: 1,
    });
    t.sched.create("kept".into(), kept).await.unwrap();
    t.sched
        .create("plain".into(), spec_on("* * * * * *", "y"))
        .await
        .unwrap();
    // Both run once; the plain one's lock is then taken before its job's
    // end is announced.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *t.backend.submit_gate.lock().unwrap() = Some(gate.clone());
    t.tick_at(at(1)).await;
    let held = t.sched.hold("plain", false).await.unwrap();
    gate.add_permits(1000);
    t.all_ended("plain").await;
    t.all_ended("kept").await;
    // A second backup of "kept": its retention deletes the first.
    t.sched.run_now("kept", "test", None).await.unwrap();
    let b = t.backend.clone();
    eventually("the older backup of kept is deleted", move || {
        b.deleted.lock().unwrap().len() == 1
    })
    .await;
    drop(held);
}

/// Finding (issue 12 review): a tick waited for every due schedule, so one
/// whose lock was held (a slow retention, a long API call) held up every
/// other schedule's next due time until it was free. Now it fires on its
/// own once free, exactly once, and the others keep their times.
#[tokio::test]
async fn a_schedule_whose_lock_is_held_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let t = start(dir.path(), at(0)).await;
    for (id, inst) in [("slow", "x0"), ("other", "x1")] {
        t.sched
            .create(id.into(), spec_on("0 * * * * *", inst))
            .await
            .unwrap();
    }
    let busy = t.sched.hold("slow", false).await.unwrap();
    for (n, due) in [(1, at(60)), (2, at(120))] {
        tokio::time::timeout(Duration::from_secs(5), t.tick_at(due))
            .await
            .expect("the tick waited for a schedule whose lock is held");
        assert_eq!(t.jobs("other").len(), n, "the other fired at {due}");
    }
    // Its lock is taken: it is passed by, and not due again at once (the
    // run loop would spin).
    let next = t.sched.tick(at(120)).await.unwrap();
    assert!(next > at(120), "next due {next}");
    assert!(t.jobs("slow").is_empty(), "not while its lock is held");
    drop(busy);
    eventually("it fires once its lock is free", || {
        t.jobs("slow").len() == 1
    })
    .await;
    let rid = fire_request_id("slow", at(60));
    assert_eq!(t.jobs("slow")[0].request_id.as_deref(), Some(rid.as_str()));
    // Then it keeps its times: 120 (passed by while held) and 180.
    t.tick_at(at(121)).await;
    t.tick_at(at(180)).await;
    let mut fired: Vec<String> = t
        .jobs("slow")
        .into_iter()
        .filter_map(|j| j.request_id)
        .collect();
    fired.sort();
    let want: Vec<String> = [60, 120, 180]
        .map(|s| fire_request_id("slow", at(s)))
        .into();
    assert_eq!(fired, want);
    assert_eq!(t.jobs("other").len(), 3);
}
