// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! vtlctl: inspect the vtlkit KVM series on a running kernel.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kvm_ioctls::{Cap, Kvm};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "vtlctl",
    version,
    about = "Inspect VTL / APIC-group state of KVM VMs"
)]
struct Cli {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Does this kernel carry the series? Which capabilities and limits does it report?
    Caps,
}

/// `vtlctl caps --json` schema (version 1).
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

fn caps() -> Result<Caps> {
    let kvm = Kvm::new().context(
        "cannot open /dev/kvm: is KVM built in or loaded, and do you have permission (root or the kvm group)?",
    )?;
    let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    let apic_groups = vtlkit_uapi::apic_groups_supported(&kvm);
    Ok(Caps {
        schema: 1,
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
                ExitCode::from(3)
            })
        }
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
