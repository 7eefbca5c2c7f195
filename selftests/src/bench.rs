// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! IPI delivery benchmark (`vtlkit-selftests --bench`): how many acknowledged IPIs per second
//! one nested vCPU can send another, with and without APIC groups in use.
//!
//! Each run is a fresh nested VM with four vCPUs in x2APIC mode, all at
//! `vtlkit_guest_apic_main`. The sender runs one [`prog::PING`] command: N fixed IPIs
//! (x2APIC ICR write, physical destination), each sent only once the receiver's interrupt
//! handler has counted the previous one. The other two vCPUs only halt. The rate is N over
//! the host wall-clock time from GO to the sender's SYNC (the guest's TSC count is printed
//! too). Variants:
//! * `unused`: a VM that never opts in to APIC groups: vCPU 0 sends to APIC ID 1 (vCPU 1), as
//!   on stock;
//! * `groups`: the VM opts in (KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS)); vCPUs 2 and 3 are group 1
//!   (VTL 1) with APIC IDs 0 and 1, their siblings vCPUs 0 and 1 are group 0 with the same
//!   APIC IDs; vCPU 2 sends to APIC ID 1, which must reach vCPU 3 only. Needs the series
//!   (skipped with a reason on a stock kernel).
//!
//! Output, one line per repetition and one per variant (the host's scripts/bench.sh reads it):
//! ```text
//! vtlkit-bench-rep: VARIANT REP IPIS SECONDS IPIS_PER_S TSC_CYCLES_PER_IPI
//! vtlkit-bench: VARIANT median IPIS_PER_S
//! vtlkit-bench: VARIANT skip REASON
//! ```
//! No timing is asserted; what is checked is that every IPI reached the receiver and none a
//! sibling.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vtlkit_uapi::ApicGroup;

use crate::guest::{pcpu, prog, ucall, Entry};
use crate::vm::{layout, open_kvm, TestVm, VmOptions, DEFAULT_TIMEOUT};

/// The vector the benchmark IPIs use.
const VECTOR: u8 = 0x80;
/// vCPUs per benchmark VM (sender, receiver and two idle ones).
const VCPUS: usize = 4;

/// Which setup to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// No vCPU is ever assigned to a group.
    Unused,
    /// Sender and receiver in group 1, siblings with the same APIC IDs in group 0.
    Groups,
}

impl Variant {
    /// Name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Unused => "unused",
            Variant::Groups => "groups",
        }
    }
}

/// Benchmark parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// IPIs per repetition.
    pub ipis: u32,
    /// Repetitions per variant (each in a fresh VM).
    pub reps: u32,
}

/// One repetition's measurement.
struct Sample {
    secs: f64,
    tsc_cycles: u64,
}

/// (sender index, receiver index, destination APIC ID) of a variant; the vCPU at index i has
/// vcpu_id i.
fn roles(v: Variant) -> (usize, usize, u32) {
    match v {
        Variant::Unused => (0, 1, 1),
        Variant::Groups => (2, 3, 1),
    }
}

/// The `groups` topology by vCPU index: (group, APIC ID, VTL).
const GROUPS: [(u32, u32, u8); VCPUS] = [(0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 1)];

/// One repetition in a fresh VM.
fn run_once(v: Variant, ipis: u32) -> Result<Sample> {
    let mut vm = TestVm::new(VmOptions {
        apic_groups: v == Variant::Groups,
        ..Default::default()
    })?;
    for (id, &(group, apic_id, vtl)) in GROUPS.iter().enumerate() {
        match v {
            Variant::Unused => vm.add_vcpu(id as u64, Entry::ApicMain)?,
            Variant::Groups => vm.add_vcpu_in_group(
                id as u64,
                Entry::ApicMain,
                ApicGroup {
                    group,
                    apic_id,
                    vtl,
                },
            )?,
        };
    }
    for i in 0..VCPUS {
        vm.set_pcpu(i, pcpu::APIC_MODE, pcpu::APIC_MODE_X2APIC)?;
    }
    let (sender, receiver, dest) = roles(v);
    let counter = TestVm::pcpu_gpa(receiver) + pcpu::IRQ_COUNTS + 4 * u64::from(VECTOR);
    // The sender's program: one PING, then END. ICR low word = the vector alone: fixed
    // delivery, physical destination, no shorthand.
    let entry = layout::SHARED;
    vm.set_one_command(
        sender,
        entry,
        &[prog::PING, dest.into(), VECTOR.into(), ipis.into(), counter],
    )?;

    let running = vm.start()?;
    for i in 0..VCPUS {
        running
            .wait_sync(i, ucall::STAGE_APIC_READY, DEFAULT_TIMEOUT)
            .with_context(|| format!("vCPU {i} enabling its APIC"))?;
    }
    // Generous: TCG with nested SVM manages a few thousand IPIs per second at best.
    let timeout = DEFAULT_TIMEOUT + Duration::from_millis(50) * ipis;
    let start = Instant::now();
    vm.set_pcpu(sender, pcpu::GO, 1)?;
    if let Err(e) = running.wait_sync(sender, ucall::STAGE_SENT, timeout) {
        let state = running.stop_and_describe();
        bail!(
            "{} IPIs from vCPU {sender}: {e:#}\nvCPU state: {state}",
            ipis
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let tsc_cycles = vm.mem.read_u64(entry + prog::RESULT)?;
    running.stop()?;

    // Every IPI reached the receiver, none another vCPU (a sibling with the same APIC ID).
    for i in 0..VCPUS {
        let got = vm
            .mem
            .read_u32(TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(VECTOR))?;
        let want = if i == receiver { ipis } else { 0 };
        if got != want {
            bail!("vCPU {i} handled {got} IPIs on vector {VECTOR:#x}, expected {want}");
        }
    }
    Ok(Sample { secs, tsc_cycles })
}

/// The median of `v` (mean of the middle two for an even count); `None` if empty. Shared with
/// [`crate::bench_vtl`].
pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Why a variant cannot run on this kernel, if it cannot.
fn skip_reason(v: Variant) -> Result<Option<String>> {
    if v == Variant::Unused {
        return Ok(None);
    }
    let kvm = open_kvm()?;
    let n = vtlkit_uapi::apic_groups_supported(&kvm);
    Ok((n < 2).then(|| {
        format!("KVM_CAP_APIC_GROUPS is {n}: this kernel does not carry the series (stock)")
    }))
}

/// Run every variant `p.reps` times and print the results. Errors end the benchmark.
pub fn run(p: Params, out: &mut impl std::io::Write) -> Result<()> {
    writeln!(
        out,
        "# vtlkit-bench: {} acknowledged x2APIC IPIs (fixed, physical) per repetition, {} repetitions per variant",
        p.ipis, p.reps
    )?;
    for v in [Variant::Unused, Variant::Groups] {
        if let Some(reason) = skip_reason(v)? {
            writeln!(out, "vtlkit-bench: {} skip {reason}", v.name())?;
            continue;
        }
        let mut rates = Vec::new();
        for rep in 1..=p.reps {
            let s = run_once(v, p.ipis)
                .with_context(|| format!("variant {}, repetition {rep}", v.name()))?;
            let rate = f64::from(p.ipis) / s.secs;
            writeln!(
                out,
                "vtlkit-bench-rep: {} {rep} {} {:.3} {rate:.0} {}",
                v.name(),
                p.ipis,
                s.secs,
                s.tsc_cycles / u64::from(p.ipis.max(1))
            )?;
            out.flush()?;
            rates.push(rate);
        }
        if let Some(m) = median(rates) {
            writeln!(out, "vtlkit-bench: {} median {m:.0}", v.name())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn roles_stay_distinct() {
        for v in [Variant::Unused, Variant::Groups] {
            let (s, r, _) = roles(v);
            assert!(s != r && s < VCPUS && r < VCPUS);
        }
    }
}
