//! `custos schedule create|list|get|update|pause|resume|run|delete`.

use std::collections::HashMap;

use super::{Client, ClientOpts, Output, Pages, Paging, created, output, status_err};
use crate::api::pb;
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapArg {
    /// No new run while the last one has not ended (default).
    Skip,
    Allow,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpArg {
    /// One run for a window missed while the daemon was down (default).
    RunOnce,
    Skip,
}

/// The fields of a schedule that create and update take.
#[derive(Args, Debug, Default)]
pub struct ScheduleFields {
    /// 5-field crontab (`min hour dom month dow`), 6-field (seconds
    /// first), or @hourly/@daily/@weekly/@monthly/@yearly.
    #[arg(long)]
    pub cron: Option<String>,
    /// IANA time zone (default UTC).
    #[arg(long)]
    pub time_zone: Option<String>,
    #[arg(long, value_enum)]
    pub overlap: Option<OverlapArg>,
    #[arg(long, value_enum)]
    pub catch_up: Option<CatchUpArg>,
    /// Retention: keep this many of the schedule's newest backups.
    #[arg(long)]
    pub keep_last: Option<i32>,
    /// Retention: delete the schedule's backups older than this (`30d`).
    #[arg(long)]
    pub max_age: Option<String>,
    /// Retention: never delete the newest N good backups (default 1).
    #[arg(long)]
    pub min_keep: Option<i32>,
    /// key=value, repeatable (replaces all labels on update).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Make incremental backups (true/false).
    #[arg(long)]
    pub incremental: Option<bool>,
    #[arg(long)]
    pub validate_only: bool,
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Creates a schedule; it first runs at its next due time.
    Create {
        /// The id in schedules/{id} (lower-case letters, digits, '-').
        id: String,
        target: String,
        /// Created paused.
        #[arg(long)]
        paused: bool,
        #[command(flatten)]
        fields: ScheduleFields,
    },
    /// Lists schedules (first page unless --all or --limit).
    List {
        #[command(flatten)]
        paging: Paging,
    },
    Get {
        name: String,
    },
    /// Changes the fields given (only those).
    Update {
        name: String,
        #[command(flatten)]
        fields: ScheduleFields,
    },
    Pause {
        name: String,
    },
    /// Runs again from the next due time (never at once).
    Resume {
        name: String,
    },
    /// Runs the schedule's backup now.
    Run {
        name: String,
        #[arg(long, help = super::REQUEST_ID_HELP)]
        request_id: Option<String>,
        #[arg(long, help = super::WAIT_HELP)]
        wait: bool,
    },
    /// Deletes the schedule (its jobs and backups stay); asks first on a
    /// terminal, else needs --yes.
    Delete {
        name: String,
        /// Delete without asking (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

pub(super) fn schedule_name(s: &str) -> String {
    if s.starts_with("schedules/") {
        s.to_string()
    } else {
        format!("schedules/{s}")
    }
}

fn labels(v: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for l in v {
        let (k, val) = l
            .split_once('=')
            .with_context(|| format!("--label {l:?}: use key=value"))?;
        m.insert(k.to_string(), val.to_string());
    }
    Ok(m)
}

/// The schedule these flags describe, and the update mask they make.
fn apply(f: &ScheduleFields, s: &mut pb::Schedule) -> anyhow::Result<Vec<String>> {
    let mut mask = Vec::new();
    if let Some(c) = &f.cron {
        s.cron = c.clone();
        mask.push("cron");
    }
    if let Some(z) = &f.time_zone {
        s.time_zone = z.clone();
        mask.push("time_zone");
    }
    if let Some(o) = f.overlap {
        s.overlap_policy = match o {
            OverlapArg::Skip => pb::schedule::OverlapPolicy::Skip,
            OverlapArg::Allow => pb::schedule::OverlapPolicy::Allow,
        } as i32;
        mask.push("overlap_policy");
    }
    if let Some(c) = f.catch_up {
        s.catch_up = match c {
            CatchUpArg::RunOnce => pb::schedule::CatchUp::RunOnce,
            CatchUpArg::Skip => pb::schedule::CatchUp::Skip,
        } as i32;
        mask.push("catch_up");
    }
    let r = s.retention.get_or_insert_with(Default::default);
    if let Some(n) = f.keep_last {
        r.keep_last = n;
        mask.push("retention.keep_last");
    }
    if let Some(a) = &f.max_age {
        r.max_age = a.clone();
        mask.push("retention.max_age");
    }
    if let Some(n) = f.min_keep {
        r.min_keep = n;
        mask.push("retention.min_keep");
    }
    if !f.labels.is_empty() {
        s.labels = labels(&f.labels)?;
        mask.push("labels");
    }
    if let Some(i) = f.incremental {
        s.incremental = i;
        mask.push("incremental");
    }
    Ok(mask.into_iter().map(str::to_string).collect())
}

fn enum_name(v: i32, overlap: bool) -> &'static str {
    if overlap {
        pb::schedule::OverlapPolicy::try_from(v)
            .map(|x| x.as_str_name())
            .unwrap_or("?")
    } else {
        pb::schedule::CatchUp::try_from(v)
            .map(|x| x.as_str_name())
            .unwrap_or("?")
    }
}

/// A schedule: the document with json/yaml, else `key  value` lines.
fn print_schedule(s: &pb::Schedule, out: Output) -> anyhow::Result<()> {
    if out.is_document() {
        return output::print_doc(s, out);
    }
    let time = |t: &Option<prost_types::Timestamp>| {
        output::time(t).map(output::rfc3339).unwrap_or_default()
    };
    let rows = [
        ("name", s.name.clone()),
        ("target", s.target.clone()),
        ("cron", s.cron.clone()),
        ("time_zone", s.time_zone.clone()),
        ("paused", s.paused.to_string()),
        (
            "overlap_policy",
            enum_name(s.overlap_policy, true).to_string(),
        ),
        ("catch_up", enum_name(s.catch_up, false).to_string()),
        ("incremental", s.incremental.to_string()),
        ("last_job", s.last_job.clone()),
        ("create_time", time(&s.create_time)),
        ("update_time", time(&s.update_time)),
    ];
    for (k, v) in rows {
        if !v.is_empty() {
            println!("{k:<17}{v}");
        }
    }
    if let Some(r) = &s.retention {
        println!(
            "{:<17}keep_last {} max_age {} min_keep {}",
            "retention",
            r.keep_last,
            if r.max_age.is_empty() {
                "-"
            } else {
                &r.max_age
            },
            r.min_keep
        );
    }
    for t in &s.next_run_times {
        println!("{:<17}{}", "next_run_time", time(&Some(*t)));
    }
    if let Some(k) = &s.last_skip
        && k.time.is_some()
    {
        println!(
            "{:<17}{} {}: {}",
            "last_skip",
            time(&k.time),
            k.reason,
            k.message
        );
    }
    Ok(())
}

pub async fn run(mut c: Client, opts: &ClientOpts, cmd: ScheduleCmd) -> anyhow::Result<i32> {
    let out = opts.output;
    match cmd {
        ScheduleCmd::Create {
            id,
            target,
            paused,
            fields,
        } => {
            let mut s = pb::Schedule {
                target,
                paused,
                ..Default::default()
            };
            apply(&fields, &mut s)?;
            if s.retention
                .as_ref()
                .is_some_and(|r| *r == pb::Retention::default())
            {
                s.retention = None;
            }
            let s = c
                .create_schedule(pb::CreateScheduleRequest {
                    schedule_id: id,
                    schedule: Some(s),
                    validate_only: fields.validate_only,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_schedule(&s, out)?;
        }
        ScheduleCmd::List { paging } => {
            let mut pages = Pages::new(paging);
            let mut schedules = Vec::new();
            while let Some((page_size, page_token)) = pages.next_request() {
                let r = c
                    .list_schedules(pb::ListSchedulesRequest {
                        page_size,
                        page_token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                pages.add(r.schedules, r.next_page_token, &mut schedules)?;
            }
            if out.is_document() {
                let list = pb::ListSchedulesResponse {
                    schedules,
                    next_page_token: String::new(),
                };
                output::print_list(&list, "schedules", out)?;
            } else {
                let (h, rows) =
                    output::schedules_table(&schedules, out == Output::Wide, chrono::Utc::now());
                output::print_table("schedules", &h, rows);
            }
            if pages.more() {
                eprintln!("{}", pages.hint("schedules"));
            }
        }
        ScheduleCmd::Get { name } => {
            let s = c
                .get_schedule(pb::GetScheduleRequest {
                    name: schedule_name(&name),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_schedule(&s, out)?;
        }
        ScheduleCmd::Update { name, fields } => {
            let mut s = pb::Schedule {
                name: schedule_name(&name),
                ..Default::default()
            };
            let mask = apply(&fields, &mut s)?;
            if mask.is_empty() {
                anyhow::bail!(
                    "nothing to change: give at least one field (--cron, --time-zone, ...)"
                );
            }
            let s = c
                .update_schedule(pb::UpdateScheduleRequest {
                    schedule: Some(s),
                    update_mask: mask,
                    validate_only: fields.validate_only,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_schedule(&s, out)?;
        }
        ScheduleCmd::Pause { name } => {
            let s = c
                .pause_schedule(pb::PauseScheduleRequest {
                    name: schedule_name(&name),
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_schedule(&s, out)?;
        }
        ScheduleCmd::Resume { name } => {
            let s = c
                .resume_schedule(pb::ResumeScheduleRequest {
                    name: schedule_name(&name),
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_schedule(&s, out)?;
        }
        ScheduleCmd::Run {
            name,
            request_id,
            wait,
        } => {
            let j = c
                .run_schedule(pb::RunScheduleRequest {
                    name: schedule_name(&name),
                    request_id: super::request_id_for(request_id, out),
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            return created(c, opts, j, wait).await;
        }
        ScheduleCmd::Delete { name, yes: _ } => {
            let name = schedule_name(&name);
            let r = c
                .delete_schedule(pb::DeleteScheduleRequest {
                    name: name.clone(),
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let line = format!("deleted {name} (its jobs and backups stay)");
            if out.is_document() {
                // The answer (an empty message, `{}`) is the document.
                eprintln!("{line}");
                output::print_doc(&r, out)?;
            } else {
                println!("{line}");
            }
        }
    }
    Ok(0)
}
