// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! An interrupt for VTL0 while VTL1 runs waits (TLFS: a lower VTL's interrupts wait until the
//! VP enters it again): VTL0 is never armed, so nothing stops VTL1; VTL0 takes it right after
//! VTL1 returns to it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};

use super::common::{
    count, dup_vm, enable_everywhere, first_round, start_all, unavailable, wait_done,
};
use crate::guest::pcpu;
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{self, call, control, msr, status, Step};
use crate::vm::{layout, GuestRecord, TestVm, DEFAULT_TIMEOUT};
use crate::vp::{Round, VpEvent, VsmVm};
use vtlkit_uapi::vtl::fixed_msi;

const VECTOR: u8 = 0x55;

pub(super) fn wake_vtl0_interrupt_waits_for_vtl0() -> TestResult {
    if let Some(why) = unavailable()? {
        return Ok(Outcome::Skip(why));
    }
    let mut vsm = VsmVm::new(1)?;
    // VTL1 issues HvCallPostMessage, which KVM forwards to userspace (VTL1's SynIC is active):
    // the test's handler runs while VTL1 is the VP's active VTL, sends VTL0 an MSI, and
    // watches VTL0 not take it for a while.
    let v1 = vsm.vm.vcpu(vsm.index(0, 1))?;
    hyperv::enable_synic(&v1.fd)?;
    hyperv::set_msr(&v1.fd, msr::SCONTROL, 1)?;
    let vmfd = dup_vm(&vsm)?;
    let mem = Arc::clone(&vsm.vm.mem);
    let seen = Arc::new(AtomicI64::new(-1));
    let seen2 = Arc::clone(&seen);
    let count_gpa = TestVm::pcpu_gpa(vsm.index(0, 0)) + pcpu::IRQ_COUNTS + 4 * u64::from(VECTOR);
    vsm.on_unhandled_hcall(move |vp, vtl, exit| {
        if (vp, vtl, exit.control.code()) != (0, 1, call::POST_MESSAGE) {
            return Ok(status::INVALID_HYPERCALL_CODE);
        }
        let n = vmfd
            .signal_msi(fixed_msi(0, 0, VECTOR))
            .map_err(|e| anyhow!("KVM_SIGNAL_MSI to VTL0: {e}"))?;
        if n != 1 {
            return Err(anyhow!("the MSI to VTL0 reached {n} vCPUs"));
        }
        std::thread::sleep(Duration::from_millis(200));
        seen2.store(i64::from(mem.read_u32(count_gpa)?), Ordering::SeqCst);
        Ok(status::SUCCESS)
    });
    let mut programs = enable_everywhere(&vsm, 1)?;
    let k = first_round(1, 0);
    let mut r = Round::new(0x70, false);
    r.vtl1_hcall = Some((
        control::word(call::POST_MESSAGE, false, 0, 0),
        vsm_input_page(),
        0,
    ));
    vsm.write_round(0, k, &r)?;
    programs[0].push(Step::VtlCall {
        block: VsmVm::block_gpa(0, k),
    });
    programs[0].push(Step::WaitIrqs {
        vector: VECTOR,
        count: 1,
    });
    let (running, _) = start_all(&mut vsm, programs)?;
    let running = wait_done(running, 1, DEFAULT_TIMEOUT)?;
    let events = running.events(0);
    drop(running);
    let mut f = String::new();
    let during = seen.load(Ordering::SeqCst);
    if during != 0 {
        let _ = writeln!(
            f,
            "VTL0 had handled vector {VECTOR:#x} {during} times 200 ms after it was sent while VTL1 was active (-1: the handler never ran), expected 0"
        );
    }
    let seen_r = vsm.read_round(0, k)?;
    if seen_r.vtl1_hcall_result != status::SUCCESS {
        let _ = writeln!(
            f,
            "VTL1's HvCallPostMessage returned {:#x}",
            seen_r.vtl1_hcall_result
        );
    }
    let c0 = count(&vsm, 0, 0, VECTOR)?;
    let c1 = count(&vsm, 0, 1, VECTOR)?;
    if (c0, c1) != (1, 0) {
        let _ = writeln!(
            f,
            "vector {VECTOR:#x}: VTL0 handled it {c0} times, VTL1 {c1}; expected 1 and 0"
        );
    }
    // Taken the moment VTL0 ran again: at the instruction after its VtlCall.
    let rec = GuestRecord::read(&vsm.vm.mem, vsm.index(0, 0))?;
    let intel = vsm
        .vm
        .mem
        .read_u64(TestVm::pcpu_gpa(vsm.index(0, 0)) + pcpu::HYPERCALL_VMCALL)?
        != 0;
    let after = layout::CODE + crate::guest::hcall_insn_offsets(intel).1;
    if rec.last_vector != u64::from(VECTOR) || rec.last_irq_rip != after {
        let _ = writeln!(
            f,
            "VTL0's last interrupt was vector {:#x} at RIP {:#x}, expected {VECTOR:#x} right after its VtlCall ({after:#x})",
            rec.last_vector, rec.last_irq_rip
        );
    }
    if events.iter().any(|e| {
        matches!(
            e,
            VpEvent::Interrupted { .. } | VpEvent::NotifyResumed { .. }
        )
    }) {
        let _ = writeln!(
            f,
            "an event notification stopped a VTL for VTL0's interrupt"
        );
    }
    if !f.is_empty() {
        bail!("{f}runner log: {events:?}");
    }
    Ok(Outcome::Pass)
}

/// Some guest RAM for HvCallPostMessage's input GPA (KVM forwards the call without reading it).
fn vsm_input_page() -> u64 {
    crate::vp::vsm_layout::ENABLE_INPUT
}
