// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! A small kselftest-style harness: TAP 13 on stdout, one result line per test, `# SKIP reason`
//! for skips, exit 1 if anything failed, exit 4 (KSFT_SKIP) if everything was skipped, and a
//! closing `N passed, N failed, N skipped` line.
//!
//! Each test runs in a child process of its own (`fork`), under a time limit
//! ([`DEFAULT_TIME_LIMIT`], or `vtlkit.test_timeout=SECONDS` on the kernel command line /
//! `VTLKIT_TEST_TIMEOUT`, plus what the registry gives a test on top). A test still running at
//! its limit is killed with SIGKILL (with every process it started) and reported `not ok` with
//! the limit named, and the run goes on with the next test: a vCPU thread stuck in `KVM_RUN` or
//! a join that never returns cannot be cancelled in-process, but its process can be killed.
//! The child reports its result to the harness through a pipe; what the test prints itself goes
//! straight to stdout/stderr, between the test's header line and its result line. A test that
//! panics fails with the panic message, one that crashes fails with the signal's name.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, getppid, pipe2, setpgid, ForkResult, Pid};

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

/// A test's time limit unless `vtlkit.test_timeout=` / `VTLKIT_TEST_TIMEOUT` says otherwise.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(60);

/// `key=value` from a kernel command line, if present.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// A whole number (decimal, or hex with `0x`) from the environment variable `env`, else from
/// `cmdline_key=` on the kernel command line (`/proc/cmdline`); `Ok(None)` when neither is set.
/// The error names the source.
pub fn number_setting(env: &str, cmdline_key: &str) -> Result<Option<u64>, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    number_setting_from(std::env::var(env).ok(), env, &cmdline, cmdline_key)
}

fn number_setting_from(
    env_value: Option<String>,
    env: &str,
    cmdline: &str,
    cmdline_key: &str,
) -> Result<Option<u64>, String> {
    let (raw, from) = match env_value {
        Some(v) => (v, env.to_string()),
        None => match cmdline_value(cmdline, cmdline_key) {
            Some(v) => (v, format!("{cmdline_key}= on the kernel command line")),
            None => return Ok(None),
        },
    };
    let v = raw.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    }
    .map(Some)
    .map_err(|_| format!("{from}: {raw:?} is not a whole number"))
}

/// The time limit of a test without one of its own: `VTLKIT_TEST_TIMEOUT`, else
/// `vtlkit.test_timeout=` on the kernel command line, else [`DEFAULT_TIME_LIMIT`]; in seconds,
/// 0 for no limit (`None`).
pub fn base_time_limit() -> Result<Option<Duration>, String> {
    let secs = number_setting("VTLKIT_TEST_TIMEOUT", "vtlkit.test_timeout")?;
    Ok(match secs {
        None => Some(DEFAULT_TIME_LIMIT),
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
    })
}

/// `60s`, or `250ms` for limits that are not whole seconds.
pub fn show_limit(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Select tests by name. Each pattern is an exact name, or a prefix ending in `*`. `hidden`
/// tests (the harness's own checks) are selected only by their exact name and run first.
/// Returns the unknown patterns as an error.
pub fn select<'a>(
    tests: &'a [Test],
    hidden: &'a [Test],
    patterns: &[String],
) -> Result<Vec<&'a Test>, Vec<String>> {
    if patterns.is_empty() {
        return Ok(tests.iter().collect());
    }
    let matches = |t: &Test, p: &str| match p.strip_suffix('*') {
        Some(prefix) => t.name.starts_with(prefix),
        None => t.name == p,
    };
    let named = |t: &Test| patterns.iter().any(|p| p == t.name);
    let unknown: Vec<String> = patterns
        .iter()
        .filter(|p| !tests.iter().any(|t| matches(t, p)) && !hidden.iter().any(|t| t.name == **p))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    Ok(hidden
        .iter()
        .filter(|t| named(t))
        .chain(
            tests
                .iter()
                .filter(|t| patterns.iter().any(|p| matches(t, p))),
        )
        .collect())
}

/// Run the test body here, turning a panic into an error.
fn run_in_process(t: &Test) -> TestResult {
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

/// What the child process sends the harness: `pass`, `skip\n<reason>` or `fail\n<message>`.
fn encode(r: &TestResult) -> Vec<u8> {
    match r {
        Ok(Outcome::Pass) => b"pass".to_vec(),
        Ok(Outcome::Skip(reason)) => format!("skip\n{reason}").into_bytes(),
        Err(e) => format!("fail\n{e:#}").into_bytes(),
    }
}

/// The result a child sent, or `None` if it sent nothing recognisable.
fn decode(msg: &[u8]) -> Option<TestResult> {
    let msg = String::from_utf8_lossy(msg);
    let (kind, text) = msg.split_once('\n').unwrap_or((&msg, ""));
    match kind {
        "pass" => Some(Ok(Outcome::Pass)),
        "skip" => Some(Ok(Outcome::Skip(text.to_string()))),
        "fail" => Some(Err(anyhow::anyhow!("{text}"))),
        _ => None,
    }
}

/// How long to wait for a killed test process to be gone before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Run `t` in a child process, killing it (and its process group) if it is still running after
/// `limit`. Errors are the test's failure, or what went wrong with its process.
fn run_isolated(t: &Test, limit: Option<Duration>) -> TestResult {
    // Nothing buffered may be inherited by the child (it would be written twice).
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    let (rx, tx) = pipe2(OFlag::O_CLOEXEC).map_err(|e| anyhow::anyhow!("harness: pipe: {e}"))?;
    let parent = getpid();
    // SAFETY: the child only runs the test (as the in-process harness did) and then leaves
    // with _exit. vtlkit-selftests is single-threaded when it forks. In a multi-threaded
    // process (cargo's unit tests) glibc keeps malloc usable in the child, and the unit tests'
    // bodies take no lock another thread could have held at the fork.
    match unsafe { fork() } {
        Err(e) => Err(anyhow::anyhow!("harness: fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(rx);
            child_main(t, tx, parent)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(tx);
            // Both sides set the group, so it is in place whichever runs first.
            let _ = setpgid(child, child);
            supervise(child, rx, limit)
        }
    }
}

fn child_main(t: &Test, tx: OwnedFd, parent: Pid) -> ! {
    // A process group of its own, so that a kill takes whatever the test started too; and no
    // orphans if the harness is killed (e.g. Ctrl-C on a host run).
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if getppid() != parent {
        exit_now(1);
    }
    let result = run_in_process(t);
    let _ = File::from(tx).write_all(&encode(&result));
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    exit_now(0)
}

/// End the process at once: no destructors, no atexit handlers (the parent's, inherited by
/// the fork), and threads the test left running die with it.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and cannot fail; it is meant for a forked child.
    unsafe { libc::_exit(code) }
}

/// Collect the child's result, enforcing `limit`.
fn supervise(child: Pid, rx: OwnedFd, limit: Option<Duration>) -> TestResult {
    // A limit too far away to represent is no limit.
    let deadline = limit.and_then(|l| Instant::now().checked_add(l));
    let mut rx = Some(File::from(rx));
    let mut msg = Vec::new();
    let status = loop {
        // Wait for output or the end of the pipe in short steps, checking for the child's exit
        // in between (a process the test started without exec could keep the pipe open).
        let step = Duration::from_millis(if rx.is_some() { 50 } else { 1 });
        let step = match deadline {
            Some(d) => step.min(d.saturating_duration_since(Instant::now())),
            None => step,
        };
        match rx.as_mut() {
            Some(f) => {
                if readable(f, step) {
                    read_some(&mut rx, &mut msg);
                }
            }
            None => std::thread::sleep(step),
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(status) => break Ok(status),
            Err(e) => break Err(e),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(time_out(child, limit.unwrap_or_default()));
        }
    };
    // The child is gone: whatever it wrote is in the pipe.
    while let Some(f) = rx.as_mut() {
        if !readable(f, Duration::ZERO) {
            break;
        }
        read_some(&mut rx, &mut msg);
    }
    if let Some(r) = decode(&msg) {
        return r;
    }
    match status {
        Ok(WaitStatus::Signaled(_, sig, core)) => Err(anyhow::anyhow!(
            "the test process died of {sig}{} without reporting a result",
            if core { " (core dumped)" } else { "" }
        )),
        Ok(WaitStatus::Exited(_, code)) => Err(anyhow::anyhow!(
            "the test process exited with status {code} without reporting a result"
        )),
        Ok(other) => Err(anyhow::anyhow!(
            "the test process ended without reporting a result ({other:?})"
        )),
        Err(e) => Err(anyhow::anyhow!("harness: waitpid: {e}")),
    }
}

/// Whether `f` has data or its end within `timeout`.
fn readable(f: &File, timeout: Duration) -> bool {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// Read what is there into `msg`; on the end of the pipe (or an error) close it.
fn read_some(rx: &mut Option<File>, msg: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    match rx.as_mut().map(|f| f.read(&mut buf)) {
        Some(Ok(n)) if n > 0 => msg.extend_from_slice(&buf[..n]),
        Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
        _ => *rx = None,
    }
}

/// Kill a test that ran out of time, with everything in its process group, and say so.
fn time_out(child: Pid, limit: Duration) -> anyhow::Error {
    let _ = killpg(child, Signal::SIGKILL);
    let _ = kill(child, Signal::SIGKILL);
    let end = Instant::now() + KILL_GRACE;
    let mut gone = false;
    while Instant::now() < end {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                gone = true;
                break;
            }
        }
    }
    let limit = show_limit(limit);
    if gone {
        anyhow::anyhow!(
            "time limit of {limit} exceeded: the test was killed (vtlkit.test_timeout=SECONDS sets the limit)"
        )
    } else {
        anyhow::anyhow!(
            "time limit of {limit} exceeded: the test was killed but its process {child} did not end within {}s (stuck in the kernel?); left behind",
            KILL_GRACE.as_secs()
        )
    }
}

/// Run `tests` in order, each in its own process under the time limit `limit` gives it (`None`:
/// no limit), writing TAP 13 to `out`. Returns the totals.
pub fn run(
    tests: &[&Test],
    limit: &dyn Fn(&Test) -> Option<Duration>,
    out: &mut dyn Write,
) -> Totals {
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
        let result = run_isolated(t, limit(t));
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

/// The harness's own checks, selected only by exact name (never by default or by a prefix):
/// `harness_hang` never ends, so the time limit must cut it off; `harness_ok` passes at once,
/// printing words that a kernel-report scan must not take for a kernel report.
pub const SELF_TESTS: &[Test] = &[
    Test {
        name: "harness_hang",
        about: "harness self-test: never returns; the time limit must end it and the run go on",
        run: self_test_hang,
    },
    Test {
        name: "harness_ok",
        about: "harness self-test: passes at once, after printing report-like words",
        run: self_test_ok,
    },
];

fn self_test_hang() -> TestResult {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn self_test_ok() -> TestResult {
    println!("# harness_ok: test output that says WARNING: or BUG: or Call Trace: is not a kernel report");
    Ok(Outcome::Pass)
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
    fn hang() -> TestResult {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    fn crash() -> TestResult {
        std::process::abort()
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
        run_limited(sel, None)
    }

    fn run_limited(sel: &[&Test], limit: Option<Duration>) -> (Totals, String) {
        let mut buf = Vec::new();
        let t = run(sel, &|_| limit, &mut buf);
        (t, String::from_utf8(buf).expect("utf8"))
    }

    const SLOW: &[Test] = &[
        Test {
            name: "hangs",
            about: "never returns",
            run: hang,
        },
        Test {
            name: "crashes",
            about: "aborts",
            run: crash,
        },
        Test {
            name: "after",
            about: "passes",
            run: pass,
        },
    ];

    #[test]
    fn a_hung_test_is_cut_off_and_the_run_goes_on() {
        let all: Vec<&Test> = SLOW.iter().collect();
        let start = Instant::now();
        let (t, s) = run_limited(&all, Some(Duration::from_millis(300)));
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
        assert_eq!(
            t,
            Totals {
                passed: 1,
                failed: 2,
                skipped: 0
            },
            "{s}"
        );
        assert!(
            s.contains("#   time limit of 300ms exceeded: the test was killed")
                && s.contains("\nnot ok 1 - hangs # time="),
            "{s}"
        );
        assert!(
            s.contains("#   the test process died of SIGABRT")
                && s.contains("\nnot ok 2 - crashes"),
            "{s}"
        );
        assert!(s.contains("\nok 3 - after # time="), "{s}");
        assert!(s.ends_with("1 passed, 2 failed, 0 skipped\n"), "{s}");
    }

    #[test]
    fn a_limit_does_not_cut_off_a_test_that_finishes() {
        let (t, s) = run_limited(&[&T[0], &T[1]], Some(Duration::from_secs(30)));
        assert_eq!((t.passed, t.failed), (1, 1), "{s}");
        assert!(!s.contains("time limit"), "{s}");
    }

    #[test]
    fn results_cross_the_pipe_intact() {
        for o in [
            Outcome::Pass,
            Outcome::Skip("no widget: really\nnot here".into()),
            Outcome::Skip(String::new()),
        ] {
            let back = decode(&encode(&Ok(o.clone())))
                .expect("decodes")
                .expect("ok");
            assert_eq!(back, o);
        }
        let e: TestResult = Err(anyhow::anyhow!("inner").context("outer"));
        let back = decode(&encode(&e)).expect("decodes");
        assert_eq!(format!("{:#}", back.expect_err("fail")), "outer: inner");
        assert!(decode(b"").is_none());
        assert!(decode(b"garbage").is_none());
    }

    #[test]
    fn time_limit_settings() {
        let c = "console=ttyS0 vtlkit.test_timeout=90 vtlkit.test_timeout_x=1 quiet";
        let get = |env: Option<&str>, c: &str| {
            number_setting_from(
                env.map(String::from),
                "VTLKIT_TEST_TIMEOUT",
                c,
                "vtlkit.test_timeout",
            )
        };
        assert_eq!(get(None, c), Ok(Some(90)));
        assert_eq!(get(Some("5"), c), Ok(Some(5)));
        assert_eq!(get(Some("0x1e"), c), Ok(Some(30)));
        assert_eq!(get(None, "quiet"), Ok(None));
        let e = get(None, "vtlkit.test_timeout=1m").expect_err("not a number");
        assert!(
            e.contains("vtlkit.test_timeout= on the kernel command line") && e.contains("\"1m\""),
            "{e}"
        );
        let e = get(Some("x"), c).expect_err("not a number");
        assert!(e.starts_with("VTLKIT_TEST_TIMEOUT: "), "{e}");
        assert_eq!(show_limit(Duration::from_secs(60)), "60s");
        assert_eq!(show_limit(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn hidden_tests_only_by_exact_name_and_first() {
        let names = |v: Vec<&Test>| v.iter().map(|t| t.name).collect::<Vec<_>>();
        let hidden = SELF_TESTS;
        assert_eq!(names(select(T, hidden, &[]).expect("all")).len(), 4);
        assert_eq!(
            select(T, hidden, &["harness_*".into()]).err(),
            Some(vec!["harness_*".to_string()])
        );
        assert_eq!(
            names(select(T, hidden, &["a_pass".into(), "harness_hang".into()]).expect("named")),
            ["harness_hang", "a_pass"]
        );
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
        assert_eq!(names(select(T, &[], &[]).expect("all")).len(), 4);
        assert_eq!(
            names(select(T, &[], &["a_fail".into()]).expect("one")),
            ["a_fail"]
        );
        assert_eq!(
            names(select(T, &[], &["b_*".into()]).expect("prefix")),
            ["b_skip", "b_panic"]
        );
        assert_eq!(
            select(T, &[], &["nope".into(), "a_pass".into()]).err(),
            Some(vec!["nope".to_string()])
        );
    }
}
