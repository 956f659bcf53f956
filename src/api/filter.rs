//! The job filter of `ListJobs` and `WatchJobs`: the part of AIP-160 that
//! jobs need, parsed by hand (a tokenizer that reads values on demand, and a
//! recursive-descent parser) into an expression tree.
//!
//! ```text
//! filter      = [ expression ]
//! expression  = sequence { "AND" sequence }
//! sequence    = factor { factor }              (juxtaposition: AND)
//! factor      = term { "OR" term }             (OR binds tighter than AND)
//! term        = [ "NOT" | "-" ] simple
//! simple      = restriction | "(" expression ")"
//! restriction = member comparator value  |  "labels" ":" KEY
//! member      = state | kind | target | backend | schedule | create_time
//!             | labels.KEY
//! comparator  = "=" | "!=" | "<" | "<=" | ">" | ">="
//! value       = TEXT | "double quoted" | 'single quoted'   (\-escapes)
//! ```
//!
//! As in AIP-160, `a AND b OR c` is `a AND (b OR c)`. `state`, `kind`,
//! `target`, `backend`, `schedule` and labels take `=` and `!=`;
//! `create_time` (RFC 3339) takes all six comparators. Errors say where
//! (the character offset, from 0) and what was expected.

use chrono::{DateTime, Utc};

use crate::{
    engine::JobIndex,
    job::{JobKind, JobRecord, JobState},
    names,
};

/// The longest filter accepted, in bytes.
pub const MAX_FILTER: usize = 2048;
/// The deepest nesting of parentheses and negations accepted.
pub const MAX_DEPTH: usize = 32;

const KEYS: &str = "state, kind, target, backend, schedule, labels.KEY or create_time";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn as_str(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }

    /// For the keys that take only `=` and `!=` (the parser refuses the
    /// others for them).
    fn equal<T: PartialEq>(self, a: &T, b: &T) -> bool {
        match self {
            Cmp::Ne => a != b,
            _ => a == b,
        }
    }

    fn holds<T: PartialOrd>(self, a: &T, b: &T) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }
}

/// One comparison, its value already checked and in the stored spelling.
#[derive(Debug, Clone, PartialEq)]
enum Restriction {
    State(Cmp, JobState),
    Kind(Cmp, JobKind),
    /// The full target name.
    Target(Cmp, String),
    /// The backend's name (without `backends/`).
    Backend(Cmp, String),
    /// `schedules/{id}`.
    Schedule(Cmp, String),
    /// `labels.KEY = value`; `!=` also holds when the label is absent.
    Label(String, Cmp, String),
    /// `labels:KEY`: the label is present.
    HasLabel(String),
    CreateTime(Cmp, DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    R(Restriction),
}

/// A parsed job filter; the empty filter matches every job.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    expr: Option<Expr>,
}

impl JobFilter {
    pub fn parse(s: &str) -> Result<JobFilter, String> {
        if s.len() > MAX_FILTER {
            return Err(format!("longer than {MAX_FILTER} characters"));
        }
        let mut p = Parser {
            s: s.chars().collect(),
            at: 0,
            depth: 0,
        };
        p.ws();
        if p.eof() {
            return Ok(JobFilter::default());
        }
        let e = p.expression()?;
        p.ws();
        if !p.eof() {
            return Err(if p.peek() == Some(')') {
                format!("at {}: found a \")\" that no \"(\" opened", p.at)
            } else {
                p.err("AND, OR or the end of the filter".to_string())
            });
        }
        Ok(JobFilter { expr: Some(e) })
    }

    pub fn matches(&self, j: &JobRecord) -> bool {
        self.expr.as_ref().is_none_or(|e| eval(e, j))
    }

    /// The narrowest index that holds every job this filter can match:
    /// a narrow one only when the whole expression implies it.
    pub fn index(&self) -> JobIndex {
        self.expr.as_ref().map(index_of).unwrap_or(JobIndex::All)
    }
}

fn eval(e: &Expr, j: &JobRecord) -> bool {
    match e {
        Expr::And(v) => v.iter().all(|e| eval(e, j)),
        Expr::Or(v) => v.iter().any(|e| eval(e, j)),
        Expr::Not(e) => !eval(e, j),
        Expr::R(r) => match r {
            Restriction::State(c, s) => c.equal(&j.state, s),
            Restriction::Kind(c, k) => c.equal(&j.kind, k),
            Restriction::Target(c, t) => c.equal(&j.target, t),
            Restriction::Backend(c, b) => c.equal(&j.backend, b),
            Restriction::Schedule(c, s) => c.equal(&j.schedule.as_deref(), &Some(s.as_str())),
            Restriction::Label(k, c, v) => c.equal(&j.labels.get(k), &Some(v)),
            Restriction::HasLabel(k) => j.labels.contains_key(k),
            Restriction::CreateTime(c, t) => c.holds(&j.create_time, t),
        },
    }
}

/// How narrow an index is: a target's jobs are fewest, then a state's,
/// then a kind's.
fn rank(i: &JobIndex) -> u8 {
    match i {
        JobIndex::Target(_) => 3,
        JobIndex::Ended(_) | JobIndex::Live => 2,
        JobIndex::Kind(_) => 1,
        JobIndex::All => 0,
    }
}

fn index_of(e: &Expr) -> JobIndex {
    match e {
        Expr::R(Restriction::Target(Cmp::Eq, t)) => JobIndex::Target(t.clone()),
        Expr::R(Restriction::State(Cmp::Eq, s)) if s.is_terminal() => JobIndex::Ended(*s),
        Expr::R(Restriction::State(Cmp::Eq, _)) => JobIndex::Live,
        Expr::R(Restriction::Kind(Cmp::Eq, k)) => JobIndex::Kind(*k),
        // Every job a conjunction matches is in each term's index: take the
        // narrowest.
        Expr::And(v) => v
            .iter()
            .map(index_of)
            .max_by_key(rank)
            .unwrap_or(JobIndex::All),
        // A disjunction only when every branch lies in the same index.
        Expr::Or(v) => {
            let mut it = v.iter().map(index_of);
            let first = it.next().unwrap_or(JobIndex::All);
            if it.all(|i| i == first) {
                first
            } else {
                JobIndex::All
            }
        }
        _ => JobIndex::All,
    }
}

struct Parser {
    s: Vec<char>,
    at: usize,
    depth: usize,
}

fn is_member_char(c: char) -> bool {
    c.is_alphanumeric() || "_.-/".contains(c)
}

impl Parser {
    fn err(&self, expected: String) -> String {
        format!("at {}: expected {expected}", self.at)
    }

    fn eof(&self) -> bool {
        self.at >= self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.at).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// The upper-case keyword `kw` at the cursor, standing alone (followed
    /// by whitespace, `(` or the end): consumed.
    fn keyword(&mut self, kw: &str) -> bool {
        let n = kw.chars().count();
        let word: String = self.s.iter().skip(self.at).take(n).collect();
        if word != kw {
            return false;
        }
        match self.s.get(self.at + n) {
            Some(c) if c.is_whitespace() || *c == '(' => {
                self.at += n;
                true
            }
            // `a AND` at the very end: consumed, so that the missing operand
            // is what the error names.
            None => {
                self.at += n;
                true
            }
            _ => false,
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "at {}: nested deeper than {MAX_DEPTH} levels",
                self.at
            ));
        }
        Ok(())
    }

    fn expression(&mut self) -> Result<Expr, String> {
        let mut v = vec![self.sequence()?];
        loop {
            let save = self.at;
            self.ws();
            if self.keyword("AND") {
                self.ws();
                v.push(self.sequence()?);
            } else {
                self.at = save;
                break;
            }
        }
        Ok(flat(v, Expr::And))
    }

    /// Factors side by side, with no operator between them: AND.
    fn sequence(&mut self) -> Result<Expr, String> {
        let mut v = vec![self.factor()?];
        loop {
            let save = self.at;
            self.ws();
            let starts_factor = match self.peek() {
                None | Some(')') => false,
                Some(_) => {
                    let at = self.at;
                    let op = self.keyword("AND") || self.keyword("OR");
                    self.at = at;
                    !op
                }
            };
            if starts_factor && self.at > save {
                v.push(self.factor()?);
            } else {
                self.at = save;
                break;
            }
        }
        Ok(flat(v, Expr::And))
    }

    fn factor(&mut self) -> Result<Expr, String> {
        let mut v = vec![self.term()?];
        loop {
            let save = self.at;
            self.ws();
            if self.keyword("OR") {
                self.ws();
                v.push(self.term()?);
            } else {
                self.at = save;
                break;
            }
        }
        Ok(flat(v, Expr::Or))
    }

    fn term(&mut self) -> Result<Expr, String> {
        let negated = if self.keyword("NOT") {
            self.ws();
            true
        } else if self.peek() == Some('-') {
            self.at += 1;
            true
        } else {
            false
        };
        if negated {
            self.enter()?;
            let e = self.term()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.simple()
    }

    fn simple(&mut self) -> Result<Expr, String> {
        if self.peek() == Some('(') {
            self.enter()?;
            self.at += 1;
            self.ws();
            if self.peek() == Some(')') {
                return Err(self.err("an expression inside \"()\"".into()));
            }
            let e = self.expression()?;
            self.ws();
            if self.peek() != Some(')') {
                return Err(self.err("\")\"".into()));
            }
            self.at += 1;
            self.depth -= 1;
            return Ok(e);
        }
        self.restriction().map(Expr::R)
    }

    fn restriction(&mut self) -> Result<Restriction, String> {
        let start = self.at;
        while self.peek().is_some_and(is_member_char) {
            self.at += 1;
        }
        let member: String = self.s[start..self.at].iter().collect();
        if member.is_empty() {
            return Err(self.err(match self.peek() {
                None => "a key (state, kind, ...) at the end of the filter".to_string(),
                Some(c) => format!("a key ({KEYS}), not {c:?}"),
            }));
        }
        self.ws();
        let op_at = self.at;
        if self.peek() == Some(':') {
            self.at += 1;
            self.ws();
            if member != "labels" {
                return Err(format!(
                    "at {op_at}: \":\" (has) applies to labels only (labels:KEY); use = or != with {member:?}"
                ));
            }
            let key_at = self.at;
            let key = self.value("\":\"")?;
            check_label_key(key_at, &key)?;
            return Ok(Restriction::HasLabel(key));
        }
        let Some(cmp) = self.comparator() else {
            let hint = match member.as_str() {
                "and" | "or" | "not" => format!(
                    "; operators are upper case ({})",
                    member.to_ascii_uppercase()
                ),
                _ => String::new(),
            };
            return Err(format!(
                "at {op_at}: expected a comparison (=, !=, <, <=, >, >=) after {member:?}{hint}"
            ));
        };
        self.ws();
        let value_at = self.at;
        let value = self.value(&format!("{:?}", cmp.as_str()))?;
        let only_eq = |cmp: Cmp| -> Result<Cmp, String> {
            match cmp {
                Cmp::Eq | Cmp::Ne => Ok(cmp),
                other => Err(format!(
                    "at {op_at}: {member} takes = or !=, not {:?}",
                    other.as_str()
                )),
            }
        };
        let bad = |what: &str| {
            format!(
                "at {value_at}: {member} {:?} is not {what}",
                names::truncate(&value)
            )
        };
        Ok(match member.as_str() {
            "state" => Restriction::State(
                only_eq(cmp)?,
                match value.as_str() {
                    "PENDING" => JobState::Pending,
                    "RUNNING" => JobState::Running,
                    "SUCCEEDED" => JobState::Succeeded,
                    "FAILED" => JobState::Failed,
                    "CANCELLED" => JobState::Cancelled,
                    _ => {
                        return Err(bad("one of PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED"));
                    }
                },
            ),
            "kind" => Restriction::Kind(
                only_eq(cmp)?,
                match value.as_str() {
                    "BACKUP" => JobKind::Backup,
                    "RESTORE" => JobKind::Restore,
                    "DELETE_BACKUP" => JobKind::DeleteBackup,
                    _ => return Err(bad("one of BACKUP, RESTORE, DELETE_BACKUP")),
                },
            ),
            // In the stored spelling (GUIDs lower case).
            "target" => Restriction::Target(
                only_eq(cmp)?,
                names::parse_target(&value)
                    .map(|t| t.name())
                    .unwrap_or(value),
            ),
            "backend" => Restriction::Backend(
                only_eq(cmp)?,
                value
                    .strip_prefix("backends/")
                    .unwrap_or(&value)
                    .to_string(),
            ),
            "schedule" => Restriction::Schedule(
                only_eq(cmp)?,
                if value.starts_with("schedules/") {
                    value
                } else {
                    format!("schedules/{value}")
                },
            ),
            "create_time" => Restriction::CreateTime(
                cmp,
                DateTime::parse_from_rfc3339(&value)
                    .map_err(|_| bad("an RFC 3339 timestamp (e.g. \"2024-05-01T00:00:00Z\")"))?
                    .with_timezone(&Utc),
            ),
            "labels" => {
                return Err(format!(
                    "at {start}: labels needs a key: labels.KEY = value, or labels:KEY"
                ));
            }
            m => match m.strip_prefix("labels.") {
                Some(key) => {
                    check_label_key(start + "labels.".len(), key)?;
                    Restriction::Label(key.to_string(), only_eq(cmp)?, value)
                }
                None => {
                    return Err(format!(
                        "at {start}: unknown key {:?}; use {KEYS}",
                        names::truncate(m)
                    ));
                }
            },
        })
    }

    fn comparator(&mut self) -> Option<Cmp> {
        let (c, n) = match (self.peek(), self.s.get(self.at + 1).copied()) {
            (Some('!'), Some('=')) => (Cmp::Ne, 2),
            (Some('<'), Some('=')) => (Cmp::Le, 2),
            (Some('>'), Some('=')) => (Cmp::Ge, 2),
            (Some('<'), _) => (Cmp::Lt, 1),
            (Some('>'), _) => (Cmp::Gt, 1),
            (Some('='), _) => (Cmp::Eq, 1),
            _ => return None,
        };
        self.at += n;
        Some(c)
    }

    /// A quoted string (with `\` escapes) or a bare word: everything up to
    /// whitespace or `)`.
    fn value(&mut self, after: &str) -> Result<String, String> {
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                let open = self.at;
                self.at += 1;
                let mut out = String::new();
                loop {
                    match self.peek() {
                        None => {
                            return Err(format!(
                                "at {open}: expected the closing {q} of this string"
                            ));
                        }
                        Some(c) if c == q => {
                            self.at += 1;
                            return Ok(out);
                        }
                        Some('\\') => {
                            self.at += 1;
                            let c = match self.peek() {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some('r') => '\r',
                                Some(c @ ('\\' | '"' | '\'' | '*')) => c,
                                Some(c) => {
                                    return Err(self.err(format!(
                                        "an escape (\\\\, \\\", \\', \\n, \\t, \\r), not \\{c}"
                                    )));
                                }
                                None => {
                                    return Err(self.err("a character after \\".into()));
                                }
                            };
                            out.push(c);
                            self.at += 1;
                        }
                        Some(c) => {
                            out.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            _ => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|c| !c.is_whitespace() && c != ')' && c != '(')
                {
                    self.at += 1;
                }
                if self.at == start {
                    return Err(self.err(format!("a value after {after}")));
                }
                Ok(self.s[start..self.at].iter().collect())
            }
        }
    }
}

fn check_label_key(at: usize, key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 63
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-./".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "at {at}: expected a label key (1-63 lowercase letters, digits or _-./), not {:?}",
            names::truncate(key)
        ))
    }
}

fn flat(mut v: Vec<Expr>, make: fn(Vec<Expr>) -> Expr) -> Expr {
    if v.len() == 1 { v.remove(0) } else { make(v) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use custos_adapter_core::{Operation, Resource, ResourceKind};

    use super::*;

    fn job(state: JobState, kind: JobKind, target: &str, labels: &[(&str, &str)]) -> JobRecord {
        let resource = Resource {
            kind: ResourceKind::ServiceInstance,
            id: "x".into(),
        };
        let mut j = JobRecord::new(
            kind,
            target.into(),
            target.split('/').nth(1).unwrap_or("").into(),
            Operation::CreateBackup {
                resource,
                incremental: false,
            },
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        j.state = state;
        j
    }

    const T1: &str = "backends/cf/serviceInstances/a";
    const T2: &str = "backends/vbs/volumes/b";

    fn m(f: &str, j: &JobRecord) -> bool {
        JobFilter::parse(f)
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .matches(j)
    }

    fn err(f: &str) -> String {
        JobFilter::parse(f).expect_err(f)
    }

    #[test]
    fn simple_terms_and_quoting() {
        let j = job(JobState::Running, JobKind::Backup, T1, &[("env", "prod")]);
        assert!(m("", &j));
        assert!(m("   ", &j));
        assert!(m("state=RUNNING", &j));
        assert!(m("state = RUNNING", &j));
        assert!(!m("state=FAILED", &j));
        assert!(m("state!=FAILED", &j));
        assert!(m(&format!("target=\"{T1}\""), &j));
        assert!(m(&format!("target={T1}"), &j));
        assert!(m(&format!("target='{T1}'"), &j));
        assert!(m("backend=cf AND backend=backends/cf", &j));
        assert!(m("kind=BACKUP", &j));
        assert!(m("labels.env=prod", &j));
        assert!(m("labels.env=\"prod\"", &j));
        assert!(!m("labels.env=dev", &j));
        assert!(m("labels.env!=dev", &j));
        // An absent label is not equal to anything.
        assert!(m("labels.team!=x", &j));
        assert!(!m("labels.team=x", &j));
        assert!(m("labels:env", &j));
        assert!(!m("labels:team", &j));
        // Escapes.
        let k = job(
            JobState::Running,
            JobKind::Backup,
            T1,
            &[("note", "say \"hi\" \\ ok")],
        );
        assert!(m(r#"labels.note="say \"hi\" \\ ok""#, &k));
        assert!(m(r#"labels.note='say "hi" \\ ok'"#, &k));
    }

    #[test]
    fn or_binds_tighter_than_and() {
        // a AND b OR c == a AND (b OR c): false for a job that is c only.
        let c_only = job(JobState::Failed, JobKind::Restore, T2, &[]);
        assert!(!m("kind=BACKUP AND state=RUNNING OR state=FAILED", &c_only));
        // ... whereas (a AND b) OR c would have matched it.
        assert!(m(
            "(kind=BACKUP AND state=RUNNING) OR state=FAILED",
            &c_only
        ));
        let a_and_c = job(JobState::Failed, JobKind::Backup, T2, &[]);
        assert!(m("kind=BACKUP AND state=RUNNING OR state=FAILED", &a_and_c));
        assert!(m("state=RUNNING OR state=FAILED", &a_and_c));
        assert!(!m("state=RUNNING OR state=PENDING", &a_and_c));
    }

    #[test]
    fn not_minus_parentheses_and_juxtaposition() {
        let j = job(JobState::Succeeded, JobKind::Backup, T1, &[("env", "prod")]);
        assert!(m("NOT state=FAILED", &j));
        assert!(!m("NOT state=SUCCEEDED", &j));
        assert!(m("-state=FAILED", &j));
        assert!(!m("-kind=BACKUP", &j));
        assert!(m("NOT (state=FAILED OR kind=RESTORE)", &j));
        assert!(!m("NOT (state=FAILED OR kind=BACKUP)", &j));
        assert!(m("((state=SUCCEEDED))", &j));
        assert!(m("NOT NOT state=SUCCEEDED", &j));
        // Side by side: AND.
        assert!(m("state=SUCCEEDED kind=BACKUP", &j));
        assert!(!m("state=SUCCEEDED kind=RESTORE", &j));
        assert!(m("(state=FAILED OR labels.env=prod) AND kind=BACKUP", &j));
        // A value may contain '-' and '=' without quotes.
        let d = job(
            JobState::Pending,
            JobKind::Backup,
            T1,
            &[("x", "a-b=c"), ("NOT", "y")],
        );
        assert!(m("labels.x=a-b=c", &d));
    }

    #[test]
    fn create_time_comparisons() {
        let mut j = job(JobState::Pending, JobKind::Backup, T1, &[]);
        j.create_time = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(m("create_time > 2024-05-01T00:00:00Z", &j));
        assert!(m("create_time>\"2024-05-01T00:00:00Z\"", &j));
        assert!(m("create_time >= 2024-05-01T12:00:00Z", &j));
        assert!(m("create_time <= 2024-05-01T12:00:00Z", &j));
        assert!(!m("create_time < 2024-05-01T12:00:00Z", &j));
        assert!(m("create_time = 2024-05-01T14:00:00+02:00", &j));
        assert!(m("create_time != 2024-05-01T14:00:01+02:00", &j));
        assert!(m(
            "create_time >= 2024-05-01T00:00:00Z AND create_time < 2024-05-02T00:00:00Z",
            &j
        ));
        assert!(!m("create_time > 2024-06-01T00:00:00Z", &j));
        let e = err("create_time > yesterday");
        assert!(e.starts_with("at 14: create_time \"yesterday\""), "{e}");
    }

    #[test]
    fn errors_name_the_position_and_what_was_expected() {
        assert_eq!(err("state="), "at 6: expected a value after \"=\"");
        assert_eq!(
            err("state=RUNNING AND target="),
            "at 25: expected a value after \"=\""
        );
        assert!(err("state").starts_with("at 5: expected a comparison"));
        assert!(err("state RUNNING").starts_with("at 6: expected a comparison"));
        assert!(err("state=RUNNING and kind=BACKUP").contains("operators are upper case (AND)"));
        assert_eq!(
            err("state=RUNNING AND"),
            "at 17: expected a key (state, kind, ...) at the end of the filter"
        );
        assert!(err("(state=RUNNING").starts_with("at 14: expected \")\""));
        assert!(err("state=RUNNING)").starts_with("at 13: found a \")\""));
        assert!(err("()").starts_with("at 1: expected an expression"));
        assert!(err("labels.env=\"prod").starts_with("at 11: expected the closing \""));
        assert!(err(r#"labels.env="a\qb""#).contains("escape"));
        assert!(err("= RUNNING").starts_with("at 0: expected a key"));
    }

    #[test]
    fn unknown_keys_bad_values_and_operators_are_refused_by_name() {
        let e = err("state=RUNNING AND colour=red");
        assert!(e.starts_with("at 18: unknown key \"colour\""), "{e}");
        let e = err("state=DONE");
        assert!(e.contains("state \"DONE\" is not one of"), "{e}");
        assert!(e.starts_with("at 6:"), "{e}");
        assert!(err("kind=SNAPSHOT").contains("kind \"SNAPSHOT\""));
        assert!(err("state<RUNNING").contains("state takes = or !="));
        assert!(err("labels=x").contains("labels needs a key"));
        assert!(err("labels.Env=x").contains("label key"));
        assert!(err("state:RUNNING").contains("labels only"));
    }

    #[test]
    fn a_repeated_key_is_not_overwritten() {
        // Both terms apply: no job is RUNNING and FAILED at once.
        let j = job(JobState::Running, JobKind::Backup, T1, &[]);
        assert!(!m("state=RUNNING AND state=FAILED", &j));
        assert!(!m("state=FAILED AND state=RUNNING", &j));
        assert!(m("state=FAILED OR state=RUNNING", &j));
    }

    #[test]
    fn length_and_depth_are_capped() {
        let long = format!("labels.a=\"{}\"", "x".repeat(MAX_FILTER));
        assert!(err(&long).contains("longer than"));
        let deep = format!("{}state=RUNNING{}", "(".repeat(40), ")".repeat(40));
        assert!(
            err(&deep).contains("nested deeper than 32"),
            "{}",
            err(&deep)
        );
        let ok = format!("{}state=RUNNING{}", "(".repeat(30), ")".repeat(30));
        assert!(JobFilter::parse(&ok).is_ok());
        let nots = format!("{}state=RUNNING", "NOT ".repeat(40));
        assert!(err(&nots).contains("nested deeper"));
        let minus = format!("{}state=RUNNING", "-".repeat(40));
        assert!(err(&minus).contains("nested deeper"));
    }

    #[test]
    fn index_only_when_the_whole_expression_implies_it() {
        let i = |f: &str| JobFilter::parse(f).unwrap().index();
        assert_eq!(i(""), JobIndex::All);
        assert_eq!(
            i(&format!("state=RUNNING AND target=\"{T1}\"")),
            JobIndex::Target(T1.into())
        );
        // A target given in another spelling is looked up in the stored one.
        assert_eq!(
            i("target=backends/cf/serviceInstances/0000000A-0000-4000-8000-00000000000B"),
            JobIndex::Target(
                "backends/cf/serviceInstances/0000000a-0000-4000-8000-00000000000b".into()
            )
        );
        assert_eq!(i("state=FAILED"), JobIndex::Ended(JobState::Failed));
        assert_eq!(i("state=PENDING"), JobIndex::Live);
        assert_eq!(i("state=PENDING OR state=RUNNING"), JobIndex::Live);
        assert_eq!(
            i("kind=RESTORE AND labels.a=b"),
            JobIndex::Kind(JobKind::Restore)
        );
        assert_eq!(
            i("kind=RESTORE AND state=FAILED"),
            JobIndex::Ended(JobState::Failed)
        );
        // Not implied by the whole expression: every job.
        assert_eq!(i(&format!("target={T1} OR state=FAILED")), JobIndex::All);
        assert_eq!(i("state=FAILED OR state=SUCCEEDED"), JobIndex::All);
        assert_eq!(i(&format!("NOT target={T1}")), JobIndex::All);
        assert_eq!(i(&format!("target!={T1}")), JobIndex::All);
        assert_eq!(i("state!=FAILED"), JobIndex::All);
        // AND binds looser than OR: the top-level AND's target term holds.
        assert_eq!(
            i(&format!("target={T1} AND state=FAILED OR kind=BACKUP")),
            JobIndex::Target(T1.into())
        );
        assert_eq!(
            i(&format!("state=FAILED OR kind=BACKUP AND target={T1}")),
            JobIndex::Target(T1.into())
        );
    }

    /// The index a filter picks holds every job the filter matches.
    #[test]
    fn index_never_excludes_a_match() {
        let jobs: Vec<JobRecord> = [
            JobState::Pending,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .flat_map(|s| {
            [JobKind::Backup, JobKind::Restore]
                .into_iter()
                .flat_map(move |k| [T1, T2].into_iter().map(move |t| job(s, k, t, &[])))
        })
        .collect();
        let in_index = |i: &JobIndex, j: &JobRecord| match i {
            JobIndex::All => true,
            JobIndex::Live => !j.state.is_terminal(),
            JobIndex::Ended(s) => j.state == *s,
            JobIndex::Kind(k) => j.kind == *k,
            JobIndex::Target(t) => j.target == *t,
        };
        for f in [
            "state=PENDING OR state=RUNNING",
            "state=FAILED OR state=SUCCEEDED",
            "kind=BACKUP AND (state=FAILED OR target=backends/vbs/volumes/b)",
            "kind=BACKUP AND state=FAILED OR state=CANCELLED",
            "NOT state=FAILED AND kind=RESTORE",
            "target=backends/vbs/volumes/b OR kind=BACKUP",
            "-(kind=BACKUP) state=RUNNING",
        ] {
            let p = JobFilter::parse(f).unwrap();
            let idx = p.index();
            for j in &jobs {
                if p.matches(j) {
                    assert!(in_index(&idx, j), "{f}: {idx:?} misses {j:?}");
                }
            }
        }
    }
}
