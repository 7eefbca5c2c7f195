// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! VTL1's TPR blocks the preemption (TLFS: the higher VTL's TPR counts, its RFLAGS.IF does
//! not): with CR8 above the vector's class, the interrupt waits in VTL1's IRR while VTL0 spins
//! on; when VTL1 lowers its TPR (on its next VtlCall entry) and returns, the interrupt
//! preempts VTL0 at once.

use std::fmt::Write as _;

use anyhow::bail;

use super::common::{
    count, enable_everywhere, first_round, int_entries, msi, spin_for_vtl1, start_all, unavailable,
    wait_done, wait_spinning, GATE2,
};
use crate::guest::{pcpu, ucall};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::Step;
use crate::vm::DEFAULT_TIMEOUT;
use crate::vp::{Round, VpEvent, VsmVm};

const VECTOR: u8 = 0x54; // class 5

pub(super) fn wake_tpr_defers_until_lowered() -> TestResult {
    if let Some(why) = unavailable()? {
        return Ok(Outcome::Skip(why));
    }
    let mut vsm = VsmVm::new(1)?;
    let mut programs = enable_everywhere(&vsm, 1)?;
    let k = first_round(1, 0);
    let mut raise = Round::new(0x60, false);
    raise.vtl1_cr8 = Some(6);
    let mut lower = Round::new(0x61, false);
    lower.vtl1_cr8 = Some(0);
    vsm.write_round(0, k, &raise)?;
    vsm.write_round(0, k + 1, &lower)?;
    let p = &mut programs[0];
    p.push(Step::VtlCall {
        block: VsmVm::block_gpa(0, k),
    });
    p.push(Step::Gate(GATE2));
    let blocked = p.len();
    p.push(spin_for_vtl1(&vsm, 0, VECTOR, 1, 2));
    let lowered_at = p.len();
    p.push(Step::VtlCall {
        block: VsmVm::block_gpa(0, k + 1),
    });
    let free = p.len();
    p.push(spin_for_vtl1(&vsm, 0, VECTOR, 1, 20));
    let (running, loaded) = start_all(&mut vsm, programs)?;
    running.wait_sync(0, 0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)?;
    vsm.vm.set_pcpu(vsm.index(0, 0), pcpu::GO, GATE2)?;
    wait_spinning(&vsm, &loaded[0], blocked)?;
    let entries_before = int_entries(&vsm, 0)?;
    msi(&vsm, 0, 1, VECTOR)?;
    let running = wait_done(running, 1, DEFAULT_TIMEOUT)?;
    let events = running.events(0);
    drop(running);
    let mut f = String::new();
    let b = loaded[0].outcome(&vsm.vm.mem, blocked)?;
    if b.rcx != 0 {
        let _ = writeln!(
            f,
            "with VTL1's CR8 at 6, vector {VECTOR:#x} (class 5) was handled by VTL1 while VTL0 spun (spin result {})",
            b.rcx
        );
    }
    let l = loaded[0].outcome(&vsm.vm.mem, free)?;
    if l.rcx != 1 {
        let _ = writeln!(
            f,
            "after VTL1 lowered CR8 to 0, VTL0's interrupts-disabled spin timed out: the deferred interrupt did not preempt it"
        );
    }
    let c = count(&vsm, 0, 1, VECTOR)?;
    if c != 1 {
        let _ = writeln!(
            f,
            "VTL1 handled vector {VECTOR:#x} {c} times, expected once"
        );
    }
    if int_entries(&vsm, 0)? <= entries_before {
        let _ = writeln!(f, "VTL1 saw no entry with reason Interrupt");
    }
    // The interrupt entry came right after the VtlReturn that lowered the TPR (the third:
    // VTL1's set-up round, the round that raised CR8, the one that lowered it), never before.
    let first_int = events
        .iter()
        .position(|e| matches!(e, VpEvent::Interrupted { from: 0, to: 1, .. }));
    let returns_before = first_int.map(|i| {
        events[..i]
            .iter()
            .filter(|e| matches!(e, VpEvent::Switched { from: 1, to: 0 }))
            .count()
    });
    if returns_before != Some(3) {
        let _ = writeln!(
            f,
            "the interrupt entry (event {first_int:?}) did not follow the VtlReturn that lowered CR8 (step {lowered_at}): {returns_before:?} VtlReturns before it, expected 3"
        );
    }
    if !f.is_empty() {
        bail!("{f}runner log: {events:?}");
    }
    Ok(Outcome::Pass)
}
