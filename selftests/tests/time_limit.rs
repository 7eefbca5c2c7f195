// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The built vtlkit-selftests binary, run on the host with its hidden harness self-tests: a
//! test that never returns is cut off at the time limit and reported `not ok` with the limit
//! named, and the tests after it still run.

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vtlkit-selftests");

fn run(args: &[&str], timeout: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("VTLKIT_TEST_TIMEOUT");
    if let Some(t) = timeout {
        cmd.env("VTLKIT_TEST_TIMEOUT", t);
    }
    let out = cmd.output().expect("run vtlkit-selftests");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_hung_test_is_cut_off_at_its_limit_and_later_tests_run() {
    let start = Instant::now();
    let (code, out, err) = run(&["harness_hang", "harness_ok"], Some("1"));
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}\n{out}{err}");
    assert_eq!(code, Some(1), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["TAP version 13", "1..2"], "{out}");
    let hang = lines
        .iter()
        .position(|l| l.starts_with("not ok 1 - harness_hang # time="))
        .unwrap_or_else(|| panic!("no `not ok 1 - harness_hang`:\n{out}"));
    assert!(
        lines[..hang]
            .iter()
            .any(|l| l.starts_with("#   time limit of 1s exceeded")),
        "the limit is not named before the result:\n{out}"
    );
    assert!(
        lines[hang..]
            .iter()
            .any(|l| l.starts_with("ok 2 - harness_ok # time=")),
        "the test after the hung one did not run:\n{out}"
    );
    assert_eq!(
        lines.last(),
        Some(&"1 passed, 1 failed, 0 skipped"),
        "{out}"
    );
}

#[test]
fn the_harness_self_tests_are_hidden() {
    let (code, out, _) = run(&["--list"], None);
    assert_eq!(code, Some(0));
    assert!(out.contains("kernel_is_patched"), "{out}");
    assert!(!out.contains("harness_"), "{out}");
    // Only an exact name selects them.
    let (code, _, err) = run(&["harness_*"], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no test named harness_*"), "{err}");
}

#[test]
fn a_bad_limit_is_a_usage_error() {
    let (code, out, err) = run(&["harness_ok"], Some("soon"));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("VTLKIT_TEST_TIMEOUT") && err.contains("\"soon\""),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}
