// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Secure memory intercepts (issue 10, series v5): VTL1 makes a page read-only for VTL0 with
//! HvCallModifyVtlProtectionMask, VTL0 writes it, KVM stops VTL0 at the write
//! (`KVM_EXIT_MEMORY_FAULT`, WRITE), the VP runner hands the fault to the state machine
//! ([`vtlkit_uapi::vtl::Partition::handle_memory_fault`]), which posts an
//! `HvX64MemoryInterceptMessage` in VTL1's SynIC message page, raises VTL1's SINT0 and switches
//! to VTL1. VTL1's handler of that SINT records what it read in the message (checked here) and
//! either lifts the protection (allow: VTL0's write is retried and completes once) or moves
//! VTL0's RIP past the write with HvCallSetVpRegisters (deny: the page keeps its value and its
//! protection).
//!
//! The flow, step by step (VP 0):
//!
//! 1. VTL0 enables VTL1 and VtlCalls; VTL1's first entry sets up its SynIC (SIMP, SINT0 with
//!    the test's vector, SCONTROL) and issues ModifyVtlProtectionMask(read-only, VTL0's view
//!    of [`vsm_layout::PROTECTED`]), then returns.
//! 2. VTL0 runs `add [page], DELTA` ([`Step::AddMem`]) and reads the page back.
//! 3. VTL1 is entered (reason Interrupt), takes SINT0, reads the message and answers.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use vtlkit_uapi::protections::{self, Access, FaultAccess};
use vtlkit_uapi::vtl::MessageDelivery;

use super::common::{enable_vtl1, require_vsm, run, VP};
use crate::guest;
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{status, Step};
use crate::tests::protect::common::Paging;
use crate::vm::layout;
use crate::vp::{
    modify_protection_control, protection_input, vsm_layout, InterceptAction, Round, VpEvent,
    VsmOptions, VsmVm,
};

/// SINT0's vector in VTL1.
const VECTOR: u8 = 0x64;
/// What the page holds before VTL0's write.
const OLD: u64 = 0x0123_4567_89ab_cdef;
/// What VTL0 adds.
const DELTA: u64 = 0x1111;
/// `add qword ptr [rdx], rax`: what the message must carry.
const ADD_BYTES: [u8; 3] = [0x48, 0x01, 0x02];
/// `mov rax, qword ptr [rdx]`.
const LOAD_BYTES: [u8; 3] = [0x48, 0x8b, 0x02];
/// `HvMessageTypeGpaIntercept`.
const GPA_INTERCEPT: u64 = 0x8000_0001;
/// HV_MAP_GPA_FLAGS readable.
const MAP_READ: u32 = 1;

/// What VTL0 does to the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `add [page], DELTA` to a read-only page.
    Write,
    /// `mov rax, [page]` from a page with no access.
    Read,
}

fn intercept(action: InterceptAction, op: Op) -> Result<()> {
    require_vsm()?;
    let page = vsm_layout::PROTECTED;
    let mut vsm = VsmVm::with_options(1, VsmOptions { protections: true })?;
    vsm.vm.mem.write_u64(page, OLD)?;
    vsm.setup_intercepts(VP, VECTOR, action, page)?;
    // Round 0: VTL1's first entry makes the page read-only for VTL0 (TargetVtl = VTL1).
    let protect_in = VsmVm::intercept_page(VP, 4);
    vsm.vm.mem.write(
        protect_in,
        &protection_input(
            if op == Op::Write { MAP_READ } else { 0 },
            1,
            &[page / layout::PAGE],
        ),
    )?;
    let mut r = Round::new(0x40, false);
    r.vtl1_hcall = Some((modify_protection_control(1), protect_in, 0));
    vsm.write_round(VP, 0, &r)?;
    let mut steps = enable_vtl1(&vsm);
    steps.push(Step::VtlCall {
        block: VsmVm::block_gpa(VP, 0),
    });
    let add = steps.len();
    steps.push(match op {
        Op::Write => Step::AddMem {
            addr: page,
            value: DELTA,
        },
        Op::Read => Step::LoadMem { addr: page },
    });
    let (running, loaded) = run(&mut vsm, steps)?;
    let events = running.events(VP);
    let stopped = running.stop()?;

    let mut f = String::new();
    let seen0 = vsm.read_round(VP, 0)?;
    if seen0.vtl1_hcall_result & 0xffff != status::SUCCESS || seen0.vtl1_hcall_result >> 32 != 1 {
        let _ = writeln!(
            f,
            "VTL1's HvCallModifyVtlProtectionMask(read-only) returned {:#x}, expected success with 1 rep",
            seen0.vtl1_hcall_result
        );
    }
    // What VTL0 saw and what memory holds.
    let (want, what) = match (op, action) {
        (Op::Write, InterceptAction::Allow) => {
            (OLD.wrapping_add(DELTA), "its write completed once")
        }
        (Op::Write, InterceptAction::Deny) => (OLD, "its write skipped"),
        (Op::Read, _) => (OLD, "its read of the old value"),
    };
    let out = loaded.outcome(&vsm.vm.mem, add)?;
    if !out.done || out.rax != want {
        let _ = writeln!(
            f,
            "VTL0 read {:#x} back after its write (step done: {}), expected {want:#x} ({what})",
            out.rax, out.done
        );
    }
    let mem = vsm.vm.mem.read_u64(page)?;
    if mem != want {
        let _ = writeln!(
            f,
            "the page holds {mem:#x} in host memory, expected {want:#x}"
        );
    }
    // What VTL1's handler read in its message page.
    let s = vsm.read_intercept(VP)?;
    let (insn_rip, bytes, access) = match op {
        Op::Write => (guest::hv_add_insn_offset(), ADD_BYTES, FaultAccess::Write),
        Op::Read => (guest::hv_load_insn_offset(), LOAD_BYTES, FaultAccess::Read),
    };
    let insn_rip = layout::CODE + insn_rip;
    let insn_bytes = u64::from_le_bytes([bytes[0], bytes[1], bytes[2], 0, 0, 0, 0, 0]);
    let access_type = match access {
        FaultAccess::Read => 0,
        FaultAccess::Write => 1,
        FaultAccess::Exec => 2,
    };
    // CPL 0, CR0.PE (bit 2), EFER.LMA (bit 4), VTL 0 (bits 10:7); CR0.AM (bit 3) ignored.
    let exec = s.exec_state & !0x8;
    let checks = [
        ("messages handled", s.count, 1),
        ("message type", s.msg_type, GPA_INTERCEPT),
        ("VP index", s.vp_index, u64::from(VP)),
        ("access type (0 read, 1 write)", s.access, access_type),
        ("GPA", s.gpa, page),
        ("RIP", s.rip, insn_rip),
        ("instruction length", s.insn_len, bytes.len() as u64),
        ("execution state (CPL, PE, LMA, VTL)", exec, 0x14),
        (
            "first instruction bytes",
            s.insn_bytes & 0xff_ffff,
            insn_bytes,
        ),
        (
            "allow/deny hypercall status",
            s.hc_status & 0xffff,
            status::SUCCESS,
        ),
    ];
    for (name, got, want) in checks {
        if got != want {
            let _ = writeln!(f, "VTL1's message: {name} is {got:#x}, expected {want:#x}");
        }
    }
    // The GVA: KVM reports it under shadow paging (identity mapped: the page), not with TDP.
    let shadow = crate::tests::protect::common::paging()? == Paging::Shadow;
    let (want_info, want_gva) = if shadow { (1, page) } else { (0, 0) };
    if s.access_info & 1 != want_info || s.gva != want_gva {
        let _ = writeln!(
            f,
            "VTL1's message: GvaValid {} and GVA {:#x}, expected {want_info} and {want_gva:#x} ({} paging)",
            s.access_info & 1,
            s.gva,
            if shadow { "shadow" } else { "TDP" }
        );
    }
    if s.insn_count == 0 {
        let _ = writeln!(f, "VTL1's message carries no instruction bytes");
    }
    // VTL1 took SINT0 once; VTL0 never saw the vector.
    let count = |vtl: u8| -> Result<u32> {
        vsm.vm.mem.read_u32(
            crate::vm::TestVm::pcpu_gpa(vsm.index(VP, vtl))
                + guest::pcpu::IRQ_COUNTS
                + 4 * u64::from(VECTOR),
        )
    };
    let (c1, c0) = (count(1)?, count(0)?);
    if c1 != 1 || c0 != 0 {
        let _ = writeln!(
            f,
            "SINT0 vector {VECTOR:#x} handled {c1} times by VTL1 (expected 1), {c0} times by VTL0 (expected 0)"
        );
    }
    // The runner logged one intercept, with SINT0 raised.
    let intercepts: Vec<&VpEvent> = events
        .iter()
        .filter(|e| matches!(e, VpEvent::Intercept { .. }))
        .collect();
    let expected = VpEvent::Intercept {
        from: 0,
        to: 1,
        gpa: page,
        access,
        message: MessageDelivery::Raised { vector: VECTOR },
    };
    if intercepts != [&expected] {
        let _ = writeln!(
            f,
            "the runner logged intercepts {intercepts:?}, expected exactly [{expected:?}]"
        );
    }
    // VTL0's view of the page afterwards (KVM_GET_VTL_PROTECTION); VTL1's never restricted.
    let (a0, _) = protections::get_vtl_protection(&vsm.vm.fd, page, 0)
        .map_err(|e| anyhow::anyhow!("KVM_GET_VTL_PROTECTION(VTL 0): {e}"))?;
    let want0 = match action {
        InterceptAction::Allow => Access::ALL,
        InterceptAction::Deny => Access::READ,
    };
    if a0 != want0 {
        let _ = writeln!(f, "VTL0's protection of the page is {a0}, expected {want0}");
    }
    let (a1, _) = protections::get_vtl_protection(&vsm.vm.fd, page, 1)
        .map_err(|e| anyhow::anyhow!("KVM_GET_VTL_PROTECTION(VTL 1): {e}"))?;
    if a1 != Access::ALL {
        let _ = writeln!(f, "VTL1's protection of the page is {a1}, expected rwx");
    }
    if stopped.active_vtl(VP) != Some(0) {
        let _ = writeln!(
            f,
            "VP {VP} ended in VTL {:?}, not VTL0",
            stopped.active_vtl(VP)
        );
    }
    if !f.is_empty() {
        bail!("{f}runner log: {events:?}");
    }
    eprintln!(
        "# intercept ({op:?}, {action:?}): VTL1 read type {:#x}, GPA {:#x}, GVA {}, {access}, VP {}, length {}, {} instruction bytes; VTL0 read {:#x}",
        s.msg_type,
        s.gpa,
        if s.access_info & 1 != 0 {
            format!("{:#x}", s.gva)
        } else {
            "not valid".to_string()
        },
        s.vp_index,
        s.insn_len,
        s.insn_count,
        out.rax
    );
    Ok(())
}

/// VTL1 lifts the protection: VTL0's write completes once.
pub(super) fn vsm_intercept_allow() -> TestResult {
    intercept(InterceptAction::Allow, Op::Write).map(|()| Outcome::Pass)
}

/// VTL1 skips VTL0's write: the page keeps its value and its protection.
pub(super) fn vsm_intercept_deny() -> TestResult {
    intercept(InterceptAction::Deny, Op::Write).map(|()| Outcome::Pass)
}

/// A read of a no-access page: the message says read; VTL1 lifts the protection and VTL0
/// reads the page's value.
pub(super) fn vsm_intercept_read_allow() -> TestResult {
    intercept(InterceptAction::Allow, Op::Read).map(|()| Outcome::Pass)
}
