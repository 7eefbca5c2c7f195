// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! APIC groups end to end: the vCPU ioctls and their errors, the guest-visible APIC ID, and
//! interrupt delivery scoped to groups, checked by counting interrupts inside nested guests.
//!
//! The interrupt tests share one shape ([`Topology`] + [`run_scenario`]): every vCPU runs
//! `vtlkit_guest_apic_main`, enables its APIC (xAPIC flat, xAPIC cluster or x2APIC), reports the
//! APIC ID and LDR it reads, and halts counting interrupts per vector. Senders get a program of
//! ICR writes and PV IPIs, one vector per send, and run it when the host says GO. At the end the
//! host stops every vCPU and counts, per vCPU and vector, the interrupts handled plus any still
//! pending (IRR) or in service (ISR), so an interrupt that went to the wrong vCPU is seen even
//! if that vCPU had not handled it yet. Every send has an exact expectation.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irqchip, kvm_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQ_ROUTING_MSI,
};
use vtlkit_uapi::{raw, ApicGroup, VcpuApicGroupExt};

use crate::guest::icr::{
    DEST_LOGICAL, DM_FIXED, DM_LOWEST, LEVEL_ASSERT, SH_ALL, SH_OTHERS, SH_SELF,
};
use crate::guest::{pcpu, prog, ucall, Entry};
use crate::harness::{Outcome, Test, TestResult};
use crate::vm::{lapic_bit, lapic_reg, layout, TestVm, Ucall, Vcpu, VmOptions, DEFAULT_TIMEOUT};
use crate::{check, check_eq, require};

pub const TESTS: &[Test] = &[
    Test {
        name: "apic_group_set_get",
        about: "KVM_GET_APIC_GROUP returns what KVM_SET_APIC_GROUP stored; unassigned vCPUs read as group 0, APIC ID = vcpu_id, VTL 0",
        run: apic_group_set_get,
    },
    Test {
        name: "apic_group_errors",
        about: "EINVAL (group, vtl, apic_id, flags, pad, reserved), EEXIST, EBUSY, ENXIO, and a failed set changes nothing",
        run: apic_group_errors,
    },
    Test {
        name: "apic_group_ids_visible",
        about: "VTL 0 and VTL 1 vCPUs share APIC IDs in two groups; each guest reads its assigned ID (xAPIC ID register and x2APIC MSR 0x802)",
        run: apic_group_ids_visible,
    },
    Test {
        name: "apic_group_ipi_x2apic",
        about: "x2APIC IPIs (physical, cluster, self/all/others shorthands, 0xffffffff broadcast, lowest priority, KVM PV IPI) stay in the sender's group",
        run: apic_group_ipi_x2apic,
    },
    Test {
        name: "apic_group_ipi_xapic_flat",
        about: "xAPIC IPIs (physical, logical flat, shorthands, 0xff broadcast, lowest priority, KVM PV IPI) stay in the sender's group",
        run: apic_group_ipi_xapic_flat,
    },
    Test {
        name: "apic_group_ipi_xapic_cluster",
        about: "xAPIC logical cluster IPIs (one member, several, lowest priority, broadcast) stay in the sender's group",
        run: apic_group_ipi_xapic_cluster,
    },
    Test {
        name: "apic_group_msi",
        about: "KVM_SIGNAL_MSI and MSI routes go to group 0 by default, to a named group with KVM_MSI_VALID_APIC_GROUP, and nowhere for an empty group",
        run: apic_group_msi,
    },
    Test {
        name: "apic_group_ioapic",
        about: "IOAPIC interrupts (KVM_IRQ_LINE, physical and broadcast redirection entries) reach group 0 only",
        run: apic_group_ioapic,
    },
    Test {
        name: "apic_group_unassigned_is_stock",
        about: "a VM that never assigns groups behaves as stock: APIC ID = vcpu_id, IPIs and MSIs delivered as usual",
        run: apic_group_unassigned_is_stock,
    },
];

/// How the guests run their local APICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// xAPIC, flat logical model: LDR = 1 << APIC ID (IDs 0..7).
    XapicFlat,
    /// xAPIC, cluster logical model: cluster 1, member bit 1 << (APIC ID % 4).
    XapicCluster,
    /// x2APIC (logical IDs are fixed: cluster = ID >> 4, member bit 1 << (ID & 15)).
    X2apic,
}

impl Mode {
    fn pcpu_mode(self) -> u64 {
        match self {
            Mode::X2apic => pcpu::APIC_MODE_X2APIC,
            _ => pcpu::APIC_MODE_XAPIC,
        }
    }

    /// (DFR, LDR) for the guest to program, or None to leave them.
    fn logical(self, apic_id: u32) -> Option<(u32, u32)> {
        match self {
            Mode::XapicFlat => Some((0xffff_ffff, (1 << apic_id) << 24)),
            Mode::XapicCluster => Some((0x0fff_ffff, (0x10 | (1 << (apic_id % 4))) << 24)),
            Mode::X2apic => None,
        }
    }

    /// The LDR the guest should read back.
    fn expected_ldr(self, apic_id: u32) -> u32 {
        match self.logical(apic_id) {
            Some((_, ldr)) => ldr,
            None => ((apic_id >> 4) << 16) | (1 << (apic_id & 15)),
        }
    }
}

/// One vCPU of a test topology.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// KVM vcpu_id.
    vcpu_id: u64,
    /// KVM_SET_APIC_GROUP, or None to leave the vCPU unassigned.
    group: Option<ApicGroup>,
}

impl Node {
    fn visible_apic_id(&self) -> u32 {
        self.group.map_or(self.vcpu_id as u32, |g| g.apic_id)
    }
    fn group_nr(&self) -> u32 {
        self.group.map_or(0, |g| g.group)
    }
}

/// The two-group topology most tests use: VTL 0 and VTL 1 siblings share APIC IDs 0 and 1.
/// Index 0 and 1 are group 0 (VTL 0), index 2 and 3 are group 1 (VTL 1).
const G0_A: usize = 0;
const G0_B: usize = 1;
const G1_A: usize = 2;
const G1_B: usize = 3;

fn two_groups() -> Vec<Node> {
    let n = |vcpu_id, group, apic_id, vtl| Node {
        vcpu_id,
        group: Some(ApicGroup {
            group,
            apic_id,
            vtl,
        }),
    };
    vec![n(0, 0, 0, 0), n(1, 0, 1, 0), n(2, 1, 0, 1), n(3, 1, 1, 1)]
}

fn kvm_err(e: vtlkit_uapi::Error) -> anyhow::Error {
    anyhow!("{e} (errno {})", e.errno())
}

/// Skip unless the kernel supports at least `n` APIC groups; returns the count.
fn groups_supported(vm: &TestVm) -> u32 {
    vtlkit_uapi::apic_groups_supported(&vm.kvm)
}

/// A VM with one vCPU per node, groups assigned, every vCPU at `vtlkit_guest_apic_main`.
fn build(nodes: &[Node], mode: Mode) -> Result<TestVm> {
    let mut vm = TestVm::new(VmOptions::default())?;
    for n in nodes {
        vm.add_vcpu(n.vcpu_id, Entry::ApicMain)?;
    }
    // Unassigned vCPUs sit in group 0 with APIC ID = vcpu_id, and KVM refuses a (group, ID)
    // that another vCPU holds: move the vCPUs bound for other groups out of group 0 first, so
    // their old IDs are free for the group-0 assignments.
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| nodes[i].group_nr() == 0);
    for i in order {
        let n = &nodes[i];
        if let Some(g) = n.group {
            vm.vcpu(i)?
                .fd
                .set_apic_group(g)
                .map_err(kvm_err)
                .with_context(|| format!("KVM_SET_APIC_GROUP({g:?}) on vCPU {}", n.vcpu_id))?;
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        vm.set_pcpu(i, pcpu::APIC_MODE, mode.pcpu_mode())?;
        if let Some((dfr, ldr)) = mode.logical(n.visible_apic_id()) {
            vm.set_pcpu(i, pcpu::XAPIC_DFR, dfr.into())?;
            vm.set_pcpu(i, pcpu::XAPIC_LDR, ldr.into())?;
        }
    }
    Ok(vm)
}

// ---------------------------------------------------------------------------------------------
// Interrupt scenarios.

/// How an interrupt is raised.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// The sender writes the ICR: destination (8 bits in xAPIC mode) and low word (the vector
    /// is added).
    Icr { dest: u32, low: u32 },
    /// The sender calls KVM_HC_SEND_IPI with this bitmap of APIC IDs starting at `min`.
    PvIpi { bitmap: u64, min: u32 },
    /// The host calls KVM_SIGNAL_MSI (physical destination `dest`; `group` names a group).
    Msi { dest: u32, group: Option<u32> },
    /// The host pulses KVM_IRQ_LINE on a GSI (whose route was set up by the test).
    Line { gsi: u32 },
}

/// Which vCPUs (indexes) must receive the interrupt, exactly once; all others must not.
#[derive(Debug, Clone)]
enum Expect {
    /// Each of these, once.
    Each(Vec<usize>),
    /// Exactly one of these (lowest priority), once.
    OneOf(Vec<usize>),
}

/// One interrupt to raise.
#[derive(Debug, Clone)]
struct Send {
    what: String,
    /// Sending vCPU index (ignored for host-raised ones).
    from: usize,
    op: Op,
    vector: u8,
    expect: Expect,
}

/// Builds a list of sends with a fresh vector each.
struct Sends {
    list: Vec<Send>,
    next_vector: u8,
}

impl Sends {
    fn new() -> Self {
        Sends {
            list: Vec::new(),
            next_vector: 0x40,
        }
    }

    fn add(&mut self, what: impl Into<String>, from: usize, op: Op, expect: Expect) {
        let vector = self.next_vector;
        self.next_vector += 1;
        self.list.push(Send {
            what: what.into(),
            from,
            op,
            vector,
            expect,
        });
    }
}

/// The indexes of the nodes in `group`.
fn members(nodes: &[Node], group: u32) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].group_nr() == group)
        .collect()
}

/// Start the VM, check every guest's APIC ID and LDR, run the senders' programs (and the
/// host-raised interrupts, in order), then stop and check each send reached exactly whom it
/// should.
fn run_scenario(mut vm: TestVm, nodes: &[Node], mode: Mode, sends: &[Send]) -> Result<()> {
    // Programs, one region of SHARED per sender, in order of first appearance.
    let mut senders: Vec<usize> = Vec::new();
    for s in sends {
        if matches!(s.op, Op::Icr { .. } | Op::PvIpi { .. }) && !senders.contains(&s.from) {
            senders.push(s.from);
        }
    }
    let region = (layout::SHARED_SIZE / (senders.len().max(1) as u64)) & !(prog::ENTRY_SIZE - 1);
    let mut pv_slots = Vec::new();
    for (k, &from) in senders.iter().enumerate() {
        let base = layout::SHARED + k as u64 * region;
        let mine: Vec<&Send> = sends
            .iter()
            .filter(|s| s.from == from && matches!(s.op, Op::Icr { .. } | Op::PvIpi { .. }))
            .collect();
        if (mine.len() as u64 + 1) * prog::ENTRY_SIZE > region {
            bail!("send program of vCPU index {from} does not fit");
        }
        for (j, s) in mine.iter().enumerate() {
            let e = base + j as u64 * prog::ENTRY_SIZE;
            let words: [u64; 5] = match s.op {
                Op::Icr { dest, low } => [
                    prog::ICR,
                    dest.into(),
                    u64::from(low | u32::from(s.vector)),
                    0,
                    0,
                ],
                Op::PvIpi { bitmap, min } => {
                    pv_slots.push((s.what.clone(), e + prog::RESULT));
                    [prog::PV_IPI, bitmap, 0, min.into(), u64::from(s.vector)]
                }
                _ => unreachable!("filtered above"),
            };
            for (w, v) in words.iter().enumerate() {
                vm.mem.write_u64(e + 8 * w as u64, *v)?;
            }
        }
        vm.mem
            .write_u64(base + mine.len() as u64 * prog::ENTRY_SIZE, prog::END)?;
        vm.set_pcpu(from, pcpu::PROGRAM, base)?;
    }

    let running = vm.start()?;
    for (i, n) in nodes.iter().enumerate() {
        let [id, ldr, _, _] = running
            .wait_sync(i, ucall::STAGE_APIC_READY, DEFAULT_TIMEOUT)
            .with_context(|| format!("vCPU {} enabling its APIC", n.vcpu_id))?;
        check_eq!(
            id,
            u64::from(n.visible_apic_id()),
            "APIC ID read by the guest on vCPU {} ({:?}, {mode:?})",
            n.vcpu_id,
            n.group
        );
        check_eq!(
            ldr,
            u64::from(mode.expected_ldr(n.visible_apic_id())),
            "LDR read by the guest on vCPU {} ({mode:?})",
            n.vcpu_id
        );
    }

    // Host-raised interrupts first (the guests are all ready), then each sender in turn.
    for s in sends {
        match s.op {
            Op::Msi { dest, group } => {
                let msi = kvm_msi {
                    address_lo: layout::XAPIC as u32 | (dest << 12),
                    address_hi: 0,
                    data: u32::from(s.vector),
                    ..Default::default()
                };
                let msi = match group {
                    Some(g) => vtlkit_uapi::msi_to_group(msi, g),
                    None => msi,
                };
                // The return value (vCPUs reached, or an error for none) is not asserted: the
                // guests' counts are what matters.
                let _ = vm.fd.signal_msi(msi);
            }
            Op::Line { gsi } => {
                vm.fd
                    .set_irq_line(gsi, true)
                    .map_err(|e| anyhow!("KVM_IRQ_LINE({gsi}, 1): {e}"))?;
                vm.fd
                    .set_irq_line(gsi, false)
                    .map_err(|e| anyhow!("KVM_IRQ_LINE({gsi}, 0): {e}"))?;
            }
            _ => {}
        }
    }
    for &from in &senders {
        vm.set_pcpu(from, pcpu::GO, 1)?;
        if let Err(e) = running.wait_sync(from, ucall::STAGE_SENT, DEFAULT_TIMEOUT) {
            let state = running.stop_and_describe();
            bail!("vCPU index {from} running its send program: {e:#}\nvCPU state: {state}");
        }
    }

    // Wait until every expected interrupt was handled (bounded), then stop and look.
    let handled = |i: usize, v: u8| -> Result<u32> {
        vm.mem
            .read_u32(TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(v))
    };
    let all_in = running.wait_until(Duration::from_secs(20), || {
        for s in sends {
            let ok = match &s.expect {
                Expect::Each(who) => who
                    .iter()
                    .map(|&i| handled(i, s.vector))
                    .collect::<Result<Vec<_>>>()?
                    .iter()
                    .all(|&c| c >= 1),
                Expect::OneOf(who) => {
                    who.iter()
                        .map(|&i| handled(i, s.vector))
                        .sum::<Result<u32>>()?
                        >= 1
                }
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    running.check_no_pending()?;
    let vcpus = running.stop()?;
    let mut by_index: Vec<Option<Vcpu>> = (0..nodes.len()).map(|_| None).collect();
    for v in vcpus {
        let i = v.index;
        by_index[i] = Some(v);
    }

    // received[i][vector] = handled + pending in IRR + in service.
    let mut received = vec![[0u32; 256]; nodes.len()];
    for (i, slot) in by_index.iter().enumerate() {
        let v = slot
            .as_ref()
            .ok_or_else(|| anyhow!("vCPU index {i} missing"))?;
        let lapic =
            v.fd.get_lapic()
                .map_err(|e| anyhow!("KVM_GET_LAPIC on vCPU {}: {e}", v.id))?;
        for s in sends {
            let vec = s.vector;
            received[i][usize::from(vec)] = handled(i, vec)?
                + u32::from(lapic_bit(&lapic, lapic_reg::IRR, vec))
                + u32::from(lapic_bit(&lapic, lapic_reg::ISR, vec));
        }
    }

    let mut failures = String::new();
    for s in sends {
        let got: Vec<u32> = (0..nodes.len())
            .map(|i| received[i][usize::from(s.vector)])
            .collect();
        let ok = match &s.expect {
            Expect::Each(who) => (0..nodes.len()).all(|i| got[i] == u32::from(who.contains(&i))),
            Expect::OneOf(who) => {
                let inside: u32 = who.iter().map(|&i| got[i]).sum();
                let outside: u32 = (0..nodes.len())
                    .filter(|i| !who.contains(i))
                    .map(|i| got[i])
                    .sum();
                inside == 1 && outside == 0
            }
        };
        if !ok {
            let _ = writeln!(
                failures,
                "{} (vector {:#x}, from vCPU index {}, {:?}): received per vCPU index {:?}, expected {:?}",
                s.what, s.vector, s.from, s.op, got, s.expect
            );
        }
    }
    for (what, gpa) in pv_slots {
        let r = vm.mem.read_u64(gpa)? as i64;
        if r < 0 {
            let _ = writeln!(failures, "{what}: KVM_HC_SEND_IPI returned {r}");
        }
    }
    if !failures.is_empty() {
        let layout: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("index {i} = vcpu {} {:?}", n.vcpu_id, n.group))
            .collect();
        bail!(
            "{mode:?}: interrupts went to the wrong vCPUs{}\n{failures}topology: {}",
            if all_in {
                ""
            } else {
                " (and some expected ones never arrived)"
            },
            layout.join(", ")
        );
    }
    Ok(())
}

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

/// `build`, or None if the kernel has fewer than two APIC groups.
fn build_checked(nodes: &[Node], mode: Mode) -> Result<Option<TestVm>> {
    let kvm = crate::vm::open_kvm()?;
    if vtlkit_uapi::apic_groups_supported(&kvm) < 2 {
        return Ok(None);
    }
    build(nodes, mode).map(Some)
}

fn apic_group_ipi_x2apic() -> TestResult {
    ipi_test(Mode::X2apic)
}

fn apic_group_ipi_xapic_flat() -> TestResult {
    ipi_test(Mode::XapicFlat)
}

fn apic_group_ipi_xapic_cluster() -> TestResult {
    ipi_test(Mode::XapicCluster)
}

// ---------------------------------------------------------------------------------------------
// The ioctls.

fn apic_group_set_get() -> TestResult {
    let mut vm = TestVm::new(VmOptions::default())?;
    let supported = groups_supported(&vm);
    require!(supported >= 2, "KVM_CAP_APIC_GROUPS is {supported}, need 2");
    for id in 0..5 {
        vm.add_vcpu(id, Entry::ApicMain)?;
    }
    // Unassigned: the stock identity.
    let g = vm.vcpu(4)?.fd.get_apic_group().map_err(kvm_err)?;
    check_eq!(
        g,
        ApicGroup {
            group: 0,
            apic_id: 4,
            vtl: 0
        },
        "KVM_GET_APIC_GROUP on a vCPU that was never assigned"
    );
    let want = [
        ApicGroup {
            group: 0,
            apic_id: 0,
            vtl: 0,
        },
        ApicGroup {
            group: 0,
            apic_id: 7,
            vtl: 0,
        },
        ApicGroup {
            group: supported - 1,
            apic_id: 0,
            vtl: 15,
        },
        ApicGroup {
            group: 1,
            apic_id: 7,
            vtl: 1,
        },
    ];
    for (i, g) in want.iter().enumerate() {
        vm.vcpu(i)?
            .fd
            .set_apic_group(*g)
            .map_err(kvm_err)
            .with_context(|| format!("KVM_SET_APIC_GROUP({g:?}) on vCPU {i}"))?;
    }
    for (i, g) in want.iter().enumerate() {
        let raw = vm.vcpu(i)?.fd.get_apic_group_raw().map_err(kvm_err)?;
        check_eq!(ApicGroup::from(raw), *g, "KVM_GET_APIC_GROUP on vCPU {i}");
        check!(
            raw.flags == 0 && raw.pad == [0; 3] && raw.reserved == [0; 4],
            "KVM_GET_APIC_GROUP on vCPU {i}: flags/pad/reserved not zero: {raw:?}"
        );
    }
    // Setting again before the first run is allowed and replaces the assignment.
    let again = ApicGroup {
        group: 1,
        apic_id: 2,
        vtl: 3,
    };
    vm.vcpu(3)?.fd.set_apic_group(again).map_err(kvm_err)?;
    check_eq!(
        vm.vcpu(3)?.fd.get_apic_group().map_err(kvm_err)?,
        again,
        "KVM_GET_APIC_GROUP after a second KVM_SET_APIC_GROUP"
    );
    Ok(Outcome::Pass)
}

fn apic_group_errors() -> TestResult {
    let mut vm = TestVm::new(VmOptions::default())?;
    let supported = groups_supported(&vm);
    require!(supported >= 2, "KVM_CAP_APIC_GROUPS is {supported}, need 2");
    for id in 0..3 {
        vm.add_vcpu(id, Entry::LongMode)?;
    }
    let a = ApicGroup {
        group: 1,
        apic_id: 0,
        vtl: 1,
    };
    vm.vcpu(0)?.fd.set_apic_group(a).map_err(kvm_err)?;
    // vCPU 1 holds a non-default assignment, so "unchanged" is visible.
    let b = ApicGroup {
        group: 1,
        apic_id: 5,
        vtl: 1,
    };
    vm.vcpu(1)?.fd.set_apic_group(b).map_err(kvm_err)?;

    let base: raw::kvm_apic_group = ApicGroup {
        group: 0,
        apic_id: 9,
        vtl: 0,
    }
    .into();
    let cases: Vec<(&str, raw::kvm_apic_group, i32)> = vec![
        (
            "group == KVM_CAP_APIC_GROUPS",
            raw::kvm_apic_group {
                group: supported,
                ..base
            },
            libc::EINVAL,
        ),
        (
            "group = u32::MAX",
            raw::kvm_apic_group {
                group: u32::MAX,
                ..base
            },
            libc::EINVAL,
        ),
        (
            "vtl 16",
            raw::kvm_apic_group { vtl: 16, ..base },
            libc::EINVAL,
        ),
        (
            "vtl 255",
            raw::kvm_apic_group { vtl: 255, ..base },
            libc::EINVAL,
        ),
        (
            "flags 1",
            raw::kvm_apic_group { flags: 1, ..base },
            libc::EINVAL,
        ),
        (
            "flags bit 31",
            raw::kvm_apic_group {
                flags: 1 << 31,
                ..base
            },
            libc::EINVAL,
        ),
        (
            "pad[0] = 1",
            raw::kvm_apic_group {
                pad: [1, 0, 0],
                ..base
            },
            libc::EINVAL,
        ),
        (
            "pad[2] = 0x80",
            raw::kvm_apic_group {
                pad: [0, 0, 0x80],
                ..base
            },
            libc::EINVAL,
        ),
        (
            "reserved[0] = 1",
            raw::kvm_apic_group {
                reserved: [1, 0, 0, 0],
                ..base
            },
            libc::EINVAL,
        ),
        (
            "reserved[3] = 1 << 63",
            raw::kvm_apic_group {
                reserved: [0, 0, 0, 1 << 63],
                ..base
            },
            libc::EINVAL,
        ),
        (
            "apic_id 0xff (xAPIC broadcast, no 32-bit x2APIC IDs)",
            raw::kvm_apic_group {
                apic_id: 0xff,
                ..base
            },
            libc::EINVAL,
        ),
        (
            "apic_id u32::MAX",
            raw::kvm_apic_group {
                apic_id: u32::MAX,
                ..base
            },
            libc::EINVAL,
        ),
        (
            "(group 1, apic_id 0) taken by vCPU 0",
            ApicGroup {
                group: 1,
                apic_id: 0,
                vtl: 0,
            }
            .into(),
            libc::EEXIST,
        ),
    ];
    let fd = &vm.vcpu(1)?.fd;
    for (what, g, errno) in &cases {
        match fd.set_apic_group_raw(g) {
            Ok(()) => bail!("KVM_SET_APIC_GROUP with {what} succeeded, expected errno {errno}"),
            Err(e) => check_eq!(e.errno(), *errno, "KVM_SET_APIC_GROUP with {what}: errno"),
        }
        check_eq!(
            fd.get_apic_group().map_err(kvm_err)?,
            b,
            "KVM_GET_APIC_GROUP after the failed set with {what}"
        );
    }
    // The holder of (1, 0) may re-set its own assignment: not EEXIST against itself.
    vm.vcpu(0)?
        .fd
        .set_apic_group(a)
        .map_err(kvm_err)
        .context("re-setting vCPU 0's own assignment")?;

    // EBUSY once the vCPU has run: run vCPU 2 to DONE (an empty hash).
    let c = ApicGroup {
        group: 0,
        apic_id: 2,
        vtl: 0,
    };
    vm.vcpu(2)?.fd.set_apic_group(c).map_err(kvm_err)?;
    match vm.run_vcpu(2)? {
        Ucall::Sync {
            stage: ucall::STAGE_LONG_MODE,
            ..
        } => {}
        other => bail!("vCPU 2: expected the long-mode SYNC, got {other}"),
    }
    let late = ApicGroup {
        group: 1,
        apic_id: 2,
        vtl: 1,
    };
    match vm.vcpu(2)?.fd.set_apic_group(late) {
        Ok(()) => bail!("KVM_SET_APIC_GROUP after KVM_RUN succeeded, expected EBUSY"),
        Err(e) => check_eq!(
            e.errno(),
            libc::EBUSY,
            "KVM_SET_APIC_GROUP after KVM_RUN: errno"
        ),
    }
    check_eq!(
        vm.vcpu(2)?.fd.get_apic_group().map_err(kvm_err)?,
        c,
        "KVM_GET_APIC_GROUP after the EBUSY failure"
    );

    // ENXIO without an in-kernel local APIC.
    let mut bare = TestVm::new(VmOptions {
        irqchip: false,
        ..Default::default()
    })?;
    bare.add_vcpu(0, Entry::LongMode)?;
    match bare.vcpu(0)?.fd.set_apic_group(ApicGroup {
        group: 1,
        apic_id: 0,
        vtl: 1,
    }) {
        Ok(()) => {
            bail!("KVM_SET_APIC_GROUP without an in-kernel irqchip succeeded, expected ENXIO")
        }
        Err(e) => check_eq!(
            e.errno(),
            libc::ENXIO,
            "KVM_SET_APIC_GROUP without irqchip: errno"
        ),
    }
    match bare.vcpu(0)?.fd.get_apic_group() {
        Ok(g) => {
            bail!("KVM_GET_APIC_GROUP without an in-kernel irqchip returned {g:?}, expected ENXIO")
        }
        Err(e) => check_eq!(
            e.errno(),
            libc::ENXIO,
            "KVM_GET_APIC_GROUP without irqchip: errno"
        ),
    }
    Ok(Outcome::Pass)
}

// ---------------------------------------------------------------------------------------------
// Guest-visible IDs.

fn apic_group_ids_visible() -> TestResult {
    for mode in [Mode::XapicFlat, Mode::X2apic] {
        // IDs that differ from every vcpu_id, shared by a VTL 0 and a VTL 1 vCPU each.
        let n = |vcpu_id, group, apic_id, vtl| Node {
            vcpu_id,
            group: Some(ApicGroup {
                group,
                apic_id,
                vtl,
            }),
        };
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
// Device interrupts.

fn apic_group_msi() -> TestResult {
    let nodes = two_groups();
    let Some(vm) = build_checked(&nodes, Mode::X2apic)? else {
        return Ok(Outcome::Skip("KVM_CAP_APIC_GROUPS < 2".into()));
    };
    let supported = groups_supported(&vm);
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

fn apic_group_ioapic() -> TestResult {
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

/// Program IOAPIC redirection entries `(pin, vector, physical destination)` through
/// KVM_GET/SET_IRQCHIP: fixed delivery, physical, edge, active high, unmasked.
fn program_ioapic(vm: &TestVm, entries: &[(u32, u8, u8)]) -> Result<()> {
    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    vm.fd
        .get_irqchip(&mut chip)
        .map_err(|e| anyhow!("KVM_GET_IRQCHIP(IOAPIC): {e}"))?;
    for &(pin, vector, dest) in entries {
        let bits = u64::from(vector) | (u64::from(dest) << 56);
        // SAFETY: KVM_GET_IRQCHIP with chip_id IOAPIC filled the `ioapic` arm of the union,
        // and the index is checked by the slice access.
        let slot = unsafe { chip.chip.ioapic.redirtbl.get_mut(pin as usize) };
        slot.ok_or_else(|| anyhow!("IOAPIC pin {pin} out of range"))?
            .bits = bits;
    }
    vm.fd
        .set_irqchip(&chip)
        .map_err(|e| anyhow!("KVM_SET_IRQCHIP(IOAPIC): {e}"))
}

// ---------------------------------------------------------------------------------------------
// Stock behaviour.

fn apic_group_unassigned_is_stock() -> TestResult {
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
    fn logical_ids() {
        assert_eq!(Mode::XapicFlat.expected_ldr(1), 0x0200_0000);
        assert_eq!(Mode::XapicCluster.expected_ldr(1), 0x1200_0000);
        assert_eq!(Mode::X2apic.expected_ldr(1), 0x2);
        assert_eq!(Mode::X2apic.expected_ldr(0x13), 0x0001_0008);
    }

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
