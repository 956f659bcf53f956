//! A job's history (`Job.events`): kept on the record through a restart,
//! and shown by `custos job describe`.

use std::time::Duration;

use custos::api::pb;
use custos_cf_v3::sim::{Injection, SimConfig, cf_error};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_history_is_kept_and_described() {
    let sim = sim(
        SimConfig {
            job_duration: Duration::from_millis(300),
            ..Default::default()
        },
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    // One poll answered 503: a retry, which the history shows.
    sim.inject(Injection {
        method: axum::http::Method::GET,
        path_contains: "/v3/jobs/".into(),
        status: 503,
        error: cf_error(10015, "CF-ServiceUnavailable", "try later"),
        times: 1,
    });
    let j = start_backup(&mut c, 0, "").await;
    let done = wait_done(&mut c, &j.name, Duration::from_secs(30)).await;
    assert_eq!(state(&done), "SUCCEEDED", "{}", done.message);
    let steps: Vec<(String, String)> = done
        .events
        .iter()
        .map(|e| {
            (
                pb::job::State::try_from(e.state)
                    .unwrap()
                    .as_str_name()
                    .to_string(),
                e.phase.clone(),
            )
        })
        .collect();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(steps.first(), Some(&s("PENDING", "queued")), "{steps:?}");
    assert_eq!(steps.last(), Some(&s("SUCCEEDED", "done")), "{steps:?}");
    assert!(steps.contains(&s("RUNNING", "submitting")), "{steps:?}");
    assert!(
        steps
            .iter()
            .filter(|x| **x == s("RUNNING", "polling"))
            .count()
            >= 2,
        "the move to polling, and the retry of the refused poll: {steps:?}\n{:#?}",
        done.events
    );
    let times: Vec<i64> = done
        .events
        .iter()
        .map(|e| e.time.as_ref().unwrap().seconds)
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // Lists leave events out unless asked for the FULL view (AIP-157).
    let list = |view: pb::JobView| pb::ListJobsRequest {
        view: view as i32,
        ..Default::default()
    };
    let basic = c
        .list_jobs(list(pb::JobView::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert!(basic.jobs.iter().all(|j| j.events.is_empty()), "{basic:?}");
    let full = c
        .list_jobs(list(pb::JobView::Full))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.jobs[0].events, done.events);

    // Kept on the record: the same after kill -9 and a restart.
    let d = d.restart_after_kill9(&sim, dir.path());
    let mut c = d.op().await;
    let again = c
        .get_job(pb::GetJobRequest {
            name: j.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.events, done.events);

    // `custos job describe` shows it.
    let endpoint = format!("http://{}", d.addr);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(["job", "describe", &j.name])
        .env("CUSTOS_ENDPOINT", endpoint)
        .env("CUSTOS_TOKEN", OP_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for want in [
        format!("Name:             {}", j.name),
        "State:            SUCCEEDED".into(),
        format!("Backup:           {}", done.backup_id),
        "Created by:       ops".into(),
        "Events:".into(),
        "PENDING    queued".into(),
        "SUCCEEDED  done".into(),
    ] {
        assert!(text.contains(&want), "{want:?} not in:\n{text}");
    }
}
