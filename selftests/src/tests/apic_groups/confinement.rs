// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Confinement fixes of issue 8, one test each; every test here failed on the v1 series and
//! says how:
//! * nothing sent before a vCPU is assigned is observed after it ([`apic_group_clean_assignment`]);
//! * the in-kernel PIT's NMI watchdog reaches group 0 only ([`apic_group_pit_nmi`]);
//! * `apic_group_irq_dropped` counts exactly the interrupts dropped at a group boundary
//!   ([`apic_group_irq_dropped`]).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{kvm_msi, kvm_pit_config, kvm_reinject_control, KVMIO, KVM_MP_STATE_RUNNABLE};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_io_nr;
use vtlkit_uapi::{ApicGroup, VcpuApicGroupExt, APIC_GROUP_NONE};

use super::scenario::{groups_supported, kvm_err};
use crate::guest::icr::{DM_FIXED, DM_INIT, DM_NMI, LEVEL_ASSERT, SH_OTHERS};
use crate::guest::{pcpu, prog, ucall, Entry};
use crate::harness::{Outcome, TestResult};
use crate::stats::Stats;
use crate::vm::{
    lapic_read, lapic_reg, lapic_write, layout, Running, TestVm, Ucall, Vcpu, VmOptions,
    DEFAULT_TIMEOUT,
};
use crate::{check, check_eq, require};

ioctl_io_nr!(KVM_REINJECT_CONTROL, KVMIO, 0x71);

/// The VM statistic the series adds.
const DROPPED: &str = "apic_group_irq_dropped";

/// APIC group `group`, APIC ID `apic_id`, VTL = group.
fn grp(group: u32, apic_id: u32) -> ApicGroup {
    ApicGroup {
        group,
        apic_id,
        vtl: group as u8,
    }
}

/// Write a send program of ICR commands `(destination, ICR low word)` at `gpa`.
fn write_icr_program(vm: &TestVm, gpa: u64, icrs: &[(u32, u32)]) -> Result<()> {
    for (j, &(dest, low)) in icrs.iter().enumerate() {
        let e = gpa + j as u64 * prog::ENTRY_SIZE;
        vm.mem.write_u64(e, prog::ICR)?;
        vm.mem.write_u64(e + 8, dest.into())?;
        vm.mem.write_u64(e + 16, low.into())?;
    }
    vm.mem
        .write_u64(gpa + icrs.len() as u64 * prog::ENTRY_SIZE, prog::END)
}

/// Software-enable vCPU `v`'s APIC (SVR = 0x1ff) and set LVT0 to `lvt0` if given, through
/// KVM_GET/SET_LAPIC.
fn set_apic(v: &Vcpu, lvt0: Option<u32>) -> Result<()> {
    let mut lapic =
        v.fd.get_lapic()
            .map_err(|e| anyhow!("KVM_GET_LAPIC on vCPU {}: {e}", v.id))?;
    lapic_write(&mut lapic, lapic_reg::SVR, 0x1ff);
    if let Some(l) = lvt0 {
        lapic_write(&mut lapic, lapic_reg::LVT0, l);
    }
    v.fd.set_lapic(&lapic)
        .map_err(|e| anyhow!("KVM_SET_LAPIC on vCPU {}: {e}", v.id))
}

/// The handled-interrupt counter of vCPU `index` for `vector`.
fn handled(vm: &TestVm, index: usize, vector: u8) -> Result<u32> {
    vm.mem
        .read_u32(TestVm::pcpu_gpa(index) + pcpu::IRQ_COUNTS + 4 * u64::from(vector))
}

/// Wait until vCPU `index` handled `vector`, failing with `what` if it does not in time.
fn wait_handled(
    running: &Running,
    vm: &TestVm,
    index: usize,
    vector: u8,
    what: &str,
) -> Result<()> {
    let timeout = Duration::from_secs(10);
    if !running.wait_until(timeout, || Ok(handled(vm, index, vector)? > 0))? {
        bail!("{what}: vCPU index {index} did not handle vector {vector:#x} within {timeout:?}");
    }
    Ok(())
}

/// An MSI to physical APIC ID `dest`, in `group` if given.
fn msi(dest: u32, vector: u8, group: Option<u32>) -> kvm_msi {
    let m = kvm_msi {
        address_lo: layout::XAPIC as u32 | (dest << 12),
        data: u32::from(vector),
        ..Default::default()
    };
    match group {
        Some(g) => vtlkit_uapi::msi_to_group(m, g),
        None => m,
    }
}

// ---------------------------------------------------------------------------------------------

/// Issue 8: "nothing sent to a vCPU's old group is ever observed in its new group".
///
/// v1: a vCPU sat in group 0 from KVM_CREATE_VCPU until KVM_SET_APIC_GROUP, and moving it
/// cleared nothing, so vCPU 1 below caught vCPU 0's all-but-self NMI, INIT and fixed IPI and
/// carried them into group 1 (nmi.pending = 1 was reproduced). v2 creates vCPUs unassigned:
/// nothing reaches them until they are assigned once.
pub(super) fn apic_group_clean_assignment() -> TestResult {
    let mut vm = TestVm::new(VmOptions::apic_groups())?;
    let supported = groups_supported(&vm);
    require!(supported >= 2, "KVM_CAP_APIC_GROUPS is {supported}, need 2");
    const SENDER: usize = 0;
    const LATE: usize = 1;
    const STALE: u8 = 0x50; // the fixed IPI sent before vCPU 1 is assigned
    const FRESH: u8 = 0x60; // the positive control after it is assigned
    vm.add_vcpu_in_group(0, Entry::ApicMain, grp(0, 0))?;
    vm.add_vcpu(1, Entry::ApicMain)?;
    // Software-enable the unassigned vCPU's APIC, so a fixed IPI that reached it would be
    // accepted into its IRR (a disabled APIC drops fixed interrupts, but not NMI or INIT).
    set_apic(vm.vcpu(LATE)?, None)?;

    // vCPU 0 (group 0) runs alone and sends NMI, INIT and a fixed IPI to all but itself.
    let program = layout::SHARED;
    write_icr_program(
        &vm,
        program,
        &[
            (0, DM_NMI | LEVEL_ASSERT | SH_OTHERS),
            (0, DM_INIT | LEVEL_ASSERT | SH_OTHERS),
            (0, u32::from(STALE) | DM_FIXED | LEVEL_ASSERT | SH_OTHERS),
        ],
    )?;
    vm.set_pcpu(SENDER, pcpu::PROGRAM, program)?;
    vm.set_pcpu(SENDER, pcpu::GO, 1)?;
    for stage in [ucall::STAGE_APIC_READY, ucall::STAGE_SENT] {
        match vm.run_vcpu(SENDER)? {
            Ucall::Sync { stage: s, .. } if s == stage => {}
            other => bail!("vCPU 0: expected SYNC at stage {stage:#x}, got {other}"),
        }
    }

    // Still unassigned, then assigned: no trace of any of it, before or after.
    let check_clean = |v: &Vcpu, when: &str| -> Result<()> {
        let ev =
            v.fd.get_vcpu_events()
                .map_err(|e| anyhow!("KVM_GET_VCPU_EVENTS on vCPU {}: {e}", v.id))?;
        check!(
            ev.nmi.pending == 0 && ev.nmi.injected == 0,
            "vCPU {} {when}: NMI pending {} injected {} (the all-but-self NMI sent while it was unassigned reached it)",
            v.id,
            ev.nmi.pending,
            ev.nmi.injected
        );
        check_eq!(ev.smi.pending, 0, "vCPU {} {when}: SMI pending", v.id);
        let lapic =
            v.fd.get_lapic()
                .map_err(|e| anyhow!("KVM_GET_LAPIC on vCPU {}: {e}", v.id))?;
        for (name, reg) in [("IRR", lapic_reg::IRR), ("ISR", lapic_reg::ISR)] {
            let words: Vec<u32> = (0..8).map(|k| lapic_read(&lapic, reg + k * 0x10)).collect();
            check!(
                words.iter().all(|&w| w == 0),
                "vCPU {} {when}: {name} not empty: {words:#x?}",
                v.id
            );
        }
        let mp =
            v.fd.get_mp_state()
                .map_err(|e| anyhow!("KVM_GET_MP_STATE on vCPU {}: {e}", v.id))?;
        check_eq!(
            mp.mp_state,
            KVM_MP_STATE_RUNNABLE,
            "vCPU {} {when}: MP state (INIT_RECEIVED = 2 would mean the INIT reached it)",
            v.id
        );
        Ok(())
    };
    check_eq!(
        vm.vcpu(LATE)?.fd.get_apic_group().map_err(kvm_err)?.group,
        APIC_GROUP_NONE,
        "vCPU 1's group before its assignment"
    );
    check_clean(vm.vcpu(LATE)?, "while unassigned")?;
    vm.assign_group(LATE, grp(1, 0))?;
    check_clean(vm.vcpu(LATE)?, "after KVM_SET_APIC_GROUP(group 1)")?;

    // vCPU 1 runs: its handler sees nothing but a fresh MSI to its group (the positive
    // control that proves it takes interrupts); a stale NMI would abort the guest (vector 2).
    let running = vm.start()?;
    running
        .wait_sync(LATE, ucall::STAGE_APIC_READY, DEFAULT_TIMEOUT)
        .context("vCPU 1 enabling its APIC")?;
    let n = vm
        .fd
        .signal_msi(msi(0, FRESH, Some(1)))
        .map_err(|e| anyhow!("KVM_SIGNAL_MSI to group 1: {e}"))?;
    check_eq!(n, 1, "KVM_SIGNAL_MSI to group 1, APIC ID 0: vCPUs reached");
    wait_handled(
        &running,
        &vm,
        LATE,
        FRESH,
        "the MSI to group 1 after the assignment",
    )?;
    std::thread::sleep(Duration::from_millis(50));
    running.check_no_pending()?;
    let stale = handled(&vm, LATE, STALE)?;
    let total = vm.mem.read_u64(TestVm::pcpu_gpa(LATE) + pcpu::IRQ_TOTAL)?;
    check_eq!(
        stale,
        0,
        "vCPU 1 handled the fixed IPI (vector {STALE:#x}) sent before its assignment"
    );
    check_eq!(
        total,
        1,
        "interrupts vCPU 1 handled in all (only the MSI after its assignment is expected)"
    );
    let vcpus = running.stop()?;
    let late = vcpus
        .iter()
        .find(|v| v.index == LATE)
        .ok_or_else(|| anyhow!("vCPU index 1 missing"))?;
    let ev = late
        .fd
        .get_vcpu_events()
        .map_err(|e| anyhow!("KVM_GET_VCPU_EVENTS: {e}"))?;
    check!(
        ev.nmi.pending == 0 && ev.nmi.injected == 0,
        "vCPU 1 after running: NMI pending {} injected {}",
        ev.nmi.pending,
        ev.nmi.injected
    );
    Ok(Outcome::Pass)
}

// ---------------------------------------------------------------------------------------------

/// Issue 8: "The in-kernel PIT's NMI watchdog ... ignores groups; the PIT is a group-0 device."
///
/// v1: pit_do_work() called kvm_apic_nmi_wd_deliver() on every vCPU, so the group-1 vCPU with
/// LVT0 in NMI mode got the watchdog NMIs too. v2 delivers them to group 0 only.
pub(super) fn apic_group_pit_nmi() -> TestResult {
    let mut vm = TestVm::new(VmOptions::apic_groups())?;
    let supported = groups_supported(&vm);
    require!(supported >= 2, "KVM_CAP_APIC_GROUPS is {supported}, need 2");
    vm.fd
        .create_pit2(kvm_pit_config::default())
        .map_err(|e| anyhow!("KVM_CREATE_PIT2: {e}"))?;
    // Every tick delivers, acknowledged or not (no guest acknowledges IRQ 0 here).
    let ctl = kvm_reinject_control::default();
    // SAFETY: KVM_REINJECT_CONTROL reads a struct kvm_reinject_control from a live reference;
    // the VM fd is valid.
    let r = unsafe { ioctl_with_ref(&vm.fd, KVM_REINJECT_CONTROL(), &ctl) };
    check!(
        r == 0,
        "KVM_REINJECT_CONTROL(0): {}",
        std::io::Error::last_os_error()
    );
    // Same APIC ID in both groups; neither vCPU runs. LVT0 = NMI delivery, unmasked.
    const APIC_DM_NMI: u32 = 0x400;
    let g0 = vm.add_vcpu_in_group(0, Entry::ApicMain, grp(0, 0))?;
    let g1 = vm.add_vcpu_in_group(1, Entry::ApicMain, grp(1, 0))?;
    for i in [g0, g1] {
        set_apic(vm.vcpu(i)?, Some(APIC_DM_NMI))?;
    }
    let nmis = |i: usize| -> Result<(u8, u8)> {
        let v = vm.vcpu(i)?;
        let ev =
            v.fd.get_vcpu_events()
                .map_err(|e| anyhow!("KVM_GET_VCPU_EVENTS on vCPU {}: {e}", v.id))?;
        Ok((ev.nmi.pending, ev.nmi.injected))
    };
    for i in [g0, g1] {
        check_eq!(
            nmis(i)?,
            (0, 0),
            "vCPU {i}: (NMI pending, injected) before the PIT runs"
        );
    }

    // PIT channel 0: mode 2 (rate generator), 11932 ticks of 1.193182 MHz = 10 ms.
    let mut pit = vm.fd.get_pit2().map_err(|e| anyhow!("KVM_GET_PIT2: {e}"))?;
    let ch = &mut pit.channels[0];
    ch.count = 11932;
    ch.mode = 2;
    ch.rw_mode = 3;
    ch.gate = 1;
    vm.fd
        .set_pit2(&pit)
        .map_err(|e| anyhow!("KVM_SET_PIT2: {e}"))?;

    // Positive control: the group-0 vCPU gets watchdog NMIs.
    let timeout = Duration::from_secs(5);
    let start = Instant::now();
    loop {
        let (pending, injected) = nmis(g0)?;
        if pending > 0 || injected > 0 {
            break;
        }
        if start.elapsed() > timeout {
            bail!(
                "the PIT's NMI watchdog did not reach the group-0 vCPU within {timeout:?} (positive control)"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Let the 10 ms timer tick many more times, then: nothing for the group-1 vCPU.
    std::thread::sleep(Duration::from_millis(300));
    check_eq!(
        nmis(g1)?,
        (0, 0),
        "group-1 vCPU (APIC ID 0, LVT0 = NMI): (NMI pending, injected) after 300 ms of PIT ticks"
    );
    Ok(Outcome::Pass)
}

// ---------------------------------------------------------------------------------------------

/// Issue 8: "`apic_group_irq_dropped` miscounts ... Count exactly 'an interrupt that reached no
/// vCPU of its group while a vCPU of another group matched'".
///
/// v1 counted every undelivered interrupt that matched a vCPU of another group: an all-but-self
/// IPI from a vCPU alone in its group (the shorthand matches everyone elsewhere), and an
/// interrupt that reached its target but was refused by a software-disabled APIC while a
/// sibling elsewhere had the same APIC ID. v2 counts neither.
pub(super) fn apic_group_irq_dropped() -> TestResult {
    let mut vm = TestVm::new(VmOptions::apic_groups())?;
    let supported = groups_supported(&vm);
    require!(supported >= 3, "KVM_CAP_APIC_GROUPS is {supported}, need 3");
    let stats = Stats::open(&vm.fd)?;
    let dropped = || stats.get(DROPPED);
    check_eq!(dropped()?, 0, "{DROPPED} of a new VM");

    // vCPU 0: group 0, APIC ID 0, APIC enabled. vCPU 1: group 1, APIC ID 0, APIC disabled
    // (never run before the MSIs). vCPU 2: alone in group 2.
    const DELIVERED: u8 = 0x70;
    let g0 = vm.add_vcpu_in_group(0, Entry::ApicMain, grp(0, 0))?;
    let g1 = vm.add_vcpu_in_group(1, Entry::ApicMain, grp(1, 0))?;
    let lone = vm.add_vcpu_in_group(2, Entry::ApicMain, grp(2, 0))?;
    set_apic(vm.vcpu(g0)?, None)?;
    let empty = supported - 1;

    let step = |what: &str, m: kvm_msi, want_ret: i32, want_delta: u64| -> Result<()> {
        let before = dropped()?;
        let ret = vm
            .fd
            .signal_msi(m)
            .map_err(|e| anyhow!("KVM_SIGNAL_MSI ({what}): {e}"))?;
        check_eq!(ret, want_ret, "KVM_SIGNAL_MSI ({what}): vCPUs reached");
        check_eq!(
            dropped()? - before,
            want_delta,
            "{DROPPED} increase for {what}"
        );
        Ok(())
    };
    step(
        &format!("MSI to empty group {empty}, APIC ID 0, which group 0 holds"),
        msi(0, 0x40, Some(empty)),
        0,
        1,
    )?;
    step(
        &format!("MSI to empty group {empty}, APIC ID 9, which no group holds"),
        msi(9, 0x41, Some(empty)),
        0,
        0,
    )?;
    step(
        "MSI to group 1, APIC ID 0: its vCPU's APIC is software-disabled, group 0 has APIC ID 0 too",
        msi(0, 0x42, Some(1)),
        0,
        0,
    )?;
    step(
        "MSI to group 0, APIC ID 0, delivered",
        msi(0, DELIVERED, None),
        1,
        0,
    )?;

    // An all-but-self IPI from the only vCPU of group 2.
    let program = layout::SHARED;
    write_icr_program(
        &vm,
        program,
        &[(0, 0x43 | DM_FIXED | LEVEL_ASSERT | SH_OTHERS)],
    )?;
    vm.set_pcpu(lone, pcpu::PROGRAM, program)?;
    let before = dropped()?;
    let running = vm.start()?;
    for i in [g0, g1, lone] {
        running
            .wait_sync(i, ucall::STAGE_APIC_READY, DEFAULT_TIMEOUT)
            .with_context(|| format!("vCPU {i} enabling its APIC"))?;
    }
    vm.set_pcpu(lone, pcpu::GO, 1)?;
    running
        .wait_sync(lone, ucall::STAGE_SENT, DEFAULT_TIMEOUT)
        .context("vCPU 2 sending its all-but-self IPI")?;
    check_eq!(
        dropped()? - before,
        0,
        "{DROPPED} increase for an all-but-self IPI from a vCPU alone in its group"
    );
    // The delivered MSI was really taken by vCPU 0 once it enabled interrupts.
    wait_handled(&running, &vm, g0, DELIVERED, "the MSI delivered to group 0")?;
    running.check_no_pending()?;
    drop(running);

    // A VM that never opted in: undelivered interrupts are not counted (and cost nothing).
    let mut stock = TestVm::new(VmOptions::default())?;
    let stock_stats = Stats::open(&stock.fd)?;
    stock.add_vcpu(0, Entry::ApicMain)?;
    stock.add_vcpu(1, Entry::ApicMain)?;
    for (what, dest) in [("no vCPU", 7), ("a software-disabled APIC", 1)] {
        // Stock return values: -1 (EPERM) or 0; neither is the point here.
        let _ = stock.fd.signal_msi(msi(dest, 0x44, None));
        check_eq!(
            stock_stats.get(DROPPED)?,
            0,
            "{DROPPED} after an MSI to {what} in a VM that never opted in"
        );
    }
    Ok(Outcome::Pass)
}
