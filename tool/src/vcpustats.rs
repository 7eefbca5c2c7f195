// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Per-vCPU statistics of another process's VM, from KVM's binary statistics
//! (`KVM_GET_STATS_FD`, Documentation/virt/kvm/api.rst 4.133).
//!
//! KVM's debugfs has only VM-wide sums of the vCPU statistics. The per-vCPU values are in a
//! vCPU's stats file, which only the VM's own process can open: `KVM_GET_STATS_FD` is a vCPU
//! ioctl, and KVM fails every vCPU ioctl from a process other than the VM's with `EIO`
//! (`kvm->mm != current->mm`), even on a duplicate of the vCPU fd. Reading an open stats file
//! has no such check. So `vtlctl`, as root, takes the stats fds the VMM keeps open:
//!
//! 1. `/proc/<pid>/fd/*` links to `anon_inode:kvm-vcpu-stats:<vcpu id>` are the VMM's stats
//!    fds (`anon_inode:kvm-vcpu:<vcpu id>` its vCPU fds).
//! 2. `pidfd_open(pid)` + `pidfd_getfd(pidfd, fd)` (Linux 5.6+; ptrace access to the VMM, i.e.
//!    root) duplicate one into this process; [`read_stats_file`] reads it and [`parse`] decodes
//!    it. Its id string, `kvm-<tid>/vcpu-<vcpu id>`, names the vCPU (and the thread that
//!    created it).
//! 3. For a vCPU the VMM holds no stats fd of, `KVM_GET_STATS_FD` is tried on a duplicate of
//!    its vCPU fd (a kernel without the `mm` check would answer); the `EIO` is what
//!    [`Unavailable::NoStatsFd`] reports.
//!
//! Neither the fd link nor the id string names the VM: a process that created (or holds) several
//! VMs is [`Unavailable::Ambiguous`]. Several `kvm-vm` fds that are dup()s of one VM fd are one
//! VM ([`distinct_files`], kcmp(2); a kernel without `CONFIG_KCMP` cannot tell, and they count
//! as several). KVM names the debugfs directory after the *thread* that
//! created the VM; its process's fds are read.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The stats file decoder is the uapi crate's ([`vtlkit_uapi::stats`]).
pub use vtlkit_uapi::stats::{
    get_stats_fd, parse, parse_vcpu_id_string, read_stats_file, ParseError, Stat, StatKind, Stats,
    DESC_SIZE, HEADER_SIZE,
};

/// What a `/proc/<pid>/fd/N` link says the fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFd {
    /// A VM fd (`anon_inode:kvm-vm`).
    Vm,
    /// A vCPU fd (`anon_inode:kvm-vcpu:<vcpu id>`).
    Vcpu(u32),
    /// A vCPU stats fd (`anon_inode:kvm-vcpu-stats:<vcpu id>`; kernels before 6.1 write no
    /// id, and the stats' own id string then tells).
    VcpuStats(Option<u32>),
}

/// Classify the target of a `/proc/<pid>/fd/N` link; `None` if it is no KVM VM or vCPU fd.
pub fn classify_fd_link(link: &str) -> Option<KvmFd> {
    let name = link.strip_prefix("anon_inode:")?;
    if name == "kvm-vm" {
        return Some(KvmFd::Vm);
    }
    if name == "kvm-vcpu-stats" {
        return Some(KvmFd::VcpuStats(None));
    }
    if let Some(id) = name.strip_prefix("kvm-vcpu-stats:") {
        return id.parse().ok().map(|id| KvmFd::VcpuStats(Some(id)));
    }
    name.strip_prefix("kvm-vcpu:")?
        .parse()
        .ok()
        .map(KvmFd::Vcpu)
}

/// Why the per-vCPU statistics of a VM (or of one vCPU) cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// `--debugfs` names a recorded tree: there is no VMM to read from.
    #[error("{0} is not a live debugfs (per-vCPU statistics come from the running VMM)")]
    NotLive(PathBuf),
    /// No pidfd_open / pidfd_getfd.
    #[error("this kernel has no pidfd_getfd (Linux 5.6 or later is needed)")]
    NoPidfd,
    /// Not allowed to look at or take the VMM's fds.
    #[error("not allowed to take file descriptors from process {0} (needs root: ptrace access to the VMM)")]
    Permission(u32),
    /// The VMM exited.
    #[error("process {0} exited")]
    VmmGone(u32),
    /// The process created more than one VM: its fds do not say which VM they belong to.
    #[error(
        "process {pid} created {vms} VMs, and KVM's fds do not say which VM a vCPU belongs to"
    )]
    Ambiguous {
        /// The VMM.
        pid: u32,
        /// How many VMs it created (its `<pid>-<fd>` debugfs directories).
        vms: usize,
    },
    /// The VMM holds no stats fd for the vCPU, and KVM refuses to make one for another
    /// process. (Like the other per-vCPU reasons, the message does not name the vCPU: the
    /// caller lists the vCPUs that share a reason.)
    #[error("process {pid} holds no stats fd for it, and KVM_GET_STATS_FD on its vCPU fd fails outside the VMM's process ({source}): only a VMM that keeps its vCPU stats fds open can be read")]
    NoStatsFd {
        /// The VMM.
        pid: u32,
        /// The vCPU.
        vcpu: u32,
        /// What KVM_GET_STATS_FD said (EIO: not the VM's process).
        source: io::Error,
    },
    /// A stats fd of the VMM that names no vCPU: neither its fd link nor its id string has a
    /// vCPU id (e.g. it could not be read, and the kernel writes no id in the link).
    #[error("process {pid}'s stats fd {fd} names no vCPU: {why}")]
    UnattributedStats {
        /// The VMM.
        pid: u32,
        /// The fd in the VMM.
        fd: i32,
        /// Why (the read error, or the id string it has).
        why: Box<Unavailable>,
    },
    /// A stats file whose id string is not a vCPU's (`kvm-<tid>/vcpu-<id>`).
    #[error("its id string is {0:?}, not a vCPU's")]
    NotVcpuStats(String),
    /// The VMM holds no fd of the vCPU at all (it closed it).
    #[error("process {pid} holds no fd of it")]
    NoVcpuFd {
        /// The VMM.
        pid: u32,
        /// The vCPU.
        vcpu: u32,
    },
    /// The stats file does not decode.
    #[error("malformed stats file: {source}")]
    Malformed {
        /// Why.
        source: ParseError,
    },
    /// Any other error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn syscall_fd(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this new fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(2) takes a pid and flags by value and returns a new fd or -1; no
    // memory is passed.
    syscall_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(2) takes a pidfd we own (borrowed for the call), a fd number in the
    // target process and flags, all by value, and returns a new fd or -1.
    syscall_fd(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

fn os_err(pid: u32, what: String, e: io::Error) -> Unavailable {
    match e.raw_os_error() {
        Some(libc::ESRCH) => Unavailable::VmmGone(pid),
        Some(libc::EPERM | libc::EACCES) => Unavailable::Permission(pid),
        Some(libc::ENOSYS) => Unavailable::NoPidfd,
        _ if e.kind() == io::ErrorKind::NotFound => Unavailable::VmmGone(pid),
        _ => Unavailable::Io { what, source: e },
    }
}

/// The KVM fds of process `pid`, from `<proc_root>/<pid>/fd`: (fd number, kind), by fd.
pub fn kvm_fds(proc_root: &Path, pid: u32) -> Result<Vec<(i32, KvmFd)>, Unavailable> {
    let dir = proc_root.join(pid.to_string()).join("fd");
    let entries =
        fs::read_dir(&dir).map_err(|e| os_err(pid, format!("reading {}", dir.display()), e))?;
    let mut fds = Vec::new();
    for e in entries.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // An fd closed since the listing has no link any more: skip it.
        let Ok(link) = fs::read_link(e.path()) else {
            continue;
        };
        if let Some(k) = link.to_str().and_then(classify_fd_link) {
            fds.push((fd, k));
        }
    }
    fds.sort_by_key(|&(fd, _)| fd);
    Ok(fds)
}

/// The per-vCPU statistics of one VM, as [`read_vm`] and [`read_vm_raw`] find them.
#[derive(Debug)]
pub struct VmStats<T> {
    /// By vcpu_id: the statistics, or why they cannot be read. vCPUs the process holds no fd
    /// of are not in the map.
    pub vcpus: BTreeMap<u32, Result<T, Unavailable>>,
    /// Stats fds of the VMM that could not be attributed to a vCPU
    /// ([`Unavailable::UnattributedStats`]).
    pub unattributed: Vec<Unavailable>,
}

impl<T> Default for VmStats<T> {
    fn default() -> Self {
        VmStats {
            vcpus: BTreeMap::new(),
            unattributed: Vec::new(),
        }
    }
}

/// The per-vCPU statistics of the one VM process `pid` created (`vms_of_pid` is how many VMs
/// it created: KVM's debugfs directories `<pid>-*`). A vCPU whose statistics cannot be read
/// maps to why, and one bad stats fd costs only its own vCPU; an error for the whole VM (no
/// such process, no permission, several VMs) comes back as `Err`.
pub fn read_vm(
    proc_root: &Path,
    pid: u32,
    vms_of_pid: usize,
) -> Result<VmStats<Stats>, Unavailable> {
    let raw = read_vm_raw(proc_root, pid, vms_of_pid)?;
    Ok(VmStats {
        vcpus: raw
            .vcpus
            .into_iter()
            .map(|(id, r)| (id, r.map(|(stats, _)| stats)))
            .collect(),
        unattributed: raw.unattributed,
    })
}

/// What [`read_vm_raw`] returns for a VM: each vCPU's stats and the bytes of its file.
pub type RawVm = VmStats<(Stats, Vec<u8>)>;

/// [`read_vm`], each vCPU's stats with the bytes of its stats file (to record fixtures).
pub fn read_vm_raw(proc_root: &Path, pid: u32, vms_of_pid: usize) -> Result<RawVm, Unavailable> {
    // The debugfs name's pid is the thread that created the VM: the fds and the pidfd are the
    // process's.
    let pid = tgid_of(proc_root, pid).unwrap_or(pid);
    if vms_of_pid > 1 {
        return Err(Unavailable::Ambiguous {
            pid,
            vms: vms_of_pid,
        });
    }
    let fds = kvm_fds(proc_root, pid)?;
    // A VMM may hold several fds of one VM (dup()): count the distinct open files.
    let vm_fds: Vec<i32> = fds
        .iter()
        .filter(|(_, k)| *k == KvmFd::Vm)
        .map(|&(fd, _)| fd)
        .collect();
    let vms = if vm_fds.len() > 1 {
        distinct_files(pid, &vm_fds)
    } else {
        vm_fds.len()
    };
    if vms > 1 {
        return Err(Unavailable::Ambiguous { pid, vms });
    }
    let mut out = RawVm::default();
    if fds.iter().all(|(_, k)| matches!(k, KvmFd::Vm)) {
        return Ok(out);
    }
    let pidfd = pidfd_open(pid).map_err(|e| os_err(pid, format!("pidfd_open({pid})"), e))?;
    let take = |fd: i32| -> Result<Option<OwnedFd>, Unavailable> {
        match pidfd_getfd(&pidfd, fd) {
            Ok(f) => Ok(Some(f)),
            // Closed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(None),
            Err(e) => Err(os_err(pid, format!("pidfd_getfd({pid}, {fd})"), e)),
        }
    };
    let read = |file: &File, what: &str| -> Result<(Stats, Vec<u8>), Unavailable> {
        let buf = read_stats_file(file)
            .map_err(|e| os_err(pid, format!("reading the stats of {what}"), e))?;
        let stats = parse(&buf).map_err(|source| Unavailable::Malformed { source })?;
        Ok((stats, buf))
    };
    // The stats fds the VMM holds. A file that cannot be read is that vCPU's problem (or,
    // when neither link nor id string names its vCPU, reported as unattributed).
    for &(fd, kind) in &fds {
        let KvmFd::VcpuStats(linked) = kind else {
            continue;
        };
        if linked.is_some_and(|id| out.vcpus.get(&id).is_some_and(Result::is_ok)) {
            continue;
        }
        let Some(f) = take(fd)? else { continue };
        let what = linked.map_or(format!("stats fd {fd}"), |id| format!("vCPU {id}"));
        let r = read(&File::from(f), &what);
        // The id's pid is the thread that created the vCPU (QEMU: the vCPU's own thread), so
        // only its vcpu_id is of use; the link's id (Linux 6.1+) stands in for a file that
        // cannot be read.
        let id = match &r {
            Ok((stats, _)) => stats.vcpu().map(|(_, id)| id),
            Err(_) => None,
        }
        .or(linked);
        match (id, r) {
            (Some(id), r) => {
                if r.is_ok() || !out.vcpus.contains_key(&id) {
                    out.vcpus.insert(id, r);
                }
            }
            (None, r) => {
                let why = match r {
                    Ok((stats, _)) => Unavailable::NotVcpuStats(stats.id),
                    Err(e) => e,
                };
                out.unattributed.push(Unavailable::UnattributedStats {
                    pid,
                    fd,
                    why: Box::new(why),
                });
            }
        }
    }
    // vCPUs without a (readable) stats fd: try to make one (KVM refuses outside the VMM's
    // process). A failure here does not replace the reason a held stats fd gave.
    for &(fd, kind) in &fds {
        let KvmFd::Vcpu(id) = kind else { continue };
        if out.vcpus.get(&id).is_some_and(Result::is_ok) {
            continue;
        }
        let Some(vcpu) = take(fd)? else { continue };
        let r = match get_stats_fd(&vcpu) {
            Ok(file) => read(&file, &format!("vCPU {id}")),
            Err(source) => Err(Unavailable::NoStatsFd {
                pid,
                vcpu: id,
                source,
            }),
        };
        if r.is_ok() || !out.vcpus.contains_key(&id) {
            out.vcpus.insert(id, r);
        }
    }
    Ok(out)
}

/// `KCMP_FILE` of `enum kcmp_type` (include/uapi/linux/kcmp.h): compare two fds' files.
const KCMP_FILE: libc::c_int = 0;

/// Whether fds `a` and `b` of process `pid` are the same open file (one a dup() of the other),
/// by kcmp(2) `KCMP_FILE`; an error if the kernel cannot tell (no kcmp: `CONFIG_KCMP`, or no
/// ptrace access to `pid`).
pub fn same_file(pid: u32, a: i32, b: i32) -> io::Result<bool> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kcmp(2) takes two pids, a type and two fd numbers, all by value, and returns
    // 0 (same), 1..=3 (ordered, different) or -1; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r == 0)
}

/// How many distinct open files the fds `fds` of process `pid` are ([`same_file`]). Fds the
/// kernel cannot compare count as distinct, so a VMM is never taken for holding fewer VMs
/// than it does.
pub fn distinct_files(pid: u32, fds: &[i32]) -> usize {
    let mut kept: Vec<i32> = Vec::new();
    for &fd in fds {
        if !kept.iter().any(|&k| same_file(pid, k, fd).unwrap_or(false)) {
            kept.push(fd);
        }
    }
    kept.len()
}

/// The process (thread group) of thread `tid`, from `<proc_root>/<tid>/status`; `None` if
/// the thread is gone.
pub fn tgid_of(proc_root: &Path, tid: u32) -> Option<u32> {
    let s = fs::read_to_string(proc_root.join(tid.to_string()).join("status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Count the VMs under KVM's debugfs `root` that the process of thread `pid` created: the
/// directories `<tid>-<fd>` whose thread belongs to the same process (the name holds the
/// creating thread's id; a thread that is gone counts only if it is `pid` itself).
pub fn vms_of_pid(root: &Path, proc_root: &Path, pid: u32) -> usize {
    let Ok(d) = fs::read_dir(root) else { return 0 };
    let tgid = tgid_of(proc_root, pid).unwrap_or(pid);
    d.flatten()
        .filter(|e| {
            crate::debugfs::parse_vm_dir(&e.file_name().to_string_lossy())
                .is_some_and(|(p, _)| p == pid || tgid_of(proc_root, p).is_some_and(|t| t == tgid))
        })
        .count()
}

/// What [`fill`] found besides the values.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FillReport {
    /// Why values are missing, one line per VM and cause (`<vm>: ...`, `<vm> vCPU 0,1: ...`).
    pub notes: Vec<String>,
    /// Names from `strict` that a readable vCPU does not have, with the names it has.
    pub unknown: Vec<(String, Vec<String>)>,
    /// Names from `strict` that are histograms, not single values.
    pub not_single: Vec<String>,
}

/// Set `stats[name]` of every vCPU of `vms` for each of `names`: the value, or `None` when it
/// cannot be read (the report says why). `strict` names must exist: the report lists those a
/// readable vCPU lacks instead of noting them. `root` is the debugfs the VMs were read from;
/// per-vCPU statistics need a live one.
pub fn fill(
    root: &Path,
    vms: &mut [crate::VmInfo],
    names: &[String],
    strict: &[String],
) -> FillReport {
    let live = crate::debugfs::is_live_debugfs(root);
    fill_from(live.then_some(Path::new("/proc")), root, vms, names, strict)
}

/// [`fill`] with the VMMs' fds under `proc_root` (`None`: `root` is not a live debugfs, and
/// nothing can be read).
pub fn fill_from(
    proc_root: Option<&Path>,
    root: &Path,
    vms: &mut [crate::VmInfo],
    names: &[String],
    strict: &[String],
) -> FillReport {
    let mut rep = FillReport::default();
    for vm in vms.iter_mut() {
        for v in &mut vm.vcpus {
            // Statistics the vCPU's debugfs directory shows (series v4) need no stats fd.
            v.stats = names
                .iter()
                .map(|n| (n.clone(), v.debugfs_stats.get(n).copied()))
                .collect();
        }
    }
    // The rest come from the VMMs' stats fds.
    let names: Vec<String> = names
        .iter()
        .filter(|n| {
            !vms.iter()
                .all(|vm| vm.vcpus.iter().all(|v| v.debugfs_stats.contains_key(*n)))
        })
        .cloned()
        .collect();
    let names = names.as_slice();
    if names.is_empty() || vms.is_empty() {
        return rep;
    }
    let Some(proc_root) = proc_root else {
        rep.notes.push(format!(
            "per-vCPU statistics: {}",
            Unavailable::NotLive(root.to_path_buf())
        ));
        return rep;
    };
    for vm in vms.iter_mut() {
        let n = vms_of_pid(root, proc_root, vm.pid).max(1);
        let read = read_vm(proc_root, vm.pid, n);
        let per_vcpu = match read {
            Ok(m) => {
                for e in &m.unattributed {
                    rep.notes
                        .push(format!("{}: per-vCPU statistics: {e}", vm.vm));
                }
                m.vcpus
            }
            Err(e) => {
                rep.notes
                    .push(format!("{}: per-vCPU statistics: {e}", vm.vm));
                continue;
            }
        };
        // Reason -> vCPUs, so that a cause shared by every vCPU is said once.
        let mut why: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut absent: BTreeMap<&String, Vec<u32>> = BTreeMap::new();
        for v in &mut vm.vcpus {
            let stats = match per_vcpu.get(&v.vcpu_id) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    why.entry(e.to_string()).or_default().push(v.vcpu_id);
                    continue;
                }
                None => {
                    let e = Unavailable::NoVcpuFd {
                        pid: vm.pid,
                        vcpu: v.vcpu_id,
                    };
                    why.entry(e.to_string()).or_default().push(v.vcpu_id);
                    continue;
                }
            };
            for n in names {
                if v.debugfs_stats.contains_key(n) {
                    continue;
                }
                match stats.get(n) {
                    Some(st) => {
                        if st.value().is_none() && strict.contains(n) && !rep.not_single.contains(n)
                        {
                            rep.not_single.push(n.clone());
                        }
                        v.stats.insert(n.clone(), st.value());
                    }
                    None if strict.contains(n) => {
                        if !rep.unknown.iter().any(|(u, _)| u == n) {
                            let has = stats.names().iter().map(|s| s.to_string()).collect();
                            rep.unknown.push((n.clone(), has));
                        }
                    }
                    None => absent.entry(n).or_default().push(v.vcpu_id),
                }
            }
        }
        for (reason, ids) in why {
            rep.notes
                .push(format!("{} vCPU {}: {reason}", vm.vm, list(&ids)));
        }
        for (n, _) in absent {
            rep.notes.push(format!(
                "{}: this kernel has no per-vCPU statistic {n}",
                vm.vm
            ));
        }
    }
    rep
}

fn list(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_links() {
        assert_eq!(classify_fd_link("anon_inode:kvm-vm"), Some(KvmFd::Vm));
        assert_eq!(
            classify_fd_link("anon_inode:kvm-vcpu:12"),
            Some(KvmFd::Vcpu(12))
        );
        assert_eq!(
            classify_fd_link("anon_inode:kvm-vcpu-stats:3"),
            Some(KvmFd::VcpuStats(Some(3)))
        );
        assert_eq!(
            classify_fd_link("anon_inode:kvm-vcpu-stats"),
            Some(KvmFd::VcpuStats(None))
        );
        assert_eq!(classify_fd_link("anon_inode:kvm-vm-stats"), None);
        assert_eq!(classify_fd_link("anon_inode:kvm-vcpu:x"), None);
        assert_eq!(classify_fd_link("/dev/kvm"), None);
        assert_eq!(parse_vcpu_id_string("kvm-57/vcpu-3"), Some((57, 3)));
        assert_eq!(parse_vcpu_id_string("kvm-57"), None);
    }

    #[test]
    fn fds_of_a_recorded_proc_tree() {
        let t = tempfile::tempdir().expect("tempdir");
        let fd = t.path().join("57/fd");
        fs::create_dir_all(&fd).expect("mkdir");
        for (n, target) in [
            ("3", "/dev/kvm"),
            ("4", "anon_inode:kvm-vm"),
            ("5", "anon_inode:kvm-vcpu:0"),
            ("6", "anon_inode:kvm-vcpu-stats:0"),
            ("10", "anon_inode:kvm-vcpu:1"),
        ] {
            std::os::unix::fs::symlink(target, fd.join(n)).expect("symlink");
        }
        assert_eq!(
            kvm_fds(t.path(), 57).expect("fds"),
            [
                (4, KvmFd::Vm),
                (5, KvmFd::Vcpu(0)),
                (6, KvmFd::VcpuStats(Some(0))),
                (10, KvmFd::Vcpu(1))
            ]
        );
        assert!(matches!(
            kvm_fds(t.path(), 58),
            Err(Unavailable::VmmGone(58))
        ));
        assert!(matches!(
            read_vm(t.path(), 57, 2),
            Err(Unavailable::Ambiguous { pid: 57, vms: 2 })
        ));
    }

    /// A file of this process with `content`, as an fd number (closed when the File drops).
    fn file_with(dir: &Path, name: &str, content: &[u8]) -> File {
        let p = dir.join(name);
        fs::write(&p, content).expect("write");
        File::open(p).expect("open")
    }

    #[test]
    fn dup_fds_are_one_file() {
        let t = tempfile::tempdir().expect("tempdir");
        let a = file_with(t.path(), "a", b"x");
        let b = a.try_clone().expect("dup");
        let c = File::open(t.path().join("a")).expect("open again");
        let pid = std::process::id();
        let (a, b, c) = (a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd());
        match same_file(pid, a, b) {
            Ok(same) => {
                assert!(same, "a dup() is the same file");
                assert_eq!(
                    same_file(pid, a, c).ok(),
                    Some(false),
                    "a second open is not"
                );
                assert_eq!(distinct_files(pid, &[a, b]), 1);
                assert_eq!(distinct_files(pid, &[a, b, c, b]), 2);
            }
            // No kcmp on this kernel: nothing is merged.
            Err(e) => {
                eprintln!("kcmp: {e}");
                assert_eq!(distinct_files(pid, &[a, b, c]), 3);
            }
        }
    }

    #[test]
    fn a_bad_stats_fd_costs_only_its_vcpu() {
        // This process stands in for the VMM: a recorded fd table whose links name KVM files
        // at fds that really are (unreadable as stats) files of this process.
        let t = tempfile::tempdir().expect("tempdir");
        let pid = std::process::id();
        let short = file_with(t.path(), "short", b"not a stats file");
        let zero = file_with(t.path(), "zero", &[0; 64]);
        let vcpu7 = file_with(t.path(), "vcpu7", b"");
        let fd = t.path().join(format!("{pid}/fd"));
        fs::create_dir_all(&fd).expect("mkdir");
        for (n, target) in [
            (short.as_raw_fd(), "anon_inode:kvm-vcpu-stats:7"),
            (zero.as_raw_fd(), "anon_inode:kvm-vcpu-stats"),
            (vcpu7.as_raw_fd(), "anon_inode:kvm-vcpu:7"),
        ] {
            std::os::unix::fs::symlink(target, fd.join(n.to_string())).expect("symlink");
        }
        let m = match read_vm_raw(t.path(), pid, 1) {
            Err(Unavailable::NoPidfd) => return,
            r => r.expect("one bad fd must not fail the VM"),
        };
        // vCPU 7's held stats file cannot be read: that is its reason, not the EIO/ENOTTY of
        // the fallback on its vCPU fd.
        assert!(
            matches!(m.vcpus.get(&7), Some(Err(Unavailable::Io { .. }))),
            "{m:?}"
        );
        assert_eq!(m.vcpus.len(), 1, "{m:?}");
        // The stats fd without an id (and a zeroed header) is reported, not dropped.
        match m.unattributed.as_slice() {
            [Unavailable::UnattributedStats { pid: p, fd, why }] => {
                assert_eq!((*p, *fd), (pid, zero.as_raw_fd()));
                assert!(
                    matches!(
                        **why,
                        Unavailable::Io { .. } | Unavailable::Malformed { .. }
                    ),
                    "{why:?}"
                );
            }
            other => panic!("expected one unattributed stats fd, got {other:?}"),
        }
    }
}
