// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The uAPI itself: KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS), KVM_SET_APIC_GROUP and
//! KVM_GET_APIC_GROUP, their values and every documented error.

use anyhow::{bail, Context, Result};
use kvm_bindings::kvm_enable_cap;
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::{ioctl_with_mut_ptr, ioctl_with_ptr};
use vtlkit_uapi::{raw, ApicGroup, VcpuApicGroupExt, APIC_GROUP_NONE};

use super::scenario::{groups_supported, kvm_err};
use crate::guest::{ucall, Entry};
use crate::harness::{Outcome, TestResult};
use crate::vm::{TestVm, Ucall, Vcpu, VmOptions};
use crate::{check, check_eq, require};

/// What KVM_GET_APIC_GROUP reports for vCPU `id` before it is assigned (opted-in VM).
fn unassigned(id: u64) -> ApicGroup {
    ApicGroup {
        group: APIC_GROUP_NONE,
        apic_id: id as u32,
        vtl: 0,
    }
}

/// KVM_GET_APIC_GROUP, checking that pad, flags and reserved come back zero.
fn get(v: &Vcpu) -> Result<ApicGroup> {
    let raw =
        v.fd.get_apic_group_raw()
            .map_err(kvm_err)
            .with_context(|| format!("KVM_GET_APIC_GROUP on vCPU {}", v.id))?;
    check!(
        raw.flags == 0 && raw.pad == [0; 3] && raw.reserved == [0; 4],
        "KVM_GET_APIC_GROUP on vCPU {}: flags/pad/reserved not zero: {raw:?}",
        v.id
    );
    Ok(raw.into())
}

/// Expect `r` to fail with `errno`.
fn expect_errno<T: std::fmt::Debug>(
    what: &str,
    r: std::result::Result<T, i32>,
    errno: i32,
) -> Result<()> {
    match r {
        Ok(v) => bail!("{what} succeeded ({v:?}), expected errno {errno}"),
        Err(e) => {
            check_eq!(e, errno, "{what}: errno");
            Ok(())
        }
    }
}

fn set(v: &Vcpu, g: &raw::kvm_apic_group) -> std::result::Result<(), i32> {
    v.fd.set_apic_group_raw(g).map_err(|e| e.errno())
}

fn enable_cap(vm: &VmFd, flags: u32, args: [u64; 4]) -> std::result::Result<(), i32> {
    let cap = kvm_enable_cap {
        cap: raw::KVM_CAP_APIC_GROUPS,
        flags,
        args,
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(|e| e.errno())
}

pub(super) fn apic_group_set_get() -> TestResult {
    // A VM that never opts in: every vCPU reads as the stock identity.
    let mut stock = TestVm::new(VmOptions::default())?;
    let supported = groups_supported(&stock);
    require!(supported >= 2, "KVM_CAP_APIC_GROUPS is {supported}, need 2");
    for id in 0..3 {
        stock.add_vcpu(id, Entry::ApicMain)?;
    }
    for i in 0..3 {
        let v = stock.vcpu(i)?;
        check_eq!(
            get(v)?,
            ApicGroup {
                group: 0,
                apic_id: v.id as u32,
                vtl: 0
            },
            "KVM_GET_APIC_GROUP on vCPU {} of a VM that never opted in",
            v.id
        );
    }

    // An opted-in VM: unassigned until set, then exactly what was set.
    let mut vm = TestVm::new(VmOptions::apic_groups())?;
    for id in 0..5 {
        vm.add_vcpu(id, Entry::ApicMain)?;
    }
    for i in 0..5 {
        let v = vm.vcpu(i)?;
        check_eq!(
            get(v)?,
            unassigned(v.id),
            "KVM_GET_APIC_GROUP on vCPU {} before KVM_SET_APIC_GROUP",
            v.id
        );
    }
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
            vtl: vtlkit_uapi::MAX_VTL,
        },
        ApicGroup {
            group: 1,
            apic_id: 0xfe,
            vtl: 1,
        },
    ];
    for (i, g) in want.iter().enumerate() {
        vm.assign_group(i, *g)?;
    }
    for (i, g) in want.iter().enumerate() {
        check_eq!(get(vm.vcpu(i)?)?, *g, "KVM_GET_APIC_GROUP on vCPU {i}");
        // Repeating the identical assignment succeeds and changes nothing.
        vm.vcpu(i)?
            .fd
            .set_apic_group(*g)
            .map_err(kvm_err)
            .with_context(|| format!("repeating vCPU {i}'s identical assignment"))?;
        check_eq!(
            get(vm.vcpu(i)?)?,
            *g,
            "KVM_GET_APIC_GROUP on vCPU {i} after the repeat"
        );
    }
    check_eq!(
        get(vm.vcpu(4)?)?,
        unassigned(4),
        "KVM_GET_APIC_GROUP on vCPU 4, still unassigned, after the others were assigned"
    );
    Ok(Outcome::Pass)
}

/// KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS): EINVAL for flags or arguments, ENXIO without an
/// in-kernel LAPIC, EBUSY once a vCPU exists; a repeat before vCPUs is a no-op; a failed
/// enable opts nothing in.
fn enable_cap_errors() -> Result<()> {
    // Without an irqchip: bad flags/arguments are EINVAL (checked first), else ENXIO.
    let bare = TestVm::new(VmOptions {
        irqchip: false,
        ..Default::default()
    })?;
    expect_errno(
        "KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) with flags 1, no irqchip",
        enable_cap(&bare.fd, 1, [0; 4]),
        libc::EINVAL,
    )?;
    expect_errno(
        "KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) with args[0] = 1, no irqchip",
        enable_cap(&bare.fd, 0, [1, 0, 0, 0]),
        libc::EINVAL,
    )?;
    expect_errno(
        "KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) without an in-kernel irqchip",
        enable_cap(&bare.fd, 0, [0; 4]),
        libc::ENXIO,
    )?;
    // The failures opted nothing in: once the irqchip exists, a new vCPU is in the stock
    // group 0, not unassigned.
    bare.fd
        .create_irq_chip()
        .map_err(|e| anyhow::anyhow!("KVM_CREATE_IRQCHIP: {e}"))?;
    let mut late = bare;
    late.add_vcpu(0, Entry::LongMode)?;
    check_eq!(
        get(late.vcpu(0)?)?,
        ApicGroup::default(),
        "KVM_GET_APIC_GROUP after the failed enables (the VM must not have opted in)"
    );

    // With an irqchip: every bad flag or argument is EINVAL; a good one succeeds, twice.
    let vm = TestVm::new(VmOptions::default())?;
    let bad: [(&str, u32, [u64; 4]); 4] = [
        ("flags 1", 1, [0; 4]),
        ("flags bit 31", 1 << 31, [0; 4]),
        ("args[0] = 1", 0, [1, 0, 0, 0]),
        ("args[3] = 1 << 63", 0, [0, 0, 0, 1 << 63]),
    ];
    for (what, flags, args) in bad {
        expect_errno(
            &format!("KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) with {what}"),
            enable_cap(&vm.fd, flags, args),
            libc::EINVAL,
        )?;
    }
    let mut vm = vm;
    vm.add_vcpu(0, Entry::LongMode)?;
    check_eq!(
        get(vm.vcpu(0)?)?,
        ApicGroup::default(),
        "KVM_GET_APIC_GROUP after the EINVAL enables (the VM must not have opted in)"
    );
    // Now a vCPU exists: EBUSY, and the vCPU stays in the stock group 0.
    expect_errno(
        "KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) after KVM_CREATE_VCPU",
        enable_cap(&vm.fd, 0, [0; 4]),
        libc::EBUSY,
    )?;
    check_eq!(
        get(vm.vcpu(0)?)?,
        ApicGroup::default(),
        "KVM_GET_APIC_GROUP after the EBUSY enable"
    );
    expect_errno(
        "KVM_SET_APIC_GROUP in a VM whose opt-in failed with EBUSY",
        set(vm.vcpu(0)?, &ApicGroup::default().into()),
        libc::EINVAL,
    )?;

    // Enabling twice before any vCPU succeeds; afterwards EBUSY as well.
    let mut twice = TestVm::new(VmOptions::apic_groups())?;
    vtlkit_uapi::enable_apic_groups(&twice.fd)
        .map_err(kvm_err)
        .context("enabling KVM_CAP_APIC_GROUPS a second time before any vCPU")?;
    twice.add_vcpu(0, Entry::LongMode)?;
    expect_errno(
        "KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) again after KVM_CREATE_VCPU",
        enable_cap(&twice.fd, 0, [0; 4]),
        libc::EBUSY,
    )?;
    check_eq!(
        get(twice.vcpu(0)?)?,
        unassigned(0),
        "KVM_GET_APIC_GROUP after the EBUSY enable of an opted-in VM"
    );
    Ok(())
}

pub(super) fn apic_group_errors() -> TestResult {
    let kvm = crate::vm::open_kvm()?;
    let supported = vtlkit_uapi::apic_groups_supported(&kvm);
    require!(supported >= 2, "KVM_CAP_APIC_GROUPS is {supported}, need 2");
    enable_cap_errors()?;

    // No in-kernel LAPIC: ENXIO for both ioctls (the VM cannot opt in either, see above).
    let mut bare = TestVm::new(VmOptions {
        irqchip: false,
        ..Default::default()
    })?;
    bare.add_vcpu(0, Entry::LongMode)?;
    expect_errno(
        "KVM_SET_APIC_GROUP without an in-kernel LAPIC",
        set(bare.vcpu(0)?, &ApicGroup::default().into()),
        libc::ENXIO,
    )?;
    expect_errno(
        "KVM_GET_APIC_GROUP without an in-kernel LAPIC",
        bare.vcpu(0)?.fd.get_apic_group().map_err(|e| e.errno()),
        libc::ENXIO,
    )?;

    // A VM that did not opt in: EINVAL even for a valid, identity assignment.
    let mut stock = TestVm::new(VmOptions::default())?;
    stock.add_vcpu(3, Entry::LongMode)?;
    let identity = ApicGroup {
        group: 0,
        apic_id: 3,
        vtl: 0,
    };
    expect_errno(
        "KVM_SET_APIC_GROUP(0, vcpu_id, 0) in a VM that did not opt in",
        set(stock.vcpu(0)?, &identity.into()),
        libc::EINVAL,
    )?;
    check_eq!(
        get(stock.vcpu(0)?)?,
        identity,
        "KVM_GET_APIC_GROUP after the EINVAL"
    );

    // An opted-in VM. vCPU 0 holds (group 1, APIC ID 0); vCPU 1 is checked unassigned and
    // then assigned; vCPU 2 is for KVM_RUN.
    let mut vm = TestVm::new(VmOptions::apic_groups())?;
    for id in 0..3 {
        vm.add_vcpu(id, Entry::LongMode)?;
    }
    let a = ApicGroup {
        group: 1,
        apic_id: 0,
        vtl: 1,
    };
    vm.assign_group(0, a)?;
    let base: raw::kvm_apic_group = ApicGroup {
        group: 0,
        apic_id: 9,
        vtl: 0,
    }
    .into();
    let bad_fields: Vec<(&str, raw::kvm_apic_group)> = vec![
        (
            "group == KVM_CAP_APIC_GROUPS",
            raw::kvm_apic_group {
                group: supported,
                ..base
            },
        ),
        (
            "group = KVM_APIC_GROUP_NONE",
            raw::kvm_apic_group {
                group: APIC_GROUP_NONE,
                ..base
            },
        ),
        (
            "vtl = KVM_APIC_GROUP_MAX_VTL + 1",
            raw::kvm_apic_group {
                vtl: vtlkit_uapi::MAX_VTL + 1,
                ..base
            },
        ),
        ("vtl 255", raw::kvm_apic_group { vtl: 255, ..base }),
        ("flags 1", raw::kvm_apic_group { flags: 1, ..base }),
        (
            "flags bit 31",
            raw::kvm_apic_group {
                flags: 1 << 31,
                ..base
            },
        ),
        (
            "pad[0] = 1",
            raw::kvm_apic_group {
                pad: [1, 0, 0],
                ..base
            },
        ),
        (
            "pad[2] = 0x80",
            raw::kvm_apic_group {
                pad: [0, 0, 0x80],
                ..base
            },
        ),
        (
            "reserved[0] = 1",
            raw::kvm_apic_group {
                reserved: [1, 0, 0, 0],
                ..base
            },
        ),
        (
            "reserved[3] = 1 << 63",
            raw::kvm_apic_group {
                reserved: [0, 0, 0, 1 << 63],
                ..base
            },
        ),
        (
            "apic_id 0xff (xAPIC broadcast, no 32-bit x2APIC IDs)",
            raw::kvm_apic_group {
                apic_id: 0xff,
                ..base
            },
        ),
        (
            "apic_id u32::MAX",
            raw::kvm_apic_group {
                apic_id: u32::MAX,
                ..base
            },
        ),
    ];
    // On the unassigned vCPU 1: each bad field is EINVAL, and (group 1, APIC ID 0) is EEXIST.
    for (what, g) in &bad_fields {
        expect_errno(
            &format!("KVM_SET_APIC_GROUP on an unassigned vCPU with {what}"),
            set(vm.vcpu(1)?, g),
            libc::EINVAL,
        )?;
        check_eq!(
            get(vm.vcpu(1)?)?,
            unassigned(1),
            "KVM_GET_APIC_GROUP after the failed set with {what}"
        );
    }
    expect_errno(
        "KVM_SET_APIC_GROUP(group 1, APIC ID 0) taken by vCPU 0",
        set(vm.vcpu(1)?, &a.into()),
        libc::EEXIST,
    )?;
    check_eq!(
        get(vm.vcpu(1)?)?,
        unassigned(1),
        "KVM_GET_APIC_GROUP after the EEXIST"
    );
    // EFAULT for a bad pointer, and nothing changes.
    {
        let fd = &vm.vcpu(1)?.fd;
        // SAFETY: the kernel reads from address 0, which is not mapped in user space, and fails
        // with EFAULT; no memory of this process is touched.
        let r = unsafe {
            ioctl_with_ptr(
                fd,
                libc::c_ulong::from(raw::VTLKIT_KVM_SET_APIC_GROUP),
                std::ptr::null::<raw::kvm_apic_group>(),
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        check!(
            r < 0 && errno == libc::EFAULT,
            "KVM_SET_APIC_GROUP(NULL): returned {r}, errno {errno}, expected EFAULT"
        );
        // SAFETY: as above, the kernel's write to address 0 fails with EFAULT.
        let r = unsafe {
            ioctl_with_mut_ptr(
                fd,
                libc::c_ulong::from(raw::VTLKIT_KVM_GET_APIC_GROUP),
                std::ptr::null_mut::<raw::kvm_apic_group>(),
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        check!(
            r < 0 && errno == libc::EFAULT,
            "KVM_GET_APIC_GROUP(NULL): returned {r}, errno {errno}, expected EFAULT"
        );
    }
    check_eq!(
        get(vm.vcpu(1)?)?,
        unassigned(1),
        "KVM_GET_APIC_GROUP after the EFAULT"
    );

    // Assigned vCPU 1: bad fields are still EINVAL; any different assignment is EBUSY (also
    // one whose (group, APIC ID) is taken: EBUSY comes first); the identical one succeeds.
    let b = ApicGroup {
        group: 1,
        apic_id: 5,
        vtl: 1,
    };
    vm.assign_group(1, b)?;
    for (what, g) in &bad_fields {
        expect_errno(
            &format!("KVM_SET_APIC_GROUP on an assigned vCPU with {what}"),
            set(vm.vcpu(1)?, g),
            libc::EINVAL,
        )?;
        check_eq!(
            get(vm.vcpu(1)?)?,
            b,
            "KVM_GET_APIC_GROUP after the failed set with {what}"
        );
    }
    let different = [
        ("another group", ApicGroup { group: 2, ..b }),
        ("another APIC ID", ApicGroup { apic_id: 6, ..b }),
        ("another VTL", ApicGroup { vtl: 2, ..b }),
        ("vCPU 0's (group, APIC ID)", a),
    ];
    for (what, g) in different {
        expect_errno(
            &format!("re-assigning vCPU 1 ({b:?}) to {what} {g:?}"),
            set(vm.vcpu(1)?, &g.into()),
            libc::EBUSY,
        )?;
        check_eq!(
            get(vm.vcpu(1)?)?,
            b,
            "KVM_GET_APIC_GROUP after the EBUSY for {what}"
        );
    }
    for (i, g) in [(0, a), (1, b)] {
        vm.vcpu(i)?
            .fd
            .set_apic_group(g)
            .map_err(kvm_err)
            .with_context(|| format!("repeating vCPU {i}'s identical assignment {g:?}"))?;
    }

    // KVM_RUN on the unassigned vCPU 2: ENOEXEC, and it stays unassigned.
    {
        let v = vm.vcpus[2]
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("vCPU index 2 missing"))?;
        match v.fd.run() {
            Ok(exit) => bail!("KVM_RUN on an unassigned vCPU returned {exit:?}, expected ENOEXEC"),
            Err(e) => check_eq!(e.errno(), libc::ENOEXEC, "KVM_RUN on an unassigned vCPU"),
        }
    }
    check_eq!(
        get(vm.vcpu(2)?)?,
        unassigned(2),
        "KVM_GET_APIC_GROUP after the ENOEXEC"
    );
    // Assigned, it runs; after running the identical set still succeeds, a different one is
    // EBUSY.
    let c = ApicGroup {
        group: 0,
        apic_id: 2,
        vtl: 0,
    };
    vm.assign_group(2, c)?;
    match vm.run_vcpu(2)? {
        Ucall::Sync {
            stage: ucall::STAGE_LONG_MODE,
            ..
        } => {}
        other => bail!("vCPU 2: expected the long-mode SYNC, got {other}"),
    }
    vm.vcpu(2)?
        .fd
        .set_apic_group(c)
        .map_err(kvm_err)
        .context("repeating vCPU 2's identical assignment after it ran")?;
    expect_errno(
        "re-assigning vCPU 2 to group 1 after it ran",
        set(vm.vcpu(2)?, &ApicGroup { group: 1, ..c }.into()),
        libc::EBUSY,
    )?;
    check_eq!(get(vm.vcpu(2)?)?, c, "KVM_GET_APIC_GROUP after the EBUSY");
    Ok(Outcome::Pass)
}
