//! No secret ever shows: after succeeding and failing jobs on every
//! backend kind (CF v3 with a UAA client secret, CBR v3 and VBS v2 with
//! Keystone passwords, one of them wrong), every configured secret and
//! every Keystone token the simulators issued is looked for in the
//! daemon's log, in the jobs as the API returns them (messages, errors),
//! in the errors of synchronous calls, and in every file of the data dir.

use std::{path::Path, time::Duration};

use custos::api::pb;
use custos_cbr_v3::sim::{SimConfig as CbrConfig, Simulator as CbrSim};
use custos_cf_v3::sim::SimConfig;
use custos_vbs_v2::sim::{SimConfig as VbsConfig, Simulator as VbsSim};

use crate::harness::*;

const T: Duration = Duration::from_secs(60);
const WRONG_PASSWORD: &str = "a-wrong-password-4f1c9e";

fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

fn all_files(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push(b);
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_secret_reaches_logs_jobs_or_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cf = sim(SimConfig::default(), 1).await;
    let cbr = CbrSim::start("127.0.0.1:0".parse().unwrap(), CbrConfig::default())
        .await
        .unwrap();
    let cbr_ids = cbr.seed_demo();
    let vbs = VbsSim::start("127.0.0.1:0".parse().unwrap(), VbsConfig::default())
        .await
        .unwrap();
    let vbs_ids = vbs.seed_demo();
    let (cc, vc) = (cbr.config(), vbs.config());
    let config = format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
[[tokens]]
name = "ops"
role = "operator"
token_env = "CUSTOS_IT_OP"
[[tokens]]
name = "ro"
role = "reader"
token_env = "CUSTOS_IT_RO"

[[backends]]
name = "cf"
kind = "cf_v3"
endpoint = "{cf_url}"
timeout = "2s"
poll_interval = "100ms"
[backends.auth]
type = "uaa"
client_id = "{cf_id}"
client_secret_env = "CUSTOS_IT_CF_SECRET"

[[backends]]
name = "cbr"
kind = "cbr_v3"
endpoint = "{cbr_url}"
project_id = "{cbr_pid}"
vault_id = "{vault}"
timeout = "2s"
poll_interval = "100ms"
[backends.auth]
type = "keystone"
auth_url = "{cbr_auth}"
user_name = "{cbr_user}"
user_domain_name = "{cbr_domain}"
password_file = "{cbr_pw}"

[[backends]]
name = "vbs"
kind = "vbs_v2"
endpoint = "{vbs_url}"
project_id = "{vbs_pid}"
timeout = "2s"
poll_interval = "100ms"
[backends.auth]
type = "keystone"
auth_url = "{vbs_auth}"
user_name = "{vbs_user}"
user_domain_name = "{vbs_domain}"
password_file = "{vbs_pw}"

[[backends]]
name = "vbs-wrong"
kind = "vbs_v2"
endpoint = "{vbs_url}"
project_id = "{vbs_pid}"
timeout = "2s"
max_retries = 1
[backends.auth]
type = "keystone"
auth_url = "{vbs_auth}"
user_name = "{vbs_user}"
user_domain_name = "{vbs_domain}"
password_file = "{wrong_pw}"
"#,
        data = dir.path().join("data").display(),
        cf_url = cf.url(),
        cf_id = cf.config().client_id,
        cbr_url = cbr.url(),
        cbr_pid = cbr_ids.project_id,
        vault = cbr_ids.vault_id,
        cbr_auth = cbr.auth_url(),
        cbr_user = cc.user_name,
        cbr_domain = cc.user_domain,
        cbr_pw = secret_file(dir.path(), "cbr.pw", &cc.password),
        vbs_url = vbs.url(),
        vbs_pid = vbs_ids.project_id,
        vbs_auth = vbs.auth_url(),
        vbs_user = vc.user_name,
        vbs_domain = vc.user_domain,
        vbs_pw = secret_file(dir.path(), "vbs.pw", &vc.password),
        wrong_pw = secret_file(dir.path(), "wrong.pw", WRONG_PASSWORD),
    );
    let path = dir.path().join("custos.toml");
    std::fs::write(&path, config).unwrap();
    let d = Daemon::start_with(&path, &cf, dir.path()).expect("daemon");
    let mut c = d.op().await;

    let restore = |target: String, backup: &str| pb::RestoreRequest {
        target,
        backup_id: backup.into(),
        ..Default::default()
    };
    let cbr_disk = format!("backends/cbr/volumes/{}", cbr_ids.data_volume_id);
    let vbs_vol = format!("backends/vbs/volumes/{}", vbs_ids.volume_id);
    let mut names = vec![
        start_backup(&mut c, 0, "").await.name,
        c.restore(restore(target(0), "no-such-backup"))
            .await
            .unwrap()
            .into_inner()
            .name,
        c.restore(restore(cbr_disk.clone(), &cbr_ids.disk_backup_id))
            .await
            .unwrap()
            .into_inner()
            .name,
        c.restore(restore(vbs_vol.clone(), &vbs_ids.backup_id))
            .await
            .unwrap()
            .into_inner()
            .name,
        c.restore(restore(
            format!("backends/vbs/volumes/{}", vbs_ids.in_use_volume_id),
            &vbs_ids.backup_id,
        ))
        .await
        .unwrap()
        .into_inner()
        .name,
        c.restore(restore(
            format!("backends/vbs-wrong/volumes/{}", vbs_ids.small_volume_id),
            &vbs_ids.backup_id,
        ))
        .await
        .unwrap()
        .into_inner()
        .name,
    ];
    names.push(
        c.create_backup(pb::CreateBackupRequest {
            target: cbr_disk,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .name,
    );
    let mut states = Vec::new();
    let mut jobs_text = String::new();
    for n in &names {
        let j = wait_done(&mut c, n, T).await;
        states.push(state(&j));
        jobs_text.push_str(&format!("{j:?}\n"));
    }
    assert!(
        states.contains(&"SUCCEEDED") && states.contains(&"FAILED"),
        "{states:?}"
    );
    assert!(
        jobs_text.contains("Keystone refused"),
        "the wrong password failed its job: {jobs_text}"
    );
    // Synchronous calls that fail on the backend with the wrong password:
    // their errors too.
    let e = c
        .list_backups(pb::ListBackupsRequest {
            target: format!("backends/vbs-wrong/volumes/{}", vbs_ids.volume_id),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("Keystone"), "{e:?}");
    jobs_text.push_str(&format!("{e:?}\n"));
    let mut v = restore(
        format!("backends/vbs-wrong/volumes/{}", vbs_ids.volume_id),
        &vbs_ids.backup_id,
    );
    v.validate_only = true;
    let e = c.restore(v).await.unwrap_err();
    jobs_text.push_str(&format!("{e:?}\n"));
    let listed = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    jobs_text.push_str(&format!("{listed:?}"));
    // Stop the daemon so the data dir is complete on disk.
    let logs = d.logs();
    drop(d);
    let mut files = Vec::new();
    all_files(&dir.path().join("data"), &mut files);
    assert!(!files.is_empty());

    let mut secrets = vec![
        OP_TOKEN.to_string(),
        RO_TOKEN.to_string(),
        cf.config().client_secret,
        cc.password.clone(),
        vc.password.clone(),
        WRONG_PASSWORD.to_string(),
    ];
    // And the tokens Keystone handed out: they are secrets too.
    secrets.extend(cbr.keystone().issued_tokens());
    secrets.extend(vbs.keystone().issued_tokens());
    assert!(secrets.len() > 6, "Keystone tokens were issued");
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a secret in the log: {s:.6}…");
        assert!(
            !jobs_text.contains(s.as_str()),
            "a secret in a job: {s:.6}…"
        );
        for f in &files {
            assert!(!contains(f, s), "a secret in the data dir: {s:.6}…");
        }
    }
}
