// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The library behind `vtlctl`: reading the VTL / APIC-group state of every VM on the host
//! from KVM's debugfs, and rendering it as tables or JSON.
//!
//! KVM's debugfs layout (6.12 plus the vtlkit series):
//!
//! ```text
//! /sys/kernel/debug/kvm/<pid>-<vm fd>/            one directory per VM
//!     <stat>                                      VM stats, and vCPU stats summed over vCPUs
//!     vcpu<vcpu_id>/apic_group, apic_id, vtl      the series' per-vCPU state
//!     vcpu<vcpu_id>/hv_vp_index                   Hyper-V VP index
//! ```
#![deny(missing_docs)]

pub mod debugfs;
pub mod render;

pub use debugfs::{scan, scan_vm, ScanError, VcpuInfo, VmInfo, COUNTERS};
