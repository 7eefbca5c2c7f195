// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! HvCallVtlCall and HvCallVtlReturn between the VTL0 and VTL1 siblings of a VP: the registers
//! each VTL finds (TLFS "Virtual Processor State Isolation": RAX..R15 but RSP and the XMM
//! registers shared, RSP, RIP, CR3, GS base private), the two return modes, the entry reason in
//! VTL1's VP assist page, and several round trips.

use anyhow::{bail, Result};

use super::common::{
    enable_vtl1, require_vsm, round_failures, run, STEP_ENABLE_PARTITION, STEP_ENABLE_VP, VP,
};
use crate::guest::vsm;
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{call, status, Step};
use crate::vp::{Round, RoundSeen, VpEvent, VsmVm};

/// The rounds both tests run: normal and fast returns mixed, each with its own values.
fn rounds() -> Vec<Round> {
    [false, false, true, false, true, true, false]
        .iter()
        .enumerate()
        .map(|(k, &fast)| Round::new(0x10 + k as u32, fast))
        .collect()
}

/// What [`scenario`] gives the tests.
struct Ran {
    vsm: VsmVm,
    rounds: Vec<Round>,
    seen: Vec<RoundSeen>,
    events: Vec<VpEvent>,
    switches: Vec<(u8, u8)>,
    /// (enabled VTLs, active VTL) of the VP once VTL0 finished.
    vp_state: (Option<u16>, Option<u8>),
}

/// Enable VTL1, run [`rounds`]; returns the VM, what each round recorded and the runner's log.
fn scenario() -> Result<Ran> {
    let mut vsm = VsmVm::new(1)?;
    let rounds = rounds();
    let mut steps = enable_vtl1(&vsm);
    for (k, r) in rounds.iter().enumerate() {
        vsm.write_round(VP, k as u64, r)?;
        steps.push(Step::VtlCall {
            block: VsmVm::block_gpa(VP, k as u64),
        });
    }
    let (running, loaded) = run(&mut vsm, steps)?;
    for (step, what) in [
        (STEP_ENABLE_PARTITION, "HvCallEnablePartitionVtl(1)"),
        (STEP_ENABLE_VP, "HvCallEnableVpVtl(VP 0, VTL1)"),
    ] {
        let out = loaded.outcome(&vsm.vm.mem, step)?;
        if out.rax != status::SUCCESS {
            bail!("{what} returned {:#x}, expected HV_STATUS_SUCCESS", out.rax);
        }
    }
    let stopped = running.stop()?;
    let seen = (0..rounds.len() as u64)
        .map(|k| vsm.read_round(VP, k))
        .collect::<Result<Vec<_>>>()?;
    Ok(Ran {
        events: stopped.events(VP),
        switches: stopped.switches(VP),
        vp_state: (stopped.enabled_vtls(VP), stopped.active_vtl(VP)),
        vsm,
        rounds,
        seen,
    })
}

/// Shared registers carried both ways, private ones kept, for every round trip.
pub(super) fn vsm_vtl_call_registers() -> TestResult {
    require_vsm()?;
    let Ran {
        vsm,
        rounds,
        seen,
        events,
        ..
    } = scenario()?;
    let failures: String = rounds
        .iter()
        .zip(&seen)
        .enumerate()
        .map(|(k, (r, s))| round_failures(&vsm, k as u64, r, s))
        .collect();
    if !failures.is_empty() {
        bail!("{failures}runner log: {events:?}");
    }
    Ok(Outcome::Pass)
}

/// Normal vs fast return, the entry reason, the rounds taken in order, the switch log.
pub(super) fn vsm_vtl_return_modes() -> TestResult {
    require_vsm()?;
    let Ran {
        rounds,
        seen,
        events,
        switches: got,
        vp_state,
        ..
    } = scenario()?;
    let mut f = String::new();
    for (k, (r, s)) in rounds.iter().zip(&seen).enumerate() {
        let (rax, rcx) = (s.vtl0.gprs[vsm::regs::RAX], s.vtl0.gprs[vsm::regs::RCX]);
        let want = if r.fast() {
            (
                r.vtl1_out.gprs[vsm::regs::RAX],
                r.vtl1_out.gprs[vsm::regs::RCX],
            )
        } else {
            (r.ret_rax, r.ret_rcx)
        };
        if (rax, rcx) != want {
            f.push_str(&format!(
                "round {k} ({} return): VTL0 resumed with RAX {rax:#x} RCX {rcx:#x}, expected {:#x} {:#x}\n",
                if r.fast() { "fast" } else { "normal" },
                want.0,
                want.1
            ));
        }
        // Round 0 enters VTL1 before it enabled its VP assist page: nothing to write into.
        let reason = if k == 0 { 0 } else { 1 };
        if s.entry_reason != reason {
            f.push_str(&format!(
                "round {k}: VTL1 read entry reason {} in its VP assist page, expected {reason}{}\n",
                s.entry_reason,
                if k == 0 {
                    " (its assist page was not enabled yet)"
                } else {
                    " (VtlCall)"
                }
            ));
        }
        if s.vtl1_round != k as u64 {
            f.push_str(&format!(
                "round {k}: VTL1 took it as its entry {}, not {k}: it did not re-enter after its VtlReturn once per call\n",
                s.vtl1_round
            ));
        }
    }
    let want: Vec<(u8, u8)> = rounds.iter().flat_map(|_| [(0, 1), (1, 0)]).collect();
    if got != want {
        f.push_str(&format!(
            "switches {got:?}, expected a VtlCall and a VtlReturn per round: {want:?}\n"
        ));
    }
    let completed: Vec<(u8, u16, u64)> = events
        .iter()
        .filter_map(|e| match e {
            VpEvent::Completed { vtl, code, result } => Some((*vtl, *code, *result)),
            _ => None,
        })
        .collect();
    let want_completed = vec![
        (0, call::ENABLE_PARTITION_VTL, status::SUCCESS),
        (0, call::ENABLE_VP_VTL, status::SUCCESS),
    ];
    if completed != want_completed {
        f.push_str(&format!(
            "hypercalls answered on the spot {completed:#x?}, expected {want_completed:#x?}\n"
        ));
    }
    if vp_state != (Some(0b11), Some(0)) {
        f.push_str(&format!(
            "after the rounds the VP has (enabled VTLs, active VTL) {vp_state:?}, expected (Some(0b11), Some(0))\n"
        ));
    }
    if !f.is_empty() {
        bail!("{f}runner log: {events:?}");
    }
    Ok(Outcome::Pass)
}

/// A VTL1 sibling left in `KVM_MP_STATE_UNINITIALIZED`, as KVM creates it (the framework makes
/// every vCPU runnable; this one is put back): EnableVpVtl makes it runnable, so the VtlCall
/// enters it instead of blocking in KVM_RUN for an INIT/SIPI, and the round trip completes.
pub(super) fn vsm_vtl1_sibling_starts_uninitialized() -> TestResult {
    use kvm_bindings::{KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
    require_vsm()?;
    let mut vsm = VsmVm::new(1)?;
    vsm.leave_uninitialized(VP, 1)?;
    let v1 = vsm.index(VP, 1);
    let mp = |vsm: &VsmVm| -> Result<u32> {
        let v = vsm.vm.vcpu(v1)?;
        Ok(v.fd
            .get_mp_state()
            .map_err(|e| anyhow::anyhow!("KVM_GET_MP_STATE on vCPU {}: {e}", v.id))?
            .mp_state)
    };
    let before = mp(&vsm)?;
    if before != KVM_MP_STATE_UNINITIALIZED {
        bail!("the VTL1 sibling is in MP state {before} before the run, expected UNINITIALIZED ({KVM_MP_STATE_UNINITIALIZED})");
    }
    let r = Round::new(0x77, false);
    vsm.write_round(VP, 0, &r)?;
    let mut steps = enable_vtl1(&vsm);
    steps.push(Step::VtlCall {
        block: VsmVm::block_gpa(VP, 0),
    });
    let (running, loaded) = run(&mut vsm, steps)?;
    let out = loaded.outcome(&vsm.vm.mem, STEP_ENABLE_VP)?;
    if out.rax != status::SUCCESS {
        bail!(
            "HvCallEnableVpVtl(VP 0, VTL1) returned {:#x}, expected HV_STATUS_SUCCESS",
            out.rax
        );
    }
    let stopped = running.stop()?;
    let mut f = round_failures(&vsm, 0, &r, &vsm.read_round(VP, 0)?);
    let switches = stopped.switches(VP);
    if switches != [(0, 1), (1, 0)] {
        f.push_str(&format!(
            "switches {switches:?}, expected [(0, 1), (1, 0)]\n"
        ));
    }
    let sib = stopped.sibling(VP, 1)?;
    let after = crate::vp::lock_sibling(&sib)
        .fd
        .get_mp_state()
        .map_err(|e| anyhow::anyhow!("KVM_GET_MP_STATE on the VTL1 sibling: {e}"))?
        .mp_state;
    if after != KVM_MP_STATE_RUNNABLE {
        f.push_str(&format!(
            "the VTL1 sibling is in MP state {after} after the round trip, expected RUNNABLE\n"
        ));
    }
    if !f.is_empty() {
        bail!("{f}runner log: {:?}", stopped.events(VP));
    }
    Ok(Outcome::Pass)
}
