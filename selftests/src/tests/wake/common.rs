// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! What the wake-up tests share (not tests): availability, VTL1 on every VP, the spin step,
//! guest counters, interrupt sources.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::guest::{pcpu, ucall};
use crate::hyperv::{self, call, control, Loaded, Program, Step};
use crate::vm::{layout, TestVm, DEFAULT_TIMEOUT};
use crate::vp::{enable_partition_vtl, vsm_layout, Round, VpEvent, VpRunning, VsmVm};
use vtlkit_uapi::vtl::fixed_msi;

/// GO value that releases [`Step::Gate`]s of these tests (GO = 1 starts the program).
pub(crate) const GATE: u64 = 2;
/// A second gate.
pub(crate) const GATE2: u64 = 3;

/// Why the tests cannot run here, if they cannot.
pub(crate) fn unavailable() -> Result<Option<String>> {
    let kvm = crate::vm::open_kvm()?;
    let groups = vtlkit_uapi::apic_groups_supported(&kvm);
    if groups < 2 {
        return Ok(Some(format!(
            "KVM_CAP_APIC_GROUPS is {groups}: the kernel lacks the series"
        )));
    }
    if !vtlkit_uapi::hyperv_vsm_supported(&kvm) {
        return Ok(Some("KVM_CAP_HYPERV_VSM is 0 (series v3 needed)".into()));
    }
    if !vtlkit_uapi::notify::event_notify_supported(&kvm) {
        return Ok(Some(
            "KVM_CAP_VCPU_EVENT_NOTIFY is 0: the kernel lacks series v4".into(),
        ));
    }
    Ok(None)
}

/// TSC cycles per second of the guest (KVM_GET_TSC_KHZ; 2 GHz if unknown).
pub(crate) fn tsc_hz(vsm: &VsmVm) -> u64 {
    vsm.vm
        .vcpu(0)
        .ok()
        .and_then(|v| v.fd.get_tsc_khz().ok())
        .map(|k| u64::from(k) * 1000)
        .filter(|&h| h > 0)
        .unwrap_or(2_000_000_000)
}

/// GPA of the u32 count of interrupts on `vector` handled by VP `vp`'s VTL `vtl`.
pub(crate) fn count_gpa(vsm: &VsmVm, vp: u32, vtl: u8, vector: u8) -> u64 {
    TestVm::pcpu_gpa(vsm.index(vp, vtl)) + pcpu::IRQ_COUNTS + 4 * u64::from(vector)
}

/// Interrupts on `vector` handled by VP `vp`'s VTL `vtl` (the guest's count).
pub(crate) fn count(vsm: &VsmVm, vp: u32, vtl: u8, vector: u8) -> Result<u32> {
    vsm.vm.mem.read_u32(count_gpa(vsm, vp, vtl, vector))
}

/// Entries into VP `vp`'s VTL1 with entry reason Interrupt (the guest's count).
pub(crate) fn int_entries(vsm: &VsmVm, vp: u32) -> Result<u64> {
    vsm.vm
        .mem
        .read_u64(TestVm::pcpu_gpa(vsm.index(vp, 1)) + pcpu::VSM_INT_ENTRIES)
}

/// VTL0 spins with interrupts disabled until VP `vp`'s VTL1 handled `n` interrupts on
/// `vector`, for at most `secs` seconds.
pub(crate) fn spin_for_vtl1(vsm: &VsmVm, vp: u32, vector: u8, n: u32, secs: u64) -> Step {
    Step::SpinUntil {
        addr: count_gpa(vsm, vp, 1, vector),
        value: n,
        cycles: secs.saturating_mul(tsc_hz(vsm)),
        windows: false,
    }
}

/// Wait until step `step` of `loaded` (a [`Step::SpinUntil`]) is spinning.
pub(crate) fn wait_spinning(vsm: &VsmVm, loaded: &Loaded, step: usize) -> Result<()> {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    loop {
        if loaded.outcome(&vsm.vm.mem, step)?.rcx == 2 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("VTL0 did not start spinning (step {step}) within {DEFAULT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `KVM_SIGNAL_MSI`: fixed `vector` to VP `vp`'s VTL `vtl` (its group, APIC ID `vp`); the
/// number of vCPUs that took it must be 1.
pub(crate) fn msi(vsm: &VsmVm, vp: u32, vtl: u8, vector: u8) -> Result<()> {
    let n = vsm
        .vm
        .fd
        .signal_msi(fixed_msi(u32::from(vtl), vp, vector))
        .map_err(|e| anyhow!("KVM_SIGNAL_MSI to VP {vp} VTL{vtl}: {e}"))?;
    if n != 1 {
        bail!("KVM_SIGNAL_MSI of vector {vector:#x} to VP {vp} VTL{vtl} reached {n} vCPUs");
    }
    Ok(())
}

/// The runner's interrupt entries of VP `vp` into VTL1 so far.
pub(crate) fn interrupted(running: &VpRunning, vp: u32) -> usize {
    running
        .events(vp)
        .iter()
        .filter(|e| matches!(e, VpEvent::Interrupted { from: 0, to: 1, .. }))
        .count()
}

/// The steps every VP's VTL0 runs first so that each VP has VTL1: VP 0 enables its VP assist
/// page, VTL1 for the partition and on VP 0, waits at [`GATE`], then VtlCalls once per other
/// VP (round k: VTL1 of VP 0 enables VTL1 on VP k + 1, whose input the host prepares with
/// [`prepare_enables`]); other VPs enable their assist page and wait at [`GATE`] (the host
/// releases them once their VTL1 is enabled: [`start_all`]), then VtlCall once (VTL1's first
/// entry sets it up). After these, VP p's next free round is [`first_round`]`(p)`.
pub(crate) fn enable_everywhere(vsm: &VsmVm, vps: u32) -> Result<Vec<Vec<Step>>> {
    let mut all = Vec::new();
    for vp in 0..vps {
        let mut steps = vec![vsm.enable_assist_page(vp, 0)];
        if vp == 0 {
            steps.push(Step::Hcall(enable_partition_vtl(1)));
            steps.push(vsm.enable_vp_vtl(0, Some(vsm_layout::ALT_PML4)));
            steps.push(Step::Gate(GATE));
            for k in 1..vps {
                let mut r = Round::new(0x100 + k, true);
                r.vtl1_hcall = Some((
                    control::word(call::ENABLE_VP_VTL, false, 0, 0),
                    enable_input(k),
                    0,
                ));
                vsm.write_round(0, u64::from(k - 1), &r)?;
                steps.push(Step::VtlCall {
                    block: VsmVm::block_gpa(0, u64::from(k - 1)),
                });
            }
            if vps == 1 {
                vsm.write_round(0, 0, &Round::new(0x100, true))?;
                steps.push(Step::VtlCall {
                    block: VsmVm::block_gpa(0, 0),
                });
            }
        } else {
            steps.push(Step::Gate(GATE));
            vsm.write_round(vp, 0, &Round::new(0x200 + vp, true))?;
            steps.push(Step::VtlCall {
                block: VsmVm::block_gpa(vp, 0),
            });
        }
        all.push(steps);
    }
    Ok(all)
}

/// The first round of VP `vp` that [`enable_everywhere`] leaves free.
pub(crate) fn first_round(vps: u32, vp: u32) -> u64 {
    if vp == 0 {
        u64::from(vps.max(2) - 1)
    } else {
        1
    }
}

/// GPA of the HvCallEnableVpVtl input for VP `vp` (the page VP `vp` would use).
fn enable_input(vp: u32) -> u64 {
    vsm_layout::ENABLE_INPUT + u64::from(vp) * layout::PAGE
}

/// After VP 0's own EnableVpVtl: the inputs that enable VTL1 on VPs 1.. (VP 0's input with
/// the VP index, RSP, GS base and TR base of each VP's VTL1 sibling).
fn prepare_enables(vsm: &VsmVm, vps: u32) -> Result<()> {
    use crate::guest::vsm::{ctx, enable};
    let mut page = vec![0u8; enable::SIZE as usize];
    vsm.vm.mem.read(enable_input(0), &mut page)?;
    for vp in 1..vps {
        let i = vsm.index(vp, 1);
        let gpa = enable_input(vp);
        vsm.vm.mem.write(gpa, &page)?;
        vsm.vm
            .mem
            .write(gpa + enable::VP_INDEX, &vp.to_le_bytes())?;
        let c = gpa + enable::CONTEXT;
        vsm.vm
            .mem
            .write_u64(c + ctx::RSP, VsmVm::vtl1_stack_top(i))?;
        vsm.vm
            .mem
            .write_u64(c + ctx::SEGS + 4 * ctx::SEG_SIZE, TestVm::pcpu_gpa(i))?;
        vsm.vm.mem.write_u64(
            c + ctx::SEGS + 6 * ctx::SEG_SIZE,
            TestVm::pcpu_gpa(i) + pcpu::TSS,
        )?;
    }
    Ok(())
}

/// Load each VP's program, start the runner, let VP 0 enable VTL1 everywhere, and release every
/// VP past its [`GATE`]: on return each VP's VTL0 runs the steps after [`enable_everywhere`]'s.
pub(crate) fn start_all(
    vsm: &mut VsmVm,
    programs: Vec<Vec<Step>>,
) -> Result<(VpRunning, Vec<Loaded>)> {
    let vps = programs.len() as u32;
    let mut loaded = Vec::new();
    for (vp, steps) in programs.into_iter().enumerate() {
        let prog = steps.into_iter().fold(Program::new(), Program::step);
        loaded.push(vsm.vm.load_hv_program(vsm.index(vp as u32, 0), &prog)?);
    }
    let running = vsm.start()?;
    for vp in 0..vps {
        running
            .wait_sync(vp, 0, ucall::STAGE_HV_READY, DEFAULT_TIMEOUT)
            .with_context(|| format!("VP {vp}'s VTL0 setting up Hyper-V"))?;
        vsm.vm.set_pcpu(vsm.index(vp, 0), pcpu::GO, 1)?;
    }
    running
        .wait_sync(0, 0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)
        .context("VP 0 enabling VTL1")?;
    let enable = loaded[0].outcome(&vsm.vm.mem, 2)?;
    if enable.rax != hyperv::status::SUCCESS {
        bail!("HvCallEnableVpVtl(VP 0) returned {:#x}", enable.rax);
    }
    prepare_enables(vsm, vps)?;
    vsm.vm.set_pcpu(vsm.index(0, 0), pcpu::GO, GATE)?;
    for vp in 1..vps {
        running
            .wait_sync(vp, 0, ucall::STAGE_HV_GATE, DEFAULT_TIMEOUT)
            .with_context(|| format!("VP {vp} waiting for its VTL1"))?;
    }
    // VP 0's VTL1 enables VTL1 on the others, one VtlCall each.
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    for vp in 1..vps {
        let round = vsm.read_round(0, u64::from(vp - 1));
        loop {
            let done = running.events(0).iter().filter(|e| {
                matches!(e, VpEvent::Completed { vtl: 1, code, .. } if *code == call::ENABLE_VP_VTL)
            }).count();
            if done >= vp as usize {
                break;
            }
            if Instant::now() >= deadline {
                bail!("VP 0's VTL1 did not enable VTL1 on VP {vp} ({round:?})");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let r = vsm.read_round(0, u64::from(vp - 1))?;
        if r.vtl1_hcall_result != hyperv::status::SUCCESS {
            bail!(
                "HvCallEnableVpVtl(VP {vp}) from VP 0's VTL1 returned {:#x}",
                r.vtl1_hcall_result
            );
        }
        vsm.vm.set_pcpu(vsm.index(vp, 0), pcpu::GO, GATE)?;
    }
    Ok((running, loaded))
}

/// Wait for every VP's VTL0 to finish its program; on failure say where each VP was.
pub(crate) fn wait_done(running: VpRunning, vps: u32, timeout: Duration) -> Result<VpRunning> {
    for vp in 0..vps {
        if let Err(e) = running.wait_sync(vp, 0, ucall::STAGE_HV_DONE, timeout) {
            let events: Vec<VpEvent> = running.events(vp).into_iter().rev().take(12).collect();
            let state = running.stop_and_describe();
            bail!(
                "VP {vp}: {e:#}\nits last runner events (newest first): {events:?}\nstate: {state}"
            );
        }
    }
    Ok(running)
}

/// The KVM debugfs file `name` of the vCPU at `index` of this process's VM (`run_state`,
/// `event_notify_target`), trimmed; `None` if debugfs or the file is not there.
pub(crate) fn vcpu_debugfs(vsm: &VsmVm, index: usize, name: &str) -> Option<String> {
    use std::os::fd::AsRawFd;
    let dir = format!(
        "/sys/kernel/debug/kvm/{}-{}/vcpu{}/{name}",
        std::process::id(),
        vsm.vm.fd.as_raw_fd(),
        index
    );
    std::fs::read_to_string(dir)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Poll [`vcpu_debugfs`] until it reads `want` (true) or `timeout` passed (false); `None` when
/// the file is not there.
pub(crate) fn wait_debugfs(
    vsm: &VsmVm,
    index: usize,
    name: &str,
    want: &str,
    timeout: Duration,
) -> Option<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = vcpu_debugfs(vsm, index, name)?;
        if v == want {
            return Some(true);
        }
        if Instant::now() >= deadline {
            return Some(false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Poll until `f` holds or `timeout` passed.
pub(crate) fn wait_until(timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A second `VmFd` on the test VM (for other threads' `KVM_SIGNAL_MSI`).
pub(crate) fn dup_vm(vsm: &VsmVm) -> Result<kvm_ioctls::VmFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: dup() of a live fd we own; the result is checked and handed to
    // create_vmfd_from_rawfd, which takes ownership of it.
    let raw = unsafe { libc::dup(vsm.vm.fd.as_raw_fd()) };
    if raw < 0 {
        bail!("dup of the VM fd: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a valid, owned duplicate of a KVM VM fd.
    unsafe { vsm.vm.kvm.create_vmfd_from_rawfd(raw) }.map_err(|e| anyhow!("a second VmFd: {e}"))
}
