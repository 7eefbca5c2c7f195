// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! VtlCall the TLFS says faults: with no higher VTL enabled on the VP, #UD at the hypercall
//! instruction (the state machine queues it; the guest's IDT records it).

use anyhow::bail;

use super::common::{require_vsm, VP};
use crate::guest::{hcall_insn_offsets, pcpu, ucall};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::Program;
use crate::vm::{layout, GuestRecord, TestVm, Ucall, DEFAULT_TIMEOUT};
use crate::vp::{Round, VpEvent, VsmVm};

/// #UD vector.
const UD: u64 = 6;

/// VTL0 does a well-formed VtlCall before anyone enabled VTL1: the guest takes #UD at its
/// `vmmcall` (recorded by its exception handler, which aborts), the runner logged one
/// exception and no switch, and VTL1 never ran.
pub(super) fn vsm_vtl_call_without_higher_vtl_ud() -> TestResult {
    require_vsm()?;
    let mut vsm = VsmVm::new(1)?;
    vsm.write_round(VP, 0, &Round::new(0x40, false))?;
    let v0 = vsm.index(VP, 0);
    let prog =
        Program::new()
            .step(vsm.enable_assist_page(VP, 0))
            .step(crate::hyperv::Step::VtlCall {
                block: VsmVm::block_gpa(VP, 0),
            });
    vsm.vm.load_hv_program(v0, &prog)?;
    let running = vsm.start()?;
    running.wait_sync(VP, 0, ucall::STAGE_HV_READY, DEFAULT_TIMEOUT)?;
    vsm.vm.set_pcpu(v0, pcpu::GO, 1)?;
    let (vtl, u) = running.next_ucall(VP, DEFAULT_TIMEOUT)?;
    let switched = running.switches(VP);
    let stopped = running.stop()?;
    let events = stopped.events(VP);
    let mut f = String::new();
    if vtl != 0 || !matches!(u, Ucall::Abort { .. }) {
        f.push_str(&format!(
            "expected VTL0's exception report (ABORT), got {u} from VTL{vtl}\n"
        ));
    }
    let rec = GuestRecord::read(&vsm.vm.mem, v0)?;
    let intel = vsm
        .vm
        .mem
        .read_u64(TestVm::pcpu_gpa(v0) + pcpu::HYPERCALL_VMCALL)?
        != 0;
    let insn = layout::CODE + hcall_insn_offsets(intel).0;
    match rec.first {
        Some(e) if rec.exceptions == 1 && e.vector == UD && e.rip == insn => {}
        _ => f.push_str(&format!(
            "VTL0 should have taken exactly one #UD at its hypercall instruction ({insn:#x}); {rec}\n"
        )),
    }
    if events != [VpEvent::Exception { vtl: 0, vector: 6 }] || !switched.is_empty() {
        f.push_str(&format!(
            "runner log {events:?}, expected one #UD queued on VTL0 and nothing else\n"
        ));
    }
    let v1_init = vsm
        .vm
        .mem
        .read_u64(TestVm::pcpu_gpa(vsm.index(VP, 1)) + pcpu::VSM_INIT)?;
    if v1_init != 0 || stopped.active_vtl(VP) != Some(0) {
        f.push_str(&format!(
            "VTL1 ran (its init flag {v1_init}, active VTL {:?})\n",
            stopped.active_vtl(VP)
        ));
    }
    if !f.is_empty() {
        bail!("{f}");
    }
    Ok(Outcome::Pass)
}
