// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Each VTL label has its own protections: two VTL siblings of one VP (APIC groups 0 and 1,
//! VTL labels 0 and 1, the same APIC ID), both with the page mapped before the change; VTL 0's
//! no-access leaves VTL 1 free to read, write and execute, and the other way round.

use anyhow::Result;
use vtlkit_uapi::protections::{Access, FaultAccess};
use vtlkit_uapi::ApicGroup;

use super::common::*;
use crate::check_eq;
use crate::guest::{memops, Entry};
use crate::harness::{Outcome, TestResult};
use crate::vm::{TestVm, VmOptions};

fn read_fault(vm: &mut TestVm, index: usize, paging: Paging, what: &str) -> Result<()> {
    let ev = op(vm, index, memops::READ, DATA_PAGE)?;
    let want = Expected {
        access: FaultAccess::Read,
        gpa: DATA_PAGE,
        gva: DATA_PAGE,
        rip: code_rip(insns().read),
    };
    expect_fault(ev, want, paging, what)
}

pub fn protect_vtl1_unrestricted() -> TestResult {
    let paging = paging()?;
    let mut vm = new_vm(VmOptions::apic_groups(), 7)?;
    let vtl0 = vm.add_vcpu_in_group(
        0,
        Entry::MemOps,
        ApicGroup {
            group: 0,
            apic_id: 0,
            vtl: 0,
        },
    )?;
    let vtl1 = vm.add_vcpu_in_group(
        1,
        Entry::MemOps,
        ApicGroup {
            group: 1,
            apic_id: 0,
            vtl: 1,
        },
    )?;

    // Both map the pages first.
    check_eq!(
        expect_done(
            op(&mut vm, vtl0, memops::INC, DATA_PAGE)?,
            memops::INC,
            "VTL 0's first INC"
        )?,
        8,
        "VTL 0's increment"
    );
    check_eq!(
        expect_done(
            op(&mut vm, vtl1, memops::INC, DATA_PAGE)?,
            memops::INC,
            "VTL 1's first INC"
        )?,
        9,
        "VTL 1's increment"
    );
    expect_done(
        op(&mut vm, vtl0, memops::EXEC, CODE_PAGE)?,
        memops::EXEC,
        "VTL 0's first EXEC",
    )?;
    expect_done(
        op(&mut vm, vtl1, memops::EXEC, CODE_PAGE)?,
        memops::EXEC,
        "VTL 1's first EXEC",
    )?;

    // VTL 0 loses all access: VTL 1 keeps reading, writing and executing.
    protect(&vm, DATA_PAGE, 1, 0, Access::NONE)?;
    protect(&vm, CODE_PAGE, 1, 0, Access::NONE)?;
    check_prot(&vm, DATA_PAGE, 1, Access::ALL, 0x1000)?;
    check_eq!(
        expect_done(
            op(&mut vm, vtl1, memops::INC, DATA_PAGE)?,
            memops::INC,
            "VTL 1's INC under VTL 0's no-access"
        )?,
        10,
        "VTL 1's increment"
    );
    check_eq!(
        expect_done(
            op(&mut vm, vtl1, memops::READ, DATA_PAGE)?,
            memops::READ,
            "VTL 1's READ under VTL 0's no-access"
        )?,
        10,
        "VTL 1's read"
    );
    check_eq!(
        expect_done(
            op(&mut vm, vtl1, memops::EXEC, CODE_PAGE)?,
            memops::EXEC,
            "VTL 1's EXEC under VTL 0's no-access"
        )?,
        CODE_RESULT,
        "VTL 1's call"
    );
    read_fault(
        &mut vm,
        vtl0,
        paging,
        "VTL 0's READ under its own no-access",
    )?;
    // VTL 1 goes on while VTL 0 stays at its faulting read.
    check_eq!(
        expect_done(
            op(&mut vm, vtl1, memops::INC, DATA_PAGE)?,
            memops::INC,
            "VTL 1's INC while VTL 0 is faulted"
        )?,
        11,
        "VTL 1's increment"
    );

    // The other way round.
    protect(&vm, DATA_PAGE, 1, 1, Access::NONE)?;
    protect(&vm, DATA_PAGE, 1, 0, Access::ALL)?;
    protect(&vm, CODE_PAGE, 1, 0, Access::ALL)?;
    check_eq!(
        expect_done(resume(&mut vm, vtl0)?, memops::READ, "VTL 0's READ resumed")?,
        11,
        "VTL 0's read"
    );
    check_eq!(
        expect_done(
            op(&mut vm, vtl0, memops::INC, DATA_PAGE)?,
            memops::INC,
            "VTL 0's INC under VTL 1's no-access"
        )?,
        12,
        "VTL 0's increment"
    );
    read_fault(
        &mut vm,
        vtl1,
        paging,
        "VTL 1's READ under its own no-access",
    )?;
    protect(&vm, DATA_PAGE, 1, 1, Access::READ)?;
    check_eq!(
        expect_done(resume(&mut vm, vtl1)?, memops::READ, "VTL 1's READ resumed")?,
        12,
        "VTL 1's read"
    );

    for i in [vtl0, vtl1] {
        check_no_guest_exception(&vm, i)?;
        check_eq!(
            prot_faults(vm.vcpu(i)?)?,
            1,
            "vCPU index {i}'s vtl_prot_faults"
        );
    }
    Ok(Outcome::Pass)
}
