//! The Backend contract's conformance suite (custos-adapter-core's
//! `conformance` feature) against the CF simulator.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use custos_adapter_core::{
    Backend, Operation, Resource, ResourceKind, RestoreSpec,
    conformance::{self, ConformanceTarget, SubmitFault},
};
use custos_cf_v3::{
    CfAuth, CfConfig, CfV3, Grant,
    sim::{Injection, PostFault, SimConfig, Simulator, cf_error},
};
use reqwest::Method;

const GUID: &str = "11111111-2222-4333-8444-555555555555";
/// The adapter's request timeout; `ApplyThenTimeout` answers later.
const TIMEOUT: Duration = Duration::from_millis(700);

struct Cf {
    sim: Simulator,
    cf: Arc<CfV3>,
}

impl Cf {
    async fn new() -> Cf {
        let sim = Simulator::start(
            "127.0.0.1:0".parse().unwrap(),
            SimConfig {
                job_duration: Duration::from_millis(60),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        sim.add_instance(GUID, "db");
        sim.add_backup(GUID, "old-backup", 1_700_000_000);
        let c = sim.config();
        let cf = CfV3::new(CfConfig {
            endpoint: sim.url(),
            auth: CfAuth::Uaa {
                token_url: None,
                client_id: c.client_id,
                client_secret: c.client_secret.into(),
                grant: Grant::ClientCredentials,
            },
            timeout: TIMEOUT,
        })
        .unwrap();
        Cf {
            sim,
            cf: Arc::new(cf),
        }
    }
}

fn path_of(op: &Operation) -> String {
    match op {
        Operation::Restore { .. } => format!("{GUID}/actions/restore"),
        _ => format!("{GUID}/backups"),
    }
}

/// CF's own envelope for a refusal with `status`.
fn refusal(status: u16) -> custos_cf_v3::sim::CfError {
    match status {
        400 => cf_error(
            1001,
            "CF-MessageParseError",
            "Request invalid due to parse error",
        ),
        401 => cf_error(1000, "CF-InvalidAuthToken", "Invalid Auth Token"),
        403 => cf_error(10003, "CF-NotAuthorized", "You are not authorized"),
        404 => cf_error(10010, "CF-ResourceNotFound", "Service instance not found"),
        409 => cf_error(
            60016,
            "CF-AsyncServiceInstanceOperationInProgress",
            "An operation for service instance db is in progress.",
        ),
        429 => cf_error(10013, "CF-RateLimitExceeded", "Rate Limit Exceeded"),
        _ => cf_error(10008, "CF-UnprocessableEntity", "Unprocessable"),
    }
}

#[async_trait]
impl ConformanceTarget for Cf {
    fn backend(&self) -> Arc<dyn Backend> {
        self.cf.clone()
    }

    fn backup_op(&self) -> Operation {
        Operation::CreateBackup {
            resource: Resource {
                kind: ResourceKind::ServiceInstance,
                id: GUID.into(),
            },
            incremental: false,
        }
    }

    fn restore_op(&self) -> Operation {
        Operation::Restore {
            resource: Resource {
                kind: ResourceKind::ServiceInstance,
                id: GUID.into(),
            },
            spec: RestoreSpec {
                backup_id: Some("old-backup".into()),
                ..Default::default()
            },
        }
    }

    async fn arm(&self, op: &Operation, fault: SubmitFault) {
        let path = path_of(op);
        let post = |f: PostFault| self.sim.arm_post(&path, f, 1);
        let other = match op {
            Operation::Restore { .. } => "backup",
            _ => "restore",
        };
        let same = match op {
            Operation::Restore { .. } => "restore",
            _ => "backup",
        };
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
                path_contains: path,
                status: s,
                error: refusal(s),
                times: 10,
            }),
            SubmitFault::ForeignTraceBeforeIntent => {
                self.sim
                    .foreign_last_operation(GUID, same, "succeeded", Duration::from_secs(3600))
            }
            // Someone else starts the other kind of work, now.
            SubmitFault::ForeignOtherOperation => {
                self.sim
                    .foreign_last_operation(GUID, other, "in progress", Duration::ZERO)
            }
        }
    }

    async fn set_trace_delay(&self, delay: Duration) {
        self.sim.configure(|c| c.last_operation_delay = delay);
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
            if !self.sim.busy(GUID) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the simulated instance stayed busy");
    }
}

#[tokio::test]
async fn cf_conforms_to_the_backend_contract() {
    let t = Cf::new().await;
    conformance::run_all(&t).await;
}

#[tokio::test]
async fn an_unrelated_operation_is_not_a_backup_either() {
    // ForeignOtherOperation above uses the other kind; an operation that
    // is neither (a plan update) is not ours for both kinds.
    for restore in [false, true] {
        // A fresh instance for each: the first foreign operation must not
        // be in the second one's `prepare` snapshot.
        let t = Cf::new().await;
        let op = if restore {
            t.restore_op()
        } else {
            t.backup_op()
        };
        let mut intent = t.cf.prepare(&op).await.unwrap();
        intent.recorded_at = Some(chrono::Utc::now());
        t.sim
            .foreign_last_operation(GUID, "update", "in progress", Duration::ZERO);
        let r = t.cf.reconcile(&op, &intent).await.unwrap();
        match op {
            Operation::Restore { .. } => assert!(
                matches!(&r, custos_adapter_core::Reconciled::Unknown(m) if m.contains(GUID) && m.contains("update in progress")),
                "{r:?}"
            ),
            _ => assert_eq!(r, custos_adapter_core::Reconciled::NotSubmitted),
        }
    }
}
