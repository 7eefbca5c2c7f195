// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Selecting vCPUs by APIC group and VTL (`vtlctl show --group G --vtl V`).

use std::str::FromStr;

use crate::debugfs::{VcpuInfo, VmInfo};

/// Number of APIC groups the uAPI defines (`KVM_CHECK_EXTENSION(KVM_CAP_APIC_GROUPS)`).
pub const MAX_GROUPS: u32 = 16;
/// Highest VTL label (`KVM_APIC_GROUP_MAX_VTL`).
pub const MAX_VTL: u8 = 15;

/// One `--group` value: a group number, or the vCPUs not assigned to any group yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSel {
    /// APIC group `n` (0..16).
    Group(u32),
    /// vCPUs whose debugfs `apic_group` reads 4294967295 (`none` or `-` on the command line).
    Unassigned,
}

/// A command-line value that is not a group or VTL; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not a group number in range, nor `none`.
    #[error("{0:?} is not an APIC group: use 0..={max}, or `none` for unassigned vCPUs", max = MAX_GROUPS - 1)]
    Group(String),
    /// Not a VTL in range.
    #[error("{0:?} is not a VTL: use 0..={MAX_VTL}")]
    Vtl(String),
}

impl FromStr for GroupSel {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" | "-" => Ok(GroupSel::Unassigned),
            _ => match s.parse::<u32>() {
                Ok(n) if n < MAX_GROUPS => Ok(GroupSel::Group(n)),
                _ => Err(FilterError::Group(s.to_string())),
            },
        }
    }
}

/// Parse a `--vtl` value (0..=15).
pub fn parse_vtl(s: &str) -> Result<u8, FilterError> {
    match s.parse::<u8>() {
        Ok(v) if v <= MAX_VTL => Ok(v),
        _ => Err(FilterError::Vtl(s.to_string())),
    }
}

/// Which vCPUs to show. Empty lists select everything; within a list any value matches,
/// across lists all must.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Keep vCPUs in one of these groups.
    pub groups: Vec<GroupSel>,
    /// Keep vCPUs with one of these VTL labels.
    pub vtls: Vec<u8>,
}

impl Filter {
    /// Whether the filter selects every vCPU.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.vtls.is_empty()
    }

    /// Whether `v` is selected.
    pub fn matches(&self, v: &VcpuInfo) -> bool {
        let group_ok = self.groups.is_empty()
            || self.groups.iter().any(|g| match (g, v.group) {
                (GroupSel::Unassigned, None) => true,
                (GroupSel::Group(n), Some(m)) => *n == m,
                _ => false,
            });
        group_ok && (self.vtls.is_empty() || self.vtls.contains(&v.vtl))
    }

    /// Keep the selected vCPUs; a VM left without any is dropped (unless the filter is empty:
    /// then a VM without vCPUs stays).
    pub fn apply(&self, vms: Vec<VmInfo>) -> Vec<VmInfo> {
        if self.is_empty() {
            return vms;
        }
        vms.into_iter()
            .filter_map(|mut vm| {
                vm.vcpus.retain(|v| self.matches(v));
                (!vm.vcpus.is_empty()).then_some(vm)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn vcpu(vcpu_id: u32, group: Option<u32>, vtl: u8) -> VcpuInfo {
        VcpuInfo {
            vcpu_id,
            vp_index: None,
            group,
            apic_id: vcpu_id,
            vtl,
            run_state: None,
            event_notify_target: None,
            stats: Default::default(),
            debugfs_stats: Default::default(),
        }
    }

    fn vm(name: &str, vcpus: Vec<VcpuInfo>) -> VmInfo {
        VmInfo {
            vm: name.into(),
            pid: 1,
            comm: None,
            vcpus,
            counters: BTreeMap::new(),
            vtl_prot_ranges: None,
        }
    }

    #[test]
    fn group_values() {
        assert_eq!("0".parse(), Ok(GroupSel::Group(0)));
        assert_eq!("15".parse(), Ok(GroupSel::Group(15)));
        assert_eq!("none".parse(), Ok(GroupSel::Unassigned));
        assert_eq!("-".parse(), Ok(GroupSel::Unassigned));
        let e = "16".parse::<GroupSel>().expect_err("16 is out of range");
        assert!(e.to_string().contains("\"16\""), "{e}");
        assert!("x".parse::<GroupSel>().is_err());
        assert!("-1".parse::<GroupSel>().is_err());
    }

    #[test]
    fn vtl_values() {
        assert_eq!(parse_vtl("15"), Ok(15));
        let e = parse_vtl("16").expect_err("16 is out of range");
        assert!(e.to_string().contains("\"16\"") && e.to_string().contains("0..=15"));
        assert!(parse_vtl("256").is_err());
    }

    #[test]
    fn apply_keeps_matching_vcpus_and_drops_empty_vms() {
        let vms = vec![
            vm(
                "1-1",
                vec![vcpu(0, Some(0), 0), vcpu(1, Some(1), 1), vcpu(2, None, 0)],
            ),
            vm("2-1", vec![vcpu(0, Some(0), 0)]),
            vm("3-1", vec![]),
        ];
        let ids = |f: &Filter| -> Vec<(String, Vec<u32>)> {
            f.apply(vms.clone())
                .into_iter()
                .map(|vm| (vm.vm, vm.vcpus.iter().map(|v| v.vcpu_id).collect()))
                .collect()
        };
        assert_eq!(ids(&Filter::default()).len(), 3);
        let f = Filter {
            groups: vec![GroupSel::Group(1)],
            vtls: vec![],
        };
        assert_eq!(ids(&f), [("1-1".to_string(), vec![1])]);
        let f = Filter {
            groups: vec![GroupSel::Unassigned, GroupSel::Group(0)],
            vtls: vec![0],
        };
        assert_eq!(
            ids(&f),
            [
                ("1-1".to_string(), vec![0, 2]),
                ("2-1".to_string(), vec![0])
            ]
        );
        let f = Filter {
            groups: vec![GroupSel::Group(0)],
            vtls: vec![1],
        };
        assert!(ids(&f).is_empty());
    }
}
