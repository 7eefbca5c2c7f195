// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Hyper-V synthetic cluster IPIs between the VTLs of one VP: a lower VTL may not interrupt a
//! higher one (HV_STATUS_ACCESS_DENIED, nothing delivered); a higher VTL's IPI to a lower one
//! goes into the lower VTL's APIC group and is taken when that VTL runs again.

use anyhow::{bail, Result};

use super::common::{enable_vtl1, require_vsm, round_failures, run, VP};
use crate::guest::pcpu;
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{call, control, input_vtl, send_ipi_input, status, Hypercall, Step};
use crate::vm::{lapic_bit, lapic_reg, GuestRecord, TestVm};
use crate::vp::{Round, VpEvent, VpStopped, VsmVm};

/// Interrupts VP [`VP`]'s VTL `vtl` sibling handled on `vector` (guest count), and whether
/// its LAPIC has the vector in IRR or ISR (KVM state).
fn received(vsm: &VsmVm, stopped: &VpStopped, vtl: u8, vector: u8) -> Result<(u32, bool)> {
    let i = vsm.index(VP, vtl);
    let count = vsm
        .vm
        .mem
        .read_u32(TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(vector))?;
    let sib = stopped.sibling(VP, vtl)?;
    let lapic = crate::vp::lock_sibling(&sib)
        .fd
        .get_lapic()
        .map_err(|e| anyhow::anyhow!("KVM_GET_LAPIC on VTL{vtl}: {e}"))?;
    let pending =
        lapic_bit(&lapic, lapic_reg::IRR, vector) || lapic_bit(&lapic, lapic_reg::ISR, vector);
    Ok((count, pending))
}

/// A fast HvCallSendSyntheticClusterIpi: (control, RDX = vector | HV_INPUT_VTL << 32, R8 =
/// processor mask).
fn fast_ipi(vector: u8, target_vtl: u8, mask: u64) -> (u64, u64, u64) {
    (
        control::word(call::SEND_IPI, true, 0, 0),
        u64::from(vector) | (u64::from(input_vtl(target_vtl, true)) << 32),
        mask,
    )
}

/// VTL0 sends VTL1 of its own VP an IPI, slow and fast: both fail with ACCESS_DENIED, neither
/// reaches any vCPU; a round trip after them still carries the right registers.
pub(super) fn vsm_ipi_lower_to_higher_denied() -> TestResult {
    require_vsm()?;
    const SLOW: u8 = 0x61;
    const FAST: u8 = 0x62;
    let mut vsm = VsmVm::new(1)?;
    let rounds = [Round::new(0x20, false), Round::new(0x21, false)];
    for (k, r) in rounds.iter().enumerate() {
        vsm.write_round(VP, k as u64, r)?;
    }
    let mut steps = enable_vtl1(&vsm);
    steps.push(Step::VtlCall {
        block: VsmVm::block_gpa(VP, 0),
    });
    let slow_step = steps.len();
    steps.push(Step::Hcall(Hypercall::slow(
        control::word(call::SEND_IPI, false, 0, 0),
        send_ipi_input(SLOW.into(), input_vtl(1, true), 1 << VP),
    )));
    let fast_step = steps.len();
    let (c, rdx, r8) = fast_ipi(FAST, 1, 1 << VP);
    steps.push(Step::Hcall(Hypercall::raw(c, rdx, r8)));
    // VTL1 runs again after the denied IPIs (and would take them if they had been delivered).
    steps.push(Step::VtlCall {
        block: VsmVm::block_gpa(VP, 1),
    });
    let (running, loaded) = run(&mut vsm, steps)?;
    let stopped = running.stop()?;
    let events = stopped.events(VP);
    let mut f = String::new();
    for (step, what) in [(slow_step, "slow"), (fast_step, "fast")] {
        let out = loaded.outcome(&vsm.vm.mem, step)?;
        if out.rax != status::ACCESS_DENIED {
            f.push_str(&format!(
                "VTL0's {what} IPI to VTL1 returned {:#x}, expected HV_STATUS_ACCESS_DENIED ({:#x})\n",
                out.rax,
                status::ACCESS_DENIED
            ));
        }
    }
    for vector in [SLOW, FAST] {
        for vtl in [0, 1] {
            let (count, pending) = received(&vsm, &stopped, vtl, vector)?;
            if count != 0 || pending {
                f.push_str(&format!(
                    "vector {vector:#x} (a denied IPI) reached VTL{vtl}: handled {count} times, pending in its LAPIC: {pending}\n"
                ));
            }
        }
    }
    let denied = events
        .iter()
        .filter(|e| {
            matches!(e, VpEvent::Completed { vtl: 0, code, result }
                if *code == call::SEND_IPI && *result == status::ACCESS_DENIED)
        })
        .count();
    if denied != 2 {
        f.push_str(&format!(
            "the runner answered {denied} IPI exits from VTL0 with ACCESS_DENIED, expected 2\n"
        ));
    }
    for (k, r) in rounds.iter().enumerate() {
        let seen = vsm.read_round(VP, k as u64)?;
        f.push_str(&round_failures(&vsm, k as u64, r, &seen));
    }
    if !f.is_empty() {
        bail!("{f}runner log: {events:?}");
    }
    Ok(Outcome::Pass)
}

/// VTL1, entered by VTL0's VtlCall, sends VTL0 of its VP an IPI (fast) and returns: the IPI
/// succeeds, reaches VTL0 only (group 0), and VTL0 handles it the moment it runs again, at the
/// instruction after its VtlCall.
pub(super) fn vsm_ipi_higher_to_lower_delivered() -> TestResult {
    require_vsm()?;
    const VECTOR: u8 = 0x63;
    let mut vsm = VsmVm::new(1)?;
    let mut with_ipi = Round::new(0x31, false);
    with_ipi.vtl1_hcall = Some(fast_ipi(VECTOR, 0, 1 << VP));
    let rounds = [Round::new(0x30, false), with_ipi];
    for (k, r) in rounds.iter().enumerate() {
        vsm.write_round(VP, k as u64, r)?;
    }
    let mut steps = enable_vtl1(&vsm);
    for k in 0..rounds.len() as u64 {
        steps.push(Step::VtlCall {
            block: VsmVm::block_gpa(VP, k),
        });
    }
    steps.push(Step::WaitIrqs {
        vector: VECTOR,
        count: 1,
    });
    let (running, _) = run(&mut vsm, steps)?;
    let stopped = running.stop()?;
    let events = stopped.events(VP);
    let mut f = String::new();
    let seen = vsm.read_round(VP, 1)?;
    if seen.vtl1_hcall_result != status::SUCCESS {
        f.push_str(&format!(
            "VTL1's IPI to VTL0 returned {:#x} in VTL1, expected HV_STATUS_SUCCESS\n",
            seen.vtl1_hcall_result
        ));
    }
    let (count0, pending0) = received(&vsm, &stopped, 0, VECTOR)?;
    let (count1, pending1) = received(&vsm, &stopped, 1, VECTOR)?;
    if count0 != 1 || pending0 {
        f.push_str(&format!(
            "VTL0 handled vector {VECTOR:#x} {count0} times (pending still: {pending0}), expected once\n"
        ));
    }
    if count1 != 0 || pending1 {
        f.push_str(&format!(
            "VTL1 got its own IPI to VTL0: handled {count1} times, pending in its LAPIC: {pending1}\n"
        ));
    }
    // VTL0 took it as soon as it ran again: at the instruction after its VtlCall.
    let rec = GuestRecord::read(&vsm.vm.mem, vsm.index(VP, 0))?;
    let intel = vsm
        .vm
        .mem
        .read_u64(TestVm::pcpu_gpa(vsm.index(VP, 0)) + pcpu::HYPERCALL_VMCALL)?
        != 0;
    let after = crate::vm::layout::CODE + crate::guest::hcall_insn_offsets(intel).1;
    if rec.last_vector != u64::from(VECTOR) || rec.last_irq_rip != after {
        f.push_str(&format!(
            "VTL0's last interrupt was vector {:#x} at RIP {:#x}, expected {VECTOR:#x} right after its VtlCall ({after:#x})\n",
            rec.last_vector, rec.last_irq_rip
        ));
    }
    let ipi_answer = events
        .iter()
        .find(|e| matches!(e, VpEvent::Completed { vtl: 1, code, .. } if *code == call::SEND_IPI));
    if ipi_answer
        != Some(&VpEvent::Completed {
            vtl: 1,
            code: call::SEND_IPI,
            result: status::SUCCESS,
        })
    {
        f.push_str(&format!(
            "the runner's answer to VTL1's IPI exit: {ipi_answer:?}, expected success\n"
        ));
    }
    for (k, r) in rounds.iter().enumerate() {
        let seen = vsm.read_round(VP, k as u64)?;
        f.push_str(&round_failures(&vsm, k as u64, r, &seen));
    }
    if !f.is_empty() {
        bail!("{f}runner log: {events:?}");
    }
    Ok(Outcome::Pass)
}
