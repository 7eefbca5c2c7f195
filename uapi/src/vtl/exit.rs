// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The `KVM_EXIT_HYPERV` HCALL exit, read through the series' `kvm_hyperv_exit` (with `flags`
//! and `xmm[]`, which kvm-bindings' 6.12 `kvm_run` lacks).

use kvm_bindings::{kvm_run, KVM_EXIT_HYPERV};

use super::hv::{Control, FAST_INPUT_BYTES};
use crate::raw;

/// One forwarded hypercall, as KVM reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HcallExit {
    /// The hypercall control word (the guest's RCX).
    pub control: Control,
    /// RDX and R8: input and output GPA, or the first two fast input qwords.
    pub params: [u64; 2],
    /// XMM0..XMM5 as (low, high) qwords, when KVM set `KVM_HYPERV_HCALL_XMM_INPUT` (a fast
    /// hypercall with XMM input); `None` otherwise.
    pub xmm: Option<[u64; 12]>,
}

impl HcallExit {
    /// The HCALL exit in `run`, if `run` holds one (`exit_reason == KVM_EXIT_HYPERV` and
    /// `hyperv.type == KVM_EXIT_HYPERV_HCALL`).
    pub fn from_kvm_run(run: &kvm_run) -> Option<Self> {
        if run.exit_reason != KVM_EXIT_HYPERV {
            return None;
        }
        Self::from_raw(hyperv_exit(run))
    }

    /// The HCALL exit described by the series' `kvm_hyperv_exit`, if it is one.
    pub fn from_raw(e: &raw::kvm_hyperv_exit) -> Option<Self> {
        if e.type_ != raw::KVM_EXIT_HYPERV_HCALL {
            return None;
        }
        // SAFETY: `type_` says the hcall arm is the live one; all of its fields are integers.
        let h = unsafe { e.u.hcall };
        Some(Self {
            control: Control(h.input),
            params: h.params,
            xmm: (h.flags & raw::KVM_HYPERV_HCALL_XMM_INPUT != 0).then_some(h.xmm),
        })
    }

    /// The fast input block: RDX, R8, then XMM0..XMM5 if KVM forwarded them, as the TLFS lays
    /// out a fast hypercall's input (the same offsets as the slow input page). The second value
    /// is how many bytes are valid (16 without XMM input, else [`FAST_INPUT_BYTES`]).
    pub fn fast_input(&self) -> ([u8; FAST_INPUT_BYTES], usize) {
        let mut b = [0u8; FAST_INPUT_BYTES];
        b[0..8].copy_from_slice(&self.params[0].to_le_bytes());
        b[8..16].copy_from_slice(&self.params[1].to_le_bytes());
        let Some(xmm) = self.xmm else {
            return (b, 16);
        };
        for (i, q) in xmm.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&q.to_le_bytes());
        }
        (b, FAST_INPUT_BYTES)
    }

    /// Lay this exit into `run` as KVM would (for tests and replay tools).
    pub fn store(&self, run: &mut kvm_run) {
        run.exit_reason = KVM_EXIT_HYPERV;
        let e = hyperv_exit_mut(run);
        e.type_ = raw::KVM_EXIT_HYPERV_HCALL;
        let mut h = raw::kvm_hyperv_exit__bindgen_ty_1__bindgen_ty_2 {
            input: self.control.0,
            params: self.params,
            ..Default::default()
        };
        if let Some(xmm) = self.xmm {
            h.flags = raw::KVM_HYPERV_HCALL_XMM_INPUT;
            h.xmm = xmm;
        }
        e.u.hcall = h;
    }
}

/// Complete the HCALL exit in `run`: write `result` (status and reps completed) to
/// `hyperv.u.hcall.result`, for KVM to hand to the guest on the vCPU's next `KVM_RUN`. Returns
/// false (and writes nothing) if `run` does not hold an HCALL exit.
pub fn set_hcall_result(run: &mut kvm_run, result: u64) -> bool {
    if run.exit_reason != KVM_EXIT_HYPERV {
        log::debug!(
            "hypercall result {result:#x} not written: kvm_run holds exit {}, not KVM_EXIT_HYPERV",
            run.exit_reason
        );
        return false;
    }
    let e = hyperv_exit_mut(run);
    if e.type_ != raw::KVM_EXIT_HYPERV_HCALL {
        log::debug!(
            "hypercall result {result:#x} not written: kvm_run holds Hyper-V exit type {}, not HCALL",
            e.type_
        );
        return false;
    }
    // Writing a Copy field of a union is safe; `type_` says the hcall arm is the live one.
    e.u.hcall.result = result;
    true
}

fn hyperv_exit(run: &kvm_run) -> &raw::kvm_hyperv_exit {
    // SAFETY: the exit union is at least as large and as aligned as the series'
    // `kvm_hyperv_exit` (asserted in lib.rs), the pointer comes from a live shared borrow of
    // `run`, and every field of `kvm_hyperv_exit` is an integer (or a union of integer structs),
    // so any initialized bytes are a valid value.
    unsafe { &*std::ptr::addr_of!(run.__bindgen_anon_1).cast::<raw::kvm_hyperv_exit>() }
}

fn hyperv_exit_mut(run: &mut kvm_run) -> &mut raw::kvm_hyperv_exit {
    // SAFETY: as in `hyperv_exit`, through a live exclusive borrow of `run`.
    unsafe { &mut *std::ptr::addr_of_mut!(run.__bindgen_anon_1).cast::<raw::kvm_hyperv_exit>() }
}
