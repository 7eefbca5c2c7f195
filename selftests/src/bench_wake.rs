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
//! The latency is measured in TSC cycles, from the host's TSC just before `KVM_SIGNAL_MSI` to
//! the guest's TSC when its handler counted the interrupt (the handler records it), with the
//! vCPUs' TSC offset (read once before they run: guest IA32_TSC against the host's RDTSC)
//! taken out, and converted with the guest's TSC rate. The host waits for each sample with
//! short sleeps, so that it does not take CPU time from the guest. Output:
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
    let hz = crate::tests::wake::common::tsc_hz(&vsm) as f64;
    // Guest TSC - host TSC, the same for every vCPU of the VM (none writes its TSC).
    let offset = {
        let v = vsm.vm.vcpu(vsm.index(0, 1))?;
        let host = rdtsc();
        let guest = vtlkit_uapi::vtl::VtlVcpu::get_msr(&v.fd, 0x10)
            .map_err(|e| anyhow::anyhow!("KVM_GET_MSRS(IA32_TSC): {e}"))?;
        guest.wrapping_sub(host)
    };
    let mut programs = enable_everywhere(&vsm, 1)?;
    programs[0].push(Step::Gate(GATE2));
    let (running, _) = start_all(&mut vsm, programs)?;
    running.wait_sync(0, 0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)?;
    let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let tsc_gpas = [
        TestVm::pcpu_gpa(vsm.index(0, 0)) + pcpu::LAST_IRQ_TSC,
        TestVm::pcpu_gpa(vsm.index(0, 1)) + pcpu::LAST_IRQ_TSC,
    ];
    let gpas = [count_gpa(&vsm, 0, 0, VEC0), count_gpa(&vsm, 0, 1, VEC1)];
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
            std::thread::sleep(Duration::from_micros(200));
        }
        let handled = vsm.vm.mem.read_u64(tsc_gpas[which])?;
        let cycles = handled.wrapping_sub(offset).wrapping_sub(sent) as i64;
        lat[which].push(cycles as f64 / hz * 1e6);
    }
    vsm.vm.set_pcpu(vsm.index(0, 0), pcpu::GO, 0)?;
    drop(running);
    for (which, name) in [(0, "running-vtl0"), (1, "parked-vtl1")] {
        let v = &mut lat[which];
        v.sort_by(f64::total_cmp);
        let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        writeln!(
            out,
            "vtlkit-bench-wake: {name} samples {} median_us {:.1} p99_us {:.1}",
            v.len(),
            pick(0.5),
            pick(0.99)
        )?;
    }
    Ok(())
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; x86-64 always has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}
