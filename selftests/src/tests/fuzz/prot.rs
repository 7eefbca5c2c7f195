// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Series v5's per-VTL memory protections under the fuzzer (`KVM_CAP_VTL_PROTECTIONS`,
//! api.rst 4.148, 4.149 and 7.40).
//!
//! Some VMs enable the capability at creation (wrong arguments and repeats on the way); the
//! others, and late enables once vCPUs exist (EBUSY), check that `KVM_SET/GET_VTL_PROTECTION`
//! fail with EINVAL without it. On enabled VMs the fuzzer issues `KVM_SET_VTL_PROTECTION` and
//! `KVM_GET_VTL_PROTECTION` while the VM's vCPUs run its nested guests, with valid inputs and
//! with each kind of invalid one (unaligned, empty, wrapping, beyond the address width, VTL
//! above 15, illegal access combinations, non-zero pad/flags/reserved: EINVAL; a bad pointer:
//! EFAULT). A model keeps each VTL's ranges as the kernel's maple tree stores them
//! ([`Ranges`]); after every SET, failed or not (a failed call changes nothing), GETs at and
//! around the range and sometimes a walk of the whole VTL must agree with it, and the VM's
//! debugfs `vtl_prot_ranges` must count them.
//!
//! The fuzzer's guests must never fault, so restrictions never cover what they touch (guest
//! memory, `0..MEM_SIZE`, and the IOAPIC/xAPIC hole below 4 GiB) for a VTL label a vCPU of the
//! VM has or gets: there they only go to VTL labels no vCPU has, which makes KVM zap the
//! mappings of running vCPUs (of every VTL) that must then refault without an exit; when a vCPU
//! is assigned such a label, [`Fuzzer::prot_vtl_assigned`] lifts them before it can run.
//! Everywhere else (outside every memslot, up to KVM's limit) any VTL gets any access.

use std::collections::BTreeMap;
use std::os::unix::io::AsRawFd;

use anyhow::{bail, Result};
use kvm_ioctls::VmFd;
use vtlkit_uapi::protections::{self, vtl_protection_map, Access, PAGE_SIZE};
use vtlkit_uapi::raw::{self, kvm_vtl_protection};

use crate::tests::protect::common::prot;

use std::sync::atomic::Ordering;

use super::{errname, layout, Call, Fuzzer, Rng};

/// VTL labels (0..=15).
const VTLS: usize = 16;
/// The hole below 4 GiB with the IOAPIC and xAPIC MMIO pages the guests touch.
const HOLE: (u64, u64) = (0xfec0_0000, 0x1_0000_0000);
/// A VTL with more stored pieces than this is lifted as a whole (keeps walks short).
const MAX_PIECES: usize = 40;

/// One VTL's protections as KVM stores them: start page -> (end page, exclusive; access
/// bits), for every stored piece with restricted access. Storing splits the pieces it
/// overlaps; gaps (all access) are never stored. Whether the kernel merges adjacent pieces
/// with the same access is left open: checks accept either.
#[derive(Debug, Default, Clone)]
pub(super) struct Ranges(BTreeMap<u64, (u64, u8)>);

impl Ranges {
    /// `[s, e)` (pages) gets `access`.
    fn store(&mut self, s: u64, e: u64, access: u8) {
        let hit: Vec<(u64, (u64, u8))> = self
            .0
            .range(..e)
            .filter(|(_, &(pe, _))| pe > s)
            .map(|(&ps, &v)| (ps, v))
            .collect();
        for (ps, (pe, a)) in hit {
            self.0.remove(&ps);
            if ps < s {
                self.0.insert(ps, (s, a));
            }
            if pe > e {
                self.0.insert(e, (pe, a));
            }
        }
        if access != Access::ALL.bits() {
            self.0.insert(s, (e, access));
        }
    }

    /// At page `p` (below `limit`, in pages): the access, where its stored piece (or gap) ends,
    /// and where the run of that access ends.
    fn lookup(&self, p: u64, limit: u64) -> (u8, u64, u64) {
        if let Some((_, &(pe, a))) = self.0.range(..=p).next_back().filter(|(_, v)| v.0 > p) {
            let mut end = pe;
            while let Some(&(ne, na)) = self.0.get(&end) {
                if na != a {
                    break;
                }
                end = ne;
            }
            return (a, pe, end);
        }
        let next = self.0.range(p..).next().map_or(limit, |(&s, _)| s);
        (Access::ALL.bits(), next, next)
    }

    /// The runs of equal access over `[0, limit)` (bytes), as `vtl_protection_map` merges them.
    fn runs(&self, limit: u64) -> Vec<(u64, u64, Access)> {
        let mut out: Vec<(u64, u64, Access)> = Vec::new();
        let mut push = |s: u64, e: u64, a: u8| {
            let a = Access::from_bits(a).unwrap_or(Access::ALL);
            match out.last_mut() {
                Some((g, l, la)) if *la == a && *g + *l == s * PAGE_SIZE => {
                    *l += (e - s) * PAGE_SIZE
                }
                _ => out.push((s * PAGE_SIZE, (e - s) * PAGE_SIZE, a)),
            }
        };
        let mut at = 0;
        for (&s, &(e, a)) in &self.0 {
            if s > at {
                push(at, s, Access::ALL.bits());
            }
            push(s, e, a);
            at = e;
        }
        if at < limit {
            push(at, limit, Access::ALL.bits());
        }
        out
    }

    /// How many restricted ranges debugfs may count: merged runs .. stored pieces.
    fn count_bounds(&self, limit: u64) -> (u64, u64) {
        let runs = self
            .runs(limit)
            .iter()
            .filter(|r| r.2 != Access::ALL)
            .count();
        (runs as u64, self.0.len() as u64)
    }

    /// Whether a restriction covers part of `[s, e)` (pages).
    fn restricts(&self, s: u64, e: u64) -> bool {
        self.0.range(..e).any(|(_, &(pe, _))| pe > s)
    }
}

/// A VM's protections: whether the kernel offers them, whether the VM enabled them, KVM's
/// limit and the model.
#[derive(Debug, Default)]
pub(super) struct ProtVm {
    supported: bool,
    enabled: bool,
    /// The first page KVM cannot map (from `KVM_GET_VTL_PROTECTION` on an empty map).
    limit: u64,
    vtls: [Ranges; VTLS],
}

/// KVM_ENABLE_CAP(KVM_CAP_VTL_PROTECTIONS, args): its errno, None for success.
fn enable_errno(vm: &VmFd, args: [u64; 4]) -> Option<i32> {
    errno_of(protections::enable_vtl_protections_raw(vm, args))
}

/// KVM's limit (in pages) from `KVM_GET_VTL_PROTECTION(0, VTL 0)` on an empty map: all access
/// up to it.
fn limit_of(serial: u64, r: vtlkit_uapi::Result<(Access, u64)>) -> Result<u64> {
    let (access, size) =
        r.map_err(|e| anyhow::anyhow!("VM {serial}: KVM_GET_VTL_PROTECTION(0, VTL 0): {e}"))?;
    if access != Access::ALL || size < HOLE.1 * 16 || size % PAGE_SIZE != 0 {
        bail!("VM {serial}: KVM_GET_VTL_PROTECTION(0, VTL 0) on an empty map: {access} over {size:#x} bytes, wanted all access up to KVM's limit (at least 64 GiB)");
    }
    Ok(size / PAGE_SIZE)
}

fn errno_of<T>(r: vtlkit_uapi::Result<T>) -> Option<i32> {
    r.err().map(|e| e.errno())
}

fn describe(p: &kvm_vtl_protection) -> String {
    format!(
        "{{gpa {:#x}, size {:#x}, vtl {}, access {:#x}, pad {:?}, flags {:#x}, reserved {:x?}}}",
        p.gpa, p.size, p.vtl, p.access, p.pad, p.flags, p.reserved
    )
}

/// Pages that the fuzzer's guests touch: guest memory and the MMIO hole below 4 GiB.
fn touched(s: u64, e: u64) -> bool {
    let pages = |b: u64| b / PAGE_SIZE;
    s < pages(layout::MEM_SIZE) || (s < pages(HOLE.1) && e > pages(HOLE.0))
}

impl Fuzzer {
    /// At VM creation, before any vCPU: most VMs enable the capability (sometimes first with
    /// non-zero arguments: EINVAL, or twice: success), the others never do.
    pub(super) fn prot_at_create(&mut self, vm: &VmFd, serial: u64) -> Result<ProtVm> {
        let supported = {
            let kvm = crate::vm::open_kvm()?;
            protections::vtl_protections_supported(&kvm)
        };
        let mut pv = ProtVm {
            supported,
            ..Default::default()
        };
        if !supported || super::off("prot") || self.rng.one_in(3) {
            return Ok(pv);
        }
        if self.rng.one_in(4) {
            let args = self.random_cap_args();
            let got = enable_errno(vm, args);
            self.prot_enable_check(serial, args, true, "at creation", got)?;
        }
        for _ in 0..1 + u32::from(self.rng.one_in(3)) {
            let got = enable_errno(vm, [0; 4]);
            self.prot_enable_check(serial, [0; 4], true, "at creation", got)?;
        }
        self.stats.count(Call::GetVtlProtection);
        pv.limit = limit_of(serial, protections::get_vtl_protection(vm, 0, 0))?;
        pv.enabled = true;
        self.stats.prot_vms.fetch_add(1, Ordering::Relaxed);
        Ok(pv)
    }

    /// Check KVM_ENABLE_CAP(KVM_CAP_VTL_PROTECTIONS)'s errno `got`: success if `ok`, else
    /// the errno api.rst 7.40 gives (EINVAL for arguments, EBUSY once vCPUs exist).
    fn prot_enable_check(
        &mut self,
        serial: u64,
        args: [u64; 4],
        ok: bool,
        when: &str,
        got: Option<i32>,
    ) -> Result<()> {
        self.stats.count(Call::EnableCap);
        let what =
            format!("VM {serial}: KVM_ENABLE_CAP(KVM_CAP_VTL_PROTECTIONS, {args:x?}) {when}");
        self.note(format!("{what} -> {}", got.map_or("ok".into(), errname)));
        let want = if args != [0; 4] {
            Some(libc::EINVAL)
        } else if !ok {
            Some(libc::EBUSY)
        } else {
            None
        };
        if got != want {
            bail!(
                "{what}: got {}, expected {}",
                got.map_or("success".into(), errname),
                want.map_or("success".into(), errname)
            );
        }
        Ok(())
    }

    /// The VTL labels a vCPU of VM `k` has or will have without an assignment (all of them
    /// VTL 0 unless the VM opted in to APIC groups).
    fn prot_vtls_in_use(&self, k: usize) -> u16 {
        let fvm = &self.vms[k];
        let mut m = u16::from(!fvm.plan.opted);
        for v in &fvm.vcpus {
            if let Some(a) = v.assigned {
                m |= 1 << a.vtl;
            }
        }
        m
    }

    /// A vCPU of VM `k` was just assigned VTL `vtl` (it has not run yet): lift that VTL's
    /// restrictions of what the guests touch, so that it never faults.
    pub(super) fn prot_vtl_assigned(&mut self, k: usize, vtl: u8) -> Result<()> {
        let pv = &self.vms[k].prot;
        if !pv.enabled {
            return Ok(());
        }
        let mem = layout::MEM_SIZE / PAGE_SIZE;
        let hole = (HOLE.0 / PAGE_SIZE, HOLE.1 / PAGE_SIZE);
        let r = &pv.vtls[usize::from(vtl)];
        let lift: Vec<(u64, u64)> = [(0, mem), hole]
            .into_iter()
            .filter(|&(s, e)| r.restricts(s, e))
            .collect();
        for (s, e) in lift {
            let p = prot(s * PAGE_SIZE, (e - s) * PAGE_SIZE, vtl, Access::ALL.bits());
            self.prot_set(k, p, "lift for a vCPU assigned this VTL")?;
            self.stats.prot_lifts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One random protection operation on VM `k`.
    pub(super) fn prot_op(&mut self, k: usize) -> Result<()> {
        let (supported, enabled) = {
            let pv = &self.vms[k].prot;
            (pv.supported, pv.enabled)
        };
        if !supported || super::off("prot") {
            return Ok(());
        }
        if !enabled {
            return match self.rng.below(4) {
                0 => self.prot_enable_late(k),
                1 => self.prot_bad_pointer(k),
                _ => {
                    // Without the capability both ioctls fail with EINVAL, whatever the input.
                    let p = self.prot_valid(k);
                    let why = "without the capability";
                    self.prot_expect(k, p, true, Some(libc::EINVAL), why)?;
                    self.prot_expect(k, p, false, Some(libc::EINVAL), why)
                }
            };
        }
        match self.rng.below(16) {
            0..=6 => {
                let p = self.prot_valid(k);
                self.prot_set(k, p, "valid")
            }
            7..=10 => self.prot_invalid(k),
            11 => self.prot_bad_pointer(k),
            12..=14 => self.prot_get_random(k),
            _ => self.prot_enable_late(k),
        }
    }

    /// Enable on an existing VM: EBUSY once it has vCPUs, else success (then it is on).
    fn prot_enable_late(&mut self, k: usize) -> Result<()> {
        let serial = self.vms[k].serial;
        let ok = self.vms[k].vcpus.is_empty();
        let args = if self.rng.one_in(4) {
            self.random_cap_args()
        } else {
            [0; 4]
        };
        let got = enable_errno(&self.vms[k].vm.fd, args);
        self.prot_enable_check(serial, args, ok, "late", got)?;
        if got.is_none() && !self.vms[k].prot.enabled {
            self.stats.count(Call::GetVtlProtection);
            let limit = limit_of(
                serial,
                protections::get_vtl_protection(&self.vms[k].vm.fd, 0, 0),
            )?;
            let pv = &mut self.vms[k].prot;
            pv.limit = limit;
            pv.enabled = true;
            self.stats.prot_vms.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A valid SET for VM `k`: any VTL and access outside what the guests touch; there only a
    /// VTL no vCPU has, or all access.
    fn prot_valid(&mut self, k: usize) -> kvm_vtl_protection {
        let limit = self.vms[k].prot.limit.max(HOLE.1 / PAGE_SIZE * 16);
        let mem = layout::MEM_SIZE / PAGE_SIZE;
        let four_g = HOLE.1 / PAGE_SIZE;
        let mut vtl = self.rng.below(VTLS as u64) as u8;
        let mut access = self.rng.pick(&Access::LEGAL).unwrap_or(Access::ALL).bits();
        let small = |rng: &mut Rng| {
            let max = if rng.one_in(4) { 512 } else { 16 };
            1 + rng.below(max)
        };
        let (s, n) = match self.rng.below(7) {
            0 => {
                let s = self.rng.below(mem);
                (s, small(&mut self.rng).min(mem - s))
            }
            1 => {
                let s = HOLE.0 / PAGE_SIZE + self.rng.below(four_g - HOLE.0 / PAGE_SIZE);
                (s, small(&mut self.rng).min(four_g - s))
            }
            2 => {
                // Untouched memory below the hole; sometimes all of it.
                if self.rng.one_in(8) {
                    (mem, HOLE.0 / PAGE_SIZE - mem)
                } else {
                    let s = mem + self.rng.below(1 << 14);
                    (s, small(&mut self.rng))
                }
            }
            3 => {
                let s = four_g + self.rng.below(1 << 14);
                let n = if self.rng.one_in(8) {
                    (64 << 30) / PAGE_SIZE
                } else {
                    small(&mut self.rng)
                };
                (s, n.min(limit - s))
            }
            4 => {
                // Ending at KVM's limit.
                let n = small(&mut self.rng);
                (limit - n, n)
            }
            5 => (four_g, limit - four_g),
            _ => (0, limit),
        };
        if touched(s, s + n) && access != Access::ALL.bits() {
            let used = self.prot_vtls_in_use(k);
            let free: Vec<u8> = (0..VTLS as u8).filter(|v| used & (1 << v) == 0).collect();
            match self.rng.pick(&free) {
                Some(v) if !self.rng.one_in(4) => vtl = v,
                _ => access = Access::ALL.bits(),
            }
        }
        // Keep each VTL's pieces few: a VTL with many is lifted as a whole.
        if self.vms[k].prot.vtls[usize::from(vtl)].0.len() > MAX_PIECES {
            return prot(0, limit * PAGE_SIZE, vtl, Access::ALL.bits());
        }
        prot(s * PAGE_SIZE, n * PAGE_SIZE, vtl, access)
    }

    /// A SET with one thing wrong: EINVAL, and nothing changes.
    fn prot_invalid(&mut self, k: usize) -> Result<()> {
        let mut p = self.prot_valid(k);
        let limit = self.vms[k].prot.limit * PAGE_SIZE;
        let what = match self.rng.below(12) {
            0 => {
                p.gpa += 1 + self.rng.below(PAGE_SIZE - 1);
                "unaligned gpa"
            }
            1 => {
                p.size = 0;
                "empty range"
            }
            2 => {
                p.size += 1 + self.rng.below(PAGE_SIZE - 1);
                "unaligned size"
            }
            3 => {
                p.gpa = (HOLE.1 + self.rng.below(1 << 20) * PAGE_SIZE).max(PAGE_SIZE);
                p.size = 0u64.wrapping_sub(p.gpa) + self.rng.below(4) * PAGE_SIZE;
                "range wrapping around"
            }
            4 => {
                p.gpa = if self.rng.one_in(2) {
                    limit + self.rng.below(1 << 10) * PAGE_SIZE
                } else {
                    (1 << (52 + self.rng.below(12))) & !(PAGE_SIZE - 1)
                };
                p.size = PAGE_SIZE;
                "gpa beyond KVM's limit"
            }
            5 => {
                let n = 1 + self.rng.below(16);
                p.gpa = limit - n * PAGE_SIZE;
                p.size = (n + 1 + self.rng.below(16)) * PAGE_SIZE;
                "range ending beyond KVM's limit"
            }
            6 => {
                p.vtl = 16 + self.rng.below(240) as u8;
                "VTL above 15"
            }
            7 => {
                p.access = match self.rng.below(4) {
                    0 => 0b010,
                    1 => 0b100,
                    2 => 0b110,
                    _ => p.access | 1 << (3 + self.rng.below(5)),
                };
                "illegal access"
            }
            8 => {
                p.flags = 1 << self.rng.below(32);
                "non-zero flags"
            }
            9 => {
                p.pad[self.rng.below(2) as usize] = 1 << self.rng.below(8);
                "non-zero pad"
            }
            10 => {
                p.reserved[self.rng.below(2) as usize] = 1 << self.rng.below(64);
                "non-zero reserved"
            }
            _ => {
                p.size = (limit - HOLE.1) + PAGE_SIZE;
                p.gpa = HOLE.1;
                "range one page beyond KVM's limit"
            }
        };
        self.prot_expect(k, p, true, Some(libc::EINVAL), what)
    }

    /// SET or GET with a pointer into an inaccessible page: EFAULT, nothing changes.
    fn prot_bad_pointer(&mut self, k: usize) -> Result<()> {
        let set = self.rng.one_in(2);
        // The struct straddles into the PROT_NONE page, or lies in it.
        let off = if self.rng.one_in(2) {
            layout::PAGE as usize - 8
        } else {
            layout::PAGE as usize
        };
        // SAFETY: only an address inside the two guard pages; never dereferenced here.
        let ptr = unsafe { self.guard.add(off) };
        let nr = if set {
            raw::VTLKIT_KVM_SET_VTL_PROTECTION
        } else {
            raw::VTLKIT_KVM_GET_VTL_PROTECTION
        };
        let fvm = &self.vms[k];
        self.stats.count(if set {
            Call::SetVtlProtection
        } else {
            Call::GetVtlProtection
        });
        // SAFETY: a VM ioctl on our VM fd with a pointer the kernel must refuse (EFAULT): it
        // only touches user memory through copy_from/to_user.
        let r = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ptr(&fvm.vm.fd, libc::c_ulong::from(nr), ptr)
        };
        let got = (r < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        let name = if set { "SET" } else { "GET" };
        let what = format!(
            "VM {}: KVM_{name}_VTL_PROTECTION with a pointer {} the inaccessible page",
            fvm.serial,
            if off == layout::PAGE as usize {
                "into"
            } else {
                "straddling"
            }
        );
        self.note(format!("{what} -> {}", got.map_or("ok".into(), errname)));
        if got != Some(libc::EFAULT) {
            bail!(
                "{what}: got {}, expected EFAULT",
                got.map_or("success".into(), errname)
            );
        }
        self.stats.prot_refused.fetch_add(1, Ordering::Relaxed);
        if set && self.vms[k].prot.enabled {
            let vtl = self.rng.below(VTLS as u64) as u8;
            self.prot_walk(k, vtl, "after a SET with a bad pointer")?;
        }
        Ok(())
    }

    /// A SET that must succeed; the model follows it.
    fn prot_set(&mut self, k: usize, p: kvm_vtl_protection, why: &str) -> Result<()> {
        self.prot_expect(k, p, true, None, why)
    }

    /// SET (`set`) or GET with `p`; `want` is the errno, or None for success. A SET that
    /// succeeds enters the model; after any SET the model is checked.
    fn prot_expect(
        &mut self,
        k: usize,
        p: kvm_vtl_protection,
        set: bool,
        want: Option<i32>,
        why: &str,
    ) -> Result<()> {
        let running = self.vms[k].running_count();
        let fvm = &self.vms[k];
        let name = if set { "SET" } else { "GET" };
        let what = format!(
            "VM {}: KVM_{name}_VTL_PROTECTION{} ({why}) [{running} vCPUs running]",
            fvm.serial,
            describe(&p)
        );
        let mut out = p;
        let got = if set {
            self.stats.count(Call::SetVtlProtection);
            errno_of(protections::set_vtl_protection_raw(&fvm.vm.fd, &p))
        } else {
            self.stats.count(Call::GetVtlProtection);
            errno_of(protections::get_vtl_protection_raw(&fvm.vm.fd, &mut out))
        };
        self.note(format!("{what} -> {}", got.map_or("ok".into(), errname)));
        if got != want && !(set && got == Some(libc::ENOMEM) && want.is_none()) {
            bail!(
                "{what}: got {}, expected {}",
                got.map_or("success".into(), errname),
                want.map_or("success".into(), errname)
            );
        }
        if got.is_some() {
            self.stats.prot_refused.fetch_add(1, Ordering::Relaxed);
        }
        if !self.vms[k].prot.enabled {
            return Ok(());
        }
        if !set {
            return Ok(());
        }
        let (s, e) = (p.gpa / PAGE_SIZE, p.gpa.wrapping_add(p.size) / PAGE_SIZE);
        if got.is_none() {
            self.stats.prot_sets.fetch_add(1, Ordering::Relaxed);
            if running > 0 {
                self.stats.prot_running.fetch_add(1, Ordering::Relaxed);
            }
            if touched(s, e) && p.access != Access::ALL.bits() {
                self.stats.prot_guest_mem.fetch_add(1, Ordering::Relaxed);
            }
            self.vms[k].prot.vtls[usize::from(p.vtl)].store(s, e, p.access);
        }
        // GET at the range's first page, the page before and the page after it (where KVM
        // can map them), for its VTL (a valid one for a failed call's).
        let vtl = if usize::from(p.vtl) < VTLS {
            p.vtl
        } else {
            self.rng.below(VTLS as u64) as u8
        };
        let limit = self.vms[k].prot.limit;
        for page in [s, s.wrapping_sub(1), e] {
            if page < limit && p.gpa % PAGE_SIZE == 0 {
                self.prot_check_get(k, page * PAGE_SIZE, vtl, &what)?;
            }
        }
        if self.rng.one_in(3) {
            self.prot_walk(k, vtl, &what)?;
        }
        if self.rng.one_in(4) {
            self.prot_check_debugfs(k, &what)?;
        }
        Ok(())
    }

    /// KVM_GET_VTL_PROTECTION at `gpa` (page aligned, below the limit) against the model.
    fn prot_check_get(&mut self, k: usize, gpa: u64, vtl: u8, after: &str) -> Result<()> {
        let fvm = &self.vms[k];
        let pv = &fvm.prot;
        let page = gpa / PAGE_SIZE;
        let (want, piece_end, run_end) = pv.vtls[usize::from(vtl)].lookup(page, pv.limit);
        // Garbage in the outputs is fine.
        let mut p = prot(gpa, self.rng.next_u64(), vtl, self.rng.next_u32() as u8);
        self.stats.count(Call::GetVtlProtection);
        self.stats.prot_gets.fetch_add(1, Ordering::Relaxed);
        let r = protections::get_vtl_protection_raw(&fvm.vm.fd, &mut p);
        let ctx = || {
            format!(
                "VM {}: KVM_GET_VTL_PROTECTION(gpa {gpa:#x}, VTL {vtl}) after {after}",
                fvm.serial
            )
        };
        if let Err(e) = r {
            bail!("{}: {e}", ctx());
        }
        let end = p.size.checked_add(gpa).map(|b| b / PAGE_SIZE);
        if p.access != want
            || p.size == 0
            || p.size % PAGE_SIZE != 0
            || end.is_none_or(|e| e < piece_end || e > run_end)
        {
            bail!(
                "{}: access {:#x} over {:#x} bytes; the model has access {want:#x} up to page {piece_end:#x} (run of that access up to {run_end:#x})",
                ctx(),
                p.access,
                p.size
            );
        }
        Ok(())
    }

    /// Walk VTL `vtl` of VM `k` over KVM's whole range: the runs must be the model's.
    fn prot_walk(&mut self, k: usize, vtl: u8, after: &str) -> Result<()> {
        let fvm = &self.vms[k];
        let pv = &fvm.prot;
        let want = pv.vtls[usize::from(vtl)].runs(pv.limit);
        let max = 2 * pv.vtls[usize::from(vtl)].0.len() + 2;
        let got = vtl_protection_map(&fvm.vm.fd, vtl, 0, pv.limit * PAGE_SIZE, max);
        self.stats.prot_walks.fetch_add(1, Ordering::Relaxed);
        match got {
            Ok(g) if g == want => Ok(()),
            Ok(g) => bail!(
                "VM {}: VTL {vtl}'s protections after {after}: KVM walks {g:x?}, the model has {want:x?}",
                fvm.serial
            ),
            Err(e) => bail!(
                "VM {}: walking VTL {vtl}'s protections after {after}: {e}",
                fvm.serial
            ),
        }
    }

    /// The VM's debugfs `vtl_prot_ranges` must count each VTL's ranges (between the merged
    /// runs and the stored pieces of the model); skipped without debugfs.
    fn prot_check_debugfs(&mut self, k: usize, after: &str) -> Result<()> {
        let fvm = &self.vms[k];
        let path = format!(
            "/sys/kernel/debug/kvm/{}-{}/vtl_prot_ranges",
            std::process::id(),
            fvm.vm.fd.as_raw_fd()
        );
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let counts: Vec<u64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{path}: {text:?}: {e}"))?;
        if counts.len() != VTLS {
            bail!("{path}: {text:?} is not 16 counts");
        }
        self.stats.prot_debugfs.fetch_add(1, Ordering::Relaxed);
        let pv = &fvm.prot;
        for (vtl, &n) in counts.iter().enumerate() {
            let (lo, hi) = pv.vtls[vtl].count_bounds(pv.limit);
            if n < lo || n > hi {
                bail!(
                    "VM {}: {path} after {after}: VTL {vtl} has {n} ranges, the model {lo} (merged) to {hi} (stored)",
                    fvm.serial
                );
            }
        }
        Ok(())
    }

    /// A random GET: valid (checked against the model) or with one thing wrong (EINVAL).
    fn prot_get_random(&mut self, k: usize) -> Result<()> {
        let limit = self.vms[k].prot.limit;
        let page = match self.rng.below(4) {
            0 => self.rng.below(layout::MEM_SIZE / PAGE_SIZE + 64),
            1 => limit - 1 - self.rng.below(64),
            _ => self.rng.below(limit),
        };
        let vtl = self.rng.below(VTLS as u64) as u8;
        let mut p = prot(page * PAGE_SIZE, 0, vtl, 0);
        let why = match self.rng.below(10) {
            0 => {
                p.gpa += 1 + self.rng.below(PAGE_SIZE - 1);
                "unaligned gpa"
            }
            1 => {
                p.gpa = (limit + self.rng.below(1 << 20)) * PAGE_SIZE;
                "gpa beyond KVM's limit"
            }
            2 => {
                p.vtl = 16 + self.rng.below(240) as u8;
                "VTL above 15"
            }
            3 => {
                match self.rng.below(3) {
                    0 => p.flags = 1 << self.rng.below(32),
                    1 => p.pad[self.rng.below(2) as usize] = 1 << self.rng.below(8),
                    _ => p.reserved[self.rng.below(2) as usize] = 1 << self.rng.below(64),
                }
                "non-zero pad, flags or reserved"
            }
            _ => return self.prot_check_get(k, page * PAGE_SIZE, vtl, "random GET"),
        };
        self.prot_expect(k, p, false, Some(libc::EINVAL), why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u8 = 0b001;
    const RX: u8 = 0b101;
    const NONE: u8 = 0;

    #[test]
    fn store_splits_and_lifts() {
        let mut r = Ranges::default();
        r.store(10, 20, R);
        r.store(14, 16, NONE);
        assert_eq!(
            r.0.iter().map(|(&s, &v)| (s, v)).collect::<Vec<_>>(),
            [(10, (14, R)), (14, (16, NONE)), (16, (20, R))]
        );
        // Lookups: the piece, and the run of equal access.
        assert_eq!(r.lookup(11, 100), (R, 14, 14));
        assert_eq!(r.lookup(5, 100), (Access::ALL.bits(), 10, 10));
        assert_eq!(r.lookup(20, 100), (Access::ALL.bits(), 100, 100));
        r.store(14, 16, R);
        // Three stored pieces of R in a row: one run.
        assert_eq!(r.lookup(11, 100), (R, 14, 20));
        assert_eq!(r.count_bounds(100), (1, 3));
        assert_eq!(
            r.runs(100),
            [
                (0, 10 * PAGE_SIZE, Access::ALL),
                (10 * PAGE_SIZE, 10 * PAGE_SIZE, Access::READ),
                (20 * PAGE_SIZE, 80 * PAGE_SIZE, Access::ALL)
            ]
        );
        assert!(r.restricts(0, 11) && !r.restricts(0, 10) && !r.restricts(20, 30));
        // All access erases, splitting what it cuts.
        r.store(12, 18, Access::ALL.bits());
        assert_eq!(
            r.0.iter().map(|(&s, &v)| (s, v)).collect::<Vec<_>>(),
            [(10, (12, R)), (18, (20, R))]
        );
        r.store(0, 100, RX);
        assert_eq!(r.runs(100), [(0, 100 * PAGE_SIZE, Access::READ_EXEC)]);
        r.store(0, 100, Access::ALL.bits());
        assert!(r.0.is_empty());
        assert_eq!(r.count_bounds(100), (0, 0));
    }

    #[test]
    fn what_the_guests_touch() {
        let mem = layout::MEM_SIZE / PAGE_SIZE;
        assert!(touched(mem - 1, mem));
        assert!(!touched(mem, mem + 1));
        assert!(touched(HOLE.0 / PAGE_SIZE - 1, HOLE.0 / PAGE_SIZE + 1));
        assert!(!touched(HOLE.1 / PAGE_SIZE, HOLE.1 / PAGE_SIZE + 1));
        assert!(touched(0, u64::MAX));
    }
}
