// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! A halted VTL0 (HLT inside KVM_RUN) with an interrupt for VTL1 wakes into VTL1; after VTL1
//! returns, VTL0 is halted again (its own wake-up condition has not changed) until an
//! interrupt of its own arrives.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;

use super::common::{
    count, enable_everywhere, int_entries, msi, start_all, unavailable, vcpu_debugfs, wait_debugfs,
    wait_done, wait_until,
};
use crate::guest::{pcpu, ucall};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::Step;
use crate::vm::{TestVm, DEFAULT_TIMEOUT};
use crate::vp::VsmVm;

const V0: u8 = 0x56;
const V1: u8 = 0x57;

pub(super) fn wake_halted_vtl0_wakes_into_vtl1() -> TestResult {
    if let Some(why) = unavailable()? {
        return Ok(Outcome::Skip(why));
    }
    let mut vsm = VsmVm::new(1)?;
    let mut programs = enable_everywhere(&vsm, 1)?;
    programs[0].push(Step::Gate(super::common::GATE2));
    let wait_step = programs[0].len();
    programs[0].push(Step::WaitIrqs {
        vector: V0,
        count: 1,
    });
    let (running, _) = start_all(&mut vsm, programs)?;
    let v0 = vsm.index(0, 0);
    running.wait_sync(0, 0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)?;
    vsm.vm.set_pcpu(v0, pcpu::GO, super::common::GATE2)?;
    let steps_gpa = TestVm::pcpu_gpa(v0) + pcpu::HV_STEPS;
    let mut f = String::new();
    // VTL0 reaches its halt (debugfs run_state says so when the kernel has it).
    let halted = wait_debugfs(&vsm, v0, "run_state", "halted", DEFAULT_TIMEOUT);
    if halted.is_none() {
        std::thread::sleep(Duration::from_millis(300));
    }
    if halted == Some(false) {
        let _ = writeln!(
            f,
            "VTL0 never showed run_state 'halted' before the test ({:?})",
            vcpu_debugfs(&vsm, v0, "run_state")
        );
    }
    let steps_before = vsm.vm.mem.read_u64(steps_gpa)?;
    let vtl1_armed = vcpu_debugfs(&vsm, vsm.index(0, 1), "event_notify_target");
    msi(&vsm, 0, 1, V1)?;
    let handled = wait_until(DEFAULT_TIMEOUT, || Ok(count(&vsm, 0, 1, V1)? >= 1))?;
    if !handled {
        let _ = writeln!(
            f,
            "VTL1 never handled vector {V1:#x} while VTL0 was halted (VTL1's event_notify_target was {vtl1_armed:?})"
        );
    }
    // Back to VTL0, still halted: its program did not move on.
    let again = wait_debugfs(&vsm, v0, "run_state", "halted", DEFAULT_TIMEOUT);
    if again == Some(false) {
        let _ = writeln!(
            f,
            "after VTL1 returned, VTL0's run_state is {:?}, expected halted again",
            vcpu_debugfs(&vsm, v0, "run_state")
        );
    }
    std::thread::sleep(Duration::from_millis(50));
    let steps_after = vsm.vm.mem.read_u64(steps_gpa)?;
    if steps_after != steps_before || count(&vsm, 0, 0, V0)? != 0 {
        let _ = writeln!(
            f,
            "VTL0 left its halt for VTL1's interrupt (steps {steps_before} -> {steps_after}, step {wait_step} waits)"
        );
    }
    if running.active_vtl(0) != Some(0) {
        let _ = writeln!(
            f,
            "VTL {:?} active after VTL1's return",
            running.active_vtl(0)
        );
    }
    // Now VTL0's own interrupt ends its wait.
    msi(&vsm, 0, 0, V0)?;
    let running = wait_done(running, 1, DEFAULT_TIMEOUT)?;
    let events = running.events(0);
    drop(running);
    let (c0, c1) = (count(&vsm, 0, 0, V0)?, count(&vsm, 0, 1, V1)?);
    if (c0, c1) != (1, 1) {
        let _ = writeln!(
            f,
            "VTL0 handled {V0:#x} {c0} times, VTL1 {V1:#x} {c1} times; expected once each"
        );
    }
    if int_entries(&vsm, 0)? == 0 {
        let _ = writeln!(f, "VTL1 saw no entry with reason Interrupt");
    }
    if !f.is_empty() {
        bail!("{f}runner log: {events:?}");
    }
    Ok(Outcome::Pass)
}
