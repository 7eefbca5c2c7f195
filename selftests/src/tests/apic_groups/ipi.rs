// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! IPIs (ICR writes in every destination mode and shorthand, KVM PV IPIs) stay in the sender's
//! group; guests read their assigned APIC IDs; a VM that never opts in behaves as stock.

use anyhow::Context;
use vtlkit_uapi::{ApicGroup, VcpuApicGroupExt};

use super::scenario::{
    build, build_checked, groups_supported, kvm_err, members, program_ioapic, run_scenario,
    two_groups, Expect, Mode, Node, Op, Sends, G0_A, G0_B, G1_A, G1_B,
};
use crate::check_eq;
use crate::guest::icr::{
    DEST_LOGICAL, DM_FIXED, DM_LOWEST, LEVEL_ASSERT, SH_ALL, SH_OTHERS, SH_SELF,
};
use crate::harness::{Outcome, TestResult};

/// Maps a set of APIC IDs to the logical destination that selects exactly them.
type LogicalDest = fn(&[u32]) -> u32;

/// The IPI cases every mode has, sent by `from` (whose peer in its group is `peer`); `dest`
/// maps an APIC ID to the logical destination that selects it in this mode.
fn common_ipis(
    s: &mut Sends,
    nodes: &[Node],
    from: usize,
    peer: usize,
    logical: LogicalDest,
    broadcast: u32,
) {
    let group = members(nodes, nodes[from].group_nr());
    let others: Vec<usize> = group.iter().copied().filter(|&i| i != from).collect();
    let peer_id = nodes[peer].visible_apic_id();
    let ids: Vec<u32> = group.iter().map(|&i| nodes[i].visible_apic_id()).collect();
    let each = |v: &[usize]| Expect::Each(v.to_vec());
    s.add(
        "physical, fixed, to the peer",
        from,
        Op::Icr {
            dest: peer_id,
            low: DM_FIXED | LEVEL_ASSERT,
        },
        each(&[peer]),
    );
    s.add(
        "logical, fixed, to the peer",
        from,
        Op::Icr {
            dest: logical(&[peer_id]),
            low: DM_FIXED | DEST_LOGICAL | LEVEL_ASSERT,
        },
        each(&[peer]),
    );
    s.add(
        "logical, fixed, to both IDs",
        from,
        Op::Icr {
            dest: logical(&ids),
            low: DM_FIXED | DEST_LOGICAL | LEVEL_ASSERT,
        },
        each(&group),
    );
    s.add(
        "logical, lowest priority, to both IDs",
        from,
        Op::Icr {
            dest: logical(&ids),
            low: DM_LOWEST | DEST_LOGICAL | LEVEL_ASSERT,
        },
        Expect::OneOf(group.clone()),
    );
    s.add(
        "shorthand self",
        from,
        Op::Icr {
            dest: 0,
            low: DM_FIXED | LEVEL_ASSERT | SH_SELF,
        },
        each(&[from]),
    );
    s.add(
        "shorthand all including self",
        from,
        Op::Icr {
            dest: 0,
            low: DM_FIXED | LEVEL_ASSERT | SH_ALL,
        },
        each(&group),
    );
    s.add(
        "shorthand all excluding self",
        from,
        Op::Icr {
            dest: 0,
            low: DM_FIXED | LEVEL_ASSERT | SH_OTHERS,
        },
        each(&others),
    );
    s.add(
        format!("physical broadcast destination {broadcast:#x}"),
        from,
        Op::Icr {
            dest: broadcast,
            low: DM_FIXED | LEVEL_ASSERT,
        },
        each(&group),
    );
    let min = ids.iter().copied().min().unwrap_or(0);
    s.add(
        "KVM PV IPI to the peer",
        from,
        Op::PvIpi {
            bitmap: 1 << (peer_id - min),
            min,
        },
        each(&[peer]),
    );
    s.add(
        "KVM PV IPI to every ID of the group",
        from,
        Op::PvIpi {
            bitmap: ids.iter().fold(0, |b, id| b | (1 << (id - min))),
            min,
        },
        each(&group),
    );
}

fn ipi_test(mode: Mode) -> TestResult {
    let nodes = two_groups();
    let vm = build_checked(&nodes, mode)?;
    let Some(vm) = vm else {
        return Ok(Outcome::Skip("KVM_CAP_APIC_GROUPS < 2".into()));
    };
    let mut s = Sends::new();
    let (logical, broadcast): (LogicalDest, u32) = match mode {
        Mode::XapicFlat => (|ids| ids.iter().fold(0, |d, id| d | (1 << id)), 0xff),
        Mode::XapicCluster => (
            |ids| 0x10 | ids.iter().fold(0, |d, id| d | (1 << (id % 4))),
            0xff,
        ),
        Mode::X2apic => (
            |ids| {
                ids.iter()
                    .fold(0, |d, id| d | ((id >> 4) << 16) | (1 << (id & 15)))
            },
            0xffff_ffff,
        ),
    };
    // One sender in each group, so both directions are covered.
    common_ipis(&mut s, &nodes, G0_A, G0_B, logical, broadcast);
    common_ipis(&mut s, &nodes, G1_B, G1_A, logical, broadcast);
    if mode == Mode::XapicCluster {
        s.add(
            "logical cluster broadcast 0xff",
            G0_B,
            Op::Icr {
                dest: 0xff,
                low: DM_FIXED | DEST_LOGICAL | LEVEL_ASSERT,
            },
            Expect::Each(members(&nodes, 0)),
        );
    }
    run_scenario(vm, &nodes, mode, &s.list)?;
    Ok(Outcome::Pass)
}

pub(super) fn apic_group_ipi_x2apic() -> TestResult {
    ipi_test(Mode::X2apic)
}

pub(super) fn apic_group_ipi_xapic_flat() -> TestResult {
    ipi_test(Mode::XapicFlat)
}

pub(super) fn apic_group_ipi_xapic_cluster() -> TestResult {
    ipi_test(Mode::XapicCluster)
}

// ---------------------------------------------------------------------------------------------
// Guest-visible IDs.

pub(super) fn apic_group_ids_visible() -> TestResult {
    for mode in [Mode::XapicFlat, Mode::X2apic] {
        // IDs that differ from every vcpu_id, shared by a VTL 0 and a VTL 1 vCPU each.
        let n = Node::assigned;
        let nodes = [n(0, 0, 5, 0), n(1, 0, 3, 0), n(2, 1, 5, 1), n(3, 1, 3, 1)];
        let Some(vm) = build_checked(&nodes, mode)? else {
            return Ok(Outcome::Skip("KVM_CAP_APIC_GROUPS < 2".into()));
        };
        // run_scenario checks the IDs and LDRs every guest reads; one physical IPI per group to
        // the shared ID 3 shows the ID is also what delivery uses.
        let mut s = Sends::new();
        for (from, to) in [(0, 1), (2, 3)] {
            s.add(
                "physical IPI to APIC ID 3",
                from,
                Op::Icr {
                    dest: 3,
                    low: DM_FIXED | LEVEL_ASSERT,
                },
                Expect::Each(vec![to]),
            );
        }
        run_scenario(vm, &nodes, mode, &s.list).with_context(|| format!("{mode:?}"))?;
    }
    Ok(Outcome::Pass)
}

// ---------------------------------------------------------------------------------------------
// Stock behaviour.

pub(super) fn apic_group_unassigned_is_stock() -> TestResult {
    let nodes: Vec<Node> = (0..3)
        .map(|vcpu_id| Node {
            vcpu_id,
            group: None,
        })
        .collect();
    for mode in [Mode::X2apic, Mode::XapicFlat] {
        let vm = build(&nodes, mode)?;
        if groups_supported(&vm) >= 1 {
            for (i, n) in nodes.iter().enumerate() {
                check_eq!(
                    vm.vcpu(i)?.fd.get_apic_group().map_err(kvm_err)?,
                    ApicGroup {
                        group: 0,
                        apic_id: n.vcpu_id as u32,
                        vtl: 0
                    },
                    "KVM_GET_APIC_GROUP on never-assigned vCPU {}",
                    n.vcpu_id
                );
            }
        }
        let (broadcast, logical_12) = match mode {
            Mode::X2apic => (0xffff_ffff, 0b110),
            _ => (0xff, 0b110),
        };
        let mut s = Sends::new();
        let e = |v: &[usize]| Expect::Each(v.to_vec());
        let fixed = DM_FIXED | LEVEL_ASSERT;
        s.add(
            "physical to APIC ID 2",
            0,
            Op::Icr {
                dest: 2,
                low: fixed,
            },
            e(&[2]),
        );
        s.add(
            "logical to IDs 1 and 2",
            0,
            Op::Icr {
                dest: logical_12,
                low: fixed | DEST_LOGICAL,
            },
            e(&[1, 2]),
        );
        s.add(
            "shorthand all excluding self",
            1,
            Op::Icr {
                dest: 0,
                low: fixed | SH_OTHERS,
            },
            e(&[0, 2]),
        );
        s.add(
            "physical broadcast",
            2,
            Op::Icr {
                dest: broadcast,
                low: fixed,
            },
            e(&[0, 1, 2]),
        );
        s.add(
            "KVM PV IPI to IDs 0 and 2",
            1,
            Op::PvIpi {
                bitmap: 0b101,
                min: 0,
            },
            e(&[0, 2]),
        );
        s.add(
            "KVM_SIGNAL_MSI to APIC ID 1",
            0,
            Op::Msi {
                dest: 1,
                group: None,
            },
            e(&[1]),
        );
        s.add(
            "IOAPIC pin 20 to APIC ID 2",
            0,
            Op::Line { gsi: 20 },
            e(&[2]),
        );
        program_ioapic(&vm, &[(20, s.list[s.list.len() - 1].vector, 2)])?;
        run_scenario(vm, &nodes, mode, &s.list).with_context(|| format!("{mode:?}"))?;
    }
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_get_distinct_vectors() {
        let mut s = Sends::new();
        common_ipis(
            &mut s,
            &two_groups(),
            G0_A,
            G0_B,
            |ids: &[u32]| ids.iter().fold(0, |d, id| d | (1 << id)),
            0xff,
        );
        let mut v: Vec<u8> = s.list.iter().map(|x| x.vector).collect();
        v.dedup();
        assert_eq!(v.len(), s.list.len());
    }
}
