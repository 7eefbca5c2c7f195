// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The opt-in and the two ioctls against api.rst 4.148, 4.149 and 7.40: every bad input fails
//! with its errno and changes nothing (the whole map read back with `KVM_GET_VTL_PROTECTION`,
//! and a vCPU still faulting where it must), and ranges split and merge as documented.

use anyhow::{bail, Result};
use vtlkit_uapi::protections::{
    self, get_vtl_protection_raw, set_vtl_protection_raw, vtl_protection_map, Access, FaultAccess,
    PAGE_SIZE,
};
use vtlkit_uapi::raw::kvm_vtl_protection;

use super::common::*;
use crate::check_eq;
use crate::guest::memops;
use crate::harness::{Outcome, TestResult};
use crate::vm::{TestVm, VmOptions};

const BASE: u64 = 0x1_0000;

fn errno_of<T>(r: vtlkit_uapi::Result<T>) -> Option<i32> {
    r.err().map(|e| e.errno())
}

fn expect_errno<T>(r: vtlkit_uapi::Result<T>, errno: i32, what: &str) -> Result<()> {
    match errno_of(r) {
        Some(e) if e == errno => Ok(()),
        Some(e) => bail!("{what}: failed with errno {e}, expected {errno}"),
        None => bail!("{what}: succeeded, expected errno {errno}"),
    }
}

/// The protections the bad calls must leave alone: VTL 3 read+execute on two pages at BASE,
/// VTL 0 read-only on the data page.
fn expected_map(vm: &TestVm) -> Result<()> {
    let map = vtl_protection_map(&vm.fd, 3, 0, 0x4_0000, 16).map_err(kvm_err)?;
    let want = vec![
        (0, BASE, Access::ALL),
        (BASE, 2 * PAGE_SIZE, Access::READ_EXEC),
        (
            BASE + 2 * PAGE_SIZE,
            0x4_0000 - BASE - 2 * PAGE_SIZE,
            Access::ALL,
        ),
    ];
    check_eq!(map, want, "VTL 3's protections in [0, 0x40000)");
    check_prot(vm, DATA_PAGE, 0, Access::READ, PAGE_SIZE)?;
    let (a, size) = protections::get_vtl_protection(&vm.fd, DATA_PAGE, 0).map_err(kvm_err)?;
    check_eq!(
        (a, size),
        (Access::READ, PAGE_SIZE),
        "VTL 0 at the data page"
    );
    for vtl in [1, 2, 4, 15] {
        check_eq!(
            vtl_protection_map(&vm.fd, vtl, 0, 0x40_0000, 4).map_err(kvm_err)?,
            vec![(0, 0x40_0000, Access::ALL)],
            "VTL {vtl}'s protections in [0, 4 MiB)"
        );
    }
    Ok(())
}

pub fn protect_bad_input() -> TestResult {
    let paging = paging()?;

    // The opt-in: EINVAL for arguments, EBUSY once a vCPU exists, idempotent before that;
    // the ioctls are EINVAL in a VM that did not opt in.
    {
        let mut vm = TestVm::new(VmOptions::default())?;
        let kvm_vm = &vm.fd;
        expect_errno(
            protections::set_vtl_protection_raw(kvm_vm, &prot(BASE, PAGE_SIZE, 0, 1)),
            libc::EINVAL,
            "KVM_SET_VTL_PROTECTION without the opt-in",
        )?;
        expect_errno(
            protections::get_vtl_protection(kvm_vm, BASE, 0),
            libc::EINVAL,
            "KVM_GET_VTL_PROTECTION without the opt-in",
        )?;
        for i in 0..4 {
            let mut args = [0u64; 4];
            args[i] = 1;
            expect_errno(
                protections::enable_vtl_protections_raw(kvm_vm, args),
                libc::EINVAL,
                &format!("KVM_ENABLE_CAP with args[{i}] = 1"),
            )?;
        }
        vm.add_vcpu(0, crate::guest::Entry::MemOps)?;
        expect_errno(
            protections::enable_vtl_protections(&vm.fd),
            libc::EBUSY,
            "KVM_ENABLE_CAP after KVM_CREATE_VCPU",
        )?;
    }

    let mut vm = new_vm(VmOptions::default(), 5)?;
    protections::enable_vtl_protections(&vm.fd)
        .map_err(kvm_err)
        .map_err(|e| e.context("enabling a second time"))?;
    set_vtl_protection_raw(&vm.fd, &prot(BASE, 2 * PAGE_SIZE, 3, 0b101)).map_err(kvm_err)?;
    protect(&vm, DATA_PAGE, 1, 0, Access::READ)?;
    expected_map(&vm)?;

    let mut cases: Vec<(String, kvm_vtl_protection)> = vec![
        ("unaligned gpa".into(), prot(BASE + 1, PAGE_SIZE, 3, 0)),
        (
            "gpa off by 0x800".into(),
            prot(BASE + 0x800, PAGE_SIZE, 3, 0),
        ),
        ("empty range".into(), prot(BASE, 0, 3, 0)),
        ("unaligned size".into(), prot(BASE, 100, 3, 0)),
        (
            "size of a page plus one".into(),
            prot(BASE, PAGE_SIZE + 1, 3, 0),
        ),
        (
            "range wrapping around".into(),
            prot(BASE, 0u64.wrapping_sub(BASE), 3, 0),
        ),
        (
            "range of 2^64 - 4096 bytes".into(),
            prot(BASE, 0u64.wrapping_sub(PAGE_SIZE), 3, 0),
        ),
        (
            "gpa beyond the physical address width".into(),
            prot(1 << 60, PAGE_SIZE, 3, 0),
        ),
        (
            "range ending beyond the physical address width".into(),
            prot(BASE, 1 << 60, 3, 0),
        ),
        ("VTL 16".into(), prot(BASE, PAGE_SIZE, 16, 0)),
        ("VTL 255".into(), prot(BASE, PAGE_SIZE, 255, 0)),
        ("write-only".into(), prot(BASE, PAGE_SIZE, 3, 0b010)),
        ("execute-only".into(), prot(BASE, PAGE_SIZE, 3, 0b100)),
        ("write+execute".into(), prot(BASE, PAGE_SIZE, 3, 0b110)),
        ("access bit 3".into(), prot(BASE, PAGE_SIZE, 3, 0b1000)),
        ("access 0xff".into(), prot(BASE, PAGE_SIZE, 3, 0xff)),
    ];
    // Every must-be-zero byte (pad, flags, reserved), one at a time, with a valid rest.
    let first = std::mem::offset_of!(kvm_vtl_protection, pad);
    let total = std::mem::size_of::<kvm_vtl_protection>();
    for off in first..total {
        let mut p = prot(BASE, PAGE_SIZE, 3, 0);
        // SAFETY: `p` is a plain C struct of integers, `off` is inside it, and every byte
        // value is a valid value of whichever integer field it belongs to.
        unsafe { (&raw mut p).cast::<u8>().add(off).write(0x80) };
        cases.push((format!("byte {off} (must be zero) set"), p));
    }
    for (what, p) in &cases {
        expect_errno(
            set_vtl_protection_raw(&vm.fd, p),
            libc::EINVAL,
            &format!("KVM_SET_VTL_PROTECTION with {what}"),
        )?;
        expected_map(&vm).map_err(|e| e.context(format!("after the failed call with {what}")))?;
    }

    // KVM_GET_VTL_PROTECTION: size and access are outputs (garbage in them is fine), the rest
    // is checked as for SET.
    let mut ok = prot(BASE, 0xdead, 3, 0xff);
    get_vtl_protection_raw(&vm.fd, &mut ok).map_err(kvm_err)?;
    check_eq!(
        (ok.access, ok.size),
        (0b101, 2 * PAGE_SIZE),
        "GET with garbage in its outputs"
    );
    let mut get_cases: Vec<(String, kvm_vtl_protection)> = vec![
        ("unaligned gpa".into(), prot(BASE + 8, 0, 3, 0)),
        (
            "gpa beyond the physical address width".into(),
            prot(1 << 60, 0, 3, 0),
        ),
        ("VTL 16".into(), prot(BASE, 0, 16, 0)),
    ];
    for off in first..total {
        let mut p = prot(BASE, 0, 3, 0);
        // SAFETY: as above.
        unsafe { (&raw mut p).cast::<u8>().add(off).write(1) };
        get_cases.push((format!("byte {off} (must be zero) set"), p));
    }
    for (what, mut p) in get_cases {
        expect_errno(
            get_vtl_protection_raw(&vm.fd, &mut p),
            libc::EINVAL,
            &format!("KVM_GET_VTL_PROTECTION with {what}"),
        )?;
    }
    expected_map(&vm)?;

    // What the map says holds: VTL 0's write to the data page still exits.
    let v = add_vcpu(&mut vm, 0)?;
    let ev = op(&mut vm, v, memops::INC, DATA_PAGE)?;
    expect_fault(
        ev,
        Expected {
            access: FaultAccess::Write,
            gpa: DATA_PAGE,
            gva: DATA_PAGE,
            rip: code_rip(insns().inc),
        },
        paging,
        "VTL 0's INC of its read-only page after the failed calls",
    )?;
    check_eq!(vm.mem.read_u64(DATA_PAGE)?, 5, "the read-only u64");

    // Ranges split and merge; ALL removes a restriction; a range needs no memslot; millions of
    // pages are one range.
    protect(&vm, BASE + PAGE_SIZE, 1, 3, Access::NONE)?;
    check_eq!(
        vtl_protection_map(&vm.fd, 3, BASE, BASE + 2 * PAGE_SIZE, 4).map_err(kvm_err)?,
        vec![
            (BASE, PAGE_SIZE, Access::READ_EXEC),
            (BASE + PAGE_SIZE, PAGE_SIZE, Access::NONE)
        ],
        "VTL 3 after protecting the second page"
    );
    protect(&vm, BASE, 2, 3, Access::ALL)?;
    check_eq!(
        vtl_protection_map(&vm.fd, 3, 0, 0x40_0000, 4).map_err(kvm_err)?,
        vec![(0, 0x40_0000, Access::ALL)],
        "VTL 3 after lifting everything"
    );
    let big = 64u64 << 30;
    protect(&vm, 1 << 32, big / PAGE_SIZE, 1, Access::READ)?;
    check_prot(&vm, 1 << 32, 1, Access::READ, big)?;
    check_eq!(
        vtl_protection_map(&vm.fd, 1, 1 << 32, (1 << 32) + big, 4).map_err(kvm_err)?,
        vec![(1 << 32, big, Access::READ)],
        "VTL 1's 64 GiB range outside every memslot"
    );
    Ok(Outcome::Pass)
}
