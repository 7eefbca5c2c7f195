// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The vtlctl command line on recorded trees: closed pipes, bad arguments, COMM from the
//! recorded tree, unassigned vCPUs, the per-VP view, filters and --watch.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{demo_as_pid, demo_vm_name, keep, tree, vtlctl, vtlctl_cmd, DEMO};

/// A pipe whose read end is already closed: every write to the other end fails with EPIPE.
fn widowed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two fds into a live array of two c_ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created by pipe() and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(r);
    w
}

#[test]
fn closed_stdout_ends_quietly() {
    let (_t, root) = tree(DEMO, keep);
    let name = demo_vm_name();
    let cases: &[&[&str]] = &[
        &["show", "--json"],
        &["show"],
        &["show", &name],
        &["ps"],
        &["ps", "--json"],
        &["vps"],
        &["vps", "--json"],
        &["show", "--watch", "0.1", "--count", "3"],
        &["ps", "--json", "--watch", "0.1", "--count", "3"],
        &["--help"],
        &["show", "--help"],
    ];
    for args in cases {
        let out = vtlctl_cmd(&root)
            .args(*args)
            .stdout(Stdio::from(widowed_pipe()))
            .stderr(Stdio::piped())
            .output()
            .expect("run vtlctl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "vtlctl {args:?}: {err}");
        assert!(
            without_stats_note(&err).is_empty(),
            "vtlctl {args:?} wrote to stderr: {err}"
        );
    }
}

#[test]
fn closed_stdout_with_a_real_reader_that_stops() {
    // As `vtlctl show --json | head -1` does it: the reader takes one line and goes away.
    let (_t, root) = tree(DEMO, keep);
    let mut child = vtlctl_cmd(&root)
        .args(["show", "--json", "--watch", "0.1", "--count", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read");
    assert!(first.starts_with("{\"schema\":1"), "{first}");
    // The reader is dropped here: vtlctl's next frame hits EPIPE.
    let st = child.wait().expect("wait");
    let err = stderr_of(&mut child);
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(without_stats_note(&err).is_empty(), "{err}");
}

/// `show` on a recorded tree says once that it has no per-vCPU statistics; the rest of stderr.
fn without_stats_note(err: &str) -> String {
    err.lines()
        .filter(|l| !l.starts_with("vtlctl: note: per-vCPU statistics: "))
        .collect()
}

#[test]
fn per_vcpu_stats_of_a_recorded_tree_are_dashes_said_once() {
    let (_t, root) = tree(DEMO, keep);
    let name = demo_vm_name();
    let (rc, out, err) = vtlctl(&["show", "--stat", "io_exits"], &root);
    assert_eq!(rc, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].ends_with("VTL  STATE  NOTIFY  HV_VTL_EXITS  VTL_PROT_FAULTS  IO_EXITS"),
        "{out}"
    );
    assert!(
        lines[1..5].iter().all(|l| l.starts_with(&name)
            && l.ends_with("  -      -       -             -                -")),
        "{out}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not a live debugfs") && err.contains("(shown as -)"),
        "{err}"
    );
    // Said once per run, not once per sample.
    let (rc, _, err) = vtlctl(&["show", "--watch", "0.1", "--count", "3"], &root);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // JSON: null per asked statistic; ps and vps do not read them.
    let (_, out, _) = vtlctl(&["show", "--json", "--stat", "exits"], &root);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let stats = &v["vms"][0]["vcpus"][0]["stats"];
    assert_eq!(stats["hv_vtl_exits"], serde_json::Value::Null, "{out}");
    assert_eq!(stats["vtl_prot_faults"], serde_json::Value::Null, "{out}");
    assert_eq!(stats["exits"], serde_json::Value::Null, "{out}");
    assert_eq!(stats.as_object().map(|o| o.len()), Some(3), "{out}");
    for args in [["ps", "--json"], ["vps", "--json"]] {
        let (rc, out, err) = vtlctl(&args, &root);
        assert_eq!((rc, err.as_str()), (0, ""), "{args:?}");
        assert!(!out.contains("stats"), "{args:?}: {out}");
    }
    // Repeating a default column adds nothing.
    let (_, out, _) = vtlctl(
        &[
            "show",
            "--stat",
            "hv_vtl_exits",
            "--stat",
            "vtl_prot_faults",
        ],
        &root,
    );
    assert_eq!(out.matches("HV_VTL_EXITS").count(), 1, "{out}");
    assert_eq!(out.matches("VTL_PROT_FAULTS").count(), 1, "{out}");
}

#[test]
fn bad_arguments_exit_2_naming_the_value() {
    let (_t, root) = tree(DEMO, keep);
    let cases: &[(&[&str], &[&str])] = &[
        (&["demo", "--vtls", "17"], &["--vtls", "17"]),
        (&["demo", "--vtls", "0"], &["--vtls", "0"]),
        (&["demo", "--vps", "0"], &["--vps", "0"]),
        (&["demo", "--vps", "65"], &["--vps", "65"]),
        (&["demo", "--vps", "many"], &["--vps", "many"]),
        (&["demo", "--hold", "-1"], &["-1"]),
        (&["show", "--group", "16"], &["--group", "16"]),
        (&["show", "--group", "x"], &["--group", "x"]),
        (&["vps", "--vtl", "16"], &["--vtl", "16"]),
        (&["show", "--watch", "0"], &["--watch", "0"]),
        (&["show", "--watch", "1e9"], &["--watch", "1e9"]),
        (&["ps", "--watch", "1", "--count", "0"], &["--count", "0"]),
        (&["ps", "--count", "3"], &["--count", "--watch"]),
        (&["frobnicate"], &["frobnicate"]),
        (&["show", "--stat", "Bad-Name"], &["--stat", "Bad-Name"]),
        (
            &["show", "--stat", ""],
            &["--stat", "not a KVM statistic name"],
        ),
        (&["ps", "--stat", "exits"], &["--stat"]),
        (&["vps", "--stat", "exits"], &["--stat"]),
    ];
    for (args, needles) in cases {
        let (rc, out, err) = vtlctl(args, &root);
        assert_eq!(rc, 2, "vtlctl {args:?}: {out}{err}");
        for n in *needles {
            assert!(
                err.contains(n),
                "vtlctl {args:?}: stderr lacks {n:?}: {err}"
            );
        }
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn comm_comes_from_the_recorded_tree() {
    let me = std::process::id();
    let vm = format!("{me}-4");
    // A tree recorded before comm was: no proc/, so no comm (not this host's /proc/<pid>).
    let old = demo_as_pid(me);
    let (_t, root) = tree(&old, keep);
    let (rc, out, err) = vtlctl(&["show", "--json"], &root);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["vms"][0]["vm"], vm.as_str());
    assert_eq!(v["vms"][0]["comm"], serde_json::Value::Null, "{out}");
    let (_, out, _) = vtlctl(&["ps"], &root);
    assert_eq!(
        out.lines().nth(1).and_then(|l| l.split_whitespace().nth(2)),
        Some("-"),
        "{out}"
    );
    // As scripts/guest/record-debugfs.sh records it now.
    let new = format!("{old}proc/{me}/comm: vmm-recorded\n");
    let (_t, root) = tree(&new, keep);
    let (rc, out, err) = vtlctl(&["ps", "--json"], &root);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["vms"][0]["comm"], "vmm-recorded", "{out}");
    assert_eq!(v["vms"].as_array().map(Vec::len), Some(1), "proc/ is no VM");
    let (_, out, _) = vtlctl(&["show", &vm, "--json"], &root);
    assert!(out.contains("\"comm\": \"vmm-recorded\""), "{out}");
    let (_, out, _) = vtlctl(&["ps"], &root);
    assert!(out.contains(" vmm-recorded "), "{out}");
}

/// The demo fixture as a v2 kernel shows it while vCPU 3 is not assigned yet.
fn with_unassigned_vcpu3(p: &str, c: &str) -> Option<String> {
    Some(match p {
        _ if p.ends_with("/vcpu3/apic_group") => "4294967295".into(),
        _ if p.ends_with("/vcpu3/apic_id") => "3".into(),
        _ if p.ends_with("/vcpu3/vtl") => "0".into(),
        _ if p.ends_with("/vcpu3/hv_vp_index") => "3".into(),
        _ => c.to_string(),
    })
}

#[test]
fn unassigned_vcpus_are_a_dash_and_null() {
    let (_t, root) = tree(DEMO, with_unassigned_vcpu3);
    let name = demo_vm_name();
    let (rc, out, err) = vtlctl(&["show", "--json"], &root);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["schema"], 1);
    assert_eq!(v["vms"][0]["vcpus"][3]["group"], serde_json::Value::Null);
    assert_eq!(v["vms"][0]["vcpus"][2]["group"], 1);
    let (_, out, _) = vtlctl(&["show"], &root);
    assert!(
        out.lines().any(|l| l.split_whitespace().eq([
            name.as_str(),
            "3",
            "3",
            "-",
            "3",
            "0",
            "-",
            "-",
            "-",
            "-"
        ])),
        "{out}"
    );
    let (_, out, _) = vtlctl(&["ps"], &root);
    assert!(out.contains(" 0,1,- "), "{out}");
    let (rc, out, _) = vtlctl(&["show", "--group", "none"], &root);
    assert_eq!(rc, 0);
    assert_eq!(
        out.lines().filter(|l| l.starts_with(&name)).count(),
        2,
        "{out}"
    );
    let (_, out, _) = vtlctl(&["vps"], &root);
    assert!(out.contains("vcpu3/g-"), "{out}");
}

#[test]
fn vps_shows_vtl_siblings_side_by_side() {
    let (_t, root) = tree(DEMO, keep);
    let name = demo_vm_name();
    let (rc, out, err) = vtlctl(&["vps", &name], &root);
    assert_eq!(rc, 0, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["VM", "VP", "APIC_ID", "VTL0", "VTL1"], "{out}");
    // A tree from before series v4: no run_state files.
    assert_eq!(
        lines[1],
        [name.as_str(), "0", "0", "vcpu0/g0/-", "vcpu2/g1/-"]
    );
    assert_eq!(
        lines[2],
        [name.as_str(), "1", "1", "vcpu1/g0/-", "vcpu3/g1/-"]
    );
    assert_eq!(
        lines[3],
        [format!("{name}:").as_str(), "apic_group_irq_dropped=0"]
    );
    let (rc, out, _) = vtlctl(&["vps", "--json"], &root);
    assert_eq!(rc, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["schema"], 1);
    assert_eq!(v["vps"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["vps"][1]["vp_index"], 1);
    assert_eq!(v["vps"][1]["vtls"]["1"][0]["vcpu_id"], 3);
    assert_eq!(v["vps"][1]["vtls"]["1"][0]["group"], 1);
    // --vtl picks the columns.
    let (_, out, _) = vtlctl(&["vps", "--vtl", "1"], &root);
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.ends_with("APIC_ID  VTL1")),
        "{out}"
    );
}

#[test]
fn show_filters() {
    let (_t, root) = tree(DEMO, keep);
    let name = demo_vm_name();
    let rows = |args: &[&str]| -> Vec<String> {
        let (rc, out, err) = vtlctl(args, &root);
        assert_eq!(rc, 0, "vtlctl {args:?}: {err}");
        out.lines()
            .filter(|l| l.split_whitespace().next() == Some(name.as_str()))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(rows(&["show", "--vtl", "1"]), ["2", "3"]);
    assert_eq!(rows(&["show", "--group", "0"]), ["0", "1"]);
    assert_eq!(
        rows(&["show", "--group", "0", "--group", "1", "--vtl", "1"]),
        ["2", "3"]
    );
    assert_eq!(rows(&["show", "--vm", &name, "--vtl", "0"]), ["0", "1"]);
    let (rc, out, _) = vtlctl(&["show", "--group", "5"], &root);
    assert_eq!((rc, out.as_str()), (0, "no vCPUs match the filter\n"));
    let (rc, _, err) = vtlctl(&["show", "--vm", "999999-1"], &root);
    assert_eq!(rc, 4);
    assert!(err.contains("999999-1"), "{err}");
    let (_, out, _) = vtlctl(&["show", "--json", "--vtl", "0"], &root);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["vms"][0]["vcpus"].as_array().map(Vec::len), Some(2));
}

#[test]
fn watch_counts_samples_and_shows_counter_deltas() {
    let (_t, root) = tree(DEMO, keep);
    let name = demo_vm_name();
    let counter = root.join(&name).join("apic_group_irq_dropped");
    let mut child = vtlctl_cmd(&root)
        .args(["show", &name, "--watch", "1", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut r = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    while !seen.contains(&format!("{name}: apic_group_irq_dropped=0\n")) {
        let mut l = String::new();
        assert_ne!(r.read_line(&mut l).expect("read"), 0, "ended early: {seen}");
        seen += &l;
    }
    // Between the first and the second sample, 7 interrupts are dropped.
    fs::write(&counter, "7\n").expect("write counter");
    r.read_to_string(&mut seen).expect("read");
    assert!(child.wait().expect("wait").success(), "{seen}");
    assert_eq!(seen.matches("sample ").count(), 2, "{seen}");
    assert!(seen.contains("sample 2 of 2"), "{seen}");
    assert!(
        seen.contains(&format!("{name}: apic_group_irq_dropped=7 (+7)")),
        "{seen}"
    );

    // JSON: one compact document per sample.
    let (rc, out, err) = vtlctl(&["vps", "--json", "--watch", "0.1", "--count", "3"], &root);
    assert_eq!(rc, 0, "{err}");
    let docs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    assert_eq!(docs.len(), 3);
    assert!(docs
        .iter()
        .all(|d| d["schema"] == 1 && d["vps"][0]["vm"] == name.as_str()));
}

#[test]
fn watch_ends_on_ctrl_c_and_when_the_vm_goes() {
    let (_t, root) = tree(DEMO, keep);
    let name = demo_vm_name();
    for (args, remove_vm, want) in [
        (vec!["ps", "--watch", "0.2"], false, 0),
        (vec!["show", name.as_str(), "--watch", "0.2"], true, 4),
    ] {
        let mut child = vtlctl_cmd(&root)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut r = BufReader::new(child.stdout.take().expect("stdout"));
        let mut l = String::new();
        r.read_line(&mut l).expect("read");
        assert!(l.contains("sample 1"), "{l}");
        if remove_vm {
            fs::remove_dir_all(root.join(&name)).expect("rm");
        } else {
            let pid = libc::pid_t::try_from(child.id()).expect("pid");
            // SAFETY: plain kill(2) on our own child.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        }
        let start = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{args:?} did not end"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = stderr_of(&mut child);
        assert_eq!(st.code(), Some(want), "{args:?}: {err}");
        if remove_vm {
            assert!(err.contains(&name), "{err}");
        }
    }
}

#[test]
fn debugfs_option_is_not_a_live_debugfs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(!vtlctl::is_live_debugfs(tmp.path()));
    assert_eq!(vtlctl::comm_root(tmp.path()), tmp.path().join("proc"));
    assert_eq!(
        vtlctl::comm_root(std::path::Path::new(vtlctl::DEFAULT_ROOT)),
        std::path::Path::new("/proc")
    );
}

/// Everything a finished child wrote to its piped stderr.
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    err
}

/// The VM of the v4 fixture.
fn v4_name() -> String {
    common::DEMO_V4
        .lines()
        .next()
        .and_then(|l| l.split('/').next())
        .expect("fixture has a VM")
        .to_string()
}

/// As on a host where the VMM parked VTL1 of VP 0 armed for its VTL0, which runs, and VTL1
/// made 7 VTL exits.
fn v4_live(p: &str, c: &str) -> Option<String> {
    Some(match p {
        _ if p.ends_with("/vcpu0/run_state") => "running".into(),
        _ if p.ends_with("/vcpu2/run_state") => "parked".into(),
        _ if p.ends_with("/vcpu2/event_notify_target") => "0".into(),
        _ if p.ends_with("/vcpu2/hv_vtl_exits") => "7".into(),
        _ => c.to_string(),
    })
}

#[test]
fn v4_run_state_and_debugfs_hv_vtl_exits() {
    let name = v4_name();
    // As recorded: the demo runs no vCPU (stopped), none armed; hv_vtl_exits comes from each
    // vCPU's debugfs file, so a recorded tree has it; vtl_prot_faults (series v5) it has not:
    // `-`, and the one note about stats fds.
    let (_t, root) = tree(common::DEMO_V4, keep);
    let (rc, out, err) = vtlctl(&["show"], &root);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(without_stats_note(&err).is_empty(), "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "VM",
            "VCPU",
            "VP",
            "GROUP",
            "APIC_ID",
            "VTL",
            "STATE",
            "NOTIFY",
            "HV_VTL_EXITS",
            "VTL_PROT_FAULTS"
        ]
    );
    assert_eq!(
        rows[1],
        [
            name.as_str(),
            "0",
            "0",
            "0",
            "0",
            "0",
            "stopped",
            "-",
            "0",
            "-"
        ]
    );
    // No vtl_prot_ranges file before series v5: `-` in ps, left out of the VM's line, null.
    assert_eq!(
        rows[5],
        [
            format!("{name}:"),
            "apic_group_irq_dropped=0".into(),
            "hv_vtl_exits=0".into()
        ],
        "{out}"
    );
    let (_, out, _) = vtlctl(&["ps"], &root);
    assert_eq!(
        out.lines().nth(1).and_then(|l| l.split_whitespace().nth(6)),
        Some("-"),
        "{out}"
    );
    let (_, out, _) = vtlctl(&["ps", "--json"], &root);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["vms"][0]["vtl_prot_ranges"], serde_json::Value::Null);
    // A statistic debugfs does not have still needs the VMM's stats fd: noted, `-`.
    let (rc, out, err) = vtlctl(&["show", "--stat", "io_exits"], &root);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.ends_with("  0             -                -")),
        "{out}"
    );
    assert!(err.contains("not a live debugfs"), "{err}");

    let (_t, root) = tree(common::DEMO_V4, v4_live);
    let (_, out, _) = vtlctl(&["show"], &root);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[1][6..], ["running", "-", "0", "-"], "{out}");
    assert_eq!(rows[3][6..], ["parked", "0", "7", "-"], "{out}");
    let (_, out, _) = vtlctl(&["vps"], &root);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[1],
        [
            name.as_str(),
            "0",
            "0",
            "vcpu0/g0/running",
            "vcpu2/g1/parked"
        ]
    );
    assert_eq!(
        rows[2],
        [
            name.as_str(),
            "1",
            "1",
            "vcpu1/g0/stopped",
            "vcpu3/g1/stopped"
        ]
    );
    let (_, out, _) = vtlctl(&["show", "--json"], &root);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let c = &v["vms"][0]["vcpus"];
    assert_eq!(c[2]["run_state"], "parked");
    assert_eq!(c[2]["event_notify_target"], 0);
    assert_eq!(c[2]["stats"]["hv_vtl_exits"], 7);
    assert_eq!(c[1]["event_notify_target"], serde_json::Value::Null);
    let (_, out, _) = vtlctl(&["vps", "--json"], &root);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["vps"][0]["vtls"]["1"][0]["run_state"], "parked");

    // Something KVM never writes is a malformed file, named.
    let (_t, root) = tree(common::DEMO_V4, |p, c| {
        Some(if p.ends_with("/vcpu1/run_state") {
            "sleeping".into()
        } else {
            c.to_string()
        })
    });
    let (rc, _, err) = vtlctl(&["show"], &root);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains("vcpu1/run_state") && err.contains("sleeping"),
        "{err}"
    );
}

/// As on a host where the VMM protected 3 ranges of VTL 0 and 1 of VTL 1, and vCPU 0 (VTL 0)
/// took 5 protection faults, vCPU 2 (VTL 1) one.
fn v5_protected(p: &str, c: &str) -> Option<String> {
    Some(match p {
        _ if p.ends_with("/vtl_prot_ranges") => "3 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0".into(),
        _ if p.ends_with("/vcpu0/vtl_prot_faults") => "5".into(),
        _ if p.ends_with("/vcpu2/vtl_prot_faults") => "1".into(),
        _ if p.ends_with("-4/vtl_prot_faults") => "6".into(),
        _ => c.to_string(),
    })
}

#[test]
fn v5_protection_faults_and_ranges() {
    let name = common::vm_name(common::DEMO_V5);
    // As recorded: nothing protected, no faults; both from debugfs, so no note at all.
    let (_t, root) = tree(common::DEMO_V5, keep);
    let (rc, out, err) = vtlctl(&["show"], &root);
    assert_eq!((rc, err.as_str()), (0, ""), "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][8..], ["HV_VTL_EXITS", "VTL_PROT_FAULTS"], "{out}");
    assert_eq!(rows[1][8..], ["0", "0"], "{out}");
    assert_eq!(
        rows[5],
        [
            format!("{name}:").as_str(),
            "apic_group_irq_dropped=0",
            "hv_vtl_exits=0",
            "vtl_prot_faults=0",
            "vtl_prot_ranges=none"
        ],
        "{out}"
    );
    let (_, out, _) = vtlctl(&["ps"], &root);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][6..], ["PROT_RANGES", "COUNTERS"], "{out}");
    assert_eq!(rows[1][6], "none", "{out}");

    let (_t, root) = tree(common::DEMO_V5, v5_protected);
    let (rc, out, err) = vtlctl(&["show"], &root);
    assert_eq!((rc, err.as_str()), (0, ""), "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let faults: Vec<&str> = rows[1..5].iter().map(|r| r[9]).collect();
    assert_eq!(faults, ["5", "0", "1", "0"], "{out}");
    assert!(
        out.ends_with("vtl_prot_faults=6 vtl_prot_ranges=0:3,1:1\n"),
        "{out}"
    );
    let (_, out, _) = vtlctl(&["ps"], &root);
    assert_eq!(
        out.lines().nth(1).and_then(|l| l.split_whitespace().nth(6)),
        Some("0:3,1:1"),
        "{out}"
    );
    let (_, out, _) = vtlctl(&["vps"], &root);
    assert!(out.ends_with("vtl_prot_ranges=0:3,1:1\n"), "{out}");
    let (_, out, _) = vtlctl(&["show", "--json"], &root);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["vms"][0]["vtl_prot_ranges"][0], 3);
    assert_eq!(v["vms"][0]["vtl_prot_ranges"][1], 1);
    assert_eq!(v["vms"][0]["vtl_prot_ranges"][15], 0);
    assert_eq!(v["vms"][0]["counters"]["vtl_prot_faults"], 6);
    assert_eq!(v["vms"][0]["vcpus"][0]["stats"]["vtl_prot_faults"], 5);
    // --vtl filters vCPUs, not the VM's ranges.
    let (_, out, _) = vtlctl(&["show", "--vtl", "1"], &root);
    assert!(out.ends_with("vtl_prot_ranges=0:3,1:1\n"), "{out}");
}

#[test]
fn v5_malformed_protection_files_are_named() {
    let cases: &[(&str, &str, &[&str])] = &[
        // A count that is not a number: named alone.
        (
            "/vtl_prot_ranges",
            "3 1 x 0 0 0 0 0 0 0 0 0 0 0 0 0",
            &["vtl_prot_ranges", "\"x\"", "count of protected ranges"],
        ),
        (
            "/vtl_prot_ranges",
            "3 1 0 0 0 0 0 0 0 0 0 0 0 0 0 -1",
            &["vtl_prot_ranges", "\"-1\""],
        ),
        // Too few or too many: the content, and what it should be.
        (
            "/vtl_prot_ranges",
            "3 1",
            &["vtl_prot_ranges", "\"3 1\"", "16 counts"],
        ),
        ("/vtl_prot_ranges", "", &["vtl_prot_ranges", "16 counts"]),
        (
            "/vtl_prot_ranges",
            "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0",
            &["16 counts"],
        ),
        (
            "/vcpu1/vtl_prot_faults",
            "many",
            &["vcpu1/vtl_prot_faults", "\"many\"", "decimal counter"],
        ),
    ];
    for (file, content, want) in cases {
        let (_t, root) = tree(common::DEMO_V5, |p, c| {
            Some(if p.ends_with(file) {
                content.to_string()
            } else {
                c.to_string()
            })
        });
        for args in [&["show"][..], &["ps"], &["vps", "--json"]] {
            let (rc, out, err) = vtlctl(args, &root);
            assert_eq!(rc, 1, "{file} {content:?} {args:?}: {out}{err}");
            assert!(
                err.starts_with("vtlctl: error: malformed ")
                    && want.iter().all(|w| err.contains(w)),
                "{file} {content:?} {args:?}: {err}"
            );
        }
    }
}
