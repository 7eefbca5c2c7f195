// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! A small nested-VM framework on kvm-ioctls, in the spirit of KVM selftests' kvm_util.
//!
//! [`TestVm::new`] makes a VM (optionally with an in-kernel irqchip) with [`layout::MEM_SIZE`]
//! bytes of anonymous memory at guest-physical 0, identity-mapped by 4-level page tables
//! (2 MiB pages; the 3..4 GiB range, which holds the IOAPIC and xAPIC MMIO pages, uncached),
//! a GDT with 64-bit code and data segments and a TSS, and an IDT whose 256 vectors point at
//! the guest's interrupt stubs ([`crate::guest`]). [`TestVm::add_vcpu`] creates a vCPU with
//! KVM's supported CPUID (so x2APIC is advertised) and starts it directly in 64-bit long mode
//! at a guest [`Entry`], with its own stack and a data page as GS base.
//!
//! A vCPU runs either on the calling thread ([`TestVm::run_vcpu`], until the next ucall), or,
//! for multi-vCPU tests, each on its own thread ([`TestVm::start`] → [`Running`]), where the
//! test waits for ucalls per vCPU and finally stops the threads to inspect the vCPUs.
//!
//! Hyper-V: [`VmOptions::hyperv`] gives every vCPU the Hyper-V CPUID leaves;
//! [`TestVm::set_vp_index`], [`TestVm::load_hv_program`] and [`TestVm::on_hyperv_exit`] do
//! the rest (the module [`crate::hyperv`] says how a Hyper-V test is put together). Exits
//! other than the ucall port I/O are errors that describe the vCPU, except `KVM_EXIT_HYPERV`,
//! which goes to the test's handler.

use std::collections::VecDeque;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{
    kvm_mp_state, kvm_segment, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use nix::sys::pthread::pthread_kill;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use vtlkit_uapi::protections::MemoryFault;

use vtlkit_uapi::{ApicGroup, VcpuApicGroupExt};

use crate::guest::{self, pcpu, prog, ucall, Entry};
use crate::hyperv::{self, ExitCtx, HypervExit, HypervHandler};

/// Guest-physical memory layout (identity-mapped, so these are also the guest's virtual
/// addresses).
pub mod layout {
    /// Page size.
    pub const PAGE: u64 = 0x1000;
    /// GDT: null, 64-bit code (0x08), data (0x10), 64-bit TSS (0x18, two slots).
    pub const GDT: u64 = 0x1000;
    /// IDT: 256 16-byte gates.
    pub const IDT: u64 = 0x2000;
    /// Page-map level 4.
    pub const PML4: u64 = 0x3000;
    /// Page-directory-pointer table (covers 0..512 GiB).
    pub const PDPT: u64 = 0x4000;
    /// Page directory for 0..1 GiB (2 MiB pages, write-back).
    pub const PD_LOW: u64 = 0x5000;
    /// Page directory for 3..4 GiB (2 MiB pages, uncached: IOAPIC and xAPIC MMIO).
    pub const PD_MMIO: u64 = 0x6000;
    /// The TSS the GDT's descriptor points at (never loaded: each vCPU's TR is set to its own
    /// TSS in its data page, [`crate::guest::pcpu::TSS`], whose IST1 is the #DF stack).
    pub const TSS: u64 = 0x7000;
    /// Free for tests: host↔guest data (send programs, inputs), 0x8000..0x10000.
    pub const SHARED: u64 = 0x8000;
    /// Size of [`SHARED`].
    pub const SHARED_SIZE: u64 = 0x8000;
    /// The guest code blob ([`crate::guest::code`]).
    pub const CODE: u64 = 0x10000;
    /// Room for the code blob.
    pub const CODE_MAX: u64 = 0x10000;
    /// Per-vCPU data pages (GS base): vCPU i at `PCPU + i * PAGE`.
    pub const PCPU: u64 = 0x20000;
    /// Per-vCPU stacks: vCPU i's stack top at `STACKS + (i + 1) * STACK_SIZE`.
    pub const STACKS: u64 = 0x40000;
    /// Stack size per vCPU.
    pub const STACK_SIZE: u64 = 0x4000;
    /// Most vCPUs one test VM has.
    pub const MAX_VCPUS: usize = 16;
    /// Kept zero: the default SMRAM (SMBASE 0x30000). An SMI makes KVM save the vCPU's state at
    /// `SMBASE + 0xfe00` and run SMM code from `SMBASE + 0x8000`; none is there, so a guest
    /// that gets an SMI triple-faults, and the non-zero save area says why.
    pub const SMRAM: u64 = 0x30000;
    /// The SMM state-save area KVM writes on SMM entry (`SMBASE + 0xfe00`, 512 bytes).
    pub const SMRAM_SAVE: u64 = SMRAM + 0xfe00;
    /// Free for tests: large buffers, from here to [`MEM_SIZE`].
    pub const DATA: u64 = 0x100000;
    /// Guest memory size (one memslot at guest-physical 0).
    pub const MEM_SIZE: u64 = 4 << 20;
    /// The xAPIC MMIO page (default IA32_APIC_BASE).
    pub const XAPIC: u64 = 0xfee0_0000;
}

/// How long a test waits for a nested vCPU before calling it stuck. Generous: TCG is slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// #DF, the one exception that gets its own stack (IST1 of the vCPU's TSS).
const DF_VECTOR: u64 = 8;

/// The mnemonic of exception vector `v` (0..31), for reports.
pub fn exception_name(v: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE",
        "#DB",
        "NMI",
        "#BP",
        "#OF",
        "#BR",
        "#UD",
        "#NM",
        "#DF",
        "vector 9",
        "#TS",
        "#NP",
        "#SS",
        "#GP",
        "#PF",
        "vector 15",
        "#MF",
        "#AC",
        "#MC",
        "#XM",
        "#VE",
        "#CP",
        "vector 22",
        "vector 23",
        "vector 24",
        "vector 25",
        "vector 26",
        "vector 27",
        "#HV",
        "#VC",
        "#SX",
        "vector 31",
    ];
    NAMES.get(v as usize).copied().unwrap_or("not an exception")
}

/// One exception the guest recorded in its data page ([`pcpu::exc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestException {
    /// Vector (0..31).
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error: u64,
    /// RIP the CPU reported.
    pub rip: u64,
    /// RSP at the exception.
    pub rsp: u64,
    /// RFLAGS at the exception.
    pub rflags: u64,
    /// CR2 when the handler ran.
    pub cr2: u64,
    /// 1 for the first exception this vCPU took, and so on.
    pub seq: u64,
}

impl std::fmt::Display for GuestException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} {} (vector {}) error code {:#x} at RIP {:#x} (guest code offset {:#x}), RSP {:#x}, RFLAGS {:#x}, CR2 {:#x}",
            self.seq,
            exception_name(self.vector),
            self.vector,
            self.error,
            self.rip,
            self.rip.wrapping_sub(layout::CODE),
            self.rsp,
            self.rflags,
            self.cr2
        )
    }
}

/// What a vCPU's guest recorded in its data page about exceptions and interrupts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRecord {
    /// Exceptions taken.
    pub exceptions: u64,
    /// The first and the last of them (the same one if there was only one).
    pub first: Option<GuestException>,
    /// The last exception.
    pub last: Option<GuestException>,
    /// Interrupts (vectors 32..255) handled.
    pub irqs: u64,
    /// Vector of the last interrupt handled.
    pub last_vector: u64,
    /// RIP the last interrupt interrupted.
    pub last_irq_rip: u64,
}

impl GuestRecord {
    /// Read vCPU `index`'s record from guest memory.
    pub fn read(mem: &GuestMem, index: usize) -> Result<Self> {
        let page = TestVm::pcpu_gpa(index);
        let exc = |base: u64| -> Result<GuestException> {
            let r = |off: u64| mem.read_u64(page + base + off);
            Ok(GuestException {
                vector: r(pcpu::exc::VECTOR)?,
                error: r(pcpu::exc::ERROR)?,
                rip: r(pcpu::exc::RIP)?,
                rsp: r(pcpu::exc::RSP)?,
                rflags: r(pcpu::exc::RFLAGS)?,
                cr2: r(pcpu::exc::CR2)?,
                seq: r(pcpu::exc::SEQ)?,
            })
        };
        let exceptions = mem.read_u64(page + pcpu::EXC_COUNT)?;
        let (first, last) = if exceptions == 0 {
            (None, None)
        } else {
            (Some(exc(pcpu::EXC_FIRST)?), Some(exc(pcpu::EXC_LAST)?))
        };
        Ok(GuestRecord {
            exceptions,
            first,
            last,
            irqs: mem.read_u64(page + pcpu::IRQ_TOTAL)?,
            last_vector: mem.read_u64(page + pcpu::LAST_VECTOR)?,
            last_irq_rip: mem.read_u64(page + pcpu::LAST_IRQ_RIP)?,
        })
    }
}

/// Whether KVM wrote an SMM state-save area into the VM's default SMRAM, i.e. a vCPU entered
/// System Management Mode; returns the offset and value of the first non-zero u64 there.
pub fn smram_written(mem: &GuestMem) -> Option<(u64, u64)> {
    (0..0x200 / 8).find_map(|i| {
        let gpa = layout::SMRAM_SAVE + i * 8;
        match mem.read_u64(gpa) {
            Ok(0) | Err(_) => None,
            Ok(v) => Some((gpa, v)),
        }
    })
}

impl std::fmt::Display for GuestRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.first, self.last) {
            (Some(first), Some(last)) if first.seq != last.seq => write!(
                f,
                "the guest took {} exception(s): first {first}; last {last}",
                self.exceptions
            )?,
            (Some(first), _) => write!(f, "the guest took 1 exception: {first}")?,
            _ => write!(f, "the guest recorded no exception")?,
        }
        write!(f, "; interrupts handled: {}", self.irqs)?;
        if self.irqs > 0 {
            write!(
                f,
                " (last: vector {:#x} at RIP {:#x})",
                self.last_vector, self.last_irq_rip
            )?;
        }
        Ok(())
    }
}

/// A one-line description of a vCPU's state for unexpected exits: mode, segments and the
/// events KVM holds (after a shutdown SVM has already reset these, the guest record has not).
fn describe_vcpu_state(fd: &VcpuFd) -> String {
    let mut out = String::new();
    match fd.get_sregs() {
        Ok(s) => out.push_str(&format!(
            "CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x} CS {:#x}@{:#x} TR base {:#x} IDT {:#x}/{:#x}",
            s.cr0,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.cs.base,
            s.tr.base,
            s.idt.base,
            s.idt.limit
        )),
        Err(e) => out.push_str(&format!("KVM_GET_SREGS: {e}")),
    }
    match fd.get_vcpu_events() {
        Ok(e) => out.push_str(&format!(
            "; events: exception injected {} pending {} nr {} error {:#x} (has {}), interrupt injected {} nr {}, NMI injected {} pending {} masked {}",
            e.exception.injected,
            e.exception.pending,
            e.exception.nr,
            e.exception.error_code,
            e.exception.has_error_code,
            e.interrupt.injected,
            e.interrupt.nr,
            e.nmi.injected,
            e.nmi.pending,
            e.nmi.masked
        )),
        Err(e) => out.push_str(&format!("; KVM_GET_VCPU_EVENTS: {e}")),
    }
    match fd.get_mp_state() {
        Ok(m) => out.push_str(&format!("; MP state {}", m.mp_state)),
        Err(e) => out.push_str(&format!("; KVM_GET_MP_STATE: {e}")),
    }
    out
}

/// Anonymous memory that backs the guest. Shared between the test and the vCPU threads; all
/// accesses are volatile and bounds-checked because the guest may be writing at the same time.
pub struct GuestMem {
    ptr: *mut u8,
    size: usize,
}

// SAFETY: GuestMem is a plain mapping owned for its whole life; every access goes through
// bounds-checked volatile reads/writes, which is how memory shared with a running guest is
// accessed (the guest is another agent writing it regardless of Rust's rules).
unsafe impl Send for GuestMem {}
// SAFETY: as above; no method hands out references into the mapping.
unsafe impl Sync for GuestMem {}

impl GuestMem {
    /// Map `size` bytes of zeroed anonymous memory.
    pub fn new(size: usize) -> Result<Self> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched. The result
        // is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of {size} bytes of guest memory: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(GuestMem {
            ptr: ptr.cast(),
            size,
        })
    }

    /// Host address of the mapping (for KVM_SET_USER_MEMORY_REGION).
    pub(crate) fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    fn range(&self, gpa: u64, len: usize) -> Result<*mut u8> {
        let end = gpa.checked_add(len as u64);
        match end {
            Some(end) if end <= self.size as u64 => {
                // SAFETY: gpa + len is within the mapping (checked just above).
                Ok(unsafe { self.ptr.add(gpa as usize) })
            }
            _ => bail!(
                "guest access [{gpa:#x}, +{len:#x}) outside guest memory (size {:#x})",
                self.size
            ),
        }
    }

    /// Copy `data` to guest-physical `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let p = self.range(gpa, data.len())?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: p..p+len is inside the mapping (range() checked it).
            unsafe { p.add(i).write_volatile(*b) };
        }
        Ok(())
    }

    /// Copy from guest-physical `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let p = self.range(gpa, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: p..p+len is inside the mapping (range() checked it).
            *b = unsafe { p.add(i).read_volatile() };
        }
        Ok(())
    }

    /// Read a naturally aligned u64.
    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        check_aligned(gpa, 8)?;
        let p = self.range(gpa, 8)?;
        // SAFETY: in bounds and 8-byte aligned (the mapping is page-aligned).
        Ok(unsafe { p.cast::<u64>().read_volatile() })
    }

    /// Write a naturally aligned u64.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        check_aligned(gpa, 8)?;
        let p = self.range(gpa, 8)?;
        // SAFETY: in bounds and 8-byte aligned (the mapping is page-aligned).
        unsafe { p.cast::<u64>().write_volatile(v) };
        Ok(())
    }

    /// Read a naturally aligned u32.
    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        check_aligned(gpa, 4)?;
        let p = self.range(gpa, 4)?;
        // SAFETY: in bounds and 4-byte aligned (the mapping is page-aligned).
        Ok(unsafe { p.cast::<u32>().read_volatile() })
    }

    /// Read a NUL-terminated string of at most `max` bytes (lossy UTF-8).
    pub fn read_cstr(&self, gpa: u64, max: usize) -> Result<String> {
        let mut out = Vec::new();
        for i in 0..max as u64 {
            let mut b = [0u8];
            self.read(gpa + i, &mut b)?;
            if b[0] == 0 {
                break;
            }
            out.push(b[0]);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn check_aligned(gpa: u64, align: u64) -> Result<()> {
    if gpa % align != 0 {
        bail!("guest access at {gpa:#x} is not {align}-byte aligned");
    }
    Ok(())
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in new(); nothing refers to it any more
        // (KVM's memslot holds no reference that outlives the VM fd, which is closed first).
        unsafe { libc::munmap(self.ptr.cast(), self.size) };
    }
}

/// A guest-to-host call, decoded from a `KVM_EXIT_IO` on [`ucall::PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ucall {
    /// `SYNC(stage, args)`: the guest reached a checkpoint and goes on.
    Sync {
        /// Which checkpoint.
        stage: u64,
        /// RSI, RCX, R8, R9.
        args: [u64; 4],
    },
    /// `DONE(args)`: the guest finished.
    Done {
        /// RDI, RSI, RCX, R8.
        args: [u64; 4],
    },
    /// `ABORT(message, values)`: a guest-side check failed.
    Abort {
        /// The guest's message.
        msg: String,
        /// RSI, RCX, R8, R9: the offending values.
        args: [u64; 4],
        /// Where the guest was (RIP of the `out`, relative to the code blob's load address).
        rip: u64,
    },
}

impl std::fmt::Display for Ucall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ucall::Sync { stage, args } => write!(f, "SYNC(stage {stage:#x}, {args:#x?})"),
            Ucall::Done { args } => write!(f, "DONE({args:#x?})"),
            Ucall::Abort { msg, args, rip } => write!(
                f,
                "guest assertion failed: {msg}; values {args:#x?} (guest code offset {rip:#x})"
            ),
        }
    }
}

/// Options for [`TestVm::new`].
#[derive(Debug, Clone, Copy)]
pub struct VmOptions {
    /// KVM_CREATE_IRQCHIP (in-kernel PIC, IOAPIC and local APICs).
    pub irqchip: bool,
    /// KVM_ENABLE_CAP(KVM_CAP_APIC_GROUPS) right after the irqchip: every vCPU then starts
    /// without an APIC group and must be assigned one ([`TestVm::add_vcpu_in_group`] or
    /// [`TestVm::assign_group`]) before it runs.
    pub apic_groups: bool,
    /// Give every vCPU the Hyper-V CPUID leaves (`KVM_GET_SUPPORTED_HV_CPUID` merged over
    /// the supported CPUID in place of KVM's own 0x400000xx leaves), which turns on KVM's
    /// Hyper-V emulation for it; [`TestVm::add_vcpu`] then also fills in the data page's
    /// `HV_GUEST_OS_ID` and `HV_HYPERCALL` for [`Entry::HvMain`].
    pub hyperv: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            irqchip: true,
            apic_groups: false,
            hyperv: false,
        }
    }
}

impl VmOptions {
    /// The default options plus the APIC-group opt-in.
    pub fn apic_groups() -> Self {
        VmOptions {
            apic_groups: true,
            ..Default::default()
        }
    }
}

/// One vCPU of a [`TestVm`] that is not running.
pub struct Vcpu {
    /// Index in the test VM (selects its stack and data page).
    pub index: usize,
    /// The KVM vcpu_id.
    pub id: u64,
    /// The vCPU fd.
    pub fd: VcpuFd,
}

/// A VM for nested tests: memory, page tables, GDT, IDT, guest code, vCPUs.
pub struct TestVm {
    /// /dev/kvm.
    pub kvm: Kvm,
    /// The VM fd.
    pub fd: VmFd,
    /// Guest memory.
    pub mem: Arc<GuestMem>,
    /// vCPUs not currently running on a thread, by index (None while on a thread).
    pub vcpus: Vec<Option<Vcpu>>,
    cpuid: CpuId,
    intel: bool,
    irqchip: bool,
    hyperv: bool,
    hv_handler: Option<HypervHandler>,
}

/// Open /dev/kvm with a message that says what failed.
pub fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|e| anyhow!("open /dev/kvm: {e}"))
}

impl TestVm {
    /// Create the VM, its memory and the static guest structures.
    pub fn new(opts: VmOptions) -> Result<Self> {
        let kvm = open_kvm()?;
        let fd = kvm.create_vm().map_err(|e| anyhow!("KVM_CREATE_VM: {e}"))?;
        if opts.irqchip {
            fd.create_irq_chip()
                .map_err(|e| anyhow!("KVM_CREATE_IRQCHIP: {e}"))?;
        }
        if opts.apic_groups {
            vtlkit_uapi::enable_apic_groups(&fd)
                .map_err(|e| anyhow!("{e} (errno {})", e.errno()))?;
        }
        let mem = Arc::new(GuestMem::new(layout::MEM_SIZE as usize)?);
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: layout::MEM_SIZE,
            userspace_addr: mem.host_addr(),
        };
        // SAFETY: the region is our own anonymous mapping of exactly MEM_SIZE bytes, which lives
        // in `mem` (an Arc kept by the TestVm and every vCPU thread) at least as long as the VM.
        unsafe { fd.set_user_memory_region(region) }
            .map_err(|e| anyhow!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| anyhow!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
        let cpuid = if opts.hyperv {
            hyperv::merge_hv_cpuid(&cpuid, &hyperv::hv_cpuid(&kvm)?)?
        } else {
            cpuid
        };
        let intel = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0)
            .is_some_and(|e| (e.ebx, e.edx, e.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e));
        let vm = TestVm {
            kvm,
            fd,
            mem,
            vcpus: Vec::new(),
            cpuid,
            intel,
            irqchip: opts.irqchip,
            hyperv: opts.hyperv,
            hv_handler: None,
        };
        vm.write_page_tables()?;
        vm.write_gdt_idt()?;
        let code = guest::code();
        check_fits(code.len() as u64, layout::CODE_MAX, "guest code")?;
        vm.mem.write(layout::CODE, code)?;
        Ok(vm)
    }

    fn write_page_tables(&self) -> Result<()> {
        const P: u64 = 1; // present
        const RW: u64 = 1 << 1;
        const PWT: u64 = 1 << 3;
        const PCD: u64 = 1 << 4;
        const PS: u64 = 1 << 7; // 2 MiB page
        let m = &self.mem;
        m.write_u64(layout::PML4, layout::PDPT | P | RW)?;
        m.write_u64(layout::PDPT, layout::PD_LOW | P | RW)?;
        m.write_u64(layout::PDPT + 3 * 8, layout::PD_MMIO | P | RW)?;
        for i in 0..512u64 {
            m.write_u64(layout::PD_LOW + i * 8, (i << 21) | P | RW | PS)?;
            let high = (3u64 << 30) + (i << 21);
            m.write_u64(layout::PD_MMIO + i * 8, high | P | RW | PS | PCD | PWT)?;
        }
        Ok(())
    }

    fn write_gdt_idt(&self) -> Result<()> {
        let m = &self.mem;
        m.write_u64(layout::GDT, 0)?;
        m.write_u64(layout::GDT + 0x08, 0x00af_9b00_0000_ffff)?; // 64-bit code, DPL 0
        m.write_u64(layout::GDT + 0x10, 0x00cf_9300_0000_ffff)?; // data, DPL 0
                                                                 // 64-bit available TSS (type 9), limit 0x67, base TSS (< 16 MiB, fits the low fields).
        let tss_lo = 0x67 | ((layout::TSS & 0xff_ffff) << 16) | (0x89u64 << 40);
        m.write_u64(layout::GDT + 0x18, tss_lo)?;
        m.write_u64(layout::GDT + 0x20, 0)?;
        let stubs = layout::CODE + guest::isr_stubs_offset();
        for v in 0..256u64 {
            let handler = stubs + v * guest::ISR_STUB_SIZE;
            // 64-bit interrupt gate: offset 15:0, selector 0x08, IST, type 0xe, P=1, DPL 0.
            // #DF switches to IST1 (the vCPU's own exception stack), so that an exception
            // raised with a broken stack still reaches a handler that reports it.
            let ist: u64 = if v == DF_VECTOR { 1 } else { 0 };
            let lo = (handler & 0xffff)
                | (0x08 << 16)
                | (ist << 32)
                | (0x8eu64 << 40)
                | (((handler >> 16) & 0xffff) << 48);
            m.write_u64(layout::IDT + v * 16, lo)?;
            m.write_u64(layout::IDT + v * 16 + 8, handler >> 32)?;
        }
        Ok(())
    }

    /// Guest-physical address of vCPU `index`'s data page.
    pub fn pcpu_gpa(index: usize) -> u64 {
        layout::PCPU + index as u64 * layout::PAGE
    }

    /// Write a u64 field (a [`pcpu`] offset) of vCPU `index`'s data page.
    pub fn set_pcpu(&self, index: usize, offset: u64, v: u64) -> Result<()> {
        self.mem.write_u64(Self::pcpu_gpa(index) + offset, v)
    }

    /// Write a one-command send program at `gpa` (`words`: the [`prog`] kind and its
    /// arguments, then END) and point vCPU `index`'s [`pcpu::PROGRAM`] at it.
    pub fn set_one_command(&self, index: usize, gpa: u64, words: &[u64]) -> Result<()> {
        for (w, v) in words.iter().enumerate() {
            self.mem.write_u64(gpa + 8 * w as u64, *v)?;
        }
        self.mem.write_u64(gpa + prog::ENTRY_SIZE, prog::END)?;
        self.set_pcpu(index, pcpu::PROGRAM, gpa)
    }

    /// Create vCPU `id` (the KVM vcpu_id), to start at `entry`. Returns its index.
    pub fn add_vcpu(&mut self, id: u64, entry: Entry) -> Result<usize> {
        let index = self.vcpus.len();
        if index >= layout::MAX_VCPUS {
            bail!("a test VM has at most {} vCPUs", layout::MAX_VCPUS);
        }
        let fd = self
            .fd
            .create_vcpu(id)
            .map_err(|e| anyhow!("KVM_CREATE_VCPU({id}): {e}"))?;
        let mut cpuid = self.cpuid.clone();
        for e in cpuid.as_mut_slice() {
            if e.function == 1 {
                // Initial APIC ID (EBX 31:24); informational, the guest reads its APIC instead.
                e.ebx = (e.ebx & 0x00ff_ffff) | (((id & 0xff) as u32) << 24);
            }
        }
        fd.set_cpuid2(&cpuid)
            .map_err(|e| anyhow!("KVM_SET_CPUID2 on vCPU {id}: {e}"))?;
        self.setup_long_mode(&fd, index, entry)
            .with_context(|| format!("setting up vCPU {id} for long mode"))?;
        if self.irqchip {
            // With an in-kernel LAPIC, vCPUs other than the BSP wait for INIT/SIPI; start them.
            fd.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(|e| anyhow!("KVM_SET_MP_STATE(RUNNABLE) on vCPU {id}: {e}"))?;
        }
        check_fits(pcpu::SIZE, pcpu::TSS, "the vCPU data page")?;
        let page = Self::pcpu_gpa(index);
        self.mem.write(page, &[0u8; layout::PAGE as usize])?;
        // The vCPU's TSS: IST1 (offset 0x24) = top of its #DF stack; no I/O bitmap.
        let tss = page + pcpu::TSS;
        self.mem
            .write(tss + 0x24, &(page + pcpu::IST_STACK_TOP).to_le_bytes())?;
        self.mem
            .write(tss + 0x66, &(pcpu::TSS_SIZE as u16).to_le_bytes())?;
        self.set_pcpu(index, pcpu::SELF, page)?;
        self.set_pcpu(index, pcpu::INDEX, index as u64)?;
        self.set_pcpu(index, pcpu::HYPERCALL_VMCALL, u64::from(self.intel))?;
        self.set_pcpu(index, pcpu::APIC_MODE, pcpu::APIC_MODE_X2APIC)?;
        if self.hyperv {
            self.set_pcpu(index, pcpu::HV_GUEST_OS_ID, hyperv::GUEST_OS_ID_LINUX)?;
            self.set_pcpu(
                index,
                pcpu::HV_HYPERCALL,
                hyperv::HYPERCALL_PAGE | hyperv::HYPERCALL_ENABLE,
            )?;
        }
        self.vcpus.push(Some(Vcpu { index, id, fd }));
        Ok(index)
    }

    /// Set vCPU `index`'s Hyper-V VP index (host `KVM_SET_MSRS` of `HV_X64_MSR_VP_INDEX`).
    pub fn set_vp_index(&self, index: usize, vp: u32) -> Result<()> {
        let vcpu = self.vcpu(index)?;
        hyperv::set_vp_index(&vcpu.fd, vp).with_context(|| format!("vCPU {}", vcpu.id))
    }

    /// Write hypercall program `prog` for vCPU `index` (it runs once the host sets the vCPU's
    /// `pcpu::GO`); the returned [`hyperv::Loaded`] reads what the guest recorded.
    pub fn load_hv_program(&self, index: usize, prog: &hyperv::Program) -> Result<hyperv::Loaded> {
        let loaded = hyperv::load(&self.mem, index, prog)?;
        if let Some(gpa) = loaded.gpa() {
            self.set_pcpu(index, pcpu::PROGRAM, gpa)?;
        }
        Ok(loaded)
    }

    /// Hand every `KVM_EXIT_HYPERV` of this VM's vCPUs to `handler` (on the vCPU's thread);
    /// an HCALL exit resumes with the `result` it set. Install it before [`TestVm::start`].
    pub fn on_hyperv_exit(
        &mut self,
        handler: impl Fn(&ExitCtx<'_>, &mut HypervExit) -> Result<()> + Send + Sync + 'static,
    ) {
        self.hv_handler = Some(std::sync::Arc::new(handler));
    }

    /// [`TestVm::add_vcpu`], then [`TestVm::assign_group`]: a vCPU of a VM made with
    /// [`VmOptions::apic_groups`], ready to run. Returns its index.
    pub fn add_vcpu_in_group(&mut self, id: u64, entry: Entry, group: ApicGroup) -> Result<usize> {
        let index = self.add_vcpu(id, entry)?;
        self.assign_group(index, group)?;
        Ok(index)
    }

    /// KVM_SET_APIC_GROUP on vCPU `index`, and its CPUID's initial APIC ID (leaf 1 EBX 31:24,
    /// informational) set to the assigned ID.
    pub fn assign_group(&self, index: usize, group: ApicGroup) -> Result<()> {
        let vcpu = self.vcpu(index)?;
        vcpu.fd
            .set_apic_group(group)
            .map_err(|e| anyhow!("{e} (errno {})", e.errno()))
            .with_context(|| format!("KVM_SET_APIC_GROUP({group:?}) on vCPU {}", vcpu.id))?;
        let mut cpuid = self.cpuid.clone();
        for e in cpuid.as_mut_slice() {
            if e.function == 1 {
                e.ebx = (e.ebx & 0x00ff_ffff) | ((group.apic_id & 0xff) << 24);
            }
        }
        vcpu.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| anyhow!("KVM_SET_CPUID2 on vCPU {}: {e}", vcpu.id))
    }

    /// Long mode straight away, as KVM selftests do: paging, PAE, EFER.LME|LMA, flat 64-bit
    /// segments, GS base = the vCPU's data page, RSP = top of its stack, RIP = `entry`.
    fn setup_long_mode(&self, fd: &VcpuFd, index: usize, entry: Entry) -> Result<()> {
        let mut sregs = fd.get_sregs().map_err(|e| anyhow!("KVM_GET_SREGS: {e}"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x08,
            type_: 0xb, // execute/read, accessed
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment {
            selector: 0x10,
            type_: 0x3, // read/write, accessed
            l: 0,
            db: 1,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.ss = data;
        sregs.gs = kvm_segment {
            base: Self::pcpu_gpa(index),
            ..data
        };
        sregs.tr = kvm_segment {
            base: Self::pcpu_gpa(index) + pcpu::TSS,
            limit: (pcpu::TSS_SIZE - 1) as u32,
            selector: 0x18,
            type_: 0xb, // busy 64-bit TSS
            s: 0,
            db: 0,
            l: 0,
            g: 0,
            ..code
        };
        sregs.ldt = kvm_segment {
            selector: 0,
            type_: 0x2,
            s: 0,
            l: 0,
            unusable: 1,
            ..code
        };
        sregs.gdt.base = layout::GDT;
        sregs.gdt.limit = 0x27;
        sregs.idt.base = layout::IDT;
        sregs.idt.limit = 0xfff;
        sregs.cr0 = 0x8005_0033; // PG | WP | NE | ET | MP | PE
        sregs.cr3 = layout::PML4;
        sregs.cr4 = 0x620; // OSXMMEXCPT | OSFXSR | PAE
        sregs.efer = 0x500; // LMA | LME
        fd.set_sregs(&sregs)
            .map_err(|e| anyhow!("KVM_SET_SREGS: {e}"))?;
        let mut regs = fd.get_regs().map_err(|e| anyhow!("KVM_GET_REGS: {e}"))?;
        regs.rflags = 0x2;
        regs.rip = layout::CODE + guest::entry_offset(entry);
        regs.rsp = layout::STACKS + (index as u64 + 1) * layout::STACK_SIZE;
        regs.rdi = index as u64;
        fd.set_regs(&regs)
            .map_err(|e| anyhow!("KVM_SET_REGS: {e}"))?;
        Ok(())
    }

    /// The vCPU at `index`, if it is not running on a thread.
    pub fn vcpu(&self, index: usize) -> Result<&Vcpu> {
        self.vcpus
            .get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| anyhow!("vCPU index {index} does not exist or is running"))
    }

    /// Run vCPU `index` on this thread until its next ucall.
    pub fn run_vcpu(&mut self, index: usize) -> Result<Ucall> {
        let mem = Arc::clone(&self.mem);
        let handler = self.hv_handler.clone();
        let vcpu = self
            .vcpus
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or_else(|| anyhow!("vCPU index {index} does not exist or is running"))?;
        loop {
            match run_once(vcpu, &mem, handler.as_ref())? {
                Step::Ucall(u) => return Ok(u),
                Step::Interrupted | Step::Hyperv | Step::EventNotify(_) | Step::MemoryFault(_) => {
                    continue
                }
            }
        }
    }

    /// Run every vCPU that is not running yet on its own thread.
    pub fn start(&mut self) -> Result<Running> {
        install_kick_handler();
        let shared = Arc::new(RunShared {
            stop: AtomicBool::new(false),
            queues: (0..self.vcpus.len())
                .map(|_| (Mutex::new(VecDeque::new()), Condvar::new()))
                .collect(),
        });
        let mut threads = Vec::new();
        for slot in self.vcpus.iter_mut() {
            let Some(vcpu) = slot.take() else { continue };
            let index = vcpu.index;
            let mem = Arc::clone(&self.mem);
            let sh = Arc::clone(&shared);
            let handler = self.hv_handler.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id))
                .spawn(move || vcpu_thread(vcpu, mem, sh, handler))
                .with_context(|| format!("spawning the thread of vCPU index {index}"))?;
            threads.push((index, handle));
        }
        Ok(Running { shared, threads })
    }
}

fn check_fits(len: u64, max: u64, what: &str) -> Result<()> {
    if len > max {
        bail!("{what} is {len:#x} bytes, more than the {max:#x} reserved for it");
    }
    Ok(())
}

/// What one KVM_RUN gave.
#[derive(Debug)]
pub(crate) enum Step {
    Ucall(Ucall),
    /// KVM_RUN returned EINTR/EAGAIN (a kick), or an exit was handled: run again.
    Interrupted,
    /// A `KVM_EXIT_HYPERV`, left in the vCPU's `kvm_run` for the caller ([`run_once_raw`]
    /// only).
    Hyperv,
    /// A `KVM_EXIT_EVENT_NOTIFY` naming the armed vCPU (its vcpu_id) that has an event
    /// ([`run_once_raw`] only; the VP runner switches VTL).
    EventNotify(u32),
    /// A `KVM_EXIT_MEMORY_FAULT` that is a VTL protection violation (an access flag set;
    /// [`run_once_raw`] only; the VP runner hands it to the VTL state machine as a secure
    /// intercept). The vCPU stays at the faulting instruction.
    MemoryFault(MemoryFault),
}

/// The series' access flags of `KVM_EXIT_MEMORY_FAULT`: a VTL protection violation.
const PROTECTION_FLAGS: u64 = (vtlkit_uapi::raw::KVM_MEMORY_EXIT_FLAG_READ
    | vtlkit_uapi::raw::KVM_MEMORY_EXIT_FLAG_WRITE
    | vtlkit_uapi::raw::KVM_MEMORY_EXIT_FLAG_EXEC) as u64;

/// The `KVM_EXIT_MEMORY_FAULT` in `vcpu`'s `kvm_run`, decoded with the series' flags
/// ([`vtlkit_uapi::protections::memory_fault_exit`]), after kvm-ioctls' `run()` returned
/// `VcpuExit::MemoryFault`. Shared by the VP runner and the protection tests' runner.
pub(crate) fn memory_fault(vcpu: &mut Vcpu) -> Result<MemoryFault> {
    let id = vcpu.id;
    vtlkit_uapi::protections::memory_fault_exit(vcpu.fd.get_kvm_run())
        .ok_or_else(|| anyhow!("vCPU {id}: KVM_EXIT_MEMORY_FAULT is not in kvm_run any more"))
}

/// One KVM_RUN. Decodes ucalls; PRINT is printed here and reported as `Interrupted` (the caller
/// just runs again); `KVM_EXIT_HYPERV` goes to `handler`; every other exit is an error that says
/// what the guest did.
fn run_once(vcpu: &mut Vcpu, mem: &GuestMem, handler: Option<&HypervHandler>) -> Result<Step> {
    match run_once_raw(vcpu, mem)? {
        Step::Hyperv => handle_hyperv(vcpu, handler),
        Step::MemoryFault(f) => {
            let rip = vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0);
            bail!(
                "vCPU {}: unexpected VTL protection fault ({f}) at guest code offset {:#x}",
                vcpu.id,
                rip.wrapping_sub(layout::CODE)
            )
        }
        other => Ok(other),
    }
}

/// [`run_once`] without the Hyper-V handling: a `KVM_EXIT_HYPERV` is returned as
/// [`Step::Hyperv`] (the VP runner, [`crate::vp`], answers it with the VTL state machine).
pub(crate) fn run_once_raw(vcpu: &mut Vcpu, mem: &GuestMem) -> Result<Step> {
    let id = vcpu.id;
    let (port, data) = match vcpu.fd.run() {
        Ok(VcpuExit::Hyperv) => return Ok(Step::Hyperv),
        Ok(VcpuExit::MemoryFault { flags, .. }) if flags & PROTECTION_FLAGS != 0 => {
            return Ok(Step::MemoryFault(memory_fault(vcpu)?));
        }
        Ok(VcpuExit::Unsupported(r)) if r == vtlkit_uapi::raw::KVM_EXIT_EVENT_NOTIFY => {
            let id = vtlkit_uapi::notify::event_notify_exit(vcpu.fd.get_kvm_run())
                .ok_or_else(|| anyhow!("vCPU {id}: KVM_EXIT_EVENT_NOTIFY not in kvm_run"))?;
            return Ok(Step::EventNotify(id));
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            let mut d = [0u8; 4];
            let n = data.len().min(4);
            d[..n].copy_from_slice(&data[..n]);
            (port, u32::from_le_bytes(d))
        }
        Ok(exit) => {
            let what = match exit {
                VcpuExit::Shutdown => "Shutdown (the guest triple-faulted)".to_string(),
                other => format!("{other:?}"),
            };
            let regs = vcpu.fd.get_regs().ok();
            let rip = regs.map(|r| r.rip).unwrap_or(0);
            let mut record = GuestRecord::read(mem, vcpu.index)
                .map(|r| r.to_string())
                .unwrap_or_else(|e| format!("guest record unreadable: {e:#}"));
            if let Some((gpa, v)) = smram_written(mem) {
                record.push_str(&format!(
                    "; a vCPU of this VM entered SMM (SMI): the SMM state-save area is written ({gpa:#x}: {v:#x})"
                ));
            }
            bail!(
                "vCPU {id}: unexpected exit {what} at RIP {rip:#x} (guest code offset {:#x}); {record}; vCPU state: {}",
                rip.wrapping_sub(layout::CODE),
                describe_vcpu_state(&vcpu.fd)
            );
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            return Ok(Step::Interrupted)
        }
        Err(e) => bail!("vCPU {id}: KVM_RUN: {e}"),
    };
    let regs = vcpu
        .fd
        .get_regs()
        .map_err(|e| anyhow!("vCPU {id}: KVM_GET_REGS: {e}"))?;
    if port != ucall::PORT {
        bail!(
            "vCPU {id}: unexpected OUT to port {port:#x} (value {data:#x}) at guest code offset {:#x}",
            regs.rip.wrapping_sub(layout::CODE)
        );
    }
    let msg = |gpa: u64| {
        mem.read_cstr(gpa, 256)
            .unwrap_or_else(|e| format!("<unreadable message at {gpa:#x}: {e}>"))
    };
    let u = match data {
        ucall::SYNC => Ucall::Sync {
            stage: regs.rdi,
            args: [regs.rsi, regs.rcx, regs.r8, regs.r9],
        },
        ucall::DONE => Ucall::Done {
            args: [regs.rdi, regs.rsi, regs.rcx, regs.r8],
        },
        ucall::ABORT => Ucall::Abort {
            msg: msg(regs.rdi),
            args: [regs.rsi, regs.rcx, regs.r8, regs.r9],
            rip: regs.rip.wrapping_sub(layout::CODE),
        },
        ucall::PRINT => {
            eprintln!(
                "# guest vCPU {id}: {} {:#x?}",
                msg(regs.rdi),
                [regs.rsi, regs.rcx, regs.r8, regs.r9]
            );
            return Ok(Step::Interrupted);
        }
        other => bail!("vCPU {id}: unknown ucall command {other:#x}"),
    };
    Ok(Step::Ucall(u))
}

/// A `KVM_EXIT_HYPERV`: to the test's handler if it has one; an HCALL without one is an error
/// (nobody would answer it), SynIC and other exits are resumed.
fn handle_hyperv(vcpu: &mut Vcpu, handler: Option<&HypervHandler>) -> Result<Step> {
    let mut exit = hyperv::read_exit(vcpu.fd.get_kvm_run());
    let ctx = ExitCtx {
        index: vcpu.index,
        id: vcpu.id,
        fd: &vcpu.fd,
    };
    match (handler, &exit) {
        (Some(h), _) => h(&ctx, &mut exit)
            .with_context(|| format!("vCPU {}: the test's KVM_EXIT_HYPERV handler", vcpu.id))?,
        (None, HypervExit::Hcall(hc)) => {
            let rip = vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0);
            bail!(
                "vCPU {}: unexpected KVM_EXIT_HYPERV {hc} at guest code offset {:#x} (the test installed no handler)",
                vcpu.id,
                rip.wrapping_sub(layout::CODE)
            );
        }
        (None, _) => {}
    }
    if let HypervExit::Hcall(hc) = exit {
        if !vtlkit_uapi::vtl::set_hcall_result(vcpu.fd.get_kvm_run(), hc.result) {
            bail!(
                "vCPU {}: kvm_run no longer holds the HCALL exit to answer",
                vcpu.id
            );
        }
    }
    Ok(Step::Interrupted)
}

/// One vCPU's ucalls (or the error that ended its thread) not yet taken by the test.
type Queue = (Mutex<VecDeque<Result<Ucall, String>>>, Condvar);

/// State shared by the test and the vCPU threads.
struct RunShared {
    stop: AtomicBool,
    /// Per vCPU index: ucalls (or the error that ended the thread) not yet taken by the test.
    queues: Vec<Queue>,
}

impl RunShared {
    fn push(&self, index: usize, ev: Result<Ucall, String>) {
        if let Some((q, cv)) = self.queues.get(index) {
            q.lock().unwrap_or_else(|p| p.into_inner()).push_back(ev);
            cv.notify_all();
        }
    }
}

/// The signal used to kick a vCPU thread out of KVM_RUN (the handler does nothing; the point
/// is that KVM_RUN returns EINTR).
pub(crate) const KICK: Signal = Signal::SIGUSR1;

extern "C" fn kick_handler(_: libc::c_int) {}

pub(crate) fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // No SA_RESTART, so KVM_RUN returns EINTR; nothing blocked during the handler.
        let sa = SigAction::new(
            SigHandler::Handler(kick_handler),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing (async-signal-safe); the previous disposition that
        // sigaction returns is dropped, never called. As before, a failure (impossible for
        // SIGUSR1 with these arguments) is ignored.
        let _ = unsafe { sigaction(KICK, &sa) };
    });
}

fn vcpu_thread(
    mut vcpu: Vcpu,
    mem: Arc<GuestMem>,
    sh: Arc<RunShared>,
    handler: Option<HypervHandler>,
) -> Vcpu {
    let index = vcpu.index;
    while !sh.stop.load(Ordering::SeqCst) {
        match run_once(&mut vcpu, &mem, handler.as_ref()) {
            Ok(Step::Interrupted | Step::Hyperv | Step::EventNotify(_) | Step::MemoryFault(_)) => {}
            Ok(Step::Ucall(u)) => {
                let last = !matches!(u, Ucall::Sync { .. });
                sh.push(index, Ok(u));
                if last {
                    break;
                }
            }
            Err(e) => {
                sh.push(index, Err(format!("{e:#}")));
                break;
            }
        }
    }
    vcpu
}

/// vCPUs running on threads. Dropping it stops and joins them.
pub struct Running {
    shared: Arc<RunShared>,
    threads: Vec<(usize, JoinHandle<Vcpu>)>,
}

impl Running {
    /// The next ucall of vCPU `index`, waiting up to `timeout`.
    pub fn next_ucall(&self, index: usize, timeout: Duration) -> Result<Ucall> {
        let (q, cv) = self
            .shared
            .queues
            .get(index)
            .ok_or_else(|| anyhow!("no vCPU index {index}"))?;
        let deadline = Instant::now() + timeout;
        let mut guard = q.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(ev) = guard.pop_front() {
                return ev.map_err(|e| anyhow!("vCPU index {index} stopped: {e}"));
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("vCPU index {index}: no ucall within {timeout:?}");
            }
            guard = cv
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wait for vCPU `index` to SYNC at `stage`; returns the SYNC's arguments. Any other ucall
    /// (an ABORT, above all) is an error that says what the guest reported.
    pub fn wait_sync(&self, index: usize, stage: u64, timeout: Duration) -> Result<[u64; 4]> {
        match self.next_ucall(index, timeout)? {
            Ucall::Sync { stage: s, args } if s == stage => Ok(args),
            other => bail!("vCPU index {index}: expected SYNC at stage {stage:#x}, got {other}"),
        }
    }

    /// Wait until `cond` holds (polled every millisecond), up to `timeout`. Also fails at once
    /// if a vCPU thread reported an ABORT or an error meanwhile.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut() -> Result<bool>,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if cond()? {
                return Ok(true);
            }
            for (i, (q, _)) in self.shared.queues.iter().enumerate() {
                let g = q.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(ev) = g.iter().find(|e| !matches!(e, Ok(Ucall::Sync { .. }))) {
                    match ev {
                        Ok(u) => bail!("vCPU index {i}: {u}"),
                        Err(e) => bail!("vCPU index {i} stopped: {e}"),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Fail if any vCPU has a ucall the test did not take (an unexpected ABORT, say).
    pub fn check_no_pending(&self) -> Result<()> {
        for (i, (q, _)) in self.shared.queues.iter().enumerate() {
            let g = q.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ev) = g.front() {
                match ev {
                    Ok(u) => bail!("vCPU index {i}: unexpected {u}"),
                    Err(e) => bail!("vCPU index {i} stopped: {e}"),
                }
            }
        }
        Ok(())
    }

    /// Stop every vCPU and describe where each one was (guest code offset of RIP, RFLAGS.IF,
    /// interrupts handled): for error messages when a guest got stuck.
    pub fn stop_and_describe(mut self) -> String {
        match self.stop_inner() {
            Ok(vcpus) => vcpus
                .iter()
                .map(|v| match v.fd.get_regs() {
                    Ok(r) => format!(
                        "vCPU {} (index {}) at guest code offset {:#x}, RFLAGS {:#x}",
                        v.id,
                        v.index,
                        r.rip.wrapping_sub(layout::CODE),
                        r.rflags
                    ),
                    Err(e) => format!("vCPU {}: KVM_GET_REGS: {e}", v.id),
                })
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => format!("could not stop the vCPUs: {e:#}"),
        }
    }

    /// Kick every vCPU out of KVM_RUN, join the threads, and return the vCPUs.
    pub fn stop(mut self) -> Result<Vec<Vcpu>> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<Vec<Vcpu>> {
        self.shared.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        for (index, handle) in self.threads.drain(..) {
            // Signal until the thread is gone: a kick that lands between the stop check and
            // KVM_RUN is lost, the next one is not.
            while !handle.is_finished() {
                if Instant::now() >= deadline {
                    bail!("vCPU index {index} did not leave KVM_RUN within 10 s of being kicked");
                }
                // The pthread_t belongs to a thread we spawned and have not joined, so it is
                // valid; the signal's handler is installed and does nothing. As before, the
                // result is not needed: the loop checks whether the thread is gone.
                let _ = pthread_kill(handle.as_pthread_t(), KICK);
                std::thread::sleep(Duration::from_millis(2));
            }
            match handle.join() {
                Ok(v) => out.push(v),
                Err(_) => bail!("vCPU index {index}'s thread panicked"),
            }
        }
        Ok(out)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            // Best effort on error paths; the error (if any) was already reported by the test.
            let _ = self.stop_inner();
        }
    }
}

/// Whether bit `vector` is set in the 256-bit APIC register at `offset` (IRR 0x200, ISR 0x100)
/// of a KVM_GET_LAPIC image.
pub fn lapic_bit(lapic: &kvm_bindings::kvm_lapic_state, offset: usize, vector: u8) -> bool {
    let reg = offset + (usize::from(vector) / 32) * 0x10;
    let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|&b| b as u8).collect();
    let word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    word & (1 << (vector % 32)) != 0
}

/// APIC register offsets in a KVM_GET_LAPIC image.
pub mod lapic_reg {
    /// In-service register.
    pub const ISR: usize = 0x100;
    /// Interrupt request register.
    pub const IRR: usize = 0x200;
    /// Spurious-interrupt vector register (bit 8: APIC software enable).
    pub const SVR: usize = 0xf0;
    /// LVT LINT0 (delivery mode in bits 10:8, mask bit 16).
    pub const LVT0: usize = 0x350;
}

/// The 32-bit APIC register at `offset` of a KVM_GET_LAPIC image.
pub fn lapic_read(lapic: &kvm_bindings::kvm_lapic_state, offset: usize) -> u32 {
    let b: Vec<u8> = lapic.regs[offset..offset + 4]
        .iter()
        .map(|&b| b as u8)
        .collect();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Set the 32-bit APIC register at `offset` of a KVM_SET_LAPIC image.
pub fn lapic_write(lapic: &mut kvm_bindings::kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as libc::c_char;
    }
}
