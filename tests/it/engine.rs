//! The engine's guarantees seen from a client: a job is driven whatever
//! happens to the RPC that created it; one target, one job at a time,
//! however its GUID is spelled.

use std::time::Duration;

use custos::api::pb;
use custos_cf_v3::sim::SimConfig;
use tonic::Request;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

/// Finding: `CreateBackup` calls with a short client deadline left stored
/// jobs that nobody drove at the head of their target's queue, so every
/// later job on that target stayed PENDING until a restart.
#[tokio::test]
async fn jobs_created_by_calls_that_timed_out_are_still_driven() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let mut gave_up = 0;
    for _ in 0..20 {
        let mut r = Request::new(backup_req(0, ""));
        r.set_timeout(Duration::from_micros(500));
        if c.create_backup(r).await.is_err() {
            gave_up += 1;
        }
    }
    assert!(gave_up > 0, "the deadline is short enough to cut calls off");
    let last = start_backup(&mut c, 0, "").await;
    let j = wait_done(&mut c, &last.name, T).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}\n{}", j.message, d.logs());
    // Every job that was stored, answered or not, was driven to its end.
    let all = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    for j in &all {
        let j = wait_done(&mut c, &j.name, T).await;
        assert_eq!(state(&j), "SUCCEEDED", "{}: {}", j.name, j.message);
    }
    assert_eq!(sim.counters().backup_submits, all.len() as u64);
}

/// Two spellings of one GUID are one target: the second job waits.
#[tokio::test]
async fn a_guid_in_upper_case_is_the_same_target() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(500),
            ..Default::default()
        },
        0,
    )
    .await;
    let guid = "0a0b0c0d-0e0f-4a1b-8c2d-3e4f5a6b7c8d";
    sim.add_instance(guid, "mixed-case");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let req = |g: &str| pb::CreateBackupRequest {
        target: format!("backends/cf/serviceInstances/{g}"),
        ..Default::default()
    };
    let first = c.create_backup(req(guid)).await.unwrap().into_inner();
    let second = c
        .create_backup(req(&guid.to_uppercase()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.target, first.target, "stored in one spelling");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = c
        .get_job(pb::GetJobRequest {
            name: second.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&s), "PENDING", "{}", s.message);
    assert!(s.message.contains(&first.name), "{}", s.message);
    for n in [&first.name, &second.name] {
        let j = wait_done(&mut c, n, T).await;
        assert_eq!(state(&j), "SUCCEEDED", "{}", j.message);
    }
}
