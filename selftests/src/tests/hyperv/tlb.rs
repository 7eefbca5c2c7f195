// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Hyper-V TLB-flush hypercalls reach only the sender's APIC group.
//!
//! The observable: KVM queues a flush-list hypercall's GVAs on each target vCPU and makes a
//! KVM_REQ_HV_TLB_FLUSH request; the target, when it next enters the guest, flushes each GVA
//! and counts each in its `tlb_flush` statistic (`kvm_hv_vcpu_flush_tlb()`, with TDP). A list of
//! [`GVAS`] GVAs therefore raises a target's `tlb_flush` by exactly that many; other flushes
//! (vCPU load, shadow MMU) add a few at most. The receivers spin in the guest (a program gate)
//! so a request's kick makes them process it at once.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::common::{build, groups_available, start_ready, two_vtls};
use crate::guest::{pcpu, ucall};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{call, control, Hypercall, Program, Step, VpSet};
use crate::require;
use crate::stats::Stats;
use crate::vm::DEFAULT_TIMEOUT;

/// GVAs per flush: the most KVM queues precisely (more become a full flush, counted once).
const GVAS: u64 = 15;
/// `HV_FLUSH_ALL_PROCESSORS`.
const FLUSH_ALL_PROCESSORS: u64 = 1;
/// The gate token receivers spin on for the whole test.
const SPIN: u64 = 0x7777;

fn gva_list() -> Vec<u8> {
    (0..GVAS)
        .flat_map(|k| (0x20_0000 + k * 0x1000u64).to_le_bytes())
        .collect()
}

/// HvCallFlushVirtualAddressList to `mask` (or all processors).
fn flush_list(mask: u64, all: bool) -> Hypercall {
    let mut b = Vec::new();
    b.extend_from_slice(&0u64.to_le_bytes()); // address space
    b.extend_from_slice(&(if all { FLUSH_ALL_PROCESSORS } else { 0 }).to_le_bytes());
    b.extend_from_slice(&mask.to_le_bytes());
    b.extend_from_slice(&gva_list());
    Hypercall::slow(
        control::word(call::FLUSH_VIRTUAL_ADDRESS_LIST, false, 0, GVAS),
        b,
    )
}

/// HvCallFlushVirtualAddressListEx to `set`.
fn flush_list_ex(set: &VpSet) -> Hypercall {
    let (format, bank_mask, banks) = set.encode();
    let mut b = Vec::new();
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&format.to_le_bytes());
    b.extend_from_slice(&bank_mask.to_le_bytes());
    for bank in &banks {
        b.extend_from_slice(&bank.to_le_bytes());
    }
    b.extend_from_slice(&gva_list());
    Hypercall::slow(
        control::word(
            call::FLUSH_VIRTUAL_ADDRESS_LIST_EX,
            false,
            banks.len() as u64,
            GVAS,
        ),
        b,
    )
}

/// HvCallFlushVirtualAddressList(Ex) to a VP set or to all processors, from a group-0 vCPU
/// whose group-1 siblings share its VP indexes, flush only in group 0 (per-vCPU `tlb_flush`).
pub(super) fn hv_tlb_flush_group_scoped() -> TestResult {
    require!(groups_available()?, "KVM_CAP_APIC_GROUPS < 2");
    let nodes = two_vtls(0);
    // (what, call, vCPU indexes that must flush)
    let cases: Vec<(&str, Hypercall, Vec<usize>)> = vec![
        (
            "FlushVirtualAddressList to VP 1",
            flush_list(1 << 1, false),
            vec![1],
        ),
        (
            "FlushVirtualAddressList to all processors",
            flush_list(0, true),
            vec![0, 1],
        ),
        (
            "FlushVirtualAddressListEx to VP 1",
            flush_list_ex(&VpSet::Sparse(vec![1])),
            vec![1],
        ),
        (
            "FlushVirtualAddressListEx to ALL",
            flush_list_ex(&VpSet::All),
            vec![0, 1],
        ),
    ];
    let mut vm = build(&nodes)?;
    let mut sender = Program::new();
    for (k, (_, h, _)) in cases.iter().enumerate() {
        sender = sender.step(Step::Gate(k as u64 + 1)).hcall(h.clone());
    }
    let sender = sender.step(Step::Gate(0x100));
    let loaded = vm.load_hv_program(0, &sender)?;
    for i in 1..nodes.len() {
        vm.load_hv_program(i, &Program::new().step(Step::Gate(SPIN)))?;
    }
    let stats: Vec<Stats> = (0..nodes.len())
        .map(|i| Stats::open(&vm.vcpu(i)?.fd))
        .collect::<Result<_>>()?;
    let running = start_ready(&mut vm, &nodes)?;
    for (i, n) in nodes.iter().enumerate().skip(1) {
        vm.set_pcpu(i, pcpu::GO, 1)?;
        running
            .wait_sync(i, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)
            .with_context(|| format!("{} starting to spin", n.describe(i)))?;
    }
    // Start the sender with a GO that opens none of its gates: it stops at the first.
    vm.set_pcpu(0, pcpu::GO, u64::MAX)?;
    running.wait_sync(0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)?;
    let read = || -> Result<Vec<u64>> { stats.iter().map(|s| s.get("tlb_flush")).collect() };
    let mut failures = String::new();
    for (k, (what, _, targets)) in cases.iter().enumerate() {
        let before = read()?;
        vm.set_pcpu(0, pcpu::GO, k as u64 + 1)?;
        // The sender reaches its next gate after the call; then every target has flushed.
        running
            .wait_sync(0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)
            .with_context(|| format!("{what}: the sender"))?;
        let arrived = running.wait_until(DEFAULT_TIMEOUT, || {
            let now = read()?;
            Ok(targets.iter().all(|&t| now[t] >= before[t] + GVAS))
        })?;
        // Let any stray request be processed too before looking.
        std::thread::sleep(Duration::from_millis(300));
        let after = read()?;
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let status = loaded.outcome(&vm.mem, 2 * k + 1)?.rax;
        if status != GVAS << 32 {
            let _ = writeln!(
                failures,
                "{what}: status {status:#x}, expected success with {GVAS} reps completed ({:#x})",
                GVAS << 32
            );
        }
        if !arrived {
            require!(
                targets.iter().all(|&t| delta[t] > 0),
                "{what}: the targets' tlb_flush rose by {delta:?}, not by {GVAS}: KVM flushes them whole (no TDP), so the statistic cannot tell whose flush it was"
            );
            let _ = writeln!(
                failures,
                "{what}: tlb_flush per vCPU rose by {delta:?}; the targets {targets:?} did not reach +{GVAS}"
            );
        }
        for i in 2..nodes.len() {
            if delta[i] >= GVAS {
                let _ = writeln!(
                    failures,
                    "{what}: {} (group 1) flushed: tlb_flush +{} (the call flushes {GVAS} GVAs; per vCPU {delta:?})",
                    nodes[i].describe(i),
                    delta[i]
                );
            }
        }
    }
    drop(running);
    if !failures.is_empty() {
        bail!("{failures}");
    }
    Ok(Outcome::Pass)
}
