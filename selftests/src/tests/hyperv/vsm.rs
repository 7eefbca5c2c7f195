// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The VSM hypercalls KVM forwards to userspace with KVM_CAP_HYPERV_VSM, and how their
//! completion treats RAX (VtlCall and VtlReturn leave it to userspace).

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Context, Result};

use super::common::{exits, ExitLog};
use crate::guest::{pcpu, ucall, Entry};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{self, call, control, status, Hypercall, Loaded, Program};
use crate::stats::Stats;
use crate::vm::{TestVm, Ucall, VmOptions};

/// A failure status with other RAX bits set, so a guest that sees it can only have got it
/// from `hcall.result`.
const FAILED: u64 = 0xdead_0000_0000_0000 | status::ACCESS_DENIED;

/// The forwarded calls in the order the guest issues them, and what the host answers in
/// `hcall.result` (the guest must see it in RAX, except for a VtlCall or VtlReturn completed
/// with HV_STATUS_SUCCESS, where KVM leaves RAX to userspace: each is answered once with success
/// and once with a failure status, which does reach RAX, as api.rst documents).
const CALLS: [(u16, u64); 9] = [
    (call::MODIFY_VTL_PROTECTION_MASK, FAILED | 0x0c << 32),
    (call::ENABLE_PARTITION_VTL, FAILED | 0x0d << 32),
    (call::ENABLE_VP_VTL, FAILED | 0x0f << 32),
    (call::VTL_CALL, status::SUCCESS),
    (call::VTL_CALL, FAILED | 0x11 << 32),
    (call::VTL_RETURN, status::SUCCESS),
    (call::VTL_RETURN, FAILED | 0x12 << 32),
    (call::GET_VP_REGISTERS, FAILED | 0x50 << 32),
    (call::SET_VP_REGISTERS, FAILED | 0x51 << 32),
];

/// RAX the guest loads before call `k` (64-bit Hyper-V hypercalls ignore it).
fn marker(k: usize) -> u64 {
    0xa5a5_0000_0000_0000 | k as u64
}

/// RAX and RCX the host puts with KVM_SET_REGS while the VtlCall exit is pending.
const VTL_CALL_RAX: u64 = 0x1111_2222_3333_0011;
const VTL_CALL_RCX: u64 = 0x4444_5555_6666_0011;

/// Call `k` of [`CALLS`], with a plausible input block (PartitionId self, VP 0, VTL 1).
fn hcall(k: usize) -> Hypercall {
    let code = CALLS[k].0;
    let mut input = Vec::new();
    input.extend_from_slice(&hyperv::PARTITION_ID_SELF.to_le_bytes());
    let h = match code {
        call::VTL_CALL | call::VTL_RETURN => Hypercall::raw(code.into(), 0, 0),
        call::MODIFY_VTL_PROTECTION_MASK => {
            input.extend_from_slice(&[0x3, 0, 0, 0, 1, 0, 0, 0]); // MapFlags RW, TargetVtl 1
            input.extend_from_slice(&0x200u64.to_le_bytes()); // one GPA page number
            Hypercall::slow(control::word(code, false, 0, 1), input)
        }
        call::GET_VP_REGISTERS | call::SET_VP_REGISTERS => {
            input.extend_from_slice(&[0, 0, 0, 0, 0x11, 0, 0, 0]); // VP 0, TargetVtl 1
            input.extend_from_slice(&0x000d_0003u32.to_le_bytes()); // VsmVpStatus
            Hypercall::slow(control::word(code, false, 0, 1), input)
        }
        _ => {
            input.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]); // VP 0 / TargetVtl 1
            Hypercall::slow(control::word(code, false, 0, 0), input)
        }
    };
    h.with_rax(marker(k))
}

/// One vCPU with Hyper-V, VSM enabled or not, that runs every call of [`CALLS`]; returns what
/// it recorded, the exits and the vCPU's hv_vtl_exits statistic.
fn run(vsm: bool) -> Result<(TestVm, Loaded, ExitLog, Result<u64>)> {
    let mut vm = TestVm::new(VmOptions {
        hyperv: true,
        ..Default::default()
    })?;
    if vsm {
        vtlkit_uapi::enable_hyperv_vsm(&vm.fd)?;
    }
    let i = vm.add_vcpu(0, Entry::HvMain)?;
    vm.set_vp_index(i, 0)?;
    let prog = (0..CALLS.len()).fold(Program::new(), |p, k| p.hcall(hcall(k)));
    let loaded = vm.load_hv_program(i, &prog)?;
    // The k-th exit gets CALLS[k]'s answer; a VtlCall exit also sets the guest's RAX and RCX.
    let log: ExitLog = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = std::sync::Arc::clone(&log);
    vm.on_hyperv_exit(move |ctx, exit| {
        if let hyperv::HypervExit::Hcall(h) = exit {
            let before = *h;
            let mut log = l.lock().unwrap_or_else(|p| p.into_inner());
            h.result = CALLS.get(log.len()).map_or(status::SUCCESS, |c| c.1);
            if h.code() == call::VTL_CALL {
                let mut regs = ctx.fd.get_regs().map_err(|e| {
                    anyhow!("KVM_GET_REGS on vCPU {} in its VtlCall exit: {e}", ctx.id)
                })?;
                regs.rax = VTL_CALL_RAX;
                regs.rcx = VTL_CALL_RCX;
                ctx.fd.set_regs(&regs).map_err(|e| {
                    anyhow!("KVM_SET_REGS on vCPU {} in its VtlCall exit: {e}", ctx.id)
                })?;
            }
            log.push((ctx.index, before));
        }
        Ok(())
    });
    let stats = Stats::open(&vm.vcpu(i)?.fd)?;
    match vm.run_vcpu(i)? {
        Ucall::Sync { stage, .. } if stage == ucall::STAGE_HV_READY => {}
        other => bail!("the guest setting up Hyper-V: {other}"),
    }
    vm.set_pcpu(i, pcpu::GO, 1)?;
    match vm.run_vcpu(i)? {
        Ucall::Sync { stage, .. } if stage == ucall::STAGE_HV_DONE => {}
        other => bail!("the guest running its hypercalls: {other}"),
    }
    let stat = stats.get("hv_vtl_exits");
    Ok((vm, loaded, log, stat))
}

/// With KVM_CAP_HYPERV_VSM, 0x0C 0x0D 0x0F 0x11 0x12 0x50 0x51 each exit to userspace once, with
/// the call as issued; the guest gets the host's answer in RAX, except for a successful
/// VtlCall/VtlReturn, whose RAX is what the host set (or left); RIP advances past each;
/// hv_vtl_exits counts them.
/// Without the cap each returns HV_STATUS_INVALID_HYPERCALL_CODE.
pub(super) fn hv_vsm_hypercalls_forwarded() -> TestResult {
    // Stock first.
    let (vm, loaded, log, stat) = run(false).context("without KVM_CAP_HYPERV_VSM")?;
    let mut failures = String::new();
    for (k, &(code, _)) in CALLS.iter().enumerate() {
        let out = loaded.outcome(&vm.mem, k)?;
        if !out.done || out.rax != status::INVALID_HYPERCALL_CODE {
            let _ = writeln!(
                failures,
                "call {code:#x} without the cap: finished {}, RAX {:#x}, expected status {:#x}",
                out.done,
                out.rax,
                status::INVALID_HYPERCALL_CODE
            );
        }
    }
    let seen = exits(&log);
    if !seen.is_empty() {
        let _ = writeln!(
            failures,
            "without the cap, calls exited to userspace: {seen:#x?}"
        );
    }
    match stat {
        Ok(0) => {}
        Ok(n) => {
            let _ = writeln!(failures, "hv_vtl_exits is {n} without the cap, expected 0");
        }
        Err(e) => {
            let _ = writeln!(failures, "{e:#}");
        }
    }
    if !failures.is_empty() {
        bail!("without KVM_CAP_HYPERV_VSM: {failures}");
    }
    drop(vm);

    let kvm = crate::vm::open_kvm()?;
    if !vtlkit_uapi::hyperv_vsm_supported(&kvm) {
        bail!("KVM_CHECK_EXTENSION(KVM_CAP_HYPERV_VSM) is 0: the kernel lacks the Hyper-V VTL patches");
    }
    let (vm, loaded, log, stat) = run(true).context("with KVM_CAP_HYPERV_VSM")?;
    let seen = exits(&log);
    let codes: Vec<u16> = seen.iter().map(|(_, h)| h.code()).collect();
    let want: Vec<u16> = CALLS.iter().map(|c| c.0).collect();
    if codes != want {
        let _ = writeln!(
            failures,
            "exits for codes {codes:#x?}, expected one per call: {want:#x?}"
        );
    }
    for (k, (&(code, _), (_, exit))) in CALLS.iter().zip(seen.iter()).enumerate() {
        let h = hcall(k);
        let rdx = loaded.rdx(k).unwrap_or(0);
        if exit.input != h.control || exit.params != [rdx, h.r8] || exit.flags != 0 {
            let _ = writeln!(
                failures,
                "call {code:#x}: exit control {:#x} params {:#x?} flags {:#x}, issued control {:#x} RDX {rdx:#x} R8 {:#x} (slow: flags 0)",
                exit.input, exit.params, exit.flags, h.control, h.r8
            );
        }
    }
    for (k, &(code, result)) in CALLS.iter().enumerate() {
        let out = loaded.outcome(&vm.mem, k)?;
        let (rax, rcx, why) = match code {
            _ if result != status::SUCCESS => (result, None, "the host's failure status"),
            call::VTL_CALL => (
                VTL_CALL_RAX,
                Some(VTL_CALL_RCX),
                "the RAX/RCX the host set with KVM_SET_REGS, not hcall.result",
            ),
            call::VTL_RETURN => (
                marker(k),
                Some(u64::from(code)),
                "RAX unchanged (hcall.result must not be written)",
            ),
            _ => (result, None, "the host's hcall.result"),
        };
        if !out.done {
            let _ = writeln!(failures, "call {code:#x}: the guest never got past it");
        } else if out.rax != rax || rcx.is_some_and(|c| c != out.rcx) {
            let _ = writeln!(
                failures,
                "call {code:#x} answered with hcall.result {result:#x}: the guest saw RAX {:#x} RCX {:#x}, expected {why}: RAX {rax:#x}{}",
                out.rax,
                out.rcx,
                rcx.map(|c| format!(" RCX {c:#x}")).unwrap_or_default()
            );
        }
    }
    match stat {
        Ok(n) if n == CALLS.len() as u64 => {}
        Ok(n) => {
            let _ = writeln!(
                failures,
                "hv_vtl_exits is {n}, expected {} (one per forwarded call)",
                CALLS.len()
            );
        }
        Err(e) => {
            let _ = writeln!(failures, "{e:#}");
        }
    }
    if !failures.is_empty() {
        bail!("with KVM_CAP_HYPERV_VSM: {failures}");
    }
    Ok(Outcome::Pass)
}
