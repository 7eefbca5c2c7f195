// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL are private to each APIC group (VTL).

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context, Result};

use super::common::{build, groups_available, Node};
use crate::guest::{pcpu, ucall};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{self, control, msr, Hypercall, Loaded, Program, Step};
use crate::require;
use crate::vm::{lapic_bit, lapic_reg, TestVm, Ucall};

/// Guest OS IDs of the group-0 and group-1 vCPUs.
const OS_ID_G0: u64 = 0x8100_0000_0000_0a00;
const OS_ID_G1: u64 = 0x8100_0000_0000_0b00;
/// A call code KVM does not implement: a Hyper-V hypercall gets status 2 for it.
const UNKNOWN_CODE: u16 = 0x00ff;
/// RAX for the probe: a KVM hypercall number KVM does not know, so a vmmcall that is *not* a
/// Hyper-V hypercall returns -KVM_ENOSYS.
const KVM_HC_UNKNOWN: u64 = 0x7fff_0000;
const KVM_ENOSYS: u64 = (-1000i64) as u64;
/// The vector the group-2 vCPU sends itself with a Hyper-V IPI that must not happen.
const PROBE_VECTOR: u8 = 0x60;

fn run_to(vm: &mut TestVm, i: usize, stage: u64, what: &str) -> Result<[u64; 4]> {
    match vm.run_vcpu(i)? {
        Ucall::Sync { stage: s, args } if s == stage => Ok(args),
        other => bail!("vCPU index {i} {what}: {other}"),
    }
}

/// The probes a vCPU runs: read both MSRs back, then an unknown Hyper-V call with RAX = an
/// unknown KVM hypercall number, then a fast Hyper-V IPI to its own VP index, which a vCPU
/// with Hyper-V hypercalls (`hv`) then waits to handle.
fn probes(hv: bool) -> Program {
    let p = Program::new()
        .step(Step::Rdmsr(msr::GUEST_OS_ID))
        .step(Step::Rdmsr(msr::HYPERCALL))
        .hcall(Hypercall::raw(UNKNOWN_CODE.into(), 0, 0).with_rax(KVM_HC_UNKNOWN))
        .hcall(
            Hypercall::fast(
                control::word(hyperv::call::SEND_IPI, false, 0, 0),
                PROBE_VECTOR.into(),
                1, // VP 0
                [0; 12],
            )
            .with_rax(KVM_HC_UNKNOWN),
        );
    if hv {
        p.step(Step::WaitIrqs {
            vector: PROBE_VECTOR,
            count: 1,
        })
    } else {
        p
    }
}

/// (GUEST_OS_ID, HYPERCALL, unknown-code RAX, IPI RAX) as the guest recorded them.
fn recorded(vm: &TestVm, l: &Loaded) -> Result<[u64; 4]> {
    let mut r = [0; 4];
    for (k, slot) in r.iter_mut().enumerate() {
        let o = l.outcome(&vm.mem, k)?;
        if !o.done {
            bail!("step {k} of the probes never finished");
        }
        *slot = o.rax;
    }
    Ok(r)
}

/// A group-1 vCPU writing GUEST_OS_ID and HYPERCALL does not change what its group-0 sibling
/// reads back (guest RDMSR and host KVM_GET_MSRS); in a group whose GUEST_OS_ID is 0 a
/// `vmmcall` is not a Hyper-V hypercall (KVM's own ABI answers, no IPI is sent).
pub(super) fn hv_hypercall_msrs_per_group() -> TestResult {
    require!(groups_available()?, "KVM_CAP_APIC_GROUPS < 2");
    let kvm = crate::vm::open_kvm()?;
    require!(
        vtlkit_uapi::apic_groups_supported(&kvm) >= 3,
        "KVM_CAP_APIC_GROUPS < 3"
    );
    // VP 0 at VTL 0, 1 and 2, each in its own group.
    let nodes = vec![
        Node::grouped(0, 0, 0, 0, 0),
        Node::grouped(1, 1, 0, 1, 0),
        Node::grouped(2, 2, 0, 2, 0),
    ];
    let mut vm = build(&nodes)?;
    let page = |i: usize| hyperv::scratch_page(i) | hyperv::HYPERCALL_ENABLE;
    let want = [(OS_ID_G0, page(0)), (OS_ID_G1, page(1)), (0, 0)];
    for (i, &(os, hc)) in want.iter().enumerate() {
        vm.set_pcpu(i, pcpu::HV_GUEST_OS_ID, os)?;
        vm.set_pcpu(i, pcpu::HV_HYPERCALL, hc)?;
    }
    let loaded: Vec<Loaded> = want
        .iter()
        .enumerate()
        .map(|(i, &(os, _))| vm.load_hv_program(i, &probes(os != 0)))
        .collect::<Result<_>>()?;

    // Group 0 writes its MSRs, then group 1, then group 2 (which writes nothing).
    let mut failures = String::new();
    for (i, &(os, hc)) in want.iter().enumerate() {
        let [got_os, got_hc, _, _] = run_to(&mut vm, i, ucall::STAGE_HV_READY, "setting up")?;
        if (got_os, got_hc) != (os, hc) {
            let _ = writeln!(
                failures,
                "{} read back GUEST_OS_ID {got_os:#x} HYPERCALL {got_hc:#x} right after writing {os:#x} and {hc:#x}",
                nodes[i].describe(i)
            );
        }
    }
    // Then each runs the probes, after every group has written.
    for i in 0..nodes.len() {
        vm.set_pcpu(i, pcpu::GO, 1)?;
        run_to(&mut vm, i, ucall::STAGE_HV_DONE, "running the probes")?;
    }
    for (i, &(os, hc)) in want.iter().enumerate() {
        let [got_os, got_hc, unknown, ipi] =
            recorded(&vm, &loaded[i]).with_context(|| nodes[i].describe(i))?;
        let who = nodes[i].describe(i);
        if (got_os, got_hc) != (os, hc) {
            let _ = writeln!(
                failures,
                "{who} reads GUEST_OS_ID {got_os:#x} HYPERCALL {got_hc:#x} after the other groups wrote theirs; its own are {os:#x} and {hc:#x}"
            );
        }
        let fd = &vm.vcpu(i)?.fd;
        let host = (
            hyperv::get_msr(fd, msr::GUEST_OS_ID)?,
            hyperv::get_msr(fd, msr::HYPERCALL)?,
        );
        if host != (os, hc) {
            let _ = writeln!(
                failures,
                "KVM_GET_MSRS on {who}: GUEST_OS_ID {:#x} HYPERCALL {:#x}, expected {os:#x} and {hc:#x}",
                host.0, host.1
            );
        }
        // Groups with a GUEST_OS_ID make Hyper-V hypercalls; group 2 makes KVM ones.
        let (want_unknown, want_ipi) = if os != 0 {
            (
                hyperv::status::INVALID_HYPERCALL_CODE,
                hyperv::status::SUCCESS,
            )
        } else {
            (KVM_ENOSYS, KVM_ENOSYS)
        };
        if (unknown, ipi) != (want_unknown, want_ipi) {
            let _ = writeln!(
                failures,
                "{who} (GUEST_OS_ID {os:#x}): vmmcall with RAX {KVM_HC_UNKNOWN:#x} returned {unknown:#x} for Hyper-V code {UNKNOWN_CODE:#x} and {ipi:#x} for a fast SendSyntheticClusterIpi, expected {want_unknown:#x} and {want_ipi:#x} ({})",
                if os != 0 { "Hyper-V hypercalls" } else { "not Hyper-V hypercalls: KVM's -KVM_ENOSYS" }
            );
        }
    }
    // The IPI to VP 0 reaches the sender in groups 0 and 1 (its own group's VP 0), never in
    // group 2, whose "hypercall" was none.
    for (i, &(os, _)) in want.iter().enumerate() {
        let got = vm
            .mem
            .read_u32(TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(PROBE_VECTOR))?;
        let fd = &vm.vcpu(i)?.fd;
        let lapic = fd
            .get_lapic()
            .map_err(|e| anyhow!("KVM_GET_LAPIC on vCPU index {i}: {e}"))?;
        let handled = got + u32::from(lapic_bit(&lapic, lapic_reg::IRR, PROBE_VECTOR));
        let want = u32::from(os != 0);
        if handled != want {
            let _ = writeln!(
                failures,
                "{} got the Hyper-V IPI on vector {PROBE_VECTOR:#x} {handled} time(s), expected {want}",
                nodes[i].describe(i)
            );
        }
    }
    if !failures.is_empty() {
        bail!("{failures}");
    }
    Ok(Outcome::Pass)
}
