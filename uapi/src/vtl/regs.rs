// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! HvCallGetVpRegisters and HvCallSetVpRegisters: the VSM registers and a (lower or own) VTL's
//! CPU state.
//!
//! Input header: PartitionId u64 @0, VpIndex u32 @8, TargetVtl HV_INPUT_VTL @12, RsvdZ 3; then
//! the rep list at @16: register names (u32) for Get, `hv_register_assoc` (name u32, RsvdZ u32,
//! RsvdZ u64, value 16 bytes) for Set. Get's output: one 16-byte value per rep, in the output
//! page, or for a fast call in the XMM registers after those the input used.

use kvm_bindings::kvm_segment;

use super::backend::{Env, VtlVcpu};
use super::hv::{self, reg, HvStatus, SegmentRegister, TableRegister, FAST_INPUT_BYTES};
use super::input::{Input, Output};
use super::switch::{set_xcr0, xcr0};
use super::{vcpu_guest_op, vcpu_op, Call, Fail, HvResult, Partition, Vp, VtlError};

/// Where a CPU register lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// General-purpose register, in hvdef order (RAX RCX RDX RBX RSP RBP RSI RDI R8..R15).
    Gpr(u8),
    Rip,
    Rflags,
    Cr0,
    Cr2,
    Cr3,
    Cr4,
    Cr8,
    Xcr0,
    Dr(u8),
    Dr6,
    Dr7,
    /// Segment, in hvdef order (ES CS SS DS FS GS LDTR TR).
    Seg(u8),
    Idtr,
    Gdtr,
    Efer,
    ApicBase,
    /// An MSR; the flag says whether the guest may write it.
    Msr(u32, bool),
}

impl Loc {
    fn of(name: u32) -> Option<Self> {
        Some(match name {
            reg::RAX..=reg::R15 => Loc::Gpr((name - reg::RAX) as u8),
            reg::RIP => Loc::Rip,
            reg::RFLAGS => Loc::Rflags,
            reg::CR0 => Loc::Cr0,
            reg::CR2 => Loc::Cr2,
            reg::CR3 => Loc::Cr3,
            reg::CR4 => Loc::Cr4,
            reg::CR8 => Loc::Cr8,
            reg::XFEM => Loc::Xcr0,
            reg::DR0..=reg::DR3 => Loc::Dr((name - reg::DR0) as u8),
            reg::DR6 => Loc::Dr6,
            reg::DR7 => Loc::Dr7,
            reg::ES..=reg::TR => Loc::Seg((name - reg::ES) as u8),
            reg::IDTR => Loc::Idtr,
            reg::GDTR => Loc::Gdtr,
            reg::EFER => Loc::Efer,
            reg::APIC_BASE => Loc::ApicBase,
            reg::KERNEL_GS_BASE => Loc::Msr(hv::msr::KERNEL_GS_BASE, true),
            reg::PAT => Loc::Msr(hv::msr::PAT, true),
            reg::SYSENTER_CS => Loc::Msr(hv::msr::SYSENTER_CS, true),
            reg::SYSENTER_EIP => Loc::Msr(hv::msr::SYSENTER_EIP, true),
            reg::SYSENTER_ESP => Loc::Msr(hv::msr::SYSENTER_ESP, true),
            reg::STAR => Loc::Msr(hv::msr::STAR, true),
            reg::LSTAR => Loc::Msr(hv::msr::LSTAR, true),
            reg::CSTAR => Loc::Msr(hv::msr::CSTAR, true),
            reg::SFMASK => Loc::Msr(hv::msr::SFMASK, true),
            reg::TSC_AUX => Loc::Msr(hv::msr::TSC_AUX, true),
            reg::HYPERCALL => Loc::Msr(hv::msr::HYPERCALL, true),
            reg::GUEST_OS_ID => Loc::Msr(hv::msr::GUEST_OS_ID, true),
            reg::VP_ASSIST_PAGE => Loc::Msr(hv::msr::VP_ASSIST_PAGE, true),
            reg::VP_INDEX => Loc::Msr(hv::msr::VP_INDEX, false),
            _ => return None,
        })
    }

    /// Shared between VTLs (TLFS): lives in whichever sibling is active.
    fn shared(self) -> bool {
        match self {
            Loc::Gpr(i) => i != 4, // RSP is private
            Loc::Cr2 | Loc::Xcr0 | Loc::Dr(_) => true,
            _ => false,
        }
    }
}

fn gpr(r: &kvm_bindings::kvm_regs, i: u8) -> u64 {
    match i {
        0 => r.rax,
        1 => r.rcx,
        2 => r.rdx,
        3 => r.rbx,
        4 => r.rsp,
        5 => r.rbp,
        6 => r.rsi,
        7 => r.rdi,
        8 => r.r8,
        9 => r.r9,
        10 => r.r10,
        11 => r.r11,
        12 => r.r12,
        13 => r.r13,
        14 => r.r14,
        _ => r.r15,
    }
}

fn gpr_mut(r: &mut kvm_bindings::kvm_regs, i: u8) -> &mut u64 {
    match i {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut r.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    }
}

fn seg(s: &kvm_bindings::kvm_sregs, i: u8) -> &kvm_segment {
    match i {
        0 => &s.es,
        1 => &s.cs,
        2 => &s.ss,
        3 => &s.ds,
        4 => &s.fs,
        5 => &s.gs,
        6 => &s.ldt,
        _ => &s.tr,
    }
}

fn seg_mut(s: &mut kvm_bindings::kvm_sregs, i: u8) -> &mut kvm_segment {
    match i {
        0 => &mut s.es,
        1 => &mut s.cs,
        2 => &mut s.ss,
        3 => &mut s.ds,
        4 => &mut s.fs,
        5 => &mut s.gs,
        6 => &mut s.ldt,
        _ => &mut s.tr,
    }
}

/// Turn a status at rep `i` into the rep hypercall's answer.
fn at(i: u16) -> impl Fn(Fail) -> Fail {
    move |f| match f {
        Fail::Hv(s, _) => Fail::Hv(s, i),
        other => other,
    }
}

fn hv_at(i: u16) -> impl Fn(HvStatus) -> Fail {
    move |s| Fail::Hv(s, i)
}

impl<V: VtlVcpu> Partition<V> {
    /// The common header: (VP index, target VTL), checked.
    fn regs_header(&self, call: &Call<'_>, input: &Input<'_>) -> HvResult<(u32, u8)> {
        if input.u64(0)? != hv::PARTITION_ID_SELF {
            return Err(HvStatus::INVALID_PARTITION_ID.into());
        }
        let mut vp_index = input.u32(8)?;
        let ivtl = hv::InputVtl(input.u8(12)?);
        let mut rsvd = [0u8; 3];
        input.read(13, &mut rsvd)?;
        if ivtl.has_reserved_bits() || rsvd != [0; 3] {
            return Err(HvStatus::INVALID_PARAMETER.into());
        }
        let vtl = ivtl.resolve(call.vtl);
        if vtl > call.vtl {
            return Err(HvStatus::ACCESS_DENIED.into());
        }
        if vp_index == hv::VP_INDEX_SELF {
            vp_index = call.vp_index;
        }
        let Some(vp) = self.vps.get(&vp_index) else {
            return Err(HvStatus::INVALID_VP_INDEX.into());
        };
        if !vp.is_enabled(vtl) {
            return Err(HvStatus::INVALID_VTL_STATE.into());
        }
        Ok((vp_index, vtl))
    }

    pub(super) fn get_vp_registers(&mut self, call: &Call<'_>, env: &Env<'_, V>) -> HvResult<u16> {
        let c = call.exit.control;
        let input = Input::new(call.exit, env.memory)?;
        let (vp_index, vtl) = self.regs_header(call, &input)?;
        let (start, count) = (c.rep_start(), c.rep_count());
        // Fast output: XMM registers after the (16-byte rounded) input.
        let first_out_xmm = (4 * usize::from(count)).div_ceil(16);
        let output = if input.is_fast() {
            if 16 + 16 * (first_out_xmm + usize::from(count)) > FAST_INPUT_BYTES {
                return Err(HvStatus::INVALID_HYPERCALL_INPUT.into());
            }
            None
        } else {
            Some(Output::new(call.exit, env.memory, 16 * usize::from(count))?)
        };
        let mut fast_out = Vec::new();
        for i in start..count {
            let name = input.u32(16 + 4 * usize::from(i)).map_err(hv_at(i))?;
            let value = self
                .read_register(call, vp_index, vtl, name)
                .map_err(at(i))?;
            match &output {
                Some(out) => out
                    .write(16 * usize::from(i), &value.to_le_bytes())
                    .map_err(hv_at(i))?,
                None => fast_out.push((first_out_xmm + usize::from(i), value)),
            }
        }
        if !fast_out.is_empty() {
            self.write_xmm(call.vp_index, call.vtl, &fast_out)?;
        }
        Ok(count)
    }

    pub(super) fn set_vp_registers(
        &mut self,
        call: &Call<'_>,
        env: &mut Env<'_, V>,
    ) -> HvResult<u16> {
        let c = call.exit.control;
        let input = Input::new(call.exit, env.memory)?;
        let (vp_index, vtl) = self.regs_header(call, &input)?;
        for i in c.rep_start()..c.rep_count() {
            let off = 16 + 32 * usize::from(i);
            let name = input.u32(off).map_err(hv_at(i))?;
            let rsvd = (
                input.u32(off + 4).map_err(hv_at(i))?,
                input.u64(off + 8).map_err(hv_at(i))?,
            );
            if rsvd != (0, 0) {
                return Err(Fail::Hv(HvStatus::INVALID_PARAMETER, i));
            }
            let value = input.u128(off + 16).map_err(hv_at(i))?;
            self.write_register(call, env, vp_index, vtl, name, value)
                .map_err(at(i))?;
        }
        Ok(c.rep_count())
    }

    /// XMM `k` = value, for each pair, in the caller's XSAVE area (legacy region: XMM0 at
    /// byte 160).
    fn write_xmm(&self, vp_index: u32, vtl: u8, values: &[(usize, u128)]) -> Result<(), VtlError> {
        let vp = self.vp_ref(vp_index)?;
        let vcpu = vp.vcpu(vtl).ok_or(VtlError::BadVtl(vtl))?;
        let mut x = vcpu_op("KVM_GET_XSAVE", vp_index, vtl, vcpu.get_xsave())?;
        for &(k, v) in values {
            let b = v.to_le_bytes();
            for j in 0..4 {
                x.region[40 + 4 * k + j] = u32::from_le_bytes(hv::arr(&b[4 * j..4 * j + 4]));
            }
        }
        vcpu_op("KVM_SET_XSAVE", vp_index, vtl, vcpu.set_xsave(&x))
    }

    fn read_register(&self, call: &Call<'_>, vp_index: u32, vtl: u8, name: u32) -> HvResult<u128> {
        let vp = self.vp_ref(vp_index)?;
        if let Some(v) = self.read_vsm_register(vp, vtl, name)? {
            return Ok(u128::from(v));
        }
        let Some(loc) = Loc::of(name) else {
            return Err(HvStatus::INVALID_PARAMETER.into());
        };
        if vp_index != call.vp_index {
            return Err(HvStatus::INVALID_VP_STATE.into());
        }
        let src = if loc.shared() { vp.active } else { vtl };
        let vcpu = vp.vcpu(src).ok_or(VtlError::BadVtl(src))?;
        macro_rules! op {
            ($op:expr, $r:expr) => {
                vcpu_op($op, vp_index, src, $r)
            };
        }
        Ok(match loc {
            Loc::Gpr(i) => gpr(&op!("KVM_GET_REGS", vcpu.get_regs())?, i).into(),
            Loc::Rip => op!("KVM_GET_REGS", vcpu.get_regs())?.rip.into(),
            Loc::Rflags => op!("KVM_GET_REGS", vcpu.get_regs())?.rflags.into(),
            Loc::Dr(i) => op!("KVM_GET_DEBUGREGS", vcpu.get_debugregs())?.db[usize::from(i)].into(),
            Loc::Dr6 => op!("KVM_GET_DEBUGREGS", vcpu.get_debugregs())?.dr6.into(),
            Loc::Dr7 => op!("KVM_GET_DEBUGREGS", vcpu.get_debugregs())?.dr7.into(),
            Loc::Xcr0 => xcr0(&op!("KVM_GET_XCRS", vcpu.get_xcrs())?)
                .unwrap_or(1)
                .into(),
            Loc::Msr(index, _) => vcpu_guest_op(
                "KVM_GET_MSRS",
                vp_index,
                src,
                HvStatus::INVALID_PARAMETER,
                vcpu.get_msr(index),
            )?
            .into(),
            _ => {
                let s = op!("KVM_GET_SREGS", vcpu.get_sregs())?;
                match loc {
                    Loc::Cr0 => s.cr0.into(),
                    Loc::Cr2 => s.cr2.into(),
                    Loc::Cr3 => s.cr3.into(),
                    Loc::Cr4 => s.cr4.into(),
                    Loc::Cr8 => s.cr8.into(),
                    Loc::Efer => s.efer.into(),
                    Loc::ApicBase => s.apic_base.into(),
                    Loc::Seg(i) => SegmentRegister::from_kvm(seg(&s, i)).to_u128(),
                    Loc::Idtr => TableRegister::from_kvm(&s.idt).to_u128(),
                    _ => TableRegister::from_kvm(&s.gdt).to_u128(),
                }
            }
        })
    }

    /// The VSM registers; `None` if `name` is not one.
    fn read_vsm_register(&self, vp: &Vp<V>, vtl: u8, name: u32) -> HvResult<Option<u64>> {
        Ok(Some(match name {
            reg::VSM_CODE_PAGE_OFFSETS => self.config.code_page_offsets,
            reg::VSM_VP_STATUS => u64::from(vp.active) | (u64::from(vp.enabled) << 16),
            reg::VSM_PARTITION_STATUS => {
                u64::from(self.enabled)
                    | (u64::from(self.config.max_vtl) << 16)
                    | (u64::from(self.mbec_enabled) << 20)
            }
            reg::VSM_CAPABILITIES => self.config.vsm_capabilities,
            reg::VSM_PARTITION_CONFIG => self.vsm_config[usize::from(vtl)],
            n if (reg::VSM_VP_SECURE_CONFIG_VTL0..reg::VSM_VP_SECURE_CONFIG_VTL0 + 15)
                .contains(&n) =>
            {
                let lower = (n - reg::VSM_VP_SECURE_CONFIG_VTL0) as u8;
                if lower >= vtl {
                    return Err(HvStatus::INVALID_PARAMETER.into());
                }
                vp.secure_config[usize::from(vtl)][usize::from(lower)]
            }
            _ => return Ok(None),
        }))
    }

    fn write_register(
        &mut self,
        call: &Call<'_>,
        env: &mut Env<'_, V>,
        vp_index: u32,
        vtl: u8,
        name: u32,
        value: u128,
    ) -> HvResult<()> {
        let v64 = value as u64;
        match name {
            reg::VSM_CODE_PAGE_OFFSETS
            | reg::VSM_VP_STATUS
            | reg::VSM_PARTITION_STATUS
            | reg::VSM_CAPABILITIES => return Err(HvStatus::ACCESS_DENIED.into()),
            reg::VSM_PARTITION_CONFIG => {
                if vtl == 0 {
                    return Err(HvStatus::INVALID_PARAMETER.into());
                }
                let old = self.vsm_config[usize::from(vtl)];
                if v64 & !hv::VSM_PARTITION_CONFIG_SUPPORTED != 0
                    || (old & hv::VSM_PARTITION_CONFIG_ENABLE_VTL_PROTECTION != 0
                        && v64 & hv::VSM_PARTITION_CONFIG_ENABLE_VTL_PROTECTION == 0)
                {
                    return Err(HvStatus::INVALID_REGISTER_VALUE.into());
                }
                let status = env
                    .protections
                    .partition_config_changed(vtl, v64)
                    .map_err(VtlError::Protections)?;
                if status != HvStatus::SUCCESS {
                    return Err(status.into());
                }
                self.vsm_config[usize::from(vtl)] = v64;
                return Ok(());
            }
            n if (reg::VSM_VP_SECURE_CONFIG_VTL0..reg::VSM_VP_SECURE_CONFIG_VTL0 + 15)
                .contains(&n) =>
            {
                let lower = (n - reg::VSM_VP_SECURE_CONFIG_VTL0) as u8;
                if lower >= vtl {
                    return Err(HvStatus::INVALID_PARAMETER.into());
                }
                let mbec_ok = hv::capabilities_mbec_vtl_mask(self.config.vsm_capabilities)
                    & (1 << lower)
                    != 0;
                if v64 & !hv::VSM_VP_SECURE_CONFIG_SUPPORTED != 0 || (v64 & 1 != 0 && !mbec_ok) {
                    return Err(HvStatus::INVALID_REGISTER_VALUE.into());
                }
                self.vp_mut_ref(vp_index)?.secure_config[usize::from(vtl)][usize::from(lower)] =
                    v64;
                return Ok(());
            }
            _ => {}
        }
        let Some(loc) = Loc::of(name) else {
            return Err(HvStatus::INVALID_PARAMETER.into());
        };
        if matches!(loc, Loc::ApicBase | Loc::Msr(_, false)) {
            return Err(HvStatus::ACCESS_DENIED.into());
        }
        if vp_index != call.vp_index {
            return Err(HvStatus::INVALID_VP_STATE.into());
        }
        let vp = self.vp_mut_ref(vp_index)?;
        let dst = if loc.shared() { vp.active } else { vtl };
        // The caller's own RIP: KVM's completion of this very hypercall would move it again.
        if dst == vp.active && loc == Loc::Rip {
            return Err(HvStatus::INVALID_VP_STATE.into());
        }
        // A parked sibling's pending completion would move RIP (and RFLAGS.TF effects) after
        // this write: finish it now.
        if dst != vp.active && vp.parked & (1 << dst) != 0 {
            let vcpu = vp.vcpus[usize::from(dst)]
                .as_mut()
                .ok_or(VtlError::BadVtl(dst))?;
            vcpu_op(
                "KVM_RUN(immediate_exit)",
                vp_index,
                dst,
                vcpu.complete_pending(),
            )?;
            vp.parked &= !(1 << dst);
        }
        let vcpu = vp.vcpu(dst).ok_or(VtlError::BadVtl(dst))?;
        let bad = HvStatus::INVALID_REGISTER_VALUE;
        macro_rules! op {
            ($op:expr, $r:expr) => {
                vcpu_op($op, vp_index, dst, $r)
            };
        }
        match loc {
            Loc::Gpr(_) | Loc::Rip | Loc::Rflags => {
                let mut r = op!("KVM_GET_REGS", vcpu.get_regs())?;
                match loc {
                    Loc::Gpr(i) => *gpr_mut(&mut r, i) = v64,
                    Loc::Rip => r.rip = v64,
                    _ => r.rflags = v64,
                }
                Ok(op!("KVM_SET_REGS", vcpu.set_regs(&r))?)
            }
            Loc::Dr(_) | Loc::Dr6 | Loc::Dr7 => {
                let mut d = op!("KVM_GET_DEBUGREGS", vcpu.get_debugregs())?;
                match loc {
                    Loc::Dr(i) => d.db[usize::from(i)] = v64,
                    Loc::Dr6 => d.dr6 = v64,
                    _ => d.dr7 = v64,
                }
                vcpu_guest_op(
                    "KVM_SET_DEBUGREGS",
                    vp_index,
                    dst,
                    bad,
                    vcpu.set_debugregs(&d),
                )
            }
            Loc::Xcr0 => {
                let mut x = op!("KVM_GET_XCRS", vcpu.get_xcrs())?;
                set_xcr0(&mut x, v64);
                vcpu_guest_op("KVM_SET_XCRS", vp_index, dst, bad, vcpu.set_xcrs(&x))
            }
            Loc::Msr(index, _) => {
                vcpu_guest_op("KVM_SET_MSRS", vp_index, dst, bad, vcpu.set_msr(index, v64))
            }
            _ => {
                let mut s = op!("KVM_GET_SREGS", vcpu.get_sregs())?;
                match loc {
                    Loc::Cr0 => s.cr0 = v64,
                    Loc::Cr2 => s.cr2 = v64,
                    Loc::Cr3 => s.cr3 = v64,
                    Loc::Cr4 => s.cr4 = v64,
                    Loc::Cr8 => s.cr8 = v64,
                    Loc::Efer => s.efer = v64,
                    Loc::Seg(i) => *seg_mut(&mut s, i) = SegmentRegister::from_u128(value).to_kvm(),
                    Loc::Idtr => s.idt = TableRegister::from_u128(value).to_kvm(),
                    _ => s.gdt = TableRegister::from_u128(value).to_kvm(),
                }
                vcpu_guest_op("KVM_SET_SREGS", vp_index, dst, bad, vcpu.set_sregs(&s))
            }
        }
    }
}
