//! `-o table|wide|json|yaml`, black-box: the real `custos` binary against
//! the real daemon and the CF simulator. JSON is the proto's canonical JSON
//! mapping of the same answer read here through the gRPC client (as
//! grpcurl would print it); YAML is the same document; lists are the list
//! response message; `wide` shows columns `table` does not and nothing
//! shortened; tables have an AGE column.
//!
//! Multi-threaded runtimes: the CLI runs as a blocking child process while
//! the simulator answers on this runtime.

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use custos::api::pb;
use custos_cf_v3::sim::{SimConfig, cf_error};
use prost::Message;
use serde_json::{Value, json};

use crate::harness::*;

const T: Duration = Duration::from_secs(30);

fn run(d: &Daemon, args: &[&str]) -> Output {
    let bin =
        std::env::var("CUSTOS_IT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_custos").to_string());
    let o = Command::new(bin)
        .args(args)
        .env("CUSTOS_ENDPOINT", format!("http://{}", d.addr))
        .env("CUSTOS_TOKEN", OP_TOKEN)
        .env_remove("CUSTOS_CA_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "custos {args:?}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{}", stdout(o)))
}

fn yaml_of(o: &Output) -> Value {
    yaml_serde::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one YAML document ({e}):\n{}", stdout(o)))
}

/// `m` in the proto's canonical JSON mapping, made here independently of
/// the CLI: encoded, decoded with the daemon's descriptor set, serialized
/// with protojson's defaults.
fn mapping<M: Message>(m: &M, full_name: &str) -> Value {
    let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let desc = pool.get_message_by_name(full_name).unwrap();
    let dm = prost_reflect::DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).unwrap();
    serde_json::to_value(&dm).unwrap()
}

async fn get_job(c: &mut Client, name: &str) -> pb::Job {
    c.get_job(pb::GetJobRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

/// A succeeded backup with labels and a failed restore with the backend's
/// error entries: the fields the JSON has to get right.
async fn two_jobs(sim: &custos_cf_v3::sim::Simulator, c: &mut Client) -> (pb::Job, pb::Job) {
    let mut req = backup_req(0, "out-backup-1");
    req.labels = [
        ("team".into(), "db".into()),
        ("app".into(), "orders".into()),
    ]
    .into();
    let b = c.create_backup(req).await.unwrap().into_inner();
    let b = wait_done(c, &b.name, T).await;
    assert_eq!(state(&b), "SUCCEEDED", "{}", b.message);
    sim.fail_next_job(
        &inst(0),
        cf_error(
            10001,
            "CF-ServerError",
            &format!("restore broke: {}", "x".repeat(80)),
        ),
    );
    let mut r = restore_req(0);
    r.backup_id = "seed-0".into();
    let r = c.restore(r).await.unwrap().into_inner();
    let r = wait_done(c, &r.name, T).await;
    assert_eq!(state(&r), "FAILED", "{}", r.message);
    (b, r)
}

/// `job get -o json` is the canonical JSON mapping of the same `GetJob`
/// answer (lowerCamelCase names, enum names, RFC 3339 times, defaults
/// left out), pretty-printed; `-o yaml` is the same document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_get_json_is_the_proto_json_mapping_and_yaml_the_same_document() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let (b, r) = two_jobs(&sim, &mut c).await;

    for job in [&b, &r] {
        let o = run(&d, &["job", "get", &job.name, "-o", "json"]);
        let got = json_of(&o);
        let want = mapping(&get_job(&mut c, &job.name).await, "custos.v1.Job");
        assert_eq!(got, want, "{}", stdout(&o));
        assert!(
            stdout(&o).starts_with("{\n  \"name\": "),
            "pretty-printed, fields in proto order:\n{}",
            stdout(&o)
        );
        let y = run(&d, &["job", "get", &job.name, "-o", "yaml"]);
        assert_eq!(yaml_of(&y), got, "YAML:\n{}", stdout(&y));
        assert!(stdout(&y).starts_with("name: jobs/"), "{}", stdout(&y));
    }

    // Hand-checked names and shapes, as grpcurl shows them.
    let v = json_of(&run(&d, &["job", "get", &b.name, "-o", "json"]));
    assert_eq!(v["kind"], "BACKUP");
    assert_eq!(v["state"], "SUCCEEDED");
    assert_eq!(v["backupId"], b.backup_id.as_str());
    assert_eq!(v["requestId"], "out-backup-1");
    assert_eq!(v["createdBy"], "ops");
    assert_eq!(v["labels"], json!({"app": "orders", "team": "db"}));
    let created = v["createTime"].as_str().expect("createTime, a string");
    assert!(created.ends_with('Z'), "{created}");
    chrono::DateTime::parse_from_rfc3339(created).expect("RFC 3339");
    assert_eq!(v["events"][0]["state"], "PENDING");
    for snake in ["create_time", "backup_id", "request_id", "created_by"] {
        assert!(v.get(snake).is_none(), "{snake} in {v}");
    }
    // Defaults are left out (attempts 0, validate_only false, no error).
    for absent in ["attempts", "validateOnly", "error", "restore", "schedule"] {
        assert!(v.get(absent).is_none(), "{absent} in {v}");
    }

    let v = json_of(&run(&d, &["job", "get", &r.name, "-o", "json"]));
    assert_eq!(v["kind"], "RESTORE");
    assert_eq!(v["state"], "FAILED");
    assert_eq!(v["restore"]["backupId"], "seed-0");
    assert!(v["error"]["code"].as_i64().is_some(), "{v}");
    let detail = &v["error"]["details"][0];
    assert_eq!(detail["title"], "CF-ServerError", "{v}");
    assert!(detail["detail"].as_str().unwrap().contains("restore broke"));
    // `job describe -o json` prints the same document.
    let dj = json_of(&run(&d, &["job", "describe", &r.name, "-o", "json"]));
    assert_eq!(dj, v);
}

/// Lists are the list response message with every page merged
/// (`{"jobs": [...]}`), each item the mapping of the job; YAML parses to
/// the same value; an empty list still has its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_list_all_is_the_list_response_message() {
    let sim = sim(SimConfig::default(), 5).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let names = create_backups(&mut c, 0..5).await;
    expect_all_succeed(&mut c, &names, T, &d).await;

    let o = run(
        &d,
        &["job", "list", "--all", "--page-size", "2", "-o", "json"],
    );
    let v = json_of(&o);
    let obj = v.as_object().expect("an object, not an array");
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["jobs"], "{v}");
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 5, "every page");
    let all = c
        .list_jobs(pb::ListJobsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.jobs.len(), 5);
    assert_eq!(v, mapping(&all, "custos.v1.ListJobsResponse"));

    let y = run(
        &d,
        &["job", "list", "--all", "--page-size", "2", "-o", "yaml"],
    );
    assert_eq!(yaml_of(&y), v);
    assert!(
        stdout(&y).starts_with("jobs:\n- name: jobs/"),
        "{}",
        stdout(&y)
    );

    let o = run(&d, &["job", "list", "--state", "CANCELLED", "-o", "json"]);
    assert_eq!(json_of(&o), json!({"jobs": []}));

    // The other lists too, each as its response message.
    let v = json_of(&run(&d, &["backends", "-o", "json"]));
    assert_eq!(v["backends"][0]["name"], "backends/cf");
    assert_eq!(v["backends"][0]["capabilities"]["createBackup"], true);
    let v = json_of(&run(&d, &["backup", "list", &target(0), "-o", "json"]));
    let backups = v["backups"].as_array().unwrap();
    assert!(backups.iter().any(|b| b["id"] == "seed-0"), "{v}");
    assert!(backups[0]["createTime"].is_string(), "{v}");

    // Lines that are not the document go to stderr: stdout parses.
    let o = run(
        &d,
        &["backup", "create", &target(0), "--wait", "-o", "yaml"],
    );
    let y = yaml_of(&o);
    assert_eq!(y["state"], "SUCCEEDED", "{y}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("request_id: ") && err.contains("job: jobs/"),
        "{err}"
    );
}

/// `-o table` has an AGE column, full names, a shortened long message;
/// `-o wide` adds columns and shortens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_shows_more_columns_and_full_names_and_tables_have_age() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&sim, dir.path(), &Opts::default());
    let mut c = d.op().await;
    let (b, r) = two_jobs(&sim, &mut c).await;
    assert!(
        r.message.chars().count() > 60,
        "a long message to shorten: {:?}",
        r.message
    );

    let table = stdout(&run(&d, &["job", "list"]));
    let wide = stdout(&run(&d, &["job", "list", "-o", "wide"]));
    let header = |s: &str| s.lines().next().unwrap_or_default().to_string();
    let cols = |s: &str| {
        header(s)
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cols(&table),
        ["NAME", "KIND", "TARGET", "STATE", "AGE", "MESSAGE"],
        "{table}"
    );
    for more in ["BACKEND", "BACKUP", "CREATED BY", "REQUEST ID"] {
        assert!(cols(&wide).iter().any(|c| c == more), "{more}:\n{wide}");
        assert!(!cols(&table).iter().any(|c| c == more), "{more}:\n{table}");
    }
    assert_eq!(table.lines().count(), 3, "a header and two rows:\n{table}");
    for out in [&table, &wide] {
        for j in [&b, &r] {
            let row = out
                .lines()
                .find(|l| l.starts_with(&format!("{} ", j.name)))
                .unwrap_or_else(|| panic!("{} in full:\n{out}", j.name));
            assert!(row.contains(&j.target), "{row}");
            // AGE: seconds old, kubectl style.
            let age = row
                .split_whitespace()
                .nth(4)
                .unwrap_or_default()
                .to_string();
            assert!(
                age.ends_with('s') && age[..age.len() - 1].parse::<u32>().is_ok(),
                "AGE {age:?} in {row}"
            );
        }
        // Aligned: every row's second column starts where the header's does.
        let at = header(out).find("KIND").unwrap();
        for l in out.lines().skip(1) {
            assert_eq!(&l[at - 3..at], "   ", "{out}");
            assert_ne!(&l[at..at + 1], " ", "{out}");
        }
        assert!(!out.contains('│') && !out.contains('|') && !out.contains('\u{1b}'));
    }
    assert!(wide.contains(&r.message), "the whole message:\n{wide}");
    assert!(!table.contains(&r.message), "shortened:\n{table}");
    assert!(table.contains('…'), "{table}");
    let wide_row = wide.lines().find(|l| l.starts_with(&b.name)).unwrap();
    for cell in ["cf", b.backup_id.as_str(), "ops", "out-backup-1"] {
        assert!(
            wide_row.contains(&format!("   {cell}   ")),
            "{cell}: {wide_row}"
        );
    }

    // backup list: AGE; wide adds the backup's full resource name.
    let table = stdout(&run(&d, &["backup", "list", &target(0)]));
    let wide = stdout(&run(&d, &["backup", "list", &target(0), "-o", "wide"]));
    assert!(header(&table).contains("AGE") && header(&table).contains("CREATED"));
    assert!(!header(&table).contains("NAME"), "{table}");
    assert!(header(&wide).contains("NAME"), "{wide}");
    let seed = format!("{}/backups/seed-0", target(0));
    assert!(wide.contains(&seed) && !table.contains(&seed), "{wide}");

    // backends: wide adds the capabilities.
    let table = stdout(&run(&d, &["backends"]));
    let wide = stdout(&run(&d, &["backends", "-o", "wide"]));
    assert!(!table.contains("CAPABILITIES") && wide.contains("CAPABILITIES"));
    assert!(wide.contains("create_backup"), "{wide}");

    // schedule list: AGE; wide adds the time zone and policies.
    c.create_schedule(pb::CreateScheduleRequest {
        schedule_id: "nightly".into(),
        schedule: Some(pb::Schedule {
            target: target(0),
            cron: "0 2 * * *".into(),
            time_zone: "Europe/Berlin".into(),
            ..Default::default()
        }),
        validate_only: false,
    })
    .await
    .unwrap();
    let table = stdout(&run(&d, &["schedule", "list"]));
    let wide = stdout(&run(&d, &["schedule", "list", "-o", "wide"]));
    assert!(header(&table).contains("AGE"), "{table}");
    assert!(table.contains("schedules/nightly") && table.contains(&target(0)));
    assert!(!table.contains("Europe/Berlin"), "{table}");
    assert!(header(&wide).contains("TIME ZONE") && wide.contains("Europe/Berlin"));
    let v = json_of(&run(&d, &["schedule", "list", "-o", "json"]));
    assert_eq!(v["schedules"][0]["timeZone"], "Europe/Berlin", "{v}");
}
