// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The cross-VTL synthetic cluster IPIs (0x0B, 0x15) and HvCallModifyVtlProtectionMask (0x0C).
//!
//! IPI input (slow and fast at the same offsets): Vector u32 @0, TargetVtl HV_INPUT_VTL @4,
//! RsvdZ 3 @5; then ProcessorMask u64 @8 (0x0B), or the HV_VP_SET @8 (0x15): Format u64 @8,
//! ValidBankMask u64 @16, one bank qword per mask bit @24 (the variable header).

use super::backend::{Env, ProtectionRequest, VtlVcpu};
use super::hv::{self, HvStatus, InputVtl};
use super::input::Input;
use super::{Call, Fail, HvResult, Partition, VtlError};

/// Guest page numbers handed to the [`super::Protections`] hook at a time.
const GPN_BATCH: usize = 64;

impl<V: VtlVcpu> Partition<V> {
    pub(super) fn send_ipi(&mut self, call: &Call<'_>, env: &Env<'_, V>) -> HvResult<()> {
        let c = call.exit.control;
        let input = Input::new(call.exit, env.memory)?;
        let bad = HvStatus::INVALID_HYPERCALL_INPUT;
        let vector = input.u32(0)?;
        let ivtl = InputVtl(input.u8(4)?);
        let mut rsvd = [0u8; 3];
        input.read(5, &mut rsvd)?;
        if ivtl.has_reserved_bits() || rsvd != [0; 3] {
            return Err(bad.into());
        }
        // The VP set: None = all VPs, else (bank mask, banks).
        let set = if c.code() == hv::code::SEND_SYNTHETIC_CLUSTER_IPI {
            Some((1u64, vec![input.u64(8)?]))
        } else {
            let format = input.u64(8)?;
            let mask = input.u64(16)?;
            if c.var_header_qwords() != mask.count_ones() as usize {
                return Err(bad.into());
            }
            match format {
                hv::GENERIC_SET_ALL => None,
                hv::GENERIC_SET_SPARSE_4K => {
                    let banks = (0..c.var_header_qwords())
                        .map(|k| input.u64(24 + 8 * k))
                        .collect::<Result<Vec<_>, _>>()?;
                    Some((mask, banks))
                }
                _ => return Err(HvStatus::INVALID_PARAMETER.into()),
            }
        };
        if !(hv::IPI_LOW_VECTOR..=hv::IPI_HIGH_VECTOR).contains(&vector) {
            return Err(bad.into());
        }
        let target = ivtl.resolve(call.vtl);
        if target > call.vtl {
            return Err(HvStatus::ACCESS_DENIED.into());
        }
        if !self.is_enabled(target) {
            return Err(HvStatus::INVALID_PARAMETER.into());
        }
        let group = self.group_of(target);
        let targets: Vec<u32> = match set {
            None => self.vps.keys().copied().collect(),
            Some((mask, banks)) => {
                let mut v = Vec::new();
                let mut bank = banks.iter();
                for b in (0..64u32).filter(|b| mask & (1 << b) != 0) {
                    let Some(&bits) = bank.next() else { break };
                    v.extend(
                        (0..64u32)
                            .filter(|j| bits & (1 << j) != 0)
                            .map(|j| b * 64 + j),
                    );
                }
                v
            }
        };
        let vector = vector as u8;
        let mut unreachable = false;
        for vp_index in targets {
            // VPs that do not exist, or do not run the target VTL, have no one to deliver to.
            let Some(vp) = self.vps.get(&vp_index) else {
                log::trace!(
                    "VP {} VTL {}: IPI {vector:#x} to VP {vp_index} skipped: no such VP",
                    call.vp_index,
                    call.vtl
                );
                continue;
            };
            if !vp.is_enabled(target) {
                log::trace!(
                    "VP {} VTL {}: IPI {vector:#x} to VP {vp_index} skipped: VTL {target} is not enabled there",
                    call.vp_index,
                    call.vtl
                );
                continue;
            }
            match env.delivery.deliver_fixed(group, vp.apic_id, vector) {
                Ok(()) => {}
                // This VP cannot be addressed (an APIC ID the MSI format cannot carry): the
                // others still get it, the guest learns of it from the status.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    log::warn!(
                        "VP {} VTL {}: IPI {vector:#x} to VP {vp_index} (APIC ID {}, group {group}) not delivered: {e}",
                        call.vp_index,
                        call.vtl,
                        vp.apic_id
                    );
                    unreachable = true;
                }
                Err(source) => {
                    return Err(VtlError::Delivery {
                        group,
                        apic_id: vp.apic_id,
                        vector,
                        source,
                    }
                    .into())
                }
            }
        }
        if unreachable {
            return Err(HvStatus::INVALID_PARAMETER.into());
        }
        Ok(())
    }

    /// Header: PartitionId u64 @0, MapFlags u32 @8, TargetVtl HV_INPUT_VTL @12, RsvdZ 3; rep
    /// list of guest page numbers (u64) @16.
    pub(super) fn modify_vtl_protection_mask(
        &mut self,
        call: &Call<'_>,
        env: &mut Env<'_, V>,
    ) -> HvResult<u16> {
        let c = call.exit.control;
        let input = Input::new(call.exit, env.memory)?;
        if input.u64(0)? != hv::PARTITION_ID_SELF {
            return Err(HvStatus::INVALID_PARTITION_ID.into());
        }
        let map_flags = input.u32(8)?;
        let ivtl = InputVtl(input.u8(12)?);
        let mut rsvd = [0u8; 3];
        input.read(13, &mut rsvd)?;
        if ivtl.has_reserved_bits() || rsvd != [0; 3] {
            return Err(HvStatus::INVALID_PARAMETER.into());
        }
        // Protections restrict the VTLs below the target; the caller may name itself or a
        // lower VTL, and VTL0 has nobody below it.
        let target_vtl = ivtl.resolve(call.vtl);
        if target_vtl > call.vtl || target_vtl == 0 {
            return Err(HvStatus::ACCESS_DENIED.into());
        }
        let req = ProtectionRequest {
            vp_index: call.vp_index,
            caller_vtl: call.vtl,
            target_vtl,
            map_flags,
        };
        let mut done = c.rep_start();
        while done < c.rep_count() {
            let n = usize::from(c.rep_count() - done).min(GPN_BATCH);
            let mut gpns = Vec::with_capacity(n);
            for k in 0..n {
                let i = usize::from(done) + k;
                match input.u64(16 + 8 * i) {
                    Ok(g) => gpns.push(g),
                    // Hand over what was readable; the status comes after.
                    Err(s) if gpns.is_empty() => return Err(Fail::Hv(s, done)),
                    Err(_) => break,
                }
            }
            let r = env
                .protections
                .modify_vtl_protection_mask(&req, &gpns)
                .map_err(VtlError::Protections)?;
            if r.status != HvStatus::SUCCESS {
                done += r.completed.min(gpns.len()) as u16;
                return Err(Fail::Hv(r.status, done));
            }
            // Success means every handed-over page; a short read stops at the next round.
            done += gpns.len() as u16;
        }
        Ok(c.rep_count())
    }
}
