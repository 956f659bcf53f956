//! The client commands' exit codes: one table, used by `main`, shown by
//! `custos --help` ([`HELP`]) and the README. Scripts branch on these, so a
//! code keeps its meaning once published.

use tonic::Code;

use crate::api::pb;

/// The command did what was asked (with `--wait`: the job SUCCEEDED).
pub const OK: i32 = 0;
/// With `--wait` or `job watch`: the job ended FAILED or CANCELLED.
pub const JOB_FAILED: i32 = 1;
/// Usage error (bad flags or values, a destructive command not
/// confirmed), or the daemon cannot be reached or does not accept the
/// token (UNAUTHENTICATED, PERMISSION_DENIED).
pub const USAGE: i32 = 2;
/// What was named does not exist (NOT_FOUND).
pub const NOT_FOUND: i32 = 3;
/// The daemon refused the request; nothing was started
/// (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, OUT_OF_RANGE).
pub const REFUSED: i32 = 4;
/// The job's outcome is unknown: it ended with UNKNOWN (a restore that may
/// or may not have run: check the backend by hand), or `--wait` lost the
/// daemon for longer than `--reconnect-timeout` (the job may still be
/// running: `custos job watch NAME`).
pub const OUTCOME_UNKNOWN: i32 = 5;
/// The daemon or a backend failed the call (UNAVAILABLE, DEADLINE_EXCEEDED,
/// RESOURCE_EXHAUSTED, INTERNAL, ...): trying again later may work.
pub const TRY_AGAIN: i32 = 6;
/// Ctrl-C while waiting: the job goes on (128 + SIGINT).
pub const INTERRUPTED: i32 = 130;

/// The exit codes as `--help` shows them.
pub const HELP: &str = "\
Exit codes (client commands):
  0    ok (with --wait: the job succeeded)
  1    the job failed or was cancelled (--wait, job watch)
  2    usage error or not confirmed; cannot connect; token refused
  3    not found
  4    the request was refused (invalid argument, failed precondition,
       request id reused for another request); nothing was started
  5    the job's outcome is unknown: it ended UNKNOWN (check the backend by
       hand), or --wait lost the daemon for longer than --reconnect-timeout
       (see `custos job watch NAME`)
  6    the daemon or a backend failed the call; try again later
  130  interrupted (Ctrl-C) while waiting; the job goes on

Mutating commands (backup create, backup delete, restore) send a request id
(a fresh UUID unless --request-id is given) and print it first (`request_id:
ID`; on stderr with -o json). Running the command again with
--request-id ID never starts a second job: it answers the first one.";

/// A failed RPC, kept whole so that `main` can choose the exit code.
#[derive(Debug)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

/// A usage error found by the CLI itself (exit 2), e.g. a destructive
/// command without `--yes` and without a terminal to ask on.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit code of a gRPC status code.
pub fn for_code(code: Code) -> i32 {
    match code {
        Code::Ok => OK,
        Code::NotFound => NOT_FOUND,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::OutOfRange => REFUSED,
        Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented => USAGE,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown
        | Code::DataLoss
        | Code::Cancelled => TRY_AGAIN,
    }
}

/// The exit code of an error that ended a client command: the RPC's
/// code when an RPC failed, else a usage or connection problem (2).
pub fn for_error(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<RpcError>() {
        Some(r) => for_code(r.code),
        None => USAGE,
    }
}

/// The exit code of a job that ended (what `--wait` returns).
pub fn for_job(j: &pb::Job) -> i32 {
    use pb::job::State;
    match State::try_from(j.state) {
        Ok(State::Succeeded) => OK,
        Ok(State::Failed)
            if j.error
                .as_ref()
                .is_some_and(|e| e.code == Code::Unknown as i32) =>
        {
            OUTCOME_UNKNOWN
        }
        _ => JOB_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_by_status_and_by_job() {
        assert_eq!(for_code(Code::NotFound), 3);
        assert_eq!(for_code(Code::InvalidArgument), 4);
        assert_eq!(for_code(Code::AlreadyExists), 4);
        assert_eq!(for_code(Code::Unauthenticated), 2);
        assert_eq!(for_code(Code::Unavailable), 6);
        let rpc = anyhow::Error::new(RpcError {
            code: Code::FailedPrecondition,
            message: "no".into(),
        })
        .context("deleting");
        assert_eq!(for_error(&rpc), 4, "found through context");
        assert_eq!(for_error(&anyhow::anyhow!("cannot connect")), 2);

        let mut j = pb::Job {
            state: pb::job::State::Succeeded as i32,
            ..Default::default()
        };
        assert_eq!(for_job(&j), 0);
        j.state = pb::job::State::Cancelled as i32;
        assert_eq!(for_job(&j), 1);
        j.state = pb::job::State::Failed as i32;
        j.error = Some(pb::JobError {
            code: Code::Unavailable as i32,
            ..Default::default()
        });
        assert_eq!(for_job(&j), 1);
        j.error = Some(pb::JobError {
            code: Code::Unknown as i32,
            ..Default::default()
        });
        assert_eq!(for_job(&j), 5);
    }
}
