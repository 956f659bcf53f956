//! In-process tests of the service's streams, with a scripted backend.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Request;

use super::{Service, pb, pb::backup_service_server::BackupService};
use crate::{
    api::auth::Caller,
    config::Role,
    names::job_name,
    test_support::{Scripted, backup, engine},
};

fn as_reader<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(Caller {
        name: "t".into(),
        role: Role::Reader,
    });
    r
}

fn service(e: &std::sync::Arc<crate::engine::Engine>) -> Service {
    let stop = tokio_util::sync::CancellationToken::new();
    let sched = crate::schedule::Scheduler::new(
        e.clone(),
        std::sync::Arc::new(crate::schedule::SystemClock),
        stop.clone(),
    )
    .unwrap();
    Service::new(e.clone(), sched, stop)
}

/// A `WatchJobs` stream of every change, as a reader.
async fn watch_all(svc: &Service) -> <Service as BackupService>::WatchJobsStream {
    svc.watch_jobs(as_reader(pb::WatchJobsRequest::default()))
        .await
        .unwrap()
        .into_inner()
}

/// Finding: a `WatchJobs` reader that fell behind silently lost changes.
/// Now its stream ends with ABORTED, after what it had not yet read.
#[tokio::test]
async fn a_watch_jobs_reader_that_falls_behind_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), vec![("a", Scripted::new(), 64)], 64).await;
    let mut stream = watch_all(&service(&e)).await;
    // 2,000 jobs × (created, running, submitting, polling, ended): more
    // changes than a watcher may have unread (`WATCH_BUFFER`), none read
    // meanwhile.
    let jobs = 2 * super::WATCH_BUFFER / 5 + 400;
    let mut made = tokio::task::JoinSet::new();
    for i in 0..jobs {
        let e = e.clone();
        made.spawn(async move { e.create(backup("a", &format!("i{i}"))).await });
    }
    while let Some(r) = made.join_next().await {
        r.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut n = 0;
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => n += 1,
                Err(s) => return (n, Some(s)),
            }
        }
        (n, None)
    })
    .await
    .expect("the stream neither ended nor said it fell behind");
    let status = read.1.expect("ended without saying why");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("ListJobs"),
        "{}",
        status.message()
    );
    assert!(read.0 > 0);
}

/// Finding: a watcher that went away kept its task (and its subscription)
/// until the job's next change.
#[tokio::test]
async fn a_watch_whose_client_left_ends_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = Scripted::new();
    *b.submit_gate.lock().unwrap() = Some(std::sync::Arc::new(tokio::sync::Semaphore::new(0)));
    let e = engine(dir.path(), vec![("a", b, 4)], 8).await;
    let svc = service(&e);
    let j = e.create(backup("a", "i0")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for watch_all in [false, true] {
        let stream: super::JobStream = if watch_all {
            svc.watch_jobs(as_reader(pb::WatchJobsRequest::default()))
                .await
                .unwrap()
                .into_inner()
        } else {
            svc.watch_job(as_reader(pb::WatchJobRequest {
                name: job_name(j.id),
            }))
            .await
            .unwrap()
            .into_inner()
        };
        assert_eq!(e.watchers(), 1);
        drop(stream);
        // The job is stuck in its submit: no change will come to wake it.
        crate::test_support::eventually("the watch task ended", || e.watchers() == 0).await;
    }
}

/// The descriptor set the daemon serves by reflection carries the proto's
/// `google.api.field_behavior` annotations (AIP-203), read here with
/// messages that keep exactly the parts of `descriptor.proto` needed.
mod field_behavior {
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    struct Set {
        #[prost(message, repeated, tag = "1")]
        file: Vec<File>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct File {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "4")]
        message_type: Vec<Msg>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Msg {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        field: Vec<Field>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Field {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "8")]
        options: Option<Options>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct Options {
        /// google.api.field_behavior
        #[prost(int32, repeated, packed = "false", tag = "1052")]
        behavior: Vec<i32>,
    }

    const REQUIRED: i32 = 2;
    const OUTPUT_ONLY: i32 = 3;
    const IMMUTABLE: i32 = 5;
    const IDENTIFIER: i32 = 8;

    fn behaviors(set: &Set, message: &str, field: &str) -> Vec<i32> {
        let f = set
            .file
            .iter()
            .find(|f| f.name == "custos/v1/custos.proto")
            .expect("custos.proto in the set");
        let m = f
            .message_type
            .iter()
            .find(|m| m.name == message)
            .unwrap_or_else(|| panic!("message {message}"));
        let fd = m
            .field
            .iter()
            .find(|x| x.name == field)
            .unwrap_or_else(|| panic!("{message}.{field}"));
        fd.options
            .as_ref()
            .map(|o| o.behavior.clone())
            .unwrap_or_default()
    }

    #[test]
    fn annotations_are_served() {
        let set = Set::decode(super::super::pb::FILE_DESCRIPTOR_SET).unwrap();
        assert!(
            set.file
                .iter()
                .any(|f| f.name == "google/api/field_behavior.proto"),
            "the extension's file is served with the API's"
        );
        assert_eq!(behaviors(&set, "CreateBackupRequest", "target"), [REQUIRED]);
        assert_eq!(behaviors(&set, "RestoreRequest", "target"), [REQUIRED]);
        assert_eq!(behaviors(&set, "GetJobRequest", "name"), [REQUIRED]);
        assert_eq!(
            behaviors(&set, "RestoreRequest", "backup_id"),
            [] as [i32; 0]
        );
        assert_eq!(behaviors(&set, "Schedule", "target"), [REQUIRED, IMMUTABLE]);
        assert_eq!(behaviors(&set, "Schedule", "name"), [IDENTIFIER]);
        assert_eq!(behaviors(&set, "Schedule", "next_run_times"), [OUTPUT_ONLY]);
        for f in ["name", "state", "events", "created_by", "progress_percent"] {
            assert_eq!(behaviors(&set, "Job", f), [OUTPUT_ONLY], "Job.{f}");
        }
        assert_eq!(behaviors(&set, "Backup", "name"), [OUTPUT_ONLY]);
    }
}

/// A `CreateBackup` whose job was written but could not be made durable
/// is answered UNAVAILABLE (the store, as `api.md` has it) with its own
/// reason, `CREATION_OUTCOME_UNKNOWN`, naming the job, and a message that
/// says a new request id could make a second job; the same request id
/// gets the job once the store made it durable.
#[tokio::test]
async fn a_create_whose_flush_failed_says_its_outcome_is_unknown() {
    use std::sync::atomic::Ordering;
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), vec![("a", Scripted::new(), 64)], 64).await;
    let svc = service(&e);
    let request = || {
        let mut r = Request::new(pb::CreateBackupRequest {
            target: "backends/a/serviceInstances/i0".into(),
            request_id: "r-1".into(),
            ..Default::default()
        });
        r.extensions_mut().insert(Caller {
            name: "t".into(),
            role: Role::Operator,
        });
        r
    };
    e.store().faults.fail_flushes.store(1, Ordering::SeqCst);
    let status = svc.create_backup(request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "CREATION_OUTCOME_UNKNOWN");
    let name = info.metadata.get("resource").unwrap().clone();
    assert!(status.message().contains(&name), "{}", status.message());
    assert!(
        status.message().contains("same request_id"),
        "{}",
        status.message()
    );
    let job = svc.create_backup(request()).await.unwrap().into_inner();
    assert_eq!(job.name, name, "the same request id gets that job");
}

/// Review finding: a job held after its creation's flush failed (its
/// caller told CREATION_OUTCOME_UNKNOWN, naming it, and that it runs once
/// the store recovers) was NOT_FOUND to GetJob, WatchJob and CancelJob.
/// They now answer UNAVAILABLE with the same reason and resource, and
/// find the job once a flush made it durable.
#[tokio::test]
async fn a_job_not_yet_durable_is_unavailable_not_missing() {
    use std::sync::atomic::Ordering;
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), vec![("a", Scripted::new(), 64)], 64).await;
    let svc = service(&e);
    fn as_operator<T>(mut r: Request<T>) -> Request<T> {
        r.extensions_mut().insert(Caller {
            name: "t".into(),
            role: Role::Operator,
        });
        r
    }
    e.store()
        .faults
        .fail_flushes
        .store(u32::MAX, Ordering::SeqCst);
    let status = svc
        .create_backup(as_operator(Request::new(pb::CreateBackupRequest {
            target: "backends/a/serviceInstances/i0".into(),
            ..Default::default()
        })))
        .await
        .unwrap_err();
    let name = status.get_details_error_info().unwrap().metadata["resource"].clone();
    let held = |status: tonic::Status, call: &str| {
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{call}: {status:?}"
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "CREATION_OUTCOME_UNKNOWN", "{call}");
        assert_eq!(info.metadata["resource"], name, "{call}");
        assert!(
            status.message().contains("not made it durable yet"),
            "{call}: {}",
            status.message()
        );
    };
    let get = || as_reader(pb::GetJobRequest { name: name.clone() });
    held(
        BackupService::get_job(&svc, get()).await.unwrap_err(),
        "GetJob",
    );
    let watch = svc
        .watch_job(as_reader(pb::WatchJobRequest { name: name.clone() }))
        .await;
    held(watch.err().unwrap(), "WatchJob");
    for validate_only in [true, false] {
        let cancel = pb::CancelJobRequest {
            name: name.clone(),
            validate_only,
        };
        held(
            svc.cancel_job(as_operator(Request::new(cancel)))
                .await
                .unwrap_err(),
            "CancelJob",
        );
    }
    e.store().faults.fail_flushes.store(0, Ordering::SeqCst);
    let job = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(job) = BackupService::get_job(&svc, get()).await {
                return job.into_inner();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the job is found once a flush made it durable");
    assert_eq!(job.name, name);
}

/// Issue 12 (P5, found by the benchmark): a burst of changes well within
/// the engine's event buffer cut a `WatchJobs` reader off with ABORTED,
/// because each watcher's own buffer held only 1,024 converted messages:
/// a schedule burst published them faster than the connection sent them,
/// and a reader watching 10,000 scheduled jobs being made was cut off
/// after a few hundred. Now a watcher buffers as many changes as the
/// engine keeps (shared events, converted when sent).
#[tokio::test]
async fn a_watch_jobs_reader_keeps_up_with_a_burst_within_the_event_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), vec![("a", Scripted::new(), 64)], 64).await;
    let mut stream = watch_all(&service(&e)).await;
    // 400 jobs × (created, running, submitting, polling, ended): 2,000
    // changes, none read meanwhile, fewer than the engine keeps.
    let jobs = 400;
    for i in 0..jobs {
        e.create(backup("a", &format!("i{i}"))).await.unwrap();
    }
    let ended = |j: &pb::Job| j.state == pb::job::State::Succeeded as i32;
    let mut done = std::collections::HashSet::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while done.len() < jobs {
            match stream.next().await {
                Some(Ok(j)) if ended(&j) => {
                    done.insert(j.name);
                }
                Some(Ok(_)) => {}
                Some(Err(s)) => panic!("cut off after {} jobs ended: {s:?}", done.len()),
                None => panic!("ended after {} jobs", done.len()),
            }
        }
    })
    .await
    .expect("every job's end was shown");
}
