// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! `KVM_CAP_VTL_PROTECTIONS`: per-VTL read/write/execute protections of guest physical pages,
//! enforced by KVM's MMU (TDP and shadow paging) and its instruction emulator, and the
//! `KVM_EXIT_MEMORY_FAULT` exits that report a violation.
//!
//! A VM opts in before its first vCPU; then the vCPUs whose VTL label (`KVM_SET_APIC_GROUP`,
//! 0 without APIC groups) is `vtl` may only make the accesses that [`set_vtl_protection`]
//! allowed `vtl` on a page. A violating access does not complete: `KVM_RUN` fails with
//! `EFAULT` and exit reason `KVM_EXIT_MEMORY_FAULT` (kvm-ioctls returns
//! `VcpuExit::MemoryFault`), [`memory_fault_exit`] decodes it, and the vCPU stays at the
//! faulting instruction, so that lifting the protection and running again completes it:
//!
//! ```no_run
//! # fn f(vm: &kvm_ioctls::VmFd, vcpu: &mut kvm_ioctls::VcpuFd) -> vtlkit_uapi::Result<()> {
//! use vtlkit_uapi::protections::*;
//! // (before the first vCPU) enable_vtl_protections(vm)?;
//! set_vtl_protection(vm, VtlProtection { gpa: 0x10_0000, size: 0x1000, vtl: 0,
//!                                         access: Access::READ })?;
//! if let Ok(kvm_ioctls::VcpuExit::MemoryFault { .. }) = vcpu.run() {
//!     let fault = memory_fault_exit(vcpu.get_kvm_run());
//!     // fault.access == Some(FaultAccess::Write), fault.gpa == 0x10_0000 ...
//! #   let _ = fault;
//! }
//! # Ok(()) }
//! ```
//!
//! The kernel's documentation is `Documentation/virt/kvm/api.rst` of the patched tree,
//! sections 4.148, 4.149, 7.40 and `KVM_EXIT_MEMORY_FAULT`.

use std::fmt;
use std::io;

use kvm_bindings::{kvm_enable_cap, kvm_run};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

use crate::{raw, Error, Result};

/// The page size protections work in: `gpa` and `size` must be multiples of it.
pub const PAGE_SIZE: u64 = 4096;

/// What a VTL may do with a range of pages: one of the combinations the Hyper-V TLFS allows
/// (no access, read-only, read+execute, read+write, all). No other value can be made, so a
/// [`VtlProtection`] never carries an illegal combination; [`set_vtl_protection_raw`] sends
/// any byte, for tests of the kernel's checks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Access(u8);

const R: u8 = raw::KVM_VTL_PROT_READ as u8;
const W: u8 = raw::KVM_VTL_PROT_WRITE as u8;
const X: u8 = raw::KVM_VTL_PROT_EXEC as u8;
const _: () = assert!(
    raw::KVM_VTL_PROT_READ < 0x100
        && raw::KVM_VTL_PROT_WRITE < 0x100
        && raw::KVM_VTL_PROT_EXEC < 0x100
);

impl Access {
    /// No access at all.
    pub const NONE: Access = Access(0);
    /// Read-only.
    pub const READ: Access = Access(R);
    /// Read and execute (not write).
    pub const READ_EXEC: Access = Access(R | X);
    /// Read and write (not execute).
    pub const READ_WRITE: Access = Access(R | W);
    /// Everything: removes a restriction (the state every page starts in).
    pub const ALL: Access = Access(R | W | X);
    /// Every legal combination, most restrictive first.
    pub const LEGAL: [Access; 5] = [
        Access::NONE,
        Access::READ,
        Access::READ_EXEC,
        Access::READ_WRITE,
        Access::ALL,
    ];

    /// The combination with these `KVM_VTL_PROT_*` bits, if the TLFS allows it (write or
    /// execute without read, and unknown bits, are not).
    pub const fn from_bits(bits: u8) -> Option<Access> {
        match bits {
            0 => Some(Access::NONE),
            b if b == R => Some(Access::READ),
            b if b == R | X => Some(Access::READ_EXEC),
            b if b == R | W => Some(Access::READ_WRITE),
            b if b == R | W | X => Some(Access::ALL),
            _ => None,
        }
    }

    /// The `KVM_VTL_PROT_*` bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether reads are allowed.
    pub const fn read(self) -> bool {
        self.0 & R != 0
    }

    /// Whether writes are allowed.
    pub const fn write(self) -> bool {
        self.0 & W != 0
    }

    /// Whether instruction fetches are allowed.
    pub const fn exec(self) -> bool {
        self.0 & X != 0
    }

    /// Whether an access of this kind is allowed.
    pub const fn allows(self, a: FaultAccess) -> bool {
        match a {
            FaultAccess::Read => self.read(),
            FaultAccess::Write => self.write(),
            FaultAccess::Exec => self.exec(),
        }
    }
}

impl Default for Access {
    /// [`Access::ALL`], what every page of every VTL starts with.
    fn default() -> Self {
        Access::ALL
    }
}

impl fmt::Display for Access {
    /// `rwx` style: `---`, `r--`, `r-x`, `rw-`, `rwx`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(self.read(), 'r'),
            c(self.write(), 'w'),
            c(self.exec(), 'x')
        )
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Access({self})")
    }
}

/// One `KVM_SET_VTL_PROTECTION`: what VTL `vtl` may do with the pages in
/// `[gpa, gpa + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VtlProtection {
    /// First byte of the range; page aligned.
    pub gpa: u64,
    /// Length in bytes; page aligned, not 0.
    pub size: u64,
    /// VTL label (0..=[`crate::MAX_VTL`]).
    pub vtl: u8,
    /// What that VTL may do there.
    pub access: Access,
}

impl From<VtlProtection> for raw::kvm_vtl_protection {
    fn from(p: VtlProtection) -> Self {
        raw::kvm_vtl_protection {
            gpa: p.gpa,
            size: p.size,
            vtl: p.vtl,
            access: p.access.bits(),
            ..Default::default()
        }
    }
}

/// Whether the kernel offers `KVM_CAP_VTL_PROTECTIONS` (`KVM_CHECK_EXTENSION` returns 1).
pub fn vtl_protections_supported(kvm: &Kvm) -> bool {
    kvm.check_extension_raw(libc::c_ulong::from(raw::KVM_CAP_VTL_PROTECTIONS)) > 0
}

/// `KVM_ENABLE_CAP(KVM_CAP_VTL_PROTECTIONS)`: before the VM's first vCPU (`EBUSY` after).
/// Idempotent until then.
pub fn enable_vtl_protections(vm: &VmFd) -> Result<()> {
    enable_vtl_protections_raw(vm, [0; 4])
}

/// [`enable_vtl_protections`] with the capability's arguments as given (non-zero: `EINVAL`).
pub fn enable_vtl_protections_raw(vm: &VmFd, args: [u64; 4]) -> Result<()> {
    let cap = kvm_enable_cap {
        cap: raw::KVM_CAP_VTL_PROTECTIONS,
        args,
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(|e| Error::Ioctl {
        op: "KVM_ENABLE_CAP(KVM_CAP_VTL_PROTECTIONS)",
        source: io::Error::from_raw_os_error(e.errno()),
    })
}

/// `KVM_SET_VTL_PROTECTION`. When it returns, the protection holds on every vCPU, also on
/// those running at that moment. A failed call (e.g. `EINVAL` for an unaligned, empty or
/// overflowing range or a VTL above the limit) changes nothing.
pub fn set_vtl_protection(vm: &VmFd, p: VtlProtection) -> Result<()> {
    set_vtl_protection_raw(vm, &p.into())
}

/// `KVM_SET_VTL_PROTECTION` with every field, including `pad`, `flags` and `reserved`, as
/// given (for tests of the kernel's input checks).
pub fn set_vtl_protection_raw(vm: &VmFd, p: &raw::kvm_vtl_protection) -> Result<()> {
    // SAFETY: `vm` is a valid VM fd; the kernel reads exactly size_of::<kvm_vtl_protection>()
    // bytes (encoded in the request number, which comes from the header) from a live reference.
    let r = unsafe {
        ioctl_with_ref(
            vm,
            libc::c_ulong::from(raw::VTLKIT_KVM_SET_VTL_PROTECTION),
            p,
        )
    };
    if r < 0 {
        return Err(Error::last("KVM_SET_VTL_PROTECTION"));
    }
    Ok(())
}

/// `KVM_GET_VTL_PROTECTION`: what VTL `vtl` may do with the page at `gpa`, and the length of
/// the range from `gpa` on with that same access (where the next change is).
pub fn get_vtl_protection(vm: &VmFd, gpa: u64, vtl: u8) -> Result<(Access, u64)> {
    let mut p = raw::kvm_vtl_protection {
        gpa,
        vtl,
        ..Default::default()
    };
    get_vtl_protection_raw(vm, &mut p)?;
    let access = Access::from_bits(p.access).ok_or(Error::Unexpected {
        op: "KVM_GET_VTL_PROTECTION",
        what: "an access that is not a TLFS combination",
        value: u64::from(p.access),
    })?;
    if p.size == 0 || p.size % PAGE_SIZE != 0 {
        return Err(Error::Unexpected {
            op: "KVM_GET_VTL_PROTECTION",
            what: "a size that is not a non-zero number of pages",
            value: p.size,
        });
    }
    Ok((access, p.size))
}

/// `KVM_GET_VTL_PROTECTION` on the structure as given (`gpa`, `vtl` and the must-be-zero
/// fields in; `access` and `size` out).
pub fn get_vtl_protection_raw(vm: &VmFd, p: &mut raw::kvm_vtl_protection) -> Result<()> {
    // SAFETY: `vm` is a valid VM fd; the kernel reads and writes exactly
    // size_of::<kvm_vtl_protection>() bytes (encoded in the request number, from the header)
    // of a live, exclusively borrowed struct.
    let r = unsafe {
        ioctl_with_mut_ref(
            vm,
            libc::c_ulong::from(raw::VTLKIT_KVM_GET_VTL_PROTECTION),
            p,
        )
    };
    if r < 0 {
        return Err(Error::last("KVM_GET_VTL_PROTECTION"));
    }
    Ok(())
}

/// The ranges of VTL `vtl` in `[start, end)` as `KVM_GET_VTL_PROTECTION` walks them: one entry
/// per run of pages with the same access, the first starting at `start`, the last clipped to
/// `end` (both page aligned). At most `max` entries (an error beyond that: a guard against a
/// kernel that never advances).
pub fn vtl_protection_map(
    vm: &VmFd,
    vtl: u8,
    start: u64,
    end: u64,
    max: usize,
) -> Result<Vec<(u64, u64, Access)>> {
    let mut out = Vec::new();
    let mut gpa = start;
    while gpa < end {
        if out.len() >= max {
            return Err(Error::Unexpected {
                op: "KVM_GET_VTL_PROTECTION",
                what: "more ranges than the walk's limit, starting at",
                value: start,
            });
        }
        let (access, size) = get_vtl_protection(vm, gpa, vtl)?;
        let len = size.min(end - gpa);
        match out.last_mut() {
            // The kernel may report a run in pieces; merge them so the map is canonical.
            Some((g, l, a)) if *a == access && *g + *l == gpa => *l += len,
            _ => out.push((gpa, len, access)),
        }
        gpa = match gpa.checked_add(size) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(out)
}

/// The access a protection violation attempted (exactly one of the exit's
/// `KVM_MEMORY_EXIT_FLAG_READ`, `_WRITE`, `_EXEC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultAccess {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Exec,
}

impl FaultAccess {
    /// The exit flag that names this access.
    pub const fn flag(self) -> u64 {
        match self {
            FaultAccess::Read => raw::KVM_MEMORY_EXIT_FLAG_READ as u64,
            FaultAccess::Write => raw::KVM_MEMORY_EXIT_FLAG_WRITE as u64,
            FaultAccess::Exec => raw::KVM_MEMORY_EXIT_FLAG_EXEC as u64,
        }
    }
}

impl fmt::Display for FaultAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultAccess::Read => "read",
            FaultAccess::Write => "write",
            FaultAccess::Exec => "execute",
        })
    }
}

const ACCESS_FLAGS: u64 = (raw::KVM_MEMORY_EXIT_FLAG_READ
    | raw::KVM_MEMORY_EXIT_FLAG_WRITE
    | raw::KVM_MEMORY_EXIT_FLAG_EXEC) as u64;
const FLAG_PRIVATE: u64 = raw::KVM_MEMORY_EXIT_FLAG_PRIVATE as u64;
const FLAG_GVA_VALID: u64 = raw::KVM_MEMORY_EXIT_FLAG_GVA_VALID as u64;

/// A `KVM_EXIT_MEMORY_FAULT`, decoded with the series' flags and `gva`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemoryFault {
    /// Guest physical address of the range the fault is about (the page, for a protection
    /// violation).
    pub gpa: u64,
    /// Its length in bytes ([`PAGE_SIZE`] for a protection violation).
    pub size: u64,
    /// What the access attempted, for a violation of its VTL's protection; `None` for a
    /// memory fault of another kind (no access flag), or, which the kernel documents never
    /// to happen, more than one access flag (see [`MemoryFault::flags`]).
    pub access: Option<FaultAccess>,
    /// The guest virtual address of the access, where KVM knows it
    /// (`KVM_MEMORY_EXIT_FLAG_GVA_VALID`: shadow paging).
    pub gva: Option<u64>,
    /// `KVM_MEMORY_EXIT_FLAG_PRIVATE`: the access was to private memory.
    pub private: bool,
    /// Every flag bit as KVM set it, also those this crate does not know.
    pub flags: u64,
}

impl MemoryFault {
    /// Whether this exit reports a violation of the VTL protections (an access flag is set).
    pub fn is_protection_fault(&self) -> bool {
        self.flags & ACCESS_FLAGS != 0
    }

    /// The fault described by the series' exit structure.
    pub fn from_raw(m: &raw::vtlkit_memory_fault) -> Self {
        let access = match m.flags & ACCESS_FLAGS {
            f if f == FaultAccess::Read.flag() => Some(FaultAccess::Read),
            f if f == FaultAccess::Write.flag() => Some(FaultAccess::Write),
            f if f == FaultAccess::Exec.flag() => Some(FaultAccess::Exec),
            _ => None,
        };
        MemoryFault {
            gpa: m.gpa,
            size: m.size,
            access,
            gva: (m.flags & FLAG_GVA_VALID != 0).then_some(m.gva),
            private: m.flags & FLAG_PRIVATE != 0,
            flags: m.flags,
        }
    }

    /// Lay this fault into `run` as KVM would (for tests and replay tools). `flags` is written
    /// as given, then the bits of `access`, `gva` and `private` are set.
    pub fn store(&self, run: &mut kvm_run) {
        run.exit_reason = raw::KVM_EXIT_MEMORY_FAULT;
        let mut flags = self.flags;
        if let Some(a) = self.access {
            flags |= a.flag();
        }
        if self.private {
            flags |= FLAG_PRIVATE;
        }
        if self.gva.is_some() {
            flags |= FLAG_GVA_VALID;
        }
        *memory_fault_mut(run) = raw::vtlkit_memory_fault {
            flags,
            gpa: self.gpa,
            size: self.size,
            gva: self.gva.unwrap_or(0),
        };
    }
}

impl fmt::Display for MemoryFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.access {
            Some(a) => write!(f, "{a} fault")?,
            None => write!(f, "memory fault")?,
        }
        write!(f, " at GPA {:#x} (+{:#x})", self.gpa, self.size)?;
        if let Some(gva) = self.gva {
            write!(f, ", GVA {gva:#x}")?;
        }
        if self.private {
            write!(f, ", private")?;
        }
        write!(f, ", flags {:#x}", self.flags)
    }
}

/// The `KVM_EXIT_MEMORY_FAULT` in `run`, if its exit reason says it holds one. Only meaningful
/// right after a `KVM_RUN` that failed with `EFAULT` or `EHWPOISON` (kvm-ioctls then returns
/// `VcpuExit::MemoryFault`): for any other result the exit reason is stale.
pub fn memory_fault_exit(run: &kvm_run) -> Option<MemoryFault> {
    if run.exit_reason != raw::KVM_EXIT_MEMORY_FAULT {
        return None;
    }
    Some(MemoryFault::from_raw(memory_fault(run)))
}

// The series' memory_fault arm (with `gva`) must fit in kvm_run's exit union, over which it is
// laid, and sit at the start of it as every arm does.
const _: () = assert!(
    std::mem::size_of::<raw::vtlkit_memory_fault>()
        <= std::mem::size_of::<kvm_bindings::kvm_run__bindgen_ty_1>()
);
const _: () = assert!(
    std::mem::align_of::<raw::vtlkit_memory_fault>()
        <= std::mem::align_of::<kvm_bindings::kvm_run__bindgen_ty_1>()
);

fn memory_fault(run: &kvm_run) -> &raw::vtlkit_memory_fault {
    // SAFETY: the exit union is at least as large and as aligned as the series' memory_fault
    // arm (asserted above), the pointer comes from a live shared borrow of `run`, and the arm is
    // four u64s, so any initialized bytes are a valid value.
    unsafe { &*std::ptr::addr_of!(run.__bindgen_anon_1).cast::<raw::vtlkit_memory_fault>() }
}

fn memory_fault_mut(run: &mut kvm_run) -> &mut raw::vtlkit_memory_fault {
    // SAFETY: as in `memory_fault`, through a live exclusive borrow of `run`.
    unsafe { &mut *std::ptr::addr_of_mut!(run.__bindgen_anon_1).cast::<raw::vtlkit_memory_fault>() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn protection_struct_layout_matches_api_rst() {
        type P = raw::kvm_vtl_protection;
        assert_eq!(offset_of!(P, gpa), 0);
        assert_eq!(offset_of!(P, size), 8);
        assert_eq!(offset_of!(P, vtl), 16);
        assert_eq!(offset_of!(P, access), 17);
        assert_eq!(offset_of!(P, pad), 18);
        assert_eq!(offset_of!(P, flags), 20);
        assert_eq!(offset_of!(P, reserved), 24);
        assert_eq!(size_of::<P>(), 40);
        assert_eq!(std::mem::align_of::<P>(), 8);
    }

    #[test]
    fn memory_fault_arm_extends_the_6_12_one() {
        type M = raw::vtlkit_memory_fault;
        assert_eq!(offset_of!(M, flags), 0);
        assert_eq!(offset_of!(M, gpa), 8);
        assert_eq!(offset_of!(M, size), 16);
        assert_eq!(offset_of!(M, gva), 24);
        assert_eq!(size_of::<M>(), 32);
        // kvm-bindings' 6.12 arm has the same first three fields at the same offsets.
        let mut run = kvm_run::default();
        MemoryFault {
            gpa: 0x1234_5000,
            size: 0x1000,
            access: Some(FaultAccess::Exec),
            gva: None,
            private: false,
            flags: 0,
        }
        .store(&mut run);
        assert_eq!(run.exit_reason, kvm_bindings::KVM_EXIT_MEMORY_FAULT);
        // SAFETY: store() wrote the memory_fault arm; every field is an integer.
        let old = unsafe { run.__bindgen_anon_1.memory_fault };
        assert_eq!(
            (old.flags, old.gpa, old.size),
            (raw::KVM_MEMORY_EXIT_FLAG_EXEC as u64, 0x1234_5000, 0x1000)
        );
    }

    #[test]
    fn constants_come_from_the_header() {
        assert_eq!(raw::KVM_CAP_VTL_PROTECTIONS, 242);
        assert_eq!((R, W, X), (1, 2, 4));
        assert_eq!(
            raw::KVM_EXIT_MEMORY_FAULT,
            kvm_bindings::KVM_EXIT_MEMORY_FAULT
        );
        // PRIVATE keeps its 6.12 bit; the access bits are 0..2 and GVA_VALID is bit 4.
        assert_eq!(
            u64::from(raw::KVM_MEMORY_EXIT_FLAG_PRIVATE),
            kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE as u64
        );
        assert_eq!(FLAG_PRIVATE, 1 << 3);
        assert_eq!(ACCESS_FLAGS, 0b111);
        assert_eq!(FLAG_GVA_VALID, 1 << 4);
    }

    #[test]
    fn ioctl_numbers_encode_direction_size_and_nr() {
        let set = raw::VTLKIT_KVM_SET_VTL_PROTECTION;
        let get = raw::VTLKIT_KVM_GET_VTL_PROTECTION;
        let size = size_of::<raw::kvm_vtl_protection>() as u32;
        assert_eq!(set >> 30, 1, "SET is _IOW");
        assert_eq!(get >> 30, 3, "GET is _IOWR");
        assert_eq!((set >> 16) & 0x3fff, size);
        assert_eq!((get >> 16) & 0x3fff, size);
        assert_eq!((set >> 8) & 0xff, kvm_bindings::KVMIO);
        assert_eq!((get >> 8) & 0xff, kvm_bindings::KVMIO);
        assert_eq!((set & 0xff, get & 0xff), (0xda, 0xdb));
    }

    #[test]
    fn only_tlfs_combinations_are_accesses() {
        let legal: Vec<u8> = (0..=u8::MAX)
            .filter(|&b| Access::from_bits(b).is_some())
            .collect();
        assert_eq!(legal, vec![0, R, R | W, R | X, R | W | X]);
        for a in Access::LEGAL {
            assert_eq!(Access::from_bits(a.bits()), Some(a));
        }
        assert_eq!(Access::default(), Access::ALL);
        let shown: Vec<String> = Access::LEGAL.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["---", "r--", "r-x", "rw-", "rwx"]);
        assert!(Access::READ_EXEC.allows(FaultAccess::Exec));
        assert!(!Access::READ_EXEC.allows(FaultAccess::Write));
        assert!(Access::READ_WRITE.allows(FaultAccess::Write));
        assert!(!Access::READ_WRITE.allows(FaultAccess::Exec));
        assert!(!Access::NONE.allows(FaultAccess::Read));
    }

    #[test]
    fn protection_to_raw_zeroes_the_must_be_zero_fields() {
        let r: raw::kvm_vtl_protection = VtlProtection {
            gpa: 0x20_0000,
            size: 0x3000,
            vtl: 1,
            access: Access::READ_EXEC,
        }
        .into();
        assert_eq!(
            (r.gpa, r.size, r.vtl, r.access),
            (0x20_0000, 0x3000, 1, R | X)
        );
        assert_eq!((r.pad, r.flags, r.reserved), ([0; 2], 0, [0; 2]));
    }

    #[test]
    fn memory_fault_decodes_each_access_gva_and_private() {
        let mut run = kvm_run::default();
        assert_eq!(
            memory_fault_exit(&run),
            None,
            "exit reason 0 is not a fault"
        );
        for a in [FaultAccess::Read, FaultAccess::Write, FaultAccess::Exec] {
            for gva in [None, Some(0xffff_8000_0012_3456)] {
                let f = MemoryFault {
                    gpa: 0x7000,
                    size: PAGE_SIZE,
                    access: Some(a),
                    gva,
                    private: false,
                    flags: 0,
                };
                f.store(&mut run);
                let got = memory_fault_exit(&run).expect("a memory fault");
                assert_eq!(got.access, Some(a));
                assert_eq!(got.gva, gva);
                assert_eq!((got.gpa, got.size, got.private), (0x7000, PAGE_SIZE, false));
                assert!(got.is_protection_fault());
            }
        }
        // A 6.12-style fault: no access bit, private; gva is ignored without GVA_VALID.
        MemoryFault {
            gpa: 0x9000,
            size: 0x2000,
            private: true,
            ..Default::default()
        }
        .store(&mut run);
        memory_fault_mut(&mut run).gva = 0xdead;
        let got = memory_fault_exit(&run).expect("a memory fault");
        assert_eq!(
            (got.access, got.gva, got.private, got.flags),
            (None, None, true, FLAG_PRIVATE)
        );
        assert!(!got.is_protection_fault());
        // Two access bits: not silently one of them.
        memory_fault_mut(&mut run).flags = ACCESS_FLAGS & 0b011;
        let got = memory_fault_exit(&run).expect("a memory fault");
        assert_eq!(got.access, None);
        assert!(got.is_protection_fault());
        // Another exit reason with the same bytes is not a fault.
        run.exit_reason = kvm_bindings::KVM_EXIT_IO;
        assert_eq!(memory_fault_exit(&run), None);
    }

    #[test]
    fn fault_display_names_what_matters() {
        let f = MemoryFault {
            gpa: 0x5000,
            size: PAGE_SIZE,
            access: Some(FaultAccess::Write),
            gva: Some(0x5008),
            private: false,
            flags: 0,
        };
        let mut run = kvm_run::default();
        f.store(&mut run);
        let got = memory_fault_exit(&run).expect("a memory fault");
        assert_eq!(
            got.to_string(),
            "write fault at GPA 0x5000 (+0x1000), GVA 0x5008, flags 0x12"
        );
    }
}
