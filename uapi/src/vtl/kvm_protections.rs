// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! [`KvmProtections`]: the state machine's [`Protections`] hook on the series'
//! `KVM_SET_VTL_PROTECTION` ([`crate::protections`]).
//!
//! `HvCallModifyVtlProtectionMask(TargetVtl = t, MapFlags, GPNs)` restricts every VTL below
//! `t` (KVM VTL labels `0..t`), which is what the TLFS's "protections apply to lower VTLs"
//! means for a VTL that names itself. Decisions:
//!
//! | input | answer |
//! |---|---|
//! | `HV_MAP_GPA_FLAGS` bit 0 readable, bit 1 writable, bit 2 kernel-executable, bit 3 user-executable | [`Access`]: R, W, and X if either execute bit is set (no MBEC: KVM has one execute permission, so user- and kernel-execute cannot differ) |
//! | write or execute without read, or any bit above 3 (supervisor shadow stack, paging writability, adjustable, ...) | `HV_STATUS_INVALID_PARAMETER`, no rep done |
//! | a GPN whose address does not fit 64 bits, or one KVM refuses (`EINVAL`: beyond the guest's physical address width) | `HV_STATUS_INVALID_PARAMETER` with the reps before its run of pages completed |
//! | KVM out of memory (`ENOMEM`) | `HV_STATUS_INSUFFICIENT_MEMORY` with the reps before the run completed |
//! | any other `KVM_SET_VTL_PROTECTION` failure | a host error ([`super::VtlError::Protections`]) |
//! | GPNs that are not guest RAM | applied anyway (KVM keeps protections for any GPA; the VMM may check RAM itself) |
//!
//! Contiguous GPNs of one call become one ioctl per run and per lower VTL label, in the
//! order given (a failing run may leave its lower labels already changed; the reps count only
//! whole runs).
//!
//! HvRegisterVsmPartitionConfig (`partition_config_changed`): the first write of VTL `n` with
//! EnableVtlProtection set applies its DefaultVtlProtectionMask (bits 4:1: R, W, UMX, KMX) to
//! all of guest RAM for the labels below `n`, if the VMM said where RAM is
//! ([`KvmProtections::with_ram`]); a mask of full access needs nothing. A restricting mask
//! without known RAM, or an illegal mask, is refused with `HV_STATUS_INVALID_REGISTER_VALUE`
//! rather than silently not applied. Later writes do not re-apply the default (that would
//! undo the per-page protections set since).

use std::io;

use kvm_ioctls::VmFd;

use super::backend::{ProtectionRequest, Protections, RepStatus};
use super::hv::HvStatus;
use crate::protections::{Access, VtlProtection, PAGE_SIZE};
use crate::raw;

/// The `HV_MAP_GPA_FLAGS` bits [`KvmProtections`] accepts (read, write, kernel- and
/// user-execute).
pub const MAP_FLAGS_SUPPORTED: u32 = 0xf;

/// The [`Access`] of `HV_MAP_GPA_FLAGS` `flags`, if it is a TLFS combination this
/// implementation supports (see the module documentation).
pub fn map_flags_access(flags: u32) -> Option<Access> {
    if flags & !MAP_FLAGS_SUPPORTED != 0 {
        return None;
    }
    let mut bits = 0u8;
    if flags & 1 != 0 {
        bits |= raw::KVM_VTL_PROT_READ as u8;
    }
    if flags & 2 != 0 {
        bits |= raw::KVM_VTL_PROT_WRITE as u8;
    }
    if flags & 0xc != 0 {
        bits |= raw::KVM_VTL_PROT_EXEC as u8;
    }
    Access::from_bits(bits)
}

/// DefaultVtlProtectionMask (R, W, UMX, KMX in bits 3:0) as `HV_MAP_GPA_FLAGS`.
fn default_mask_flags(mask: u64) -> u32 {
    let m = (mask & 0xf) as u32;
    (m & 3) | if m & 0xc != 0 { 4 } else { 0 }
}

/// `KVM_SET_VTL_PROTECTION`, as [`KvmProtections`] calls it (a VM fd, or a test's recorder).
pub trait SetVtlProtection {
    /// Apply `p`; `EINVAL` is reported as [`io::ErrorKind::InvalidInput`].
    fn set_vtl_protection(&mut self, p: VtlProtection) -> io::Result<()>;
}

impl SetVtlProtection for &VmFd {
    fn set_vtl_protection(&mut self, p: VtlProtection) -> io::Result<()> {
        crate::protections::set_vtl_protection(self, p)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// [`Protections`] on `KVM_SET_VTL_PROTECTION` (module documentation). The VM must have
/// `KVM_CAP_VTL_PROTECTIONS` enabled ([`crate::protections::enable_vtl_protections`]) and
/// each sibling's VTL label must be its VTL.
#[derive(Debug)]
pub struct KvmProtections<S> {
    set: S,
    ram: Vec<(u64, u64)>,
    defaults_applied: u16,
}

impl<S: SetVtlProtection> KvmProtections<S> {
    /// Protections through `set` (e.g. `&vm_fd`), RAM unknown.
    pub fn new(set: S) -> Self {
        Self {
            set,
            ram: Vec::new(),
            defaults_applied: 0,
        }
    }

    /// Guest RAM as (GPA, size) ranges, page aligned: where a DefaultVtlProtectionMask applies.
    pub fn with_ram(mut self, ram: Vec<(u64, u64)>) -> Self {
        self.ram = ram;
        self
    }

    /// The setter (e.g. a test's recorder).
    pub fn setter(&self) -> &S {
        &self.set
    }

    /// Apply `access` to `[gpa, gpa + size)` for every label below `target_vtl`.
    fn apply(&mut self, gpa: u64, size: u64, target_vtl: u8, access: Access) -> io::Result<()> {
        for vtl in 0..target_vtl {
            self.set.set_vtl_protection(VtlProtection {
                gpa,
                size,
                vtl,
                access,
            })?;
        }
        Ok(())
    }
}

/// The status for a failed `KVM_SET_VTL_PROTECTION` the guest caused, or `None` for a host
/// failure.
fn guest_status(e: &io::Error) -> Option<HvStatus> {
    match e.raw_os_error() {
        Some(libc::EINVAL) => Some(HvStatus::INVALID_PARAMETER),
        Some(libc::ENOMEM) => Some(HvStatus::INSUFFICIENT_MEMORY),
        _ if e.kind() == io::ErrorKind::InvalidInput => Some(HvStatus::INVALID_PARAMETER),
        _ => None,
    }
}

impl<S: SetVtlProtection> Protections for KvmProtections<S> {
    fn modify_vtl_protection_mask(
        &mut self,
        req: &ProtectionRequest,
        gpns: &[u64],
    ) -> io::Result<RepStatus> {
        let fail = |status, completed| Ok(RepStatus { status, completed });
        let Some(access) = map_flags_access(req.map_flags) else {
            log::debug!(
                "VP {} VTL {}: ModifyVtlProtectionMask with MapFlags {:#x}: not a supported combination",
                req.vp_index,
                req.caller_vtl,
                req.map_flags
            );
            return fail(HvStatus::INVALID_PARAMETER, 0);
        };
        let mut start = 0usize;
        while start < gpns.len() {
            let mut end = start + 1;
            while end < gpns.len() && gpns[end - 1].checked_add(1) == Some(gpns[end]) {
                end += 1;
            }
            let first = gpns[start];
            let last = gpns[end - 1];
            let (Some(gpa), Some(_)) = (
                first.checked_mul(PAGE_SIZE),
                last.checked_mul(PAGE_SIZE)
                    .and_then(|a| a.checked_add(PAGE_SIZE - 1)),
            ) else {
                return fail(HvStatus::INVALID_PARAMETER, start);
            };
            let size = (end - start) as u64 * PAGE_SIZE;
            if let Err(e) = self.apply(gpa, size, req.target_vtl, access) {
                return match guest_status(&e) {
                    Some(status) => {
                        log::debug!(
                            "VP {}: KVM_SET_VTL_PROTECTION({gpa:#x}+{size:#x}, {access}) failed: {e}",
                            req.vp_index
                        );
                        fail(status, start)
                    }
                    None => Err(e),
                };
            }
            start = end;
        }
        Ok(RepStatus {
            status: HvStatus::SUCCESS,
            completed: gpns.len(),
        })
    }

    fn partition_config_changed(&mut self, vtl: u8, value: u64) -> io::Result<HvStatus> {
        let bit = 1u16 << (vtl & 0xf);
        if value & 1 == 0 || self.defaults_applied & bit != 0 {
            return Ok(HvStatus::SUCCESS);
        }
        let Some(access) = map_flags_access(default_mask_flags(value >> 1)) else {
            return Ok(HvStatus::INVALID_REGISTER_VALUE);
        };
        if access != Access::ALL {
            if self.ram.is_empty() {
                log::warn!(
                    "VTL {vtl}: DefaultVtlProtectionMask {access} refused: KvmProtections does not know where guest RAM is (with_ram)"
                );
                return Ok(HvStatus::INVALID_REGISTER_VALUE);
            }
            for (gpa, size) in self.ram.clone() {
                if let Err(e) = self.apply(gpa, size, vtl, access) {
                    return match guest_status(&e) {
                        Some(_) => Ok(HvStatus::INVALID_REGISTER_VALUE),
                        None => Err(e),
                    };
                }
            }
        }
        self.defaults_applied |= bit;
        Ok(HvStatus::SUCCESS)
    }
}
