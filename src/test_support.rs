//! For the daemon's in-process tests: a scripted `Backend` whose answers a
//! test queues, which records when each call came, and an engine built on
//! a temporary store.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use custos_adapter_core::{
    Backend, BackendError, BackendKind, BackupPage, Capabilities, FieldViolation, Intent,
    Operation, Progress, Reconciled, RemoteHandle, Resource, ResourceKind,
};
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    config::BackendTiming,
    engine::{BackendEntry, Engine, EngineSettings, NewJob},
    job::{JobKind, JobRecord},
    store::Store,
};

/// What the scripted backend answers; an empty queue answers success
/// (reconcile: `NotSubmitted`).
#[derive(Default)]
pub struct Script {
    pub prepare: VecDeque<Result<(), BackendError>>,
    pub submit: VecDeque<Result<(), BackendError>>,
    pub reconcile: VecDeque<Reconciled>,
    pub poll: VecDeque<Progress>,
    /// This many polls panic (before the queue above is used).
    pub poll_panics: usize,
    /// (call, when) for every call.
    pub calls: Vec<(&'static str, Instant)>,
}

#[derive(Default)]
pub struct Scripted {
    pub script: Mutex<Script>,
    /// When set, every submit waits for a permit of it (and keeps it).
    pub submit_gate: Mutex<Option<Arc<Semaphore>>>,
    /// The same for prepare.
    pub prepare_gate: Mutex<Option<Arc<Semaphore>>>,
    /// Backups made so far (each successful backup poll names a new one:
    /// `b-1`, `b-2`, ...).
    pub made: std::sync::atomic::AtomicU64,
    /// Backup ids whose deletion succeeded.
    pub deleted: Mutex<Vec<String>>,
}

impl Scripted {
    pub fn new() -> Arc<Scripted> {
        Arc::new(Scripted::default())
    }

    pub fn with(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
    }

    /// When each call named `what` came.
    pub fn calls(&self, what: &str) -> Vec<Instant> {
        let s = self.script.lock().unwrap();
        s.calls
            .iter()
            .filter(|(c, _)| *c == what)
            .map(|(_, t)| *t)
            .collect()
    }

    fn record(&self, what: &'static str) {
        self.script
            .lock()
            .unwrap()
            .calls
            .push((what, Instant::now()));
    }
}

pub fn handle() -> RemoteHandle {
    RemoteHandle {
        display: "scripted-op".into(),
        state: String::new(),
    }
}

#[async_trait]
impl Backend for Scripted {
    fn kind(&self) -> BackendKind {
        BackendKind::CfV3
    }
    fn endpoint(&self) -> &str {
        "scripted://"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_backup: true,
            delete_backup: true,
            restore: true,
            ..Default::default()
        }
    }
    fn resource_kinds(&self) -> &'static [ResourceKind] {
        &[ResourceKind::ServiceInstance]
    }
    fn check(&self, _op: &Operation) -> Vec<FieldViolation> {
        Vec::new()
    }
    async fn list_backups(
        &self,
        _r: &Resource,
        _n: Option<u32>,
        _t: &str,
    ) -> Result<BackupPage, BackendError> {
        // The backups made and not deleted, in one page.
        let made = self.made.load(std::sync::atomic::Ordering::SeqCst);
        let deleted = self.deleted.lock().unwrap().clone();
        Ok(BackupPage {
            backups: (1..=made)
                .map(|n| format!("b-{n}"))
                .filter(|id| !deleted.contains(id))
                .map(|id| custos_adapter_core::BackupInfo {
                    id,
                    created_at: None,
                    state: "available".into(),
                })
                .collect(),
            next_page_token: String::new(),
        })
    }
    async fn validate(&self, _op: &Operation) -> Result<String, BackendError> {
        Ok("scripted".into())
    }
    async fn prepare(&self, _op: &Operation) -> Result<Intent, BackendError> {
        self.record("prepare");
        let gate = self.prepare_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.acquire_owned().await.unwrap().forget();
        }
        let next = self.script.lock().unwrap().prepare.pop_front();
        next.unwrap_or(Ok(())).map(|()| Intent::default())
    }
    async fn submit(&self, _op: &Operation, _i: &Intent) -> Result<RemoteHandle, BackendError> {
        self.record("submit");
        let gate = self.submit_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.acquire_owned().await.unwrap().forget();
        }
        let next = self.script.lock().unwrap().submit.pop_front();
        next.unwrap_or(Ok(())).map(|()| handle())
    }
    async fn poll(
        &self,
        op: &Operation,
        _i: &Intent,
        _h: &RemoteHandle,
    ) -> Result<Progress, BackendError> {
        self.record("poll");
        let next = {
            let mut s = self.script.lock().unwrap();
            if s.poll_panics > 0 {
                s.poll_panics -= 1;
                drop(s);
                panic!("scripted poll panic");
            }
            s.poll.pop_front()
        };
        Ok(next.unwrap_or_else(|| match op {
            Operation::CreateBackup { .. } => {
                let n = self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                Progress::Succeeded {
                    message: "done".into(),
                    backup_id: Some(format!("b-{n}")),
                }
            }
            Operation::DeleteBackup { backup_id, .. } => {
                self.deleted.lock().unwrap().push(backup_id.clone());
                Progress::Succeeded {
                    message: "deleted".into(),
                    backup_id: None,
                }
            }
            Operation::Restore { .. } => Progress::Succeeded {
                message: "done".into(),
                backup_id: None,
            },
        }))
    }
    async fn reconcile(&self, _op: &Operation, _i: &Intent) -> Result<Reconciled, BackendError> {
        self.record("reconcile");
        let next = self.script.lock().unwrap().reconcile.pop_front();
        Ok(next.unwrap_or(Reconciled::NotSubmitted))
    }
}

pub fn timing() -> BackendTiming {
    BackendTiming {
        timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(100),
        poll_max_interval: Duration::from_millis(400),
        operation_timeout: Duration::from_secs(6 * 3600),
        max_retries: 5,
        max_retry_after: Duration::from_secs(300),
    }
}

/// Opens the store in `dir` once an earlier handle (and its flusher task)
/// has let go of it: a test that reopens a store needs no fixed sleep.
pub async fn open_store(dir: &std::path::Path, engine: crate::store::StoreEngine) -> Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open_with(dir, engine) {
            Ok(s) => return s,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// An engine over a store in `dir`, with `backends` (name, adapter,
/// per-backend limit), after `resume`.
pub async fn engine(
    dir: &std::path::Path,
    backends: Vec<(&str, Arc<Scripted>, usize)>,
    max_running: usize,
) -> Arc<Engine> {
    let store = open_store(dir, crate::store::StoreEngine::Sled).await;
    let entries = backends
        .into_iter()
        .map(|(n, b, limit)| BackendEntry::new(n.into(), b, timing(), limit))
        .collect();
    let e = Engine::new(
        store,
        entries,
        EngineSettings {
            max_running,
            job_history: Duration::from_secs(86_400),
        },
        CancellationToken::new(),
    );
    e.resume().await.unwrap();
    e
}

/// A backup job of `instance` on `backend`.
pub fn backup(backend: &str, instance: &str) -> NewJob {
    NewJob {
        kind: JobKind::Backup,
        target: format!("backends/{backend}/serviceInstances/{instance}"),
        backend: backend.into(),
        op: Operation::CreateBackup {
            resource: Resource {
                kind: ResourceKind::ServiceInstance,
                id: instance.into(),
            },
            incremental: false,
        },
        labels: BTreeMap::new(),
        request_id: None,
        schedule: None,
        created_by: None,
    }
}

/// A restore of `instance` on `backend` from backup `b-0`.
pub fn restore(backend: &str, instance: &str) -> NewJob {
    let mut n = backup(backend, instance);
    n.kind = JobKind::Restore;
    n.op = Operation::Restore {
        resource: n.op.resource().clone(),
        spec: custos_adapter_core::RestoreSpec {
            backup_id: Some("b-0".into()),
            ..Default::default()
        },
    };
    n
}

/// A new backup record of `backends/cf/serviceInstances/x`.
pub fn record() -> JobRecord {
    let n = backup("cf", "x");
    JobRecord::new(n.kind, n.target, n.backend, n.op, n.labels)
}

/// Waits (real time, at most 10 s) until `f` holds; panics naming `what`.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
