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
//! VMs is [`Unavailable::Ambiguous`]. KVM names the debugfs directory after the *thread* that
//! created the VM; its process's fds are read.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_stats_desc, kvm_stats_header};

/// `struct kvm_stats_header`'s size: flags, name_size, num_desc, id_offset, desc_offset,
/// data_offset (u32 each).
pub const HEADER_SIZE: usize = std::mem::size_of::<kvm_stats_header>();
/// `struct kvm_stats_desc`'s size without its name (which is `name_size` bytes).
pub const DESC_SIZE: usize = std::mem::size_of::<kvm_stats_desc>();
/// Bigger than any stats file KVM writes (a few KiB): a header asking for more is malformed.
const MAX_FILE: usize = 1 << 20;

/// How a statistic's values are to be read (`KVM_STATS_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// Only ever grows (a counter).
    Cumulative,
    /// A current value.
    Instant,
    /// The highest value seen.
    Peak,
    /// A linear histogram (`size` buckets).
    LinearHist,
    /// A logarithmic histogram (`size` buckets).
    LogHist,
    /// A type this code does not know.
    Other(u32),
}

impl StatKind {
    fn from_flags(flags: u32) -> Self {
        let t = (flags & kvm_bindings::KVM_STATS_TYPE_MASK) >> kvm_bindings::KVM_STATS_TYPE_SHIFT;
        match t {
            kvm_bindings::KVM_STATS_TYPE_CUMULATIVE => StatKind::Cumulative,
            kvm_bindings::KVM_STATS_TYPE_INSTANT => StatKind::Instant,
            kvm_bindings::KVM_STATS_TYPE_PEAK => StatKind::Peak,
            kvm_bindings::KVM_STATS_TYPE_LINEAR_HIST => StatKind::LinearHist,
            kvm_bindings::KVM_STATS_TYPE_LOG_HIST => StatKind::LogHist,
            t => StatKind::Other(t),
        }
    }
}

/// One statistic of a stats file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Its name, e.g. `hv_vtl_exits`.
    pub name: String,
    /// Its type.
    pub kind: StatKind,
    /// Its values: one for counters, instants and peaks, one per bucket for histograms.
    pub values: Vec<u64>,
}

impl Stat {
    /// The value of a single-valued statistic (not a histogram); `None` otherwise.
    pub fn value(&self) -> Option<u64> {
        match (self.kind, self.values.as_slice()) {
            (StatKind::Cumulative | StatKind::Instant | StatKind::Peak, [v]) => Some(*v),
            _ => None,
        }
    }
}

/// A decoded stats file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The id string, e.g. `kvm-57/vcpu-3` for vCPU 3 of a VM that process 57 created.
    pub id: String,
    /// The statistics, in the file's order.
    pub stats: Vec<Stat>,
}

impl Stats {
    /// The statistic called `name`.
    pub fn get(&self, name: &str) -> Option<&Stat> {
        self.stats.iter().find(|s| s.name == name)
    }

    /// The names of the statistics, in the file's order.
    pub fn names(&self) -> Vec<&str> {
        self.stats.iter().map(|s| s.name.as_str()).collect()
    }

    /// The id of the thread that created the vCPU and the vcpu_id, when the id string is a
    /// vCPU's (`kvm-<tid>/vcpu-<vcpu id>`).
    pub fn vcpu(&self) -> Option<(u32, u32)> {
        parse_vcpu_id_string(&self.id)
    }
}

/// Parse a vCPU stats id string `kvm-<pid>/vcpu-<vcpu id>`.
pub fn parse_vcpu_id_string(id: &str) -> Option<(u32, u32)> {
    let (vm, vcpu) = id.strip_prefix("kvm-")?.split_once("/vcpu-")?;
    Some((vm.parse().ok()?, vcpu.parse().ok()?))
}

/// A stats file that is not what KVM writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The buffer ends before something the header points at.
    #[error("truncated: {what} needs bytes {start}..{end}, the file has {len}")]
    Truncated {
        /// What was being read.
        what: String,
        /// Its first byte.
        start: usize,
        /// One past its last byte.
        end: usize,
        /// The buffer's length.
        len: usize,
    },
    /// A header field out of any sane range.
    #[error("bad header: {0}")]
    Header(String),
}

fn u32_at(buf: &[u8], at: usize, what: &str) -> Result<u32, ParseError> {
    let b = slice(buf, at, 4, what)?;
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn slice<'a>(buf: &'a [u8], start: usize, len: usize, what: &str) -> Result<&'a [u8], ParseError> {
    let end = start.saturating_add(len);
    buf.get(start..end).ok_or_else(|| ParseError::Truncated {
        what: what.to_string(),
        start,
        end,
        len: buf.len(),
    })
}

/// A NUL-terminated string in a fixed-size field.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The header fields [`parse`] and [`read_stats_file`] need.
#[derive(Debug, Clone, Copy)]
struct Header {
    name_size: usize,
    num_desc: usize,
    id_offset: usize,
    desc_offset: usize,
    data_offset: usize,
}

fn parse_header(buf: &[u8]) -> Result<Header, ParseError> {
    let f = |i: usize, what: &str| -> Result<usize, ParseError> {
        Ok(u32_at(buf, i * 4, what)? as usize)
    };
    let h = Header {
        name_size: f(1, "header")?,
        num_desc: f(2, "header")?,
        id_offset: f(3, "header")?,
        desc_offset: f(4, "header")?,
        data_offset: f(5, "header")?,
    };
    if h.name_size == 0 || h.name_size > 4096 {
        return Err(ParseError::Header(format!("name_size {}", h.name_size)));
    }
    if h.num_desc.saturating_mul(DESC_SIZE + h.name_size) > MAX_FILE {
        return Err(ParseError::Header(format!("num_desc {}", h.num_desc)));
    }
    Ok(h)
}

impl Header {
    fn desc_end(&self) -> usize {
        self.desc_offset + self.num_desc * (DESC_SIZE + self.name_size)
    }
}

/// Where the data block ends: past the last value of any descriptor.
fn data_end(h: &Header, buf: &[u8]) -> Result<usize, ParseError> {
    let mut end = h.data_offset;
    for i in 0..h.num_desc {
        let at = h.desc_offset + i * (DESC_SIZE + h.name_size);
        let d = slice(buf, at, DESC_SIZE, &format!("descriptor {i}"))?;
        let size = usize::from(u16::from_ne_bytes([d[6], d[7]]));
        let offset = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]) as usize;
        end = end.max(h.data_offset + offset + size * 8);
    }
    if end > MAX_FILE {
        return Err(ParseError::Header(format!("data ends at byte {end}")));
    }
    Ok(end)
}

/// Decode a whole stats file (header, id string, descriptors, data), as
/// [`read_stats_file`] returns it.
pub fn parse(buf: &[u8]) -> Result<Stats, ParseError> {
    let h = parse_header(buf)?;
    let id = cstr(slice(buf, h.id_offset, h.name_size, "id string")?);
    let mut stats = Vec::with_capacity(h.num_desc);
    for i in 0..h.num_desc {
        let at = h.desc_offset + i * (DESC_SIZE + h.name_size);
        let d = slice(buf, at, DESC_SIZE + h.name_size, &format!("descriptor {i}"))?;
        let flags = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
        let size = usize::from(u16::from_ne_bytes([d[6], d[7]]));
        let offset = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]) as usize;
        let name = cstr(&d[DESC_SIZE..]);
        let what = format!("the data of {name}");
        let raw = slice(buf, h.data_offset + offset, size * 8, &what)?;
        let values = raw
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        stats.push(Stat {
            name,
            kind: StatKind::from_flags(flags),
            values,
        });
    }
    Ok(Stats { id, stats })
}

/// The whole content of a stats file: the header first, then everything it points at.
pub fn read_stats_file(file: &File) -> io::Result<Vec<u8>> {
    let bad = |e: ParseError| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut head = vec![0u8; HEADER_SIZE];
    file.read_exact_at(&mut head, 0)?;
    let h = parse_header(&head).map_err(bad)?;
    let mut buf = vec![0u8; h.desc_end().max(h.id_offset + h.name_size)];
    file.read_exact_at(&mut buf, 0)?;
    let end = data_end(&h, &buf).map_err(bad)?;
    if end > buf.len() {
        buf.resize(end, 0);
        file.read_exact_at(&mut buf, 0)?;
    }
    Ok(buf)
}

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
        /// The vCPU.
        vcpu: u32,
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

/// `KVM_GET_STATS_FD` on a vCPU fd (only the VM's own process may: other processes get
/// `EIO`). A VMM that keeps the returned file open lets `vtlctl` read the vCPU's statistics.
pub fn get_stats_fd(vcpu: &impl AsRawFd) -> io::Result<File> {
    let nr = libc::c_ulong::from(vtlkit_uapi::raw::VTLKIT_KVM_GET_STATS_FD);
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; `vcpu` is a live
    // fd borrowed for the call (KVM checks that it is a vCPU fd).
    let r = unsafe { libc::ioctl(vcpu.as_raw_fd(), nr, 0) };
    Ok(File::from(syscall_fd(libc::c_long::from(r))?))
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

/// The per-vCPU statistics of the one VM process `pid` created (`vms_of_pid` is how many VMs
/// it created: KVM's debugfs directories `<pid>-*`), by vcpu_id; a vCPU whose statistics cannot
/// be read maps to why. vCPUs the process holds no fd of are not in the map. An error for the
/// whole VM comes back as `Err`.
pub fn read_vm(
    proc_root: &Path,
    pid: u32,
    vms_of_pid: usize,
) -> Result<BTreeMap<u32, Result<Stats, Unavailable>>, Unavailable> {
    Ok(read_vm_raw(proc_root, pid, vms_of_pid)?
        .into_iter()
        .map(|(id, r)| (id, r.map(|(stats, _)| stats)))
        .collect())
}

/// What [`read_vm_raw`] returns for a VM: by vcpu_id, the stats and the bytes of the file.
pub type RawVm = BTreeMap<u32, Result<(Stats, Vec<u8>), Unavailable>>;

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
    let vm_fds = fds.iter().filter(|(_, k)| *k == KvmFd::Vm).count();
    if vm_fds > 1 {
        return Err(Unavailable::Ambiguous { pid, vms: vm_fds });
    }
    let mut out = RawVm::new();
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
    let read = |file: &File, vcpu: u32| -> Result<(Stats, Vec<u8>), Unavailable> {
        let buf = read_stats_file(file)
            .map_err(|e| os_err(pid, format!("reading the stats of vCPU {vcpu}"), e))?;
        let stats = parse(&buf).map_err(|source| Unavailable::Malformed { vcpu, source })?;
        Ok((stats, buf))
    };
    // The stats fds the VMM holds.
    for &(fd, kind) in &fds {
        let KvmFd::VcpuStats(linked) = kind else {
            continue;
        };
        if linked.is_some_and(|id| out.get(&id).is_some_and(Result::is_ok)) {
            continue;
        }
        let Some(f) = take(fd)? else { continue };
        let (stats, buf) = read(&File::from(f), linked.unwrap_or(u32::MAX))?;
        // The id's pid is the thread that created the vCPU (QEMU: the vCPU's own thread), so
        // only its vcpu_id is of use.
        if let Some((_, id)) = stats.vcpu() {
            out.insert(id, Ok((stats, buf)));
        }
    }
    // vCPUs without a stats fd: try to make one (KVM refuses outside the VMM's process).
    for &(fd, kind) in &fds {
        let KvmFd::Vcpu(id) = kind else { continue };
        if out.contains_key(&id) {
            continue;
        }
        let Some(vcpu) = take(fd)? else { continue };
        let r = match get_stats_fd(&vcpu) {
            Ok(file) => read(&file, id),
            Err(source) => Err(Unavailable::NoStatsFd {
                pid,
                vcpu: id,
                source,
            }),
        };
        out.insert(id, r);
    }
    Ok(out)
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
            Ok(m) => m,
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

    /// A stats file as KVM lays it out: header, id, descriptors, data.
    pub(crate) fn build(id: &str, stats: &[(&str, u32, &[u64])]) -> Vec<u8> {
        let name_size = 48usize;
        let id_offset = HEADER_SIZE;
        let desc_offset = id_offset + name_size;
        let data_offset = desc_offset + stats.len() * (DESC_SIZE + name_size);
        let mut b = Vec::new();
        for v in [
            0,
            name_size,
            stats.len(),
            id_offset,
            desc_offset,
            data_offset,
        ] {
            b.extend_from_slice(&(v as u32).to_ne_bytes());
        }
        let name = |s: &str, b: &mut Vec<u8>| {
            let mut n = s.as_bytes().to_vec();
            n.resize(name_size, 0);
            b.extend_from_slice(&n);
        };
        name(id, &mut b);
        let mut off = 0u32;
        for (n, flags, vals) in stats {
            b.extend_from_slice(&flags.to_ne_bytes());
            b.extend_from_slice(&0i16.to_ne_bytes());
            b.extend_from_slice(&(vals.len() as u16).to_ne_bytes());
            b.extend_from_slice(&off.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            name(n, &mut b);
            off += 8 * vals.len() as u32;
        }
        for (_, _, vals) in stats {
            for v in *vals {
                b.extend_from_slice(&v.to_ne_bytes());
            }
        }
        b
    }

    /// A recorded file: `xxd -p` of a stats file, as `vtlctl dump-vcpu-stats` prints it.
    fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks_exact(2)
            .map(|p| {
                let d = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                d(p[0]) << 4 | d(p[1])
            })
            .collect()
    }

    #[test]
    fn layout_matches_the_uapi() {
        assert_eq!(HEADER_SIZE, 24);
        assert_eq!(DESC_SIZE, 16);
    }

    #[test]
    fn parses_a_built_file() {
        let hist = kvm_bindings::KVM_STATS_TYPE_LOG_HIST;
        let b = build(
            "kvm-57/vcpu-3",
            &[
                ("exits", 0, &[12]),
                ("halt_wait_hist", hist, &[1, 2, 3]),
                ("hv_vtl_exits", 0, &[5]),
            ],
        );
        let s = parse(&b).expect("parse");
        assert_eq!(s.id, "kvm-57/vcpu-3");
        assert_eq!(s.vcpu(), Some((57, 3)));
        assert_eq!(s.names(), ["exits", "halt_wait_hist", "hv_vtl_exits"]);
        assert_eq!(s.get("hv_vtl_exits").and_then(Stat::value), Some(5));
        let h = s.get("halt_wait_hist").expect("hist");
        assert_eq!(h.kind, StatKind::LogHist);
        assert_eq!(h.values, [1, 2, 3]);
        assert_eq!(h.value(), None, "a histogram has no single value");
        assert!(s.get("nope").is_none());
    }

    #[test]
    fn truncated_files_are_errors_not_panics() {
        let b = build("kvm-1/vcpu-0", &[("exits", 0, &[1]), ("b", 0, &[2])]);
        for len in 0..b.len() {
            assert!(
                parse(&b[..len]).is_err(),
                "parsed {len} of {} bytes",
                b.len()
            );
        }
        let e = parse(&b[..b.len() - 1]).expect_err("short");
        assert!(e.to_string().contains("the data of b"), "{e}");
        // A header that asks for absurd sizes.
        let mut bad = b.clone();
        bad[4..8].copy_from_slice(&0u32.to_ne_bytes());
        assert!(matches!(parse(&bad), Err(ParseError::Header(_))));
        let mut bad = b;
        bad[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(parse(&bad), Err(ParseError::Header(_))));
    }

    #[test]
    fn recorded_v3_vcpu_stats() {
        // vCPU 1 of `vtlctl demo --vps 1 --vtls 2` on the series v3 kernel, recorded in the
        // test guest with `vtlctl dump-vcpu-stats`.
        let b = unhex(include_str!("../tests/fixtures/vcpu-stats-v3.hex"));
        let s = parse(&b).expect("parse the recording");
        let (_, vcpu) = s.vcpu().expect("a vCPU's id string");
        assert_eq!(vcpu, 1);
        assert_eq!(s.get("hv_vtl_exits").and_then(Stat::value), Some(0));
        for n in [
            "exits",
            "io_exits",
            "halt_exits",
            "hypercalls",
            "guest_mode",
        ] {
            assert!(
                s.get(n).and_then(Stat::value).is_some(),
                "{n} in {:?}",
                s.names()
            );
        }
        assert!(s
            .stats
            .iter()
            .any(|st| st.kind == StatKind::LogHist && st.values.len() > 1));
    }

    #[test]
    fn recorded_stock_vcpu_stats_lack_hv_vtl_exits() {
        // vCPU 0 of a VM on a stock 6.18 host.
        let b = unhex(include_str!("../tests/fixtures/vcpu-stats-stock-6.18.hex"));
        let s = parse(&b).expect("parse the recording");
        assert_eq!(s.vcpu().map(|(_, v)| v), Some(0));
        assert!(s.get("hv_vtl_exits").is_none());
        assert!(s.get("exits").and_then(Stat::value).is_some());
    }

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
}
