// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! KVM's binary statistics (`KVM_GET_STATS_FD`, Documentation/virt/kvm/api.rst 4.133): get a
//! VM's or vCPU's stats file, read it whole and decode it (header, id string, descriptors,
//! data). kvm-ioctls has no wrapper for the ioctl; the number comes from the exported header
//! ([`crate::raw::VTLKIT_KVM_GET_STATS_FD`]).
//!
//! The values in an open stats file are live: read it again ([`read_stats_file`] + [`parse`])
//! for current values.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{kvm_stats_desc, kvm_stats_header};
use vmm_sys_util::ioctl::ioctl;

use crate::raw;

/// `KVM_GET_STATS_FD` on a VM or vCPU fd: its stats file. For a vCPU only the VM's own
/// process may (KVM fails vCPU ioctls from other processes with `EIO`); reading an open stats
/// file has no such check.
pub fn get_stats_fd(fd: &impl AsRawFd) -> io::Result<File> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; `fd` is a live fd
    // borrowed for the call (KVM checks that it is a VM or vCPU fd).
    let r = unsafe { ioctl(fd, libc::c_ulong::from(raw::VTLKIT_KVM_GET_STATS_FD)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new fd to us; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(r) })
}

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
    /// The id string: `kvm-<tid>` for a VM, `kvm-<tid>/vcpu-<vcpu id>` for a vCPU, where `tid`
    /// is the thread that created the VM or the vCPU (KVM writes `task_pid_nr(current)`), not
    /// necessarily the VMM's process id; e.g. `kvm-57/vcpu-3` for vCPU 3, created by thread 57.
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

/// Parse a vCPU stats id string `kvm-<tid>/vcpu-<vcpu id>` into (tid, vcpu id); `tid` is the
/// thread that created the vCPU.
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
}
