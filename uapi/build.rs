// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Generates the raw bindings from the committed, exported uAPI headers in `include/`.

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let include = manifest.join("include");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=include");

    let bindings = bindgen::Builder::default()
        .header(manifest.join("wrapper.h").display().to_string())
        // Only the exported headers: never the (older) system ones.
        .clang_arg("-nostdinc")
        .clang_arg(format!("-I{}", include.display()))
        // Only what the vtlkit series adds: everything else comes from kvm-bindings.
        .allowlist_var("KVM_CAP_APIC_GROUPS")
        .allowlist_var("KVM_MSI_VALID_APIC_GROUP")
        .allowlist_var("KVM_APIC_GROUP_MAX_VTL")
        .allowlist_var("KVM_APIC_GROUP_NONE")
        .allowlist_type("vtlkit_ioctl")
        .allowlist_type("kvm_apic_group")
        // These two gained an apic_group field; kvm-bindings has the 6.12 layout.
        .allowlist_type("kvm_msi")
        .allowlist_type("kvm_irq_routing_msi")
        // The Hyper-V VTL patches: the HCALL exit gained flags and xmm[] (kvm-bindings has the
        // 6.12 layout), SINT routes gained apic_group, and the VSM opt-in and privileges.
        .allowlist_type("kvm_hyperv_exit")
        .allowlist_type("kvm_irq_routing_hv_sint")
        .allowlist_var("KVM_HYPERV_HCALL_XMM_INPUT")
        .allowlist_var("KVM_CAP_HYPERV_VSM")
        .allowlist_var("KVM_HV_SINT_VALID_APIC_GROUP")
        .allowlist_var("KVM_HV_ACCESS_VSM")
        .allowlist_var("KVM_HV_ACCESS_VP_REGISTERS")
        .allowlist_var("KVM_EXIT_HYPERV_HCALL")
        // KVM_CAP_VCPU_EVENT_NOTIFY: the ioctls' struct, flags and the new exit.
        .allowlist_type("kvm_event_notify")
        .allowlist_var("KVM_CAP_VCPU_EVENT_NOTIFY")
        .allowlist_var("KVM_EVENT_NOTIFY_.*")
        .allowlist_var("KVM_EXIT_EVENT_NOTIFY")
        // KVM_CAP_VTL_PROTECTIONS (the wrappers are in protections.rs).
        .allowlist_var("KVM_CAP_VTL_PROTECTIONS")
        // kvm_run as the series' header lays it out, for exit members kvm-bindings' 6.12
        // kvm_run lacks (event_notify).
        .allowlist_type("kvm_run")
        // ... and its ioctls' struct and access bits, the memory-fault exit's new flags, and a
        // name for that exit's arm of kvm_run (with `gva`; see wrapper.h).
        .allowlist_type("kvm_vtl_protection")
        .allowlist_type("vtlkit_memory_fault")
        .allowlist_var("KVM_VTL_PROT_.*")
        .allowlist_var("KVM_MEMORY_EXIT_FLAG_.*")
        .allowlist_var("KVM_EXIT_MEMORY_FAULT")
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_eq(true)
        .layout_tests(true)
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen failed on {} (is libclang-dev installed? scripts/setup-deps.sh does it): {e}",
                include.display()
            )
        });
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("bindings.rs");
    bindings.write_to_file(&out).expect("write bindings.rs");
}
