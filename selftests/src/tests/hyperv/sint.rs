// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! SynIC SINT routes (KVM_IRQ_ROUTING_HV_SINT) that name an APIC group.

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting};

use super::common::{build, groups_available, start_ready, Node};
use crate::guest::{pcpu, ucall};
use crate::harness::{Outcome, TestResult};
use crate::hyperv::{self, msr, sint_route, Program, Step};
use crate::vm::{lapic_bit, lapic_reg, TestVm, DEFAULT_TIMEOUT};
use crate::{check_eq, require};

/// The SINT both vCPUs program, with a vector of their own.
const SINT: u32 = 2;
/// Vectors: the group-0 vCPU's SINT 2, the group-1 vCPU's.
const VEC_G0: u8 = 0x50;
const VEC_G1: u8 = 0x51;

fn set_routes(vm: &TestVm, entries: &[kvm_irq_routing_entry]) -> Result<(), i32> {
    let routing = KvmIrqRouting::from_entries(entries).map_err(|_| libc::ENOMEM)?;
    vm.fd.set_gsi_routing(&routing).map_err(|e| e.errno())
}

fn pulse(vm: &TestVm, gsi: u32) -> Result<()> {
    vm.fd
        .set_irq_line(gsi, true)
        .map_err(|e| anyhow!("KVM_IRQ_LINE({gsi}, 1): {e}"))?;
    vm.fd
        .set_irq_line(gsi, false)
        .map_err(|e| anyhow!("KVM_IRQ_LINE({gsi}, 0): {e}"))
}

/// A KVM_IRQ_ROUTING_HV_SINT route with KVM_HV_SINT_VALID_APIC_GROUP reaches the SINT of the
/// vCPU of that group with that VP index, and only it; without the flag, group 0; the flag in a
/// VM without groups, or a group out of range, is EINVAL.
pub(super) fn hv_sint_route_group() -> TestResult {
    require!(groups_available()?, "KVM_CAP_APIC_GROUPS < 2");
    // VP 0 at VTL 0 (group 0) and at VTL 1 (group 1): the same VP index and APIC ID.
    let nodes = vec![Node::grouped(0, 0, 0, 0, 0), Node::grouped(1, 1, 0, 1, 0)];
    let vectors = [VEC_G0, VEC_G1];
    let mut vm = build(&nodes)?;
    for (i, &v) in vectors.iter().enumerate() {
        hyperv::enable_synic(&vm.vcpu(i)?.fd)?;
        let prog = Program::new()
            .step(Step::Wrmsr(msr::SCONTROL, 1))
            .step(Step::Wrmsr(msr::sint(SINT), v.into()));
        vm.load_hv_program(i, &prog)?;
    }
    let running = start_ready(&mut vm, &nodes)?;
    for (i, n) in nodes.iter().enumerate() {
        vm.set_pcpu(i, pcpu::GO, 1)?;
        running
            .wait_sync(i, ucall::STAGE_HV_DONE, DEFAULT_TIMEOUT)
            .with_context(|| format!("{} enabling its SynIC", n.describe(i)))?;
    }

    let routes = [
        sint_route(20, 0, SINT, Some(1)),
        sint_route(21, 0, SINT, None),
        sint_route(22, 0, SINT, Some(0)),
    ];
    if let Err(errno) = set_routes(&vm, &routes) {
        bail!(
            "KVM_SET_GSI_ROUTING with HV_SINT routes naming groups 1 and 0 (KVM_HV_SINT_VALID_APIC_GROUP): {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
    let count = |i: usize, v: u8| -> Result<u32> {
        vm.mem
            .read_u32(TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(v))
    };
    // (GSI, what it is, expected counts (group-0 vCPU on VEC_G0, group-1 vCPU on VEC_G1) after)
    let steps = [
        (20, "route to (group 1, VP 0)", (0, 1)),
        (21, "route to VP 0 without a group (group 0)", (1, 1)),
        (22, "route to (group 0, VP 0)", (2, 1)),
    ];
    for (gsi, what, (g0, g1)) in steps {
        pulse(&vm, gsi)?;
        let arrived = running.wait_until(DEFAULT_TIMEOUT, || {
            Ok(count(0, VEC_G0)? >= g0 && count(1, VEC_G1)? >= g1)
        })?;
        if !arrived {
            bail!(
                "{what} (GSI {gsi}): within {DEFAULT_TIMEOUT:?} the group-0 vCPU handled {} SINT interrupts, the group-1 vCPU {}; expected {g0} and {g1}",
                count(0, VEC_G0)?,
                count(1, VEC_G1)?
            );
        }
        check_eq!(
            (count(0, VEC_G0)?, count(1, VEC_G1)?),
            (g0, g1),
            "SINT interrupts handled by (group-0 vCPU, group-1 vCPU) after the {what}"
        );
    }
    running.check_no_pending()?;
    let vcpus = running.stop()?;
    for v in &vcpus {
        let lapic =
            v.fd.get_lapic()
                .map_err(|e| anyhow!("KVM_GET_LAPIC on vCPU {}: {e}", v.id))?;
        let other = vectors[1 - v.index];
        let pending = lapic_bit(&lapic, lapic_reg::IRR, vectors[v.index])
            || lapic_bit(&lapic, lapic_reg::ISR, vectors[v.index]);
        check_eq!(
            (count(v.index, other)?, pending),
            (0, false),
            "{}: (interrupts on the other vCPU's SINT vector {other:#x}, its own SINT still pending)",
            nodes[v.index].describe(v.index)
        );
    }

    // Errors: a group out of range, and the flag in a VM without groups.
    let groups = vtlkit_uapi::apic_groups_supported(&vm.kvm);
    check_eq!(
        set_routes(&vm, &[sint_route(20, 0, SINT, Some(groups))]),
        Err(libc::EINVAL),
        "KVM_SET_GSI_ROUTING with an HV_SINT route to group {groups} (the kernel has {groups})"
    );
    drop(vcpus);
    drop(vm);
    let flat = [Node {
        vcpu_id: 0,
        group: None,
        vp: 0,
    }];
    let vm = build(&flat)?;
    hyperv::enable_synic(&vm.vcpu(0)?.fd)?;
    check_eq!(
        set_routes(&vm, &[sint_route(20, 0, SINT, None)]),
        Ok(()),
        "KVM_SET_GSI_ROUTING with an HV_SINT route in a VM without groups"
    );
    check_eq!(
        set_routes(&vm, &[sint_route(20, 0, SINT, Some(0))]),
        Err(libc::EINVAL),
        "KVM_SET_GSI_ROUTING with KVM_HV_SINT_VALID_APIC_GROUP in a VM without APIC groups"
    );
    Ok(Outcome::Pass)
}
