//! What a scenario run tells people and CI: a progress line per scenario,
//! the details of each failure (the step, what was expected, what was
//! seen, the worker log's tail), a summary, and a JUnit XML report.
//!
//! The XML is written with `quick-junit` (maintained by the cargo-nextest
//! authors, whose JUnit output is consumed by GitHub, GitLab and Jenkins):
//! it escapes attribute and text content and strips characters XML cannot
//! hold (a worker log's ANSI colour codes), which a hand-written writer
//! would have to get right itself.
//!
//! What it does not do: run anything or decide what failed; it formats
//! the [`ScenarioReport`]s it is given.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

/// The JUnit test suite's name.
pub const SUITE_NAME: &str = "orchestrator-mock scenarios";

/// One thing that did not match, or went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What was looked at, e.g. `step 0 outcome`.
    pub what: String,
    /// What the scenario asked for (`None` for an error rather than a
    /// mismatch).
    pub expected: Option<String>,
    /// What the runner saw, or the error.
    pub seen: String,
}

impl Problem {
    /// A mismatch.
    pub fn mismatch(
        what: impl Into<String>,
        expected: impl Into<String>,
        seen: impl Into<String>,
    ) -> Problem {
        Problem {
            what: what.into(),
            expected: Some(expected.into()),
            seen: seen.into(),
        }
    }

    /// An error (nothing to compare).
    pub fn error(what: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            what: what.into(),
            expected: None,
            seen: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.expected {
            Some(expected) => write!(f, "{}: expected {expected}, seen {}", self.what, self.seen),
            None => write!(f, "{}: {}", self.what, self.seen),
        }
    }
}

/// Where and why a scenario failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Index of the failing step, from 0 (`None`: before or after the steps).
    pub step: Option<usize>,
    /// Its label, e.g. `expect "ticket"`.
    pub label: String,
    /// Its line in the scenario file.
    pub line: Option<usize>,
    /// Every problem found in that step.
    pub problems: Vec<Problem>,
}

impl Failure {
    /// The one-line message (the JUnit `message` attribute).
    pub fn headline(&self) -> String {
        let first = self
            .problems
            .first()
            .map_or_else(|| "failed".to_string(), ToString::to_string);
        match self.step {
            Some(i) => format!("step {} ({}): {first}", i + 1, self.label),
            None => format!("{}: {first}", self.label),
        }
    }
}

/// How one scenario went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// Its file, as given.
    pub file: String,
    /// How long it ran.
    pub duration: Duration,
    /// Why it failed; `None` when it passed.
    pub failure: Option<Failure>,
    /// The worker log's last lines, kept for failures.
    pub log_tail: Option<String>,
}

/// Seconds with one decimal, e.g. `1.2s`.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The start of a progress line: `[3/11] drain ... `.
pub fn progress_start(index: usize, total: usize, name: &str) -> String {
    format!("[{}/{total}] {name} ... ", index + 1)
}

/// The end of a progress line: `ok (1.2s)` or `FAILED (1.2s)`.
pub fn progress_end(report: &ScenarioReport) -> String {
    let verdict = if report.failure.is_some() {
        "FAILED"
    } else {
        "ok"
    };
    format!("{verdict} ({})", secs(report.duration))
}

/// The failure details of a failed scenario, indented under its progress
/// line; empty when it passed.
pub fn details(report: &ScenarioReport, log_name: Option<&str>) -> String {
    let Some(failure) = &report.failure else {
        return String::new();
    };
    let mut out = String::new();
    let place = match (failure.step, failure.line) {
        (Some(i), Some(line)) => format!(
            "at step {} ({}, {}:{line})",
            i + 1,
            failure.label,
            report.file
        ),
        (Some(i), None) => format!("at step {} ({})", i + 1, failure.label),
        (None, _) => failure.label.clone(),
    };
    out.push_str(&format!("    {place}\n"));
    for p in &failure.problems {
        match &p.expected {
            Some(expected) => {
                out.push_str(&format!("      {}\n", p.what));
                out.push_str(&format!("        expected: {expected}\n"));
                out.push_str(&format!("        seen:     {}\n", p.seen));
            }
            None => out.push_str(&format!("      {}: {}\n", p.what, p.seen)),
        }
    }
    if let Some(tail) = report.log_tail.as_deref().filter(|t| !t.trim().is_empty()) {
        out.push_str(&format!(
            "    worker log (last lines{}):\n",
            log_name.map(|n| format!(" of {n}")).unwrap_or_default()
        ));
        for line in tail.lines() {
            out.push_str(&format!("      | {line}\n"));
        }
    }
    out
}

/// The summary line. Deliberately not the bare `N passed, N failed` form,
/// so that a CI log reader does not take it for the test harness's own
/// closing line.
pub fn summary(reports: &[ScenarioReport], total: Duration) -> String {
    let failed = reports.iter().filter(|r| r.failure.is_some()).count();
    format!(
        "{} scenarios: {} passed, {failed} failed, {}",
        reports.len(),
        reports.len() - failed,
        secs(total)
    )
}

/// The JUnit XML report: one test suite, one test case per scenario (its
/// file as the class name), failures with their details and the worker
/// log's tail in `<system-out>`.
///
/// # Errors
/// The serializer's error (it does not fail on any text: characters XML
/// cannot hold are dropped).
pub fn junit_xml(reports: &[ScenarioReport], total: Duration) -> Result<String, String> {
    let mut report = Report::new(SUITE_NAME);
    let mut suite = TestSuite::new(SUITE_NAME);
    for r in reports {
        let status = match &r.failure {
            None => TestCaseStatus::success(),
            Some(f) => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(f.headline());
                status.set_type("scenario failure");
                status.set_description(details(
                    &ScenarioReport {
                        log_tail: None,
                        ..r.clone()
                    },
                    None,
                ));
                status
            }
        };
        let mut case = TestCase::new(r.name.as_str(), status);
        case.set_classname(r.file.as_str());
        case.set_time(r.duration);
        if r.failure.is_some()
            && let Some(tail) = &r.log_tail
        {
            case.set_system_out(tail.as_str());
        }
        suite.add_test_case(case);
    }
    suite.set_time(total);
    report.set_time(total);
    report.add_test_suite(suite);
    report.to_string().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports() -> Vec<ScenarioReport> {
        vec![
            ScenarioReport {
                name: "happy".into(),
                file: "pack/happy.toml".into(),
                duration: Duration::from_millis(1200),
                failure: None,
                log_tail: None,
            },
            ScenarioReport {
                name: "refusal <&> \"quoted\"".into(),
                file: "pack/refusal.toml".into(),
                duration: Duration::from_millis(300),
                failure: Some(Failure {
                    step: Some(1),
                    label: "expect \"t\"".into(),
                    line: Some(12),
                    problems: vec![Problem::mismatch(
                        "step 0 outcome",
                        "SUCCEEDED",
                        "REJECTED (not_allowed) <b>",
                    )],
                }),
                log_tail: Some("line 1\n\u{1b}[31mred\u{1b}[0m & done".into()),
            },
        ]
    }

    #[test]
    fn progress_details_and_summary_read_well() {
        let r = reports();
        assert_eq!(progress_start(2, 11, "drain"), "[3/11] drain ... ");
        assert_eq!(progress_end(&r[0]), "ok (1.2s)");
        assert_eq!(progress_end(&r[1]), "FAILED (0.3s)");
        let d = details(&r[1], Some("worker.log"));
        assert!(
            d.contains("at step 2 (expect \"t\", pack/refusal.toml:12)"),
            "{d}"
        );
        assert!(d.contains("expected: SUCCEEDED"), "{d}");
        assert!(d.contains("seen:     REJECTED (not_allowed)"), "{d}");
        assert!(d.contains("worker log (last lines of worker.log)"), "{d}");
        assert!(details(&r[0], None).is_empty());
        assert_eq!(
            summary(&r, Duration::from_secs(2)),
            "2 scenarios: 1 passed, 1 failed, 2.0s"
        );
    }

    #[test]
    fn junit_xml_parses_back_with_escaped_text_and_counts() {
        let xml = junit_xml(&reports(), Duration::from_secs(2)).unwrap();
        let mut reader = quick_xml::Reader::from_str(&xml);
        let mut cases = Vec::new();
        let mut failures = Vec::new();
        let mut system_out = String::new();
        let mut in_out = false;
        loop {
            match reader.read_event().unwrap() {
                quick_xml::events::Event::Eof => break,
                quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                    let attr = |name: &str| {
                        e.try_get_attribute(name).unwrap().map(|a| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .unwrap()
                                .into_owned()
                        })
                    };
                    match e.name().as_ref() {
                        b"testsuite" => assert_eq!(attr("failures").as_deref(), Some("1")),
                        b"testcase" => cases.push(attr("name").unwrap()),
                        b"failure" => failures.push(attr("message").unwrap()),
                        b"system-out" => in_out = true,
                        _ => {}
                    }
                }
                quick_xml::events::Event::Text(t) if in_out => {
                    system_out.push_str(&t.decode().unwrap());
                }
                quick_xml::events::Event::GeneralRef(r) if in_out => {
                    let name = r.decode().unwrap();
                    system_out.push_str(match name.as_ref() {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        _ => "?",
                    });
                }
                quick_xml::events::Event::End(e) if e.name().as_ref() == b"system-out" => {
                    in_out = false;
                }
                _ => {}
            }
        }
        assert_eq!(cases, ["happy", "refusal <&> \"quoted\""]);
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].contains("REJECTED (not_allowed) <b>"),
            "{}",
            failures[0]
        );
        assert!(system_out.contains("& done"), "{system_out}");
        assert!(
            !system_out.contains('\u{1b}'),
            "ANSI escapes are stripped: {system_out:?}"
        );
    }
}
