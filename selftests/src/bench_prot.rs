// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! VTL protection benchmark (`vtlkit-selftests --bench-prot`): figures, nothing asserted.
//!
//! * fault round trips: a vCPU of VTL 0 increments a read-only page; each `KVM_RUN` goes into
//!   the guest, faults, and comes back to userspace with `KVM_EXIT_MEMORY_FAULT`, which the
//!   benchmark resumes at once (the vCPU stays at the instruction, so the next run faults
//!   again). Beside it the same number of plain ucall round trips (an allowed read and its
//!   port-I/O SYNC), the floor of any exit to userspace.
//! * range changes: `KVM_SET_VTL_PROTECTION` making a range read-only and lifting it again,
//!   against the range's size, each time right after the guest touched (mapped) the range.
//!
//! Output, one line per figure:
//! ```text
//! vtlkit-bench-prot: fault_round_trips N per_s R (median of K)
//! vtlkit-bench-prot: ucall_round_trips N per_s R (median of K)
//! vtlkit-bench-prot: range SIZE_KIB protect_us P lift_us L (median of K)
//! ```

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use kvm_bindings::kvm_userspace_memory_region;
use vtlkit_uapi::protections::{Access, PAGE_SIZE};

use crate::guest::memops;
use crate::tests::protect::common::{
    add_vcpu, expect_done, new_vm, op, protect, run, set_op, vcpu_mut, Event, DATA_PAGE,
};
use crate::vm::VmOptions;

/// Parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Round trips per repetition.
    pub faults: u32,
    /// Repetitions (the median is reported).
    pub reps: u32,
    /// Largest range, in MiB (sizes go up by 8x from 4 KiB).
    pub max_mib: u64,
}

/// Where the range memslot starts (inside the guest's 1 GiB identity map).
const RANGE_GPA: u64 = 0x1000_0000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Run the benchmark and print the figures.
pub fn run_bench(p: Params, out: &mut dyn Write) -> Result<()> {
    let size = p.max_mib << 20;
    let backing = crate::vm::GuestMem::new(size as usize)?;
    let mut vm = new_vm(VmOptions::default(), 0)?;
    let region = kvm_userspace_memory_region {
        slot: 1,
        flags: 0,
        guest_phys_addr: RANGE_GPA,
        memory_size: size,
        userspace_addr: backing.host_addr(),
    };
    // SAFETY: our own anonymous mapping of exactly `size` bytes, which outlives the VM
    // (`backing` is declared first, so it is dropped after `vm`).
    unsafe { vm.fd.set_user_memory_region(region) }
        .map_err(|e| anyhow!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let v = add_vcpu(&mut vm, 0)?;
    let mem = Arc::clone(&vm.mem);

    let (mut faults, mut ucalls) = (Vec::new(), Vec::new());
    for _ in 0..p.reps {
        // Plain exits: an allowed read and its SYNC, N times.
        set_op(&vm, v, memops::READ, DATA_PAGE)?;
        let t = Instant::now();
        for _ in 0..p.faults {
            match run(vcpu_mut(&mut vm, v)?, &mem)? {
                Event::Done { .. } => {}
                other => bail!("an allowed read gave {other:x?}"),
            }
        }
        ucalls.push(f64::from(p.faults) / t.elapsed().as_secs_f64());

        // Protection faults: the increment of a read-only page, resumed N times.
        protect(&vm, DATA_PAGE, 1, 0, Access::READ)?;
        set_op(&vm, v, memops::INC, DATA_PAGE)?;
        let t = Instant::now();
        for _ in 0..p.faults {
            match run(vcpu_mut(&mut vm, v)?, &mem)? {
                Event::Fault { .. } => {}
                other => bail!("the write to a read-only page gave {other:x?}"),
            }
        }
        faults.push(f64::from(p.faults) / t.elapsed().as_secs_f64());
        protect(&vm, DATA_PAGE, 1, 0, Access::ALL)?;
        expect_done(
            run(vcpu_mut(&mut vm, v)?, &mem)?,
            memops::INC,
            "the increment after the lift",
        )?;
    }
    writeln!(
        out,
        "vtlkit-bench-prot: fault_round_trips {} per_s {:.0} (median of {})",
        p.faults,
        median(&mut faults),
        p.reps
    )?;
    writeln!(
        out,
        "vtlkit-bench-prot: ucall_round_trips {} per_s {:.0} (median of {})",
        p.faults,
        median(&mut ucalls),
        p.reps
    )?;

    let mut sz = PAGE_SIZE;
    while sz <= size {
        let (mut prot_us, mut lift_us) = (Vec::new(), Vec::new());
        for _ in 0..p.reps {
            vm.set_pcpu(v, memops::ARG, sz)?;
            expect_done(
                op(&mut vm, v, memops::TOUCH, RANGE_GPA)?,
                memops::TOUCH,
                "TOUCH",
            )?;
            let t = Instant::now();
            protect(&vm, RANGE_GPA, sz / PAGE_SIZE, 0, Access::READ)?;
            prot_us.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            protect(&vm, RANGE_GPA, sz / PAGE_SIZE, 0, Access::ALL)?;
            lift_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        writeln!(
            out,
            "vtlkit-bench-prot: range {} protect_us {:.0} lift_us {:.0} (median of {})",
            sz >> 10,
            median(&mut prot_us),
            median(&mut lift_us),
            p.reps
        )?;
        out.flush()?;
        if sz == size {
            break;
        }
        sz = (sz * 8).min(size);
    }
    drop(vm);
    drop(backing);
    Ok(())
}
