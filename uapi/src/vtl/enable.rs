// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! HvCallEnablePartitionVtl and HvCallEnableVpVtl.

use super::backend::{Env, VtlVcpu};
use super::hv::{self, HvStatus, InitialVpContext};
use super::input::Input;
use super::{vcpu_guest_op, vcpu_op, Call, Fail, HvResult, Partition, VtlError};

impl<V: VtlVcpu> Partition<V> {
    /// Whether `caller` may enable `target` when `target` is above it: TLFS, "the highest VTL
    /// enabled for a partition can enable a higher target VTL" (the highest below the target,
    /// since the target itself may already be enabled for the partition).
    fn highest_below(&self, caller: u8, target: u8) -> bool {
        caller < target && (caller + 1..target).all(|v| !self.is_enabled(v))
    }

    /// Input: PartitionId u64 @0, TargetVtl u8 @8, Flags u8 @9 (bit 0 EnableMbec), RsvdZ 6.
    pub(super) fn enable_partition_vtl(
        &mut self,
        call: &Call<'_>,
        env: &Env<'_, V>,
    ) -> HvResult<()> {
        let input = Input::new(call.exit, env.memory)?;
        if input.u64(0)? != hv::PARTITION_ID_SELF {
            return Err(HvStatus::INVALID_PARTITION_ID.into());
        }
        let target = input.u8(8)?;
        let flags = input.u8(9)?;
        let mut rsvd = [0u8; 6];
        input.read(10, &mut rsvd)?;
        if flags & !1 != 0 || rsvd != [0; 6] {
            return Err(HvStatus::INVALID_PARAMETER.into());
        }
        if target == 0 || target > self.config.max_vtl {
            return Err(HvStatus::INVALID_PARAMETER.into());
        }
        let mbec = flags & 1 != 0;
        if mbec && hv::capabilities_mbec_vtl_mask(self.config.vsm_capabilities) & (1 << target) == 0
        {
            return Err(HvStatus::INVALID_PARAMETER.into());
        }
        if self.is_enabled(target) {
            return Err(HvStatus::VTL_ALREADY_ENABLED.into());
        }
        if !(call.vtl > target || self.highest_below(call.vtl, target)) {
            return Err(HvStatus::ACCESS_DENIED.into());
        }
        self.enabled |= 1 << target;
        if mbec {
            self.mbec_enabled |= 1 << target;
        }
        Ok(())
    }

    /// Input: PartitionId u64 @0, VpIndex u32 @8, TargetVtl u8 @12, RsvdZ 3,
    /// HV_INITIAL_VP_CONTEXT @16 (224 bytes).
    pub(super) fn enable_vp_vtl(&mut self, call: &Call<'_>, env: &mut Env<'_, V>) -> HvResult<()> {
        let input = Input::new(call.exit, env.memory)?;
        if input.u64(0)? != hv::PARTITION_ID_SELF {
            return Err(HvStatus::INVALID_PARTITION_ID.into());
        }
        let mut vp_index = input.u32(8)?;
        let target = input.u8(12)?;
        let mut rsvd = [0u8; 3];
        input.read(13, &mut rsvd)?;
        let mut ctx = [0u8; InitialVpContext::SIZE];
        input.read(16, &mut ctx)?;
        if rsvd != [0; 3] {
            return Err(HvStatus::INVALID_PARAMETER.into());
        }
        if vp_index == hv::VP_INDEX_SELF {
            vp_index = call.vp_index;
        }
        let Some(vp) = self.vps.get(&vp_index) else {
            return Err(HvStatus::INVALID_VP_INDEX.into());
        };
        if target == 0 || target > self.config.max_vtl {
            return Err(HvStatus::INVALID_PARAMETER.into());
        }
        if !self.is_enabled(target) {
            return Err(HvStatus::INVALID_VTL_STATE.into());
        }
        if vp.is_enabled(target) {
            return Err(HvStatus::VTL_ALREADY_ENABLED.into());
        }
        // TLFS: a VTL is enabled by a higher one; the highest VTL below the target may enable
        // it too, but once it runs on some VP, only equal or higher VTLs may enable it.
        let running_somewhere = self.vps.values().any(|v| v.is_enabled(target));
        let allowed = call.vtl > target
            || (running_somewhere && call.vtl == target)
            || (!running_somewhere && self.highest_below(call.vtl, target));
        if !allowed {
            return Err(HvStatus::ACCESS_DENIED.into());
        }
        let ctx = InitialVpContext::from_bytes(&ctx);

        let (apic_id, group) = (vp.apic_id, self.group_of(target));
        if vp.vcpu(target).is_none() {
            let created = env
                .siblings
                .create_sibling(vp_index, apic_id, target, group)
                .map_err(|source| VtlError::Sibling {
                    vp_index,
                    vtl: target,
                    source,
                })?;
            let Some(vcpu) = created else {
                return Err(HvStatus::NO_RESOURCES.into());
            };
            self.vp_mut_ref(vp_index)?.install(target, vcpu);
        }
        let vp = self.vp_mut_ref(vp_index)?;
        let vcpu = vp.vcpus[usize::from(target)]
            .as_ref()
            .ok_or(VtlError::BadVtl(target))?;
        apply_initial_context(vcpu, vp_index, target, &ctx)?;
        vp.enabled |= 1 << target;
        // An interrupt for the new VTL now preempts a lower one running on that VP.
        let notify = self.notify;
        super::wake::apply_policy(notify, self.vp_mut_ref(vp_index)?)?;
        Ok(())
    }
}

/// Give a sibling the TLFS initial context and make it runnable. KVM validates the control registers, EFER and PAT:
/// what it refuses is the guest's mistake, `HV_STATUS_INVALID_PARAMETER`, and the sibling stays
/// disabled (the state written so far is overwritten by a later successful enable).
fn apply_initial_context<V: VtlVcpu>(
    vcpu: &V,
    vp_index: u32,
    vtl: u8,
    ctx: &InitialVpContext,
) -> HvResult<()> {
    let bad = HvStatus::INVALID_PARAMETER;
    let mut s = vcpu_op("KVM_GET_SREGS", vp_index, vtl, vcpu.get_sregs())?;
    let [cs, ds, es, fs, gs, ss, tr, ldt] = ctx.segments;
    s.cs = cs.to_kvm();
    s.ds = ds.to_kvm();
    s.es = es.to_kvm();
    s.fs = fs.to_kvm();
    s.gs = gs.to_kvm();
    s.ss = ss.to_kvm();
    s.tr = tr.to_kvm();
    s.ldt = ldt.to_kvm();
    s.idt = ctx.idtr.to_kvm();
    s.gdt = ctx.gdtr.to_kvm();
    s.efer = ctx.efer;
    s.cr0 = ctx.cr0;
    s.cr3 = ctx.cr3;
    s.cr4 = ctx.cr4;
    vcpu_guest_op("KVM_SET_SREGS", vp_index, vtl, bad, vcpu.set_sregs(&s))?;
    vcpu_guest_op(
        "KVM_SET_MSRS(IA32_PAT)",
        vp_index,
        vtl,
        bad,
        vcpu.set_msr(hv::msr::PAT, ctx.msr_cr_pat),
    )?;
    let mut r = vcpu_op("KVM_GET_REGS", vp_index, vtl, vcpu.get_regs())?;
    r.rip = ctx.rip;
    r.rsp = ctx.rsp;
    r.rflags = ctx.rflags;
    vcpu_op("KVM_SET_REGS", vp_index, vtl, vcpu.set_regs(&r))?;
    // TLFS: the enabled VTL is runnable with its initial context. KVM created the sibling in
    // KVM_MP_STATE_UNINITIALIZED (not the BSP, in-kernel LAPIC): its KVM_RUN would wait for
    // INIT/SIPI, and KVM_RUN(immediate_exit) would not complete its hypercalls.
    vcpu_op(
        "KVM_SET_MP_STATE(RUNNABLE)",
        vp_index,
        vtl,
        vcpu.make_runnable(),
    )
    .map_err(Fail::Vmm)
}
