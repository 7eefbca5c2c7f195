// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! vtlctl: inspect the vtlkit KVM series on a running kernel.
//!
//! Exit status: 0 success; 1 error (message on stderr); 2 bad usage; 3 the kernel does not
//! carry the series; 4 the named VM does not exist (or vanished).

use std::fs;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Cap, Kvm};
use serde::Serialize;
use vtlctl::render::{self, VmsDoc, JSON_SCHEMA};
use vtlctl::ScanError;
use vtlkit_uapi::{ApicGroup, VcpuApicGroupExt};

const EXIT_NO_SERIES: u8 = 3;
const EXIT_NO_VM: u8 = 4;
/// Hyper-V's VP index MSR; host writes set the VP index KVM uses for Hyper-V IPIs.
const HV_X64_MSR_VP_INDEX: u32 = 0x4000_0002;

#[derive(Parser)]
#[command(
    name = "vtlctl",
    version,
    about = "Inspect VTL / APIC-group state of KVM VMs"
)]
struct Cli {
    /// Print JSON (schema documented in README.md) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// KVM's debugfs directory.
    #[arg(long, global = true, default_value = "/sys/kernel/debug/kvm")]
    debugfs: PathBuf,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Does this kernel carry the series? Which capabilities and limits does it report?
    Caps,
    /// List every VM on the host: vCPUs, groups, VTLs, counters.
    Ps,
    /// Show the vCPUs of every VM (or of the named ones: `<pid>-<fd>` as `ps` prints).
    Show {
        /// VMs to show.
        vms: Vec<String>,
    },
    /// Build a VM with VTL siblings and keep it alive for inspection.
    ///
    /// vCPU `vtl * vps + vp` is VP `vp` at VTL `vtl`: APIC group `vtl`, APIC ID `vp`,
    /// Hyper-V VP index `vp`.
    Demo {
        /// Virtual processors (1..=64).
        #[arg(long, default_value_t = 2)]
        vps: u32,
        /// VTLs per VP (1..=16, and at most what KVM_CAP_APIC_GROUPS reports).
        #[arg(long, default_value_t = 2)]
        vtls: u32,
        /// Seconds to stay alive; 0 = until killed.
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Write the VM's name (`<pid>-<fd>`) to this file once the VM is ready.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

/// `vtlctl caps --json` (schema 1).
#[derive(Serialize)]
struct Caps {
    schema: u32,
    kernel_release: String,
    /// true when KVM_CAP_APIC_GROUPS is reported.
    series_present: bool,
    apic_groups: u32,
    hyperv_send_ipi: bool,
    x2apic_api: bool,
    split_irqchip: bool,
    max_vcpus: usize,
    max_vcpu_id: usize,
}

fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|e| {
        let hint = match e.errno() {
            libc::ENOENT => {
                "no /dev/kvm: KVM is not enabled in this kernel (or the module is not loaded)"
            }
            libc::EACCES | libc::EPERM => {
                "permission denied on /dev/kvm: run as root or join the kvm group"
            }
            _ => "cannot open /dev/kvm",
        };
        anyhow::anyhow!("{hint} ({e})")
    })
}

fn caps() -> Result<Caps> {
    let kvm = open_kvm()?;
    let kernel_release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    let apic_groups = vtlkit_uapi::apic_groups_supported(&kvm);
    Ok(Caps {
        schema: JSON_SCHEMA,
        kernel_release,
        series_present: apic_groups > 0,
        apic_groups,
        hyperv_send_ipi: kvm.check_extension_raw(kvm_bindings::KVM_CAP_HYPERV_SEND_IPI.into()) > 0,
        x2apic_api: kvm.check_extension(Cap::X2ApicApi),
        split_irqchip: kvm.check_extension(Cap::SplitIrqchip),
        max_vcpus: kvm.get_max_vcpus(),
        max_vcpu_id: kvm.get_max_vcpu_id(),
    })
}

fn print_caps(c: &Caps) {
    let yn = |b: bool| if b { "yes" } else { "no" };
    let rows = [
        ("kernel", c.kernel_release.clone()),
        ("vtlkit series", yn(c.series_present).to_string()),
        ("APIC groups", c.apic_groups.to_string()),
        ("Hyper-V PV IPI", yn(c.hyperv_send_ipi).to_string()),
        ("x2APIC API", yn(c.x2apic_api).to_string()),
        ("split irqchip", yn(c.split_irqchip).to_string()),
        ("max vCPUs", c.max_vcpus.to_string()),
        ("max vCPU id", c.max_vcpu_id.to_string()),
    ];
    for (k, v) in rows {
        println!("{k:<16} {v}");
    }
}

fn demo(vps: u32, vtls: u32, hold: u64, ready_file: Option<PathBuf>) -> Result<ExitCode> {
    if !(1..=64).contains(&vps) {
        bail!("--vps {vps} is out of range: use 1..=64");
    }
    if !(1..=16).contains(&vtls) {
        bail!("--vtls {vtls} is out of range: use 1..=16");
    }
    let kvm = open_kvm()?;
    let groups = vtlkit_uapi::apic_groups_supported(&kvm);
    if groups == 0 {
        eprintln!(
            "vtlctl: error: this kernel does not carry the vtlkit series (no KVM_CAP_APIC_GROUPS)"
        );
        return Ok(ExitCode::from(EXIT_NO_SERIES));
    }
    if vtls > groups {
        bail!("--vtls {vtls} needs {vtls} APIC groups, but this kernel supports {groups}");
    }
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    vtlkit_uapi::enable_apic_groups(&vm).context("opting the VM in to APIC groups")?;
    let mut vcpus = Vec::new();
    for vtl in 0..vtls {
        for vp in 0..vps {
            let id = vtl * vps + vp;
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .with_context(|| format!("KVM_CREATE_VCPU {id}"))?;
            let vtl8 = u8::try_from(vtl).context("VTL fits in u8")?;
            vcpu.set_apic_group(ApicGroup {
                group: vtl,
                apic_id: vp,
                vtl: vtl8,
            })
            .with_context(|| {
                format!("KVM_SET_APIC_GROUP on vCPU {id} (group {vtl}, APIC ID {vp})")
            })?;
            let msrs = Msrs::from_entries(&[kvm_msr_entry {
                index: HV_X64_MSR_VP_INDEX,
                data: u64::from(vp),
                ..Default::default()
            }])
            .context("build MSR list")?;
            let n = vcpu
                .set_msrs(&msrs)
                .with_context(|| format!("KVM_SET_MSRS (VP index {vp}) on vCPU {id}"))?;
            if n != 1 {
                bail!("KVM_SET_MSRS on vCPU {id}: KVM refused HV_X64_MSR_VP_INDEX = {vp}");
            }
            vcpus.push(vcpu);
        }
    }
    let name = format!("{}-{}", std::process::id(), vm.as_raw_fd());
    println!(
        "demo VM {name}: {vps} VPs x {vtls} VTLs ({} vCPUs); inspect with `vtlctl show {name}`",
        vcpus.len()
    );
    if let Some(f) = ready_file {
        fs::write(&f, format!("{name}\n")).with_context(|| format!("writing {}", f.display()))?;
    }
    if hold == 0 {
        println!("holding until killed (Ctrl-C)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::thread::sleep(Duration::from_secs(hold));
    Ok(ExitCode::SUCCESS)
}

fn scan_error(e: ScanError) -> Result<ExitCode> {
    let code = match e {
        ScanError::NoSeries(_) => EXIT_NO_SERIES,
        ScanError::NoSuchVm(_) | ScanError::Vanished(_) => EXIT_NO_VM,
        _ => 1,
    };
    eprintln!("vtlctl: error: {e}");
    Ok(ExitCode::from(code))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Command::Caps => {
            let c = caps()?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print_caps(&c);
            }
            // Scripts can test for the series with `vtlctl caps >/dev/null`.
            Ok(if c.series_present {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NO_SERIES)
            })
        }
        Command::Ps | Command::Show { .. } => {
            let (vms, vanished) = match &cli.cmd {
                Command::Show { vms: names } if !names.is_empty() => {
                    let mut v = Vec::new();
                    for n in names {
                        match vtlctl::scan_vm(&cli.debugfs, n) {
                            Ok(vm) => v.push(vm),
                            Err(e) => return scan_error(e),
                        }
                    }
                    (v, Vec::new())
                }
                _ => match vtlctl::scan(&cli.debugfs) {
                    Ok(r) => r,
                    Err(e) => return scan_error(e),
                },
            };
            if cli.json {
                let doc = VmsDoc {
                    schema: JSON_SCHEMA,
                    vms: &vms,
                    vanished: &vanished,
                };
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                for n in &vanished {
                    eprintln!("vtlctl: note: VM {n} exited while being read");
                }
                if vms.is_empty() {
                    println!("no VMs");
                } else if matches!(cli.cmd, Command::Ps) {
                    print!("{}", render::ps_table(&vms));
                } else {
                    print!("{}", render::show_table(&vms));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            vps,
            vtls,
            hold,
            ready_file,
        } => demo(vps, vtls, hold, ready_file),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vtlctl: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
