// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! HvCallVtlCall and HvCallVtlReturn: switching a VP to another sibling vCPU.
//!
//! Shared between VTLs (TLFS "Virtual Processor State Isolation"), so carried from the vCPU
//! that leaves to the one that runs next: RAX RBX RCX RDX RSI RDI RBP R8-R15, CR2, DR0-DR3,
//! XCR0 and the XSAVE state (x87, SSE, AVX, ...). Everything else stays with its sibling:
//! RIP, RSP, RFLAGS, CR0/3/4/8, EFER, segments, descriptor tables, DR6/DR7, and the MSRs.

use kvm_bindings::kvm_regs;

use super::backend::{Env, VtlVcpu};
use super::hv::{self, assist, Control, HvStatus};
use super::{vcpu_op, Outcome, Partition, VtlError};

/// #UD.
const UD_VECTOR: u8 = 6;

impl<V: VtlVcpu> Partition<V> {
    pub(super) fn vtl_call(
        &mut self,
        vp_index: u32,
        vtl: u8,
        control: Control,
        env: &mut Env<'_, V>,
    ) -> Result<Outcome, VtlError> {
        let vp = self.vp_mut_ref(vp_index)?;
        let caller = sibling(vp, vtl)?;
        let regs = vcpu_op("KVM_GET_REGS", vp_index, vtl, caller.get_regs())?;
        // TLFS: the control word holds nothing but the call code, the input (RAX) is 0, and
        // there must be a higher VTL enabled on this VP; otherwise #UD.
        let target = match vp.next_higher(vtl) {
            Some(t) if control.0 == u64::from(hv::code::VTL_CALL) && regs.rax == 0 => t,
            Some(_) if control.0 != u64::from(hv::code::VTL_CALL) => {
                return self.inject_ud(vp_index, vtl, &regs, "VtlCall with control bits set")
            }
            Some(_) => return self.inject_ud(vp_index, vtl, &regs, "VtlCall with RAX != 0"),
            None => return self.inject_ud(vp_index, vtl, &regs, "VtlCall with no higher VTL"),
        };
        let vp = self.vp_mut_ref(vp_index)?;
        let next = carry_shared(vp, vp_index, vtl, target, &regs)?;
        let dst = sibling(vp, target)?;
        vcpu_op("KVM_SET_REGS", vp_index, target, dst.set_regs(&next))?;
        write_entry_reason(dst, vp_index, target, env, assist::ENTRY_REASON_VTL_CALL)?;
        succeed_pending(vp, vp_index, vtl)?;
        park(vp, vtl, target);
        vp.entered_from[usize::from(target)] = vtl;
        super::wake::apply_policy(self.notify, self.vp_mut_ref(vp_index)?)?;
        self.post_queued_intercept(env, vp_index, target)?;
        Ok(Outcome::Switched {
            from: vtl,
            to: target,
        })
    }

    pub(super) fn vtl_return(
        &mut self,
        vp_index: u32,
        vtl: u8,
        control: Control,
        env: &mut Env<'_, V>,
    ) -> Result<Outcome, VtlError> {
        let vp = self.vp_mut_ref(vp_index)?;
        let caller = sibling(vp, vtl)?;
        let regs = vcpu_op("KVM_GET_REGS", vp_index, vtl, caller.get_regs())?;
        // TLFS: input (RAX) bit 0 = fast return, its other bits and every control bit but the
        // call code are reserved; the lowest enabled VTL cannot return; otherwise #UD.
        let target = match vp.return_target(vtl) {
            Some(t) if control.0 == u64::from(hv::code::VTL_RETURN) && regs.rax & !1 == 0 => t,
            Some(_) if control.0 != u64::from(hv::code::VTL_RETURN) => {
                return self.inject_ud(vp_index, vtl, &regs, "VtlReturn with control bits set")
            }
            Some(_) => {
                return self.inject_ud(vp_index, vtl, &regs, "VtlReturn with RAX bits other than 0")
            }
            None => return self.inject_ud(vp_index, vtl, &regs, "VtlReturn from the lowest VTL"),
        };
        let fast = regs.rax & 1 != 0;
        let vp = self.vp_mut_ref(vp_index)?;
        let mut next = carry_shared(vp, vp_index, vtl, target, &regs)?;
        if !fast {
            // The returning VTL left the lower VTL's RAX/RCX in its own VP assist page.
            let caller = sibling(vp, vtl)?;
            if let Some(page) = assist_page(caller, vp_index, vtl)? {
                let mut b = [0u8; 16];
                match env.memory.read(page + assist::RET_RAX, &mut b) {
                    Ok(()) => {
                        next.rax = u64::from_le_bytes(hv::arr(&b[0..8]));
                        next.rcx = u64::from_le_bytes(hv::arr(&b[8..16]));
                    }
                    Err(e) => log::debug!(
                        "VP {vp_index}: VtlReturn from VTL {vtl}: RAX/RCX not restored, its VP \
                         assist page is not readable ({e})"
                    ),
                }
            } else {
                log::trace!(
                    "VP {vp_index}: VtlReturn from VTL {vtl}: RAX/RCX not restored, it has no VP \
                     assist page"
                );
            }
        }
        let dst = sibling(vp, target)?;
        vcpu_op("KVM_SET_REGS", vp_index, target, dst.set_regs(&next))?;
        succeed_pending(vp, vp_index, vtl)?;
        park(vp, vtl, target);
        vp.entered_from[usize::from(vtl)] = super::NO_VTL;
        super::wake::apply_policy(self.notify, self.vp_mut_ref(vp_index)?)?;
        Ok(Outcome::Switched {
            from: vtl,
            to: target,
        })
    }

    /// Queue #UD on the caller at its hypercall instruction: finish the pending completion
    /// (which moves RIP past the instruction), put RIP back, inject the exception.
    fn inject_ud(
        &mut self,
        vp_index: u32,
        vtl: u8,
        before: &kvm_regs,
        why: &str,
    ) -> Result<Outcome, VtlError> {
        log::debug!(
            "VP {vp_index} VTL {vtl}: #UD at RIP {:#x}: {why} (RAX {:#x})",
            before.rip,
            before.rax
        );
        let vp = self.vp_mut_ref(vp_index)?;
        let vcpu = vp.vcpus[usize::from(vtl)]
            .as_mut()
            .ok_or(VtlError::BadVtl(vtl))?;
        // A stale failure status left in the exit would land in RAX on completion.
        vcpu_op(
            "set hcall.result",
            vp_index,
            vtl,
            vcpu.set_pending_result(HvStatus::SUCCESS.result(0)),
        )?;
        vcpu_op(
            "KVM_RUN(immediate_exit)",
            vp_index,
            vtl,
            vcpu.complete_pending(),
        )?;
        let mut regs = vcpu_op("KVM_GET_REGS", vp_index, vtl, vcpu.get_regs())?;
        regs.rip = before.rip;
        vcpu_op("KVM_SET_REGS", vp_index, vtl, vcpu.set_regs(&regs))?;
        let mut ev = vcpu_op("KVM_GET_VCPU_EVENTS", vp_index, vtl, vcpu.get_vcpu_events())?;
        ev.exception.injected = 1;
        ev.exception.pending = 0;
        ev.exception.nr = UD_VECTOR;
        ev.exception.has_error_code = 0;
        ev.exception.error_code = 0;
        vcpu_op(
            "KVM_SET_VCPU_EVENTS",
            vp_index,
            vtl,
            vcpu.set_vcpu_events(&ev),
        )?;
        Ok(Outcome::Exception { vector: UD_VECTOR })
    }
}

pub(super) fn sibling<V>(vp: &super::Vp<V>, vtl: u8) -> Result<&V, VtlError> {
    vp.vcpu(vtl).ok_or(VtlError::BadVtl(vtl))
}

/// The VtlCall/VtlReturn `vtl` made succeeded: say so in its pending exit, so that KVM's
/// completion leaves RAX alone (KVM writes any other status there, and the exit still holds
/// the answer to the vCPU's previous forwarded hypercall).
fn succeed_pending<V: VtlVcpu>(
    vp: &mut super::Vp<V>,
    vp_index: u32,
    vtl: u8,
) -> Result<(), VtlError> {
    let caller = vp.vcpus[usize::from(vtl)]
        .as_mut()
        .ok_or(VtlError::BadVtl(vtl))?;
    vcpu_op(
        "set hcall.result",
        vp_index,
        vtl,
        caller.set_pending_result(HvStatus::SUCCESS.result(0)),
    )
}

/// `from` parks in its hypercall (completion pending); `to` runs next, which completes its own.
fn park<V>(vp: &mut super::Vp<V>, from: u8, to: u8) {
    vp.parked |= 1 << from;
    vp.parked &= !(1 << to);
    vp.active = to;
}

/// Copy the shared state of VTL `from` (whose GPRs are `regs`) into VTL `to`'s vCPU, except
/// the GPRs, which are returned (with `to`'s private RIP/RSP/RFLAGS) for the caller to adjust
/// and set.
pub(super) fn carry_shared<V: VtlVcpu>(
    vp: &super::Vp<V>,
    vp_index: u32,
    from: u8,
    to: u8,
    regs: &kvm_regs,
) -> Result<kvm_regs, VtlError> {
    let src = sibling(vp, from)?;
    let dst = sibling(vp, to)?;
    let theirs = vcpu_op("KVM_GET_REGS", vp_index, to, dst.get_regs())?;
    let mut next = *regs;
    next.rip = theirs.rip;
    next.rsp = theirs.rsp;
    next.rflags = theirs.rflags;

    // CR2 (KVM_SET_SREGS is heavy: only when it differs).
    let s = vcpu_op("KVM_GET_SREGS", vp_index, from, src.get_sregs())?;
    let mut d = vcpu_op("KVM_GET_SREGS", vp_index, to, dst.get_sregs())?;
    if d.cr2 != s.cr2 {
        d.cr2 = s.cr2;
        vcpu_op("KVM_SET_SREGS", vp_index, to, dst.set_sregs(&d))?;
    }
    // DR0-DR3 (DR6 and DR7 are private).
    let s = vcpu_op("KVM_GET_DEBUGREGS", vp_index, from, src.get_debugregs())?;
    let mut d = vcpu_op("KVM_GET_DEBUGREGS", vp_index, to, dst.get_debugregs())?;
    if d.db != s.db {
        d.db = s.db;
        vcpu_op("KVM_SET_DEBUGREGS", vp_index, to, dst.set_debugregs(&d))?;
    }
    // XCR0, before the XSAVE state it enables.
    let s = vcpu_op("KVM_GET_XCRS", vp_index, from, src.get_xcrs())?;
    let mut d = vcpu_op("KVM_GET_XCRS", vp_index, to, dst.get_xcrs())?;
    if let Some(x0) = xcr0(&s) {
        if xcr0(&d) != Some(x0) {
            set_xcr0(&mut d, x0);
            vcpu_op("KVM_SET_XCRS", vp_index, to, dst.set_xcrs(&d))?;
        }
    }
    let x = vcpu_op("KVM_GET_XSAVE", vp_index, from, src.get_xsave())?;
    vcpu_op("KVM_SET_XSAVE", vp_index, to, dst.set_xsave(&x))?;
    Ok(next)
}

pub(super) fn xcr0(x: &kvm_bindings::kvm_xcrs) -> Option<u64> {
    let n = (x.nr_xcrs as usize).min(x.xcrs.len());
    x.xcrs[..n].iter().find(|e| e.xcr == 0).map(|e| e.value)
}

pub(super) fn set_xcr0(x: &mut kvm_bindings::kvm_xcrs, value: u64) {
    let n = (x.nr_xcrs as usize).min(x.xcrs.len());
    if let Some(e) = x.xcrs[..n].iter_mut().find(|e| e.xcr == 0) {
        e.value = value;
    } else if n < x.xcrs.len() {
        x.xcrs[n].xcr = 0;
        x.xcrs[n].value = value;
        x.nr_xcrs = (n + 1) as u32;
    }
}

/// The GPA of `vcpu`'s VP assist page, if it enabled one (none either if KVM has no such MSR
/// for it: Hyper-V emulation is off in that vCPU).
fn assist_page<V: VtlVcpu>(vcpu: &V, vp_index: u32, vtl: u8) -> Result<Option<u64>, VtlError> {
    match vcpu.get_msr(hv::msr::VP_ASSIST_PAGE) {
        Ok(msr) => Ok((msr & 1 != 0).then_some(msr & !0xfff)),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(None),
        Err(source) => Err(VtlError::Vcpu {
            op: "KVM_GET_MSRS(HV_X64_MSR_VP_ASSIST_PAGE)",
            vp_index,
            vtl,
            source,
        }),
    }
}

/// `HV_VP_VTL_CONTROL.EntryReason` in the entered VTL's VP assist page (nothing if it has
/// none, or it is not RAM: the guest's own misconfiguration).
pub(super) fn write_entry_reason<V: VtlVcpu>(
    vcpu: &V,
    vp_index: u32,
    vtl: u8,
    env: &Env<'_, V>,
    reason: u32,
) -> Result<(), VtlError> {
    match assist_page(vcpu, vp_index, vtl)? {
        Some(page) => {
            if let Err(e) = env
                .memory
                .write(page + assist::ENTRY_REASON, &reason.to_le_bytes())
            {
                log::debug!(
                    "VP {vp_index}: entry reason {reason} not written for VTL {vtl}: its VP \
                     assist page is not writable ({e})"
                );
            }
        }
        None => log::trace!(
            "VP {vp_index}: entry reason {reason} not written for VTL {vtl}: it has no VP assist page"
        ),
    }
    Ok(())
}
