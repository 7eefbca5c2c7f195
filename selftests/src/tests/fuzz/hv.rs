// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The fuzzer's Hyper-V part (series v3, issue 9), checked against the contract of
//! api.rst 7.38 (`KVM_CAP_HYPERV_VSM`): some irqchip VMs get the Hyper-V CPUID leaves, their vCPUs
//! a VP index (VTL siblings in different groups often share one) and an active SynIC; the
//! VM's model adds, per APIC group, `HV_X64_MSR_GUEST_OS_ID` and `HV_X64_MSR_HYPERCALL`, and
//! whether `KVM_CAP_HYPERV_VSM` is on.
//!
//! Operations (main thread, each checked at once):
//! * `KVM_ENABLE_CAP(KVM_CAP_HYPERV_VSM)` with zero (success, idempotent) and non-zero
//!   arguments (EINVAL), in any VM.
//! * Host `KVM_SET_MSRS` / `KVM_GET_MSRS` of GUEST_OS_ID and HYPERCALL: per group (a write
//!   through one vCPU is what every vCPU of its group reads, and no other group's value
//!   changes); on an unassigned vCPU both fail (0 MSRs processed).
//! * A Hyper-V hypercall asked of a running vCPU ([`fz::HV_REQ`]): HvCallSendSyntheticClusterIpi
//!   (0x0B) and ...Ex (0x15), slow and fast, with random HV_INPUT_VTL bytes (none, own VTL,
//!   another VTL, reserved bits), random RDX bits 63:40 in the fast forms, random VP sets and
//!   ALL; or a forwarded VSM call (0x0C 0x0D 0x0F 0x11 0x12 0x50 0x51), slow or fast, with
//!   random rep counts and variable header sizes. [`ipi_verdict`] / [`vsm_verdict`] say what
//!   must happen: a KVM hypercall (the sender's group has no guest OS ID), a status with
//!   nothing delivered, delivery to exactly the vCPUs of the sender's group whose VP index is
//!   in the set, or a `KVM_EXIT_HYPERV` exit, which the VM's handler answers with a random
//!   result (and, for VtlCall/VtlReturn, sometimes new RAX/RCX with `KVM_SET_REGS`); the guest
//!   must see exactly [`expected_regs`], the exit must carry the call as issued (XMM input for
//!   fast Ex IPIs and fast VSM calls), and `hv_vtl_exits` counts the exits.
//! * `KVM_IRQ_ROUTING_HV_SINT` routes with and without `KVM_HV_SINT_VALID_APIC_GROUP` (valid
//!   and invalid groups, the flag in VMs without groups, other flag bits) in the random tables
//!   (see `set_gsi_routing`), and a SINT probe route on [`SINT_GSI`] that names (group, VP):
//!   raised by irqfd or `KVM_IRQ_LINE_STATUS`, the one vCPU of that group with that VP index
//!   handles it, or nobody if there is none.
//!
//! Vectors: an IPI the host asks for carries [`vector::HV_IPI_BASE`] + the sender's group, and
//! every vCPU's handled count of each such vector is exact (model: [`VcpuModel::hv_ipis`]); the
//! SINT probe has its own exactly counted vector. Guests in a group with a guest OS ID also
//! send background Hyper-V IPIs (fast 0x0B and fast Ex to ALL, to their own VTL) with the
//! group's multicast vector, which must return status 0.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{kvm_enable_cap, kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;
use vtlkit_uapi::raw;

use super::{
    check_line_status, fz, handled, pulse_line, show, vector, Call, FuzzVm, Fuzzer, Route,
    VcpuModel, PROBE_TIMEOUT,
};
use crate::check;
use crate::guest::hvprog;
use crate::hyperv::{
    self, call, control, input_vtl, msr, send_ipi_ex_input, send_ipi_input, status, HcallExit,
    Hypercall, HypervExit, VpSet,
};
use crate::stats::Stats as KvmStats;
use crate::vm::{layout, GuestRecord, TestVm};

/// The SINT the probe route raises (programmed with [`vector::PROBE_SINT`] on every vCPU).
pub(super) const SINT_PROBE: u32 = 3;
/// The SINT random routes raise (programmed with the vCPU's group's multicast vector).
pub(super) const SINT_RANDOM: u32 = 5;
/// The SINT probe's GSI (after the MSI-route probe's), fired by the main thread only.
pub(super) const SINT_GSI: u32 = super::PROBE_GSI + 1;
/// VP indexes the fuzzer gives out: small, so that siblings and sets overlap often.
const MAX_VP: u32 = 8;
/// Hypercall pages (one per group) and per-vCPU request pages.
const HV_AREA: u64 = layout::DATA + 0x40000;
const _: () = assert!(
    super::FUZZ_TABLES + super::MAX_VCPUS as u64 * layout::PAGE <= HV_AREA
        && HV_AREA + 0x10000 + super::MAX_VCPUS as u64 * layout::PAGE <= layout::MEM_SIZE
);
/// Where a slow call's input block goes in the request page.
const INPUT_OFF: u64 = 0x800;
/// RAX before a hypercall: not a KVM hypercall number, so a `vmmcall` that is not a Hyper-V
/// hypercall (no guest OS ID in the group) returns -KVM_ENOSYS.
const RAX_MARK: u64 = 0xa5a5_0000_0000_0000;
/// -KVM_ENOSYS as RAX.
pub(super) const KVM_ENOSYS: u64 = (-1000i64) as u64;
/// RAX of the guests' background Hyper-V IPIs (see [`RAX_MARK`]).
pub(super) const BG_RAX: u64 = RAX_MARK;

/// The hypercall page GPA of group `g` (what the host writes to HV_X64_MSR_HYPERCALL).
fn hypercall_page(g: u32) -> u64 {
    HV_AREA + u64::from(g % 16) * layout::PAGE
}

/// vCPU index `i`'s request entry (its slow input at [`INPUT_OFF`]).
fn request_gpa(i: usize) -> u64 {
    HV_AREA + 0x10000 + i as u64 * layout::PAGE
}

/// The Hyper-V side of a VM's model.
pub(super) struct HvVm {
    /// The vCPUs have the Hyper-V CPUID leaves (and SynICs once they ran).
    pub(super) cpuid: bool,
    /// KVM_CAP_HYPERV_VSM enabled.
    pub(super) vsm: bool,
    /// Groups whose first vCPU to run gets a guest OS ID (Hyper-V hypercalls).
    pub(super) hv_groups: u32,
    /// Per group: HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL.
    pub(super) os_id: [u64; 16],
    pub(super) hypercall: [u64; 16],
    /// What the exit handler answers, and what it saw.
    pub(super) exchange: Arc<Mutex<Exchange>>,
    /// The main thread's irqfd on [`SINT_GSI`].
    pub(super) sint_irqfd: Option<vmm_sys_util::eventfd::EventFd>,
    /// (group, VP index) the route on [`SINT_GSI`] targets, if the table has one.
    pub(super) sint_probe: Option<(u32, u32)>,
}

impl HvVm {
    pub(super) fn new(cpuid: bool, hv_groups: u32) -> Self {
        HvVm {
            cpuid,
            vsm: false,
            hv_groups,
            os_id: [0; 16],
            hypercall: [0; 16],
            exchange: Arc::new(Mutex::new(Exchange::default())),
            sint_irqfd: None,
            sint_probe: None,
        }
    }
}

/// The answer to one planned HCALL exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Answer {
    /// `hcall.result`.
    pub(super) result: u64,
    /// RAX and RCX set with KVM_SET_REGS before resuming (VtlCall/VtlReturn only).
    pub(super) regs: Option<(u64, u64)>,
}

/// Shared by the main thread and the VM's exit handler.
#[derive(Default)]
pub(super) struct Exchange {
    /// (vCPU index, answer) of the exits the model predicts.
    planned: Vec<(usize, Answer)>,
    /// (vCPU index, exit as reported) of the exits answered.
    seen: Vec<(usize, HcallExit)>,
}

fn lock(x: &Mutex<Exchange>) -> std::sync::MutexGuard<'_, Exchange> {
    x.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answer HCALL exits of `vm`'s vCPUs as planned in `x`; an exit nobody planned fails its vCPU
/// (the main thread sees it as a stopped vCPU).
pub(super) fn install_handler(vm: &mut TestVm, x: &Arc<Mutex<Exchange>>) {
    let x = Arc::clone(x);
    vm.on_hyperv_exit(move |ctx, exit| {
        let HypervExit::Hcall(h) = exit else {
            return Ok(());
        };
        let mut g = lock(&x);
        let Some(pos) = g.planned.iter().position(|(i, _)| *i == ctx.index) else {
            bail!("KVM_EXIT_HYPERV {h}, but the model predicts no exit for this vCPU");
        };
        let (_, a) = g.planned.swap_remove(pos);
        if let Some((rax, rcx)) = a.regs {
            let mut regs = ctx
                .fd
                .get_regs()
                .map_err(|e| anyhow!("KVM_GET_REGS in the exit: {e}"))?;
            regs.rax = rax;
            regs.rcx = rcx;
            ctx.fd
                .set_regs(&regs)
                .map_err(|e| anyhow!("KVM_SET_REGS in the exit: {e}"))?;
        }
        let before = *h;
        h.result = a.result;
        g.seen.push((ctx.index, before));
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The model of one hypercall.

/// What must come of a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The sender's group has no guest OS ID: `vmmcall` is a KVM hypercall (RAX = -KVM_ENOSYS).
    Kvm,
    /// This status, nothing delivered, no exit.
    Status(u64),
    /// Status 0, delivered to the vCPUs of the sender's group whose VP index is in the set.
    Deliver,
    /// KVM_EXIT_HYPERV HCALL; the guest gets what the handler answers.
    Exit,
}

/// The sender as the model sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sender {
    /// The VM opted in to APIC groups.
    pub(super) opted: bool,
    /// KVM_CAP_HYPERV_VSM is enabled.
    pub(super) vsm: bool,
    /// Its group's guest OS ID is not 0.
    pub(super) os_id: bool,
    /// Its VTL label.
    pub(super) vtl: u8,
}

/// A synthetic cluster IPI (`ex`: 0x15, else 0x0B), `fast` with RDX `rdx`, naming `vtl_byte`
/// (slow: byte 4 of the input; fast: RDX 39:32).
pub(super) fn ipi_verdict(s: &Sender, ex: bool, fast: bool, rdx: u64, vtl_byte: u8) -> Verdict {
    if !s.os_id {
        return Verdict::Kvm;
    }
    if !s.opted {
        // Stock 6.12: the fast 0x0B wants RDX 63:32 zero; the VTL byte is ignored otherwise.
        if fast && !ex && rdx >> 32 != 0 {
            return Verdict::Status(status::INVALID_HYPERCALL_INPUT);
        }
        return Verdict::Deliver;
    }
    if (fast && rdx >> 40 != 0) || vtl_byte & 0xe0 != 0 {
        return Verdict::Status(status::INVALID_HYPERCALL_INPUT);
    }
    if vtl_byte & 0x10 == 0 || vtl_byte & 0xf == s.vtl {
        return Verdict::Deliver;
    }
    if s.vsm {
        Verdict::Exit
    } else {
        Verdict::Status(status::INVALID_PARAMETER)
    }
}

/// Control word bits the TLFS reserves (31:27, 47:44, 63:60): stock KVM fails the call with
/// HV_STATUS_INVALID_HYPERCALL_INPUT before looking at the code.
const CONTROL_RESERVED: u64 = 0xf000_f000_f800_0000;

/// A forwarded VSM call with `control`.
pub(super) fn vsm_verdict(s: &Sender, control: u64) -> Verdict {
    if !s.os_id {
        Verdict::Kvm
    } else if control & CONTROL_RESERVED != 0 {
        Verdict::Status(status::INVALID_HYPERCALL_INPUT)
    } else if s.vsm {
        Verdict::Exit
    } else {
        Verdict::Status(status::INVALID_HYPERCALL_CODE)
    }
}

fn is_vtl_switch(code: u16) -> bool {
    code == call::VTL_CALL || code == call::VTL_RETURN
}

/// RAX and RCX the guest must see after the call: a VtlCall/VtlReturn completed with a success
/// status (15:0 zero) leaves RAX as it was (or as the host set it), any other result is RAX.
pub(super) fn expected_regs(
    control: u64,
    rax_in: u64,
    verdict: Verdict,
    answer: Option<Answer>,
) -> (u64, u64) {
    match (verdict, answer) {
        (Verdict::Kvm, _) => (KVM_ENOSYS, control),
        (Verdict::Status(s), _) => (s, control),
        (Verdict::Deliver, _) => (status::SUCCESS, control),
        (Verdict::Exit, None) => (u64::MAX, control),
        (Verdict::Exit, Some(a)) => {
            let code = (control & 0xffff) as u16;
            let rcx = a.regs.map_or(control, |r| r.1);
            if is_vtl_switch(code) && a.result & 0xffff == 0 {
                (a.regs.map_or(rax_in, |r| r.0), rcx)
            } else {
                (a.result, rcx)
            }
        }
    }
}

/// Whether the exit of a call with `control` must carry the XMM input: every forwarded fast
/// hypercall does (the contract; the fast 0x0B has no XMM input, but its exit still copies
/// XMM0..5 and says so).
pub(super) fn exit_has_xmm(control: u64) -> bool {
    let code = (control & 0xffff) as u16;
    control & control::FAST != 0
        && (code == call::SEND_IPI_EX || code == call::SEND_IPI || is_vsm(code))
}

fn is_vsm(code: u16) -> bool {
    matches!(
        code,
        call::MODIFY_VTL_PROTECTION_MASK
            | call::ENABLE_PARTITION_VTL
            | call::ENABLE_VP_VTL
            | call::VTL_CALL
            | call::VTL_RETURN
            | call::GET_VP_REGISTERS
            | call::SET_VP_REGISTERS
    )
}

/// A random answer: success, success with other bits set, common failures, junk.
fn random_answer(rng: &mut super::Rng) -> u64 {
    match rng.below(8) {
        0 | 1 => status::SUCCESS,
        2 => rng.next_u64() & !0xffff,
        3 => status::ACCESS_DENIED,
        4 => 0x51,
        5 => status::INVALID_PARAMETER | (rng.below(0x1000) << 32),
        _ => rng.next_u64() | 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Host MSR access.

/// KVM_SET_MSRS of one MSR: how many MSRs KVM processed (1, or 0 when it stopped at it).
fn set_msr_n(fd: &VcpuFd, index: u32, data: u64) -> Result<usize> {
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(|e| anyhow!("Msrs: {e:?}"))?;
    fd.set_msrs(&msrs)
        .map_err(|e| anyhow!("KVM_SET_MSRS({index:#x} = {data:#x}): {e}"))
}

/// KVM_GET_MSRS of one MSR: Some(value), or None when KVM stopped at it.
fn get_msr_opt(fd: &VcpuFd, index: u32) -> Result<Option<u64>> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .map_err(|e| anyhow!("Msrs: {e:?}"))?;
    match fd.get_msrs(&mut msrs) {
        Ok(1) => Ok(Some(msrs.as_slice()[0].data)),
        Ok(0) => Ok(None),
        Ok(n) => bail!("KVM_GET_MSRS({index:#x}) read {n} MSRs of 1"),
        Err(e) => bail!("KVM_GET_MSRS({index:#x}): {e}"),
    }
}

fn msr_name(m: u32) -> &'static str {
    match m {
        msr::GUEST_OS_ID => "HV_X64_MSR_GUEST_OS_ID",
        msr::HYPERCALL => "HV_X64_MSR_HYPERCALL",
        _ => "MSR",
    }
}

/// A random non-zero guest OS ID.
fn random_os_id(rng: &mut super::Rng) -> u64 {
    hyperv::GUEST_OS_ID_LINUX ^ (rng.next_u64() & 0xffff_ffff) | 1 << 63
}

// ---------------------------------------------------------------------------------------------
// The operations.

impl FuzzVm {
    /// vCPUs a delivery can be waited for on: running their loop with interrupts enabled.
    fn takes_irqs(&self, i: usize) -> bool {
        let v = &self.vcpus[i];
        v.running && v.ran && v.steady
    }

    /// Indexes of the vCPUs of `group` with VP index `vp`.
    fn with_vp(&self, group: u32, vp: u32) -> Vec<usize> {
        (0..self.vcpus.len())
            .filter(|&i| self.vcpus[i].group() == Some(group) && self.vcpus[i].vp == vp)
            .collect()
    }

    fn sender(&self, i: usize) -> Option<Sender> {
        let a = self.vcpus[i].assigned?;
        Some(Sender {
            opted: self.plan.opted,
            vsm: self.hv.vsm,
            os_id: self.hv.os_id[(a.group % 16) as usize] != 0,
            vtl: a.vtl,
        })
    }
}

impl Fuzzer {
    /// Whether the kernel has series v3's Hyper-V uAPI (else this part stays off).
    pub(super) fn hv_on(&self) -> bool {
        self.hv_supported
    }

    /// KVM_ENABLE_CAP(KVM_CAP_HYPERV_VSM) with random arguments: EINVAL unless all are zero;
    /// success enables it (again).
    pub(super) fn enable_vsm(&mut self, k: usize) -> Result<()> {
        if !self.hv_on() {
            return Ok(());
        }
        let args = self.random_cap_args();
        let fvm = &self.vms[k];
        let cap = kvm_enable_cap {
            cap: raw::KVM_CAP_HYPERV_VSM,
            args,
            ..Default::default()
        };
        self.stats.count(Call::EnableCap);
        let r = fvm.vm.fd.enable_cap(&cap).map_err(|e| e.errno());
        let what = format!(
            "VM {}: KVM_ENABLE_CAP(KVM_CAP_HYPERV_VSM, args {args:x?}) [enabled before: {}]",
            fvm.serial, fvm.hv.vsm
        );
        self.note(format!("{what} -> {}", show(r.map(|()| 0))));
        match (r, args == [0; 4]) {
            (Ok(()), true) => {
                self.vms[k].hv.vsm = true;
                self.stats.add(&self.stats.vsm_enables, 1);
                Ok(())
            }
            (Err(libc::EINVAL), false) => Ok(()),
            (r, zero) => bail!(
                "{what}: got {}, expected {}",
                show(r.map(|()| 0)),
                if zero { "success" } else { "EINVAL" }
            ),
        }
    }

    /// Before vCPU `i` of a Hyper-V VM first runs: its VP index (another group's if possible,
    /// never one of its own group's), its SynIC and SINTs, and its group's guest OS ID if the
    /// group is one of the VM's Hyper-V groups and has none yet.
    pub(super) fn hv_prepare(&mut self, k: usize, i: usize) -> Result<()> {
        let fvm = &self.vms[k];
        let Some(g) = fvm.vcpus[i].group() else {
            bail!("VM {}: vCPU index {i} starts without a group", fvm.serial);
        };
        let taken: Vec<u32> = (0..fvm.vcpus.len())
            .filter(|&j| j != i && fvm.vcpus[j].group() == Some(g))
            .map(|j| fvm.vcpus[j].vp)
            .collect();
        let siblings: Vec<u32> = fvm
            .vcpus
            .iter()
            .filter(|v| v.group().is_some_and(|h| h != g))
            .map(|v| v.vp)
            .filter(|vp| !taken.contains(vp))
            .collect();
        let free: Vec<u32> = (0..MAX_VP).filter(|vp| !taken.contains(vp)).collect();
        let vp = match self.rng.pick(&siblings) {
            Some(vp) if !self.rng.one_in(3) => vp,
            _ => match self.rng.pick(&free) {
                Some(vp) => vp,
                None => (MAX_VP..).find(|vp| !taken.contains(vp)).unwrap_or(MAX_VP),
            },
        };
        let serial = fvm.serial;
        let id = fvm.vcpus[i].id;
        let fd = fvm.fd(i)?;
        self.stats.count(Call::SetMsrs);
        hyperv::set_vp_index(fd, vp).with_context(|| format!("VM {serial} vCPU {id}"))?;
        hyperv::enable_synic(fd).with_context(|| format!("VM {serial} vCPU {id}"))?;
        let sints = [
            (msr::SCONTROL, 1),
            (msr::sint(SINT_PROBE), u64::from(vector::PROBE_SINT)),
            (msr::sint(SINT_RANDOM), u64::from(super::mc_vector(g))),
        ];
        for (m, val) in sints {
            self.stats.count(Call::SetMsrs);
            hyperv::set_msr(fd, m, val).with_context(|| format!("VM {serial} vCPU {id}"))?;
        }
        let gi = (g % 16) as usize;
        let first = !fvm.vcpus.iter().any(|v| v.group() == Some(g) && v.ran);
        let mut os = None;
        if first && fvm.hv.hv_groups & (1 << gi) != 0 && fvm.hv.os_id[gi] == 0 {
            let v = random_os_id(&mut self.rng);
            self.stats.count(Call::SetMsrs);
            hyperv::set_msr(fd, msr::GUEST_OS_ID, v)
                .with_context(|| format!("VM {serial} vCPU {id}: its group's guest OS ID"))?;
            os = Some(v);
        }
        let fvm = &mut self.vms[k];
        if let Some(v) = os {
            fvm.hv.os_id[gi] = v;
        }
        let m = &mut fvm.vcpus[i];
        m.vp = vp;
        m.synic = true;
        self.note(format!(
            "VM {serial} vCPU {id}: VP index {vp}, SynIC on (SINT {SINT_PROBE} -> {:#x}, SINT {SINT_RANDOM} -> {:#x}){}",
            vector::PROBE_SINT,
            super::mc_vector(g),
            os.map(|v| format!(", group {g} GUEST_OS_ID {v:#x}"))
                .unwrap_or_default()
        ));
        Ok(())
    }

    /// Host writes and reads of GUEST_OS_ID and HYPERCALL on an idle vCPU: per group, and
    /// refused on an unassigned vCPU. A group's guest OS ID only changes between zero and
    /// non-zero before any of its vCPUs ran (their send tables depend on it).
    pub(super) fn hv_msrs(&mut self, k: usize) -> Result<()> {
        if !self.hv_on() || !self.vms[k].hv.cpuid {
            return Ok(());
        }
        let Some(i) = self.idle_vcpu(k) else {
            return Ok(());
        };
        self.stats.add(&self.stats.hv_msr_ops, 1);
        let fvm = &self.vms[k];
        let serial = fvm.serial;
        let id = fvm.vcpus[i].id;
        let Some(g) = fvm.vcpus[i].group() else {
            // Unassigned: no group, no copy.
            let (m, v) = if self.rng.one_in(2) {
                (msr::GUEST_OS_ID, random_os_id(&mut self.rng))
            } else {
                (msr::HYPERCALL, hypercall_page(0) | hyperv::HYPERCALL_ENABLE)
            };
            let fd = fvm.fd(i)?;
            self.stats.count(Call::SetMsrs);
            let n = set_msr_n(fd, m, v)?;
            self.stats.count(Call::GetMsrs);
            let got = get_msr_opt(fd, m)?;
            let what = format!(
                "VM {serial} vCPU {id} (unassigned): host KVM_SET_MSRS({} = {v:#x}) -> {n} set, KVM_GET_MSRS -> {got:#x?}",
                msr_name(m)
            );
            self.note(what.clone());
            check!(
                n == 0 && got.is_none(),
                "{what}: a vCPU without a group has no copy of the per-group Hyper-V MSRs; both must fail (0 MSRs processed)"
            );
            return Ok(());
        };
        let gi = (g % 16) as usize;
        let locked = fvm.vcpus.iter().any(|v| v.group() == Some(g) && v.ran);
        match self.rng.below(3) {
            0 => {
                let on = if locked {
                    fvm.hv.os_id[gi] != 0
                } else {
                    self.rng.one_in(2)
                };
                let v = if on { random_os_id(&mut self.rng) } else { 0 };
                self.hv_write(k, i, msr::GUEST_OS_ID, v)?;
                let hv = &mut self.vms[k].hv;
                hv.os_id[gi] = v;
                if v == 0 {
                    hv.hypercall[gi] &= !hyperv::HYPERCALL_ENABLE;
                }
            }
            1 => {
                let page = hypercall_page(g);
                let v = self
                    .rng
                    .pick(&[0, page, page | hyperv::HYPERCALL_ENABLE])
                    .unwrap_or(0);
                self.hv_write(k, i, msr::HYPERCALL, v)?;
                let hv = &mut self.vms[k].hv;
                // Without a guest OS ID the write is ignored (stock: hypercalls stay off).
                if hv.os_id[gi] != 0 {
                    hv.hypercall[gi] = v;
                }
            }
            _ => {}
        }
        self.hv_check_msrs(k)
    }

    fn hv_write(&mut self, k: usize, i: usize, m: u32, v: u64) -> Result<()> {
        let fvm = &self.vms[k];
        let what = format!(
            "VM {} vCPU {} ({:?}): host KVM_SET_MSRS({} = {v:#x})",
            fvm.serial,
            fvm.vcpus[i].id,
            fvm.vcpus[i].assigned,
            msr_name(m)
        );
        self.stats.count(Call::SetMsrs);
        let n = set_msr_n(fvm.fd(i)?, m, v)?;
        self.note(format!("{what} -> {n}"));
        check!(n == 1, "{what}: {n} MSRs processed, expected 1");
        Ok(())
    }

    /// Every idle vCPU reads its group's GUEST_OS_ID and HYPERCALL (an unassigned one none).
    fn hv_check_msrs(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        for (i, v) in fvm.vcpus.iter().enumerate() {
            if v.running {
                continue;
            }
            let fd = fvm.fd(i)?;
            for m in [msr::GUEST_OS_ID, msr::HYPERCALL] {
                self.stats.count(Call::GetMsrs);
                let got = get_msr_opt(fd, m)?;
                let want = v.group().map(|g| {
                    let gi = (g % 16) as usize;
                    if m == msr::GUEST_OS_ID {
                        fvm.hv.os_id[gi]
                    } else {
                        fvm.hv.hypercall[gi]
                    }
                });
                check!(
                    got == want,
                    "VM {} vCPU {} ({:?}): host KVM_GET_MSRS({}) = {got:#x?}, expected {want:#x?} (per-group values: GUEST_OS_ID {:#x?}, HYPERCALL {:#x?})",
                    fvm.serial,
                    v.id,
                    v.assigned,
                    msr_name(m),
                    fvm.hv.os_id,
                    fvm.hv.hypercall
                );
            }
        }
        Ok(())
    }

    /// A Hyper-V hypercall asked of a running, interruptible vCPU of a Hyper-V VM: a synthetic
    /// cluster IPI or a forwarded VSM call, checked against the model.
    pub(super) fn hv_call(&mut self, k: usize) -> Result<()> {
        if !self.hv_on() || !self.vms[k].hv.cpuid {
            return Ok(());
        }
        let fvm = &self.vms[k];
        let senders: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&i| fvm.takes_irqs(i) && fvm.vcpus[i].assigned.is_some())
            .collect();
        let Some(s) = self.rng.pick(&senders) else {
            return Ok(());
        };
        // A burst: the sender is running now, which took a while to arrange.
        for _ in 0..1 + self.rng.below(4) {
            let Some(sender) = self.vms[k].sender(s) else {
                return Ok(());
            };
            let rax_in = RAX_MARK | (self.rng.next_u64() & 0xffff_ffff);
            if self.rng.below(10) < 7 {
                self.hv_ipi(k, s, sender, rax_in)?;
            } else {
                self.hv_vsm(k, s, sender, rax_in)?;
            }
        }
        Ok(())
    }

    fn hv_ipi(&mut self, k: usize, s: usize, sender: Sender, rax_in: u64) -> Result<()> {
        let fvm = &self.vms[k];
        let Some(g) = fvm.vcpus[s].group() else {
            return Ok(());
        };
        let ex = self.rng.one_in(2);
        let fast = self.rng.one_in(2);
        let own = sender.vtl;
        let other = (own + 1 + self.rng.below(15) as u8) & 0xf;
        let vtl_byte = match self.rng.below(10) {
            0..=2 => 0,
            3..=4 => input_vtl(own, true),
            5..=7 => input_vtl(other, true),
            8 => input_vtl(self.rng.below(16) as u8, false),
            _ => (self.rng.next_u32() as u8) | (0x20 << self.rng.below(3)),
        };
        let rdx_high = if fast && self.rng.one_in(8) {
            1u64 << (40 + self.rng.below(24))
        } else {
            0
        };
        let vec = super::hv_ipi_vector(g);
        let fast_rdx = u64::from(vec) | u64::from(vtl_byte) << 32 | rdx_high;
        let verdict = ipi_verdict(&sender, ex, fast, fast_rdx, vtl_byte);
        let delivers = verdict == Verdict::Deliver;
        // The VP set: when it delivers, only VPs whose vCPUs in the group take interrupts now
        // (or that no vCPU of the group has), so that every delivery can be waited for.
        let members: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&i| fvm.vcpus[i].group() == Some(g))
            .collect();
        let blocked: Vec<u32> = members
            .iter()
            .filter(|&&i| !fvm.takes_irqs(i))
            .map(|&i| fvm.vcpus[i].vp)
            .collect();
        let set = if ex && (!delivers || blocked.is_empty()) && self.rng.one_in(4) {
            VpSet::All
        } else {
            // Mostly the group's VPs, sometimes VPs nobody in the group has.
            let own: Vec<u32> = members.iter().map(|&i| fvm.vcpus[i].vp).collect();
            let mut vps: Vec<u32> = (0..MAX_VP + 2)
                .filter(|vp| !(delivers && blocked.contains(vp)))
                .filter(|vp| {
                    if own.contains(vp) {
                        !self.rng.one_in(3)
                    } else {
                        self.rng.one_in(4)
                    }
                })
                .collect();
            if ex && self.rng.one_in(6) {
                vps.push(64 + self.rng.below_u32(64));
            }
            VpSet::Sparse(vps)
        };
        let mask = match &set {
            VpSet::All => u64::MAX,
            VpSet::Sparse(v) => v.iter().filter(|&&vp| vp < 64).fold(0, |m, vp| m | 1 << vp),
        };
        let receivers: Vec<usize> = if delivers {
            members
                .iter()
                .copied()
                .filter(|&i| match &set {
                    VpSet::All => true,
                    VpSet::Sparse(v) => v.contains(&fvm.vcpus[i].vp),
                })
                .collect()
        } else {
            Vec::new()
        };
        if let Some(&bad) = receivers.iter().find(|&&i| !fvm.takes_irqs(i)) {
            bail!(
                "fuzzer bug: VM {} vCPU index {bad} receives a Hyper-V IPI but does not take interrupts",
                fvm.serial
            );
        }
        let mut filler = [0u64; 12];
        for q in filler.iter_mut() {
            *q = self.rng.next_u64();
        }
        let code = if ex {
            call::SEND_IPI_EX
        } else {
            call::SEND_IPI
        };
        let h = match (ex, fast) {
            (false, false) => Hypercall::slow(
                control::word(code, false, 0, 0),
                send_ipi_input(vec.into(), vtl_byte, mask),
            ),
            (false, true) => {
                Hypercall::fast(control::word(code, false, 0, 0), fast_rdx, mask, filler)
            }
            (true, false) => {
                let (input, var) = send_ipi_ex_input(vec.into(), vtl_byte, &set);
                Hypercall::slow(control::word(code, false, var, 0), input)
            }
            (true, true) => {
                let (format, bank_mask, banks) = set.encode();
                let mut xmm = filler;
                xmm[0] = bank_mask;
                for (n, b) in banks.iter().enumerate() {
                    xmm[1 + n] = *b;
                }
                Hypercall::fast(
                    control::word(code, false, banks.len() as u64, 0),
                    fast_rdx,
                    format,
                    xmm,
                )
            }
        }
        .with_rax(rax_in);
        let answer = (verdict == Verdict::Exit).then(|| Answer {
            result: random_answer(&mut self.rng),
            regs: None,
        });
        let what = format!(
            "VM {} vCPU {} ({:?}, VP {}): {} {}, VTL byte {vtl_byte:#x}, RDX {:#x}, {set:?} [{sender:?}, group VPs {:?}] -> expect {verdict:?}{}",
            fvm.serial,
            fvm.vcpus[s].id,
            fvm.vcpus[s].assigned,
            fvm.vcpus[s].vp,
            if ex { "SendSyntheticClusterIpiEx" } else { "SendSyntheticClusterIpi" },
            if fast { "fast" } else { "slow" },
            if fast { fast_rdx } else { 0 },
            members.iter().map(|&i| (fvm.vcpus[i].id, fvm.vcpus[i].vp)).collect::<Vec<_>>(),
            match answer {
                Some(a) => format!(" answered {:#x}", a.result),
                None if delivers => format!(
                    " to vCPUs {:?} on vector {vec:#x}",
                    receivers.iter().map(|&i| fvm.vcpus[i].id).collect::<Vec<_>>()
                ),
                None => String::new(),
            }
        );
        let before: Vec<u32> = receivers
            .iter()
            .map(|&r| handled(&fvm.mem, r, vec))
            .collect::<Result<_>>()?;
        self.stats.add(&self.stats.hv_ipis, 1);
        self.hv_issue(k, s, &h, verdict, answer, &what)?;
        for (&r, &b) in receivers.iter().zip(&before) {
            self.wait_handled(k, r, vec, b, &what)?;
            self.vms[k].vcpus[r].hv_ipis += 1;
            self.stats.add(&self.stats.hv_ipi_deliveries, 1);
        }
        // Nobody else may have it: every vCPU's count of every Hyper-V IPI vector is exact.
        let fvm = &self.vms[k];
        for i in 0..fvm.vcpus.len() {
            super::check_vcpu(fvm, i, None, None).with_context(|| what.clone())?;
        }
        Ok(())
    }

    fn hv_vsm(&mut self, k: usize, s: usize, sender: Sender, rax_in: u64) -> Result<()> {
        let code = self
            .rng
            .pick(&[
                call::MODIFY_VTL_PROTECTION_MASK,
                call::ENABLE_PARTITION_VTL,
                call::ENABLE_VP_VTL,
                call::VTL_CALL,
                call::VTL_RETURN,
                call::GET_VP_REGISTERS,
                call::SET_VP_REGISTERS,
            ])
            .unwrap_or(call::VTL_CALL);
        let fast = self.rng.one_in(2);
        let reps = if self.rng.one_in(3) {
            1 + self.rng.below(4)
        } else {
            0
        };
        let var = if self.rng.one_in(4) {
            1 + self.rng.below(3)
        } else {
            0
        };
        let mut ctl = control::word(code, false, var, reps);
        if reps > 0 && self.rng.one_in(4) {
            ctl |= self.rng.below(reps) << 48;
        }
        if self.rng.one_in(16) {
            ctl |= 1 << (self.rng.pick(&[27u64, 31, 44, 47, 60, 63]).unwrap_or(63));
        }
        let mut xmm = [0u64; 12];
        for q in xmm.iter_mut() {
            *q = self.rng.next_u64();
        }
        let h = if fast {
            Hypercall::fast(ctl, self.rng.next_u64(), self.rng.next_u64(), xmm)
        } else {
            let len = 8 * (2 + self.rng.below(6)) as usize;
            let input: Vec<u8> = (0..len).map(|_| self.rng.next_u32() as u8).collect();
            let mut h = Hypercall::slow(ctl, input);
            h.r8 = request_gpa(s) + 0xc00;
            h
        }
        .with_rax(rax_in);
        let verdict = vsm_verdict(&sender, h.control);
        let answer = (verdict == Verdict::Exit).then(|| Answer {
            result: random_answer(&mut self.rng),
            regs: (is_vtl_switch(code) && self.rng.one_in(2))
                .then(|| (self.rng.next_u64(), self.rng.next_u64())),
        });
        let fvm = &self.vms[k];
        let what = format!(
            "VM {} vCPU {} ({:?}): VSM hypercall {code:#x} control {:#x} RAX {rax_in:#x} [{sender:?}] -> expect {verdict:?}{}",
            fvm.serial,
            fvm.vcpus[s].id,
            fvm.vcpus[s].assigned,
            h.control,
            answer
                .map(|a| format!(" answered {:#x}, regs {:#x?}", a.result, a.regs))
                .unwrap_or_default()
        );
        self.stats.add(&self.stats.hv_vsm_calls, 1);
        self.hv_issue(k, s, &h, verdict, answer, &what)
    }

    /// Have vCPU `s` issue `h`; check RAX/RCX after it and the exit (if the model predicts one).
    fn hv_issue(
        &mut self,
        k: usize,
        s: usize,
        h: &Hypercall,
        verdict: Verdict,
        answer: Option<Answer>,
        what: &str,
    ) -> Result<()> {
        self.note(what.to_string());
        let fvm = &self.vms[k];
        let mem = &fvm.mem;
        let e = request_gpa(s);
        mem.write(e, &[0u8; hvprog::ENTRY_SIZE as usize])?;
        let mut rdx = h.rdx;
        if let Some(input) = &h.input {
            mem.write(e + INPUT_OFF, input)?;
            rdx = e + INPUT_OFF;
        }
        mem.write_u64(e + hvprog::CONTROL, h.control)?;
        mem.write_u64(e + hvprog::RDX, rdx)?;
        mem.write_u64(e + hvprog::R8, h.r8)?;
        mem.write_u64(e + hvprog::RAX_IN, h.rax)?;
        for (n, q) in h.xmm.iter().enumerate() {
            mem.write_u64(e + hvprog::XMM + 8 * n as u64, *q)?;
        }
        {
            let mut x = lock(&fvm.hv.exchange);
            x.planned.retain(|(i, _)| *i != s);
            x.seen.retain(|(i, _)| *i != s);
            if let Some(a) = answer {
                x.planned.push((s, a));
            }
        }
        self.stats.add(&self.stats.hv_calls, 1);
        let req = TestVm::pcpu_gpa(s) + fz::HV_REQ;
        mem.write_u64(req, e)?;
        let batch = fvm
            .batch_of(s)
            .ok_or_else(|| anyhow!("{what}: the sender is not running"))?;
        let done = batch
            .running
            .wait_until(PROBE_TIMEOUT, || Ok(mem.read_u64(req)? == 0))
            .with_context(|| what.to_string())?;
        if !done {
            let rec = GuestRecord::read(mem, s)
                .map(|r| r.to_string())
                .unwrap_or_else(|e| format!("guest record unreadable: {e:#}"));
            bail!(
                "{what}: the sender did not finish the hypercall within {PROBE_TIMEOUT:?}; {rec}"
            );
        }
        let got = (
            mem.read_u64(e + hvprog::RESULT)?,
            mem.read_u64(e + hvprog::RCX_OUT)?,
        );
        let (planned_left, seen) = {
            let mut x = lock(&fvm.hv.exchange);
            let left = x.planned.iter().any(|(i, _)| *i == s);
            x.planned.retain(|(i, _)| *i != s);
            let seen: Vec<HcallExit> = x
                .seen
                .iter()
                .filter(|(i, _)| *i == s)
                .map(|(_, h)| *h)
                .collect();
            x.seen.retain(|(i, _)| *i != s);
            (left, seen)
        };
        let want = expected_regs(h.control, h.rax, verdict, answer);
        check!(
            got == want,
            "{what}: the guest saw RAX {:#x} RCX {:#x}, expected RAX {:#x} RCX {:#x}",
            got.0,
            got.1,
            want.0,
            want.1
        );
        if verdict != Verdict::Exit {
            // An unplanned exit fails the vCPU in the handler, so there can be none here.
            return Ok(());
        }
        check!(
            !planned_left && seen.len() == 1,
            "{what}: expected one KVM_EXIT_HYPERV HCALL, got {} ({seen:#x?})",
            seen.len()
        );
        let x = seen[0];
        let xmm = exit_has_xmm(h.control);
        let mut bad = Vec::new();
        if x.input != h.control {
            bad.push(format!("control {:#x}, issued {:#x}", x.input, h.control));
        }
        if x.params != [rdx, h.r8] {
            bad.push(format!(
                "params {:#x?}, issued RDX {rdx:#x} R8 {:#x}",
                x.params, h.r8
            ));
        }
        let want_flags = if xmm {
            raw::KVM_HYPERV_HCALL_XMM_INPUT
        } else {
            0
        };
        if x.flags != want_flags {
            bad.push(format!("flags {:#x}, expected {want_flags:#x}", x.flags));
        }
        if xmm && x.xmm != h.xmm {
            bad.push(format!(
                "xmm {:#x?}, the guest's XMM0..5 were {:#x?}",
                x.xmm, h.xmm
            ));
        }
        check!(bad.is_empty(), "{what}: the exit has {}", bad.join("; "));
        self.vms[k].vcpus[s].hv_exits += 1;
        self.stats.add(&self.stats.hv_exits, 1);
        Ok(())
    }

    /// Fire [`SINT_GSI`]: with a route to (group, VP) whose one vCPU takes interrupts, by irqfd
    /// or KVM_IRQ_LINE_STATUS (status 1), and it handles the SINT probe vector in time; with a
    /// route to a (group, VP) that has no vCPU with a SynIC, or no route, by
    /// KVM_IRQ_LINE_STATUS, and nobody gets it.
    pub(super) fn probe_sint(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !self.hv_supported || !fvm.plan.irqchip {
            return Ok(());
        }
        let routed = fvm.routes.iter().flatten().any(|r| r.gsi() == SINT_GSI);
        let target = match fvm.hv.sint_probe {
            Some((g, vp)) => match fvm.with_vp(g, vp).as_slice() {
                [] => None,
                [t] if !fvm.vcpus[*t].synic => None,
                [t] if fvm.takes_irqs(*t) => Some(*t),
                // Pending on a vCPU that is not running, or ambiguous: not now.
                _ => return Ok(()),
            },
            None if routed => bail!(
                "VM {}: model: GSI {SINT_GSI} routed without a SINT probe",
                fvm.serial
            ),
            None => None,
        };
        let by_irqfd = target.is_some() && fvm.hv.sint_irqfd.is_some() && self.rng.one_in(2);
        let before = match target {
            Some(t) => handled(&fvm.mem, t, vector::PROBE_SINT)?,
            None => 0,
        };
        let what = format!(
            "VM {}: SINT probe on GSI {SINT_GSI} by {} [route {:?}, target {}]",
            fvm.serial,
            if by_irqfd {
                "irqfd"
            } else {
                "KVM_IRQ_LINE_STATUS"
            },
            fvm.hv.sint_probe,
            match target {
                Some(t) => format!("vCPU {}", fvm.vcpus[t].id),
                None => "none".into(),
            }
        );
        self.stats.add(&self.stats.sint_raises, 1);
        if by_irqfd {
            if let Some(efd) = &fvm.hv.sint_irqfd {
                efd.write(1)
                    .map_err(|e| anyhow!("{what}: irqfd write: {e}"))?;
                self.stats.add(&self.stats.irqfd_writes, 1);
            }
            self.note(what.clone());
        } else {
            let st = pulse_line(&fvm.vm.fd, &self.stats, SINT_GSI, &what)?;
            self.note(format!("{what} -> {st}"));
            check_line_status(&what, st, target.is_some())?;
        }
        if let Some(t) = target {
            self.wait_handled(k, t, vector::PROBE_SINT, before, &what)?;
            self.vms[k].vcpus[t].probes[3] += 1;
            self.stats.add(&self.stats.sint_deliveries, 1);
        }
        Ok(())
    }

    /// A random KVM_IRQ_ROUTING_HV_SINT entry for GSI `gsi` of the random span, its model and
    /// description, and whether KVM must refuse it.
    pub(super) fn random_sint_route(
        &mut self,
        k: usize,
        gsi: u32,
    ) -> (kvm_bindings::kvm_irq_routing_entry, Route, String, bool) {
        let plan = self.vms[k].plan;
        let vp = self.rng.below_u32(MAX_VP + 1);
        let sint = if self.rng.one_in(4) { 7 } else { SINT_RANDOM };
        let group = match self.rng.below(8) {
            0 => plan.groups,
            1 => u32::MAX,
            2 => self.rng.next_u32(),
            _ => self.rng.below_u32(plan.groups.clamp(1, 4)),
        };
        let (flagged, other_bit) = match self.rng.below(10) {
            0..=3 => (false, false),
            4..=8 => (true, false),
            _ => (self.rng.one_in(2), true),
        };
        let mut e = hyperv::sint_route(gsi, vp, sint, flagged.then_some(group));
        if other_bit {
            e.flags |= 1 << self.rng.pick(&[0u32, 2, 5, 31]).unwrap_or(0);
        }
        let invalid = other_bit || (flagged && (!plan.opted || group >= plan.groups));
        let model_group = if flagged { group } else { 0 };
        let desc = format!(
            "{gsi}:hv_sint vp {vp} sint {sint} flags {:#x} apic_group {group:#x}",
            e.flags
        );
        (
            e,
            Route::Sint {
                gsi,
                group: model_group,
                vp,
                sint,
            },
            desc,
            invalid,
        )
    }

    /// The SINT probe route for a new table: to the one vCPU of some (group, VP) that takes
    /// interrupts and has a SynIC, or to a (group, VP) without vCPUs.
    pub(super) fn sint_probe_route(
        &mut self,
        k: usize,
    ) -> Option<(
        kvm_bindings::kvm_irq_routing_entry,
        Route,
        String,
        (u32, u32),
    )> {
        let fvm = &self.vms[k];
        if !fvm.hv.cpuid {
            return None;
        }
        let plan = fvm.plan;
        let targets: Vec<(u32, u32)> = (0..fvm.vcpus.len())
            .filter(|&i| fvm.takes_irqs(i) && fvm.vcpus[i].synic)
            .filter_map(|i| {
                let g = fvm.vcpus[i].group()?;
                let vp = fvm.vcpus[i].vp;
                (fvm.with_vp(g, vp).len() == 1).then_some((g, vp))
            })
            .collect();
        let (g, vp) = match self.rng.pick(&targets) {
            Some(t) if !self.rng.one_in(4) => t,
            _ => {
                let g = if plan.opted {
                    self.rng.below_u32(plan.groups.clamp(1, 4))
                } else {
                    0
                };
                let vp = MAX_VP + 1 + self.rng.below_u32(4);
                (g, vp)
            }
        };
        let flagged = plan.opted && (g != 0 || self.rng.one_in(2));
        let e = hyperv::sint_route(SINT_GSI, vp, SINT_PROBE, flagged.then_some(g));
        let desc = format!("{SINT_GSI}:hv_sint probe to group {g} VP {vp} (flagged {flagged})");
        Some((
            e,
            Route::Sint {
                gsi: SINT_GSI,
                group: g,
                vp,
                sint: SINT_PROBE,
            },
            desc,
            (g, vp),
        ))
    }
}

/// KVM_IRQ_LINE_STATUS on a random SINT route: at most one vCPU takes it, and none unless the
/// route's (group, VP) has a vCPU with a SynIC and the SINT is one that is programmed.
pub(super) fn check_sint_line(
    fvm: &FuzzVm,
    what: &str,
    status: i32,
    group: u32,
    vp: u32,
    sint: u32,
) -> Result<()> {
    let can = sint == SINT_RANDOM
        && fvm
            .vcpus
            .iter()
            .any(|v: &VcpuModel| v.group() == Some(group) && v.vp == vp && v.synic);
    check!(
        status <= 1,
        "{what}: {status} vCPUs took a SINT, at most one can"
    );
    check!(
        can || status <= 0,
        "{what}: returned {status}, but no vCPU of group {group} with VP index {vp} has an active SynIC with SINT {sint} programmed"
    );
    Ok(())
}

/// The statistic hv_vtl_exits of a stopped vCPU must count the exits the model saw.
pub(super) fn check_exit_stat(fvm: &FuzzVm, i: usize) -> Result<()> {
    let v = &fvm.vcpus[i];
    if !fvm.hv.cpuid {
        return Ok(());
    }
    let fd = fvm.fd(i)?;
    let got = KvmStats::open(fd)?.get("hv_vtl_exits")?;
    check!(
        got == v.hv_exits,
        "VM {} vCPU {}: statistic hv_vtl_exits is {got}, but {} cross-VTL IPI and VSM hypercall exits were answered",
        fvm.serial,
        v.id,
        v.hv_exits
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(opted: bool, vsm: bool, os_id: bool, vtl: u8) -> Sender {
        Sender {
            opted,
            vsm,
            os_id,
            vtl,
        }
    }

    #[test]
    fn ipi_verdicts_follow_the_contract() {
        let g = s(true, false, true, 1);
        // No target VTL, or the sender's own: delivered in the kernel.
        assert_eq!(ipi_verdict(&g, false, false, 0, 0), Verdict::Deliver);
        assert_eq!(
            ipi_verdict(&g, true, true, 1 << 32 | 0x40, 0x01),
            Verdict::Deliver
        );
        assert_eq!(ipi_verdict(&g, true, false, 0, 0x11), Verdict::Deliver);
        // Reserved bits and RDX 63:40.
        for b in [0x20u8, 0x40, 0x80, 0xf1] {
            assert_eq!(ipi_verdict(&g, false, false, 0, b), Verdict::Status(3));
        }
        assert_eq!(ipi_verdict(&g, false, true, 1 << 40, 0), Verdict::Status(3));
        // Another VTL: 5 without VSM, an exit with it.
        assert_eq!(ipi_verdict(&g, true, false, 0, 0x10), Verdict::Status(5));
        let v = s(true, true, true, 1);
        assert_eq!(ipi_verdict(&v, true, false, 0, 0x12), Verdict::Exit);
        // Stock without groups: the fast 0x0B rejects RDX 63:32, the rest ignore the VTL.
        let stock = s(false, true, true, 0);
        assert_eq!(
            ipi_verdict(&stock, false, true, 0x10 << 32, 0x10),
            Verdict::Status(3)
        );
        assert_eq!(
            ipi_verdict(&stock, true, true, 0x10 << 32, 0x10),
            Verdict::Deliver
        );
        assert_eq!(ipi_verdict(&stock, false, false, 0, 0xff), Verdict::Deliver);
        // No guest OS ID: not a Hyper-V hypercall.
        assert_eq!(
            ipi_verdict(&s(true, true, false, 0), false, false, 0, 0x20),
            Verdict::Kvm
        );
    }

    #[test]
    fn vsm_verdicts_and_registers() {
        let on = s(false, true, true, 0);
        let off = s(true, false, true, 0);
        let c = control::word(call::VTL_CALL, false, 0, 0);
        assert_eq!(vsm_verdict(&on, c), Verdict::Exit);
        assert_eq!(vsm_verdict(&off, c), Verdict::Status(2));
        assert_eq!(vsm_verdict(&on, c | 1 << 63), Verdict::Status(3));
        assert_eq!(vsm_verdict(&s(true, true, false, 0), c), Verdict::Kvm);
        let ok = Answer {
            result: 0x5_0000,
            regs: None,
        };
        // A successful VtlCall leaves RAX; a failed one reports it; other calls always do.
        assert_eq!(expected_regs(c, 7, Verdict::Exit, Some(ok)), (7, c));
        let set = Answer {
            result: 0,
            regs: Some((1, 2)),
        };
        assert_eq!(expected_regs(c, 7, Verdict::Exit, Some(set)), (1, 2));
        let failed = Answer {
            result: 0x6,
            regs: Some((1, 2)),
        };
        assert_eq!(expected_regs(c, 7, Verdict::Exit, Some(failed)), (6, 2));
        let e = control::word(call::ENABLE_VP_VTL, true, 0, 0);
        assert_eq!(expected_regs(e, 7, Verdict::Exit, Some(ok)), (0x5_0000, e));
        assert_eq!(expected_regs(e, 7, Verdict::Kvm, None), (KVM_ENOSYS, e));
        assert!(exit_has_xmm(e));
        assert!(exit_has_xmm(control::word(call::SEND_IPI, true, 0, 0)));
        assert!(exit_has_xmm(control::word(call::SEND_IPI_EX, true, 0, 0)));
        assert!(!exit_has_xmm(control::word(call::SEND_IPI_EX, false, 0, 0)));
    }
}
