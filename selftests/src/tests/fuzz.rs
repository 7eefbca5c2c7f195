// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! A seeded, time-bounded randomized tester for everything the series adds.
//!
//! One thread (the test's own) keeps a model of a few VMs and issues random ioctls against
//! them, checking each result against the model built from the API documentation
//! (Documentation/virt/kvm/api.rst of the patched tree):
//!
//! * `KVM_SET_APIC_GROUP` with random and boundary arguments (group, APIC ID, VTL, flags, pad,
//!   reserved, bad pointers), on never-run, running-then-stopped and new vCPUs, in VMs with and
//!   without an in-kernel irqchip, 32-bit x2APIC IDs and a lowered vCPU ID limit. The result
//!   must be success exactly when no documented error applies, else one of the errors that
//!   apply (the documentation gives no precedence); `KVM_GET_APIC_GROUP` must then show the new
//!   assignment, or the old one after a failure.
//! * `KVM_GET_LAPIC` / `KVM_SET_LAPIC` around groups: the ID register must follow the assigned
//!   APIC ID in xAPIC and x2APIC mode (switched with `KVM_SET_MSRS(IA32_APIC_BASE)`), and a
//!   mismatching x2APIC ID must be refused with 32-bit IDs.
//! * `KVM_SIGNAL_MSI` and `KVM_SET_GSI_ROUTING` with and without `KVM_MSI_VALID_APIC_GROUP`,
//!   valid and invalid groups and `KVM_MSI_VALID_DEVID` combinations; routes are fired with
//!   `KVM_IRQ_LINE` and irqfds. An MSI to a group without vCPUs must reach nobody, and no MSI
//!   may reach more vCPUs than its group has.
//! * VMs are created and destroyed in the loop, sometimes while their vCPUs still run.
//!
//! Meanwhile started vCPUs run a nested guest ([`vtlkit_fuzz_guest_start`]) that sends IPIs in a
//! loop (physical, logical, shorthands, broadcast, lowest priority, KVM PV IPI), and a per-VM
//! injector thread signals MSIs and irqfds. Every interrupt carries its group in its vector (IPIs
//! `0x40 + sender's group`, MSIs `0x60 + target group`), so when a VM is torn down each vCPU's
//! handled, pending and in-service vectors must belong to a group the vCPU was in.
//!
//! Seed and duration: `VTLKIT_FUZZ_SEED` / `VTLKIT_FUZZ_SECONDS`, else `vtlkit.fuzz_seed=` /
//! `vtlkit.fuzz_seconds=` on the kernel command line, else the clock and 20 seconds.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, kvm_msr_entry, KvmIrqRouting, Msrs,
    KVM_CAP_MAX_VCPU_ID, KVM_CAP_X2APIC_API, KVM_IRQCHIP_IOAPIC, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_MSI_VALID_DEVID, KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK,
    KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl_with_mut_ptr, ioctl_with_ptr};
use vtlkit_uapi::{raw, ApicGroup, VcpuApicGroupExt};

use crate::check;
use crate::guest::icr::{DEST_LOGICAL, DM_LOWEST, LEVEL_ASSERT, SH_ALL, SH_OTHERS, SH_SELF};
use crate::guest::{pcpu, prog, ucall, Entry};
use crate::harness::{Outcome, Test, TestResult};
use crate::vm::{lapic_bit, lapic_reg, layout, GuestMem, Running, TestVm, VmOptions};

pub const TESTS: &[Test] = &[Test {
    name: "fuzz_apic_groups",
    about: "randomized APIC-group ioctls, MSIs, routes, LAPIC state and VM churn while nested guests send IPIs; results checked against the documented model",
    run: fuzz_apic_groups,
}];

// ---------------------------------------------------------------------------------------------
// Configuration and the PRNG.

const DEFAULT_SECONDS: u64 = 20;

struct Config {
    seed: u64,
    seconds: u64,
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `key=value` from the kernel command line, if present.
fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

fn knob(env: &str, cmdline_key: &str, cmdline: &str) -> Result<Option<u64>> {
    let (raw, from) = match std::env::var(env) {
        Ok(v) => (v, env.to_string()),
        Err(_) => match cmdline_value(cmdline, cmdline_key) {
            Some(v) => (v, format!("{cmdline_key} on the kernel command line")),
            None => return Ok(None),
        },
    };
    parse_u64(&raw)
        .map(Some)
        .ok_or_else(|| anyhow!("{from}: {raw:?} is not a number"))
}

fn config() -> Result<Config> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let seed = match knob("VTLKIT_FUZZ_SEED", "vtlkit.fuzz_seed", &cmdline)? {
        Some(s) => s,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
            .unwrap_or(0x5eed),
    };
    let seconds =
        knob("VTLKIT_FUZZ_SECONDS", "vtlkit.fuzz_seconds", &cmdline)?.unwrap_or(DEFAULT_SECONDS);
    Ok(Config { seed, seconds })
}

/// SplitMix64: tiny, fast, and every seed (including 0) gives a good stream.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    fn below_u32(&mut self, n: u32) -> u32 {
        self.below(u64::from(n)) as u32
    }
    /// True with probability 1/n.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.below(v.len() as u64) as usize])
        }
    }
    /// A fresh generator for another thread or guest.
    fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

#[derive(Debug, Clone, Copy)]
enum Call {
    CreateVm,
    CreateVcpu,
    EnableCap,
    SetApicGroup,
    GetApicGroup,
    SignalMsi,
    SetGsiRouting,
    IrqLine,
    Irqfd,
    GetLapic,
    SetLapic,
    SetMsrs,
    Run,
}

const CALLS: [(Call, &str); 13] = [
    (Call::CreateVm, "KVM_CREATE_VM"),
    (Call::CreateVcpu, "KVM_CREATE_VCPU"),
    (Call::EnableCap, "KVM_ENABLE_CAP"),
    (Call::SetApicGroup, "KVM_SET_APIC_GROUP"),
    (Call::GetApicGroup, "KVM_GET_APIC_GROUP"),
    (Call::SignalMsi, "KVM_SIGNAL_MSI"),
    (Call::SetGsiRouting, "KVM_SET_GSI_ROUTING"),
    (Call::IrqLine, "KVM_IRQ_LINE"),
    (Call::Irqfd, "KVM_IRQFD"),
    (Call::GetLapic, "KVM_GET_LAPIC"),
    (Call::SetLapic, "KVM_SET_LAPIC"),
    (Call::SetMsrs, "KVM_SET_MSRS"),
    (Call::Run, "KVM_RUN (vCPU thread starts)"),
];

#[derive(Default)]
struct Stats {
    calls: [AtomicU64; CALLS.len()],
    vms: AtomicU64,
    vcpus: AtomicU64,
    guest_sends: AtomicU64,
    guest_irqs: AtomicU64,
    irqfd_writes: AtomicU64,
}

impl Stats {
    fn count(&self, c: Call) {
        self.calls[c as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        self.calls.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
    fn per_call(&self) -> String {
        CALLS
            .iter()
            .map(|(c, name)| {
                format!(
                    "{}={}",
                    name.split_whitespace().next().unwrap_or(name),
                    self.calls[*c as usize].load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

// ---------------------------------------------------------------------------------------------
// The nested guest: enable the APIC, report ready, then send IPIs from a host-written table
// forever, picking entries with a xorshift generator.

/// Per-vCPU inputs (in the vCPU data page's ARGS area).
mod arg {
    use crate::guest::pcpu::ARGS;
    /// Guest address of `vtlkit_guest_apic_enable`.
    pub const APIC_ENABLE: u64 = ARGS;
    /// Guest address of `vtlkit_guest_apic_send_icr`.
    pub const SEND_ICR: u64 = ARGS + 8;
    /// Guest address of `vtlkit_guest_pv_send_ipi`.
    pub const PV_IPI: u64 = ARGS + 16;
    /// xorshift64 state (non-zero).
    pub const SEED: u64 = ARGS + 24;
    /// Number of table entries minus one (a power of two minus one).
    pub const MASK: u64 = ARGS + 32;
    /// Output: sends done.
    pub const SENT: u64 = ARGS + 40;
}

/// Where the fuzz guest's code goes in guest memory.
const FUZZ_CODE: u64 = layout::DATA;
/// Per-vCPU send tables: vCPU index i at `FUZZ_TABLES + i * PAGE`.
const FUZZ_TABLES: u64 = layout::DATA + 0x10000;
/// Entries per send table (one page of 64-byte program entries).
const TABLE_ENTRIES: u64 = layout::PAGE / prog::ENTRY_SIZE;
const _: () = assert!(prog::ENTRY_SIZE == 64 && TABLE_ENTRIES.is_power_of_two());

core::arch::global_asm!(
    r#"
    .pushsection .text.vtlkit_fuzz_guest, "ax", @progbits
    .balign 4096
    .globl vtlkit_fuzz_guest_start
vtlkit_fuzz_guest_start:
    mov rax, gs:[{ARG_APIC_ENABLE}]
    call rax
    mov rdi, {STAGE_APIC_READY}
    mov rsi, gs:[{PCPU_APIC_ID_READ}]
    mov rcx, gs:[{PCPU_LDR_READ}]
    mov r8, gs:[{PCPU_APIC_MODE}]
    mov eax, {UCALL_SYNC}
    mov edx, {UCALL_PORT}
    out dx, eax
    sti
    mov rbx, gs:[{PCPU_PROGRAM}]
    mov r12, gs:[{ARG_SEED}]
    mov r13, gs:[{ARG_MASK}]
    test rbx, rbx
    jz 6f
2:  mov rax, r12                            // xorshift64: 13, 7, 17
    shl rax, 13
    xor r12, rax
    mov rax, r12
    shr rax, 7
    xor r12, rax
    mov rax, r12
    shl rax, 17
    xor r12, rax
    mov rax, r12
    and rax, r13
    shl rax, 6                              // * ENTRY_SIZE (64)
    lea r14, [rbx + rax]
    mov rdi, [r14 + 8]
    mov rsi, [r14 + 16]
    cmp qword ptr [r14], {PROG_PV_IPI}
    je 3f
    mov rax, gs:[{ARG_SEND_ICR}]            // RDI = destination, ESI = ICR low
    call rax
    jmp 4f
3:  mov rdx, [r14 + 24]                     // RDI/RSI = bitmap, RDX = min, RCX = ICR
    mov rcx, [r14 + 32]
    mov rax, gs:[{ARG_PV_IPI}]
    call rax
4:  lock inc qword ptr gs:[{ARG_SENT}]
    jmp 2b
6:  sti
    hlt
    jmp 6b
    .globl vtlkit_fuzz_guest_end
vtlkit_fuzz_guest_end:
    .popsection
"#,
    ARG_APIC_ENABLE = const arg::APIC_ENABLE,
    ARG_SEND_ICR = const arg::SEND_ICR,
    ARG_PV_IPI = const arg::PV_IPI,
    ARG_SEED = const arg::SEED,
    ARG_MASK = const arg::MASK,
    ARG_SENT = const arg::SENT,
    STAGE_APIC_READY = const ucall::STAGE_APIC_READY,
    PCPU_APIC_ID_READ = const pcpu::APIC_ID_READ,
    PCPU_LDR_READ = const pcpu::LDR_READ,
    PCPU_APIC_MODE = const pcpu::APIC_MODE,
    PCPU_PROGRAM = const pcpu::PROGRAM,
    UCALL_SYNC = const ucall::SYNC,
    UCALL_PORT = const ucall::PORT,
    PROG_PV_IPI = const prog::PV_IPI,
);

extern "C" {
    static vtlkit_fuzz_guest_start: u8;
    static vtlkit_fuzz_guest_end: u8;
    static vtlkit_guest_start: u8;
    static vtlkit_guest_apic_enable: u8;
    static vtlkit_guest_apic_send_icr: u8;
    static vtlkit_guest_pv_send_ipi: u8;
}

fn fuzz_guest_code() -> &'static [u8] {
    // SAFETY: both symbols are defined in the same section by the `global_asm!` above, end
    // after start, and the bytes between them are immutable code that is part of this binary.
    unsafe {
        let start = &raw const vtlkit_fuzz_guest_start;
        let end = &raw const vtlkit_fuzz_guest_end;
        std::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Guest address of a helper in the main guest blob (loaded at [`layout::CODE`]).
fn helper_gpa(sym: *const u8) -> u64 {
    let start = &raw const vtlkit_guest_start;
    layout::CODE + (sym as u64).wrapping_sub(start as u64)
}

/// Vector of IPIs sent by a vCPU of `group`.
fn ipi_vector(group: u32) -> u8 {
    0x40 + (group & 0xf) as u8
}
/// Vector of MSIs aimed at `group`.
fn msi_vector(group: u32) -> u8 {
    0x60 + (group & 0xf) as u8
}

// ---------------------------------------------------------------------------------------------
// The model.

const MAX_VMS: usize = 2;
/// vCPUs per VM (the framework allows 16; TCG is slow, so fewer).
const MAX_VCPUS: usize = 8;
/// vCPUs running nested guests at once, over all VMs.
const MAX_RUNNING: usize = 4;
/// IA32_APIC_BASE and its bits.
const MSR_APIC_BASE: u32 = 0x1b;
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_EN: u64 = 1 << 11;
/// KVM_MAX_IRQ_ROUTES.
const MAX_IRQ_ROUTES: u32 = 4096;
/// GSIs the fuzzer routes and fires (above the PIC's, so nothing reaches the legacy PIC).
const GSI_BASE: u32 = 16;
const GSI_SPAN: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApicMode {
    Disabled,
    Xapic,
    X2apic,
}

#[derive(Debug, Clone)]
struct VcpuModel {
    id: u64,
    /// What KVM_GET_APIC_GROUP must return.
    assigned: ApicGroup,
    /// Groups this vCPU was ever in (bit per group): the vectors it may legitimately hold.
    groups_seen: u32,
    /// Entered the guest (reported ready): KVM_SET_APIC_GROUP must fail with EBUSY.
    ran: bool,
    /// On a vCPU thread now (its fd is not ours to use).
    running: bool,
    mode: ApicMode,
    /// The raw APIC ID register outside x2APIC mode.
    id_reg: u32,
}

impl VcpuModel {
    /// Could this vCPU match physical destination `d` of an MSI?
    fn may_match(&self, d: u32) -> bool {
        let x2 = d == self.assigned.apic_id;
        let x = d == self.id_reg >> 24 || (self.assigned.apic_id > 0xff && x2);
        match self.mode {
            ApicMode::Disabled => false,
            ApicMode::X2apic => x2,
            ApicMode::Xapic if self.running && !self.ran => x || x2,
            ApicMode::Xapic => x,
        }
    }
}

/// One injector thread per irqchip VM: KVM_SIGNAL_MSI and irqfd writes concurrently with
/// everything else.
struct Injector {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Injector {
    fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow!("the injector thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

struct Batch {
    running: Running,
    indexes: Vec<usize>,
}

struct FuzzVm {
    serial: u64,
    vm: TestVm,
    mem: Arc<GuestMem>,
    irqchip: bool,
    x2apic_format: bool,
    max_vcpu_ids: u32,
    groups: u32,
    vcpus: Vec<VcpuModel>,
    batches: Vec<Batch>,
    injector: Option<Injector>,
}

impl FuzzVm {
    fn max_apic_id(&self) -> u32 {
        let m = self.max_vcpu_ids.saturating_sub(1);
        if self.x2apic_format {
            m
        } else {
            m.min(0xfe)
        }
    }

    fn taken(&self, group: u32, apic_id: u32, except: usize) -> bool {
        self.vcpus
            .iter()
            .enumerate()
            .any(|(i, v)| i != except && v.assigned.group == group && v.assigned.apic_id == apic_id)
    }

    fn members(&self, group: u32) -> usize {
        self.vcpus
            .iter()
            .filter(|v| v.assigned.group == group)
            .count()
    }

    fn running_count(&self) -> usize {
        self.vcpus.iter().filter(|v| v.running).count()
    }

    fn fd(&self, index: usize) -> Result<&VcpuFd> {
        Ok(&self.vm.vcpu(index)?.fd)
    }
}

/// An MSI's class per the documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsiClass {
    /// Must fail with EINVAL.
    Invalid,
    /// `KVM_MSI_VALID_DEVID` alone: the documentation says the ioctl "might fail".
    DevidOnly,
    /// Valid, aimed at this group.
    Group(u32),
}

fn classify_msi(
    flags: u32,
    devid: u32,
    address_hi: u32,
    x2apic_format: bool,
    groups: u32,
) -> MsiClass {
    let group_flag = raw::KVM_MSI_VALID_APIC_GROUP;
    if flags & !(KVM_MSI_VALID_DEVID | group_flag) != 0 {
        return MsiClass::Invalid;
    }
    if x2apic_format && address_hi & 0xff != 0 {
        return MsiClass::Invalid;
    }
    if flags & group_flag != 0 {
        if flags & KVM_MSI_VALID_DEVID != 0 || devid >= groups {
            return MsiClass::Invalid;
        }
        return MsiClass::Group(devid);
    }
    if flags & KVM_MSI_VALID_DEVID != 0 {
        return MsiClass::DevidOnly;
    }
    MsiClass::Group(0)
}

/// A random MSI: (msi, class, physical unicast destination if it is one).
fn random_msi(
    rng: &mut Rng,
    ids: &[u32],
    x2apic_format: bool,
    groups: u32,
) -> (kvm_msi, MsiClass, Option<u32>) {
    let group_flag = raw::KVM_MSI_VALID_APIC_GROUP;
    let flags = match rng.below(10) {
        0..=2 => 0,
        3..=6 => group_flag,
        7 => KVM_MSI_VALID_DEVID,
        8 => KVM_MSI_VALID_DEVID | group_flag,
        _ => 1 << (2 + rng.below(30)),
    };
    let devid = match rng.below(8) {
        0 => groups,
        1 => u32::MAX,
        2 => rng.next_u32(),
        _ => rng.below_u32(groups),
    };
    let dest: u32 = match rng.below(6) {
        0 => 0xff,
        1 => rng.below_u32(0x100),
        _ => rng.pick(ids).unwrap_or(0),
    };
    let address_hi = if x2apic_format && rng.one_in(3) {
        match rng.below(3) {
            0 => rng.next_u32(),
            1 => 0xffff_ff00,
            _ => dest & !0xff,
        }
    } else if rng.one_in(8) {
        rng.next_u32()
    } else {
        0
    };
    let logical = rng.one_in(5);
    let redir_hint = rng.one_in(6);
    let lowest = rng.one_in(6);
    let address_lo = layout::XAPIC as u32
        | ((dest & 0xff) << 12)
        | (u32::from(redir_hint) << 3)
        | (u32::from(logical) << 2);
    let class = classify_msi(flags, devid, address_hi, x2apic_format, groups);
    let target = match class {
        MsiClass::Group(g) => g,
        _ => 0,
    };
    let data = u32::from(msi_vector(target)) | if lowest { DM_LOWEST } else { 0 };
    let full_dest = if x2apic_format {
        (address_hi & 0xffff_ff00) | (dest & 0xff)
    } else {
        dest & 0xff
    };
    let unicast = !logical && !redir_hint && !lowest && full_dest != 0xff && full_dest != u32::MAX;
    let msi = kvm_msi {
        address_lo,
        address_hi,
        data,
        flags,
        devid,
        ..Default::default()
    };
    (msi, class, unicast.then_some(full_dest))
}

fn errno_of(e: &kvm_ioctls::Error) -> i32 {
    e.errno()
}

fn errname(e: i32) -> String {
    let name = match e {
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::EBUSY => "EBUSY",
        libc::ENXIO => "ENXIO",
        libc::EFAULT => "EFAULT",
        libc::EPERM => "EPERM",
        libc::EINTR => "EINTR",
        libc::ENOMEM => "ENOMEM",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

fn errset(v: &[i32]) -> String {
    if v.is_empty() {
        "success".into()
    } else {
        v.iter().map(|&e| errname(e)).collect::<Vec<_>>().join("/")
    }
}

/// Check one KVM_SIGNAL_MSI result against what the model allows (`members`: vCPUs of the
/// target group, or None when unknown; `matching`: vCPUs that may match a unicast destination).
fn check_msi_result(
    what: &str,
    r: std::result::Result<i32, i32>,
    class: MsiClass,
    members: Option<usize>,
    matching: Option<usize>,
) -> Result<()> {
    match (class, r) {
        (MsiClass::Invalid, Err(libc::EINVAL)) => Ok(()),
        (MsiClass::Invalid, r) => bail!("{what}: expected EINVAL, got {}", show(r)),
        (MsiClass::DevidOnly, Ok(_) | Err(libc::EINVAL) | Err(libc::EPERM)) => Ok(()),
        (MsiClass::Group(g), Ok(n)) => {
            // api.rst (KVM_SIGNAL_MSI): an MSI that reaches no vCPU returns 0 or -1 (EPERM),
            // depending on the delivery path; it must never count a delivery.
            check!(
                members != Some(0) || n == 0,
                "{what}: group {g} has no vCPUs, yet the MSI returned {n} deliveries"
            );
            if let Some(m) = members {
                check!(
                    n as usize <= m,
                    "{what}: delivered to {n} vCPUs, but group {g} has only {m}"
                );
            }
            if let Some(m) = matching {
                check!(
                    n as usize <= m,
                    "{what}: physical MSI delivered to {n} vCPUs, but only {m} of group {g} can have that APIC ID"
                );
            }
            Ok(())
        }
        (MsiClass::Group(_), Err(libc::EPERM)) => Ok(()),
        (_, r) => bail!("{what}: undocumented result {}", show(r)),
    }
}

fn show(r: std::result::Result<i32, i32>) -> String {
    match r {
        Ok(n) => format!("success ({n})"),
        Err(e) => errname(e),
    }
}

// ---------------------------------------------------------------------------------------------
// The fuzzer.

struct Fuzzer {
    rng: Rng,
    stats: Arc<Stats>,
    vms: Vec<FuzzVm>,
    next_serial: u64,
    /// The most recent operations, for the failure report.
    log: VecDeque<String>,
    /// Two pages, the second PROT_NONE: for EFAULT cases.
    guard: *mut u8,
}

const LOG_LEN: usize = 40;

impl Drop for Fuzzer {
    fn drop(&mut self) {
        // VMs first (joins every thread), then the guard pages.
        self.vms.clear();
        // SAFETY: unmapping exactly the two pages mapped in Fuzzer::new, which nothing else
        // references (only their addresses were passed to the kernel, never kept).
        unsafe { libc::munmap(self.guard.cast(), 2 * layout::PAGE as usize) };
    }
}

impl Fuzzer {
    fn new(seed: u64) -> Result<Self> {
        let len = 2 * layout::PAGE as usize;
        // SAFETY: a fresh anonymous private mapping, checked against MAP_FAILED; the second
        // page is then made inaccessible, which only affects this mapping.
        let guard = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                bail!("mmap guard pages: {}", std::io::Error::last_os_error());
            }
            let p = p.cast::<u8>();
            if libc::mprotect(
                p.add(layout::PAGE as usize).cast(),
                layout::PAGE as usize,
                libc::PROT_NONE,
            ) != 0
            {
                let e = std::io::Error::last_os_error();
                libc::munmap(p.cast(), len);
                bail!("mprotect guard page: {e}");
            }
            p
        };
        Ok(Fuzzer {
            rng: Rng(seed),
            stats: Arc::new(Stats::default()),
            vms: Vec::new(),
            next_serial: 0,
            log: VecDeque::new(),
            guard,
        })
    }

    fn note(&mut self, s: String) {
        if self.log.len() == LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(s);
    }

    /// One random step.
    fn step(&mut self) -> Result<()> {
        if self.vms.is_empty() {
            return self.create_vm();
        }
        let k = self.rng.below(self.vms.len() as u64) as usize;
        match self.rng.below(100) {
            0..=1 if self.vms.len() < MAX_VMS => self.create_vm(),
            0..=2 => self.destroy_vm(k),
            3..=9 => self.create_vcpu(k),
            10..=29 => self.set_apic_group_random(k),
            30..=39 => self.set_apic_group_valid(k),
            40..=42 => self.apic_group_bad_pointer(k),
            43..=49 => self.get_apic_group(k),
            50..=61 => self.signal_msi(k),
            62..=69 => self.set_gsi_routing(k),
            70..=73 => self.irq_line(k),
            74..=81 => self.lapic(k),
            82..=85 => self.set_apic_mode(k),
            86..=92 => self.start_vcpus(k),
            93..=95 => self.stop_batch(k),
            _ => self.check_guests(k),
        }
    }

    fn create_vm(&mut self) -> Result<()> {
        let irqchip = !self.rng.one_in(6);
        self.stats.count(Call::CreateVm);
        let vm = TestVm::new(VmOptions {
            irqchip,
            ..Default::default()
        })?;
        let groups = vtlkit_uapi::apic_groups_supported(&vm.kvm);
        let serial = self.next_serial;
        self.next_serial += 1;
        self.stats.vms.fetch_add(1, Ordering::Relaxed);
        // x2APIC API: sometimes 32-bit IDs, sometimes without the broadcast quirk.
        let mut x2apic_format = false;
        if self.rng.one_in(2) {
            let mut flags = 0;
            if self.rng.one_in(2) {
                flags |= KVM_X2APIC_API_USE_32BIT_IDS;
            }
            if self.rng.one_in(2) {
                flags |= KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK;
            }
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_X2APIC_API,
                ..Default::default()
            };
            cap.args[0] = flags.into();
            self.stats.count(Call::EnableCap);
            vm.fd
                .enable_cap(&cap)
                .map_err(|e| anyhow!("KVM_ENABLE_CAP(X2APIC_API, {flags:#x}): {e}"))?;
            x2apic_format = flags & KVM_X2APIC_API_USE_32BIT_IDS != 0;
        }
        let mut max_vcpu_ids = 4096;
        if self.rng.one_in(3) {
            let v = self.rng.pick(&[8u32, 16, 64, 255, 256, 1024]).unwrap_or(64);
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_MAX_VCPU_ID,
                ..Default::default()
            };
            cap.args[0] = v.into();
            self.stats.count(Call::EnableCap);
            vm.fd
                .enable_cap(&cap)
                .map_err(|e| anyhow!("KVM_ENABLE_CAP(MAX_VCPU_ID, {v}): {e}"))?;
            max_vcpu_ids = v;
        }
        let code = fuzz_guest_code();
        check!(
            code.len() as u64 <= FUZZ_TABLES - FUZZ_CODE,
            "fuzz guest code too big"
        );
        vm.mem.write(FUZZ_CODE, code)?;
        let mem = Arc::clone(&vm.mem);
        self.note(format!(
            "create VM {serial}: irqchip={irqchip} x2apic_format={x2apic_format} max_vcpu_ids={max_vcpu_ids}"
        ));
        let mut fvm = FuzzVm {
            serial,
            vm,
            mem,
            irqchip,
            x2apic_format,
            max_vcpu_ids,
            groups,
            vcpus: Vec::new(),
            batches: Vec::new(),
            injector: None,
        };
        if irqchip {
            fvm.injector = Some(self.spawn_injector(&fvm)?);
        }
        self.vms.push(fvm);
        Ok(())
    }

    fn spawn_injector(&mut self, fvm: &FuzzVm) -> Result<Injector> {
        // SAFETY: dup() of a VM fd we own; the result is checked and then owned by the VmFd.
        let fd = unsafe { libc::dup(fvm.vm.fd.as_raw_fd()) };
        if fd < 0 {
            bail!("dup(VM fd): {}", std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly duplicated, owned VM fd; nothing else closes it.
        let vmfd = unsafe { fvm.vm.kvm.create_vmfd_from_rawfd(fd) }
            .map_err(|e| anyhow!("VmFd from dup'd fd: {e}"))?;
        let mut irqfds = Vec::new();
        for _ in 0..2 {
            let gsi = GSI_BASE + self.rng.below_u32(GSI_SPAN);
            let efd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| anyhow!("eventfd: {e}"))?;
            self.stats.count(Call::Irqfd);
            vmfd.register_irqfd(&efd, gsi)
                .map_err(|e| anyhow!("KVM_IRQFD(gsi {gsi}): {e}"))?;
            irqfds.push(efd);
        }
        let ids: Vec<u32> = (0..8).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = InjectorCtx {
            vmfd,
            irqfds,
            ids,
            rng: self.rng.fork(),
            stats: Arc::clone(&self.stats),
            stop: Arc::clone(&stop),
            x2apic_format: fvm.x2apic_format,
            groups: fvm.groups,
        };
        let handle = std::thread::Builder::new()
            .name(format!("inject{}", fvm.serial))
            .spawn(move || injector(ctx))
            .context("spawning the injector thread")?;
        Ok(Injector {
            stop,
            handle: Some(handle),
        })
    }

    fn destroy_vm(&mut self, k: usize) -> Result<()> {
        let fvm = self.vms.swap_remove(k);
        let early_close = self.rng.one_in(3);
        self.note(format!(
            "destroy VM {} (close the VM fd before stopping vCPUs: {early_close})",
            fvm.serial
        ));
        teardown(fvm, early_close, &self.stats)
    }

    fn create_vcpu(&mut self, k: usize) -> Result<()> {
        let fvm = &mut self.vms[k];
        if fvm.vcpus.len() >= MAX_VCPUS {
            return Ok(());
        }
        let limit = u64::from(fvm.max_vcpu_ids.min(24));
        let used: Vec<u64> = fvm.vcpus.iter().map(|v| v.id).collect();
        let free: Vec<u64> = (0..limit).filter(|id| !used.contains(id)).collect();
        let Some(id) = self.rng.pick(&free) else {
            return Ok(());
        };
        self.stats.count(Call::CreateVcpu);
        let index = fvm.vm.add_vcpu(id, Entry::ApicMain)?;
        // Start at the fuzz guest instead.
        let fd = fvm.fd(index)?;
        let mut regs = fd.get_regs().map_err(|e| anyhow!("KVM_GET_REGS: {e}"))?;
        regs.rip = FUZZ_CODE;
        fd.set_regs(&regs)
            .map_err(|e| anyhow!("KVM_SET_REGS: {e}"))?;
        let mode = if fvm.irqchip {
            ApicMode::Xapic
        } else {
            ApicMode::Disabled
        };
        fvm.vcpus.push(VcpuModel {
            id,
            assigned: ApicGroup {
                group: 0,
                apic_id: id as u32,
                vtl: 0,
            },
            groups_seen: 1,
            ran: false,
            running: false,
            mode,
            id_reg: ((id as u8) as u32) << 24,
        });
        self.stats.vcpus.fetch_add(1, Ordering::Relaxed);
        let serial = fvm.serial;
        self.note(format!("VM {serial}: create vCPU {id} (index {index})"));
        // A new vCPU must read as never assigned.
        self.check_get(k, index, "a new vCPU")
    }

    /// Pick a vCPU that is not on a thread.
    fn idle_vcpu(&mut self, k: usize) -> Option<usize> {
        let idle: Vec<usize> = (0..self.vms[k].vcpus.len())
            .filter(|&i| !self.vms[k].vcpus[i].running)
            .collect();
        self.rng.pick(&idle)
    }

    fn random_apic_id(&mut self, k: usize, index: usize) -> u32 {
        let fvm = &self.vms[k];
        let max = fvm.max_apic_id();
        let ids: Vec<u32> = fvm.vcpus.iter().map(|v| v.assigned.apic_id).collect();
        let own = fvm.vcpus[index].assigned.apic_id;
        let choices = [
            self.rng.below_u32(max.min(16) + 1),
            self.rng.below_u32(max.min(16) + 1),
            own,
            max,
            max.wrapping_add(1),
            0xfe,
            0xff,
            0x100,
            fvm.max_vcpu_ids,
            u32::MAX,
            self.rng.next_u32(),
        ];
        match self.rng.below(4) {
            0 => self.rng.pick(&ids).unwrap_or(0),
            _ => self.rng.pick(&choices).unwrap_or(0),
        }
    }

    fn random_group(&mut self, groups: u32) -> u32 {
        match self.rng.below(10) {
            0 => groups,
            1 => u32::MAX,
            2 => groups + self.rng.below_u32(100),
            3 => 0,
            _ => self.rng.below_u32(groups.max(1)),
        }
    }

    fn set_apic_group_random(&mut self, k: usize) -> Result<()> {
        let Some(index) = self.idle_vcpu(k) else {
            return Ok(());
        };
        let groups = self.vms[k].groups;
        let mut ag = raw::kvm_apic_group {
            group: self.random_group(groups),
            apic_id: self.random_apic_id(k, index),
            vtl: match self.rng.below(8) {
                0 => 16,
                1 => 0xff,
                2 => 15,
                _ => self.rng.below(16) as u8,
            },
            ..Default::default()
        };
        match self.rng.below(12) {
            0 => ag.flags = 1 << self.rng.below(32),
            1 => ag.pad[self.rng.below(3) as usize] = 1 << self.rng.below(8),
            2 => ag.reserved[self.rng.below(4) as usize] = 1 << self.rng.below(64),
            _ => {}
        }
        self.do_set_apic_group(k, index, ag)
    }

    /// A valid, unique assignment on a never-run vCPU: must succeed.
    fn set_apic_group_valid(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !fvm.irqchip {
            return self.set_apic_group_random(k);
        }
        let fresh: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&i| !fvm.vcpus[i].ran && !fvm.vcpus[i].running)
            .collect();
        let Some(index) = self.rng.pick(&fresh) else {
            return Ok(());
        };
        let groups = fvm.groups;
        let max = fvm.max_apic_id();
        // A few tries to find a free (group, ID); small numbers so IDs collide and alias often.
        for _ in 0..8 {
            let group = if self.rng.one_in(3) {
                0
            } else {
                self.rng.below_u32(groups.clamp(1, 4))
            };
            let apic_id = if self.rng.one_in(8) {
                max
            } else {
                self.rng.below_u32(max.min(7) + 1)
            };
            if self.vms[k].taken(group, apic_id, index) {
                continue;
            }
            let ag: raw::kvm_apic_group = ApicGroup {
                group,
                apic_id,
                vtl: self.rng.below(16) as u8,
            }
            .into();
            return self.do_set_apic_group(k, index, ag);
        }
        Ok(())
    }

    /// KVM_SET_APIC_GROUP with `ag`; checks the result and the state after it.
    fn do_set_apic_group(&mut self, k: usize, index: usize, ag: raw::kvm_apic_group) -> Result<()> {
        let fvm = &self.vms[k];
        let v = &fvm.vcpus[index];
        let mut expected = Vec::new();
        if ag.flags != 0
            || ag.pad != [0; 3]
            || ag.reserved != [0; 4]
            || ag.group >= fvm.groups
            || u32::from(ag.vtl) > u32::from(vtlkit_uapi::MAX_VTL)
            || ag.apic_id > fvm.max_apic_id()
        {
            expected.push(libc::EINVAL);
        }
        if !fvm.irqchip {
            expected.push(libc::ENXIO);
        }
        if v.ran {
            expected.push(libc::EBUSY);
        }
        if fvm.taken(ag.group, ag.apic_id, index) {
            expected.push(libc::EEXIST);
        }
        let what = format!(
            "VM {} vCPU {}: KVM_SET_APIC_GROUP(group {}, apic_id {:#x}, vtl {}, flags {:#x}, pad {:?}, reserved {:x?}) [max_apic_id {:#x}, ran {}]",
            fvm.serial, v.id, ag.group, ag.apic_id, ag.vtl, ag.flags, ag.pad, ag.reserved, fvm.max_apic_id(), v.ran
        );
        self.stats.count(Call::SetApicGroup);
        let r = fvm.fd(index)?.set_apic_group_raw(&ag);
        let got = r.as_ref().err().map(|e| e.errno());
        self.note(format!("{what} -> {}", got.map_or("ok".into(), errname)));
        match got {
            None if expected.is_empty() => {
                let fvm = &mut self.vms[k];
                let v = &mut fvm.vcpus[index];
                v.assigned = ApicGroup::from(ag);
                v.groups_seen |= 1 << (ag.group & 31);
                if v.mode != ApicMode::X2apic {
                    // The xAPIC ID register is reset to the new ID.
                    v.id_reg = u32::from(ag.apic_id as u8) << 24;
                }
            }
            None => bail!("{what}: succeeded, expected {}", errset(&expected)),
            Some(e) if expected.contains(&e) => {}
            Some(e) => bail!("{what}: got {}, expected {}", errname(e), errset(&expected)),
        }
        self.check_get(k, index, "after KVM_SET_APIC_GROUP")?;
        if self.rng.one_in(3) {
            self.check_lapic_id(k, index)?;
        }
        Ok(())
    }

    /// KVM_GET_APIC_GROUP must match the model (and zero flags, pad and reserved).
    fn check_get(&mut self, k: usize, index: usize, when: &str) -> Result<()> {
        let fvm = &self.vms[k];
        let v = &fvm.vcpus[index];
        self.stats.count(Call::GetApicGroup);
        match fvm.fd(index)?.get_apic_group_raw() {
            Ok(g) => {
                check!(
                    fvm.irqchip,
                    "VM {} vCPU {}: KVM_GET_APIC_GROUP without an in-kernel LAPIC succeeded ({g:?}), expected ENXIO",
                    fvm.serial,
                    v.id
                );
                check!(
                    ApicGroup::from(g) == v.assigned
                        && g.flags == 0
                        && g.pad == [0; 3]
                        && g.reserved == [0; 4],
                    "VM {} vCPU {}: KVM_GET_APIC_GROUP {when} returned {g:?}, expected {:?} with zero flags, pad and reserved",
                    fvm.serial,
                    v.id,
                    v.assigned
                );
            }
            Err(e) if e.errno() == libc::ENXIO && !fvm.irqchip => {}
            Err(e) => bail!(
                "VM {} vCPU {}: KVM_GET_APIC_GROUP {when}: {} (irqchip {})",
                fvm.serial,
                v.id,
                errname(e.errno()),
                fvm.irqchip
            ),
        }
        Ok(())
    }

    fn get_apic_group(&mut self, k: usize) -> Result<()> {
        if let Some(index) = self.idle_vcpu(k) {
            self.check_get(k, index, "(random check)")?;
        }
        Ok(())
    }

    /// SET and GET with pointers the kernel cannot access.
    fn apic_group_bad_pointer(&mut self, k: usize) -> Result<()> {
        let Some(index) = self.idle_vcpu(k) else {
            return Ok(());
        };
        let size = std::mem::size_of::<raw::kvm_apic_group>();
        // SAFETY: pointer arithmetic inside (or one page past) our own two-page guard mapping;
        // the addresses are only handed to the kernel, which checks them.
        let straddle = unsafe { self.guard.add(layout::PAGE as usize - size / 2) };
        // SAFETY: as above: the start of the inaccessible second page.
        let none = unsafe { self.guard.add(layout::PAGE as usize) };
        let ptrs: [(&str, *mut u8); 5] = [
            ("NULL", std::ptr::null_mut()),
            ("0x10", 0x10 as *mut u8),
            ("a kernel address", 0xffff_8000_0000_0000u64 as *mut u8),
            ("a PROT_NONE page", none),
            ("a struct straddling into a PROT_NONE page", straddle),
        ];
        let (pname, ptr) = ptrs[self.rng.below(ptrs.len() as u64) as usize];
        let fvm = &self.vms[k];
        let v = &fvm.vcpus[index];
        let fd = fvm.fd(index)?;
        let set = self.rng.one_in(2);
        let r = if set {
            self.stats.count(Call::SetApicGroup);
            // SAFETY: the kernel validates the user pointer and fails with EFAULT; no Rust
            // object lives at these addresses (the straddling one is inside our scratch page).
            unsafe {
                ioctl_with_ptr(
                    fd,
                    libc::c_ulong::from(raw::VTLKIT_KVM_SET_APIC_GROUP),
                    ptr.cast_const(),
                )
            }
        } else {
            self.stats.count(Call::GetApicGroup);
            // SAFETY: as above; a partial write can only land in our scratch guard page.
            unsafe {
                ioctl_with_mut_ptr(fd, libc::c_ulong::from(raw::VTLKIT_KVM_GET_APIC_GROUP), ptr)
            }
        };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let op = if set {
            "KVM_SET_APIC_GROUP"
        } else {
            "KVM_GET_APIC_GROUP"
        };
        let what = format!("VM {} vCPU {}: {op} with {pname}", fvm.serial, v.id);
        let mut expected = vec![libc::EFAULT];
        if !fvm.irqchip && !set {
            expected.push(libc::ENXIO);
        }
        self.note(format!(
            "{what} -> {}",
            if r == 0 { "ok".into() } else { errname(errno) }
        ));
        check!(r != 0, "{what}: succeeded, expected {}", errset(&expected));
        check!(
            expected.contains(&errno),
            "{what}: got {}, expected {}",
            errname(errno),
            errset(&expected)
        );
        self.check_get(k, index, &format!("after {op} with {pname}"))
    }

    /// IDs worth aiming at in VM k.
    fn ids(&self, k: usize) -> Vec<u32> {
        self.vms[k]
            .vcpus
            .iter()
            .map(|v| v.assigned.apic_id)
            .collect()
    }

    fn signal_msi(&mut self, k: usize) -> Result<()> {
        let ids = self.ids(k);
        let fvm = &self.vms[k];
        let (msi, mut class, unicast) =
            random_msi(&mut self.rng, &ids, fvm.x2apic_format, fvm.groups);
        if !fvm.irqchip {
            class = MsiClass::Invalid;
        }
        let (members, matching) = match class {
            MsiClass::Group(g) => (
                Some(fvm.members(g)),
                unicast.map(|d| {
                    fvm.vcpus
                        .iter()
                        .filter(|v| v.assigned.group == g && v.may_match(d))
                        .count()
                }),
            ),
            _ => (None, None),
        };
        let what = format!(
            "VM {}: KVM_SIGNAL_MSI(addr {:#x}:{:#x}, data {:#x}, flags {:#x}, devid {:#x}) [{class:?}, irqchip {}]",
            fvm.serial, msi.address_hi, msi.address_lo, msi.data, msi.flags, msi.devid, fvm.irqchip
        );
        self.stats.count(Call::SignalMsi);
        let r = fvm.vm.fd.signal_msi(msi).map_err(|e| errno_of(&e));
        self.note(format!("{what} -> {}", show(r)));
        check_msi_result(&what, r, class, members, matching)
    }

    fn set_gsi_routing(&mut self, k: usize) -> Result<()> {
        let ids = self.ids(k);
        let fvm = &self.vms[k];
        let n = self.rng.below(9) as usize;
        let mut entries = Vec::new();
        let mut invalid = !fvm.irqchip;
        let mut devid_only = false;
        let mut desc = Vec::new();
        for _ in 0..n {
            let gsi = match self.rng.below(20) {
                0 => MAX_IRQ_ROUTES,
                1 => u32::MAX,
                _ => GSI_BASE + self.rng.below_u32(GSI_SPAN / 2),
            };
            if gsi >= MAX_IRQ_ROUTES {
                invalid = true;
            }
            if self.rng.one_in(5) {
                // An IOAPIC pin (masked, so it delivers nothing).
                let pin = if self.rng.one_in(5) {
                    24 + self.rng.below_u32(8)
                } else {
                    16 + self.rng.below_u32(8)
                };
                let flags = if self.rng.one_in(10) { 1 } else { 0 };
                if pin >= 24 || flags != 0 {
                    invalid = true;
                }
                let mut e = kvm_irq_routing_entry {
                    gsi,
                    type_: KVM_IRQ_ROUTING_IRQCHIP,
                    flags,
                    ..Default::default()
                };
                e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
                e.u.irqchip.pin = pin;
                desc.push(format!("{gsi}:ioapic pin {pin} flags {flags:#x}"));
                entries.push(e);
                continue;
            }
            let (msi, class, _) = random_msi(&mut self.rng, &ids, fvm.x2apic_format, fvm.groups);
            match class {
                MsiClass::Invalid => invalid = true,
                MsiClass::DevidOnly => devid_only = true,
                MsiClass::Group(_) => {}
            }
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                flags: msi.flags,
                ..Default::default()
            };
            e.u.msi.address_lo = msi.address_lo;
            e.u.msi.address_hi = msi.address_hi;
            e.u.msi.data = msi.data;
            e.u.msi.__bindgen_anon_1.devid = msi.devid;
            desc.push(format!(
                "{gsi}:msi {:#x}:{:#x} data {:#x} flags {:#x} devid {:#x}",
                msi.address_hi, msi.address_lo, msi.data, msi.flags, msi.devid
            ));
            entries.push(e);
        }
        // A GSI may appear twice only for two different irqchips.
        for (i, a) in entries.iter().enumerate() {
            for b in &entries[..i] {
                if a.gsi == b.gsi {
                    invalid = true;
                }
            }
        }
        let bad_type = self.rng.one_in(40);
        if bad_type {
            entries.push(kvm_irq_routing_entry {
                gsi: GSI_BASE,
                type_: 0x77,
                ..Default::default()
            });
            desc.push("bad type 0x77".into());
            invalid = true;
        }
        let mut routing =
            KvmIrqRouting::from_entries(&entries).map_err(|e| anyhow!("KvmIrqRouting: {e:?}"))?;
        let table_flags = if self.rng.one_in(30) { 1 } else { 0 };
        if table_flags != 0 {
            // SAFETY: only the header's flags field is changed; the entry count and the
            // entries themselves, which the wrapper's invariants are about, stay as they are.
            unsafe { routing.as_mut_fam_struct() }.flags = table_flags;
            invalid = true;
        }
        let what = format!(
            "VM {}: KVM_SET_GSI_ROUTING(flags {table_flags}, [{}]) [irqchip {}]",
            fvm.serial,
            desc.join(", "),
            fvm.irqchip
        );
        self.stats.count(Call::SetGsiRouting);
        let r = fvm
            .vm
            .fd
            .set_gsi_routing(&routing)
            .map_err(|e| errno_of(&e));
        self.note(format!("{what} -> {}", show(r.map(|()| 0))));
        match r {
            Ok(()) if !invalid => Ok(()),
            Ok(()) => bail!("{what}: succeeded, expected EINVAL"),
            Err(libc::EINVAL) if invalid || devid_only => Ok(()),
            Err(e) => bail!(
                "{what}: got {}, expected {}",
                errname(e),
                if invalid { "EINVAL" } else { "success" }
            ),
        }
    }

    fn irq_line(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !fvm.irqchip {
            return Ok(());
        }
        let gsi = GSI_BASE + self.rng.below_u32(GSI_SPAN);
        for level in [true, false] {
            self.stats.count(Call::IrqLine);
            fvm.vm
                .fd
                .set_irq_line(gsi, level)
                .map_err(|e| anyhow!("VM {}: KVM_IRQ_LINE({gsi}, {level}): {e}", fvm.serial))?;
        }
        Ok(())
    }

    /// The APIC ID register KVM_GET_LAPIC must report.
    fn expected_lapic_id(fvm: &FuzzVm, v: &VcpuModel) -> u32 {
        match v.mode {
            ApicMode::X2apic if fvm.x2apic_format => v.assigned.apic_id,
            ApicMode::X2apic => v.assigned.apic_id << 24,
            _ => v.id_reg,
        }
    }

    fn check_lapic_id(&mut self, k: usize, index: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !fvm.irqchip {
            return Ok(());
        }
        let v = &fvm.vcpus[index];
        self.stats.count(Call::GetLapic);
        let lapic = fvm
            .fd(index)?
            .get_lapic()
            .map_err(|e| anyhow!("VM {} vCPU {}: KVM_GET_LAPIC: {e}", fvm.serial, v.id))?;
        let id = lapic_id(&lapic);
        let want = Self::expected_lapic_id(fvm, v);
        check!(
            id == want,
            "VM {} vCPU {}: KVM_GET_LAPIC ID register {id:#x}, expected {want:#x} ({:?}, mode {:?}, x2apic_format {})",
            fvm.serial,
            v.id,
            v.assigned,
            v.mode,
            fvm.x2apic_format
        );
        Ok(())
    }

    /// KVM_GET_LAPIC, then KVM_SET_LAPIC of the same image or with another ID register.
    fn lapic(&mut self, k: usize) -> Result<()> {
        if !self.vms[k].irqchip {
            return Ok(());
        }
        let Some(index) = self.idle_vcpu(k) else {
            return Ok(());
        };
        self.check_lapic_id(k, index)?;
        let fvm = &self.vms[k];
        let v = &fvm.vcpus[index];
        let fd = fvm.fd(index)?;
        self.stats.count(Call::GetLapic);
        let mut lapic = fd
            .get_lapic()
            .map_err(|e| anyhow!("VM {} vCPU {}: KVM_GET_LAPIC: {e}", fvm.serial, v.id))?;
        let old = lapic_id(&lapic);
        let new = match self.rng.below(5) {
            0 | 1 => old,
            2 => v.assigned.apic_id,
            3 => u32::from(self.rng.below(0x10) as u8) << 24,
            _ => self.rng.next_u32(),
        };
        set_lapic_id(&mut lapic, new);
        let x2 = v.mode == ApicMode::X2apic;
        let must_fail = x2 && fvm.x2apic_format && new != v.assigned.apic_id;
        let what = format!(
            "VM {} vCPU {}: KVM_SET_LAPIC with ID register {new:#x} (was {old:#x}, {:?}, mode {:?}, x2apic_format {})",
            fvm.serial, v.id, v.assigned, v.mode, fvm.x2apic_format
        );
        self.stats.count(Call::SetLapic);
        let r = fd.set_lapic(&lapic).map_err(|e| errno_of(&e));
        self.note(format!("{what} -> {}", show(r.map(|()| 0))));
        match r {
            Ok(()) if !must_fail => {
                if !x2 {
                    self.vms[k].vcpus[index].id_reg = new;
                }
            }
            Ok(()) => bail!(
                "{what}: succeeded, expected EINVAL (x2APIC ID differs from the assigned APIC ID)"
            ),
            Err(libc::EINVAL) if must_fail => {}
            Err(e) => bail!(
                "{what}: got {}, expected {}",
                errname(e),
                if must_fail { "EINVAL" } else { "success" }
            ),
        }
        self.check_lapic_id(k, index)?;
        self.check_get(k, index, "after KVM_SET_LAPIC")
    }

    /// Switch a never-run vCPU's APIC between disabled, xAPIC and x2APIC (IA32_APIC_BASE).
    fn set_apic_mode(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !fvm.irqchip {
            return Ok(());
        }
        let fresh: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&i| !fvm.vcpus[i].ran && !fvm.vcpus[i].running)
            .collect();
        let Some(index) = self.rng.pick(&fresh) else {
            return Ok(());
        };
        let mode = match self.rng.below(5) {
            0 => ApicMode::Disabled,
            1 | 2 => ApicMode::Xapic,
            _ => ApicMode::X2apic,
        };
        let fd = fvm.fd(index)?;
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_APIC_BASE,
            ..Default::default()
        }])
        .map_err(|e| anyhow!("Msrs: {e:?}"))?;
        fd.get_msrs(&mut msrs)
            .map_err(|e| anyhow!("KVM_GET_MSRS(APIC_BASE): {e}"))?;
        let bsp = msrs.as_slice()[0].data & APIC_BASE_BSP;
        let value = layout::XAPIC
            | bsp
            | match mode {
                ApicMode::Disabled => 0,
                ApicMode::Xapic => APIC_BASE_EN,
                ApicMode::X2apic => APIC_BASE_EN | APIC_BASE_EXTD,
            };
        msrs.as_mut_slice()[0].data = value;
        let v = &fvm.vcpus[index];
        let what = format!(
            "VM {} vCPU {}: KVM_SET_MSRS(APIC_BASE = {value:#x}) {:?} -> {mode:?}",
            fvm.serial, v.id, v.mode
        );
        self.stats.count(Call::SetMsrs);
        let n = fd.set_msrs(&msrs).map_err(|e| anyhow!("{what}: {e}"))?;
        self.note(what);
        check!(
            n == 1,
            "KVM_SET_MSRS(APIC_BASE = {value:#x}) set {n} MSRs, expected 1"
        );
        let v = &mut self.vms[k].vcpus[index];
        let byte_id = u32::from(v.assigned.apic_id as u8) << 24;
        match (v.mode, mode) {
            (a, b) if a == b => {}
            (_, ApicMode::Xapic) => v.id_reg = byte_id,
            (ApicMode::X2apic, ApicMode::Disabled) => v.id_reg = v.assigned.apic_id,
            _ => {}
        }
        v.mode = mode;
        self.check_lapic_id(k, index)
    }

    /// Start every vCPU of VM k that is not on a thread (new ones run the IPI loop; stopped
    /// ones resume it), and check the new ones' view of their APIC ID.
    fn start_vcpus(&mut self, k: usize) -> Result<()> {
        let total_running: usize = self.vms.iter().map(FuzzVm::running_count).sum();
        let fvm = &self.vms[k];
        if !fvm.irqchip {
            return Ok(());
        }
        let idle: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&i| !fvm.vcpus[i].running)
            .collect();
        if idle.is_empty() || total_running + idle.len() > MAX_RUNNING {
            return Ok(());
        }
        let mut fresh = Vec::new();
        for &i in &idle {
            if self.vms[k].vcpus[i].ran {
                continue;
            }
            let x2 = match self.vms[k].vcpus[i].mode {
                ApicMode::X2apic => true,
                ApicMode::Disabled => false,
                ApicMode::Xapic => self.rng.one_in(2),
            };
            self.prepare_guest(k, i, x2)?;
            fresh.push((i, x2));
        }
        let fvm = &mut self.vms[k];
        for &i in &idle {
            self.stats.count(Call::Run);
            fvm.vcpus[i].running = true;
        }
        let running = fvm.vm.start()?;
        let serial = fvm.serial;
        let batch = Batch {
            running,
            indexes: idle.clone(),
        };
        fvm.batches.push(batch);
        self.note(format!("VM {serial}: start vCPU indexes {idle:?}"));
        let fvm = &mut self.vms[k];
        let Some(batch) = fvm.batches.last() else {
            return Ok(());
        };
        for (i, x2) in fresh {
            let v = &fvm.vcpus[i];
            let [id_read, _, _, _] = batch
                .running
                .wait_sync(i, ucall::STAGE_APIC_READY, crate::vm::DEFAULT_TIMEOUT)
                .with_context(|| {
                    format!(
                        "VM {serial} vCPU {}: waiting for its guest to enable the APIC",
                        v.id
                    )
                })?;
            let (mode, id_reg) = if x2 {
                (ApicMode::X2apic, v.id_reg)
            } else if v.mode == ApicMode::Disabled {
                (ApicMode::Xapic, u32::from(v.assigned.apic_id as u8) << 24)
            } else {
                (ApicMode::Xapic, v.id_reg)
            };
            let want = if x2 {
                u64::from(v.assigned.apic_id)
            } else {
                u64::from(id_reg >> 24)
            };
            check!(
                id_read == want,
                "VM {serial} vCPU {}: the guest read APIC ID {id_read:#x} ({}), expected {want:#x} ({:?})",
                v.id,
                if x2 { "x2APIC MSR 0x802" } else { "xAPIC ID register" },
                v.assigned
            );
            let v = &mut fvm.vcpus[i];
            v.ran = true;
            v.mode = mode;
            v.id_reg = id_reg;
        }
        Ok(())
    }

    /// Write the send table and inputs of never-run vCPU `i` of VM k.
    fn prepare_guest(&mut self, k: usize, i: usize, x2: bool) -> Result<()> {
        let fvm = &self.vms[k];
        let me = &fvm.vcpus[i];
        let group = me.assigned.group;
        let vector = u32::from(ipi_vector(group));
        let peers: Vec<u32> = fvm
            .vcpus
            .iter()
            .filter(|v| v.assigned.group == group)
            .map(|v| v.assigned.apic_id)
            .collect();
        let table = FUZZ_TABLES + i as u64 * layout::PAGE;
        for e in 0..TABLE_ENTRIES {
            let dest = match self.rng.below(4) {
                0 => self.rng.below_u32(8),
                _ => self.rng.pick(&peers).unwrap_or(0),
            };
            let logical_dest = if x2 {
                ((dest >> 4) << 16) | (1 << (dest & 15))
            } else {
                1 << (dest & 7)
            };
            let fixed = vector | LEVEL_ASSERT;
            let words: [u64; 5] = match self.rng.below(10) {
                0..=3 => [prog::ICR, dest.into(), fixed.into(), 0, 0],
                4 => [prog::ICR, 0, (fixed | SH_SELF).into(), 0, 0],
                5 => [
                    prog::ICR,
                    0,
                    (fixed | self.rng.pick(&[SH_ALL, SH_OTHERS]).unwrap_or(SH_ALL)).into(),
                    0,
                    0,
                ],
                6 => [prog::ICR, u32::MAX.into(), fixed.into(), 0, 0],
                7 => [
                    prog::ICR,
                    logical_dest.into(),
                    (fixed | DEST_LOGICAL | if self.rng.one_in(2) { DM_LOWEST } else { 0 }).into(),
                    0,
                    0,
                ],
                _ => {
                    let min = dest.saturating_sub(self.rng.below_u32(3));
                    let bitmap = 1u64 << (dest - min);
                    [prog::PV_IPI, bitmap, 0, min.into(), vector.into()]
                }
            };
            for (w, val) in words.iter().enumerate() {
                fvm.mem
                    .write_u64(table + e * prog::ENTRY_SIZE + 8 * w as u64, *val)?;
            }
        }
        let seed = self.rng.next_u64() | 1;
        let vm = &fvm.vm;
        vm.set_pcpu(
            i,
            pcpu::APIC_MODE,
            if x2 {
                pcpu::APIC_MODE_X2APIC
            } else {
                pcpu::APIC_MODE_XAPIC
            },
        )?;
        vm.set_pcpu(i, pcpu::PROGRAM, table)?;
        vm.set_pcpu(
            i,
            arg::APIC_ENABLE,
            helper_gpa(&raw const vtlkit_guest_apic_enable),
        )?;
        vm.set_pcpu(
            i,
            arg::SEND_ICR,
            helper_gpa(&raw const vtlkit_guest_apic_send_icr),
        )?;
        vm.set_pcpu(
            i,
            arg::PV_IPI,
            helper_gpa(&raw const vtlkit_guest_pv_send_ipi),
        )?;
        vm.set_pcpu(i, arg::SEED, seed)?;
        vm.set_pcpu(i, arg::MASK, TABLE_ENTRIES - 1)?;
        vm.set_pcpu(i, arg::SENT, 0)?;
        Ok(())
    }

    fn stop_batch(&mut self, k: usize) -> Result<()> {
        let fvm = &mut self.vms[k];
        if fvm.batches.is_empty() {
            return Ok(());
        }
        let b = self.rng.below(fvm.batches.len() as u64) as usize;
        let batch = fvm.batches.swap_remove(b);
        let serial = fvm.serial;
        batch
            .running
            .check_no_pending()
            .with_context(|| format!("VM {serial}: a guest reported"))?;
        let vcpus = batch.running.stop()?;
        for v in vcpus {
            let i = v.index;
            fvm.vcpus[i].running = false;
            if let Some(slot) = fvm.vm.vcpus.get_mut(i) {
                *slot = Some(v);
            }
        }
        self.note(format!(
            "VM {serial}: stop vCPU indexes {:?}",
            batch.indexes
        ));
        // Stopped vCPUs have run: their group is fixed now.
        for i in batch.indexes {
            self.check_get(k, i, "after running")?;
            self.check_lapic_id(k, i)?;
            let fvm = &self.vms[k];
            check_vectors(fvm.serial, &fvm.mem, &fvm.vcpus[i], i, None)?;
        }
        Ok(())
    }

    fn check_guests(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        for b in &fvm.batches {
            b.running
                .check_no_pending()
                .with_context(|| format!("VM {}: a guest reported", fvm.serial))?;
        }
        for (i, v) in fvm.vcpus.iter().enumerate() {
            check_vectors(fvm.serial, &fvm.mem, v, i, None)?;
        }
        Ok(())
    }
}

/// What the injector thread owns.
struct InjectorCtx {
    vmfd: VmFd,
    irqfds: Vec<EventFd>,
    ids: Vec<u32>,
    rng: Rng,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    x2apic_format: bool,
    groups: u32,
}

/// KVM_SIGNAL_MSI (errno classes only: the model is the main thread's), irqfd writes and
/// KVM_IRQ_LINE pulses, until told to stop.
fn injector(mut c: InjectorCtx) -> Result<()> {
    let mut n = 0u64;
    while !c.stop.load(Ordering::Relaxed) {
        match c.rng.below(4) {
            0 | 1 => {
                let (msi, class, _) = random_msi(&mut c.rng, &c.ids, c.x2apic_format, c.groups);
                c.stats.count(Call::SignalMsi);
                let r = c.vmfd.signal_msi(msi).map_err(|e| errno_of(&e));
                let what = format!(
                    "injector: KVM_SIGNAL_MSI(addr {:#x}:{:#x}, data {:#x}, flags {:#x}, devid {:#x}) [{class:?}]",
                    msi.address_hi, msi.address_lo, msi.data, msi.flags, msi.devid
                );
                check_msi_result(&what, r, class, None, None)?;
            }
            2 => {
                if let Some(efd) = c.rng.pick(&[0usize, 1]).and_then(|i| c.irqfds.get(i)) {
                    efd.write(1)
                        .map_err(|e| anyhow!("injector: irqfd write: {e}"))?;
                    c.stats.irqfd_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                let gsi = GSI_BASE + c.rng.below_u32(GSI_SPAN);
                for level in [true, false] {
                    c.stats.count(Call::IrqLine);
                    c.vmfd
                        .set_irq_line(gsi, level)
                        .map_err(|e| anyhow!("injector: KVM_IRQ_LINE({gsi}, {level}): {e}"))?;
                }
            }
        }
        n += 1;
        // Leave CPU time to the vCPU threads and the main thread (TCG has two CPUs).
        if n % 8 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// The APIC ID register of a KVM_GET_LAPIC image.
fn lapic_id(l: &kvm_bindings::kvm_lapic_state) -> u32 {
    let b: Vec<u8> = l.regs[0x20..0x24].iter().map(|&c| c as u8).collect();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn set_lapic_id(l: &mut kvm_bindings::kvm_lapic_state, id: u32) {
    for (i, b) in id.to_le_bytes().iter().enumerate() {
        l.regs[0x20 + i] = *b as libc::c_char;
    }
}

/// Every interrupt a vCPU handled (and, with `lapic`, holds pending or in service) must carry
/// a group it was in; no other vector may appear at all.
fn check_vectors(
    serial: u64,
    mem: &GuestMem,
    v: &VcpuModel,
    i: usize,
    lapic: Option<&kvm_bindings::kvm_lapic_state>,
) -> Result<()> {
    let base = TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS;
    let mut bad = String::new();
    for vector in 0x20..=0xfeu8 {
        let handled = mem.read_u32(base + 4 * u64::from(vector))?;
        let (irr, isr) = match lapic {
            Some(l) => (
                lapic_bit(l, lapic_reg::IRR, vector),
                lapic_bit(l, lapic_reg::ISR, vector),
            ),
            None => (false, false),
        };
        if handled == 0 && !irr && !isr {
            continue;
        }
        let allowed = match vector {
            0x40..=0x4f | 0x60..=0x6f => v.groups_seen & (1 << (vector & 0xf)) != 0,
            _ => false,
        };
        if !allowed {
            let _ = write!(
                bad,
                " vector {vector:#x} (handled {handled}, IRR {irr}, ISR {isr});"
            );
        }
    }
    check!(
        bad.is_empty(),
        "VM {} vCPU {} ({:?}, in groups {:#x} over its life) got interrupts of another group:{bad} (IPI vectors are 0x40 + the sender's group, MSI vectors 0x60 + the target group)",
        serial,
        v.id,
        v.assigned,
        v.groups_seen
    );
    Ok(())
}

/// Tear a VM down: stop its injector, check the guests, stop the vCPUs (or first close the VM
/// fd while they still run), and check every vCPU's vectors, pending ones included.
fn teardown(mut fvm: FuzzVm, early_close: bool, stats: &Stats) -> Result<()> {
    let serial = fvm.serial;
    if let Some(mut inj) = fvm.injector.take() {
        inj.finish()
            .with_context(|| format!("VM {serial}: injector thread"))?;
    }
    for b in &fvm.batches {
        b.running
            .check_no_pending()
            .with_context(|| format!("VM {serial}: a guest reported"))?;
    }
    // Idle vCPUs: check their pending vectors now.
    for i in 0..fvm.vcpus.len() {
        if fvm.vcpus[i].running || !fvm.irqchip {
            continue;
        }
        stats.count(Call::GetLapic);
        let lapic = fvm
            .fd(i)?
            .get_lapic()
            .map_err(|e| anyhow!("VM {serial}: KVM_GET_LAPIC: {e}"))?;
        check_vectors(serial, &fvm.mem, &fvm.vcpus[i], i, Some(&lapic))?;
    }
    let batches = std::mem::take(&mut fvm.batches);
    let FuzzVm { vm, mem, vcpus, .. } = fvm;
    // Closing the VM fd while vCPUs still run leaves the VM alive until the last vCPU fd goes.
    let vm = if early_close {
        drop(vm);
        None
    } else {
        Some(vm)
    };
    let mut stopped = Vec::new();
    for b in batches {
        stopped.extend(b.running.stop()?);
    }
    for v in &stopped {
        stats.count(Call::GetLapic);
        let lapic =
            v.fd.get_lapic()
                .map_err(|e| anyhow!("VM {serial}: KVM_GET_LAPIC: {e}"))?;
        check_vectors(serial, &mem, &vcpus[v.index], v.index, Some(&lapic))?;
        let page = TestVm::pcpu_gpa(v.index);
        stats
            .guest_sends
            .fetch_add(mem.read_u64(page + arg::SENT)?, Ordering::Relaxed);
        stats
            .guest_irqs
            .fetch_add(mem.read_u64(page + pcpu::IRQ_TOTAL)?, Ordering::Relaxed);
    }
    drop(stopped);
    drop(vm);
    Ok(())
}

fn fuzz_apic_groups() -> TestResult {
    let cfg = config()?;
    {
        let kvm = Kvm::new().map_err(|e| anyhow!("open /dev/kvm: {e}"))?;
        let groups = vtlkit_uapi::apic_groups_supported(&kvm);
        crate::require!(groups >= 2, "KVM_CAP_APIC_GROUPS is {groups}, need 2");
    }
    println!(
        "# fuzz: seed={:#x} seconds={} (reproduce with VTLKIT_FUZZ_SEED={:#x}, or vtlkit.fuzz_seed= on the kernel command line)",
        cfg.seed, cfg.seconds, cfg.seed
    );
    let start = Instant::now();
    let budget = Duration::from_secs(cfg.seconds);
    let mut f = Fuzzer::new(cfg.seed)?;
    let mut result = Ok(());
    while start.elapsed() < budget {
        if let Err(e) = f.step() {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        // Orderly teardown, with the final checks.
        while let Some(fvm) = f.vms.pop() {
            let serial = fvm.serial;
            f.note(format!("final teardown of VM {serial}"));
            if let Err(e) = teardown(fvm, false, &f.stats) {
                result = Err(e);
                break;
            }
        }
    }
    let log: Vec<String> = f.log.iter().cloned().collect();
    let stats = Arc::clone(&f.stats);
    // Joins every thread and closes every fd, also after a failure.
    drop(f);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "# fuzz: seed={:#x} calls={} seconds={secs:.1} vms={} vcpus={} irqfd_writes={} guest_sends={} guest_irqs={}",
        cfg.seed,
        stats.total(),
        stats.vms.load(Ordering::Relaxed),
        stats.vcpus.load(Ordering::Relaxed),
        stats.irqfd_writes.load(Ordering::Relaxed),
        stats.guest_sends.load(Ordering::Relaxed),
        stats.guest_irqs.load(Ordering::Relaxed),
    );
    println!("# fuzz: calls per ioctl: {}", stats.per_call());
    if let Err(e) = result {
        return Err(e.context(format!(
            "fuzz seed {:#x} (rerun with VTLKIT_FUZZ_SEED={:#x}); last operations, oldest first:\n  {}",
            cfg.seed,
            cfg.seed,
            log.join("\n  ")
        )));
    }
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible() {
        let mut a = Rng(42);
        let mut b = Rng(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert!((0..1000).all(|_| a.below(7) < 7));
    }

    #[test]
    fn cmdline_knobs() {
        let c = "console=ttyS0 vtlkit.fuzz_seconds=5 vtlkit.fuzz_seed=0x2a quiet";
        assert_eq!(
            cmdline_value(c, "vtlkit.fuzz_seconds").as_deref(),
            Some("5")
        );
        assert_eq!(
            cmdline_value(c, "vtlkit.fuzz_seed").and_then(|s| parse_u64(&s)),
            Some(42)
        );
        assert_eq!(cmdline_value(c, "vtlkit.fuzz"), None);
    }

    #[test]
    fn msi_classes() {
        let g = raw::KVM_MSI_VALID_APIC_GROUP;
        assert_eq!(classify_msi(0, 0, 0, false, 16), MsiClass::Group(0));
        assert_eq!(classify_msi(g, 3, 0, false, 16), MsiClass::Group(3));
        assert_eq!(classify_msi(g, 16, 0, false, 16), MsiClass::Invalid);
        assert_eq!(
            classify_msi(g | KVM_MSI_VALID_DEVID, 1, 0, false, 16),
            MsiClass::Invalid
        );
        assert_eq!(
            classify_msi(KVM_MSI_VALID_DEVID, 99, 0, false, 16),
            MsiClass::DevidOnly
        );
        assert_eq!(classify_msi(1 << 5, 0, 0, false, 16), MsiClass::Invalid);
        assert_eq!(classify_msi(0, 0, 1, true, 16), MsiClass::Invalid);
        assert_eq!(classify_msi(0, 0, 1, false, 16), MsiClass::Group(0));
    }

    #[test]
    fn vector_check_catches_other_groups() -> Result<()> {
        let mem = GuestMem::new(layout::MEM_SIZE as usize)?;
        let v = VcpuModel {
            id: 0,
            assigned: ApicGroup {
                group: 2,
                apic_id: 0,
                vtl: 1,
            },
            groups_seen: 0b101,
            ran: true,
            running: false,
            mode: ApicMode::X2apic,
            id_reg: 0,
        };
        let count = |vector: u8| TestVm::pcpu_gpa(0) + pcpu::IRQ_COUNTS + 4 * u64::from(vector);
        mem.write(count(ipi_vector(2)), &7u32.to_le_bytes())?;
        mem.write(count(msi_vector(0)), &1u32.to_le_bytes())?;
        check_vectors(0, &mem, &v, 0, None)?;
        mem.write(count(ipi_vector(1)), &1u32.to_le_bytes())?;
        assert!(check_vectors(0, &mem, &v, 0, None).is_err());
        Ok(())
    }

    #[test]
    fn fuzz_guest_blob() {
        let c = fuzz_guest_code();
        assert!(!c.is_empty() && (c.len() as u64) < FUZZ_TABLES - FUZZ_CODE);
    }
}
