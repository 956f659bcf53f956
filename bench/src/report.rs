//! What a figure reports: rows of value, baseline, ratio and goal, printed
//! as a table or as JSON.

use serde::Serialize;

/// A goal, and which number of the row it applies to.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "limit", rename_all = "snake_case")]
pub enum Goal {
    /// Nothing to meet: the figure is reported.
    Report,
    ValueAtMost(f64),
    RatioAtLeast(f64),
    RatioAtMost(f64),
}

/// One measured number.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// What the baseline is, when there is one.
    pub baseline_of: Option<String>,
    pub baseline: Option<f64>,
    /// value / baseline.
    pub ratio: Option<f64>,
    pub goal: Goal,
    /// Whether the goal is met (None: nothing to meet).
    pub met: Option<bool>,
}

impl Row {
    pub fn new(metric: impl Into<String>, value: f64, unit: impl Into<String>) -> Row {
        Row {
            metric: metric.into(),
            value,
            unit: unit.into(),
            baseline_of: None,
            baseline: None,
            ratio: None,
            goal: Goal::Report,
            met: None,
        }
    }

    pub fn baseline(mut self, of: impl Into<String>, b: f64) -> Row {
        self.baseline_of = Some(of.into());
        self.baseline = Some(b);
        self.ratio = (b != 0.0).then(|| self.value / b);
        self
    }

    pub fn goal(mut self, g: Goal) -> Row {
        self.goal = g;
        self.met = match g {
            Goal::Report => None,
            Goal::ValueAtMost(x) => Some(self.value <= x),
            Goal::RatioAtLeast(x) => self.ratio.map(|r| r >= x),
            Goal::RatioAtMost(x) => self.ratio.map(|r| r <= x),
        };
        self
    }

    fn goal_text(&self) -> String {
        match self.goal {
            Goal::Report => "report".into(),
            Goal::ValueAtMost(x) => format!("<= {} {}", num(x), self.unit),
            Goal::RatioAtLeast(x) => format!("ratio >= {}", num(x)),
            Goal::RatioAtMost(x) => format!("ratio <= {}", num(x)),
        }
    }
}

/// One figure (P1, P3, ...): its sizes and settings, rows and notes.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub id: &'static str,
    pub name: &'static str,
    /// Sizes and the daemon's config keys that matter.
    pub params: serde_json::Value,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// Wall time of the whole figure, seconds.
    pub seconds: f64,
    /// Set when the figure could not be measured.
    pub error: Option<String>,
}

impl Figure {
    pub fn new(id: &'static str, name: &'static str, params: serde_json::Value) -> Figure {
        Figure {
            id,
            name,
            params,
            rows: Vec::new(),
            notes: Vec::new(),
            seconds: 0.0,
            error: None,
        }
    }
}

/// A number with 3 significant digits or so, without exponent noise.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

/// The figures as a markdown table (readable on a terminal too), with
/// each figure's parameters and notes under it.
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::new();
    out.push_str("| figure | metric | value | baseline | ratio | goal | met |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for f in figures {
        if let Some(e) = &f.error {
            out.push_str(&format!(
                "| {} {} | (failed) | {} | | | | no |\n",
                f.id,
                f.name,
                e.replace('|', "/").replace('\n', " ")
            ));
        }
        for r in &f.rows {
            let baseline = match (&r.baseline_of, r.baseline) {
                (Some(of), Some(b)) => format!("{} ({of})", num(b)),
                _ => String::new(),
            };
            out.push_str(&format!(
                "| {} {} | {} | {} {} | {} | {} | {} | {} |\n",
                f.id,
                f.name,
                r.metric,
                num(r.value),
                r.unit,
                baseline,
                r.ratio.map(num).unwrap_or_default(),
                r.goal_text(),
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                }
            ));
        }
    }
    for f in figures {
        out.push_str(&format!(
            "\n{} {} ({:.0} s): {}\n",
            f.id,
            f.name,
            f.seconds,
            params_text(&f.params)
        ));
        for n in &f.notes {
            out.push_str(&format!("  - {n}\n"));
        }
    }
    out
}

fn params_text(p: &serde_json::Value) -> String {
    match p {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_are_judged_on_the_right_number() {
        let r = Row::new("x", 10.0, "1/s")
            .baseline("y", 40.0)
            .goal(Goal::RatioAtLeast(0.5));
        assert_eq!(r.ratio, Some(0.25));
        assert_eq!(r.met, Some(false));
        let r = Row::new("rss", 150.0, "MiB").goal(Goal::ValueAtMost(200.0));
        assert_eq!(r.met, Some(true));
        let r = Row::new("polls", 10.0, "1/s")
            .baseline("bound", 20.0)
            .goal(Goal::RatioAtMost(1.0));
        assert_eq!(r.met, Some(true));
        assert_eq!(Row::new("n", 1.0, "").goal(Goal::Report).met, None);
        let t = table(&[Figure {
            rows: vec![r],
            ..Figure::new("P3", "waiting", serde_json::json!({"jobs": 5}))
        }]);
        assert!(
            t.contains(
                "| P3 waiting | polls | 10.00 1/s | 20.00 (bound) | 0.500 | ratio <= 1.00 | yes |"
            ),
            "{t}"
        );
    }
}
