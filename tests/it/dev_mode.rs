//! `custos serve --dev`, the README's first command: it starts with nothing
//! else installed, prints a token, and its example target works.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use custos::api::pb;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_a_working_cf_backend() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (mut token, mut addr, mut target) = (None, None, None);
    let mut vbs_restore = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let l = line.trim();
        if let Some(t) = l.strip_prefix("export CUSTOS_TOKEN=") {
            token = Some(t.to_string());
        }
        // The first example is CF's.
        if let Some(t) = l.strip_prefix("custos backup create ")
            && target.is_none()
        {
            target = t.split_whitespace().next().map(str::to_string);
        }
        // The VBS example restore: `custos restore TARGET --backup ID --wait`.
        if let Some(t) = l.strip_prefix("custos restore backends/vbs-dev/")
            && l.ends_with("--wait")
            && vbs_restore.is_none()
        {
            let w: Vec<&str> = t.split_whitespace().collect();
            if let [vol, "--backup", backup, "--wait"] = w.as_slice() {
                vbs_restore = Some((format!("backends/vbs-dev/{vol}"), backup.to_string()));
            }
        }
        if let Some(a) = l.strip_prefix("custos: listening on ") {
            addr = Some(a.to_string());
            break;
        }
    }
    let (token, addr, target) = (token.unwrap(), addr.unwrap(), target.unwrap());
    let mut c = connect(&addr, Some(&token)).await;
    let backends = c
        .list_backends(pb::ListBackendsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = backends.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        ["backends/cbr-dev", "backends/cf-dev", "backends/vbs-dev"]
    );
    let listed = c
        .list_backups(pb::ListBackupsRequest {
            target: target.clone(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!listed.backups.is_empty(), "seeded backups");
    let j = c
        .create_backup(pb::CreateBackupRequest {
            target,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let j = wait_done(&mut c, &j.name, Duration::from_secs(30)).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}", j.message);
    // The printed VBS restore works as printed.
    let (target, backup_id) = vbs_restore.expect("a VBS restore example");
    let j = c
        .restore(pb::RestoreRequest {
            target,
            backup_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let j = wait_done(&mut c, &j.name, Duration::from_secs(30)).await;
    assert_eq!(state(&j), "SUCCEEDED", "{}", j.message);
    let _ = child.kill();
    let _ = child.wait();
}
