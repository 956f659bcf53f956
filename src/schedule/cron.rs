//! Cron expressions with a time zone: when a backup schedule runs.
//!
//! The contract (api.md `Schedule`) is crontab's, not Quartz's:
//! - 5 fields `min hour dom month dow`, or 6 with seconds first; day of week
//!   0 or 7 = Sunday; names `SUN`..`SAT`, `JAN`..`DEC` in any case; `*`,
//!   lists, ranges, `*/n` and `a-b/n` steps; the macros `@yearly`
//!   (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`.
//! - Vixie cron's day rule: when day-of-month and day-of-week are both
//!   restricted (neither field starts with `*`), a day matches if EITHER does.
//! - The expression is a set of wall-clock times in the zone. A wall time
//!   that does not exist (spring forward) runs once, at the first instant
//!   after the gap; a wall time that happens twice (fall back) runs once, at
//!   its first occurrence.
//!
//! The `cron` crate (Quartz: seconds first, day of week 1 = Sunday, day of
//! month AND day of week, and in a zone it skips spring-forward times and
//! fires fall-back times twice) only walks wall-clock times here: this module
//! parses the crontab line itself, hands the crate an equivalent Quartz line
//! of explicit lists, iterates it over naive local time presented as UTC (so
//! the crate never sees DST), and maps each wall time to an instant itself.
//! The crate's calendar ends with the year 2100; after that nothing fires.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;

/// How much of a user's input an error message quotes.
const QUOTE_MAX_CHARS: usize = 100;

/// Bound on the wall times `next_after` looks at. One or two are the norm;
/// a third after a jump over the second pass of a repeated hour.
const MAX_SCAN_STEPS: usize = 64;

/// The last year the `cron` crate's calendar has (its year field is
/// 1970..=2100).
const LAST_YEAR: i32 = 2100;

/// More than any UTC offset a zone has ever had (the largest in the tz
/// database are local mean times just under ±16 h).
const MAX_OFFSET_SECS: i64 = 26 * 3600;

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The expression as given, trimmed.
    expr: String,
    tz: Tz,
    /// Wall-clock schedules in the crate's Quartz form. One, or two when the
    /// day rule is OR (one for the day-of-month list, one for the
    /// day-of-week list): the next wall time is the earliest of them.
    wall: Vec<::cron::Schedule>,
}

/// One problem with a schedule's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError {
    /// `"cron"` or `"time_zone"`: the `Schedule` field at fault.
    pub field: &'static str,
    /// What is wrong, for a person, e.g. `day-of-week: 8 is out of range 0-7`.
    pub reason: String,
}

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for CronError {}

impl CronSchedule {
    /// Parses a crontab expression and an IANA time zone; `time_zone` ""
    /// means UTC. All problems found are returned (a bad expression and a
    /// bad zone are both reported).
    pub fn parse(expr: &str, time_zone: &str) -> Result<CronSchedule, Vec<CronError>> {
        let expr = expr.trim();
        let mut errors = Vec::new();
        let spec = parse_spec(expr).map_err(|reasons| {
            errors.extend(reasons.into_iter().map(|reason| CronError {
                field: "cron",
                reason,
            }));
        });
        let tz = parse_zone(time_zone).map_err(|reason| {
            errors.push(CronError {
                field: "time_zone",
                reason,
            });
        });
        let wall = spec.and_then(|spec| {
            spec.quartz().map_err(|reason| {
                errors.push(CronError {
                    field: "cron",
                    reason,
                });
            })
        });
        match (wall, tz) {
            (Ok(wall), Ok(tz)) if errors.is_empty() => Ok(CronSchedule {
                expr: expr.to_owned(),
                tz,
                wall,
            }),
            _ => Err(errors),
        }
    }

    /// The first run strictly after `t`; `None` if the expression never fires
    /// again (the calendar ends with 2100).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if t.year() > LAST_YEAR + 1 {
            return None;
        }
        // Every wall time up to t's own maps to an instant at or before t
        // (the mapping is monotone), so the scan starts there. The crate's
        // calendar starts in 1970; clamp so it is never handed an earlier year.
        let floor = NaiveDate::from_ymd_opt(1969, 12, 31)?.and_hms_opt(0, 0, 0)?;
        let mut cursor = if t.year() < 1969 {
            floor
        } else {
            t.with_timezone(&self.tz)
                .naive_local()
                .with_nanosecond(0)?
                .max(floor)
        };
        for _ in 0..MAX_SCAN_STEPS {
            let wall = self.next_wall(cursor)?;
            match self.tz.from_local_datetime(&wall) {
                LocalResult::Single(at) => {
                    let at = at.with_timezone(&Utc);
                    if at > t {
                        return Some(at);
                    }
                    cursor = wall;
                }
                LocalResult::Ambiguous(a, b) => {
                    let (early, late) = if a <= b { (a, b) } else { (b, a) };
                    let first = early.with_timezone(&Utc);
                    if first > t {
                        return Some(first);
                    }
                    // t is in the second pass of a repeated hour: every wall
                    // time left in it ran in the first pass. Jump past it.
                    cursor = repeat_end(self.tz, &early, &late)
                        .and_then(|end| end.checked_sub_signed(TimeDelta::seconds(1)))
                        .map_or(wall, |end| end.max(wall));
                }
                LocalResult::None => {
                    // Skipped by spring forward: runs when the gap ends. All
                    // the gap's wall times map there, so it runs once.
                    if let Some(at) = gap_end(self.tz, wall)
                        && at > t
                    {
                        return Some(at);
                    }
                    cursor = wall;
                }
            }
        }
        None
    }

    /// The next `n` runs strictly after `t`, in order; fewer if the
    /// expression stops firing.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut runs = Vec::new();
        let mut after = t;
        while runs.len() < n {
            match self.next_after(after) {
                Some(at) => {
                    runs.push(at);
                    after = at;
                }
                None => break,
            }
        }
        runs
    }

    /// The zone the expression's wall-clock times are in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The expression as given (trimmed).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The earliest wall time strictly after `cursor` that any of the
    /// crate's schedules gives, with local time presented to it as UTC.
    fn next_wall(&self, cursor: NaiveDateTime) -> Option<NaiveDateTime> {
        let cursor = cursor.and_utc();
        self.wall
            .iter()
            .filter_map(|s| s.after(&cursor).next())
            .min()
            .map(|at| at.naive_utc())
    }
}

/// The first instant after the spring-forward gap that contains the
/// (nonexistent) wall time `wall`: the first instant whose local time is
/// past it, found by bisection over a window wider than any UTC offset.
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let target = wall.and_utc().timestamp();
    let mut lo = target - MAX_OFFSET_SECS;
    let mut hi = target + MAX_OFFSET_SECS;
    if local_secs(tz, lo)? >= target || local_secs(tz, hi)? < target {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_secs(tz, mid)? >= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// The wall time at which a repeated (fall-back) stretch ends, given the two
/// instants one of its wall times stands for: the transition instant, found
/// by bisection between them, read with the offset from before it.
fn repeat_end(tz: Tz, early: &DateTime<Tz>, late: &DateTime<Tz>) -> Option<NaiveDateTime> {
    let before = early.offset().fix().local_minus_utc();
    let mut lo = early.timestamp();
    let mut hi = late.timestamp();
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_secs(tz, mid)? == before {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let transition = DateTime::from_timestamp(hi, 0)?.naive_utc();
    transition.checked_add_signed(TimeDelta::seconds(i64::from(before)))
}

/// The UTC offset of `tz` at the instant `secs` (Unix seconds).
fn offset_secs(tz: Tz, secs: i64) -> Option<i32> {
    let utc = DateTime::from_timestamp(secs, 0)?.naive_utc();
    Some(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc())
}

/// Local wall time at the instant `secs`, as seconds on the same scale.
fn local_secs(tz: Tz, secs: i64) -> Option<i64> {
    Some(secs + i64::from(offset_secs(tz, secs)?))
}

fn parse_zone(time_zone: &str) -> Result<Tz, String> {
    let name = time_zone.trim();
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    Tz::from_str(name).map_err(|_| {
        format!(
            "unknown time zone {}: use an IANA name such as Europe/Berlin or UTC",
            quote(name)
        )
    })
}

/// `s` in double quotes, escaped, cut at [`QUOTE_MAX_CHARS`] characters.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("{:?}… ({} characters)", &s[..cut], s.chars().count()),
        None => format!("{s:?}"),
    }
}

/// One crontab field: its name in messages, its range, and its names.
struct Unit {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names, the first standing for `name_base`.
    names: &'static [&'static str],
    name_base: u32,
    /// What to suggest when a value is not understood.
    hint: &'static str,
}

const SECOND: Unit = Unit {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    name_base: 0,
    hint: "0-59",
};
const MINUTE: Unit = Unit {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    name_base: 0,
    hint: "0-59",
};
const HOUR: Unit = Unit {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    name_base: 0,
    hint: "0-23",
};
const DAY_OF_MONTH: Unit = Unit {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    name_base: 0,
    hint: "1-31",
};
const MONTH: Unit = Unit {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    name_base: 1,
    hint: "1-12 or JAN..DEC",
};
const DAY_OF_WEEK: Unit = Unit {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    name_base: 0,
    hint: "0-7 (0 and 7 are Sunday) or SUN..SAT",
};

/// The longest month each month can be (February: 29).
const MONTH_MAX_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// A parsed field: a bit per allowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u64,
    /// The field's text starts with `*` (Vixie cron's test for the day rule).
    star: bool,
}

impl Field {
    fn has(&self, v: u32) -> bool {
        v < 64 && self.bits & (1 << v) != 0
    }
}

/// A crontab expression, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    second: Field,
    minute: Field,
    hour: Field,
    day_of_month: Field,
    month: Field,
    /// Crontab numbering, Sunday folded to 0.
    day_of_week: Field,
}

impl Spec {
    /// Vixie cron: both day fields restricted → a day matches if either does.
    fn days_or(&self) -> bool {
        !self.day_of_month.star && !self.day_of_week.star
    }

    /// The crate's schedules: one Quartz line, or two for the OR day rule.
    fn quartz(&self) -> Result<Vec<::cron::Schedule>, String> {
        let time = format!(
            "{} {} {}",
            list(&self.second, &SECOND, 0),
            list(&self.minute, &MINUTE, 0),
            list(&self.hour, &HOUR, 0)
        );
        let month = list(&self.month, &MONTH, 0);
        let dom = list(&self.day_of_month, &DAY_OF_MONTH, 0);
        // The crate numbers days of the week 1 = Sunday .. 7 = Saturday.
        let dow = list(&self.day_of_week, &WEEK, 1);
        let lines = if self.days_or() {
            vec![
                format!("{time} {dom} {month} *"),
                format!("{time} * {month} {dow}"),
            ]
        } else {
            vec![format!("{time} {dom} {month} {dow}")]
        };
        lines
            .iter()
            .map(|line| {
                ::cron::Schedule::from_str(line)
                    .map_err(|e| format!("internal error: the cron library refused {line:?} ({e})"))
            })
            .collect()
    }
}

/// Day of week after folding 7 into 0: its full set is 0..=6.
const WEEK: Unit = Unit {
    max: 6,
    ..DAY_OF_WEEK
};

/// A field as the crate's list: `*` when every value is in it, else the
/// values (plus `shift`) separated by commas.
fn list(field: &Field, unit: &Unit, shift: u32) -> String {
    if (unit.min..=unit.max).all(|v| field.has(v)) {
        return "*".to_owned();
    }
    (unit.min..=unit.max)
        .filter(|&v| field.has(v))
        .map(|v| (v + shift).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a crontab line (or macro) into its fields, or every problem found.
fn parse_spec(expr: &str) -> Result<Spec, Vec<String>> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Err(vec![
            "empty cron expression: expected 5 fields (minute hour day-of-month month day-of-week), e.g. \"30 2 * * *\"".to_owned(),
        ]);
    }
    let line = if expr.starts_with('@') {
        macro_line(expr)?
    } else {
        expr
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    let texts: [&str; 6] = match fields.as_slice() {
        [mi, h, dom, mo, dow] => ["0", mi, h, dom, mo, dow],
        [s, mi, h, dom, mo, dow] => [s, mi, h, dom, mo, dow],
        _ => {
            let year = if fields.len() == 7 {
                " (a seventh, year field is Quartz syntax, not crontab)"
            } else {
                ""
            };
            return Err(vec![format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), got {}{year}",
                fields.len()
            )]);
        }
    };
    let units = [&SECOND, &MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK];
    let mut parsed = [Field {
        bits: 0,
        star: false,
    }; 6];
    let mut errors = Vec::new();
    for (i, (unit, text)) in units.iter().zip(texts).enumerate() {
        match parse_field(unit, text) {
            Ok(field) => parsed[i] = field,
            Err(reason) => errors.push(format!("{}: {reason}", unit.name)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let [second, minute, hour, day_of_month, month, mut day_of_week] = parsed;
    // 7 is Sunday too.
    if day_of_week.has(7) {
        day_of_week.bits = (day_of_week.bits & !(1 << 7)) | 1;
    }
    let spec = Spec {
        second,
        minute,
        hour,
        day_of_month,
        month,
        day_of_week,
    };
    if !spec.days_or() && !(1..=12).any(|m| month_has_a_day(&spec, m)) {
        let day = (1..=31).find(|&d| day_of_month.has(d)).unwrap_or(31);
        let month_name = (1..=12)
            .find(|&m| month.has(m))
            .and_then(|m| MONTH.names.get(m as usize - 1))
            .unwrap_or(&"FEB");
        return Err(vec![format!(
            "day-of-month: no listed day exists in any listed month (e.g. {day} {month_name}), so this would never run"
        )]);
    }
    Ok(spec)
}

/// Whether month `m` is listed and has one of the listed days in some year.
fn month_has_a_day(spec: &Spec, m: u32) -> bool {
    spec.month.has(m)
        && MONTH_MAX_DAYS
            .get(m as usize - 1)
            .is_some_and(|&last| (1..=last).any(|d| spec.day_of_month.has(d)))
}

/// The 5-field line a macro stands for.
fn macro_line(expr: &str) -> Result<&'static str, Vec<String>> {
    let line = match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => {
            return Err(vec![
                "@reboot is not supported: a schedule needs times, e.g. @daily or \"30 2 * * *\""
                    .to_owned(),
            ]);
        }
        _ => {
            return Err(vec![format!(
                "unknown macro {}: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly (alone), or 5 fields",
                quote(expr)
            )]);
        }
    };
    Ok(line)
}

/// One field: a comma-separated list of `*`, `v`, `a-b`, `*/n` or `a-b/n`.
fn parse_field(unit: &Unit, text: &str) -> Result<Field, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!("empty item in the list {}", quote(text)));
        }
        if item.contains('?') {
            return Err(format!(
                "{} is Quartz syntax, not crontab: use * instead",
                quote(item)
            ));
        }
        if item.contains('#') {
            return Err(quartz_only(item));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(parse_step(unit, step, item)?)),
            None => (item, None),
        };
        let (first, last) = if range == "*" {
            (unit.min, unit.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (first, last) = (parse_value(unit, a, item)?, parse_value(unit, b, item)?);
            if first > last {
                let sunday = if unit.name == DAY_OF_WEEK.name {
                    " (to run through Sunday, end with 7, as in 5-7)"
                } else {
                    ""
                };
                return Err(format!(
                    "range {} goes backwards: write the smaller value first{sunday}",
                    quote(range)
                ));
            }
            (first, last)
        } else {
            let value = parse_value(unit, range, item)?;
            if step.is_some() {
                return Err(format!(
                    "{}: a step needs * or a range before it, as in */15 or {value}-{}/15",
                    quote(item),
                    unit.max
                ));
            }
            (value, value)
        };
        let step = step.unwrap_or(1);
        let mut v = first;
        while v <= last {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(Field {
        bits,
        star: text.starts_with('*'),
    })
}

fn parse_step(unit: &Unit, step: &str, item: &str) -> Result<u32, String> {
    let span = unit.max - unit.min;
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "step {} in {} is not a number",
            quote(step),
            quote(item)
        ));
    }
    match step.parse::<u32>() {
        Ok(0) => Err(format!(
            "step 0 in {}: a step must be at least 1",
            quote(item)
        )),
        Ok(n) if n <= span => Ok(n),
        _ => Err(format!(
            "step {} in {} is out of range 1-{span}",
            quote(step),
            quote(item)
        )),
    }
}

fn parse_value(unit: &Unit, value: &str, item: &str) -> Result<u32, String> {
    if value.is_empty() {
        return Err(format!("a value is missing in {}", quote(item)));
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return match value.parse::<u32>() {
            Ok(n) if (unit.min..=unit.max).contains(&n) => Ok(n),
            _ => Err(format!(
                "{} is out of range {}-{}",
                quote_number(value),
                unit.min,
                unit.max
            )),
        };
    }
    let upper = value.to_ascii_uppercase();
    if let Some(i) = unit.names.iter().position(|n| *n == upper) {
        return Ok(unit.name_base + i as u32);
    }
    let digits = upper.trim_end_matches(['L', 'W']);
    if digits.len() < upper.len() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(quartz_only(item));
    }
    if value.bytes().all(|b| b.is_ascii_alphabetic()) && !unit.names.is_empty() {
        return Err(format!("unknown name {}: use {}", quote(value), unit.hint));
    }
    Err(format!(
        "{} is not a value: use {}",
        quote(value),
        unit.hint
    ))
}

fn quartz_only(item: &str) -> String {
    format!(
        "{} is Quartz syntax (L, W and # are not crontab) and is not supported",
        quote(item)
    )
}

/// A number as typed, unquoted when short, cut when huge.
fn quote_number(digits: &str) -> String {
    if digits.len() <= 20 {
        digits.to_owned()
    } else {
        format!("{}… ({} digits)", &digits[..20], digits.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{SecondsFormat, Weekday};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn sched(expr: &str, tz: &str) -> CronSchedule {
        match CronSchedule::parse(expr, tz) {
            Ok(s) => s,
            Err(e) => panic!("{expr:?} in {tz:?}: {e:?}"),
        }
    }

    fn fmt(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// The next `n` runs after `from`, as RFC 3339 UTC strings.
    fn runs(expr: &str, tz: &str, from: DateTime<Utc>, n: usize) -> Vec<String> {
        sched(expr, tz).upcoming(from, n).iter().map(fmt).collect()
    }

    /// The single error about the cron expression.
    fn cron_error(expr: &str) -> String {
        let errors = CronSchedule::parse(expr, "").unwrap_err();
        assert_eq!(errors.len(), 1, "{expr:?}: {errors:?}");
        assert_eq!(errors[0].field, "cron");
        errors[0].reason.clone()
    }

    #[test]
    fn five_fields_in_utc() {
        let t = utc(2026, 1, 1, 10, 0, 30);
        assert_eq!(
            runs("* * * * *", "", t, 3),
            [
                "2026-01-01T10:01:00Z",
                "2026-01-01T10:02:00Z",
                "2026-01-01T10:03:00Z"
            ]
        );
        assert_eq!(
            runs("30 2 * * *", "", t, 2),
            ["2026-01-02T02:30:00Z", "2026-01-03T02:30:00Z"]
        );
        assert_eq!(
            runs("*/15 * * * *", "", t, 4),
            [
                "2026-01-01T10:15:00Z",
                "2026-01-01T10:30:00Z",
                "2026-01-01T10:45:00Z",
                "2026-01-01T11:00:00Z"
            ]
        );
        // 2026-01-01 is a Thursday.
        assert_eq!(
            runs("0 9 * * MON-FRI", "", t, 4),
            [
                "2026-01-02T09:00:00Z",
                "2026-01-05T09:00:00Z",
                "2026-01-06T09:00:00Z",
                "2026-01-07T09:00:00Z"
            ]
        );
        assert_eq!(
            runs("0 9 * * 1-5/2", "", t, 3),
            [
                "2026-01-02T09:00:00Z",
                "2026-01-05T09:00:00Z",
                "2026-01-07T09:00:00Z"
            ]
        );
        assert_eq!(
            runs("0 0 1 jan,Jul *", "", t, 2),
            ["2026-07-01T00:00:00Z", "2027-01-01T00:00:00Z"]
        );
        assert_eq!(runs("0 12 * * sat", "", t, 1), ["2026-01-03T12:00:00Z"]);
        // Tabs and extra spaces separate fields too; the expression is kept trimmed.
        let s = sched("  0\t12  * *   * ", "");
        assert_eq!(s.expr(), "0\t12  * *   *");
        assert_eq!(s.time_zone(), Tz::UTC);
    }

    #[test]
    fn sunday_is_0_and_7() {
        let t = utc(2026, 1, 1, 0, 0, 0);
        let sunday = ["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"];
        assert_eq!(runs("0 0 * * 0", "", t, 2), sunday);
        assert_eq!(runs("0 0 * * 7", "", t, 2), sunday);
        assert_eq!(runs("0 0 * * SUN", "", t, 2), sunday);
        for at in sched("0 0 * * 0", "").upcoming(t, 10) {
            assert_eq!(at.weekday(), Weekday::Sun);
        }
        // 1 is Monday (the crate alone would say Sunday).
        assert_eq!(runs("0 0 * * 1", "", t, 1), ["2026-01-05T00:00:00Z"]);
        // Friday through Sunday.
        assert_eq!(
            runs("0 0 * * 5-7", "", t, 4),
            [
                "2026-01-02T00:00:00Z",
                "2026-01-03T00:00:00Z",
                "2026-01-04T00:00:00Z",
                "2026-01-09T00:00:00Z"
            ]
        );
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let t = utc(2026, 1, 1, 10, 0, 0);
        assert_eq!(
            runs("* * * * * *", "", t, 3),
            [
                "2026-01-01T10:00:01Z",
                "2026-01-01T10:00:02Z",
                "2026-01-01T10:00:03Z"
            ]
        );
        assert_eq!(
            runs("15 30 2 * * *", "", t, 2),
            ["2026-01-02T02:30:15Z", "2026-01-03T02:30:15Z"]
        );
        assert_eq!(
            runs("*/20 * * * * *", "", t, 3),
            [
                "2026-01-01T10:00:20Z",
                "2026-01-01T10:00:40Z",
                "2026-01-01T10:01:00Z"
            ]
        );
        // 6 fields with seconds 0 mean the same as the 5-field line.
        assert_eq!(
            sched("0 0 9 * * 0,7", "").upcoming(t, 5),
            sched("0 9 * * SUN", "").upcoming(t, 5)
        );
    }

    #[test]
    fn strictly_after_even_within_a_second() {
        let s = sched("* * * * * *", "");
        let t = utc(2026, 1, 1, 10, 0, 0);
        assert_eq!(s.next_after(t), Some(utc(2026, 1, 1, 10, 0, 1)));
        let half = t + TimeDelta::milliseconds(500);
        assert_eq!(s.next_after(half), Some(utc(2026, 1, 1, 10, 0, 1)));
        let s = sched("0 10 * * *", "");
        assert_eq!(s.next_after(t), Some(utc(2026, 1, 2, 10, 0, 0)));
        assert_eq!(
            s.next_after(t - TimeDelta::nanoseconds(1)),
            Some(utc(2026, 1, 1, 10, 0, 0))
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_restricted() {
        // 2026-01-01 is a Thursday; the 13th of January a Tuesday, of
        // February a Friday (listed once).
        let t = utc(2026, 1, 1, 0, 0, 0);
        assert_eq!(
            runs("0 0 13 * 5", "", t, 10),
            [
                "2026-01-02T00:00:00Z",
                "2026-01-09T00:00:00Z",
                "2026-01-13T00:00:00Z",
                "2026-01-16T00:00:00Z",
                "2026-01-23T00:00:00Z",
                "2026-01-30T00:00:00Z",
                "2026-02-06T00:00:00Z",
                "2026-02-13T00:00:00Z",
                "2026-02-20T00:00:00Z",
                "2026-02-27T00:00:00Z"
            ]
        );
        for at in sched("0 0 13 * 5", "").upcoming(t, 200) {
            assert!(at.day() == 13 || at.weekday() == Weekday::Fri, "{at}");
        }
        // The classic surprise: "first Monday" is every 1st-7th and every Monday.
        assert_eq!(
            runs("0 0 1-7 * MON", "", utc(2026, 1, 7, 12, 0, 0), 3),
            [
                "2026-01-12T00:00:00Z",
                "2026-01-19T00:00:00Z",
                "2026-01-26T00:00:00Z"
            ]
        );
        // Vixie: a field starting with * is unrestricted, so the rule is AND:
        // odd days (*/2 = 1,3,..,31) that are Mondays.
        let s = sched("0 0 */2 * MON", "");
        let got = s.upcoming(t, 20);
        assert_eq!(fmt(&got[0]), "2026-01-05T00:00:00Z");
        for at in got {
            assert!(at.day() % 2 == 1 && at.weekday() == Weekday::Mon, "{at}");
        }
        // Only the day-of-week restricted: just those days.
        for at in sched("0 0 * * 5", "").upcoming(t, 20) {
            assert_eq!(at.weekday(), Weekday::Fri);
        }
        // Only the day-of-month restricted: just those days.
        for at in sched("0 0 13 * *", "").upcoming(t, 20) {
            assert_eq!(at.day(), 13);
        }
    }

    #[test]
    fn macros() {
        let t = utc(2026, 5, 20, 10, 30, 0);
        for (mac, line) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
            ("@DAILY", "0 0 * * *"),
        ] {
            let s = sched(mac, "Europe/Berlin");
            assert_eq!(s.expr(), mac);
            assert_eq!(
                s.upcoming(t, 5),
                sched(line, "Europe/Berlin").upcoming(t, 5),
                "{mac}"
            );
        }
        assert_eq!(runs("@yearly", "", t, 1), ["2027-01-01T00:00:00Z"]);
        assert_eq!(runs("@weekly", "", t, 1), ["2026-05-24T00:00:00Z"]);
        assert_eq!(runs("@hourly", "", t, 1), ["2026-05-20T11:00:00Z"]);
        assert!(cron_error("@reboot").contains("@reboot is not supported"));
        let reason = cron_error("@fortnightly");
        assert!(
            reason.starts_with("unknown macro \"@fortnightly\": use @yearly"),
            "{reason}"
        );
        assert!(cron_error("@daily 5").starts_with("unknown macro"));
    }

    #[test]
    fn rejects_wrong_field_counts() {
        assert_eq!(
            cron_error("1 2 3"),
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), got 3"
        );
        assert!(cron_error("* * * *").ends_with("got 4"));
        assert_eq!(
            cron_error("0 0 12 * * ? 2026"),
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), got 7 (a seventh, year field is Quartz syntax, not crontab)"
        );
        assert!(cron_error("0 0 0 0 0 0 0 0").ends_with("got 8"));
        assert!(cron_error("").starts_with("empty cron expression"));
        assert!(cron_error(" \t\n ").starts_with("empty cron expression"));
    }

    #[test]
    fn rejects_out_of_range_values() {
        for (expr, reason) in [
            ("0 0 * * 8", "day-of-week: 8 is out of range 0-7"),
            ("60 * * * *", "minute: 60 is out of range 0-59"),
            ("0 24 * * *", "hour: 24 is out of range 0-23"),
            ("0 0 0 * *", "day-of-month: 0 is out of range 1-31"),
            ("0 0 32 * *", "day-of-month: 32 is out of range 1-31"),
            ("0 0 1 13 *", "month: 13 is out of range 1-12"),
            ("0 0 1 0 *", "month: 0 is out of range 1-12"),
            ("60 0 0 * * *", "second: 60 is out of range 0-59"),
            ("0 1-60 * * *", "hour: 60 is out of range 0-23"),
            (
                "99999999999999999999 * * * *",
                "minute: 99999999999999999999 is out of range 0-59",
            ),
            (
                "0 0 * * 4294967296",
                "day-of-week: 4294967296 is out of range 0-7",
            ),
        ] {
            assert_eq!(cron_error(expr), reason, "{expr}");
        }
        let huge = format!("{} * * * *", "9".repeat(5000));
        let reason = cron_error(&huge);
        assert!(reason.len() < 100, "{reason}");
        assert!(
            reason.contains("(5000 digits) is out of range 0-59"),
            "{reason}"
        );
    }

    #[test]
    fn rejects_bad_steps_ranges_and_names() {
        for (expr, reason) in [
            (
                "*/0 * * * *",
                "minute: step 0 in \"*/0\": a step must be at least 1",
            ),
            (
                "0 0 1-10/0 * *",
                "day-of-month: step 0 in \"1-10/0\": a step must be at least 1",
            ),
            (
                "*/60 * * * *",
                "minute: step \"60\" in \"*/60\" is out of range 1-59",
            ),
            ("0 */x * * *", "hour: step \"x\" in \"*/x\" is not a number"),
            ("0 */ * * *", "hour: step \"\" in \"*/\" is not a number"),
            (
                "5/15 * * * *",
                "minute: \"5/15\": a step needs * or a range before it, as in */15 or 5-59/15",
            ),
            (
                "0 0 * * 5-1",
                "day-of-week: range \"5-1\" goes backwards: write the smaller value first (to run through Sunday, end with 7, as in 5-7)",
            ),
            (
                "0 0 * * SAT-SUN",
                "day-of-week: range \"SAT-SUN\" goes backwards: write the smaller value first (to run through Sunday, end with 7, as in 5-7)",
            ),
            (
                "30-10 * * * *",
                "minute: range \"30-10\" goes backwards: write the smaller value first",
            ),
            (
                "0 0 * * MONDAY",
                "day-of-week: unknown name \"MONDAY\": use 0-7 (0 and 7 are Sunday) or SUN..SAT",
            ),
            (
                "0 0 1 JANUARY *",
                "month: unknown name \"JANUARY\": use 1-12 or JAN..DEC",
            ),
            ("MON * * * *", "minute: \"MON\" is not a value: use 0-59"),
            (
                "0 0 * FRI *",
                "month: unknown name \"FRI\": use 1-12 or JAN..DEC",
            ),
            ("1,,2 * * * *", "minute: empty item in the list \"1,,2\""),
            ("1, * * * *", "minute: empty item in the list \"1,\""),
            ("-5 * * * *", "minute: a value is missing in \"-5\""),
            ("1-2-3 * * * *", "minute: \"2-3\" is not a value: use 0-59"),
            ("*-5 * * * *", "minute: \"*\" is not a value: use 0-59"),
            ("1.5 * * * *", "minute: \"1.5\" is not a value: use 0-59"),
        ] {
            assert_eq!(cron_error(expr), reason, "{expr}");
        }
    }

    #[test]
    fn rejects_quartz_syntax() {
        for (expr, reason) in [
            (
                "0 0 12 ? * MON",
                "day-of-month: \"?\" is Quartz syntax, not crontab: use * instead",
            ),
            (
                "0 0 * * ?",
                "day-of-week: \"?\" is Quartz syntax, not crontab: use * instead",
            ),
            (
                "0 0 L * *",
                "day-of-month: \"L\" is Quartz syntax (L, W and # are not crontab) and is not supported",
            ),
            (
                "0 0 15W * *",
                "day-of-month: \"15W\" is Quartz syntax (L, W and # are not crontab) and is not supported",
            ),
            (
                "0 0 LW * *",
                "day-of-month: \"LW\" is Quartz syntax (L, W and # are not crontab) and is not supported",
            ),
            (
                "0 0 * * 5L",
                "day-of-week: \"5L\" is Quartz syntax (L, W and # are not crontab) and is not supported",
            ),
            (
                "0 0 * * 6#3",
                "day-of-week: \"6#3\" is Quartz syntax (L, W and # are not crontab) and is not supported",
            ),
        ] {
            assert_eq!(cron_error(expr), reason, "{expr}");
        }
    }

    #[test]
    fn reports_every_bad_field() {
        let errors = CronSchedule::parse("61 25 * * 9", "").unwrap_err();
        let reasons: Vec<_> = errors.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "minute: 61 is out of range 0-59",
                "hour: 25 is out of range 0-23",
                "day-of-week: 9 is out of range 0-7"
            ]
        );
        assert!(errors.iter().all(|e| e.field == "cron"));
    }

    #[test]
    fn rejects_days_that_never_come() {
        assert_eq!(
            cron_error("0 0 30 2 *"),
            "day-of-month: no listed day exists in any listed month (e.g. 30 FEB), so this would never run"
        );
        assert!(cron_error("0 0 31 4,6,9,11 *").contains("e.g. 31 APR"));
        // February 29th comes in leap years.
        assert_eq!(
            runs("0 0 29 2 *", "", utc(2026, 1, 1, 0, 0, 0), 2),
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
        );
        // With the OR rule, the weekday still fires: every Monday in April
        // (2026-04-06 is the first).
        assert_eq!(
            runs("0 0 31 4 MON", "", utc(2026, 1, 1, 0, 0, 0), 1),
            ["2026-04-06T00:00:00Z"]
        );
    }

    #[test]
    fn time_zones() {
        let errors = CronSchedule::parse("0 0 * * *", "Europe/Berln").unwrap_err();
        assert_eq!(
            errors,
            [CronError {
                field: "time_zone",
                reason: "unknown time zone \"Europe/Berln\": use an IANA name such as Europe/Berlin or UTC".to_owned(),
            }]
        );
        // Both problems at once.
        let errors = CronSchedule::parse("0 0 * *", "Mars/Olympus").unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].field, "cron");
        assert_eq!(errors[1].field, "time_zone");
        // A long bad zone is quoted in part only.
        let long = "X".repeat(10_000);
        let errors = CronSchedule::parse("0 0 * * *", &long).unwrap_err();
        assert!(errors[0].reason.len() < 200, "{}", errors[0].reason);
        assert!(errors[0].reason.contains("(10000 characters)"));
        assert_eq!(sched("0 0 * * *", "").time_zone(), Tz::UTC);
        assert_eq!(sched("0 0 * * *", "UTC").time_zone(), Tz::UTC);
        assert_eq!(
            sched("0 0 * * *", "America/New_York").time_zone(),
            chrono_tz::America::New_York
        );
        // Wall-clock time in the zone: 09:00 in Tokyo (UTC+9) is midnight UTC.
        assert_eq!(
            runs("0 9 * * *", "Asia/Tokyo", utc(2026, 1, 1, 12, 0, 0), 1),
            ["2026-01-02T00:00:00Z"]
        );
        // Berlin in winter is UTC+1, in summer UTC+2.
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", utc(2026, 1, 10, 0, 0, 0), 1),
            ["2026-01-10T01:30:00Z"]
        );
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", utc(2026, 7, 10, 0, 0, 0), 1),
            ["2026-07-10T00:30:00Z"]
        );
    }

    #[test]
    fn berlin_spring_forward() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
        let from = utc(2026, 3, 27, 12, 0, 0);
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", from, 4),
            [
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST, once
                "2026-03-30T00:30:00Z", // 02:30 CEST
                "2026-03-31T00:30:00Z",
            ]
        );
        let from = utc(2026, 3, 28, 0, 0, 0);
        assert_eq!(
            runs("*/15 2 * * *", "Europe/Berlin", from, 9),
            [
                "2026-03-28T01:00:00Z",
                "2026-03-28T01:15:00Z",
                "2026-03-28T01:30:00Z",
                "2026-03-28T01:45:00Z",
                "2026-03-29T01:00:00Z", // the four skipped times run once, at 03:00 CEST
                "2026-03-30T00:00:00Z",
                "2026-03-30T00:15:00Z",
                "2026-03-30T00:30:00Z",
                "2026-03-30T00:45:00Z",
            ]
        );
        // Every minute: 01:59 CET, then the gap collapses into 03:00 CEST,
        // then 03:01 CEST.
        assert_eq!(
            runs("* * * * *", "Europe/Berlin", utc(2026, 3, 29, 0, 58, 0), 3),
            [
                "2026-03-29T00:59:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:01:00Z"
            ]
        );
        // Times outside the gap are not moved.
        assert_eq!(
            runs("0 3 * * *", "Europe/Berlin", utc(2026, 3, 28, 12, 0, 0), 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T01:00:00Z"]
        );
    }

    #[test]
    fn new_york_spring_forward() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
        assert_eq!(
            runs(
                "30 2 * * *",
                "America/New_York",
                utc(2026, 3, 7, 0, 0, 0),
                3
            ),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT, once
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ]
        );
        assert_eq!(
            runs(
                "*/15 2 * * *",
                "America/New_York",
                utc(2026, 3, 8, 0, 0, 0),
                3
            ),
            [
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:00:00Z",
                "2026-03-09T06:15:00Z"
            ]
        );
        // From inside the gap's instant onwards, the collapsed run is past.
        let s = sched("*/15 2 * * *", "America/New_York");
        assert_eq!(
            s.next_after(utc(2026, 3, 8, 7, 0, 0)),
            Some(utc(2026, 3, 9, 6, 0, 0))
        );
        assert_eq!(
            s.next_after(utc(2026, 3, 8, 6, 59, 59)),
            Some(utc(2026, 3, 8, 7, 0, 0))
        );
    }

    #[test]
    fn new_york_fall_back() {
        // 2026-11-01: 02:00 EDT becomes 01:00 EST at 06:00 UTC; 01:xx happens twice.
        assert_eq!(
            runs(
                "30 1 * * *",
                "America/New_York",
                utc(2026, 10, 31, 0, 0, 0),
                3
            ),
            [
                "2026-10-31T05:30:00Z", // 01:30 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT, the first occurrence only
                "2026-11-02T06:30:00Z", // 01:30 EST
            ]
        );
        // Hourly: once per wall hour; 01:00 EST (06:00 UTC) is not a second run.
        assert_eq!(
            runs(
                "0 * * * *",
                "America/New_York",
                utc(2026, 11, 1, 3, 30, 0),
                5
            ),
            [
                "2026-11-01T04:00:00Z", // 00:00 EDT
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T07:00:00Z", // 02:00 EST
                "2026-11-01T08:00:00Z", // 03:00 EST
                "2026-11-01T09:00:00Z",
            ]
        );
        // Asked from inside the second pass (01:10 EST), the rest of the
        // repeated hour ran already: next is 02:00 EST.
        let t = utc(2026, 11, 1, 6, 10, 0);
        for expr in ["*/15 * * * *", "* * * * *", "* * * * * *", "30 1 * * *"] {
            let next = sched(expr, "America/New_York").next_after(t).unwrap();
            let want = if expr == "30 1 * * *" {
                utc(2026, 11, 2, 6, 30, 0)
            } else {
                utc(2026, 11, 1, 7, 0, 0)
            };
            assert_eq!(next, want, "{expr}");
        }
        // From inside the first pass, the rest of it is still to come.
        assert_eq!(
            runs(
                "*/15 * * * *",
                "America/New_York",
                utc(2026, 11, 1, 5, 40, 0),
                2
            ),
            ["2026-11-01T05:45:00Z", "2026-11-01T07:00:00Z"]
        );
    }

    #[test]
    fn berlin_fall_back() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:xx happens twice.
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 0, 0, 0), 3),
            [
                "2026-10-24T00:30:00Z", // 02:30 CEST
                "2026-10-25T00:30:00Z", // 02:30 CEST, the first occurrence only
                "2026-10-26T01:30:00Z", // 02:30 CET
            ]
        );
        assert_eq!(
            runs(
                "0 * * * *",
                "Europe/Berlin",
                utc(2026, 10, 24, 23, 30, 0),
                4
            ),
            [
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T02:00:00Z", // 03:00 CET (02:00 CET is not run again)
                "2026-10-25T03:00:00Z",
                "2026-10-25T04:00:00Z",
            ]
        );
    }

    #[test]
    fn upcoming_gives_increasing_instants() {
        let t = utc(2026, 3, 29, 0, 0, 0);
        for (expr, tz) in [
            ("*/15 2 * * *", "Europe/Berlin"),
            ("0 * * * *", "America/New_York"),
            ("0 0 13 * 5", ""),
            ("@monthly", "Australia/Lord_Howe"),
            ("* * * * * *", "Pacific/Apia"),
        ] {
            let got = sched(expr, tz).upcoming(t, 5);
            assert_eq!(got.len(), 5, "{expr} {tz}");
            assert!(got[0] > t);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "{expr} {tz}: {got:?}");
        }
        assert!(sched("* * * * *", "").upcoming(t, 0).is_empty());
    }

    /// What the contract says, computed the slow way: every wall minute in
    /// the window that the fields match, mapped to its first instant (or, in
    /// a gap, to the first existing wall time after it), deduplicated.
    fn reference(
        expr: &str,
        tz: Tz,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let spec = parse_spec(expr).unwrap();
        assert_eq!(spec.second.bits, 1, "minute resolution only");
        let mut wall = from
            .with_timezone(&tz)
            .naive_local()
            .with_second(0)
            .unwrap()
            - TimeDelta::days(1);
        let end = until.with_timezone(&tz).naive_local() + TimeDelta::days(1);
        let mut out = Vec::new();
        while wall <= end {
            let dom = spec.day_of_month.has(wall.day());
            let dow = spec.day_of_week.has(wall.weekday().num_days_from_sunday());
            let day = if spec.days_or() {
                dom || dow
            } else {
                dom && dow
            };
            if day
                && spec.month.has(wall.month())
                && spec.hour.has(wall.hour())
                && spec.minute.has(wall.minute())
            {
                let mut w = wall;
                let at = loop {
                    match tz.from_local_datetime(&w) {
                        LocalResult::Single(a) => break a,
                        LocalResult::Ambiguous(a, b) => break a.min(b),
                        LocalResult::None => w += TimeDelta::minutes(1),
                    }
                };
                let at = at.with_timezone(&Utc);
                if at > from && at <= until {
                    out.push(at);
                }
            }
            wall += TimeDelta::minutes(1);
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn agrees_with_a_brute_force_reference_around_transitions() {
        let windows = [
            ("UTC", utc(2026, 2, 1, 0, 0, 0), utc(2026, 3, 3, 0, 0, 0)),
            (
                "Europe/Berlin",
                utc(2026, 3, 27, 0, 0, 0),
                utc(2026, 3, 31, 0, 0, 0),
            ),
            (
                "Europe/Berlin",
                utc(2026, 10, 23, 0, 0, 0),
                utc(2026, 10, 27, 0, 0, 0),
            ),
            (
                "America/New_York",
                utc(2026, 3, 6, 0, 0, 0),
                utc(2026, 3, 10, 0, 0, 0),
            ),
            (
                "America/New_York",
                utc(2026, 10, 30, 0, 0, 0),
                utc(2026, 11, 3, 0, 0, 0),
            ),
            // A 30-minute shift, and a whole skipped day (2011-12-30).
            (
                "Australia/Lord_Howe",
                utc(2026, 4, 3, 0, 0, 0),
                utc(2026, 4, 7, 0, 0, 0),
            ),
            (
                "Pacific/Apia",
                utc(2011, 12, 28, 0, 0, 0),
                utc(2012, 1, 1, 0, 0, 0),
            ),
        ];
        let exprs = [
            "* * * * *",
            "*/15 * * * *",
            "30 2 * * *",
            "30 1 * * *",
            "0 * * * *",
            "0 0 13 * 5",
            "5 4 * * SUN",
            "0 2-3 * * *",
            "45 1,2 * * 1-5",
            "0 0 */2 * MON",
            "@daily",
        ];
        for (zone, from, until) in windows {
            let tz = Tz::from_str(zone).unwrap();
            for expr in exprs {
                let s = sched(expr, zone);
                let mut got = Vec::new();
                let mut t = from;
                while let Some(at) = s.next_after(t) {
                    if at > until {
                        break;
                    }
                    got.push(at);
                    t = at;
                }
                let want = reference(expr, tz, from, until);
                assert!(
                    got == want,
                    "{expr:?} in {zone}: got {} runs, want {}; first difference: {:?}",
                    got.len(),
                    want.len(),
                    got.iter()
                        .zip(&want)
                        .find(|(g, w)| g != w)
                        .map(|(g, w)| (fmt(g), fmt(w)))
                );
            }
        }
    }

    #[test]
    fn the_calendar_ends_in_2100() {
        let s = sched("* * * * *", "");
        assert_eq!(
            s.next_after(utc(2100, 12, 31, 23, 58, 0)),
            Some(utc(2100, 12, 31, 23, 59, 0))
        );
        assert_eq!(s.next_after(utc(2100, 12, 31, 23, 59, 0)), None);
        assert_eq!(s.upcoming(utc(2100, 12, 31, 23, 57, 0), 5).len(), 2);
        // Before 1970 the scan starts at the calendar's start.
        assert_eq!(
            s.next_after(utc(1900, 1, 1, 0, 0, 0)),
            Some(utc(1970, 1, 1, 0, 0, 0))
        );
    }

    #[test]
    fn no_panics_on_garbage_or_extreme_times() {
        let mut inputs: Vec<String> = [
            "",
            " ",
            "*",
            "* *",
            "@",
            "@@daily",
            "*/*",
            "**",
            "*/-1",
            "1-",
            "-",
            ",",
            "/",
            "0 0 * * *-*",
            "0 0 * * */",
            "0 0 * * 1/",
            "0 0 1-31/31 * *",
            "日本 語 * * *",
            "٣ * * * *",
            "５ * * * *",
            "é * * * *",
            "\u{0} * * * *",
            "0 0 * * 7-7",
            "0 0 * * 0-7/7",
            "0 0 * * SUN-SAT",
            "0 0 * * mon-FRI/2",
            "0 0 31 2 0",
            "0 0 1 1 1",
            "59 23 31 12 6",
            "0 0 1-31 1-12 0-7",
            "\u{feff}0 0 * * *",
            "0 0 * * *\u{2003}",
            "0\u{a0}0 * * *",
            "0 0 * * #",
            "0 0 * * L",
            "0 0 W * *",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        inputs.push("1,".repeat(100_000));
        inputs.push(format!("{} * * * *", "1,".repeat(50_000) + "1"));
        inputs.push("* ".repeat(100_000));
        // Pseudo-random strings from a cron-ish alphabet (fixed seed).
        let alphabet: Vec<char> = "0123456789*/-,? #LW@abcMONjanSUN 7 60 é✓\t"
            .chars()
            .collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            let mut s = String::new();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 58) as usize + 5;
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            inputs.push(s);
        }
        let times = [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::<Utc>::UNIX_EPOCH,
            utc(2026, 3, 29, 1, 0, 0),
        ];
        let mut accepted = 0;
        for input in &inputs {
            for zone in ["", "Europe/Berlin", "Pacific/Apia"] {
                match CronSchedule::parse(input, zone) {
                    Ok(s) => {
                        accepted += 1;
                        for t in times {
                            let _ = s.upcoming(t, 2);
                        }
                    }
                    Err(errors) => {
                        assert!(!errors.is_empty());
                        for e in errors {
                            assert!(e.reason.chars().count() < 400, "{input:?}: {}", e.reason);
                        }
                    }
                }
            }
        }
        assert!(accepted > 0);
        let s = sched("* * * * *", "Pacific/Kiritimati");
        assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert!(s.next_after(DateTime::<Utc>::MIN_UTC).is_some());
    }

    /// Not a benchmark: makes sure `next_after` is not pathological for the
    /// 10,000 schedules the daemon may hold.
    #[test]
    fn ten_thousand_next_after_calls() {
        let schedules = [
            sched("30 2 * * *", "Europe/Berlin"),
            sched("*/15 * * * *", "America/New_York"),
            sched("0 0 13 * 5", "UTC"),
            sched("0 9 * * MON-FRI", "Asia/Tokyo"),
            sched("@monthly", "Australia/Sydney"),
        ];
        let mut t = utc(2026, 1, 1, 0, 0, 0);
        let mut found = 0;
        for i in 0..10_000 {
            let s = &schedules[i % schedules.len()];
            if let Some(at) = s.next_after(t) {
                found += 1;
                t = at.min(t + TimeDelta::hours(7));
            }
        }
        assert_eq!(found, 10_000);
    }
}
