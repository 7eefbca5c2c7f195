// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! What the VSM tests share (not tests): the capability check, the program that enables VTL1
//! on VP 0 and runs round trips, and the checks of one round trip.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};

use crate::guest::{pcpu, ucall, vsm};
use crate::hyperv::{Program, Step};
use crate::vm::{layout, TestVm, DEFAULT_TIMEOUT};
use crate::vp::{enable_partition_vtl, vsm_layout, Round, RoundSeen, VpRunning, VsmVm};

/// The VP the tests use.
pub(super) const VP: u32 = 0;

/// Fails unless the kernel has what the VSM tests need: `KVM_CAP_APIC_GROUPS` (at least two
/// groups) and `KVM_CAP_HYPERV_VSM`. The suite runs on its own patched kernel
/// (`kernel_is_patched`), so a missing capability is a failure, as in `hv_vsm_*`, not a skip.
pub(super) fn require_vsm() -> Result<()> {
    let kvm = crate::vm::open_kvm()?;
    let groups = vtlkit_uapi::apic_groups_supported(&kvm);
    if groups < 2 {
        bail!("KVM_CHECK_EXTENSION(KVM_CAP_APIC_GROUPS) is {groups}: the kernel lacks the series");
    }
    if !vtlkit_uapi::hyperv_vsm_supported(&kvm) {
        bail!(
            "KVM_CHECK_EXTENSION(KVM_CAP_HYPERV_VSM) is 0: the kernel lacks the Hyper-V VTL patches (series v3)"
        );
    }
    Ok(())
}

/// VTL0's steps that enable VTL1 on VP [`VP`]: its VP assist page, EnablePartitionVtl(1),
/// EnableVpVtl(VP, 1) with VTL1's CR3 = the alternate PML4 (a private register VTL1 must keep).
pub(super) fn enable_vtl1(vsm: &VsmVm) -> Vec<Step> {
    vec![
        vsm.enable_assist_page(VP, 0),
        Step::Hcall(enable_partition_vtl(1)),
        vsm.enable_vp_vtl(VP, Some(vsm_layout::ALT_PML4)),
    ]
}

/// Program step indexes of [`enable_vtl1`]'s hypercalls.
pub(super) const STEP_ENABLE_PARTITION: usize = 1;
/// See [`STEP_ENABLE_PARTITION`].
pub(super) const STEP_ENABLE_VP: usize = 2;

/// Load `steps` as VTL0's program on VP [`VP`], run the VM until VTL0 reports its program
/// done, and return the runner (still running: VTL0 halts) and the loaded program.
pub(super) fn run(vsm: &mut VsmVm, steps: Vec<Step>) -> Result<(VpRunning, crate::hyperv::Loaded)> {
    let prog = steps.into_iter().fold(Program::new(), Program::step);
    let v0 = vsm.index(VP, 0);
    let loaded = vsm.vm.load_hv_program(v0, &prog)?;
    let running = vsm.start()?;
    running
        .wait_sync(VP, 0, ucall::STAGE_HV_READY, DEFAULT_TIMEOUT)
        .context("VTL0 setting up Hyper-V")?;
    vsm.vm.set_pcpu(v0, pcpu::GO, 1)?;
    if let Err(e) = running.wait_sync(VP, 0, ucall::STAGE_HV_DONE, DEFAULT_TIMEOUT) {
        let events = running.events(VP);
        let state = running.stop_and_describe();
        bail!("VTL0 running its program: {e:#}\nrunner log: {events:?}\nstate: {state}");
    }
    Ok((running, loaded))
}

/// The checks of round trip `k` (`r` as written, `seen` as recorded): VTL1 found VTL0's shared
/// registers and its own private ones (RSP at the top of its stack, CR3 = the alternate PML4,
/// GS base = its data page); VTL0 found VTL1's shared registers, RAX/RCX from VTL1's assist page
/// (normal return) or as VTL1 left them (fast), and its own RSP, CR3 and GS base. Returns
/// what did not hold, one line each.
pub(super) fn round_failures(vsm: &VsmVm, k: u64, r: &Round, seen: &RoundSeen) -> String {
    let mut f = String::new();
    let v0 = vsm.index(VP, 0);
    let v1 = vsm.index(VP, 1);
    // VTL1 on entry.
    let d = seen.vtl1.diff(&r.vtl0_in, &[vsm::regs::RSP]);
    if !d.is_empty() {
        let _ = writeln!(
            f,
            "round {k}: VTL1 did not find VTL0's shared registers: {}",
            d.join("; ")
        );
    }
    let private1 = [
        (
            "RSP",
            seen.vtl1.gprs[vsm::regs::RSP],
            VsmVm::vtl1_stack_top(v1),
        ),
        ("CR3", seen.vtl1_cr3, vsm_layout::ALT_PML4),
        ("GS base", seen.vtl1_gs_base, TestVm::pcpu_gpa(v1)),
    ];
    for (name, got, want) in private1 {
        if got != want {
            let _ = writeln!(
                f,
                "round {k}: VTL1's private {name} is {got:#x}, expected its own {want:#x}"
            );
        }
    }
    // VTL0 after the return.
    let mut want0 = r.vtl1_out;
    if !r.fast() {
        want0.gprs[vsm::regs::RAX] = r.ret_rax;
        want0.gprs[vsm::regs::RCX] = r.ret_rcx;
    }
    let d = seen.vtl0.diff(&want0, &[vsm::regs::RSP]);
    if !d.is_empty() {
        let how = if r.fast() {
            "fast return: VTL1's RAX/RCX"
        } else {
            "normal return: RAX/RCX from VTL1's HV_VP_VTL_CONTROL"
        };
        let _ = writeln!(
            f,
            "round {k}: VTL0 did not resume with VTL1's shared registers ({how}): {}",
            d.join("; ")
        );
    }
    let private0 = [
        ("RSP", seen.vtl0.gprs[vsm::regs::RSP], seen.vtl0_rsp_before),
        ("CR3", seen.vtl0_cr3, layout::PML4),
        ("GS base", seen.vtl0_gs_base, TestVm::pcpu_gpa(v0)),
    ];
    for (name, got, want) in private0 {
        if got != want {
            let _ = writeln!(
                f,
                "round {k}: VTL0's private {name} is {got:#x} after the return, expected its own {want:#x}"
            );
        }
    }
    f
}
