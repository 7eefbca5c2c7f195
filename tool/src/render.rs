// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Human-readable tables and the JSON document `vtlctl --json` prints.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::debugfs::VmInfo;

/// Version of the JSON documents; bumped on any incompatible change.
pub const JSON_SCHEMA: u32 = 1;

/// `vtlctl ps --json` / `vtlctl show --json`.
#[derive(Debug, Serialize)]
pub struct VmsDoc<'a> {
    /// [`JSON_SCHEMA`].
    pub schema: u32,
    /// The VMs.
    pub vms: &'a [VmInfo],
    /// VMs that exited while being read.
    pub vanished: &'a [String],
}

/// A left-aligned text table whose columns fit their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn set_summary<T: Ord + ToString>(it: impl Iterator<Item = T>) -> String {
    let s: BTreeSet<T> = it.collect();
    if s.is_empty() {
        return "-".into();
    }
    s.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn counters_summary(vm: &VmInfo) -> String {
    if vm.counters.is_empty() {
        return "-".into();
    }
    vm.counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `vtlctl ps`: one line per VM.
pub fn ps_table(vms: &[VmInfo]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            vec![
                vm.vm.clone(),
                vm.pid.to_string(),
                opt(vm.comm.clone()),
                vm.vcpus.len().to_string(),
                set_summary(vm.vcpus.iter().map(|v| v.group)),
                set_summary(vm.vcpus.iter().map(|v| v.vtl)),
                counters_summary(vm),
            ]
        })
        .collect();
    table(
        &["VM", "PID", "COMM", "VCPUS", "GROUPS", "VTLS", "COUNTERS"],
        &rows,
    )
}

/// `vtlctl show`: one line per vCPU, VMs one after the other.
pub fn show_table(vms: &[VmInfo]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .flat_map(|vm| {
            vm.vcpus.iter().map(move |v| {
                vec![
                    vm.vm.clone(),
                    v.vcpu_id.to_string(),
                    opt(v.vp_index),
                    v.group.to_string(),
                    v.apic_id.to_string(),
                    v.vtl.to_string(),
                ]
            })
        })
        .collect();
    let mut out = table(&["VM", "VCPU", "VP", "GROUP", "APIC_ID", "VTL"], &rows);
    for vm in vms.iter().filter(|vm| !vm.counters.is_empty()) {
        out += &format!("{}: {}\n", vm.vm, counters_summary(vm));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::debugfs::VcpuInfo;

    fn vm() -> VmInfo {
        VmInfo {
            vm: "42-11".into(),
            pid: 42,
            comm: Some("vmm".into()),
            vcpus: vec![
                VcpuInfo {
                    vcpu_id: 0,
                    vp_index: Some(0),
                    group: 0,
                    apic_id: 0,
                    vtl: 0,
                },
                VcpuInfo {
                    vcpu_id: 10,
                    vp_index: None,
                    group: 1,
                    apic_id: 0,
                    vtl: 1,
                },
            ],
            counters: BTreeMap::from([("apic_group_irq_dropped".to_string(), 3)]),
        }
    }

    #[test]
    fn table_columns_align() {
        let t = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y\n");
    }

    #[test]
    fn show_lists_every_vcpu_and_counters() {
        let t = show_table(&[vm()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "VM     VCPU  VP  GROUP  APIC_ID  VTL");
        assert_eq!(lines[1], "42-11  0     0   0      0        0");
        assert_eq!(lines[2], "42-11  10    -   1      0        1");
        assert_eq!(lines[3], "42-11: apic_group_irq_dropped=3");
    }

    #[test]
    fn ps_summarises_groups_and_vtls() {
        let t = ps_table(&[vm()]);
        assert!(t.lines().nth(1).is_some_and(|l| l.split_whitespace().eq([
            "42-11",
            "42",
            "vmm",
            "2",
            "0,1",
            "0,1",
            "apic_group_irq_dropped=3"
        ])));
    }

    #[test]
    fn json_document_shape() {
        let vms = [vm()];
        let doc = VmsDoc {
            schema: JSON_SCHEMA,
            vms: &vms,
            vanished: &[],
        };
        let v: serde_json::Value = serde_json::to_value(&doc).expect("serialize");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["vms"][0]["vm"], "42-11");
        assert_eq!(v["vms"][0]["vcpus"][1]["vcpu_id"], 10);
        assert_eq!(v["vms"][0]["vcpus"][1]["vp_index"], serde_json::Value::Null);
        assert_eq!(v["vms"][0]["vcpus"][1]["group"], 1);
        assert_eq!(v["vms"][0]["vcpus"][1]["vtl"], 1);
        assert_eq!(v["vms"][0]["counters"]["apic_group_irq_dropped"], 3);
    }
}
