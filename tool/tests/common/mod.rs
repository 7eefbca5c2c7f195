// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Shared by the integration tests: fixtures materialised as debugfs trees, and running the
//! vtlctl binary on them.
//!
//! A fixture line is `<path relative to /sys/kernel/debug/kvm>: <file content>`.
#![allow(dead_code)] // each test crate uses its own part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEMO: &str = include_str!("../fixtures/demo-2x2.tree");
pub const NO_SERIES: &str = include_str!("../fixtures/no-series.tree");
/// `vtlctl demo --vps 2 --vtls 2` recorded on the series v4 kernel: each vCPU directory has
/// `run_state`, `event_notify_target` and `hv_vtl_exits`.
pub const DEMO_V4: &str = include_str!("../fixtures/demo-2x2-v4.tree");
/// `vtlctl demo --vps 2 --vtls 2` recorded on the series v5 kernel: also each vCPU's
/// `vtl_prot_faults` and the VM's `vtl_prot_faults` and `vtl_prot_ranges`.
pub const DEMO_V5: &str = include_str!("../fixtures/demo-2x2-v5.tree");

/// The VM (`<pid>-<fd>`) of a fixture.
pub fn vm_name(fixture: &str) -> String {
    fixture
        .lines()
        .next()
        .and_then(|l| l.split('/').next())
        .expect("fixture has a VM")
        .to_string()
}

/// Materialise a fixture under `<tmp>/kvm`, applying `edit(path, content) -> Option<content>`
/// (None drops the file).
pub fn tree(
    fixture: &str,
    edit: impl Fn(&str, &str) -> Option<String>,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("kvm");
    fs::create_dir_all(&root).expect("mkdir");
    for line in fixture.lines() {
        let (path, content) = line
            .split_once(": ")
            .unwrap_or((line.trim_end_matches(':'), ""));
        let Some(content) = edit(path, content) else {
            continue;
        };
        let p = root.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, format!("{content}\n")).expect("write");
    }
    (tmp, root)
}

pub fn keep(_: &str, c: &str) -> Option<String> {
    Some(c.to_string())
}

pub fn demo_vm_name() -> String {
    DEMO.lines()
        .next()
        .and_then(|l| l.split('/').next())
        .expect("fixture has a VM")
        .to_string()
}

pub fn vtlctl(args: &[&str], root: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vtlctl"))
        .arg("--debugfs")
        .arg(root)
        .args(args)
        .output()
        .expect("run vtlctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vtlctl --debugfs <root>`, to add arguments and I/O to.
pub fn vtlctl_cmd(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vtlctl"));
    c.arg("--debugfs").arg(root);
    c
}

/// The demo fixture with its VM renamed to `<pid>-4`, for a pid that surely exists on this
/// host (ours): a vtlctl that wrongly read the local /proc would find a comm for it.
pub fn demo_as_pid(pid: u32) -> String {
    let old = format!("{}/", demo_vm_name());
    let new = format!("{pid}-4/");
    DEMO.lines()
        .map(|l| l.replacen(&old, &new, 1) + "\n")
        .collect()
}
