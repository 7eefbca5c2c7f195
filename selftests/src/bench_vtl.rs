// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! VTL switch benchmark (`vtlkit-selftests --bench-vtl`): VtlCall->VtlReturn round trips per
//! second through the framework's VP runner and the uapi VTL state machine, beside a plain
//! hypercall exit to userspace and back on the same kernel.
//!
//! Each repetition is a fresh [`VsmVm`] with one VP. Variants:
//! * `vtl-round-trip`: VTL0 enables VTL1 (whose entry, in benchmark mode, does nothing but a
//!   fast VtlReturn), warms up with one VtlCall, then makes N VtlCalls in a row. Each round
//!   trip is two `KVM_EXIT_HYPERV` exits, two answers of `Partition::handle_hypercall` (with
//!   their register moves: GPRs, SREGS, debug registers, XCRs, XSAVE) and two sibling switches.
//! * `hcall-exit`: VTL0 (its SynIC on, which KVM wants before forwarding it) makes N
//!   HvCallPostMessage calls, which KVM forwards to userspace; the runner offers each to the
//!   state machine, which does not answer it, and the test's handler answers success at once.
//!   One exit, no switch: the floor a VTL switch is built on.
//!
//! The rate is N over the host's wall-clock time from releasing the guest's gate to its
//! report; the guest's TSC cycles per operation are printed too. Output:
//! ```text
//! vtlkit-bench-vtl-rep: VARIANT REP N SECONDS OPS_PER_S TSC_CYCLES_PER_OP
//! vtlkit-bench-vtl: VARIANT median OPS_PER_S
//! ```
//! Figures only: nothing about speed is asserted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::median;
use crate::guest::{pcpu, ucall};
use crate::hyperv::{self, call, control, Program, Step};
use crate::vm::DEFAULT_TIMEOUT;
use crate::vp::{enable_partition_vtl, VsmVm};

/// Which loop to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// VtlCall -> VtlReturn (fast) round trips.
    RoundTrip,
    /// HvCallPostMessage, answered by the host at once.
    HcallExit,
}

impl Variant {
    /// Name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Variant::RoundTrip => "vtl-round-trip",
            Variant::HcallExit => "hcall-exit",
        }
    }
}

/// Benchmark parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Operations (round trips or hypercalls) per repetition.
    pub ops: u32,
    /// Repetitions per variant.
    pub reps: u32,
}

/// The gate token the guest waits at before the measured loop (GO is 1 once it started).
const GATE: u64 = 2;

/// One repetition: (seconds, TSC cycles) of `ops` operations.
fn run_once(v: Variant, ops: u32) -> Result<(f64, u64)> {
    if !vtlkit_uapi::hyperv_vsm_supported(&crate::vm::open_kvm()?) {
        bail!("KVM_CAP_HYPERV_VSM is 0: this kernel lacks the Hyper-V VTL patches");
    }
    let mut vsm = VsmVm::new(1)?;
    let (v0, v1) = (vsm.index(0, 0), vsm.index(0, 1));
    vsm.vm.set_pcpu(v1, pcpu::VSM_BENCH, 1)?;
    // Both variants enable VTL1 first, so the measured VMs are alike.
    let mut steps = vec![
        vsm.enable_assist_page(0, 0),
        Step::Hcall(enable_partition_vtl(1)),
        vsm.enable_vp_vtl(0, None),
    ];
    // Each variant: one operation to warm up, the gate, then the measured loop of `ops`.
    let post = |count: u64| Step::HcallLoop {
        control: control::word(call::POST_MESSAGE, false, 0, 0),
        rdx: hyperv::scratch_page(v0),
        r8: 0,
        count,
    };
    // HvCallPostMessage calls the handler answered (hcall-exit).
    let posted = Arc::new(AtomicU64::new(0));
    let measured = match v {
        Variant::RoundTrip => {
            steps.push(Step::VtlCallLoop(1));
            steps.push(Step::Gate(GATE));
            Step::VtlCallLoop(ops.into())
        }
        Variant::HcallExit => {
            hyperv::enable_synic(&vsm.vm.vcpu(v0)?.fd)?;
            let posted = Arc::clone(&posted);
            vsm.on_unhandled_hcall(move |_, _, exit| match exit.control.code() {
                call::POST_MESSAGE => {
                    posted.fetch_add(1, Ordering::Relaxed);
                    Ok(hyperv::status::SUCCESS)
                }
                other => bail!("unexpected hypercall {other:#x}"),
            });
            steps.push(post(1));
            steps.push(Step::Gate(GATE));
            post(ops.into())
        }
    };
    let measured_step = steps.len();
    steps.push(measured);
    let prog = steps.into_iter().fold(Program::new(), Program::step);
    let loaded = vsm.vm.load_hv_program(v0, &prog)?;
    let running = vsm.start()?;
    running.wait_sync(0, 0, ucall::STAGE_HV_READY, DEFAULT_TIMEOUT)?;
    vsm.vm.set_pcpu(v0, pcpu::GO, 1)?;
    running
        .wait_sync(0, 0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)
        .context("VTL0 setting up VTL1 and warming up")?;
    let start = Instant::now();
    vsm.vm.set_pcpu(v0, pcpu::GO, GATE)?;
    let timeout = DEFAULT_TIMEOUT + Duration::from_millis(20) * ops;
    if let Err(e) = running.wait_sync(0, 0, ucall::STAGE_HV_DONE, timeout) {
        let state = running.stop_and_describe();
        bail!("{ops} operations: {e:#}\nstate: {state}");
    }
    let secs = start.elapsed().as_secs_f64();
    let cycles = loaded.outcome(&vsm.vm.mem, measured_step)?.rax;
    let stopped = running.stop()?;
    let switches = stopped.switches(0).len() as u64;
    let want = match v {
        Variant::RoundTrip => 2 * (u64::from(ops) + 1),
        Variant::HcallExit => 0,
    };
    if switches != want {
        bail!("{} switches, expected {want}", switches);
    }
    // Every HvCallPostMessage (the warm-up one and the measured ones) reached the handler.
    let want_posted = match v {
        Variant::RoundTrip => 0,
        Variant::HcallExit => u64::from(ops) + 1,
    };
    let got_posted = posted.load(Ordering::Relaxed);
    if got_posted != want_posted {
        bail!("the handler answered {got_posted} HvCallPostMessage calls, expected {want_posted}");
    }
    Ok((secs, cycles))
}

/// Run both variants `p.reps` times and print the results.
pub fn run(p: Params, out: &mut impl std::io::Write) -> Result<()> {
    writeln!(
        out,
        "# vtlkit-bench-vtl: {} operations per repetition, {} repetitions per variant",
        p.ops, p.reps
    )?;
    for v in [Variant::HcallExit, Variant::RoundTrip] {
        let mut rates = Vec::new();
        for rep in 1..=p.reps {
            let (secs, cycles) =
                run_once(v, p.ops).with_context(|| format!("{}, repetition {rep}", v.name()))?;
            let rate = f64::from(p.ops) / secs;
            writeln!(
                out,
                "vtlkit-bench-vtl-rep: {} {rep} {} {secs:.3} {rate:.0} {}",
                v.name(),
                p.ops,
                cycles / u64::from(p.ops.max(1))
            )?;
            out.flush()?;
            rates.push(rate);
        }
        if let Some(m) = median(rates) {
            writeln!(out, "vtlkit-bench-vtl: {} median {m:.0}", v.name())?;
        }
    }
    Ok(())
}
