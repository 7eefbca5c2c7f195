// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Hyper-V emulation in VMs with APIC groups (issue 9, series v3): every VP-index lookup is
//! scoped to the sender's group, HV_INPUT_VTL is decoded, cross-VTL IPIs and the VSM
//! hypercalls exit to userspace with KVM_CAP_HYPERV_VSM, SINT routes name a group, and the
//! hypercall MSRs are private per group. Checked from inside nested guests (interrupts counted
//! per vector, statuses the guest saw) and from KVM state (IRR/ISR, MSRs, statistics).
//!
//! * [`common`]: the topology and IPI-case machinery the tests share (not tests);
//! * [`ipi`]: HvCallSendSyntheticClusterIpi(Ex): group scoping, reserved VTL bits, cross-VTL;
//! * [`vsm`]: the VSM hypercalls forwarded to userspace;
//! * [`sint`]: SynIC SINT routes naming a group;
//! * [`msrs`]: GUEST_OS_ID and HYPERCALL per group;
//! * [`tlb`]: TLB-flush hypercalls scoped to the group (per-vCPU `tlb_flush` statistic).
//!
//! The framework side (CPUID, VP indexes, hypercall programs, exit handlers) is
//! [`crate::hyperv`]; its documentation says how to write another of these.

mod common;
mod ipi;
mod msrs;
mod sint;
mod tlb;
mod vsm;

use crate::harness::Test;

pub const TESTS: &[Test] = &[
    Test {
        name: "hv_ipi_group_scoped",
        about: "HvCallSendSyntheticClusterIpi(Ex), slow and fast, to VP sets and to ALL, reach only the sender's APIC group, also where VTL siblings share VP indexes",
        run: ipi::hv_ipi_group_scoped,
    },
    Test {
        name: "hv_ipi_reserved_vtl_bits",
        about: "Hyper-V IPIs with reserved HV_INPUT_VTL bits 7:5 or fast RDX bits 63:40 set fail with status 3 and deliver nothing",
        run: ipi::hv_ipi_reserved_vtl_bits,
    },
    Test {
        name: "hv_ipi_cross_vtl_exit",
        about: "with KVM_CAP_HYPERV_VSM an IPI naming another VTL exits to userspace (control, params, XMM) and the guest sees the host's status; without it status 5; nothing delivered",
        run: ipi::hv_ipi_cross_vtl_exit,
    },
    Test {
        name: "hv_vsm_hypercalls_forwarded",
        about: "with KVM_CAP_HYPERV_VSM the VSM hypercalls (0x0C 0x0D 0x0F 0x11 0x12 0x50 0x51) exit to userspace, VtlCall/VtlReturn keep RAX, hv_vtl_exits counts them; without it status 2",
        run: vsm::hv_vsm_hypercalls_forwarded,
    },
    Test {
        name: "hv_sint_route_group",
        about: "an HV_SINT route with KVM_HV_SINT_VALID_APIC_GROUP reaches that group's vCPU with the VP index, and only it; without the flag group 0; EINVAL without groups or out of range",
        run: sint::hv_sint_route_group,
    },
    Test {
        name: "hv_hypercall_msrs_per_group",
        about: "GUEST_OS_ID and HYPERCALL are private per APIC group (guest RDMSR, KVM_GET_MSRS); a group without GUEST_OS_ID makes no Hyper-V hypercalls",
        run: msrs::hv_hypercall_msrs_per_group,
    },
    Test {
        name: "hv_tlb_flush_group_scoped",
        about: "HvCallFlushVirtualAddressList(Ex) to a VP set or to all processors flush only the sender's APIC group (the targets' tlb_flush statistic counts each GVA)",
        run: tlb::hv_tlb_flush_group_scoped,
    },
];
