//! The [`Backend`] contract as reusable async tests (cargo feature
//! `conformance`): every adapter runs them against its own simulator, from
//! its `tests/`, by implementing [`ConformanceTarget`].
//!
//! What they check (the rules written on [`Backend`]):
//! - a submit that the backend applied and then answered with a 5xx, a 408,
//!   a proxy's HTML page, a reset, a timeout or an over-long body fails with
//!   `maybe_applied`; `reconcile` then says `Submitted` (once the trace
//!   shows, never `Unknown` meanwhile), polling reaches `Succeeded`, and the
//!   backend counted exactly one submission;
//! - a submit refused before it was applied, with the backend's own error
//!   envelope (4xx, 429), fails *without* `maybe_applied`;
//! - a submit that never reached the backend is never reconciled as
//!   `Submitted` (a backup: `NotSubmitted`; a restore: `NotSubmitted` or
//!   `Unknown`);
//! - a trace of someone else's operation (before the intent, or of another
//!   kind) is never taken for ours; for a restore it is `Unknown`.
//!
//! Panics (with the case in the message) on the first violation.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use tokio::time::{Instant, sleep};

use crate::{Backend, BackendError, Intent, Operation, Progress, Reconciled, RemoteHandle};

/// A fault the target's simulator applies to the next submit of an
/// operation (or, for the trace faults, to the target's state at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitFault {
    /// The backend applies the submit, then the answer is this status (5xx
    /// or 408) with the backend's own error envelope.
    ApplyThenStatus(u16),
    /// The backend applies the submit, then a proxy answers this status
    /// with an HTML page (a load balancer that gave up waiting).
    ApplyThenHtml(u16),
    /// The backend applies the submit, then the connection is dropped.
    ApplyThenReset,
    /// The backend applies the submit and answers after the adapter's
    /// request timeout.
    ApplyThenTimeout,
    /// The backend applies the submit, then the answer has a body longer
    /// than the adapter reads.
    ApplyThenOversizedBody,
    /// The backend refuses the submit before applying it, with its own
    /// error envelope and this status, until [`ConformanceTarget::settle`].
    RejectWithStatus(u16),
    /// The connection is dropped before the backend reads the request.
    ResetBeforeApply,
    /// Someone else ran an operation of the same kind on the target, well
    /// before the intent was recorded (an hour). Applied at once.
    ForeignTraceBeforeIntent,
    /// Someone else starts an operation of another kind on the target, now.
    /// Applied at once.
    ForeignOtherOperation,
}

/// An adapter wired to its simulator, for the conformance tests.
#[async_trait]
pub trait ConformanceTarget: Send + Sync {
    fn backend(&self) -> Arc<dyn Backend>;
    /// A backup of a target that exists and is idle.
    fn backup_op(&self) -> Operation;
    /// A restore of the same target that the backend accepts.
    fn restore_op(&self) -> Operation;
    /// Arms `fault` for the next submit of `op`.
    async fn arm(&self, op: &Operation, fault: SubmitFault);
    /// The backend shows the trace of an applied operation only `delay`
    /// after applying it (zero: at once). Targets that cannot do this keep
    /// the default, which does nothing.
    async fn set_trace_delay(&self, _delay: Duration) {}
    /// How many submissions of `op`'s kind the backend applied so far.
    async fn submissions(&self, op: &Operation) -> u64;
    /// Removes armed faults and waits until the target is idle.
    async fn settle(&self);
    /// The statuses this backend documents as refusals before anything is
    /// applied (answered with its own error envelope).
    fn refusal_statuses(&self) -> Vec<u16> {
        vec![400, 401, 403, 404, 409, 422, 429]
    }
}

/// How long a case may wait for a trace or an operation to end.
const LIMIT: Duration = Duration::from_secs(20);

/// Every rule, for backup and restore.
pub async fn run_all(t: &dyn ConformanceTarget) {
    unreached_submit_is_never_reconciled_as_submitted(t).await;
    refused_submit_is_not_maybe_applied(t).await;
    applied_then_failed_submit_is_maybe_applied_and_reconciled(t).await;
    late_trace_is_reconciled_once_it_shows(t).await;
    foreign_traces_are_never_ours(t).await;
}

fn ops(t: &dyn ConformanceTarget) -> [(Operation, &'static str); 2] {
    [(t.backup_op(), "backup"), (t.restore_op(), "restore")]
}

async fn prepare(b: &dyn Backend, op: &Operation, case: &str) -> Intent {
    let mut intent = b
        .prepare(op)
        .await
        .unwrap_or_else(|e| panic!("{case}: prepare failed: {e}"));
    intent.recorded_at = Some(Utc::now());
    intent
}

async fn submit_err(b: &dyn Backend, op: &Operation, intent: &Intent, case: &str) -> BackendError {
    match b.submit(op, intent).await {
        Ok(h) => panic!(
            "{case}: the submit succeeded ({}), expected a failure",
            h.display
        ),
        Err(e) => e,
    }
}

/// Reconciles until `Submitted`, as the daemon does over its grace period;
/// meanwhile only `NotSubmitted` is acceptable.
async fn reconcile_until_submitted(
    b: &dyn Backend,
    op: &Operation,
    intent: &Intent,
    case: &str,
) -> RemoteHandle {
    let deadline = Instant::now() + LIMIT;
    loop {
        match b.reconcile(op, intent).await {
            Ok(Reconciled::Submitted(h)) => return h,
            Ok(Reconciled::NotSubmitted) => {}
            Ok(Reconciled::Unknown(why)) => {
                panic!("{case}: reconcile said Unknown for our own applied submit: {why}")
            }
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("{case}: reconcile failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "{case}: reconcile never found the applied submit"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

async fn poll_to_success(
    b: &dyn Backend,
    op: &Operation,
    intent: &Intent,
    handle: &RemoteHandle,
    case: &str,
) {
    let deadline = Instant::now() + LIMIT;
    loop {
        match b.poll(op, intent, handle).await {
            Ok(Progress::Succeeded { .. }) => return,
            Ok(Progress::Failed(e)) => panic!("{case}: the operation failed: {e}"),
            Ok(Progress::Running { .. }) => {}
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("{case}: poll failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "{case}: the operation did not end"
        );
        sleep(Duration::from_millis(30)).await;
    }
}

/// One apply-then-fail case: `maybe_applied`, reconciled, polled to the
/// end, exactly one submission.
async fn applied_case(t: &dyn ConformanceTarget, op: &Operation, fault: SubmitFault, case: &str) {
    let b = t.backend();
    t.settle().await;
    let before = t.submissions(op).await;
    let intent = prepare(&*b, op, case).await;
    t.arm(op, fault).await;
    let e = submit_err(&*b, op, &intent, case).await;
    assert!(
        e.maybe_applied,
        "{case}: the backend applied the submit, but the error is not maybe_applied: {e}"
    );
    let h = reconcile_until_submitted(&*b, op, &intent, case).await;
    poll_to_success(&*b, op, &intent, &h, case).await;
    assert_eq!(
        t.submissions(op).await,
        before + 1,
        "{case}: exactly one submission"
    );
}

/// Rule 1: applied, then the answer was lost or bad → `maybe_applied`, and
/// reconciliation finds the operation.
pub async fn applied_then_failed_submit_is_maybe_applied_and_reconciled(t: &dyn ConformanceTarget) {
    let faults = [
        SubmitFault::ApplyThenStatus(500),
        SubmitFault::ApplyThenStatus(502),
        SubmitFault::ApplyThenStatus(503),
        SubmitFault::ApplyThenStatus(504),
        SubmitFault::ApplyThenStatus(408),
        SubmitFault::ApplyThenHtml(504),
        SubmitFault::ApplyThenHtml(502),
        SubmitFault::ApplyThenReset,
        SubmitFault::ApplyThenTimeout,
        SubmitFault::ApplyThenOversizedBody,
    ];
    for (op, name) in ops(t) {
        for f in faults {
            applied_case(t, &op, f, &format!("{name} {f:?}")).await;
        }
    }
    t.settle().await;
}

/// Rule 1 and 4 with a backend that shows the trace late: reconcile keeps
/// saying `NotSubmitted` (never `Unknown`) until it shows, then `Submitted`.
pub async fn late_trace_is_reconciled_once_it_shows(t: &dyn ConformanceTarget) {
    t.set_trace_delay(Duration::from_millis(800)).await;
    for (op, name) in ops(t) {
        applied_case(
            t,
            &op,
            SubmitFault::ApplyThenHtml(504),
            &format!("{name} with a late trace, ApplyThenHtml(504)"),
        )
        .await;
    }
    t.set_trace_delay(Duration::ZERO).await;
    t.settle().await;
}

/// Rule 1: an answer that proves the submit was refused is not
/// `maybe_applied`, and nothing was submitted.
pub async fn refused_submit_is_not_maybe_applied(t: &dyn ConformanceTarget) {
    let b = t.backend();
    for (op, name) in ops(t) {
        for s in t.refusal_statuses() {
            let case = format!("{name} refused with {s}");
            t.settle().await;
            let before = t.submissions(&op).await;
            let intent = prepare(&*b, &op, &case).await;
            t.arm(&op, SubmitFault::RejectWithStatus(s)).await;
            let e = submit_err(&*b, &op, &intent, &case).await;
            assert!(
                !e.maybe_applied,
                "{case}: the backend refused the submit, but the error is maybe_applied: {e}"
            );
            assert_eq!(e.http_status(), Some(s), "{case}: {e}");
            t.settle().await;
            assert_eq!(t.submissions(&op).await, before, "{case}: nothing applied");
            expect_not_submitted(&*b, &op, &intent, name == "restore", &case).await;
        }
    }
    t.settle().await;
}

/// `reconcile` of a submit that did not reach the backend: `NotSubmitted`
/// (or, for a restore, possibly `Unknown`), never `Submitted`.
async fn expect_not_submitted(
    b: &dyn Backend,
    op: &Operation,
    intent: &Intent,
    unknown_ok: bool,
    case: &str,
) {
    match b.reconcile(op, intent).await {
        Ok(Reconciled::NotSubmitted) => {}
        Ok(Reconciled::Unknown(why)) if unknown_ok => {
            assert!(!why.is_empty(), "{case}: Unknown says why");
        }
        Ok(other) => panic!("{case}: nothing was submitted, but reconcile said {other:?}"),
        Err(e) => panic!("{case}: reconcile failed: {e}"),
    }
}

/// Rule 4: nothing reached the backend → never `Submitted`.
pub async fn unreached_submit_is_never_reconciled_as_submitted(t: &dyn ConformanceTarget) {
    let b = t.backend();
    for (op, name) in ops(t) {
        t.settle().await;
        let before = t.submissions(&op).await;
        let case = format!("{name} never sent");
        let intent = prepare(&*b, &op, &case).await;
        expect_not_submitted(&*b, &op, &intent, name == "restore", &case).await;

        let case = format!("{name} ResetBeforeApply");
        let intent = prepare(&*b, &op, &case).await;
        t.arm(&op, SubmitFault::ResetBeforeApply).await;
        submit_err(&*b, &op, &intent, &case).await;
        expect_not_submitted(&*b, &op, &intent, name == "restore", &case).await;
        assert_eq!(t.submissions(&op).await, before, "{case}: nothing applied");
    }
    t.settle().await;
}

/// Rule 4: someone else's trace is never ours; for a restore it is
/// `Unknown` (a second restore could destroy data), for a backup
/// `NotSubmitted` (a second backup is harmless).
pub async fn foreign_traces_are_never_ours(t: &dyn ConformanceTarget) {
    let b = t.backend();
    for (op, name) in ops(t) {
        let restore = name == "restore";
        // The same kind of operation, before the intent.
        t.settle().await;
        let case = format!("{name} ForeignTraceBeforeIntent");
        let mut intent = prepare(&*b, &op, &case).await;
        t.arm(&op, SubmitFault::ForeignTraceBeforeIntent).await;
        intent.recorded_at = Some(Utc::now());
        expect_foreign(&*b, &op, &intent, restore, &case).await;

        // Another kind of operation, after the intent.
        t.settle().await;
        let case = format!("{name} ForeignOtherOperation");
        let intent = prepare(&*b, &op, &case).await;
        t.arm(&op, SubmitFault::ForeignOtherOperation).await;
        expect_foreign(&*b, &op, &intent, restore, &case).await;
    }
    t.settle().await;
}

async fn expect_foreign(
    b: &dyn Backend,
    op: &Operation,
    intent: &Intent,
    restore: bool,
    case: &str,
) {
    match b.reconcile(op, intent).await {
        Ok(Reconciled::Unknown(why)) if restore => {
            assert!(!why.is_empty(), "{case}: Unknown says why");
        }
        Ok(Reconciled::NotSubmitted) if !restore => {}
        Ok(other) => panic!(
            "{case}: a foreign trace must give {}, got {other:?}",
            if restore { "Unknown" } else { "NotSubmitted" }
        ),
        Err(e) => panic!("{case}: reconcile failed: {e}"),
    }
}
