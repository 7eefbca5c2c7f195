// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The small traits through which the state machine reaches KVM and the VMM, so that its logic
//! runs (and is unit-tested) without `/dev/kvm`.

use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msi, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave, Msrs, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::hv::HvStatus;

/// One vCPU of a VP (one VTL's sibling): the state the VTL switch moves and keeps.
///
/// Errors are host-side failures (an ioctl failed); the state machine turns them into
/// [`super::VtlError::Vcpu`], except where a value that came from the guest was refused with
/// [`io::ErrorKind::InvalidInput`] (`EINVAL`), which becomes a TLFS status instead.
///
/// A VMM whose vCPU type wraps a kvm-ioctls `VcpuFd` implements [`AsVcpuFd`] instead and gets
/// this trait from the blanket implementation.
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
    /// `KVM_GET_MP_STATE`: `KVM_MP_STATE_RUNNABLE`, `KVM_MP_STATE_UNINITIALIZED`, ...
    fn get_mp_state(&self) -> io::Result<u32>;
    /// `KVM_SET_MP_STATE`.
    fn set_mp_state(&self, mp_state: u32) -> io::Result<()>;
    /// `KVM_SET_MP_STATE(KVM_MP_STATE_RUNNABLE)`. With an in-kernel local APIC, KVM creates
    /// every vCPU whose vcpu_id is not the BSP's in `KVM_MP_STATE_UNINITIALIZED`, where
    /// `KVM_RUN` waits for INIT/SIPI; a sibling never gets those (the TLFS starts an enabled
    /// VTL with its initial context), so `HvCallEnableVpVtl` makes it runnable with this.
    fn make_runnable(&self) -> io::Result<()> {
        self.set_mp_state(KVM_MP_STATE_RUNNABLE)
    }
    /// Finish the completion of the hypercall this vCPU exited on, without entering the guest
    /// (`KVM_RUN` with `immediate_exit`): KVM advances RIP past the hypercall instruction (and,
    /// except for VtlCall/VtlReturn, writes `hcall.result` to RAX). A no-op when nothing is
    /// pending. Needed before the state machine rewrites the RIP of a parked vCPU, which the
    /// pending completion would otherwise move again.
    ///
    /// Fails (doing nothing) unless the vCPU is runnable or halted: for a vCPU in
    /// `KVM_MP_STATE_UNINITIALIZED` (or waiting for a SIPI), KVM returns `EINTR` before it runs
    /// the completion, which would look like success ([`completion_blocker`]).
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
    /// `KVM_TRANSLATE`: the guest-physical address of linear address `gva` through this vCPU's
    /// page tables, `None` if it does not translate. Used to fetch the instruction bytes of a
    /// secure intercept. The default fails with [`io::ErrorKind::Unsupported`] (the message then
    /// carries no instruction bytes).
    fn translate_gva(&self, gva: u64) -> io::Result<Option<u64>> {
        let _ = gva;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this vCPU type has no KVM_TRANSLATE",
        ))
    }
}

/// A VMM's vCPU type that holds a kvm-ioctls `VcpuFd`: [`VtlVcpu`] comes with it, every
/// operation on that fd (and event notification through [`crate::notify`]).
///
/// ```
/// # use kvm_ioctls::VcpuFd;
/// struct MyVcpu { id: u32, fd: VcpuFd }
/// impl vtlkit_uapi::vtl::AsVcpuFd for MyVcpu {
///     fn vcpu_fd(&self) -> &VcpuFd { &self.fd }
///     fn vcpu_fd_mut(&mut self) -> &mut VcpuFd { &mut self.fd }
///     fn known_vcpu_id(&self) -> Option<u32> { Some(self.id) }
/// }
/// ```
pub trait AsVcpuFd {
    /// The vCPU fd.
    fn vcpu_fd(&self) -> &VcpuFd;
    /// The vCPU fd, mutably (`KVM_RUN` and `kvm_run` need it).
    fn vcpu_fd_mut(&mut self) -> &mut VcpuFd;
    /// The vcpu_id the fd was created with, if the type knows it ([`VtlVcpu::vcpu_id`]).
    fn known_vcpu_id(&self) -> Option<u32> {
        None
    }
}

/// A bare `VcpuFd` (its vcpu_id is unknown).
impl AsVcpuFd for VcpuFd {
    fn vcpu_fd(&self) -> &VcpuFd {
        self
    }
    fn vcpu_fd_mut(&mut self) -> &mut VcpuFd {
        self
    }
}

fn notify_err(e: crate::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

fn errno(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// Why `KVM_RUN` with `immediate_exit` would not run a vCPU's pending hypercall completion in
/// MP state `mp_state`, or `None` if it would. KVM checks for `KVM_MP_STATE_UNINITIALIZED`
/// (x86.c, `kvm_arch_vcpu_ioctl_run`) before it runs `complete_userspace_io`, and returns
/// `EINTR` at once when `immediate_exit` is set; a vCPU that received INIT or waits for a SIPI
/// was reset by it, so its completion is meaningless as well. Runnable and halted vCPUs
/// complete.
pub fn completion_blocker(mp_state: u32) -> Option<&'static str> {
    match mp_state {
        KVM_MP_STATE_RUNNABLE | KVM_MP_STATE_HALTED => None,
        KVM_MP_STATE_UNINITIALIZED => Some("KVM_MP_STATE_UNINITIALIZED (waiting for INIT/SIPI)"),
        KVM_MP_STATE_INIT_RECEIVED => Some("KVM_MP_STATE_INIT_RECEIVED (reset by an INIT)"),
        KVM_MP_STATE_SIPI_RECEIVED => Some("KVM_MP_STATE_SIPI_RECEIVED"),
        _ => Some("an MP state other than runnable or halted"),
    }
}

/// [`VtlVcpu::complete_pending`] with `KVM_RUN(immediate_exit)` as `run`: checks `mp_state`
/// first ([`completion_blocker`]), then treats `EINTR` (KVM ran the completion, then honoured
/// `immediate_exit`) and a plain exit (the completion itself asked for one, e.g. single-step)
/// as done.
pub(super) fn complete_with(mp_state: u32, run: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    if let Some(why) = completion_blocker(mp_state) {
        return Err(io::Error::other(format!(
            "the vCPU is in {why}: KVM_RUN would return EINTR without completing its pending \
             hypercall; make it runnable (KVM_SET_MP_STATE) first"
        )));
    }
    match run() {
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
        r => r,
    }
}

impl<T: AsVcpuFd> VtlVcpu for T {
    fn get_regs(&self) -> io::Result<kvm_regs> {
        self.vcpu_fd().get_regs().map_err(errno)
    }
    fn set_regs(&self, regs: &kvm_regs) -> io::Result<()> {
        self.vcpu_fd().set_regs(regs).map_err(errno)
    }
    fn get_sregs(&self) -> io::Result<kvm_sregs> {
        self.vcpu_fd().get_sregs().map_err(errno)
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> io::Result<()> {
        self.vcpu_fd().set_sregs(sregs).map_err(errno)
    }
    fn get_xsave(&self) -> io::Result<kvm_xsave> {
        self.vcpu_fd().get_xsave().map_err(errno)
    }
    fn set_xsave(&self, xsave: &kvm_xsave) -> io::Result<()> {
        let fd = self.vcpu_fd();
        // KVM_SET_XSAVE copies the vCPU's uABI XSAVE size from userspace, which is more than
        // size_of::<kvm_xsave>() only when the guest may use dynamic features (AMX). KVM_GET_XSAVE
        // fails with EINVAL exactly in that case, so a successful GET on this vCPU proves the
        // kernel will read no more than the 4096 bytes `xsave` holds.
        fd.get_xsave().map_err(errno)?;
        // SAFETY: see above: the kernel reads at most size_of::<kvm_xsave>() bytes from the live
        // reference `xsave`.
        unsafe { fd.set_xsave(xsave) }.map_err(errno)
    }
    fn get_debugregs(&self) -> io::Result<kvm_debugregs> {
        self.vcpu_fd().get_debug_regs().map_err(errno)
    }
    fn set_debugregs(&self, dregs: &kvm_debugregs) -> io::Result<()> {
        self.vcpu_fd().set_debug_regs(dregs).map_err(errno)
    }
    fn get_xcrs(&self) -> io::Result<kvm_xcrs> {
        self.vcpu_fd().get_xcrs().map_err(errno)
    }
    fn set_xcrs(&self, xcrs: &kvm_xcrs) -> io::Result<()> {
        self.vcpu_fd().set_xcrs(xcrs).map_err(errno)
    }
    fn get_msr(&self, index: u32) -> io::Result<u64> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
        let n = self.vcpu_fd().get_msrs(&mut msrs).map_err(errno)?;
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
        match self.vcpu_fd().set_msrs(&msrs).map_err(errno)? {
            1 => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("KVM_SET_MSRS refused MSR {index:#x} = {value:#x}"),
            )),
        }
    }
    fn get_vcpu_events(&self) -> io::Result<kvm_vcpu_events> {
        self.vcpu_fd().get_vcpu_events().map_err(errno)
    }
    fn set_vcpu_events(&self, events: &kvm_vcpu_events) -> io::Result<()> {
        self.vcpu_fd().set_vcpu_events(events).map_err(errno)
    }
    fn get_mp_state(&self) -> io::Result<u32> {
        Ok(self.vcpu_fd().get_mp_state().map_err(errno)?.mp_state)
    }
    fn set_mp_state(&self, mp_state: u32) -> io::Result<()> {
        self.vcpu_fd()
            .set_mp_state(kvm_mp_state { mp_state })
            .map_err(errno)
    }
    fn complete_pending(&mut self) -> io::Result<()> {
        let mp_state = VtlVcpu::get_mp_state(self)?;
        let fd = self.vcpu_fd_mut();
        complete_with(mp_state, || {
            fd.set_kvm_immediate_exit(1);
            let r = fd.run().map(|_| ()).map_err(errno);
            fd.set_kvm_immediate_exit(0);
            r
        })
    }
    fn set_pending_result(&mut self, result: u64) -> io::Result<()> {
        super::exit::set_hcall_result(self.vcpu_fd_mut().get_kvm_run(), result);
        Ok(())
    }
    fn vcpu_id(&self) -> Option<u32> {
        self.known_vcpu_id()
    }
    fn set_event_notify(&self, target: Option<u32>) -> io::Result<()> {
        use crate::notify::VcpuEventNotifyExt;
        let fd = self.vcpu_fd();
        match target {
            Some(t) => fd.arm_event_notify(t),
            None => fd.disarm_event_notify(),
        }
        .map_err(notify_err)
    }
    fn event_pending(&self) -> io::Result<bool> {
        use crate::notify::VcpuEventNotifyExt;
        Ok(self.vcpu_fd().event_notify().map_err(notify_err)?.pending)
    }
    fn translate_gva(&self, gva: u64) -> io::Result<Option<u64>> {
        let t = self.vcpu_fd().translate_gva(gva).map_err(errno)?;
        Ok((t.valid != 0).then_some(t.physical_address))
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
    fn get_mp_state(&self) -> io::Result<u32> {
        self.lock().map_err(|_| poisoned())?.get_mp_state()
    }
    fn set_mp_state(&self, mp_state: u32) -> io::Result<()> {
        self.lock().map_err(|_| poisoned())?.set_mp_state(mp_state)
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
    fn translate_gva(&self, gva: u64) -> io::Result<Option<u64>> {
        self.lock().map_err(|_| poisoned())?.translate_gva(gva)
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
    ///
    /// [`io::ErrorKind::InvalidInput`] means this destination cannot be addressed (e.g.
    /// [`ApicIdOutOfRange`]): not a host failure, the guest's IPI gets
    /// `HV_STATUS_INVALID_PARAMETER`. Any other error is a host failure
    /// ([`super::VtlError::Delivery`]).
    fn deliver_fixed(&self, group: u32, apic_id: u32, vector: u8) -> io::Result<()>;
}

/// [`MsiDelivery`] refused an APIC ID above 255 on a VM without 32-bit x2APIC IDs in MSIs: KVM
/// would ignore `address_hi` and deliver to `apic_id & 0xff`, another VP. Carried in an
/// [`io::ErrorKind::InvalidInput`] error ([`io::Error::get_ref`] and `downcast_ref` get it
/// back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "APIC ID {apic_id} does not fit an xAPIC MSI; KVM would deliver it to APIC ID {} \
     (enable KVM_CAP_X2APIC_API with KVM_X2APIC_API_USE_32BIT_IDS)",
    apic_id & 0xff
)]
pub struct ApicIdOutOfRange {
    /// The APIC ID asked for.
    pub apic_id: u32,
}

/// [`Delivery`] through `KVM_SIGNAL_MSI` with the series' `KVM_MSI_VALID_APIC_GROUP`
/// ([`crate::msi_to_group`]): physical destination mode, fixed, edge ([`fixed_msi`]).
///
/// * APIC IDs above 255 go in `address_hi` bits 31:8, which KVM reads only when the VMM enabled
///   `KVM_CAP_X2APIC_API` with `KVM_X2APIC_API_USE_32BIT_IDS`; tell [`MsiDelivery::new`]
///   whether it did. Without it, such an ID is refused with [`ApicIdOutOfRange`] (the guest's
///   IPI gets `HV_STATUS_INVALID_PARAMETER`) instead of reaching another VP.
/// * `KVM_SIGNAL_MSI` naming a group returns how many vCPUs took the interrupt. 0 means no
///   vCPU of the group has the APIC ID: the state machine only delivers to VPs whose target
///   VTL is enabled, so this is the VMM's misconfiguration (a sibling in another group or with
///   another APIC ID), not the guest's. It is logged (`log::warn!`) and not an error: the
///   guest's IPI still succeeds, as an IPI to an absent APIC does on hardware.
#[derive(Debug, Clone, Copy)]
pub struct MsiDelivery<'a> {
    vm: &'a VmFd,
    x2apic_ids: bool,
}

impl<'a> MsiDelivery<'a> {
    /// Delivery on `vm`; `x2apic_ids`: the VMM enabled `KVM_CAP_X2APIC_API` with
    /// `KVM_X2APIC_API_USE_32BIT_IDS` on it, so APIC IDs above 255 can be addressed.
    pub fn new(vm: &'a VmFd, x2apic_ids: bool) -> Self {
        Self { vm, x2apic_ids }
    }
}

/// The `KVM_SIGNAL_MSI` payload [`MsiDelivery`] sends (exposed for VMMs and tests). The APIC
/// ID's bits 31:8 go in `address_hi`, which only a VM with 32-bit x2APIC IDs reads.
pub fn fixed_msi(group: u32, apic_id: u32, vector: u8) -> kvm_msi {
    let msi = kvm_msi {
        address_lo: 0xFEE0_0000 | ((apic_id & 0xff) << 12),
        address_hi: apic_id & 0xFFFF_FF00,
        data: u32::from(vector),
        ..Default::default()
    };
    crate::msi_to_group(msi, group)
}

/// [`MsiDelivery::deliver_fixed`] with `KVM_SIGNAL_MSI` as `signal` (its return value: the
/// number of vCPUs that took the MSI).
pub(super) fn deliver_msi(
    x2apic_ids: bool,
    group: u32,
    apic_id: u32,
    vector: u8,
    signal: impl FnOnce(kvm_msi) -> io::Result<i32>,
) -> io::Result<()> {
    if apic_id > 0xff && !x2apic_ids {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            ApicIdOutOfRange { apic_id },
        ));
    }
    let taken = signal(fixed_msi(group, apic_id, vector))?;
    if taken == 0 {
        log::warn!(
            "KVM_SIGNAL_MSI of vector {vector:#x} to APIC ID {apic_id} in group {group}: no vCPU \
             took it (no vCPU with that APIC ID in the group?)"
        );
    }
    Ok(())
}

impl Delivery for MsiDelivery<'_> {
    fn deliver_fixed(&self, group: u32, apic_id: u32, vector: u8) -> io::Result<()> {
        deliver_msi(self.x2apic_ids, group, apic_id, vector, |msi| {
            self.vm.signal_msi(msi).map_err(errno)
        })
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
/// It need not touch the MP state: a vCPU whose vcpu_id is not the BSP's starts in
/// `KVM_MP_STATE_UNINITIALIZED` (in-kernel LAPIC), and `HvCallEnableVpVtl` makes the sibling
/// runnable ([`VtlVcpu::make_runnable`]) when it gives it its initial context.
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
