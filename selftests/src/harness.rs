// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! A small kselftest-style harness: TAP 13 on stdout, one result line per test, `# SKIP reason`
//! for skips, exit 1 if anything failed, exit 4 (KSFT_SKIP) if everything was skipped, and a
//! closing `N passed, N failed, N skipped` line.

use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

/// What a test that did not fail reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The behaviour was checked and holds.
    Pass,
    /// The test could not run here; the reason is printed.
    Skip(String),
}

/// A test returns `Ok(outcome)` or an error describing what did not hold.
pub type TestResult = anyhow::Result<Outcome>;

/// One registered test.
#[derive(Clone, Copy)]
pub struct Test {
    /// Unique name, used to select the test on the command line.
    pub name: &'static str,
    /// One line saying what the test proves.
    pub about: &'static str,
    /// The test body.
    pub run: fn() -> TestResult,
}

/// kselftest exit codes.
pub const KSFT_PASS: i32 = 0;
/// Some test failed.
pub const KSFT_FAIL: i32 = 1;
/// Every selected test was skipped.
pub const KSFT_SKIP: i32 = 4;

/// Tally of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed (error or panic).
    pub failed: usize,
    /// Tests that were skipped.
    pub skipped: usize,
}

impl Totals {
    /// The kselftest exit code for these totals.
    pub fn exit_code(&self) -> i32 {
        if self.failed > 0 {
            KSFT_FAIL
        } else if self.passed == 0 && self.skipped > 0 {
            KSFT_SKIP
        } else {
            KSFT_PASS
        }
    }
}

/// Select tests by name. Each pattern is an exact name, or a prefix ending in `*`.
/// Returns the unknown patterns as an error.
pub fn select<'a>(tests: &'a [Test], patterns: &[String]) -> Result<Vec<&'a Test>, Vec<String>> {
    if patterns.is_empty() {
        return Ok(tests.iter().collect());
    }
    let matches = |t: &Test, p: &str| match p.strip_suffix('*') {
        Some(prefix) => t.name.starts_with(prefix),
        None => t.name == p,
    };
    let unknown: Vec<String> = patterns
        .iter()
        .filter(|p| !tests.iter().any(|t| matches(t, p)))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    Ok(tests
        .iter()
        .filter(|t| patterns.iter().any(|p| matches(t, p)))
        .collect())
}

fn run_one(t: &Test) -> TestResult {
    match panic::catch_unwind(AssertUnwindSafe(t.run)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic payload)");
            Err(anyhow::anyhow!("panicked: {msg}"))
        }
    }
}

/// Run `tests` in order, writing TAP 13 to `out`. Returns the totals.
pub fn run(tests: &[&Test], out: &mut dyn Write) -> Totals {
    let mut totals = Totals::default();
    let n = tests.len();
    // Output errors are ignored: the console is all we have, and a test result must not be
    // lost because a previous write failed.
    let _ = writeln!(out, "TAP version 13");
    let _ = writeln!(out, "1..{n}");
    for (i, t) in tests.iter().enumerate() {
        let k = i + 1;
        let _ = writeln!(out, "# [{k}/{n}] {}: {}", t.name, t.about);
        let _ = out.flush();
        let start = Instant::now();
        let result = run_one(t);
        let ms = start.elapsed().as_millis();
        match result {
            Ok(Outcome::Pass) => {
                totals.passed += 1;
                let _ = writeln!(out, "ok {k} - {} # time={ms}ms", t.name);
            }
            Ok(Outcome::Skip(reason)) => {
                totals.skipped += 1;
                let _ = writeln!(out, "ok {k} - {} # SKIP {reason}", t.name);
            }
            Err(e) => {
                totals.failed += 1;
                for line in format!("{e:#}").lines() {
                    let _ = writeln!(out, "#   {line}");
                }
                let _ = writeln!(out, "not ok {k} - {} # time={ms}ms", t.name);
            }
        }
        let _ = out.flush();
    }
    let _ = writeln!(
        out,
        "# Totals: pass:{} fail:{} xfail:0 xpass:0 skip:{} error:0",
        totals.passed, totals.failed, totals.skipped
    );
    let _ = writeln!(
        out,
        "{} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.skipped
    );
    let _ = out.flush();
    totals
}

/// Skip unless `cond`, with `reason`.
#[macro_export]
macro_rules! require {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            return Ok($crate::harness::Outcome::Skip(format!($($reason)+)));
        }
    };
}

/// Fail with a message unless `cond`.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            anyhow::bail!($($msg)+);
        }
    };
}

/// Fail unless `a == b`, printing both.
#[macro_export]
macro_rules! check_eq {
    ($a:expr, $b:expr, $($msg:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            anyhow::bail!("{}: got {:?}, expected {:?}", format!($($msg)+), a, b);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass() -> TestResult {
        Ok(Outcome::Pass)
    }
    fn fail() -> TestResult {
        anyhow::bail!("value was 3\nsecond line")
    }
    fn skip() -> TestResult {
        Ok(Outcome::Skip("no widget".into()))
    }
    fn boom() -> TestResult {
        panic!("kaboom")
    }

    const T: &[Test] = &[
        Test {
            name: "a_pass",
            about: "passes",
            run: pass,
        },
        Test {
            name: "a_fail",
            about: "fails",
            run: fail,
        },
        Test {
            name: "b_skip",
            about: "skips",
            run: skip,
        },
        Test {
            name: "b_panic",
            about: "panics",
            run: boom,
        },
    ];

    fn run_str(sel: &[&Test]) -> (Totals, String) {
        let mut buf = Vec::new();
        let t = run(sel, &mut buf);
        (t, String::from_utf8(buf).expect("utf8"))
    }

    #[test]
    fn tap_stream_and_summary() {
        let all: Vec<&Test> = T.iter().collect();
        let (t, s) = run_str(&all);
        assert_eq!(
            t,
            Totals {
                passed: 1,
                failed: 2,
                skipped: 1
            }
        );
        assert_eq!(t.exit_code(), KSFT_FAIL);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "TAP version 13");
        assert_eq!(lines[1], "1..4");
        assert!(s.contains("\nok 1 - a_pass # time="));
        assert!(s.contains("#   value was 3\n#   second line\nnot ok 2 - a_fail"));
        assert!(s.contains("\nok 3 - b_skip # SKIP no widget\n"));
        assert!(s.contains("#   panicked: kaboom\nnot ok 4 - b_panic"));
        assert_eq!(lines.last().copied(), Some("1 passed, 2 failed, 1 skipped"));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            Totals {
                passed: 2,
                failed: 0,
                skipped: 1
            }
            .exit_code(),
            KSFT_PASS
        );
        assert_eq!(
            Totals {
                passed: 0,
                failed: 0,
                skipped: 2
            }
            .exit_code(),
            KSFT_SKIP
        );
        assert_eq!(
            Totals {
                passed: 5,
                failed: 1,
                skipped: 0
            }
            .exit_code(),
            KSFT_FAIL
        );
    }

    #[test]
    fn selection_by_name_and_prefix() {
        let names = |v: Vec<&Test>| v.iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names(select(T, &[]).expect("all")).len(), 4);
        assert_eq!(
            names(select(T, &["a_fail".into()]).expect("one")),
            ["a_fail"]
        );
        assert_eq!(
            names(select(T, &["b_*".into()]).expect("prefix")),
            ["b_skip", "b_panic"]
        );
        assert_eq!(
            select(T, &["nope".into(), "a_pass".into()]).err(),
            Some(vec!["nope".to_string()])
        );
    }
}
