// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Device interrupts: MSIs (KVM_SIGNAL_MSI and GSI routes) go to group 0 or to the group they
//! name with KVM_MSI_VALID_APIC_GROUP; the in-kernel IOAPIC reaches group 0 only.

use anyhow::{anyhow, bail};
use kvm_bindings::{kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};

use super::scenario::{
    build_checked, groups_supported, program_ioapic, run_scenario, two_groups, Expect, Mode, Op,
    Sends, G0_A, G0_B, G1_A, G1_B,
};
use crate::check_eq;
use crate::harness::{Outcome, TestResult};
use crate::vm::{layout, TestVm, VmOptions};

pub(super) fn apic_group_msi() -> TestResult {
    let nodes = two_groups();
    let Some(vm) = build_checked(&nodes, Mode::X2apic)? else {
        return Ok(Outcome::Skip("KVM_CAP_APIC_GROUPS < 2".into()));
    };
    let supported = groups_supported(&vm);
    msi_errors(supported)?;
    // An MSI route per case on GSIs 30.. (this replaces the default IOAPIC routes, which this
    // test does not use).
    let route = |gsi: u32, dest: u32, vector: u8, group: Option<u32>| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = layout::XAPIC as u32 | (dest << 12);
        e.u.msi.data = u32::from(vector);
        match group {
            Some(g) => vtlkit_uapi::route_to_group(e, g),
            None => e,
        }
    };
    let mut s = Sends::new();
    s.add(
        "KVM_SIGNAL_MSI to APIC ID 1, no group",
        0,
        Op::Msi {
            dest: 1,
            group: None,
        },
        Expect::Each(vec![G0_B]),
    );
    s.add(
        "KVM_SIGNAL_MSI to APIC ID 0, no group",
        0,
        Op::Msi {
            dest: 0,
            group: None,
        },
        Expect::Each(vec![G0_A]),
    );
    s.add(
        "KVM_SIGNAL_MSI to APIC ID 1, group 1",
        0,
        Op::Msi {
            dest: 1,
            group: Some(1),
        },
        Expect::Each(vec![G1_B]),
    );
    s.add(
        "KVM_SIGNAL_MSI to APIC ID 0, group 1",
        0,
        Op::Msi {
            dest: 0,
            group: Some(1),
        },
        Expect::Each(vec![G1_A]),
    );
    s.add(
        "KVM_SIGNAL_MSI to APIC ID 0, apic_group field 1 but no KVM_MSI_VALID_APIC_GROUP",
        0,
        Op::MsiFieldNoFlag { dest: 0, field: 1 },
        Expect::Each(vec![G0_A]),
    );
    s.add(
        "KVM_SIGNAL_MSI to APIC ID 1, group 0 named",
        0,
        Op::Msi {
            dest: 1,
            group: Some(0),
        },
        Expect::Each(vec![G0_B]),
    );
    s.add(
        "KVM_SIGNAL_MSI broadcast 0xff, group 1",
        0,
        Op::Msi {
            dest: 0xff,
            group: Some(1),
        },
        Expect::Each(vec![G1_A, G1_B]),
    );
    if supported >= 3 {
        s.add(
            format!("KVM_SIGNAL_MSI to APIC ID 0, empty group {}", supported - 1),
            0,
            Op::Msi {
                dest: 0,
                group: Some(supported - 1),
            },
            Expect::Each(vec![]),
        );
    }
    // The same through GSI routes.
    let mut entries = Vec::new();
    for (k, (dest, group, expect)) in [
        (1, None, vec![G0_B]),
        (1, Some(1), vec![G1_B]),
        (0, Some(1), vec![G1_A]),
    ]
    .into_iter()
    .enumerate()
    {
        let gsi = 30 + k as u32;
        let before = s.next_vector;
        s.add(
            format!("MSI route GSI {gsi} to APIC ID {dest}, group {group:?}"),
            0,
            Op::Line { gsi },
            Expect::Each(expect),
        );
        entries.push(route(gsi, dest, before, group));
    }
    if supported >= 3 {
        let gsi = 33;
        let before = s.next_vector;
        s.add(
            format!("MSI route GSI {gsi} to empty group {}", supported - 1),
            0,
            Op::Line { gsi },
            Expect::Each(vec![]),
        );
        entries.push(route(gsi, 0, before, Some(supported - 1)));
    }
    let mut routing = KvmIrqRouting::new(0).map_err(|e| anyhow!("KvmIrqRouting: {e:?}"))?;
    for e in entries {
        routing
            .push(e)
            .map_err(|e| anyhow!("KvmIrqRouting push: {e:?}"))?;
    }
    vm.fd
        .set_gsi_routing(&routing)
        .map_err(|e| anyhow!("KVM_SET_GSI_ROUTING: {e}"))?;
    run_scenario(vm, &nodes, Mode::X2apic, &s.list)?;
    Ok(Outcome::Pass)
}

/// The MSI errors: the group flag without the VM-wide opt-in, and a group out of range, are
/// EINVAL for KVM_SIGNAL_MSI and for MSI routes; an MSI to an empty group returns exactly 0.
fn msi_errors(supported: u32) -> anyhow::Result<()> {
    let msi = |group: u32| {
        vtlkit_uapi::msi_to_group(
            kvm_msi {
                address_lo: layout::XAPIC as u32,
                data: 0x40,
                ..Default::default()
            },
            group,
        )
    };
    let route = |group: u32| -> anyhow::Result<KvmIrqRouting> {
        let mut e = kvm_irq_routing_entry {
            gsi: 30,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = layout::XAPIC as u32;
        e.u.msi.data = 0x40;
        let mut r = KvmIrqRouting::new(0).map_err(|e| anyhow!("KvmIrqRouting: {e:?}"))?;
        r.push(vtlkit_uapi::route_to_group(e, group))
            .map_err(|e| anyhow!("KvmIrqRouting push: {e:?}"))?;
        Ok(r)
    };
    let einval = |what: &str, r: Result<i32, kvm_ioctls::Error>| -> anyhow::Result<()> {
        match r {
            Ok(n) => bail!("{what} returned {n}, expected EINVAL"),
            Err(e) => {
                check_eq!(e.errno(), libc::EINVAL, "{what}: errno");
                Ok(())
            }
        }
    };

    let stock = TestVm::new(VmOptions::default())?;
    einval(
        "KVM_SIGNAL_MSI with KVM_MSI_VALID_APIC_GROUP (group 0) in a VM that did not opt in",
        stock.fd.signal_msi(msi(0)),
    )?;
    einval(
        "KVM_SET_GSI_ROUTING with KVM_MSI_VALID_APIC_GROUP (group 0) in a VM that did not opt in",
        stock.fd.set_gsi_routing(&route(0)?).map(|()| 0),
    )?;

    let grouped = TestVm::new(VmOptions::apic_groups())?;
    for g in [supported, supported + 1, u32::MAX] {
        einval(
            &format!("KVM_SIGNAL_MSI to apic_group {g} (KVM_CAP_APIC_GROUPS = {supported})"),
            grouped.fd.signal_msi(msi(g)),
        )?;
        einval(
            &format!("KVM_SET_GSI_ROUTING to apic_group {g} (KVM_CAP_APIC_GROUPS = {supported})"),
            grouped.fd.set_gsi_routing(&route(g)?).map(|()| 0),
        )?;
    }
    // A VM without vCPUs: every group is empty. With the flag the answer is 0, never -1.
    for g in [0, 1, supported - 1] {
        match grouped.fd.signal_msi(msi(g)) {
            Ok(n) => check_eq!(n, 0, "KVM_SIGNAL_MSI to empty group {g}"),
            Err(e) => bail!("KVM_SIGNAL_MSI to empty group {g}: {e}, expected 0"),
        }
    }
    Ok(())
}

pub(super) fn apic_group_ioapic() -> TestResult {
    let nodes = two_groups();
    let Some(vm) = build_checked(&nodes, Mode::XapicFlat)? else {
        return Ok(Outcome::Skip("KVM_CAP_APIC_GROUPS < 2".into()));
    };
    // Pins 20..22 (GSI = pin with the default routes), physical destinations.
    let mut s = Sends::new();
    let pins: [(u32, u8, &str, Vec<usize>); 3] = [
        (20, 1, "physical to APIC ID 1", vec![G0_B]),
        (21, 0, "physical to APIC ID 0", vec![G0_A]),
        (22, 0xff, "physical broadcast 0xff", vec![G0_A, G0_B]),
    ];
    let mut redir = Vec::new();
    for (pin, dest, what, expect) in pins {
        redir.push((pin, s.next_vector, dest));
        s.add(
            format!("IOAPIC pin {pin}, {what}"),
            0,
            Op::Line { gsi: pin },
            Expect::Each(expect),
        );
    }
    program_ioapic(&vm, &redir)?;
    run_scenario(vm, &nodes, Mode::XapicFlat, &s.list)?;
    Ok(Outcome::Pass)
}
