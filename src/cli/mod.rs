//! The command line: `serve`, `simulate`, and the client commands that talk
//! to a running daemon over gRPC (see `config.md` for the fixed flags).

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

use crate::api::pb::{self, backup_service_client::BackupServiceClient};

mod describe;
pub mod exit;
mod follow;
mod output;
mod pages;
mod schedule;
use pages::{Pages, Paging};
pub use schedule::ScheduleCmd;

#[derive(Parser, Debug)]
#[command(
    name = "custos",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CUSTOS_GIT_COMMIT"), ")"),
    about = "Multi-cloud backup orchestrator",
    after_help = exit::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// The daemon's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "CUSTOS_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// A client token (sent as `authorization: Bearer <token>`).
    #[arg(long, global = true, env = "CUSTOS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format: `table` (aligned columns), `wide` (more columns,
    /// nothing shortened), `json` or `yaml` (the answer in the proto's
    /// JSON mapping, as grpcurl shows it; lists as the list response
    /// message, e.g. `{"jobs": [...]}`).
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// For an https:// endpoint: the CA that signed the daemon's
    /// certificate (default: the system's roots).
    #[arg(long, global = true, env = "CUSTOS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate, for a daemon that asks for one (mTLS).
    #[arg(long, global = true, env = "CUSTOS_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, global = true, env = "CUSTOS_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// With --wait and `job watch`: how long to keep trying to reach the
    /// daemon after losing it (a restart, a dropped stream) before giving
    /// up with exit 5; the job itself goes on.
    #[arg(long, global = true, value_parser = crate::config::parse_duration, default_value = "5m")]
    pub reconnect_timeout: Duration,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The table with more columns, nothing shortened.
    Wide,
    /// The proto's canonical JSON mapping, pretty-printed.
    Json,
    /// The same document as YAML.
    Yaml,
}

impl Output {
    /// JSON or YAML: stdout is one document, and every other line (request
    /// ids, progress, hints) goes to stderr.
    pub fn is_document(self) -> bool {
        matches!(self, Output::Json | Output::Yaml)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the daemon.
    Serve {
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Throwaway data dir, simulators in process, a printed token.
        #[arg(long)]
        dev: bool,
        /// Serve without client tokens (everyone is an operator).
        #[arg(long)]
        insecure: bool,
        /// Overrides `listen` from the config.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Runs one backend simulator standalone.
    Simulate {
        #[arg(long)]
        kind: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Seconds a simulated backup or restore job takes.
        #[arg(long, default_value_t = 2.0)]
        job_seconds: f64,
    },
    /// Lists the configured backends.
    Backends,
    /// Creates, lists or deletes backups.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Restores a target.
    Restore(RestoreArgs),
    /// Reads, watches or cancels jobs.
    #[command(subcommand)]
    Job(JobCmd),
    /// Backup schedules: cron policies with time zones and retention.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Checks a config file without starting anything.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Prints a shell completion script (e.g. `custos completions bash >
    /// /etc/bash_completion.d/custos`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Unknown keys, bad values, missing environment variables, secret
    /// files that are missing or readable by others: each named, all at
    /// once. Exit 0 when the daemon would start with it.
    Check { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Starts a backup of TARGET.
    Create {
        target: String,
        #[arg(long, help = REQUEST_ID_HELP)]
        request_id: Option<String>,
        /// key=value, repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only what changed since the target's last backup (vbs_v2).
        #[arg(long)]
        incremental: bool,
        #[arg(long, help = WAIT_HELP)]
        wait: bool,
    },
    /// Lists TARGET's backups (first page unless --all or --limit).
    List {
        target: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// One backup, by its name (`TARGET/backups/ID`, as `backup list -o wide` shows).
    Get { name: String },
    /// Deletes a backup: `TARGET BACKUP_ID`, or its name alone
    /// (`TARGET/backups/ID`, as `backup list -o wide` shows); asks first on
    /// a terminal, else needs --yes.
    Delete {
        /// The target, or the backup's name.
        target: String,
        /// The backup's id (leave out when the first argument is its name).
        backup_id: Option<String>,
        #[arg(long, help = REQUEST_ID_HELP)]
        request_id: Option<String>,
        #[arg(long, help = WAIT_HELP)]
        wait: bool,
        /// Delete without asking (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

const REQUEST_ID_HELP: &str = "Idempotency key (default: a fresh UUID). Printed first as `request_id: ID` \
(on stderr with -o json|yaml, so stdout stays parseable); running the same command again with \
--request-id ID answers the first job and never starts a second one";

const WAIT_HELP: &str = "Print the job's name (`job: NAME`; on stderr with -o json|yaml), then follow \
it to its end, reconnecting across daemon restarts (see --reconnect-timeout); Ctrl-C stops \
watching, not the job. Exit code by outcome (see custos --help)";

#[derive(Args, Debug)]
pub struct RestoreArgs {
    pub target: String,
    #[arg(long = "backup")]
    pub backup: Option<String>,
    /// Point in time (RFC 3339).
    #[arg(long)]
    pub at: Option<String>,
    #[arg(long)]
    pub restore_point: Option<String>,
    /// Source target, for a cross-instance restore.
    #[arg(long = "from")]
    pub from: Option<String>,
    /// BACKUP_ID=VOLUME_ID, repeatable.
    #[arg(long = "map")]
    pub map: Vec<String>,
    #[arg(long)]
    pub no_power_on: bool,
    #[arg(long)]
    pub resource_id: Option<String>,
    #[arg(long)]
    pub validate_only: bool,
    #[arg(long, help = REQUEST_ID_HELP)]
    pub request_id: Option<String>,
    #[arg(long, help = WAIT_HELP)]
    pub wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    Get {
        job: String,
    },
    /// Everything about a job: its fields, restore parameters, the error
    /// with the backend's own words, and its history of events.
    Describe {
        job: String,
    },
    /// Follows a job to its end (reconnecting like --wait); exit code by
    /// outcome.
    Watch {
        job: String,
    },
    Cancel {
        job: String,
    },
    /// Lists jobs, newest first (first page unless --all or --limit).
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Jobs a schedule made (`schedules/{id}` or the id).
        #[arg(long)]
        schedule: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
}

/// The interceptor that adds the bearer token.
type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, tonic::Status> + Send>;
pub(crate) type Client =
    BackupServiceClient<tonic::service::interceptor::InterceptedService<Channel, AddToken>>;

/// TLS for an https:// endpoint: `--ca-file` or the system's roots, and
/// a client certificate when given.
fn client_tls(opts: &ClientOpts) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut tls = ClientTlsConfig::new();
    tls = match &opts.ca_file {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(c), Some(k)) = (&opts.cert_file, &opts.key_file) {
        tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
    }
    Ok(tls)
}

pub(crate) async fn connect(opts: &ClientOpts) -> anyhow::Result<Client> {
    let mut endpoint = Channel::from_shared(opts.endpoint.clone())
        .with_context(|| format!("bad endpoint {:?}", opts.endpoint))?
        .connect_timeout(Duration::from_secs(5))
        // A daemon whose host vanished (no reset ever comes) is noticed
        // within ~30 s, so `--wait` reconnects instead of hanging.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if opts.endpoint.starts_with("https://") {
        endpoint = endpoint
            .tls_config(client_tls(opts)?)
            .context("the TLS settings")?;
    } else if opts.ca_file.is_some() || opts.cert_file.is_some() {
        bail!("--ca-file/--cert-file need an https:// endpoint");
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", opts.endpoint))?;
    let header: Option<MetadataValue<_>> = match &opts.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("the token has characters not allowed in a header")?,
        ),
        None => None,
    };
    let intercept: AddToken = Box::new(move |mut req: Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    });
    // Pages of full jobs can pass the 4 MiB default.
    Ok(BackupServiceClient::with_interceptor(channel, intercept)
        .max_decoding_message_size(64 * 1024 * 1024))
}

/// A failed RPC as an error that keeps its code (for the exit code).
fn status_err(s: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut message = s.message().to_string();
    if let Some(br) = s.get_details_bad_request() {
        for v in br.field_violations {
            message.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    // The call may have been taken before the answer was lost: the same
    // request id gets its job, a new one would make a second.
    let unsure = matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    );
    let sent = SENT_REQUEST_ID
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if unsure && let Some(id) = sent {
        message.push_str(&format!(
            "\n  the request may have been taken: run the command again with --request-id {id} \
             to get its job (a new request id would start a second one)"
        ));
    }
    anyhow::Error::new(exit::RpcError {
        code: s.code(),
        message,
    })
}

/// A line about the command itself (the request id, the job being
/// waited for): on stdout with the table output, on stderr with json/yaml
/// so that stdout stays one parseable document.
fn note(out: Output, line: &str) {
    if !out.is_document() {
        println!("{line}");
    } else {
        eprintln!("{line}");
    }
}

/// The request id to send: the one given, else a fresh UUID v4; printed
/// before the request is sent, so that a request whose answer is lost
/// can be retried with it.
fn request_id_for(given: Option<String>, out: Output) -> String {
    let id = given.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    note(out, &format!("request_id: {id}"));
    *SENT_REQUEST_ID.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
    id
}

/// The request id this command sent (one command, one process): named
/// again when the call fails in a way that may hide a job it made.
static SENT_REQUEST_ID: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Asks before a destructive command: `--yes`, or "y" on a terminal.
/// Without a terminal to ask on, refuses (a script must say `--yes`).
fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(exit::Usage(format!(
            "{question}: not confirmed, nothing was done; stdin is not a terminal to ask on, \
             so pass --yes to confirm"
        ))
        .into());
    }
    eprint!("{question}? [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(exit::Usage("not confirmed; nothing was done".into()).into())
    }
}

fn job_name(s: &str) -> String {
    if s.starts_with("jobs/") {
        s.to_string()
    } else {
        format!("jobs/{s}")
    }
}

/// A job: the document with json/yaml, else `key  value` lines.
fn print_job(j: &pb::Job, out: Output) -> anyhow::Result<()> {
    if out.is_document() {
        return output::print_doc(j, out);
    }
    let rows = [
        ("name", j.name.clone()),
        ("kind", output::job_kind(j.kind).to_string()),
        ("target", j.target.clone()),
        ("state", output::job_state(j.state).to_string()),
        ("message", j.message.clone()),
        ("backup_id", j.backup_id.clone()),
        ("remote_operation", j.remote_operation.clone()),
        ("create_time", time_or_empty(&j.create_time)),
        ("start_time", time_or_empty(&j.start_time)),
        ("end_time", time_or_empty(&j.end_time)),
        ("attempts", j.attempts.to_string()),
        ("schedule", j.schedule.clone()),
        ("created_by", j.created_by.clone()),
        ("request_id", j.request_id.clone()),
    ];
    for (k, v) in rows {
        if !v.is_empty() {
            println!("{k:<17}{v}");
        }
    }
    if let Some(e) = &j.error {
        for d in &e.details {
            println!(
                "{:<17}{} {} {}",
                "backend_error", d.http_status, d.title, d.detail
            );
        }
    }
    Ok(())
}

fn time_or_empty(t: &Option<prost_types::Timestamp>) -> String {
    output::time(t).map(output::rfc3339).unwrap_or_default()
}

/// Follows a job to its end (across daemon restarts, see `follow`),
/// prints it, and returns the exit code of its outcome.
async fn wait_job(
    client: Client,
    opts: &ClientOpts,
    name: &str,
    out: Output,
) -> anyhow::Result<i32> {
    let tty = std::io::stderr().is_terminal() && !out.is_document();
    // A spinner with the job's words; a bar once the backend says how far
    // it is; plain lines when stderr is not a terminal.
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let mut barred = false;
    let followed = follow::follow(opts, client, name, opts.reconnect_timeout, |j| {
        let words = format!("{} {}", output::job_state(j.state), j.message);
        match &bar {
            Some(b) => {
                if let Some(p) = j.progress_percent {
                    if !barred {
                        barred = true;
                        b.set_length(100);
                        if let Ok(style) =
                            indicatif::ProgressStyle::with_template("{bar:30} {pos:>3}% {msg}")
                        {
                            b.set_style(style);
                        }
                    }
                    b.set_position(u64::try_from(p.clamp(0, 100)).unwrap_or(0));
                }
                b.set_message(words);
            }
            None if !out.is_document() => match j.progress_percent {
                Some(p) => eprintln!("{words} ({p}%)"),
                None => eprintln!("{words}"),
            },
            None => {}
        }
    })
    .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match followed? {
        follow::Followed::Ended(j) => {
            print_job(&j, out)?;
            if !out.is_document() {
                println!("{}", outcome_line(&j));
            }
            Ok(exit::for_job(&j))
        }
        follow::Followed::Lost { last, error } => {
            let state = last
                .as_ref()
                .map(|j| format!(" (last seen {} {})", output::job_state(j.state), j.message))
                .unwrap_or_default();
            eprintln!(
                "custos: gave up after {} without reaching the daemon ({error}); \
                 the outcome of {name}{state} is unknown here; look again with: custos job watch {name}",
                humantime::format_duration(opts.reconnect_timeout)
            );
            Ok(exit::OUTCOME_UNKNOWN)
        }
        follow::Followed::Interrupted => {
            eprintln!(
                "custos: stopped watching; {name} goes on. Watch it again with: custos job watch {name}"
            );
            Ok(exit::INTERRUPTED)
        }
    }
}

/// The last line of `--wait`: what happened, and where.
fn outcome_line(j: &pb::Job) -> String {
    use pb::job::{Kind, State};
    let kind = Kind::try_from(j.kind).unwrap_or(Kind::Unspecified);
    let state = State::try_from(j.state).unwrap_or(State::Unspecified);
    let backup = |id: &str| {
        if id.is_empty() {
            "a backup".to_string()
        } else {
            format!("backup {id}")
        }
    };
    match (state, kind) {
        (State::Succeeded, Kind::Backup) => {
            format!("{} made of {} ({})", backup(&j.backup_id), j.target, j.name)
        }
        (State::Succeeded, Kind::Restore) => {
            let from = j
                .restore
                .as_ref()
                .map(|r| {
                    let mut f = Vec::new();
                    if !r.backup_id.is_empty() {
                        f.push(format!("backup {}", r.backup_id));
                    }
                    if r.point_in_time.is_some() {
                        f.push("a point in time".to_string());
                    }
                    if !r.source.is_empty() {
                        f.push(format!("of {}", r.source));
                    }
                    f.join(" ")
                })
                .filter(|f| !f.is_empty())
                .unwrap_or_else(|| "its backup".into());
            format!("{} restored from {from} ({})", j.target, j.name)
        }
        (State::Succeeded, Kind::DeleteBackup) => {
            format!(
                "{} of {} deleted ({})",
                backup(&j.backup_id),
                j.target,
                j.name
            )
        }
        _ => format!(
            "{} {} {}: {}",
            j.name,
            output::job_kind(j.kind),
            output::job_state(j.state),
            j.message
        ),
    }
}

/// After a mutating call answered with a job: with `--wait`, names the
/// job first and follows it; else prints it.
async fn created(c: Client, opts: &ClientOpts, j: pb::Job, wait: bool) -> anyhow::Result<i32> {
    let out = opts.output;
    if wait && !j.validate_only {
        note(out, &format!("job: {}", j.name));
        return wait_job(c, opts, &j.name, out).await;
    }
    print_job(&j, out)?;
    Ok(exit::OK)
}

/// Runs a client command; returns the process exit code.
pub async fn run_client(cmd: Command, opts: ClientOpts) -> anyhow::Result<i32> {
    let out = opts.output;
    // Destructive commands are confirmed before anything is sent.
    match &cmd {
        Command::Backup(BackupCmd::Delete {
            target,
            backup_id,
            yes,
            ..
        }) => confirm(
            &match backup_id {
                Some(id) => format!("delete backup {id} of {target}"),
                None => format!("delete {target}"),
            },
            *yes,
        )?,
        Command::Schedule(ScheduleCmd::Delete { name, yes }) => confirm(
            &format!("delete schedule {}", schedule::schedule_name(name)),
            *yes,
        )?,
        _ => {}
    }
    let mut c = connect(&opts).await?;
    match cmd {
        Command::Backends => {
            let r = c
                .list_backends(pb::ListBackendsRequest::default())
                .await
                .map_err(status_err)?
                .into_inner();
            if out.is_document() {
                output::print_list(&r, "backends", out)?;
            } else {
                let (h, rows) = output::backends_table(&r.backends, out == Output::Wide);
                output::print_table("backends", &h, rows);
            }
            Ok(0)
        }
        Command::Backup(BackupCmd::Create {
            target,
            request_id,
            labels,
            incremental,
            wait,
        }) => {
            let mut map = std::collections::HashMap::new();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("--label {l:?}: use key=value"))?;
                map.insert(k.to_string(), v.to_string());
            }
            let j = c
                .create_backup(pb::CreateBackupRequest {
                    target,
                    request_id: request_id_for(request_id, out),
                    labels: map,
                    incremental,
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            created(c, &opts, j, wait).await
        }
        Command::Backup(BackupCmd::List { target, paging }) => {
            let mut pages = Pages::new(paging);
            let mut backups = Vec::new();
            while let Some((page_size, page_token)) = pages.next_request() {
                let r = c
                    .list_backups(pb::ListBackupsRequest {
                        target: target.clone(),
                        page_size,
                        page_token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                pages.add(r.backups, r.next_page_token, &mut backups)?;
            }
            if out.is_document() {
                let list = pb::ListBackupsResponse {
                    backups,
                    next_page_token: String::new(),
                };
                output::print_list(&list, "backups", out)?;
            } else {
                let (h, rows) =
                    output::backups_table(&backups, out == Output::Wide, chrono::Utc::now());
                output::print_table("backups", &h, rows);
            }
            if pages.more() {
                eprintln!("{}", pages.hint("backups"));
            }
            Ok(0)
        }
        Command::Backup(BackupCmd::Delete {
            target,
            backup_id,
            request_id,
            wait,
            yes: _,
        }) => {
            // One argument: the backup's name.
            let (target, backup_id, name) = match backup_id {
                Some(id) => (target, id, String::new()),
                None => (String::new(), String::new(), target),
            };
            let j = c
                .delete_backup(pb::DeleteBackupRequest {
                    target,
                    backup_id,
                    name,
                    request_id: request_id_for(request_id, out),
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            created(c, &opts, j, wait).await
        }
        Command::Backup(BackupCmd::Get { name }) => {
            let b = c
                .get_backup(pb::GetBackupRequest { name })
                .await
                .map_err(status_err)?
                .into_inner();
            if out.is_document() {
                output::print_doc(&b, out)?;
            } else {
                println!("name:     {}", b.name);
                println!("id:       {}", b.id);
                println!("target:   {}", b.target);
                println!("created:  {}", output::time_cell(&b.create_time));
                println!("state:    {}", output::cell(&b.state));
            }
            Ok(0)
        }
        Command::Restore(a) => {
            let point_in_time = match &a.at {
                Some(s) => {
                    let t = chrono::DateTime::parse_from_rfc3339(s)
                        .with_context(|| format!("--at {s:?}: not an RFC 3339 time"))?;
                    Some(prost_types::Timestamp {
                        seconds: t.timestamp(),
                        nanos: t.timestamp_subsec_nanos() as i32,
                    })
                }
                None => None,
            };
            let mut mappings = Vec::new();
            for m in &a.map {
                let (b, v) = m
                    .split_once('=')
                    .with_context(|| format!("--map {m:?}: use BACKUP_ID=VOLUME_ID"))?;
                mappings.push(pb::VolumeMapping {
                    backup_id: b.to_string(),
                    volume_id: v.to_string(),
                });
            }
            let j = c
                .restore(pb::RestoreRequest {
                    target: a.target,
                    backup_id: a.backup.unwrap_or_default(),
                    point_in_time,
                    restore_point: a.restore_point.unwrap_or_default(),
                    source: a.from.unwrap_or_default(),
                    mappings,
                    power_on: a.no_power_on.then_some(false),
                    resource_id: a.resource_id.unwrap_or_default(),
                    // A preflight creates no job: nothing to retry.
                    request_id: if a.validate_only {
                        a.request_id.unwrap_or_default()
                    } else {
                        request_id_for(a.request_id, out)
                    },
                    validate_only: a.validate_only,
                    labels: Default::default(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            created(c, &opts, j, a.wait).await
        }
        Command::Job(JobCmd::Get { job }) => {
            let j = c
                .get_job(pb::GetJobRequest {
                    name: job_name(&job),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_job(&j, out)?;
            Ok(0)
        }
        Command::Job(JobCmd::Describe { job }) => {
            let j = c
                .get_job(pb::GetJobRequest {
                    name: job_name(&job),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if out.is_document() {
                print_job(&j, out)?;
            } else {
                print!("{}", describe::describe(&j, chrono::Utc::now()));
            }
            Ok(0)
        }
        Command::Job(JobCmd::Watch { job }) => wait_job(c, &opts, &job_name(&job), out).await,
        Command::Job(JobCmd::Cancel { job }) => {
            let j = c
                .cancel_job(pb::CancelJobRequest {
                    name: job_name(&job),
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_job(&j, out)?;
            Ok(0)
        }
        Command::Schedule(cmd) => schedule::run(c, &opts, cmd).await,
        Command::Job(JobCmd::List {
            state,
            target,
            kind,
            schedule,
            paging,
        }) => {
            let mut terms = Vec::new();
            if let Some(s) = schedule {
                let s = if s.starts_with("schedules/") {
                    s
                } else {
                    format!("schedules/{s}")
                };
                terms.push(format!("schedule=\"{s}\""));
            }
            if let Some(s) = state {
                terms.push(format!("state={}", s.to_uppercase()));
            }
            if let Some(k) = kind {
                terms.push(format!("kind={}", k.to_uppercase()));
            }
            if let Some(t) = target {
                terms.push(format!("target=\"{t}\""));
            }
            let filter = terms.join(" AND ");
            let mut pages = Pages::new(paging);
            let mut jobs = Vec::new();
            while let Some((page_size, page_token)) = pages.next_request() {
                let r = c
                    .list_jobs(pb::ListJobsRequest {
                        page_size,
                        page_token,
                        filter: filter.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                pages.add(r.jobs, r.next_page_token, &mut jobs)?;
            }
            if out.is_document() {
                let list = pb::ListJobsResponse {
                    jobs,
                    next_page_token: String::new(),
                };
                output::print_list(&list, "jobs", out)?;
            } else {
                let (h, rows) = output::jobs_table(&jobs, out == Output::Wide, chrono::Utc::now());
                output::print_table("jobs", &h, rows);
            }
            if pages.more() {
                eprintln!("{}", pages.hint("jobs"));
            }
            Ok(0)
        }
        Command::Serve { .. }
        | Command::Simulate { .. }
        | Command::Config(_)
        | Command::Completions { .. } => {
            bail!("not a client command")
        }
    }
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    #[test]
    fn a_failure_that_may_hide_a_job_names_the_request_id_to_retry_with() {
        let id = request_id_for(Some("retry-me-42".into()), Output::Json);
        let lost = status_err(tonic::Status::unavailable("connection reset")).to_string();
        assert!(lost.contains("--request-id retry-me-42"), "{lost}");
        let refused = status_err(tonic::Status::invalid_argument("bad")).to_string();
        assert!(!refused.contains("--request-id"), "{refused}");
        assert_eq!(id, "retry-me-42");
    }

    #[test]
    fn the_last_line_says_what_happened_and_where() {
        let mut j = pb::Job {
            name: "jobs/1".into(),
            kind: pb::job::Kind::Backup as i32,
            state: pb::job::State::Succeeded as i32,
            target: "backends/vbs/volumes/v".into(),
            backup_id: "b-9".into(),
            ..Default::default()
        };
        assert_eq!(
            outcome_line(&j),
            "backup b-9 made of backends/vbs/volumes/v (jobs/1)"
        );
        j.kind = pb::job::Kind::Restore as i32;
        j.restore = Some(pb::RestoreParameters {
            backup_id: "b-9".into(),
            ..Default::default()
        });
        assert_eq!(
            outcome_line(&j),
            "backends/vbs/volumes/v restored from backup b-9 (jobs/1)"
        );
        j.state = pb::job::State::Failed as i32;
        j.message = "the volume is in use".into();
        assert_eq!(
            outcome_line(&j),
            "jobs/1 RESTORE FAILED: the volume is in use"
        );
    }
}
