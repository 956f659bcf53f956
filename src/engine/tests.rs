//! In-process tests of the engine with a scripted backend. Retry and
//! backoff timing runs on tokio's paused clock: no real sleeps.
#![allow(clippy::unwrap_used)]

use std::{sync::atomic::Ordering, time::Duration};

use custos_adapter_core::{BackendError, ErrorKind, Progress, Reconciled};
use tokio::sync::Semaphore;

use super::*;
use crate::{
    job::Failure,
    test_support::{Scripted, backup, engine, eventually, handle, restore, timing},
};

/// Waits (on events, so a paused clock runs ahead) until the job ends;
/// returns every published version seen on the way, the last one last.
async fn until_end(e: &Engine, id: Uuid) -> Vec<JobRecord> {
    let mut rx = e.subscribe();
    let mut seen = Vec::new();
    if let Some(j) = e.get(&id).unwrap()
        && j.state.is_terminal()
    {
        return vec![j];
    }
    loop {
        let ev = rx.recv().await.unwrap();
        if ev.job.id == id {
            seen.push((*ev.job).clone());
            if ev.job.state.is_terminal() {
                return seen;
            }
        }
    }
}

/// Whether the job, as readers see it, passes `f`.
fn seen(e: &Engine, id: &Uuid, f: impl FnOnce(&JobRecord) -> bool) -> bool {
    e.get(id).ok().flatten().is_some_and(|j| f(&j))
}

/// The version a cold (parked) job was cooled with, if it is cold.
fn cold(e: &Engine, id: &Uuid) -> Option<u64> {
    match lock(&e.live).get(id) {
        Some(LiveEntry::Cold(seq)) => Some(*seq),
        _ => None,
    }
}

async fn real_wait_end(e: &Engine, id: Uuid, limit: Duration) -> JobRecord {
    tokio::time::timeout(limit, until_end(e, id))
        .await
        .unwrap_or_else(|_| panic!("job did not end: {:?}", e.get(&id).unwrap()))
        .pop()
        .unwrap()
}

/// Finding: each successful prepare reset the retry backoff, so submit
/// retries never backed off; and a failed submit counted two attempts.
#[tokio::test(start_paused = true)]
async fn submit_retries_back_off_across_attempts_and_count_each_try_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    b.with(|s| {
        for _ in 0..4 {
            s.submit
                .push_back(Err(BackendError::new(ErrorKind::Throttled, "slow down")));
        }
    });
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let j = e.create(backup("a", "i0")).await.unwrap();
    let seen = until_end(&e, j.id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, JobState::Succeeded, "{}", last.message);
    let submits = b.calls("submit");
    assert_eq!(submits.len(), 5);
    let gaps: Vec<Duration> = submits.windows(2).map(|w| w[1] - w[0]).collect();
    // Base 100 ms, doubling, jitter in [d/2, d]: the 4th wait is ≥ 400 ms.
    assert!(gaps[3] >= Duration::from_millis(400), "{gaps:?}");
    assert!(gaps[3] > gaps[0], "{gaps:?}");
    let most = seen.iter().map(|j| j.attempts).max().unwrap();
    assert_eq!(most, 4, "four failed tries, each counted once");
    assert_eq!(last.attempts, 0);
}

/// Finding: a `Retry-After` of epoch milliseconds (read as years) parked
/// the job, and a RUNNING job waiting to retry could not be cancelled.
#[tokio::test]
async fn retry_after_is_capped_and_a_job_waiting_to_retry_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let mut e429 = BackendError::new(ErrorKind::Throttled, "rate limited");
    e429.retry_after = Some(Duration::from_secs(u64::MAX / 4));
    b.with(|s| s.submit.push_back(Err(e429)));
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let mut rx = e.subscribe();
    let j = e.create(backup("a", "i0")).await.unwrap();
    let waiting = loop {
        let ev = rx.recv().await.unwrap();
        if ev.job.next_attempt_time.is_some() {
            break ev.job.clone();
        }
    };
    let wait = waiting.next_attempt_time.unwrap() - Utc::now();
    assert!(
        wait <= chrono::Duration::seconds(300 + 31),
        "capped at max_retry_after plus jitter: {wait}"
    );
    assert!(wait >= chrono::Duration::seconds(290), "{wait}");
    assert_eq!(waiting.state, JobState::Running);
    let c = e.cancel(&j.id).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled, "{}", c.message);
    assert_eq!(b.calls("submit").len(), 1);
}

/// Finding: a reconcile that found no trace at once resubmitted; a backend
/// that shows the operation late then ran it twice.
#[tokio::test(start_paused = true)]
async fn reconcile_gives_a_late_trace_time_to_show() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let mut gw = BackendError::transient("gateway timeout (504)");
    gw.maybe_applied = true;
    b.with(|s| {
        s.submit.push_back(Err(gw));
        s.reconcile.push_back(Reconciled::NotSubmitted);
        s.reconcile.push_back(Reconciled::NotSubmitted);
        s.reconcile.push_back(Reconciled::Submitted(handle()));
    });
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let j = e.create(backup("a", "i0")).await.unwrap();
    let last = until_end(&e, j.id).await.pop().unwrap();
    assert_eq!(last.state, JobState::Succeeded, "{}", last.message);
    assert_eq!(b.calls("submit").len(), 1, "never resubmitted");
    let checks = b.calls("reconcile");
    assert_eq!(checks.len(), 3);
    assert!(
        checks[2] - checks[0] >= Duration::from_secs(2),
        "{checks:?}"
    );
}

/// With no trace at all after the grace period, a backup is submitted
/// again (a second backup is harmless) — once, not at the first answer.
#[tokio::test(start_paused = true)]
async fn not_submitted_is_believed_only_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let mut reset = BackendError::transient("connection reset");
    reset.maybe_applied = true;
    b.with(|s| s.submit.push_back(Err(reset)));
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let j = e.create(backup("a", "i0")).await.unwrap();
    let last = until_end(&e, j.id).await.pop().unwrap();
    assert_eq!(last.state, JobState::Succeeded, "{}", last.message);
    let checks = b.calls("reconcile");
    assert!(checks.len() >= 3, "{checks:?}");
    let submits = b.calls("submit");
    assert_eq!(submits.len(), 2);
    assert!(submits[1] - submits[0] >= Duration::from_secs(2));
}

/// Finding: a job queued for a backend at its limit held a global permit,
/// so one slow backend stalled all the others.
#[tokio::test]
async fn a_backend_at_its_limit_does_not_stall_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Scripted::new();
    *slow.submit_gate.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    let fast = Scripted::new();
    let e = engine(
        dir.path(),
        vec![("slow", slow.clone(), 1), ("fast", fast.clone(), 4)],
        2,
    )
    .await;
    for i in 0..4 {
        e.create(backup("slow", &format!("s{i}"))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let j = e.create(backup("fast", "f0")).await.unwrap();
    let done = real_wait_end(&e, j.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded, "{}", done.message);
}

/// Finding: readers saw changes before they were durable.
#[tokio::test]
async fn readers_see_only_flushed_state() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    *b.submit_gate.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    // The first job holds the target; the second waits, PENDING.
    e.create(backup("a", "i0")).await.unwrap();
    let second = e.create(backup("a", "i0")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let gate = e.store.faults.flush_gate.clone();
    let held = gate.write().await;
    let e2 = e.clone();
    let cancel = tokio::spawn(async move { e2.cancel(&second.id).await });
    let e3 = e.clone();
    let create = tokio::spawn(async move { e3.create(backup("a", "i1")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Written, not flushed: nobody sees the cancellation or the new job.
    assert_eq!(e.get(&second.id).unwrap().unwrap().state, JobState::Pending);
    let (listed, _) = e.list(&JobIndex::All, None, 100, |_| true).unwrap();
    assert_eq!(listed.len(), 2, "the unflushed job is not listed");
    assert!(listed.iter().all(|j| j.state != JobState::Cancelled));
    drop(held);
    let c = cancel.await.unwrap().unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert_eq!(
        e.get(&second.id).unwrap().unwrap().state,
        JobState::Cancelled
    );
    create.await.unwrap().unwrap();
    assert_eq!(
        e.list(&JobIndex::All, None, 100, |_| true).unwrap().0.len(),
        3
    );
}

/// Finding: a store error inside a job's task left the job undriven at the
/// head of its target's queue, blocking the target until a restart.
#[tokio::test]
async fn a_store_error_in_a_job_restarts_its_driver_and_frees_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let gate = Arc::new(Semaphore::new(0));
    *b.submit_gate.lock().unwrap() = Some(gate.clone());
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let first = e.create(backup("a", "i0")).await.unwrap();
    let second = e.create(backup("a", "i0")).await.unwrap();
    eventually("the first job is in its submit", || {
        b.calls("submit").len() == 1
    })
    .await;
    // The write of the first job's handle fails.
    e.store.faults.fail_puts.store(1, Ordering::SeqCst);
    gate.add_permits(2);
    let done = real_wait_end(&e, first.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded, "{}", done.message);
    assert_eq!(
        b.calls("reconcile").len(),
        0,
        "the handle it had was stored on a retry, not thrown away"
    );
    let done = real_wait_end(&e, second.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded, "{}", done.message);
    assert_eq!(b.calls("submit").len(), 2, "one submit per job");
}

/// Finding: jobs of a backend removed from the config were neither listed
/// as live nor cancellable.
#[tokio::test]
async fn jobs_of_a_removed_backend_say_why_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = Store::open(dir.path()).unwrap();
        let n = backup("gone", "i0");
        let rec = JobRecord::new(n.kind, n.target, n.backend, n.op, n.labels);
        store.put_job(&rec).unwrap();
        store.flush().await.unwrap();
        rec.id
    };
    let e = engine(dir.path(), vec![], 8).await;
    let j = e.get(&id).unwrap().unwrap();
    assert_eq!(j.state, JobState::Pending);
    assert!(j.message.contains("no longer configured"), "{}", j.message);
    let c = e.cancel(&id).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled);
}

/// Finding: a cancelled job could be announced after its next change (a
/// CANCELLED followed by a PENDING), and a job ended twice.
#[tokio::test]
async fn events_of_one_job_never_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    *b.submit_gate.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let mut rx = e.subscribe();
    e.create(backup("a", "i0")).await.unwrap();
    let mut waiting = Vec::new();
    for _ in 0..20 {
        waiting.push(e.create(backup("a", "i0")).await.unwrap().id);
    }
    for id in &waiting {
        let _ = e.cancel(id).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ended = std::collections::HashSet::new();
    let mut last_seq: HashMap<Uuid, u64> = HashMap::new();
    while let Ok(ev) = rx.try_recv() {
        assert!(
            !ended.contains(&ev.job.id),
            "a change after the end: {:?}",
            ev.job.state
        );
        let prev = last_seq.insert(ev.job.id, ev.seq).unwrap_or(0);
        assert!(ev.seq > prev, "out of order");
        if ev.job.state.is_terminal() {
            ended.insert(ev.job.id);
        }
    }
    assert_eq!(ended.len(), 20);
}

/// Finding: a change whose flush failed was never published: readers saw
/// the old state until a restart.
#[tokio::test]
async fn a_change_whose_flush_failed_is_published_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    *b.submit_gate.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let first = e.create(backup("a", "i0")).await.unwrap();
    let waiting = e.create(backup("a", "i0")).await.unwrap();
    // The first job holds the target, stuck in its submit (so it writes
    // nothing more); the second says what it waits for.
    eventually("the first job submits", || {
        seen(&e, &first.id, |j| j.phase == crate::job::Phase::Submitting)
    })
    .await;
    eventually("the second job says it waits", || {
        seen(&e, &waiting.id, |j| j.message.contains("waiting for"))
    })
    .await;
    e.store.faults.fail_flushes.store(1, Ordering::SeqCst);
    assert!(
        e.cancel(&waiting.id).await.is_err(),
        "the caller hears of it"
    );
    let done = real_wait_end(&e, waiting.id, Duration::from_secs(5)).await;
    assert_eq!(done.state, JobState::Cancelled);
}

/// Issue 12: a job queued behind another on its target costs no second
/// write: its stored record is the one made at creation, and readers are
/// told what it waits for.
#[tokio::test]
async fn a_queued_job_is_not_written_again_while_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    *b.submit_gate.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let first = e.create(backup("a", "i0")).await.unwrap();
    let queued = e.create(backup("a", "i0")).await.unwrap();
    eventually("the first job runs", || {
        seen(&e, &first.id, |j| j.state == JobState::Running)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = e.get(&queued.id).unwrap().unwrap();
    assert_eq!(
        seen.message,
        format!(
            "waiting for {} to finish on the same target",
            crate::names::job_name(first.id)
        )
    );
    let stored = e.store.get_job(&queued.id).unwrap().unwrap();
    assert_eq!(stored, queued, "the record as created, not written again");
}

/// Issue 12: a job queued behind another costs a queue entry, not a task:
/// only the head of a target's queue has a driver. Cancelling a queued job
/// (even when its flush fails) does not stall the jobs behind it.
#[tokio::test]
async fn queued_jobs_get_a_driver_only_at_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let gate = Arc::new(Semaphore::new(0));
    *b.submit_gate.lock().unwrap() = Some(gate.clone());
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let first = e.create(backup("a", "i0")).await.unwrap();
    let second = e.create(backup("a", "i0")).await.unwrap();
    let third = e.create(backup("a", "i0")).await.unwrap();
    let other = e.create(backup("a", "i1")).await.unwrap();
    eventually("the heads submit", || {
        [first.id, other.id]
            .iter()
            .all(|id| seen(&e, id, |j| j.phase == crate::job::Phase::Submitting))
    })
    .await;
    {
        let drivers = lock(&e.drivers);
        assert!(drivers.contains_key(&first.id) && drivers.contains_key(&other.id));
        assert_eq!(drivers.len(), 2, "no task for the queued jobs");
    }
    e.store.faults.fail_flushes.store(1, Ordering::SeqCst);
    assert!(e.cancel(&second.id).await.is_err(), "its flush failed");
    gate.add_permits(10);
    let end = |id| real_wait_end(&e, id, Duration::from_secs(10));
    assert_eq!(end(first.id).await.state, JobState::Succeeded);
    assert_eq!(end(second.id).await.state, JobState::Cancelled);
    assert_eq!(end(third.id).await.state, JobState::Succeeded);
    assert_eq!(end(other.id).await.state, JobState::Succeeded);
}

/// Finding: a create whose caller went away before the flush left a job
/// that nobody drove.
#[tokio::test]
async fn a_create_whose_caller_left_during_the_flush_is_still_driven() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let held = e.store.faults.flush_gate.clone();
    let held = held.write().await;
    let e2 = e.clone();
    let caller = tokio::spawn(async move { e2.create(backup("a", "i0")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    caller.abort(); // the client's deadline
    drop(held);
    // Accepted once the stalled flush completes (bounded wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let jobs = loop {
        let (jobs, _) = e.list(&JobIndex::All, None, 10, |_| true).unwrap();
        if !jobs.is_empty() || tokio::time::Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(jobs.len(), 1, "the job was accepted");
    let done = real_wait_end(&e, jobs[0].id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded, "{}", done.message);
    // And the target is free for the next one.
    let next = e.create(backup("a", "i0")).await.unwrap();
    let done = real_wait_end(&e, next.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded);
}

/// Issue 12 (P1): `create`s that arrive together are written together
/// (one batch, not one each), and each still gets its own answer: the
/// same job for the same request id, a refusal for a request id reused
/// for something else.
#[tokio::test]
async fn creates_that_arrive_together_share_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let batches = || e.store.flush_stats().batches.load(Ordering::SeqCst);
    let before = batches();
    let mut callers = Vec::new();
    for i in 0..32 {
        let n = match i {
            0 | 1 => with_request("i0", Some("same")),
            // "same" again, for another instance: refused.
            31 => with_request("other", Some("same")),
            _ => with_request(&format!("i{i}"), Some(&format!("r{i}"))),
        };
        let e2 = e.clone();
        callers.push(tokio::spawn(async move { e2.create(n).await }));
    }
    let mut answers = Vec::new();
    for c in callers {
        answers.push(c.await.unwrap());
    }
    let written = batches() - before;
    assert!(written <= 4, "32 creates took {written} writes");
    let first = answers[0].as_ref().unwrap().id;
    assert_eq!(
        answers[1].as_ref().unwrap().id,
        first,
        "one job per request id"
    );
    assert!(
        matches!(&answers[31], Err(EngineError::RequestIdReused(id, _)) if id == "same"),
        "{:?}",
        answers[31]
    );
    let made: std::collections::HashSet<Uuid> = answers[..31]
        .iter()
        .map(|a| a.as_ref().unwrap().id)
        .collect();
    assert_eq!(made.len(), 30);
    for id in made {
        let done = real_wait_end(&e, id, Duration::from_secs(10)).await;
        assert_eq!(done.state, JobState::Succeeded, "{}", done.message);
    }
}

/// Review finding: a retry whose request id named a job that an earlier
/// write was still creating was answered at once: with that job, which
/// was then taken back out of the store when its flush failed (the retry
/// acknowledged with a job that no longer existed), or with NotFound. It
/// now waits until that creation has settled: here the first flush and
/// the engine's next two tries fail, and the retry is answered with the
/// job once a flush made it durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_until_the_creation_of_its_job_has_settled() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let (first, id, held) = create_with_flush_held(&e, "same").await;
    let e2 = e.clone();
    let retry = tokio::spawn(async move { e2.create(with_request("i0", Some("same"))).await });
    // The retry is read (it found the first job) and waits for the next
    // flush.
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.store.faults.fail_flushes.store(3, Ordering::SeqCst);
    drop(held);
    let err = first.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, EngineError::CreationUnknown { job, .. } if *job == id),
        "{err}"
    );
    assert!(
        !retry.is_finished(),
        "the retry was answered before the first creation settled"
    );
    let again = tokio::time::timeout(Duration::from_secs(10), retry)
        .await
        .expect("the retry is answered once it settled")
        .unwrap()
        .unwrap();
    assert_eq!(again.id, id);
    assert_eq!(e.store.faults.fail_flushes.load(Ordering::SeqCst), 0);
    let done = real_wait_end(&e, id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(b.calls("submit").len(), 1);
}

/// Finding (review of the store trait): a creation whose flush failed was
/// answered "unavailable: retry" and taken back out of the store (an
/// earlier finding: left in, it could run after a restart although its
/// caller was told it failed). But a store may keep it anyway: redb refuses every write after a failed
/// commit until it is reopened (and says the commit may have become
/// durable), and a crash before the next flush loses sled's removal. The
/// job then stayed stored with no driver, ran after the next restart
/// behind the caller's back, and a retry without its request id made a
/// second one. The answer now says that the outcome is unknown and names
/// the job; the job is kept and runs once a flush makes it durable, and a
/// retry with its request id gets it.
#[tokio::test]
async fn a_creation_whose_flush_failed_runs_once_durable_and_the_answer_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let (first, id, held) = create_with_flush_held(&e, "r1").await;
    // Its flush fails, and so would a write that takes it back out (as
    // redb's would, after a failed commit).
    e.store.faults.fail_flushes.store(1, Ordering::SeqCst);
    e.store.faults.fail_puts.store(1, Ordering::SeqCst);
    drop(held);
    let err = first.await.unwrap().unwrap_err();
    e.store.faults.fail_puts.store(0, Ordering::SeqCst);
    // The engine retries the flush; once it succeeds the job runs.
    let done = real_wait_end(&e, id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded, "{}", done.message);
    let name = crate::names::job_name(id);
    assert!(
        matches!(&err, EngineError::CreationUnknown { job, .. } if *job == id),
        "{err}"
    );
    assert!(err.to_string().contains(&name), "{err}");
    let again = e.create(with_request("i0", Some("r1"))).await.unwrap();
    assert_eq!(again.id, id, "a retry with the request id gets the job");
    assert_eq!(b.calls("submit").len(), 1, "run once");
}

/// Two jobs whose creation could not be made durable (every flush fails):
/// their ids, each created with its own request id.
async fn two_held_jobs(e: &Arc<Engine>) -> [Uuid; 2] {
    e.store
        .faults
        .fail_flushes
        .store(u32::MAX, Ordering::SeqCst);
    let mut ids = [Uuid::nil(); 2];
    for (n, id) in ids.iter_mut().enumerate() {
        let err = e
            .create(with_request(&format!("held{n}"), Some(&format!("held{n}"))))
            .await
            .unwrap_err();
        let EngineError::CreationUnknown { job, .. } = err else {
            panic!("{err}")
        };
        *id = job;
    }
    ids
}

/// Review finding: the retries in one group of jobs held after a failed
/// flush waited for their creations to settle one after the other, each
/// up to `CREATION_SETTLES`: 40 of them kept the group 20 minutes. They
/// now wait together (on the paused clock: one `CREATION_SETTLES`, not
/// two).
#[tokio::test(start_paused = true)]
async fn retries_of_held_jobs_in_one_group_wait_together() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), vec![("a", Scripted::new(), 4)], 8).await;
    let [a, b] = two_held_jobs(&e).await;
    let t0 = tokio::time::Instant::now();
    let answers = e
        .create_many(vec![
            with_request("held0", Some("held0")),
            with_request("held1", Some("held1")),
        ])
        .await;
    let waited = t0.elapsed();
    for (r, id) in answers.iter().zip([a, b]) {
        let err = r.as_ref().unwrap_err().to_string();
        assert!(err.contains(&crate::names::job_name(id)), "{err}");
        assert!(err.contains("still being made durable"), "{err}");
    }
    assert!(
        waited < CREATION_SETTLES + Duration::from_secs(5),
        "two retries of held jobs were answered after {waited:?}"
    );
}

/// Review finding: a caller whose create shared a group with a retry of a
/// held job waited for that retry (up to `CREATION_SETTLES`) before it got
/// its own answer. Each answer is now sent as soon as it is known.
#[tokio::test(start_paused = true)]
async fn a_create_does_not_wait_for_a_retry_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), vec![("a", Scripted::new(), 4)], 8).await;
    let [a, _] = two_held_jobs(&e).await;
    let t0 = tokio::time::Instant::now();
    // Sent before either task runs: the intake takes them in one group.
    let e1 = e.clone();
    let retry = tokio::spawn(async move { e1.create(with_request("held0", Some("held0"))).await });
    let e2 = e.clone();
    let other = tokio::spawn(async move {
        let r = e2.create(with_request("other", None)).await;
        (r, tokio::time::Instant::now())
    });
    let (r, answered) = other.await.unwrap();
    assert!(
        matches!(r, Err(EngineError::CreationUnknown { .. })),
        "{r:?}"
    );
    assert!(
        answered - t0 < Duration::from_secs(1),
        "the new job's caller waited {:?} for a retry in its group",
        answered - t0
    );
    let err = retry.await.unwrap().unwrap_err().to_string();
    assert!(err.contains(&crate::names::job_name(a)), "{err}");
}

/// Cancel is refused once a submit may have been sent, and a job
/// cancelled while it prepares sends nothing.
#[tokio::test]
async fn cancel_only_before_anything_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let submit = Arc::new(Semaphore::new(0));
    *b.submit_gate.lock().unwrap() = Some(submit.clone());
    let prepare = Arc::new(Semaphore::new(0));
    *b.prepare_gate.lock().unwrap() = Some(prepare.clone());
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;

    let j = e.create(backup("a", "i0")).await.unwrap();
    eventually("preparing", || b.calls("prepare").len() == 1).await;
    let c = e.cancel(&j.id).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled, "cancelled while preparing");
    prepare.add_permits(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.calls("submit").len(), 0, "nothing sent after the cancel");

    let k = e.create(backup("a", "i1")).await.unwrap();
    prepare.add_permits(1);
    eventually("in its submit", || b.calls("submit").len() == 1).await;
    let refused = e.cancel(&k.id).await.unwrap_err().to_string();
    assert!(
        refused.contains("may have reached the backend"),
        "{refused}"
    );
    submit.add_permits(1);
    let done = real_wait_end(&e, k.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded);
}

/// Finding (review): a restore whose submit timed out and showed no trace
/// within the grace period was sent again; if the first one was only
/// queued (behind a proxy), both ran. A restore is never sent twice on "no
/// trace": it ends UNKNOWN and says what to check.
#[tokio::test(start_paused = true)]
async fn a_restore_with_no_trace_after_the_grace_period_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let mut timeout = BackendError::transient("timed out");
    timeout.maybe_applied = true;
    b.with(|s| s.submit.push_back(Err(timeout)));
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let j = e.create(restore("a", "i0")).await.unwrap();
    let last = until_end(&e, j.id).await.pop().unwrap();
    assert_eq!(last.state, JobState::Failed, "{}", last.message);
    assert_eq!(last.error.unwrap().reason, Failure::OutcomeUnknown);
    assert!(
        last.message
            .contains("check backends/a/serviceInstances/i0"),
        "{}",
        last.message
    );
    assert_eq!(b.calls("submit").len(), 1, "never a second restore");
    assert!(b.calls("reconcile").len() >= 3);
}

/// Issue 12: fingerprints are digests now; records stored with the JSON
/// fingerprint of older releases still recognise their retries.
#[test]
fn fingerprints_are_digests_and_old_ones_still_match() {
    let a = backup("a", "i0");
    let f = a.fingerprint();
    assert!(
        f.starts_with(DIGEST_PREFIX) && f.len() == DIGEST_PREFIX.len() + 64,
        "{f}"
    );
    assert!(a.same_as(Some(&f)));
    assert!(a.same_as(Some(&a.fingerprint_json())), "an older record");
    let mut other = backup("a", "i0");
    other.labels.insert("k".into(), "v".into());
    assert!(!other.same_as(Some(&f)));
    assert!(!other.same_as(Some(&a.fingerprint_json())));
    assert!(!a.same_as(None));
}

/// Issue 12: a job's task is small; its steps are boxed (the future was
/// 3,056 bytes before). Printed, and bounded loosely so that a large step
/// held inline again is noticed.
#[tokio::test]
async fn a_drivers_future_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), vec![("a", Scripted::new(), 4)], 8).await;
    let fut = driver::drive(e.clone(), Uuid::now_v7(), CancellationToken::new(), None);
    let size = std::mem::size_of_val(&fut);
    eprintln!("drive future: {size} bytes");
    assert!(size <= 1024, "{size} bytes");
}

fn running(message: &str) -> Progress {
    Progress::Running {
        message: message.into(),
        handle: None,
        percent: None,
    }
}

/// Issue 12: a job waiting for its next poll has no task: it is an entry
/// in the engine's timer queue. A job queued behind it on the same target
/// does not give it a second driver, and it is polled once per wait.
#[tokio::test(start_paused = true)]
async fn a_job_waiting_for_its_poll_is_parked_not_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    b.with(|s| s.poll.extend((0..4).map(|i| running(&format!("step {i}")))));
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let first = e.create(backup("a", "i0")).await.unwrap();
    eventually("the job is parked", || {
        e.parking.len() == 1 && matches!(lock(&e.drivers).get(&first.id), Some(Slot::Parked))
    })
    .await;
    assert_eq!(e.tasks.len(), 1, "only the waker's task: {}", e.tasks.len());
    // Accepted behind the parked head: start_if_head must not drive the
    // head a second time.
    let second = e.create(backup("a", "i0")).await.unwrap();
    let end = until_end(&e, first.id).await;
    assert_eq!(end.last().unwrap().state, JobState::Succeeded);
    assert_eq!(
        until_end(&e, second.id).await.pop().unwrap().state,
        JobState::Succeeded
    );
    // 4 running answers and 1 success for the first, 1 for the second.
    assert_eq!(b.calls("poll").len(), 6, "no poll twice");
    let polls = b.calls("poll");
    for w in polls[..5].windows(2) {
        assert!(
            w[1] - w[0] >= timing().poll_interval / 2,
            "waited between polls"
        );
    }
    assert!(lock(&e.drivers).is_empty());
    assert_eq!(e.parking.len(), 0);
}

/// A driver that panics is restarted by the job's own task (there is no
/// second, supervising task), and the job goes on.
#[tokio::test(start_paused = true)]
async fn a_driver_that_panics_is_restarted_by_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    b.with(|s| s.poll_panics = 2);
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let job = e.create(backup("a", "i0")).await.unwrap();
    // Bounded: without the catch the job would wait forever.
    let end = tokio::time::timeout(Duration::from_secs(600), until_end(&e, job.id))
        .await
        .expect("the job went on after its driver panicked")
        .pop()
        .unwrap();
    assert_eq!(end.state, JobState::Succeeded, "{}", end.message);
    assert_eq!(b.calls("poll").len(), 3);
    assert_eq!(b.calls("submit").len(), 1, "never submitted again");
}

/// Issue 12: a parked job's record is held only by the store; the engine
/// keeps its version number. Readers get the durable record and version
/// without bringing it back into memory; its driver brings it back, and
/// its next change continues the versions (watchers never go back).
#[tokio::test(start_paused = true)]
async fn a_parked_jobs_record_is_only_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    // The same message twice (no write: the job parks again cold), then a
    // new one (a write after it was brought back).
    b.with(|s| {
        s.poll
            .extend([running("half way"), running("half way"), running("nearly")])
    });
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let mut rx = e.subscribe();
    let job = e.create(backup("a", "i0")).await.unwrap();
    let now_cold = || cold(&e, &job.id);
    let mut newest = 0;
    let seq = loop {
        while let Ok(ev) = rx.try_recv() {
            newest = newest.max(ev.seq);
        }
        if let Some(seq) = now_cold()
            && b.calls("poll").len() == 2
        {
            break seq;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    while let Ok(ev) = rx.try_recv() {
        newest = newest.max(ev.seq);
    }
    assert_eq!(seq, newest, "cold with the version watchers saw last");
    let (read_seq, read) = e.snapshot(&job.id).unwrap().unwrap();
    assert_eq!((read_seq, read.phase), (seq, Phase::Polling));
    assert_eq!(read.message, "half way");
    assert_eq!(now_cold(), Some(seq), "reading does not bring it back");
    let next = rx.recv().await.unwrap();
    assert_eq!(next.seq, seq + 1, "the versions go on after a cold wait");
    assert_eq!(next.job.message, "nearly");
    let last = loop {
        let ev = rx.recv().await.unwrap();
        if ev.job.state.is_terminal() {
            break ev;
        }
    };
    assert_eq!(last.job.state, JobState::Succeeded);
    assert!(last.seq > next.seq);
    assert_eq!(b.calls("poll").len(), 4);
    assert!(lock(&e.live).get(&job.id).is_none());
}

/// A cancel of a parked (cold) job is refused with the real reason: it
/// reads the record back.
#[tokio::test(start_paused = true)]
async fn a_cold_job_refuses_a_cancel_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    b.with(|s| s.poll.extend((0..3).map(|_| running("half way"))));
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let job = e.create(backup("a", "i0")).await.unwrap();
    eventually("cold", || cold(&e, &job.id).is_some()).await;
    let refused = e.cancel(&job.id).await.unwrap_err().to_string();
    assert!(refused.contains("cannot be stopped"), "{refused}");
    let end = until_end(&e, job.id).await.pop().unwrap();
    assert_eq!(end.state, JobState::Succeeded);
}

/// Review finding: a reader that found the job cold, read the store, and then
/// finds it gone (ended and published meanwhile) must not hand out the
/// stale stored version as the final one (`u64::MAX`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_found_a_job_cold_and_then_gone_reads_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    b.with(|s| s.poll.push_back(running("half way")));
    let mut t = timing();
    t.poll_interval = Duration::from_secs(1);
    t.poll_max_interval = Duration::from_secs(2);
    let e = Engine::new(
        Store::open(dir.path()).unwrap(),
        vec![BackendEntry::new("a".into(), b.clone(), t, 4)],
        EngineSettings {
            max_running: 8,
            job_history: Duration::from_secs(86_400),
        },
        CancellationToken::new(),
    );
    let job = e.create(backup("a", "i0")).await.unwrap();
    eventually("parked cold after one poll", || {
        b.calls("poll").len() == 1 && cold(&e, &job.id).is_some()
    })
    .await;
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    *e.store.faults.get_pause.lock().unwrap() = Some((read_tx, go_rx));
    let e2 = e.clone();
    let id = job.id;
    let reader = std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || e2.snapshot(&id).unwrap().unwrap())
        .unwrap();
    tokio::task::spawn_blocking(move || read_rx.recv().unwrap())
        .await
        .unwrap();
    // The reader has read the stored (polling) version; the job ends.
    let end = real_wait_end(&e, id, Duration::from_secs(10)).await;
    assert_eq!(end.state, JobState::Succeeded);
    assert!(lock(&e.live).get(&id).is_none());
    go_tx.send(()).unwrap();
    let (seq, rec) = reader.join().unwrap();
    assert!(
        seq != u64::MAX || rec.state.is_terminal(),
        "a non-terminal version labelled final: {:?} {:?}",
        rec.state,
        rec.phase
    );
}

/// A create with `request_id` (on `i0`) whose flush is held: its task,
/// the job it wrote (not durable yet), and the hold (drop it to let the
/// flush run).
async fn create_with_flush_held(
    e: &Arc<Engine>,
    request_id: &str,
) -> (
    tokio::task::JoinHandle<Result<JobRecord, EngineError>>,
    Uuid,
    tokio::sync::OwnedRwLockWriteGuard<()>,
) {
    let held = e.store.faults.flush_gate.clone().write_owned().await;
    let e1 = e.clone();
    let r = request_id.to_string();
    let task = tokio::spawn(async move { e1.create(with_request("i0", Some(&r))).await });
    eventually("the create is written", || {
        e.store.job_for_request(request_id).unwrap().is_some()
    })
    .await;
    let id = e.store.job_for_request(request_id).unwrap().unwrap();
    (task, id, held)
}

fn with_request(instance: &str, request_id: Option<&str>) -> NewJob {
    let mut n = backup("a", instance);
    n.request_id = request_id.map(str::to_string);
    n
}

/// Creates three jobs in one group (request ids g1, g2, g3 on i0, i1,
/// i2) whose second write fails, `applied` or not before it reports the
/// error.
async fn three_with_the_second_write_failing(
    e: &Arc<Engine>,
    applied: bool,
) -> Vec<Result<JobRecord, EngineError>> {
    let faults = &e.store.faults;
    faults.pass_puts.store(1, Ordering::SeqCst);
    faults.fail_puts.store(1, Ordering::SeqCst);
    faults.apply_failed_puts.store(applied, Ordering::SeqCst);
    let r = e
        .create_many(vec![
            with_request("i0", Some("g1")),
            with_request("i1", Some("g2")),
            with_request("i2", Some("g3")),
        ])
        .await;
    faults.apply_failed_puts.store(false, Ordering::SeqCst);
    r
}

/// A group's creations are written one job after the other (on sled a
/// batch is not atomic): when the write of one fails, the jobs written
/// before it are created as usual (a store may keep them whatever this
/// process does: they are never taken back out), and the requests of the
/// others get the error and can be retried.
#[tokio::test]
async fn a_write_failing_inside_a_group_creates_the_jobs_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let r = three_with_the_second_write_failing(&e, false).await;
    let first = r[0].as_ref().expect("written before the failure").clone();
    assert!(matches!(r[1], Err(EngineError::Store(_))), "{:?}", r[1]);
    assert!(matches!(r[2], Err(EngineError::Store(_))), "{:?}", r[2]);
    assert_eq!(e.store.job_for_request("g1").unwrap(), Some(first.id));
    for g in ["g2", "g3"] {
        assert_eq!(e.store.job_for_request(g).unwrap(), None, "{g}");
    }
    let done = real_wait_end(&e, first.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    // The failed ones, retried, are made.
    let again = e.create(with_request("i1", Some("g2"))).await.unwrap();
    assert_eq!(e.store.job_for_request("g2").unwrap(), Some(again.id));
    assert_eq!(
        e.list(&JobIndex::All, None, 10, |_| true).unwrap().0.len(),
        2
    );
    let done = real_wait_end(&e, again.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
}

/// Review finding: sled can apply an insert and then report an error of
/// its log, so the job whose write "failed" inside a group could be whole
/// in the store. It was answered with the error and dropped, and a retry
/// with its request id was answered with it although no driver ran it.
/// A job whose record is there after a failed write now goes on as any
/// written job.
#[tokio::test]
async fn a_write_that_failed_but_was_applied_creates_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let r = three_with_the_second_write_failing(&e, true).await;
    let second = r[1].as_ref().expect("applied, then flushed").clone();
    assert!(matches!(r[2], Err(EngineError::Store(_))), "{:?}", r[2]);
    assert_eq!(e.store.job_for_request("g3").unwrap(), None);
    for job in [r[0].as_ref().unwrap().id, second.id] {
        let done = real_wait_end(&e, job, Duration::from_secs(10)).await;
        assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    }
    let again = e.create(with_request("i1", Some("g2"))).await.unwrap();
    assert_eq!(again.id, second.id, "the retry gets the job");
    assert_eq!(b.calls("submit").len(), 2, "each job submitted once");
}

/// On sled a creation's batch is written key by key, its record last: a
/// crash (or a failed write) can leave its request id without the job.
/// That creation was never acknowledged; the client's retry with the
/// same request id makes the job (it is not told forever that an earlier
/// job "is not in the store"), and a start resumes nothing of it.
#[tokio::test]
async fn a_request_id_left_without_its_job_lets_the_retry_make_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let mut cut = crate::test_support::record();
    cut.request_id = Some("cut".into());
    let len = e.store.put_job_prefix(&cut, 0);
    e.store.put_job_prefix(&cut, len - 1);
    e.store.flush().await.unwrap();
    assert!(e.store.live_jobs().unwrap().is_empty());
    let job = e.create(with_request("i0", Some("cut"))).await.unwrap();
    assert_ne!(job.id, cut.id);
    assert_eq!(e.store.job_for_request("cut").unwrap(), Some(job.id));
    let done = real_wait_end(&e, job.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    // A retry now finds that job, as before.
    let again = e.create(with_request("i0", Some("cut"))).await.unwrap();
    assert_eq!(again.id, job.id);
}

/// Issue 12 (P5): `create_many` makes many jobs durable with one flush,
/// each as `create` would: nothing is visible before that flush, a
/// request id already used returns its job (also twice in one batch), a
/// request id used for something else is refused, and the jobs run in
/// creation order on their target.
#[tokio::test]
async fn create_many_publishes_jobs_only_once_durable_and_keeps_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let old = e.create(with_request("i0", Some("old"))).await.unwrap();
    real_wait_end(&e, old.id, Duration::from_secs(10)).await;
    let held = e.store.faults.flush_gate.clone();
    let held = held.write().await;
    let e2 = e.clone();
    let batch = tokio::spawn(async move {
        e2.create_many(vec![
            with_request("i0", Some("r1")),
            // Queued behind the first on i0.
            with_request("i0", Some("r2")),
            // The same request twice in one batch: one job.
            with_request("i0", Some("r1")),
            // A retry of an earlier request: its job.
            with_request("i0", Some("old")),
            // An earlier request id for another request: refused.
            with_request("i1", Some("old")),
            with_request("i1", None),
        ])
        .await
    });
    eventually("the batch is written", || {
        e.store.job_for_request("r2").unwrap().is_some()
    })
    .await;
    let (listed, _) = e.list(&JobIndex::All, None, 100, |_| true).unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id).collect::<Vec<_>>(),
        [old.id],
        "written but not durable: not visible"
    );
    assert!(b.calls("prepare").len() == 1, "and not started");
    drop(held);
    let r = batch.await.unwrap();
    let ok = |i: usize| r[i].as_ref().unwrap().clone();
    assert_eq!(ok(2).id, ok(0).id);
    assert_eq!(ok(3).id, old.id);
    assert!(
        matches!(&r[4], Err(EngineError::RequestIdReused(id, _)) if id == "old"),
        "{:?}",
        r[4]
    );
    let made = [ok(0), ok(1), ok(5)];
    let (listed, _) = e.list(&JobIndex::All, None, 100, |_| true).unwrap();
    assert_eq!(listed.len(), 4);
    for j in &made {
        assert!(listed.iter().any(|l| l.id == j.id), "{} is listed", j.id);
        assert!(e.store.get_job(&j.id).unwrap().is_some(), "and stored");
    }
    let ends: Vec<JobRecord> = {
        let mut v = Vec::new();
        for j in &made {
            v.push(real_wait_end(&e, j.id, Duration::from_secs(10)).await);
        }
        v
    };
    assert!(ends.iter().all(|j| j.state == JobState::Succeeded));
    assert!(
        ends[1].start_time >= ends[0].end_time,
        "one at a time on i0, in creation order"
    );
}

/// Issue 12 (P5): a batch whose write fails leaves nothing behind: not
/// listed, not stored, not run, its request ids free and its targets not
/// held. A batch whose flush fails says, for each new job, that its
/// outcome is unknown (naming the job); the jobs are not started until a
/// flush makes them durable, then run once each, and their request ids
/// get them.
#[tokio::test]
async fn create_many_that_cannot_be_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    let e = engine(dir.path(), vec![("a", b.clone(), 4)], 8).await;
    let batch = || {
        vec![
            with_request("i0", Some("m1")),
            with_request("i0", Some("m2")),
            with_request("i1", Some("m3")),
            with_request("i1", None),
            // The same request twice in one batch.
            with_request("i1", Some("m3")),
        ]
    };
    e.store.faults.fail_puts.store(1, Ordering::SeqCst);
    let r = e.create_many(batch()).await;
    assert!(
        r.iter().all(|r| matches!(r, Err(EngineError::Store(_)))),
        "{r:?}"
    );
    let (jobs, _) = e.list(&JobIndex::All, None, 10, |_| true).unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
    for r in ["m1", "m2", "m3"] {
        assert_eq!(e.store.job_for_request(r).unwrap(), None);
    }
    assert_eq!(e.store.live_jobs().unwrap().len(), 0);
    assert!(lock(&e.live).is_empty());

    // The flush and the engine's first retry of it fail.
    e.store.faults.fail_flushes.store(2, Ordering::SeqCst);
    let r = e.create_many(batch()).await;
    let unknown: Vec<Uuid> = r
        .iter()
        .map(|r| match r {
            Err(EngineError::CreationUnknown { job, .. }) => *job,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(unknown[4], unknown[2], "one job for one request id");
    let (jobs, _) = e.list(&JobIndex::All, None, 10, |_| true).unwrap();
    assert!(jobs.is_empty(), "not durable: not visible");
    assert!(b.calls("prepare").is_empty(), "and not started");
    for id in &unknown[..4] {
        let done = real_wait_end(&e, *id, Duration::from_secs(10)).await;
        assert_eq!(done.state, JobState::Succeeded);
    }
    assert_eq!(b.calls("submit").len(), 4, "each once");
    let again = e.create_many(batch()).await;
    for (i, r) in again.iter().enumerate() {
        match (i, r) {
            // No request id: a new job.
            (3, Ok(j)) => assert_ne!(j.id, unknown[3]),
            (_, Ok(j)) => assert_eq!(j.id, unknown[i], "{i}"),
            (_, Err(err)) => panic!("{i}: {err}"),
        }
    }
}
