// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Interrupts for a VTL that is not running (issue 11, series v4's
//! `KVM_CAP_VCPU_EVENT_NOTIFY`), on the VP runner ([`crate::vp`]) and the uapi state machine:
//! an interrupt for a parked VTL1 stops VTL0 (`KVM_EXIT_EVENT_NOTIFY`) and enters VTL1 with
//! entry reason Interrupt; VTL1's guest takes it and returns; VTL0 resumes where it was. Each
//! check is made inside the nested guests (their interrupt counts, VTL0's register
//! invariants) or on KVM state (debugfs run_state, the runner's log).
//!
//! * [`preempt`]: an MSI, an IPI from another VP, a SINT, each to VTL1 while VTL0 spins with
//!   interrupts disabled;
//! * [`tpr`]: VTL1's TPR defers the preemption until VTL1 lowers it;
//! * [`lower`]: an interrupt for VTL0 while VTL1 runs waits for VTL0;
//! * [`halt`]: a halted VTL0 wakes into VTL1 and halts again;
//! * [`stress`]: 4 VPs under cross-VTL MSIs for 5 s, every interrupt handled exactly once.

pub(crate) mod common;
mod halt;
mod lower;
mod preempt;
mod stress;
mod tpr;

use crate::harness::Test;

pub const TESTS: &[Test] = &[
    Test {
        name: "wake_msi_preempts_vtl0",
        about: "an MSI to VTL1 preempts VTL0 spinning with interrupts disabled: VTL1 entered with reason Interrupt handles it, VTL0 resumes its loop with RAX/RCX intact",
        run: preempt::wake_msi_preempts_vtl0,
    },
    Test {
        name: "wake_ipi_preempts_vtl0",
        about: "a Hyper-V IPI from VP 1's VTL1 to VP 0's VTL1 preempts VP 0's VTL0 (interrupts disabled) and is handled by VTL1",
        run: preempt::wake_ipi_preempts_vtl0,
    },
    Test {
        name: "wake_sint_preempts_vtl0",
        about: "a SynIC SINT routed to group 1 preempts VTL0 (interrupts disabled) and is handled by VTL1",
        run: preempt::wake_sint_preempts_vtl0,
    },
    Test {
        name: "wake_tpr_defers_until_lowered",
        about: "with VTL1's CR8 above the vector's class the interrupt waits while VTL0 spins; once VTL1 lowers CR8 and returns, it preempts VTL0",
        run: tpr::wake_tpr_defers_until_lowered,
    },
    Test {
        name: "wake_vtl0_interrupt_waits",
        about: "an MSI to VTL0 while VTL1 is active stops nothing and waits: VTL0 takes it right after VTL1 returns",
        run: lower::wake_vtl0_interrupt_waits_for_vtl0,
    },
    Test {
        name: "wake_halted_vtl0_wakes_into_vtl1",
        about: "a VTL0 halted in KVM_RUN wakes into VTL1 for VTL1's interrupt, is halted again after VTL1 returns (debugfs run_state), and wakes for its own",
        run: halt::wake_halted_vtl0_wakes_into_vtl1,
    },
    Test {
        name: "wake_stress_cross_vtl",
        about: "4 VPs, host threads send MSIs to every VTL0 and VTL1 for 5 s: each VTL handles exactly what was sent to it, no VP stuck",
        run: stress::wake_stress_cross_vtl,
    },
];
