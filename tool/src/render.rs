// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Human-readable tables and the JSON document `vtlctl --json` prints.

use std::collections::{BTreeMap, BTreeSet};

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

/// The groups of a VM's vCPUs, e.g. `0,1`; `-` stands for unassigned vCPUs (listed last).
fn groups_summary(vm: &VmInfo) -> String {
    let mut s = set_summary(vm.vcpus.iter().filter_map(|v| v.group));
    if vm.vcpus.iter().any(|v| v.group.is_none()) {
        if s == "-" {
            return s;
        }
        s += ",-";
    }
    s
}

/// Counter values of a previous sample, by VM name and counter name (`vtlctl ... --watch`).
pub type Sample = BTreeMap<String, BTreeMap<String, u64>>;

/// The counters of `vms`, to pass as the previous sample of the next frame.
pub fn sample(vms: &[VmInfo]) -> Sample {
    vms.iter()
        .map(|vm| (vm.vm.clone(), vm.counters.clone()))
        .collect()
}

/// `name=value` for each counter; with a previous sample that has the VM, each followed by
/// its change since then: `(+3)`, or `(reset)` if it went down.
fn counters_summary(vm: &VmInfo, prev: Option<&Sample>) -> String {
    if vm.counters.is_empty() {
        return "-".into();
    }
    let before = prev.and_then(|p| p.get(&vm.vm));
    vm.counters
        .iter()
        .map(|(k, v)| match before.and_then(|b| b.get(k)) {
            Some(old) => match v.checked_sub(*old) {
                Some(d) => format!("{k}={v} (+{d})"),
                None => format!("{k}={v} (reset)"),
            },
            None => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The protected ranges of a VM per VTL label (debugfs `vtl_prot_ranges`): `<vtl>:<count>`
/// for each VTL that has any, e.g. `0:3,2:1`; `none` when no VTL has one, `-` when the kernel
/// has no such file (before series v5).
pub fn prot_ranges_summary(vm: &VmInfo) -> String {
    let Some(counts) = &vm.vtl_prot_ranges else {
        return "-".into();
    };
    let s: Vec<String> = counts
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(vtl, n)| format!("{vtl}:{n}"))
        .collect();
    if s.is_empty() {
        "none".into()
    } else {
        s.join(",")
    }
}

/// `<vm>: <counters> vtl_prot_ranges=<per VTL>` lines for the VMs that have counters or the
/// protected-ranges file (the latter left out on kernels without it).
fn counter_lines(vms: &[VmInfo], prev: Option<&Sample>) -> String {
    vms.iter()
        .filter(|vm| !vm.counters.is_empty() || vm.vtl_prot_ranges.is_some())
        .map(|vm| {
            let mut parts = Vec::new();
            if !vm.counters.is_empty() {
                parts.push(counters_summary(vm, prev));
            }
            if vm.vtl_prot_ranges.is_some() {
                parts.push(format!("vtl_prot_ranges={}", prot_ranges_summary(vm)));
            }
            format!("{}: {}\n", vm.vm, parts.join(" "))
        })
        .collect()
}

/// `vtlctl ps`: one line per VM; PROT_RANGES is [`prot_ranges_summary`].
pub fn ps_table(vms: &[VmInfo]) -> String {
    ps_table_with(vms, None)
}

/// [`ps_table`] with counter changes since `prev`.
pub fn ps_table_with(vms: &[VmInfo], prev: Option<&Sample>) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            vec![
                vm.vm.clone(),
                vm.pid.to_string(),
                opt(vm.comm.clone()),
                vm.vcpus.len().to_string(),
                groups_summary(vm),
                set_summary(vm.vcpus.iter().map(|v| v.vtl)),
                prot_ranges_summary(vm),
                counters_summary(vm, prev),
            ]
        })
        .collect();
    table(
        &[
            "VM",
            "PID",
            "COMM",
            "VCPUS",
            "GROUPS",
            "VTLS",
            "PROT_RANGES",
            "COUNTERS",
        ],
        &rows,
    )
}

/// `vtlctl show`: one line per vCPU, VMs one after the other.
pub fn show_table(vms: &[VmInfo]) -> String {
    show_table_with(vms, None)
}

/// [`show_table`] with counter changes since `prev`.
pub fn show_table_with(vms: &[VmInfo], prev: Option<&Sample>) -> String {
    show_table_stats(vms, prev, &[])
}

/// STATE is the vCPU's debugfs `run_state` (running, halted, parked, stopped), NOTIFY the
/// vcpu_id its armed event notification targets; `-` when not armed or the kernel has no such
/// file.
/// [`show_table_with`] plus one column per per-vCPU statistic in `stats` (header: the name in
/// upper case), `-` where a vCPU's value could not be read.
pub fn show_table_stats(vms: &[VmInfo], prev: Option<&Sample>, stats: &[String]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .flat_map(|vm| {
            vm.vcpus.iter().map(move |v| {
                let mut row = vec![
                    vm.vm.clone(),
                    v.vcpu_id.to_string(),
                    opt(v.vp_index),
                    opt(v.group),
                    v.apic_id.to_string(),
                    v.vtl.to_string(),
                    opt(v.run_state.clone()),
                    opt(v.event_notify_target),
                ];
                row.extend(stats.iter().map(|n| opt(v.stats.get(n).copied().flatten())));
                row
            })
        })
        .collect();
    let mut header: Vec<String> = [
        "VM", "VCPU", "VP", "GROUP", "APIC_ID", "VTL", "STATE", "NOTIFY",
    ]
    .map(String::from)
    .to_vec();
    header.extend(stats.iter().map(|n| n.to_uppercase()));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&header, &rows) + &counter_lines(vms, prev)
}

/// One vCPU in a [`VpRow`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VpCell {
    /// KVM vcpu_id.
    pub vcpu_id: u32,
    /// APIC group; `None` while unassigned.
    pub group: Option<u32>,
    /// Run state (debugfs `run_state`); `None` when the kernel has no such file.
    pub run_state: Option<String>,
}

/// One virtual processor: the vCPUs of a VM that share a Hyper-V VP index and an APIC ID
/// (VTL siblings), by VTL label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VpRow {
    /// The VM (`<pid>-<fd>`).
    pub vm: String,
    /// Hyper-V VP index, when the kernel exposes it.
    pub vp_index: Option<u32>,
    /// Guest-visible APIC ID.
    pub apic_id: u32,
    /// VTL label -> the vCPUs at that VTL (normally one; more if several vCPUs claim the same
    /// VP, APIC ID and VTL, e.g. unassigned vCPUs).
    pub vtls: BTreeMap<u8, Vec<VpCell>>,
}

/// Group each VM's vCPUs into VPs: rows by VM, then VP index, then APIC ID.
pub fn vp_rows(vms: &[VmInfo]) -> Vec<VpRow> {
    let mut rows = Vec::new();
    for vm in vms {
        let mut by_vp: BTreeMap<(Option<u32>, u32), BTreeMap<u8, Vec<VpCell>>> = BTreeMap::new();
        for v in &vm.vcpus {
            by_vp
                .entry((v.vp_index, v.apic_id))
                .or_default()
                .entry(v.vtl)
                .or_default()
                .push(VpCell {
                    vcpu_id: v.vcpu_id,
                    group: v.group,
                    run_state: v.run_state.clone(),
                });
        }
        rows.extend(by_vp.into_iter().map(|((vp_index, apic_id), vtls)| VpRow {
            vm: vm.vm.clone(),
            vp_index,
            apic_id,
            vtls,
        }));
    }
    rows
}

/// `vtlctl vps`: one line per VP, one column per VTL present, each cell
/// `vcpu<id>/g<group>/<run state>` (`g-`: unassigned; state `-`: the kernel has no
/// `run_state`), `-` where the VP has no vCPU at that VTL.
pub fn vps_table(vms: &[VmInfo]) -> String {
    vps_table_with(vms, None)
}

/// [`vps_table`] with counter changes since `prev`.
pub fn vps_table_with(vms: &[VmInfo], prev: Option<&Sample>) -> String {
    let rows = vp_rows(vms);
    let vtls: BTreeSet<u8> = rows.iter().flat_map(|r| r.vtls.keys().copied()).collect();
    let mut header: Vec<String> = ["VM", "VP", "APIC_ID"].map(String::from).to_vec();
    header.extend(vtls.iter().map(|v| format!("VTL{v}")));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut line = vec![r.vm.clone(), opt(r.vp_index), r.apic_id.to_string()];
            line.extend(vtls.iter().map(|vtl| {
                match r.vtls.get(vtl) {
                    Some(c) => c
                        .iter()
                        .map(|c| {
                            format!(
                                "vcpu{}/g{}/{}",
                                c.vcpu_id,
                                opt(c.group),
                                opt(c.run_state.clone())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    None => "-".into(),
                }
            }));
            line
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&header, &cells) + &counter_lines(vms, prev)
}

/// `vtlctl vps --json`.
#[derive(Debug, Serialize)]
pub struct VpsDoc<'a> {
    /// [`JSON_SCHEMA`].
    pub schema: u32,
    /// The VPs of every VM shown.
    pub vps: &'a [VpRow],
    /// VMs that exited while being read.
    pub vanished: &'a [String],
}

#[cfg(test)]
mod tests {
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
                    group: Some(0),
                    apic_id: 0,
                    vtl: 0,
                    run_state: None,
                    event_notify_target: None,
                    stats: Default::default(),
                    debugfs_stats: Default::default(),
                },
                VcpuInfo {
                    vcpu_id: 10,
                    vp_index: None,
                    group: Some(1),
                    apic_id: 0,
                    vtl: 1,
                    run_state: None,
                    event_notify_target: None,
                    stats: Default::default(),
                    debugfs_stats: Default::default(),
                },
            ],
            counters: BTreeMap::from([("apic_group_irq_dropped".to_string(), 3)]),
            vtl_prot_ranges: None,
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
        assert_eq!(
            lines[0],
            "VM     VCPU  VP  GROUP  APIC_ID  VTL  STATE  NOTIFY"
        );
        assert_eq!(lines[1], "42-11  0     0   0      0        0    -      -");
        assert_eq!(lines[2], "42-11  10    -   1      0        1    -      -");
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
            "-",
            "apic_group_irq_dropped=3"
        ])));
    }

    #[test]
    fn protected_ranges_per_vtl() {
        let mut v = vm();
        assert_eq!(prot_ranges_summary(&v), "-");
        // Before series v5 the VM line is what it was.
        assert_eq!(
            show_table(&[v.clone()]).lines().last(),
            Some("42-11: apic_group_irq_dropped=3")
        );
        v.vtl_prot_ranges = Some(vec![0; 16]);
        assert_eq!(prot_ranges_summary(&v), "none");
        v.vtl_prot_ranges = Some((0..16).map(|i| [3, 0, 1][i % 3]).collect());
        assert_eq!(
            prot_ranges_summary(&v),
            "0:3,2:1,3:3,5:1,6:3,8:1,9:3,11:1,12:3,14:1,15:3"
        );
        v.vtl_prot_ranges = Some([vec![2, 0, 7], vec![0; 13]].concat());
        assert_eq!(prot_ranges_summary(&v), "0:2,2:7");
        let t = show_table(&[v.clone()]);
        assert_eq!(
            t.lines().last(),
            Some("42-11: apic_group_irq_dropped=3 vtl_prot_ranges=0:2,2:7")
        );
        assert!(vps_table(&[v.clone()]).ends_with("vtl_prot_ranges=0:2,2:7\n"));
        let t = ps_table(&[v.clone()]);
        assert_eq!(
            t.lines().next().map(|l| l.split_whitespace().nth(6)),
            Some(Some("PROT_RANGES"))
        );
        assert_eq!(
            t.lines().nth(1).map(|l| l.split_whitespace().nth(6)),
            Some(Some("0:2,2:7"))
        );
        // A VM without counters still gets its line.
        v.counters.clear();
        assert!(show_table(&[v.clone()]).ends_with("42-11: vtl_prot_ranges=0:2,2:7\n"));
        let j: serde_json::Value = serde_json::to_value(VmsDoc {
            schema: JSON_SCHEMA,
            vms: &[v],
            vanished: &[],
        })
        .expect("serialize");
        assert_eq!(j["vms"][0]["vtl_prot_ranges"][2], 7);
        assert_eq!(
            j["vms"][0]["vtl_prot_ranges"].as_array().map(Vec::len),
            Some(16)
        );
        let j: serde_json::Value = serde_json::to_value(VmsDoc {
            schema: JSON_SCHEMA,
            vms: &[vm()],
            vanished: &[],
        })
        .expect("serialize");
        assert_eq!(j["vms"][0]["vtl_prot_ranges"], serde_json::Value::Null);
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
        assert_eq!(
            v["vms"][0]["vcpus"][1]["run_state"],
            serde_json::Value::Null
        );
        assert_eq!(
            v["vms"][0]["vcpus"][1]["event_notify_target"],
            serde_json::Value::Null
        );
        assert!(v["vms"][0]["vcpus"][1].get("debugfs_stats").is_none());
        assert_eq!(v["vms"][0]["counters"]["apic_group_irq_dropped"], 3);
    }

    /// A 2 VP x 2 VTL VM (as `vtlctl demo` builds it) plus an unassigned vCPU.
    fn siblings() -> VmInfo {
        let v = |vcpu_id, vp: u32, group: Option<u32>, vtl| VcpuInfo {
            vcpu_id,
            vp_index: Some(vp),
            group,
            apic_id: vp,
            vtl,
            run_state: None,
            event_notify_target: None,
            stats: Default::default(),
            debugfs_stats: Default::default(),
        };
        let mut vm = VmInfo {
            vm: "7-3".into(),
            pid: 7,
            comm: None,
            vcpus: vec![
                v(0, 0, Some(0), 0),
                v(1, 1, Some(0), 0),
                v(2, 0, Some(1), 1),
                v(3, 1, Some(1), 1),
                VcpuInfo {
                    vcpu_id: 4,
                    vp_index: Some(4),
                    group: None,
                    apic_id: 4,
                    vtl: 0,
                    run_state: None,
                    event_notify_target: None,
                    stats: Default::default(),
                    debugfs_stats: Default::default(),
                },
            ],
            counters: BTreeMap::from([("apic_group_irq_dropped".to_string(), 5)]),
            vtl_prot_ranges: None,
        };
        // VTL0s run (VP 1's halted), VTL1s parked and armed for their VTL0; vCPU 4 as on a
        // kernel without run_state.
        for (i, state, target) in [
            (0, "running", None),
            (1, "halted", None),
            (2, "parked", Some(0)),
            (3, "parked", Some(1)),
        ] {
            vm.vcpus[i].run_state = Some(state.into());
            vm.vcpus[i].event_notify_target = target;
        }
        vm
    }

    #[test]
    fn unassigned_group_is_a_dash() {
        let t = show_table(&[siblings()]);
        assert_eq!(
            t.lines().nth(5),
            Some("7-3  4     4   -      4        0    -        -")
        );
        assert_eq!(
            t.lines().nth(3),
            Some("7-3  2     0   1      0        1    parked   0")
        );
        let t = ps_table(&[siblings()]);
        assert!(
            t.lines().nth(1).is_some_and(|l| l.contains(" 0,1,- ")),
            "{t}"
        );
        let mut all_unassigned = siblings();
        all_unassigned.vcpus.retain(|v| v.group.is_none());
        assert!(ps_table(&[all_unassigned])
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(4) == Some("-")));
        let v: serde_json::Value = serde_json::to_value(VmsDoc {
            schema: JSON_SCHEMA,
            vms: &[siblings()],
            vanished: &[],
        })
        .expect("serialize");
        assert_eq!(v["vms"][0]["vcpus"][4]["group"], serde_json::Value::Null);
        assert_eq!(v["vms"][0]["vcpus"][3]["group"], 1);
    }

    #[test]
    fn vps_puts_vtl_siblings_side_by_side() {
        let t = vps_table(&[siblings()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "VM   VP  APIC_ID  VTL0              VTL1");
        assert_eq!(
            lines[1],
            "7-3  0   0        vcpu0/g0/running  vcpu2/g1/parked"
        );
        assert_eq!(
            lines[2],
            "7-3  1   1        vcpu1/g0/halted   vcpu3/g1/parked"
        );
        assert_eq!(lines[3], "7-3  4   4        vcpu4/g-/-        -");
        assert_eq!(lines[4], "7-3: apic_group_irq_dropped=5");
        assert_eq!(lines.len(), 5);
        let rows = vp_rows(&[siblings()]);
        let v: serde_json::Value = serde_json::to_value(VpsDoc {
            schema: JSON_SCHEMA,
            vps: &rows,
            vanished: &[],
        })
        .expect("serialize");
        assert_eq!(v["vps"][0]["vm"], "7-3");
        assert_eq!(v["vps"][0]["apic_id"], 0);
        assert_eq!(v["vps"][0]["vtls"]["1"][0]["vcpu_id"], 2);
        assert_eq!(v["vps"][0]["vtls"]["1"][0]["group"], 1);
        assert_eq!(v["vps"][0]["vtls"]["1"][0]["run_state"], "parked");
        assert_eq!(
            v["vps"][2]["vtls"]["0"][0]["run_state"],
            serde_json::Value::Null
        );
        assert_eq!(
            v["vps"][2]["vtls"]["0"][0]["group"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn vps_lists_vcpus_that_claim_the_same_vp_and_vtl() {
        let mut vm = siblings();
        vm.vcpus[4].apic_id = 0;
        vm.vcpus[4].vp_index = Some(0);
        let t = vps_table(&[vm]);
        assert_eq!(
            t.lines().nth(1),
            Some("7-3  0   0        vcpu0/g0/running,vcpu4/g-/-  vcpu2/g1/parked")
        );
    }

    #[test]
    fn per_vcpu_stats_are_columns_and_json_fields() {
        let mut vm = siblings();
        let names = ["hv_vtl_exits".to_string(), "io_exits".to_string()];
        for v in &mut vm.vcpus {
            v.stats = names.iter().map(|n| (n.clone(), None)).collect();
        }
        vm.vcpus[0].stats.insert("hv_vtl_exits".into(), Some(7));
        vm.vcpus[0].stats.insert("io_exits".into(), Some(120));
        vm.vcpus[2].stats.insert("hv_vtl_exits".into(), Some(0));
        let t = show_table_stats(&[vm.clone()], None, &names);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "VM   VCPU  VP  GROUP  APIC_ID  VTL  STATE    NOTIFY  HV_VTL_EXITS  IO_EXITS"
        );
        assert_eq!(
            lines[1],
            "7-3  0     0   0      0        0    running  -       7             120"
        );
        assert_eq!(
            lines[2],
            "7-3  1     1   0      1        0    halted   -       -             -"
        );
        assert_eq!(
            lines[3],
            "7-3  2     0   1      0        1    parked   0       0             -"
        );
        assert_eq!(lines[6], "7-3: apic_group_irq_dropped=5");
        // Without names the table is what it was.
        assert_eq!(
            show_table_stats(&[vm.clone()], None, &[]),
            show_table(&[vm.clone()])
        );
        let v: serde_json::Value = serde_json::to_value(VmsDoc {
            schema: JSON_SCHEMA,
            vms: &[vm],
            vanished: &[],
        })
        .expect("serialize");
        assert_eq!(v["vms"][0]["vcpus"][0]["stats"]["hv_vtl_exits"], 7);
        assert_eq!(v["vms"][0]["vcpus"][0]["stats"]["io_exits"], 120);
        assert_eq!(
            v["vms"][0]["vcpus"][1]["stats"]["hv_vtl_exits"],
            serde_json::Value::Null
        );
        assert_eq!(v["vms"][0]["vcpus"][2]["stats"]["hv_vtl_exits"], 0);
        // Not asked for: no "stats" key at all (ps --json, vps).
        let plain: serde_json::Value = serde_json::to_value(VmsDoc {
            schema: JSON_SCHEMA,
            vms: &[siblings()],
            vanished: &[],
        })
        .expect("serialize");
        assert!(plain["vms"][0]["vcpus"][0].get("stats").is_none());
    }

    #[test]
    fn counter_deltas_against_the_previous_sample() {
        let now = [siblings()];
        let mut before = sample(&now);
        assert!(show_table_with(&now, Some(&before)).contains("7-3: apic_group_irq_dropped=5 (+0)"));
        before
            .get_mut("7-3")
            .and_then(|c| c.get_mut("apic_group_irq_dropped"))
            .map(|c| *c = 2)
            .expect("counter");
        assert!(show_table_with(&now, Some(&before)).contains("7-3: apic_group_irq_dropped=5 (+3)"));
        assert!(ps_table_with(&now, Some(&before)).contains("=5 (+3)"));
        assert!(vps_table_with(&now, Some(&before)).contains("=5 (+3)"));
        before
            .get_mut("7-3")
            .and_then(|c| c.get_mut("apic_group_irq_dropped"))
            .map(|c| *c = 9)
            .expect("counter");
        assert!(show_table_with(&now, Some(&before)).contains("=5 (reset)"));
        // A VM that was not in the previous sample has no delta.
        assert!(
            show_table_with(&now, Some(&Sample::new())).contains("7-3: apic_group_irq_dropped=5\n")
        );
    }
}
