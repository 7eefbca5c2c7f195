// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! A seeded, time-bounded randomized tester for everything the series (v2) adds.
//!
//! One thread (the test's own) keeps a model of a few VMs and issues random ioctls against
//! them, checking each result against the documented semantics (Documentation/virt/kvm/api.rst
//! of the patched tree, and the order of checks of `kvm_lapic_set_apic_group()`):
//!
//! * `KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS)`: most VMs with an in-kernel irqchip opt in, some do
//!   not; non-zero arguments (EINVAL), no irqchip (ENXIO), after vCPUs (EBUSY), and a repeat
//!   before any vCPU (success) are all exercised.
//! * `KVM_SET_APIC_GROUP` / `KVM_GET_APIC_GROUP` with random and boundary arguments (group,
//!   APIC ID, VTL, flags, pad, reserved, bad pointers): in an opted-in VM a vCPU starts
//!   unassigned (GET reports `KVM_APIC_GROUP_NONE`, `KVM_RUN` fails with ENOEXEC), is assigned
//!   once (an identical repeat succeeds, also after it ran; other values fail with EBUSY), and
//!   EEXIST guards (group, APIC ID) among assigned vCPUs; in a VM that did not opt in SET fails
//!   with EINVAL and GET reports (0, vcpu_id, 0).
//! * `KVM_GET_LAPIC` / `KVM_SET_LAPIC` and `KVM_SET_MSRS(IA32_APIC_BASE)`: the ID register
//!   follows the assigned APIC ID in xAPIC and x2APIC mode.
//! * `KVM_SIGNAL_MSI` and `KVM_SET_GSI_ROUTING` with and without `KVM_MSI_VALID_APIC_GROUP`
//!   (the `apic_group` field), `KVM_MSI_VALID_DEVID` combined or not, valid and invalid groups;
//!   an MSI that names its group returns the number of vCPUs that took it, never -1. Successful
//!   routing tables replace the model's, and `KVM_IRQ_LINE_STATUS` on a routed GSI must agree
//!   with the route's group.
//! * VMs are created and destroyed in the loop, sometimes while their vCPUs still run.
//! * Series v3's Hyper-V uAPI ([`hv`]): VMs with the Hyper-V CPUID leaves, VP indexes shared by
//!   siblings in different groups, SynICs, `KVM_CAP_HYPERV_VSM`, per-group GUEST_OS_ID and
//!   HYPERCALL MSRs, `KVM_IRQ_ROUTING_HV_SINT` routes that name a group, and Hyper-V IPIs and
//!   forwarded VSM hypercalls whose outcome (status, delivery, exit and answer) the model
//!   predicts.
//!
//! Meanwhile started vCPUs run a nested guest ([`vtlkit_fuzz_guest_start`]) that picks random
//! entries of a host-written table: fixed IPIs (physical, logical, shorthands, broadcast, lowest
//! priority, KVM PV IPI), NMIs, `KVM_HC_KICK_CPU`, and, on "chaotic" vCPUs, halting with
//! interrupts disabled (only a kick or an NMI wakes it), software-disabling and re-enabling the
//! APIC (SVR) and rewriting the xAPIC LDR/DFR. A per-VM injector thread signals MSIs (NMIs too)
//! and writes irqfds.
//!
//! Every interrupt says in its vector where it may go ([`vector`]): the target group, and for
//! unicasts the low 3 bits of the destination APIC ID, so a vCPU may only ever handle (or hold
//! pending or in service) vectors of its own group and of the IDs it answered to; an unassigned
//! vCPU nothing at all. NMIs and kicks carry no vector: each VM allows them only in some groups
//! and for some ID slots ([`Plan`]), and a vCPU elsewhere that counts one fails the test.
//! Delivery is asserted, not only confinement: unicast MSIs, IPIs, MSI routes fired by irqfd or
//! `KVM_IRQ_LINE`, and level-triggered IOAPIC interrupts (with the EOI clearing Remote IRR) aimed
//! at a running "steady" vCPU must be handled by exactly that vCPU within [`PROBE_TIMEOUT`].
//!
//! INIT and SIPI are not in the mix: an INIT resets the vCPU into wait-for-SIPI and a SIPI
//! restarts it in real mode, and the framework's guests are 64-bit code set up by the host
//! (KVM_SET_SREGS) with no real-mode path back; the vCPU would leave the guest loop for good and
//! a later NMI would run through a real-mode IVT that does not exist. INIT confinement is
//! covered by `apic_group_clean_assignment` (MP state of an unassigned vCPU).
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
    kvm_enable_cap, kvm_irq_level, kvm_irq_routing_entry, kvm_irqchip, kvm_lapic_state, kvm_msi,
    kvm_msr_entry, kvm_vcpu_events, KvmIrqRouting, Msrs, KVMIO, KVM_CAP_MAX_VCPU_ID,
    KVM_CAP_X2APIC_API, KVM_IRQCHIP_IOAPIC, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MSI_VALID_DEVID, KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr};
use vmm_sys_util::ioctl_iowr_nr;
use vtlkit_uapi::{raw, ApicGroup, VcpuApicGroupExt, APIC_GROUP_NONE};

use crate::check;
use crate::guest::icr::{
    DEST_LOGICAL, DM_LOWEST, DM_NMI, LEVEL_ASSERT, SH_ALL, SH_OTHERS, SH_SELF,
};
use crate::guest::{pcpu, prog, ucall, Entry};
use crate::harness::{Outcome, Test, TestResult};
use crate::vm::{lapic_bit, lapic_reg, layout, GuestMem, GuestRecord, Running, TestVm, VmOptions};

mod hv;
mod notify;
mod prot;

pub const TESTS: &[Test] = &[
    Test {
        name: "fuzz_apic_groups",
        about: "randomized APIC-group ioctls, MSIs, routes, LAPIC state and VM churn while nested guests send IPIs, NMIs and kicks; results, confinement and delivery checked against the documented model",
        run: fuzz_apic_groups,
    },
    Test {
        name: "fuzz_pair_runner_stops",
        about: "the fuzzer's VTL-pair runner stops when asked while its parked sibling always has an interrupt pending, so that every run of its home sibling ends in a notification (issue 12)",
        run: notify::pair_runner_stops,
    },
];

ioctl_iowr_nr!(KVM_IRQ_LINE_STATUS, KVMIO, 0x67, kvm_irq_level);

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

/// Diagnostic: fuzzer features switched off with `vtlkit.fuzz_off=a,b,...` on the kernel
/// command line (pairs, tpr, ninj, pairnmi, pairprobe, onethread, oldstop, prot).
pub(super) fn off(feature: &str) -> bool {
    static OFF: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    OFF.get_or_init(|| {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        cmdline_value(&cmdline, "vtlkit.fuzz_off")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    })
    .iter()
    .any(|f| f == feature)
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
    GetMsrs,
    GetIrqchip,
    SetIrqchip,
    GetVcpuEvents,
    Run,
    SetEventNotify,
    GetEventNotify,
    SetVtlProtection,
    GetVtlProtection,
}

const CALLS: [(Call, &str); 21] = [
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
    (Call::GetMsrs, "KVM_GET_MSRS"),
    (Call::GetIrqchip, "KVM_GET_IRQCHIP"),
    (Call::SetIrqchip, "KVM_SET_IRQCHIP"),
    (Call::GetVcpuEvents, "KVM_GET_VCPU_EVENTS"),
    (
        Call::Run,
        "KVM_RUN (vCPU thread starts, and refused runs of unassigned vCPUs)",
    ),
    (Call::SetEventNotify, "KVM_SET_EVENT_NOTIFY"),
    (Call::GetEventNotify, "KVM_GET_EVENT_NOTIFY"),
    (Call::SetVtlProtection, "KVM_SET_VTL_PROTECTION"),
    (Call::GetVtlProtection, "KVM_GET_VTL_PROTECTION"),
];

#[derive(Default)]
struct Stats {
    calls: [AtomicU64; CALLS.len()],
    vms: AtomicU64,
    vcpus: AtomicU64,
    guest_sends: AtomicU64,
    guest_irqs: AtomicU64,
    guest_nmis: AtomicU64,
    kick_wakes: AtomicU64,
    svr_toggles: AtomicU64,
    ldr_writes: AtomicU64,
    irqfd_writes: AtomicU64,
    /// Delivery probes that arrived: MSI, IPI, MSI route, level-triggered IOAPIC.
    probes: [AtomicU64; 4],
    /// Hyper-V ([`hv`]): VMs with the Hyper-V CPUID, hypercalls asked of guests (IPIs, VSM
    /// calls), IPI receptions waited for, exits answered, SINT probes raised and handled,
    /// SINT routes in accepted tables, host MSR operations, KVM_CAP_HYPERV_VSM enables, and the
    /// guests' background Hyper-V IPIs.
    hv_vms: AtomicU64,
    hv_calls: AtomicU64,
    hv_ipis: AtomicU64,
    hv_vsm_calls: AtomicU64,
    hv_ipi_deliveries: AtomicU64,
    hv_exits: AtomicU64,
    sint_raises: AtomicU64,
    sint_deliveries: AtomicU64,
    sint_routes: AtomicU64,
    hv_msr_ops: AtomicU64,
    vsm_enables: AtomicU64,
    hv_bg_ipis: AtomicU64,
    /// KVM_CAP_VCPU_EVENT_NOTIFY ([`notify`]): VMs that enabled it, VTL sibling pairs created,
    /// pair runner starts, successful arms, KVM_EXIT_EVENT_NOTIFY exits, switches to the
    /// parked sibling, exactly counted deliveries to pair siblings (main-thread MSI, guest IPI,
    /// NMI, injector thread, TPR test), TPR tests whose vector was blocked (and did not fire)
    /// or not (and fired), and parks deferred because the sibling was mid-interrupt.
    notify_vms: AtomicU64,
    notify_pairs: AtomicU64,
    notify_runs: AtomicU64,
    notify_arms: AtomicU64,
    notify_exits: AtomicU64,
    notify_switches: AtomicU64,
    notify_probes: [AtomicU64; 5],
    notify_tpr_blocked: AtomicU64,
    notify_tpr_fired: AtomicU64,
    notify_park_deferred: AtomicU64,
    /// KVM_CAP_VTL_PROTECTIONS ([`prot`]): VMs that enabled it, successful SETs (of them while
    /// vCPUs ran, and restricting guest memory for a VTL no vCPU has), refused calls, GETs and
    /// walks checked against the model, lifts for a newly assigned VTL, debugfs counts checked.
    prot_vms: AtomicU64,
    prot_sets: AtomicU64,
    prot_running: AtomicU64,
    prot_guest_mem: AtomicU64,
    prot_refused: AtomicU64,
    prot_gets: AtomicU64,
    prot_walks: AtomicU64,
    prot_lifts: AtomicU64,
    prot_debugfs: AtomicU64,
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
    fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The nested guest: enable the APIC, report ready, then forever: send the IPI the host asked
// for (a delivery probe) if any, and run a random entry of a host-written table, picked with a
// xorshift generator.

/// The fuzz guest's per-vCPU fields, in the vCPU data page between the framework's fields
/// ([`pcpu::SIZE`]) and its TSS ([`pcpu::TSS`]).
mod fz {
    pub const BASE: u64 = 0x5c0;
    /// Guest address of `vtlkit_guest_apic_enable`.
    pub const APIC_ENABLE: u64 = BASE;
    /// Guest address of `vtlkit_guest_apic_send_icr`.
    pub const SEND_ICR: u64 = BASE + 0x08;
    /// Guest address of `vtlkit_guest_pv_send_ipi`.
    pub const PV_IPI: u64 = BASE + 0x10;
    /// xorshift64 state (non-zero).
    pub const SEED: u64 = BASE + 0x18;
    /// Number of table entries minus one (a power of two minus one).
    pub const MASK: u64 = BASE + 0x20;
    /// Output: table entries run (IPIs, NMIs, kicks, APIC rewrites).
    pub const SENT: u64 = BASE + 0x28;
    /// Output: NMIs taken (the NMI handler counts them; vector 2 gets its own IDT gate).
    pub const NMIS: u64 = BASE + 0x30;
    /// Output: wake-ups from HLT with interrupts disabled that no NMI explains (kicks).
    pub const KICK_WAKES: u64 = BASE + 0x38;
    /// Output: KVM_HC_KICK_CPU calls that did not return 0, and the last such value.
    pub const KICK_FAILS: u64 = BASE + 0x40;
    pub const KICK_RET: u64 = BASE + 0x48;
    /// Input: delivery probe: destination, then ICR low word (non-zero = send it; the guest
    /// clears it once sent).
    pub const PROBE_DEST: u64 = BASE + 0x50;
    pub const PROBE_ICR: u64 = BASE + 0x58;
    /// Output: halts with interrupts disabled, SVR toggles, LDR/DFR rewrites done.
    pub const SLEEPS: u64 = BASE + 0x60;
    pub const SVR_TOGGLES: u64 = BASE + 0x68;
    pub const LDR_WRITES: u64 = BASE + 0x70;
    /// Input: GPA of a Hyper-V hypercall request (a [`crate::guest::hvprog`] entry: control,
    /// RDX, R8, RAX, XMM0..5 in; RAX and RCX out); the guest clears it once the call returned.
    pub const HV_REQ: u64 = BASE + 0x78;
    /// Output: background Hyper-V IPIs sent, those that did not return 0, the last such RAX.
    pub const HV_SENT: u64 = BASE + 0x80;
    pub const HV_FAILS: u64 = BASE + 0x88;
    pub const HV_RET: u64 = BASE + 0x90;
    pub const END: u64 = BASE + 0x98;
}
const _: () = assert!(pcpu::SIZE <= fz::BASE && fz::END <= pcpu::TSS);

/// Table entry kinds besides [`prog::ICR`] and [`prog::PV_IPI`] (same layout: kind, a0..a3).
mod kind {
    /// KVM_HC_KICK_CPU: a0 = APIC ID.
    pub const KICK: u64 = 0x10;
    /// CLI; HLT; STI: only a kick or an NMI wakes it.
    pub const SLEEP: u64 = 0x11;
    /// Software-disable the APIC (SVR bit 8), spin a0 times, re-enable it.
    pub const SVR: u64 = 0x12;
    /// xAPIC only: DFR = a0, LDR = a1.
    pub const LDR: u64 = 0x13;
    /// A Hyper-V hypercall (`vmmcall`) with RCX = a0, RDX = a1, R8 = a2, RAX = a3, which must
    /// return 0 (background Hyper-V IPIs).
    pub const HV_IPI: u64 = 0x14;
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
    mov rax, gs:[{FZ_APIC_ENABLE}]
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
    mov r12, gs:[{FZ_SEED}]
    mov r13, gs:[{FZ_MASK}]
    test rbx, rbx
    jz .Lfz_idle
.Lfz_loop:
    // A Hyper-V hypercall asked by the host: run it once, record RAX and RCX, clear the request.
    mov rax, gs:[{FZ_HV_REQ}]
    test rax, rax
    jz .Lfz_probe
    push rbx
    mov rbx, rax
    movdqu xmm0, [rbx + {HVPROG_XMM}]
    movdqu xmm1, [rbx + {HVPROG_XMM} + 16]
    movdqu xmm2, [rbx + {HVPROG_XMM} + 32]
    movdqu xmm3, [rbx + {HVPROG_XMM} + 48]
    movdqu xmm4, [rbx + {HVPROG_XMM} + 64]
    movdqu xmm5, [rbx + {HVPROG_XMM} + 80]
    mov rcx, [rbx + {HVPROG_CONTROL}]
    mov rdx, [rbx + {HVPROG_RDX}]
    mov r8, [rbx + {HVPROG_R8}]
    mov rax, [rbx + {HVPROG_RAX_IN}]
    cmp qword ptr gs:[{PCPU_HYPERCALL_VMCALL}], 0
    jne .Lfz_hv_intel
    vmmcall
    jmp .Lfz_hv_ret
.Lfz_hv_intel:
    vmcall
.Lfz_hv_ret:
    mov [rbx + {HVPROG_RESULT}], rax
    mov [rbx + {HVPROG_RCX_OUT}], rcx
    pop rbx
    mov qword ptr gs:[{FZ_HV_REQ}], 0
.Lfz_probe:
    // A delivery probe from the host: one fixed IPI, then clear the request.
    mov rsi, gs:[{FZ_PROBE_ICR}]
    test rsi, rsi
    jz .Lfz_pick
    mov rdi, gs:[{FZ_PROBE_DEST}]
    mov rax, gs:[{FZ_SEND_ICR}]
    call rax
    mov qword ptr gs:[{FZ_PROBE_ICR}], 0
.Lfz_pick:
    mov rax, r12                            // xorshift64: 13, 7, 17
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
    mov rax, [r14]
    cmp rax, {PROG_ICR}
    jne .Lfz_not_icr
    mov rdi, [r14 + 8]                      // RDI = destination, ESI = ICR low
    mov rsi, [r14 + 16]
    mov rax, gs:[{FZ_SEND_ICR}]
    call rax
    jmp .Lfz_done
.Lfz_not_icr:
    cmp rax, {PROG_PV_IPI}
    jne .Lfz_not_pv
    mov rdi, [r14 + 8]                      // RDI/RSI = bitmap, RDX = min, RCX = ICR
    mov rsi, [r14 + 16]
    mov rdx, [r14 + 24]
    mov rcx, [r14 + 32]
    mov rax, gs:[{FZ_PV_IPI}]
    call rax
    jmp .Lfz_done
.Lfz_not_pv:
    cmp rax, {KIND_KICK}
    jne .Lfz_not_kick
    push rbx
    mov eax, {KVM_HC_KICK_CPU}
    xor ebx, ebx                            // a0: flags
    mov rcx, [r14 + 8]                      // a1: APIC ID
    cmp qword ptr gs:[{PCPU_HYPERCALL_VMCALL}], 0
    jne .Lfz_kick_intel
    vmmcall
    jmp .Lfz_kick_ret
.Lfz_kick_intel:
    vmcall
.Lfz_kick_ret:
    pop rbx
    test rax, rax
    jz .Lfz_done
    mov gs:[{FZ_KICK_RET}], rax
    lock inc qword ptr gs:[{FZ_KICK_FAILS}]
    jmp .Lfz_done
.Lfz_not_kick:
    cmp rax, {KIND_SLEEP}
    jne .Lfz_not_sleep
    // Halt with interrupts disabled. A wake-up without a new NMI can only be a kick.
    cli
    mov rdx, gs:[{FZ_NMIS}]
    hlt
    cmp rdx, gs:[{FZ_NMIS}]
    jne .Lfz_sleep_nmi
    lock inc qword ptr gs:[{FZ_KICK_WAKES}]
.Lfz_sleep_nmi:
    lock inc qword ptr gs:[{FZ_SLEEPS}]
    sti
    jmp .Lfz_done
.Lfz_not_sleep:
    cmp rax, {KIND_SVR}
    jne .Lfz_not_svr
    mov r8, [r14 + 8]                       // spin count
    cmp qword ptr gs:[{PCPU_APIC_MODE}], {APIC_MODE_X2APIC}
    je .Lfz_svr_x2
    mov eax, 0xfee000f0
    mov dword ptr [rax], 0xff               // SVR: software-disabled, spurious vector 0xff
.Lfz_svr_spin1:
    pause
    dec r8
    jnz .Lfz_svr_spin1
    mov dword ptr [rax], 0x1ff              // enabled again
    jmp .Lfz_svr_end
.Lfz_svr_x2:
    mov ecx, 0x80f
    mov eax, 0xff
    xor edx, edx
    wrmsr
.Lfz_svr_spin2:
    pause
    dec r8
    jnz .Lfz_svr_spin2
    mov ecx, 0x80f
    mov eax, 0x1ff
    xor edx, edx
    wrmsr
.Lfz_svr_end:
    lock inc qword ptr gs:[{FZ_SVR_TOGGLES}]
    jmp .Lfz_done
.Lfz_not_svr:
    cmp rax, {KIND_LDR}
    jne .Lfz_not_ldr
    mov eax, 0xfee00000
    mov rdx, [r14 + 8]
    mov dword ptr [rax + 0xe0], edx         // DFR
    mov rdx, [r14 + 16]
    mov dword ptr [rax + 0xd0], edx         // LDR
    lock inc qword ptr gs:[{FZ_LDR_WRITES}]
    jmp .Lfz_done
.Lfz_not_ldr:
    cmp rax, {KIND_HV_IPI}
    jne .Lfz_loop                           // unknown kind: pick again
    pxor xmm0, xmm0                         // fast Ex: no sparse banks (var_cnt 0)
    mov rcx, [r14 + 8]
    mov rdx, [r14 + 16]
    mov r8, [r14 + 24]
    mov rax, [r14 + 32]
    cmp qword ptr gs:[{PCPU_HYPERCALL_VMCALL}], 0
    jne .Lfz_hvb_intel
    vmmcall
    jmp .Lfz_hvb_ret
.Lfz_hvb_intel:
    vmcall
.Lfz_hvb_ret:
    lock inc qword ptr gs:[{FZ_HV_SENT}]
    test rax, rax
    jz .Lfz_done
    mov gs:[{FZ_HV_RET}], rax
    lock inc qword ptr gs:[{FZ_HV_FAILS}]
.Lfz_done:
    lock inc qword ptr gs:[{FZ_SENT}]
    jmp .Lfz_loop
.Lfz_idle:
    sti
    hlt
    jmp .Lfz_idle

// NMI handler (IDT vector 2 points here): count it; no EOI for NMIs.
    .globl vtlkit_fuzz_nmi
vtlkit_fuzz_nmi:
    lock inc qword ptr gs:[{FZ_NMIS}]
    iretq
    .globl vtlkit_fuzz_guest_end
vtlkit_fuzz_guest_end:
    .popsection
"#,
    FZ_APIC_ENABLE = const fz::APIC_ENABLE,
    FZ_SEND_ICR = const fz::SEND_ICR,
    FZ_PV_IPI = const fz::PV_IPI,
    FZ_SEED = const fz::SEED,
    FZ_MASK = const fz::MASK,
    FZ_SENT = const fz::SENT,
    FZ_NMIS = const fz::NMIS,
    FZ_KICK_WAKES = const fz::KICK_WAKES,
    FZ_KICK_FAILS = const fz::KICK_FAILS,
    FZ_KICK_RET = const fz::KICK_RET,
    FZ_PROBE_DEST = const fz::PROBE_DEST,
    FZ_PROBE_ICR = const fz::PROBE_ICR,
    FZ_SLEEPS = const fz::SLEEPS,
    FZ_SVR_TOGGLES = const fz::SVR_TOGGLES,
    FZ_LDR_WRITES = const fz::LDR_WRITES,
    FZ_HV_REQ = const fz::HV_REQ,
    FZ_HV_SENT = const fz::HV_SENT,
    FZ_HV_FAILS = const fz::HV_FAILS,
    FZ_HV_RET = const fz::HV_RET,
    HVPROG_XMM = const crate::guest::hvprog::XMM,
    HVPROG_CONTROL = const crate::guest::hvprog::CONTROL,
    HVPROG_RDX = const crate::guest::hvprog::RDX,
    HVPROG_R8 = const crate::guest::hvprog::R8,
    HVPROG_RAX_IN = const crate::guest::hvprog::RAX_IN,
    HVPROG_RESULT = const crate::guest::hvprog::RESULT,
    HVPROG_RCX_OUT = const crate::guest::hvprog::RCX_OUT,
    STAGE_APIC_READY = const ucall::STAGE_APIC_READY,
    PCPU_APIC_ID_READ = const pcpu::APIC_ID_READ,
    PCPU_LDR_READ = const pcpu::LDR_READ,
    PCPU_APIC_MODE = const pcpu::APIC_MODE,
    PCPU_PROGRAM = const pcpu::PROGRAM,
    PCPU_HYPERCALL_VMCALL = const pcpu::HYPERCALL_VMCALL,
    APIC_MODE_X2APIC = const pcpu::APIC_MODE_X2APIC,
    UCALL_SYNC = const ucall::SYNC,
    UCALL_PORT = const ucall::PORT,
    PROG_ICR = const prog::ICR,
    PROG_PV_IPI = const prog::PV_IPI,
    KIND_KICK = const kind::KICK,
    KIND_SLEEP = const kind::SLEEP,
    KIND_SVR = const kind::SVR,
    KIND_LDR = const kind::LDR,
    KIND_HV_IPI = const kind::HV_IPI,
    KVM_HC_KICK_CPU = const crate::guest::KVM_HC_KICK_CPU,
);

extern "C" {
    static vtlkit_fuzz_guest_start: u8;
    static vtlkit_fuzz_guest_end: u8;
    static vtlkit_fuzz_nmi: u8;
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

/// Guest address of the fuzz guest's NMI handler.
fn fuzz_nmi_gpa() -> u64 {
    let start = &raw const vtlkit_fuzz_guest_start;
    FUZZ_CODE + (&raw const vtlkit_fuzz_nmi as u64).wrapping_sub(start as u64)
}

/// Guest address of a helper in the main guest blob (loaded at [`layout::CODE`]).
fn helper_gpa(sym: *const u8) -> u64 {
    let start = &raw const vtlkit_guest_start;
    layout::CODE + (sym as u64).wrapping_sub(start as u64)
}

/// Point IDT vector 2 (NMI) of the VM's shared IDT at the fuzz guest's NMI handler.
fn install_nmi_gate(mem: &GuestMem) -> Result<()> {
    let h = fuzz_nmi_gpa();
    // 64-bit interrupt gate: offset 15:0, selector 0x08, IST 0, type 0xe, P=1, DPL 0.
    let lo = (h & 0xffff) | (0x08 << 16) | (0x8eu64 << 40) | (((h >> 16) & 0xffff) << 48);
    mem.write_u64(layout::IDT + 2 * 16, lo)?;
    mem.write_u64(layout::IDT + 2 * 16 + 8, h >> 32)
}

// ---------------------------------------------------------------------------------------------
// What vectors, NMIs and kicks mean.

/// The vector layout. Vectors 0x00..0x2f are left alone (exceptions, and 0x20..0x2f spare) and
/// 0xff is the spurious vector; the framework uses no other vector in these VMs.
mod vector {
    /// Per group: one multicast vector, then one per destination slot (APIC ID & 7).
    pub const GROUP_BASE: u8 = 0x30;
    pub const PER_GROUP: u8 = 9;
    /// Groups the layout has room for.
    pub const MAX_GROUPS: u32 = 16;
    /// Level-triggered IOAPIC interrupts (group 0), one per destination slot.
    pub const LEVEL_BASE: u8 = 0xc0;
    /// Delivery probes, counted exactly per vCPU: MSI, IPI, MSI route.
    pub const PROBE_MSI: u8 = 0xd0;
    pub const PROBE_IPI: u8 = 0xd1;
    pub const PROBE_ROUTE: u8 = 0xd2;
    /// The SINT probe (Hyper-V SynIC, series v3).
    pub const PROBE_SINT: u8 = 0xd3;
    pub const PROBES: [u8; 4] = [PROBE_MSI, PROBE_IPI, PROBE_ROUTE, PROBE_SINT];
    /// Event-notification deliveries to VTL sibling pairs ([`super::notify`]), counted exactly
    /// per vCPU: main-thread MSI, guest IPI, injector thread, TPR test (class 0xd).
    pub const NOTIFY: [u8; 4] = [0xd8, 0xd9, 0xda, 0xdb];
    const _: () = assert!(PROBE_SINT < NOTIFY[0] && NOTIFY[3] < HV_IPI_BASE);
    /// Hyper-V IPIs the host asks a guest to send: this + the sender's group, counted exactly.
    pub const HV_IPI_BASE: u8 = 0xe0;
    const _: () = assert!(GROUP_BASE as u32 + MAX_GROUPS * PER_GROUP as u32 <= LEVEL_BASE as u32);
    const _: () = assert!(LEVEL_BASE + 8 <= PROBE_MSI && PROBE_SINT < HV_IPI_BASE);
    const _: () = assert!(HV_IPI_BASE as u32 + MAX_GROUPS < 0xff);
}

/// Vector of an interrupt to any vCPU of group `g` (broadcast, shorthand, logical, lowest
/// priority).
fn mc_vector(g: u32) -> u8 {
    vector::GROUP_BASE + (g.min(vector::MAX_GROUPS - 1) as u8) * vector::PER_GROUP
}

/// Vector of a unicast to APIC ID `dest` in group `g`.
fn uc_vector(g: u32, dest: u32) -> u8 {
    mc_vector(g) + 1 + (dest & 7) as u8
}

/// Vector of a Hyper-V IPI the host asks a vCPU of group `g` to send.
fn hv_ipi_vector(g: u32) -> u8 {
    vector::HV_IPI_BASE + g.min(vector::MAX_GROUPS - 1) as u8
}

/// Vector of a level-triggered IOAPIC interrupt to APIC ID `dest` (group 0).
fn level_vector(dest: u32) -> u8 {
    vector::LEVEL_BASE + (dest & 7) as u8
}

/// Bit of the slot of APIC ID `id`.
fn slot(id: u32) -> u8 {
    1 << (id & 7)
}

/// Which vCPU may hold `v`, per the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    /// Any vCPU of the group.
    Multicast(u32),
    /// A vCPU of the group that answered to an APIC ID of this slot.
    Unicast(u32, u8),
    /// A group-0 vCPU that answered to an APIC ID of this slot.
    Level(u8),
    /// Delivery probe number n (exact counts).
    Probe(usize),
    /// A Hyper-V IPI from a vCPU of this group (exact counts).
    HvIpi(u32),
    /// Event-notification delivery number n (exact counts, [`VcpuModel::notify_sent`]).
    Notify(usize),
    /// Never sent.
    Unused,
}

fn meaning(v: u8) -> Meaning {
    let top = vector::GROUP_BASE as u32 + vector::MAX_GROUPS * vector::PER_GROUP as u32;
    if (vector::GROUP_BASE as u32..top).contains(&(v as u32)) {
        let off = v - vector::GROUP_BASE;
        let g = u32::from(off / vector::PER_GROUP);
        return match off % vector::PER_GROUP {
            0 => Meaning::Multicast(g),
            s => Meaning::Unicast(g, s - 1),
        };
    }
    if (vector::LEVEL_BASE..vector::LEVEL_BASE + 8).contains(&v) {
        return Meaning::Level(v - vector::LEVEL_BASE);
    }
    if (vector::HV_IPI_BASE..vector::HV_IPI_BASE + vector::MAX_GROUPS as u8).contains(&v) {
        return Meaning::HvIpi(u32::from(v - vector::HV_IPI_BASE));
    }
    if let Some(n) = vector::NOTIFY.iter().position(|&p| p == v) {
        return Meaning::Notify(n);
    }
    match vector::PROBES.iter().position(|&p| p == v) {
        Some(n) => Meaning::Probe(n),
        None => Meaning::Unused,
    }
}

/// Per-VM rules for what carries no vector: NMIs and kicks may only be aimed at these groups
/// (and, unicast, at APIC IDs of these slots), so a vCPU elsewhere that gets one caught a leak.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// KVM_CHECK_EXTENSION(KVM_CAP_APIC_GROUPS).
    groups: u32,
    /// KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) succeeded.
    opted: bool,
    irqchip: bool,
    x2apic_format: bool,
    nmi_groups: u32,
    nmi_mc_groups: u32,
    nmi_slots: u8,
    kick_groups: u32,
    kick_slots: u8,
}

impl Plan {
    fn has(mask: u32, g: u32) -> bool {
        g < 32 && mask & (1 << g) != 0
    }
    /// May a unicast NMI go to APIC ID `dest` of group `g`?
    fn nmi_unicast_ok(&self, g: u32, dest: u32) -> bool {
        Self::has(self.nmi_groups, g) && self.nmi_slots & slot(dest) != 0
    }
    /// May a multicast NMI (shorthand, broadcast, logical) go to group `g`?
    fn nmi_mc_ok(&self, g: u32) -> bool {
        Self::has(self.nmi_mc_groups, g)
    }
    /// May a vCPU of group `g` that answered to IDs of `slots` have got an NMI?
    fn nmi_allowed(&self, g: u32, slots: u8) -> bool {
        self.nmi_mc_ok(g) || (Self::has(self.nmi_groups, g) && self.nmi_slots & slots != 0)
    }
    fn kick_ok(&self, g: u32, dest: u32) -> bool {
        Self::has(self.kick_groups, g) && self.kick_slots & slot(dest) != 0 && dest & 0xff != 0xff
    }
    fn kick_allowed(&self, g: u32, slots: u8) -> bool {
        Self::has(self.kick_groups, g) && self.kick_slots & slots != 0
    }
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
/// GSIs the fuzzer routes at random and the injector fires (above the PIC's, so nothing
/// reaches the legacy PIC): GSI_BASE..GSI_BASE + GSI_SPAN.
const GSI_BASE: u32 = 16;
const GSI_SPAN: u32 = 32;
/// IOAPIC pins random routes use (masked, so they deliver nothing).
const RANDOM_PINS: std::ops::Range<u32> = 16..23;
/// The level-triggered probe: this GSI, routed to this IOAPIC pin, fired by the main thread
/// only.
const LEVEL_GSI: u32 = GSI_BASE + GSI_SPAN;
const LEVEL_PIN: u32 = 23;
/// The MSI-route probe's GSI, fired by the main thread only (KVM_IRQ_LINE or its irqfd).
const PROBE_GSI: u32 = LEVEL_GSI + 1;
/// How long an interrupt aimed at a running, interruptible vCPU may take to be handled.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApicMode {
    Disabled,
    Xapic,
    X2apic,
}

#[derive(Debug, Clone)]
struct VcpuModel {
    id: u64,
    /// Its group, APIC ID and VTL: None while unassigned in an opted-in VM; (0, vcpu_id, 0)
    /// from the start in a VM that did not opt in.
    assigned: Option<ApicGroup>,
    /// Slots ([`slot`]) of every APIC ID it answered to since it joined its group.
    slots: u8,
    /// Entered the guest (reported ready).
    ran: bool,
    /// On a vCPU thread now (its fd is not ours to use).
    running: bool,
    mode: ApicMode,
    /// The raw APIC ID register outside x2APIC mode.
    id_reg: u32,
    /// Its table has no halts and no SVR toggles: while it runs, it takes interrupts.
    steady: bool,
    /// Delivery probes it handled, per [`vector::PROBES`].
    probes: [u32; 4],
    /// Hyper-V VP index (KVM's default: the vCPU's index; set before it first runs).
    vp: u32,
    /// Its SynIC is active, SINTs [`hv::SINT_PROBE`] and [`hv::SINT_RANDOM`] programmed.
    synic: bool,
    /// Hyper-V IPIs on its group's [`hv_ipi_vector`] it handled.
    hv_ipis: u32,
    /// KVM_EXIT_HYPERV HCALL exits it made.
    hv_exits: u64,
    /// A sibling of a VTL pair ([`notify`]): run by its pair's runner, never by a batch.
    paired: bool,
    /// Only ever the target of the main thread's random KVM_SET_EVENT_NOTIFY arms: never runs.
    sink: bool,
    /// The target KVM_SET_EVENT_NOTIFY armed it with last, until it was disarmed or seen fired.
    notify_armed: Option<u32>,
    /// Deliveries sent to it on the [`vector::NOTIFY`] vectors (incremented before sending).
    notify_sent: notify::Sent,
}

impl VcpuModel {
    fn group(&self) -> Option<u32> {
        self.assigned.map(|a| a.group)
    }
    fn apic_id(&self) -> u32 {
        self.assigned.map_or(self.id as u32, |a| a.apic_id)
    }
    /// What KVM_GET_APIC_GROUP must return (with an in-kernel LAPIC).
    fn get_view(&self) -> ApicGroup {
        self.assigned.unwrap_or(ApicGroup {
            group: APIC_GROUP_NONE,
            apic_id: self.id as u32,
            vtl: 0,
        })
    }
    /// Record the IDs it answers to now.
    fn note_ids(&mut self) {
        if self.assigned.is_some() {
            self.slots |= slot(self.apic_id()) | slot(self.id_reg >> 24);
        }
    }
    /// Over-approximation: could this vCPU match physical destination `d`?
    fn could_match(&self, d: u32) -> bool {
        self.assigned.is_some()
            && self.mode != ApicMode::Disabled
            && (d == self.apic_id() || (d <= 0xff && d == self.id_reg >> 24))
    }
    /// The APIC ID a physical unicast must name to reach it now.
    fn eff_id(&self) -> Option<u32> {
        match self.mode {
            ApicMode::X2apic => Some(self.apic_id()),
            ApicMode::Xapic => Some(self.id_reg >> 24),
            ApicMode::Disabled => None,
        }
    }
}

/// A route of the kernel's table, as the model knows it.
#[derive(Debug, Clone, Copy)]
enum Route {
    Ioapic {
        gsi: u32,
    },
    Msi {
        gsi: u32,
        group: u32,
        flagged: bool,
        unicast: Option<u32>,
    },
    /// KVM_IRQ_ROUTING_HV_SINT: SINT `sint` of the vCPU of `group` with VP index `vp`.
    Sint {
        gsi: u32,
        group: u32,
        vp: u32,
        sint: u32,
    },
}

impl Route {
    fn gsi(&self) -> u32 {
        match *self {
            Route::Ioapic { gsi } | Route::Msi { gsi, .. } | Route::Sint { gsi, .. } => gsi,
        }
    }
}

/// The MSI-route probe: the route at [`PROBE_GSI`] aims at vCPU index `target`, APIC ID `dest`
/// of `group`.
#[derive(Debug, Clone, Copy)]
struct ProbeRoute {
    target: usize,
    group: u32,
    dest: u32,
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
    plan: Plan,
    max_vcpu_ids: u32,
    vcpus: Vec<VcpuModel>,
    batches: Vec<Batch>,
    injector: Option<Injector>,
    /// The routing table: None = KVM's default (GSIs 0..23 to the PIC and IOAPIC).
    routes: Option<Vec<Route>>,
    probe_route: Option<ProbeRoute>,
    /// The main thread's irqfd on [`PROBE_GSI`].
    probe_irqfd: Option<EventFd>,
    /// Hyper-V: the CPUID leaves, VSM, per-group MSRs, the exit handler's plan.
    hv: hv::HvVm,
    /// KVM_CAP_VCPU_EVENT_NOTIFY: enabled or not, VTL sibling pairs, their injector thread.
    notify: notify::NotifyVm,
    /// KVM_CAP_VTL_PROTECTIONS: enabled or not, the model of each VTL's ranges.
    prot: prot::ProtVm,
}

impl FuzzVm {
    fn max_apic_id(&self) -> u32 {
        let m = self.max_vcpu_ids.saturating_sub(1);
        if self.plan.x2apic_format {
            m
        } else {
            m.min(0xfe)
        }
    }

    /// Is (group, apic_id) assigned to a vCPU other than `except`?
    fn taken(&self, group: u32, apic_id: u32, except: usize) -> bool {
        self.vcpus.iter().enumerate().any(|(i, v)| {
            i != except
                && v.assigned
                    .is_some_and(|a| a.group == group && a.apic_id == apic_id)
        })
    }

    fn members(&self, group: u32) -> usize {
        self.vcpus
            .iter()
            .filter(|v| v.group() == Some(group))
            .count()
    }

    /// vCPUs of `group` that could match physical destination `d`.
    fn matching(&self, group: u32, d: u32) -> usize {
        self.vcpus
            .iter()
            .filter(|v| v.group() == Some(group) && v.could_match(d))
            .count()
    }

    /// vCPUs on threads; a VTL pair counts once (its runner runs one sibling at a time).
    fn running_count(&self) -> usize {
        self.vcpus.iter().filter(|v| v.running && !v.paired).count() + self.notify.running_pairs()
    }

    fn fd(&self, index: usize) -> Result<&VcpuFd> {
        Ok(&self.vm.vcpu(index)?.fd)
    }

    /// Can vCPU `i` be a delivery probe's receiver now: running its loop with interrupts
    /// enabled, and the only vCPU of its group that could match its APIC ID? Returns its group
    /// and that ID.
    fn probe_receiver(&self, i: usize) -> Option<(u32, u32)> {
        let v = &self.vcpus[i];
        if !(v.running && v.ran && v.steady) || v.paired {
            return None;
        }
        let g = v.group()?;
        let d = v.eff_id()?;
        if d & 0xff == 0xff || d == u32::MAX || self.matching(g, d) != 1 {
            return None;
        }
        Some((g, d))
    }

    /// The batch vCPU `i` runs in.
    fn batch_of(&self, i: usize) -> Option<&Batch> {
        self.batches.iter().find(|b| b.indexes.contains(&i))
    }
}

/// An MSI's class per the documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsiClass {
    /// Must fail with EINVAL.
    Invalid,
    /// `KVM_MSI_VALID_DEVID` alone: api.rst says the ioctl "might fail"; if it does not, the
    /// MSI goes to group 0.
    DevidOnly,
    /// Valid, aimed at this group.
    Group(u32),
}

fn classify_msi(flags: u32, apic_group: u32, address_hi: u32, plan: &Plan) -> MsiClass {
    let group_flag = raw::KVM_MSI_VALID_APIC_GROUP;
    if !plan.irqchip || flags & !(KVM_MSI_VALID_DEVID | group_flag) != 0 {
        return MsiClass::Invalid;
    }
    if plan.x2apic_format && address_hi & 0xff != 0 {
        return MsiClass::Invalid;
    }
    if flags & group_flag != 0 {
        if !plan.opted || apic_group >= plan.groups {
            return MsiClass::Invalid;
        }
        return MsiClass::Group(apic_group);
    }
    if flags & KVM_MSI_VALID_DEVID != 0 {
        return MsiClass::DevidOnly;
    }
    MsiClass::Group(0)
}

/// A random MSI and what the model says about it.
struct MsiPick {
    msi: kvm_msi,
    class: MsiClass,
    /// Its physical unicast destination, if it is one.
    unicast: Option<u32>,
    nmi: bool,
}

impl MsiPick {
    fn flagged(&self) -> bool {
        self.msi.flags & raw::KVM_MSI_VALID_APIC_GROUP != 0
    }
    fn describe(&self) -> String {
        let r = vtlkit_uapi::msi_to_raw(self.msi);
        format!(
            "addr {:#x}:{:#x}, data {:#x}, flags {:#x}, devid {:#x}, apic_group {:#x}",
            r.address_hi, r.address_lo, r.data, r.flags, r.devid, r.apic_group
        )
    }
}

/// A random MSI to one of `ids` (mostly), with the vector (or NMI) its target allows.
fn random_msi(rng: &mut Rng, ids: &[u32], plan: &Plan) -> MsiPick {
    let group_flag = raw::KVM_MSI_VALID_APIC_GROUP;
    let flags = match rng.below(10) {
        0..=2 => 0,
        3..=6 => group_flag,
        7 => KVM_MSI_VALID_DEVID,
        8 => KVM_MSI_VALID_DEVID | group_flag,
        _ => 1 << (2 + rng.below(30)),
    };
    let apic_group = match rng.below(8) {
        0 => plan.groups,
        1 => u32::MAX,
        2 => rng.next_u32(),
        _ => rng.below_u32(plan.groups.clamp(1, vector::MAX_GROUPS)),
    };
    let devid = rng.next_u32();
    let dest: u32 = match rng.below(6) {
        0 => 0xff,
        1 => rng.below_u32(0x100),
        _ => rng.pick(ids).unwrap_or(0),
    };
    let address_hi = if plan.x2apic_format && rng.one_in(3) {
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
    let class = classify_msi(flags, apic_group, address_hi, plan);
    let target = match class {
        MsiClass::Group(g) => g,
        _ => 0,
    };
    let full_dest = if plan.x2apic_format {
        (address_hi & 0xffff_ff00) | (dest & 0xff)
    } else {
        dest & 0xff
    };
    let unicast =
        (!logical && !redir_hint && !lowest && full_dest != 0xff && full_dest != u32::MAX)
            .then_some(full_dest);
    let nmi = rng.one_in(6)
        && match unicast {
            Some(d) => plan.nmi_unicast_ok(target, d),
            None => plan.nmi_mc_ok(target),
        };
    let data = if nmi {
        DM_NMI
    } else {
        let v = match unicast {
            Some(d) => uc_vector(target, d),
            None => mc_vector(target),
        };
        u32::from(v) | if lowest { DM_LOWEST } else { 0 }
    };
    let mut m = vtlkit_uapi::msi_to_raw(kvm_msi {
        address_lo,
        address_hi,
        data,
        flags,
        devid,
        ..Default::default()
    });
    m.apic_group = apic_group;
    MsiPick {
        msi: vtlkit_uapi::msi_from_raw(m),
        class,
        unicast,
        nmi,
    }
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
        libc::ENOEXEC => "ENOEXEC",
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

fn show(r: std::result::Result<i32, i32>) -> String {
    match r {
        Ok(n) => format!("success ({n})"),
        Err(e) => errname(e),
    }
}

/// Check one KVM_SIGNAL_MSI result against what the model allows (`members`: vCPUs of the
/// target group, or None when unknown; `matching`: vCPUs that could match a unicast
/// destination).
fn check_msi_result(
    what: &str,
    r: std::result::Result<i32, i32>,
    pick: &MsiPick,
    members: Option<usize>,
    matching: Option<usize>,
) -> Result<()> {
    match (pick.class, r) {
        (MsiClass::Invalid, Err(libc::EINVAL)) => Ok(()),
        (MsiClass::Invalid, r) => bail!("{what}: expected EINVAL, got {}", show(r)),
        (MsiClass::DevidOnly, Ok(_) | Err(libc::EINVAL) | Err(libc::EPERM)) => Ok(()),
        (MsiClass::Group(g), Ok(n)) => {
            check!(n >= 0, "{what}: returned {n}");
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
        // Without the group flag, an MSI that reaches no vCPU may return -1 (EPERM); with it,
        // api.rst promises the number of vCPUs that took it, 0 if none.
        (MsiClass::Group(_), Err(libc::EPERM)) if !pick.flagged() => Ok(()),
        (MsiClass::Group(g), Err(e)) if pick.flagged() => bail!(
            "{what}: an MSI that names group {g} failed with {} (api.rst: it returns the number of vCPUs that took it, 0 if none, never -1)",
            errname(e)
        ),
        (_, r) => bail!("{what}: undocumented result {}", show(r)),
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
    /// The kernel has series v3's Hyper-V uAPI (KVM_CAP_HYPERV_VSM): [`hv`] is on.
    hv_supported: bool,
    /// The kernel has KVM_CAP_VCPU_EVENT_NOTIFY (series v4): [`notify`] is on.
    notify_supported: bool,
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

/// KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) with `args`; the errors api.rst lists for the situation.
fn enable_groups_expected(args: [u64; 4], irqchip: bool, has_vcpus: bool) -> Vec<i32> {
    let mut e = Vec::new();
    if args != [0; 4] {
        e.push(libc::EINVAL);
    }
    if !irqchip {
        e.push(libc::ENXIO);
    }
    if has_vcpus {
        e.push(libc::EBUSY);
    }
    e
}

impl Fuzzer {
    fn new(seed: u64, hv_supported: bool, notify_supported: bool) -> Result<Self> {
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
            hv_supported,
            notify_supported,
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
        match self.rng.below(129) {
            0..=1 if self.vms.len() < MAX_VMS => self.create_vm(),
            0..=2 => self.destroy_vm(k),
            3..=8 => self.create_vcpu(k),
            9..=10 => self.enable_cap_late(k),
            11..=23 => self.set_apic_group_random(k),
            24..=33 => self.set_apic_group_valid(k),
            34..=35 => self.apic_group_bad_pointer(k),
            36..=39 => self.get_apic_group(k),
            40..=41 => self.run_unassigned(k),
            42..=50 => self.signal_msi(k),
            51..=56 => self.set_gsi_routing(k),
            57..=60 => self.irq_line(k),
            61..=66 => self.lapic(k),
            67..=69 => self.set_apic_mode(k),
            70..=76 => self.start_vcpus(k),
            77..=79 => self.stop_batch(k),
            80..=83 => self.probe_msi(k),
            84..=87 => self.probe_ipi(k),
            88..=90 => self.probe_route(k),
            91..=93 => self.probe_level(k),
            94 => self.notify_set_get(k),
            95 => self.pair_create(k),
            96 => self.pair_toggle(k),
            97..=98 => self.notify_probe(k),
            99 => self.notify_misc(k),
            100..=111 => self.hv_call(k),
            112..=114 => self.hv_msrs(k),
            115 => self.enable_vsm(k),
            116..=119 => self.probe_sint(k),
            120..=123 => self.prot_op(k),
            _ => self.check_guests(k),
        }
    }

    /// KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) on VM fd `vm`, checked; true if it succeeded.
    fn enable_groups(
        &mut self,
        vm: &VmFd,
        serial: u64,
        args: [u64; 4],
        irqchip: bool,
        has_vcpus: bool,
    ) -> Result<bool> {
        let expected = enable_groups_expected(args, irqchip, has_vcpus);
        self.stats.count(Call::EnableCap);
        let r = vtlkit_uapi::enable_apic_groups_raw(vm, args);
        let got = r.as_ref().err().map(|e| e.errno());
        let what = format!(
            "VM {serial}: KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS, args {args:x?}) [irqchip {irqchip}, vCPUs created {has_vcpus}]"
        );
        self.note(format!("{what} -> {}", got.map_or("ok".into(), errname)));
        match got {
            None if expected.is_empty() => Ok(true),
            None => bail!("{what}: succeeded, expected {}", errset(&expected)),
            Some(e) if expected.contains(&e) => Ok(false),
            Some(e) => bail!("{what}: got {}, expected {}", errname(e), errset(&expected)),
        }
    }

    fn random_cap_args(&mut self) -> [u64; 4] {
        let mut args = [0u64; 4];
        if self.rng.one_in(3) {
            args[self.rng.below(4) as usize] = 1 << self.rng.below(64);
        }
        args
    }

    fn create_vm(&mut self) -> Result<()> {
        let irqchip = !self.rng.one_in(6);
        // Event notification ([`notify`]): some irqchip VMs get VTL sibling pairs; those have
        // 32-bit x2APIC IDs and no Hyper-V leaves (their runners answer no Hyper-V exits).
        let notify_pairs = self.notify_supported && irqchip && self.rng.one_in(3);
        // Hyper-V (series v3): some irqchip VMs get the Hyper-V CPUID leaves.
        let hyperv = self.hv_supported && irqchip && !notify_pairs && !self.rng.one_in(3);
        self.stats.count(Call::CreateVm);
        let mut vm = TestVm::new(VmOptions {
            irqchip,
            apic_groups: false,
            hyperv,
        })?;
        let groups = vtlkit_uapi::apic_groups_supported(&vm.kvm);
        let serial = self.next_serial;
        self.next_serial += 1;
        self.stats.vms.fetch_add(1, Ordering::Relaxed);
        // x2APIC API: sometimes 32-bit IDs, sometimes without the broadcast quirk.
        let mut x2apic_format = false;
        if notify_pairs || self.rng.one_in(2) {
            let mut flags = 0;
            if notify_pairs || self.rng.one_in(2) {
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
        // Pair siblings have APIC IDs above 0xff ([`notify`]).
        if !notify_pairs && self.rng.one_in(3) {
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
        // The opt-in: most irqchip VMs, with wrong arguments and repeats on the way; some VMs
        // never opt in (and then run the stock paths); without an irqchip it must fail.
        let mut opted = false;
        if self.rng.one_in(4) {
            let args = self.random_cap_args();
            opted |= self.enable_groups(&vm.fd, serial, args, irqchip, false)?;
        }
        if !self.rng.one_in(4) {
            opted |= self.enable_groups(&vm.fd, serial, [0; 4], irqchip, false)?;
            if self.rng.one_in(3) {
                opted |= self.enable_groups(&vm.fd, serial, [0; 4], irqchip, false)?;
            }
        }
        let notify_enabled = self.notify_enable_at_create(&vm.fd, serial, irqchip, notify_pairs)?;
        let prot = self.prot_at_create(&vm.fd, serial)?;
        let code = fuzz_guest_code();
        check!(
            code.len() as u64 <= FUZZ_TABLES - FUZZ_CODE,
            "fuzz guest code too big"
        );
        vm.mem.write(FUZZ_CODE, code)?;
        install_nmi_gate(&vm.mem)?;
        let mem = Arc::clone(&vm.mem);
        let all = (1u32 << groups.clamp(1, vector::MAX_GROUPS)) - 1;
        let plan = Plan {
            groups,
            opted,
            irqchip,
            x2apic_format,
            nmi_groups: self.rng.next_u32() & all,
            nmi_mc_groups: self.rng.next_u32() & self.rng.next_u32() & all,
            nmi_slots: self.rng.next_u32() as u8,
            kick_groups: self.rng.next_u32() & all,
            kick_slots: self.rng.next_u32() as u8,
        };
        let plan = Plan {
            nmi_mc_groups: plan.nmi_mc_groups & plan.nmi_groups,
            ..plan
        };
        // Groups whose vCPUs make Hyper-V hypercalls (their group gets a guest OS ID), the
        // others make KVM ones; most Hyper-V VMs have both kinds.
        let hv_groups = if hyperv {
            self.rng.next_u32() & all | u32::from(self.rng.one_in(2))
        } else {
            0
        };
        let hvm = hv::HvVm::new(hyperv, hv_groups);
        if hyperv {
            hv::install_handler(&mut vm, &hvm.exchange);
            self.stats.hv_vms.fetch_add(1, Ordering::Relaxed);
        }
        self.note(format!(
            "create VM {serial}: irqchip={irqchip} opted_in={opted} x2apic_format={x2apic_format} max_vcpu_ids={max_vcpu_ids} NMI groups {:#x} (multicast {:#x}) slots {:#x}, kick groups {:#x} slots {:#x}, Hyper-V {hyperv} (Hyper-V groups {hv_groups:#x})",
            plan.nmi_groups, plan.nmi_mc_groups, plan.nmi_slots, plan.kick_groups, plan.kick_slots
        ));
        let mut fvm = FuzzVm {
            serial,
            vm,
            mem,
            plan,
            max_vcpu_ids,
            vcpus: Vec::new(),
            batches: Vec::new(),
            injector: None,
            routes: None,
            probe_route: None,
            probe_irqfd: None,
            hv: hvm,
            notify: notify::NotifyVm::new(notify_enabled, notify_pairs),
            prot,
        };
        if irqchip && hyperv {
            let efd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| anyhow!("eventfd: {e}"))?;
            self.stats.count(Call::Irqfd);
            fvm.vm
                .fd
                .register_irqfd(&efd, hv::SINT_GSI)
                .map_err(|e| anyhow!("KVM_IRQFD(gsi {}): {e}", hv::SINT_GSI))?;
            fvm.hv.sint_irqfd = Some(efd);
        }
        if irqchip {
            fvm.injector = Some(Self::spawn_injector(&mut self.rng, &self.stats, &fvm)?);
            let efd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| anyhow!("eventfd: {e}"))?;
            self.stats.count(Call::Irqfd);
            fvm.vm
                .fd
                .register_irqfd(&efd, PROBE_GSI)
                .map_err(|e| anyhow!("KVM_IRQFD(gsi {PROBE_GSI}): {e}"))?;
            fvm.probe_irqfd = Some(efd);
        }
        self.vms.push(fvm);
        if self.hv_supported && self.rng.one_in(3) {
            let k = self.vms.len() - 1;
            self.enable_vsm(k)?;
        }
        if notify_pairs {
            // Pairs from the start (the VM may not live long).
            let k = self.vms.len() - 1;
            self.pair_create(k)?;
        }
        Ok(())
    }

    fn spawn_injector(rng: &mut Rng, stats: &Arc<Stats>, fvm: &FuzzVm) -> Result<Injector> {
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
            let gsi = GSI_BASE + rng.below_u32(GSI_SPAN);
            let efd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| anyhow!("eventfd: {e}"))?;
            stats.count(Call::Irqfd);
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
            rng: rng.fork(),
            stats: Arc::clone(stats),
            stop: Arc::clone(&stop),
            plan: fvm.plan,
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

    /// KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) on a VM that exists: EBUSY once it has vCPUs; on a
    /// VM without vCPUs that did not opt in yet it opts in (its injector is restarted with the
    /// new rules).
    fn enable_cap_late(&mut self, k: usize) -> Result<()> {
        let args = self.random_cap_args();
        let (irqchip, has_vcpus, serial) = {
            let fvm = &self.vms[k];
            (fvm.plan.irqchip, !fvm.vcpus.is_empty(), fvm.serial)
        };
        if let Some(mut inj) = self.vms[k].injector.take() {
            inj.finish()
                .with_context(|| format!("VM {serial}: injector thread"))?;
        }
        // SAFETY: dup() of a VM fd we own, so the VmFd can be used while self is borrowed.
        let fd = unsafe { libc::dup(self.vms[k].vm.fd.as_raw_fd()) };
        if fd < 0 {
            bail!("dup(VM fd): {}", std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly duplicated, owned VM fd; the VmFd closes it when dropped.
        let vmfd = unsafe { self.vms[k].vm.kvm.create_vmfd_from_rawfd(fd) }
            .map_err(|e| anyhow!("VmFd from dup'd fd: {e}"))?;
        let ok = self.enable_groups(&vmfd, serial, args, irqchip, has_vcpus)?;
        drop(vmfd);
        if ok {
            self.vms[k].plan.opted = true;
        }
        if irqchip {
            let inj = Self::spawn_injector(&mut self.rng, &self.stats, &self.vms[k])?;
            self.vms[k].injector = Some(inj);
        }
        Ok(())
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
        self.create_vcpu_id(k, id).map(|_| ())
    }

    /// Create vCPU `id` of VM k (free, below its limit) in the model too; returns its index.
    fn create_vcpu_id(&mut self, k: usize, id: u64) -> Result<usize> {
        let fvm = &mut self.vms[k];
        self.stats.count(Call::CreateVcpu);
        let index = fvm.vm.add_vcpu(id, Entry::ApicMain)?;
        // Start at the fuzz guest instead.
        let fd = fvm.fd(index)?;
        let mut regs = fd.get_regs().map_err(|e| anyhow!("KVM_GET_REGS: {e}"))?;
        regs.rip = FUZZ_CODE;
        fd.set_regs(&regs)
            .map_err(|e| anyhow!("KVM_SET_REGS: {e}"))?;
        let mode = if fvm.plan.irqchip {
            ApicMode::Xapic
        } else {
            ApicMode::Disabled
        };
        let assigned = (!fvm.plan.opted).then_some(ApicGroup {
            group: 0,
            apic_id: id as u32,
            vtl: 0,
        });
        let mut v = VcpuModel {
            id,
            assigned,
            slots: 0,
            ran: false,
            running: false,
            mode,
            id_reg: ((id as u8) as u32) << 24,
            steady: true,
            probes: [0; 4],
            // KVM's default VP index is the vCPU's index (vcpu_idx).
            vp: index as u32,
            synic: false,
            hv_ipis: 0,
            hv_exits: 0,
            paired: false,
            sink: false,
            notify_armed: None,
            notify_sent: notify::Sent::default(),
        };
        v.note_ids();
        fvm.vcpus.push(v);
        self.stats.vcpus.fetch_add(1, Ordering::Relaxed);
        let serial = fvm.serial;
        self.note(format!("VM {serial}: create vCPU {id} (index {index})"));
        // A new vCPU must read as unassigned (opted in) or (0, vcpu_id, 0).
        self.check_get(k, index, "a new vCPU")?;
        Ok(index)
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
        let ids: Vec<u32> = fvm.vcpus.iter().map(VcpuModel::apic_id).collect();
        let own = fvm.vcpus[index].apic_id();
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
        let groups = self.vms[k].plan.groups;
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

    /// Valid calls: a free (group, ID) for an unassigned vCPU (success), a repeat of a vCPU's
    /// own assignment, also after it ran (success), another vCPU's (group, ID) (EEXIST).
    fn set_apic_group_valid(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !fvm.plan.irqchip || !fvm.plan.opted {
            return self.set_apic_group_random(k);
        }
        let idle = |f: &dyn Fn(&VcpuModel) -> bool| -> Vec<usize> {
            (0..fvm.vcpus.len())
                .filter(|&i| !fvm.vcpus[i].running && f(&fvm.vcpus[i]))
                .collect()
        };
        let unassigned = idle(&|v| v.assigned.is_none());
        let assigned = idle(&|v| v.assigned.is_some());
        let all_assigned: Vec<ApicGroup> = fvm.vcpus.iter().filter_map(|v| v.assigned).collect();
        let groups = fvm.plan.groups;
        let max = fvm.max_apic_id();
        match self.rng.below(6) {
            0 => {
                // Repeat an assignment: success, even after the vCPU ran.
                let Some(index) = self.rng.pick(&assigned) else {
                    return Ok(());
                };
                let Some(a) = self.vms[k].vcpus[index].assigned else {
                    return Ok(());
                };
                return self.do_set_apic_group(k, index, a.into());
            }
            1 => {
                // Another vCPU's (group, APIC ID): EEXIST (or EBUSY if this one has its own).
                let (Some(index), Some(other)) =
                    (self.rng.pick(&unassigned), self.rng.pick(&all_assigned))
                else {
                    return Ok(());
                };
                let ag = ApicGroup {
                    vtl: self.rng.below(16) as u8,
                    ..other
                };
                return self.do_set_apic_group(k, index, ag.into());
            }
            _ => {}
        }
        let Some(index) = self.rng.pick(&unassigned) else {
            return Ok(());
        };
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

    /// KVM_SET_APIC_GROUP with `ag`; checks the result (in kvm_lapic_set_apic_group()'s order
    /// of checks) and the state after it.
    fn do_set_apic_group(&mut self, k: usize, index: usize, ag: raw::kvm_apic_group) -> Result<()> {
        let fvm = &self.vms[k];
        let v = &fvm.vcpus[index];
        let asked = ApicGroup::from(ag);
        let expected: Option<i32> = if !fvm.plan.irqchip {
            Some(libc::ENXIO)
        } else if !fvm.plan.opted
            || ag.flags != 0
            || ag.pad != [0; 3]
            || ag.reserved != [0; 4]
            || ag.group >= fvm.plan.groups
            || ag.vtl > vtlkit_uapi::MAX_VTL
            || ag.apic_id > fvm.max_apic_id()
        {
            Some(libc::EINVAL)
        } else if let Some(a) = v.assigned {
            (a != asked).then_some(libc::EBUSY)
        } else if fvm.taken(ag.group, ag.apic_id, index) {
            Some(libc::EEXIST)
        } else {
            None
        };
        let what = format!(
            "VM {} vCPU {}: KVM_SET_APIC_GROUP(group {}, apic_id {:#x}, vtl {}, flags {:#x}, pad {:?}, reserved {:x?}) [opted in {}, now {:?}, max_apic_id {:#x}, ran {}]",
            fvm.serial, v.id, ag.group, ag.apic_id, ag.vtl, ag.flags, ag.pad, ag.reserved, fvm.plan.opted, v.assigned, fvm.max_apic_id(), v.ran
        );
        self.stats.count(Call::SetApicGroup);
        let r = fvm.fd(index)?.set_apic_group_raw(&ag);
        let got = r.as_ref().err().map(|e| e.errno());
        self.note(format!("{what} -> {}", got.map_or("ok".into(), errname)));
        let mut newly_assigned = false;
        match (got, expected) {
            (None, None) => {
                let v = &mut self.vms[k].vcpus[index];
                if v.assigned.is_none() {
                    newly_assigned = true;
                    v.assigned = Some(asked);
                    // The ID registers are reset to the new ID, as at RESET.
                    if v.mode != ApicMode::X2apic {
                        v.id_reg = u32::from(ag.apic_id as u8) << 24;
                    }
                    v.slots = 0;
                    v.note_ids();
                }
            }
            (None, Some(e)) => bail!("{what}: succeeded, expected {}", errname(e)),
            (Some(e), Some(x)) if e == x => {}
            (Some(e), x) => bail!(
                "{what}: got {}, expected {}",
                errname(e),
                x.map_or("success".into(), errname)
            ),
        }
        if newly_assigned {
            // Before it runs: its VTL's restrictions of guest memory go ([`prot`]).
            self.prot_vtl_assigned(k, ag.vtl)?;
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
        let irqchip = fvm.plan.irqchip;
        match fvm.fd(index)?.get_apic_group_raw() {
            Ok(g) => {
                check!(
                    irqchip,
                    "VM {} vCPU {}: KVM_GET_APIC_GROUP without an in-kernel LAPIC succeeded ({g:?}), expected ENXIO",
                    fvm.serial,
                    v.id
                );
                let want = v.get_view();
                check!(
                    ApicGroup::from(g) == want
                        && g.flags == 0
                        && g.pad == [0; 3]
                        && g.reserved == [0; 4],
                    "VM {} vCPU {}: KVM_GET_APIC_GROUP {when} returned {g:?}, expected {want:?} with zero flags, pad and reserved (opted in {})",
                    fvm.serial,
                    v.id,
                    fvm.plan.opted
                );
            }
            Err(e) if e.errno() == libc::ENXIO && !irqchip => {}
            Err(e) => bail!(
                "VM {} vCPU {}: KVM_GET_APIC_GROUP {when}: {} (irqchip {irqchip})",
                fvm.serial,
                v.id,
                errname(e.errno()),
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
        // SET copies the structure in first; GET fails with ENXIO before copying out.
        let expected = if !fvm.plan.irqchip && !set {
            vec![libc::ENXIO]
        } else {
            vec![libc::EFAULT]
        };
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

    /// KVM_RUN of an unassigned vCPU of an opted-in VM: ENOEXEC, and nothing changes.
    fn run_unassigned(&mut self, k: usize) -> Result<()> {
        let fvm = &mut self.vms[k];
        let candidates: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&i| !fvm.vcpus[i].running && fvm.vcpus[i].assigned.is_none())
            .collect();
        let Some(index) = self.rng.pick(&candidates) else {
            return Ok(());
        };
        let serial = fvm.serial;
        let id = fvm.vcpus[index].id;
        let vcpu = fvm
            .vm
            .vcpus
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or_else(|| anyhow!("VM {serial}: vCPU index {index} is not idle"))?;
        self.stats.count(Call::Run);
        let what = format!("VM {serial} vCPU {id}: KVM_RUN while unassigned");
        let got = match vcpu.fd.run() {
            Ok(exit) => Err(format!("ran and exited with {exit:?}")),
            Err(e) if e.errno() == libc::ENOEXEC => Ok(()),
            Err(e) => Err(errname(e.errno())),
        };
        self.note(format!(
            "{what} -> {}",
            got.as_ref()
                .map_or_else(|e| e.clone(), |()| "ENOEXEC".into())
        ));
        if let Err(e) = got {
            bail!("{what}: {e}, expected ENOEXEC");
        }
        self.check_get(k, index, "after a refused KVM_RUN")
    }

    /// IDs worth aiming at in VM k.
    fn ids(&self, k: usize) -> Vec<u32> {
        self.vms[k].vcpus.iter().map(VcpuModel::apic_id).collect()
    }

    fn signal_msi(&mut self, k: usize) -> Result<()> {
        let ids = self.ids(k);
        let fvm = &self.vms[k];
        let pick = random_msi(&mut self.rng, &ids, &fvm.plan);
        let (members, matching) = match pick.class {
            MsiClass::Group(g) => (
                Some(fvm.members(g)),
                pick.unicast.map(|d| fvm.matching(g, d)),
            ),
            _ => (None, None),
        };
        let what = format!(
            "VM {}: KVM_SIGNAL_MSI({}) [{:?}{}, opted in {}, irqchip {}]",
            fvm.serial,
            pick.describe(),
            pick.class,
            if pick.nmi { ", NMI" } else { "" },
            fvm.plan.opted,
            fvm.plan.irqchip
        );
        self.stats.count(Call::SignalMsi);
        let r = fvm.vm.fd.signal_msi(pick.msi).map_err(|e| e.errno());
        self.note(format!("{what} -> {}", show(r)));
        check_msi_result(&what, r, &pick, members, matching)
    }

    /// A random routing table (MSI routes through [`random_msi`], masked IOAPIC pins, bad
    /// entries), sometimes with the level-triggered probe's IOAPIC route and the MSI-route
    /// probe; on success it becomes the model's table.
    fn set_gsi_routing(&mut self, k: usize) -> Result<()> {
        let ids = self.ids(k);
        let n = self.rng.below(9) as usize;
        let plan = self.vms[k].plan;
        let mut entries = Vec::new();
        let mut model = Vec::new();
        let mut invalid = !plan.irqchip;
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
            if self.hv_supported && self.rng.one_in(6) {
                // A Hyper-V SINT route, naming a group or not.
                let (e, m, d, bad) = self.random_sint_route(k, gsi);
                invalid |= bad;
                entries.push(e);
                model.push(m);
                desc.push(d);
                continue;
            }
            if self.rng.one_in(5) {
                // An IOAPIC pin (masked, so it delivers nothing).
                let pin = if self.rng.one_in(5) {
                    24 + self.rng.below_u32(8)
                } else {
                    RANDOM_PINS.start + self.rng.below_u32(RANDOM_PINS.len() as u32)
                };
                let flags = if self.rng.one_in(10) { 1 } else { 0 };
                if pin >= 24 || flags != 0 {
                    invalid = true;
                }
                entries.push(ioapic_route(gsi, pin, flags));
                model.push(Route::Ioapic { gsi });
                desc.push(format!("{gsi}:ioapic pin {pin} flags {flags:#x}"));
                continue;
            }
            let pick = random_msi(&mut self.rng, &ids, &plan);
            match pick.class {
                MsiClass::Invalid => invalid = true,
                MsiClass::DevidOnly => devid_only = true,
                MsiClass::Group(_) => {}
            }
            let group = match pick.class {
                MsiClass::Group(g) => g,
                _ => 0,
            };
            entries.push(msi_route(gsi, &pick.msi));
            model.push(Route::Msi {
                gsi,
                group,
                flagged: pick.flagged(),
                unicast: pick.unicast,
            });
            desc.push(format!("{gsi}:msi {}", pick.describe()));
        }
        if self.rng.one_in(2) {
            entries.push(ioapic_route(LEVEL_GSI, LEVEL_PIN, 0));
            model.push(Route::Ioapic { gsi: LEVEL_GSI });
            desc.push(format!("{LEVEL_GSI}:ioapic pin {LEVEL_PIN} (level probe)"));
        }
        let mut probe = None;
        if self.rng.one_in(2) {
            let fvm = &self.vms[k];
            let targets: Vec<(usize, u32, u32)> = (0..fvm.vcpus.len())
                .filter_map(|i| fvm.probe_receiver(i).map(|(g, d)| (i, g, d)))
                .filter(|&(_, _, d)| d <= 0xfe || plan.x2apic_format)
                .collect();
            if let Some((target, group, dest)) = self.rng.pick(&targets) {
                let flagged = plan.opted && (group != 0 || self.rng.one_in(2));
                let msi = probe_msi(dest, vector::PROBE_ROUTE, flagged.then_some(group), &plan);
                entries.push(msi_route(PROBE_GSI, &msi));
                model.push(Route::Msi {
                    gsi: PROBE_GSI,
                    group,
                    flagged,
                    unicast: Some(dest),
                });
                desc.push(format!(
                    "{PROBE_GSI}:msi probe to index {target} (group {group}, APIC ID {dest:#x}, flagged {flagged})"
                ));
                probe = Some(ProbeRoute {
                    target,
                    group,
                    dest,
                });
            }
        }
        let mut sint_probe = None;
        if self.hv_supported && self.rng.one_in(2) {
            if let Some((e, m, d, target)) = self.sint_probe_route(k) {
                entries.push(e);
                model.push(m);
                desc.push(d);
                sint_probe = Some(target);
            }
        }
        // A GSI may appear twice only for two different irqchips.
        for (i, a) in entries.iter().enumerate() {
            for b in &entries[..i] {
                if a.gsi == b.gsi {
                    invalid = true;
                }
            }
        }
        if self.rng.one_in(40) {
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
        let fvm = &self.vms[k];
        let what = format!(
            "VM {}: KVM_SET_GSI_ROUTING(flags {table_flags}, [{}]) [irqchip {}, opted in {}]",
            fvm.serial,
            desc.join(", "),
            plan.irqchip,
            plan.opted
        );
        self.stats.count(Call::SetGsiRouting);
        let r = fvm.vm.fd.set_gsi_routing(&routing).map_err(|e| e.errno());
        self.note(format!("{what} -> {}", show(r.map(|()| 0))));
        match r {
            Ok(()) if !invalid => {
                // The kernel's table is the new one now.
                let sints = model
                    .iter()
                    .filter(|r| matches!(r, Route::Sint { .. }))
                    .count();
                self.stats.add(&self.stats.sint_routes, sints as u64);
                let fvm = &mut self.vms[k];
                fvm.routes = Some(model);
                fvm.probe_route = probe;
                fvm.hv.sint_probe = sint_probe;
                Ok(())
            }
            Ok(()) => bail!("{what}: succeeded, expected EINVAL"),
            // A failed call leaves the old table in place.
            Err(libc::EINVAL) if invalid || devid_only => Ok(()),
            Err(e) => bail!(
                "{what}: got {}, expected {}",
                errname(e),
                if invalid { "EINVAL" } else { "success" }
            ),
        }
    }

    /// KVM_IRQ_LINE_STATUS on a GSI of the random span: the status must agree with the model's
    /// route for it (an MSI route that names its group reports how many vCPUs took it, never
    /// -1; a GSI without a route reaches nobody).
    fn irq_line(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !fvm.plan.irqchip {
            return Ok(());
        }
        let routed: Vec<u32> = fvm
            .routes
            .iter()
            .flatten()
            .map(Route::gsi)
            .filter(|g| (GSI_BASE..GSI_BASE + GSI_SPAN).contains(g))
            .collect();
        let gsi = match self.rng.pick(&routed) {
            Some(g) if !self.rng.one_in(4) => g,
            _ => GSI_BASE + self.rng.below_u32(GSI_SPAN),
        };
        let fvm = &self.vms[k];
        let routes: Vec<Route> = match &fvm.routes {
            Some(r) => r.iter().copied().filter(|r| r.gsi() == gsi).collect(),
            // The default table routes GSIs 16..23 to IOAPIC pins (masked).
            None if gsi < 24 => vec![Route::Ioapic { gsi }],
            None => Vec::new(),
        };
        let what = format!(
            "VM {}: KVM_IRQ_LINE_STATUS(gsi {gsi}, 1) [routes {routes:?}]",
            fvm.serial
        );
        self.stats.count(Call::IrqLine);
        let status = irq_line_status(&fvm.vm.fd, gsi, true).with_context(|| what.clone())?;
        self.stats.count(Call::IrqLine);
        fvm.vm
            .fd
            .set_irq_line(gsi, false)
            .map_err(|e| anyhow!("VM {}: KVM_IRQ_LINE({gsi}, 0): {e}", fvm.serial))?;
        self.note(format!("{what} -> {status}"));
        let fvm = &self.vms[k];
        match routes.as_slice() {
            [] => check!(
                status <= 0,
                "{what}: returned {status}, but the GSI has no route"
            ),
            [Route::Msi {
                group,
                flagged,
                unicast,
                ..
            }] => {
                let members = fvm.members(*group);
                check!(
                    status >= 0 || !flagged,
                    "{what}: an MSI route that names group {group} returned {status}, never negative per api.rst"
                );
                check!(
                    status <= members as i32,
                    "{what}: {status} vCPUs took it, group {group} has {members}"
                );
                if let Some(d) = unicast {
                    let m = fvm.matching(*group, *d);
                    check!(
                        status <= m as i32,
                        "{what}: {status} vCPUs took a physical MSI to {d:#x}, only {m} of group {group} can have that ID"
                    );
                }
            }
            [Route::Sint {
                group, vp, sint, ..
            }] => {
                self.stats.add(&self.stats.sint_raises, 1);
                hv::check_sint_line(fvm, &what, status, *group, *vp, *sint)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The APIC ID register KVM_GET_LAPIC must report.
    fn expected_lapic_id(fvm: &FuzzVm, v: &VcpuModel) -> u32 {
        match v.mode {
            ApicMode::X2apic if fvm.plan.x2apic_format => v.apic_id(),
            ApicMode::X2apic => v.apic_id() << 24,
            _ => v.id_reg,
        }
    }

    fn check_lapic_id(&mut self, k: usize, index: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !fvm.plan.irqchip {
            return Ok(());
        }
        let v = &fvm.vcpus[index];
        self.stats.count(Call::GetLapic);
        let lapic = fvm
            .fd(index)?
            .get_lapic()
            .map_err(|e| anyhow!("VM {} vCPU {}: KVM_GET_LAPIC: {e}", fvm.serial, v.id))?;
        let id = crate::vm::lapic_read(&lapic, 0x20);
        let want = Self::expected_lapic_id(fvm, v);
        check!(
            id == want,
            "VM {} vCPU {}: KVM_GET_LAPIC ID register {id:#x}, expected {want:#x} ({:?}, mode {:?}, x2apic_format {})",
            fvm.serial,
            v.id,
            v.assigned,
            v.mode,
            fvm.plan.x2apic_format
        );
        Ok(())
    }

    /// KVM_GET_LAPIC, then KVM_SET_LAPIC of the same image or with another ID register.
    fn lapic(&mut self, k: usize) -> Result<()> {
        if !self.vms[k].plan.irqchip {
            return Ok(());
        }
        let Some(index) = self.idle_vcpu(k) else {
            return Ok(());
        };
        // KVM_SET_LAPIC rewrites IRR: a stopped pair sibling's pending events stay its own.
        if self.vms[k].vcpus[index].paired {
            return Ok(());
        }
        self.check_lapic_id(k, index)?;
        let fvm = &self.vms[k];
        let v = &fvm.vcpus[index];
        let fd = fvm.fd(index)?;
        self.stats.count(Call::GetLapic);
        let mut lapic = fd
            .get_lapic()
            .map_err(|e| anyhow!("VM {} vCPU {}: KVM_GET_LAPIC: {e}", fvm.serial, v.id))?;
        let old = crate::vm::lapic_read(&lapic, 0x20);
        let new = match self.rng.below(5) {
            0 | 1 => old,
            2 => v.apic_id(),
            3 => u32::from(self.rng.below(0x10) as u8) << 24,
            _ => self.rng.next_u32(),
        };
        crate::vm::lapic_write(&mut lapic, 0x20, new);
        let x2 = v.mode == ApicMode::X2apic;
        let must_fail = x2 && fvm.plan.x2apic_format && new != v.apic_id();
        let what = format!(
            "VM {} vCPU {}: KVM_SET_LAPIC with ID register {new:#x} (was {old:#x}, {:?}, mode {:?}, x2apic_format {})",
            fvm.serial, v.id, v.assigned, v.mode, fvm.plan.x2apic_format
        );
        self.stats.count(Call::SetLapic);
        let r = fd.set_lapic(&lapic).map_err(|e| e.errno());
        self.note(format!("{what} -> {}", show(r.map(|()| 0))));
        match r {
            Ok(()) if !must_fail => {
                if !x2 {
                    let v = &mut self.vms[k].vcpus[index];
                    v.id_reg = new;
                    v.note_ids();
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
        if !fvm.plan.irqchip {
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
        let bsp = msrs.as_slice().first().map_or(0, |m| m.data) & APIC_BASE_BSP;
        let value = layout::XAPIC
            | bsp
            | match mode {
                ApicMode::Disabled => 0,
                ApicMode::Xapic => APIC_BASE_EN,
                ApicMode::X2apic => APIC_BASE_EN | APIC_BASE_EXTD,
            };
        if let Some(m) = msrs.as_mut_slice().first_mut() {
            m.data = value;
        }
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
        let byte_id = u32::from(v.apic_id() as u8) << 24;
        match (v.mode, mode) {
            (a, b) if a == b => {}
            (_, ApicMode::Xapic) => v.id_reg = byte_id,
            (ApicMode::X2apic, ApicMode::Disabled) => v.id_reg = v.apic_id(),
            _ => {}
        }
        v.mode = mode;
        v.note_ids();
        self.check_lapic_id(k, index)
    }

    /// Start every vCPU of VM k that is not on a thread and may run (assigned, in an opted-in
    /// VM): new ones run the guest loop, stopped ones resume it; check the new ones' view of
    /// their APIC ID.
    fn start_vcpus(&mut self, k: usize) -> Result<()> {
        let total_running: usize = self.vms.iter().map(FuzzVm::running_count).sum();
        let fvm = &self.vms[k];
        if !fvm.plan.irqchip {
            return Ok(());
        }
        let idle: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&i| {
                let v = &fvm.vcpus[i];
                !v.running && v.assigned.is_some() && !v.paired && !v.sink
            })
            .collect();
        if idle.is_empty() || total_running + idle.len() > MAX_RUNNING {
            return Ok(());
        }
        // Batches run disarmed vCPUs (an armed vCPU that runs notifies spuriously).
        self.notify_disarm_all(k, &idle)?;
        // Unassigned vCPUs stay behind: KVM_RUN refuses them (run_unassigned checks that).
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
        // TestVm::start starts every idle vCPU, unassigned ones too: keep those out.
        let parked: Vec<(usize, crate::vm::Vcpu)> = (0..fvm.vm.vcpus.len())
            .filter(|i| !idle.contains(i))
            .filter_map(|i| fvm.vm.vcpus[i].take().map(|v| (i, v)))
            .collect();
        let started = fvm.vm.start();
        for (i, v) in parked {
            fvm.vm.vcpus[i] = Some(v);
        }
        let running = started?;
        let serial = fvm.serial;
        fvm.batches.push(Batch {
            running,
            indexes: idle.clone(),
        });
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
                (ApicMode::Xapic, u32::from(v.apic_id() as u8) << 24)
            } else {
                (ApicMode::Xapic, v.id_reg)
            };
            let want = if x2 {
                u64::from(v.apic_id())
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
            v.note_ids();
        }
        Ok(())
    }

    /// Write the send table and inputs of never-run vCPU `i` of VM k, and choose its role.
    fn prepare_guest(&mut self, k: usize, i: usize, x2: bool) -> Result<()> {
        let chaotic = self.rng.one_in(3);
        // Pair siblings must take every interrupt they are switched in for.
        let steady = !chaotic || self.vms[k].vcpus[i].paired;
        if self.hv_supported && self.vms[k].hv.cpuid {
            self.hv_prepare(k, i)?;
        }
        let fvm = &self.vms[k];
        let plan = fvm.plan;
        let me = &fvm.vcpus[i];
        let Some(g) = me.group() else {
            bail!("VM {}: vCPU {} starts without a group", fvm.serial, me.id);
        };
        let own = me.apic_id();
        let peers: Vec<u32> = fvm
            .vcpus
            .iter()
            .filter(|v| v.group() == Some(g))
            .map(VcpuModel::apic_id)
            .collect();
        // A unicast IPI to `d`: an xAPIC sender sends 8 bits, 0xff is a broadcast to xAPIC
        // receivers, and u32::MAX the x2APIC broadcast.
        let unicast = |d: u32| d & 0xff != 0xff && d != u32::MAX;
        let fixed = |d: u32| {
            let v = if unicast(d) {
                uc_vector(g, d)
            } else {
                mc_vector(g)
            };
            u64::from(u32::from(v) | LEVEL_ASSERT)
        };
        let mc = u32::from(mc_vector(g)) | LEVEL_ASSERT;
        // In a group with a guest OS ID, `vmmcall` is a Hyper-V hypercall: no KVM hypercalls
        // (PV IPIs, kicks) there, but background Hyper-V IPIs to the sender's own VTL.
        let hv_mode = fvm.hv.cpuid && fvm.hv.os_id[(g % 16) as usize] != 0;
        let own_vtl = me.assigned.map_or(0, |a| a.vtl);
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
            let icr = |d: u32, low: u32| [prog::ICR, u64::from(d), u64::from(low), 0, 0];
            let plain = [prog::ICR, u64::from(dest), fixed(dest), 0, 0];
            let words: [u64; 5] = match self.rng.below(20) {
                0..=5 => plain,
                6 => icr(0, u32::from(uc_vector(g, own)) | LEVEL_ASSERT | SH_SELF),
                7 => icr(
                    0,
                    mc | self.rng.pick(&[SH_ALL, SH_OTHERS]).unwrap_or(SH_ALL),
                ),
                8 => icr(if x2 { u32::MAX } else { 0xff }, mc),
                9 => icr(
                    logical_dest,
                    mc | DEST_LOGICAL | if self.rng.one_in(2) { DM_LOWEST } else { 0 },
                ),
                10..=11 | 14..=15 if hv_mode => {
                    let vtl = if plan.opted && self.rng.one_in(2) {
                        crate::hyperv::input_vtl(own_vtl, true)
                    } else {
                        0
                    };
                    let rdx = u64::from(mc_vector(g)) | u64::from(vtl) << 32;
                    let fast = crate::hyperv::control::FAST;
                    if self.rng.one_in(2) {
                        let c = u64::from(crate::hyperv::call::SEND_IPI) | fast;
                        [kind::HV_IPI, c, rdx, self.rng.below(0x400), hv::BG_RAX]
                    } else {
                        let c = u64::from(crate::hyperv::call::SEND_IPI_EX) | fast;
                        let all = crate::hyperv::GENERIC_SET_ALL;
                        [kind::HV_IPI, c, rdx, all, hv::BG_RAX]
                    }
                }
                10..=11 => {
                    let min = dest.saturating_sub(self.rng.below_u32(3));
                    let bitmap = 1u64 << (dest - min);
                    [prog::PV_IPI, bitmap, 0, min.into(), fixed(dest)]
                }
                12..=13 => {
                    // NMIs only where the plan allows them.
                    let nmi = DM_NMI | LEVEL_ASSERT;
                    if unicast(dest) && plan.nmi_unicast_ok(g, dest) {
                        icr(dest, nmi)
                    } else if plan.nmi_mc_ok(g) {
                        let sh = self
                            .rng
                            .pick(&[SH_SELF, SH_ALL, SH_OTHERS])
                            .unwrap_or(SH_ALL);
                        icr(0, nmi | sh)
                    } else {
                        plain
                    }
                }
                14..=15 => {
                    // Kicks likewise.
                    if plan.kick_ok(g, dest) {
                        [kind::KICK, u64::from(dest), 0, 0, 0]
                    } else {
                        plain
                    }
                }
                16 if !steady => [kind::SLEEP, 0, 0, 0, 0],
                17 if !steady => [kind::SVR, 1 + self.rng.below(200), 0, 0, 0],
                18..=19 if !x2 => {
                    let dfr = if self.rng.one_in(2) {
                        0xffff_ffffu64
                    } else {
                        0x0fff_ffff
                    };
                    let ldr = u64::from(self.rng.next_u32() & 0xff00_0000);
                    [kind::LDR, dfr, ldr, 0, 0]
                }
                _ => plain,
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
            fz::APIC_ENABLE,
            helper_gpa(&raw const vtlkit_guest_apic_enable),
        )?;
        vm.set_pcpu(
            i,
            fz::SEND_ICR,
            helper_gpa(&raw const vtlkit_guest_apic_send_icr),
        )?;
        vm.set_pcpu(
            i,
            fz::PV_IPI,
            helper_gpa(&raw const vtlkit_guest_pv_send_ipi),
        )?;
        vm.set_pcpu(i, fz::SEED, seed)?;
        vm.set_pcpu(i, fz::MASK, TABLE_ENTRIES - 1)?;
        let serial = fvm.serial;
        let id = me.id;
        self.vms[k].vcpus[i].steady = steady;
        self.note(format!(
            "VM {serial} vCPU {id}: guest table written ({}, {}{})",
            if x2 { "x2APIC" } else { "xAPIC" },
            if hv_mode { "Hyper-V hypercalls, " } else { "" },
            if steady {
                "steady"
            } else {
                "chaotic: halts, SVR toggles"
            }
        ));
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
        for i in batch.indexes {
            self.check_get(k, i, "after running")?;
            self.check_lapic_id(k, i)?;
            let fvm = &self.vms[k];
            check_vcpu(fvm, i, None, None)?;
            if self.hv_supported {
                hv::check_exit_stat(fvm, i)?;
            }
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
        for i in 0..fvm.vcpus.len() {
            check_vcpu(fvm, i, None, None)?;
        }
        Ok(())
    }

    /// Wait until vCPU `t` of VM k handled `vector` more than `before` times; fail after
    /// [`PROBE_TIMEOUT`] with what its guest recorded.
    fn wait_handled(&self, k: usize, t: usize, vector: u8, before: u32, what: &str) -> Result<()> {
        let fvm = &self.vms[k];
        let gpa = TestVm::pcpu_gpa(t) + pcpu::IRQ_COUNTS + 4 * u64::from(vector);
        let batch = fvm
            .batch_of(t)
            .ok_or_else(|| anyhow!("{what}: vCPU index {t} is not running"))?;
        let mem = &fvm.mem;
        let arrived = batch
            .running
            .wait_until(PROBE_TIMEOUT, || Ok(mem.read_u32(gpa)? > before))
            .with_context(|| what.to_string())?;
        if !arrived {
            let v = &fvm.vcpus[t];
            let rec = GuestRecord::read(mem, t)
                .map(|r| r.to_string())
                .unwrap_or_else(|e| format!("guest record unreadable: {e:#}"));
            bail!(
                "{what}: vCPU {} (index {t}, {:?}, mode {:?}, steady, running) did not handle vector {vector:#x} within {PROBE_TIMEOUT:?} (handled {before} before); {rec}",
                v.id,
                v.assigned,
                v.mode
            );
        }
        Ok(())
    }

    /// Receivers for a probe in VM k: (index, group, APIC ID) of every vCPU
    /// [`FuzzVm::probe_receiver`] accepts, whose ID an MSI can encode.
    fn msi_receivers(&self, k: usize) -> Vec<(usize, u32, u32)> {
        let fvm = &self.vms[k];
        (0..fvm.vcpus.len())
            .filter_map(|i| fvm.probe_receiver(i).map(|(g, d)| (i, g, d)))
            .filter(|&(_, _, d)| d <= 0xfe || fvm.plan.x2apic_format)
            .collect()
    }

    /// A unicast MSI to a running, interruptible vCPU: KVM_SIGNAL_MSI returns 1, and that vCPU
    /// (no other: the probe vector is counted exactly) handles it in time.
    fn probe_msi(&mut self, k: usize) -> Result<()> {
        let receivers = self.msi_receivers(k);
        let Some((t, g, d)) = self.rng.pick(&receivers) else {
            return Ok(());
        };
        let plan = self.vms[k].plan;
        let flagged = plan.opted && (g != 0 || self.rng.one_in(2));
        let mut msi = probe_msi(d, vector::PROBE_MSI, flagged.then_some(g), &plan);
        if flagged && self.rng.one_in(3) {
            msi.flags |= KVM_MSI_VALID_DEVID;
            msi.devid = self.rng.next_u32();
        }
        let fvm = &self.vms[k];
        let before = handled(&fvm.mem, t, vector::PROBE_MSI)?;
        let what = format!(
            "VM {}: delivery probe KVM_SIGNAL_MSI(dest {d:#x}, group {g}, flags {:#x}) to vCPU {}",
            fvm.serial, msi.flags, fvm.vcpus[t].id
        );
        self.stats.count(Call::SignalMsi);
        let r = fvm.vm.fd.signal_msi(msi).map_err(|e| e.errno());
        self.note(format!("{what} -> {}", show(r)));
        check!(
            r == Ok(1),
            "{what}: returned {}, expected 1 (exactly one vCPU of group {g} has APIC ID {d:#x}, and it takes interrupts)",
            show(r)
        );
        self.wait_handled(k, t, vector::PROBE_MSI, before, &what)?;
        self.vms[k].vcpus[t].probes[0] += 1;
        self.stats.add(&self.stats.probes[0], 1);
        Ok(())
    }

    /// A fixed physical IPI from one running steady vCPU to another (or itself) in its group:
    /// the receiver handles it in time.
    fn probe_ipi(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        let receivers: Vec<(usize, u32, u32)> = (0..fvm.vcpus.len())
            .filter_map(|i| fvm.probe_receiver(i).map(|(g, d)| (i, g, d)))
            .collect();
        let Some((t, g, d)) = self.rng.pick(&receivers) else {
            return Ok(());
        };
        // Every earlier probe waited for its sender to clear the request, so any steady
        // running vCPU of the group can send (no guest memory read here: the main thread's
        // choices must not depend on timing, so that a seed replays them).
        let senders: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&s| {
                let v = &fvm.vcpus[s];
                v.running
                    && v.ran
                    && v.steady
                    && !v.paired
                    && v.group() == Some(g)
                    && (v.mode == ApicMode::X2apic || d <= 0xfe)
            })
            .collect();
        let Some(s) = self.rng.pick(&senders) else {
            return Ok(());
        };
        let before = handled(&fvm.mem, t, vector::PROBE_IPI)?;
        let what = format!(
            "VM {}: delivery probe IPI from vCPU {} ({:?}) to APIC ID {d:#x} of group {g} (vCPU {}, {:?})",
            fvm.serial, fvm.vcpus[s].id, fvm.vcpus[s].mode, fvm.vcpus[t].id, fvm.vcpus[t].mode
        );
        let page = TestVm::pcpu_gpa(s);
        fvm.mem.write_u64(page + fz::PROBE_DEST, u64::from(d))?;
        fvm.mem.write_u64(
            page + fz::PROBE_ICR,
            u64::from(u32::from(vector::PROBE_IPI) | LEVEL_ASSERT),
        )?;
        self.note(what.clone());
        self.wait_handled(k, t, vector::PROBE_IPI, before, &what)?;
        let fvm = &self.vms[k];
        let batch = fvm
            .batch_of(s)
            .ok_or_else(|| anyhow!("{what}: the sender is not running"))?;
        let cleared = batch.running.wait_until(PROBE_TIMEOUT, || {
            Ok(fvm.mem.read_u64(page + fz::PROBE_ICR)? == 0)
        })?;
        check!(
            cleared,
            "{what}: the sender did not clear its request within {PROBE_TIMEOUT:?}"
        );
        self.vms[k].vcpus[t].probes[1] += 1;
        self.stats.add(&self.stats.probes[1], 1);
        Ok(())
    }

    /// Fire [`PROBE_GSI`]. If the model's table routes it to a vCPU that is running and takes
    /// interrupts, through its irqfd or KVM_IRQ_LINE_STATUS, and that vCPU handles it in time;
    /// if the table has no route for it, through KVM_IRQ_LINE_STATUS, and it reaches nobody
    /// (the probe vector is counted exactly, so a stale route is caught at the next check).
    fn probe_route(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !fvm.plan.irqchip {
            return Ok(());
        }
        let routed = fvm.routes.iter().flatten().any(|r| r.gsi() == PROBE_GSI);
        let target = match fvm.probe_route {
            Some(p) if fvm.probe_receiver(p.target) == Some((p.group, p.dest)) => Some(p),
            Some(_) => return Ok(()),
            None if routed => bail!(
                "VM {}: model: GSI {PROBE_GSI} routed without a probe",
                fvm.serial
            ),
            None => None,
        };
        // Only through a route that exists: an irqfd write on a GSI without a route is
        // injected later by a work item, which looks the GSI up in whatever table is current
        // then, so a route set meanwhile may still deliver it. KVM_IRQ_LINE is synchronous.
        let by_irqfd = self.rng.one_in(2) && target.is_some();
        let before = match target {
            Some(p) => handled(&fvm.mem, p.target, vector::PROBE_ROUTE)?,
            None => 0,
        };
        let what = format!(
            "VM {}: delivery probe on GSI {PROBE_GSI} by {} [{}]",
            fvm.serial,
            if by_irqfd {
                "irqfd"
            } else {
                "KVM_IRQ_LINE_STATUS"
            },
            match target {
                Some(p) => format!(
                    "routed to APIC ID {:#x} of group {} (vCPU {})",
                    p.dest, p.group, fvm.vcpus[p.target].id
                ),
                None => "no route".into(),
            }
        );
        if by_irqfd {
            let efd = fvm
                .probe_irqfd
                .as_ref()
                .ok_or_else(|| anyhow!("VM {}: no probe irqfd", fvm.serial))?;
            efd.write(1)
                .map_err(|e| anyhow!("{what}: irqfd write: {e}"))?;
            self.stats.add(&self.stats.irqfd_writes, 1);
            self.note(what.clone());
        } else {
            let status = pulse_line(&fvm.vm.fd, &self.stats, PROBE_GSI, &what)?;
            self.note(format!("{what} -> {status}"));
            check_line_status(&what, status, target.is_some())?;
        }
        if let Some(p) = target {
            self.wait_handled(k, p.target, vector::PROBE_ROUTE, before, &what)?;
            self.vms[k].vcpus[p.target].probes[2] += 1;
            self.stats.add(&self.stats.probes[2], 1);
        }
        Ok(())
    }

    /// A level-triggered IOAPIC interrupt: [`LEVEL_GSI`] routed (per the model) to
    /// [`LEVEL_PIN`], whose redirection entry is programmed (KVM_SET_IRQCHIP) to a running
    /// steady group-0 vCPU. Raise the line: it must handle the vector; lower it: its EOI must
    /// clear the entry's Remote IRR.
    fn probe_level(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        if !fvm.plan.irqchip
            || !fvm
                .routes
                .iter()
                .flatten()
                .any(|r| matches!(r, Route::Ioapic { gsi } if *gsi == LEVEL_GSI))
        {
            return Ok(());
        }
        let receivers: Vec<(usize, u32)> = (0..fvm.vcpus.len())
            .filter_map(|i| match fvm.probe_receiver(i) {
                Some((0, d)) if d <= 0xfe => Some((i, d)),
                _ => None,
            })
            .collect();
        let Some((t, d)) = self.rng.pick(&receivers) else {
            return Ok(());
        };
        let vec = level_vector(d);
        let what = format!(
            "VM {}: level-triggered IOAPIC probe (GSI {LEVEL_GSI}, pin {LEVEL_PIN}, vector {vec:#x}) to APIC ID {d:#x} (vCPU {})",
            fvm.serial, fvm.vcpus[t].id
        );
        self.note(what.clone());
        let fvm = &self.vms[k];
        const LEVEL: u64 = 1 << 15;
        const REMOTE_IRR: u64 = 1 << 14;
        const MASKED: u64 = 1 << 16;
        let entry = u64::from(vec) | LEVEL | (u64::from(d) << 56);
        self.stats.count(Call::GetIrqchip);
        let mut chip = get_ioapic(&fvm.vm.fd).with_context(|| what.clone())?;
        set_redir(&mut chip, LEVEL_PIN, entry);
        self.stats.count(Call::SetIrqchip);
        fvm.vm
            .fd
            .set_irqchip(&chip)
            .map_err(|e| anyhow!("{what}: KVM_SET_IRQCHIP: {e}"))?;
        let before = handled(&fvm.mem, t, vec)?;
        self.stats.count(Call::IrqLine);
        fvm.vm
            .fd
            .set_irq_line(LEVEL_GSI, true)
            .map_err(|e| anyhow!("{what}: KVM_IRQ_LINE(1): {e}"))?;
        let delivered = self.wait_handled(k, t, vec, before, &what);
        let fvm = &self.vms[k];
        self.stats.count(Call::IrqLine);
        fvm.vm
            .fd
            .set_irq_line(LEVEL_GSI, false)
            .map_err(|e| anyhow!("{what}: KVM_IRQ_LINE(0): {e}"))?;
        delivered?;
        let batch = fvm
            .batch_of(t)
            .ok_or_else(|| anyhow!("{what}: vCPU index {t} is not running"))?;
        let mut last = 0;
        let cleared = batch.running.wait_until(PROBE_TIMEOUT, || {
            self.stats.count(Call::GetIrqchip);
            last = redir(&get_ioapic(&fvm.vm.fd)?, LEVEL_PIN);
            Ok(last & REMOTE_IRR == 0)
        })?;
        check!(
            cleared,
            "{what}: the redirection entry's Remote IRR is still set {PROBE_TIMEOUT:?} after the line went low (entry {last:#x}): the receiver's EOI did not reach the IOAPIC"
        );
        self.stats.count(Call::GetIrqchip);
        let mut chip = get_ioapic(&fvm.vm.fd).with_context(|| what.clone())?;
        set_redir(&mut chip, LEVEL_PIN, entry | MASKED);
        self.stats.count(Call::SetIrqchip);
        fvm.vm
            .fd
            .set_irqchip(&chip)
            .map_err(|e| anyhow!("{what}: KVM_SET_IRQCHIP: {e}"))?;
        self.stats.add(&self.stats.probes[3], 1);
        Ok(())
    }
}

/// Interrupts vCPU index `i` handled on `vector`.
fn handled(mem: &GuestMem, i: usize, vector: u8) -> Result<u32> {
    mem.read_u32(TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(vector))
}

/// A fixed, edge, physical MSI to APIC ID `dest` with `vector`, naming `group` if given.
fn probe_msi(dest: u32, vector: u8, group: Option<u32>, plan: &Plan) -> kvm_msi {
    let msi = kvm_msi {
        address_lo: layout::XAPIC as u32 | ((dest & 0xff) << 12),
        address_hi: if plan.x2apic_format { dest & !0xff } else { 0 },
        data: u32::from(vector),
        ..Default::default()
    };
    match group {
        Some(g) => vtlkit_uapi::msi_to_group(msi, g),
        None => msi,
    }
}

/// A KVM_SET_GSI_ROUTING entry for an IOAPIC pin.
fn ioapic_route(gsi: u32, pin: u32, flags: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        flags,
        ..Default::default()
    };
    e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
    e.u.irqchip.pin = pin;
    e
}

/// A KVM_SET_GSI_ROUTING entry for `msi`, with its flags, devid and (if it names one) group.
fn msi_route(gsi: u32, msi: &kvm_msi) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        flags: msi.flags & !raw::KVM_MSI_VALID_APIC_GROUP,
        ..Default::default()
    };
    e.u.msi.address_lo = msi.address_lo;
    e.u.msi.address_hi = msi.address_hi;
    e.u.msi.data = msi.data;
    e.u.msi.__bindgen_anon_1.devid = msi.devid;
    if msi.flags & raw::KVM_MSI_VALID_APIC_GROUP != 0 {
        e = vtlkit_uapi::route_to_group(e, vtlkit_uapi::msi_to_raw(*msi).apic_group);
    }
    e
}

/// KVM_IRQ_LINE_STATUS: raise or lower `gsi`; returns the status (vCPUs that took it for an
/// MSI route, negative when nothing was delivered).
fn irq_line_status(vm: &VmFd, gsi: u32, level: bool) -> Result<i32> {
    let mut l = kvm_irq_level {
        __bindgen_anon_1: kvm_bindings::kvm_irq_level__bindgen_ty_1 { irq: gsi },
        level: u32::from(level),
    };
    // SAFETY: a valid VM fd; the kernel reads and writes exactly size_of::<kvm_irq_level>()
    // bytes (encoded in the request) of a live, exclusively borrowed struct.
    let r = unsafe { ioctl_with_mut_ref(vm, KVM_IRQ_LINE_STATUS(), &mut l) };
    if r < 0 {
        bail!("KVM_IRQ_LINE_STATUS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote the status arm; both arms are plain 32-bit integers.
    Ok(unsafe { l.__bindgen_anon_1.status })
}

/// A delivery probe through a GSI: raise it with KVM_IRQ_LINE_STATUS, lower it, and return
/// the raise's status (both calls counted).
fn pulse_line(vm: &VmFd, stats: &Stats, gsi: u32, what: &str) -> Result<i32> {
    stats.count(Call::IrqLine);
    let status = irq_line_status(vm, gsi, true).with_context(|| what.to_string())?;
    stats.count(Call::IrqLine);
    vm.set_irq_line(gsi, false)
        .map_err(|e| anyhow!("{what}: KVM_IRQ_LINE(0): {e}"))?;
    Ok(status)
}

/// What a probe's raise must report: 1 if it is `delivered`, else 0 or less (nobody took it).
fn check_line_status(what: &str, status: i32, delivered: bool) -> Result<()> {
    let ok = if delivered { status == 1 } else { status <= 0 };
    check!(
        ok,
        "{what}: status {status}, expected {}",
        if delivered { "1" } else { "no delivery" }
    );
    Ok(())
}

fn get_ioapic(vm: &VmFd) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|e| anyhow!("KVM_GET_IRQCHIP(IOAPIC): {e}"))?;
    Ok(chip)
}

/// Redirection-table entry `pin` of an IOAPIC state from [`get_ioapic`].
fn redir(chip: &kvm_irqchip, pin: u32) -> u64 {
    // SAFETY: the chip is an IOAPIC (chip_id), so the ioapic arm is the valid one; its
    // entries are plain 64-bit integers, and `pin` indexes the array with a bounds check.
    unsafe { chip.chip.ioapic.redirtbl[pin as usize].bits }
}

fn set_redir(chip: &mut kvm_irqchip, pin: u32, bits: u64) {
    // SAFETY: as in `redir`; writing a plain integer into the live IOAPIC arm.
    unsafe { chip.chip.ioapic.redirtbl[pin as usize].bits = bits };
}

/// What the injector thread owns.
struct InjectorCtx {
    vmfd: VmFd,
    irqfds: Vec<EventFd>,
    ids: Vec<u32>,
    rng: Rng,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    plan: Plan,
}

/// KVM_SIGNAL_MSI (result classes only: the model is the main thread's), irqfd writes and
/// KVM_IRQ_LINE pulses, until told to stop.
fn injector(mut c: InjectorCtx) -> Result<()> {
    let mut n = 0u64;
    while !c.stop.load(Ordering::Relaxed) {
        match c.rng.below(4) {
            0 | 1 => {
                let pick = random_msi(&mut c.rng, &c.ids, &c.plan);
                c.stats.count(Call::SignalMsi);
                let r = c.vmfd.signal_msi(pick.msi).map_err(|e| e.errno());
                let what = format!(
                    "injector: KVM_SIGNAL_MSI({}) [{:?}{}]",
                    pick.describe(),
                    pick.class,
                    if pick.nmi { ", NMI" } else { "" }
                );
                check_msi_result(&what, r, &pick, None, None)?;
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

// ---------------------------------------------------------------------------------------------
// Checks on what the guests recorded.

/// May a vCPU of `group` (None: unassigned) that answered to IDs of `slots` hold `vector`?
fn vector_allowed(group: Option<u32>, slots: u8, vector: u8) -> bool {
    match (group, meaning(vector)) {
        (None, _) => false,
        (Some(g), Meaning::Multicast(x)) => x == g,
        (Some(g), Meaning::Unicast(x, s)) => x == g && slots & (1 << s) != 0,
        (Some(g), Meaning::Level(s)) => g == 0 && slots & (1 << s) != 0,
        _ => false,
    }
}

/// Everything vCPU `i` handled (and, with `lapic`, holds pending or in service) must be meant
/// for it: vectors of its group and of IDs it answered to (an unassigned vCPU: nothing), each
/// delivery probe exactly as often as one arrived, NMIs and kick wake-ups only where the VM's
/// plan aims them, and every kick hypercall returned 0.
fn check_vcpu(
    fvm: &FuzzVm,
    i: usize,
    lapic: Option<&kvm_lapic_state>,
    events: Option<&kvm_vcpu_events>,
) -> Result<()> {
    check_vcpu_parts(
        fvm.serial,
        &fvm.mem,
        &fvm.plan,
        &fvm.vcpus[i],
        i,
        lapic,
        events,
    )
}

fn check_vcpu_parts(
    serial: u64,
    mem: &GuestMem,
    plan: &Plan,
    v: &VcpuModel,
    i: usize,
    lapic: Option<&kvm_lapic_state>,
    events: Option<&kvm_vcpu_events>,
) -> Result<()> {
    let page = TestVm::pcpu_gpa(i);
    let mut bad = String::new();
    for vector in 0x20..=0xfeu8 {
        let handled = handled(mem, i, vector)?;
        let (irr, isr) = match lapic {
            Some(l) => (
                lapic_bit(l, lapic_reg::IRR, vector),
                lapic_bit(l, lapic_reg::ISR, vector),
            ),
            None => (false, false),
        };
        if let Meaning::Probe(n) = meaning(vector) {
            let want = v.probes[n];
            if handled != want || irr {
                let _ = write!(
                    bad,
                    " delivery probe vector {vector:#x} handled {handled} times, {want} probes arrived{};",
                    if irr { ", and one more is pending" } else { "" }
                );
            }
            continue;
        }
        if let Meaning::Notify(n) = meaning(vector) {
            let sent = v.notify_sent[n].load(Ordering::SeqCst);
            if handled + u32::from(irr) > sent {
                let _ = write!(
                    bad,
                    " event-notification vector {vector:#x} handled {handled} times{}, but {sent} were sent to it;",
                    if irr { " and one more is pending" } else { "" }
                );
            }
            continue;
        }
        if let Meaning::HvIpi(g) = meaning(vector) {
            let want = if v.group() == Some(g) { v.hv_ipis } else { 0 };
            if handled != want || irr {
                let _ = write!(
                    bad,
                    " Hyper-V IPI vector {vector:#x} (sent in group {g}) handled {handled} times, {want} meant for it{};",
                    if irr { ", and one more is pending" } else { "" }
                );
            }
            continue;
        }
        if (handled != 0 || irr || isr) && !vector_allowed(v.group(), v.slots, vector) {
            let _ = write!(
                bad,
                " vector {vector:#x} = {:?} (handled {handled}, IRR {irr}, ISR {isr});",
                meaning(vector)
            );
        }
    }
    let nmis = mem.read_u64(page + fz::NMIS)?;
    let (pending, injected) = events.map_or((0, 0), |e| (e.nmi.pending, e.nmi.injected));
    if (nmis != 0 || pending != 0 || injected != 0)
        && !v.group().is_some_and(|g| plan.nmi_allowed(g, v.slots))
    {
        let _ = write!(
            bad,
            " NMIs ({nmis} handled, pending {pending}, injected {injected}), but this VM aims NMIs only at groups {:#x} (multicast {:#x}), unicast at ID slots {:#x};",
            plan.nmi_groups, plan.nmi_mc_groups, plan.nmi_slots
        );
    }
    let kicks = mem.read_u64(page + fz::KICK_WAKES)?;
    if kicks != 0 && !v.group().is_some_and(|g| plan.kick_allowed(g, v.slots)) {
        let _ = write!(
            bad,
            " {kicks} wake-ups from HLT with interrupts disabled and no NMI (KVM_HC_KICK_CPU), but this VM kicks only in groups {:#x}, ID slots {:#x};",
            plan.kick_groups, plan.kick_slots
        );
    }
    let kick_fails = mem.read_u64(page + fz::KICK_FAILS)?;
    if kick_fails != 0 {
        let _ = write!(
            bad,
            " KVM_HC_KICK_CPU returned non-zero {kick_fails} times (last {:#x});",
            mem.read_u64(page + fz::KICK_RET)?
        );
    }
    let hv_fails = mem.read_u64(page + fz::HV_FAILS)?;
    if hv_fails != 0 {
        let _ = write!(
            bad,
            " background Hyper-V IPIs (to its own VTL, its group has a guest OS ID) returned non-zero {hv_fails} times (last {:#x});",
            mem.read_u64(page + fz::HV_RET)?
        );
    }
    check!(
        bad.is_empty(),
        "VM {serial} vCPU {} (index {i}, {}, VP {}, answered to ID slots {:#x}, mode {:?}) got what was not meant for it:{bad} (vector layout: {:#x} + {} * group = any vCPU of the group, + 1 + (APIC ID & 7) = that ID; {:#x} + (APIC ID & 7) = level-triggered IOAPIC, group 0; {:#x?} = delivery probes; {:#x} + group = Hyper-V IPIs sent in that group)",
        v.id,
        match v.assigned {
            Some(a) => format!("{a:?}"),
            None => "unassigned".into(),
        },
        v.vp,
        v.slots,
        v.mode,
        vector::GROUP_BASE,
        vector::PER_GROUP,
        vector::LEVEL_BASE,
        vector::PROBES,
        vector::HV_IPI_BASE
    );
    Ok(())
}

/// KVM_GET_LAPIC and KVM_GET_VCPU_EVENTS of a stopped vCPU, for [`check_vcpu_parts`].
fn vcpu_state(
    fd: &VcpuFd,
    serial: u64,
    stats: &Stats,
) -> Result<(kvm_lapic_state, kvm_vcpu_events)> {
    stats.count(Call::GetLapic);
    let lapic = fd
        .get_lapic()
        .map_err(|e| anyhow!("VM {serial}: KVM_GET_LAPIC: {e}"))?;
    stats.count(Call::GetVcpuEvents);
    let events = fd
        .get_vcpu_events()
        .map_err(|e| anyhow!("VM {serial}: KVM_GET_VCPU_EVENTS: {e}"))?;
    Ok((lapic, events))
}

/// Tear a VM down: stop its injector, check the guests, stop the vCPUs (or first close the VM
/// fd while they still run), and check every vCPU, pending interrupts and NMIs included.
fn teardown(mut fvm: FuzzVm, early_close: bool, stats: &Arc<Stats>) -> Result<()> {
    let serial = fvm.serial;
    if let Some(mut inj) = fvm.injector.take() {
        inj.finish()
            .with_context(|| format!("VM {serial}: injector thread"))?;
    }
    // VTL pairs: their injector, then each pair settled and checked (exact counts).
    notify::finish(&mut fvm, stats)?;
    for b in &fvm.batches {
        b.running
            .check_no_pending()
            .with_context(|| format!("VM {serial}: a guest reported"))?;
    }
    // Idle vCPUs (unassigned ones included): check their pending state now.
    if fvm.plan.irqchip {
        for i in 0..fvm.vcpus.len() {
            if fvm.vcpus[i].running {
                continue;
            }
            let (lapic, events) = vcpu_state(fvm.fd(i)?, serial, stats)?;
            check_vcpu(&fvm, i, Some(&lapic), Some(&events))?;
        }
    }
    let batches = std::mem::take(&mut fvm.batches);
    let FuzzVm {
        vm,
        mem,
        vcpus,
        plan,
        probe_irqfd,
        hv,
        ..
    } = fvm;
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
        let (lapic, events) = vcpu_state(&v.fd, serial, stats)?;
        check_vcpu_parts(
            serial,
            &mem,
            &plan,
            &vcpus[v.index],
            v.index,
            Some(&lapic),
            Some(&events),
        )?;
    }
    for (i, v) in vcpus.iter().enumerate() {
        if !v.ran {
            continue;
        }
        let page = TestVm::pcpu_gpa(i);
        let r = |off: u64| mem.read_u64(page + off);
        stats.add(&stats.guest_sends, r(fz::SENT)?);
        stats.add(&stats.guest_irqs, r(pcpu::IRQ_TOTAL)?);
        stats.add(&stats.guest_nmis, r(fz::NMIS)?);
        stats.add(&stats.kick_wakes, r(fz::KICK_WAKES)?);
        stats.add(&stats.svr_toggles, r(fz::SVR_TOGGLES)?);
        stats.add(&stats.ldr_writes, r(fz::LDR_WRITES)?);
        stats.add(&stats.hv_bg_ipis, r(fz::HV_SENT)?);
    }
    drop(stopped);
    drop(probe_irqfd);
    drop(hv);
    drop(vm);
    Ok(())
}

fn fuzz_apic_groups() -> TestResult {
    let cfg = config()?;
    {
        let kvm = Kvm::new().map_err(|e| anyhow!("open /dev/kvm: {e}"))?;
        let groups = vtlkit_uapi::apic_groups_supported(&kvm);
        crate::require!(groups >= 2, "KVM_CAP_APIC_GROUPS is {groups}, need 2");
        check!(
            groups <= vector::MAX_GROUPS,
            "KVM_CAP_APIC_GROUPS is {groups}; the fuzzer's vector layout has room for {} groups",
            vector::MAX_GROUPS
        );
    }
    println!(
        "# fuzz: seed={:#x} seconds={} (reproduce with VTLKIT_FUZZ_SEED={:#x}, or vtlkit.fuzz_seed= on the kernel command line)",
        cfg.seed, cfg.seconds, cfg.seed
    );
    let start = Instant::now();
    let budget = Duration::from_secs(cfg.seconds);
    let hv_supported = crate::hyperv::vsm_supported(&crate::vm::open_kvm()?);
    let notify_supported = vtlkit_uapi::notify::event_notify_supported(&crate::vm::open_kvm()?);
    let mut f = Fuzzer::new(cfg.seed, hv_supported, notify_supported)?;
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
    let ld = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "# fuzz: seed={:#x} calls={} seconds={secs:.1} vms={} vcpus={} irqfd_writes={} guest_sends={} guest_irqs={}",
        cfg.seed,
        stats.total(),
        ld(&stats.vms),
        ld(&stats.vcpus),
        ld(&stats.irqfd_writes),
        ld(&stats.guest_sends),
        ld(&stats.guest_irqs),
    );
    println!("# fuzz: calls per ioctl: {}", stats.per_call());
    println!(
        "# fuzz: delivery probes arrived: msi={} ipi={} msi_route={} ioapic_level={}; guest_nmis={} kick_wakes={} svr_toggles={} ldr_writes={}",
        ld(&stats.probes[0]),
        ld(&stats.probes[1]),
        ld(&stats.probes[2]),
        ld(&stats.probes[3]),
        ld(&stats.guest_nmis),
        ld(&stats.kick_wakes),
        ld(&stats.svr_toggles),
        ld(&stats.ldr_writes),
    );
    if hv_supported {
        println!(
            "# fuzz: hyperv: hv_vms={} hv_calls={} hv_ipis={} hv_ipi_deliveries={} hv_vsm_calls={} hv_exits={} sint_routes={} sint_raises={} sint_deliveries={} hv_msr_ops={} vsm_enables={} hv_bg_ipis={}",
            ld(&stats.hv_vms),
            ld(&stats.hv_calls),
            ld(&stats.hv_ipis),
            ld(&stats.hv_ipi_deliveries),
            ld(&stats.hv_vsm_calls),
            ld(&stats.hv_exits),
            ld(&stats.sint_routes),
            ld(&stats.sint_raises),
            ld(&stats.sint_deliveries),
            ld(&stats.hv_msr_ops),
            ld(&stats.vsm_enables),
            ld(&stats.hv_bg_ipis),
        );
    } else {
        println!("# fuzz: hyperv: off (no KVM_CAP_HYPERV_VSM: the kernel lacks series v3)");
    }
    if notify_supported {
        println!(
            "# fuzz: notify: notify_vms={} pairs={} pair_runs={} notify_arms={} notify_exits={} switches={} exact_deliveries: msi={} ipi={} nmi={} injector={} tpr={}; tpr_blocked={} tpr_fired={} parks_deferred={}",
            ld(&stats.notify_vms),
            ld(&stats.notify_pairs),
            ld(&stats.notify_runs),
            ld(&stats.notify_arms),
            ld(&stats.notify_exits),
            ld(&stats.notify_switches),
            ld(&stats.notify_probes[0]),
            ld(&stats.notify_probes[1]),
            ld(&stats.notify_probes[2]),
            ld(&stats.notify_probes[3]),
            ld(&stats.notify_probes[4]),
            ld(&stats.notify_tpr_blocked),
            ld(&stats.notify_tpr_fired),
            ld(&stats.notify_park_deferred),
        );
    } else {
        println!("# fuzz: notify: off (no KVM_CAP_VCPU_EVENT_NOTIFY: the kernel lacks series v4)");
    }
    println!(
        "# fuzz: prot: prot_vms={} sets={} sets_while_running={} guest_memory_sets={} refused={} gets_checked={} walks={} lifts_on_assign={} debugfs_checks={}",
        ld(&stats.prot_vms),
        ld(&stats.prot_sets),
        ld(&stats.prot_running),
        ld(&stats.prot_guest_mem),
        ld(&stats.prot_refused),
        ld(&stats.prot_gets),
        ld(&stats.prot_walks),
        ld(&stats.prot_lifts),
        ld(&stats.prot_debugfs),
    );
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

    fn plan() -> Plan {
        Plan {
            groups: 16,
            opted: true,
            irqchip: true,
            x2apic_format: false,
            nmi_groups: 0b01,
            nmi_mc_groups: 0,
            nmi_slots: 0b100,
            kick_groups: 0b10,
            kick_slots: 0b1,
        }
    }

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
        let d = KVM_MSI_VALID_DEVID;
        let p = plan();
        assert_eq!(classify_msi(0, 7, 0, &p), MsiClass::Group(0));
        assert_eq!(classify_msi(g, 3, 0, &p), MsiClass::Group(3));
        assert_eq!(classify_msi(g, 16, 0, &p), MsiClass::Invalid);
        assert_eq!(classify_msi(g | d, 1, 0, &p), MsiClass::Group(1));
        assert_eq!(classify_msi(d, 99, 0, &p), MsiClass::DevidOnly);
        assert_eq!(classify_msi(1 << 5, 0, 0, &p), MsiClass::Invalid);
        let x2 = Plan {
            x2apic_format: true,
            ..p
        };
        assert_eq!(classify_msi(0, 0, 1, &x2), MsiClass::Invalid);
        assert_eq!(classify_msi(0, 0, 1, &p), MsiClass::Group(0));
        let stock = Plan { opted: false, ..p };
        assert_eq!(classify_msi(g, 0, 0, &stock), MsiClass::Invalid);
        assert_eq!(classify_msi(0, 0, 0, &stock), MsiClass::Group(0));
        let no_chip = Plan {
            irqchip: false,
            ..stock
        };
        assert_eq!(classify_msi(0, 0, 0, &no_chip), MsiClass::Invalid);
    }

    #[test]
    fn vector_layout_round_trips() {
        for g in 0..vector::MAX_GROUPS {
            assert_eq!(meaning(mc_vector(g)), Meaning::Multicast(g));
            for d in [0u32, 5, 7, 8, 0xfe, 0x1234] {
                let v = uc_vector(g, d);
                assert!(v >= 0x30);
                assert_eq!(meaning(v), Meaning::Unicast(g, (d & 7) as u8));
            }
        }
        assert_eq!(meaning(level_vector(0x13)), Meaning::Level(3));
        assert_eq!(meaning(vector::PROBE_IPI), Meaning::Probe(1));
        assert_eq!(meaning(0xff), Meaning::Unused);
        assert_eq!(meaning(0x20), Meaning::Unused);
        // Every vector is distinct.
        let mut seen = std::collections::HashSet::new();
        for g in 0..vector::MAX_GROUPS {
            assert!(seen.insert(mc_vector(g)));
            for s in 0..8 {
                assert!(seen.insert(uc_vector(g, s)));
            }
        }
        for s in 0..8 {
            assert!(seen.insert(level_vector(s)));
        }
        for p in vector::PROBES {
            assert!(seen.insert(p));
        }
    }

    #[test]
    fn vector_check_catches_other_groups_and_other_ids() -> Result<()> {
        let mem = GuestMem::new(layout::MEM_SIZE as usize)?;
        let mut v = VcpuModel {
            id: 0,
            assigned: Some(ApicGroup {
                group: 2,
                apic_id: 3,
                vtl: 1,
            }),
            slots: 0,
            ran: true,
            running: false,
            mode: ApicMode::X2apic,
            id_reg: 3 << 24,
            steady: true,
            probes: [0; 4],
            vp: 0,
            synic: false,
            hv_ipis: 0,
            hv_exits: 0,
            paired: false,
            sink: false,
            notify_armed: None,
            notify_sent: notify::Sent::default(),
        };
        v.note_ids();
        let p = plan();
        let count = |vector: u8| TestVm::pcpu_gpa(0) + pcpu::IRQ_COUNTS + 4 * u64::from(vector);
        let set = |vector: u8, n: u32| mem.write(count(vector), &n.to_le_bytes());
        let check = |v: &VcpuModel| check_vcpu_parts(0, &mem, &p, v, 0, None, None);
        set(uc_vector(2, 3), 7)?;
        set(uc_vector(2, 0x13), 1)?;
        set(mc_vector(2), 1)?;
        check(&v)?;
        // The right group, another ID: caught.
        set(uc_vector(2, 4), 1)?;
        assert!(check(&v).is_err());
        set(uc_vector(2, 4), 0)?;
        // Another group: caught.
        set(mc_vector(1), 1)?;
        assert!(check(&v).is_err());
        set(mc_vector(1), 0)?;
        // Level-triggered IOAPIC vectors are group 0's.
        set(level_vector(3), 1)?;
        assert!(check(&v).is_err());
        set(level_vector(3), 0)?;
        // Probes are counted exactly.
        set(vector::PROBE_MSI, 1)?;
        assert!(check(&v).is_err());
        v.probes[0] = 1;
        check(&v)?;
        // NMIs only where the plan allows them (group 0 here), kicks likewise (group 1).
        mem.write_u64(TestVm::pcpu_gpa(0) + fz::NMIS, 1)?;
        assert!(check(&v).is_err());
        mem.write_u64(TestVm::pcpu_gpa(0) + fz::NMIS, 0)?;
        mem.write_u64(TestVm::pcpu_gpa(0) + fz::KICK_WAKES, 1)?;
        assert!(check(&v).is_err());
        mem.write_u64(TestVm::pcpu_gpa(0) + fz::KICK_WAKES, 0)?;
        check(&v)?;
        // An unassigned vCPU may hold nothing at all.
        let u = VcpuModel {
            assigned: None,
            probes: [1, 0, 0, 0],
            ..v.clone()
        };
        assert!(check(&u).is_err());
        Ok(())
    }

    #[test]
    fn plan_rules() {
        let p = plan();
        assert!(p.nmi_unicast_ok(0, 0x12));
        assert!(!p.nmi_unicast_ok(0, 0x13));
        assert!(!p.nmi_unicast_ok(1, 0x12));
        assert!(!p.nmi_mc_ok(0));
        assert!(p.nmi_allowed(0, 0b100));
        assert!(!p.nmi_allowed(0, 0b010));
        assert!(p.kick_ok(1, 8));
        assert!(!p.kick_ok(1, 0xff), "0xff is a broadcast");
        assert!(!p.kick_allowed(0, 0xff));
    }

    #[test]
    fn enable_cap_errors() {
        assert!(enable_groups_expected([0; 4], true, false).is_empty());
        assert_eq!(
            enable_groups_expected([0, 0, 1, 0], true, false),
            vec![libc::EINVAL]
        );
        assert_eq!(
            enable_groups_expected([0; 4], false, false),
            vec![libc::ENXIO]
        );
        assert_eq!(
            enable_groups_expected([0; 4], true, true),
            vec![libc::EBUSY]
        );
    }

    #[test]
    fn fuzz_guest_blob() {
        let c = fuzz_guest_code();
        assert!(!c.is_empty() && (c.len() as u64) < FUZZ_TABLES - FUZZ_CODE);
        assert!(fuzz_nmi_gpa() > FUZZ_CODE && fuzz_nmi_gpa() < FUZZ_CODE + c.len() as u64);
    }
}
