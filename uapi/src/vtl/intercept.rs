// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Secure memory intercepts (TLFS "Memory protections and intercepts"): a lower VTL's access
//! that a higher VTL's protection forbids (`KVM_EXIT_MEMORY_FAULT` with an access flag, see
//! [`crate::protections`]) becomes an `HvX64MemoryInterceptMessage` in the higher VTL's SynIC
//! message page, SINT0 is raised there, and the VP switches to that VTL.
//!
//! [`Partition::handle_memory_fault`] does it, in this order:
//!
//! 1. The VTL that gets the intercept is the **lowest enabled VTL above the faulting one** on
//!    the VP (KVM does not say who set a protection; with Hyper-V's two VTLs it is VTL1). No
//!    higher VTL: [`InterceptOutcome::NoHigherVtl`], nothing is changed (the protection is the
//!    VMM's own).
//! 2. The message is built from the faulting vCPU (which KVM left at the faulting instruction):
//!    RIP, RFLAGS, CS, CR8, the execution state (CPL = SS.DPL, CR0.PE/AM, EFER.LMA, the VTL,
//!    interruption pending and interrupt shadow from `KVM_GET_VCPU_EVENTS`), the access, GPA,
//!    GVA (only where KVM reports it: shadow paging), cache type write-back, and up to 16
//!    instruction bytes that the state machine fetches itself (`KVM_TRANSLATE` of CS.base + RIP
//!    through the faulting vCPU, then guest memory; a count of 0 if that fails: neither the
//!    kernel exit nor TCG's nested SVM gives decode-assist bytes). The instruction length comes
//!    from a small decoder of the common memory-access encodings ([`instruction_length`]; 0
//!    when it does not know the instruction, and always for an execute fault).
//! 3. The VP switches to that VTL as for an interrupt: shared registers carried as for a VtlCall,
//!    `HV_VP_VTL_CONTROL.EntryReason` = 2 (Interrupt), and its VtlReturn goes back to the
//!    faulting VTL, which has no completion pending and retries its instruction (unless the
//!    higher VTL moved its RIP with HvCallSetVpRegisters).
//! 4. The message goes to slot SINT0 (`HV_SYNIC_INTERCEPTION_SINT_INDEX`) of that VTL's SIMP
//!    page (`HV_X64_MSR_SIMP` of its vCPU, read with `KVM_GET_MSRS`), if its SCONTROL and SIMP
//!    are enabled. Then SINT0 is raised: its vector (`HV_X64_MSR_SINT0` bits 7:0) as a fixed
//!    interrupt into the VTL's APIC group through [`super::Delivery`]; a masked SINT gets the
//!    message and no interrupt. The SINT's AutoEoi and Polling bits are not honoured (the guest
//!    EOIs its LAPIC as for any fixed interrupt).
//! 5. A slot still holding a message (type != 0), or a VTL without an enabled message page,
//!    cannot take it: the slot's MessagePending flag is set (when there is a slot) and the
//!    message is **queued** in the partition, one per VP and VTL. It is posted, and SINT0
//!    raised, the next time the VP enters that VTL by VtlCall or interrupt while the slot is
//!    free (writing `HV_X64_MSR_EOM` is handled inside KVM and never seen here). A newer
//!    intercept replaces a queued one: the faulting VTL is stopped at its instruction, so the
//!    newer message describes the same retry.

use std::io;

use kvm_bindings::{kvm_regs, kvm_sregs};

use super::backend::{Env, GuestMemory, VtlVcpu};
use super::hv::SegmentRegister;
use super::switch::sibling;
use super::{vcpu_op, Partition, VtlError};
use crate::protections::{FaultAccess, MemoryFault};

/// Hyper-V SynIC MSRs and bits used here.
pub mod synic {
    /// `HV_X64_MSR_SCONTROL`; bit 0 enables the SynIC.
    pub const SCONTROL: u32 = 0x4000_0080;
    /// `HV_X64_MSR_SIMP`: bit 0 enable, bits 63:12 the message page's GPA.
    pub const SIMP: u32 = 0x4000_0083;
    /// `HV_X64_MSR_EOM`.
    pub const EOM: u32 = 0x4000_0084;
    /// `HV_X64_MSR_SINT0`; SINTn is `SINT0 + n`.
    pub const SINT0: u32 = 0x4000_0090;
    /// The SINT intercept messages go to (`HV_SYNIC_INTERCEPTION_SINT_INDEX`).
    pub const INTERCEPTION_SINT: u32 = 0;
    /// Enable bit of SCONTROL and SIMP.
    pub const ENABLE: u64 = 1;
    /// SINT: masked.
    pub const SINT_MASKED: u64 = 1 << 16;
    /// SINT: auto-EOI (not honoured, see the module documentation).
    pub const SINT_AUTO_EOI: u64 = 1 << 17;
    /// Size of one message slot (16-byte header, 240-byte payload).
    pub const MESSAGE_SIZE: usize = 256;
}

/// `HV_MESSAGE_TYPE` values.
pub mod message_type {
    /// The slot is free.
    pub const NONE: u32 = 0;
    /// `HvMessageTypeGpaIntercept`: an `HvX64MemoryInterceptMessage`.
    pub const GPA_INTERCEPT: u32 = 0x8000_0001;
}

/// Byte offsets in a message slot: the header, then (relative to [`msg::PAYLOAD`]) the
/// `HvX64MemoryInterceptMessage` fields.
pub mod msg {
    /// u32 message type.
    pub const TYPE: usize = 0;
    /// u8 payload size.
    pub const PAYLOAD_SIZE: usize = 4;
    /// u8 message flags (bit 0 MessagePending).
    pub const FLAGS: usize = 5;
    /// The payload.
    pub const PAYLOAD: usize = 16;
    /// MessageFlags.MessagePending.
    pub const FLAG_PENDING: u8 = 1;

    /// u32 VP index.
    pub const VP_INDEX: usize = 0;
    /// u8: instruction length bits 3:0, CR8 bits 7:4.
    pub const INSN_LENGTH_CR8: usize = 4;
    /// u8 intercept access type: 0 read, 1 write, 2 execute.
    pub const ACCESS_TYPE: usize = 5;
    /// u16 execution state ([`super::ExecutionState`]).
    pub const EXEC_STATE: usize = 6;
    /// 16-byte CS segment register (base u64, limit u32, selector u16, attributes u16).
    pub const CS: usize = 8;
    /// u64 RIP.
    pub const RIP: usize = 24;
    /// u64 RFLAGS.
    pub const RFLAGS: usize = 32;
    /// u32 cache type.
    pub const CACHE_TYPE: usize = 40;
    /// u8 instruction byte count.
    pub const INSN_BYTE_COUNT: usize = 44;
    /// u8 memory access info: bit 0 GvaValid, 1 GvaGpaValid, 2 HypercallOutputPending, 3
    /// TlbLocked, 4 SupervisorShadowStack.
    pub const ACCESS_INFO: usize = 45;
    /// u8 TPR priority.
    pub const TPR_PRIORITY: usize = 46;
    /// u64 GVA.
    pub const GVA: usize = 48;
    /// u64 GPA.
    pub const GPA: usize = 56;
    /// 16 instruction bytes.
    pub const INSN_BYTES: usize = 64;
    /// Payload size of the message.
    pub const SIZE: usize = 80;
    /// [`ACCESS_INFO`]: GvaValid.
    pub const GVA_VALID: u8 = 1;
}

/// `HV_CACHE_TYPE` write-back, what the message reports (guest RAM).
pub const CACHE_TYPE_WRITE_BACK: u32 = 6;

/// `HV_X64_VP_EXECUTION_STATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecutionState {
    /// CPL (bits 1:0).
    pub cpl: u8,
    /// CR0.PE (bit 2).
    pub cr0_pe: bool,
    /// CR0.AM (bit 3).
    pub cr0_am: bool,
    /// EFER.LMA (bit 4).
    pub efer_lma: bool,
    /// Debug registers armed (bit 5).
    pub debug_active: bool,
    /// An event was being delivered (bit 6).
    pub interruption_pending: bool,
    /// The VTL of the faulting vCPU (bits 10:7).
    pub vtl: u8,
    /// Interrupt shadow (bit 12).
    pub interrupt_shadow: bool,
}

impl ExecutionState {
    /// The u16 encoding.
    pub fn bits(&self) -> u16 {
        u16::from(self.cpl & 3)
            | (u16::from(self.cr0_pe) << 2)
            | (u16::from(self.cr0_am) << 3)
            | (u16::from(self.efer_lma) << 4)
            | (u16::from(self.debug_active) << 5)
            | (u16::from(self.interruption_pending) << 6)
            | (u16::from(self.vtl & 0xf) << 7)
            | (u16::from(self.interrupt_shadow) << 12)
    }
}

/// One `HvX64MemoryInterceptMessage` (type [`message_type::GPA_INTERCEPT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryInterceptMessage {
    /// VP index of the faulting VP.
    pub vp_index: u32,
    /// Length of the faulting instruction, 0 if unknown.
    pub instruction_length: u8,
    /// CR8 of the faulting VTL.
    pub cr8: u8,
    /// The access.
    pub access: FaultAccess,
    /// Execution state.
    pub execution_state: ExecutionState,
    /// CS.
    pub cs: SegmentRegister,
    /// RIP of the faulting instruction.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// Cache type.
    pub cache_type: u32,
    /// Instruction bytes from RIP on; the first `instruction_byte_count` are valid.
    pub instruction_bytes: [u8; 16],
    /// Valid bytes in `instruction_bytes`.
    pub instruction_byte_count: u8,
    /// The GVA, where known.
    pub gva: Option<u64>,
    /// The GPA (the faulting page's address plus the offset KVM reports, i.e. the page).
    pub gpa: u64,
}

/// The intercept access type of an access.
pub fn access_type(a: FaultAccess) -> u8 {
    match a {
        FaultAccess::Read => 0,
        FaultAccess::Write => 1,
        FaultAccess::Exec => 2,
    }
}

impl MemoryInterceptMessage {
    /// The whole 256-byte message slot: header (type, payload size) and payload.
    pub fn to_slot(&self) -> [u8; synic::MESSAGE_SIZE] {
        let mut b = [0u8; synic::MESSAGE_SIZE];
        b[msg::TYPE..msg::TYPE + 4].copy_from_slice(&message_type::GPA_INTERCEPT.to_le_bytes());
        b[msg::PAYLOAD_SIZE] = msg::SIZE as u8;
        let p = &mut b[msg::PAYLOAD..msg::PAYLOAD + msg::SIZE];
        p[msg::VP_INDEX..msg::VP_INDEX + 4].copy_from_slice(&self.vp_index.to_le_bytes());
        p[msg::INSN_LENGTH_CR8] = (self.instruction_length & 0xf) | ((self.cr8 & 0xf) << 4);
        p[msg::ACCESS_TYPE] = access_type(self.access);
        p[msg::EXEC_STATE..msg::EXEC_STATE + 2]
            .copy_from_slice(&self.execution_state.bits().to_le_bytes());
        let cs = &mut p[msg::CS..msg::CS + 16];
        cs[0..8].copy_from_slice(&self.cs.base.to_le_bytes());
        cs[8..12].copy_from_slice(&self.cs.limit.to_le_bytes());
        cs[12..14].copy_from_slice(&self.cs.selector.to_le_bytes());
        cs[14..16].copy_from_slice(&self.cs.attributes.to_le_bytes());
        p[msg::RIP..msg::RIP + 8].copy_from_slice(&self.rip.to_le_bytes());
        p[msg::RFLAGS..msg::RFLAGS + 8].copy_from_slice(&self.rflags.to_le_bytes());
        p[msg::CACHE_TYPE..msg::CACHE_TYPE + 4].copy_from_slice(&self.cache_type.to_le_bytes());
        let n = self.instruction_byte_count.min(16);
        p[msg::INSN_BYTE_COUNT] = n;
        p[msg::ACCESS_INFO] = if self.gva.is_some() {
            msg::GVA_VALID
        } else {
            0
        };
        p[msg::GVA..msg::GVA + 8].copy_from_slice(&self.gva.unwrap_or(0).to_le_bytes());
        p[msg::GPA..msg::GPA + 8].copy_from_slice(&self.gpa.to_le_bytes());
        p[msg::INSN_BYTES..msg::INSN_BYTES + usize::from(n)]
            .copy_from_slice(&self.instruction_bytes[..usize::from(n)]);
        b
    }
}

/// The code segment's mode, for [`instruction_length`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeMode {
    /// 64-bit code (CS.L, EFER.LMA).
    Long64,
    /// 32-bit protected-mode code (CS.D).
    Protected32,
    /// 16-bit code (real mode or CS.D = 0): not decoded.
    Bits16,
}

/// The length of the instruction at the start of `bytes`, for the common encodings of memory
/// accesses: legacy prefixes, REX, one-byte opcodes 00-3F (ALU), 69/6B, 80-8F, A0-A3 (moffs),
/// A4/A5/AA/AB (string moves and stores), C0/C1/C6/C7, D0-D3, F6/F7, FE/FF, and the two-byte
/// opcodes with a ModRM (0F 10-17, 0F 28-2F, 0F 40-4F, 0F 6E/6F/7E/7F, 0F 90-9F, 0F A3/AB/AF,
/// 0F B0/B1/B3/B6/B7/BB/BE/BF, 0F C0/C1/C3, 0F D6/E7, 0F BA with an imm8). `None` for anything
/// else (VEX/EVEX, 0F 38/0F 3A, 16-bit code, truncated bytes): the message then says 0.
pub fn instruction_length(bytes: &[u8], mode: CodeMode) -> Option<u8> {
    if mode == CodeMode::Bits16 {
        return None;
    }
    let mut i = 0usize;
    let mut opsize16 = false;
    let mut addr_override = false;
    let mut rex_w = false;
    // Legacy prefixes (at most 14 with the opcode, as the CPU allows 15 bytes in total).
    loop {
        let b = *bytes.get(i)?;
        match b {
            0x66 => opsize16 = true,
            0x67 => addr_override = true,
            0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => {}
            _ => break,
        }
        i += 1;
        if i >= 15 {
            return None;
        }
    }
    if mode == CodeMode::Long64 {
        if let Some(&b) = bytes.get(i) {
            if b & 0xf0 == 0x40 {
                rex_w = b & 8 != 0;
                i += 1;
            }
        }
    }
    let op = *bytes.get(i)?;
    i += 1;
    // Immediate of an operand-size instruction: 2 with 0x66, else 4 (REX.W keeps 4).
    let imm_z = if opsize16 && !rex_w { 2 } else { 4 };
    let (modrm, imm) = match op {
        0x0f => {
            let op2 = *bytes.get(i)?;
            i += 1;
            match op2 {
                0x10..=0x17
                | 0x28..=0x2f
                | 0x40..=0x4f
                | 0x6e
                | 0x6f
                | 0x7e
                | 0x7f
                | 0x90..=0x9f
                | 0xa3
                | 0xab
                | 0xaf
                | 0xb0
                | 0xb1
                | 0xb3
                | 0xb6
                | 0xb7
                | 0xbb
                | 0xbe
                | 0xbf
                | 0xc0
                | 0xc1
                | 0xc3
                | 0xd6
                | 0xe7 => (true, 0),
                0xba => (true, 1),
                _ => return None,
            }
        }
        // ALU r/m forms: 00-03, 08-0B, ... 38-3B.
        o if o < 0x40 && o & 7 < 4 => (true, 0),
        0x69 => (true, imm_z),
        0x6b => (true, 1),
        0x80 | 0x83 => (true, 1),
        0x81 => (true, imm_z),
        0x84..=0x8f => (true, 0),
        0xa0..=0xa3 => {
            // moffs: 8 bytes in 64-bit mode (4 with 0x67), 4 in 32-bit mode (2 with 0x67).
            let n = match (mode, addr_override) {
                (CodeMode::Long64, false) => 8,
                (CodeMode::Long64, true) | (_, false) => 4,
                (_, true) => 2,
            };
            (false, n)
        }
        0xa4 | 0xa5 | 0xaa | 0xab => (false, 0),
        0xc0 | 0xc1 | 0xc6 => (true, 1),
        0xc7 => (true, imm_z),
        0xd0..=0xd3 | 0xfe | 0xff => (true, 0),
        0xf6 | 0xf7 => {
            // TEST (/0, /1) has an immediate; the others do not.
            let reg = (*bytes.get(i)? >> 3) & 7;
            let imm = match (op, reg) {
                (0xf6, 0 | 1) => 1,
                (0xf7, 0 | 1) => imm_z,
                _ => 0,
            };
            (true, imm)
        }
        _ => return None,
    };
    if modrm {
        if mode == CodeMode::Protected32 && addr_override {
            return None; // 16-bit addressing
        }
        let m = *bytes.get(i)?;
        i += 1;
        let (md, rm) = (m >> 6, m & 7);
        if md != 3 {
            if rm == 4 {
                let sib = *bytes.get(i)?;
                i += 1;
                if md == 0 && sib & 7 == 5 {
                    i += 4;
                }
            } else if md == 0 && rm == 5 {
                i += 4; // disp32 (RIP-relative in 64-bit mode)
            }
            i += match md {
                1 => 1,
                2 => 4,
                _ => 0,
            };
        }
    }
    i += imm;
    if i > 15 || i > bytes.len() {
        return None;
    }
    u8::try_from(i).ok()
}

/// What [`Partition::handle_memory_fault`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptOutcome {
    /// The VP switched to VTL `to` (entry reason Interrupt): run its vCPU next. VTL `from`
    /// stays at the faulting instruction and retries it when `to` returns to it.
    Switched {
        /// The faulting VTL.
        from: u8,
        /// The VTL that got the intercept.
        to: u8,
        /// What became of the message.
        message: MessageDelivery,
    },
    /// The exit is not a protection violation (no access flag): not an intercept, nothing
    /// done.
    NotProtectionFault,
    /// No VTL above the faulting one is enabled on the VP: nothing done (the VMM's own
    /// protection, or a stale one).
    NoHigherVtl,
}

/// What became of an intercept message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageDelivery {
    /// Written into the SINT0 slot, and SINT0 raised with this vector.
    Raised {
        /// SINT0's vector.
        vector: u8,
    },
    /// Written into the slot; SINT0 is masked (or has no valid vector): no interrupt.
    Masked,
    /// The slot holds a message (its MessagePending flag is set now), or the VTL has no
    /// enabled message page: queued, posted at a later entry into the VTL.
    Queued,
}

fn io_invalid(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidInput
}

impl<V: VtlVcpu> Partition<V> {
    /// Answer a `KVM_EXIT_MEMORY_FAULT` of VP `vp_index`'s active sibling (VTL `vtl`), decoded
    /// as `fault` ([`crate::protections::memory_fault_exit`]): deliver the secure intercept to
    /// the next higher VTL and switch to it (module documentation). `Err` only for host
    /// failures and VMM mistakes.
    pub fn handle_memory_fault(
        &mut self,
        env: &mut Env<'_, V>,
        vp_index: u32,
        vtl: u8,
        fault: &MemoryFault,
    ) -> Result<InterceptOutcome, VtlError> {
        let notify = self.notify;
        let vp = self.active_vp_mut(vp_index, vtl)?;
        let Some(access) = fault.access else {
            return Ok(InterceptOutcome::NotProtectionFault);
        };
        let Some(to) = vp.next_higher(vtl) else {
            log::debug!(
                "VP {vp_index} VTL {vtl}: {fault}: no higher VTL is enabled, not an intercept"
            );
            return Ok(InterceptOutcome::NoHigherVtl);
        };
        if vp.vcpu(to).is_none() {
            return Err(VtlError::BadVtl(to));
        }
        let from = vtl;
        let src = sibling(vp, from)?;
        let regs = vcpu_op("KVM_GET_REGS", vp_index, from, src.get_regs())?;
        let sregs = vcpu_op("KVM_GET_SREGS", vp_index, from, src.get_sregs())?;
        let events = vcpu_op("KVM_GET_VCPU_EVENTS", vp_index, from, src.get_vcpu_events())?;
        let message = build_message(
            src, env.memory, vp_index, from, access, fault, &regs, &sregs, &events,
        );
        log::debug!(
            "VP {vp_index}: secure intercept for VTL {to}: VTL {from} {fault} at RIP {:#x} \
             (instruction length {})",
            regs.rip,
            message.instruction_length
        );
        // The switch, as for an interrupt entry.
        super::wake::enter_for_interrupt(env, notify, vp, from, to, &regs)?;
        // A newer intercept replaces a queued one (same faulting instruction, retried).
        vp.pending_intercept[usize::from(to)] = None;
        let delivery = self.post_intercept(env, vp_index, to, &message.to_slot())?;
        Ok(InterceptOutcome::Switched {
            from,
            to,
            message: delivery,
        })
    }

    /// The intercept message queued for VP `vp_index`'s VTL `vtl`, if one waits for its slot.
    pub fn pending_intercept(&self, vp_index: u32, vtl: u8) -> Option<[u8; synic::MESSAGE_SIZE]> {
        self.vps
            .get(&vp_index)?
            .pending_intercept
            .get(usize::from(vtl))?
            .as_deref()
            .copied()
    }

    /// Post a queued intercept message of VTL `vtl` (just entered) if its slot is free now.
    pub(super) fn post_queued_intercept(
        &mut self,
        env: &mut Env<'_, V>,
        vp_index: u32,
        vtl: u8,
    ) -> Result<(), VtlError> {
        let vp = self.vp_mut_ref(vp_index)?;
        let Some(slot) = vp.pending_intercept[usize::from(vtl & 0xf)].take() else {
            return Ok(());
        };
        let d = self.post_intercept(env, vp_index, vtl, &slot)?;
        log::debug!("VP {vp_index}: queued intercept for VTL {vtl}: {d:?}");
        Ok(())
    }

    /// Write `slot` into VTL `to`'s SINT0 message slot and raise SINT0, or queue it.
    fn post_intercept(
        &mut self,
        env: &mut Env<'_, V>,
        vp_index: u32,
        to: u8,
        slot: &[u8; synic::MESSAGE_SIZE],
    ) -> Result<MessageDelivery, VtlError> {
        let group = self.group_of(to);
        let vp = self.vp_mut_ref(vp_index)?;
        let apic_id = vp.apic_id;
        let dst = sibling(vp, to)?;
        let page = match message_page(dst, vp_index, to)? {
            Some(p) => p,
            None => {
                log::debug!(
                    "VP {vp_index}: VTL {to} has no enabled SynIC message page: intercept queued"
                );
                vp.pending_intercept[usize::from(to)] = Some(Box::new(*slot));
                return Ok(MessageDelivery::Queued);
            }
        };
        let gpa = page + u64::from(synic::INTERCEPTION_SINT) * synic::MESSAGE_SIZE as u64;
        let mut head = [0u8; 8];
        if let Err(e) = env.memory.read(gpa, &mut head) {
            log::debug!("VP {vp_index}: VTL {to}'s message page is not RAM ({e}): queued");
            vp.pending_intercept[usize::from(to)] = Some(Box::new(*slot));
            return Ok(MessageDelivery::Queued);
        }
        let busy = u32::from_le_bytes(super::hv::arr(&head[0..4])) != message_type::NONE;
        if busy {
            let flags = head[msg::FLAGS] | msg::FLAG_PENDING;
            if let Err(e) = env.memory.write(gpa + msg::FLAGS as u64, &[flags]) {
                log::debug!("VP {vp_index}: MessagePending not set ({e})");
            }
            vp.pending_intercept[usize::from(to)] = Some(Box::new(*slot));
            return Ok(MessageDelivery::Queued);
        }
        // Payload and header after the type, then the type: the slot becomes valid last.
        let written = env
            .memory
            .write(gpa + 4, &slot[4..])
            .and_then(|()| env.memory.write(gpa, &slot[0..4]));
        if let Err(e) = written {
            log::debug!("VP {vp_index}: VTL {to}'s message slot not writable ({e}): queued");
            vp.pending_intercept[usize::from(to)] = Some(Box::new(*slot));
            return Ok(MessageDelivery::Queued);
        }
        let sint = match dst.get_msr(synic::SINT0 + synic::INTERCEPTION_SINT) {
            Ok(v) => v,
            Err(e) if io_invalid(&e) => synic::SINT_MASKED,
            Err(source) => {
                return Err(VtlError::Vcpu {
                    op: "KVM_GET_MSRS(HV_X64_MSR_SINT0)",
                    vp_index,
                    vtl: to,
                    source,
                })
            }
        };
        let vector = (sint & 0xff) as u8;
        if sint & synic::SINT_MASKED != 0 || vector < 16 {
            log::debug!(
                "VP {vp_index}: VTL {to}'s SINT0 is {sint:#x}: message posted, no interrupt"
            );
            return Ok(MessageDelivery::Masked);
        }
        if sint & synic::SINT_AUTO_EOI != 0 {
            log::debug!("VP {vp_index}: VTL {to}'s SINT0 asks for auto-EOI, which is not honoured");
        }
        match env.delivery.deliver_fixed(group, apic_id, vector) {
            Ok(()) => Ok(MessageDelivery::Raised { vector }),
            Err(e) if io_invalid(&e) => {
                log::warn!("VP {vp_index}: SINT0 of VTL {to} not delivered: {e}");
                Ok(MessageDelivery::Masked)
            }
            Err(source) => Err(VtlError::Delivery {
                group,
                apic_id,
                vector,
                source,
            }),
        }
    }
}

/// The SIMP page of `vcpu` if its SynIC and message page are enabled (neither if KVM has no
/// SynIC MSRs for it: the SynIC is not active).
fn message_page<V: VtlVcpu>(vcpu: &V, vp_index: u32, vtl: u8) -> Result<Option<u64>, VtlError> {
    let read = |msr: u32, op: &'static str| match vcpu.get_msr(msr) {
        Ok(v) => Ok(Some(v)),
        Err(e) if io_invalid(&e) => Ok(None),
        Err(source) => Err(VtlError::Vcpu {
            op,
            vp_index,
            vtl,
            source,
        }),
    };
    let Some(scontrol) = read(synic::SCONTROL, "KVM_GET_MSRS(HV_X64_MSR_SCONTROL)")? else {
        return Ok(None);
    };
    let Some(simp) = read(synic::SIMP, "KVM_GET_MSRS(HV_X64_MSR_SIMP)")? else {
        return Ok(None);
    };
    if scontrol & synic::ENABLE == 0 || simp & synic::ENABLE == 0 {
        return Ok(None);
    }
    Ok(Some(simp & !0xfff))
}

/// The message for a fault of `src` (VTL `vtl` of VP `vp_index`).
#[allow(clippy::too_many_arguments)]
fn build_message<V: VtlVcpu>(
    src: &V,
    memory: &dyn GuestMemory,
    vp_index: u32,
    vtl: u8,
    access: FaultAccess,
    fault: &MemoryFault,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    events: &kvm_bindings::kvm_vcpu_events,
) -> MemoryInterceptMessage {
    const EFER_LMA: u64 = 1 << 10;
    let pe = sregs.cr0 & 1 != 0;
    let lma = sregs.efer & EFER_LMA != 0;
    let mode = if lma && sregs.cs.l != 0 {
        CodeMode::Long64
    } else if pe && sregs.cs.db != 0 {
        CodeMode::Protected32
    } else {
        CodeMode::Bits16
    };
    let linear = match mode {
        CodeMode::Long64 => regs.rip,
        _ => sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff,
    };
    let (bytes, count) = fetch_instruction(src, memory, linear, vp_index, vtl);
    let instruction_length = match access {
        FaultAccess::Exec => 0,
        _ => instruction_length(&bytes[..usize::from(count)], mode).unwrap_or(0),
    };
    MemoryInterceptMessage {
        vp_index,
        instruction_length,
        cr8: (sregs.cr8 & 0xf) as u8,
        access,
        execution_state: ExecutionState {
            cpl: if pe { sregs.ss.dpl & 3 } else { 0 },
            cr0_pe: pe,
            cr0_am: sregs.cr0 & (1 << 18) != 0,
            efer_lma: lma,
            debug_active: false,
            interruption_pending: events.exception.injected != 0
                || events.interrupt.injected != 0
                || events.nmi.injected != 0,
            vtl,
            interrupt_shadow: events.interrupt.shadow != 0,
        },
        cs: SegmentRegister::from_kvm(&sregs.cs),
        rip: regs.rip,
        rflags: regs.rflags,
        cache_type: CACHE_TYPE_WRITE_BACK,
        instruction_bytes: bytes,
        instruction_byte_count: count,
        gva: fault.gva,
        gpa: fault.gpa,
    }
}

/// Up to 16 bytes at linear address `linear` through `src`'s page tables (`KVM_TRANSLATE`),
/// stopping at the first page that does not translate or is not RAM.
fn fetch_instruction<V: VtlVcpu>(
    src: &V,
    memory: &dyn GuestMemory,
    linear: u64,
    vp_index: u32,
    vtl: u8,
) -> ([u8; 16], u8) {
    let mut bytes = [0u8; 16];
    let mut got = 0usize;
    while got < bytes.len() {
        let va = linear.wrapping_add(got as u64);
        let in_page = (0x1000 - (va & 0xfff)) as usize;
        let n = in_page.min(bytes.len() - got);
        let gpa = match src.translate_gva(va) {
            Ok(Some(gpa)) => gpa,
            Ok(None) => break,
            Err(e) => {
                log::debug!(
                    "VP {vp_index} VTL {vtl}: no instruction bytes: KVM_TRANSLATE({va:#x}): {e}"
                );
                break;
            }
        };
        if memory.read(gpa, &mut bytes[got..got + n]).is_err() {
            break;
        }
        got += n;
    }
    (bytes, got as u8)
}
