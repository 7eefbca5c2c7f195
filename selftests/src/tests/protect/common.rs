// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! What the protection tests share: a VM opted in to `KVM_CAP_VTL_PROTECTIONS` whose vCPUs run
//! the memory-access guest ([`Entry::MemOps`]), a runner that returns a protection fault as an
//! event (on the framework's [`vm::run_once_raw`], which returns it as `Step::MemoryFault`), the checks of a fault, and the paging
//! mode the host KVM uses.

use anyhow::{anyhow, bail, Context, Result};
use vtlkit_uapi::protections::{self, Access, FaultAccess, MemoryFault, VtlProtection, PAGE_SIZE};

use crate::guest::{self, memops, Entry};
use crate::stats::Stats;
use crate::vm::{self, layout, GuestMem, GuestRecord, Step, TestVm, Ucall, Vcpu, VmOptions};

/// The data page the tests protect: inside the guest's second 2 MiB page (0x200000..0x400000,
/// one large page in the guest's page tables), with unprotected neighbours on both sides.
pub(crate) const DATA_PAGE: u64 = 0x28_0000;
/// The code page: `mov eax, CODE_RESULT; ret`.
pub(crate) const CODE_PAGE: u64 = 0x28_2000;
/// What the code page's function returns.
pub(crate) const CODE_RESULT: u64 = 0x1234;
/// `mov eax, 0x1234; ret`.
const CODE_BYTES: [u8; 6] = [0xb8, 0x34, 0x12, 0x00, 0x00, 0xc3];

/// A `uapi` error with its errno, for anyhow.
pub(crate) fn kvm_err(e: vtlkit_uapi::Error) -> anyhow::Error {
    anyhow!("{e} (errno {})", e.errno())
}

/// How the host KVM (the one under test, in this kernel) maps guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Paging {
    /// Two-dimensional paging (NPT/EPT): KVM does not see guest virtual addresses.
    Tdp,
    /// Shadow paging (`kvm_amd.npt=0` / `kvm_intel.ept=0`): every fault has its GVA.
    Shadow,
}

/// The paging mode of the loaded KVM vendor module, from its `npt` or `ept` parameter. With
/// `vtlkit.paging=tdp` or `=shadow` on the kernel command line (`scripts/test.sh`'s shadow
/// paging boot) a different mode is an error, so that a boot meant for shadow paging cannot
/// quietly test TDP again.
pub(crate) fn paging() -> Result<Paging> {
    let mode = vendor_paging()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let wanted = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("vtlkit.paging="));
    match (wanted, mode) {
        (None, _) | (Some("tdp"), Paging::Tdp) | (Some("shadow"), Paging::Shadow) => Ok(mode),
        (Some(w @ ("tdp" | "shadow")), _) => {
            bail!("vtlkit.paging={w} is on the kernel command line, but KVM uses {mode:?} paging")
        }
        (Some(w), _) => bail!("vtlkit.paging={w}: neither tdp nor shadow"),
    }
}

fn vendor_paging() -> Result<Paging> {
    for p in [
        "/sys/module/kvm_amd/parameters/npt",
        "/sys/module/kvm_intel/parameters/ept",
    ] {
        if let Ok(v) = std::fs::read_to_string(p) {
            return match v.trim() {
                "Y" | "1" => Ok(Paging::Tdp),
                "N" | "0" => Ok(Paging::Shadow),
                other => bail!("{p} reads {other:?}, neither Y nor N"),
            };
        }
    }
    bail!("neither kvm_amd's npt nor kvm_intel's ept parameter exists: no KVM vendor module?")
}

/// A test VM opted in to VTL protections (and to APIC groups if `opts` says so), with the
/// code page written and the data page holding `data`. No vCPU yet.
pub(crate) fn new_vm(opts: VmOptions, data: u64) -> Result<TestVm> {
    let vm = TestVm::new(opts)?;
    if !protections::vtl_protections_supported(&vm.kvm) {
        bail!("KVM_CHECK_EXTENSION(KVM_CAP_VTL_PROTECTIONS) is 0: this kernel lacks series v5's protections");
    }
    protections::enable_vtl_protections(&vm.fd).map_err(kvm_err)?;
    vm.mem.write(CODE_PAGE, &CODE_BYTES)?;
    vm.mem.write_u64(DATA_PAGE, data)?;
    Ok(vm)
}

/// Add a vCPU that runs the memory-access guest.
pub(crate) fn add_vcpu(vm: &mut TestVm, id: u64) -> Result<usize> {
    vm.add_vcpu(id, Entry::MemOps)
}

/// `KVM_SET_VTL_PROTECTION` of `pages` pages from `gpa` for `vtl`.
pub(crate) fn protect(vm: &TestVm, gpa: u64, pages: u64, vtl: u8, access: Access) -> Result<()> {
    protections::set_vtl_protection(
        &vm.fd,
        VtlProtection {
            gpa,
            size: pages * PAGE_SIZE,
            vtl,
            access,
        },
    )
    .map_err(kvm_err)
    .with_context(|| format!("protecting {pages} page(s) at {gpa:#x} for VTL {vtl} as {access}"))
}

/// What a run of a memory-access vCPU gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The round finished: its result, the rounds done so far, the operation.
    Done { result: u64, rounds: u64, op: u64 },
    /// `KVM_RUN` failed with `EFAULT` and `KVM_EXIT_MEMORY_FAULT`; RIP where the vCPU stays.
    Fault { fault: MemoryFault, rip: u64 },
    /// `KVM_RUN` returned `EINTR`/`EAGAIN` (a kick).
    Interrupted,
}

/// One `KVM_RUN` (more if the guest prints): a round's SYNC, a memory fault, or a kick; any
/// other exit or ucall, and a guest ABORT, is an error that says what the guest did (the
/// framework's [`vm::run_once_raw`] decodes the exits).
pub(crate) fn run_raw(vcpu: &mut Vcpu, mem: &GuestMem) -> Result<Event> {
    let id = vcpu.id;
    let u = match vm::run_once_raw(vcpu, mem)? {
        Step::MemoryFault(fault) => {
            let rip = vcpu
                .fd
                .get_regs()
                .map_err(|e| anyhow!("vCPU {id}: KVM_GET_REGS: {e}"))?
                .rip;
            return Ok(Event::Fault { fault, rip });
        }
        Step::Interrupted => return Ok(Event::Interrupted),
        Step::Ucall(u) => u,
        other => bail!("vCPU {id}: unexpected {other:?}"),
    };
    match u {
        Ucall::Sync {
            stage: memops::STAGE_MEM_DONE,
            args: [result, rounds, op, _],
        } => Ok(Event::Done { result, rounds, op }),
        Ucall::Abort { .. } => {
            let record = GuestRecord::read(mem, vcpu.index)
                .map(|r| r.to_string())
                .unwrap_or_default();
            bail!("vCPU {id}: {u}; {record}")
        }
        other => bail!("vCPU {id}: unexpected ucall {other}"),
    }
}

/// [`run_raw`] until it gives a round or a fault.
pub(crate) fn run(vcpu: &mut Vcpu, mem: &GuestMem) -> Result<Event> {
    loop {
        match run_raw(vcpu, mem)? {
            Event::Interrupted => continue,
            ev => return Ok(ev),
        }
    }
}

/// The vCPU at `index`, mutably (it must not be on a thread).
pub(crate) fn vcpu_mut(vm: &mut TestVm, index: usize) -> Result<&mut Vcpu> {
    vm.vcpus
        .get_mut(index)
        .and_then(Option::as_mut)
        .ok_or_else(|| anyhow!("vCPU index {index} does not exist or is running"))
}

/// Set vCPU `index`'s next operation (it takes it when it starts its next round).
pub(crate) fn set_op(vm: &TestVm, index: usize, op: u64, addr: u64) -> Result<()> {
    vm.set_pcpu(index, memops::OP, op)?;
    vm.set_pcpu(index, memops::ADDR, addr)
}

/// Run vCPU `index` (its current operation, or the faulting instruction it stays at).
pub(crate) fn resume(vm: &mut TestVm, index: usize) -> Result<Event> {
    let mem = std::sync::Arc::clone(&vm.mem);
    run(vcpu_mut(vm, index)?, &mem)
}

/// Set the operation, run, and return what happened.
pub(crate) fn op(vm: &mut TestVm, index: usize, op: u64, addr: u64) -> Result<Event> {
    set_op(vm, index, op, addr)?;
    resume(vm, index)
}

/// The round's result; an error if the vCPU faulted or did another operation.
pub(crate) fn expect_done(ev: Event, op: u64, what: &str) -> Result<u64> {
    match ev {
        Event::Done { result, op: o, .. } if o == op => Ok(result),
        other => bail!(
            "{what}: expected the guest to finish operation {op} without an exit, got {other:x?}"
        ),
    }
}

/// What a protection fault must say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    /// The attempted access.
    pub access: FaultAccess,
    /// The page's guest physical address.
    pub gpa: u64,
    /// The guest virtual address of the access (identity-mapped: also its physical address).
    pub gva: u64,
    /// The RIP the vCPU must stay at (the faulting instruction, or the call's target).
    pub rip: u64,
}

/// Check that `ev` is exactly the protection fault `want`: flag, GPA, size 4096, no other flag
/// bit, RIP at the faulting instruction, and the GVA (required under shadow paging; where TDP
/// reports one it must be right too).
pub(crate) fn expect_fault(ev: Event, want: Expected, paging: Paging, what: &str) -> Result<()> {
    let (f, rip) = match ev {
        Event::Fault { fault, rip } => (fault, rip),
        other => bail!(
            "{what}: expected a {} fault exit at GPA {:#x}, got {other:x?}",
            want.access,
            want.gpa
        ),
    };
    let ctx = || format!("{what}: {f}");
    if f.access != Some(want.access) {
        bail!("{}: wanted exactly the {} flag", ctx(), want.access);
    }
    if (f.gpa, f.size) != (want.gpa, PAGE_SIZE) {
        bail!("{}: wanted GPA {:#x} size {PAGE_SIZE:#x}", ctx(), want.gpa);
    }
    if f.private {
        bail!("{}: PRIVATE set for shared memory", ctx());
    }
    let known = want.access.flag() | u64::from(vtlkit_uapi::raw::KVM_MEMORY_EXIT_FLAG_GVA_VALID);
    if f.flags & !known != 0 {
        bail!("{}: unexpected flag bits {:#x}", ctx(), f.flags & !known);
    }
    match (f.gva, paging) {
        (Some(gva), _) if gva != want.gva => {
            bail!("{}: wanted GVA {:#x}", ctx(), want.gva)
        }
        (None, Paging::Shadow) => bail!(
            "{}: shadow paging knows the GVA, but GVA_VALID is clear",
            ctx()
        ),
        _ => {}
    }
    if rip != want.rip {
        bail!(
            "{}: the vCPU is at RIP {rip:#x} (guest code offset {:#x}), not at the faulting instruction {:#x}",
            ctx(),
            rip.wrapping_sub(layout::CODE),
            want.rip
        );
    }
    Ok(())
}

/// Guest RIP of a memory-access instruction at code-blob offset `off`.
pub(crate) fn code_rip(off: u64) -> u64 {
    layout::CODE + off
}

/// The offsets of the memory-access guest's instructions.
pub(crate) fn insns() -> guest::MemOpsInsns {
    guest::memops_insn_offsets()
}

/// Rounds the vCPU at `index` has finished.
pub(crate) fn rounds(vm: &TestVm, index: usize) -> Result<u64> {
    vm.mem.read_u64(TestVm::pcpu_gpa(index) + memops::ROUNDS)
}

/// The vCPU's `vtl_prot_faults` statistic.
pub(crate) fn prot_faults(vcpu: &Vcpu) -> Result<u64> {
    Stats::open(&vcpu.fd)?.get("vtl_prot_faults")
}

/// Fail if the guest of vCPU `index` took an exception: a protection fault must never reach
/// the guest as a #PF.
pub(crate) fn check_no_guest_exception(vm: &TestVm, index: usize) -> Result<()> {
    let r = GuestRecord::read(&vm.mem, index)?;
    if r.exceptions != 0 {
        bail!("vCPU index {index}: {r}");
    }
    Ok(())
}

/// `KVM_GET_VTL_PROTECTION` at `gpa` must report `access` over at least `min_size` bytes.
pub(crate) fn check_prot(
    vm: &TestVm,
    gpa: u64,
    vtl: u8,
    access: Access,
    min_size: u64,
) -> Result<()> {
    let (a, size) = protections::get_vtl_protection(&vm.fd, gpa, vtl).map_err(kvm_err)?;
    if a != access || size < min_size {
        bail!("KVM_GET_VTL_PROTECTION(VTL {vtl}, {gpa:#x}): {a} over {size:#x} bytes, wanted {access} over at least {min_size:#x}");
    }
    Ok(())
}

/// Whether this process's anonymous memory is backed by transparent huge pages: `None` when
/// the kernel has no THP or it is not set to `always`, else the AnonHugePages of this process
/// in KiB (the test VMs' memory is most of it).
pub(crate) fn thp_backing_kib() -> Result<Option<u64>> {
    let Ok(mode) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") else {
        return Ok(None);
    };
    if !mode.contains("[always]") {
        return Ok(None);
    }
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup")
        .context("reading /proc/self/smaps_rollup")?;
    for line in rollup.lines() {
        if let Some(rest) = line.strip_prefix("AnonHugePages:") {
            let kib = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .map_err(|e| anyhow!("AnonHugePages {rest:?}: {e}"))?;
            return Ok(Some(kib));
        }
    }
    bail!("no AnonHugePages line in /proc/self/smaps_rollup")
}

/// A raw `kvm_vtl_protection` with these fields and every other one zero (what the checks of
/// `KVM_SET/GET_VTL_PROTECTION` take: any access byte, also an illegal one).
pub(crate) fn prot(
    gpa: u64,
    size: u64,
    vtl: u8,
    access: u8,
) -> vtlkit_uapi::raw::kvm_vtl_protection {
    vtlkit_uapi::raw::kvm_vtl_protection {
        gpa,
        size,
        vtl,
        access,
        ..Default::default()
    }
}
