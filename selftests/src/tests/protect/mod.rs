// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Per-VTL memory protections (issue 10, series v5's `KVM_CAP_VTL_PROTECTIONS`): the kernel
//! enforces, per VTL label, which of read, write and execute a vCPU may do on a guest physical
//! page, and reports a violation as `KVM_EXIT_MEMORY_FAULT` with the access, the page and
//! (shadow paging) the GVA, leaving the vCPU at the faulting instruction. Every check is made
//! on what the nested guest did (its rounds, the values it read or stored, its exception
//! record) or on KVM state (the exit, RIP, `KVM_GET_VTL_PROTECTION`, `vtl_prot_faults`).
//! `scripts/test.sh` runs these tests under TDP and again under shadow paging
//! (`kvm_amd.npt=0`).
//!
//! * [`common`]: the opted-in VM, the runner that returns faults, the fault checks (not tests);
//! * [`faults`]: read, write and execute violations, resuming, neighbours, other VTLs;
//! * [`vtls`]: VTL 1 siblings (APIC groups) are not bound by VTL 0's protections;
//! * [`concurrent`]: a protection set while a vCPU writes the page holds before the ioctl
//!   returns;
//! * [`errors`]: the opt-in's and the ioctls' errors, each leaving the protections intact;
//! * [`large`]: a 512 MiB touched range protected and lifted in one call each, timed.

pub(crate) mod common;
mod concurrent;
mod errors;
mod faults;
mod large;
mod vtls;

use crate::harness::Test;

pub const TESTS: &[Test] = &[
    Test {
        name: "protect_rwx_faults",
        about: "read, write and execute violations exit with their flag, GPA, size 4096 and (shadow paging) GVA, stay at the instruction, complete once when lifted; allowed accesses and neighbours in the same large page do not exit",
        run: faults::protect_rwx_faults,
    },
    Test {
        name: "protect_vtl1_unrestricted",
        about: "VTL siblings (APIC groups 0/1, VTL labels 0/1): VTL 0's no-access leaves VTL 1 reading, writing and executing the mapped page, and the other way round",
        run: vtls::protect_vtl1_unrestricted,
    },
    Test {
        name: "protect_while_running",
        about: "a page made read-only while a vCPU stores to it in a loop: no store lands after the ioctl returns, the writer exits with a WRITE fault at its store and goes on once lifted (8 cycles)",
        run: concurrent::protect_while_running,
    },
    Test {
        name: "protect_bad_input",
        about: "the opt-in's EINVAL/EBUSY, and EINVAL for every bad KVM_SET/GET_VTL_PROTECTION input (alignment, empty, wrap, width, VTL, access, each must-be-zero byte), each leaving the protections intact",
        run: errors::protect_bad_input,
    },
    Test {
        name: "protect_large_range",
        about: "a 512 MiB memslot touched by the guest is made read-only and lifted in one call each: reads proceed, a write to its last page exits and completes once; times reported",
        run: large::protect_large_range,
    },
];
