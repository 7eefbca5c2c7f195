// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The framework the tests are written with, kept apart from them as the kernel's KVM selftests
//! keep `lib/` apart from their tests. A new test needs only these (re-exported at the crate
//! root as `crate::harness`, `crate::vm`, `crate::guest`, `crate::stats`):
//!
//! * [`harness`]: TAP 13 output, test selection, one process per test with a time limit, the
//!   `check!`/`check_eq!`/`require!` macros and `number_setting` for `vtlkit.*` knobs;
//! * [`vm`]: a nested long-mode VM (`TestVm`): memory, page tables, GDT/IDT, vCPUs (optionally
//!   opted in to APIC groups), the ucall channel, threads that run vCPUs and count interrupts,
//!   and the report of a nested guest's unexpected exceptions;
//! * [`guest`]: the guest code (assembled at build time from readable Rust-side constants): the
//!   send programs, interrupt handlers that count per vector, ICR/MSR constants;
//! * [`stats`]: KVM's binary statistics (`KVM_GET_STATS_FD`) by name;
//! * [`hyperv`]: Hyper-V in test VMs: CPUID leaves, VP indexes, `KVM_CAP_HYPERV_VSM` and
//!   SynIC, hypercall programs the guest runs, `KVM_EXIT_HYPERV` handed to the test, SINT
//!   routes (its module documentation walks through a Hyper-V test);
//! * [`vp`]: VPs made of VTL sibling vCPUs, one thread per VP running the sibling the uapi
//!   crate's VTL state machine says is active (VSM: VtlCall/VtlReturn, cross-VTL IPIs), with
//!   the round-trip blocks the VSM guest code reads and writes.

pub mod guest;
pub mod harness;
pub mod hyperv;
pub mod stats;
pub mod vm;
pub mod vp;
