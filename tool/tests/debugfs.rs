// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! vtlctl against debugfs trees recorded in the test guest (tests/fixtures/*.tree, made by
//! scripts/guest/record-debugfs.sh), and against broken variants of them.
//!
//! A fixture line is `<path relative to /sys/kernel/debug/kvm>: <file content>`.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{demo_vm_name, keep, tree, vtlctl, DEMO, NO_SERIES};
use vtlctl::{scan, scan_vm, ScanError};

#[test]
fn demo_tree_lists_siblings_with_groups_apic_ids_and_vtls() {
    let (_t, root) = tree(DEMO, keep);
    let (vms, gone) = scan(&root).expect("scan");
    assert!(gone.is_empty());
    assert_eq!(vms.len(), 1);
    let vm = &vms[0];
    assert_eq!(vm.vm, demo_vm_name());
    // `vtlctl demo --vps 2 --vtls 2`: vCPU vtl*2+vp is VP vp at VTL vtl, group vtl.
    let got: Vec<_> = vm
        .vcpus
        .iter()
        .map(|v| (v.vcpu_id, v.vp_index, v.group, v.apic_id, v.vtl))
        .collect();
    assert_eq!(
        got,
        [
            (0, Some(0), Some(0), 0, 0),
            (1, Some(1), Some(0), 1, 0),
            (2, Some(0), Some(1), 0, 1),
            (3, Some(1), Some(1), 1, 1)
        ]
    );
    assert_eq!(vm.counters.get("apic_group_irq_dropped"), Some(&0));
}

#[test]
fn show_json_and_table() {
    let (_t, root) = tree(DEMO, keep);
    let name = demo_vm_name();
    let (rc, out, err) = vtlctl(&["show", "--json", &name], &root);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["schema"], 1);
    assert_eq!(v["vms"][0]["vcpus"][3]["apic_id"], 1);
    assert_eq!(v["vms"][0]["vcpus"][3]["vtl"], 1);
    let (rc, out, _) = vtlctl(&["show"], &root);
    assert_eq!(rc, 0);
    assert!(out.starts_with("VM "), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with(&name)).count(),
        5,
        "{out}"
    );
    let (rc, out, _) = vtlctl(&["ps"], &root);
    assert_eq!(rc, 0);
    assert!(
        out.lines().nth(1).is_some_and(|l| l.contains(" 0,1 ")),
        "{out}"
    );
}

#[test]
fn unknown_vm_is_exit_4_with_its_name() {
    let (_t, root) = tree(DEMO, keep);
    let (rc, _, err) = vtlctl(&["show", "999999-7"], &root);
    assert_eq!(rc, 4);
    assert!(err.contains("no VM 999999-7"), "{err}");
    let (rc, _, err) = vtlctl(&["show", "not-a-vm"], &root);
    assert_eq!(rc, 4);
    assert!(err.contains("not-a-vm"), "{err}");
}

#[test]
fn kernel_without_series_is_exit_3() {
    let (_t, root) = tree(NO_SERIES, keep);
    assert!(matches!(scan(&root), Err(ScanError::NoSeries(_))));
    let (rc, _, err) = vtlctl(&["show"], &root);
    assert_eq!(rc, 3);
    assert!(err.contains("does not carry the vtlkit series"), "{err}");
}

#[test]
fn malformed_files_are_named() {
    let (_t, root) = tree(DEMO, |p, c| {
        Some(if p.ends_with("vcpu2/apic_group") {
            "zebra".into()
        } else {
            c.to_string()
        })
    });
    match scan(&root) {
        Err(ScanError::Malformed { path, content, .. }) => {
            assert!(path.ends_with("vcpu2/apic_group"));
            assert_eq!(content, "zebra");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    let (rc, _, err) = vtlctl(&["ps"], &root);
    assert_eq!(rc, 1);
    assert!(
        err.contains("vcpu2/apic_group") && err.contains("zebra"),
        "{err}"
    );

    let (_t, root) = tree(DEMO, |p, c| {
        Some(if p.ends_with("vcpu1/vtl") {
            "16".into()
        } else {
            c.to_string()
        })
    });
    assert!(matches!(scan(&root), Err(ScanError::Malformed { .. })));

    // A vCPU directory missing one of the series' files, with the others present.
    let (_t, root) = tree(DEMO, |p, c| {
        (!p.ends_with("vcpu3/apic_id")).then(|| c.to_string())
    });
    assert!(scan(&root).is_err());
}

#[test]
fn debugfs_not_mounted_or_no_kvm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rc, _, err) = vtlctl(&["ps"], &tmp.path().join("kvm"));
    assert_eq!(rc, 1);
    assert!(err.contains("debugfs is not mounted"), "{err}");
    fs::write(tmp.path().join("other"), "x").expect("write");
    let (rc, _, err) = vtlctl(&["ps"], &tmp.path().join("kvm"));
    assert_eq!(rc, 1);
    assert!(err.contains("KVM is not loaded"), "{err}");
}

#[test]
fn empty_host_prints_no_vms() {
    let (_t, root) = tree("", keep);
    let (rc, out, _) = vtlctl(&["ps"], &root);
    assert_eq!((rc, out.as_str()), (0, "no VMs\n"));
}

/// A VM whose directory disappears while vtlctl reads it: `show` says it vanished (exit 4),
/// `ps` leaves it out and names it. The FIFO makes the timing deterministic: the reader blocks
/// on vcpu0/apic_group until this test has removed the VM directory.
#[test]
fn vm_vanishing_while_read() {
    let (_t, root) = tree(DEMO, keep);
    let name = demo_vm_name();
    let vm_dir = root.join(&name);
    // Leave only vcpu0, whose apic_group becomes a FIFO.
    for e in fs::read_dir(&vm_dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() && !p.ends_with("vcpu0") {
            fs::remove_dir_all(&p).expect("rm");
        }
    }
    let fifo = vm_dir.join("vcpu0/apic_group");
    fs::remove_file(&fifo).expect("rm");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("cstr");
    // SAFETY: mkfifo on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let writer = {
        let (fifo, vm_dir) = (fifo.clone(), vm_dir.clone());
        std::thread::spawn(move || {
            // Blocks until scan_vm opens the FIFO for reading.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open fifo");
            fs::remove_dir_all(&vm_dir).expect("rm vm dir");
            std::io::Write::write_all(&mut f, b"0\n").expect("write");
        })
    };
    let r = scan_vm(&root, &name);
    writer.join().expect("writer");
    assert!(
        matches!(r, Err(ScanError::Vanished(ref n)) if *n == name),
        "{r:?}"
    );
}

#[test]
fn permission_errors_say_run_as_root() {
    let e = ScanError::Permission(PathBuf::from("/sys/kernel/debug/kvm"));
    assert!(e.to_string().contains("run vtlctl as root"));
}
