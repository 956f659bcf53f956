//! Client tokens and roles, health without a token, and start-up refusals.

use std::process::Command;

use custos::api::pb;
use custos_cf_v3::sim::SimConfig;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn tokens_and_roles_are_enforced() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());

    let mut none = d.client(None).await;
    assert_eq!(
        none.create_backup(backup_req(0, ""))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        none.list_backends(pb::ListBackendsRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut wrong = d.client(Some("not-a-real-token-at-all")).await;
    assert_eq!(
        wrong
            .create_backup(backup_req(0, ""))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut reader = d.client(Some(RO_TOKEN)).await;
    let e = reader.create_backup(backup_req(0, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        reader.restore(restore_req(0)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        reader
            .cancel_job(pb::CancelJobRequest {
                name: "jobs/x".into()
            })
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert!(
        reader
            .list_backends(pb::ListBackendsRequest {})
            .await
            .is_ok()
    );
    assert!(
        reader
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .is_ok()
    );
    assert_eq!(sim.counters().backup_submits, 0);

    // Health is open.
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    // The service, and the server as a whole ("", a Kubernetes probe's default).
    for service in ["custos.v1.BackupService", ""] {
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn refuses_to_start_without_tokens_or_with_unknown_keys() {
    let sim = sim(SimConfig::default(), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let full = config(&sim, &dir.path().join("data"), &Opts::default());
    let start = idx(&full, "[[tokens]]");
    let end = idx(&full, "[[backends]]");
    let no_tokens = format!("{}{}", &full[..start], &full[end..]);
    let p = dir.path().join("no-tokens.toml");
    std::fs::write(&p, &no_tokens).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--insecure"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let p = dir.path().join("typo.toml");
    std::fs::write(&p, full.replace("shutdown_timeout", "shutdown_timout")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shutdown_timout") && err.contains("line"),
        "{err}"
    );

    // --insecure starts without tokens and lets anyone in.
    std::fs::write(dir.path().join("insecure.toml"), &no_tokens).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(["serve", "--insecure", "--config"])
        .arg(dir.path().join("insecure.toml"))
        .env("CUSTOS_IT_CF_SECRET", "x")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("custos: listening on ")
        .unwrap()
        .to_string();
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = pb::backup_service_client::BackupServiceClient::new(ch);
    assert!(c.list_backends(pb::ListBackendsRequest {}).await.is_ok());
    let _ = child.kill();
    let _ = child.wait();
}

fn idx(s: &str, pat: &str) -> usize {
    s.find(pat).unwrap()
}

/// Every mutating call leaves an audit line (token name, method, target,
/// job), and the job keeps who asked for it; `custos job get` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_are_audited_and_jobs_say_who_asked() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let j = start_backup(&mut c, 0, "").await;
    assert_eq!(j.created_by, "ops");
    let j = wait_done(&mut c, &j.name, std::time::Duration::from_secs(20)).await;
    assert_eq!(j.created_by, "ops", "kept");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let line = loop {
        let logs = d.logs();
        if let Some(l) = logs
            .lines()
            .find(|l| l.contains("custos::audit") && l.contains(&j.name))
        {
            break l.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no audit line:\n{logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(line.contains("caller=ops"), "{line}");
    assert!(line.contains("CreateBackup"), "{line}");
    assert!(line.contains(&target(0)), "{line}");
    assert!(!line.contains(OP_TOKEN), "never the token itself: {line}");
    // A read does not write one.
    let before = d.logs().matches("custos::audit").count();
    c.get_job(pb::GetJobRequest {
        name: j.name.clone(),
    })
    .await
    .unwrap();
    assert_eq!(d.logs().matches("custos::audit").count(), before);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(["job", "get", &j.name])
        .env("CUSTOS_ENDPOINT", format!("http://{}", d.addr))
        .env("CUSTOS_TOKEN", OP_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("created_by") && l.ends_with("ops")),
        "{text}"
    );
}
