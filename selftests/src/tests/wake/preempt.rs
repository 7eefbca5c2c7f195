// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! An interrupt for a parked VTL1 preempts VTL0 at once, whatever VTL0's RFLAGS.IF: an MSI from
//! the host, an IPI from another VP's VTL1, a SynIC SINT routed to group 1. VTL0 spins with
//! interrupts disabled until VTL1's handler has counted the interrupt: it can only see that
//! happen if it was stopped in its loop, VTL1 entered (entry reason Interrupt), and VTL0
//! resumed where it was with its registers intact (the guest checks RAX/RCX).

use std::fmt::Write as _;

use anyhow::{anyhow, bail};
use kvm_bindings::KvmIrqRouting;

use super::common::{
    count, enable_everywhere, first_round, int_entries, interrupted, msi, spin_for_vtl1, start_all,
    unavailable, wait_done, wait_spinning, GATE2,
};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{self, call, control, input_vtl, msr, sint_route, status, Step};
use crate::vm::DEFAULT_TIMEOUT;
use crate::vp::{Round, VsmVm};

/// Where the interrupt comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Msi,
    Ipi,
    Sint,
}

const SINT: u32 = 2;
const SINT_GSI: u32 = 24;

fn preempt(source: Source, vector: u8) -> TestResult {
    if let Some(why) = unavailable()? {
        return Ok(Outcome::Skip(why));
    }
    // The IPI comes from VP 1's VTL1.
    let vps = if source == Source::Ipi { 2 } else { 1 };
    let mut vsm = VsmVm::new(vps)?;
    let mut programs = enable_everywhere(&vsm, vps)?;
    // VP 0: VTL0 waits at a gate, then spins with IF = 0 until VTL1 counted the interrupt.
    programs[0].push(Step::Gate(GATE2));
    let spin = programs[0].len();
    programs[0].push(spin_for_vtl1(&vsm, 0, vector, 1, 20));
    if source == Source::Ipi {
        // VP 1: at a gate, then a VtlCall whose VTL1 sends VP 0's VTL1 (same VTL, group 1) a
        // fast HvCallSendSyntheticClusterIpi.
        let k = first_round(vps, 1);
        let mut r = Round::new(0x77, true);
        r.vtl1_hcall = Some((
            control::word(call::SEND_IPI, true, 0, 0),
            u64::from(vector) | (u64::from(input_vtl(0, false)) << 32),
            1 << 0,
        ));
        vsm.write_round(1, k, &r)?;
        programs[1].push(Step::Gate(GATE2));
        programs[1].push(Step::VtlCall {
            block: VsmVm::block_gpa(1, k),
        });
    }
    if source == Source::Sint {
        // VTL1's SynIC: active, SINT 2 unmasked with the vector (host writes); a route to
        // (group 1, VP 0).
        let v1 = vsm.vm.vcpu(vsm.index(0, 1))?;
        hyperv::enable_synic(&v1.fd)?;
        hyperv::set_msr(&v1.fd, msr::SCONTROL, 1)?;
        hyperv::set_msr(&v1.fd, msr::sint(SINT), vector.into())?;
        let routing = KvmIrqRouting::from_entries(&[sint_route(SINT_GSI, 0, SINT, Some(1))])
            .map_err(|e| anyhow!("routing table: {e:?}"))?;
        vsm.vm
            .fd
            .set_gsi_routing(&routing)
            .map_err(|e| anyhow!("KVM_SET_GSI_ROUTING (HV_SINT to group 1): {e}"))?;
    }
    let (running, loaded) = start_all(&mut vsm, programs)?;
    let v0 = vsm.index(0, 0);
    running.wait_sync(0, 0, crate::guest::ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)?;
    if source == Source::Ipi {
        running.wait_sync(1, 0, crate::guest::ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)?;
    }
    vsm.vm.set_pcpu(v0, crate::guest::pcpu::GO, GATE2)?;
    wait_spinning(&vsm, &loaded[0], spin)?;
    std::thread::sleep(std::time::Duration::from_millis(20));
    let entries_before = int_entries(&vsm, 0)?;
    match source {
        Source::Msi => msi(&vsm, 0, 1, vector)?,
        Source::Ipi => vsm
            .vm
            .set_pcpu(vsm.index(1, 0), crate::guest::pcpu::GO, GATE2)?,
        Source::Sint => {
            vsm.vm
                .fd
                .set_irq_line(SINT_GSI, true)
                .map_err(|e| anyhow!("KVM_IRQ_LINE({SINT_GSI}, 1): {e}"))?;
            vsm.vm
                .fd
                .set_irq_line(SINT_GSI, false)
                .map_err(|e| anyhow!("KVM_IRQ_LINE({SINT_GSI}, 0): {e}"))?;
        }
    }
    let running = wait_done(running, vps, DEFAULT_TIMEOUT)?;
    let mut f = String::new();
    let out = loaded[0].outcome(&vsm.vm.mem, spin)?;
    if out.rcx != 1 {
        let _ = writeln!(
            f,
            "VTL0's interrupts-disabled spin timed out after {} iterations: VTL1 never handled vector {vector:#x} while VTL0 ran",
            out.rax
        );
    }
    let (c1, c0) = (count(&vsm, 0, 1, vector)?, count(&vsm, 0, 0, vector)?);
    if c1 != 1 || c0 != 0 {
        let _ = writeln!(
            f,
            "vector {vector:#x}: handled {c1} times by VTL1 (expected 1) and {c0} times by VTL0 (expected 0)"
        );
    }
    let entries = int_entries(&vsm, 0)? - entries_before;
    if entries == 0 {
        let _ = writeln!(f, "VTL1 saw no entry with reason Interrupt (2)");
    }
    if interrupted(&running, 0) == 0 {
        let _ = writeln!(
            f,
            "the runner logged no KVM_EXIT_EVENT_NOTIFY switch into VTL1"
        );
    }
    if source == Source::Ipi {
        let r = vsm.read_round(1, first_round(vps, 1))?;
        if r.vtl1_hcall_result != status::SUCCESS {
            let _ = writeln!(f, "VP 1's VTL1 IPI returned {:#x}", r.vtl1_hcall_result);
        }
    }
    let events = running.events(0);
    drop(running);
    if !f.is_empty() {
        bail!("{f}VP 0's runner log: {events:?}");
    }
    Ok(Outcome::Pass)
}

/// An MSI to VTL1 (group 1) preempts VTL0 spinning with interrupts disabled.
pub(super) fn wake_msi_preempts_vtl0() -> TestResult {
    preempt(Source::Msi, 0x51)
}

/// A Hyper-V IPI from VP 1's VTL1 to VP 0's VTL1 preempts VP 0's VTL0.
pub(super) fn wake_ipi_preempts_vtl0() -> TestResult {
    preempt(Source::Ipi, 0x52)
}

/// A SynIC SINT routed to (group 1, VP 0) preempts VTL0.
pub(super) fn wake_sint_preempts_vtl0() -> TestResult {
    preempt(Source::Sint, 0x53)
}
