// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Hyper-V synthetic cluster IPIs (HvCallSendSyntheticClusterIpi 0x0B and ...Ex 0x15) in VMs
//! with APIC groups: delivered only in the sender's group, HV_INPUT_VTL decoded (reserved bits
//! rejected), and IPIs naming another VTL forwarded to userspace.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};

use super::common::{
    build, exits, fast_ex, groups_available, log_exits, mask, run_ipi_cases, two_vtls, IpiCase,
};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{
    call, control, input_vtl, send_ipi_ex_input, send_ipi_input, status, HcallExit, Hypercall,
    VpSet,
};
use crate::stats::Stats;
use crate::{check_eq, require};

/// Hands out a fresh vector per case.
struct Vectors(u8);

impl Vectors {
    fn next(&mut self) -> u8 {
        let v = self.0;
        self.0 += 1;
        v
    }
}

/// The IPI forms, each to VP set `vps` (or ALL for the Ex forms with `vps` = None), from
/// `from` with HV_INPUT_VTL `vtl`, expecting `status` and `receivers`.
struct Forms<'a> {
    cases: &'a mut Vec<IpiCase>,
    vectors: &'a mut Vectors,
    from: usize,
}

impl Forms<'_> {
    fn add(&mut self, what: String, call: Hypercall, vector: u8, status: u64, receivers: &[usize]) {
        self.cases.push(IpiCase {
            what,
            from: self.from,
            call,
            vector,
            status,
            receivers: receivers.to_vec(),
        });
    }

    /// 0x0B slow.
    fn slow(&mut self, vtl: u8, vps: &[u32], status: u64, receivers: &[usize]) {
        let v = self.vectors.next();
        let input = send_ipi_input(v.into(), vtl, mask(vps));
        let c = Hypercall::slow(control::word(call::SEND_IPI, false, 0, 0), input);
        let what = format!("SendSyntheticClusterIpi slow, VTL byte {vtl:#x}, VPs {vps:?}");
        self.add(what, c, v, status, receivers);
    }

    /// 0x0B fast (RDX = vector | VTL << 32 | `rdx_extra`, R8 = mask).
    fn fast(&mut self, vtl: u8, rdx_extra: u64, vps: &[u32], status: u64, receivers: &[usize]) {
        let v = self.vectors.next();
        let rdx = u64::from(v) | (u64::from(vtl) << 32) | rdx_extra;
        let c = Hypercall::fast(
            control::word(call::SEND_IPI, false, 0, 0),
            rdx,
            mask(vps),
            [0; 12],
        );
        let what = format!("SendSyntheticClusterIpi fast, RDX {rdx:#x}, VPs {vps:?}");
        self.add(what, c, v, status, receivers);
    }

    /// 0x15 slow.
    fn ex_slow(&mut self, vtl: u8, set: &VpSet, status: u64, receivers: &[usize]) {
        let v = self.vectors.next();
        let (input, var) = send_ipi_ex_input(v.into(), vtl, set);
        let c = Hypercall::slow(control::word(call::SEND_IPI_EX, false, var, 0), input);
        let what = format!("SendSyntheticClusterIpiEx slow, VTL byte {vtl:#x}, {set:?}");
        self.add(what, c, v, status, receivers);
    }

    /// 0x15 fast (bank mask and banks in XMM; RDX = vector | VTL << 32 | `rdx_extra`).
    fn ex_fast(&mut self, vtl: u8, rdx_extra: u64, set: &VpSet, status: u64, receivers: &[usize]) {
        let v = self.vectors.next();
        let (rdx, format, xmm, var) = fast_ex(v.into(), vtl, set, 0x5a5a_0000_0000_0000);
        let rdx = rdx | rdx_extra;
        let c = Hypercall::fast(
            control::word(call::SEND_IPI_EX, false, var, 0),
            rdx,
            format,
            xmm,
        );
        let what = format!("SendSyntheticClusterIpiEx fast, RDX {rdx:#x}, {set:?}");
        self.add(what, c, v, status, receivers);
    }
}

const OK: u64 = status::SUCCESS;

/// HvCallSendSyntheticClusterIpi(Ex), slow and fast, to VP sets and to ALL, reach only the
/// sender's APIC group: with VTL siblings sharing VP indexes, and with distinct ones.
pub(super) fn hv_ipi_group_scoped() -> TestResult {
    require!(groups_available()?, "KVM_CAP_APIC_GROUPS < 2");
    let all = VpSet::All;
    let sparse = |v: &[u32]| VpSet::Sparse(v.to_vec());

    // Siblings share VP indexes: group 0 = indexes 0, 1 (VP 0, 1), group 1 = 2, 3 (VP 0, 1).
    let nodes = two_vtls(0);
    let mut cases = Vec::new();
    let mut vectors = Vectors(0x40);
    let mut f = Forms {
        cases: &mut cases,
        vectors: &mut vectors,
        from: 0,
    };
    f.slow(0, &[1], OK, &[1]);
    f.slow(0, &[0, 1], OK, &[0, 1]);
    f.fast(0, 0, &[1], OK, &[1]);
    f.fast(0, 0, &[0, 1], OK, &[0, 1]);
    f.ex_slow(0, &sparse(&[0, 1]), OK, &[0, 1]);
    f.ex_slow(0, &sparse(&[1]), OK, &[1]);
    f.ex_slow(0, &all, OK, &[0, 1]);
    f.ex_fast(0, 0, &sparse(&[1]), OK, &[1]);
    f.ex_fast(0, 0, &sparse(&[0, 1]), OK, &[0, 1]);
    f.ex_fast(0, 0, &all, OK, &[0, 1]);
    // UseTargetVtl naming the sender's own VTL is delivered in the kernel, like no VTL.
    f.slow(input_vtl(0, true), &[1], OK, &[1]);
    f.ex_fast(input_vtl(0, true), 0, &all, OK, &[0, 1]);
    // And from group 1 (VTL 1), the other direction.
    let mut f = Forms {
        cases: &mut cases,
        vectors: &mut vectors,
        from: 3,
    };
    f.slow(0, &[0], OK, &[2]);
    f.ex_slow(0, &all, OK, &[2, 3]);
    f.ex_fast(input_vtl(1, true), 0, &sparse(&[0, 1]), OK, &[2, 3]);
    let vm = build(&nodes)?;
    run_ipi_cases(vm, &nodes, &cases).context("VTL siblings sharing VP indexes 0 and 1")?;

    // Distinct VP indexes: group 1 has VP 2 and 3, which group 0 never reaches.
    let nodes = two_vtls(2);
    let mut cases = Vec::new();
    let mut f = Forms {
        cases: &mut cases,
        vectors: &mut vectors,
        from: 0,
    };
    f.slow(0, &[2, 3], OK, &[]);
    f.slow(0, &[0, 1, 2, 3], OK, &[0, 1]);
    f.fast(0, 0, &[2], OK, &[]);
    f.ex_slow(0, &sparse(&[1, 2, 3]), OK, &[1]);
    f.ex_slow(0, &all, OK, &[0, 1]);
    f.ex_fast(0, 0, &sparse(&[2, 3]), OK, &[]);
    f.ex_fast(0, 0, &all, OK, &[0, 1]);
    let vm = build(&nodes)?;
    run_ipi_cases(vm, &nodes, &cases).context("group 1 with VP indexes 2 and 3")?;
    Ok(Outcome::Pass)
}

/// Reserved bits 7:5 of HV_INPUT_VTL, and RDX bits 63:40 of the fast forms, make the IPI
/// HV_STATUS_INVALID_HYPERCALL_INPUT, and nothing is delivered.
pub(super) fn hv_ipi_reserved_vtl_bits() -> TestResult {
    require!(groups_available()?, "KVM_CAP_APIC_GROUPS < 2");
    const BAD: u64 = status::INVALID_HYPERCALL_INPUT;
    let all = VpSet::All;
    let nodes = two_vtls(0);
    let mut cases = Vec::new();
    let mut vectors = Vectors(0x40);
    let mut f = Forms {
        cases: &mut cases,
        vectors: &mut vectors,
        from: 0,
    };
    // A valid one first: the scenario works.
    f.slow(0, &[1], OK, &[1]);
    for bit in 5..8u8 {
        f.slow(1 << bit, &[0, 1], BAD, &[]);
        f.ex_slow(1 << bit, &all, BAD, &[]);
        f.fast(1 << bit, 0, &[0, 1], BAD, &[]);
        f.ex_fast(1 << bit, 0, &all, BAD, &[]);
    }
    // Reserved bits with UseTargetVtl and the sender's own VTL.
    f.slow(0xe0 | input_vtl(0, true), &[1], BAD, &[]);
    // RDX bits 63:40 in the fast forms.
    for bit in [40u32, 47, 63] {
        f.fast(0, 1 << bit, &[0, 1], BAD, &[]);
        f.ex_fast(0, 1 << bit, &all, BAD, &[]);
    }
    let vm = build(&nodes)?;
    run_ipi_cases(vm, &nodes, &cases)?;
    Ok(Outcome::Pass)
}

/// What the host answers the cross-VTL IPI of case `k`.
fn answer(k: usize) -> u64 {
    [
        status::ACCESS_DENIED,
        0x51,
        status::INVALID_PARAMETER,
        0x11,
        0x6_0006,
    ][k % 5]
}

/// With KVM_CAP_HYPERV_VSM an IPI naming another VTL exits to userspace (the exit names the
/// call exactly; fast Ex with the XMM input), the guest sees exactly the status the host
/// answers, and nothing is delivered in the kernel; without the cap it fails with
/// HV_STATUS_INVALID_PARAMETER.
pub(super) fn hv_ipi_cross_vtl_exit() -> TestResult {
    require!(groups_available()?, "KVM_CAP_APIC_GROUPS < 2");
    let nodes = two_vtls(0);
    let sparse = |v: &[u32]| VpSet::Sparse(v.to_vec());
    // (sender, call, vector) of the cross-VTL IPIs.
    let build_cases = |status_of: &dyn Fn(usize) -> u64| {
        let mut cases = Vec::new();
        let mut vectors = Vectors(0x40);
        let mut f = Forms {
            cases: &mut cases,
            vectors: &mut vectors,
            from: 0,
        };
        let to1 = input_vtl(1, true);
        f.slow(to1, &[0, 1], status_of(0), &[]);
        f.fast(to1, 0, &[0], status_of(1), &[]);
        f.ex_slow(to1, &sparse(&[0, 1]), status_of(2), &[]);
        f.ex_fast(to1, 0, &sparse(&[0, 1]), status_of(3), &[]);
        f.ex_fast(to1, 0, &VpSet::All, status_of(4), &[]);
        // VTL 1 (group 1) naming VTL 0.
        let mut f = Forms {
            cases: &mut cases,
            vectors: &mut vectors,
            from: 2,
        };
        f.slow(input_vtl(0, true), &[1], status_of(5), &[]);
        cases
    };

    // Without KVM_CAP_HYPERV_VSM: HV_STATUS_INVALID_PARAMETER, nothing delivered, no exit.
    let cases = build_cases(&|_| status::INVALID_PARAMETER);
    let mut vm = build(&nodes)?;
    let log = log_exits(&mut vm, |_| status::SUCCESS);
    run_ipi_cases(vm, &nodes, &cases).context("without KVM_CAP_HYPERV_VSM")?;
    let seen = exits(&log);
    if !seen.is_empty() {
        bail!("without KVM_CAP_HYPERV_VSM, cross-VTL IPIs exited to userspace: {seen:x?}");
    }

    // With it: one exit per case, answered with answer(k), which the guest must see.
    let kvm = crate::vm::open_kvm()?;
    if !vtlkit_uapi::hyperv_vsm_supported(&kvm) {
        bail!("KVM_CHECK_EXTENSION(KVM_CAP_HYPERV_VSM) is 0: the kernel lacks the Hyper-V VTL patches");
    }
    let cases = build_cases(&answer);
    let mut vm = build(&nodes)?;
    vtlkit_uapi::enable_hyperv_vsm(&vm.fd)?;
    // The senders run one after the other, so the exits arrive in case order: answer the
    // k-th with answer(k).
    let arrived = AtomicUsize::new(0);
    let log = log_exits(&mut vm, move |_: &HcallExit| {
        answer(arrived.fetch_add(1, Ordering::SeqCst))
    });
    let stats: Vec<Stats> = (0..nodes.len())
        .map(|i| Stats::open(&vm.vcpu(i)?.fd))
        .collect::<anyhow::Result<_>>()?;
    let (vm, _, issued_rdx) =
        run_ipi_cases(vm, &nodes, &cases).context("with KVM_CAP_HYPERV_VSM")?;

    let seen = exits(&log);
    let mut failures = String::new();
    if seen.len() != cases.len() {
        let _ = writeln!(
            failures,
            "{} KVM_EXIT_HYPERV HCALL exits, expected {} (one per cross-VTL IPI): {seen:#x?}",
            seen.len(),
            cases.len()
        );
    }
    for ((c, (index, exit)), &rdx) in cases.iter().zip(seen.iter()).zip(&issued_rdx) {
        let issued = &c.call;
        let mut bad = Vec::new();
        if *index != c.from {
            bad.push(format!("came from vCPU index {index}, not {}", c.from));
        }
        if exit.input != issued.control {
            bad.push(format!(
                "control {:#x}, issued {:#x}",
                exit.input, issued.control
            ));
        }
        if exit.params != [rdx, issued.r8] {
            bad.push(format!(
                "params {:#x?}, issued RDX {rdx:#x} R8 {:#x}",
                exit.params, issued.r8
            ));
        }
        let fast = issued.control & control::FAST != 0;
        let ex = (issued.control & 0xffff) as u16 == call::SEND_IPI_EX;
        match (fast, exit.xmm_input()) {
            (false, true) => bad.push("XMM input flagged for a slow call".into()),
            (true, false) if ex => bad.push(format!(
                "flags {:#x}: no KVM_HYPERV_HCALL_XMM_INPUT for a fast Ex call",
                exit.flags
            )),
            _ => {}
        }
        if exit.xmm_input() && exit.xmm != issued.xmm {
            bad.push(format!(
                "xmm {:#x?}, the guest's XMM0..5 were {:#x?}",
                exit.xmm, issued.xmm
            ));
        }
        if exit.flags & !vtlkit_uapi::raw::KVM_HYPERV_HCALL_XMM_INPUT != 0 {
            bad.push(format!("unknown flags {:#x}", exit.flags));
        }
        if !bad.is_empty() {
            let _ = writeln!(failures, "{}: the exit {}", c.what, bad.join("; "));
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let want = cases.iter().filter(|c| c.from == i).count() as u64;
        let got = stats[i].get("hv_vtl_exits")?;
        if got != want {
            let _ = writeln!(
                failures,
                "statistic hv_vtl_exits of {} is {got}, expected {want}",
                n.describe(i)
            );
        }
    }
    drop(vm);
    if !failures.is_empty() {
        bail!("with KVM_CAP_HYPERV_VSM: {failures}");
    }
    check_eq!(seen.len(), cases.len(), "cross-VTL IPI exits");
    Ok(Outcome::Pass)
}
