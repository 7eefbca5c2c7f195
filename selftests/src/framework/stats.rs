// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! KVM's binary statistics (`KVM_GET_STATS_FD`, Documentation/virt/kvm/api.rst 4.133) of a VM
//! or a vCPU, read by name; the file is decoded by [`vtlkit_uapi::stats`].

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{anyhow, Context, Result};
use vtlkit_uapi::stats;

/// The statistics file of a VM or vCPU.
pub struct Stats {
    file: File,
}

impl Stats {
    /// KVM_GET_STATS_FD on `fd` (a VM or vCPU fd); the file is read once to check it decodes.
    pub fn open(fd: &impl AsRawFd) -> Result<Self> {
        let file = stats::get_stats_fd(fd).context("KVM_GET_STATS_FD")?;
        let s = Stats { file };
        s.read()?;
        Ok(s)
    }

    /// The whole file, decoded, with the current values.
    fn read(&self) -> Result<stats::Stats> {
        let buf = stats::read_stats_file(&self.file).context("reading the stats file")?;
        Ok(stats::parse(&buf)?)
    }

    /// The current value of statistic `name` (its first value for histograms).
    pub fn get(&self, name: &str) -> Result<u64> {
        let s = self.read()?;
        let st = s
            .get(name)
            .ok_or_else(|| anyhow!("KVM has no statistic named {name}"))?;
        st.values
            .first()
            .copied()
            .ok_or_else(|| anyhow!("statistic {name} has no values"))
    }
}
