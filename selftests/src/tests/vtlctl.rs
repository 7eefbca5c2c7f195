// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! vtlctl against the live kernel: a demo VM read back through debugfs, and the error cases
//! a user can hit on a real system (no /dev/kvm, no permission, debugfs not mounted, a VM that
//! went away).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use kvm_ioctls::Kvm;
use serde_json::Value;

use crate::harness::{Outcome, Test, TestResult};
use crate::{check, check_eq, require};

pub const TESTS: &[Test] = &[
    Test {
        name: "vtlctl_demo_show",
        about: "`vtlctl demo` VTL siblings read back by `vtlctl show/ps --json`: every field as set up",
        run: vtlctl_demo_show,
    },
    Test {
        name: "vtlctl_caps",
        about: "`vtlctl caps --json` reports the series and the kernel's group count",
        run: vtlctl_caps,
    },
    Test {
        name: "vtlctl_errors",
        about: "vtlctl's messages and exit codes: no /dev/kvm, not root, debugfs unmounted, bad arguments",
        run: vtlctl_errors,
    },
];

const DEBUGFS: &str = "/sys/kernel/debug";

/// The vtlctl next to this binary (both are in the guest's /bin), else the one in PATH.
fn vtlctl_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|p| p.with_file_name("vtlctl"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("vtlctl"))
}

fn vtlctl(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(vtlctl_path())
        .args(args)
        .output()
        .with_context(|| format!("running vtlctl {}", args.join(" ")))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Kills the demo on every path out of a test.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_demo(vps: u32, vtls: u32, ready: &str) -> anyhow::Result<(Demo, String)> {
    let _ = std::fs::remove_file(ready);
    let child = Command::new(vtlctl_path())
        .args([
            "demo",
            "--vps",
            &vps.to_string(),
            "--vtls",
            &vtls.to_string(),
            "--ready-file",
            ready,
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("spawning vtlctl demo")?;
    let mut demo = Demo(child);
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(ready) {
            if !s.trim().is_empty() {
                return Ok((demo, s.trim().to_string()));
            }
        }
        if let Some(st) = demo.0.try_wait()? {
            anyhow::bail!("vtlctl demo exited with {st} before it was ready");
        }
        if start.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("vtlctl demo not ready after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(out: &Output, what: &str) -> anyhow::Result<Value> {
    check!(
        out.status.success(),
        "{what} failed with {}: {}",
        out.status,
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{what}: not JSON: {}", text(&out.stdout)))
}

fn vtlctl_demo_show() -> TestResult {
    let (vps, vtls) = (3u32, 2u32);
    let (demo, vm) = start_demo(vps, vtls, "/tmp/vtlctl-demo.ready")?;
    let pid = demo.0.id();
    let pid_str = pid.to_string();
    check_eq!(
        vm.split('-').next(),
        Some(pid_str.as_str()),
        "VM name starts with the demo's pid"
    );

    let doc = json(&vtlctl(&["show", "--json", &vm])?, "vtlctl show --json")?;
    check_eq!(doc["schema"], 1, "schema");
    let v = &doc["vms"][0];
    check_eq!(v["vm"], vm.as_str(), "vm");
    check_eq!(v["pid"], pid, "pid");
    check_eq!(v["comm"], "vtlctl", "comm");
    check_eq!(
        v["counters"]["apic_group_irq_dropped"],
        0,
        "apic_group_irq_dropped"
    );
    let vcpus = v["vcpus"]
        .as_array()
        .ok_or_else(|| anyhow!("no vcpus array: {v}"))?;
    check_eq!(vcpus.len(), (vps * vtls) as usize, "vCPU count");
    for vtl in 0..vtls {
        for vp in 0..vps {
            let id = vtl * vps + vp;
            let c = &vcpus[id as usize];
            check_eq!(c["vcpu_id"], id, "vcpu_id of VP {vp} VTL {vtl}");
            check_eq!(c["group"], vtl, "group of vCPU {id}");
            check_eq!(c["apic_id"], vp, "apic_id of vCPU {id}");
            check_eq!(c["vtl"], vtl, "vtl of vCPU {id}");
            check_eq!(c["vp_index"], vp, "vp_index of vCPU {id}");
        }
    }

    // The human table has one line per vCPU, and ps lists the VM with its groups and VTLs.
    let show = vtlctl(&["show", &vm])?;
    check!(show.status.success(), "vtlctl show: {}", text(&show.stderr));
    let lines = text(&show.stdout);
    check_eq!(
        lines
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(vm.as_str()))
            .count(),
        (vps * vtls) as usize,
        "table rows for {vm} in:\n{lines}"
    );
    let ps = json(&vtlctl(&["ps", "--json"])?, "vtlctl ps --json")?;
    let listed = ps["vms"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["vm"] == vm.as_str()));
    check!(listed, "vtlctl ps --json does not list {vm}: {ps}");

    // Once the VMM is gone, so is the VM: exit 4 naming it.
    drop(demo);
    let gone = vtlctl(&["show", &vm])?;
    check_eq!(gone.status.code(), Some(4), "vtlctl show of an exited VM");
    check!(
        text(&gone.stderr).contains(&vm),
        "message does not name {vm}: {}",
        text(&gone.stderr)
    );
    Ok(Outcome::Pass)
}

fn vtlctl_caps() -> TestResult {
    let kvm = Kvm::new().map_err(|e| anyhow!("open /dev/kvm: {e}"))?;
    let doc = json(&vtlctl(&["caps", "--json"])?, "vtlctl caps --json")?;
    check_eq!(doc["series_present"], true, "series_present");
    check_eq!(
        doc["apic_groups"],
        vtlkit_uapi::apic_groups_supported(&kvm),
        "apic_groups vs KVM_CHECK_EXTENSION"
    );
    check_eq!(doc["max_vcpus"], kvm.get_max_vcpus(), "max_vcpus");
    Ok(Outcome::Pass)
}

fn expect_fail(out: &Output, code: i32, needle: &str, what: &str) -> anyhow::Result<()> {
    let err = text(&out.stderr);
    check_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit code (stderr: {err})"
    );
    check!(
        err.contains(needle),
        "{what}: stderr lacks {needle:?}: {err}"
    );
    Ok(())
}

fn vtlctl_errors() -> TestResult {
    require!(is_root(), "needs root to unmount debugfs and move /dev/kvm");
    // Bad arguments are bad usage (exit 2), name the bad value, and create nothing.
    let out = vtlctl(&["demo", "--vtls", "17"])?;
    expect_fail(&out, 2, "'17' for '--vtls", "demo --vtls 17")?;
    let out = vtlctl(&["demo", "--vps", "0"])?;
    expect_fail(&out, 2, "'0' for '--vps", "demo --vps 0")?;
    let out = vtlctl(&["show", "nonsense"])?;
    expect_fail(&out, 4, "nonsense", "show nonsense")?;

    // Not root: /dev/kvm and debugfs are root-only.
    // (busybox su: std's Command::uid() fails with ENOSYS in this static binary.)
    let nobody = |args: &[&str]| -> anyhow::Result<Output> {
        let cmd = format!("{} {}", vtlctl_path().display(), args.join(" "));
        Command::new("su")
            .args(["-s", "/bin/sh", "nobody", "-c", &cmd])
            .output()
            .context("running vtlctl as nobody (su)")
    };
    expect_fail(
        &nobody(&["caps"])?,
        1,
        "permission denied",
        "caps as nobody",
    )?;
    expect_fail(&nobody(&["ps"])?, 1, "run vtlctl as root", "ps as nobody")?;

    // No /dev/kvm.
    std::fs::rename("/dev/kvm", "/dev/kvm.vtlctl-test").context("hiding /dev/kvm")?;
    let out = vtlctl(&["caps"]);
    std::fs::rename("/dev/kvm.vtlctl-test", "/dev/kvm").context("restoring /dev/kvm")?;
    expect_fail(&out?, 1, "no /dev/kvm", "caps without /dev/kvm")?;

    // debugfs not mounted.
    let umount = Command::new("umount")
        .arg(DEBUGFS)
        .status()
        .context("umount debugfs")?;
    check!(umount.success(), "umount {DEBUGFS} failed");
    let out = vtlctl(&["ps"]);
    let mount = Command::new("mount")
        .args(["-t", "debugfs", "debugfs", DEBUGFS])
        .status()
        .context("remount debugfs")?;
    check!(mount.success(), "remounting {DEBUGFS} failed");
    expect_fail(&out?, 1, "debugfs is not mounted", "ps without debugfs")?;
    Ok(Outcome::Pass)
}

/// Whether we run as root (effective UID 0, from /proc/self/status).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
