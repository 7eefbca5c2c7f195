// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The shape most interrupt tests share: a [`Node`] topology, [`build`] to make the VM, and
//! [`run_scenario`] to raise a list of [`Send`]s and check who took each one.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{kvm_irqchip, kvm_msi, KVM_IRQCHIP_IOAPIC};
use vtlkit_uapi::ApicGroup;

use crate::check_eq;
use crate::guest::{pcpu, prog, ucall, Entry};
use crate::vm::{lapic_bit, lapic_reg, layout, TestVm, Vcpu, VmOptions, DEFAULT_TIMEOUT};

/// How long [`run_scenario`] waits for every expected interrupt to be handled.
pub(super) const HANDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How the guests run their local APICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// xAPIC, flat logical model: LDR = 1 << APIC ID (IDs 0..7).
    XapicFlat,
    /// xAPIC, cluster logical model: cluster 1, member bit 1 << (APIC ID % 4).
    XapicCluster,
    /// x2APIC (logical IDs are fixed: cluster = ID >> 4, member bit 1 << (ID & 15)).
    X2apic,
}

impl Mode {
    pub(super) fn pcpu_mode(self) -> u64 {
        match self {
            Mode::X2apic => pcpu::APIC_MODE_X2APIC,
            _ => pcpu::APIC_MODE_XAPIC,
        }
    }

    /// (DFR, LDR) for the guest to program, or None to leave them.
    pub(super) fn logical(self, apic_id: u32) -> Option<(u32, u32)> {
        match self {
            Mode::XapicFlat => Some((0xffff_ffff, (1 << apic_id) << 24)),
            Mode::XapicCluster => Some((0x0fff_ffff, (0x10 | (1 << (apic_id % 4))) << 24)),
            Mode::X2apic => None,
        }
    }

    /// The LDR the guest should read back.
    pub(super) fn expected_ldr(self, apic_id: u32) -> u32 {
        match self.logical(apic_id) {
            Some((_, ldr)) => ldr,
            None => ((apic_id >> 4) << 16) | (1 << (apic_id & 15)),
        }
    }
}

/// One vCPU of a test topology.
#[derive(Debug, Clone, Copy)]
pub(super) struct Node {
    /// KVM vcpu_id.
    pub(super) vcpu_id: u64,
    /// KVM_SET_APIC_GROUP, or None in a VM that never opts in to APIC groups (then every
    /// node must be None).
    pub(super) group: Option<ApicGroup>,
}

impl Node {
    /// vCPU `vcpu_id`, assigned to `group` with APIC ID `apic_id` and VTL label `vtl`.
    pub(super) fn assigned(vcpu_id: u64, group: u32, apic_id: u32, vtl: u8) -> Self {
        Node {
            vcpu_id,
            group: Some(ApicGroup {
                group,
                apic_id,
                vtl,
            }),
        }
    }

    pub(super) fn visible_apic_id(&self) -> u32 {
        self.group.map_or(self.vcpu_id as u32, |g| g.apic_id)
    }
    pub(super) fn group_nr(&self) -> u32 {
        self.group.map_or(0, |g| g.group)
    }
}

/// The two-group topology most tests use: VTL 0 and VTL 1 siblings share APIC IDs 0 and 1.
/// Index 0 and 1 are group 0 (VTL 0), index 2 and 3 are group 1 (VTL 1).
pub(super) const G0_A: usize = 0;
pub(super) const G0_B: usize = 1;
pub(super) const G1_A: usize = 2;
pub(super) const G1_B: usize = 3;

pub(super) fn two_groups() -> Vec<Node> {
    let n = Node::assigned;
    vec![n(0, 0, 0, 0), n(1, 0, 1, 0), n(2, 1, 0, 1), n(3, 1, 1, 1)]
}

pub(super) fn kvm_err(e: vtlkit_uapi::Error) -> anyhow::Error {
    anyhow!("{e} (errno {})", e.errno())
}

/// How many APIC groups the kernel supports (KVM_CHECK_EXTENSION(KVM_CAP_APIC_GROUPS)).
pub(super) fn groups_supported(vm: &TestVm) -> u32 {
    vtlkit_uapi::apic_groups_supported(&vm.kvm)
}

/// A VM with one vCPU per node, every vCPU at `vtlkit_guest_apic_main`. If any node has a
/// group, the VM opts in to APIC groups and every vCPU is assigned its group as it is created
/// (all nodes must have one then); otherwise the VM never opts in (stock behaviour).
pub(super) fn build(nodes: &[Node], mode: Mode) -> Result<TestVm> {
    let grouped = nodes.iter().any(|n| n.group.is_some());
    if grouped && nodes.iter().any(|n| n.group.is_none()) {
        bail!("test bug: in a VM that opts in to APIC groups every vCPU needs a group");
    }
    let opts = VmOptions {
        apic_groups: grouped,
        ..Default::default()
    };
    let mut vm = TestVm::new(opts)?;
    for n in nodes {
        match n.group {
            Some(g) => vm.add_vcpu_in_group(n.vcpu_id, Entry::ApicMain, g)?,
            None => vm.add_vcpu(n.vcpu_id, Entry::ApicMain)?,
        };
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
pub(super) enum Op {
    /// The sender writes the ICR: destination (8 bits in xAPIC mode) and low word (the vector
    /// is added).
    Icr { dest: u32, low: u32 },
    /// The sender calls KVM_HC_SEND_IPI with this bitmap of APIC IDs starting at `min`.
    PvIpi { bitmap: u64, min: u32 },
    /// The host calls KVM_SIGNAL_MSI (physical destination `dest`; `group` names a group).
    Msi { dest: u32, group: Option<u32> },
    /// KVM_SIGNAL_MSI with `field` in the apic_group field but without
    /// KVM_MSI_VALID_APIC_GROUP: the field must be ignored.
    MsiFieldNoFlag { dest: u32, field: u32 },
    /// The host pulses KVM_IRQ_LINE on a GSI (whose route was set up by the test).
    Line { gsi: u32 },
}

/// Which vCPUs (indexes) must receive the interrupt, exactly once; all others must not.
#[derive(Debug, Clone)]
pub(super) enum Expect {
    /// Each of these, once.
    Each(Vec<usize>),
    /// Exactly one of these (lowest priority), once.
    OneOf(Vec<usize>),
}

/// One interrupt to raise.
#[derive(Debug, Clone)]
pub(super) struct Send {
    pub(super) what: String,
    /// Sending vCPU index (ignored for host-raised ones).
    pub(super) from: usize,
    pub(super) op: Op,
    pub(super) vector: u8,
    pub(super) expect: Expect,
}

/// Builds a list of sends with a fresh vector each.
pub(super) struct Sends {
    pub(super) list: Vec<Send>,
    pub(super) next_vector: u8,
}

impl Sends {
    pub(super) fn new() -> Self {
        Sends {
            list: Vec::new(),
            next_vector: 0x40,
        }
    }

    pub(super) fn add(&mut self, what: impl Into<String>, from: usize, op: Op, expect: Expect) {
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
pub(super) fn members(nodes: &[Node], group: u32) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].group_nr() == group)
        .collect()
}

/// Start the VM, check every guest's APIC ID and LDR, run the senders' programs (and the
/// host-raised interrupts, in order), then check each send reached exactly whom it should.
///
/// Strict by design: an expected receiver counts only once its guest handler took the interrupt
/// (an IRR or ISR bit is not enough), and a wait that runs out fails, naming each send and
/// receiver that did not get there. IRR and ISR are read only to prove that no one else got
/// an interrupt, even one they had not handled yet.
pub(super) fn run_scenario(
    mut vm: TestVm,
    nodes: &[Node],
    mode: Mode,
    sends: &[Send],
) -> Result<()> {
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
            Op::Msi { dest, .. } | Op::MsiFieldNoFlag { dest, .. } => {
                let msi = kvm_msi {
                    address_lo: layout::XAPIC as u32 | (dest << 12),
                    address_hi: 0,
                    data: u32::from(s.vector),
                    ..Default::default()
                };
                let (msi, group) = match s.op {
                    Op::Msi { group: Some(g), .. } => (vtlkit_uapi::msi_to_group(msi, g), Some(g)),
                    Op::MsiFieldNoFlag { field, .. } => {
                        let mut m = vtlkit_uapi::msi_to_raw(msi);
                        m.apic_group = field;
                        (vtlkit_uapi::msi_from_raw(m), None)
                    }
                    _ => (msi, None),
                };
                // KVM_SIGNAL_MSI returns how many vCPUs accepted the MSI; with the group flag
                // that is exactly 0 when none did (v2 uAPI), never -1.
                let want = match &s.expect {
                    Expect::Each(who) => who.len() as i32,
                    Expect::OneOf(_) => 1,
                };
                match vm.fd.signal_msi(msi) {
                    Ok(n) => check_eq!(n, want, "KVM_SIGNAL_MSI return value for {}", s.what),
                    Err(e) if want == 0 && group.is_none() => {
                        // Stock semantics without the flag: -1 (EPERM) for no destination.
                        check_eq!(e.errno(), libc::EPERM, "KVM_SIGNAL_MSI for {}", s.what);
                    }
                    Err(e) => bail!("KVM_SIGNAL_MSI for {}: {e}", s.what),
                }
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

    // Wait until every expected receiver has handled its interrupt (bounded), then stop and
    // look.
    let handled = |i: usize, v: u8| -> Result<u32> {
        vm.mem
            .read_u32(TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(v))
    };
    let all_in = running.wait_until(HANDLE_TIMEOUT, || {
        for s in sends {
            if !arrived(s, |i| handled(i, s.vector))? {
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
    let describe = |i: usize| {
        let n = &nodes[i];
        match n.group {
            Some(g) => format!(
                "vCPU index {i} (vcpu_id {}, group {}, APIC ID {})",
                n.vcpu_id, g.group, g.apic_id
            ),
            None => format!("vCPU index {i} (vcpu_id {})", n.vcpu_id),
        }
    };

    // handled[i][vector] by the guest's handler; stray[i][vector] = pending in IRR or in
    // service, i.e. delivered but not (yet) handled.
    let mut took = vec![[0u32; 256]; nodes.len()];
    let mut stray = vec![[0u32; 256]; nodes.len()];
    for (i, slot) in by_index.iter().enumerate() {
        let v = slot
            .as_ref()
            .ok_or_else(|| anyhow!("vCPU index {i} missing"))?;
        let lapic =
            v.fd.get_lapic()
                .map_err(|e| anyhow!("KVM_GET_LAPIC on vCPU {}: {e}", v.id))?;
        for s in sends {
            let vec = usize::from(s.vector);
            took[i][vec] = handled(i, s.vector)?;
            stray[i][vec] = u32::from(lapic_bit(&lapic, lapic_reg::IRR, s.vector))
                + u32::from(lapic_bit(&lapic, lapic_reg::ISR, s.vector));
        }
    }

    let mut failures = String::new();
    if !all_in {
        let _ = writeln!(
            failures,
            "expected interrupts not handled within {HANDLE_TIMEOUT:?}:"
        );
        for s in sends {
            let vec = usize::from(s.vector);
            let missing: Vec<String> = match &s.expect {
                Expect::Each(who) => who
                    .iter()
                    .filter(|&&i| took[i][vec] == 0)
                    .map(|&i| {
                        let pending = if stray[i][vec] > 0 {
                            " (pending in its IRR/ISR, never handled)"
                        } else {
                            ""
                        };
                        format!("{}{pending}", describe(i))
                    })
                    .collect(),
                Expect::OneOf(who) if who.iter().all(|&i| took[i][vec] == 0) => {
                    vec![format!(
                        "any of {}",
                        who.iter()
                            .map(|&i| describe(i))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )]
                }
                Expect::OneOf(_) => Vec::new(),
            };
            for m in missing {
                let _ = writeln!(
                    failures,
                    "  {} (vector {:#x}, from vCPU index {}): not handled by {m}",
                    s.what, s.vector, s.from
                );
            }
        }
    }
    for s in sends {
        let vec = usize::from(s.vector);
        let got: Vec<(u32, u32)> = (0..nodes.len())
            .map(|i| (took[i][vec], stray[i][vec]))
            .collect();
        let ok = match &s.expect {
            // Each receiver handled it once and has no second copy pending; no one else has
            // it, handled or not.
            Expect::Each(who) => (0..nodes.len()).all(|i| {
                if who.contains(&i) {
                    got[i] == (1, 0) || (!all_in && got[i].0 == 0)
                } else {
                    got[i] == (0, 0)
                }
            }),
            Expect::OneOf(who) => {
                let inside: u32 = who.iter().map(|&i| got[i].0 + got[i].1).sum();
                let outside: u32 = (0..nodes.len())
                    .filter(|i| !who.contains(i))
                    .map(|i| got[i].0 + got[i].1)
                    .sum();
                (inside == 1 || (!all_in && inside == 0)) && outside == 0
            }
        };
        if !ok {
            let _ = writeln!(
                failures,
                "{} (vector {:#x}, from vCPU index {}, {:?}): (handled, pending in IRR/ISR) per vCPU index {:?}, expected {:?}",
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
        bail!("{mode:?}: {failures}topology: {}", layout.join(", "));
    }
    Ok(())
}

/// Whether every expected receiver of `s` has handled it (per `handled(index)`).
fn arrived(s: &Send, mut handled: impl FnMut(usize) -> Result<u32>) -> Result<bool> {
    Ok(match &s.expect {
        Expect::Each(who) => {
            for &i in who {
                if handled(i)? == 0 {
                    return Ok(false);
                }
            }
            true
        }
        Expect::OneOf(who) => {
            let mut sum = 0;
            for &i in who {
                sum += handled(i)?;
            }
            sum >= 1
        }
    })
}

/// `build`, or None if the kernel has fewer than two APIC groups.
pub(super) fn build_checked(nodes: &[Node], mode: Mode) -> Result<Option<TestVm>> {
    let kvm = crate::vm::open_kvm()?;
    if vtlkit_uapi::apic_groups_supported(&kvm) < 2 {
        return Ok(None);
    }
    build(nodes, mode).map(Some)
}

/// Program IOAPIC redirection entries `(pin, vector, physical destination)` through
/// KVM_GET/SET_IRQCHIP: fixed delivery, physical, edge, active high, unmasked.
pub(super) fn program_ioapic(vm: &TestVm, entries: &[(u32, u8, u8)]) -> Result<()> {
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
}
