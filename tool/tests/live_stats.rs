// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The per-vCPU statistics reader on a real VM of this process (any KVM host): stats fds the
//! "VMM" holds, vCPUs without one, a dup()ed VM fd, and the names `fill` checks.
//!
//! It needs a usable /dev/kvm. Without one it prints `skipped: ...` to stderr and returns, which
//! cargo counts as a pass; with `VTLKIT_REQUIRE_KVM=1` in the environment (a host that must have
//! KVM) a missing /dev/kvm fails the test instead.
//!
//! This process is the VMM here, so the fallback (KVM_GET_STATS_FD on a duplicate of the vCPU
//! fd) works; from another process KVM refuses it with EIO, which the in-guest test covers.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use kvm_ioctls::Kvm;
use vtlctl::vcpustats::{self, Unavailable};
use vtlctl::{VcpuInfo, VmInfo};

fn vm_info(pid: u32, fd: i32, ids: &[u32]) -> VmInfo {
    VmInfo {
        vm: format!("{pid}-{fd}"),
        pid,
        comm: None,
        vcpus: ids
            .iter()
            .map(|&vcpu_id| VcpuInfo {
                vcpu_id,
                vp_index: None,
                group: Some(0),
                apic_id: vcpu_id,
                vtl: 0,
                run_state: None,
                event_notify_target: None,
                stats: BTreeMap::new(),
                debugfs_stats: Default::default(),
            })
            .collect(),
        counters: BTreeMap::new(),
        vtl_prot_ranges: None,
    }
}

#[test]
fn reads_the_vcpus_of_a_vm_in_this_process() {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) if std::env::var_os("VTLKIT_REQUIRE_KVM").is_some_and(|v| v == "1") => {
            panic!("VTLKIT_REQUIRE_KVM=1, but /dev/kvm is not usable: {e}")
        }
        Err(e) => {
            eprintln!(
                "skipped: no usable /dev/kvm ({e}); VTLKIT_REQUIRE_KVM=1 makes this a failure"
            );
            return;
        }
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let v0 = vm.create_vcpu(0).expect("vCPU 0");
    let v5 = vm.create_vcpu(5).expect("vCPU 5");
    // vCPU 0 has a stats fd held open (as `vtlctl demo` does), vCPU 5 only its vCPU fd.
    let held = vcpustats::get_stats_fd(&v0).expect("KVM_GET_STATS_FD");
    let pid = std::process::id();

    let fds = vcpustats::kvm_fds(Path::new("/proc"), pid).expect("own fds");
    assert!(
        fds.contains(&(vm.as_raw_fd(), vcpustats::KvmFd::Vm)),
        "{fds:?}"
    );
    assert!(
        fds.contains(&(v5.as_raw_fd(), vcpustats::KvmFd::Vcpu(5))),
        "{fds:?}"
    );
    assert!(
        fds.contains(&(held.as_raw_fd(), vcpustats::KvmFd::VcpuStats(Some(0)))),
        "{fds:?}"
    );

    // A VMM that dup()s its VM fd still holds one VM (told apart with kcmp(2)).
    // SAFETY: `vm` is open for the whole borrow, which ends with the statement.
    let vm_dup = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) }
        .try_clone_to_owned()
        .expect("dup the VM fd");
    let fds = vcpustats::kvm_fds(Path::new("/proc"), pid).expect("own fds");
    assert!(
        fds.contains(&(vm_dup.as_raw_fd(), vcpustats::KvmFd::Vm)),
        "{fds:?}"
    );
    let m = vcpustats::read_vm(Path::new("/proc"), pid, 1).expect("read_vm");
    for id in [0, 5] {
        let s = m
            .vcpus
            .get(&id)
            .and_then(|r| r.as_ref().ok())
            .unwrap_or_else(|| panic!("vCPU {id}: {:?}", m.vcpus.get(&id)));
        // The id names the thread that created the vCPU: this test's, not the process.
        assert_eq!(s.vcpu().map(|(_, v)| v), Some(id));
        // Never run: no exits yet.
        assert_eq!(s.get("exits").and_then(|x| x.value()), Some(0));
    }

    // fill(): values, absent default names noted, strict names checked.
    let t = tempfile::tempdir().expect("tempdir");
    fs::create_dir(t.path().join(format!("{pid}-{}", vm.as_raw_fd()))).expect("mkdir");
    let names: Vec<String> = ["exits", "no_such_stat"].map(String::from).to_vec();
    let mut vms = [vm_info(pid, vm.as_raw_fd(), &[0, 5, 9])];
    let proc_root = Some(Path::new("/proc"));
    let rep = vcpustats::fill_from(proc_root, t.path(), &mut vms, &names, &[]);
    let c = &vms[0].vcpus;
    assert_eq!(c[0].stats["exits"], Some(0));
    assert_eq!(c[1].stats["exits"], Some(0));
    assert_eq!(c[0].stats["no_such_stat"], None);
    assert_eq!(
        c[2].stats["exits"], None,
        "vCPU 9 has no fd in this process"
    );
    assert!(
        rep.unknown.is_empty() && rep.not_single.is_empty(),
        "{rep:?}"
    );
    let want_absent = format!(
        "{}: this kernel has no per-vCPU statistic no_such_stat",
        vms[0].vm
    );
    assert!(rep.notes.contains(&want_absent), "{:?}", rep.notes);
    assert!(
        rep.notes
            .iter()
            .any(|n| n.contains("vCPU 9: process") && n.contains("holds no fd of it")),
        "{:?}",
        rep.notes
    );
    // Named by the user: an unknown name and a histogram are errors, not dashes.
    let hist = m
        .vcpus
        .get(&0)
        .and_then(|r| r.as_ref().ok())
        .and_then(|s| s.stats.iter().find(|st| st.values.len() > 1))
        .map(|st| st.name.clone())
        .expect("KVM has a histogram statistic");
    let strict: Vec<String> = vec!["no_such_stat".into(), hist.clone()];
    let names: Vec<String> = ["hv_vtl_exits"]
        .map(String::from)
        .into_iter()
        .chain(strict.clone())
        .collect();
    let rep = vcpustats::fill_from(proc_root, t.path(), &mut vms, &names, &strict);
    assert_eq!(
        rep.unknown.first().map(|(n, _)| n.as_str()),
        Some("no_such_stat")
    );
    assert!(rep.unknown[0].1.iter().any(|n| n == "exits"), "{rep:?}");
    assert_eq!(rep.not_single, [hist]);

    // Two VMs of one process cannot be told apart.
    fs::create_dir(t.path().join(format!("{pid}-999"))).expect("mkdir");
    let rep = vcpustats::fill_from(proc_root, t.path(), &mut vms, &names, &[]);
    assert!(
        rep.notes.iter().any(|n| n.contains("created 2 VMs")),
        "{:?}",
        rep.notes
    );
    assert!(matches!(
        vcpustats::read_vm(Path::new("/proc"), pid, 2),
        Err(Unavailable::Ambiguous { vms: 2, .. })
    ));
    drop(held);
}
