// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Interrupts for a VTL that is not running (TLFS "Interrupts between VTLs"), on the series'
//! `KVM_CAP_VCPU_EVENT_NOTIFY` ([`crate::notify`]).
//!
//! Only one sibling of a VP runs; an interrupt for a higher one must stop it at once (unless the
//! higher VTL's TPR blocks it; its RFLAGS.IF does not), an interrupt for a lower one waits until
//! the VP next enters that VTL. The arming policy, applied whenever a VTL `n` becomes active
//! (VtlCall, VtlReturn, an interrupt entry, and when EnableVpVtl enables a VTL above the active
//! one):
//!
//! * every enabled VTL above `n` is armed with `n`'s vCPU as target: an event it would take
//!   makes `n`'s `KVM_RUN` return `KVM_EXIT_EVENT_NOTIFY` (a halted `n` is woken for it);
//! * `n` itself and every VTL below it are disarmed: lower VTLs' interrupts wait.
//!
//! On that exit, [`Partition::handle_event_notify`] asks every higher sibling whether it has an
//! event pending now (`KVM_GET_EVENT_NOTIFY`: the exit names only the last of several that
//! fired) and enters the highest that has one, with `HV_VP_VTL_CONTROL.EntryReason` =
//! Interrupt (2) and the shared registers carried as for a VtlCall. The interrupted VTL has no
//! hypercall completion pending: it resumes at the instruction it was stopped at when the
//! entered VTL returns to it (VtlReturn goes back to the VTL it was entered from; RAX/RCX are
//! restored from the returning VTL's VP assist page unless the return is fast, as after a
//! VtlCall). A notification that finds nothing pending (the event was taken or withdrawn
//! already) re-arms and resumes the same vCPU.
//!
//! No wake-up is lost: arming checks for an event that is pending already (kernel ordering in
//! api.rst 4.146), and the policy arms each higher sibling after the switch that makes it
//! parked, before the lower vCPU runs again.

use super::backend::{Env, VtlVcpu};
use super::hv::assist;
use super::switch::{carry_shared, sibling, write_entry_reason};
use super::{vcpu_op, Partition, Vp, VtlError, NUM_VTLS};

/// What the VMM does after [`Partition::handle_event_notify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOutcome {
    /// VTL `to` has an event pending: the VP switched to it (entry reason Interrupt). Run its
    /// vCPU next. VTL `from` was stopped where it was and resumes there when `to` returns.
    Interrupted {
        /// The VTL that was running.
        from: u8,
        /// The VTL now active.
        to: u8,
    },
    /// No higher VTL has an event pending any more: the notifications are armed again; run
    /// the same vCPU (`KVM_RUN` continues where it stopped).
    Resume,
}

/// Switch `vp` from VTL `from`, which made no call (an interrupt for `to`, or a secure
/// intercept), into VTL `to` with entry reason Interrupt; `regs` are `from`'s registers.
pub(super) fn enter_for_interrupt<V: VtlVcpu>(
    env: &Env<'_, V>,
    notify: bool,
    vp: &mut Vp<V>,
    from: u8,
    to: u8,
    regs: &kvm_bindings::kvm_regs,
) -> Result<(), VtlError> {
    let vp_index = vp.index;
    // The interrupted VTL's GPRs are carried as they are: it made no call, so its RAX and RCX
    // are live values, which the entered VTL saves in its HV_VP_VTL_CONTROL for the (normal)
    // VtlReturn to restore.
    let next = carry_shared(vp, vp_index, from, to, regs)?;
    let dst = sibling(vp, to)?;
    vcpu_op("KVM_SET_REGS", vp_index, to, dst.set_regs(&next))?;
    write_entry_reason(dst, vp_index, to, env, assist::ENTRY_REASON_INTERRUPT)?;
    // `to` runs next, which finishes its own pending VtlReturn completion (if it made one);
    // `from` has none and is not parked in a hypercall.
    vp.parked &= !((1 << to) | (1 << from));
    vp.active = to;
    vp.entered_from[usize::from(to)] = from;
    apply_policy(notify, vp)
}

/// Apply the arming policy (module documentation) to `vp` for its active VTL, if the
/// partition uses event notification.
pub(super) fn apply_policy<V: VtlVcpu>(notify: bool, vp: &mut Vp<V>) -> Result<(), VtlError> {
    if !notify {
        return Ok(());
    }
    let vp_index = vp.index;
    let active = vp.active;
    for vtl in 0..=active {
        if vp.armed & (1 << vtl) == 0 {
            continue;
        }
        let v = sibling(vp, vtl)?;
        vcpu_op(
            "KVM_SET_EVENT_NOTIFY(disarm)",
            vp_index,
            vtl,
            v.set_event_notify(None),
        )?;
        vp.armed &= !(1 << vtl);
    }
    let higher: Vec<u8> = (active + 1..NUM_VTLS as u8)
        .filter(|&v| vp.is_enabled(v) && vp.vcpu(v).is_some())
        .collect();
    if higher.is_empty() {
        return Ok(());
    }
    let target = vp.ids[usize::from(active)].ok_or(VtlError::NoVcpuId {
        vp_index,
        vtl: active,
    })?;
    for vtl in higher {
        let v = sibling(vp, vtl)?;
        vcpu_op(
            "KVM_SET_EVENT_NOTIFY(arm)",
            vp_index,
            vtl,
            v.set_event_notify(Some(target)),
        )?;
        vp.armed |= 1 << vtl;
    }
    Ok(())
}

impl<V: VtlVcpu> Partition<V> {
    /// Use `KVM_CAP_VCPU_EVENT_NOTIFY` (the VMM enabled it on the VM with
    /// [`crate::notify::enable_event_notify`]): from now on interrupts for a higher VTL than the
    /// active one stop the running sibling ([`Self::handle_event_notify`]). Arms what the policy
    /// says for every VP at once. Every sibling must report its [`VtlVcpu::vcpu_id`]
    /// ([`VtlError::NoVcpuId`] otherwise, once a VP has a VTL to arm).
    pub fn enable_event_notify(&mut self) -> Result<(), VtlError> {
        self.notify = true;
        for vp in self.vps.values_mut() {
            apply_policy(true, vp)?;
        }
        Ok(())
    }

    /// Whether [`Self::enable_event_notify`] was called.
    pub fn event_notify_enabled(&self) -> bool {
        self.notify
    }

    /// Re-apply the arming policy to VP `vp_index` (e.g. after the VMM changed a parked
    /// sibling's LAPIC with `KVM_SET_LAPIC`, which KVM notices only at the next event or
    /// arming). Its active sibling must not be running.
    pub fn rearm(&mut self, vp_index: u32) -> Result<(), VtlError> {
        let notify = self.notify;
        apply_policy(notify, self.vp_mut_ref(vp_index)?)
    }

    /// Answer a `KVM_EXIT_EVENT_NOTIFY` of VP `vp_index`'s active sibling (VTL `vtl`): enter
    /// the highest enabled VTL above it that has an event pending now, or re-arm and resume.
    /// The vcpu_id the exit names is not needed: it is only the last of the siblings that
    /// fired, and what counts is which of them has an event pending now.
    pub fn handle_event_notify(
        &mut self,
        env: &mut Env<'_, V>,
        vp_index: u32,
        vtl: u8,
    ) -> Result<NotifyOutcome, VtlError> {
        let notify = self.notify;
        let vp = self.active_vp_mut(vp_index, vtl)?;
        // Highest VTL with a pending event wins.
        let mut winner = None;
        for t in (vtl + 1..NUM_VTLS as u8).rev() {
            if !vp.is_enabled(t) {
                continue;
            }
            let Some(v) = vp.vcpu(t) else { continue };
            if vcpu_op("KVM_GET_EVENT_NOTIFY", vp_index, t, v.event_pending())? {
                winner = Some(t);
                break;
            }
        }
        let Some(to) = winner else {
            log::trace!(
                "VP {vp_index}: event notification in VTL {vtl}, but no higher VTL has an event \
                 pending any more: re-armed, VTL {vtl} resumes"
            );
            apply_policy(notify, vp)?;
            return Ok(NotifyOutcome::Resume);
        };
        let from = vtl;
        let regs = vcpu_op(
            "KVM_GET_REGS",
            vp_index,
            from,
            sibling(vp, from)?.get_regs(),
        )?;
        enter_for_interrupt(env, notify, vp, from, to, &regs)?;
        self.post_queued_intercept(env, vp_index, to)?;
        Ok(NotifyOutcome::Interrupted { from, to })
    }
}
