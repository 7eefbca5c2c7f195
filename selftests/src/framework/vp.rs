// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Virtual processors made of VTL sibling vCPUs, run the way a VMM runs them.
//!
//! With the series, KVM knows nothing about VTLs. A VMM that offers Hyper-V VSM gives each
//! virtual processor (VP) one vCPU per VTL, the *siblings*: the same guest-visible APIC ID and
//! Hyper-V VP index, each in the APIC group of its VTL (the group doubles as the VTL label).
//! Exactly one sibling of a VP runs at a time; which one is the VMM's decision, taken by the
//! reference VTL state machine of the uapi crate ([`vtlkit_uapi::vtl::Partition`]) when a
//! VSM hypercall exits to userspace (`KVM_EXIT_HYPERV`, `KVM_CAP_HYPERV_VSM`).
//!
//! This module is that VMM shape for tests:
//!
//! * [`VsmVm::new`] makes a Hyper-V VM with APIC groups and `KVM_CAP_HYPERV_VSM`, and for VP
//!   `p` (0..vps) and VTL `v` (0..[`VTLS`]) the vCPU with vcpu_id (and [`TestVm`] index)
//!   `v * vps + p`, in APIC group `v`, APIC ID `p`, VTL label `v`, VP index `p`. VTL0 vCPUs
//!   start at [`Entry::HvMain`] (give them a [`Program`] with [`TestVm::load_hv_program`]);
//!   VTL1 vCPUs never run until the guest enables VTL1 on their VP, and then start at
//!   [`Entry::VsmVtl1`] (the guest's HvCallEnableVpVtl says so: [`VsmVm::enable_vp_vtl`]).
//!   Each vCPU gets a VP assist page ([`VsmVm::assist_gpa`]), VTL1 vCPUs a block array
//!   ([`VsmVm::block_gpa`]) describing each VtlCall/VtlReturn round trip
//!   ([`VsmVm::write_round`] before, [`VsmVm::read_round`] after).
//! * [`VsmVm::start`] hands the vCPUs to a [`Partition`] and runs one thread per VP. The thread
//!   runs only the VP's active sibling; a `KVM_EXIT_HYPERV` HCALL goes to
//!   [`Partition::handle_hypercall`] and its [`Outcome`] is applied: `Complete` writes the
//!   status for the same vCPU's next `KVM_RUN`, `Switched` makes the thread run the other
//!   sibling from now on (the one that left stays parked in its hypercall until it is
//!   switched back to), `Exception` resumes the caller with the #UD the state machine queued.
//!   Hypercalls the state machine does not answer go to the test's handler
//!   ([`VsmVm::on_unhandled_hcall`]); ucalls (port I/O) go to the test as with
//!   [`TestVm::start`], labelled with the VTL that made them.
//! * Every answer is logged per VP ([`VpEvent`]): a test sees the switches, their count and
//!   order ([`VpRunning::events`], [`VpRunning::switches`]). Cross-VTL IPIs a higher VTL sends
//!   to a lower one are delivered with `KVM_SIGNAL_MSI` naming the lower VTL's APIC group
//!   ([`MsiDelivery`]); the lower VTL takes them when it runs again.
//! * Interrupts for a parked VTL (series v4): when the kernel has `KVM_CAP_VCPU_EVENT_NOTIFY`,
//!   [`VsmVm::new`] enables it and [`VsmVm::start`] has the partition arm every parked higher
//!   VTL ([`Partition::enable_event_notify`]); a `KVM_EXIT_EVENT_NOTIFY` of the running sibling
//!   goes to [`Partition::handle_event_notify`], which enters the interrupted-for VTL (logged
//!   as [`VpEvent::Interrupted`]) or resumes ([`VpEvent::NotifyResumed`]). A halted VTL0 is
//!   woken by the kernel for it.
//! * [`VpRunning::stop`] stops the threads and gives back the partition ([`VpStopped`]) for
//!   checks of KVM state (LAPIC IRR of a sibling, which VTL is active, ...).
//!
//! A test in short (see `tests/vsm/` for complete ones):
//!
//! ```text
//! let mut vsm = VsmVm::new(1)?;                       // VP 0: vCPU 0 (VTL0), vCPU 1 (VTL1)
//! vsm.write_round(0, 0, &Round::new(...))?;           // what round trip 0 carries
//! let prog = Program::new()
//!     .step(vsm.enable_assist_page(0, 0))             // VTL0's VP assist page
//!     .hcall(enable_partition_vtl(1))                 // HvCallEnablePartitionVtl(1)
//!     .step(vsm.enable_vp_vtl(0, None))               // HvCallEnableVpVtl(own VP, 1, ctx)
//!     .step(Step::VtlCall { block: vsm.block_gpa(0, 0) });
//! vsm.vm.load_hv_program(vsm.index(0, 0), &prog)?;
//! let running = vsm.start()?;
//! running.wait_sync(0, 0, ucall::STAGE_HV_READY, DEFAULT_TIMEOUT)?;
//! vsm.vm.set_pcpu(vsm.index(0, 0), pcpu::GO, 1)?;
//! running.wait_sync(0, 0, ucall::STAGE_HV_DONE, DEFAULT_TIMEOUT)?;
//! let seen = vsm.read_round(0, 0)?;                   // what each VTL found
//! assert_eq!(running.switches(0), [(0, 1), (1, 0)]);
//! ```
//!
//! Locking: the partition sits in a mutex, each sibling in its own (`Arc<Mutex<Vcpu>>`, which
//! the uapi crate's [`VtlVcpu`] blanket implementation covers). A VP thread holds its active
//! sibling's lock only inside `KVM_RUN`, and the partition's only while the state machine
//! answers; the state machine never touches another VP's *active* sibling (EnableVpVtl works on
//! a sibling that is not enabled yet, Get/SetVpRegisters refuse another VP's CPU registers, IPIs
//! go through `KVM_SIGNAL_MSI`), so no thread waits for a running guest.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kvm_ioctls::{VcpuFd, VmFd};
use nix::sys::pthread::pthread_kill;
use vtlkit_uapi::protections::{FaultAccess, MemoryFault};
use vtlkit_uapi::vtl::{
    set_hcall_result, AsVcpuFd, Env, GuestMemory, HcallExit, InterceptOutcome, KvmProtections,
    MemoryError, MessageDelivery, MsiDelivery, NoProtections, NoSiblings, NotifyOutcome, Outcome,
    Partition, PartitionConfig, Protections,
};
use vtlkit_uapi::ApicGroup;

use crate::guest::{self, pcpu, vsm, Entry};
use crate::hyperv::{self, control, Hypercall, Step};
use crate::vm::{
    install_kick_handler, layout, run_once_raw, GuestMem, Step as RunStep, TestVm, Ucall, Vcpu,
    VmOptions, KICK,
};

/// VTLs per VP: VTL0 and VTL1, as Hyper-V has them.
pub const VTLS: u8 = 2;
/// Most VPs a [`VsmVm`] has (its vCPUs must fit the test VM's [`layout::MAX_VCPUS`]).
pub const MAX_VPS: u32 = (layout::MAX_VCPUS / VTLS as usize) as u32;

/// Guest-physical memory of the VSM machinery (above what [`crate::hyperv`] uses, 3..4 MiB).
pub mod vsm_layout {
    use super::layout;

    /// Base of the VSM area.
    pub const BASE: u64 = layout::DATA + 0x20_0000;
    /// VP assist pages: vCPU index i at `ASSIST + i * PAGE`.
    pub const ASSIST: u64 = BASE;
    /// A second PML4 (same mappings as [`layout::PML4`]) a test may give VTL1 as its CR3.
    pub const ALT_PML4: u64 = BASE + 0x1_0000;
    /// Secure-intercept pages ([`super::VsmVm::setup_intercepts`]): VP p's
    /// [`INTERCEPT_PAGES`] pages at `INTERCEPT + p * INTERCEPT_PAGES * PAGE`: the intercept
    /// page, VTL1's SIMP, the allow and deny hypercall inputs, the protect input.
    pub const INTERCEPT: u64 = BASE + 0xA_0000;
    /// Pages per VP at [`INTERCEPT`].
    pub const INTERCEPT_PAGES: u64 = 8;
    /// A page the intercept tests protect (nothing else uses it; inside the guest's 2 MiB
    /// page 0x200000..0x400000, so the protection splits a huge mapping).
    pub const PROTECTED: u64 = BASE + 0xF_0000;
    const _: () =
        assert!(INTERCEPT + super::MAX_VPS as u64 * INTERCEPT_PAGES * layout::PAGE <= PROTECTED);
    const _: () = assert!(PROTECTED + layout::PAGE <= layout::MEM_SIZE);
    /// HvCallEnableVpVtl input pages: VP p at `ENABLE_INPUT + p * PAGE`.
    pub const ENABLE_INPUT: u64 = BASE + 0x1_1000;
    /// Round-trip blocks: VP p's array at `BLOCKS + p * BLOCKS_PER_VP_BYTES`.
    pub const BLOCKS: u64 = BASE + 0x2_0000;
    /// Bytes of blocks per VP.
    pub const BLOCKS_PER_VP_BYTES: u64 = 0x1_0000;
    /// Assist pages and the enable inputs must stay below the alternate PML4 and the blocks;
    /// the blocks below the intercept pages.
    const _: () = assert!(BLOCKS + super::MAX_VPS as u64 * BLOCKS_PER_VP_BYTES <= INTERCEPT);
    const _: () = assert!(ASSIST + layout::MAX_VCPUS as u64 * layout::PAGE <= ALT_PML4);
    const _: () = assert!(ENABLE_INPUT + super::MAX_VPS as u64 * layout::PAGE <= BLOCKS);
    const _: () = assert!(BLOCKS + super::MAX_VPS as u64 * BLOCKS_PER_VP_BYTES <= layout::MEM_SIZE);
}

/// Round trips one VP's block array holds.
pub const MAX_ROUNDS: u64 = vsm_layout::BLOCKS_PER_VP_BYTES / vsm::block::SIZE;

// ---------------------------------------------------------------------------------------------
// The uapi crate's traits for the framework's types.

/// A sibling vCPU as the state machine sees it: the framework's [`Vcpu`] (whose index selects
/// its stack and data page); the uapi crate implements [`VtlVcpu`] for it on its fd.
impl AsVcpuFd for Vcpu {
    fn vcpu_fd(&self) -> &VcpuFd {
        &self.fd
    }
    fn vcpu_fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }
    fn known_vcpu_id(&self) -> Option<u32> {
        u32::try_from(self.id).ok()
    }
}

/// Guest RAM for the state machine (hypercall input pages, VP assist pages).
impl GuestMemory for GuestMem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        GuestMem::read(self, gpa, buf).map_err(|_| MemoryError {
            gpa,
            len: buf.len(),
        })
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        GuestMem::write(self, gpa, buf).map_err(|_| MemoryError {
            gpa,
            len: buf.len(),
        })
    }
}

/// A sibling, shared between its VP's thread and the partition.
pub type Sibling = Arc<Mutex<Vcpu>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lock a sibling (a poisoned lock is taken over: the vCPU is still usable).
pub fn lock_sibling(s: &Sibling) -> MutexGuard<'_, Vcpu> {
    lock(s)
}

// ---------------------------------------------------------------------------------------------
// Round trips: what the host hands each VTL, and what each VTL found.

/// A register set as the VSM guest code saves and loads it ([`vsm::regs`]): the 16 GPRs in
/// hvdef order (RAX RCX RDX RBX RSP RBP RSI RDI R8..R15) and XMM6 (low, high).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegSet {
    /// GPRs, hvdef order.
    pub gprs: [u64; vsm::regs::GPRS],
    /// XMM6 as (low, high) qwords.
    pub xmm6: [u64; 2],
}

impl RegSet {
    /// A recognisable set: GPR i = `tag << 32 | 0x5a00 | i` (so values differ per register and
    /// per `tag`), XMM6 likewise; RAX and RCX as given (a VtlCall needs 0 and 0x11, a
    /// VtlReturn 0 or 1 and 0x12).
    pub fn pattern(tag: u32, rax: u64, rcx: u64) -> Self {
        let mut gprs = [0u64; vsm::regs::GPRS];
        for (i, g) in gprs.iter_mut().enumerate() {
            *g = (u64::from(tag) << 32) | 0x5a00 | i as u64;
        }
        gprs[vsm::regs::RAX] = rax;
        gprs[vsm::regs::RCX] = rcx;
        let x = (u64::from(tag) << 32) | 0x3c36;
        RegSet {
            gprs,
            xmm6: [x, !x],
        }
    }

    fn write(&self, mem: &GuestMem, gpa: u64) -> Result<()> {
        for (i, g) in self.gprs.iter().enumerate() {
            mem.write_u64(gpa + 8 * i as u64, *g)?;
        }
        mem.write_u64(gpa + vsm::regs::XMM6, self.xmm6[0])?;
        mem.write_u64(gpa + vsm::regs::XMM6 + 8, self.xmm6[1])
    }

    fn read(mem: &GuestMem, gpa: u64) -> Result<Self> {
        let mut r = RegSet::default();
        for (i, g) in r.gprs.iter_mut().enumerate() {
            *g = mem.read_u64(gpa + 8 * i as u64)?;
        }
        r.xmm6 = [
            mem.read_u64(gpa + vsm::regs::XMM6)?,
            mem.read_u64(gpa + vsm::regs::XMM6 + 8)?,
        ];
        Ok(r)
    }

    /// The registers (by hvdef name, and "XMM6") whose values differ from `other`'s, skipping
    /// the GPR indexes in `skip`: "R8 0x1 != 0x2; ...".
    pub fn diff(&self, other: &RegSet, skip: &[usize]) -> Vec<String> {
        let mut out = Vec::new();
        for i in (0..vsm::regs::GPRS).filter(|i| !skip.contains(i)) {
            if self.gprs[i] != other.gprs[i] {
                out.push(format!(
                    "{} {:#x} (expected {:#x})",
                    vsm::regs::NAMES[i],
                    self.gprs[i],
                    other.gprs[i]
                ));
            }
        }
        if self.xmm6 != other.xmm6 {
            out.push(format!(
                "XMM6 {:#x?} (expected {:#x?})",
                self.xmm6, other.xmm6
            ));
        }
        out
    }
}

/// One VtlCall/VtlReturn round trip, host side: what each VTL loads and does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// VTL0 loads these and calls (RAX 0, RCX 0x11 for a well-formed VtlCall).
    pub vtl0_in: RegSet,
    /// VTL1 loads these and returns (RAX 0 normal / 1 fast, RCX 0x12).
    pub vtl1_out: RegSet,
    /// VTL1 writes this to `vtl_ret_x64rax` in its VP assist page before returning.
    pub ret_rax: u64,
    /// VTL1 writes this to `vtl_ret_x64rcx`.
    pub ret_rcx: u64,
    /// A hypercall (control, RDX, R8) VTL1 issues before returning (fast, or slow with RDX
    /// the input GPA).
    pub vtl1_hcall: Option<(u64, u64, u64)>,
    /// A TPR class (0..=15) VTL1 writes to CR8 before returning.
    pub vtl1_cr8: Option<u8>,
}

impl Round {
    /// Round `tag`: VTL0 calls with pattern `tag`, VTL1 returns (fast or not) with pattern
    /// `tag + 0x100`, and leaves RAX/RCX values derived from `tag` in its assist page.
    pub fn new(tag: u32, fast: bool) -> Self {
        let ret = if fast { vsm::RETURN_FAST } else { 0 };
        Round {
            vtl0_in: RegSet::pattern(tag, 0, hyperv::call::VTL_CALL.into()),
            vtl1_out: RegSet::pattern(tag + 0x100, ret, hyperv::call::VTL_RETURN.into()),
            ret_rax: 0x7a7a_0000_0000_0000 | u64::from(tag),
            ret_rcx: 0x7c7c_0000_0000_0000 | u64::from(tag),
            vtl1_hcall: None,
            vtl1_cr8: None,
        }
    }

    /// Whether VTL1 returns fast.
    pub fn fast(&self) -> bool {
        self.vtl1_out.gprs[vsm::regs::RAX] & vsm::RETURN_FAST != 0
    }
}

/// One round trip, guest side: what each VTL found (read after the round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundSeen {
    /// Registers VTL1 found when entered.
    pub vtl1: RegSet,
    /// VTL1's CR3.
    pub vtl1_cr3: u64,
    /// VTL1's GS base.
    pub vtl1_gs_base: u64,
    /// `vtl_entry_reason` in VTL1's assist page (VTL1 clears it after reading).
    pub entry_reason: u64,
    /// VTL1's entry count when it took this block.
    pub vtl1_round: u64,
    /// RAX after VTL1's hypercall, if it made one.
    pub vtl1_hcall_result: u64,
    /// Registers VTL0 found when resumed.
    pub vtl0: RegSet,
    /// VTL0's RSP before the call.
    pub vtl0_rsp_before: u64,
    /// VTL0's CR3 when resumed.
    pub vtl0_cr3: u64,
    /// VTL0's GS base when resumed.
    pub vtl0_gs_base: u64,
}

// ---------------------------------------------------------------------------------------------
// The VM.

/// A test's handler of the hypercalls the state machine does not answer
/// ([`Outcome::NotHandled`]): (VP index, VTL, the exit) -> the status for the guest.
pub type UnhandledHandler = Arc<dyn Fn(u32, u8, &HcallExit) -> Result<u64> + Send + Sync>;

/// A Hyper-V VM of VPs with VTL siblings, not running yet ([`VsmVm::start`] runs it).
pub struct VsmVm {
    /// The VM (for memory, data pages, programs).
    pub vm: TestVm,
    vps: u32,
    config: PartitionConfig,
    unhandled: Option<UnhandledHandler>,
    /// `KVM_CAP_VCPU_EVENT_NOTIFY` is enabled on the VM (series v4).
    notify: bool,
    /// `KVM_CAP_VTL_PROTECTIONS` is enabled (series v5): the state machine applies
    /// ModifyVtlProtectionMask with [`KvmProtections`] and protection faults become secure
    /// intercepts ([`Partition::handle_memory_fault`]).
    protections: bool,
}

/// What [`VsmVm::with_options`] enables beyond the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct VsmOptions {
    /// Opt the VM in to `KVM_CAP_VTL_PROTECTIONS` (before its vCPUs exist).
    pub protections: bool,
}

/// How VTL1's intercept handler answers ([`VsmVm::setup_intercepts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptAction {
    /// Lift the protection of the page (HvCallModifyVtlProtectionMask, all access) and let
    /// VTL0 retry its access.
    Allow,
    /// Skip VTL0's instruction: HvCallSetVpRegisters(VTL0 RIP = message RIP + length).
    Deny,
}

/// What VTL1's intercept handler read from its message page ([`crate::guest::vsm::icpt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterceptSeen {
    /// Messages handled.
    pub count: u64,
    /// Message type.
    pub msg_type: u64,
    /// Message flags.
    pub msg_flags: u64,
    /// VP index.
    pub vp_index: u64,
    /// Instruction length.
    pub insn_len: u64,
    /// Access type (0 read, 1 write, 2 execute).
    pub access: u64,
    /// Execution state.
    pub exec_state: u64,
    /// RIP.
    pub rip: u64,
    /// Instruction byte count.
    pub insn_count: u64,
    /// GPA.
    pub gpa: u64,
    /// The first 8 instruction bytes.
    pub insn_bytes: u64,
    /// Status of the allow/deny hypercall.
    pub hc_status: u64,
    /// Memory access info (bit 0 GvaValid).
    pub access_info: u64,
    /// GVA.
    pub gva: u64,
}

impl VsmVm {
    /// A VM with `vps` VPs of [`VTLS`] siblings each (see the module documentation).
    pub fn new(vps: u32) -> Result<Self> {
        Self::with_options(vps, VsmOptions::default())
    }

    /// [`VsmVm::new`] with `opts`.
    pub fn with_options(vps: u32, opts: VsmOptions) -> Result<Self> {
        if vps == 0 || vps > MAX_VPS {
            bail!("a VsmVm has 1..={MAX_VPS} VPs, not {vps}");
        }
        let mut vm = TestVm::new(VmOptions {
            apic_groups: true,
            hyperv: true,
            ..Default::default()
        })?;
        hyperv::enable_vsm(&vm.fd)?;
        // Interrupts for a parked VTL (series v4): enabled before the vCPUs exist (APICv
        // inhibited from the start), used by the partition from `start`.
        let notify = vtlkit_uapi::notify::event_notify_supported(&vm.kvm);
        if notify {
            vtlkit_uapi::notify::enable_event_notify(&vm.fd)
                .context("KVM_ENABLE_CAP(KVM_CAP_VCPU_EVENT_NOTIFY)")?;
        }
        if opts.protections {
            if !vtlkit_uapi::protections::vtl_protections_supported(&vm.kvm) {
                bail!("KVM_CHECK_EXTENSION(KVM_CAP_VTL_PROTECTIONS) is 0: the kernel lacks series v5's protections");
            }
            vtlkit_uapi::protections::enable_vtl_protections(&vm.fd)
                .map_err(|e| anyhow!("KVM_ENABLE_CAP(KVM_CAP_VTL_PROTECTIONS): {e}"))?;
        }
        let config = PartitionConfig {
            apic_groups: vtlkit_uapi::apic_groups_supported(&vm.kvm),
            ..Default::default()
        };
        config
            .validate()
            .context("the partition's configuration for this kernel")?;
        for vtl in 0..VTLS {
            for vp in 0..vps {
                let id = u64::from(vtl) * u64::from(vps) + u64::from(vp);
                let entry = if vtl == 0 {
                    Entry::HvMain
                } else {
                    Entry::VsmVtl1
                };
                let group = ApicGroup {
                    group: config.vtl_groups[usize::from(vtl)],
                    apic_id: vp,
                    vtl,
                };
                let index = vm.add_vcpu_in_group(id, entry, group)?;
                if index as u64 != id {
                    bail!("framework bug: vCPU {id} got index {index}");
                }
                vm.set_vp_index(index, vp)?;
                vm.mem
                    .write(Self::assist_gpa(index), &[0u8; layout::PAGE as usize])?;
                if vtl > 0 {
                    vm.set_pcpu(index, pcpu::VSM_ASSIST, Self::assist_gpa(index))?;
                    vm.set_pcpu(index, pcpu::VSM_BLOCKS, Self::block_gpa(vp, 0))?;
                }
            }
        }
        // The alternate page-table root: a copy of the PML4 (same PDPT, same mappings).
        for i in 0..512u64 {
            let e = vm.mem.read_u64(layout::PML4 + 8 * i)?;
            vm.mem.write_u64(vsm_layout::ALT_PML4 + 8 * i, e)?;
        }
        Ok(VsmVm {
            vm,
            vps,
            config,
            unhandled: None,
            notify,
            protections: opts.protections,
        })
    }

    /// GPA of page `n` of VP `vp`'s intercept pages ([`vsm_layout::INTERCEPT`]): 0 the
    /// intercept page, 1 VTL1's SIMP, 2 the allow input, 3 the deny input, 4 free for a test's
    /// own protect input.
    pub fn intercept_page(vp: u32, n: u64) -> u64 {
        vsm_layout::INTERCEPT + (u64::from(vp) * vsm_layout::INTERCEPT_PAGES + n) * layout::PAGE
    }

    /// Prepare VP `vp`'s VTL1 for secure intercepts: its SynIC active
    /// (`KVM_CAP_HYPERV_SYNIC2`), and the intercept page ([`crate::guest::vsm::icpt`]) that
    /// makes its first entry enable SIMP, SINT0 = `vector` and SCONTROL, and its handler of
    /// `vector` answer with `action` (the allow input lifts the protection of `page`).
    pub fn setup_intercepts(
        &self,
        vp: u32,
        vector: u8,
        action: InterceptAction,
        page: u64,
    ) -> Result<()> {
        use crate::guest::vsm::icpt;
        let v1 = self.index(vp, 1);
        hyperv::enable_synic(&self.vm.vcpu(v1)?.fd)?;
        let m = &self.vm.mem;
        let ip = Self::intercept_page(vp, 0);
        let (simp, allow, deny) = (
            Self::intercept_page(vp, 1),
            Self::intercept_page(vp, 2),
            Self::intercept_page(vp, 3),
        );
        for p in [ip, simp, allow, deny] {
            m.write(p, &[0u8; layout::PAGE as usize])?;
        }
        m.write_u64(ip + icpt::VECTOR, vector.into())?;
        m.write_u64(ip + icpt::SIMP, simp)?;
        m.write_u64(
            ip + icpt::ACTION,
            match action {
                InterceptAction::Allow => icpt::ALLOW,
                InterceptAction::Deny => icpt::DENY,
            },
        )?;
        // Allow: all access for VTL0 (TargetVtl = VTL1 itself: the VTLs below it).
        m.write_u64(ip + icpt::ALLOW_CONTROL, modify_protection_control(1))?;
        m.write_u64(ip + icpt::ALLOW_INPUT, allow)?;
        m.write(allow, &protection_input(0xf, 1, &[page / layout::PAGE]))?;
        // Deny: HvCallSetVpRegisters(self, own VP, VTL0, RIP = <the handler's value>).
        m.write_u64(
            ip + icpt::DENY_CONTROL,
            control::word(hyperv::call::SET_VP_REGISTERS, false, 0, 1),
        )?;
        m.write_u64(ip + icpt::DENY_INPUT, deny)?;
        let mut d = hyperv::PARTITION_ID_SELF.to_le_bytes().to_vec();
        d.extend(vtlkit_uapi::vtl::hv::VP_INDEX_SELF.to_le_bytes());
        d.extend([hyperv::input_vtl(0, true), 0, 0, 0]);
        d.extend(vtlkit_uapi::vtl::hv::reg::RIP.to_le_bytes());
        m.write(deny, &d)?;
        self.vm.set_pcpu(v1, pcpu::VSM_ICPT, ip)
    }

    /// What VP `vp`'s VTL1 intercept handler recorded.
    pub fn read_intercept(&self, vp: u32) -> Result<InterceptSeen> {
        use crate::guest::vsm::icpt;
        let ip = Self::intercept_page(vp, 0);
        let q = |off: u64| self.vm.mem.read_u64(ip + off);
        Ok(InterceptSeen {
            count: q(icpt::COUNT)?,
            msg_type: q(icpt::MSG_TYPE)?,
            msg_flags: q(icpt::MSG_FLAGS)?,
            vp_index: q(icpt::VP_INDEX)?,
            insn_len: q(icpt::INSN_LEN)?,
            access: q(icpt::ACCESS)?,
            exec_state: q(icpt::EXEC_STATE)?,
            rip: q(icpt::RIP)?,
            insn_count: q(icpt::INSN_COUNT)?,
            gpa: q(icpt::GPA)?,
            insn_bytes: q(icpt::INSN_BYTES)?,
            hc_status: q(icpt::HC_STATUS)?,
            access_info: q(icpt::ACCESS_INFO)?,
            gva: q(icpt::GVA)?,
        })
    }

    /// Put VP `vp`'s VTL `vtl` sibling back in the MP state KVM created it in,
    /// `KVM_MP_STATE_UNINITIALIZED` (not the BSP, in-kernel LAPIC), undoing what
    /// [`TestVm::add_vcpu`] does for every vCPU: as a VMM that leaves the MP state alone has
    /// it. The state machine must make it runnable when the guest enables the VTL.
    pub fn leave_uninitialized(&self, vp: u32, vtl: u8) -> Result<()> {
        let v = self.vm.vcpu(self.index(vp, vtl))?;
        v.fd.set_mp_state(kvm_bindings::kvm_mp_state {
            mp_state: kvm_bindings::KVM_MP_STATE_UNINITIALIZED,
        })
        .map_err(|e| anyhow!("KVM_SET_MP_STATE(UNINITIALIZED) on vCPU {}: {e}", v.id))
    }

    /// The [`TestVm`] index (= vcpu_id) of VP `vp`'s VTL `vtl` sibling.
    pub fn index(&self, vp: u32, vtl: u8) -> usize {
        usize::from(vtl) * self.vps as usize + vp as usize
    }

    /// GPA of the VP assist page of the vCPU at `index` (VTL1 siblings enable theirs on their
    /// first entry; VTL0 does it with [`Self::enable_assist_page`]).
    pub fn assist_gpa(index: usize) -> u64 {
        vsm_layout::ASSIST + index as u64 * layout::PAGE
    }

    /// GPA of VP `vp`'s round-trip block `round`.
    pub fn block_gpa(vp: u32, round: u64) -> u64 {
        vsm_layout::BLOCKS
            + u64::from(vp) * vsm_layout::BLOCKS_PER_VP_BYTES
            + round * vsm::block::SIZE
    }

    /// The program step that enables the VP assist page of VP `vp`'s VTL `vtl` sibling (a
    /// WRMSR, for VTL0's program).
    pub fn enable_assist_page(&self, vp: u32, vtl: u8) -> Step {
        Step::Wrmsr(
            hyperv::msr::VP_ASSIST_PAGE,
            Self::assist_gpa(self.index(vp, vtl)) | vsm::assist::ENABLE,
        )
    }

    /// The program step HvCallEnableVpVtl(VP `vp`, VTL1): RIP = the VTL1 entry
    /// ([`Entry::VsmVtl1`]), RSP = the top of the VTL1 sibling's stack, GS base = its data
    /// page, TR base = its TSS, CR3 = `cr3` (`None`: VTL0's).
    pub fn enable_vp_vtl(&self, vp: u32, cr3: Option<u64>) -> Step {
        let i = self.index(vp, 1);
        Step::EnableVpVtl(hyperv::EnableVpVtl {
            input: vsm_layout::ENABLE_INPUT + u64::from(vp) * layout::PAGE,
            vtl: 1,
            rip: layout::CODE + guest::entry_offset(Entry::VsmVtl1),
            rsp: Self::vtl1_stack_top(i),
            gs_base: TestVm::pcpu_gpa(i),
            tr_base: TestVm::pcpu_gpa(i) + pcpu::TSS,
            cr3,
        })
    }

    /// Top of the stack of the vCPU at `index` (where VTL1 starts).
    pub fn vtl1_stack_top(index: usize) -> u64 {
        layout::STACKS + (index as u64 + 1) * layout::STACK_SIZE
    }

    /// Write round trip `round` of VP `vp` (before the guest gets there).
    pub fn write_round(&self, vp: u32, round: u64, r: &Round) -> Result<()> {
        if round >= MAX_ROUNDS {
            bail!("VP {vp}: round {round}: a VP has room for {MAX_ROUNDS} rounds");
        }
        let b = Self::block_gpa(vp, round);
        let m = &self.vm.mem;
        m.write(b, &[0u8; vsm::block::SIZE as usize])?;
        r.vtl0_in.write(m, b + vsm::block::IN)?;
        r.vtl1_out.write(m, b + vsm::block::V1_OUT)?;
        m.write_u64(b + vsm::block::V1_RET_RAX, r.ret_rax)?;
        m.write_u64(b + vsm::block::V1_RET_RCX, r.ret_rcx)?;
        if let Some((c, rdx, r8)) = r.vtl1_hcall {
            m.write_u64(b + vsm::block::V1_HC_CONTROL, c)?;
            m.write_u64(b + vsm::block::V1_HC_RDX, rdx)?;
            m.write_u64(b + vsm::block::V1_HC_R8, r8)?;
        }
        if let Some(cr8) = r.vtl1_cr8 {
            m.write_u64(
                b + vsm::block::V1_SET_CR8,
                vsm::SET_CR8 | u64::from(cr8 & 0xf),
            )?;
        }
        Ok(())
    }

    /// What the guest recorded for round trip `round` of VP `vp`.
    pub fn read_round(&self, vp: u32, round: u64) -> Result<RoundSeen> {
        let b = Self::block_gpa(vp, round);
        let m = &self.vm.mem;
        let q = |off: u64| m.read_u64(b + off);
        Ok(RoundSeen {
            vtl1: RegSet::read(m, b + vsm::block::V1_SEEN)?,
            vtl1_cr3: q(vsm::block::V1_CR3)?,
            vtl1_gs_base: q(vsm::block::V1_GS_BASE)?,
            entry_reason: q(vsm::block::V1_ENTRY_REASON)?,
            vtl1_round: q(vsm::block::V1_ROUND)?,
            vtl1_hcall_result: q(vsm::block::V1_HC_RESULT)?,
            vtl0: RegSet::read(m, b + vsm::block::V0_SEEN)?,
            vtl0_rsp_before: q(vsm::block::V0_RSP_BEFORE)?,
            vtl0_cr3: q(vsm::block::V0_CR3)?,
            vtl0_gs_base: q(vsm::block::V0_GS_BASE)?,
        })
    }

    /// Hand hypercalls the state machine does not answer to `handler` (on the VP's thread);
    /// the guest gets the status it returns. Without one, such a hypercall fails its VP.
    pub fn on_unhandled_hcall(
        &mut self,
        handler: impl Fn(u32, u8, &HcallExit) -> Result<u64> + Send + Sync + 'static,
    ) {
        self.unhandled = Some(Arc::new(handler));
    }

    /// Hand every vCPU to a [`Partition`] and run one thread per VP.
    pub fn start(&mut self) -> Result<VpRunning> {
        install_kick_handler();
        let mut partition =
            Partition::new(self.config.clone()).context("the partition's configuration")?;
        for vp in 0..self.vps {
            let mut take = |vtl: u8| -> Result<Sibling> {
                let i = self.index(vp, vtl);
                let v = self
                    .vm
                    .vcpus
                    .get_mut(i)
                    .and_then(Option::take)
                    .ok_or_else(|| anyhow!("vCPU index {i} is gone (started already?)"))?;
                Ok(Arc::new(Mutex::new(v)))
            };
            let vtl0 = take(0)?;
            let vtl1 = take(1)?;
            partition
                .add_vp(vp, vp, vtl0)
                .context("Partition::add_vp")?;
            partition
                .add_sibling(vp, 1, vtl1)
                .context("Partition::add_sibling")?;
        }
        if self.notify {
            partition
                .enable_event_notify()
                .context("Partition::enable_event_notify")?;
        }
        // A second VmFd on the same VM for the threads' KVM_SIGNAL_MSI.
        // SAFETY: the VM fd is open for as long as `self.vm` lives, which outlasts this borrow.
        let borrowed = unsafe { BorrowedFd::borrow_raw(self.vm.fd.as_raw_fd()) };
        let dup = borrowed
            .try_clone_to_owned()
            .context("duplicating the VM fd")?;
        // SAFETY: `dup` is a valid KVM VM fd that we own; create_vmfd_from_rawfd takes that
        // ownership over (the fd is closed when the VmFd drops).
        let vmfd = Arc::new(
            unsafe { self.vm.kvm.create_vmfd_from_rawfd(dup.into_raw_fd()) }
                .map_err(|e| anyhow!("a second VmFd: {e}"))?,
        );
        let shared = Arc::new(VpShared {
            stop: AtomicBool::new(false),
            protections: self.protections,
            partition: Mutex::new(partition),
            queues: (0..self.vps)
                .map(|_| (Mutex::new(VecDeque::new()), Condvar::new()))
                .collect(),
            events: (0..self.vps).map(|_| Mutex::new(Vec::new())).collect(),
        });
        let mut threads = Vec::new();
        for vp in 0..self.vps {
            let sh = Arc::clone(&shared);
            let mem = Arc::clone(&self.vm.mem);
            let fd = Arc::clone(&vmfd);
            let handler = self.unhandled.clone();
            let h = std::thread::Builder::new()
                .name(format!("vp{vp}"))
                .spawn(move || vp_thread(vp, sh, mem, fd, handler))
                .with_context(|| format!("spawning the thread of VP {vp}"))?;
            threads.push((vp, h));
        }
        Ok(VpRunning { shared, threads })
    }
}

/// The control word of a slow HvCallModifyVtlProtectionMask with `reps` GPNs.
pub fn modify_protection_control(reps: u16) -> u64 {
    control::word(
        hyperv::call::MODIFY_VTL_PROTECTION_MASK,
        false,
        0,
        reps as u64,
    )
}

/// The input of HvCallModifyVtlProtectionMask: PartitionId self, `map_flags`
/// (`HV_MAP_GPA_FLAGS`), TargetVtl = `target_vtl` (named explicitly), the GPNs.
pub fn protection_input(map_flags: u32, target_vtl: u8, gpns: &[u64]) -> Vec<u8> {
    let mut b = hyperv::PARTITION_ID_SELF.to_le_bytes().to_vec();
    b.extend(map_flags.to_le_bytes());
    b.extend([hyperv::input_vtl(target_vtl, true), 0, 0, 0]);
    for g in gpns {
        b.extend(g.to_le_bytes());
    }
    b
}

/// `HvCallEnablePartitionVtl(vtl)` as a slow hypercall for a program (PartitionId self,
/// TargetVtl, no flags).
pub fn enable_partition_vtl(vtl: u8) -> Hypercall {
    let mut input = hyperv::PARTITION_ID_SELF.to_le_bytes().to_vec();
    input.extend_from_slice(&[vtl, 0, 0, 0, 0, 0, 0, 0]);
    Hypercall::slow(
        control::word(hyperv::call::ENABLE_PARTITION_VTL, false, 0, 0),
        input,
    )
}

// ---------------------------------------------------------------------------------------------
// Running.

/// The cross-VTL IPI path: the test VM does not enable `KVM_CAP_X2APIC_API` (APIC IDs are VP
/// indexes, below [`MAX_VPS`]), so the MSIs carry xAPIC destination IDs.
fn delivery(vmfd: &VmFd) -> MsiDelivery<'_> {
    MsiDelivery::new(vmfd, false)
}

/// What the VP runner did with one hypercall exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VpEvent {
    /// The state machine answered a hypercall of `vtl` on the spot (EnablePartitionVtl,
    /// EnableVpVtl, an IPI, ...): `result` went to the guest.
    Completed {
        /// Caller's VTL.
        vtl: u8,
        /// Call code.
        code: u16,
        /// Status (and reps) for the guest.
        result: u64,
    },
    /// The VP switched from VTL `from` to VTL `to` (a VtlCall or VtlReturn).
    Switched {
        /// VTL that made the call.
        from: u8,
        /// VTL that runs now.
        to: u8,
    },
    /// The state machine queued exception `vector` on `vtl`'s vCPU at its hypercall.
    Exception {
        /// Caller's VTL.
        vtl: u8,
        /// Vector (6: #UD).
        vector: u8,
    },
    /// An interrupt for VTL `to` (parked) stopped VTL `from` (`KVM_EXIT_EVENT_NOTIFY`) and the
    /// VP switched to it (entry reason Interrupt).
    Interrupted {
        /// VTL that was running.
        from: u8,
        /// VTL that runs now.
        to: u8,
        /// The vcpu_id the exit named.
        notifier: u32,
    },
    /// A `KVM_EXIT_EVENT_NOTIFY` found no higher VTL with an event any more: re-armed, the
    /// same VTL ran on.
    NotifyResumed {
        /// VTL that runs.
        vtl: u8,
        /// The vcpu_id the exit named.
        notifier: u32,
    },
    /// A VTL protection fault of `from` became a secure intercept: the VP switched to `to`
    /// ([`Partition::handle_memory_fault`]).
    Intercept {
        /// The faulting VTL.
        from: u8,
        /// The VTL that got the message.
        to: u8,
        /// The faulting GPA.
        gpa: u64,
        /// The access.
        access: FaultAccess,
        /// What became of the message.
        message: MessageDelivery,
    },
    /// A hypercall the state machine does not answer, answered by the test's handler.
    Forwarded {
        /// Caller's VTL.
        vtl: u8,
        /// Call code.
        code: u16,
        /// Status for the guest.
        result: u64,
    },
}

/// One VP's ucalls (tagged with the VTL that made them) or the error that ended its thread.
type VpQueue = (Mutex<VecDeque<Result<(u8, Ucall), String>>>, Condvar);

struct VpShared {
    stop: AtomicBool,
    /// [`VsmVm::protections`]: answer with [`KvmProtections`].
    protections: bool,
    partition: Mutex<Partition<Sibling>>,
    queues: Vec<VpQueue>,
    events: Vec<Mutex<Vec<VpEvent>>>,
}

impl VpShared {
    fn push(&self, vp: u32, ev: Result<(u8, Ucall), String>) {
        if let Some((q, cv)) = self.queues.get(vp as usize) {
            lock(q).push_back(ev);
            cv.notify_all();
        }
    }
}

fn vp_thread(
    vp: u32,
    sh: Arc<VpShared>,
    mem: Arc<GuestMem>,
    vmfd: Arc<VmFd>,
    handler: Option<UnhandledHandler>,
) {
    if let Err(e) = vp_loop(vp, &sh, &mem, &vmfd, handler.as_ref()) {
        sh.push(vp, Err(format!("{e:#}")));
    }
}

/// Run VP `vp`'s active sibling until a ucall other than SYNC, an error, or stop.
fn vp_loop(
    vp: u32,
    sh: &VpShared,
    mem: &Arc<GuestMem>,
    vmfd: &VmFd,
    handler: Option<&UnhandledHandler>,
) -> Result<()> {
    while !sh.stop.load(Ordering::SeqCst) {
        let (vtl, vcpu) = {
            let p = lock(&sh.partition);
            let v = p.vp(vp).ok_or_else(|| anyhow!("VP {vp} vanished"))?;
            (v.active_vtl(), Arc::clone(v.active()))
        };
        let step =
            run_once_raw(&mut lock(&vcpu), mem).with_context(|| format!("VP {vp} VTL {vtl}"))?;
        match step {
            RunStep::Interrupted => {}
            RunStep::Ucall(u) => {
                let last = !matches!(u, Ucall::Sync { .. });
                sh.push(vp, Ok((vtl, u)));
                if last {
                    return Ok(());
                }
            }
            RunStep::Hyperv => {
                if let Some(ev) = answer(vp, vtl, &vcpu, sh, mem, vmfd, handler)? {
                    lock(&sh.events[vp as usize]).push(ev);
                }
            }
            RunStep::MemoryFault(fault) => {
                let ev = intercept(vp, vtl, &fault, sh, mem, vmfd)?;
                lock(&sh.events[vp as usize]).push(ev);
            }
            RunStep::EventNotify(notifier) => {
                let ev = {
                    let mut p = lock(&sh.partition);
                    let delivery = delivery(vmfd);
                    let (mut protections, mut siblings) = (NoProtections, NoSiblings);
                    let mut env = Env {
                        memory: &**mem,
                        delivery: &delivery,
                        protections: &mut protections,
                        siblings: &mut siblings,
                    };
                    match p.handle_event_notify(&mut env, vp, vtl).with_context(|| {
                        format!("VP {vp} VTL {vtl}: event notification from vCPU {notifier}")
                    })? {
                        NotifyOutcome::Interrupted { from, to } => {
                            VpEvent::Interrupted { from, to, notifier }
                        }
                        NotifyOutcome::Resume => VpEvent::NotifyResumed { vtl, notifier },
                    }
                };
                lock(&sh.events[vp as usize]).push(ev);
            }
        }
    }
    Ok(())
}

/// The protection hook of a VM with `KVM_CAP_VTL_PROTECTIONS`: RAM is the test VM's one memslot.
fn kvm_protections(vmfd: &VmFd) -> KvmProtections<&VmFd> {
    KvmProtections::new(vmfd).with_ram(vec![(0, layout::MEM_SIZE)])
}

/// Hand VP `vp`'s protection fault in VTL `vtl` to the state machine as a secure intercept.
fn intercept(
    vp: u32,
    vtl: u8,
    fault: &MemoryFault,
    sh: &VpShared,
    mem: &Arc<GuestMem>,
    vmfd: &VmFd,
) -> Result<VpEvent> {
    let mut p = lock(&sh.partition);
    let delivery = delivery(vmfd);
    let (mut none, mut siblings) = (NoProtections, NoSiblings);
    let mut env = Env {
        memory: &**mem,
        delivery: &delivery,
        protections: &mut none,
        siblings: &mut siblings,
    };
    let access = fault
        .access
        .ok_or_else(|| anyhow!("VP {vp} VTL {vtl}: {fault} without an access"))?;
    match p
        .handle_memory_fault(&mut env, vp, vtl, fault)
        .with_context(|| format!("VP {vp} VTL {vtl}: {fault}"))?
    {
        InterceptOutcome::Switched { from, to, message } => Ok(VpEvent::Intercept {
            from,
            to,
            gpa: fault.gpa,
            access,
            message,
        }),
        other => bail!("VP {vp} VTL {vtl}: {fault} is not a secure intercept ({other:?})"),
    }
}

/// Answer the `KVM_EXIT_HYPERV` that VP `vp`'s VTL `vtl` sibling exited with.
fn answer(
    vp: u32,
    vtl: u8,
    vcpu: &Sibling,
    sh: &VpShared,
    mem: &Arc<GuestMem>,
    vmfd: &VmFd,
    handler: Option<&UnhandledHandler>,
) -> Result<Option<VpEvent>> {
    let exit = HcallExit::from_kvm_run(lock(vcpu).fd.get_kvm_run());
    // SynIC and other Hyper-V exits: nothing to answer.
    let Some(exit) = exit else { return Ok(None) };
    let code = exit.control.code();
    let outcome = {
        let mut p = lock(&sh.partition);
        let delivery = delivery(vmfd);
        let (mut none, mut siblings) = (NoProtections, NoSiblings);
        let mut kvm;
        let protections: &mut dyn Protections = if sh.protections {
            kvm = kvm_protections(vmfd);
            &mut kvm
        } else {
            &mut none
        };
        let mut env = Env {
            memory: &**mem,
            delivery: &delivery,
            protections,
            siblings: &mut siblings,
        };
        p.handle_hypercall(&mut env, vp, vtl, &exit)
            .with_context(|| format!("VP {vp} VTL {vtl}: hypercall {code:#x}"))?
    };
    let complete = |result: u64| {
        if !set_hcall_result(lock(vcpu).fd.get_kvm_run(), result) {
            bail!("VP {vp} VTL {vtl}: the vCPU's kvm_run no longer holds the HCALL exit");
        }
        Ok(())
    };
    Ok(Some(match outcome {
        Outcome::Complete { result } => {
            complete(result)?;
            VpEvent::Completed { vtl, code, result }
        }
        Outcome::Switched { from, to } => VpEvent::Switched { from, to },
        Outcome::Exception { vector } => VpEvent::Exception { vtl, vector },
        Outcome::NotHandled => {
            let Some(h) = handler else {
                bail!(
                    "VP {vp} VTL {vtl}: hypercall {code:#x} (control {:#x}) is not one the VTL state machine answers, and the test installed no handler",
                    exit.control.0
                );
            };
            let result = h(vp, vtl, &exit)
                .with_context(|| format!("VP {vp} VTL {vtl}: the test's hypercall handler"))?;
            complete(result)?;
            VpEvent::Forwarded { vtl, code, result }
        }
    }))
}

/// VPs running on their threads. Dropping it stops and joins them.
pub struct VpRunning {
    shared: Arc<VpShared>,
    threads: Vec<(u32, JoinHandle<()>)>,
}

impl VpRunning {
    /// VP `vp`'s next ucall and the VTL that made it, waiting up to `timeout`.
    pub fn next_ucall(&self, vp: u32, timeout: Duration) -> Result<(u8, Ucall)> {
        let (q, cv) = self
            .shared
            .queues
            .get(vp as usize)
            .ok_or_else(|| anyhow!("no VP {vp}"))?;
        let deadline = Instant::now() + timeout;
        let mut g = lock(q);
        loop {
            if let Some(ev) = g.pop_front() {
                return ev.map_err(|e| anyhow!("VP {vp} stopped: {e}"));
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "VP {vp}: no ucall within {timeout:?} (VTL {} active)",
                    self.active_vtl(vp).unwrap_or(0xff)
                );
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wait for VP `vp` to SYNC at `stage` from VTL `vtl`; returns the SYNC's arguments. Any
    /// other ucall (an ABORT, above all) is an error that says what the guest reported.
    pub fn wait_sync(&self, vp: u32, vtl: u8, stage: u64, timeout: Duration) -> Result<[u64; 4]> {
        match self.next_ucall(vp, timeout)? {
            (v, Ucall::Sync { stage: s, args }) if v == vtl && s == stage => Ok(args),
            (v, other) => {
                bail!("VP {vp}: expected SYNC at stage {stage:#x} from VTL {vtl}, got {other} from VTL {v}")
            }
        }
    }

    /// The VTL VP `vp` runs now.
    pub fn active_vtl(&self, vp: u32) -> Option<u8> {
        lock(&self.shared.partition).vp(vp).map(|v| v.active_vtl())
    }

    /// Everything the runner did with VP `vp`'s hypercall exits so far, in order.
    pub fn events(&self, vp: u32) -> Vec<VpEvent> {
        events(&self.shared, vp)
    }

    /// VP `vp`'s VTL switches so far, in order, as (from, to).
    pub fn switches(&self, vp: u32) -> Vec<(u8, u8)> {
        switches(&self.events(vp))
    }

    /// Stop every VP and describe where each was (active VTL, guest code offset of RIP), for
    /// error messages.
    pub fn stop_and_describe(self) -> String {
        match self.stop() {
            Ok(s) => s.describe(),
            Err(e) => format!("could not stop the VPs: {e:#}"),
        }
    }

    /// Kick every VP out of KVM_RUN, join the threads; the partition stays for inspection.
    pub fn stop(mut self) -> Result<VpStopped> {
        self.stop_inner()?;
        Ok(VpStopped {
            shared: Arc::clone(&self.shared),
        })
    }

    fn stop_inner(&mut self) -> Result<()> {
        self.shared.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        for (vp, handle) in self.threads.drain(..) {
            while !handle.is_finished() {
                if Instant::now() >= deadline {
                    bail!("VP {vp} did not leave KVM_RUN within 10 s of being kicked");
                }
                // The thread is ours and not joined yet, so its pthread_t is valid; the kick
                // signal's handler is installed and does nothing.
                let _ = pthread_kill(handle.as_pthread_t(), KICK);
                std::thread::sleep(Duration::from_millis(2));
            }
            if handle.join().is_err() {
                bail!("VP {vp}'s thread panicked");
            }
        }
        Ok(())
    }
}

impl Drop for VpRunning {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            // Best effort on error paths; the test reported its error already.
            let _ = self.stop_inner();
        }
    }
}

fn events(sh: &VpShared, vp: u32) -> Vec<VpEvent> {
    sh.events
        .get(vp as usize)
        .map(|e| lock(e).clone())
        .unwrap_or_default()
}

fn switches(events: &[VpEvent]) -> Vec<(u8, u8)> {
    events
        .iter()
        .filter_map(|e| match e {
            VpEvent::Switched { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// The VPs after [`VpRunning::stop`]: the partition and its siblings, for checks of KVM state.
pub struct VpStopped {
    shared: Arc<VpShared>,
}

impl VpStopped {
    /// VP `vp`'s VTL `vtl` sibling (lock it for `KVM_GET_LAPIC` and the like).
    pub fn sibling(&self, vp: u32, vtl: u8) -> Result<Sibling> {
        lock(&self.shared.partition)
            .vp(vp)
            .and_then(|v| v.vcpu(vtl))
            .cloned()
            .ok_or_else(|| anyhow!("VP {vp} has no VTL {vtl} sibling"))
    }

    /// The VTL VP `vp` was running.
    pub fn active_vtl(&self, vp: u32) -> Option<u8> {
        lock(&self.shared.partition).vp(vp).map(|v| v.active_vtl())
    }

    /// Bit n: VTL n is enabled on VP `vp`.
    pub fn enabled_vtls(&self, vp: u32) -> Option<u16> {
        lock(&self.shared.partition)
            .vp(vp)
            .map(|v| v.enabled_vtls())
    }

    /// Everything the runner did with VP `vp`'s hypercall exits, in order.
    pub fn events(&self, vp: u32) -> Vec<VpEvent> {
        events(&self.shared, vp)
    }

    /// VP `vp`'s VTL switches, in order.
    pub fn switches(&self, vp: u32) -> Vec<(u8, u8)> {
        switches(&self.events(vp))
    }

    /// One line per VP: active VTL and where each sibling's RIP is.
    pub fn describe(&self) -> String {
        let p = lock(&self.shared.partition);
        p.vps()
            .map(|v| {
                let sibs: Vec<String> = (0..VTLS)
                    .filter_map(|vtl| v.vcpu(vtl).map(|s| (vtl, s)))
                    .map(|(vtl, s)| match lock(s).fd.get_regs() {
                        Ok(r) => format!(
                            "VTL{vtl} at guest code offset {:#x}",
                            r.rip.wrapping_sub(layout::CODE)
                        ),
                        Err(e) => format!("VTL{vtl}: KVM_GET_REGS: {e}"),
                    })
                    .collect();
                format!(
                    "VP {} (VTL {} active, enabled {:#b}): {}",
                    v.index(),
                    v.active_vtl(),
                    v.enabled_vtls(),
                    sibs.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}
