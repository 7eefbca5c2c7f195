// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Hypercall input and output: the slow form (guest pages) and the fast form (registers) behind
//! one reader, at the same offsets, with the TLFS statuses for what can go wrong.

use super::backend::GuestMemory;
use super::hv::{HvStatus, FAST_INPUT_BYTES, PAGE_SIZE};
use super::HcallExit;

/// The input block of one hypercall.
pub(crate) enum Input<'a> {
    Slow {
        mem: &'a dyn GuestMemory,
        gpa: u64,
    },
    Fast {
        bytes: [u8; FAST_INPUT_BYTES],
        len: usize,
    },
}

impl<'a> Input<'a> {
    /// The input of `exit`: the page at RDX, or the registers of a fast call.
    pub fn new(exit: &HcallExit, mem: &'a dyn GuestMemory) -> Result<Self, HvStatus> {
        if exit.control.fast() {
            let (bytes, len) = exit.fast_input();
            return Ok(Input::Fast { bytes, len });
        }
        let gpa = exit.params[0];
        if gpa % 8 != 0 {
            return Err(HvStatus::INVALID_ALIGNMENT);
        }
        Ok(Input::Slow { mem, gpa })
    }

    /// Whether this is a fast call.
    pub fn is_fast(&self) -> bool {
        matches!(self, Input::Fast { .. })
    }

    /// Read `buf.len()` bytes at offset `off` of the input block.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> Result<(), HvStatus> {
        let end = off
            .checked_add(buf.len())
            .ok_or(HvStatus::INVALID_HYPERCALL_INPUT)?;
        match self {
            Input::Fast { bytes, len } => {
                if end > *len {
                    return Err(HvStatus::INVALID_HYPERCALL_INPUT);
                }
                buf.copy_from_slice(&bytes[off..end]);
                Ok(())
            }
            Input::Slow { mem, gpa } => {
                if (gpa % PAGE_SIZE) + end as u64 > PAGE_SIZE {
                    return Err(HvStatus::INVALID_ALIGNMENT);
                }
                mem.read(gpa + off as u64, buf)
                    .map_err(|_| HvStatus::INVALID_HYPERCALL_INPUT)
            }
        }
    }

    pub fn u8(&self, off: usize) -> Result<u8, HvStatus> {
        let mut b = [0u8; 1];
        self.read(off, &mut b)?;
        Ok(b[0])
    }

    pub fn u32(&self, off: usize) -> Result<u32, HvStatus> {
        let mut b = [0u8; 4];
        self.read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn u64(&self, off: usize) -> Result<u64, HvStatus> {
        let mut b = [0u8; 8];
        self.read(off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u128(&self, off: usize) -> Result<u128, HvStatus> {
        let mut b = [0u8; 16];
        self.read(off, &mut b)?;
        Ok(u128::from_le_bytes(b))
    }
}

/// Where a slow call's output goes: the page at R8. Checked before anything is done, so that a
/// bad output GPA fails the call without side effects.
pub(crate) struct Output<'a> {
    mem: &'a dyn GuestMemory,
    gpa: u64,
}

impl<'a> Output<'a> {
    /// The output page of `exit`, which must hold `len` bytes.
    pub fn new(exit: &HcallExit, mem: &'a dyn GuestMemory, len: usize) -> Result<Self, HvStatus> {
        let gpa = exit.params[1];
        if gpa % 8 != 0 || (gpa % PAGE_SIZE) + len as u64 > PAGE_SIZE {
            return Err(HvStatus::INVALID_ALIGNMENT);
        }
        Ok(Self { mem, gpa })
    }

    /// Write `buf` at offset `off`.
    pub fn write(&self, off: usize, buf: &[u8]) -> Result<(), HvStatus> {
        self.mem
            .write(self.gpa + off as u64, buf)
            .map_err(|_| HvStatus::INVALID_HYPERCALL_INPUT)
    }
}
