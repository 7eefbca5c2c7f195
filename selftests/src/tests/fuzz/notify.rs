// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The fuzzer's event-notification part (series v4, issue 11): `KVM_CAP_VCPU_EVENT_NOTIFY`,
//! `KVM_SET_EVENT_NOTIFY` / `KVM_GET_EVENT_NOTIFY` and `KVM_EXIT_EVENT_NOTIFY`, checked against
//! api.rst (4.146, 4.147, 7.39 and the exit), and VTL switching under interrupt load.
//!
//! The API, on the main thread, each call checked at once:
//! * `KVM_ENABLE_CAP(KVM_CAP_VCPU_EVENT_NOTIFY)` when a VM is created (some VMs) or later, with
//!   random arguments (non-zero: EINVAL), without an in-kernel LAPIC (ENXIO), and repeats.
//! * `KVM_SET_EVENT_NOTIFY` on a vCPU no thread runs, with random flags, targets (itself, vCPUs
//!   that do not exist, 0 when disarming or not) and reserved words, and bad pointers: the
//!   errors api.rst lists; a failed call changes nothing (the model's arming and
//!   `KVM_GET_EVENT_NOTIFY` agree before and after). A successful arm names a "sink", a vCPU
//!   that never runs, so that a notification it fires is harmless.
//! * `KVM_GET_EVENT_NOTIFY` against the model: armed with the model's target, or no longer
//!   armed because it fired, and then PENDING; `reserved` zero, `vcpu_id` 0 when disarmed.
//!   PENDING is checked where the model knows it, for vCPUs no thread runs: read the LAPIC,
//!   the vCPU events and IA32_APIC_BASE before and after the GET; an event it would take per
//!   api.rst (an interrupt above its processor priority, RFLAGS.IF ignored, an NMI, an
//!   interrupt or NMI being injected) before means PENDING, and PENDING means one after
//!   (nothing can take an event from a vCPU that does not run).
//!
//! VTL switching: in some VMs (x2APIC format, no Hyper-V leaves) the fuzzer creates VP sibling
//! pairs, one vCPU in group 0 (VTL0) and one in group 1 (VTL1) with the same APIC ID above
//! 0xff (so that only those two answer to it, whatever other vCPUs do to their xAPIC ID
//! registers). A pair runner thread keeps its "home" sibling running (mostly VTL0) and its
//! "away" sibling parked and armed with the home one as target. When the home sibling exits
//! with `KVM_EXIT_EVENT_NOTIFY`, the runner switches: it runs the away sibling, which takes
//! the interrupt, for a short slice, then parks it again (only between interrupts: nothing in
//! service, nothing being injected) and re-arms it. Meanwhile the VM's injector threads and
//! guests send interrupts to parked siblings: the plain injector's multicasts and NMIs, the
//! guests' IPIs (also from other VPs' VTL1 siblings), and exactly counted deliveries on
//! [`vector::NOTIFY`]: main-thread MSIs that name the group, guest IPIs asked of a running
//! vCPU of the group, NMIs, a notify injector thread, and TPR tests the runner makes.
//! Checked:
//! * every notification names the pair's armed away sibling, which is then disarmed and has
//!   an event pending; arming with an event pending fires at once; the away sibling, which
//!   nothing targets, never exits with a notification;
//! * no lost wake-up: a parked sibling seen armed with an event pending for
//!   [`LOST_WAKEUP`] with no notification meanwhile, or seen fired without the home sibling
//!   exiting within that time, fails the test;
//! * every exactly counted delivery is handled by exactly that sibling, exactly once (at most
//!   as many as were sent at any time, exactly as many whenever a pair stops), within
//!   [`PROBE_TIMEOUT`];
//! * TPR: the runner raises a parked sibling's TPR (CR8, with `KVM_SET_SREGS`, which touches
//!   no IRR), sends it a class-0xd vector and arms it: with the TPR at or above the class it
//!   must not fire (unless something else is pending), below it must fire at once; the TPR is
//!   lowered later (disarm, lower, re-arm: api.rst says arming notices) and the vector is
//!   handled;
//! * at the end a pair settles: its away sibling armed, nothing pending, nothing notified.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{kvm_lapic_state, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::ioctl::{ioctl_with_mut_ptr, ioctl_with_ptr};
use vtlkit_uapi::notify::{enable_event_notify_raw, event_notify_exit, VcpuEventNotifyExt};
use vtlkit_uapi::{raw, ApicGroup};

use super::{
    errname, errset, fz, handled, probe_msi, vector, ApicMode, Call, FuzzVm, Fuzzer, Plan, Rng,
    Stats, APIC_BASE_EN, MAX_RUNNING, MAX_VCPUS, PROBE_TIMEOUT,
};
use crate::check;
use crate::guest::icr::{DM_NMI, LEVEL_ASSERT};
use crate::guest::ucall;
use crate::vm::{lapic_bit, lapic_read, lapic_reg, GuestMem, GuestRecord, TestVm, Vcpu};

/// Deliveries sent to a vCPU per [`vector::NOTIFY`] vector.
pub(super) type Sent = Arc<[AtomicU32; 4]>;
/// Indexes into [`vector::NOTIFY`] and [`Sent`].
const N_MSI: usize = 0;
const N_IPI: usize = 1;
const N_INJ: usize = 2;
const N_TPR: usize = 3;
/// Pair siblings have APIC ID `PAIR_ID_BASE + n`, n < 8.
const PAIR_ID_BASE: u32 = 0x100;
/// How long the away sibling runs once switched in (then it is parked at the next chance).
const SLICE: Duration = Duration::from_millis(2);
/// How often the runner stops the home sibling to look at the parked one.
const PERIOD: Duration = Duration::from_millis(20);
/// A parked sibling armed with an event pending, or fired without the home sibling exiting,
/// for this long (no notification meanwhile) is a lost wake-up.
const LOST_WAKEUP: Duration = Duration::from_secs(5);
/// How long a runner may take to park its away sibling, lower a TPR or settle when stopped.
// Under TCG on a loaded 2-core machine one 10 s run (of many) saw the away sibling still in
// service after 10 s, and passed on reruns of its seed: give slow hosts more room.
const SETTLE: Duration = Duration::from_secs(30);
/// The class of the TPR test's vector.
const TPR_CLASS: u8 = vector::NOTIFY[N_TPR] >> 4;

/// The event-notification side of a VM's model.
pub(super) struct NotifyVm {
    /// KVM_CAP_VCPU_EVENT_NOTIFY is enabled.
    pub(super) enabled: bool,
    /// VTL pairs may be created (x2APIC format, no Hyper-V leaves).
    pairs_ok: bool,
    pairs: Vec<Pair>,
    /// The away siblings of running pairs, for the notify injector.
    targets: Arc<Mutex<Vec<Target>>>,
    injector: Option<NInjector>,
}

impl NotifyVm {
    /// Pairs whose runner runs.
    pub(super) fn running_pairs(&self) -> usize {
        self.pairs.iter().filter(|p| p.runner.is_some()).count()
    }

    pub(super) fn new(enabled: bool, pairs_ok: bool) -> Self {
        NotifyVm {
            enabled,
            pairs_ok,
            pairs: Vec::new(),
            targets: Arc::new(Mutex::new(Vec::new())),
            injector: None,
        }
    }
}

struct Pair {
    home: usize,
    away: usize,
    runner: Option<Runner>,
}

struct Runner {
    shared: Arc<Shared>,
    handle: JoinHandle<(Vcpu, Vcpu, Result<()>)>,
}

/// Shared by the main thread and a pair runner.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Stopping for good: settle first (away armed, nothing pending).
    final_stop: AtomicBool,
    ended: AtomicBool,
    /// What the runner did last, for failure reports.
    state: Mutex<String>,
    /// Diagnostics: KVM_RUN calls of the home and away siblings, and their returns.
    runs: [AtomicU64; 2],
    returns: [AtomicU64; 2],
    /// Runs of the home sibling that ended without a notification: it ran in the guest until
    /// the runner's ticker. A VTL1 sibling that keeps getting interrupts preempts VTL0 as long
    /// as they come (as designed), so a delivery to the home sibling is owed only in its run
    /// time ([`HOME_RUNS_OWED`] of these), not in wall time.
    home_ran: AtomicU64,
    /// Diagnostics: the runner's last steps (time since start, what).
    trail: Mutex<std::collections::VecDeque<(Duration, String)>>,
    born: std::sync::OnceLock<Instant>,
}

impl Shared {
    fn trail(&self, what: String) {
        let t = self.born.get_or_init(Instant::now).elapsed();
        let mut q = lock(&self.trail);
        if q.len() >= 40 {
            q.pop_front();
        }
        q.push_back((t, what));
    }
    fn trail_text(&self) -> String {
        let now = self.born.get_or_init(Instant::now).elapsed();
        let q = lock(&self.trail);
        let steps: Vec<String> = q
            .iter()
            .map(|(t, w)| format!("[{:.3}] {w}", t.as_secs_f64()))
            .collect();
        format!(
            "runner trail (now {:.3}; KVM_RUN calls/returns {}): {}",
            now.as_secs_f64(),
            self.run_counts(),
            steps.join(" / ")
        )
    }
    /// `home C/R, away C/R`: KVM_RUN calls and returns of each sibling.
    fn run_counts(&self) -> String {
        format!(
            "home {}/{}, away {}/{}",
            self.runs[0].load(Ordering::SeqCst),
            self.returns[0].load(Ordering::SeqCst),
            self.runs[1].load(Ordering::SeqCst),
            self.returns[1].load(Ordering::SeqCst)
        )
    }
}

/// An away sibling the notify injector may send to.
#[derive(Clone)]
struct Target {
    index: usize,
    group: u32,
    dest: u32,
    sent: Sent,
}

struct NInjector {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl NInjector {
    fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow!("the notify injector thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for NInjector {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Error paths only (pairs are stopped in order otherwise): let the runner go; it ends
        // at its next look at the flag, and the process exits anyway.
        if let Some(r) = &self.runner {
            r.shared.stop.store(true, Ordering::SeqCst);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// State of a vCPU no thread runs, and what api.rst says it would take.

struct VState {
    lapic: kvm_lapic_state,
    events: kvm_vcpu_events,
    sregs: kvm_sregs,
}

fn vstate(fd: &VcpuFd, stats: &Stats) -> Result<VState> {
    stats.count(Call::GetLapic);
    let lapic = fd.get_lapic().map_err(|e| anyhow!("KVM_GET_LAPIC: {e}"))?;
    stats.count(Call::GetVcpuEvents);
    let events = fd
        .get_vcpu_events()
        .map_err(|e| anyhow!("KVM_GET_VCPU_EVENTS: {e}"))?;
    let sregs = fd.get_sregs().map_err(|e| anyhow!("KVM_GET_SREGS: {e}"))?;
    Ok(VState {
        lapic,
        events,
        sregs,
    })
}

fn highest(lapic: &kvm_lapic_state, reg: usize) -> Option<u8> {
    (0..=255u8).rev().find(|&v| lapic_bit(lapic, reg, v))
}

/// api.rst 4.146: an interrupt whose priority class is above the processor priority (TPR and
/// the in-service interrupts; RFLAGS.IF not considered), an NMI, SMI, or an event being
/// injected. (No INIT/SIPI, PIC or Xen events, timers or SMIs in these VMs.)
fn would_take(s: &VState) -> bool {
    let e = &s.events;
    if e.nmi.pending != 0 || e.nmi.injected != 0 || e.interrupt.injected != 0 || e.smi.pending != 0
    {
        return true;
    }
    let svr = lapic_read(&s.lapic, lapic_reg::SVR);
    if s.sregs.apic_base & APIC_BASE_EN == 0 || svr & 0x100 == 0 {
        return false;
    }
    let tpr = lapic_read(&s.lapic, 0x80) & 0xff;
    let isr = u32::from(highest(&s.lapic, lapic_reg::ISR).unwrap_or(0));
    let ppr = if tpr & 0xf0 >= isr & 0xf0 {
        tpr
    } else {
        isr & 0xf0
    };
    highest(&s.lapic, lapic_reg::IRR).is_some_and(|irr| u32::from(irr & 0xf0) > ppr)
}

/// In the middle of an interrupt or NMI: parking now could leave a lower-class interrupt
/// blocked behind one in service, or an NMI handler unfinished (NMIs blocked until its IRET),
/// its count not yet taken, with nothing to notify the home sibling of: a parked sibling runs
/// again only for a new event.
fn mid_interrupt(s: &VState) -> bool {
    highest(&s.lapic, lapic_reg::ISR).is_some()
        || s.events.nmi.injected != 0
        || s.events.nmi.masked != 0
        || s.events.interrupt.injected != 0
}

fn describe(s: &VState) -> String {
    let e = &s.events;
    format!(
        "TPR {:#x}, highest IRR {:x?}, highest ISR {:x?}, SVR {:#x}, APIC base {:#x}, NMI pending {} injected {} masked {}, interrupt injected {} (vector {:#x}), CR8 {:#x}",
        lapic_read(&s.lapic, 0x80),
        highest(&s.lapic, lapic_reg::IRR),
        highest(&s.lapic, lapic_reg::ISR),
        lapic_read(&s.lapic, lapic_reg::SVR),
        s.sregs.apic_base,
        e.nmi.pending,
        e.nmi.injected,
        e.nmi.masked,
        e.interrupt.injected,
        e.interrupt.nr,
        s.sregs.cr8,
    )
}

/// What KVM_GET_EVENT_NOTIFY said.
#[derive(Debug, Clone, Copy)]
struct Got {
    armed: Option<u32>,
    pending: bool,
}

/// KVM_GET_EVENT_NOTIFY: the layout rules (flags ARMED/PENDING only, vcpu_id 0 when
/// disarmed, reserved zero) are checked here.
fn get_notify(fd: &VcpuFd, stats: &Stats) -> Result<Got> {
    stats.count(Call::GetEventNotify);
    let en = fd
        .get_event_notify_raw()
        .map_err(|e| anyhow!("KVM_GET_EVENT_NOTIFY: {e}"))?;
    let known = raw::KVM_EVENT_NOTIFY_ARMED | raw::KVM_EVENT_NOTIFY_PENDING;
    let armed = en.flags & raw::KVM_EVENT_NOTIFY_ARMED != 0;
    check!(
        en.flags & !known == 0 && en.reserved == [0; 3] && (armed || en.vcpu_id == 0),
        "KVM_GET_EVENT_NOTIFY returned flags {:#x}, vcpu_id {}, reserved {:x?}: api.rst allows only ARMED and PENDING, vcpu_id 0 unless armed, reserved zero",
        en.flags,
        en.vcpu_id,
        en.reserved
    );
    Ok(Got {
        armed: armed.then_some(en.vcpu_id),
        pending: en.flags & raw::KVM_EVENT_NOTIFY_PENDING != 0,
    })
}

/// GET bracketed by two state reads: an event before means PENDING, PENDING means one after.
fn bracketed_get(fd: &VcpuFd, stats: &Stats, what: &str) -> Result<(Got, VState)> {
    let s1 = vstate(fd, stats).with_context(|| what.to_string())?;
    let g = get_notify(fd, stats).with_context(|| what.to_string())?;
    let s2 = vstate(fd, stats).with_context(|| what.to_string())?;
    check_bracket(&s1, g, &s2, what)?;
    Ok((g, s2))
}

fn check_bracket(s1: &VState, g: Got, s2: &VState, what: &str) -> Result<()> {
    check!(
        !would_take(s1) || g.pending,
        "{what}: KVM_GET_EVENT_NOTIFY says nothing is pending ({g:?}), but the vCPU, which no thread runs, had an event it would take just before: {}",
        describe(s1)
    );
    check!(
        !g.pending || would_take(s2),
        "{what}: KVM_GET_EVENT_NOTIFY says an event is pending ({g:?}), but the vCPU, which no thread runs, has none it would take just after: {}",
        describe(s2)
    );
    Ok(())
}

fn set_notify(fd: &VcpuFd, stats: &Stats, flags: u32, target: u32) -> Result<(), i32> {
    stats.count(Call::SetEventNotify);
    fd.set_event_notify_raw(&raw::kvm_event_notify {
        flags,
        vcpu_id: target,
        ..Default::default()
    })
    .map_err(|e| e.errno())
}

/// CR8 (TPR bits 7:4) of a vCPU no thread runs, through KVM_SET_SREGS: unlike KVM_SET_LAPIC
/// it does not rewrite IRR, so nothing sent meanwhile is lost.
fn set_cr8(fd: &VcpuFd, class: u8) -> Result<()> {
    let mut sregs = fd.get_sregs().map_err(|e| anyhow!("KVM_GET_SREGS: {e}"))?;
    sregs.cr8 = u64::from(class);
    fd.set_sregs(&sregs)
        .map_err(|e| anyhow!("KVM_SET_SREGS(cr8 {class:#x}): {e}"))
}

/// NMIs vCPU index `i`'s guest counted.
fn nmis(mem: &GuestMem, i: usize) -> Result<u64> {
    mem.read_u64(TestVm::pcpu_gpa(i) + fz::NMIS)
}

/// A physical unicast MSI naming `group` (x2APIC format: the ID's high bits in address_hi).
fn pair_msi(plan: &Plan, dest: u32, group: u32, vec: u8, nmi: bool) -> kvm_bindings::kvm_msi {
    let mut m = probe_msi(dest, vec, Some(group), plan);
    if nmi {
        m.data = DM_NMI;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// The pair runner.

enum Exit {
    Notify(u32),
    Interrupted,
}

/// One KVM_RUN of a pair sibling: a notification, or interrupted (the runner's ticker, a
/// stop); anything else is an error that says where the guest was.
fn run(v: &mut Vcpu, mem: &GuestMem) -> Result<Exit> {
    let other = match v.fd.run() {
        Ok(VcpuExit::Unsupported(r)) if r == raw::KVM_EXIT_EVENT_NOTIFY => None,
        Ok(exit) => Some(format!("{exit:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            return Ok(Exit::Interrupted)
        }
        Err(e) => bail!("vCPU {}: KVM_RUN: {e}", v.id),
    };
    match other {
        None => event_notify_exit(v.fd.get_kvm_run())
            .map(Exit::Notify)
            .ok_or_else(|| anyhow!("vCPU {}: KVM_EXIT_EVENT_NOTIFY without a payload", v.id)),
        Some(what) => {
            let rip = v.fd.get_regs().map(|r| r.rip).unwrap_or(0);
            let mut rec = GuestRecord::read(mem, v.index)
                .map(|r| r.to_string())
                .unwrap_or_else(|e| format!("guest record unreadable: {e:#}"));
            if let Some((gpa, val)) = crate::vm::smram_written(mem) {
                rec.push_str(&format!(
                    "; a vCPU of this VM entered SMM (SMI): the SMM state-save area is written ({gpa:#x}: {val:#x})"
                ));
            }
            bail!(
                "vCPU {} (index {}): unexpected exit {what} at guest code offset {:#x}; {rec}",
                v.id,
                v.index,
                rip.wrapping_sub(crate::vm::layout::CODE)
            )
        }
    }
}

struct Ctx {
    serial: u64,
    home: Vcpu,
    away: Vcpu,
    away_group: u32,
    dest: u32,
    mem: Arc<GuestMem>,
    vmfd: VmFd,
    plan: Plan,
    rng: Rng,
    stats: Arc<Stats>,
    shared: Arc<Shared>,
    sent: Sent,
    /// The runner may start TPR tests.
    tpr_tests: bool,
}

impl Ctx {
    fn home_id(&self) -> u32 {
        self.home.id as u32
    }
    fn away_id(&self) -> u32 {
        self.away.id as u32
    }
    fn name(&self) -> String {
        format!(
            "VM {} pair (home vCPU {}, away vCPU {} in group {}, APIC ID {:#x})",
            self.serial, self.home.id, self.away.id, self.away_group, self.dest
        )
    }
    fn set_state(&self, s: String) {
        *lock(&self.shared.state) = s;
    }
}

/// A TPR test in progress: the away sibling's CR8 is `class`, the test vector was sent.
#[derive(Debug, Clone, Copy)]
struct Tpr {
    class: u8,
    before: u32,
    since: Instant,
}

struct Loop {
    home_runs: bool,
    away_since: Instant,
    /// The away sibling was seen fired: the home sibling owes a notification exit.
    fired_at: Option<Instant>,
    /// The away sibling was seen armed with an event pending, continuously since then.
    armed_pending_since: Option<Instant>,
    tpr: Option<Tpr>,
    /// After a TPR test: (handled before, deadline) of its vector.
    tpr_wait: Option<(u32, Instant)>,
    stop_since: Option<Instant>,
    last_sample: Instant,
}

fn runner(mut c: Ctx) -> (Vcpu, Vcpu, Result<()>) {
    let r = run_pair(&mut c)
        .map_err(|e| e.context(c.shared.trail_text()))
        .with_context(|| c.name());
    c.shared.ended.store(true, Ordering::SeqCst);
    let Ctx { home, away, .. } = c;
    (home, away, r)
}

fn run_pair(c: &mut Ctx) -> Result<()> {
    let me = nix::sys::pthread::pthread_self();
    let deadline = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let t0 = Instant::now();
    let target = AtomicU64::new(me as u64);
    let helper_tid = AtomicU64::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    let (rtx, rrx) = std::sync::mpsc::channel::<(i32, i32)>();
    std::thread::scope(|s| {
        s.spawn(|| ticker(&target, &deadline, &done, t0));
        if super::off("onethread") {
            let helper_tid = &helper_tid;
            s.spawn(move || {
                helper_tid.store(nix::sys::pthread::pthread_self() as u64, Ordering::SeqCst);
                while let Ok(fd) = rx.recv() {
                    // SAFETY: KVM_RUN on a vCPU fd the runner owns and does not use meanwhile.
                    let r = unsafe { libc::ioctl(fd, 0xae80, 0) };
                    let e = if r < 0 {
                        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
                    } else {
                        0
                    };
                    if rtx.send((r, e)).is_err() {
                        break;
                    }
                }
            });
            while helper_tid.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
        }
        let helper = Helper {
            tx,
            rx: rrx,
            tid: &helper_tid,
            target: &target,
            me: me as u64,
        };
        let r = pair_loop(c, &deadline, t0, &helper);
        done.store(true, Ordering::SeqCst);
        drop(helper);
        r
    })
}

/// Diagnostic (issue 12, `vtlkit.fuzz_off=onethread`): the away sibling's KVM_RUN on a thread
/// of its own, so that no thread runs both siblings.
struct Helper<'a> {
    tx: std::sync::mpsc::Sender<i32>,
    rx: std::sync::mpsc::Receiver<(i32, i32)>,
    tid: &'a AtomicU64,
    target: &'a AtomicU64,
    me: u64,
}

impl Helper<'_> {
    fn on(&self) -> bool {
        self.tid.load(Ordering::SeqCst) != 0
    }
    fn run_away(&self, v: &mut Vcpu, mem: &GuestMem) -> Result<Exit> {
        self.target
            .store(self.tid.load(Ordering::SeqCst), Ordering::SeqCst);
        self.tx
            .send(v.fd.as_raw_fd())
            .map_err(|_| anyhow!("helper gone"))?;
        let (r, e) = self.rx.recv().map_err(|_| anyhow!("helper gone"))?;
        self.target.store(self.me, Ordering::SeqCst);
        if r < 0 {
            if e == libc::EINTR || e == libc::EAGAIN {
                return Ok(Exit::Interrupted);
            }
            bail!("vCPU {}: KVM_RUN (helper thread): errno {e}", v.id);
        }
        let reason = v.fd.get_kvm_run().exit_reason;
        if let Some(by) = event_notify_exit(v.fd.get_kvm_run()) {
            return Ok(Exit::Notify(by));
        }
        let rec = GuestRecord::read(mem, v.index)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| format!("guest record unreadable: {e:#}"));
        let what = if reason == 8 {
            "Shutdown".to_string()
        } else {
            format!("exit reason {reason}")
        };
        bail!(
            "vCPU {} (index {}): unexpected exit {what} (helper thread); {rec}",
            v.id,
            v.index
        )
    }
}

/// Home-sibling runs (each at least [`PERIOD`] in the guest) within which a delivery to it
/// must be handled: [`PROBE_TIMEOUT`] of its run time.
const HOME_RUNS_OWED: u64 = (PROBE_TIMEOUT.as_millis() / PERIOD.as_millis()) as u64;
/// How long a delivery to a home sibling that VTL1's interrupts keep from running may wait.
const STARVED_MAX: Duration = Duration::from_secs(120);

/// Kick the runner out of KVM_RUN once its deadline passed, every millisecond until it sets
/// a new one (a kick between its check and KVM_RUN is lost, the next one is not).
fn ticker(target: &AtomicU64, deadline: &AtomicU64, done: &AtomicBool, t0: Instant) {
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
        let d = deadline.load(Ordering::SeqCst);
        if d != 0 && t0.elapsed().as_nanos() as u64 >= d && !done.load(Ordering::SeqCst) {
            // `me` is the runner thread, alive until `done` (the scope joins this thread
            // before the runner returns); the kick handler does nothing.
            let me = target.load(Ordering::SeqCst) as nix::sys::pthread::Pthread;
            let _ = nix::sys::pthread::pthread_kill(me, crate::vm::KICK);
        }
    }
}

fn pair_loop(c: &mut Ctx, deadline: &AtomicU64, t0: Instant, helper: &Helper<'_>) -> Result<()> {
    let set_deadline =
        |d: Duration| deadline.store((t0.elapsed() + d).as_nanos() as u64, Ordering::SeqCst);
    let now = Instant::now();
    let mut st = Loop {
        home_runs: true,
        away_since: now,
        fired_at: None,
        armed_pending_since: None,
        tpr: None,
        tpr_wait: None,
        stop_since: None,
        last_sample: now,
    };
    arm_away(c, &mut st, "arming the away sibling as the runner starts")?;
    loop {
        if c.shared.stop.load(Ordering::SeqCst) && st.stop_since.is_none() {
            st.stop_since = Some(Instant::now());
        }
        if st.home_runs {
            set_deadline(PERIOD);
            c.shared.runs[0].fetch_add(1, Ordering::SeqCst);
            c.shared.trail("run home".into());
            let r = run(&mut c.home, &c.mem)?;
            c.shared.returns[0].fetch_add(1, Ordering::SeqCst);
            c.shared.trail(match &r {
                Exit::Notify(by) => format!("home: notify by {by}"),
                Exit::Interrupted => "home: interrupted".into(),
            });
            match r {
                Exit::Notify(by) => on_notify(c, &mut st, by)?,
                Exit::Interrupted => {
                    c.shared.home_ran.fetch_add(1, Ordering::SeqCst);
                    if st.last_sample.elapsed() < PERIOD && st.stop_since.is_none() {
                        continue;
                    }
                    st.last_sample = Instant::now();
                    let g = sample(c, &mut st)?;
                    tpr_step(c, &mut st)?;
                    if stopped(c, &st, g)? {
                        return Ok(());
                    }
                }
            }
        } else {
            set_deadline(SLICE);
            c.shared.runs[1].fetch_add(1, Ordering::SeqCst);
            c.shared.trail("run away".into());
            let r = if helper.on() {
                helper.run_away(&mut c.away, &c.mem)?
            } else {
                run(&mut c.away, &c.mem)?
            };
            c.shared.returns[1].fetch_add(1, Ordering::SeqCst);
            c.shared.trail(match &r {
                Exit::Notify(by) => format!("away: notify by {by}"),
                Exit::Interrupted => "away: interrupted".into(),
            });
            match r {
                Exit::Notify(by) => bail!(
                    "the away sibling (vCPU {}), which no vCPU is armed to notify, exited with KVM_EXIT_EVENT_NOTIFY naming vCPU {by}",
                    c.away.id
                ),
                Exit::Interrupted => {
                    // Stopping: look at every park too, not only when the home sibling's run
                    // ends without a notification. Under a stream of interrupts to the away
                    // sibling (other vCPUs' IPIs, which go on while a VM is torn down) the
                    // home sibling is notified again within every PERIOD, and the runner
                    // would switch back and forth forever without ever seeing the stop.
                    if let Some(g) = park(c, &mut st)? {
                        if st.stop_since.is_some() && !super::off("oldstop") {
                            tpr_step(c, &mut st)?;
                            if stopped(c, &st, g)? {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The home sibling exited with a notification naming `by`.
fn on_notify(c: &mut Ctx, st: &mut Loop, by: u32) -> Result<()> {
    check!(
        by == c.away_id(),
        "the home sibling (vCPU {}) exited with KVM_EXIT_EVENT_NOTIFY naming vCPU {by}; only vCPU {} is armed to notify it",
        c.home.id,
        c.away.id
    );
    let what =
        "KVM_GET_EVENT_NOTIFY of the away sibling after the home sibling's notification exit";
    let (g, s) = bracketed_get(&c.away.fd, &c.stats, what)?;
    check!(
        g.armed.is_none() && g.pending,
        "{what}: {g:?}; a notification fires once, disarming the vCPU, and only for an event pending (which a vCPU no thread runs cannot lose): {}",
        describe(&s)
    );
    c.stats.add(&c.stats.notify_exits, 1);
    c.stats.add(&c.stats.notify_switches, 1);
    st.fired_at = None;
    st.armed_pending_since = None;
    st.home_runs = false;
    st.away_since = Instant::now();
    c.set_state(format!("switched to the away sibling ({})", describe(&s)));
    Ok(())
}

/// The away sibling's slice ended: park it (unless it is mid-interrupt), maybe start a TPR
/// test, and arm it.
fn park(c: &mut Ctx, st: &mut Loop) -> Result<Option<Got>> {
    let s = vstate(&c.away.fd, &c.stats)?;
    if mid_interrupt(&s) {
        c.stats.add(&c.stats.notify_park_deferred, 1);
        c.shared.trail(format!("park deferred: {}", describe(&s)));
        check!(
            st.away_since.elapsed() < SETTLE,
            "the away sibling (vCPU {}) stayed mid-interrupt for {SETTLE:?}: {}",
            c.away.id,
            describe(&s)
        );
        return Ok(None);
    }
    st.home_runs = true;
    let start_tpr = st.stop_since.is_none()
        && st.tpr.is_none()
        && st.tpr_wait.is_none()
        && c.rng.one_in(8)
        && c.tpr_tests
        && !super::off("tpr");
    if !start_tpr {
        let (g, _) = arm_away(c, st, "re-arming the away sibling as it is parked")?;
        return Ok(Some(g));
    }
    let class = c.rng.below(16) as u8;
    set_cr8(&c.away.fd, class)?;
    let v = vector::NOTIFY[N_TPR];
    let before = handled(&c.mem, c.away.index, v)?;
    c.sent[N_TPR].fetch_add(1, Ordering::SeqCst);
    let msi = pair_msi(&c.plan, c.dest, c.away_group, v, false);
    c.stats.count(Call::SignalMsi);
    let r = c.vmfd.signal_msi(msi).map_err(|e| e.errno());
    check!(
        r == Ok(1),
        "TPR test: KVM_SIGNAL_MSI(vector {v:#x}, group {}, dest {:#x}) returned {r:?}, expected 1",
        c.away_group,
        c.dest
    );
    st.tpr = Some(Tpr {
        class,
        before,
        since: Instant::now(),
    });
    let what = format!("arming the away sibling with CR8 {class:#x} and vector {v:#x} pending");
    let (g, s2) = arm_away(c, st, &what)?;
    if class >= TPR_CLASS {
        if !would_take(&s2) {
            // The bracket already demands it; said plainly.
            check!(
                g.armed == Some(c.home_id()) && !g.pending,
                "{what}: the TPR blocks the vector and nothing else is pending, yet KVM_GET_EVENT_NOTIFY says {g:?}: {}",
                describe(&s2)
            );
            c.stats.add(&c.stats.notify_tpr_blocked, 1);
        }
    } else {
        check!(
            g.armed.is_none() && g.pending,
            "{what}: the vector is above the TPR, so arming must fire at once, yet KVM_GET_EVENT_NOTIFY says {g:?}: {}",
            describe(&s2)
        );
        c.stats.add(&c.stats.notify_tpr_fired, 1);
    }
    Ok(Some(g))
}

/// Whether a stopping runner may return: no TPR test in progress and, when settling, the away
/// sibling armed with nothing pending (`g`, its last GET); an error after [`SETTLE`].
fn stopped(c: &Ctx, st: &Loop, g: Got) -> Result<bool> {
    let Some(since) = st.stop_since else {
        return Ok(false);
    };
    let settle = c.shared.final_stop.load(Ordering::SeqCst);
    let quiet =
        st.tpr.is_none() && st.tpr_wait.is_none() && (!settle || (g.armed.is_some() && !g.pending));
    if quiet {
        return Ok(true);
    }
    if since.elapsed() > SETTLE {
        let s = vstate(&c.away.fd, &c.stats)?;
        bail!(
            "did not settle within {SETTLE:?} of being stopped (TPR test {:?}, waiting for its vector {:?}, last GET of the away sibling {g:?}): {}",
            st.tpr,
            st.tpr_wait,
            describe(&s)
        );
    }
    Ok(false)
}

/// Arm the away sibling (target: the home sibling) and check what GET says: still armed, or
/// fired with an event pending; fired at once if an event was pending before.
fn arm_away(c: &mut Ctx, st: &mut Loop, what: &str) -> Result<(Got, VState)> {
    let s1 = vstate(&c.away.fd, &c.stats)?;
    let r = set_notify(
        &c.away.fd,
        &c.stats,
        raw::KVM_EVENT_NOTIFY_ARMED,
        c.home_id(),
    );
    check!(
        r.is_ok(),
        "{what}: KVM_SET_EVENT_NOTIFY(ARMED, vcpu_id {}) failed with {}",
        c.home.id,
        r.err().map_or_else(String::new, errname)
    );
    c.stats.add(&c.stats.notify_arms, 1);
    let g = get_notify(&c.away.fd, &c.stats)?;
    let s2 = vstate(&c.away.fd, &c.stats)?;
    check_bracket(&s1, g, &s2, what)?;
    check!(
        !would_take(&s1) || g.armed.is_none(),
        "{what}: an event was pending before KVM_SET_EVENT_NOTIFY, which must then fire at once, yet GET says {g:?}: {}",
        describe(&s1)
    );
    note_get(c, st, g, &s2, what)?;
    c.set_state(format!("{what}: {g:?}; {}", describe(&s2)));
    Ok((g, s2))
}

/// A look at the parked away sibling while the home sibling runs.
fn sample(c: &mut Ctx, st: &mut Loop) -> Result<Got> {
    let what = "KVM_GET_EVENT_NOTIFY of the parked away sibling";
    let (g, s) = bracketed_get(&c.away.fd, &c.stats, what)?;
    note_get(c, st, g, &s, what)?;
    Ok(g)
}

/// What any GET of the parked away sibling must say, and the lost-wake-up clocks.
fn note_get(c: &Ctx, st: &mut Loop, g: Got, s: &VState, what: &str) -> Result<()> {
    let now = Instant::now();
    match g.armed {
        Some(t) => {
            check!(
                t == c.home_id(),
                "{what}: armed with target {t}, but the runner armed it with vCPU {}",
                c.home.id
            );
            if g.pending {
                let since = *st.armed_pending_since.get_or_insert(now);
                check!(
                    since.elapsed() < LOST_WAKEUP,
                    "lost wake-up: the away sibling has been armed with an event pending for {:?} and never notified the home sibling: {}",
                    since.elapsed(),
                    describe(s)
                );
            } else {
                st.armed_pending_since = None;
            }
        }
        None => {
            check!(
                g.pending,
                "{what}: no longer armed, yet nothing pending ({g:?}): a notification fires only for an event, and the runner did not disarm it: {}",
                describe(s)
            );
            st.armed_pending_since = None;
            let fired = *st.fired_at.get_or_insert(now);
            check!(
                fired.elapsed() < LOST_WAKEUP,
                "lost notification: the away sibling fired {:?} ago, yet the home sibling (vCPU {}) never exited with KVM_EXIT_EVENT_NOTIFY: {}",
                fired.elapsed(),
                c.home.id,
                describe(s)
            );
        }
    }
    Ok(())
}

/// A TPR test in progress: lower the TPR after a while (disarm, CR8 0, re-arm), then wait for
/// its vector.
fn tpr_step(c: &mut Ctx, st: &mut Loop) -> Result<()> {
    if let Some(t) = st.tpr {
        if t.since.elapsed() >= 3 * PERIOD || st.stop_since.is_some() {
            let r = set_notify(&c.away.fd, &c.stats, 0, 0);
            check!(
                r.is_ok(),
                "disarming the away sibling to lower its TPR: KVM_SET_EVENT_NOTIFY(0, 0) failed with {}",
                r.err().map_or_else(String::new, errname)
            );
            set_cr8(&c.away.fd, 0)?;
            st.tpr = None;
            st.tpr_wait = Some((t.before, Instant::now() + PROBE_TIMEOUT));
            let what = format!(
                "re-arming the away sibling after lowering CR8 from {:#x}",
                t.class
            );
            arm_away(c, st, &what)?;
        }
    }
    if let Some((before, dl)) = st.tpr_wait {
        let v = vector::NOTIFY[N_TPR];
        let n = handled(&c.mem, c.away.index, v)?;
        if n > before {
            st.tpr_wait = None;
            c.stats.add(&c.stats.notify_probes[4], 1);
        } else if Instant::now() > dl {
            let s = vstate(&c.away.fd, &c.stats)?;
            bail!(
                "TPR test: vector {v:#x} sent to the away sibling was not handled within {PROBE_TIMEOUT:?} of lowering its TPR (handled {n}): {}",
                describe(&s)
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The notify injector: exactly counted MSIs (and NMIs) to the away siblings of running pairs,
// each waited for before the next.

struct NInjCtx {
    serial: u64,
    vmfd: VmFd,
    mem: Arc<GuestMem>,
    targets: Arc<Mutex<Vec<Target>>>,
    stop: Arc<AtomicBool>,
    rng: Rng,
    stats: Arc<Stats>,
    plan: Plan,
}

fn ninjector(mut c: NInjCtx) -> Result<()> {
    while !c.stop.load(Ordering::Relaxed) {
        {
            let targets = lock(&c.targets);
            let pick = c.rng.below(targets.len().max(1) as u64) as usize;
            if let Some(t) = targets.get(pick).filter(|_| !super::off("ninj")) {
                let nmi = c.rng.one_in(5)
                    && c.plan.nmi_unicast_ok(t.group, t.dest)
                    && !super::off("pairnmi");
                let v = vector::NOTIFY[N_INJ];
                let before = if nmi {
                    nmis(&c.mem, t.index)?
                } else {
                    t.sent[N_INJ].fetch_add(1, Ordering::SeqCst);
                    u64::from(handled(&c.mem, t.index, v)?)
                };
                let msi = pair_msi(&c.plan, t.dest, t.group, v, nmi);
                c.stats.count(Call::SignalMsi);
                let r = c.vmfd.signal_msi(msi).map_err(|e| e.errno());
                let what = format!(
                    "VM {} notify injector: {} to APIC ID {:#x} of group {} (a parked VTL sibling, index {})",
                    c.serial,
                    if nmi { "NMI".to_string() } else { format!("vector {v:#x}") },
                    t.dest,
                    t.group,
                    t.index
                );
                check!(
                    r == Ok(1),
                    "{what}: KVM_SIGNAL_MSI returned {r:?}, expected 1"
                );
                let deadline = Instant::now() + PROBE_TIMEOUT;
                loop {
                    let now = if nmi {
                        nmis(&c.mem, t.index)?
                    } else {
                        u64::from(handled(&c.mem, t.index, v)?)
                    };
                    if now > before {
                        break;
                    }
                    check!(
                        Instant::now() < deadline,
                        "{what}: not handled within {PROBE_TIMEOUT:?} (still {now}); the pair runner's own error, if any, follows"
                    );
                    std::thread::sleep(Duration::from_micros(500));
                }
                c.stats
                    .add(&c.stats.notify_probes[if nmi { 2 } else { 3 }], 1);
            }
        }
        std::thread::sleep(Duration::from_millis(1 + c.rng.below(3)));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Stopping pairs, and the end of a VM.

/// Stop pair `p` of `fvm` (settling first if `settle`); the vCPUs come back to the VM, their
/// exactly counted vectors are checked.
fn stop_pair(fvm: &mut FuzzVm, p: usize, settle: bool, stats: &Stats) -> Result<()> {
    let (home, away) = (fvm.notify.pairs[p].home, fvm.notify.pairs[p].away);
    lock(&fvm.notify.targets).retain(|t| t.index != away);
    let Some(runner) = fvm.notify.pairs[p].runner.take() else {
        return Ok(());
    };
    runner.shared.final_stop.store(settle, Ordering::SeqCst);
    runner.shared.stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + SETTLE + Duration::from_secs(5);
    while !runner.handle.is_finished() {
        if Instant::now() > deadline {
            // Diagnostic (issue 12): where is the runner thread, and what are the CPUs doing.
            let mut diag = String::new();
            if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
                for t in rd.flatten() {
                    let p = t.path();
                    let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
                    if comm.starts_with(&format!("pair{}.", fvm.serial)) {
                        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
                        let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
                        let stack = std::fs::read_to_string(p.join("stack")).unwrap_or_default();
                        diag.push_str(&format!(
                            "; thread {}: stat [{}] wchan [{wchan}] stack [{}]",
                            comm.trim(),
                            stat.trim(),
                            stack.replace('\n', " | ")
                        ));
                    }
                }
            }
            let _ = std::fs::write("/proc/sysrq-trigger", "l");
            let sh = &runner.shared;
            diag.push_str(&format!("; {}", sh.trail_text()));
            diag.push_str(&format!("; KVM_RUN calls/returns: {}", sh.run_counts()));
            std::thread::sleep(Duration::from_millis(500));
            diag.push_str(&format!("; 0.5 s later: {}", sh.run_counts()));
            bail!(
                "VM {}: the runner of pair (home index {home}, away index {away}) did not stop within {:?}{diag}; last: {}",
                fvm.serial,
                SETTLE + Duration::from_secs(5),
                lock(&runner.shared.state)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (hv, av, r) = runner
        .handle
        .join()
        .map_err(|_| anyhow!("VM {}: a pair runner panicked", fvm.serial))?;
    let home_id = hv.id as u32;
    for v in [hv, av] {
        let i = v.index;
        fvm.vcpus[i].running = false;
        if let Some(slot) = fvm.vm.vcpus.get_mut(i) {
            *slot = Some(v);
        }
    }
    fvm.vcpus[away].notify_armed = Some(home_id);
    fvm.vcpus[home].notify_armed = None;
    r.with_context(|| format!("VM {}: pair runner", fvm.serial))?;
    for i in [home, away] {
        check_exact(fvm, i, stats)?;
    }
    Ok(())
}

/// With nothing exactly counted in flight, each such vector was handled as often as sent and
/// none is pending.
fn check_exact(fvm: &FuzzVm, i: usize, stats: &Stats) -> Result<()> {
    let v = &fvm.vcpus[i];
    let s = vstate(fvm.fd(i)?, stats)?;
    for (n, &vec) in vector::NOTIFY.iter().enumerate() {
        let h = handled(&fvm.mem, i, vec)?;
        let sent = v.notify_sent[n].load(Ordering::SeqCst);
        let irr = lapic_bit(&s.lapic, lapic_reg::IRR, vec);
        check!(
            h == sent && !irr,
            "VM {} vCPU {} (index {i}, {:?}, pair sibling): vector {vec:#x} was sent {sent} times and handled {h} times{} once its pair stopped (each must be handled exactly once, by this vCPU): {}",
            fvm.serial,
            v.id,
            v.assigned,
            if irr { ", one more pending" } else { "" },
            describe(&s)
        );
    }
    Ok(())
}

/// The end of a VM: stop the notify injector, then settle every pair (stopped ones are run
/// once more to settle) and check their counts.
pub(super) fn finish(fvm: &mut FuzzVm, stats: &Arc<Stats>) -> Result<()> {
    let inj = match fvm.notify.injector.take() {
        Some(mut i) => i.finish(),
        None => Ok(()),
    };
    let mut first_err = None;
    for p in 0..fvm.notify.pairs.len() {
        if fvm.notify.pairs[p].runner.is_none() {
            if let Err(e) = spawn_runner(fvm, p, stats, Rng(fvm.serial ^ p as u64), true) {
                first_err.get_or_insert(e);
                continue;
            }
        }
        if let Err(e) = stop_pair(fvm, p, true, stats) {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(match inj {
            Err(i) => e.context(format!("also, the notify injector: {i:#}")),
            Ok(()) => e,
        });
    }
    inj.with_context(|| format!("VM {}: notify injector", fvm.serial))
}

/// Start the runner of pair `p` (both siblings idle and ready); `settle`: stop at once, once
/// settled.
fn spawn_runner(
    fvm: &mut FuzzVm,
    p: usize,
    stats: &Arc<Stats>,
    rng: Rng,
    settle: bool,
) -> Result<()> {
    let (home, away) = (fvm.notify.pairs[p].home, fvm.notify.pairs[p].away);
    let Some(a) = fvm.vcpus[away].assigned else {
        bail!("VM {}: pair sibling index {away} is unassigned", fvm.serial);
    };
    // SAFETY: dup() of a VM fd we own; checked, then owned by the VmFd.
    let fd = unsafe { libc::dup(fvm.vm.fd.as_raw_fd()) };
    if fd < 0 {
        bail!("dup(VM fd): {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly duplicated, owned VM fd; nothing else closes it.
    let vmfd = unsafe { fvm.vm.kvm.create_vmfd_from_rawfd(fd) }
        .map_err(|e| anyhow!("VmFd from dup'd fd: {e}"))?;
    let take = |fvm: &mut FuzzVm, i: usize| {
        fvm.vm
            .vcpus
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("VM {}: pair sibling index {i} is not idle", fvm.serial))
    };
    let hv = take(fvm, home)?;
    let av = match take(fvm, away) {
        Ok(v) => v,
        Err(e) => {
            fvm.vm.vcpus[home] = Some(hv);
            return Err(e);
        }
    };
    let shared = Arc::new(Shared::default());
    shared.final_stop.store(settle, Ordering::SeqCst);
    shared.stop.store(settle, Ordering::SeqCst);
    let sent = Arc::clone(&fvm.vcpus[away].notify_sent);
    let ctx = Ctx {
        serial: fvm.serial,
        home: hv,
        away: av,
        away_group: a.group,
        dest: a.apic_id,
        mem: Arc::clone(&fvm.mem),
        vmfd,
        plan: fvm.plan,
        rng,
        stats: Arc::clone(stats),
        shared: Arc::clone(&shared),
        sent: Arc::clone(&sent),
        tpr_tests: true,
    };
    crate::vm::install_kick_handler();
    let handle = std::thread::Builder::new()
        .name(format!("pair{}.{p}", fvm.serial))
        .spawn(move || runner(ctx))
        .context("spawning a pair runner")?;
    fvm.vcpus[home].running = true;
    fvm.vcpus[away].running = true;
    fvm.notify.pairs[p].runner = Some(Runner { shared, handle });
    if !settle {
        lock(&fvm.notify.targets).push(Target {
            index: away,
            group: a.group,
            dest: a.apic_id,
            sent,
        });
    }
    stats.add(&stats.notify_runs, 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The main thread's operations.

/// KVM_ENABLE_CAP(KVM_CAP_VCPU_EVENT_NOTIFY) with `args`: the errors api.rst (7.39) lists.
fn enable_expected(args: [u64; 4], irqchip: bool) -> Vec<i32> {
    let mut e = Vec::new();
    if args != [0; 4] {
        e.push(libc::EINVAL);
    }
    if !irqchip {
        e.push(libc::ENXIO);
    }
    e
}

/// KVM_SET_EVENT_NOTIFY: the error api.rst (4.146) lists, or None for success.
fn set_expected(
    enabled: bool,
    en: &raw::kvm_event_notify,
    own: u32,
    exists: impl Fn(u32) -> bool,
) -> Option<i32> {
    let armed = en.flags & raw::KVM_EVENT_NOTIFY_ARMED != 0;
    let bad = !enabled
        || en.flags & !raw::KVM_EVENT_NOTIFY_ARMED != 0
        || en.reserved != [0; 3]
        || (armed && (!exists(en.vcpu_id) || en.vcpu_id == own))
        || (!armed && en.vcpu_id != 0);
    bad.then_some(libc::EINVAL)
}

impl Fuzzer {
    /// KVM_ENABLE_CAP(KVM_CAP_VCPU_EVENT_NOTIFY) on `vm`, checked; true if it succeeded.
    fn enable_notify(
        &mut self,
        vm: &VmFd,
        serial: u64,
        args: [u64; 4],
        irqchip: bool,
    ) -> Result<bool> {
        let expected = enable_expected(args, irqchip);
        self.stats.count(Call::EnableCap);
        let got = enable_event_notify_raw(vm, args).err().map(|e| e.errno());
        let what = format!(
            "VM {serial}: KVM_ENABLE_CAP(KVM_CAP_VCPU_EVENT_NOTIFY, args {args:x?}) [irqchip {irqchip}]"
        );
        self.note(format!("{what} -> {}", got.map_or("ok".into(), errname)));
        match got {
            None if expected.is_empty() => Ok(true),
            None => bail!("{what}: succeeded, expected {}", errset(&expected)),
            Some(e) if expected.contains(&e) => Ok(false),
            Some(e) => bail!("{what}: got {}, expected {}", errname(e), errset(&expected)),
        }
    }

    /// When a VM is created: VMs that get pairs enable the capability, some others too, and
    /// some without an irqchip try (ENXIO).
    pub(super) fn notify_enable_at_create(
        &mut self,
        vm: &VmFd,
        serial: u64,
        irqchip: bool,
        pairs: bool,
    ) -> Result<bool> {
        if !self.notify_supported {
            return Ok(false);
        }
        let want = pairs || self.rng.one_in(if irqchip { 6 } else { 2 });
        if !want {
            return Ok(false);
        }
        let mut on = false;
        if self.rng.one_in(3) {
            let args = self.random_cap_args();
            on |= self.enable_notify(vm, serial, args, irqchip)?;
        }
        on |= self.enable_notify(vm, serial, [0; 4], irqchip)?;
        if self.rng.one_in(4) {
            on |= self.enable_notify(vm, serial, [0; 4], irqchip)?;
        }
        if on {
            self.stats.add(&self.stats.notify_vms, 1);
        }
        Ok(on)
    }

    /// Disarm the vCPUs of `idx` the model has armed (before a batch runs them).
    pub(super) fn notify_disarm_all(&mut self, k: usize, idx: &[usize]) -> Result<()> {
        for &i in idx {
            if self.vms[k].vcpus[i].notify_armed.is_none() {
                continue;
            }
            let fvm = &self.vms[k];
            let r = set_notify(fvm.fd(i)?, &self.stats, 0, 0);
            let what = format!(
                "VM {} vCPU {}: KVM_SET_EVENT_NOTIFY(0, 0) before it runs",
                fvm.serial, fvm.vcpus[i].id
            );
            self.note(format!("{what} -> {:?}", r.map_err(errname)));
            check!(r.is_ok(), "{what}: {:?}", r.map_err(errname));
            self.vms[k].vcpus[i].notify_armed = None;
        }
        Ok(())
    }

    /// KVM_GET_EVENT_NOTIFY of idle vCPU `i` against the model (see the module documentation).
    fn check_notify_get(&mut self, k: usize, i: usize, when: &str) -> Result<()> {
        let fvm = &self.vms[k];
        let v = &fvm.vcpus[i];
        let fd = fvm.fd(i)?;
        let what = format!(
            "VM {} vCPU {} (index {i}): KVM_GET_EVENT_NOTIFY {when} [model: armed {:?}, enabled {}]",
            fvm.serial, v.id, v.notify_armed, fvm.notify.enabled
        );
        if !fvm.notify.enabled {
            self.stats.count(Call::GetEventNotify);
            let r = fd.get_event_notify_raw().map_err(|e| e.errno());
            check!(
                r.as_ref().err() == Some(&libc::EINVAL),
                "{what}: the VM did not enable KVM_CAP_VCPU_EVENT_NOTIFY, expected EINVAL, got {:?}",
                r.map_err(errname)
            );
            return Ok(());
        }
        let (g, s) = bracketed_get(fd, &self.stats, &what)?;
        let model = v.notify_armed;
        match model {
            None => check!(
                g.armed.is_none(),
                "{what}: {g:?}, but the model has it disarmed"
            ),
            Some(t) => check!(
                g.armed == Some(t) || (g.armed.is_none() && g.pending),
                "{what}: {g:?}, but it was armed with target {t}: still armed with it, or fired (and then an event is pending, which a vCPU no thread runs cannot lose): {}",
                describe(&s)
            ),
        }
        if g.armed.is_none() {
            self.vms[k].vcpus[i].notify_armed = None;
        }
        self.note(format!("{what} -> {g:?}"));
        Ok(())
    }

    /// A vCPU that only ever is the target of random arms (it never runs): an existing one,
    /// else an idle unpaired one (not `except`) made one now.
    fn sink(&mut self, k: usize, except: usize) -> Option<u32> {
        let fvm = &self.vms[k];
        if let Some(v) = fvm
            .vcpus
            .iter()
            .enumerate()
            .find(|&(i, v)| v.sink && i != except)
        {
            return Some(v.1.id as u32);
        }
        let cand: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&i| i != except && !fvm.vcpus[i].running && !fvm.vcpus[i].paired)
            .collect();
        let i = self.rng.pick(&cand)?;
        let fvm = &mut self.vms[k];
        fvm.vcpus[i].sink = true;
        let (serial, id) = (fvm.serial, fvm.vcpus[i].id);
        self.note(format!(
            "VM {serial}: vCPU {id} becomes the notification sink (it will not run)"
        ));
        Some(id as u32)
    }

    /// Random KVM_SET_EVENT_NOTIFY / KVM_GET_EVENT_NOTIFY calls on an idle vCPU.
    pub(super) fn notify_set_get(&mut self, k: usize) -> Result<()> {
        let fvm = &self.vms[k];
        let idle: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&i| !fvm.vcpus[i].running)
            .collect();
        let Some(i) = self.rng.pick(&idle) else {
            return Ok(());
        };
        let op = self.rng.below(10);
        // Stopped pair siblings: GET only (their runner owns their arming).
        if op < 2 || self.vms[k].vcpus[i].paired {
            return self.check_notify_get(k, i, "(random check)");
        }
        if op == 2 {
            return self.notify_bad_pointer(k, i);
        }
        self.check_notify_get(k, i, "before KVM_SET_EVENT_NOTIFY")?;
        let fvm = &self.vms[k];
        let own = fvm.vcpus[i].id as u32;
        let ids: Vec<u32> = fvm.vcpus.iter().map(|v| v.id as u32).collect();
        let sinks: Vec<u32> = fvm
            .vcpus
            .iter()
            .filter(|v| v.sink && v.id as u32 != own)
            .map(|v| v.id as u32)
            .collect();
        let flags = match self.rng.below(10) {
            0..=4 => raw::KVM_EVENT_NOTIFY_ARMED,
            5..=6 => 0,
            7 => raw::KVM_EVENT_NOTIFY_ARMED | raw::KVM_EVENT_NOTIFY_PENDING,
            8 => 1 << self.rng.below(32),
            _ => self.rng.next_u32(),
        };
        let mut target = match self.rng.below(10) {
            0 => own,
            1 => self.rng.next_u32(),
            2 => (0..64).find(|id| !ids.contains(id)).unwrap_or(4095),
            3..=4 => 0,
            5..=6 => self.rng.pick(&ids).unwrap_or(0),
            _ => self.rng.pick(&sinks).unwrap_or(own),
        };
        let mut reserved = [0u64; 3];
        if self.rng.one_in(8) {
            reserved[self.rng.below(3) as usize] = 1 << self.rng.below(64);
        }
        let enabled = self.vms[k].notify.enabled;
        let mk = |flags, vcpu_id| raw::kvm_event_notify {
            flags,
            vcpu_id,
            reserved,
        };
        let exists = |ids: &[u32], id: u32| ids.contains(&id);
        // A successful arm only ever names a sink.
        if set_expected(enabled, &mk(flags, target), own, |id| exists(&ids, id)).is_none()
            && flags & raw::KVM_EVENT_NOTIFY_ARMED != 0
            && !sinks.contains(&target)
        {
            target = self.sink(k, i).unwrap_or(own);
        }
        let en = mk(flags, target);
        let ids: Vec<u32> = self.vms[k].vcpus.iter().map(|v| v.id as u32).collect();
        let expected = set_expected(enabled, &en, own, |id| exists(&ids, id));
        let fvm = &self.vms[k];
        let what = format!(
            "VM {} vCPU {own} (index {i}): KVM_SET_EVENT_NOTIFY(flags {flags:#x}, vcpu_id {target}, reserved {reserved:x?}) [enabled {enabled}, model armed {:?}]",
            fvm.serial, fvm.vcpus[i].notify_armed
        );
        self.stats.count(Call::SetEventNotify);
        let got = fvm
            .fd(i)?
            .set_event_notify_raw(&en)
            .err()
            .map(|e| e.errno());
        self.note(format!("{what} -> {}", got.map_or("ok".into(), errname)));
        match (got, expected) {
            (None, None) => {
                let armed = flags & raw::KVM_EVENT_NOTIFY_ARMED != 0;
                if armed {
                    self.stats.add(&self.stats.notify_arms, 1);
                }
                self.vms[k].vcpus[i].notify_armed = armed.then_some(target);
            }
            (None, Some(e)) => bail!("{what}: succeeded, expected {}", errname(e)),
            (Some(e), Some(x)) if e == x => {}
            (Some(e), x) => bail!(
                "{what}: got {}, expected {}",
                errname(e),
                x.map_or("success".into(), errname)
            ),
        }
        // A failed call changes nothing; a successful one is what the model now says.
        self.check_notify_get(k, i, "after KVM_SET_EVENT_NOTIFY")
    }

    fn notify_bad_pointer(&mut self, k: usize, i: usize) -> Result<()> {
        let size = std::mem::size_of::<raw::kvm_event_notify>();
        // SAFETY: pointer arithmetic inside our own two-page guard mapping; the addresses are
        // only handed to the kernel, which checks them.
        let straddle = unsafe { self.guard.add(crate::vm::layout::PAGE as usize - size / 2) };
        let ptrs: [(&str, *mut u8); 3] = [
            ("NULL", std::ptr::null_mut()),
            ("a kernel address", 0xffff_8000_0000_0000u64 as *mut u8),
            ("a struct straddling into a PROT_NONE page", straddle),
        ];
        let (pname, ptr) = ptrs[self.rng.below(ptrs.len() as u64) as usize];
        let set = self.rng.one_in(2);
        let fvm = &self.vms[k];
        let fd = fvm.fd(i)?;
        let r = if set {
            self.stats.count(Call::SetEventNotify);
            // SAFETY: the kernel validates the user pointer and fails with EFAULT; no Rust
            // object lives at these addresses (the straddling one is in our scratch page).
            unsafe {
                ioctl_with_ptr(
                    fd,
                    libc::c_ulong::from(raw::VTLKIT_KVM_SET_EVENT_NOTIFY),
                    ptr.cast_const(),
                )
            }
        } else {
            self.stats.count(Call::GetEventNotify);
            // SAFETY: as above; a partial write can only land in our scratch guard page.
            unsafe {
                ioctl_with_mut_ptr(
                    fd,
                    libc::c_ulong::from(raw::VTLKIT_KVM_GET_EVENT_NOTIFY),
                    ptr,
                )
            }
        };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let op = if set {
            "KVM_SET_EVENT_NOTIFY"
        } else {
            "KVM_GET_EVENT_NOTIFY"
        };
        let what = format!(
            "VM {} vCPU {}: {op} with {pname}",
            fvm.serial, fvm.vcpus[i].id
        );
        // SET copies its argument in first; GET fails with EINVAL before copying out.
        let expected = if !set && !fvm.notify.enabled {
            libc::EINVAL
        } else {
            libc::EFAULT
        };
        self.note(format!(
            "{what} -> {}",
            if r == 0 { "ok".into() } else { errname(errno) }
        ));
        check!(
            r != 0 && errno == expected,
            "{what}: got {}, expected {}",
            if r == 0 {
                "success".into()
            } else {
                errname(errno)
            },
            errname(expected)
        );
        self.check_notify_get(k, i, &format!("after {op} with {pname}"))
    }

    /// A VTL sibling pair: two new vCPUs, groups 0 and 1, the same APIC ID above 0xff; run
    /// each to its first SYNC, then start its runner.
    pub(super) fn pair_create(&mut self, k: usize) -> Result<()> {
        let total_running: usize = self.vms.iter().map(FuzzVm::running_count).sum();
        let fvm = &self.vms[k];
        if super::off("pairs")
            || !fvm.notify.enabled
            || !fvm.notify.pairs_ok
            || !fvm.plan.opted
            || !fvm.plan.x2apic_format
            || fvm.plan.groups < 2
            || fvm.max_apic_id() < PAIR_ID_BASE + 7
            || fvm.vcpus.len() + 2 > MAX_VCPUS
            || total_running + 1 > MAX_RUNNING
        {
            return Ok(());
        }
        let free_ids: Vec<u32> = (0..8)
            .map(|n| PAIR_ID_BASE + n)
            .filter(|&d| !fvm.taken(0, d, usize::MAX) && !fvm.taken(1, d, usize::MAX))
            .collect();
        let limit = u64::from(fvm.max_vcpu_ids.min(24));
        let used: Vec<u64> = fvm.vcpus.iter().map(|v| v.id).collect();
        let mut free: Vec<u64> = (0..limit).filter(|id| !used.contains(id)).collect();
        let Some(dest) = self.rng.pick(&free_ids) else {
            return Ok(());
        };
        if free.len() < 2 {
            return Ok(());
        }
        let a = free.remove(self.rng.below(free.len() as u64) as usize);
        let b = free.remove(self.rng.below(free.len() as u64) as usize);
        let home_vtl = u32::from(self.rng.one_in(3));
        let mut idx = [0usize; 2];
        for (vtl, id) in [(0u32, a), (1, b)] {
            let i = self.create_vcpu_id(k, id)?;
            self.vms[k].vcpus[i].paired = true;
            let ag = ApicGroup {
                group: vtl,
                apic_id: dest,
                vtl: vtl as u8,
            };
            self.do_set_apic_group(k, i, ag.into())?;
            check!(
                self.vms[k].vcpus[i].assigned == Some(ag),
                "VM {}: pair sibling vCPU {id} was not assigned {ag:?}",
                self.vms[k].serial
            );
            idx[vtl as usize] = i;
        }
        let (home, away) = (idx[home_vtl as usize], idx[1 - home_vtl as usize]);
        // Each runs its guest's start on this thread: APIC (x2APIC) enabled, ID checked.
        for i in idx {
            self.prepare_guest(k, i, true)?;
            let fvm = &mut self.vms[k];
            let serial = fvm.serial;
            let mem = Arc::clone(&fvm.mem);
            let vcpu = fvm
                .vm
                .vcpus
                .get_mut(i)
                .and_then(Option::as_mut)
                .ok_or_else(|| anyhow!("VM {serial}: pair sibling index {i} is not idle"))?;
            self.stats.count(Call::Run);
            let id_read = loop {
                match crate::vm::run_once_raw(vcpu, &mem)? {
                    crate::vm::Step::Ucall(crate::vm::Ucall::Sync { stage, args })
                        if stage == ucall::STAGE_APIC_READY =>
                    {
                        break args[0]
                    }
                    crate::vm::Step::Interrupted => {}
                    crate::vm::Step::Ucall(u) => {
                        bail!("VM {serial} pair sibling index {i}: expected its APIC-ready SYNC, got {u}")
                    }
                    crate::vm::Step::Hyperv => {
                        bail!("VM {serial} pair sibling index {i}: unexpected KVM_EXIT_HYPERV")
                    }
                    crate::vm::Step::EventNotify(by) => {
                        bail!("VM {serial} pair sibling index {i}: unexpected KVM_EXIT_EVENT_NOTIFY from vCPU {by} before the pair was armed")
                    }
                    crate::vm::Step::MemoryFault(f) => {
                        bail!(
                            "VM {serial} pair sibling index {i}: unexpected protection fault ({f})"
                        )
                    }
                }
            };
            let v = &mut fvm.vcpus[i];
            check!(
                id_read == u64::from(dest),
                "VM {serial} pair sibling vCPU {}: the guest read x2APIC ID {id_read:#x}, expected {dest:#x}",
                v.id
            );
            v.ran = true;
            v.mode = ApicMode::X2apic;
            v.note_ids();
        }
        let fvm = &mut self.vms[k];
        fvm.notify.pairs.push(Pair {
            home,
            away,
            runner: None,
        });
        self.stats.add(&self.stats.notify_pairs, 1);
        let serial = fvm.serial;
        let (hid, aid) = (fvm.vcpus[home].id, fvm.vcpus[away].id);
        self.note(format!(
            "VM {serial}: VTL pair at APIC ID {dest:#x}: vCPU {a} (group 0, VTL0), vCPU {b} (group 1, VTL1); home vCPU {hid}, away vCPU {aid}"
        ));
        let p = self.vms[k].notify.pairs.len() - 1;
        self.pair_start(k, p)
    }

    fn pair_start(&mut self, k: usize, p: usize) -> Result<()> {
        let rng = self.rng.fork();
        let stats = Arc::clone(&self.stats);
        let fvm = &mut self.vms[k];
        spawn_runner(fvm, p, &stats, rng, false)?;
        if fvm.notify.injector.is_none() {
            // SAFETY: dup() of a VM fd we own; checked, then owned by the VmFd.
            let fd = unsafe { libc::dup(fvm.vm.fd.as_raw_fd()) };
            if fd < 0 {
                bail!("dup(VM fd): {}", std::io::Error::last_os_error());
            }
            // SAFETY: `fd` is a freshly duplicated, owned VM fd; nothing else closes it.
            let vmfd = unsafe { fvm.vm.kvm.create_vmfd_from_rawfd(fd) }
                .map_err(|e| anyhow!("VmFd from dup'd fd: {e}"))?;
            let stop = Arc::new(AtomicBool::new(false));
            let ctx = NInjCtx {
                serial: fvm.serial,
                vmfd,
                mem: Arc::clone(&fvm.mem),
                targets: Arc::clone(&fvm.notify.targets),
                stop: Arc::clone(&stop),
                rng: self.rng.fork(),
                stats: Arc::clone(&self.stats),
                plan: fvm.plan,
            };
            let handle = std::thread::Builder::new()
                .name(format!("ninject{}", fvm.serial))
                .spawn(move || ninjector(ctx))
                .context("spawning the notify injector")?;
            fvm.notify.injector = Some(NInjector {
                stop,
                handle: Some(handle),
            });
        }
        let (serial, home, away) = (
            fvm.serial,
            fvm.notify.pairs[p].home,
            fvm.notify.pairs[p].away,
        );
        self.note(format!(
            "VM {serial}: start the runner of pair {p} (home index {home}, away index {away})"
        ));
        Ok(())
    }

    /// Stop a running pair (its counts checked), or start a stopped one.
    pub(super) fn pair_toggle(&mut self, k: usize) -> Result<()> {
        let n = self.vms[k].notify.pairs.len();
        if n == 0 {
            return Ok(());
        }
        let p = self.rng.below(n as u64) as usize;
        if self.vms[k].notify.pairs[p].runner.is_some() {
            let serial = self.vms[k].serial;
            self.note(format!("VM {serial}: stop the runner of pair {p}"));
            let stats = Arc::clone(&self.stats);
            return stop_pair(&mut self.vms[k], p, false, &stats);
        }
        let total_running: usize = self.vms.iter().map(FuzzVm::running_count).sum();
        if total_running + 1 > MAX_RUNNING {
            return Ok(());
        }
        self.pair_start(k, p)
    }

    /// A running pair's runner that ended: its error.
    fn pair_failed(&mut self, k: usize, p: usize, what: &str) -> anyhow::Error {
        let stats = Arc::clone(&self.stats);
        match stop_pair(&mut self.vms[k], p, false, &stats) {
            Err(e) => e.context(format!("while: {what}")),
            Ok(()) => anyhow!("{what}: the pair runner ended without an error"),
        }
    }

    /// Wait until `cond` holds, while pair `p` runs; fail after [`PROBE_TIMEOUT`] with the
    /// runner's last state, or at once with its error if it ended.
    /// For the home sibling (`home`), the time owed is its own run time: [`HOME_RUNS_OWED`]
    /// runs that ended without a notification, however long VTL1's interrupts keep it from
    /// running, up to [`STARVED_MAX`].
    fn wait_pair(
        &mut self,
        k: usize,
        p: usize,
        home: bool,
        what: &str,
        cond: impl Fn(&GuestMem) -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        let deadline = start + PROBE_TIMEOUT;
        let mem = Arc::clone(&self.vms[k].mem);
        let home_ran = |me: &Self| {
            me.vms[k].notify.pairs[p]
                .runner
                .as_ref()
                .map_or(0, |r| r.shared.home_ran.load(Ordering::SeqCst))
        };
        let ran_before = home_ran(self);
        loop {
            if cond(&mem)? {
                return Ok(());
            }
            let ended = self.vms[k].notify.pairs[p]
                .runner
                .as_ref()
                .is_none_or(|r| r.shared.ended.load(Ordering::SeqCst));
            if ended {
                return Err(self.pair_failed(k, p, what));
            }
            let owed = !home
                || home_ran(self) - ran_before >= HOME_RUNS_OWED
                || start.elapsed() > STARVED_MAX;
            if Instant::now() > deadline && owed {
                let (state, trail) = self.vms[k].notify.pairs[p]
                    .runner
                    .as_ref()
                    .map(|r| (lock(&r.shared.state).clone(), r.shared.trail_text()))
                    .unwrap_or_default();
                bail!(
                    "{what}: not within {:?}, in which the home sibling ran {} times until the runner's ticker; the pair runner last: {state}; {trail}",
                    start.elapsed(),
                    home_ran(self) - ran_before
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An exactly counted delivery to a running pair's sibling (mostly the parked one): an MSI
    /// that names its group, an NMI, or a fixed IPI from a running vCPU of its group.
    pub(super) fn notify_probe(&mut self, k: usize) -> Result<()> {
        if super::off("pairprobe") {
            return Ok(());
        }
        let running: Vec<usize> = (0..self.vms[k].notify.pairs.len())
            .filter(|&p| self.vms[k].notify.pairs[p].runner.is_some())
            .collect();
        let Some(p) = self.rng.pick(&running) else {
            return Ok(());
        };
        let to_home = self.rng.one_in(5);
        let kind = self.rng.below(6);
        let sender_pick = self.rng.next_u64();
        let fvm = &self.vms[k];
        let pair = &fvm.notify.pairs[p];
        let pair_home = pair.home;
        let t = if to_home { pair.home } else { pair.away };
        let tv = &fvm.vcpus[t];
        let Some(a) = tv.assigned else {
            bail!("VM {}: pair sibling index {t} unassigned", fvm.serial);
        };
        let (g, d) = (a.group, a.apic_id);
        // IPI senders: running, steady x2APIC vCPUs of the group, in a batch or a pair's home.
        let senders: Vec<usize> = (0..fvm.vcpus.len())
            .filter(|&s| {
                let v = &fvm.vcpus[s];
                let home_of_running = fvm
                    .notify
                    .pairs
                    .iter()
                    .any(|q| q.home == s && q.runner.is_some());
                s != t
                    && v.running
                    && v.ran
                    && v.steady
                    && v.mode == ApicMode::X2apic
                    && v.group() == Some(g)
                    && (home_of_running || (!v.paired && fvm.batch_of(s).is_some()))
            })
            .collect();
        if kind >= 4 && !senders.is_empty() {
            let s = senders[(sender_pick % senders.len() as u64) as usize];
            return self.notify_probe_ipi(k, p, t, s, d);
        }
        let nmi = kind == 3 && fvm.plan.nmi_unicast_ok(g, d);
        let v = vector::NOTIFY[N_MSI];
        let before = if nmi {
            nmis(&fvm.mem, t)?
        } else {
            u64::from(handled(&fvm.mem, t, v)?)
        };
        if !nmi {
            tv.notify_sent[N_MSI].fetch_add(1, Ordering::SeqCst);
        }
        let msi = pair_msi(&fvm.plan, d, g, v, nmi);
        let what = format!(
            "VM {}: {} to pair sibling vCPU {} (APIC ID {d:#x}, group {g}, {})",
            fvm.serial,
            if nmi {
                "NMI by KVM_SIGNAL_MSI".to_string()
            } else {
                format!("KVM_SIGNAL_MSI vector {v:#x}")
            },
            tv.id,
            if t == pair.away { "away" } else { "home" }
        );
        self.stats.count(Call::SignalMsi);
        let r = fvm.vm.fd.signal_msi(msi).map_err(|e| e.errno());
        self.note(format!("{what} -> {r:?}"));
        check!(r == Ok(1), "{what}: returned {r:?}, expected 1");
        self.wait_pair(k, p, t == pair_home, &what, |mem| {
            Ok(if nmi {
                nmis(mem, t)? > before
            } else {
                u64::from(handled(mem, t, v)?) > before
            })
        })?;
        self.stats
            .add(&self.stats.notify_probes[if nmi { 2 } else { 0 }], 1);
        Ok(())
    }

    fn notify_probe_ipi(&mut self, k: usize, p: usize, t: usize, s: usize, d: u32) -> Result<()> {
        let pair_home = self.vms[k].notify.pairs[p].home;
        let fvm = &self.vms[k];
        let v = vector::NOTIFY[N_IPI];
        let before = handled(&fvm.mem, t, v)?;
        fvm.vcpus[t].notify_sent[N_IPI].fetch_add(1, Ordering::SeqCst);
        let what = format!(
            "VM {}: IPI vector {v:#x} from vCPU {} to APIC ID {d:#x} (pair sibling vCPU {})",
            fvm.serial, fvm.vcpus[s].id, fvm.vcpus[t].id
        );
        let page = TestVm::pcpu_gpa(s);
        fvm.mem.write_u64(page + fz::PROBE_DEST, u64::from(d))?;
        fvm.mem
            .write_u64(page + fz::PROBE_ICR, u64::from(u32::from(v) | LEVEL_ASSERT))?;
        self.note(what.clone());
        self.wait_pair(k, p, t == pair_home, &what, |mem| {
            Ok(handled(mem, t, v)? > before)
        })?;
        // The sender clears its request once sent; wait for that too, so that the next probe
        // may use it.
        let fvm = &self.vms[k];
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while fvm.mem.read_u64(page + fz::PROBE_ICR)? != 0 {
            check!(
                Instant::now() < deadline,
                "{what}: the sender did not clear its request within {PROBE_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stats.add(&self.stats.notify_probes[1], 1);
        Ok(())
    }

    /// Enable the capability late (any time: api.rst has no EBUSY), check the idle vCPUs'
    /// GETs, or check that no runner died.
    pub(super) fn notify_misc(&mut self, k: usize) -> Result<()> {
        if !self.notify_supported {
            return Ok(());
        }
        match self.rng.below(3) {
            0 => {
                if self.vms[k].notify.enabled && !self.rng.one_in(4) {
                    return Ok(());
                }
                let args = self.random_cap_args();
                let (serial, irqchip) = (self.vms[k].serial, self.vms[k].plan.irqchip);
                // SAFETY: dup() of a VM fd we own, so the VmFd can be used while self is
                // borrowed; checked, then owned by the VmFd.
                let fd = unsafe { libc::dup(self.vms[k].vm.fd.as_raw_fd()) };
                if fd < 0 {
                    bail!("dup(VM fd): {}", std::io::Error::last_os_error());
                }
                // SAFETY: `fd` is a freshly duplicated, owned VM fd.
                let vmfd = unsafe { self.vms[k].vm.kvm.create_vmfd_from_rawfd(fd) }
                    .map_err(|e| anyhow!("VmFd from dup'd fd: {e}"))?;
                let ok = self.enable_notify(&vmfd, serial, args, irqchip)?;
                if ok && !self.vms[k].notify.enabled {
                    self.vms[k].notify.enabled = true;
                    self.stats.add(&self.stats.notify_vms, 1);
                }
                Ok(())
            }
            1 => {
                for i in 0..self.vms[k].vcpus.len() {
                    if !self.vms[k].vcpus[i].running {
                        self.check_notify_get(k, i, "(sweep)")?;
                    }
                }
                Ok(())
            }
            _ => {
                for p in 0..self.vms[k].notify.pairs.len() {
                    let ended = self.vms[k].notify.pairs[p]
                        .runner
                        .as_ref()
                        .is_some_and(|r| r.shared.ended.load(Ordering::SeqCst));
                    if ended {
                        return Err(self.pair_failed(k, p, "checking the pair runners"));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Issue 12: a pair runner asked to stop while its away sibling always has an event pending,
/// so that every arming fires at once and every run of the home sibling ends in a
/// notification: an interrupt in its IRR that it never takes, as its guest halts with
/// RFLAGS.IF clear (api.rst: an interrupt above the processor priority counts whatever
/// RFLAGS.IF says). The fuzzer meets this under a stream of IPIs to the away sibling while a
/// VM is torn down. Before the runner looked at the stop at every park it switched back and
/// forth forever ("did not stop within 35s", "did not settle within 30s"); it must stop at
/// once.
pub(super) fn pair_runner_stops() -> crate::harness::TestResult {
    use crate::guest::Entry;
    use crate::harness::Outcome;
    use crate::vm::VmOptions;
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| anyhow!("open /dev/kvm: {e}"))?;
    let groups = vtlkit_uapi::apic_groups_supported(&kvm);
    crate::require!(groups >= 2, "KVM_CAP_APIC_GROUPS is {groups}, need 2");
    let mut vm = TestVm::new(VmOptions::apic_groups())?;
    crate::require!(
        enable_event_notify_raw(&vm.fd, [0; 4]).is_ok(),
        "KVM_CAP_VCPU_EVENT_NOTIFY not available"
    );
    vm.mem.write(super::FUZZ_CODE, super::fuzz_guest_code())?;
    super::install_nmi_gate(&vm.mem)?;
    const DEST: u32 = 5;
    let mut idx = [0usize; 2];
    for vtl in 0..2u32 {
        let ag = ApicGroup {
            group: vtl,
            apic_id: DEST,
            vtl: vtl as u8,
        };
        let i = vm.add_vcpu_in_group(u64::from(vtl) + 1, Entry::ApicMain, ag)?;
        let fd = &vm.vcpu(i)?.fd;
        let mut regs = fd.get_regs().map_err(|e| anyhow!("KVM_GET_REGS: {e}"))?;
        regs.rip = super::FUZZ_CODE;
        fd.set_regs(&regs)
            .map_err(|e| anyhow!("KVM_SET_REGS: {e}"))?;
        // No send program: after its APIC-ready SYNC the guest halts, taking interrupts.
        vm.set_pcpu(
            i,
            crate::guest::pcpu::APIC_MODE,
            crate::guest::pcpu::APIC_MODE_X2APIC,
        )?;
        vm.set_pcpu(i, crate::guest::pcpu::PROGRAM, 0)?;
        vm.set_pcpu(
            i,
            fz::APIC_ENABLE,
            super::helper_gpa(&raw const super::vtlkit_guest_apic_enable),
        )?;
        let mem = Arc::clone(&vm.mem);
        let v = vm.vcpus[i]
            .as_mut()
            .ok_or_else(|| anyhow!("vCPU index {i} missing"))?;
        loop {
            match crate::vm::run_once_raw(v, &mem)? {
                crate::vm::Step::Ucall(crate::vm::Ucall::Sync { stage, .. })
                    if stage == ucall::STAGE_APIC_READY =>
                {
                    break
                }
                crate::vm::Step::Interrupted => {}
                _ => bail!("vCPU index {i}: expected its APIC-ready SYNC"),
            }
        }
        idx[vtl as usize] = i;
    }
    // The away sibling (VTL1): `cli; hlt; jmp hlt`, so that it never takes an interrupt.
    let park_code = crate::vm::layout::SHARED;
    vm.mem.write(park_code, &[0xfa, 0xf4, 0xeb, 0xfd])?;
    {
        let fd = &vm.vcpu(idx[1])?.fd;
        let mut regs = fd.get_regs().map_err(|e| anyhow!("KVM_GET_REGS: {e}"))?;
        regs.rip = park_code;
        regs.rflags &= !0x200;
        fd.set_regs(&regs)
            .map_err(|e| anyhow!("KVM_SET_REGS: {e}"))?;
    }
    // SAFETY: dup() of a VM fd we own; checked, then owned by the VmFd.
    let fd = unsafe { libc::dup(vm.fd.as_raw_fd()) };
    if fd < 0 {
        bail!("dup(VM fd): {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly duplicated, owned VM fd.
    let vmfd = unsafe { vm.kvm.create_vmfd_from_rawfd(fd) }
        .map_err(|e| anyhow!("VmFd from dup'd fd: {e}"))?;
    let take = |vm: &mut TestVm, i: usize| {
        vm.vcpus[i]
            .take()
            .ok_or_else(|| anyhow!("vCPU index {i} missing"))
    };
    let home = take(&mut vm, idx[0])?;
    let away = take(&mut vm, idx[1])?;
    let plan = Plan {
        groups,
        opted: true,
        irqchip: true,
        x2apic_format: false,
        nmi_groups: 0,
        nmi_mc_groups: 0,
        nmi_slots: 0,
        kick_groups: 0,
        kick_slots: 0,
    };
    let shared = Arc::new(Shared::default());
    let ctx = Ctx {
        serial: 0,
        home,
        away,
        away_group: 1,
        dest: DEST,
        mem: Arc::clone(&vm.mem),
        vmfd,
        plan,
        rng: Rng(0x12),
        stats: Arc::new(Stats::default()),
        shared: Arc::clone(&shared),
        sent: Sent::default(),
        // A TPR test waits for its vector, which this away sibling never takes.
        tpr_tests: false,
    };
    crate::vm::install_kick_handler();
    let runner = std::thread::spawn(move || runner(ctx));
    // One interrupt for the away sibling, which stays pending in its IRR.
    let msi = probe_msi(DEST, 0x40, Some(1), &plan);
    let r = vm.fd.signal_msi(msi).map_err(|e| e.errno());
    check!(
        r == Ok(1),
        "KVM_SIGNAL_MSI to the away sibling returned {r:?}, expected 1"
    );
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    shared.stop.store(true, Ordering::SeqCst);
    let limit = Duration::from_secs(5);
    while !runner.is_finished() && asked.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = asked.elapsed();
    let finished = runner.is_finished();
    if !finished {
        // The runner keeps switching (it holds both vCPUs); the process ends it.
        bail!(
            "the pair runner did not stop within {limit:?} of being asked, its away sibling always notifying; {}",
            shared.trail_text()
        );
    }
    let (_, _, r) = runner
        .join()
        .map_err(|_| anyhow!("the pair runner panicked"))?;
    r.context("the pair runner")?;
    println!(
        "# pair runner stopped {took:?} after being asked; {}",
        shared.trail_text().chars().take(160).collect::<String>()
    );
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(tpr: u32, irr: &[u8], isr: &[u8]) -> VState {
        let mut lapic = kvm_lapic_state::default();
        crate::vm::lapic_write(&mut lapic, lapic_reg::SVR, 0x1ff);
        crate::vm::lapic_write(&mut lapic, 0x80, tpr);
        for (reg, vs) in [(lapic_reg::IRR, irr), (lapic_reg::ISR, isr)] {
            for &v in vs {
                let off = reg + usize::from(v / 32) * 0x10;
                let w = lapic_read(&lapic, off) | 1 << (v % 32);
                crate::vm::lapic_write(&mut lapic, off, w);
            }
        }
        VState {
            lapic,
            events: kvm_vcpu_events::default(),
            sregs: kvm_sregs {
                apic_base: APIC_BASE_EN,
                ..Default::default()
            },
        }
    }

    #[test]
    fn pending_follows_the_processor_priority() {
        assert!(!would_take(&state(0, &[], &[])));
        assert!(would_take(&state(0, &[0x31], &[])));
        // TPR class 3 blocks class 3, not class 4.
        assert!(!would_take(&state(0x30, &[0x3f], &[])));
        assert!(would_take(&state(0x3f, &[0x40], &[])));
        // An interrupt in service blocks its class and below.
        assert!(!would_take(&state(0, &[0xd8], &[0xdb])));
        assert!(would_take(&state(0, &[0xe0], &[0xdb])));
        assert!(mid_interrupt(&state(0, &[], &[0xdb])));
        // Software-disabled APIC: nothing; an NMI always.
        let mut s = state(0, &[0x80], &[]);
        crate::vm::lapic_write(&mut s.lapic, lapic_reg::SVR, 0xff);
        assert!(!would_take(&s));
        s.events.nmi.pending = 1;
        assert!(would_take(&s));
        let mut s = state(0xf0, &[0xdb], &[]);
        s.sregs.apic_base = 0;
        assert!(!would_take(&s));
    }

    #[test]
    fn set_errors_follow_api_rst() {
        let ids = [0u32, 1, 5];
        let exists = |id| ids.contains(&id);
        let en = |flags, vcpu_id| raw::kvm_event_notify {
            flags,
            vcpu_id,
            ..Default::default()
        };
        let armed = raw::KVM_EVENT_NOTIFY_ARMED;
        assert_eq!(set_expected(true, &en(armed, 5), 1, exists), None);
        assert_eq!(
            set_expected(false, &en(armed, 5), 1, exists),
            Some(libc::EINVAL)
        );
        assert_eq!(
            set_expected(true, &en(armed, 1), 1, exists),
            Some(libc::EINVAL)
        );
        assert_eq!(
            set_expected(true, &en(armed, 7), 1, exists),
            Some(libc::EINVAL)
        );
        assert_eq!(set_expected(true, &en(0, 0), 1, exists), None);
        assert_eq!(set_expected(true, &en(0, 5), 1, exists), Some(libc::EINVAL));
        let pending = raw::KVM_EVENT_NOTIFY_PENDING;
        assert_eq!(
            set_expected(true, &en(armed | pending, 5), 1, exists),
            Some(libc::EINVAL)
        );
        let mut r = en(armed, 5);
        r.reserved[2] = 1;
        assert_eq!(set_expected(true, &r, 1, exists), Some(libc::EINVAL));
        assert_eq!(enable_expected([0; 4], true), Vec::<i32>::new());
        assert_eq!(enable_expected([0; 4], false), vec![libc::ENXIO]);
        assert_eq!(enable_expected([0, 1, 0, 0], true), vec![libc::EINVAL]);
    }
}
