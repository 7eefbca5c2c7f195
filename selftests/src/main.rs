// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! vtlkit-selftests: runs inside the patched kernel (booted in QEMU by scripts/boot.sh) and
//! proves the series' behaviour end to end with real nested VMs.
//!
//! Usage: vtlkit-selftests [--list] [NAME | PREFIX* ...]
//!        (time limit per test: 60 s, or VTLKIT_TEST_TIMEOUT / vtlkit.test_timeout=SECONDS)
//!        vtlkit-selftests --bench [--ipis N] [--reps R]   (IPI delivery benchmark, [`bench`])
//!        vtlkit-selftests --bench-vtl [--ops N] [--reps R] (VTL switch benchmark, [`bench_vtl`])
//!        vtlkit-selftests --bench-wake [--samples N]        (wake-up latency, [`bench_wake`])
//!        vtlkit-selftests --bench-prot [--faults N] [--reps R] [--max-mib M]
//!                                   (VTL protection faults and range changes, [`bench_prot`])

mod bench;
mod bench_prot;
mod bench_vtl;
mod bench_wake;
mod framework;
mod tests;

// The framework at the crate root, so tests write `crate::vm::TestVm`, `crate::harness::Test`.
pub(crate) use framework::{guest, harness, hyperv, stats, vm, vp};
use tests::{apic_groups, basic, fuzz, hyperv as hyperv_tests, nested, protect, vsm, vtlctl, wake};

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use harness::Test;

/// Every test, in the order they run.
fn all_tests() -> Vec<Test> {
    let mut v = Vec::new();
    v.extend_from_slice(basic::TESTS);
    v.extend_from_slice(nested::TESTS);
    v.extend_from_slice(apic_groups::TESTS);
    v.extend_from_slice(hyperv_tests::TESTS);
    v.extend_from_slice(vsm::TESTS);
    v.extend_from_slice(wake::TESTS);
    v.extend_from_slice(protect::TESTS);
    v.extend_from_slice(vtlctl::TESTS);
    v.extend_from_slice(fuzz::TESTS);
    v
}

/// A test's time limit: `base` (the default, or `vtlkit.test_timeout=`; `None` = no limit)
/// plus what the test needs on top of it: the fuzzer runs `fuzz_seconds` before its checks.
fn time_limit(t: &Test, base: Option<Duration>, fuzz_seconds: u64) -> Option<Duration> {
    let extra = match t.name {
        "fuzz_apic_groups" => fuzz_seconds,
        // The guest touches 512 MiB first (about 25 s of nested page faults under TCG).
        "protect_large_range" => 120,
        _ => 0,
    };
    base.map(|b| b.saturating_add(Duration::from_secs(extra)))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tests = all_tests();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: vtlkit-selftests [--list] [NAME | PREFIX* ...]");
        println!("       (each test in its own process, time limit 60 s: VTLKIT_TEST_TIMEOUT or");
        println!("       vtlkit.test_timeout=SECONDS on the kernel command line, 0 for none)");
        println!("       vtlkit-selftests --bench [--ipis N] [--reps R]");
        println!("       vtlkit-selftests --bench-vtl [--ops N] [--reps R]");
        println!("       vtlkit-selftests --bench-wake [--samples N]");
        println!("       vtlkit-selftests --bench-prot [--faults N] [--reps R] [--max-mib M]");
        return ExitCode::SUCCESS;
    }
    if args.first().is_some_and(|a| a == "--bench") {
        return bench_main(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "--bench-vtl") {
        return bench_vtl_main(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "--bench-wake") {
        return bench_wake_main(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "--bench-prot") {
        return bench_prot_main(&args[1..]);
    }
    if args.iter().any(|a| a == "--list") {
        for t in &tests {
            println!("{:<32} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    let selected = match harness::select(&tests, harness::SELF_TESTS, &args) {
        Ok(s) => s,
        Err(unknown) => {
            eprintln!(
                "vtlkit-selftests: no test named {} (see --list)",
                unknown.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    let base = match harness::base_time_limit() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vtlkit-selftests: time limit: {e}");
            return ExitCode::from(2);
        }
    };
    // As the fuzzer reads it (fuzz.rs); a bad value fails the fuzzer itself.
    let fuzz_seconds = harness::number_setting("VTLKIT_FUZZ_SECONDS", "vtlkit.fuzz_seconds")
        .ok()
        .flatten()
        .unwrap_or(20);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let totals = harness::run(&selected, &|t| time_limit(t, base, fuzz_seconds), &mut out);
    let _ = out.flush();
    ExitCode::from(u8::try_from(totals.exit_code()).unwrap_or(1))
}

/// `--bench [--ipis N] [--reps R]`: run the IPI benchmark; 0 on success, 1 on error, 2 on bad
/// usage.
fn bench_main(args: &[String]) -> ExitCode {
    let mut p = bench::Params {
        ipis: 2000,
        reps: 5,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--ipis" => &mut p.ipis,
            "--reps" => &mut p.reps,
            _ => {
                eprintln!("vtlkit-selftests: --bench: unknown argument {a}");
                return ExitCode::from(2);
            }
        };
        match it.next().and_then(|v| v.parse::<u32>().ok()) {
            Some(v) if v > 0 => *slot = v,
            _ => {
                eprintln!("vtlkit-selftests: --bench: {a} needs a positive number");
                return ExitCode::from(2);
            }
        }
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match bench::run(p, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("vtlkit-bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `--bench-vtl [--ops N] [--reps R]`: run the VTL switch benchmark; 0 on success, 1 on
/// error, 2 on bad usage.
fn bench_vtl_main(args: &[String]) -> ExitCode {
    let mut p = bench_vtl::Params { ops: 2000, reps: 5 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--ops" => &mut p.ops,
            "--reps" => &mut p.reps,
            _ => {
                eprintln!("vtlkit-selftests: --bench-vtl: unknown argument {a}");
                return ExitCode::from(2);
            }
        };
        match it.next().and_then(|v| v.parse::<u32>().ok()) {
            Some(v) if v > 0 => *slot = v,
            _ => {
                eprintln!("vtlkit-selftests: --bench-vtl: {a} needs a positive number");
                return ExitCode::from(2);
            }
        }
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match bench_vtl::run(p, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("vtlkit-bench-vtl: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `--bench-prot [--faults N] [--reps R] [--max-mib M]`: run the VTL protection benchmark; 0 on
/// success, 1 on error, 2 on bad usage.
fn bench_prot_main(args: &[String]) -> ExitCode {
    let mut p = bench_prot::Params {
        faults: 2000,
        reps: 5,
        max_mib: 256,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = match it.next().and_then(|v| v.parse::<u32>().ok()) {
            Some(v) if v > 0 => v,
            _ => {
                eprintln!("vtlkit-selftests: --bench-prot: {a} needs a positive number");
                return ExitCode::from(2);
            }
        };
        match a.as_str() {
            "--faults" => p.faults = v,
            "--reps" => p.reps = v,
            "--max-mib" => p.max_mib = u64::from(v),
            _ => {
                eprintln!("vtlkit-selftests: --bench-prot: unknown argument {a}");
                return ExitCode::from(2);
            }
        }
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match bench_prot::run_bench(p, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("vtlkit-bench-prot: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn bench_wake_main(args: &[String]) -> ExitCode {
    let samples = match args {
        [] => 500,
        [flag, v] if flag == "--samples" => match v.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("vtlkit-selftests: --bench-wake: --samples needs a positive number");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("vtlkit-selftests: --bench-wake: usage: --bench-wake [--samples N]");
            return ExitCode::from(2);
        }
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match bench_wake::run(samples, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("vtlkit-bench-wake: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn time_limits_follow_the_base_and_the_fuzzer_gets_its_run_on_top() {
        let tests = all_tests();
        let by_name = |n: &str| tests.iter().find(|t| t.name == n).expect("registered");
        let base = Some(Duration::from_secs(60));
        assert_eq!(time_limit(by_name("dev_kvm_works"), base, 300), base);
        assert_eq!(
            time_limit(by_name("fuzz_apic_groups"), base, 300),
            Some(Duration::from_secs(360))
        );
        assert_eq!(time_limit(by_name("fuzz_apic_groups"), None, 300), None);
        assert_eq!(
            time_limit(by_name("protect_large_range"), base, 300),
            Some(Duration::from_secs(180))
        );
    }
}
