// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Hyper-V in test VMs, host side: what a test needs to give its nested guests Hyper-V
//! enlightenments, make them issue hypercalls, and see (and answer) what KVM forwards.
//!
//! How a Hyper-V test is put together (see `tests/hyperv/` for complete ones):
//!
//! 1. `TestVm::new(VmOptions { hyperv: true, apic_groups: true, .. })`: every vCPU gets the
//!    Hyper-V CPUID leaves ([`hv_cpuid`] merged over KVM's supported CPUID, KVM's own
//!    0x400000xx leaves dropped, as the kernel's `vcpu_set_hv_cpuid()` does), which turns
//!    KVM's Hyper-V emulation on for it.
//! 2. Create vCPUs at [`crate::guest::Entry::HvMain`] and give each its VP index with
//!    [`set_vp_index`] (host `KVM_SET_MSRS` of `HV_X64_MSR_VP_INDEX`; VTL siblings in different
//!    APIC groups may share one). Optionally [`enable_vsm`] on the VM and [`enable_synic`] on
//!    vCPUs that take SINTs.
//! 3. The guest writes `HV_X64_MSR_GUEST_OS_ID` and `HV_X64_MSR_HYPERCALL` from its data page
//!    ([`crate::guest::pcpu::HV_GUEST_OS_ID`], [`crate::guest::pcpu::HV_HYPERCALL`]; `add_vcpu`
//!    fills in working defaults, 0 skips the write), reports `SYNC(STAGE_HV_READY, GUEST_OS_ID,
//!    HYPERCALL, VP_INDEX)` as it reads them back, and then runs its [`Program`] if it has one:
//!    a list of [`Step`]s, above all [`Hypercall`]s (control, RDX, R8, RAX, XMM0-5; a slow
//!    call's input block is placed in guest memory by [`crate::vm::TestVm::load_hv_program`],
//!    which points RDX at it). The guest records RAX (the status) and RCX after each call in
//!    the program, where [`Loaded::outcome`] reads them.
//! 4. Hypercalls KVM forwards to userspace (`KVM_EXIT_HYPERV`) go to the handler the test
//!    installed with [`crate::vm::TestVm::on_hyperv_exit`]: it sees the exit ([`HypervExit`])
//!    with the vCPU ([`ExitCtx`], whose fd allows `KVM_SET_REGS`), sets
//!    [`HcallExit::result`], and the vCPU resumes with it
//!    ([`vtlkit_uapi::vtl::set_hcall_result`]). Without a handler an HCALL exit
//!    fails the vCPU with a message naming the call; SynIC exits (MSR writes KVM reports)
//!    are resumed.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, kvm_irq_routing_entry, kvm_irq_routing_hv_sint,
    kvm_msr_entry, kvm_run, CpuId, Msrs, KVM_CAP_HYPERV_SYNIC2, KVM_EXIT_HYPERV_SYNIC,
    KVM_IRQ_ROUTING_HV_SINT, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
use vtlkit_uapi::{raw, vtl};

use crate::guest::hvprog;
use crate::vm::{layout, GuestMem};

/// Synthetic MSRs (TLFS; Linux `hyperv-tlfs.h`).
pub mod msr {
    /// `HV_X64_MSR_GUEST_OS_ID`: non-zero enables hypercalls.
    pub const GUEST_OS_ID: u32 = 0x4000_0000;
    /// `HV_X64_MSR_HYPERCALL`: bit 0 enable, page GPA in 63:12.
    pub const HYPERCALL: u32 = 0x4000_0001;
    /// `HV_X64_MSR_VP_INDEX`: guest read-only, host-writable.
    pub const VP_INDEX: u32 = 0x4000_0002;
    /// `HV_X64_MSR_VP_ASSIST_PAGE`: bit 0 enable, page GPA in 63:12 (private per VTL).
    pub const VP_ASSIST_PAGE: u32 = 0x4000_0073;
    /// `HV_X64_MSR_SCONTROL`: bit 0 enables the SynIC.
    pub const SCONTROL: u32 = 0x4000_0080;
    /// `HV_X64_MSR_SINT0`; SINTn is `SINT0 + n`.
    pub const SINT0: u32 = 0x4000_0090;

    /// The MSR of SINT `n` (0..=15).
    pub const fn sint(n: u32) -> u32 {
        SINT0 + n
    }
}

/// Hypercall codes (TLFS; REFERENCE.md 3.2).
pub mod call {
    /// HvCallFlushVirtualAddressList (rep).
    pub const FLUSH_VIRTUAL_ADDRESS_LIST: u16 = 0x0003;
    /// HvCallFlushVirtualAddressListEx (rep, variable header: the VP set's banks).
    pub const FLUSH_VIRTUAL_ADDRESS_LIST_EX: u16 = 0x0014;
    /// HvCallSendSyntheticClusterIpi.
    pub const SEND_IPI: u16 = 0x000b;
    /// HvCallModifyVtlProtectionMask (rep).
    pub const MODIFY_VTL_PROTECTION_MASK: u16 = 0x000c;
    /// HvCallEnablePartitionVtl.
    pub const ENABLE_PARTITION_VTL: u16 = 0x000d;
    /// HvCallEnableVpVtl.
    pub const ENABLE_VP_VTL: u16 = 0x000f;
    /// HvCallVtlCall.
    pub const VTL_CALL: u16 = 0x0011;
    /// HvCallVtlReturn.
    pub const VTL_RETURN: u16 = 0x0012;
    /// HvCallSendSyntheticClusterIpiEx (variable header: the VP set's banks).
    pub const SEND_IPI_EX: u16 = 0x0015;
    /// HvCallGetVpRegisters (rep).
    pub const GET_VP_REGISTERS: u16 = 0x0050;
    /// HvCallPostMessage (KVM forwards it to userspace when the caller's SynIC is active).
    pub const POST_MESSAGE: u16 = 0x005c;
    /// HvCallSetVpRegisters (rep).
    pub const SET_VP_REGISTERS: u16 = 0x0051;
}

/// Hypercall status codes (RAX 15:0).
pub mod status {
    /// HV_STATUS_SUCCESS.
    pub const SUCCESS: u64 = 0;
    /// HV_STATUS_INVALID_HYPERCALL_CODE.
    pub const INVALID_HYPERCALL_CODE: u64 = 2;
    /// HV_STATUS_INVALID_HYPERCALL_INPUT.
    pub const INVALID_HYPERCALL_INPUT: u64 = 3;
    /// HV_STATUS_INVALID_PARAMETER.
    pub const INVALID_PARAMETER: u64 = 5;
    /// HV_STATUS_ACCESS_DENIED.
    pub const ACCESS_DENIED: u64 = 6;
}

/// The hypercall control word (RCX): code 15:0, fast bit 16, variable header size (qwords)
/// 26:17, rep count 43:32, rep start 59:48.
pub mod control {
    /// Fast (register) input.
    pub const FAST: u64 = 1 << 16;

    /// Control word of `code` with `var_qwords` of variable header and `reps` repetitions.
    pub const fn word(code: u16, fast: bool, var_qwords: u64, reps: u64) -> u64 {
        code as u64
            | if fast { FAST } else { 0 }
            | (var_qwords & 0x3ff) << 17
            | (reps & 0xfff) << 32
    }
}

/// `HV_GENERIC_SET_SPARSE_4K`: an HV_VP_SET format with a bank mask and banks.
pub const GENERIC_SET_SPARSE_4K: u64 = 0;
/// `HV_GENERIC_SET_ALL`: every VP.
pub const GENERIC_SET_ALL: u64 = 1;
/// `HV_PARTITION_ID_SELF`.
pub const PARTITION_ID_SELF: u64 = u64::MAX;
/// A Linux guest OS ID (bit 63: open source; kernel version bits arbitrary but non-zero).
pub const GUEST_OS_ID_LINUX: u64 = 0x8100_0000_060c_0000;
/// `HV_X64_MSR_HYPERCALL` enable bit.
pub const HYPERCALL_ENABLE: u64 = 1;

/// An `HV_INPUT_VTL` byte: TargetVtl 3:0, UseTargetVtl bit 4 (bits 7:5 reserved).
pub const fn input_vtl(target: u8, use_target: bool) -> u8 {
    (target & 0xf) | if use_target { 1 << 4 } else { 0 }
}

/// An HV_VP_SET: all VPs, or a sparse set of VP indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VpSet {
    /// `HV_GENERIC_SET_ALL`.
    All,
    /// `HV_GENERIC_SET_SPARSE_4K` with these VP indexes.
    Sparse(Vec<u32>),
}

impl VpSet {
    /// (format, valid bank mask, banks): bank `b` covers VP indexes 64b..64b+63 and is present
    /// iff bit `b` of the mask is set; banks are listed in mask order.
    pub fn encode(&self) -> (u64, u64, Vec<u64>) {
        match self {
            VpSet::All => (GENERIC_SET_ALL, 0, Vec::new()),
            VpSet::Sparse(vps) => {
                let mut banks = [0u64; 64];
                let mut mask = 0u64;
                for &vp in vps {
                    let b = (vp / 64) as usize % 64;
                    banks[b] |= 1 << (vp % 64);
                    mask |= 1 << b;
                }
                let list = (0..64)
                    .filter(|b| mask & (1 << b) != 0)
                    .map(|b| banks[b])
                    .collect();
                (GENERIC_SET_SPARSE_4K, mask, list)
            }
        }
    }
}

/// `HvCallSendSyntheticClusterIpi` input block: Vector u32, HV_INPUT_VTL u8, 3 bytes
/// padding, ProcessorMask u64.
pub fn send_ipi_input(vector: u32, vtl: u8, mask: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&vector.to_le_bytes());
    b.extend_from_slice(&[vtl, 0, 0, 0]);
    b.extend_from_slice(&mask.to_le_bytes());
    b
}

/// `HvCallSendSyntheticClusterIpiEx` input block (Vector u32, HV_INPUT_VTL u8, padding,
/// HV_VP_SET) and the variable header size (qwords) its control word must name.
pub fn send_ipi_ex_input(vector: u32, vtl: u8, set: &VpSet) -> (Vec<u8>, u64) {
    let (format, mask, banks) = set.encode();
    let mut b = Vec::new();
    b.extend_from_slice(&vector.to_le_bytes());
    b.extend_from_slice(&[vtl, 0, 0, 0]);
    b.extend_from_slice(&format.to_le_bytes());
    b.extend_from_slice(&mask.to_le_bytes());
    for bank in &banks {
        b.extend_from_slice(&bank.to_le_bytes());
    }
    (b, banks.len() as u64)
}

/// `KVM_GET_SUPPORTED_HV_CPUID` on /dev/kvm (`KVM_CAP_SYS_HYPERV_CPUID`): the Hyper-V leaves
/// KVM can emulate.
pub fn hv_cpuid(kvm: &Kvm) -> Result<CpuId> {
    let mut cpuid = CpuId::new(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| anyhow!("allocating a CpuId of {KVM_MAX_CPUID_ENTRIES} entries: {e:?}"))?;
    // SAFETY: the ioctl reads `nent` and writes at most that many entries into the
    // FamStructWrapper's buffer, which has room for exactly that many; kvm is a live fd.
    let r = unsafe {
        ioctl_with_mut_ptr(
            kvm,
            libc::c_ulong::from(raw::VTLKIT_KVM_GET_SUPPORTED_HV_CPUID),
            cpuid.as_mut_fam_struct_ptr(),
        )
    };
    if r < 0 {
        bail!(
            "KVM_GET_SUPPORTED_HV_CPUID: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cpuid)
}

/// `base` without KVM's own paravirt leaves (0x40000000..0x400000ff), plus the Hyper-V leaves
/// `hv` (which live at the same numbers; 0x40000001 EAX = "Hv#1" turns Hyper-V on).
pub fn merge_hv_cpuid(base: &CpuId, hv: &CpuId) -> Result<CpuId> {
    let mut entries: Vec<kvm_cpuid_entry2> = base
        .as_slice()
        .iter()
        .filter(|e| !(0x4000_0000..0x4000_0100).contains(&e.function))
        .copied()
        .collect();
    entries.extend_from_slice(hv.as_slice());
    CpuId::from_entries(&entries).map_err(|e| anyhow!("merged CPUID: {e:?}"))
}

/// Whether the kernel offers `KVM_CAP_HYPERV_VSM` (series v3), and
/// `KVM_ENABLE_CAP(KVM_CAP_HYPERV_VSM)` on a VM (the VSM hypercalls and cross-VTL IPIs exit to
/// userspace): the uapi crate's, under the names the framework's callers use.
pub use vtlkit_uapi::{enable_hyperv_vsm as enable_vsm, hyperv_vsm_supported as vsm_supported};

/// `KVM_ENABLE_CAP(KVM_CAP_HYPERV_SYNIC2)` on a vCPU: its SynIC becomes active (SINT routes
/// can reach it).
pub fn enable_synic(fd: &VcpuFd) -> Result<()> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_HYPERV_SYNIC2,
        ..Default::default()
    };
    fd.enable_cap(&cap)
        .map_err(|e| anyhow!("KVM_ENABLE_CAP(KVM_CAP_HYPERV_SYNIC2): {e}"))
}

/// Host `KVM_SET_MSRS` of one MSR.
pub fn set_msr(fd: &VcpuFd, index: u32, data: u64) -> Result<()> {
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(|e| anyhow!("Msrs: {e:?}"))?;
    match fd.set_msrs(&msrs) {
        Ok(1) => Ok(()),
        Ok(n) => bail!("KVM_SET_MSRS({index:#x} = {data:#x}) wrote {n} MSRs, not 1"),
        Err(e) => bail!("KVM_SET_MSRS({index:#x} = {data:#x}): {e}"),
    }
}

/// Host `KVM_GET_MSRS` of one MSR.
pub fn get_msr(fd: &VcpuFd, index: u32) -> Result<u64> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .map_err(|e| anyhow!("Msrs: {e:?}"))?;
    match fd.get_msrs(&mut msrs) {
        Ok(1) => Ok(msrs.as_slice()[0].data),
        Ok(n) => bail!("KVM_GET_MSRS({index:#x}) read {n} MSRs, not 1"),
        Err(e) => bail!("KVM_GET_MSRS({index:#x}): {e}"),
    }
}

/// Set a vCPU's Hyper-V VP index (host write of `HV_X64_MSR_VP_INDEX`).
pub fn set_vp_index(fd: &VcpuFd, vp: u32) -> Result<()> {
    set_msr(fd, msr::VP_INDEX, vp.into())
}

/// A `KVM_IRQ_ROUTING_HV_SINT` routing entry: GSI `gsi` raises SINT `sint` of the vCPU with VP
/// index `vp`; with `group`, `KVM_HV_SINT_VALID_APIC_GROUP` and that group (series v3, set by
/// [`vtlkit_uapi::sint_route_to_group`]).
pub fn sint_route(gsi: u32, vp: u32, sint: u32, group: Option<u32>) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_HV_SINT,
        ..Default::default()
    };
    e.u.hv_sint = kvm_irq_routing_hv_sint { vcpu: vp, sint };
    match group {
        Some(g) => vtlkit_uapi::sint_route_to_group(e, g),
        None => e,
    }
}

// ---------------------------------------------------------------------------------------------
// KVM_EXIT_HYPERV.

/// A forwarded hypercall (`KVM_EXIT_HYPERV_HCALL`), as decoded by
/// [`vtlkit_uapi::vtl::HcallExit::from_kvm_run`], with the kernel's `flags` word and the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HcallExit {
    /// The full hypercall control (RCX).
    pub input: u64,
    /// RDX (input GPA or first fast input qword), R8 (output GPA or second fast qword).
    pub params: [u64; 2],
    /// `KVM_HYPERV_HCALL_*` flags (series v3) exactly as the kernel wrote them: the uapi crate
    /// decodes only `KVM_HYPERV_HCALL_XMM_INPUT`, and the tests check that no other bit is set.
    pub flags: u32,
    /// XMM0..XMM5 as (low, high) qword pairs when `flags` has `KVM_HYPERV_HCALL_XMM_INPUT`
    /// (zeros otherwise).
    pub xmm: [u64; 12],
    /// What the guest gets back (RAX, except for VtlCall/VtlReturn): the handler sets it
    /// (0, HV_STATUS_SUCCESS, until it does).
    pub result: u64,
}

impl HcallExit {
    /// The call code (control 15:0).
    pub fn code(&self) -> u16 {
        (self.input & 0xffff) as u16
    }
    /// Whether `flags` says `xmm` holds the fast input.
    pub fn xmm_input(&self) -> bool {
        self.flags & raw::KVM_HYPERV_HCALL_XMM_INPUT != 0
    }
}

/// A SynIC exit (`KVM_EXIT_HYPERV_SYNIC`): the guest wrote one of the SynIC MSRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynicExit {
    /// The MSR written.
    pub msr: u32,
    /// SCONTROL, SIEFP and SIMP as KVM reports them.
    pub control: u64,
    /// SIEFP.
    pub evt_page: u64,
    /// SIMP.
    pub msg_page: u64,
}

/// A `KVM_EXIT_HYPERV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypervExit {
    /// A forwarded hypercall; set `result` to answer it.
    Hcall(HcallExit),
    /// A SynIC MSR write.
    Synic(SynicExit),
    /// Another type (SynDbg); resumed as is.
    Other(u32),
}

/// Which vCPU an exit came from, with its fd (for `KVM_GET/SET_REGS` in a handler).
pub struct ExitCtx<'a> {
    /// Index in the test VM.
    pub index: usize,
    /// KVM vcpu_id.
    pub id: u64,
    /// The vCPU fd.
    pub fd: &'a VcpuFd,
}

/// A test's handler of `KVM_EXIT_HYPERV`, called on the vCPU's own thread. An error stops that
/// vCPU and is reported as its failure.
pub type HypervHandler = Arc<dyn Fn(&ExitCtx<'_>, &mut HypervExit) -> Result<()> + Send + Sync>;

const _: () = assert!(
    std::mem::size_of::<raw::kvm_hyperv_exit>()
        <= std::mem::size_of::<kvm_bindings::kvm_run__bindgen_ty_1>()
);

/// The `KVM_EXIT_HYPERV` in `run` (whose exit reason must be `KVM_EXIT_HYPERV`): an HCALL as
/// [`vtlkit_uapi::vtl::HcallExit::from_kvm_run`] decodes it, a SynIC exit through kvm-bindings'
/// `kvm_hyperv_exit` (the series did not change that arm).
pub(crate) fn read_exit(run: &kvm_run) -> HypervExit {
    if let Some(h) = vtl::HcallExit::from_kvm_run(run) {
        return HypervExit::Hcall(HcallExit {
            input: h.control.0,
            params: h.params,
            flags: kernel_hcall_flags(run),
            xmm: h.xmm.unwrap_or_default(),
            result: 0,
        });
    }
    // SAFETY: the exit reason is KVM_EXIT_HYPERV, so `hyperv` is the arm the kernel wrote; it
    // is plain data (integers).
    let e = unsafe { run.__bindgen_anon_1.hyperv };
    match e.type_ {
        KVM_EXIT_HYPERV_SYNIC => {
            // SAFETY: type SYNIC says the synic arm is the one the kernel wrote.
            let s = unsafe { e.u.synic };
            HypervExit::Synic(SynicExit {
                msr: s.msr,
                control: s.control,
                evt_page: s.evt_page,
                msg_page: s.msg_page,
            })
        }
        other => HypervExit::Other(other),
    }
}

/// The `flags` of the HCALL exit in `run` as the kernel wrote them, unknown bits included
/// (the uapi decode keeps only what it knows; a test must see what KVM really set).
fn kernel_hcall_flags(run: &kvm_run) -> u32 {
    let p = std::ptr::addr_of!(run.__bindgen_anon_1).cast::<raw::kvm_hyperv_exit>();
    // SAFETY: the exit union is at least as large as the series' kvm_hyperv_exit (asserted
    // above) and plain data; the caller saw an HCALL exit, so the hcall arm is the live one.
    // Unaligned read: we only know the union's alignment through bindgen.
    unsafe { std::ptr::addr_of!((*p).u.hcall.flags).read_unaligned() }
}

impl std::fmt::Display for HcallExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HCALL code {:#x} (control {:#x}, RDX {:#x}, R8 {:#x}, flags {:#x})",
            self.code(),
            self.input,
            self.params[0],
            self.params[1],
            self.flags
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Hypercall programs.

/// One hypercall as the guest issues it: `vmmcall` (`vmcall` on Intel) with these registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hypercall {
    /// RCX: the control word ([`control::word`]).
    pub control: u64,
    /// RDX: for a slow call with `input`, filled in with the input block's GPA on loading.
    pub rdx: u64,
    /// R8 (output GPA, or the second fast input qword).
    pub r8: u64,
    /// RAX before the call (ignored by 64-bit Hyper-V hypercalls; the guest records RAX after).
    pub rax: u64,
    /// XMM0..XMM5 as (low, high) qword pairs.
    pub xmm: [u64; 12],
    /// A slow call's input block, placed in its own page of guest memory.
    pub input: Option<Vec<u8>>,
}

impl Hypercall {
    /// A slow call: `control` with the input block `input` (RDX = its GPA).
    pub fn slow(control: u64, input: Vec<u8>) -> Self {
        Hypercall {
            control,
            rdx: 0,
            r8: 0,
            rax: 0,
            xmm: [0; 12],
            input: Some(input),
        }
    }

    /// A fast call (the fast bit is added to `control`) with RDX, R8 and XMM0..5.
    pub fn fast(control: u64, rdx: u64, r8: u64, xmm: [u64; 12]) -> Self {
        Hypercall {
            control: control | control::FAST,
            rdx,
            r8,
            rax: 0,
            xmm,
            input: None,
        }
    }

    /// Registers exactly as given (no input block).
    pub fn raw(control: u64, rdx: u64, r8: u64) -> Self {
        Hypercall {
            control,
            rdx,
            r8,
            rax: 0,
            xmm: [0; 12],
            input: None,
        }
    }

    /// The same call with RAX = `rax` before it.
    pub fn with_rax(mut self, rax: u64) -> Self {
        self.rax = rax;
        self
    }
}

/// One step of a guest's hypercall program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Issue a hypercall; RAX and RCX after it are recorded.
    Hcall(Hypercall),
    /// RDMSR; the value is recorded (as the step's RAX).
    Rdmsr(u32),
    /// WRMSR.
    Wrmsr(u32, u64),
    /// Wait (interrupts enabled) until this vCPU handled `count` interrupts on `vector`.
    WaitIrqs {
        /// Vector.
        vector: u8,
        /// How many, counted since the vCPU started.
        count: u32,
    },
    /// `SYNC(STAGE_HV_GATE, token)`, then wait until the host sets the vCPU's GO to `token`
    /// ([`crate::vm::TestVm::set_pcpu`]`(i, pcpu::GO, token)`): lets the test order the
    /// steps of several vCPUs.
    Gate(u64),
    /// VSM: a VtlCall with the registers of the round-trip block at this GPA
    /// ([`crate::guest::vsm::block`]; [`crate::vp::VsmVm::write_round`] fills it).
    VtlCall {
        /// GPA of the block.
        block: u64,
    },
    /// VSM: HvCallEnableVpVtl of this VP, the initial context built by the guest from its own
    /// state ([`crate::guest::hvprog::ENABLE_VP_VTL`]); [`crate::vp::VsmVm::enable_vp_vtl`]
    /// fills in the new VTL's values.
    EnableVpVtl(EnableVpVtl),
    /// Benchmark: `count` VtlCalls in a row.
    VtlCallLoop(u64),
    /// Spin with interrupts disabled until the u32 at `addr` reaches `value` or `cycles` TSC
    /// cycles passed ([`crate::guest::hvprog::SPIN_UNTIL`]); with `windows`, briefly enable
    /// interrupts every 256 iterations. The outcome's RCX is 1 if reached, 0 if timed out (2
    /// while spinning), its RAX the iterations.
    SpinUntil {
        /// GPA of the u32 to watch.
        addr: u64,
        /// The value to reach.
        value: u32,
        /// TSC budget.
        cycles: u64,
        /// Open interrupt windows for this VTL now and then.
        windows: bool,
    },
    /// `add qword ptr [addr], value` ([`crate::guest::hvprog::ADD_MEM`]): a memory write a
    /// VTL protection can stop; the outcome's RAX is the qword read back after it.
    AddMem {
        /// GPA (identity mapped) of the qword.
        addr: u64,
        /// What is added.
        value: u64,
    },
    /// `mov rax, qword ptr [addr]` ([`crate::guest::hvprog::LOAD_MEM`]): a memory read a VTL
    /// protection can stop; the outcome's RAX is the value read.
    LoadMem {
        /// GPA (identity mapped) of the qword.
        addr: u64,
    },
    /// Benchmark: `count` times the same hypercall, each must return HV_STATUS_SUCCESS.
    HcallLoop {
        /// Control word (RCX).
        control: u64,
        /// RDX.
        rdx: u64,
        /// R8.
        r8: u64,
        /// How many.
        count: u64,
    },
}

/// What [`Step::EnableVpVtl`] hands the guest: where the input block goes and the new VTL's
/// own values; the rest of the initial context is the calling VTL's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnableVpVtl {
    /// GPA of the page the guest builds the input block in.
    pub input: u64,
    /// TargetVtl.
    pub vtl: u8,
    /// RIP of the new VTL.
    pub rip: u64,
    /// RSP of the new VTL.
    pub rsp: u64,
    /// GS base of the new VTL.
    pub gs_base: u64,
    /// TR base of the new VTL.
    pub tr_base: u64,
    /// CR3 of the new VTL; `None`: the caller's.
    pub cr3: Option<u64>,
}

/// A guest's hypercall program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Program {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Program {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a step.
    pub fn step(mut self, s: Step) -> Self {
        self.steps.push(s);
        self
    }

    /// Append a hypercall.
    pub fn hcall(self, h: Hypercall) -> Self {
        self.step(Step::Hcall(h))
    }
}

/// What the guest recorded for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the guest finished the step.
    pub done: bool,
    /// RAX after the hypercall (the status), or the RDMSR value.
    pub rax: u64,
    /// RCX after the hypercall.
    pub rcx: u64,
}

/// A program written into guest memory for one vCPU.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// GPA of each step's entry.
    entries: Vec<u64>,
    /// RDX each hypercall step was issued with (the input GPA for slow calls).
    rdx: Vec<u64>,
}

/// Where vCPU `index`'s program goes: 16 KiB per vCPU in [`layout::DATA`].
pub fn program_gpa(index: usize) -> u64 {
    layout::DATA + 0x4_0000 + index as u64 * 0x4000
}

/// Where vCPU `index`'s slow-call input pages go: 16 pages per vCPU.
pub fn input_gpa(index: usize, n: usize) -> u64 {
    layout::DATA + 0x10_0000 + index as u64 * 0x1_0000 + n as u64 * layout::PAGE
}

/// The default hypercall page (`HV_X64_MSR_HYPERCALL` GPA) the guests enable.
pub const HYPERCALL_PAGE: u64 = layout::DATA;

/// A free page per vCPU for tests (e.g. SynIC message pages, other hypercall pages).
pub fn scratch_page(index: usize) -> u64 {
    layout::DATA + 0x1_0000 + index as u64 * layout::PAGE
}

/// Write `prog` for vCPU `index` into `mem`; returns where the outcomes will be.
pub(crate) fn load(mem: &GuestMem, index: usize, prog: &Program) -> Result<Loaded> {
    let base = program_gpa(index);
    let max = 0x4000 / hvprog::ENTRY_SIZE - 1;
    if prog.steps.len() as u64 > max {
        bail!(
            "a hypercall program has at most {max} steps, this one {}",
            prog.steps.len()
        );
    }
    let mut entries = Vec::new();
    let mut rdxs = Vec::new();
    let mut inputs = 0usize;
    for (i, s) in prog.steps.iter().enumerate() {
        let e = base + i as u64 * hvprog::ENTRY_SIZE;
        mem.write(e, &[0u8; hvprog::ENTRY_SIZE as usize])?;
        let w = |off: u64, v: u64| mem.write_u64(e + off, v);
        match s {
            Step::Hcall(h) => {
                let mut rdx = h.rdx;
                if let Some(input) = &h.input {
                    if inputs >= 16 {
                        bail!("a hypercall program has at most 16 slow calls with input");
                    }
                    if input.len() as u64 > layout::PAGE {
                        bail!("a hypercall input block is at most a page");
                    }
                    let gpa = input_gpa(index, inputs);
                    inputs += 1;
                    mem.write(gpa, &[0u8; layout::PAGE as usize])?;
                    mem.write(gpa, input)?;
                    rdx = gpa;
                }
                rdxs.push(rdx);
                w(hvprog::KIND, hvprog::HCALL)?;
                w(hvprog::CONTROL, h.control)?;
                w(hvprog::RDX, rdx)?;
                w(hvprog::R8, h.r8)?;
                w(hvprog::RAX_IN, h.rax)?;
                for (k, q) in h.xmm.iter().enumerate() {
                    w(hvprog::XMM + 8 * k as u64, *q)?;
                }
            }
            Step::Rdmsr(m) => {
                rdxs.push(0);
                w(hvprog::KIND, hvprog::RDMSR)?;
                w(hvprog::A0, (*m).into())?;
            }
            Step::Wrmsr(m, v) => {
                rdxs.push(0);
                w(hvprog::KIND, hvprog::WRMSR)?;
                w(hvprog::A0, (*m).into())?;
                w(hvprog::A1, *v)?;
            }
            Step::WaitIrqs { vector, count } => {
                rdxs.push(0);
                w(hvprog::KIND, hvprog::WAIT_IRQS)?;
                w(hvprog::A0, (*vector).into())?;
                w(hvprog::A1, (*count).into())?;
            }
            Step::Gate(token) => {
                rdxs.push(0);
                w(hvprog::KIND, hvprog::GATE)?;
                w(hvprog::A0, *token)?;
            }
            Step::VtlCall { block } => {
                rdxs.push(0);
                w(hvprog::KIND, hvprog::VTL_CALL)?;
                w(hvprog::A0, *block)?;
            }
            Step::EnableVpVtl(e) => {
                rdxs.push(e.input);
                w(hvprog::KIND, hvprog::ENABLE_VP_VTL)?;
                w(hvprog::A0, e.input)?;
                w(hvprog::A1, e.vtl.into())?;
                w(hvprog::VP_CTX_RIP, e.rip)?;
                w(hvprog::VP_CTX_RSP, e.rsp)?;
                w(hvprog::VP_CTX_GS_BASE, e.gs_base)?;
                w(hvprog::VP_CTX_CR3, e.cr3.unwrap_or(0))?;
                w(hvprog::VP_CTX_TR_BASE, e.tr_base)?;
            }
            Step::VtlCallLoop(count) => {
                rdxs.push(0);
                w(hvprog::KIND, hvprog::VTL_CALL_LOOP)?;
                w(hvprog::LOOP_COUNT, *count)?;
            }
            Step::SpinUntil {
                addr,
                value,
                cycles,
                windows,
            } => {
                rdxs.push(0);
                w(hvprog::KIND, hvprog::SPIN_UNTIL)?;
                w(hvprog::A0, *addr)?;
                w(hvprog::A1, (*value).into())?;
                w(hvprog::A2, *cycles)?;
                w(hvprog::RAX_IN, u64::from(*windows))?;
            }
            Step::AddMem { addr, value } => {
                rdxs.push(0);
                w(hvprog::KIND, hvprog::ADD_MEM)?;
                w(hvprog::A0, *addr)?;
                w(hvprog::A1, *value)?;
            }
            Step::LoadMem { addr } => {
                rdxs.push(0);
                w(hvprog::KIND, hvprog::LOAD_MEM)?;
                w(hvprog::A0, *addr)?;
            }
            Step::HcallLoop {
                control,
                rdx,
                r8,
                count,
            } => {
                rdxs.push(*rdx);
                w(hvprog::KIND, hvprog::HCALL_LOOP)?;
                w(hvprog::CONTROL, *control)?;
                w(hvprog::RDX, *rdx)?;
                w(hvprog::R8, *r8)?;
                w(hvprog::LOOP_COUNT, *count)?;
            }
        }
        entries.push(e);
    }
    let end = base + prog.steps.len() as u64 * hvprog::ENTRY_SIZE;
    mem.write_u64(end + hvprog::KIND, hvprog::END)?;
    Ok(Loaded { entries, rdx: rdxs })
}

impl Loaded {
    /// GPA of the program (what goes in the vCPU's `pcpu::PROGRAM`).
    pub fn gpa(&self) -> Option<u64> {
        self.entries.first().copied()
    }

    /// What the guest recorded for step `step`.
    pub fn outcome(&self, mem: &GuestMem, step: usize) -> Result<Outcome> {
        let e = *self
            .entries
            .get(step)
            .ok_or_else(|| anyhow!("the program has no step {step}"))?;
        Ok(Outcome {
            done: mem.read_u64(e + hvprog::DONE)? != 0,
            rax: mem.read_u64(e + hvprog::RESULT)?,
            rcx: mem.read_u64(e + hvprog::RCX_OUT)?,
        })
    }

    /// RDX of step `step` as issued (a slow call's input GPA).
    pub fn rdx(&self, step: usize) -> Option<u64> {
        self.rdx.get(step).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp_sets_encode_banks_in_mask_order() {
        assert_eq!(VpSet::All.encode(), (GENERIC_SET_ALL, 0, vec![]));
        assert_eq!(
            VpSet::Sparse(vec![0, 1]).encode(),
            (GENERIC_SET_SPARSE_4K, 1, vec![3])
        );
        assert_eq!(
            VpSet::Sparse(vec![1, 130]).encode(),
            (GENERIC_SET_SPARSE_4K, 0b101, vec![2, 4])
        );
    }

    #[test]
    fn control_words_and_inputs() {
        assert_eq!(
            control::word(call::SEND_IPI_EX, true, 1, 0),
            0x2_0015 | 1 << 16
        );
        assert_eq!(
            control::word(call::GET_VP_REGISTERS, false, 0, 1),
            0x1_0000_0050
        );
        assert_eq!(input_vtl(1, true), 0x11);
        let b = send_ipi_input(0x40, 0x11, 0x2);
        assert_eq!(b.len(), 16);
        assert_eq!(b[4], 0x11);
        let (ex, var) = send_ipi_ex_input(0x40, 0, &VpSet::Sparse(vec![1]));
        assert_eq!((ex.len(), var), (32, 1));
    }

    #[test]
    fn sint_routes_name_their_group_through_the_uapi() {
        let e = sint_route(20, 3, 2, Some(1));
        assert_eq!((e.gsi, e.type_), (20, KVM_IRQ_ROUTING_HV_SINT));
        assert_eq!(vtlkit_uapi::sint_route_group(&e), Some(1));
        // SAFETY: a SINT entry's live arm is hv_sint (plain integers).
        let s = unsafe { e.u.hv_sint };
        assert_eq!((s.vcpu, s.sint), (3, 2));
        let e = sint_route(21, 0, 2, None);
        assert_eq!((e.flags, vtlkit_uapi::sint_route_group(&e)), (0, None));
    }

    #[test]
    fn hcall_exits_read_back_as_stored() {
        let mut run = kvm_run::default();
        let stored = vtl::HcallExit {
            control: vtl::Control(0x1_0011),
            params: [0x1000, 0x2000],
            xmm: Some([7; 12]),
        };
        stored.store(&mut run);
        let HypervExit::Hcall(h) = read_exit(&run) else {
            panic!("not an HCALL exit");
        };
        assert_eq!(
            (h.input, h.params, h.xmm),
            (0x1_0011, [0x1000, 0x2000], [7; 12])
        );
        assert_eq!(h.flags, raw::KVM_HYPERV_HCALL_XMM_INPUT);
        assert_eq!((h.code(), h.result), (0x11, 0));
        assert!(vtlkit_uapi::vtl::set_hcall_result(&mut run, 6));
    }
}
