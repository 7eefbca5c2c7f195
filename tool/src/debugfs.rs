// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Scanning KVM's debugfs for VMs, their vCPUs and the series' counters.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The series' counters `vtlctl` shows when the kernel has them (VM-wide debugfs files; vCPU
/// counters are summed over the VM's vCPUs by KVM).
pub const COUNTERS: &[&str] = &[
    "apic_group_irq_dropped",
    "hv_cross_vtl_exits",
    "hv_vtl_exits",
    "vtl_prot_faults",
];

/// Per-vCPU statistics KVM also shows in each vCPU's debugfs directory (series v4:
/// `vcpu<id>/hv_vtl_exits`; series v5: `vcpu<id>/vtl_prot_faults`), read from there in
/// preference to the VMM's stats fds.
pub const DEBUGFS_VCPU_STATS: &[&str] = &["hv_vtl_exits", "vtl_prot_faults"];

/// The VM's debugfs file with the number of protected ranges of each VTL label (series v5,
/// `KVM_SET_VTL_PROTECTION`): one line of [`VTL_LABELS`] decimal numbers, VTL 0 first.
pub const PROT_RANGES_FILE: &str = "vtl_prot_ranges";

/// The VTL labels KVM knows (0..=15).
pub const VTL_LABELS: usize = 16;

/// What a vCPU's debugfs `run_state` file can hold (series v4): in `KVM_RUN` and running or
/// halted, out of it and armed for `KVM_SET_EVENT_NOTIFY` (a parked VTL), or neither.
pub const RUN_STATES: &[&str] = &["running", "halted", "parked", "stopped"];

/// What a vCPU's debugfs `apic_group` file reads while the vCPU is not in any group
/// (`KVM_APIC_GROUP_NONE`).
pub const GROUP_NONE: u32 = u32::MAX;

/// The live debugfs directory of KVM, where `vtlctl` looks by default.
pub const DEFAULT_ROOT: &str = "/sys/kernel/debug/kvm";

/// `statfs(2)`'s `f_type` of a debugfs mount.
const DEBUGFS_MAGIC: libc::__fsword_t = 0x6462_6720;

/// One vCPU as KVM's debugfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VcpuInfo {
    /// KVM vcpu_id (from the directory name `vcpu<id>`).
    pub vcpu_id: u32,
    /// Hyper-V VP index, when the kernel exposes it.
    pub vp_index: Option<u32>,
    /// APIC group (interrupt namespace); `None` while the vCPU is not assigned to one yet
    /// (debugfs reads [`GROUP_NONE`]: a VM that opted in to APIC groups creates its vCPUs
    /// unassigned).
    pub group: Option<u32>,
    /// Guest-visible APIC ID.
    pub apic_id: u32,
    /// VTL label.
    pub vtl: u8,
    /// Run state from the vCPU's debugfs `run_state` (one of [`RUN_STATES`]); `None` when the
    /// kernel has no such file (before series v4).
    pub run_state: Option<String>,
    /// The vcpu_id this vCPU's event notification targets (debugfs `event_notify_target`);
    /// `None` when it is not armed (the file reads -1) or the file is absent.
    pub event_notify_target: Option<u32>,
    /// Per-vCPU statistics asked for (`vtlctl show`; see [`crate::vcpustats`]), `None` where
    /// they cannot be read; empty (and left out of JSON) when none were asked for.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, Option<u64>>,
    /// The [`DEBUGFS_VCPU_STATS`] this kernel shows in the vCPU's directory.
    #[serde(skip)]
    pub debugfs_stats: BTreeMap<String, u64>,
}

/// One VM as KVM's debugfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    /// `<pid>-<fd>`: KVM's name for the VM's debugfs directory.
    pub vm: String,
    /// Process that created the VM.
    pub pid: u32,
    /// That process's command name: from `/proc` on a live debugfs, from the tree's
    /// `proc/<pid>/comm` on a recorded one; `None` when it is not there.
    pub comm: Option<String>,
    /// The VM's vCPUs, by vcpu_id.
    pub vcpus: Vec<VcpuInfo>,
    /// The series' counters this kernel exposes (see [`COUNTERS`]).
    pub counters: BTreeMap<String, u64>,
    /// The number of ranges with restricted access of each VTL label, VTL 0 first (debugfs
    /// [`PROT_RANGES_FILE`], series v5); `None` on kernels without that file.
    pub vtl_prot_ranges: Option<Vec<u64>>,
}

/// Why the state could not be read. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// debugfs is not mounted.
    #[error(
        "debugfs is not mounted at {0}: mount it with `mount -t debugfs none /sys/kernel/debug`"
    )]
    NotMounted(PathBuf),
    /// debugfs is mounted but KVM has no directory there.
    #[error("{0} does not exist: KVM is not loaded (or not built in) on this kernel")]
    NoKvm(PathBuf),
    /// Not allowed to read.
    #[error("permission denied reading {0}: debugfs is readable by root only; run vtlctl as root")]
    Permission(PathBuf),
    /// The kernel does not have the vtlkit series.
    #[error("{0} has no apic_group file: this kernel does not carry the vtlkit series (check with `vtlctl caps`)")]
    NoSeries(PathBuf),
    /// A file held something that is not what KVM writes there.
    #[error("malformed {path}: {content:?} is not {expected}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it held (trimmed).
        content: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The named VM is not (or no longer) there.
    #[error("no VM {0} (it may have exited); `vtlctl ps` lists the VMs")]
    NoSuchVm(String),
    /// The VM went away while it was being read.
    #[error("VM {0} vanished while being read (its VMM exited or closed it)")]
    Vanished(String),
    /// Any other I/O error.
    #[error("reading {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path, e: io::Error) -> ScanError {
    if e.kind() == io::ErrorKind::PermissionDenied {
        ScanError::Permission(path.to_path_buf())
    } else {
        ScanError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Parse a VM directory name `<pid>-<fd>`; `None` for anything else.
pub fn parse_vm_dir(name: &str) -> Option<(u32, u32)> {
    let (pid, fd) = name.split_once('-')?;
    Some((pid.parse().ok()?, fd.parse().ok()?))
}

/// Parse a vCPU directory name `vcpu<id>`; `None` for anything else.
pub fn parse_vcpu_dir(name: &str) -> Option<u32> {
    name.strip_prefix("vcpu")?.parse().ok()
}

fn read_num<T: std::str::FromStr>(path: &Path, expected: &'static str) -> Result<T, ScanError> {
    let s = fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let t = s.trim();
    t.parse().map_err(|_| ScanError::Malformed {
        path: path.to_path_buf(),
        content: t.chars().take(40).collect(),
        expected,
    })
}

fn read_opt_num<T: std::str::FromStr>(
    path: &Path,
    expected: &'static str,
) -> Result<Option<T>, ScanError> {
    match read_num(path, expected) {
        Ok(v) => Ok(Some(v)),
        Err(ScanError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parse the content of a VM's [`PROT_RANGES_FILE`] (`path`, for errors): exactly
/// [`VTL_LABELS`] decimal counts separated by blanks.
pub fn parse_prot_ranges(path: &Path, content: &str) -> Result<Vec<u64>, ScanError> {
    let words: Vec<&str> = content.split_whitespace().collect();
    let mut counts = Vec::with_capacity(VTL_LABELS);
    for w in &words {
        counts.push(w.parse().map_err(|_| ScanError::Malformed {
            path: path.to_path_buf(),
            content: w.chars().take(40).collect(),
            expected: "a decimal count of protected ranges",
        })?);
    }
    if counts.len() != VTL_LABELS {
        return Err(ScanError::Malformed {
            path: path.to_path_buf(),
            content: content.trim().chars().take(80).collect(),
            expected: "16 counts of protected ranges (VTL 0 first)",
        });
    }
    Ok(counts)
}

fn read_prot_ranges(path: &Path) -> Result<Option<Vec<u64>>, ScanError> {
    match fs::read_to_string(path) {
        Ok(s) => parse_prot_ranges(path, &s).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

fn check_root(root: &Path) -> Result<(), ScanError> {
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(ScanError::Permission(root.to_path_buf()))
        }
        _ => {}
    }
    // Tell "debugfs missing" from "KVM missing": the parent of a real debugfs root is not empty.
    let parent = root.parent().unwrap_or(root);
    let mounted = match fs::read_dir(parent) {
        Ok(mut d) => d.next().is_some(),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(ScanError::Permission(parent.to_path_buf()))
        }
        Err(_) => false,
    };
    if mounted {
        Err(ScanError::NoKvm(root.to_path_buf()))
    } else {
        Err(ScanError::NotMounted(parent.to_path_buf()))
    }
}

fn read_vcpu(dir: &Path, vcpu_id: u32) -> Result<VcpuInfo, ScanError> {
    let group_file = dir.join("apic_group");
    let group = match read_num(&group_file, "a decimal APIC group") {
        Err(ScanError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            // Stock kernel, or the vCPU directory vanished: the caller tells them apart.
            return Err(ScanError::NoSeries(group_file));
        }
        r => r?,
    };
    let group = (group != GROUP_NONE).then_some(group);
    let vtl: u8 = read_num(&dir.join("vtl"), "a decimal VTL (0..15)")?;
    if vtl > 15 {
        return Err(ScanError::Malformed {
            path: dir.join("vtl"),
            content: vtl.to_string(),
            expected: "a VTL in 0..15",
        });
    }
    let state_file = dir.join("run_state");
    let run_state = match fs::read_to_string(&state_file) {
        Ok(s) => {
            let t = s.trim();
            if !RUN_STATES.contains(&t) {
                return Err(ScanError::Malformed {
                    path: state_file,
                    content: t.chars().take(40).collect(),
                    expected: "running, halted, parked or stopped",
                });
            }
            Some(t.to_string())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&state_file, e)),
    };
    let target: Option<i64> =
        read_opt_num(&dir.join("event_notify_target"), "a decimal vcpu_id or -1")?;
    let event_notify_target = match target {
        None | Some(-1) => None,
        Some(t) => Some(u32::try_from(t).map_err(|_| ScanError::Malformed {
            path: dir.join("event_notify_target"),
            content: t.to_string(),
            expected: "a vcpu_id or -1",
        })?),
    };
    let mut debugfs_stats = BTreeMap::new();
    for name in DEBUGFS_VCPU_STATS {
        if let Some(v) = read_opt_num::<u64>(&dir.join(name), "a decimal counter")? {
            debugfs_stats.insert(name.to_string(), v);
        }
    }
    Ok(VcpuInfo {
        vcpu_id,
        vp_index: read_opt_num(&dir.join("hv_vp_index"), "a decimal VP index")?,
        group,
        apic_id: read_num(&dir.join("apic_id"), "a decimal APIC ID")?,
        vtl,
        run_state,
        event_notify_target,
        stats: BTreeMap::new(),
        debugfs_stats,
    })
}

/// Whether `root` is KVM's directory in a mounted debugfs (as opposed to a tree recorded
/// elsewhere, e.g. the test fixtures).
pub fn is_live_debugfs(root: &Path) -> bool {
    if root == Path::new(DEFAULT_ROOT) {
        return true;
    }
    let Ok(c) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a live, exclusively borrowed statfs.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type == DEBUGFS_MAGIC
}

/// Where the `<pid>/comm` files for the VMs under `root` are: `/proc` for a live debugfs,
/// `<root>/proc` for a recorded tree (scripts/guest/record-debugfs.sh stores them there; trees
/// recorded before that have none, and their VMs' comm is `None`).
pub fn comm_root(root: &Path) -> PathBuf {
    if is_live_debugfs(root) {
        PathBuf::from("/proc")
    } else {
        root.join("proc")
    }
}

fn read_comm(comm_root: &Path, pid: u32) -> Option<String> {
    fs::read_to_string(comm_root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Read one VM directory, with the comm from [`comm_root`]. A VM whose directory disappears
/// midway is [`ScanError::Vanished`].
pub fn scan_vm(root: &Path, vm: &str) -> Result<VmInfo, ScanError> {
    scan_vm_in(root, &comm_root(root), vm)
}

/// [`scan_vm`] with the comm read from `<comm_root>/<pid>/comm`.
pub fn scan_vm_in(root: &Path, comm_root: &Path, vm: &str) -> Result<VmInfo, ScanError> {
    check_root(root)?;
    let (pid, _) = parse_vm_dir(vm).ok_or_else(|| ScanError::NoSuchVm(vm.to_string()))?;
    let dir = root.join(vm);
    if !dir.is_dir() {
        return Err(ScanError::NoSuchVm(vm.to_string()));
    }
    let vanished = |e: ScanError| -> ScanError {
        if dir.is_dir() {
            e
        } else {
            ScanError::Vanished(vm.to_string())
        }
    };
    let entries = fs::read_dir(&dir).map_err(|e| vanished(io_err(&dir, e)))?;
    let mut vcpus = Vec::new();
    let mut counters = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| vanished(io_err(&dir, e)))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = parse_vcpu_dir(&name) {
            vcpus.push(read_vcpu(&entry.path(), id).map_err(vanished)?);
        } else if COUNTERS.contains(&name.as_str()) {
            let v: u64 = read_num(&entry.path(), "a decimal counter").map_err(vanished)?;
            counters.insert(name, v);
        }
    }
    vcpus.sort_by_key(|v| v.vcpu_id);
    let vtl_prot_ranges = read_prot_ranges(&dir.join(PROT_RANGES_FILE)).map_err(vanished)?;
    let comm = read_comm(comm_root, pid);
    Ok(VmInfo {
        vm: vm.to_string(),
        pid,
        comm,
        vcpus,
        counters,
        vtl_prot_ranges,
    })
}

/// Read every VM under `root` (normally `/sys/kernel/debug/kvm`), sorted by pid and fd.
/// VMs that exit while being read are left out and named in the second list.
pub fn scan(root: &Path) -> Result<(Vec<VmInfo>, Vec<String>), ScanError> {
    scan_in(root, &comm_root(root))
}

/// [`scan`] with the comm read from `<comm_root>/<pid>/comm`.
pub fn scan_in(root: &Path, comm_root: &Path) -> Result<(Vec<VmInfo>, Vec<String>), ScanError> {
    check_root(root)?;
    let mut names: Vec<(u32, u32, String)> = fs::read_dir(root)
        .map_err(|e| io_err(root, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            parse_vm_dir(&name).map(|(p, f)| (p, f, name))
        })
        .collect();
    names.sort();
    let mut vms = Vec::new();
    let mut gone = Vec::new();
    for (_, _, name) in names {
        match scan_vm_in(root, comm_root, &name) {
            Ok(vm) => vms.push(vm),
            Err(ScanError::Vanished(n)) | Err(ScanError::NoSuchVm(n)) => gone.push(n),
            Err(e) => return Err(e),
        }
    }
    Ok((vms, gone))
}
