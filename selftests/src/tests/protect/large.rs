// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! A large range: a second memslot of 512 MiB (less if this machine cannot spare it; at least
//! 64 MiB), mapped and touched by the guest first, made read-only in one call and lifted again:
//! reads everywhere proceed, the guest's write to its last page exits and completes once after
//! the lift, and the ioctls' times are reported (figures, not asserted).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kvm_bindings::kvm_userspace_memory_region;
use vtlkit_uapi::protections::{Access, FaultAccess, PAGE_SIZE};

use super::common::*;
use crate::check_eq;
use crate::guest::memops;
use crate::harness::{number_setting, Outcome, TestResult};
use crate::vm::{GuestMem, VmOptions};

/// Where the large memslot starts: above the test VM's 4 MiB, inside the guest's identity
/// map (0..1 GiB).
const BIG_GPA: u64 = 0x1000_0000;
/// The size the test asks for (`vtlkit.prot_large_mib=` overrides it).
const WANT_MIB: u64 = 512;
/// The smallest size that still counts as large.
const MIN_MIB: u64 = 64;
/// What the rest of the system needs while the test runs.
const RESERVE_MIB: u64 = 256;

/// MemAvailable of /proc/meminfo, in MiB.
fn available_mib() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/meminfo")?;
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix("MemAvailable:") {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("MemAvailable {rest:?}: {e}"))?;
            return Ok(kib / 1024);
        }
    }
    bail!("no MemAvailable in /proc/meminfo")
}

/// The size to test, in MiB: the wanted size, halved until it fits next to [`RESERVE_MIB`].
fn pick_mib() -> Result<u64> {
    let want = number_setting("VTLKIT_PROT_LARGE_MIB", "vtlkit.prot_large_mib")
        .map_err(|e| anyhow::anyhow!(e))?
        .unwrap_or(WANT_MIB);
    let avail = available_mib()?;
    let mut mib = want;
    while mib > MIN_MIB && mib + RESERVE_MIB > avail {
        mib /= 2;
    }
    if mib < MIN_MIB || mib + RESERVE_MIB > avail {
        bail!("only {avail} MiB available, not enough for a {MIN_MIB} MiB range");
    }
    if mib != want {
        eprintln!("# {avail} MiB available: testing {mib} MiB instead of {want} MiB");
    }
    Ok(mib)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn protect_large_range() -> TestResult {
    let paging = paging()?;
    let mib = pick_mib()?;
    let size = mib << 20;
    let pages = size / PAGE_SIZE;
    // Its own mapping, declared before the VM so that it outlives it.
    let backing = GuestMem::new(size as usize)?;
    let mut vm = new_vm(VmOptions::default(), 0)?;
    let region = kvm_userspace_memory_region {
        slot: 1,
        flags: 0,
        guest_phys_addr: BIG_GPA,
        memory_size: size,
        userspace_addr: backing.host_addr(),
    };
    // SAFETY: the region is our own anonymous mapping of exactly `size` bytes, which outlives
    // the VM (`backing` is declared before `vm`, so it is dropped after it).
    unsafe { vm.fd.set_user_memory_region(region) }
        .map_err(|e| anyhow::anyhow!("KVM_SET_USER_MEMORY_REGION of {mib} MiB: {e}"))?;
    let v = add_vcpu(&mut vm, 0)?;

    // The guest maps and touches every page.
    vm.set_pcpu(v, memops::ARG, size)?;
    let t = Instant::now();
    let touched = expect_done(
        op(&mut vm, v, memops::TOUCH, BIG_GPA)?,
        memops::TOUCH,
        "TOUCH",
    )?;
    let touch_time = t.elapsed();
    check_eq!(touched, pages, "pages the guest touched");
    for off in [0, size / 2, size - PAGE_SIZE] {
        check_eq!(
            backing.read_u64(off)?,
            BIG_GPA + off,
            "what the guest stored at {off:#x}"
        );
    }

    // One call makes the whole range read-only.
    let t = Instant::now();
    protect(&vm, BIG_GPA, pages, 0, Access::READ)?;
    let protect_time = t.elapsed();
    check_prot(&vm, BIG_GPA, 0, Access::READ, size)?;
    let (_, got) =
        vtlkit_uapi::protections::get_vtl_protection(&vm.fd, BIG_GPA, 0).map_err(kvm_err)?;
    check_eq!(got, size, "the protected range's size as GET reports it");
    check_prot(&vm, BIG_GPA + size, 0, Access::ALL, PAGE_SIZE)?;
    check_prot(&vm, BIG_GPA - PAGE_SIZE, 0, Access::ALL, PAGE_SIZE)?;
    for off in [0, PAGE_SIZE, size / 2, size - PAGE_SIZE] {
        let gpa = BIG_GPA + off;
        check_eq!(
            expect_done(
                op(&mut vm, v, memops::READ, gpa)?,
                memops::READ,
                "READ in the read-only range"
            )?,
            gpa,
            "the value read at {gpa:#x}"
        );
    }
    let last = BIG_GPA + size - PAGE_SIZE;
    let ev = op(&mut vm, v, memops::INC, last)?;
    expect_fault(
        ev,
        Expected {
            access: FaultAccess::Write,
            gpa: last,
            gva: last,
            rip: code_rip(insns().inc),
        },
        paging,
        "INC of the range's last page",
    )?;

    // One call lifts it; the write completes once.
    let t = Instant::now();
    protect(&vm, BIG_GPA, pages, 0, Access::ALL)?;
    let lift_time = t.elapsed();
    check_eq!(
        expect_done(
            resume(&mut vm, v)?,
            memops::INC,
            "INC resumed after the lift"
        )?,
        last + 1,
        "the resumed increment"
    );
    check_eq!(
        backing.read_u64(size - PAGE_SIZE)?,
        last + 1,
        "the last page's u64 (exactly once)"
    );
    expect_done(
        op(&mut vm, v, memops::INC, BIG_GPA + size / 2)?,
        memops::INC,
        "INC in the middle after the lift",
    )?;
    check_no_guest_exception(&vm, v)?;

    // Figures: the ioctl's time against the size of a range the guest has just touched
    // (nothing asserted).
    let mut figures = Vec::new();
    let mut sz = PAGE_SIZE;
    while sz <= size {
        // Mapped again first: the lift before zapped the range's mappings.
        vm.set_pcpu(v, memops::ARG, sz)?;
        expect_done(
            op(&mut vm, v, memops::TOUCH, BIG_GPA)?,
            memops::TOUCH,
            "TOUCH before a timed protect",
        )?;
        let t = Instant::now();
        protect(&vm, BIG_GPA, sz / PAGE_SIZE, 0, Access::READ_EXEC)?;
        let p = t.elapsed();
        let t = Instant::now();
        protect(&vm, BIG_GPA, sz / PAGE_SIZE, 0, Access::ALL)?;
        figures.push(format!("{}K {:.0}/{:.0}", sz >> 10, us(p), us(t.elapsed())));
        sz *= 8;
    }
    eprintln!(
        "# {paging:?} paging, {mib} MiB: guest touch {:.0} ms; protect {:.0} us, lift {:.0} us (with the range mapped)",
        touch_time.as_secs_f64() * 1e3,
        us(protect_time),
        us(lift_time)
    );
    eprintln!("# protect/lift us by size: {}", figures.join(", "));
    drop(vm);
    drop(backing);
    Ok(Outcome::Pass)
}
