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
