// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Read, write and execute violations, each seen by one vCPU of VTL 0: the exit's flag, GPA,
//! size and (shadow paging) GVA; the vCPU stays at the faulting instruction; lifting the
//! protection completes the access exactly once; allowed accesses, and the neighbours of a
//! protected page inside one guest large page, proceed without exits.

use anyhow::{bail, Result};
use vtlkit_uapi::protections::{Access, FaultAccess};

use super::common::*;
use crate::check_eq;
use crate::guest::memops;
use crate::harness::{Outcome, TestResult};
use crate::vm::VmOptions;

/// Run the faulting vCPU twice: the same fault both times, nothing completed in between.
fn fault_twice(
    vm: &mut crate::vm::TestVm,
    want: Expected,
    paging: Paging,
    what: &str,
) -> Result<()> {
    let before = rounds(vm, 0)?;
    for attempt in 1..=2 {
        let ev = resume(vm, 0)?;
        expect_fault(ev, want, paging, &format!("{what} (attempt {attempt})"))?;
    }
    check_eq!(
        rounds(vm, 0)?,
        before,
        "{what}: rounds finished while the access was faulting"
    );
    Ok(())
}

pub fn protect_rwx_faults() -> TestResult {
    let paging = paging()?;
    let mut vm = new_vm(VmOptions::default(), 41)?;
    let v = add_vcpu(&mut vm, 0)?;
    let ins = insns();
    let mut faults = 0u64;

    // Everything allowed: no exits.
    check_eq!(
        expect_done(
            op(&mut vm, v, memops::INC, DATA_PAGE)?,
            memops::INC,
            "INC, no protection"
        )?,
        42,
        "the guest's increment"
    );
    check_eq!(
        expect_done(
            op(&mut vm, v, memops::EXEC, CODE_PAGE)?,
            memops::EXEC,
            "EXEC, no protection"
        )?,
        CODE_RESULT,
        "the code page's function"
    );

    // With THP (the test kernel's config) the guest memory is backed by 2 MiB pages, so the
    // protected page below cuts a huge page on the host side too.
    let thp = thp_backing_kib()?;
    if thp == Some(0) {
        bail!(
            "THP is set to always, but no anonymous memory of this process is backed by huge pages"
        );
    }

    // Read-only: reads proceed, so do writes to both neighbours in the same guest large page;
    // the write exits twice at the same instruction, then completes once when allowed.
    protect(&vm, DATA_PAGE, 1, 0, Access::READ)?;
    check_prot(&vm, DATA_PAGE, 0, Access::READ, 0x1000)?;
    check_eq!(
        expect_done(
            op(&mut vm, v, memops::READ, DATA_PAGE)?,
            memops::READ,
            "READ of a read-only page"
        )?,
        42,
        "the value read"
    );
    for n in [DATA_PAGE - 0x1000, DATA_PAGE + 0x1000] {
        expect_done(
            op(&mut vm, v, memops::INC, n)?,
            memops::INC,
            &format!("INC of the neighbour {n:#x} of a read-only page"),
        )?;
    }
    set_op(&vm, v, memops::INC, DATA_PAGE + 0x18)?;
    let write = Expected {
        access: FaultAccess::Write,
        gpa: DATA_PAGE,
        gva: DATA_PAGE + 0x18,
        rip: code_rip(ins.inc),
    };
    vm.mem.write_u64(DATA_PAGE + 0x18, 100)?;
    fault_twice(&mut vm, write, paging, "INC of a read-only page")?;
    faults += 2;
    check_eq!(
        vm.mem.read_u64(DATA_PAGE + 0x18)?,
        100,
        "the read-only u64 after two faulting writes"
    );
    protect(&vm, DATA_PAGE, 1, 0, Access::READ_WRITE)?;
    check_eq!(
        expect_done(
            resume(&mut vm, v)?,
            memops::INC,
            "INC resumed after allowing writes"
        )?,
        101,
        "the result of the resumed increment"
    );
    check_eq!(
        vm.mem.read_u64(DATA_PAGE + 0x18)?,
        101,
        "the u64 after the resumed increment (exactly once)"
    );

    // Read+execute: writes exit too.
    protect(&vm, DATA_PAGE, 1, 0, Access::READ_EXEC)?;
    set_op(&vm, v, memops::INC, DATA_PAGE)?;
    fault_twice(
        &mut vm,
        Expected {
            gva: DATA_PAGE,
            ..write
        },
        paging,
        "INC of a read+execute page",
    )?;
    faults += 2;
    protect(&vm, DATA_PAGE, 1, 0, Access::ALL)?;
    check_eq!(
        expect_done(
            resume(&mut vm, v)?,
            memops::INC,
            "INC resumed after lifting read+execute"
        )?,
        43,
        "the resumed increment"
    );

    // No access: a read exits with READ.
    protect(&vm, DATA_PAGE, 1, 0, Access::NONE)?;
    set_op(&vm, v, memops::READ, DATA_PAGE + 8)?;
    let read = Expected {
        access: FaultAccess::Read,
        gpa: DATA_PAGE,
        gva: DATA_PAGE + 8,
        rip: code_rip(ins.read),
    };
    fault_twice(&mut vm, read, paging, "READ of a no-access page")?;
    faults += 2;
    vm.mem.write_u64(DATA_PAGE + 8, 0x5eed)?;
    protect(&vm, DATA_PAGE, 1, 0, Access::READ)?;
    check_eq!(
        expect_done(
            resume(&mut vm, v)?,
            memops::READ,
            "READ resumed after allowing reads"
        )?,
        0x5eed,
        "the value the resumed read saw"
    );

    // Not executable: reads of the code proceed, a call into it exits with EXEC at the
    // call's target; read+execute lets it run, once.
    protect(&vm, CODE_PAGE, 1, 0, Access::READ_WRITE)?;
    let code = expect_done(
        op(&mut vm, v, memops::READ, CODE_PAGE)?,
        memops::READ,
        "READ of a read+write code page",
    )?;
    check_eq!(code & 0xff, 0xb8, "the first byte of the code page");
    set_op(&vm, v, memops::EXEC, CODE_PAGE)?;
    let exec = Expected {
        access: FaultAccess::Exec,
        gpa: CODE_PAGE,
        gva: CODE_PAGE,
        rip: CODE_PAGE,
    };
    fault_twice(&mut vm, exec, paging, "EXEC of a read+write page")?;
    faults += 2;
    protect(&vm, CODE_PAGE, 1, 0, Access::READ_EXEC)?;
    check_eq!(
        expect_done(
            resume(&mut vm, v)?,
            memops::EXEC,
            "EXEC resumed after allowing execution"
        )?,
        CODE_RESULT,
        "the code page's function"
    );
    // A read-only page is not executable either.
    protect(&vm, CODE_PAGE, 1, 0, Access::READ)?;
    set_op(&vm, v, memops::EXEC, CODE_PAGE)?;
    fault_twice(&mut vm, exec, paging, "EXEC of a read-only page")?;
    faults += 2;
    protect(&vm, CODE_PAGE, 1, 0, Access::ALL)?;
    expect_done(
        resume(&mut vm, v)?,
        memops::EXEC,
        "EXEC resumed after lifting read-only",
    )?;

    // Another VTL's protections do not apply to VTL 0.
    protect(&vm, DATA_PAGE, 1, 0, Access::ALL)?;
    protect(&vm, DATA_PAGE, 1, 1, Access::NONE)?;
    protect(&vm, CODE_PAGE, 1, 1, Access::NONE)?;
    check_eq!(
        expect_done(
            op(&mut vm, v, memops::INC, DATA_PAGE)?,
            memops::INC,
            "VTL 0's INC under VTL 1's no-access"
        )?,
        44,
        "the increment"
    );
    expect_done(
        op(&mut vm, v, memops::EXEC, CODE_PAGE)?,
        memops::EXEC,
        "VTL 0's EXEC under VTL 1's no-access",
    )?;

    check_no_guest_exception(&vm, v)?;
    let vcpu = vm.vcpu(v)?;
    check_eq!(
        prot_faults(vcpu)?,
        faults,
        "the vCPU's vtl_prot_faults statistic"
    );
    if rounds(&vm, v)? != 13 {
        bail!(
            "the guest finished {} rounds, 13 expected: an access ran twice or not at all",
            rounds(&vm, v)?
        );
    }
    let backing = match thp {
        Some(kib) => format!("THP-backed guest memory ({kib} KiB in huge pages)"),
        None => "no THP: 4 KiB-backed guest memory".to_string(),
    };
    eprintln!("# {paging:?} paging, {backing}: {faults} faults, each with flag, GPA, size, GVA and RIP checked");
    Ok(Outcome::Pass)
}
