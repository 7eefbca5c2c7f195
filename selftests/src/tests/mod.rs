// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The tests, one module per feature. Each module exports `TESTS: &[Test]` (name, one-line
//! description, function) and `main.rs` lists the modules in the order they run.
//!
//! To add a test: write `fn my_test() -> anyhow::Result<()>` in the module of its feature (or a
//! new module here, registered in `main.rs`), using `crate::vm::TestVm` and the `check!`
//! macros, and add it to that module's `TESTS`. It then runs in `scripts/run.sh`, and alone
//! with `scripts/run.sh my_test`.
//!
//! A Hyper-V test: start from [`hyperv`]'s tests and the walk-through in
//! [`crate::hyperv`] (`VmOptions::hyperv`, VP indexes, hypercall programs, exit handlers).

pub mod apic_groups;
pub mod basic;
pub mod fuzz;
pub mod hyperv;
pub mod nested;
pub mod protect;
pub mod vsm;
pub mod vtlctl;
pub mod wake;
