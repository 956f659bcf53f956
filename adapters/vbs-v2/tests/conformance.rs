//! The Backend contract's conformance suite (custos-adapter-core's
//! `conformance` feature) against the VBS simulator.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use custos_adapter_core::{
    Backend, Operation, Resource, ResourceKind, RestoreSpec,
    conformance::{self, ConformanceTarget, SubmitFault},
};
use custos_vbs_v2::{
    VbsV2,
    sim::{DemoIds, Injection, PostFault, SimConfig, Simulator},
};
use reqwest::Method;

/// The adapter's request timeout; `ApplyThenTimeout` answers later.
const TIMEOUT: Duration = Duration::from_millis(700);

struct Vbs {
    sim: Simulator,
    ids: DemoIds,
    vbs: Arc<VbsV2>,
}

impl Vbs {
    async fn new() -> Vbs {
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
        let vbs = VbsV2::new(sim.adapter_config(TIMEOUT)).unwrap();
        Vbs {
            sim,
            ids,
            vbs: Arc::new(vbs),
        }
    }

    fn volume(&self) -> Resource {
        Resource {
            kind: ResourceKind::Volume,
            id: self.ids.volume_id.clone(),
        }
    }
}

fn path_of(op: &Operation) -> &'static str {
    match op {
        Operation::Restore { .. } => "/restore",
        _ => "/backups",
    }
}

#[async_trait]
impl ConformanceTarget for Vbs {
    fn backend(&self) -> Arc<dyn Backend> {
        self.vbs.clone()
    }

    fn backup_op(&self) -> Operation {
        Operation::CreateBackup {
            resource: self.volume(),
            incremental: false,
        }
    }

    fn restore_op(&self) -> Operation {
        Operation::Restore {
            resource: self.volume(),
            spec: RestoreSpec {
                backup_id: Some(self.ids.backup_id.clone()),
                ..Default::default()
            },
        }
    }

    async fn arm(&self, op: &Operation, fault: SubmitFault) {
        let path = path_of(op);
        let post = |f: PostFault| self.sim.arm_post(path, f, 1);
        let restore = matches!(op, Operation::Restore { .. });
        let volume = &self.ids.volume_id;
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
            SubmitFault::RejectWithStatus(s) => self.sim.inject(Injection {
                method: Method::POST,
                path_contains: path.into(),
                status: s,
                message: format!("refused with {s}"),
                retry_after: (s == 413).then(|| "0".to_string()),
                times: 10,
            }),
            SubmitFault::ForeignTraceBeforeIntent => {
                if restore {
                    self.sim.foreign_restore_done(
                        &self.ids.backup_id,
                        volume,
                        Duration::from_secs(3600),
                    );
                } else {
                    self.sim
                        .add_foreign_backup(volume, Duration::from_secs(3600))
                        .unwrap();
                }
            }
            SubmitFault::ForeignOtherOperation => {
                if restore {
                    self.sim.start_foreign_backup(volume).unwrap();
                } else {
                    self.sim.start_foreign_restore(&self.ids.backup_id, volume);
                }
            }
        }
    }

    async fn set_trace_delay(&self, delay: Duration) {
        self.sim.configure(|c| c.trace_delay = delay);
    }

    async fn submissions(&self, op: &Operation) -> u64 {
        let k = self.sim.counters();
        match op {
            Operation::Restore { .. } => k.restore_submits,
            _ => k.backup_submits,
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

    fn refusal_statuses(&self) -> Vec<u16> {
        // Cinder's refusals: its fault bodies; 413 overLimit for quotas.
        vec![400, 401, 403, 404, 409, 413, 429]
    }
}

#[tokio::test]
async fn vbs_conforms_to_the_backend_contract() {
    let t = Vbs::new().await;
    conformance::run_all(&t).await;
}
