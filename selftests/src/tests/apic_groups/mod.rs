// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! APIC groups end to end: the VM-wide opt-in and the vCPU ioctls with their errors, the
//! guest-visible APIC ID, interrupt delivery scoped to groups (checked by counting interrupts
//! inside nested guests), and the confinement fixes of v2.
//!
//! * [`scenario`]: the shared topology/scenario machinery (not tests);
//! * [`ioctls`]: KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS), KVM_SET/GET_APIC_GROUP;
//! * [`ipi`]: ICR and PV IPIs, guest-visible IDs, a VM that never opts in;
//! * [`msi`]: MSIs and the IOAPIC;
//! * [`confinement`]: nothing crosses a group boundary (assignment, PIT watchdog, statistic);
//! * [`wake`]: waking halted vCPUs (IPIs, KVM_HC_KICK_CPU).
//!
//! Every VM with groups opts in with [`crate::vm::VmOptions::apic_groups`] and assigns each
//! vCPU its group before it runs.

mod confinement;
mod ioctls;
mod ipi;
mod msi;
mod scenario;
mod wake;

use crate::harness::Test;

pub const TESTS: &[Test] = &[
    Test {
        name: "apic_group_set_get",
        about: "KVM_GET_APIC_GROUP: (0, vcpu_id, 0) without opt-in, KVM_APIC_GROUP_NONE until assigned, then what KVM_SET_APIC_GROUP stored; identical repeats succeed",
        run: ioctls::apic_group_set_get,
    },
    Test {
        name: "apic_group_errors",
        about: "KVM_ENABLE_CAP (EINVAL, ENXIO, EBUSY) and KVM_SET_APIC_GROUP (EINVAL, ENXIO, EBUSY, EEXIST, EFAULT) errors, KVM_RUN ENOEXEC when unassigned; failures change nothing",
        run: ioctls::apic_group_errors,
    },
    Test {
        name: "apic_group_ids_visible",
        about: "VTL 0 and VTL 1 vCPUs share APIC IDs in two groups; each guest reads its assigned ID (xAPIC ID register and x2APIC MSR 0x802)",
        run: ipi::apic_group_ids_visible,
    },
    Test {
        name: "apic_group_ipi_x2apic",
        about: "x2APIC IPIs (physical, cluster, self/all/others shorthands, 0xffffffff broadcast, lowest priority, KVM PV IPI) stay in the sender's group",
        run: ipi::apic_group_ipi_x2apic,
    },
    Test {
        name: "apic_group_ipi_xapic_flat",
        about: "xAPIC IPIs (physical, logical flat, shorthands, 0xff broadcast, lowest priority, KVM PV IPI) stay in the sender's group",
        run: ipi::apic_group_ipi_xapic_flat,
    },
    Test {
        name: "apic_group_ipi_xapic_cluster",
        about: "xAPIC logical cluster IPIs (one member, several, lowest priority, broadcast) stay in the sender's group",
        run: ipi::apic_group_ipi_xapic_cluster,
    },
    Test {
        name: "apic_group_msi",
        about: "MSIs go to group 0, or the group named with KVM_MSI_VALID_APIC_GROUP (EINVAL without opt-in or out of range); an empty group returns exactly 0",
        run: msi::apic_group_msi,
    },
    Test {
        name: "apic_group_ioapic",
        about: "IOAPIC interrupts (KVM_IRQ_LINE, physical and broadcast redirection entries) reach group 0 only",
        run: msi::apic_group_ioapic,
    },
    Test {
        name: "apic_group_unassigned_is_stock",
        about: "a VM that never opts in behaves as stock: APIC ID = vcpu_id, IPIs, MSIs and IOAPIC interrupts delivered as usual",
        run: ipi::apic_group_unassigned_is_stock,
    },
    Test {
        name: "apic_group_clean_assignment",
        about: "NMI, INIT and fixed IPIs sent while a vCPU is unassigned never reach it, neither before nor after it joins a group",
        run: confinement::apic_group_clean_assignment,
    },
    Test {
        name: "apic_group_pit_nmi",
        about: "the in-kernel PIT's NMI watchdog (LVT0 in NMI mode) reaches the group-0 vCPU and not its group-1 sibling",
        run: confinement::apic_group_pit_nmi,
    },
    Test {
        name: "apic_group_irq_dropped",
        about: "apic_group_irq_dropped counts an MSI to an empty group aimed at a group-0 ID, not shorthands, disabled APICs, delivered interrupts or VMs without opt-in",
        run: confinement::apic_group_irq_dropped,
    },
    Test {
        name: "apic_group_wake",
        about: "acknowledged IPIs and KVM_HC_KICK_CPU wake the halted receiver in the sender's group, never its halted same-ID sibling",
        run: wake::apic_group_wake,
    },
];
