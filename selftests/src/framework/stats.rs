// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! KVM's binary statistics (`KVM_GET_STATS_FD`, Documentation/virt/kvm/api.rst 4.133) of a VM
//! or a vCPU, read by name. kvm-ioctls has no wrapper for it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{kvm_stats_desc, kvm_stats_header};
use vmm_sys_util::ioctl::ioctl;

/// One statistic: where its value is in the data block.
struct Desc {
    name: String,
    /// Number of u64 values (1 for counters).
    size: u16,
    /// Byte offset from the data block.
    offset: u32,
}

/// The statistics file of a VM or vCPU.
pub struct Stats {
    file: File,
    data_offset: u64,
    descs: Vec<Desc>,
}

impl Stats {
    /// KVM_GET_STATS_FD on `fd` (a VM or vCPU fd), with its descriptors read.
    pub fn open(fd: &impl AsRawFd) -> Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; the fd we pass
        // is a live KVM fd borrowed for the call.
        let r = unsafe {
            ioctl(
                fd,
                libc::c_ulong::from(vtlkit_uapi::raw::VTLKIT_KVM_GET_STATS_FD),
            )
        };
        if r < 0 {
            bail!("KVM_GET_STATS_FD: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd; nothing else owns it.
        let file = unsafe { File::from_raw_fd(r) };
        let mut hdr = [0u8; std::mem::size_of::<kvm_stats_header>()];
        file.read_exact_at(&mut hdr, 0)
            .context("reading the stats header")?;
        let word = |i: usize| u32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (name_size, num_desc, desc_offset, data_offset) =
            (word(4), word(8), word(16), word(20));
        let desc_size = std::mem::size_of::<kvm_stats_desc>() + name_size as usize;
        let mut descs = Vec::new();
        let mut buf = vec![0u8; desc_size];
        for i in 0..u64::from(num_desc) {
            file.read_exact_at(&mut buf, u64::from(desc_offset) + i * desc_size as u64)
                .with_context(|| format!("reading stats descriptor {i}"))?;
            let size = u16::from_ne_bytes([buf[6], buf[7]]);
            let offset = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
            let name = &buf[std::mem::size_of::<kvm_stats_desc>()..];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            descs.push(Desc {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                size,
                offset,
            });
        }
        Ok(Stats {
            file,
            data_offset: u64::from(data_offset),
            descs,
        })
    }

    /// The current value of statistic `name` (its first value for histograms).
    pub fn get(&self, name: &str) -> Result<u64> {
        let d = self
            .descs
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| anyhow!("KVM has no statistic named {name}"))?;
        if d.size == 0 {
            bail!("statistic {name} has no values");
        }
        let mut v = [0u8; 8];
        self.file
            .read_exact_at(&mut v, self.data_offset + u64::from(d.offset))
            .with_context(|| format!("reading statistic {name}"))?;
        Ok(u64::from_ne_bytes(v))
    }
}
