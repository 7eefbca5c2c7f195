// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! A reference Hyper-V VTL state machine for a Rust VMM on the vtlkit kernel.
//!
//! With the series, KVM knows nothing about VTLs: each VTL of a virtual processor (VP) is a
//! sibling vCPU with the VP's APIC ID and VP index in the APIC group of its VTL, and with
//! `KVM_CAP_HYPERV_VSM` ([`crate::enable_hyperv_vsm`]) the VSM hypercalls exit to userspace.
//! This module is that userspace part:
//!
//! * a [`Partition`] owns the VPs ([`Vp`]), each holding one vCPU per enabled VTL and knowing
//!   which one is active;
//! * [`Partition::handle_hypercall`] answers a forwarded hypercall ([`HcallExit`]):
//!   EnablePartitionVtl, EnableVpVtl (with the initial context), VtlCall and VtlReturn (the
//!   switch: TLFS shared registers carried over, private ones kept, `HV_VP_VTL_CONTROL`'s entry
//!   reason and the RAX/RCX restore in the VP assist page), Get/SetVpRegisters (VSM registers
//!   and a lower VTL's private state), ModifyVtlProtectionMask (handed to a [`Protections`]
//!   hook; [`KvmProtections`] applies it with `KVM_SET_VTL_PROTECTION`), and the cross-VTL synthetic cluster IPIs (a lower VTL may not target a higher one;
//!   a higher VTL's IPI is delivered into the lower VTL's APIC group through [`Delivery`]);
//! * [`Partition::handle_event_notify`] answers a `KVM_EXIT_EVENT_NOTIFY`
//!   ([`crate::notify`]): an interrupt for a higher VTL than the running one enters that VTL
//!   (entry reason Interrupt); the arming policy that makes the running sibling exit is applied
//!   at every switch once the VMM called [`Partition::enable_event_notify`];
//! * [`Partition::handle_memory_fault`] turns a lower VTL's protection violation
//!   (`KVM_EXIT_MEMORY_FAULT`, [`crate::protections`]) into a secure intercept: a memory
//!   intercept message in the higher VTL's SynIC message page, its SINT0 raised, the VP
//!   switched to it ([`intercept`]);
//! * KVM is reached only through the [`VtlVcpu`], [`GuestMemory`], [`Delivery`],
//!   [`Protections`] and [`SiblingFactory`] traits, so the logic runs without `/dev/kvm`.
//!   [`VtlVcpu`] is implemented for kvm-ioctls' `VcpuFd` (and `Arc<Mutex<_>>` of one), and
//!   [`MsiDelivery`] delivers with `KVM_SIGNAL_MSI` naming the group (told whether the VM has
//!   32-bit x2APIC IDs in MSIs).
//!
//! Decisions the guest does not see as a status (a #UD, an IPI target skipped, an assist page
//! that could not be read or written, a result with no HCALL exit to go to) are logged through
//! the `log` crate at debug or trace level; a `KVM_SIGNAL_MSI` nobody took at warn level.
//!
//! Guest mistakes never become errors or panics: a malformed hypercall gets its TLFS status
//! (or, for a VtlCall/VtlReturn the TLFS says faults, a #UD). [`VtlError`] is only for the VMM's
//! side: an ioctl failed, or the VMM asked about a VP or VTL it never registered.
//!
//! # A run loop
//!
//! ```no_run
//! use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
//! use vtlkit_uapi::vtl::{
//!     set_hcall_result, Env, GuestMemory, HcallExit, MemoryError, MsiDelivery, NoProtections,
//!     NoSiblings, Outcome, Partition, PartitionConfig,
//! };
//!
//! # struct Ram;
//! # impl GuestMemory for Ram {
//! #     fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> { Ok(()) }
//! #     fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> { Ok(()) }
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kvm = Kvm::new()?;
//! let vm = kvm.create_vm()?;
//! vtlkit_uapi::enable_hyperv_vsm(&vm)?;
//! // ... irqchip, KVM_CAP_APIC_GROUPS, memory, and VP 0's VTL0 vCPU in group 0 ...
//! let vtl0: VcpuFd = vm.create_vcpu(0)?;
//! let mut partition = Partition::new(PartitionConfig::default())?; // max VTL 1, group = VTL
//! partition.add_vp(0, 0, vtl0)?;
//! // ... and VTL1's sibling (vcpu_id 1, group 1, APIC ID 0, VP index 0), before the guest
//! // enables VTL1 (or hand the Env a SiblingFactory that creates it on demand).
//! partition.add_sibling(0, 1, vm.create_vcpu(1)?)?;
//!
//! let ram = Ram;
//! // No KVM_CAP_X2APIC_API here: APIC IDs above 255 cannot be addressed, and are refused.
//! let delivery = MsiDelivery::new(&vm, false);
//! let (mut protections, mut siblings) = (NoProtections, NoSiblings);
//! loop {
//!     let vp = partition.vp_mut(0).expect("VP 0 exists");
//!     let vtl = vp.active_vtl();
//!     let vcpu = vp.active_mut();
//!     match vcpu.run()? {
//!         VcpuExit::Hyperv => {
//!             let Some(exit) = HcallExit::from_kvm_run(vcpu.get_kvm_run()) else { continue };
//!             let mut env = Env {
//!                 memory: &ram,
//!                 delivery: &delivery,
//!                 protections: &mut protections,
//!                 siblings: &mut siblings,
//!             };
//!             match partition.handle_hypercall(&mut env, 0, vtl, &exit)? {
//!                 // Same vCPU again: its next KVM_RUN hands the status to the guest.
//!                 Outcome::Complete { result } => {
//!                     let vp = partition.vp_mut(0).expect("VP 0 exists");
//!                     set_hcall_result(vp.active_mut().get_kvm_run(), result);
//!                 }
//!                 // The loop now runs the new active VTL's vCPU; the other stays parked
//!                 // with its completion pending until it runs again.
//!                 Outcome::Switched { .. } | Outcome::Exception { .. } => {}
//!                 Outcome::NotHandled => { /* other Hyper-V hypercalls: the VMM's */ }
//!             }
//!         }
//!         // A protection violation (KVM_CAP_VTL_PROTECTIONS): a secure intercept for the
//!         // VTL above; Switched means run the new active VTL's vCPU.
//!         VcpuExit::MemoryFault { .. } => {
//!             let run = vcpu.get_kvm_run();
//!             let Some(fault) = vtlkit_uapi::protections::memory_fault_exit(run) else {
//!                 continue;
//!             };
//!             let mut env = Env {
//!                 memory: &ram,
//!                 delivery: &delivery,
//!                 protections: &mut protections,
//!                 siblings: &mut siblings,
//!             };
//!             partition.handle_memory_fault(&mut env, 0, vtl, &fault)?;
//!         }
//!         VcpuExit::Hlt => break,
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A VMM with one thread per VP puts the `Partition` in a `Mutex`, uses `Arc<Mutex<VcpuFd>>`
//! as the vCPU type, clones the active vCPU's `Arc` and releases the partition before running
//! it: EnableVpVtl and IPIs from other VPs then never wait for a running guest.
//!
//! # Decisions (where the TLFS leaves room or the kernel contract shapes the answer)
//!
//! | situation | answer |
//! |---|---|
//! | reserved control-word bits, rep count or variable header on a simple call, rep start > rep count | `HV_STATUS_INVALID_HYPERCALL_INPUT` (as KVM) |
//! | input/output GPA not 8-byte aligned, or the data crossing its 4 KiB page | `HV_STATUS_INVALID_ALIGNMENT` |
//! | input/output not guest RAM; a fast call whose input needs more than RDX/R8 (and XMM0-5 when forwarded) | `HV_STATUS_INVALID_HYPERCALL_INPUT` |
//! | PartitionId other than `HV_PARTITION_ID_SELF` | `HV_STATUS_INVALID_PARTITION_ID` |
//! | non-zero reserved input fields, `HV_INPUT_VTL` bits 7:5 (VSM calls) | `HV_STATUS_INVALID_PARAMETER` |
//! | the same in the IPI calls, and IPI vectors outside 0x10..=0xff | `HV_STATUS_INVALID_HYPERCALL_INPUT`, as the kernel answers same-VTL IPIs |
//! | VtlCall with RAX != 0, other control bits, or no higher VTL enabled on the VP; VtlReturn with RAX bits other than 0, other control bits, or from the lowest enabled VTL | #UD queued on the caller at the hypercall instruction (TLFS); [`Outcome::Exception`] |
//! | a VtlCall/VtlReturn that switches, or gets #UD | the caller's exit result is set to `HV_STATUS_SUCCESS` ([`VtlVcpu::set_pending_result`]): KVM keeps `hcall.result` from the vCPU's previous forwarded hypercall and would write a stale failure status into RAX on completion |
//! | VtlReturn's fast flag | bit 0 of the caller's **RAX** (the TLFS VTL-switch input register, as in OpenVMM), not of RCX, whose bits 15:0 hold call code 0x12 |
//! | non-fast VtlReturn with the returning VTL's VP assist page disabled or not in RAM | RAX/RCX are not restored (they keep the shared values) |
//! | VtlCall into a VTL whose VP assist page is disabled or not in RAM | the entry reason is not written |
//! | EnablePartitionVtl: TargetVtl 0 or above the configured maximum; EnableMbec without MBEC in VsmCapabilities | `HV_STATUS_INVALID_PARAMETER` |
//! | EnablePartitionVtl from a VTL that is neither higher than the target nor the highest enabled VTL below it | `HV_STATUS_ACCESS_DENIED` |
//! | EnableVpVtl of a VTL not enabled for the partition | `HV_STATUS_INVALID_VTL_STATE` |
//! | EnableVpVtl from a lower VTL once the target VTL runs on some VP, or from a lower VTL that is not the highest enabled below the target | `HV_STATUS_ACCESS_DENIED` |
//! | EnableVpVtl with no sibling vCPU registered and none created | `HV_STATUS_NO_RESOURCES` |
//! | an initial context or register value KVM refuses (`EINVAL`) | `HV_STATUS_INVALID_PARAMETER` (EnableVpVtl) / `HV_STATUS_INVALID_REGISTER_VALUE` (SetVpRegisters) |
//! | Get/SetVpRegisters of a higher VTL | `HV_STATUS_ACCESS_DENIED`; of a VTL not enabled on the VP: `HV_STATUS_INVALID_VTL_STATE` |
//! | CPU registers of another VP than the caller's | `HV_STATUS_INVALID_VP_STATE` (its vCPU may be running); VSM registers of other VPs are fine |
//! | SetVpRegisters of the caller's own (active) RIP | `HV_STATUS_INVALID_VP_STATE`: the pending completion of this hypercall would move it again. A parked lower VTL's RIP is fine: its pending completion is finished first |
//! | unknown register name | `HV_STATUS_INVALID_PARAMETER`; writing a read-only one: `HV_STATUS_ACCESS_DENIED` |
//! | VsmPartitionConfig intercept bits, clearing EnableVtlProtection, VsmVpSecureConfig bits other than MbecEnabled (with MBEC) and TlbLocked | `HV_STATUS_INVALID_REGISTER_VALUE` |
//! | cross-VTL IPI to a higher VTL | `HV_STATUS_ACCESS_DENIED`; to a VTL not enabled in the partition: `HV_STATUS_INVALID_PARAMETER`; VPs of the set that do not exist or lack the VTL are skipped |
//! | a VP of an IPI's set that [`Delivery`] cannot address ([`io::ErrorKind::InvalidInput`](std::io::ErrorKind::InvalidInput), e.g. APIC ID > 255 without x2APIC MSIs: [`ApicIdOutOfRange`]) | the other VPs still get it; the call answers `HV_STATUS_INVALID_PARAMETER` |
//! | `KVM_SIGNAL_MSI` reports that no vCPU took the IPI ([`MsiDelivery`]) | `log::warn!` (the VMM's misconfiguration); the guest's call succeeds |
//! | VP set format other than SPARSE_4K/ALL | `HV_STATUS_INVALID_PARAMETER`; variable header size != banks in the mask: `HV_STATUS_INVALID_HYPERCALL_INPUT` |
//! | ModifyVtlProtectionMask with [`NoProtections`] | `HV_STATUS_INVALID_HYPERCALL_CODE`, no rep done |
//! | an interrupt for a higher VTL than the active one (with [`Partition::enable_event_notify`]) | the running sibling exits (`KVM_EXIT_EVENT_NOTIFY`); [`Partition::handle_event_notify`] enters the highest VTL with an event pending, entry reason Interrupt (2), shared registers carried as for a VtlCall; the interrupted VTL gets no completion and no result |
//! | interrupts for a lower VTL than the active one | not armed: they wait in that VTL's LAPIC until it runs |
//! | VtlReturn from a VTL entered by an interrupt (or a VtlCall) | back to the VTL it was entered from, which resumes where it stopped; RAX/RCX restored from the returning VTL's `HV_VP_VTL_CONTROL` unless fast, as after a VtlCall |
//! | a notification that finds no higher VTL with an event (taken or withdrawn since) | [`NotifyOutcome::Resume`]: re-armed, same vCPU runs on |
//! | ModifyVtlProtectionMask with [`KvmProtections`] | `KVM_SET_VTL_PROTECTION` for every VTL label below TargetVtl, one ioctl per run of contiguous GPNs; MapFlags R (bit 0), W (1), X = kernel- or user-execute (bits 2, 3; no MBEC); W or X without R, or any other bit: `HV_STATUS_INVALID_PARAMETER`, no rep; `EINVAL` from KVM: `HV_STATUS_INVALID_PARAMETER`, `ENOMEM`: `HV_STATUS_INSUFFICIENT_MEMORY`, with the reps of the runs before (see [`KvmProtections`]) |
//! | DefaultVtlProtectionMask with [`KvmProtections`] | applied once, at the first write with EnableVtlProtection, to the RAM given by [`KvmProtections::with_ram`]; a restricting mask without known RAM, or an illegal one: `HV_STATUS_INVALID_REGISTER_VALUE` |
//! | a protection fault of VTL n (`KVM_EXIT_MEMORY_FAULT` with an access flag, [`Partition::handle_memory_fault`]) | secure intercept to the lowest enabled VTL above n (KVM does not record who set the protection): `HvX64MemoryInterceptMessage` in SINT0's slot of its SIMP page, SINT0's vector raised as a fixed interrupt in its group ([`Delivery`]), the VP switched to it with entry reason Interrupt (2); VTL n stays at its instruction and retries it after the VtlReturn; [`InterceptOutcome::Switched`] |
//! | the intercept's instruction bytes and length | fetched by the state machine (`KVM_TRANSLATE` of CS.base + RIP on the faulting vCPU, then guest memory; [`VtlVcpu::translate_gva`]), length from [`intercept::instruction_length`] (common memory-access encodings); 0 bytes / length 0 when unknown, length 0 for execute faults |
//! | the target VTL's SINT0 masked (or vector < 16) | message posted, no interrupt, still switched ([`MessageDelivery::Masked`]) |
//! | its SINT0 slot busy (type != 0), or no enabled SCONTROL/SIMP | MessagePending set in the busy slot, the message queued (one per VP and VTL, a newer intercept replaces it), posted and SINT0 raised at the next VtlCall or interrupt entry into that VTL that finds the slot free ([`MessageDelivery::Queued`], [`Partition::pending_intercept`]) |
//! | a protection fault with no enabled VTL above, or a memory fault without an access flag | [`InterceptOutcome::NoHigherVtl`] / [`InterceptOutcome::NotProtectionFault`]: nothing changed, the VMM's to handle |
//! | the SINT's AutoEoi and Polling bits | not honoured: the guest EOIs the fixed interrupt |
//!
//! State that is not carried: the shared MSRs (MTRRs, VP_INDEX, ...) are set identically on all
//! siblings by the VMM when it creates them; DR6 is private (VsmCapabilities.Dr6Shared = 0,
//! which [`Partition::new`] enforces: [`ConfigError::Dr6Shared`]).

mod backend;
mod enable;
mod exit;
pub mod hv;
mod input;
pub mod intercept;
mod ipi;
mod kvm_protections;
mod regs;
mod switch;
#[cfg(test)]
mod tests;
mod wake;

use std::collections::BTreeMap;

pub use backend::{
    completion_blocker, fixed_msi, ApicIdOutOfRange, AsVcpuFd, Delivery, Env, GuestMemory,
    MemoryError, MsiDelivery, NoProtections, NoSiblings, ProtectionRequest, Protections, RepStatus,
    SiblingFactory, VtlVcpu,
};
pub use exit::{set_hcall_result, HcallExit};
pub use hv::{Control, HvStatus, InitialVpContext, InputVtl};
pub use intercept::{InterceptOutcome, MemoryInterceptMessage, MessageDelivery};
pub use kvm_protections::{
    map_flags_access, KvmProtections, SetVtlProtection, MAP_FLAGS_SUPPORTED,
};
pub use wake::NotifyOutcome;

/// Number of VTLs the TLFS architecture allows (0..=15).
pub const NUM_VTLS: usize = 16;

/// Failures on the VMM's side. Guest mistakes are never errors: they are TLFS statuses.
#[derive(Debug, thiserror::Error)]
pub enum VtlError {
    /// A vCPU operation failed on the host.
    #[error("{op} on VP {vp_index} VTL {vtl} failed")]
    Vcpu {
        /// The operation, e.g. `KVM_SET_REGS`.
        op: &'static str,
        /// VP index.
        vp_index: u32,
        /// VTL of the sibling.
        vtl: u8,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// Interrupt delivery failed on the host.
    #[error("delivering vector {vector:#x} to APIC ID {apic_id} in group {group} failed")]
    Delivery {
        /// APIC group.
        group: u32,
        /// Guest-visible APIC ID.
        apic_id: u32,
        /// Vector.
        vector: u8,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// The [`Protections`] hook failed on the host.
    #[error("the memory-protection hook failed")]
    Protections(#[source] std::io::Error),
    /// The [`SiblingFactory`] failed on the host.
    #[error("creating the VTL {vtl} sibling of VP {vp_index} failed")]
    Sibling {
        /// VP index.
        vp_index: u32,
        /// VTL.
        vtl: u8,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// The VMM named a VP the partition does not have.
    #[error("no VP with index {0}")]
    UnknownVp(u32),
    /// The VMM added a VP twice.
    #[error("VP {0} already exists")]
    DuplicateVp(u32),
    /// The VMM named a VTL above 15 or above the partition's maximum.
    #[error("VTL {0} is out of range")]
    BadVtl(u8),
    /// The VMM registered a sibling where one exists.
    #[error("VP {vp_index} already has a VTL {vtl} vCPU")]
    DuplicateSibling {
        /// VP index.
        vp_index: u32,
        /// VTL.
        vtl: u8,
    },
    /// Event notification needs the vcpu_id of a sibling that does not report one
    /// ([`VtlVcpu::vcpu_id`]).
    #[error("VP {vp_index}: the VTL {vtl} vCPU does not report its vcpu_id, needed to arm event notifications")]
    NoVcpuId {
        /// VP index.
        vp_index: u32,
        /// VTL of the sibling.
        vtl: u8,
    },
    /// The VMM passed an exit from a vCPU that is not the VP's active one.
    #[error("VP {vp_index}: the exit came from VTL {vtl}, but VTL {active} is active")]
    NotActive {
        /// VP index.
        vp_index: u32,
        /// VTL the VMM named.
        vtl: u8,
        /// The VP's active VTL.
        active: u8,
    },
}

/// What the VMM does after [`Partition::handle_hypercall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Write `result` to the exit ([`set_hcall_result`]) and run the same vCPU again.
    Complete {
        /// Status in bits 15:0, reps completed in bits 43:32.
        result: u64,
    },
    /// The VP switched VTL: run the vCPU of `to` ([`Vp::active`]) next. The vCPU of `from` stays
    /// parked with its hypercall completion pending (its exit's result already set to
    /// `HV_STATUS_SUCCESS` through [`VtlVcpu::set_pending_result`]); KVM finishes it (advancing
    /// RIP, writing no RAX) when that vCPU next runs.
    Switched {
        /// The VTL that made the call.
        from: u8,
        /// The VTL now active.
        to: u8,
    },
    /// The TLFS wants a fault: exception `vector` (#UD) is queued on the calling vCPU with RIP
    /// at the hypercall instruction, its RAX untouched. Run the same vCPU again (nothing to
    /// write).
    Exception {
        /// The exception vector.
        vector: u8,
    },
    /// Not a hypercall this module answers: the VMM handles it.
    NotHandled,
}

/// Static configuration of a [`Partition`], checked by [`Partition::new`] ([`ConfigError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionConfig {
    /// Highest VTL the guest may enable (HvRegisterVsmPartitionStatus.MaximumVtl); at most 15
    /// (and at most the VTL label KVM stores, [`crate::MAX_VTL`]).
    pub max_vtl: u8,
    /// The APIC group of each VTL's siblings: one group per VTL (0..=`max_vtl`), each below
    /// `apic_groups`; the entries above `max_vtl` are not used.
    pub vtl_groups: [u32; NUM_VTLS],
    /// How many APIC groups the kernel offers (`KVM_CHECK_EXTENSION(KVM_CAP_APIC_GROUPS)`,
    /// [`crate::apic_groups_supported`]); default 16, the series' count.
    pub apic_groups: u32,
    /// HvRegisterVsmCapabilities as the guest reads it (default 0: DR6 private, no MBEC).
    /// Dr6Shared (bit 0) cannot be offered: the VTL switch keeps DR6 private.
    pub vsm_capabilities: u64,
    /// HvRegisterVsmCodePageOffsets (VtlCall offset 11:0, VtlReturn offset 23:12 in the
    /// hypercall page), 0 unless the VMM writes those stubs into the hypercall page.
    pub code_page_offsets: u64,
}

impl Default for PartitionConfig {
    /// VTL0 and VTL1 (as Hyper-V), VTL n in APIC group n.
    fn default() -> Self {
        let mut vtl_groups = [0; NUM_VTLS];
        for (vtl, g) in (0u32..).zip(vtl_groups.iter_mut()) {
            *g = vtl;
        }
        Self {
            max_vtl: 1,
            vtl_groups,
            apic_groups: DEFAULT_APIC_GROUPS,
            vsm_capabilities: 0,
            code_page_offsets: 0,
        }
    }
}

/// APIC groups the series offers (`KVM_CAP_APIC_GROUPS`): [`PartitionConfig::apic_groups`]'s
/// default.
pub const DEFAULT_APIC_GROUPS: u32 = 16;

/// A [`PartitionConfig`] that [`Partition::new`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `max_vtl` is above 15 (the TLFS) or above the VTL label KVM stores.
    #[error("max_vtl {max_vtl} is above {limit}, the highest VTL there is")]
    MaxVtl {
        /// The configured value.
        max_vtl: u8,
        /// The highest allowed.
        limit: u8,
    },
    /// Two VTLs share an APIC group: their interrupts and IPIs would not be kept apart.
    #[error("VTLs {low} and {high} share APIC group {group}; each VTL needs a group of its own")]
    SharedGroup {
        /// The lower VTL.
        low: u8,
        /// The higher VTL.
        high: u8,
        /// The group.
        group: u32,
    },
    /// A VTL's group is not one the kernel offers.
    #[error("VTL {vtl} is in APIC group {group}, but KVM offers groups 0..{groups}")]
    GroupOutOfRange {
        /// The VTL.
        vtl: u8,
        /// Its group.
        group: u32,
        /// [`PartitionConfig::apic_groups`].
        groups: u32,
    },
    /// `vsm_capabilities` advertises Dr6Shared, but the VTL switch keeps DR6 private.
    #[error("vsm_capabilities advertises Dr6Shared, but the VTL switch keeps DR6 private")]
    Dr6Shared,
}

impl PartitionConfig {
    /// Check the configuration ([`ConfigError`]); [`Partition::new`] does.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limit = crate::MAX_VTL.min(NUM_VTLS as u8 - 1);
        if self.max_vtl > limit {
            return Err(ConfigError::MaxVtl {
                max_vtl: self.max_vtl,
                limit,
            });
        }
        for high in 0..=self.max_vtl {
            let group = self.vtl_groups[usize::from(high)];
            if group >= self.apic_groups {
                return Err(ConfigError::GroupOutOfRange {
                    vtl: high,
                    group,
                    groups: self.apic_groups,
                });
            }
            if let Some(low) = (0..high).find(|&l| self.vtl_groups[usize::from(l)] == group) {
                return Err(ConfigError::SharedGroup { low, high, group });
            }
        }
        if self.vsm_capabilities & hv::VSM_CAPABILITIES_DR6_SHARED != 0 {
            return Err(ConfigError::Dr6Shared);
        }
        Ok(())
    }
}

/// One virtual processor: its sibling vCPUs (one per VTL) and which VTL is active.
#[derive(Debug)]
pub struct Vp<V> {
    index: u32,
    apic_id: u32,
    vcpus: Vec<Option<V>>,
    enabled: u16,
    active: u8,
    /// Siblings parked in a hypercall whose completion KVM has not done yet.
    parked: u16,
    /// HvRegisterVsmVpSecureConfigVtlN as set by VTL `owner`: `[owner][n]`.
    secure_config: [[u64; NUM_VTLS]; NUM_VTLS],
    /// Each sibling's vcpu_id ([`VtlVcpu::vcpu_id`]), read once when it was registered: the
    /// active sibling's lock may be held by a running VMM thread, so it is never asked again.
    ids: [Option<u32>; NUM_VTLS],
    /// Siblings the partition armed (`KVM_SET_EVENT_NOTIFY`) and has not disarmed since; a
    /// bit may outlive a notification that fired (one-shot), which disarming again tolerates.
    armed: u16,
    /// The VTL each VTL was entered from (VtlCall or interrupt), where its VtlReturn goes;
    /// [`NO_VTL`] when it was not entered from a lower one.
    entered_from: [u8; NUM_VTLS],
    /// Secure intercept messages waiting for each VTL's SINT0 slot (see [`intercept`]).
    pending_intercept: Vec<Option<Box<[u8; intercept::synic::MESSAGE_SIZE]>>>,
}

/// "No VTL" in [`Vp`]'s bookkeeping.
const NO_VTL: u8 = 0xff;

impl<V: VtlVcpu> Vp<V> {
    fn new(index: u32, apic_id: u32, vtl0: V) -> Self {
        let mut ids = [None; NUM_VTLS];
        ids[0] = vtl0.vcpu_id();
        let mut vcpus: Vec<Option<V>> = (0..NUM_VTLS).map(|_| None).collect();
        vcpus[0] = Some(vtl0);
        Self {
            index,
            apic_id,
            vcpus,
            enabled: 1,
            active: 0,
            parked: 0,
            secure_config: [[0; NUM_VTLS]; NUM_VTLS],
            ids,
            armed: 0,
            entered_from: [NO_VTL; NUM_VTLS],
            pending_intercept: (0..NUM_VTLS).map(|_| None).collect(),
        }
    }

    /// Put `vcpu` in VTL `vtl`'s slot, remembering its vcpu_id.
    fn install(&mut self, vtl: u8, vcpu: V) {
        let i = usize::from(vtl & 0xf);
        self.ids[i] = vcpu.vcpu_id();
        self.vcpus[i] = Some(vcpu);
    }
}

impl<V> Vp<V> {
    /// VP index.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// Guest-visible APIC ID (the same for every sibling).
    pub fn apic_id(&self) -> u32 {
        self.apic_id
    }
    /// The VTL that runs now.
    pub fn active_vtl(&self) -> u8 {
        self.active
    }
    /// Bit n set: VTL n is enabled on this VP (bit 0 always).
    pub fn enabled_vtls(&self) -> u16 {
        self.enabled
    }
    /// Whether VTL `vtl` is enabled on this VP.
    pub fn is_enabled(&self, vtl: u8) -> bool {
        vtl < 16 && self.enabled & (1 << vtl) != 0
    }
    /// The vCPU to run.
    pub fn active(&self) -> &V {
        self.vcpus[usize::from(self.active)]
            .as_ref()
            .expect("the active VTL always has a vCPU")
    }
    /// The vCPU to run, mutably (kvm-ioctls' `run` needs it).
    pub fn active_mut(&mut self) -> &mut V {
        self.vcpus[usize::from(self.active)]
            .as_mut()
            .expect("the active VTL always has a vCPU")
    }
    /// The sibling of VTL `vtl`, enabled or only registered.
    pub fn vcpu(&self, vtl: u8) -> Option<&V> {
        self.vcpus.get(usize::from(vtl))?.as_ref()
    }
    /// The sibling of VTL `vtl`, mutably.
    pub fn vcpu_mut(&mut self, vtl: u8) -> Option<&mut V> {
        self.vcpus.get_mut(usize::from(vtl))?.as_mut()
    }
    /// Next higher enabled VTL above `vtl`.
    fn next_higher(&self, vtl: u8) -> Option<u8> {
        (vtl + 1..16).find(|&v| self.is_enabled(v))
    }
    /// Next lower enabled VTL below `vtl`.
    fn next_lower(&self, vtl: u8) -> Option<u8> {
        (0..vtl).rev().find(|&v| self.is_enabled(v))
    }
    /// Where a VtlReturn from `vtl` goes: the VTL it was entered from (by VtlCall or an
    /// interrupt), else the next lower enabled one.
    fn return_target(&self, vtl: u8) -> Option<u8> {
        match self.entered_from.get(usize::from(vtl)) {
            Some(&from) if from < vtl && self.is_enabled(from) => Some(from),
            _ => self.next_lower(vtl),
        }
    }
    /// Bit n set: this VP's VTL n sibling is armed by the partition (it may have fired since).
    pub fn armed_vtls(&self) -> u16 {
        self.armed
    }
}

/// The VTL state of one VM: which VTLs are enabled, the per-VTL VSM registers, and the VPs.
#[derive(Debug)]
pub struct Partition<V> {
    config: PartitionConfig,
    enabled: u16,
    mbec_enabled: u16,
    vsm_config: [u64; NUM_VTLS],
    vps: BTreeMap<u32, Vp<V>>,
    /// [`Partition::enable_event_notify`] was called: higher VTLs are armed.
    notify: bool,
}

impl<V: VtlVcpu> Partition<V> {
    /// A partition with only VTL0 enabled and no VP yet, if `config` holds together
    /// ([`PartitionConfig::validate`]).
    pub fn new(config: PartitionConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            enabled: 1,
            mbec_enabled: 0,
            vsm_config: [0; NUM_VTLS],
            vps: BTreeMap::new(),
            notify: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PartitionConfig {
        &self.config
    }

    /// Add VP `vp_index` with its VTL0 vCPU (which the VMM put in [`Self::group_of`]`(0)` with
    /// guest-visible `apic_id`).
    pub fn add_vp(&mut self, vp_index: u32, apic_id: u32, vtl0: V) -> Result<(), VtlError> {
        if self.vps.contains_key(&vp_index) {
            return Err(VtlError::DuplicateVp(vp_index));
        }
        self.vps.insert(vp_index, Vp::new(vp_index, apic_id, vtl0));
        Ok(())
    }

    /// Register VP `vp_index`'s sibling for VTL `vtl` (1..=max) before the guest enables that
    /// VTL: it stays idle until `HvCallEnableVpVtl` gives it its initial context and makes it
    /// runnable ([`VtlVcpu::make_runnable`]). The VMM need not set its MP state: with an
    /// in-kernel LAPIC it starts in `KVM_MP_STATE_UNINITIALIZED` (its vcpu_id is not the
    /// BSP's), where a `KVM_RUN` would wait for an INIT/SIPI that never comes.
    pub fn add_sibling(&mut self, vp_index: u32, vtl: u8, vcpu: V) -> Result<(), VtlError> {
        if vtl == 0 || vtl > self.config.max_vtl {
            return Err(VtlError::BadVtl(vtl));
        }
        let vp = self
            .vps
            .get_mut(&vp_index)
            .ok_or(VtlError::UnknownVp(vp_index))?;
        if vp.vcpus[usize::from(vtl)].is_some() {
            return Err(VtlError::DuplicateSibling { vp_index, vtl });
        }
        vp.install(vtl, vcpu);
        Ok(())
    }

    /// VP `vp_index`.
    pub fn vp(&self, vp_index: u32) -> Option<&Vp<V>> {
        self.vps.get(&vp_index)
    }
    /// VP `vp_index`, mutably.
    pub fn vp_mut(&mut self, vp_index: u32) -> Option<&mut Vp<V>> {
        self.vps.get_mut(&vp_index)
    }
    /// All VPs, by index.
    pub fn vps(&self) -> impl Iterator<Item = &Vp<V>> {
        self.vps.values()
    }
    /// Bit n set: VTL n is enabled for the partition (bit 0 always).
    pub fn enabled_vtls(&self) -> u16 {
        self.enabled
    }
    /// Whether VTL `vtl` is enabled for the partition.
    pub fn is_enabled(&self, vtl: u8) -> bool {
        vtl < 16 && self.enabled & (1 << vtl) != 0
    }
    /// The APIC group of VTL `vtl`'s siblings.
    pub fn group_of(&self, vtl: u8) -> u32 {
        self.config.vtl_groups[usize::from(vtl & 0xf)]
    }
    /// HvRegisterVsmPartitionConfig of VTL `vtl`.
    pub fn vsm_partition_config(&self, vtl: u8) -> u64 {
        self.vsm_config[usize::from(vtl & 0xf)]
    }

    /// Answer the hypercall `exit` that VP `vp_index`'s vCPU of VTL `vtl` (its active one)
    /// exited with. See [`Outcome`] for what the VMM does next; `Err` only for host failures
    /// and VMM mistakes.
    pub fn handle_hypercall(
        &mut self,
        env: &mut Env<'_, V>,
        vp_index: u32,
        vtl: u8,
        exit: &HcallExit,
    ) -> Result<Outcome, VtlError> {
        self.active_vp_mut(vp_index, vtl)?;
        let c = exit.control;
        let call = Call {
            vp_index,
            vtl,
            exit,
        };
        use hv::code;
        let kind = match c.code() {
            code::VTL_CALL => return self.vtl_call(vp_index, vtl, c, env),
            code::VTL_RETURN => return self.vtl_return(vp_index, vtl, c, env),
            code::ENABLE_PARTITION_VTL | code::ENABLE_VP_VTL | code::SEND_SYNTHETIC_CLUSTER_IPI => {
                Kind::Simple
            }
            code::SEND_SYNTHETIC_CLUSTER_IPI_EX => Kind::Variable,
            code::GET_VP_REGISTERS | code::SET_VP_REGISTERS | code::MODIFY_VTL_PROTECTION_MASK => {
                Kind::Rep
            }
            _ => return Ok(Outcome::NotHandled),
        };
        let malformed = c.has_reserved_bits()
            || match kind {
                Kind::Simple => {
                    c.rep_count() != 0 || c.rep_start() != 0 || c.var_header_qwords() != 0
                }
                Kind::Variable => c.rep_count() != 0 || c.rep_start() != 0,
                Kind::Rep => c.var_header_qwords() != 0 || c.rep_start() > c.rep_count(),
            };
        if malformed {
            return Ok(complete(HvStatus::INVALID_HYPERCALL_INPUT, 0));
        }
        let r = match c.code() {
            code::ENABLE_PARTITION_VTL => self.enable_partition_vtl(&call, env).map(|()| 0),
            code::ENABLE_VP_VTL => self.enable_vp_vtl(&call, env).map(|()| 0),
            code::SEND_SYNTHETIC_CLUSTER_IPI | code::SEND_SYNTHETIC_CLUSTER_IPI_EX => {
                self.send_ipi(&call, env).map(|()| 0)
            }
            code::GET_VP_REGISTERS => self.get_vp_registers(&call, env),
            code::SET_VP_REGISTERS => self.set_vp_registers(&call, env),
            _ => self.modify_vtl_protection_mask(&call, env),
        };
        match r {
            Ok(reps) => Ok(complete(HvStatus::SUCCESS, reps)),
            Err(Fail::Hv(status, reps)) => Ok(complete(status, reps)),
            Err(Fail::Vmm(e)) => Err(e),
        }
    }

    fn vp_ref(&self, vp_index: u32) -> Result<&Vp<V>, VtlError> {
        self.vps.get(&vp_index).ok_or(VtlError::UnknownVp(vp_index))
    }

    fn vp_mut_ref(&mut self, vp_index: u32) -> Result<&mut Vp<V>, VtlError> {
        self.vps
            .get_mut(&vp_index)
            .ok_or(VtlError::UnknownVp(vp_index))
    }

    /// VP `vp_index`, which must exist and be running `vtl` (the VTL of the exit the VMM is
    /// answering).
    fn active_vp_mut(&mut self, vp_index: u32, vtl: u8) -> Result<&mut Vp<V>, VtlError> {
        let vp = self.vp_mut_ref(vp_index)?;
        if vp.active != vtl {
            return Err(VtlError::NotActive {
                vp_index,
                vtl,
                active: vp.active,
            });
        }
        Ok(vp)
    }
}

enum Kind {
    Simple,
    Variable,
    Rep,
}

/// One hypercall being answered.
struct Call<'a> {
    vp_index: u32,
    vtl: u8,
    exit: &'a HcallExit,
}

fn complete(status: HvStatus, reps: u16) -> Outcome {
    Outcome::Complete {
        result: status.result(reps),
    }
}

/// Why a hypercall stops: a TLFS status for the guest (with the reps completed so far), or a
/// VMM-side error.
#[derive(Debug)]
enum Fail {
    Hv(HvStatus, u16),
    Vmm(VtlError),
}

impl From<HvStatus> for Fail {
    fn from(s: HvStatus) -> Self {
        Fail::Hv(s, 0)
    }
}

impl From<VtlError> for Fail {
    fn from(e: VtlError) -> Self {
        Fail::Vmm(e)
    }
}

type HvResult<T> = Result<T, Fail>;

/// Wrap a vCPU operation's host error.
fn vcpu_op<T>(
    op: &'static str,
    vp_index: u32,
    vtl: u8,
    r: std::io::Result<T>,
) -> Result<T, VtlError> {
    r.map_err(|source| VtlError::Vcpu {
        op,
        vp_index,
        vtl,
        source,
    })
}

/// Like [`vcpu_op`], but a value KVM refused (`EINVAL`) is the guest's mistake: `status`.
fn vcpu_guest_op<T>(
    op: &'static str,
    vp_index: u32,
    vtl: u8,
    status: HvStatus,
    r: std::io::Result<T>,
) -> HvResult<T> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(status.into()),
        Err(source) => Err(Fail::Vmm(VtlError::Vcpu {
            op,
            vp_index,
            vtl,
            source,
        })),
    }
}
