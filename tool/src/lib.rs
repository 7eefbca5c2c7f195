// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The library behind `vtlctl`: reading the VTL / APIC-group state of every VM on the host
//! from KVM's debugfs, and rendering it as tables or JSON.
//!
//! KVM's debugfs layout (6.12 plus the vtlkit series):
//!
//! ```text
//! /sys/kernel/debug/kvm/<pid>-<vm fd>/            one directory per VM
//!     <stat>                                      VM stats, and vCPU stats summed over vCPUs
//!     vcpu<vcpu_id>/apic_group, apic_id, vtl      the series' per-vCPU state (apic_group
//!                                                 reads 4294967295 while unassigned)
//!     vcpu<vcpu_id>/hv_vp_index                   Hyper-V VP index
//! ```
//!
//! Per-vCPU statistics are not in debugfs: [`vcpustats`] reads them from the VMM's KVM
//! stats fds.
//!
//! A tree recorded elsewhere (`--debugfs DIR`, the test fixtures) may also hold
//! `proc/<pid>/comm`, the command name of each VM's process when it was recorded.
#![deny(missing_docs)]

pub mod debugfs;
pub mod filter;
pub mod render;
pub mod vcpustats;

pub use debugfs::{
    comm_root, is_live_debugfs, scan, scan_in, scan_vm, scan_vm_in, ScanError, VcpuInfo, VmInfo,
    COUNTERS, DEFAULT_ROOT, GROUP_NONE,
};
pub use filter::{Filter, GroupSel};
