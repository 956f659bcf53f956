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
        none.list_backends(pb::ListBackendsRequest::default())
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
                name: "jobs/x".into(),
                validate_only: false,
            })
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert!(
        reader
            .list_backends(pb::ListBackendsRequest::default())
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
    assert!(
        c.list_backends(pb::ListBackendsRequest::default())
            .await
            .is_ok()
    );
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

/// `custos config check`: every problem at once, named; relative paths
/// are the config file's folder's; exit 0 only for a config that starts.
#[test]
fn config_check_names_every_problem_and_passes_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let check = |file: &str, envs: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_custos"));
        // From another folder: relative paths must not depend on it.
        c.current_dir(std::env::temp_dir())
            .args(["config", "check"])
            .arg(dir.path().join(file));
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "s3cret").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let body = |token_env: &str| {
        format!(
            r#"
listen = "127.0.0.1:0"
data_dir = "data"
[[tokens]]
name = "ops"
role = "operator"
token_env = "{token_env}"
[[backends]]
name = "cf"
kind = "cf_v3"
endpoint = "http://127.0.0.1:1"
[backends.auth]
type = "uaa"
client_id = "custos"
client_secret_file = "secret.txt"
"#
        )
    };
    std::fs::write(dir.path().join("two.toml"), body("CUSTOS_CHECK_UNSET")).unwrap();
    let (code, out) = check("two.toml", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("token_env") && out.contains("CUSTOS_CHECK_UNSET"),
        "{out}"
    );
    assert!(
        out.contains("client_secret_file") && out.contains("readable by others"),
        "{out}"
    );
    // Fixed: OK, with the data dir next to the file.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (code, out) = check("two.toml", &[("CUSTOS_CHECK_SET", "")]);
    assert_eq!(code, Some(1), "still unset: {out}");
    std::fs::write(dir.path().join("good.toml"), body("CUSTOS_CHECK_SET")).unwrap();
    let (code, out) = check(
        "good.toml",
        &[("CUSTOS_CHECK_SET", "a-client-token-of-24-chars")],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("OK"), "{out}");
    let data = dir.path().join("data");
    assert!(out.contains(&data.display().to_string()), "{out}");
    // An unknown key and a bad duration: named with their line.
    std::fs::write(
        dir.path().join("keys.toml"),
        "listen = \"127.0.0.1:0\"\nbogus = 1\n",
    )
    .unwrap();
    let (code, out) = check("keys.toml", &[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("bogus") && out.contains("line 2"), "{out}");
    std::fs::write(dir.path().join("dur.toml"), "job_history = \"5 parsecs\"\n").unwrap();
    let (code, out) = check("dur.toml", &[]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("not a duration") && out.contains("line 1"),
        "{out}"
    );
}

/// `log_format = "json"`: one `job state` line per state change, each
/// with the job, target, backend and state; lines logged while the job
/// runs carry its span (job, target, backend). A bad `log_level` is
/// refused by name.
#[tokio::test]
async fn every_state_change_is_logged_once_with_the_jobs_fields() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let o = Opts {
        extra: "log_format = \"json\"\nlog_level = \"info\"\n".into(),
        ..Default::default()
    };
    let d = Daemon::start(&sim, dir.path(), &o);
    let mut c = d.op().await;
    let j = start_backup(&mut c, 0, "").await;
    let j = wait_done(&mut c, &j.name, std::time::Duration::from_secs(20)).await;
    assert_eq!(state(&j), "SUCCEEDED");
    let id = j.name.strip_prefix("jobs/").unwrap().to_string();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<serde_json::Value> = d
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| {
                v["fields"]["message"] == "job state" && v["fields"]["job"] == id.as_str()
            })
            .collect();
        if lines.len() >= 3 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let states: Vec<&str> = lines
        .iter()
        .map(|v| v["fields"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["PENDING", "RUNNING", "SUCCEEDED"], "{lines:?}");
    for v in &lines {
        assert_eq!(v["fields"]["target"], target(0).as_str());
        assert_eq!(v["fields"]["backend"], "cf");
        assert_eq!(v["level"], "INFO");
    }
    // Logged from the job's task: inside its span.
    assert_eq!(lines[2]["span"]["job"], id.as_str(), "{:?}", lines[2]);
    assert_eq!(lines[2]["span"]["target"], target(0).as_str());

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "log_level = \"loud\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("log_level"));
}

/// The packaged example config is complete and valid (with its secrets in
/// the environment), `--version` names the commit, and completions print.
#[test]
fn the_example_config_checks_and_the_binary_describes_itself() {
    let bin = env!("CARGO_BIN_EXE_custos");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/custos.toml");
    let out = Command::new(bin)
        .args(["config", "check", example])
        .env("CUSTOS_OPS_TOKEN", "an-operator-token-0123")
        .env("CUSTOS_READ_TOKEN", "a-reader-token-0123456")
        .env("CF_CLIENT_SECRET", "x")
        .env("CBR_PASSWORD", "y")
        .env("VBS_APP_CRED_SECRET", "z")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("cf_v3") && text.contains("cbr_v3") && text.contains("vbs_v2"));
    let v = Command::new(bin).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.contains(env!("CARGO_PKG_VERSION")) && v.contains("commit"),
        "{v}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let c = Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(c.status.success());
        assert!(
            String::from_utf8_lossy(&c.stdout).contains("schedule"),
            "{shell}"
        );
    }
}
