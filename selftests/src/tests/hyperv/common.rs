// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! What the Hyper-V tests share (not tests): a topology of vCPUs with APIC groups and VP
//! indexes ([`Node`]), [`build`] for the VM, [`start_ready`] to run it up to the guests'
//! Hyper-V setup, and [`run_ipi_cases`], which has senders issue hypercalls and checks who
//! handled each vector and what status each sender saw.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use vtlkit_uapi::ApicGroup;

use crate::check_eq;
use crate::guest::{pcpu, ucall, Entry};
use crate::hyperv::{self, HcallExit, Hypercall, HypervExit, Loaded, Program};
use crate::vm::{lapic_bit, lapic_reg, Running, TestVm, Vcpu, VmOptions, DEFAULT_TIMEOUT};

/// How long expected interrupts get to be handled.
pub(super) const HANDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// One vCPU: KVM vcpu_id, APIC group assignment (None in a VM without groups), VP index.
#[derive(Debug, Clone, Copy)]
pub(super) struct Node {
    pub(super) vcpu_id: u64,
    pub(super) group: Option<ApicGroup>,
    pub(super) vp: u32,
}

impl Node {
    /// A vCPU in `group` with APIC ID `apic_id`, VTL label `vtl`, VP index `vp`.
    pub(super) fn grouped(vcpu_id: u64, group: u32, apic_id: u32, vtl: u8, vp: u32) -> Self {
        Node {
            vcpu_id,
            group: Some(ApicGroup {
                group,
                apic_id,
                vtl,
            }),
            vp,
        }
    }

    pub(super) fn describe(&self, index: usize) -> String {
        match self.group {
            Some(g) => format!(
                "vCPU index {index} (group {}, VTL {}, VP {})",
                g.group, g.vtl, self.vp
            ),
            None => format!("vCPU index {index} (VP {})", self.vp),
        }
    }
}

/// The topology of the group tests: VP 0 and VP 1 at VTL 0 (group 0: indexes 0, 1) and at
/// VTL 1 (group 1: indexes 2, 3), with the same APIC IDs; the group-1 VP indexes are `vp0`,
/// `vp0 + 1` (0 = shared with their VTL-0 siblings, as VSM has it).
pub(super) fn two_vtls(vp0: u32) -> Vec<Node> {
    vec![
        Node::grouped(0, 0, 0, 0, 0),
        Node::grouped(1, 0, 1, 0, 1),
        Node::grouped(2, 1, 0, 1, vp0),
        Node::grouped(3, 1, 1, 1, vp0 + 1),
    ]
}

/// Whether the kernel has at least two APIC groups (else the group tests skip).
pub(super) fn groups_available() -> Result<bool> {
    let kvm = crate::vm::open_kvm()?;
    Ok(vtlkit_uapi::apic_groups_supported(&kvm) >= 2)
}

/// A Hyper-V VM with one vCPU per node at [`Entry::HvMain`], each with its VP index set; it
/// opts in to APIC groups if the nodes have groups.
pub(super) fn build(nodes: &[Node]) -> Result<TestVm> {
    let grouped = nodes.iter().any(|n| n.group.is_some());
    if grouped && nodes.iter().any(|n| n.group.is_none()) {
        bail!("test bug: in a VM with APIC groups every node needs a group");
    }
    let mut vm = TestVm::new(VmOptions {
        apic_groups: grouped,
        hyperv: true,
        ..Default::default()
    })?;
    for (i, n) in nodes.iter().enumerate() {
        match n.group {
            Some(g) => vm.add_vcpu_in_group(n.vcpu_id, Entry::HvMain, g)?,
            None => vm.add_vcpu(n.vcpu_id, Entry::HvMain)?,
        };
        vm.set_vp_index(i, n.vp)?;
    }
    Ok(vm)
}

/// Start every vCPU and wait until each guest wrote its Hyper-V MSRs; checks the VP index
/// each guest reads back (HV_X64_MSR_VP_INDEX) is the one the host set.
pub(super) fn start_ready(vm: &mut TestVm, nodes: &[Node]) -> Result<Running> {
    let running = vm.start()?;
    for (i, n) in nodes.iter().enumerate() {
        let [_, _, vp, _] = running
            .wait_sync(i, ucall::STAGE_HV_READY, DEFAULT_TIMEOUT)
            .with_context(|| format!("{} setting up Hyper-V", n.describe(i)))?;
        check_eq!(
            vp,
            u64::from(n.vp),
            "VP index read by the guest of {}",
            n.describe(i)
        );
    }
    Ok(running)
}

/// One hypercall a sender issues, and what must come of it.
#[derive(Debug, Clone)]
pub(super) struct IpiCase {
    pub(super) what: String,
    /// Sending vCPU index.
    pub(super) from: usize,
    pub(super) call: Hypercall,
    /// The IPI's vector (each case its own).
    pub(super) vector: u8,
    /// RAX the sender must see.
    pub(super) status: u64,
    /// vCPU indexes that must handle the vector, once each; everyone else must not get it.
    pub(super) receivers: Vec<usize>,
}

/// Every KVM_EXIT_HYPERV HCALL a VM's vCPUs made: (vCPU index, the exit as KVM reported it).
pub(super) type ExitLog = Arc<Mutex<Vec<(usize, HcallExit)>>>;

/// Record every HCALL exit in the returned log and answer it with `answer(exit)`; SynIC exits
/// are resumed.
pub(super) fn log_exits(
    vm: &mut TestVm,
    answer: impl Fn(&HcallExit) -> u64 + Send + Sync + 'static,
) -> ExitLog {
    let log: ExitLog = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    vm.on_hyperv_exit(move |ctx, exit| {
        if let HypervExit::Hcall(h) = exit {
            let before = *h;
            h.result = answer(&before);
            l.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((ctx.index, before));
        }
        Ok(())
    });
    log
}

/// The exits logged so far.
pub(super) fn exits(log: &ExitLog) -> Vec<(usize, HcallExit)> {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Load every sender's program (its cases in order), start the VM, run the programs one
/// sender after the other, wait for the expected receivers, stop, and check each case: the
/// status its sender saw, who handled its vector (guest counts), and that nobody else has it
/// pending (IRR/ISR). Returns the VM, its stopped vCPUs and the RDX each case was issued with
/// (a slow call's input GPA), for further checks (exits, statistics).
pub(super) fn run_ipi_cases(
    mut vm: TestVm,
    nodes: &[Node],
    cases: &[IpiCase],
) -> Result<(TestVm, Vec<Vcpu>, Vec<u64>)> {
    let mut senders: Vec<usize> = Vec::new();
    for c in cases {
        if !senders.contains(&c.from) {
            senders.push(c.from);
        }
    }
    // (case index) -> (sender's loaded program, step)
    let mut where_: Vec<(usize, usize)> = vec![(0, 0); cases.len()];
    let mut loaded: Vec<(usize, Loaded)> = Vec::new();
    for &s in &senders {
        let mut prog = Program::new();
        for (k, c) in cases.iter().enumerate() {
            if c.from == s {
                where_[k] = (loaded.len(), prog.steps.len());
                prog = prog.hcall(c.call.clone());
            }
        }
        loaded.push((s, vm.load_hv_program(s, &prog)?));
    }

    let running = start_ready(&mut vm, nodes)?;
    for &s in &senders {
        vm.set_pcpu(s, pcpu::GO, 1)?;
        if let Err(e) = running.wait_sync(s, ucall::STAGE_HV_DONE, DEFAULT_TIMEOUT) {
            let state = running.stop_and_describe();
            bail!(
                "{} running its hypercall program: {e:#}\nvCPU state: {state}",
                nodes[s].describe(s)
            );
        }
    }
    let handled = |i: usize, v: u8| -> Result<u32> {
        vm.mem
            .read_u32(TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(v))
    };
    // Whether they all arrived shows in the per-case checks below.
    running.wait_until(HANDLE_TIMEOUT, || {
        for c in cases {
            for &r in &c.receivers {
                if handled(r, c.vector)? == 0 {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })?;
    running.check_no_pending()?;
    let mut vcpus = running.stop()?;
    vcpus.sort_by_key(|v| v.index);

    let mut failures = String::new();
    for (k, c) in cases.iter().enumerate() {
        let (p, step) = where_[k];
        let out = loaded[p].1.outcome(&vm.mem, step)?;
        if !out.done {
            let _ = writeln!(
                failures,
                "{}: the sender never finished the hypercall",
                c.what
            );
        } else if out.rax != c.status {
            let _ = writeln!(
                failures,
                "{}: the sender saw status {:#x}, expected {:#x}",
                c.what, out.rax, c.status
            );
        }
        let mut got = Vec::new();
        for v in &vcpus {
            let lapic =
                v.fd.get_lapic()
                    .map_err(|e| anyhow!("KVM_GET_LAPIC on vCPU {}: {e}", v.id))?;
            let took = handled(v.index, c.vector)?;
            let pending = u32::from(lapic_bit(&lapic, lapic_reg::IRR, c.vector))
                + u32::from(lapic_bit(&lapic, lapic_reg::ISR, c.vector));
            let want = u32::from(c.receivers.contains(&v.index));
            if (took, pending) == (want, 0) {
                continue;
            }
            let who = nodes[v.index].describe(v.index);
            got.push(if want == 1 && took == 0 {
                format!("{who} never handled it within {HANDLE_TIMEOUT:?} (pending in IRR/ISR: {pending})")
            } else {
                format!("{who} handled it {took} time(s) (pending in IRR/ISR: {pending}), expected {want}")
            });
        }
        for g in got {
            let _ = writeln!(failures, "{} (vector {:#x}): {g}", c.what, c.vector);
        }
    }
    let rdx = where_
        .iter()
        .map(|&(p, step)| loaded[p].1.rdx(step).unwrap_or(0))
        .collect();
    if !failures.is_empty() {
        let topo: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| n.describe(i))
            .collect();
        bail!("{failures}topology: {}", topo.join(", "));
    }
    Ok((vm, vcpus, rdx))
}

/// A sparse VP set of these VP indexes, as a bitmask (VP indexes < 64).
pub(super) fn mask(vps: &[u32]) -> u64 {
    vps.iter().fold(0, |m, &vp| m | (1 << vp))
}

/// The sparse VP set of `vps` (banks in XMM for fast Ex calls: XMM0 low = bank mask, then the
/// banks), and the fast Ex RDX/R8/XMM for `vector`, HV_INPUT_VTL `vtl`, that set. `filler`
/// goes in the XMM halves the call does not use, so a test can see all twelve forwarded.
pub(super) fn fast_ex(
    vector: u32,
    vtl: u8,
    set: &hyperv::VpSet,
    filler: u64,
) -> (u64, u64, [u64; 12], u64) {
    let (format, bank_mask, banks) = set.encode();
    let mut xmm = [0u64; 12];
    for (k, q) in xmm.iter_mut().enumerate() {
        *q = filler.wrapping_add(k as u64);
    }
    xmm[0] = bank_mask;
    for (k, b) in banks.iter().enumerate() {
        xmm[1 + k] = *b;
    }
    let rdx = u64::from(vector) | (u64::from(vtl) << 32);
    (rdx, format, xmm, banks.len() as u64)
}
