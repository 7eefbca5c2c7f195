// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Wake-up latency benchmark (`vtlkit-selftests --bench-wake`): how long an interrupt sent to a
//! parked VTL1 takes until VTL1's handler has run, beside the same for a vCPU that is running
//! (the floor), in one VM and one run.
//!
//! One VP with VTL1 enabled; VTL0 waits at a gate with interrupts enabled (a PAUSE loop, in
//! guest mode). Samples alternate:
//! * `running-vtl0`: `KVM_SIGNAL_MSI` to VTL0 (group 0), the host polls VTL0's interrupt count
//!   in guest memory until its handler counted it;
//! * `parked-vtl1`: `KVM_SIGNAL_MSI` to VTL1 (group 1, parked and armed): VTL0 exits with
//!   `KVM_EXIT_EVENT_NOTIFY`, the runner switches (state machine, register moves), VTL1 takes
//!   the interrupt, and returns; the time is until VTL1's handler counted it.
//!
//! Two clocks, both printed. `vtlkit-bench-wake:` is the wall-clock time of this process (the
//! nested VMs' host, i.e. the QEMU guest under TCG) from before the ioctl to the poll that sees
//! the count; it polls with 20 µs sleeps, so that it does not take CPU time from the guest (a
//! spinning poller delayed every sample by a scheduler tick, about 12 ms, under TCG), which
//! bounds its resolution to a sleep (20 µs plus the timer slack, 50 µs). `vtlkit-bench-wake-tsc:`
//! is the nested guest's TSC when its handler took the interrupt (the handler stores it before
//! the count moves) minus this process's TSC just before the ioctl, less the vCPUs' TSC offset
//! (guest IA32_TSC against the host's RDTSC) read before the VM runs, converted with the VM's
//! TSC rate. It resolves what the poll cannot, but only while that offset holds: `outside`
//! counts the samples whose handler TSC, so converted, falls outside the poll's window (this
//! process's TSC before the ioctl and when the poll saw the count). Under multi-threaded TCG
//! the offset moves (the nested guest's TSC keeps no fixed offset to its host's there), so use
//! the poll figures there; under QEMU's `-icount` every clock follows the instructions executed
//! and the offset stays put. Output:
//! ```text
//! vtlkit-bench-wake: VARIANT samples N median_us M p99_us P
//! vtlkit-bench-wake-tsc: VARIANT samples N median_us M p99_us P tsc_khz K outside O
//! ```
//! Figures only: nothing about speed is asserted.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::guest::{pcpu, ucall};
use crate::hyperv::{self, Step};
use crate::tests::wake::common::{
    count_gpa, enable_everywhere, msi, start_all, tsc_hz, unavailable, GATE2,
};
use crate::vm::{TestVm, DEFAULT_TIMEOUT};
use crate::vp::VsmVm;

const VEC0: u8 = 0x58;
const VEC1: u8 = 0x59;

/// Run `samples` samples of each variant and print the figures.
pub fn run(samples: u32, out: &mut dyn Write) -> Result<()> {
    if let Some(why) = unavailable()? {
        bail!("cannot run: {why}");
    }
    let mut vsm = VsmVm::new(1)?;
    let hz = tsc_hz(&vsm) as f64;
    let offset = tsc_offset(&vsm)?;
    let mut programs = enable_everywhere(&vsm, 1)?;
    programs[0].push(Step::Gate(GATE2));
    let (running, _) = start_all(&mut vsm, programs)?;
    running.wait_sync(0, 0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)?;
    let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut lat_tsc: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut outside = [0u32; 2];
    let gpas = [count_gpa(&vsm, 0, 0, VEC0), count_gpa(&vsm, 0, 1, VEC1)];
    let tsc_gpas = [0, 1].map(|vtl| TestVm::pcpu_gpa(vsm.index(0, vtl)) + pcpu::LAST_IRQ_TSC);
    for i in 0..2 * samples {
        let which = (i % 2) as usize;
        let before = vsm.vm.mem.read_u32(gpas[which])?;
        let t0 = Instant::now();
        let sent = rdtsc();
        if which == 0 {
            msi(&vsm, 0, 0, VEC0)?;
        } else {
            msi(&vsm, 0, 1, VEC1)?;
        }
        loop {
            if vsm.vm.mem.read_u32(gpas[which])? != before {
                break;
            }
            if t0.elapsed() > DEFAULT_TIMEOUT {
                let state = running.stop_and_describe();
                bail!(
                    "sample {i}: the interrupt was not handled within {DEFAULT_TIMEOUT:?}; {state}"
                );
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        let seen = rdtsc();
        lat[which].push(t0.elapsed().as_secs_f64() * 1e6);
        // The handler stored its TSC before the count moved.
        let taken = vsm.vm.mem.read_u64(tsc_gpas[which])?.wrapping_sub(offset);
        let cycles = taken.wrapping_sub(sent) as i64;
        if cycles < 0 || taken > seen {
            outside[which] += 1;
        }
        lat_tsc[which].push(cycles as f64 / hz * 1e6);
    }
    vsm.vm.set_pcpu(vsm.index(0, 0), pcpu::GO, 0)?;
    drop(running);
    for (which, name) in [(0, "running-vtl0"), (1, "parked-vtl1")] {
        let (median, p99) = quantiles(&mut lat[which]);
        writeln!(
            out,
            "vtlkit-bench-wake: {name} samples {} median_us {median:.1} p99_us {p99:.1}",
            lat[which].len(),
        )?;
        let (median, p99) = quantiles(&mut lat_tsc[which]);
        writeln!(
            out,
            "vtlkit-bench-wake-tsc: {name} samples {} median_us {median:.1} p99_us {p99:.1} \
             tsc_khz {:.0} outside {}",
            lat_tsc[which].len(),
            hz / 1e3,
            outside[which]
        )?;
    }
    Ok(())
}

/// (median, 99th percentile) of `v` (sorted here; NaN if empty).
fn quantiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (pick(0.5), pick(0.99))
}

/// The VM's TSC offset: VTL1's guest IA32_TSC minus this host's TSC (every vCPU of the VM has
/// the same; none writes its TSC).
fn tsc_offset(vsm: &VsmVm) -> Result<u64> {
    let v = vsm.vm.vcpu(vsm.index(0, 1))?;
    let host = rdtsc();
    let guest = hyperv::get_msr(&v.fd, 0x10)?;
    Ok(guest.wrapping_sub(host))
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; x86-64 always has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}
