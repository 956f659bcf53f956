//! The Backend contract's conformance suite (custos-adapter-core's
//! `conformance` feature) against the CBR simulator.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use custos_adapter_core::{
    Backend, Operation, Resource, ResourceKind, RestoreSpec, VolumeMapping,
    conformance::{self, ConformanceTarget, SubmitFault},
};
use custos_cbr_v3::{
    CbrV3,
    sim::{DemoIds, Injection, PostFault, SimConfig, Simulator},
};
use reqwest::Method;

/// The adapter's request timeout; `ApplyThenTimeout` answers later.
const TIMEOUT: Duration = Duration::from_millis(700);

struct Cbr {
    sim: Simulator,
    ids: DemoIds,
    cbr: Arc<CbrV3>,
}

impl Cbr {
    async fn new() -> Cbr {
        let sim = Simulator::start(
            "127.0.0.1:0".parse().unwrap(),
            SimConfig {
                restore_duration: Duration::from_millis(80),
                backup_duration: Duration::from_millis(80),
                delete_duration: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let ids = sim.seed_demo();
        let cbr = CbrV3::new(sim.adapter_config(Some(ids.vault_id.clone()), TIMEOUT)).unwrap();
        Cbr {
            sim,
            ids,
            cbr: Arc::new(cbr),
        }
    }

    fn server(&self) -> Resource {
        Resource {
            kind: ResourceKind::Server,
            id: self.ids.server_id.clone(),
        }
    }
}

fn path_of(op: &Operation) -> &'static str {
    match op {
        Operation::Restore { .. } => "/restore",
        _ => "/checkpoints",
    }
}

/// CBR's (or its gateway's) own body for a refusal with `status`.
fn refusal(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("BackupService.0001", "invalid request body"),
        401 => (
            "APIGW.0301",
            "Incorrect IAM authentication information: decrypt token fail",
        ),
        403 => ("BackupService.8600", "not authenticated"),
        404 => ("BackupService.6200", "backup not found"),
        409 => ("BackupService.2010", "the resource is being restored"),
        429 => ("APIG.0308", "The throttling threshold has been reached"),
        _ => ("BackupService.0001", "unprocessable"),
    }
}

#[async_trait]
impl ConformanceTarget for Cbr {
    fn backend(&self) -> Arc<dyn Backend> {
        self.cbr.clone()
    }

    fn backup_op(&self) -> Operation {
        Operation::CreateBackup {
            resource: self.server(),
            incremental: false,
        }
    }

    fn restore_op(&self) -> Operation {
        Operation::Restore {
            resource: self.server(),
            spec: RestoreSpec {
                backup_id: Some(self.ids.server_backup_id.clone()),
                mappings: vec![VolumeMapping {
                    backup_id: self.ids.system_child_id.clone(),
                    volume_id: self.ids.system_volume_id.clone(),
                }],
                ..Default::default()
            },
        }
    }

    async fn arm(&self, op: &Operation, fault: SubmitFault) {
        let path = path_of(op);
        let post = |f: PostFault| self.sim.arm_post(path, f, 1);
        let restore = matches!(op, Operation::Restore { .. });
        let server = &self.ids.server_id;
        match fault {
            SubmitFault::ApplyThenStatus(s) => post(PostFault::ApplyThenError(s)),
            SubmitFault::ApplyThenHtml(s) => post(PostFault::ApplyThenHtml(s)),
            SubmitFault::ApplyThenReset => post(PostFault::ApplyThenReset),
            SubmitFault::ApplyThenTimeout => post(PostFault::ApplyThenDelay(TIMEOUT * 3)),
            SubmitFault::ApplyThenOversizedBody => {
                post(PostFault::ApplyThenHugeBody(5 * 1024 * 1024))
            }
            SubmitFault::ResetBeforeApply => post(PostFault::ResetBeforeApply),
            // Until settle: the adapter's one refresh-and-retry after a 401
            // meets it too.
            SubmitFault::RejectWithStatus(s) => {
                let (code, msg) = refusal(s);
                self.sim.inject(Injection {
                    method: Method::POST,
                    path_contains: path.into(),
                    status: s,
                    error_code: code.into(),
                    error_msg: msg.into(),
                    times: 10,
                })
            }
            SubmitFault::ForeignTraceBeforeIntent => {
                let (kind, backup) = if restore {
                    ("restore", self.ids.server_backup_id.as_str())
                } else {
                    ("backup", "0b0b0b0b-0000-4000-8000-000000000001")
                };
                self.sim
                    .add_op_log(kind, backup, server, "success", Duration::from_secs(3600));
            }
            SubmitFault::ForeignOtherOperation => {
                let (kind, backup) = if restore {
                    ("backup", "0b0b0b0b-0000-4000-8000-000000000002")
                } else {
                    ("restore", self.ids.server_backup_id.as_str())
                };
                self.sim
                    .add_op_log(kind, backup, server, "success", Duration::ZERO);
            }
        }
    }

    async fn set_trace_delay(&self, delay: Duration) {
        self.sim.configure(|c| c.op_log_delay = delay);
    }

    async fn submissions(&self, op: &Operation) -> u64 {
        let k = self.sim.counters();
        match op {
            Operation::Restore { .. } => k.restore_submits,
            _ => k.checkpoint_submits,
        }
    }

    async fn settle(&self) {
        self.sim.clear_faults();
        for _ in 0..200 {
            if !self.sim.busy() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the simulated server stayed busy");
    }
}

#[tokio::test]
async fn cbr_conforms_to_the_backend_contract() {
    let t = Cbr::new().await;
    conformance::run_all(&t).await;
}
