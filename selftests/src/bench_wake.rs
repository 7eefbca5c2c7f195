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
//! Host wall-clock time from before the ioctl to the poll that sees the count; the host polls
//! with 20 µs sleeps, so that it does not take CPU time from the guest (a spinning poller
//! delayed every sample by a scheduler tick, about 12 ms, under TCG), which bounds the
//! resolution. (The guest's TSC is no better a clock here: under TCG the nested guest's TSC
//! does not keep a fixed offset to its host's.) Output:
//! ```text
//! vtlkit-bench-wake: VARIANT samples N median_us M p99_us P
//! ```
//! Figures only: nothing about speed is asserted.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::guest::{pcpu, ucall};
use crate::hyperv::Step;
use crate::tests::wake::common::{
    count_gpa, enable_everywhere, msi, start_all, unavailable, GATE2,
};
use crate::vm::DEFAULT_TIMEOUT;
use crate::vp::VsmVm;

const VEC0: u8 = 0x58;
const VEC1: u8 = 0x59;

/// Run `samples` samples of each variant and print the figures.
pub fn run(samples: u32, out: &mut dyn Write) -> Result<()> {
    if let Some(why) = unavailable()? {
        bail!("cannot run: {why}");
    }
    let mut vsm = VsmVm::new(1)?;
    let mut programs = enable_everywhere(&vsm, 1)?;
    programs[0].push(Step::Gate(GATE2));
    let (running, _) = start_all(&mut vsm, programs)?;
    running.wait_sync(0, 0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)?;
    let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let gpas = [count_gpa(&vsm, 0, 0, VEC0), count_gpa(&vsm, 0, 1, VEC1)];
    for i in 0..2 * samples {
        let which = (i % 2) as usize;
        let before = vsm.vm.mem.read_u32(gpas[which])?;
        let t0 = Instant::now();
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
        lat[which].push(t0.elapsed());
    }
    vsm.vm.set_pcpu(vsm.index(0, 0), pcpu::GO, 0)?;
    drop(running);
    for (which, name) in [(0, "running-vtl0"), (1, "parked-vtl1")] {
        let v = &mut lat[which];
        v.sort();
        let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        writeln!(
            out,
            "vtlkit-bench-wake: {name} samples {} median_us {:.1} p99_us {:.1}",
            v.len(),
            pick(0.5).as_secs_f64() * 1e6,
            pick(0.99).as_secs_f64() * 1e6
        )?;
    }
    Ok(())
}
