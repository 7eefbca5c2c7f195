// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! vtlctl: inspect the vtlkit KVM series on a running kernel.
//!
//! Exit status: 0 success (also when stdout is a pipe whose reader went away, or a `--watch`
//! ended with Ctrl-C); 1 error (message on stderr); 2 bad usage; 3 the kernel does not carry
//! the series; 4 the named VM does not exist (or vanished).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Cap, Kvm};
use serde::Serialize;
use vtlctl::filter::{parse_vtl, MAX_GROUPS};
use vtlctl::render::{self, Sample, VmsDoc, VpsDoc, JSON_SCHEMA};
use vtlctl::{Filter, GroupSel, ScanError, VmInfo};
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
    /// KVM's debugfs directory, or a tree recorded by scripts/guest/record-debugfs.sh (then
    /// COMM comes from its proc/<pid>/comm, not from this host's /proc).
    #[arg(long, global = true, default_value = vtlctl::DEFAULT_ROOT)]
    debugfs: PathBuf,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Does this kernel carry the series? Which capabilities and limits does it report?
    Caps,
    /// List every VM on the host: vCPUs, groups, VTLs, counters.
    Ps {
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Show the vCPUs of every VM (or of the named ones: `<pid>-<fd>` as `ps` prints).
    ///
    /// Each vCPU's `hv_vtl_exits` and `vtl_prot_faults` (and any statistic named with --stat)
    /// come from the vCPU's debugfs directory where the kernel has them there, else from KVM's
    /// per-vCPU binary statistics, which vtlctl takes from the VMM's open stats fds (root
    /// only); `-` where they cannot be read, with the reason on stderr. Each VM's line under
    /// the table ends with its protected ranges per VTL (`vtl_prot_ranges=0:3,2:1`).
    Show {
        #[command(flatten)]
        sel: Select,
        /// Also show this per-vCPU KVM statistic (e.g. io_exits, halt_exits; repeatable).
        #[arg(long = "stat", value_name = "NAME", value_parser = parse_stat_name)]
        stat: Vec<String>,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// One line per virtual processor, its VTL siblings side by side (one column per VTL).
    ///
    /// vCPUs with the same Hyper-V VP index and APIC ID are one VP; each VTL column shows the
    /// VP's vCPU at that VTL as `vcpu<id>/g<group>` (`g-`: not assigned to a group yet).
    Vps {
        #[command(flatten)]
        sel: Select,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Build a VM with VTL siblings and keep it alive for inspection.
    ///
    /// vCPU `vtl * vps + vp` is VP `vp` at VTL `vtl`: APIC group `vtl`, APIC ID `vp`,
    /// Hyper-V VP index `vp`.
    Demo {
        /// Virtual processors (1..=64).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        vps: u32,
        /// VTLs per VP (1..=16, and at most what KVM_CAP_APIC_GROUPS reports).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
        vtls: u32,
        /// Seconds to stay alive; 0 = until killed.
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Write the VM's name (`<pid>-<fd>`) to this file once the VM is ready.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Print a vCPU's raw KVM stats file as hex (`xxd -p`), to record test fixtures.
    #[command(hide = true)]
    DumpVcpuStats {
        /// The VM (`<pid>-<fd>`).
        vm: String,
        /// The vCPU's vcpu_id.
        vcpu: u32,
    },
}

/// The per-vCPU statistics `show` always has a column for: the VTL exits (series v3) and
/// the protection faults (series v5).
const DEFAULT_STATS: &[&str] = &["hv_vtl_exits", "vtl_prot_faults"];

/// Which VMs and vCPUs `show` and `vps` print.
#[derive(Args)]
struct Select {
    /// VMs to show (`<pid>-<fd>`); default: every VM.
    vms: Vec<String>,
    /// Also a VM to show (same as naming it; repeatable).
    #[arg(long = "vm", value_name = "VM")]
    vm: Vec<String>,
    /// Only vCPUs in this APIC group (0..=15, or `none` for unassigned vCPUs; repeatable).
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    group: Vec<GroupSel>,
    /// Only vCPUs with this VTL label (0..=15; repeatable).
    #[arg(long, value_name = "VTL", value_parser = parse_vtl)]
    vtl: Vec<u8>,
}

/// `--watch [SECONDS] [--count N]`.
#[derive(Args)]
struct WatchArgs {
    /// Redraw every SECONDS (default 2; 0.1..=3600) with each counter's change since the
    /// previous sample, until Ctrl-C.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2",
          value_parser = parse_interval)]
    watch: Option<Duration>,
    /// With --watch: stop after N samples.
    #[arg(long, value_name = "N", requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

/// A KVM statistic name: lower-case letters, digits and `_`, as KVM names them.
fn parse_stat_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() < 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a KVM statistic name (lower-case letters, digits and _)"
        ))
    }
}

fn parse_group(s: &str) -> Result<GroupSel, vtlctl::filter::FilterError> {
    s.parse()
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not an interval: use 0.1..=3600 seconds")),
    }
}

/// A bad argument that clap cannot judge alone (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// Write to stdout. A reader that went away (EPIPE) comes back as an error that [`main`]
/// turns into a quiet exit.
fn out(s: &str) -> io::Result<()> {
    let mut o = io::stdout().lock();
    o.write_all(s.as_bytes())?;
    o.flush()
}

/// Write a line to stderr; if stderr is gone too there is nobody left to tell.
fn warn(msg: &str) {
    let _ = writeln!(io::stderr().lock(), "{msg}");
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

fn caps_text(c: &Caps) -> String {
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
    rows.iter().map(|(k, v)| format!("{k:<16} {v}\n")).collect()
}

fn demo(vps: u32, vtls: u32, hold: u64, ready_file: Option<PathBuf>) -> Result<ExitCode> {
    // clap checked the ranges; this is the second line of defence for callers of demo().
    if !(1..=64).contains(&vps) {
        return Err(Usage(format!("--vps {vps} is out of range: use 1..=64")).into());
    }
    if !(1..=MAX_GROUPS).contains(&vtls) {
        return Err(Usage(format!(
            "--vtls {vtls} is out of range: use 1..={MAX_GROUPS}"
        ))
        .into());
    }
    let kvm = open_kvm()?;
    let groups = vtlkit_uapi::apic_groups_supported(&kvm);
    if groups == 0 {
        warn(
            "vtlctl: error: this kernel does not carry the vtlkit series (no KVM_CAP_APIC_GROUPS)",
        );
        return Ok(ExitCode::from(EXIT_NO_SERIES));
    }
    if vtls > groups {
        return Err(Usage(format!(
            "--vtls {vtls} needs {vtls} APIC groups, but this kernel supports {groups}"
        ))
        .into());
    }
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    vtlkit_uapi::enable_apic_groups(&vm).context("opting the VM in to APIC groups")?;
    let mut vcpus = Vec::new();
    let mut stats_fds = Vec::new();
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
            // Keep its stats fd open, as a VMM must for `vtlctl show` to read the vCPU's
            // statistics (KVM hands one out to the VM's own process only).
            stats_fds.push(
                vtlctl::vcpustats::get_stats_fd(&vcpu)
                    .with_context(|| format!("KVM_GET_STATS_FD on vCPU {id}"))?,
            );
            vcpus.push(vcpu);
        }
    }
    let name = format!("{}-{}", std::process::id(), vm.as_raw_fd());
    out(&format!(
        "demo VM {name}: {vps} VPs x {vtls} VTLs ({} vCPUs); inspect with `vtlctl show {name}`\n",
        vcpus.len()
    ))?;
    if let Some(f) = ready_file {
        fs::write(&f, format!("{name}\n")).with_context(|| format!("writing {}", f.display()))?;
    }
    if hold == 0 {
        out("holding until killed (Ctrl-C)\n")?;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::thread::sleep(Duration::from_secs(hold));
    drop(stats_fds);
    Ok(ExitCode::SUCCESS)
}

fn dump_vcpu_stats(root: &Path, vm: &str, vcpu: u32) -> Result<ExitCode> {
    let Some((pid, _)) = vtlctl::debugfs::parse_vm_dir(vm) else {
        return Err(Usage(format!("{vm:?} is not a VM name (<pid>-<fd>)")).into());
    };
    let n = vtlctl::vcpustats::vms_of_pid(root, Path::new("/proc"), pid).max(1);
    let mut all = vtlctl::vcpustats::read_vm_raw(Path::new("/proc"), pid, n)
        .with_context(|| format!("VM {vm}"))?;
    let (_, raw) = all
        .vcpus
        .remove(&vcpu)
        .with_context(|| format!("VM {vm} has no vCPU {vcpu}"))?
        .with_context(|| format!("VM {vm} vCPU {vcpu}"))?;
    let hex: String = raw
        .chunks(30)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    out(&hex)?;
    Ok(ExitCode::SUCCESS)
}

fn scan_error(e: ScanError) -> Result<ExitCode> {
    let code = match e {
        ScanError::NoSeries(_) => EXIT_NO_SERIES,
        ScanError::NoSuchVm(_) | ScanError::Vanished(_) => EXIT_NO_VM,
        _ => 1,
    };
    warn(&format!("vtlctl: error: {e}"));
    Ok(ExitCode::from(code))
}

/// Which listing `ps`, `show` and `vps` print.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Ps,
    Show,
    Vps,
}

impl View {
    fn name(self) -> &'static str {
        match self {
            View::Ps => "ps",
            View::Show => "show",
            View::Vps => "vps",
        }
    }
}

/// One reading of the VMs asked for: the VMs (filtered) and those that exited meanwhile.
fn collect(
    root: &Path,
    names: &[String],
    filter: &Filter,
) -> Result<(Vec<VmInfo>, Vec<String>), ScanError> {
    let (vms, vanished) = if names.is_empty() {
        vtlctl::scan(root)?
    } else {
        let comm_root = vtlctl::comm_root(root);
        let mut v = Vec::new();
        for n in names {
            v.push(vtlctl::scan_vm_in(root, &comm_root, n)?);
        }
        (v, Vec::new())
    };
    Ok((filter.apply(vms), vanished))
}

/// One frame of `ps`/`show`/`vps`: a JSON document (one line per sample with --watch) or a
/// table, counters with their change since `prev`.
#[allow(clippy::too_many_arguments)]
fn render_frame(
    view: View,
    stats: &[String],
    json: bool,
    compact: bool,
    filtered: bool,
    vms: &[VmInfo],
    vanished: &[String],
    prev: Option<&Sample>,
) -> Result<String> {
    if json {
        let doc = if view == View::Vps {
            let rows = render::vp_rows(vms);
            serde_json::to_value(VpsDoc {
                schema: JSON_SCHEMA,
                vps: &rows,
                vanished,
            })?
        } else {
            serde_json::to_value(VmsDoc {
                schema: JSON_SCHEMA,
                vms,
                vanished,
            })?
        };
        let s = if compact {
            serde_json::to_string(&doc)?
        } else {
            serde_json::to_string_pretty(&doc)?
        };
        return Ok(s + "\n");
    }
    let mut s = String::new();
    for n in vanished {
        s += &format!("note: VM {n} exited while being read\n");
    }
    if vms.is_empty() {
        s += if filtered {
            "no vCPUs match the filter\n"
        } else {
            "no VMs\n"
        };
        return Ok(s);
    }
    s += &match view {
        View::Ps => render::ps_table_with(vms, prev),
        View::Show => render::show_table_stats(vms, prev, stats),
        View::Vps => render::vps_table_with(vms, prev),
    };
    Ok(s)
}

/// Set by SIGINT while `--watch` runs: finish the current frame and exit 0.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn catch_sigint() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the previous
    // disposition is not needed.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

/// Sleep `d`, or less if Ctrl-C comes; true if it did.
fn sleep_unless_stopped(d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if STOP.load(Ordering::Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return false;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Fill in the per-vCPU statistics `cols` of `vms` (`strict`: the names the user asked for,
/// which must exist); say once on stderr why any are missing.
fn fill_stats(
    root: &Path,
    vms: &mut [VmInfo],
    cols: &[String],
    strict: &[String],
    said: &mut BTreeSet<String>,
) -> Result<()> {
    let rep = vtlctl::vcpustats::fill(root, vms, cols, strict);
    if let Some((name, has)) = rep.unknown.first() {
        return Err(Usage(format!(
            "--stat {name}: KVM has no per-vCPU statistic named {name:?} (it has: {})",
            has.join(", ")
        ))
        .into());
    }
    if let Some(name) = rep.not_single.first() {
        return Err(Usage(format!(
            "--stat {name}: {name} is a histogram; --stat shows single-valued statistics"
        ))
        .into());
    }
    for n in rep.notes {
        if said.insert(n.clone()) {
            warn(&format!("vtlctl: note: {n} (shown as -)"));
        }
    }
    Ok(())
}

fn list(
    cli: &Cli,
    view: View,
    sel: Option<&Select>,
    stats: &[String],
    watch: &WatchArgs,
) -> Result<ExitCode> {
    // Per-vCPU statistic columns (show only): hv_vtl_exits, vtl_prot_faults, then those asked
    // for.
    let mut cols: Vec<String> = Vec::new();
    if view == View::Show {
        for n in DEFAULT_STATS
            .iter()
            .copied()
            .chain(stats.iter().map(String::as_str))
        {
            if !cols.iter().any(|c| c == n) {
                cols.push(n.to_string());
            }
        }
    }
    let mut said = BTreeSet::new();
    let mut names: Vec<String> = Vec::new();
    let mut filter = Filter::default();
    if let Some(sel) = sel {
        names.extend(sel.vms.iter().chain(&sel.vm).cloned());
        filter.groups.clone_from(&sel.group);
        filter.vtls.clone_from(&sel.vtl);
    }
    let Some(interval) = watch.watch else {
        let (mut vms, vanished) = match collect(&cli.debugfs, &names, &filter) {
            Ok(r) => r,
            Err(e) => return scan_error(e),
        };
        fill_stats(&cli.debugfs, &mut vms, &cols, stats, &mut said)?;
        // Tables note vanished VMs on stderr, JSON lists them in the document.
        let listed: &[String] = if cli.json { &vanished } else { &[] };
        if !cli.json {
            for n in &vanished {
                warn(&format!("vtlctl: note: VM {n} exited while being read"));
            }
        }
        let filtered = !filter.is_empty();
        out(&render_frame(
            view, &cols, cli.json, false, filtered, &vms, listed, None,
        )?)?;
        return Ok(ExitCode::SUCCESS);
    };
    catch_sigint();
    let tty = !cli.json && io::stdout().is_terminal();
    let start = Instant::now();
    let mut prev: Option<Sample> = None;
    let mut n: u64 = 0;
    loop {
        n += 1;
        let (mut vms, vanished) = match collect(&cli.debugfs, &names, &filter) {
            Ok(r) => r,
            Err(e) => return scan_error(e),
        };
        fill_stats(&cli.debugfs, &mut vms, &cols, stats, &mut said)?;
        let mut frame = String::new();
        if !cli.json {
            if tty {
                frame += "\x1b[H\x1b[2J";
            } else if n > 1 {
                frame += "\n";
            }
            frame += &format!(
                "every {:.1}s: vtlctl {}, sample {n}{}, +{:.1}s (Ctrl-C ends)\n",
                interval.as_secs_f64(),
                view.name(),
                watch.count.map_or_else(String::new, |c| format!(" of {c}")),
                start.elapsed().as_secs_f64(),
            );
        }
        frame += &render_frame(
            view,
            &cols,
            cli.json,
            true,
            !filter.is_empty(),
            &vms,
            &vanished,
            prev.as_ref(),
        )?;
        out(&frame)?;
        prev = Some(render::sample(&vms));
        if watch.count.is_some_and(|c| n >= c) || sleep_unless_stopped(interval) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.cmd {
        Command::Caps => {
            let c = caps()?;
            if cli.json {
                out(&(serde_json::to_string_pretty(&c)? + "\n"))?;
            } else {
                out(&caps_text(&c))?;
            }
            // Scripts can test for the series with `vtlctl caps >/dev/null`.
            Ok(if c.series_present {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NO_SERIES)
            })
        }
        Command::Ps { watch } => list(&cli, View::Ps, None, &[], watch),
        Command::Show { sel, stat, watch } => list(&cli, View::Show, Some(sel), stat, watch),
        Command::Vps { sel, watch } => list(&cli, View::Vps, Some(sel), &[], watch),
        Command::DumpVcpuStats { vm, vcpu } => dump_vcpu_stats(&cli.debugfs, vm, *vcpu),
        Command::Demo {
            vps,
            vtls,
            hold,
            ready_file,
        } => demo(*vps, *vtls, *hold, ready_file.clone()),
    }
}

/// Whether `e` is a write to a pipe nobody reads any more.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help/--version (exit 0) or bad usage (exit 2); a closed stdout is no error.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            warn(&format!("vtlctl: error: {e:#}"));
            ExitCode::from(if e.is::<Usage>() { 2 } else { 1 })
        }
    }
}
