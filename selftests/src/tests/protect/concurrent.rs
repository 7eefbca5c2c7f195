// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! A protection changed while a vCPU runs and writes the page takes effect before the ioctl
//! returns: the guest stores 1, 2, 3, ... into the page in a loop (and the last value stored
//! into its unprotected data page after each store); once `KVM_SET_VTL_PROTECTION` makes the
//! page read-only, no store may land any more: the page holds the value it held when the
//! ioctl returned, that value is the guest's last completed store, and the writer exits with a
//! WRITE fault at its store. Lifting the protection lets it go on with the next value.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vtlkit_uapi::protections::{Access, FaultAccess};

use super::common::*;
use crate::guest::memops;
use crate::harness::{Outcome, TestResult};
use crate::vm::{self, GuestMem, TestVm, Vcpu, VmOptions};

/// Protect/lift cycles.
const CYCLES: usize = 8;
/// Stores the writer must make between two cycles (proves it runs again).
const PROGRESS: u64 = 200;
/// How long a fault may take to arrive after the ioctl returned before the test fails: the
/// check is about no store landing after the ioctl, this only bounds a lost fault (TCG is slow).
const FAULT_TIMEOUT: Duration = Duration::from_secs(10);

enum Cmd {
    Resume,
    Stop,
}

/// The writer vCPU on its own thread: every event goes to the test; after a fault it waits
/// for the test to say whether to resume.
struct Writer {
    events: Receiver<Result<Event, String>>,
    cmds: Sender<Cmd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vcpu>>,
}

impl Writer {
    fn start(mut vcpu: Vcpu, mem: Arc<GuestMem>) -> Result<Self> {
        vm::install_kick_handler();
        let (ev_tx, events) = channel();
        let (cmds, cmd_rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    match run_raw(&mut vcpu, &mem) {
                        Ok(Event::Interrupted) => continue,
                        Ok(ev @ Event::Fault { .. }) => {
                            if ev_tx.send(Ok(ev)).is_err() {
                                break;
                            }
                            match cmd_rx.recv() {
                                Ok(Cmd::Resume) => continue,
                                Ok(Cmd::Stop) | Err(_) => break,
                            }
                        }
                        Ok(ev) => {
                            let _ = ev_tx.send(Ok(ev));
                            break;
                        }
                        Err(e) => {
                            let _ = ev_tx.send(Err(format!("{e:#}")));
                            break;
                        }
                    }
                }
                vcpu
            })
            .context("spawning the writer's thread")?;
        Ok(Writer {
            events,
            cmds,
            stop,
            thread: Some(thread),
        })
    }

    /// Fail if the writer reported anything (it must only run, until a fault).
    fn check_quiet(&self) -> Result<()> {
        match self.events.try_recv() {
            Ok(ev) => bail!("the writer stopped unexpectedly: {ev:x?}"),
            Err(_) => Ok(()),
        }
    }

    fn next_event(&self, timeout: Duration) -> Result<Event> {
        match self.events.recv_timeout(timeout) {
            Ok(Ok(ev)) => Ok(ev),
            Ok(Err(e)) => bail!("the writer's vCPU: {e}"),
            Err(RecvTimeoutError::Timeout) => bail!("no exit from the writer within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the writer's thread is gone"),
        }
    }

    fn resume(&self) -> Result<()> {
        self.cmds
            .send(Cmd::Resume)
            .map_err(|_| anyhow!("the writer's thread is gone"))
    }

    /// Stop the thread (kicking it out of KVM_RUN if it runs) and return the vCPU.
    fn stop(mut self) -> Result<Vcpu> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<Vcpu> {
        let handle = self
            .thread
            .take()
            .ok_or_else(|| anyhow!("the writer was stopped already"))?;
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.cmds.send(Cmd::Stop);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                bail!("the writer's vCPU did not leave KVM_RUN within 10 s of being kicked");
            }
            // The thread is ours and not joined, so its pthread_t is valid; the kick's handler
            // is installed and does nothing, so KVM_RUN returns EINTR.
            let _ = nix::sys::pthread::pthread_kill(
                handle.as_pthread_t(),
                nix::sys::signal::Signal::SIGUSR1,
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        handle
            .join()
            .map_err(|_| anyhow!("the writer's thread panicked"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Error paths only; the test already reports what failed.
            let _ = self.stop_inner();
        }
    }
}

fn last_store(vm: &TestVm, index: usize) -> Result<u64> {
    vm.mem.read_u64(TestVm::pcpu_gpa(index) + memops::ARG)
}

/// Wait until the writer's last store is at least `target`.
fn wait_progress(vm: &TestVm, w: &Writer, index: usize, target: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        w.check_quiet()?;
        let v = last_store(vm, index)?;
        if v >= target {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the writer's last store is {v}, it did not reach {target} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn protect_while_running() -> TestResult {
    let paging = paging()?;
    let mut vm = new_vm(VmOptions::default(), 0)?;
    let v = add_vcpu(&mut vm, 0)?;
    set_op(&vm, v, memops::WRITE_LOOP, DATA_PAGE)?;
    vm.set_pcpu(v, memops::ARG, 0)?;
    let vcpu = vm
        .vcpus
        .get_mut(v)
        .and_then(Option::take)
        .ok_or_else(|| anyhow!("no vCPU index {v}"))?;
    let w = Writer::start(vcpu, Arc::clone(&vm.mem))?;
    let want = Expected {
        access: FaultAccess::Write,
        gpa: DATA_PAGE,
        gva: DATA_PAGE,
        rip: code_rip(insns().store),
    };

    let mut latencies = Vec::new();
    let mut floor = 0;
    for cycle in 1..=CYCLES {
        let what = format!("cycle {cycle}");
        wait_progress(&vm, &w, v, floor + PROGRESS).with_context(|| what.clone())?;
        protect(&vm, DATA_PAGE, 1, 0, Access::READ)?;
        let returned = Instant::now();
        let at_return = vm.mem.read_u64(DATA_PAGE)?;
        let ev = w.next_event(FAULT_TIMEOUT).with_context(|| what.clone())?;
        latencies.push(returned.elapsed());
        expect_fault(
            ev,
            want,
            paging,
            &format!("{what}: the writer after the page became read-only"),
        )?;
        std::thread::sleep(Duration::from_millis(20));
        let now = vm.mem.read_u64(DATA_PAGE)?;
        let last = last_store(&vm, v)?;
        if now != at_return {
            bail!("{what}: the page held {at_return} when KVM_SET_VTL_PROTECTION returned and {now} after the fault: a store landed after the ioctl");
        }
        if last != at_return {
            bail!(
                "{what}: the guest's last completed store was {last}, the page holds {at_return}"
            );
        }
        if at_return <= floor {
            bail!("{what}: the writer's value {at_return} did not advance past {floor}");
        }
        floor = at_return;
        protect(&vm, DATA_PAGE, 1, 0, Access::ALL)?;
        w.resume()?;
    }
    // End faulted, so the writer's thread is waiting, not running.
    wait_progress(&vm, &w, v, floor + PROGRESS)?;
    protect(&vm, DATA_PAGE, 1, 0, Access::READ)?;
    let ev = w.next_event(FAULT_TIMEOUT)?;
    expect_fault(ev, want, paging, "the last cycle")?;
    let vcpu = w.stop()?;
    let faults = prot_faults(&vcpu)?;
    if faults != CYCLES as u64 + 1 {
        bail!(
            "vtl_prot_faults is {faults}, {} protection changes each stopped the writer once",
            CYCLES + 1
        );
    }
    latencies.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "# {paging:?} paging: {CYCLES} protections under a running writer; fault arrived {:.2} ms (median), {:.2} ms (max) after the ioctl returned",
        latencies.get(latencies.len() / 2).map(ms).unwrap_or(0.0),
        latencies.last().map(ms).unwrap_or(0.0)
    );
    Ok(Outcome::Pass)
}
