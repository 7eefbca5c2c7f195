// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Hyper-V TLFS numbers and layouts the state machine needs (REFERENCE.md §3; register names
//! as in OpenVMM's `hvdef`, `struct hv_init_vp_context` and `struct hv_vp_assist_page` as in
//! Linux's `arch/x86/include/asm/hyperv-tlfs.h`).

use std::fmt;

use kvm_bindings::{kvm_dtable, kvm_segment};

/// Hypercall call codes (bits 15:0 of the control word) this module answers.
pub mod code {
    /// `HvCallSendSyntheticClusterIpi`.
    pub const SEND_SYNTHETIC_CLUSTER_IPI: u16 = 0x000B;
    /// `HvCallModifyVtlProtectionMask` (rep).
    pub const MODIFY_VTL_PROTECTION_MASK: u16 = 0x000C;
    /// `HvCallEnablePartitionVtl`.
    pub const ENABLE_PARTITION_VTL: u16 = 0x000D;
    /// `HvCallEnableVpVtl`.
    pub const ENABLE_VP_VTL: u16 = 0x000F;
    /// `HvCallVtlCall`.
    pub const VTL_CALL: u16 = 0x0011;
    /// `HvCallVtlReturn`.
    pub const VTL_RETURN: u16 = 0x0012;
    /// `HvCallSendSyntheticClusterIpiEx` (variable header: the sparse VP set's banks).
    pub const SEND_SYNTHETIC_CLUSTER_IPI_EX: u16 = 0x0015;
    /// `HvCallGetVpRegisters` (rep).
    pub const GET_VP_REGISTERS: u16 = 0x0050;
    /// `HvCallSetVpRegisters` (rep).
    pub const SET_VP_REGISTERS: u16 = 0x0051;
}

/// A Hyper-V hypercall status (`HV_STATUS`, bits 15:0 of the result in RAX).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HvStatus(pub u16);

impl HvStatus {
    /// `HV_STATUS_SUCCESS`.
    pub const SUCCESS: Self = Self(0x0000);
    /// `HV_STATUS_INVALID_HYPERCALL_CODE`.
    pub const INVALID_HYPERCALL_CODE: Self = Self(0x0002);
    /// `HV_STATUS_INVALID_HYPERCALL_INPUT`: malformed control word or unreadable input.
    pub const INVALID_HYPERCALL_INPUT: Self = Self(0x0003);
    /// `HV_STATUS_INVALID_ALIGNMENT`: input/output GPA not 8-byte aligned or crossing a page.
    pub const INVALID_ALIGNMENT: Self = Self(0x0004);
    /// `HV_STATUS_INVALID_PARAMETER`.
    pub const INVALID_PARAMETER: Self = Self(0x0005);
    /// `HV_STATUS_ACCESS_DENIED`.
    pub const ACCESS_DENIED: Self = Self(0x0006);
    /// `HV_STATUS_INSUFFICIENT_MEMORY`.
    pub const INSUFFICIENT_MEMORY: Self = Self(0x000B);
    /// `HV_STATUS_INVALID_PARTITION_ID`.
    pub const INVALID_PARTITION_ID: Self = Self(0x000D);
    /// `HV_STATUS_INVALID_VP_INDEX`.
    pub const INVALID_VP_INDEX: Self = Self(0x000E);
    /// `HV_STATUS_INVALID_VP_STATE`.
    pub const INVALID_VP_STATE: Self = Self(0x0015);
    /// `HV_STATUS_NO_RESOURCES`.
    pub const NO_RESOURCES: Self = Self(0x001D);
    /// `HV_STATUS_INVALID_REGISTER_VALUE`.
    pub const INVALID_REGISTER_VALUE: Self = Self(0x0050);
    /// `HV_STATUS_INVALID_VTL_STATE`.
    pub const INVALID_VTL_STATE: Self = Self(0x0051);
    /// `HV_STATUS_VTL_ALREADY_ENABLED` (134).
    pub const VTL_ALREADY_ENABLED: Self = Self(0x0086);

    /// The TLFS name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::SUCCESS => "HV_STATUS_SUCCESS",
            Self::INVALID_HYPERCALL_CODE => "HV_STATUS_INVALID_HYPERCALL_CODE",
            Self::INVALID_HYPERCALL_INPUT => "HV_STATUS_INVALID_HYPERCALL_INPUT",
            Self::INVALID_ALIGNMENT => "HV_STATUS_INVALID_ALIGNMENT",
            Self::INVALID_PARAMETER => "HV_STATUS_INVALID_PARAMETER",
            Self::ACCESS_DENIED => "HV_STATUS_ACCESS_DENIED",
            Self::INSUFFICIENT_MEMORY => "HV_STATUS_INSUFFICIENT_MEMORY",
            Self::INVALID_PARTITION_ID => "HV_STATUS_INVALID_PARTITION_ID",
            Self::INVALID_VP_INDEX => "HV_STATUS_INVALID_VP_INDEX",
            Self::INVALID_VP_STATE => "HV_STATUS_INVALID_VP_STATE",
            Self::NO_RESOURCES => "HV_STATUS_NO_RESOURCES",
            Self::INVALID_REGISTER_VALUE => "HV_STATUS_INVALID_REGISTER_VALUE",
            Self::INVALID_VTL_STATE => "HV_STATUS_INVALID_VTL_STATE",
            Self::VTL_ALREADY_ENABLED => "HV_STATUS_VTL_ALREADY_ENABLED",
            _ => "HV_STATUS_(unknown)",
        }
    }

    /// The value for RAX / `hcall.result`: this status with `reps_completed` in bits 43:32.
    pub fn result(self, reps_completed: u16) -> u64 {
        u64::from(self.0) | (u64::from(reps_completed & 0xfff) << 32)
    }
}

impl fmt::Display for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.0)
    }
}

/// The hypercall control word (RCX): code 15:0, fast 16, variable header size 26:17 (qwords),
/// rep count 43:32, rep start 59:48; bits 31:27, 47:44 and 63:60 are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control(pub u64);

impl Control {
    /// Reserved bits 31:27, 47:44 and 63:60.
    pub const RESERVED_MASK: u64 = (0x1f << 27) | (0xf << 44) | (0xf << 60);

    /// Call code.
    pub fn code(self) -> u16 {
        self.0 as u16
    }
    /// Fast (register) calling convention.
    pub fn fast(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Variable header size in qwords.
    pub fn var_header_qwords(self) -> usize {
        ((self.0 >> 17) & 0x3ff) as usize
    }
    /// Rep count.
    pub fn rep_count(self) -> u16 {
        ((self.0 >> 32) & 0xfff) as u16
    }
    /// Rep start index.
    pub fn rep_start(self) -> u16 {
        ((self.0 >> 48) & 0xfff) as u16
    }
    /// Whether any reserved bit is set.
    pub fn has_reserved_bits(self) -> bool {
        self.0 & Self::RESERVED_MASK != 0
    }
    /// A control word with the given fields (for tests and for VMMs that build exits).
    pub fn build(
        code: u16,
        fast: bool,
        var_header_qwords: u16,
        rep_count: u16,
        rep_start: u16,
    ) -> Self {
        Self(
            u64::from(code)
                | (u64::from(fast) << 16)
                | (u64::from(var_header_qwords & 0x3ff) << 17)
                | (u64::from(rep_count & 0xfff) << 32)
                | (u64::from(rep_start & 0xfff) << 48),
        )
    }
}

/// `HV_INPUT_VTL`: TargetVtl 3:0, UseTargetVtl 4, bits 7:5 reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputVtl(pub u8);

impl InputVtl {
    /// An `HV_INPUT_VTL` naming `vtl` explicitly.
    pub fn target(vtl: u8) -> Self {
        Self((vtl & 0xf) | 0x10)
    }
    /// Whether reserved bits 7:5 are set.
    pub fn has_reserved_bits(self) -> bool {
        self.0 & 0xe0 != 0
    }
    /// The VTL this names: TargetVtl if UseTargetVtl is set, else `current`.
    pub fn resolve(self, current: u8) -> u8 {
        if self.0 & 0x10 != 0 {
            self.0 & 0xf
        } else {
            current
        }
    }
}

/// `HV_PARTITION_ID_SELF`.
pub const PARTITION_ID_SELF: u64 = u64::MAX;
/// `HV_VP_INDEX_SELF`.
pub const VP_INDEX_SELF: u32 = 0xFFFF_FFFE;
/// `HV_GENERIC_SET_SPARSE_4K`.
pub const GENERIC_SET_SPARSE_4K: u64 = 0;
/// `HV_GENERIC_SET_ALL`.
pub const GENERIC_SET_ALL: u64 = 1;
/// Lowest vector a synthetic cluster IPI may carry (`HV_IPI_LOW_VECTOR`).
pub const IPI_LOW_VECTOR: u32 = 0x10;
/// Highest vector a synthetic cluster IPI may carry (`HV_IPI_HIGH_VECTOR`).
pub const IPI_HIGH_VECTOR: u32 = 0xff;
/// Size of the fast hypercall input block: RDX, R8, XMM0..XMM5.
pub const FAST_INPUT_BYTES: usize = 16 + 6 * 16;
/// Hypercall input and output pages are 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

/// MSR numbers.
pub mod msr {
    /// `HV_X64_MSR_GUEST_OS_ID`.
    pub const GUEST_OS_ID: u32 = 0x4000_0000;
    /// `HV_X64_MSR_HYPERCALL`.
    pub const HYPERCALL: u32 = 0x4000_0001;
    /// `HV_X64_MSR_VP_INDEX`.
    pub const VP_INDEX: u32 = 0x4000_0002;
    /// `HV_X64_MSR_VP_ASSIST_PAGE`: enable bit 0, page GPA in bits 63:12.
    pub const VP_ASSIST_PAGE: u32 = 0x4000_0073;
    /// `IA32_PAT`.
    pub const PAT: u32 = 0x277;
    /// `IA32_SYSENTER_CS`.
    pub const SYSENTER_CS: u32 = 0x174;
    /// `IA32_SYSENTER_ESP`.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// `IA32_SYSENTER_EIP`.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// `IA32_STAR`.
    pub const STAR: u32 = 0xC000_0081;
    /// `IA32_LSTAR`.
    pub const LSTAR: u32 = 0xC000_0082;
    /// `IA32_CSTAR`.
    pub const CSTAR: u32 = 0xC000_0083;
    /// `IA32_FMASK`.
    pub const SFMASK: u32 = 0xC000_0084;
    /// `IA32_KERNEL_GS_BASE`.
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
    /// `IA32_TSC_AUX`.
    pub const TSC_AUX: u32 = 0xC000_0103;
}

/// `struct hv_vp_assist_page` offsets of the VTL control area (`HV_VP_VTL_CONTROL`).
pub mod assist {
    /// `vtl_entry_reason` (u32).
    pub const ENTRY_REASON: u64 = 8;
    /// `vtl_ret_x64rax` (u64).
    pub const RET_RAX: u64 = 16;
    /// `vtl_ret_x64rcx` (u64).
    pub const RET_RCX: u64 = 24;
    /// Entry reason: the VTL was entered by a VTL call from a lower VTL.
    pub const ENTRY_REASON_VTL_CALL: u32 = 1;
    /// Entry reason: the VTL was entered because of an interrupt for it.
    pub const ENTRY_REASON_INTERRUPT: u32 = 2;
}

/// Register names (`HvX64RegisterName` in OpenVMM's hvdef) this module reads and writes.
pub mod reg {
    /// RAX; RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 follow in this order.
    pub const RAX: u32 = 0x0002_0000;
    /// RSP (private per VTL).
    pub const RSP: u32 = 0x0002_0004;
    /// R15, the last general-purpose register.
    pub const R15: u32 = 0x0002_000F;
    /// RIP.
    pub const RIP: u32 = 0x0002_0010;
    /// RFLAGS.
    pub const RFLAGS: u32 = 0x0002_0011;
    /// CR0.
    pub const CR0: u32 = 0x0004_0000;
    /// CR2 (shared).
    pub const CR2: u32 = 0x0004_0001;
    /// CR3.
    pub const CR3: u32 = 0x0004_0002;
    /// CR4.
    pub const CR4: u32 = 0x0004_0003;
    /// CR8.
    pub const CR8: u32 = 0x0004_0004;
    /// XFEM (XCR0, shared).
    pub const XFEM: u32 = 0x0004_0005;
    /// DR0 (shared, as DR1..DR3 that follow).
    pub const DR0: u32 = 0x0005_0000;
    /// DR3.
    pub const DR3: u32 = 0x0005_0003;
    /// DR6 (private unless VsmCapabilities.Dr6Shared).
    pub const DR6: u32 = 0x0005_0004;
    /// DR7.
    pub const DR7: u32 = 0x0005_0005;
    /// ES; CS, SS, DS, FS, GS, LDTR, TR follow in this order.
    pub const ES: u32 = 0x0006_0000;
    /// TR, the last segment register.
    pub const TR: u32 = 0x0006_0007;
    /// IDTR.
    pub const IDTR: u32 = 0x0007_0000;
    /// GDTR.
    pub const GDTR: u32 = 0x0007_0001;
    /// EFER.
    pub const EFER: u32 = 0x0008_0001;
    /// KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0x0008_0002;
    /// APIC_BASE (read-only here).
    pub const APIC_BASE: u32 = 0x0008_0003;
    /// PAT.
    pub const PAT: u32 = 0x0008_0004;
    /// SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x0008_0005;
    /// SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x0008_0006;
    /// SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x0008_0007;
    /// STAR.
    pub const STAR: u32 = 0x0008_0008;
    /// LSTAR.
    pub const LSTAR: u32 = 0x0008_0009;
    /// CSTAR.
    pub const CSTAR: u32 = 0x0008_000A;
    /// SFMASK.
    pub const SFMASK: u32 = 0x0008_000B;
    /// TSC_AUX.
    pub const TSC_AUX: u32 = 0x0008_007B;
    /// HV_X64_MSR_HYPERCALL (private per VTL).
    pub const HYPERCALL: u32 = 0x0009_0001;
    /// HV_X64_MSR_GUEST_OS_ID (private per VTL).
    pub const GUEST_OS_ID: u32 = 0x0009_0002;
    /// HV_X64_MSR_VP_INDEX (read-only).
    pub const VP_INDEX: u32 = 0x0009_0003;
    /// HV_X64_MSR_VP_ASSIST_PAGE (private per VTL).
    pub const VP_ASSIST_PAGE: u32 = 0x0009_0013;
    /// HvRegisterVsmCodePageOffsets (read-only).
    pub const VSM_CODE_PAGE_OFFSETS: u32 = 0x000D_0002;
    /// HvRegisterVsmVpStatus (read-only): ActiveVtl 3:0, EnabledVtlSet 31:16.
    pub const VSM_VP_STATUS: u32 = 0x000D_0003;
    /// HvRegisterVsmPartitionStatus (read-only): EnabledVtlSet 15:0, MaximumVtl 19:16,
    /// MbecEnabledVtlSet 35:20.
    pub const VSM_PARTITION_STATUS: u32 = 0x000D_0004;
    /// HvRegisterVsmCapabilities (read-only).
    pub const VSM_CAPABILITIES: u32 = 0x000D_0006;
    /// HvRegisterVsmPartitionConfig (per VTL).
    pub const VSM_PARTITION_CONFIG: u32 = 0x000D_0007;
    /// HvRegisterVsmVpSecureConfigVtl0; VTL n is this plus n.
    pub const VSM_VP_SECURE_CONFIG_VTL0: u32 = 0x000D_0010;
}

/// Bits of HvRegisterVsmPartitionConfig this module accepts: EnableVtlProtection (0),
/// DefaultVtlProtectionMask (4:1), ZeroMemoryOnReset (5), DenyLowerVtlStartup (6). The intercept
/// bits above are not implemented and are refused with `HV_STATUS_INVALID_REGISTER_VALUE`.
pub const VSM_PARTITION_CONFIG_SUPPORTED: u64 = 0x7f;
/// HvRegisterVsmPartitionConfig.EnableVtlProtection.
pub const VSM_PARTITION_CONFIG_ENABLE_VTL_PROTECTION: u64 = 1;
/// HvRegisterVsmVpSecureConfigVtlN: MbecEnabled (0), TlbLocked (1).
pub const VSM_VP_SECURE_CONFIG_SUPPORTED: u64 = 0x3;
/// HvRegisterVsmCapabilities.Dr6Shared (bit 0).
pub const VSM_CAPABILITIES_DR6_SHARED: u64 = 1;
/// HvRegisterVsmCapabilities.MbecVtlMask: bits 16:1.
pub fn capabilities_mbec_vtl_mask(caps: u64) -> u16 {
    ((caps >> 1) & 0xffff) as u16
}

/// `hv_x64_segment_register`: base u64, limit u32, selector u16, attributes u16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentRegister {
    /// Base.
    pub base: u64,
    /// Limit (byte granular, as in KVM's `kvm_segment`).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Attributes: type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15.
    pub attributes: u16,
}

impl SegmentRegister {
    /// Parse 16 little-endian bytes.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        Self {
            base: u64::from_le_bytes(arr(&b[0..8])),
            limit: u32::from_le_bytes(arr(&b[8..12])),
            selector: u16::from_le_bytes(arr(&b[12..14])),
            attributes: u16::from_le_bytes(arr(&b[14..16])),
        }
    }
    /// As a 128-bit register value.
    pub fn to_u128(self) -> u128 {
        u128::from(self.base)
            | (u128::from(self.limit) << 64)
            | (u128::from(self.selector) << 96)
            | (u128::from(self.attributes) << 112)
    }
    /// From a 128-bit register value.
    pub fn from_u128(v: u128) -> Self {
        Self::from_bytes(&v.to_le_bytes())
    }
    /// KVM's view. A segment that is not present is marked unusable.
    pub fn to_kvm(self) -> kvm_segment {
        let a = self.attributes;
        let present = (a >> 7) & 1;
        kvm_segment {
            base: self.base,
            limit: self.limit,
            selector: self.selector,
            type_: (a & 0xf) as u8,
            s: ((a >> 4) & 1) as u8,
            dpl: ((a >> 5) & 3) as u8,
            present: present as u8,
            avl: ((a >> 12) & 1) as u8,
            l: ((a >> 13) & 1) as u8,
            db: ((a >> 14) & 1) as u8,
            g: ((a >> 15) & 1) as u8,
            unusable: u8::from(present == 0),
            padding: 0,
        }
    }
    /// From KVM's view; an unusable segment reads as not present.
    pub fn from_kvm(s: &kvm_segment) -> Self {
        let present = u16::from(s.present & 1 != 0 && s.unusable == 0);
        Self {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            attributes: u16::from(s.type_ & 0xf)
                | (u16::from(s.s & 1) << 4)
                | (u16::from(s.dpl & 3) << 5)
                | (present << 7)
                | (u16::from(s.avl & 1) << 12)
                | (u16::from(s.l & 1) << 13)
                | (u16::from(s.db & 1) << 14)
                | (u16::from(s.g & 1) << 15),
        }
    }
}

/// `hv_x64_table_register`: `pad[3]` u16, limit u16, base u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableRegister {
    /// Limit.
    pub limit: u16,
    /// Base.
    pub base: u64,
}

impl TableRegister {
    /// Parse 16 little-endian bytes (the 6 padding bytes are ignored).
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        Self {
            limit: u16::from_le_bytes(arr(&b[6..8])),
            base: u64::from_le_bytes(arr(&b[8..16])),
        }
    }
    /// As a 128-bit register value.
    pub fn to_u128(self) -> u128 {
        (u128::from(self.limit) << 48) | (u128::from(self.base) << 64)
    }
    /// From a 128-bit register value.
    pub fn from_u128(v: u128) -> Self {
        Self::from_bytes(&v.to_le_bytes())
    }
    /// KVM's view.
    pub fn to_kvm(self) -> kvm_dtable {
        kvm_dtable {
            base: self.base,
            limit: self.limit,
            padding: [0; 3],
        }
    }
    /// From KVM's view.
    pub fn from_kvm(t: &kvm_dtable) -> Self {
        Self {
            limit: t.limit,
            base: t.base,
        }
    }
}

/// `HV_INITIAL_VP_CONTEXT` (x64, 224 bytes; Linux `struct hv_init_vp_context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InitialVpContext {
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CS, DS, ES, FS, GS, SS, TR, LDTR in this (TLFS) order.
    pub segments: [SegmentRegister; 8],
    /// IDTR.
    pub idtr: TableRegister,
    /// GDTR.
    pub gdtr: TableRegister,
    /// EFER.
    pub efer: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_PAT.
    pub msr_cr_pat: u64,
}

impl InitialVpContext {
    /// Size in bytes.
    pub const SIZE: usize = 224;

    /// Parse the little-endian structure.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let q = |off: usize| u64::from_le_bytes(arr(&b[off..off + 8]));
        let x = |off: usize| -> [u8; 16] { arr(&b[off..off + 16]) };
        let mut segments = [SegmentRegister::default(); 8];
        for (i, s) in segments.iter_mut().enumerate() {
            *s = SegmentRegister::from_bytes(&x(24 + 16 * i));
        }
        Self {
            rip: q(0),
            rsp: q(8),
            rflags: q(16),
            segments,
            idtr: TableRegister::from_bytes(&x(152)),
            gdtr: TableRegister::from_bytes(&x(168)),
            efer: q(184),
            cr0: q(192),
            cr3: q(200),
            cr4: q(208),
            msr_cr_pat: q(216),
        }
    }

    /// Serialize (for tests and for VMMs that start a VTL themselves).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(0, &self.rip.to_le_bytes());
        put(8, &self.rsp.to_le_bytes());
        put(16, &self.rflags.to_le_bytes());
        for (i, s) in self.segments.iter().enumerate() {
            put(24 + 16 * i, &s.to_u128().to_le_bytes());
        }
        put(152, &self.idtr.to_u128().to_le_bytes());
        put(168, &self.gdtr.to_u128().to_le_bytes());
        put(184, &self.efer.to_le_bytes());
        put(192, &self.cr0.to_le_bytes());
        put(200, &self.cr3.to_le_bytes());
        put(208, &self.cr4.to_le_bytes());
        put(216, &self.msr_cr_pat.to_le_bytes());
        b
    }
}

/// Copy a slice of known length into an array; the callers' ranges are constant and in bounds.
pub(crate) fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = s.len().min(N);
    a[..n].copy_from_slice(&s[..n]);
    a
}
