// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The small traits through which the state machine reaches KVM and the VMM, so that its logic
//! runs (and is unit-tested) without `/dev/kvm`.

use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_debugregs, kvm_msi, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::hv::HvStatus;

/// One vCPU of a VP (one VTL's sibling): the state the VTL switch moves and keeps.
///
/// Errors are host-side failures (an ioctl failed); the state machine turns them into
/// [`super::VtlError::Vcpu`], except where a value that came from the guest was refused with
/// [`io::ErrorKind::InvalidInput`] (`EINVAL`), which becomes a TLFS status instead.
pub trait VtlVcpu {
    /// `KVM_GET_REGS`.
    fn get_regs(&self) -> io::Result<kvm_regs>;
    /// `KVM_SET_REGS`.
    fn set_regs(&self, regs: &kvm_regs) -> io::Result<()>;
    /// `KVM_GET_SREGS`.
    fn get_sregs(&self) -> io::Result<kvm_sregs>;
    /// `KVM_SET_SREGS`.
    fn set_sregs(&self, sregs: &kvm_sregs) -> io::Result<()>;
    /// `KVM_GET_XSAVE` (x87, SSE, AVX...: all shared between VTLs).
    fn get_xsave(&self) -> io::Result<kvm_xsave>;
    /// `KVM_SET_XSAVE`.
    fn set_xsave(&self, xsave: &kvm_xsave) -> io::Result<()>;
    /// `KVM_GET_DEBUGREGS`.
    fn get_debugregs(&self) -> io::Result<kvm_debugregs>;
    /// `KVM_SET_DEBUGREGS`.
    fn set_debugregs(&self, dregs: &kvm_debugregs) -> io::Result<()>;
    /// `KVM_GET_XCRS`.
    fn get_xcrs(&self) -> io::Result<kvm_xcrs>;
    /// `KVM_SET_XCRS`.
    fn set_xcrs(&self, xcrs: &kvm_xcrs) -> io::Result<()>;
    /// Read one MSR (`KVM_GET_MSRS`).
    fn get_msr(&self, index: u32) -> io::Result<u64>;
    /// Write one MSR (`KVM_SET_MSRS`); a value KVM refuses is [`io::ErrorKind::InvalidInput`].
    fn set_msr(&self, index: u32, value: u64) -> io::Result<()>;
    /// `KVM_GET_VCPU_EVENTS`.
    fn get_vcpu_events(&self) -> io::Result<kvm_vcpu_events>;
    /// `KVM_SET_VCPU_EVENTS`.
    fn set_vcpu_events(&self, events: &kvm_vcpu_events) -> io::Result<()>;
    /// Finish the completion of the hypercall this vCPU exited on, without entering the guest
    /// (`KVM_RUN` with `immediate_exit`): KVM advances RIP past the hypercall instruction (and,
    /// except for VtlCall/VtlReturn, writes `hcall.result` to RAX). A no-op when nothing is
    /// pending. Needed before the state machine rewrites the RIP of a parked vCPU, which the
    /// pending completion would otherwise move again.
    fn complete_pending(&mut self) -> io::Result<()>;
    /// Write `result` into the HCALL exit this vCPU is parked in (`hyperv.u.hcall.result` in
    /// its `kvm_run`), which KVM hands to the guest when it completes the hypercall. KVM writes
    /// it to RAX, except a VtlCall/VtlReturn completed with `HV_STATUS_SUCCESS`, whose RAX it
    /// leaves alone. The field is never cleared by KVM: it holds the answer to this vCPU's
    /// previous forwarded hypercall until written, so the state machine writes it for every
    /// switch and #UD it decides. A no-op when `kvm_run` holds no HCALL exit.
    fn set_pending_result(&mut self, result: u64) -> io::Result<()>;

    /// The vcpu_id KVM knows this vCPU by: the target named when the VP's higher VTLs are armed
    /// while this one runs ([`super::Partition::enable_event_notify`]). `None` (the default):
    /// unknown, and the partition cannot arm notifications that target this vCPU (a bare
    /// `VcpuFd` does not know its id; wrap it in a type that does).
    fn vcpu_id(&self) -> Option<u32> {
        None
    }
    /// `KVM_SET_EVENT_NOTIFY`: `Some(target)` arms this vCPU to make the vCPU with vcpu_id
    /// `target` exit with `KVM_EXIT_EVENT_NOTIFY` as soon as this one has an event it would
    /// take; `None` disarms it. The default fails with [`io::ErrorKind::Unsupported`].
    fn set_event_notify(&self, target: Option<u32>) -> io::Result<()> {
        let _ = target;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this vCPU type has no KVM_SET_EVENT_NOTIFY",
        ))
    }
    /// `KVM_GET_EVENT_NOTIFY`'s `KVM_EVENT_NOTIFY_PENDING`: whether this vCPU has an event it
    /// would take if it ran (an interrupt above its PPR whatever RFLAGS.IF says, an NMI, ...),
    /// evaluated now. The default fails with [`io::ErrorKind::Unsupported`].
    fn event_pending(&self) -> io::Result<bool> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this vCPU type has no KVM_GET_EVENT_NOTIFY",
        ))
    }
}

fn notify_err(e: crate::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

fn errno(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl VtlVcpu for VcpuFd {
    fn get_regs(&self) -> io::Result<kvm_regs> {
        VcpuFd::get_regs(self).map_err(errno)
    }
    fn set_regs(&self, regs: &kvm_regs) -> io::Result<()> {
        VcpuFd::set_regs(self, regs).map_err(errno)
    }
    fn get_sregs(&self) -> io::Result<kvm_sregs> {
        VcpuFd::get_sregs(self).map_err(errno)
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> io::Result<()> {
        VcpuFd::set_sregs(self, sregs).map_err(errno)
    }
    fn get_xsave(&self) -> io::Result<kvm_xsave> {
        VcpuFd::get_xsave(self).map_err(errno)
    }
    fn set_xsave(&self, xsave: &kvm_xsave) -> io::Result<()> {
        // KVM_SET_XSAVE copies the vCPU's uABI XSAVE size from userspace, which is more than
        // size_of::<kvm_xsave>() only when the guest may use dynamic features (AMX). KVM_GET_XSAVE
        // fails with EINVAL exactly in that case, so a successful GET on this vCPU proves the
        // kernel will read no more than the 4096 bytes `xsave` holds.
        VcpuFd::get_xsave(self).map_err(errno)?;
        // SAFETY: see above: the kernel reads at most size_of::<kvm_xsave>() bytes from the live
        // reference `xsave`.
        unsafe { VcpuFd::set_xsave(self, xsave) }.map_err(errno)
    }
    fn get_debugregs(&self) -> io::Result<kvm_debugregs> {
        VcpuFd::get_debug_regs(self).map_err(errno)
    }
    fn set_debugregs(&self, dregs: &kvm_debugregs) -> io::Result<()> {
        VcpuFd::set_debug_regs(self, dregs).map_err(errno)
    }
    fn get_xcrs(&self) -> io::Result<kvm_xcrs> {
        VcpuFd::get_xcrs(self).map_err(errno)
    }
    fn set_xcrs(&self, xcrs: &kvm_xcrs) -> io::Result<()> {
        VcpuFd::set_xcrs(self, xcrs).map_err(errno)
    }
    fn get_msr(&self, index: u32) -> io::Result<u64> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
        let n = VcpuFd::get_msrs(self, &mut msrs).map_err(errno)?;
        match msrs.as_slice().first() {
            Some(e) if n == 1 => Ok(e.data),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("KVM_GET_MSRS refused MSR {index:#x}"),
            )),
        }
    }
    fn set_msr(&self, index: u32, value: u64) -> io::Result<()> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data: value,
            ..Default::default()
        }])
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
        match VcpuFd::set_msrs(self, &msrs).map_err(errno)? {
            1 => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("KVM_SET_MSRS refused MSR {index:#x} = {value:#x}"),
            )),
        }
    }
    fn get_vcpu_events(&self) -> io::Result<kvm_vcpu_events> {
        VcpuFd::get_vcpu_events(self).map_err(errno)
    }
    fn set_vcpu_events(&self, events: &kvm_vcpu_events) -> io::Result<()> {
        VcpuFd::set_vcpu_events(self, events).map_err(errno)
    }
    fn complete_pending(&mut self) -> io::Result<()> {
        self.set_kvm_immediate_exit(1);
        let r = self.run().map(|_| ()).map_err(errno);
        self.set_kvm_immediate_exit(0);
        match r {
            // KVM ran the pending completion, then honoured immediate_exit.
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            // The completion itself asked for an exit (e.g. single-step debugging): the
            // completion is done all the same.
            Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }
    fn set_pending_result(&mut self, result: u64) -> io::Result<()> {
        super::exit::set_hcall_result(self.get_kvm_run(), result);
        Ok(())
    }
    fn set_event_notify(&self, target: Option<u32>) -> io::Result<()> {
        use crate::notify::VcpuEventNotifyExt;
        match target {
            Some(t) => self.arm_event_notify(t),
            None => self.disarm_event_notify(),
        }
        .map_err(notify_err)
    }
    fn event_pending(&self) -> io::Result<bool> {
        use crate::notify::VcpuEventNotifyExt;
        Ok(self.event_notify().map_err(notify_err)?.pending)
    }
}

fn poisoned() -> io::Error {
    io::Error::other("vCPU mutex poisoned")
}

/// For VMMs that share a VP's vCPUs between threads: each call locks the vCPU for its duration.
impl<T: VtlVcpu> VtlVcpu for Arc<Mutex<T>> {
    fn get_regs(&self) -> io::Result<kvm_regs> {
        self.lock().map_err(|_| poisoned())?.get_regs()
    }
    fn set_regs(&self, regs: &kvm_regs) -> io::Result<()> {
        self.lock().map_err(|_| poisoned())?.set_regs(regs)
    }
    fn get_sregs(&self) -> io::Result<kvm_sregs> {
        self.lock().map_err(|_| poisoned())?.get_sregs()
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> io::Result<()> {
        self.lock().map_err(|_| poisoned())?.set_sregs(sregs)
    }
    fn get_xsave(&self) -> io::Result<kvm_xsave> {
        self.lock().map_err(|_| poisoned())?.get_xsave()
    }
    fn set_xsave(&self, xsave: &kvm_xsave) -> io::Result<()> {
        self.lock().map_err(|_| poisoned())?.set_xsave(xsave)
    }
    fn get_debugregs(&self) -> io::Result<kvm_debugregs> {
        self.lock().map_err(|_| poisoned())?.get_debugregs()
    }
    fn set_debugregs(&self, dregs: &kvm_debugregs) -> io::Result<()> {
        self.lock().map_err(|_| poisoned())?.set_debugregs(dregs)
    }
    fn get_xcrs(&self) -> io::Result<kvm_xcrs> {
        self.lock().map_err(|_| poisoned())?.get_xcrs()
    }
    fn set_xcrs(&self, xcrs: &kvm_xcrs) -> io::Result<()> {
        self.lock().map_err(|_| poisoned())?.set_xcrs(xcrs)
    }
    fn get_msr(&self, index: u32) -> io::Result<u64> {
        self.lock().map_err(|_| poisoned())?.get_msr(index)
    }
    fn set_msr(&self, index: u32, value: u64) -> io::Result<()> {
        self.lock().map_err(|_| poisoned())?.set_msr(index, value)
    }
    fn get_vcpu_events(&self) -> io::Result<kvm_vcpu_events> {
        self.lock().map_err(|_| poisoned())?.get_vcpu_events()
    }
    fn set_vcpu_events(&self, events: &kvm_vcpu_events) -> io::Result<()> {
        self.lock().map_err(|_| poisoned())?.set_vcpu_events(events)
    }
    fn complete_pending(&mut self) -> io::Result<()> {
        self.lock().map_err(|_| poisoned())?.complete_pending()
    }
    fn set_pending_result(&mut self, result: u64) -> io::Result<()> {
        self.lock()
            .map_err(|_| poisoned())?
            .set_pending_result(result)
    }
    fn vcpu_id(&self) -> Option<u32> {
        self.lock().ok()?.vcpu_id()
    }
    fn set_event_notify(&self, target: Option<u32>) -> io::Result<()> {
        self.lock()
            .map_err(|_| poisoned())?
            .set_event_notify(target)
    }
    fn event_pending(&self) -> io::Result<bool> {
        self.lock().map_err(|_| poisoned())?.event_pending()
    }
}

/// Why a guest-memory access failed: the range is not (entirely) guest RAM. The state machine
/// answers the hypercall with a TLFS status; it is never a VMM error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest physical range {gpa:#x}+{len:#x} is not guest RAM")]
pub struct MemoryError {
    /// Start of the access.
    pub gpa: u64,
    /// Length of the access.
    pub len: usize,
}

/// Guest physical memory, as the VMM maps it.
pub trait GuestMemory {
    /// Read `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Write `buf` at `gpa`.
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError>;
}

/// Interrupt delivery into one APIC group: the cross-VTL IPI path.
pub trait Delivery {
    /// Deliver fixed interrupt `vector` (edge) to the vCPU with guest-visible APIC ID `apic_id`
    /// in APIC group `group`.
    fn deliver_fixed(&self, group: u32, apic_id: u32, vector: u8) -> io::Result<()>;
}

/// [`Delivery`] through `KVM_SIGNAL_MSI` with the series' `KVM_MSI_VALID_APIC_GROUP`
/// ([`crate::msi_to_group`]): physical destination mode, fixed, edge. APIC IDs above 255 go in
/// `address_hi` bits 31:8, which KVM reads when the VMM enabled `KVM_CAP_X2APIC_API`.
#[derive(Debug, Clone, Copy)]
pub struct MsiDelivery<'a>(pub &'a VmFd);

/// The `KVM_SIGNAL_MSI` payload [`MsiDelivery`] sends (exposed for VMMs and tests).
pub fn fixed_msi(group: u32, apic_id: u32, vector: u8) -> kvm_msi {
    let msi = kvm_msi {
        address_lo: 0xFEE0_0000 | ((apic_id & 0xff) << 12),
        address_hi: apic_id & 0xFFFF_FF00,
        data: u32::from(vector),
        ..Default::default()
    };
    crate::msi_to_group(msi, group)
}

impl Delivery for MsiDelivery<'_> {
    fn deliver_fixed(&self, group: u32, apic_id: u32, vector: u8) -> io::Result<()> {
        self.0
            .signal_msi(fixed_msi(group, apic_id, vector))
            .map(|_| ())
            .map_err(errno)
    }
}

/// A `HvCallModifyVtlProtectionMask` request after the state machine validated its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectionRequest {
    /// The calling VP.
    pub vp_index: u32,
    /// The caller's VTL.
    pub caller_vtl: u8,
    /// The VTL whose view of memory lower VTLs are restricted by (`TargetVtl`, default the
    /// caller's); always `<= caller_vtl` and `> 0`.
    pub target_vtl: u8,
    /// `HV_MAP_GPA_FLAGS` (bit 0 read, 1 write, 2 kernel-execute, 3 user-execute, ...).
    pub map_flags: u32,
}

/// Status of a rep hypercall: how many reps (of those handed over) were done, and the status.
/// [`HvStatus::SUCCESS`] means all of them; `completed` counts only with another status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepStatus {
    /// Status; [`HvStatus::SUCCESS`] if all were done.
    pub status: HvStatus,
    /// How many of the handed-over elements were processed.
    pub completed: usize,
}

/// The memory-protection side of VSM (a later issue implements it with the series' protection
/// ioctl).
pub trait Protections {
    /// Apply `req.map_flags` to the guest page numbers `gpns`.
    fn modify_vtl_protection_mask(
        &mut self,
        req: &ProtectionRequest,
        gpns: &[u64],
    ) -> io::Result<RepStatus>;

    /// HvRegisterVsmPartitionConfig of `vtl` is about to change to `value` (already checked
    /// against the supported bits). Return a non-success status to refuse it.
    fn partition_config_changed(&mut self, vtl: u8, value: u64) -> io::Result<HvStatus> {
        let _ = (vtl, value);
        Ok(HvStatus::SUCCESS)
    }
}

/// The default [`Protections`]: memory protections are not implemented, and
/// `HvCallModifyVtlProtectionMask` answers `HV_STATUS_INVALID_HYPERCALL_CODE` with no rep done,
/// as a hypervisor that does not offer the call would.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProtections;

impl Protections for NoProtections {
    fn modify_vtl_protection_mask(
        &mut self,
        _req: &ProtectionRequest,
        _gpns: &[u64],
    ) -> io::Result<RepStatus> {
        Ok(RepStatus {
            status: HvStatus::INVALID_HYPERCALL_CODE,
            completed: 0,
        })
    }
}

/// Creates the sibling vCPU of a VP for a VTL being enabled with `HvCallEnableVpVtl`, when the
/// VMM did not register one in advance with [`super::Partition::add_sibling`].
///
/// A KVM implementation creates a vCPU (a new vcpu_id), assigns it
/// `ApicGroup { group, apic_id, vtl }` with [`crate::VcpuApicGroupExt::set_apic_group`], gives it
/// the VP's CPUID and writes `HV_X64_MSR_VP_INDEX` = `vp_index` with a host `KVM_SET_MSRS`.
pub trait SiblingFactory<V> {
    /// The new vCPU, or `None` if the VMM cannot provide one (the guest then gets
    /// `HV_STATUS_NO_RESOURCES`).
    fn create_sibling(
        &mut self,
        vp_index: u32,
        apic_id: u32,
        vtl: u8,
        group: u32,
    ) -> io::Result<Option<V>>;
}

/// A [`SiblingFactory`] that never creates one: every sibling must be registered in advance.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSiblings;

impl<V> SiblingFactory<V> for NoSiblings {
    fn create_sibling(&mut self, _: u32, _: u32, _: u8, _: u32) -> io::Result<Option<V>> {
        Ok(None)
    }
}

/// What the state machine may use while answering one hypercall.
pub struct Env<'a, V> {
    /// Guest RAM: hypercall input/output pages and the VP assist pages.
    pub memory: &'a dyn GuestMemory,
    /// Interrupt delivery into an APIC group.
    pub delivery: &'a dyn Delivery,
    /// Memory protections.
    pub protections: &'a mut dyn Protections,
    /// Sibling vCPU creation.
    pub siblings: &'a mut dyn SiblingFactory<V>,
}
