// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Hyper-V VSM end to end (issue 9, series v3): nested guests that enable VTL1 and switch
//! between VTL0 and VTL1 with VtlCall/VtlReturn, run by the framework's VP runner
//! ([`crate::vp`]: one thread per VP, the uapi crate's VTL state machine deciding which sibling
//! vCPU runs). What each VTL found after a switch is recorded by the guest itself and checked
//! here; KVM state (LAPIC IRR) and the runner's log of switches complete the picture.
//!
//! * [`common`]: the scenario the tests share (not tests);
//! * [`call`]: VtlCall/VtlReturn: shared and private registers, normal and fast return, the
//!   entry reason, several round trips;
//! * [`ipi`]: Hyper-V IPIs between the VTLs of a VP;
//! * [`fault`]: VtlCall with no higher VTL enabled;
//! * [`intercept`]: secure memory intercepts (issue 10): a VTL0 write to a page VTL1 made
//!   read-only reaches VTL1 as a SynIC message, and VTL1 allows or denies it.

mod call;
mod common;
mod fault;
mod intercept;
mod ipi;

use crate::harness::Test;

pub const TESTS: &[Test] = &[
    Test {
        name: "vsm_vtl_call_registers",
        about: "a VtlCall enters the VTL1 sibling with VTL0's shared registers (RAX..R15 but RSP, XMM6) and VTL1's own RSP, CR3, GS base; VtlReturn resumes VTL0 after its call with VTL1's shared registers and its own private ones",
        run: call::vsm_vtl_call_registers,
    },
    Test {
        name: "vsm_vtl_return_modes",
        about: "VtlReturn restores RAX/RCX from VTL1's HV_VP_VTL_CONTROL (normal) or leaves VTL1's (fast); VTL1 sees entry reason 1 in its VP assist page; several round trips re-enter VTL1 after its VtlReturn, switches logged in order",
        run: call::vsm_vtl_return_modes,
    },
    Test {
        name: "vsm_vtl1_sibling_starts_uninitialized",
        about: "a VTL1 sibling left in KVM_MP_STATE_UNINITIALIZED, as KVM creates it, is made runnable by HvCallEnableVpVtl: the VtlCall enters it (no wait for INIT/SIPI) and the round trip completes",
        run: call::vsm_vtl1_sibling_starts_uninitialized,
    },
    Test {
        name: "vsm_ipi_lower_to_higher_denied",
        about: "a Hyper-V IPI from VTL0 to VTL1 of its VP gets HV_STATUS_ACCESS_DENIED and is delivered nowhere (guest counts, LAPIC IRR), and the next VtlCall still works",
        run: ipi::vsm_ipi_lower_to_higher_denied,
    },
    Test {
        name: "vsm_ipi_higher_to_lower_delivered",
        about: "a Hyper-V IPI from VTL1 to VTL0 succeeds, lands in VTL0's APIC group only, and is handled by VTL0 right after its VtlCall returns",
        run: ipi::vsm_ipi_higher_to_lower_delivered,
    },
    Test {
        name: "vsm_vtl_call_without_higher_vtl_ud",
        about: "a VtlCall with no higher VTL enabled raises #UD at the hypercall instruction in the guest (the state machine's answer), with no switch",
        run: fault::vsm_vtl_call_without_higher_vtl_ud,
    },
    Test {
        name: "vsm_intercept_allow",
        about: "VTL1 makes a page read-only for VTL0 (HvCallModifyVtlProtectionMask); VTL0's write to it reaches VTL1 as an HvX64MemoryInterceptMessage on SINT0 (type, GPA, write, VP index, RIP, length, bytes read by VTL1); VTL1 lifts the protection and VTL0's write completes exactly once",
        run: intercept::vsm_intercept_allow,
    },
    Test {
        name: "vsm_intercept_deny",
        about: "as vsm_intercept_allow, but VTL1 moves VTL0's RIP past the write (HvCallSetVpRegisters): VTL0 reads the old value, memory is unchanged and VTL0's view stays read-only (KVM_GET_VTL_PROTECTION)",
        run: intercept::vsm_intercept_deny,
    },
    Test {
        name: "vsm_intercept_read_allow",
        about: "VTL1 takes all access to a page from VTL0; VTL0's read of it reaches VTL1 as a GPA-intercept message with access type read (and the load's RIP, length, bytes); VTL1 lifts the protection and VTL0 reads the page's value",
        run: intercept::vsm_intercept_read_allow,
    },
];
