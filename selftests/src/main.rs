// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! vtlkit-selftests: runs inside the patched kernel (booted in QEMU by scripts/boot.sh) and
//! proves the series' behaviour end to end with real nested VMs.
//!
//! Usage: vtlkit-selftests [--list] [NAME | PREFIX* ...]

mod apic_groups;
mod basic;
mod fuzz;
mod guest;
mod harness;
mod nested;
mod vm;
mod vtlctl;

use std::io::{self, Write};
use std::process::ExitCode;

use harness::Test;

/// Every test, in the order they run.
fn all_tests() -> Vec<Test> {
    let mut v = Vec::new();
    v.extend_from_slice(basic::TESTS);
    v.extend_from_slice(nested::TESTS);
    v.extend_from_slice(apic_groups::TESTS);
    v.extend_from_slice(vtlctl::TESTS);
    v.extend_from_slice(fuzz::TESTS);
    v
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tests = all_tests();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: vtlkit-selftests [--list] [NAME | PREFIX* ...]");
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--list") {
        for t in &tests {
            println!("{:<32} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    let selected = match harness::select(&tests, &args) {
        Ok(s) => s,
        Err(unknown) => {
            eprintln!(
                "vtlkit-selftests: no test named {} (see --list)",
                unknown.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let totals = harness::run(&selected, &mut out);
    let _ = out.flush();
    ExitCode::from(u8::try_from(totals.exit_code()).unwrap_or(1))
}
