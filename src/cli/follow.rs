//! Following one job to its end (`--wait`, `custos job watch`) across
//! dropped streams and daemon restarts.
//!
//! A `WatchJob` stream can end for reasons that say nothing about the job:
//! the daemon drains (UNAVAILABLE), is killed (the connection breaks), or
//! restarts. Each time, a fresh connection is made with backoff (200 ms,
//! doubling to 5 s, with jitter), the job is read with `GetJob` first (so a
//! job that ended while we were away is reported), and the watch is opened
//! again. The reconnecting stops after `--reconnect-timeout` (default
//! 5 minutes) without one successful answer: the outcome is then unknown
//! to us (exit 5), and the message says how to look again. Ctrl-C stops
//! watching (never the job) and prints the command that resumes it.

use std::time::Duration;

use custos_adapter_core::backoff::Backoff;
use tokio::time::Instant;
use tonic::Code;

use super::{Client, ClientOpts, connect};
use crate::api::pb;

/// How following a job ended.
#[derive(Debug)]
pub enum Followed {
    /// The job ended (SUCCEEDED, FAILED or CANCELLED).
    Ended(pb::Job),
    /// No answer from the daemon for the whole reconnect bound; the last
    /// version of the job seen, and the last error.
    Lost {
        last: Option<pb::Job>,
        error: String,
    },
    /// Ctrl-C; the job goes on.
    Interrupted,
}

/// Errors of a watch that say the connection or the daemon went away,
/// not that the request was wrong: watching again may work.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

fn is_terminal(j: &pb::Job) -> bool {
    use pb::job::State;
    [State::Succeeded, State::Failed, State::Cancelled]
        .iter()
        .any(|s| *s as i32 == j.state)
}

/// Follows job `name` until it ends, the daemon stays away longer than
/// `reconnect_for`, or Ctrl-C. `on_update` sees every version received.
/// Errors that watching again cannot fix (NOT_FOUND, PERMISSION_DENIED,
/// ...) are returned as they are.
pub async fn follow(
    opts: &ClientOpts,
    client: Client,
    name: &str,
    reconnect_for: Duration,
    on_update: impl FnMut(&pb::Job),
) -> anyhow::Result<Followed> {
    let ctrl_c = async {
        // Without a handler there is no Ctrl-C to report.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = follow_inner(opts, client, name, reconnect_for, on_update) => r,
        _ = ctrl_c => Ok(Followed::Interrupted),
    }
}

async fn follow_inner(
    opts: &ClientOpts,
    client: Client,
    name: &str,
    reconnect_for: Duration,
    mut on_update: impl FnMut(&pb::Job),
) -> anyhow::Result<Followed> {
    let mut client = Some(client);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    // Since when no call has succeeded (None while all is well).
    let mut down_since: Option<Instant> = None;
    let mut last: Option<pb::Job> = None;
    loop {
        let error = match watch_once(&mut client, opts, name, down_since.is_some(), &mut |j| {
            on_update(j);
            last = Some(j.clone());
        })
        .await
        {
            Step::Ended(j) => return Ok(Followed::Ended(*j)),
            Step::Fatal(e) => return Err(e),
            Step::Reconnect { error, answered } => {
                if answered {
                    down_since = None;
                    backoff.reset();
                }
                error
            }
        };
        // A fresh connection next time: the old one may point at a
        // daemon that is gone.
        client = None;
        let since = *down_since.get_or_insert_with(|| {
            eprintln!(
                "custos: lost the watch of {name} ({error}); reconnecting (for up to {})",
                humantime::format_duration(reconnect_for)
            );
            Instant::now()
        });
        if since.elapsed() >= reconnect_for {
            return Ok(Followed::Lost { last, error });
        }
        let wait = backoff
            .next_delay()
            .min(reconnect_for.saturating_sub(since.elapsed()));
        tokio::time::sleep(wait).await;
    }
}

/// What one connection's worth of watching came to.
enum Step {
    Ended(Box<pb::Job>),
    Fatal(anyhow::Error),
    /// Watch again. `answered`: the daemon answered at least once (the
    /// reconnect bound starts over).
    Reconnect {
        error: String,
        answered: bool,
    },
}

/// Connects if needed, reads the job first when `reread` (after a lost
/// connection), then watches it until the stream ends.
async fn watch_once(
    client: &mut Option<Client>,
    opts: &ClientOpts,
    name: &str,
    reread: bool,
    on_update: &mut impl FnMut(&pb::Job),
) -> Step {
    let reconnect = |error: String, answered: bool| Step::Reconnect { error, answered };
    let c = match client {
        Some(c) => c,
        None => match connect(opts).await {
            Ok(c) => client.insert(c),
            Err(e) => return reconnect(format!("{e:#}"), false),
        },
    };
    let mut answered = false;
    if reread {
        match c
            .get_job(pb::GetJobRequest {
                name: name.to_string(),
            })
            .await
        {
            Ok(j) => {
                let j = j.into_inner();
                eprintln!("custos: reconnected; watching {name} again");
                on_update(&j);
                if is_terminal(&j) {
                    return Step::Ended(Box::new(j));
                }
                answered = true;
            }
            Err(s) if transient(s.code()) => return reconnect(describe(&s), false),
            Err(s) => return Step::Fatal(super::status_err(s)),
        }
    }
    let mut stream = match c
        .watch_job(pb::WatchJobRequest {
            name: name.to_string(),
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) if transient(s.code()) => return reconnect(describe(&s), answered),
        Err(s) => return Step::Fatal(super::status_err(s)),
    };
    loop {
        match stream.message().await {
            Ok(Some(j)) => {
                answered = true;
                on_update(&j);
                if is_terminal(&j) {
                    return Step::Ended(Box::new(j));
                }
            }
            Ok(None) => return reconnect("the watch ended before the job".into(), answered),
            Err(s) if transient(s.code()) => return reconnect(describe(&s), answered),
            Err(s) => return Step::Fatal(super::status_err(s)),
        }
    }
}

fn describe(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_trouble_is_retried() {
        assert!(transient(Code::Unavailable));
        assert!(transient(Code::Unknown));
        assert!(!transient(Code::NotFound));
        assert!(!transient(Code::PermissionDenied));
        assert!(!transient(Code::Unauthenticated));
        assert!(!transient(Code::InvalidArgument));
    }
}
