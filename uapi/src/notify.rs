// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! `KVM_CAP_VCPU_EVENT_NOTIFY`: a vCPU that userspace does not run (a parked VTL) makes the vCPU
//! that runs in its place exit with `KVM_EXIT_EVENT_NOTIFY` as soon as it has an event it would
//! take (an interrupt above its processor priority, whatever its RFLAGS.IF says, or an NMI).
//!
//! The notification is one-shot: arm it each time the vCPU is parked. Arming checks for an
//! event already pending, so nothing that arrived while the VMM was switching vCPUs is lost:
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

/// If `run` holds a `KVM_EXIT_EVENT_NOTIFY` exit, the vcpu_id of the vCPU that fired it.
/// (kvm-ioctls reports this exit reason as `VcpuExit::Unsupported(40)`; kvm-bindings' `kvm_run`
/// has no member for it, so the payload is read from the exit union's first bytes, where the
/// series' `event_notify` struct starts with `vcpu_id`.)
pub fn event_notify_exit(run: &kvm_run) -> Option<u32> {
    if run.exit_reason != raw::KVM_EXIT_EVENT_NOTIFY {
        return None;
    }
    // SAFETY: every member of kvm_run's exit union is plain old data, and `padding` covers the
    // whole union; reading bytes is always valid.
    let bytes = unsafe { run.__bindgen_anon_1.padding };
    Some(u32::from_ne_bytes([
        bytes[0] as u8,
        bytes[1] as u8,
        bytes[2] as u8,
        bytes[3] as u8,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_is_decoded_from_the_union() {
        let mut run = kvm_run::default();
        assert_eq!(event_notify_exit(&run), None);
        run.exit_reason = raw::KVM_EXIT_EVENT_NOTIFY;
        let id = 7u32.to_ne_bytes().map(|b| b as libc::c_char);
        // SAFETY: writing plain bytes into the union's padding member.
        unsafe { run.__bindgen_anon_1.padding[..4].copy_from_slice(&id) };
        assert_eq!(event_notify_exit(&run), Some(7));
    }

    #[test]
    fn the_struct_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<raw::kvm_event_notify>(), 32);
        assert_eq!(raw::KVM_EVENT_NOTIFY_ARMED, 1);
        assert_eq!(raw::KVM_EVENT_NOTIFY_PENDING, 2);
    }
}
