// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! `KVM_CAP_VCPU_EVENT_NOTIFY`: a vCPU that userspace does not run (a parked VTL) makes the vCPU
//! that runs in its place exit with `KVM_EXIT_EVENT_NOTIFY` as soon as it has an event it would
//! take: an interrupt in its local APIC above its processor priority (TPR and in-service
//! interrupts, an expired APIC timer included; RFLAGS.IF and interrupt shadows are not
//! considered), an NMI, SMI, INIT or SIPI, a PIC or Xen interrupt, or an event KVM was in the
//! middle of injecting (api.rst 4.146).
//!
//! The notification is one-shot: arm it each time the vCPU is parked. Arming checks for an
//! event already pending, so nothing that arrived while the VMM was switching vCPUs is lost.
//! Arm only a vCPU that is not running (not in `KVM_RUN` on another thread): the notification
//! would still fire, spuriously.
//!
//! ```no_run
//! # fn f(vtl0: &kvm_ioctls::VcpuFd, vtl1: &kvm_ioctls::VcpuFd) -> vtlkit_uapi::Result<()> {
//! use vtlkit_uapi::notify::VcpuEventNotifyExt;
//! // VTL1 (vcpu_id 1) parks; VTL0 (vcpu_id 0) runs and must stop for VTL1's interrupts.
//! vtl1.arm_event_notify(0)?;
//! // ... KVM_RUN on vtl0; an exit with KVM_EXIT_EVENT_NOTIFY naming vcpu_id 1 means: switch.
//! # Ok(()) }
//! ```
//!
//! The kernel's documentation is `Documentation/virt/kvm/api.rst`, sections 4.146, 4.147 and
//! 7.39 of the patched tree.

use std::io;

use kvm_bindings::{kvm_enable_cap, kvm_run};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

use crate::{raw, Error, Result};

/// Whether the kernel offers `KVM_CAP_VCPU_EVENT_NOTIFY`.
pub fn event_notify_supported(kvm: &Kvm) -> bool {
    kvm.check_extension_raw(libc::c_ulong::from(raw::KVM_CAP_VCPU_EVENT_NOTIFY)) > 0
}

/// `KVM_ENABLE_CAP(KVM_CAP_VCPU_EVENT_NOTIFY)` on a VM with an in-kernel local APIC. Idempotent.
pub fn enable_event_notify(vm: &VmFd) -> Result<()> {
    enable_event_notify_raw(vm, [0; 4])
}

/// [`enable_event_notify`] with the capability's arguments as given (non-zero ones: `EINVAL`).
pub fn enable_event_notify_raw(vm: &VmFd, args: [u64; 4]) -> Result<()> {
    let cap = kvm_enable_cap {
        cap: raw::KVM_CAP_VCPU_EVENT_NOTIFY,
        args,
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(|e| Error::Ioctl {
        op: "KVM_ENABLE_CAP(KVM_CAP_VCPU_EVENT_NOTIFY)",
        source: io::Error::from_raw_os_error(e.errno()),
    })
}

/// What `KVM_GET_EVENT_NOTIFY` reports about a vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventNotifyState {
    /// The vcpu_id an armed notification targets; `None` when disarmed (or fired).
    pub armed: Option<u32>,
    /// Whether the vCPU has an event pending that it would take if it ran (evaluated now).
    pub pending: bool,
}

/// The event-notification vCPU ioctls.
pub trait VcpuEventNotifyExt {
    /// Arm: make the vCPU with `target_vcpu_id` exit as soon as this one has an event pending
    /// (at once if it has one now).
    fn arm_event_notify(&self, target_vcpu_id: u32) -> Result<()> {
        self.set_event_notify_raw(&raw::kvm_event_notify {
            flags: raw::KVM_EVENT_NOTIFY_ARMED,
            vcpu_id: target_vcpu_id,
            ..Default::default()
        })
    }
    /// Disarm.
    fn disarm_event_notify(&self) -> Result<()> {
        self.set_event_notify_raw(&raw::kvm_event_notify::default())
    }
    /// `KVM_SET_EVENT_NOTIFY` with every field as given.
    fn set_event_notify_raw(&self, en: &raw::kvm_event_notify) -> Result<()>;
    /// `KVM_GET_EVENT_NOTIFY`.
    fn event_notify(&self) -> Result<EventNotifyState> {
        let en = self.get_event_notify_raw()?;
        Ok(EventNotifyState {
            armed: (en.flags & raw::KVM_EVENT_NOTIFY_ARMED != 0).then_some(en.vcpu_id),
            pending: en.flags & raw::KVM_EVENT_NOTIFY_PENDING != 0,
        })
    }
    /// `KVM_GET_EVENT_NOTIFY`, the raw structure.
    fn get_event_notify_raw(&self) -> Result<raw::kvm_event_notify>;
}

impl VcpuEventNotifyExt for VcpuFd {
    fn set_event_notify_raw(&self, en: &raw::kvm_event_notify) -> Result<()> {
        // SAFETY: a valid vCPU fd owned by `self`; the kernel reads exactly
        // size_of::<kvm_event_notify>() bytes (encoded in the request) from a live reference.
        let r = unsafe {
            ioctl_with_ref(
                self,
                libc::c_ulong::from(raw::VTLKIT_KVM_SET_EVENT_NOTIFY),
                en,
            )
        };
        if r < 0 {
            return Err(Error::last("KVM_SET_EVENT_NOTIFY"));
        }
        Ok(())
    }

    fn get_event_notify_raw(&self) -> Result<raw::kvm_event_notify> {
        let mut en = raw::kvm_event_notify::default();
        // SAFETY: a valid vCPU fd owned by `self`; the kernel writes exactly
        // size_of::<kvm_event_notify>() bytes into a live, exclusively borrowed struct.
        let r = unsafe {
            ioctl_with_mut_ref(
                self,
                libc::c_ulong::from(raw::VTLKIT_KVM_GET_EVENT_NOTIFY),
                &mut en,
            )
        };
        if r < 0 {
            return Err(Error::last("KVM_GET_EVENT_NOTIFY"));
        }
        Ok(en)
    }
}

// kvm-bindings' `kvm_run` (6.12) and the series' (`raw`, generated from uapi/include) are one
// structure: the same size, alignment and exit union; the series only adds members to the union.
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<kvm_run>() == size_of::<raw::kvm_run>());
    assert!(align_of::<kvm_run>() == align_of::<raw::kvm_run>());
    assert!(offset_of!(kvm_run, exit_reason) == offset_of!(raw::kvm_run, exit_reason));
    assert!(offset_of!(kvm_run, __bindgen_anon_1) == offset_of!(raw::kvm_run, __bindgen_anon_1));
};

/// `run` as the series' header lays out `struct kvm_run`.
fn series_kvm_run(run: &kvm_run) -> &raw::kvm_run {
    // SAFETY: the two types have the same size and alignment and the same layout up to and
    // including the exit union (asserted above; both are bindgen's rendering of `struct kvm_run`,
    // the series' adding union members only); every member is plain old data, so any
    // initialized bytes are a valid value, and the reference borrows `run`.
    unsafe { &*std::ptr::from_ref(run).cast::<raw::kvm_run>() }
}

/// If `run` holds a `KVM_EXIT_EVENT_NOTIFY` exit, the vcpu_id of the vCPU that fired it.
/// (kvm-ioctls reports this exit reason as `VcpuExit::Unsupported(40)`; kvm-bindings' `kvm_run`
/// has no member for it, so it is read through the series' `kvm_run`, whose exit union has the
/// `event_notify` member.)
pub fn event_notify_exit(run: &kvm_run) -> Option<u32> {
    let run = series_kvm_run(run);
    if run.exit_reason != raw::KVM_EXIT_EVENT_NOTIFY {
        return None;
    }
    // SAFETY: `exit_reason` says `event_notify` is the live member; it is two integers.
    Some(unsafe { run.__bindgen_anon_1.event_notify }.vcpu_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_is_decoded_from_the_union() {
        let mut run = kvm_run::default();
        assert_eq!(event_notify_exit(&run), None);
        run.exit_reason = raw::KVM_EXIT_EVENT_NOTIFY;
        // Where the header puts event_notify.vcpu_id, written as plain bytes.
        let off = std::mem::offset_of!(raw::kvm_run, __bindgen_anon_1.event_notify.vcpu_id);
        let base = std::ptr::from_mut(&mut run).cast::<u8>();
        // SAFETY: `off + 4` is inside `run` (the union is 256 bytes); kvm_run is plain old data.
        unsafe {
            std::ptr::copy_nonoverlapping(7u32.to_ne_bytes().as_ptr(), base.add(off), 4);
        }
        assert_eq!(event_notify_exit(&run), Some(7));
        run.exit_reason = raw::KVM_EXIT_EVENT_NOTIFY - 1;
        assert_eq!(event_notify_exit(&run), None);
    }

    #[test]
    fn the_struct_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<raw::kvm_event_notify>(), 32);
        assert_eq!(raw::KVM_EVENT_NOTIFY_ARMED, 1);
        assert_eq!(raw::KVM_EVENT_NOTIFY_PENDING, 2);
    }
}
