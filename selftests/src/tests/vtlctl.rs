// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! vtlctl against the live kernel: a demo VM read back through debugfs, and the error cases
//! a user can hit on a real system (no /dev/kvm, no permission, debugfs not mounted, a VM that
//! went away).

use std::os::fd::AsRawFd;
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
        name: "vtlctl_vcpu_stats",
        about: "`vtlctl show` reads per-vCPU hv_vtl_exits from another process: N forwarded VtlCalls, `-` and why for a vCPU without a stats fd",
        run: vtlctl_vcpu_stats,
    },
    Test {
        name: "vtlctl_vtl_protections",
        about: "`vtlctl show/ps` report a VM's protected ranges per VTL (3 of VTL 0, 1 of VTL 2) and a vCPU's 4 protection faults, as the kernel counted them",
        run: vtlctl_vtl_protections,
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

/// `KVM_CAP_HYPERV_VSM` (uapi/include/linux/kvm.h; not bindgen'd on this branch).
const KVM_CAP_HYPERV_VSM: u32 = 240;
/// Hyper-V's guest OS ID MSR: hypercalls work once the guest wrote it non-zero.
const HV_X64_MSR_GUEST_OS_ID: u32 = 0x4000_0000;
/// HvCallVtlCall, which KVM forwards to userspace with KVM_CAP_HYPERV_VSM.
const HVCALL_VTL_CALL: u64 = 0x11;
/// The guest reports "done" with an OUT to this port.
const DONE_PORT: u16 = 0x10;
/// Where the guest code goes (guest-physical = linear: flat segments, no paging).
const CODE_GPA: u64 = 0x1000;
const MEM_SIZE: usize = 0x10000;

/// 32-bit protected-mode guest code (Hyper-V's 32-bit hypercall convention: EDX:EAX input,
/// EBX:ECX input GPA, EDI:ESI output GPA): write HV_X64_MSR_GUEST_OS_ID = 1, then EBP times
/// VtlCall, then OUT to DONE_PORT.
fn vtl_call_code(intel: bool) -> Vec<u8> {
    let mut c = vec![
        0xb9, // mov ecx, HV_X64_MSR_GUEST_OS_ID
    ];
    c.extend_from_slice(&HV_X64_MSR_GUEST_OS_ID.to_le_bytes());
    c.extend_from_slice(&[
        0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0x31, 0xd2, // xor edx, edx
        0x0f, 0x30, // wrmsr
    ]);
    let top = c.len();
    c.extend_from_slice(&[0xb8, HVCALL_VTL_CALL as u8, 0, 0, 0]); // mov eax, HvCallVtlCall
    c.extend_from_slice(&[0x31, 0xd2, 0x31, 0xc9, 0x31, 0xdb]); // xor edx/ecx/ebx
    c.extend_from_slice(if intel {
        &[0x0f, 0x01, 0xc1] // vmcall
    } else {
        &[0x0f, 0x01, 0xd9] // vmmcall
    });
    c.push(0x4d); // dec ebp
    let back = top as i64 - (c.len() as i64 + 2);
    c.extend_from_slice(&[0x75, back as i8 as u8]); // jnz top
    c.extend_from_slice(&[0xe6, DONE_PORT as u8, 0xf4]); // out DONE_PORT, al; hlt
    c
}

fn host_is_intel() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = Vec::new();
    for x in [r.ebx, r.edx, r.ecx] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v == b"GenuineIntel"
}

/// Anonymous guest memory, unmapped on drop.
struct Mem(*mut libc::c_void);

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: self.0 is a mapping of MEM_SIZE bytes this struct owns.
        unsafe { libc::munmap(self.0, MEM_SIZE) };
    }
}

fn flat_segment(selector: u16, type_: u8) -> kvm_bindings::kvm_segment {
    kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

fn vtlctl_vcpu_stats() -> TestResult {
    require!(
        is_root(),
        "vtlctl reads other processes' KVM fds as root only"
    );
    const CALLS: u64 = 5;
    let kvm = Kvm::new().map_err(|e| anyhow!("open /dev/kvm: {e}"))?;
    require!(
        kvm.check_extension_raw(u64::from(KVM_CAP_HYPERV_VSM)) > 0,
        "KVM_CAP_HYPERV_VSM not supported"
    );
    // KVM names the VM's debugfs directory after the creating thread.
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    let name = format!("{tid}-{}", vm.as_raw_fd());
    vm.enable_cap(&kvm_bindings::kvm_enable_cap {
        cap: KVM_CAP_HYPERV_VSM,
        ..Default::default()
    })
    .context("enabling KVM_CAP_HYPERV_VSM")?;

    // SAFETY: a fresh anonymous private mapping; nothing else uses its address range.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    check!(host != libc::MAP_FAILED, "mmap guest memory");
    let mem = Mem(host);
    let code = vtl_call_code(host_is_intel());
    // SAFETY: the mapping is MEM_SIZE bytes long and CODE_GPA + code.len() fits in it.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            mem.0.cast::<u8>().add(CODE_GPA as usize),
            code.len(),
        )
    };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.0 as u64,
        flags: 0,
    };
    // SAFETY: the region is backed by `mem`, which outlives the VM (dropped after it).
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;

    let mut vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU 0")?;
    // vCPU 1 never runs, and nobody keeps a stats fd of it.
    let _idle = vm.create_vcpu(1).context("KVM_CREATE_VCPU 1")?;
    let mut cpuid = kvm_bindings::CpuId::new(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| anyhow!("CpuId: {e:?}"))?;
    let nr = libc::c_ulong::from(vtlkit_uapi::raw::VTLKIT_KVM_GET_SUPPORTED_HV_CPUID);
    // SAFETY: KVM_GET_SUPPORTED_HV_CPUID fills at most `nent` entries of the live kvm_cpuid2
    // it is given and updates `nent`.
    let r = unsafe {
        vmm_sys_util::ioctl::ioctl_with_mut_ptr(&vcpu, nr, cpuid.as_mut_fam_struct_ptr())
    };
    check!(
        r == 0,
        "KVM_GET_SUPPORTED_HV_CPUID: {}",
        std::io::Error::last_os_error()
    );
    vcpu.set_cpuid2(&cpuid)
        .context("KVM_SET_CPUID2 (Hyper-V leaves)")?;
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    sregs.cs = flat_segment(0x08, 0xb);
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *s = flat_segment(0x10, 0x3);
    }
    sregs.cr0 |= 1; // PE
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
    vcpu.set_regs(&kvm_bindings::kvm_regs {
        rip: CODE_GPA,
        rflags: 2,
        rbp: CALLS,
        ..Default::default()
    })
    .context("KVM_SET_REGS")?;
    // The VMM (this process) keeps vCPU 0's stats fd open: that is what vtlctl reads.
    let own = crate::stats::Stats::open(&vcpu).context("KVM_GET_STATS_FD on vCPU 0")?;

    let mut forwarded = 0u64;
    loop {
        match vcpu.run().context("KVM_RUN")? {
            kvm_ioctls::VcpuExit::Hyperv => {
                let run = vcpu.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_HYPERV, so `hyperv` is the live union member;
                // for type KVM_EXIT_HYPERV_HCALL so is `u.hcall`.
                let hv = unsafe { &mut run.__bindgen_anon_1.hyperv };
                check_eq!(
                    hv.type_,
                    kvm_bindings::KVM_EXIT_HYPERV_HCALL,
                    "Hyper-V exit type"
                );
                // SAFETY: see above.
                let hcall = unsafe { &mut hv.u.hcall };
                check_eq!(hcall.input & 0xffff, HVCALL_VTL_CALL, "forwarded hypercall");
                hcall.result = 0; // HV_STATUS_SUCCESS
                forwarded += 1;
                check!(forwarded <= CALLS, "more than {CALLS} hypercalls forwarded");
            }
            kvm_ioctls::VcpuExit::IoOut(DONE_PORT, _) => break,
            e => return Err(anyhow!("unexpected exit {e:?} after {forwarded} VtlCalls")),
        }
    }
    check_eq!(forwarded, CALLS, "VtlCalls forwarded to userspace");
    check_eq!(
        own.get("hv_vtl_exits")?,
        CALLS,
        "hv_vtl_exits seen by the VMM itself"
    );

    // vtlctl, another process, reads the same value through the VMM's stats fd.
    let out = vtlctl(&["show", "--json", &name, "--stat", "exits"])?;
    let err = text(&out.stderr);
    let doc = json(&out, "vtlctl show --json --stat exits")?;
    let vcpus = &doc["vms"][0]["vcpus"];
    check_eq!(
        vcpus[0]["stats"]["hv_vtl_exits"],
        CALLS,
        "vCPU 0 hv_vtl_exits: {doc}"
    );
    let exits = vcpus[0]["stats"]["exits"].as_u64().unwrap_or(0);
    check!(exits >= CALLS, "vCPU 0 exits {exits} < {CALLS}: {doc}");
    // Series v4 shows hv_vtl_exits in each vCPU's debugfs directory, which vtlctl prefers:
    // then vCPU 1 has it (0) although the VMM holds no stats fd of it; `exits` still needs one.
    let in_debugfs =
        std::path::Path::new(&format!("/sys/kernel/debug/kvm/{name}/vcpu1/hv_vtl_exits")).exists();
    let want1 = if in_debugfs {
        Value::from(0)
    } else {
        Value::Null
    };
    check_eq!(vcpus[1]["stats"]["hv_vtl_exits"], want1, "vCPU 1: {doc}");
    check_eq!(vcpus[1]["stats"]["exits"], Value::Null, "vCPU 1: {doc}");
    // Why vCPU 1 has none, said once: KVM refuses KVM_GET_STATS_FD from another process.
    check!(
        err.lines().filter(|l| l.contains("vCPU 1:")).count() == 1
            && err.contains("holds no stats fd")
            && err.contains("os error 5"),
        "stderr does not say why vCPU 1 has no statistics: {err}"
    );
    check_eq!(
        doc["vms"][0]["counters"]["hv_vtl_exits"],
        CALLS,
        "VM-wide (debugfs) hv_vtl_exits"
    );
    // The table: a column, `-` where unreadable.
    let out = vtlctl(&["show", &name])?;
    let t = text(&out.stdout);
    let rows: Vec<Vec<&str>> = t
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| r.first() == Some(&name.as_str()))
        .collect();
    let col = column(&t, "HV_VTL_EXITS")?;
    let five = CALLS.to_string();
    check_eq!(rows.len(), 2, "rows: {t}");
    check_eq!(
        rows[0].get(col).copied(),
        Some(five.as_str()),
        "vCPU 0 row: {t}"
    );
    let want1 = if in_debugfs { "0" } else { "-" };
    check_eq!(rows[1].get(col).copied(), Some(want1), "vCPU 1 row: {t}");
    // A name KVM does not have is bad usage, named.
    let out = vtlctl(&["show", &name, "--stat", "no_such_stat"])?;
    expect_fail(&out, 2, "no_such_stat", "show --stat no_such_stat")?;
    drop(own);
    Ok(Outcome::Pass)
}

/// The index of the column `name` in the header of table `t`.
fn column(t: &str, name: &str) -> anyhow::Result<usize> {
    t.lines()
        .next()
        .and_then(|h| h.split_whitespace().position(|c| c == name))
        .ok_or_else(|| anyhow!("no {name} column: {t}"))
}

/// A VM with VTL protections (series v5): N ranges set, M faults taken, both as vtlctl shows
/// them from debugfs, against what the kernel reports itself.
fn vtlctl_vtl_protections() -> TestResult {
    use crate::tests::protect::common::{
        add_vcpu, expect_fault, insns, new_vm, op, paging, prot_faults, protect, resume, vcpu_mut,
        Expected, DATA_PAGE,
    };
    use crate::vm::VmOptions;
    use vtlkit_uapi::protections::{Access, FaultAccess};

    require!(is_root(), "debugfs is readable by root only");
    let kvm = Kvm::new().map_err(|e| anyhow!("open /dev/kvm: {e}"))?;
    require!(
        vtlkit_uapi::protections::vtl_protections_supported(&kvm),
        "KVM_CAP_VTL_PROTECTIONS not supported (series v5)"
    );
    const FAULTS: u64 = 4;
    let paging = paging()?;
    // SAFETY: gettid has no preconditions. KVM names the VM's debugfs directory after the
    // creating thread (this one).
    let tid = unsafe { libc::gettid() };
    let mut vm = new_vm(VmOptions::default(), 7)?;
    let name = format!("{tid}-{}", vm.fd.as_raw_fd());
    let v = add_vcpu(&mut vm, 0)?;
    // VTL 0: the data page read-only, and two ranges outside guest memory; VTL 2: one range.
    protect(&vm, DATA_PAGE, 1, 0, Access::READ)?;
    protect(&vm, 1 << 32, 16, 0, Access::NONE)?;
    protect(&vm, 2 << 32, 512, 0, Access::READ_EXEC)?;
    protect(&vm, 3 << 32, 1, 2, Access::READ_WRITE)?;
    // The write faults, and faults again each time the vCPU is run.
    let store = insns().inc;
    let want = Expected {
        access: FaultAccess::Write,
        gpa: DATA_PAGE,
        gva: DATA_PAGE,
        rip: crate::tests::protect::common::code_rip(store),
    };
    expect_fault(
        op(&mut vm, v, crate::guest::memops::INC, DATA_PAGE)?,
        want,
        paging,
        "INC of the read-only page",
    )?;
    for i in 2..=FAULTS {
        expect_fault(resume(&mut vm, v)?, want, paging, &format!("fault {i}"))?;
    }
    let kernel_faults = prot_faults(vcpu_mut(&mut vm, v)?)?;
    check_eq!(
        kernel_faults,
        FAULTS,
        "the vCPU's vtl_prot_faults (binary stats)"
    );
    let ranges = std::fs::read_to_string(format!("{DEBUGFS}/kvm/{name}/vtl_prot_ranges"))
        .with_context(|| format!("reading the debugfs vtl_prot_ranges of VM {name}"))?;
    check_eq!(
        ranges.trim(),
        "3 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0",
        "debugfs vtl_prot_ranges"
    );

    let out = vtlctl(&["show", "--json", &name])?;
    let doc = json(&out, "vtlctl show --json")?;
    let vmdoc = &doc["vms"][0];
    check_eq!(
        vmdoc["vcpus"][0]["stats"]["vtl_prot_faults"],
        kernel_faults,
        "vCPU 0's vtl_prot_faults in vtlctl's JSON: {doc}"
    );
    check_eq!(
        vmdoc["counters"]["vtl_prot_faults"],
        kernel_faults,
        "the VM's vtl_prot_faults: {doc}"
    );
    let per_vtl: Vec<u64> = vmdoc["vtl_prot_ranges"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    check_eq!(
        per_vtl,
        [vec![3, 0, 1], vec![0; 13]].concat(),
        "vtl_prot_ranges in vtlctl's JSON: {doc}"
    );
    let out = vtlctl(&["show", &name])?;
    let t = text(&out.stdout);
    check!(
        out.status.success(),
        "vtlctl show {name}: {}",
        text(&out.stderr)
    );
    let col = column(&t, "VTL_PROT_FAULTS")?;
    let four = FAULTS.to_string();
    check_eq!(
        t.lines().nth(1).and_then(|l| l.split_whitespace().nth(col)),
        Some(four.as_str()),
        "vCPU 0's VTL_PROT_FAULTS: {t}"
    );
    check!(
        t.lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("{name}: "))
                && l.ends_with(" vtl_prot_ranges=0:3,2:1")
                && l.contains(&format!("vtl_prot_faults={FAULTS}"))),
        "the VM's line: {t}"
    );
    let out = vtlctl(&["ps"])?;
    let t = text(&out.stdout);
    let col = column(&t, "PROT_RANGES")?;
    check_eq!(
        t.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(col)),
        Some("0:3,2:1"),
        "ps: {t}"
    );
    Ok(Outcome::Pass)
}
