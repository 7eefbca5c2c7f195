// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The ground the other tests stand on: the right kernel, and a working /dev/kvm.

use kvm_ioctls::{Cap, Kvm};

use crate::harness::{Outcome, Test, TestResult};
use crate::{check, check_eq};

pub const TESTS: &[Test] = &[
    Test {
        name: "kernel_is_patched",
        about: "the booted kernel was built from the vtlkit series (v5: APIC groups can be enabled; VSM forwarding, event notification and VTL protections are offered)",
        run: kernel_is_patched,
    },
    Test {
        name: "dev_kvm_works",
        about: "/dev/kvm opens, reports API 12, and creates a VM with an in-kernel irqchip",
        run: dev_kvm_works,
    },
];

fn kernel_is_patched() -> TestResult {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    check!(
        release.contains("-vtlkit"),
        "kernel release {:?} lacks the -vtlkit localversion: not the kernel built by scripts/build-kernel.sh",
        release.trim_end()
    );
    let kvm = Kvm::new().map_err(|e| anyhow::anyhow!("open /dev/kvm: {e}"))?;
    let groups = vtlkit_uapi::apic_groups_supported(&kvm);
    check!(
        groups >= 2,
        "KVM_CHECK_EXTENSION(KVM_CAP_APIC_GROUPS={}) = {groups}: the series' capability is missing",
        vtlkit_uapi::raw::KVM_CAP_APIC_GROUPS
    );
    // The v2 uAPI: the VM-wide opt-in exists (v1 had no KVM_ENABLE_CAP for it).
    let vm = kvm
        .create_vm()
        .map_err(|e| anyhow::anyhow!("KVM_CREATE_VM: {e}"))?;
    vm.create_irq_chip()
        .map_err(|e| anyhow::anyhow!("KVM_CREATE_IRQCHIP: {e}"))?;
    vtlkit_uapi::enable_apic_groups(&vm).map_err(|e| {
        anyhow::anyhow!(
            "{e} (errno {}): the kernel lacks the v2 series' VM-wide opt-in",
            e.errno()
        )
    })?;
    // The later patches: Hyper-V VSM forwarding (v3), event notification (v4) and per-VTL
    // memory protections (v5). The tests of each feature fail, not skip, on a kernel
    // without it; this test says at once which part of the series is missing.
    let later = [
        ("KVM_CAP_HYPERV_VSM", vtlkit_uapi::raw::KVM_CAP_HYPERV_VSM),
        (
            "KVM_CAP_VCPU_EVENT_NOTIFY",
            vtlkit_uapi::raw::KVM_CAP_VCPU_EVENT_NOTIFY,
        ),
        (
            "KVM_CAP_VTL_PROTECTIONS",
            vtlkit_uapi::raw::KVM_CAP_VTL_PROTECTIONS,
        ),
    ];
    for (name, cap) in later {
        let r = kvm.check_extension_raw(libc::c_ulong::from(cap));
        check!(
            r == 1,
            "KVM_CHECK_EXTENSION({name}={cap}) = {r}: the kernel predates that part of the series"
        );
    }
    Ok(Outcome::Pass)
}

fn dev_kvm_works() -> TestResult {
    let kvm = Kvm::new().map_err(|e| anyhow::anyhow!("open /dev/kvm: {e}"))?;
    check_eq!(kvm.get_api_version(), 12, "KVM_GET_API_VERSION");
    check!(kvm.check_extension(Cap::Irqchip), "no KVM_CAP_IRQCHIP");
    check!(
        kvm.check_extension_raw(kvm_bindings::KVM_CAP_HYPERV_SEND_IPI.into()) > 0,
        "no KVM_CAP_HYPERV_SEND_IPI (CONFIG_KVM_HYPERV?)"
    );
    let vm = kvm
        .create_vm()
        .map_err(|e| anyhow::anyhow!("KVM_CREATE_VM: {e}"))?;
    vm.create_irq_chip()
        .map_err(|e| anyhow::anyhow!("KVM_CREATE_IRQCHIP: {e}"))?;
    let _vcpu = vm
        .create_vcpu(0)
        .map_err(|e| anyhow::anyhow!("KVM_CREATE_VCPU: {e}"))?;
    Ok(Outcome::Pass)
}
