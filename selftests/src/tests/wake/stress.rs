// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Several VPs under cross-VTL interrupt load for a fixed time: host threads send MSIs to the
//! VTL1 and the VTL0 of every VP while each VTL0 spins (interrupts disabled but for a short
//! window every 256 iterations) and each VTL1 is entered only by its interrupts. A sender sends
//! the next interrupt to a (VP, VTL) only once the previous one was handled, so none can
//! merge with another in IRR: at the end every VTL must have handled exactly what was sent to
//! it, and every VP must have finished (none stuck).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::common::{
    count_gpa, dup_vm, enable_everywhere, int_entries, interrupted, start_all, tsc_hz, unavailable,
    wait_done, wait_until, GATE2,
};
use crate::guest::{pcpu, ucall};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::Step;
use crate::vm::{TestVm, DEFAULT_TIMEOUT};
use crate::vp::VsmVm;
use vtlkit_uapi::vtl::fixed_msi;

const VPS: u32 = 4;
const SECONDS: u64 = 5;
/// Vector of the interrupts to VTL1 and to VTL0.
const VEC: [u8; 2] = [0x71, 0x72];

pub(super) fn wake_stress_cross_vtl() -> TestResult {
    if let Some(why) = unavailable()? {
        return Ok(Outcome::Skip(why));
    }
    let mut vsm = VsmVm::new(VPS)?;
    let mut programs = enable_everywhere(&vsm, VPS)?;
    let hz = tsc_hz(&vsm);
    let mut spins = Vec::new();
    for (vp, p) in programs.iter_mut().enumerate() {
        p.push(Step::Gate(GATE2));
        spins.push(p.len());
        // Until the host sets ARGS[0] of this VTL0 (the stop flag), at most 60 s.
        p.push(Step::SpinUntil {
            addr: TestVm::pcpu_gpa(vsm.index(vp as u32, 0)) + pcpu::ARGS,
            value: 1,
            cycles: 60 * hz,
            windows: true,
        });
    }
    let (running, loaded) = start_all(&mut vsm, programs)?;
    for vp in 0..VPS {
        running.wait_sync(vp, 0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)?;
    }
    for vp in 0..VPS {
        vsm.vm.set_pcpu(vsm.index(vp, 0), pcpu::GO, GATE2)?;
    }
    let entries_before: Vec<u64> = (0..VPS)
        .map(|vp| int_entries(&vsm, vp))
        .collect::<Result<_>>()?;
    let base: Vec<[u32; 2]> = (0..VPS)
        .map(|vp| -> Result<[u32; 2]> {
            Ok([
                vsm.vm.mem.read_u32(count_gpa(&vsm, vp, 1, VEC[0]))?,
                vsm.vm.mem.read_u32(count_gpa(&vsm, vp, 0, VEC[1]))?,
            ])
        })
        .collect::<Result<_>>()?;
    // sent[vp][0]: to VTL1, sent[vp][1]: to VTL0.
    let sent: Arc<Vec<[AtomicU64; 2]>> = Arc::new(
        (0..VPS)
            .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..2u32 {
        let vmfd = dup_vm(&vsm)?;
        let mem = Arc::clone(&vsm.vm.mem);
        let sent = Arc::clone(&sent);
        let stop = Arc::clone(&stop);
        let gpas: Vec<[u64; 2]> = (0..VPS)
            .map(|vp| {
                [
                    count_gpa(&vsm, vp, 1, VEC[0]),
                    count_gpa(&vsm, vp, 0, VEC[1]),
                ]
            })
            .collect();
        let base = base.clone();
        senders.push(std::thread::spawn(move || -> Result<()> {
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(t);
            // Thread t owns the VPs with vp % 2 == t: one sender per target.
            let mine: Vec<u32> = (0..VPS).filter(|vp| vp % 2 == t).collect();
            while !stop.load(Ordering::SeqCst) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let vp = mine[(rng % mine.len() as u64) as usize];
                let which = ((rng >> 8) & 1) as usize;
                let handled = u64::from(
                    mem.read_u32(gpas[vp as usize][which])?
                        .wrapping_sub(base[vp as usize][which]),
                );
                let s = &sent[vp as usize][which];
                if handled < s.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                    continue;
                }
                let group = if which == 0 { 1 } else { 0 };
                let n = vmfd
                    .signal_msi(fixed_msi(group, vp, VEC[which]))
                    .map_err(|e| anyhow!("KVM_SIGNAL_MSI: {e}"))?;
                if n != 1 {
                    bail!("an MSI to VP {vp} group {group} reached {n} vCPUs");
                }
                s.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }));
    }
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(SECONDS));
    stop.store(true, Ordering::SeqCst);
    let mut f = String::new();
    for s in senders {
        match s.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = writeln!(f, "a sender failed: {e:#}");
            }
            Err(_) => {
                let _ = writeln!(f, "a sender panicked");
            }
        }
    }
    let elapsed = t0.elapsed();
    for vp in 0..VPS {
        vsm.vm.set_pcpu(vsm.index(vp, 0), pcpu::ARGS, 1)?;
    }
    let running = wait_done(running, VPS, DEFAULT_TIMEOUT)?;
    // VTL0s now halt with interrupts enabled; everything sent must be handled exactly once.
    let settled = wait_until(DEFAULT_TIMEOUT, || {
        for vp in 0..VPS {
            for which in 0..2 {
                let (vtl, v) = if which == 0 { (1, VEC[0]) } else { (0, VEC[1]) };
                let got = vsm.vm.mem.read_u32(count_gpa(&vsm, vp, vtl, v))?;
                let want = sent[vp as usize][which].load(Ordering::SeqCst);
                if u64::from(got.wrapping_sub(base[vp as usize][which])) != want {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })?;
    let mut totals = [0u64; 2];
    let mut switches = 0;
    for vp in 0..VPS {
        for which in 0..2 {
            let (vtl, v) = if which == 0 { (1, VEC[0]) } else { (0, VEC[1]) };
            let got = u64::from(
                vsm.vm
                    .mem
                    .read_u32(count_gpa(&vsm, vp, vtl, v))?
                    .wrapping_sub(base[vp as usize][which]),
            );
            let want = sent[vp as usize][which].load(Ordering::SeqCst);
            totals[which] += want;
            if got != want {
                let _ = writeln!(
                    f,
                    "VP {vp} VTL{vtl}: handled {got} of the {want} interrupts sent to it"
                );
            }
            // The other VTL never handled this vector.
            let other = vsm.vm.mem.read_u32(count_gpa(&vsm, vp, 1 - vtl, v))?;
            if other != 0 {
                let _ = writeln!(
                    f,
                    "VP {vp} VTL{}: handled {other} interrupts meant for VTL{vtl}",
                    1 - vtl
                );
            }
        }
        let entries = int_entries(&vsm, vp)? - entries_before[vp as usize];
        let want = sent[vp as usize][0].load(Ordering::SeqCst);
        if want > 0 && entries == 0 {
            let _ = writeln!(f, "VP {vp}: VTL1 was never entered by an interrupt");
        }
        switches += interrupted(&running, vp);
        let out = loaded[vp as usize].outcome(&vsm.vm.mem, spins[vp as usize])?;
        if out.rcx != 1 {
            let _ = writeln!(
                f,
                "VP {vp}: VTL0's spin ended with {} (1 = stopped by the host)",
                out.rcx
            );
        }
    }
    if !settled && f.is_empty() {
        let _ = writeln!(f, "the counts did not settle");
    }
    drop(running);
    println!(
        "# wake stress: {VPS} VPs, {:.1} s: {} MSIs to VTL1s, {} to VTL0s, {switches} interrupt entries into VTL1",
        elapsed.as_secs_f64(),
        totals[0],
        totals[1]
    );
    if totals[0] == 0 || totals[1] == 0 {
        let _ = writeln!(f, "nothing was sent to one of the VTLs: {totals:?}");
    }
    if !f.is_empty() {
        bail!("{f}");
    }
    Ok(Outcome::Pass)
}
