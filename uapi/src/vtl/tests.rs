// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The state machine against mocks: no `/dev/kvm` needed. Tests marked `test_log::test` show
//! the state machine's `log` output on failure (`RUST_LOG=trace cargo test -p vtlkit-uapi`).

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use kvm_bindings::{kvm_debugregs, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave};

use super::hv::{self, code, reg, Control, HvStatus, InitialVpContext, SegmentRegister};
use super::*;

// ---------------------------------------------------------------------------------------------
// Mocks

#[derive(Debug, Clone)]
struct State {
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: [u32; 1024],
    dregs: kvm_debugregs,
    xcrs: kvm_xcrs,
    msrs: BTreeMap<u32, u64>,
    events: kvm_vcpu_events,
    /// KVM has a hypercall completion pending for this vCPU.
    pending: bool,
    /// `hyperv.u.hcall.result` in this vCPU's kvm_run: kept from exit to exit, as KVM does.
    hcall_result: u64,
    completions: u32,
    set_sregs_calls: u32,
    refuse_sregs: bool,
    /// vcpu_id reported by `vcpu_id()`.
    id: Option<u32>,
    /// `KVM_SET_EVENT_NOTIFY` state: the target while armed.
    armed: Option<u32>,
    /// An event the vCPU would take is pending (`KVM_GET_EVENT_NOTIFY`).
    event: bool,
    /// `KVM_SET_EVENT_NOTIFY` calls, in order (target or None for a disarm).
    notify_log: Vec<Option<u32>>,
    refuse_notify: bool,
    /// `KVM_GET_MP_STATE`: RUNNABLE for the mocks made by default (a BSP, or a vCPU the VMM
    /// started); siblings start UNINITIALIZED as KVM creates them (not the BSP, in-kernel LAPIC).
    mp_state: u32,
    /// `KVM_TRANSLATE` maps every address to itself (else it fails: no instruction bytes).
    identity_translate: bool,
}

impl Default for State {
    fn default() -> Self {
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].value = 1;
        let mut msrs = BTreeMap::new();
        for m in [
            hv::msr::PAT,
            hv::msr::VP_ASSIST_PAGE,
            hv::msr::LSTAR,
            hv::msr::GUEST_OS_ID,
            hv::msr::VP_INDEX,
        ] {
            msrs.insert(m, 0);
        }
        Self {
            regs: kvm_regs {
                rflags: 2,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            xsave: [0; 1024],
            dregs: kvm_debugregs::default(),
            xcrs,
            msrs,
            events: kvm_vcpu_events::default(),
            pending: false,
            hcall_result: 0,
            completions: 0,
            set_sregs_calls: 0,
            refuse_sregs: false,
            id: None,
            armed: None,
            event: false,
            notify_log: Vec::new(),
            refuse_notify: false,
            mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
            identity_translate: false,
        }
    }
}

/// A vCPU whose state the test keeps a handle on after moving it into the partition.
#[derive(Debug, Clone, Default)]
struct MockVcpu(Rc<RefCell<State>>);

impl MockVcpu {
    /// A sibling as KVM creates it: `KVM_MP_STATE_UNINITIALIZED`.
    fn sibling() -> Self {
        let v = Self::default();
        v.st().mp_state = kvm_bindings::KVM_MP_STATE_UNINITIALIZED;
        v
    }
    fn st(&self) -> std::cell::RefMut<'_, State> {
        self.0.borrow_mut()
    }
    /// As if this vCPU exited on a hypercall at its current RIP.
    fn exited(&self) {
        self.st().pending = true;
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

impl VtlVcpu for MockVcpu {
    fn get_regs(&self) -> io::Result<kvm_regs> {
        Ok(self.st().regs)
    }
    fn set_regs(&self, regs: &kvm_regs) -> io::Result<()> {
        self.st().regs = *regs;
        Ok(())
    }
    fn get_sregs(&self) -> io::Result<kvm_sregs> {
        Ok(self.st().sregs)
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> io::Result<()> {
        let mut s = self.st();
        if s.refuse_sregs {
            return Err(einval());
        }
        s.set_sregs_calls += 1;
        s.sregs = *sregs;
        Ok(())
    }
    fn get_xsave(&self) -> io::Result<kvm_xsave> {
        Ok(kvm_xsave {
            region: self.st().xsave,
            ..Default::default()
        })
    }
    fn set_xsave(&self, xsave: &kvm_xsave) -> io::Result<()> {
        self.st().xsave = xsave.region;
        Ok(())
    }
    fn get_debugregs(&self) -> io::Result<kvm_debugregs> {
        Ok(self.st().dregs)
    }
    fn set_debugregs(&self, dregs: &kvm_debugregs) -> io::Result<()> {
        self.st().dregs = *dregs;
        Ok(())
    }
    fn get_xcrs(&self) -> io::Result<kvm_xcrs> {
        Ok(self.st().xcrs)
    }
    fn set_xcrs(&self, xcrs: &kvm_xcrs) -> io::Result<()> {
        self.st().xcrs = *xcrs;
        Ok(())
    }
    fn get_msr(&self, index: u32) -> io::Result<u64> {
        self.st().msrs.get(&index).copied().ok_or_else(einval)
    }
    fn set_msr(&self, index: u32, value: u64) -> io::Result<()> {
        let mut s = self.st();
        // Like KVM: unknown MSRs and a PAT with an invalid memory type are refused.
        let bad_pat = index == hv::msr::PAT && value.to_le_bytes().iter().any(|&t| t > 7);
        if !s.msrs.contains_key(&index) || bad_pat {
            return Err(einval());
        }
        s.msrs.insert(index, value);
        Ok(())
    }
    fn get_vcpu_events(&self) -> io::Result<kvm_vcpu_events> {
        Ok(self.st().events)
    }
    fn set_vcpu_events(&self, events: &kvm_vcpu_events) -> io::Result<()> {
        self.st().events = *events;
        Ok(())
    }
    fn get_mp_state(&self) -> io::Result<u32> {
        Ok(self.st().mp_state)
    }
    fn set_mp_state(&self, mp_state: u32) -> io::Result<()> {
        self.st().mp_state = mp_state;
        Ok(())
    }
    fn complete_pending(&mut self) -> io::Result<()> {
        let mp_state = self.st().mp_state;
        // The VcpuFd implementation's logic, with KVM_RUN(immediate_exit) mocked: an
        // UNINITIALIZED vCPU would get EINTR without its completion.
        super::backend::complete_with(mp_state, || {
            let mut s = self.st();
            if s.pending {
                // vmcall/vmmcall are 3 bytes; for 0x11/0x12 KVM writes RAX only when the result
                // is a failure status (series v3, api.rst); these mocks only park in 0x11/0x12.
                s.regs.rip += 3;
                if s.hcall_result & 0xffff != 0 {
                    s.regs.rax = s.hcall_result;
                }
                s.pending = false;
                s.completions += 1;
            }
            Err(io::Error::from_raw_os_error(libc::EINTR))
        })
    }
    fn set_pending_result(&mut self, result: u64) -> io::Result<()> {
        self.st().hcall_result = result;
        Ok(())
    }
    fn vcpu_id(&self) -> Option<u32> {
        self.st().id
    }
    fn set_event_notify(&self, target: Option<u32>) -> io::Result<()> {
        let mut s = self.st();
        if s.refuse_notify {
            return Err(einval());
        }
        s.notify_log.push(target);
        // Like KVM: arming with an event pending fires at once (and disarms).
        s.armed = if s.event { None } else { target };
        Ok(())
    }
    fn event_pending(&self) -> io::Result<bool> {
        Ok(self.st().event)
    }
    fn translate_gva(&self, gva: u64) -> io::Result<Option<u64>> {
        if self.st().identity_translate {
            Ok(Some(gva))
        } else {
            Err(io::Error::new(io::ErrorKind::Unsupported, "no translation"))
        }
    }
}

const RAM: usize = 0x40000;

struct Ram(RefCell<Vec<u8>>);

impl Ram {
    fn new() -> Self {
        Self(RefCell::new(vec![0; RAM]))
    }
    fn put(&self, gpa: u64, b: &[u8]) {
        self.write(gpa, b).unwrap();
    }
    fn get(&self, gpa: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.read(gpa, &mut v).unwrap();
        v
    }
    fn u64(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(self.get(gpa, 8).try_into().unwrap())
    }
    fn u128(&self, gpa: u64) -> u128 {
        u128::from_le_bytes(self.get(gpa, 16).try_into().unwrap())
    }
}

impl GuestMemory for Ram {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let err = MemoryError {
            gpa,
            len: buf.len(),
        };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(buf.len()).ok_or(err)?;
        let m = self.0.borrow();
        buf.copy_from_slice(m.get(start..end).ok_or(err)?);
        Ok(())
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let err = MemoryError {
            gpa,
            len: buf.len(),
        };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(buf.len()).ok_or(err)?;
        let mut m = self.0.borrow_mut();
        m.get_mut(start..end).ok_or(err)?.copy_from_slice(buf);
        Ok(())
    }
}

/// Delivery as [`MsiDelivery`] does it, with `KVM_SIGNAL_MSI` recording (group, APIC ID,
/// vector). `.1`: the VM has no 32-bit x2APIC IDs in MSIs.
#[derive(Default)]
struct Sent(RefCell<Vec<(u32, u32, u8)>>, std::cell::Cell<bool>);

impl Delivery for Sent {
    fn deliver_fixed(&self, group: u32, apic_id: u32, vector: u8) -> io::Result<()> {
        super::backend::deliver_msi(!self.1.get(), group, apic_id, vector, |msi| {
            assert_eq!(msi, fixed_msi(group, apic_id, vector));
            self.0.borrow_mut().push((group, apic_id, vector));
            Ok(1)
        })
    }
}

#[derive(Default)]
struct Prot {
    calls: Vec<(ProtectionRequest, Vec<u64>)>,
    /// Stop after this many pages in total, with this status.
    fail_after: Option<(usize, HvStatus)>,
    configs: Vec<(u8, u64)>,
}

impl Protections for Prot {
    fn modify_vtl_protection_mask(
        &mut self,
        req: &ProtectionRequest,
        gpns: &[u64],
    ) -> io::Result<RepStatus> {
        let before: usize = self.calls.iter().map(|c| c.1.len()).sum();
        self.calls.push((*req, gpns.to_vec()));
        if let Some((after, status)) = self.fail_after {
            if before + gpns.len() > after {
                return Ok(RepStatus {
                    status,
                    completed: after.saturating_sub(before),
                });
            }
        }
        Ok(RepStatus {
            status: HvStatus::SUCCESS,
            completed: gpns.len(),
        })
    }
    fn partition_config_changed(&mut self, vtl: u8, value: u64) -> io::Result<HvStatus> {
        self.configs.push((vtl, value));
        Ok(HvStatus::SUCCESS)
    }
}

#[derive(Default)]
struct Factory {
    made: Vec<(u32, u32, u8, u32)>,
    /// The test's handles on the vCPUs made.
    created: Vec<MockVcpu>,
    refuse: bool,
}

impl SiblingFactory<MockVcpu> for Factory {
    fn create_sibling(
        &mut self,
        vp_index: u32,
        apic_id: u32,
        vtl: u8,
        group: u32,
    ) -> io::Result<Option<MockVcpu>> {
        if self.refuse {
            return Ok(None);
        }
        self.made.push((vp_index, apic_id, vtl, group));
        let v = MockVcpu::sibling();
        self.created.push(v.clone());
        Ok(Some(v))
    }
}

// ---------------------------------------------------------------------------------------------
// A small world: VP 0 (APIC ID 0) and VP 1 (APIC ID 2), VTL1 siblings registered in advance.

const IN: u64 = 0x1000;
const OUT: u64 = 0x2000;
const ASSIST1: u64 = 0x11000;

struct World {
    p: Partition<MockVcpu>,
    ram: Ram,
    sent: Sent,
    prot: Prot,
    factory: Factory,
    /// (VP, VTL) -> the test's handle on that vCPU.
    v: BTreeMap<(u32, u8), MockVcpu>,
    use_default_prot: bool,
}

impl World {
    fn new() -> Self {
        Self::with(PartitionConfig::default())
    }

    fn with(config: PartitionConfig) -> Self {
        let mut w = World {
            p: Partition::new(config).unwrap(),
            ram: Ram::new(),
            sent: Sent::default(),
            prot: Prot::default(),
            factory: Factory::default(),
            v: BTreeMap::new(),
            use_default_prot: false,
        };
        for (vp, apic) in [(0u32, 0u32), (1, 2)] {
            let v0 = MockVcpu::default();
            v0.st().id = Some(vp);
            w.p.add_vp(vp, apic, v0.clone()).unwrap();
            w.v.insert((vp, 0), v0);
            let v1 = MockVcpu::sibling();
            v1.st().id = Some(0x10 + vp);
            w.p.add_sibling(vp, 1, v1.clone()).unwrap();
            w.v.insert((vp, 1), v1);
        }
        w
    }

    fn vcpu(&self, vp: u32, vtl: u8) -> MockVcpu {
        self.v[&(vp, vtl)].clone()
    }

    /// VP `vp`'s active vCPU makes hypercall `exit`.
    fn call(&mut self, vp: u32, exit: HcallExit) -> Result<Outcome, VtlError> {
        let vtl = self.p.vp(vp).unwrap().active_vtl();
        if let Some(v) = self.v.get(&(vp, vtl)) {
            // KVM_RUN of a vCPU that is not runnable waits for INIT/SIPI: it never gets to make
            // a hypercall (a VMM following the run loop would hang here).
            let mp = v.st().mp_state;
            assert_eq!(
                mp,
                kvm_bindings::KVM_MP_STATE_RUNNABLE,
                "VP {vp} VTL {vtl} is active but in MP state {mp}: its KVM_RUN would block"
            );
            v.exited();
        }
        let mut none = NoProtections;
        let protections: &mut dyn Protections = if self.use_default_prot {
            &mut none
        } else {
            &mut self.prot
        };
        let mut env = Env {
            memory: &self.ram,
            delivery: &self.sent,
            protections,
            siblings: &mut self.factory,
        };
        let r = self.p.handle_hypercall(&mut env, vp, vtl, &exit);
        // The VMM writes a completion's status into the exit, where it stays (KVM never clears
        // it) until the next one is written.
        if let (Ok(Outcome::Complete { result }), Some(v)) = (&r, self.v.get(&(vp, vtl))) {
            v.st().hcall_result = *result;
        }
        r
    }

    /// The status (and reps) the guest gets back.
    fn status(&mut self, vp: u32, exit: HcallExit) -> (HvStatus, u16) {
        match self.call(vp, exit).unwrap() {
            Outcome::Complete { result } => {
                (HvStatus(result as u16), (result >> 32) as u16 & 0xfff)
            }
            other => panic!("expected a completion, got {other:?}"),
        }
    }

    fn st(&mut self, vp: u32, exit: HcallExit) -> HvStatus {
        self.status(vp, exit).0
    }

    fn enable_partition(&mut self, vp: u32, vtl: u8) -> HvStatus {
        self.ram.put(IN, &partition_vtl_input(u64::MAX, vtl, 0));
        self.st(vp, slow(code::ENABLE_PARTITION_VTL))
    }

    fn enable_vp(&mut self, caller_vp: u32, vp: u32, vtl: u8, ctx: &InitialVpContext) -> HvStatus {
        self.ram.put(IN, &vp_vtl_input(u64::MAX, vp, vtl, ctx));
        self.st(caller_vp, slow(code::ENABLE_VP_VTL))
    }

    /// VTL1 enabled for the partition and on VP 0 (and `also_vp1`), from VTL0.
    fn vtl1(&mut self, also_vp1: bool) {
        assert_eq!(self.enable_partition(0, 1), HvStatus::SUCCESS);
        assert_eq!(self.enable_vp(0, 0, 1, &ctx1()), HvStatus::SUCCESS);
        if also_vp1 {
            // Once VTL1 runs somewhere, only VTL1 may enable it elsewhere: go through VTL1.
            assert!(matches!(
                self.call(0, vtl_call()).unwrap(),
                Outcome::Switched { from: 0, to: 1 }
            ));
            assert_eq!(self.enable_vp(0, 1, 1, &ctx1()), HvStatus::SUCCESS);
            assert!(matches!(
                self.call(0, vtl_return()).unwrap(),
                Outcome::Switched { from: 1, to: 0 }
            ));
        }
    }
}

fn slow_rep(code: u16, reps: u16, start: u16) -> HcallExit {
    HcallExit {
        control: Control::build(code, false, 0, reps, start),
        params: [IN, OUT],
        xmm: None,
    }
}

fn slow(code: u16) -> HcallExit {
    slow_rep(code, 0, 0)
}

fn fast(control: Control, params: [u64; 2], xmm: Option<[u64; 12]>) -> HcallExit {
    HcallExit {
        control,
        params,
        xmm,
    }
}

fn vtl_call() -> HcallExit {
    fast(Control(u64::from(code::VTL_CALL)), [0, 0], None)
}

fn vtl_return() -> HcallExit {
    fast(Control(u64::from(code::VTL_RETURN)), [0, 0], None)
}

fn partition_vtl_input(pid: u64, vtl: u8, flags: u8) -> Vec<u8> {
    let mut b = pid.to_le_bytes().to_vec();
    b.extend([vtl, flags, 0, 0, 0, 0, 0, 0]);
    b
}

fn vp_vtl_input(pid: u64, vp: u32, vtl: u8, ctx: &InitialVpContext) -> Vec<u8> {
    let mut b = pid.to_le_bytes().to_vec();
    b.extend(vp.to_le_bytes());
    b.extend([vtl, 0, 0, 0]);
    b.extend(ctx.to_bytes());
    b
}

fn seg(selector: u16, attributes: u16) -> SegmentRegister {
    SegmentRegister {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        attributes,
    }
}

/// A 64-bit initial context for VTL1.
fn ctx1() -> InitialVpContext {
    let code = seg(0x10, 0xa09b);
    let data = seg(0x18, 0xc093);
    InitialVpContext {
        rip: 0x7000,
        rsp: 0x8000,
        rflags: 0x2,
        segments: [
            code,
            data,
            data,
            data,
            data,
            data,
            seg(0x28, 0x8b),
            seg(0, 0),
        ],
        idtr: hv::TableRegister {
            limit: 0xfff,
            base: 0x9000,
        },
        gdtr: hv::TableRegister {
            limit: 0x37,
            base: 0xa000,
        },
        efer: 0xd01,
        cr0: 0x8000_0031,
        cr3: 0xb000,
        cr4: 0x20,
        msr_cr_pat: 0x0007_0406_0007_0406,
    }
}

fn header(pid: u64, vp: u32, ivtl: u8) -> Vec<u8> {
    let mut b = pid.to_le_bytes().to_vec();
    b.extend(vp.to_le_bytes());
    b.extend([ivtl, 0, 0, 0]);
    b
}

fn get_input(vp: u32, ivtl: u8, names: &[u32]) -> Vec<u8> {
    let mut b = header(u64::MAX, vp, ivtl);
    for n in names {
        b.extend(n.to_le_bytes());
    }
    b
}

fn set_input(vp: u32, ivtl: u8, regs: &[(u32, u128)]) -> Vec<u8> {
    let mut b = header(u64::MAX, vp, ivtl);
    for (n, v) in regs {
        b.extend(n.to_le_bytes());
        b.extend([0u8; 12]);
        b.extend(v.to_le_bytes());
    }
    b
}

const VTL0: u8 = 0x10; // HV_INPUT_VTL naming VTL0
const VTL1: u8 = 0x11;

// ---------------------------------------------------------------------------------------------
// EnablePartitionVtl / EnableVpVtl

#[test]
fn enable_partition_vtl_statuses() {
    let mut w = World::new();
    // Bad partition ID, then reserved bits in Flags, a reserved byte, MBEC without support.
    w.ram.put(IN, &partition_vtl_input(7, 1, 0));
    assert_eq!(
        w.st(0, slow(code::ENABLE_PARTITION_VTL)),
        HvStatus::INVALID_PARTITION_ID
    );
    w.ram.put(IN, &partition_vtl_input(u64::MAX, 1, 2));
    assert_eq!(
        w.st(0, slow(code::ENABLE_PARTITION_VTL)),
        HvStatus::INVALID_PARAMETER
    );
    let mut b = partition_vtl_input(u64::MAX, 1, 0);
    b[15] = 1;
    w.ram.put(IN, &b);
    assert_eq!(
        w.st(0, slow(code::ENABLE_PARTITION_VTL)),
        HvStatus::INVALID_PARAMETER
    );
    w.ram.put(IN, &partition_vtl_input(u64::MAX, 1, 1));
    assert_eq!(
        w.st(0, slow(code::ENABLE_PARTITION_VTL)),
        HvStatus::INVALID_PARAMETER
    );
    // VTL 0 and VTLs above the maximum.
    assert_eq!(w.enable_partition(0, 0), HvStatus::INVALID_PARAMETER);
    assert_eq!(w.enable_partition(0, 2), HvStatus::INVALID_PARAMETER);
    assert_eq!(w.p.enabled_vtls(), 1);
    // The real thing, then again.
    assert_eq!(w.enable_partition(0, 1), HvStatus::SUCCESS);
    assert_eq!(w.p.enabled_vtls(), 0b11);
    assert_eq!(w.enable_partition(1, 1), HvStatus::VTL_ALREADY_ENABLED);
    // Not on any VP yet.
    assert_eq!(w.p.vp(0).unwrap().enabled_vtls(), 1);
}

#[test]
fn enable_partition_vtl_fast_and_access_rules() {
    let mut w = World::with(PartitionConfig {
        max_vtl: 3,
        ..Default::default()
    });
    // Fast: PartitionId in RDX, TargetVtl/Flags in R8.
    let c = Control::build(code::ENABLE_PARTITION_VTL, true, 0, 0, 0);
    assert_eq!(w.st(0, fast(c, [u64::MAX, 1], None)), HvStatus::SUCCESS);
    // VTL0 is no longer the highest enabled VTL below 2 (VTL1 is): denied.
    assert_eq!(w.enable_partition(0, 2), HvStatus::ACCESS_DENIED);
    assert_eq!(w.enable_partition(0, 3), HvStatus::ACCESS_DENIED);
    assert_eq!(w.p.enabled_vtls(), 0b11);
}

#[test]
fn enable_partition_vtl_mbec_when_offered() {
    let mut w = World::with(PartitionConfig {
        vsm_capabilities: 1 << (1 + 1), // MbecVtlMask: VTL1
        ..Default::default()
    });
    w.ram.put(IN, &partition_vtl_input(u64::MAX, 1, 1));
    assert_eq!(w.st(0, slow(code::ENABLE_PARTITION_VTL)), HvStatus::SUCCESS);
    w.ram
        .put(IN, &get_input(0, 0, &[reg::VSM_PARTITION_STATUS]));
    assert_eq!(
        w.status(0, slow_rep(code::GET_VP_REGISTERS, 1, 0)),
        (HvStatus::SUCCESS, 1)
    );
    // EnabledVtlSet 0b11, MaximumVtl 1, MbecEnabledVtlSet 0b10.
    assert_eq!(w.ram.u64(OUT), 0b11 | (1 << 16) | (0b10 << 20));
}

#[test]
fn enable_vp_vtl_applies_the_initial_context() {
    let mut w = World::new();
    let ctx = ctx1();
    // Not enabled for the partition yet.
    assert_eq!(w.enable_vp(0, 0, 1, &ctx), HvStatus::INVALID_VTL_STATE);
    assert_eq!(w.enable_partition(0, 1), HvStatus::SUCCESS);
    // HV_VP_INDEX_SELF names the caller's VP.
    assert_eq!(
        w.enable_vp(0, hv::VP_INDEX_SELF, 1, &ctx),
        HvStatus::SUCCESS
    );
    let v = w.vcpu(0, 1);
    let s = v.st().clone();
    assert_eq!((s.regs.rip, s.regs.rsp, s.regs.rflags), (0x7000, 0x8000, 2));
    assert_eq!(
        (s.sregs.cr0, s.sregs.cr3, s.sregs.cr4, s.sregs.efer),
        (0x8000_0031, 0xb000, 0x20, 0xd01)
    );
    assert_eq!(
        (
            s.sregs.cs.selector,
            s.sregs.cs.l,
            s.sregs.cs.dpl,
            s.sregs.cs.present
        ),
        (0x10, 1, 0, 1)
    );
    assert_eq!(
        (s.sregs.ss.selector, s.sregs.ss.db, s.sregs.ss.g),
        (0x18, 1, 1)
    );
    assert_eq!((s.sregs.tr.selector, s.sregs.tr.type_), (0x28, 0xb));
    assert_eq!(s.sregs.ldt.unusable, 1, "a null LDT is unusable");
    assert_eq!((s.sregs.idt.base, s.sregs.idt.limit), (0x9000, 0xfff));
    assert_eq!((s.sregs.gdt.base, s.sregs.gdt.limit), (0xa000, 0x37));
    assert_eq!(s.msrs[&hv::msr::PAT], 0x0007_0406_0007_0406);
    assert_eq!(w.p.vp(0).unwrap().enabled_vtls(), 0b11);
    assert_eq!(
        w.p.vp(0).unwrap().active_vtl(),
        0,
        "enabling does not switch"
    );
    // Again.
    assert_eq!(w.enable_vp(0, 0, 1, &ctx), HvStatus::VTL_ALREADY_ENABLED);
}

#[test]
fn enable_vp_vtl_statuses() {
    let mut w = World::new();
    let ctx = ctx1();
    assert_eq!(w.enable_partition(0, 1), HvStatus::SUCCESS);
    assert_eq!(w.enable_vp(0, 9, 1, &ctx), HvStatus::INVALID_VP_INDEX);
    assert_eq!(w.enable_vp(0, 0, 0, &ctx), HvStatus::INVALID_PARAMETER);
    assert_eq!(w.enable_vp(0, 0, 2, &ctx), HvStatus::INVALID_PARAMETER);
    w.ram.put(IN, &vp_vtl_input(3, 0, 1, &ctx));
    assert_eq!(
        w.st(0, slow(code::ENABLE_VP_VTL)),
        HvStatus::INVALID_PARTITION_ID
    );
    let mut b = vp_vtl_input(u64::MAX, 0, 1, &ctx);
    b[14] = 1;
    w.ram.put(IN, &b);
    assert_eq!(
        w.st(0, slow(code::ENABLE_VP_VTL)),
        HvStatus::INVALID_PARAMETER
    );
    // 240 bytes of input do not fit in registers.
    let c = Control::build(code::ENABLE_VP_VTL, true, 0, 0, 0);
    assert_eq!(
        w.st(0, fast(c, [u64::MAX, 1 << 32], Some([0; 12]))),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    // A context KVM refuses: the guest's mistake, and the VTL stays disabled.
    w.vcpu(0, 1).st().refuse_sregs = true;
    assert_eq!(w.enable_vp(0, 0, 1, &ctx), HvStatus::INVALID_PARAMETER);
    w.vcpu(0, 1).st().refuse_sregs = false;
    let mut bad_pat = ctx;
    bad_pat.msr_cr_pat = 0x0808_0808_0808_0808;
    assert_eq!(w.enable_vp(0, 0, 1, &bad_pat), HvStatus::INVALID_PARAMETER);
    assert_eq!(w.p.vp(0).unwrap().enabled_vtls(), 1);
    // VTL0 enables VTL1 on VP 0 (initial enabling); then VTL1 runs somewhere, and VTL0 may no
    // longer enable it on VP 1.
    assert_eq!(w.enable_vp(0, 0, 1, &ctx), HvStatus::SUCCESS);
    assert_eq!(w.enable_vp(1, 1, 1, &ctx), HvStatus::ACCESS_DENIED);
    assert_eq!(w.enable_vp(0, 1, 1, &ctx), HvStatus::ACCESS_DENIED);
    // VTL1 may.
    w.call(0, vtl_call()).unwrap();
    assert_eq!(w.enable_vp(0, 1, 1, &ctx), HvStatus::SUCCESS);
    assert_eq!(w.p.vp(1).unwrap().enabled_vtls(), 0b11);
}

#[test]
fn enable_vp_vtl_creates_missing_siblings() {
    let mut w = World::new();
    w.p.add_vp(5, 10, MockVcpu::default()).unwrap();
    w.v.insert((5, 0), MockVcpu::default());
    assert_eq!(w.enable_partition(0, 1), HvStatus::SUCCESS);
    w.factory.refuse = true;
    assert_eq!(w.enable_vp(5, 5, 1, &ctx1()), HvStatus::NO_RESOURCES);
    w.factory.refuse = false;
    assert_eq!(w.enable_vp(5, 5, 1, &ctx1()), HvStatus::SUCCESS);
    // VP index, APIC ID, VTL, and the VTL's group.
    assert_eq!(w.factory.made, vec![(5, 10, 1, 1)]);
    let vp = w.p.vp(5).unwrap();
    assert_eq!(vp.vcpu(1).unwrap().st().regs.rip, 0x7000);
}

#[test]
fn enable_vp_vtl_makes_the_sibling_runnable() {
    use kvm_bindings::{KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
    let mut w = World::new();
    let v1 = w.vcpu(0, 1);
    assert_eq!(v1.st().mp_state, KVM_MP_STATE_UNINITIALIZED);
    assert_eq!(w.enable_partition(0, 1), HvStatus::SUCCESS);
    // A context KVM refuses leaves the sibling as it was: disabled, not runnable.
    v1.st().refuse_sregs = true;
    assert_eq!(w.enable_vp(0, 0, 1, &ctx1()), HvStatus::INVALID_PARAMETER);
    assert_eq!(v1.st().mp_state, KVM_MP_STATE_UNINITIALIZED);
    v1.st().refuse_sregs = false;
    // A registered sibling: runnable with its initial context, so its first KVM_RUN (the
    // VtlCall below) runs it rather than waiting for INIT/SIPI.
    assert_eq!(w.enable_vp(0, 0, 1, &ctx1()), HvStatus::SUCCESS);
    assert_eq!(v1.st().mp_state, KVM_MP_STATE_RUNNABLE);
    assert_eq!(
        w.call(0, vtl_call()).unwrap(),
        Outcome::Switched { from: 0, to: 1 }
    );
    // A sibling the factory creates on demand likewise (VTL1 enables it: it runs already).
    w.p.add_vp(5, 10, MockVcpu::default()).unwrap();
    assert_eq!(w.enable_vp(0, 5, 1, &ctx1()), HvStatus::SUCCESS);
    let made = w.factory.created[0].clone();
    assert_eq!(made.st().mp_state, KVM_MP_STATE_RUNNABLE);
    assert_eq!(made.st().regs.rip, 0x7000);
}

#[test]
fn complete_pending_refuses_a_vcpu_kvm_would_not_complete() {
    use kvm_bindings::{
        KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
        KVM_MP_STATE_UNINITIALIZED,
    };
    let eintr = || Err(io::Error::from_raw_os_error(libc::EINTR));
    // KVM_RUN(immediate_exit) says EINTR both after running the completion and, for an
    // UNINITIALIZED vCPU, before it: only the MP state tells them apart.
    for mp in [KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED] {
        let mut ran = false;
        let r = super::backend::complete_with(mp, || {
            ran = true;
            eintr()
        });
        let e = r.expect_err("no completion ran");
        assert!(!ran, "KVM_RUN was not even tried");
        assert!(e.to_string().contains("KVM_SET_MP_STATE"), "{e}");
        assert!(completion_blocker(mp).is_some());
    }
    for mp in [KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_HALTED] {
        super::backend::complete_with(mp, eintr).unwrap();
        super::backend::complete_with(mp, || Ok(())).unwrap();
        let e = super::backend::complete_with(mp, || Err(einval())).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
}

#[test_log::test]
fn a_parked_vtl_reset_by_init_is_a_vmm_error_not_a_completion() {
    // VTL1 sets the RIP of the parked VTL0, whose pending VtlCall completion must run first;
    // an INIT reset VTL0 meanwhile: nothing can complete, and the state machine says so
    // instead of writing RIP under a completion that never ran.
    let mut w = World::new();
    w.vtl1(false);
    let v0 = w.vcpu(0, 0);
    w.call(0, vtl_call()).unwrap();
    v0.st().mp_state = kvm_bindings::KVM_MP_STATE_INIT_RECEIVED;
    w.ram.put(IN, &set_input(0, VTL0, &[(reg::RIP, 0x3000)]));
    let r = w.call(0, slow_rep(code::SET_VP_REGISTERS, 1, 0));
    assert!(
        matches!(
            r,
            Err(VtlError::Vcpu {
                op: "KVM_RUN(immediate_exit)",
                vp_index: 0,
                vtl: 0,
                ..
            })
        ),
        "{r:?}"
    );
    let s = v0.st();
    assert_eq!((s.pending, s.completions), (true, 0));
    assert_ne!(s.regs.rip, 0x3000);
}

#[test]
fn vmm_mistakes_are_errors() {
    let mut w = World::new();
    let mut env_none = NoProtections;
    let mut sib = NoSiblings;
    let mut env = Env {
        memory: &w.ram,
        delivery: &w.sent,
        protections: &mut env_none,
        siblings: &mut sib as &mut dyn SiblingFactory<MockVcpu>,
    };
    let r = w.p.handle_hypercall(&mut env, 7, 0, &vtl_call());
    assert!(matches!(r, Err(VtlError::UnknownVp(7))));
    let r = w.p.handle_hypercall(&mut env, 0, 1, &vtl_call());
    assert!(matches!(
        r,
        Err(VtlError::NotActive {
            vp_index: 0,
            vtl: 1,
            active: 0
        })
    ));
    assert!(matches!(
        w.p.add_vp(0, 0, MockVcpu::default()),
        Err(VtlError::DuplicateVp(0))
    ));
    assert!(matches!(
        w.p.add_sibling(0, 1, MockVcpu::default()),
        Err(VtlError::DuplicateSibling {
            vp_index: 0,
            vtl: 1
        })
    ));
    assert!(matches!(
        w.p.add_sibling(0, 2, MockVcpu::default()),
        Err(VtlError::BadVtl(2))
    ));
}

// ---------------------------------------------------------------------------------------------
// VtlCall / VtlReturn

/// Distinct values in every shared and private register of `v`.
fn paint(v: &MockVcpu, k: u64) {
    let mut s = v.st();
    s.regs = kvm_regs {
        rax: 0,
        rbx: k + 1,
        rcx: u64::from(code::VTL_CALL),
        rdx: k + 3,
        rsi: k + 4,
        rdi: k + 5,
        rsp: k + 6,
        rbp: k + 7,
        r8: k + 8,
        r9: k + 9,
        r10: k + 10,
        r11: k + 11,
        r12: k + 12,
        r13: k + 13,
        r14: k + 14,
        r15: k + 15,
        rip: k + 16,
        rflags: k + 17,
    };
    s.sregs.cr0 = k + 20;
    s.sregs.cr2 = k + 21;
    s.sregs.cr3 = k + 22;
    s.sregs.efer = k + 23;
    s.dregs.db = [k + 30, k + 31, k + 32, k + 33];
    s.dregs.dr6 = k + 34;
    s.dregs.dr7 = k + 35;
    s.xcrs.xcrs[0].value = k + 40;
    s.xsave[40] = k as u32 + 41; // XMM0, low dword
    s.msrs.insert(hv::msr::LSTAR, k + 50);
}

#[test]
fn vtl_call_carries_shared_state_and_keeps_private_state() {
    let mut w = World::new();
    w.vtl1(false);
    let (v0, v1) = (w.vcpu(0, 0), w.vcpu(0, 1));
    paint(&v0, 0x1000);
    paint(&v1, 0x2000);
    v1.st().msrs.insert(hv::msr::VP_ASSIST_PAGE, ASSIST1 | 1);

    assert_eq!(
        w.call(0, vtl_call()).unwrap(),
        Outcome::Switched { from: 0, to: 1 }
    );
    let vp = w.p.vp(0).unwrap();
    assert_eq!(vp.active_vtl(), 1);
    let (a, b) = (v0.st().clone(), v1.st().clone());
    // Shared: GPRs but RSP, CR2, DR0-3, XCR0, XSAVE.
    let shared = |r: &kvm_regs| {
        [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15,
        ]
    };
    assert_eq!(shared(&b.regs), shared(&a.regs));
    assert_eq!(b.sregs.cr2, a.sregs.cr2);
    assert_eq!(b.dregs.db, a.dregs.db);
    assert_eq!(b.xcrs.xcrs[0].value, a.xcrs.xcrs[0].value);
    assert_eq!(b.xsave[40], a.xsave[40]);
    // Private: kept.
    assert_eq!(
        (b.regs.rip, b.regs.rsp, b.regs.rflags),
        (0x2010, 0x2006, 0x2011)
    );
    assert_eq!(
        (b.sregs.cr0, b.sregs.cr3, b.sregs.efer),
        (0x2014, 0x2016, 0x2017)
    );
    assert_eq!((b.dregs.dr6, b.dregs.dr7), (0x2022, 0x2023));
    assert_eq!(b.msrs[&hv::msr::LSTAR], 0x2032);
    // The caller is untouched, parked with its completion pending (KVM's job on its next run).
    assert_eq!(a.regs.rip, 0x1010);
    assert!(a.pending && a.completions == 0);
    // Entry reason: VtlCall.
    assert_eq!(w.ram.get(ASSIST1 + 8, 4), 1u32.to_le_bytes());
}

#[test]
fn vtl_return_non_fast_restores_rax_rcx_from_the_assist_page() {
    let mut w = World::new();
    w.vtl1(false);
    let (v0, v1) = (w.vcpu(0, 0), w.vcpu(0, 1));
    paint(&v0, 0x1000);
    v1.st().msrs.insert(hv::msr::VP_ASSIST_PAGE, ASSIST1 | 1);
    w.call(0, vtl_call()).unwrap();
    // VTL1 computes, leaves VTL0's RAX/RCX in its control area, and returns (RAX = 0).
    {
        let mut s = v1.st();
        s.regs.rbx = 0xb0b;
        s.regs.rax = 0;
        s.regs.rcx = u64::from(code::VTL_RETURN);
        s.sregs.cr2 = 0xc2;
    }
    w.ram.put(ASSIST1 + 16, &0xaaaa_u64.to_le_bytes());
    w.ram.put(ASSIST1 + 24, &0xcccc_u64.to_le_bytes());
    assert_eq!(
        w.call(0, vtl_return()).unwrap(),
        Outcome::Switched { from: 1, to: 0 }
    );
    assert_eq!(w.p.vp(0).unwrap().active_vtl(), 0);
    let a = v0.st().clone();
    assert_eq!(
        (a.regs.rax, a.regs.rcx, a.regs.rbx),
        (0xaaaa, 0xcccc, 0xb0b)
    );
    assert_eq!(a.sregs.cr2, 0xc2);
    assert_eq!(
        (a.regs.rip, a.regs.rsp, a.sregs.cr0),
        (0x1010, 0x1006, 0x1014)
    );
    // A VTL return writes no entry reason anywhere.
    assert_eq!(w.ram.get(ASSIST1 + 8, 4), 1u32.to_le_bytes());
}

#[test]
fn vtl_return_fast_keeps_the_shared_rax_rcx() {
    let mut w = World::new();
    w.vtl1(false);
    let v1 = w.vcpu(0, 1);
    v1.st().msrs.insert(hv::msr::VP_ASSIST_PAGE, ASSIST1 | 1);
    w.call(0, vtl_call()).unwrap();
    w.ram.put(ASSIST1 + 16, &0xaaaa_u64.to_le_bytes());
    {
        let mut s = v1.st();
        s.regs.rax = 1; // fast
        s.regs.rcx = u64::from(code::VTL_RETURN);
    }
    assert_eq!(
        w.call(0, vtl_return()).unwrap(),
        Outcome::Switched { from: 1, to: 0 }
    );
    let a = w.vcpu(0, 0).st().clone();
    assert_eq!((a.regs.rax, a.regs.rcx), (1, u64::from(code::VTL_RETURN)));
}

#[test_log::test]
fn disabled_assist_pages_are_left_alone() {
    let mut w = World::new();
    w.vtl1(false);
    let v1 = w.vcpu(0, 1);
    v1.st().msrs.insert(hv::msr::VP_ASSIST_PAGE, ASSIST1); // enable bit clear
    w.call(0, vtl_call()).unwrap();
    assert_eq!(w.ram.get(ASSIST1 + 8, 4), [0; 4]);
    w.ram.put(ASSIST1 + 16, &0xaaaa_u64.to_le_bytes());
    v1.st().regs.rax = 0;
    v1.st().regs.rcx = 0x12;
    w.call(0, vtl_return()).unwrap();
    assert_eq!(
        w.vcpu(0, 0).st().regs.rax,
        0,
        "not restored from a disabled page"
    );
    // An assist page outside RAM: nothing written, no error.
    v1.st()
        .msrs
        .insert(hv::msr::VP_ASSIST_PAGE, (RAM as u64 + 0x1000) | 1);
    w.vcpu(0, 0).st().regs.rax = 0;
    assert_eq!(
        w.call(0, vtl_call()).unwrap(),
        Outcome::Switched { from: 0, to: 1 }
    );
}

#[test_log::test]
fn round_trips_repeat() {
    let mut w = World::new();
    w.vtl1(false);
    for i in 0..5u64 {
        w.vcpu(0, 0).st().regs.rax = 0;
        w.vcpu(0, 0).st().regs.rdx = i;
        assert_eq!(
            w.call(0, vtl_call()).unwrap(),
            Outcome::Switched { from: 0, to: 1 }
        );
        assert_eq!(w.vcpu(0, 1).st().regs.rdx, i);
        w.vcpu(0, 1).st().regs.rax = 1;
        w.vcpu(0, 1).st().regs.rdx = i + 100;
        assert_eq!(
            w.call(0, vtl_return()).unwrap(),
            Outcome::Switched { from: 1, to: 0 }
        );
        assert_eq!(w.vcpu(0, 0).st().regs.rdx, i + 100);
    }
}

/// Found on the real kernel by the VP runner's tests: KVM keeps `hcall.result` from the
/// previous forwarded hypercall, and completes a VtlCall/VtlReturn whose result is a failure
/// status by writing it to RAX. A VtlCall right after a denied IPI must not hand the caller
/// that stale ACCESS_DENIED, neither on the switch nor on a #UD.
#[test]
fn switches_and_faults_clear_a_stale_failure_result() {
    let mut w = World::new();
    w.vtl1(false);
    let (v0, v1) = (w.vcpu(0, 0), w.vcpu(0, 1));
    v1.st().msrs.insert(hv::msr::VP_ASSIST_PAGE, ASSIST1 | 1);
    // VTL0's IPI to VTL1 is denied: the exit now holds ACCESS_DENIED.
    w.ram.put(IN, &ipi_input(0x40, 0x11, 1));
    assert_eq!(
        w.st(0, slow(code::SEND_SYNTHETIC_CLUSTER_IPI)),
        HvStatus::ACCESS_DENIED
    );
    assert_eq!(v0.st().hcall_result, HvStatus::ACCESS_DENIED.result(0));
    v0.st().regs.rax = 0;
    assert_eq!(
        w.call(0, vtl_call()).unwrap(),
        Outcome::Switched { from: 0, to: 1 }
    );
    assert_eq!(v0.st().hcall_result, 0, "the parked VtlCall succeeded");
    w.ram.put(ASSIST1 + 16, &0xaaaa_u64.to_le_bytes());
    w.ram.put(ASSIST1 + 24, &0xcccc_u64.to_le_bytes());
    v1.st().hcall_result = HvStatus::INVALID_PARAMETER.result(0);
    v1.st().regs.rax = 0;
    v1.st().regs.rcx = u64::from(code::VTL_RETURN);
    assert_eq!(
        w.call(0, vtl_return()).unwrap(),
        Outcome::Switched { from: 1, to: 0 }
    );
    assert_eq!(v1.st().hcall_result, 0, "the parked VtlReturn succeeded");
    // KVM_RUN of VTL0 completes its VtlCall: RAX stays what the VtlReturn restored.
    w.vcpu(0, 0).complete_pending().unwrap();
    let r = v0.st().regs;
    assert_eq!((r.rax, r.rcx), (0xaaaa, 0xcccc));

    // A #UD'd VtlCall (RAX != 0) after another denied IPI keeps its RAX too.
    assert_eq!(
        w.st(0, slow(code::SEND_SYNTHETIC_CLUSTER_IPI)),
        HvStatus::ACCESS_DENIED
    );
    v0.st().regs.rax = 0x5555;
    assert_eq!(
        w.call(0, vtl_call()).unwrap(),
        Outcome::Exception { vector: 6 }
    );
    assert_eq!(v0.st().regs.rax, 0x5555, "#UD leaves RAX alone");
}

fn assert_ud(w: &mut World, vp: u32, vtl: u8, exit: HcallExit) {
    let v = w.vcpu(vp, vtl);
    let rip = v.st().regs.rip;
    assert_eq!(w.call(vp, exit).unwrap(), Outcome::Exception { vector: 6 });
    let s = v.st().clone();
    assert_eq!(s.regs.rip, rip, "#UD points at the hypercall instruction");
    assert!(!s.pending, "the completion was finished first");
    assert_eq!((s.events.exception.injected, s.events.exception.nr), (1, 6));
    assert_eq!(w.p.vp(vp).unwrap().active_vtl(), vtl, "no switch");
    v.st().events = kvm_vcpu_events::default();
}

#[test_log::test]
fn vtl_call_and_return_faults() {
    let mut w = World::new();
    w.vcpu(0, 0).st().regs.rip = 0x4444;
    // No higher VTL on this VP.
    assert_ud(&mut w, 0, 0, vtl_call());
    // The lowest VTL cannot return.
    assert_ud(&mut w, 0, 0, vtl_return());
    w.vtl1(false);
    // VTL1 runs on VP 0 only: VP 1 still has nothing above VTL0.
    assert_ud(&mut w, 1, 0, vtl_call());
    // RAX (the input) must be 0; the control word must be the bare call code.
    w.vcpu(0, 0).st().regs.rax = 5;
    assert_ud(&mut w, 0, 0, vtl_call());
    w.vcpu(0, 0).st().regs.rax = 0;
    assert_ud(
        &mut w,
        0,
        0,
        fast(Control::build(code::VTL_CALL, true, 0, 0, 0), [0, 0], None),
    );
    assert_ud(
        &mut w,
        0,
        0,
        fast(Control::build(code::VTL_CALL, false, 0, 1, 0), [0, 0], None),
    );
    // VtlReturn: RAX bits other than 0 are reserved.
    assert_eq!(
        w.call(0, vtl_call()).unwrap(),
        Outcome::Switched { from: 0, to: 1 }
    );
    w.vcpu(0, 1).st().regs.rax = 2;
    assert_ud(&mut w, 0, 1, vtl_return());
}

#[test]
fn vtl_call_skips_to_the_next_enabled_vtl() {
    let mut w = World::with(PartitionConfig {
        max_vtl: 2,
        ..Default::default()
    });
    let v2 = MockVcpu::default();
    w.p.add_sibling(0, 2, v2.clone()).unwrap();
    w.v.insert((0, 2), v2);
    // Only VTL2 enabled (VTLs need not be consecutive).
    assert_eq!(w.enable_partition(0, 2), HvStatus::SUCCESS);
    assert_eq!(w.enable_vp(0, 0, 2, &ctx1()), HvStatus::SUCCESS);
    assert_eq!(
        w.call(0, vtl_call()).unwrap(),
        Outcome::Switched { from: 0, to: 2 }
    );
    w.vcpu(0, 2).st().regs.rax = 1;
    assert_eq!(
        w.call(0, vtl_return()).unwrap(),
        Outcome::Switched { from: 2, to: 0 }
    );
}

// ---------------------------------------------------------------------------------------------
// Get/SetVpRegisters

#[test]
fn get_vp_registers_reads_vsm_and_lower_vtl_state() {
    let mut w = World::new();
    w.vtl1(false);
    paint(&w.vcpu(0, 0), 0x1000);
    {
        let v0 = w.vcpu(0, 0);
        let mut s = v0.st();
        s.sregs.cs = hv::SegmentRegister {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x10,
            attributes: 0xa09b,
        }
        .to_kvm();
        s.sregs.gdt.base = 0x5000;
        s.sregs.gdt.limit = 0x7f;
    }
    w.call(0, vtl_call()).unwrap();
    w.vcpu(0, 1).st().regs.rbx = 0x5151;
    let names = [
        reg::RIP,
        reg::RSP,
        reg::CR0,
        reg::CR3,
        reg::EFER,
        reg::RAX + 3, // RBX: shared, so VTL1's current value
        reg::ES + 1,  // CS
        reg::GDTR,
        reg::VSM_VP_STATUS,
        reg::VSM_PARTITION_STATUS,
        reg::VSM_CAPABILITIES,
        reg::VSM_CODE_PAGE_OFFSETS,
        reg::LSTAR,
    ];
    w.ram.put(IN, &get_input(hv::VP_INDEX_SELF, VTL0, &names));
    let n = names.len() as u16;
    assert_eq!(
        w.status(0, slow_rep(code::GET_VP_REGISTERS, n, 0)),
        (HvStatus::SUCCESS, n)
    );
    let out: Vec<u128> = (0..names.len())
        .map(|i| w.ram.u128(OUT + 16 * i as u64))
        .collect();
    assert_eq!(out[..6], [0x1010, 0x1006, 0x1014, 0x1016, 0x1017, 0x5151]);
    assert_eq!(SegmentRegister::from_u128(out[6]).selector, 0x10);
    assert_eq!(SegmentRegister::from_u128(out[6]).attributes, 0xa09b);
    assert_eq!(
        hv::TableRegister::from_u128(out[7]),
        hv::TableRegister {
            limit: 0x7f,
            base: 0x5000
        }
    );
    assert_eq!(
        out[8],
        1 | (0b11 << 16),
        "VTL1 active, VTLs 0 and 1 enabled"
    );
    assert_eq!(out[9], 0b11 | (1 << 16));
    assert_eq!(out[10..], [0, 0, 0x1032]);
}

#[test]
fn get_vp_registers_statuses() {
    let mut w = World::new();
    w.vtl1(false);
    // VTL0 may not read VTL1.
    w.ram.put(IN, &get_input(0, VTL1, &[reg::RIP]));
    assert_eq!(
        w.st(0, slow_rep(code::GET_VP_REGISTERS, 1, 0)),
        HvStatus::ACCESS_DENIED
    );
    w.call(0, vtl_call()).unwrap();
    // An unknown register at rep 2: reps 0 and 1 done and written.
    w.ram.put(
        IN,
        &get_input(0, VTL0, &[reg::RIP, reg::CR3, 0x1234_5678, reg::RSP]),
    );
    w.ram.put(OUT, &[0xee; 64]);
    assert_eq!(
        w.status(0, slow_rep(code::GET_VP_REGISTERS, 4, 0)),
        (HvStatus::INVALID_PARAMETER, 2)
    );
    assert_ne!(w.ram.get(OUT + 16, 16), [0xee; 16]);
    assert_eq!(w.ram.get(OUT + 32, 16), [0xee; 16]);
    // Restarting after the bad one: rep start 3.
    assert_eq!(
        w.status(0, slow_rep(code::GET_VP_REGISTERS, 4, 3)),
        (HvStatus::SUCCESS, 4)
    );
    // Rep start beyond the count.
    assert_eq!(
        w.st(0, slow_rep(code::GET_VP_REGISTERS, 1, 2)),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    // HV_INPUT_VTL reserved bits, bad partition, bad VP, a VTL not enabled on VP 1.
    w.ram.put(IN, &get_input(0, 0x20, &[reg::RIP]));
    assert_eq!(
        w.st(0, slow_rep(code::GET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_PARAMETER
    );
    let mut b = get_input(0, VTL0, &[reg::RIP]);
    b[0] = 0;
    w.ram.put(IN, &b);
    assert_eq!(
        w.st(0, slow_rep(code::GET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_PARTITION_ID
    );
    w.ram.put(IN, &get_input(8, VTL0, &[reg::RIP]));
    assert_eq!(
        w.st(0, slow_rep(code::GET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_VP_INDEX
    );
    w.ram.put(IN, &get_input(1, VTL1, &[reg::RIP]));
    assert_eq!(
        w.st(0, slow_rep(code::GET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_VTL_STATE
    );
    // Another VP: VSM registers yes, CPU state no.
    w.ram
        .put(IN, &get_input(1, VTL0, &[reg::VSM_VP_STATUS, reg::RIP]));
    assert_eq!(
        w.status(0, slow_rep(code::GET_VP_REGISTERS, 2, 0)),
        (HvStatus::INVALID_VP_STATE, 1)
    );
    assert_eq!(
        w.ram.u64(OUT),
        1 << 16,
        "VP 1: VTL0 active, only VTL0 enabled"
    );
    // VsmVpSecureConfigVtlN of a VTL not below the target.
    w.ram.put(
        IN,
        &get_input(0, VTL1, &[reg::VSM_VP_SECURE_CONFIG_VTL0 + 1]),
    );
    assert_eq!(
        w.st(0, slow_rep(code::GET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_PARAMETER
    );
}

#[test]
fn malformed_register_calls_get_statuses() {
    let mut w = World::new();
    w.ram.put(IN, &get_input(0, 0, &[reg::RIP]));
    // Input GPA not 8-byte aligned, or the rep list crossing the input page.
    let mut e = slow_rep(code::GET_VP_REGISTERS, 1, 0);
    e.params[0] = IN + 4;
    assert_eq!(w.st(0, e), HvStatus::INVALID_ALIGNMENT);
    let mut e = slow_rep(code::GET_VP_REGISTERS, 1, 0);
    e.params[0] = IN + 4096 - 16;
    w.ram.put(IN + 4096 - 16, &get_input(0, 0, &[]));
    assert_eq!(w.status(0, e), (HvStatus::INVALID_ALIGNMENT, 0));
    // Input not in RAM, output not in RAM, output crossing its page.
    let mut e = slow_rep(code::GET_VP_REGISTERS, 1, 0);
    e.params[0] = 1 << 40;
    assert_eq!(w.st(0, e), HvStatus::INVALID_HYPERCALL_INPUT);
    let mut e = slow_rep(code::GET_VP_REGISTERS, 1, 0);
    e.params[1] = 1 << 40;
    assert_eq!(w.st(0, e), HvStatus::INVALID_HYPERCALL_INPUT);
    let mut e = slow_rep(code::GET_VP_REGISTERS, 2, 0);
    e.params[1] = OUT + 4096 - 16;
    assert_eq!(w.st(0, e), HvStatus::INVALID_ALIGNMENT);
    // The last qword of the address space: not RAM, and no arithmetic overflow on the way.
    let mut e = slow_rep(code::GET_VP_REGISTERS, 1, 0);
    e.params[0] = !7;
    assert_eq!(w.st(0, e), HvStatus::INVALID_HYPERCALL_INPUT);
    // The largest rep count: the list runs off the input page.
    assert_eq!(
        w.st(0, slow_rep(code::GET_VP_REGISTERS, 0xfff, 0)),
        HvStatus::INVALID_ALIGNMENT
    );
    // Reserved control bits; a rep count or variable header on a simple call.
    let mut e = slow(code::ENABLE_PARTITION_VTL);
    e.control.0 |= 1 << 31;
    assert_eq!(w.st(0, e), HvStatus::INVALID_HYPERCALL_INPUT);
    assert_eq!(
        w.st(0, slow_rep(code::ENABLE_PARTITION_VTL, 1, 0)),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    let e = HcallExit {
        control: Control::build(code::ENABLE_VP_VTL, false, 1, 0, 0),
        params: [IN, OUT],
        xmm: None,
    };
    assert_eq!(w.st(0, e), HvStatus::INVALID_HYPERCALL_INPUT);
    let e = HcallExit {
        control: Control::build(code::GET_VP_REGISTERS, false, 2, 1, 0),
        params: [IN, OUT],
        xmm: None,
    };
    assert_eq!(w.st(0, e), HvStatus::INVALID_HYPERCALL_INPUT);
    // A rep call with zero reps does nothing and succeeds.
    assert_eq!(
        w.status(0, slow_rep(code::SET_VP_REGISTERS, 0, 0)),
        (HvStatus::SUCCESS, 0)
    );
    // Not ours.
    assert_eq!(w.call(0, slow(0x5c)).unwrap(), Outcome::NotHandled);
}

#[test]
fn set_vp_registers_writes_a_parked_lower_vtl() {
    let mut w = World::new();
    w.vtl1(false);
    let v0 = w.vcpu(0, 0);
    v0.st().regs.rip = 0x1000;
    w.call(0, vtl_call()).unwrap();
    assert!(v0.st().pending);
    w.ram.put(
        IN,
        &set_input(
            0,
            VTL0,
            &[
                (reg::RIP, 0x3000),
                (reg::CR3, 0x4000),
                (reg::RAX + 2, 0xd),
                (reg::LSTAR, 0x77),
            ],
        ),
    );
    assert_eq!(
        w.status(0, slow_rep(code::SET_VP_REGISTERS, 4, 0)),
        (HvStatus::SUCCESS, 4)
    );
    let a = v0.st().clone();
    // The pending completion (RIP += 3) ran before the write, not after it.
    assert_eq!((a.regs.rip, a.pending, a.completions), (0x3000, false, 1));
    assert_eq!(a.sregs.cr3, 0x4000);
    assert_eq!(a.msrs[&hv::msr::LSTAR], 0x77);
    // RDX is shared: it went to the active VTL1 vCPU, and reaches VTL0 on the return.
    assert_eq!(w.vcpu(0, 1).st().regs.rdx, 0xd);
    w.vcpu(0, 1).st().regs.rax = 1;
    w.call(0, vtl_return()).unwrap();
    assert_eq!(v0.st().regs.rdx, 0xd);
    assert_eq!(v0.st().regs.rip, 0x3000, "KVM has nothing left to advance");
}

#[test]
fn set_vp_registers_vsm_registers() {
    let mut w = World::new();
    w.vtl1(false);
    // VTL0 has no partition config to set.
    w.ram
        .put(IN, &set_input(0, 0, &[(reg::VSM_PARTITION_CONFIG, 1)]));
    assert_eq!(
        w.st(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_PARAMETER
    );
    w.call(0, vtl_call()).unwrap();
    // EnableVtlProtection with default mask RWX.
    let cfg = 1 | (0b1111 << 1);
    w.ram
        .put(IN, &set_input(0, 0, &[(reg::VSM_PARTITION_CONFIG, cfg)]));
    assert_eq!(
        w.status(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
        (HvStatus::SUCCESS, 1)
    );
    assert_eq!(w.p.vsm_partition_config(1), cfg as u64);
    assert_eq!(w.prot.configs, vec![(1, cfg as u64)]);
    // It cannot be turned off again, and the intercept bits are not offered.
    w.ram
        .put(IN, &set_input(0, 0, &[(reg::VSM_PARTITION_CONFIG, 0)]));
    assert_eq!(
        w.st(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_REGISTER_VALUE
    );
    w.ram.put(
        IN,
        &set_input(0, 0, &[(reg::VSM_PARTITION_CONFIG, cfg | 1 << 9)]),
    );
    assert_eq!(
        w.st(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_REGISTER_VALUE
    );
    // VsmVpSecureConfigVtl0: TlbLocked yes, MbecEnabled not without MBEC; Vtl1 not from VTL1.
    w.ram
        .put(IN, &set_input(0, 0, &[(reg::VSM_VP_SECURE_CONFIG_VTL0, 2)]));
    assert_eq!(
        w.st(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
        HvStatus::SUCCESS
    );
    w.ram.put(
        IN,
        &get_input(
            0,
            0,
            &[reg::VSM_VP_SECURE_CONFIG_VTL0, reg::VSM_PARTITION_CONFIG],
        ),
    );
    assert_eq!(
        w.st(0, slow_rep(code::GET_VP_REGISTERS, 2, 0)),
        HvStatus::SUCCESS
    );
    assert_eq!((w.ram.u64(OUT), w.ram.u64(OUT + 16)), (2, cfg as u64));
    w.ram
        .put(IN, &set_input(0, 0, &[(reg::VSM_VP_SECURE_CONFIG_VTL0, 1)]));
    assert_eq!(
        w.st(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_REGISTER_VALUE
    );
    w.ram.put(
        IN,
        &set_input(0, 0, &[(reg::VSM_VP_SECURE_CONFIG_VTL0 + 1, 0)]),
    );
    assert_eq!(
        w.st(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_PARAMETER
    );
    // Read-only registers.
    for r in [
        reg::VSM_VP_STATUS,
        reg::VSM_PARTITION_STATUS,
        reg::VSM_CAPABILITIES,
        reg::VP_INDEX,
        reg::APIC_BASE,
    ] {
        w.ram.put(IN, &set_input(0, VTL0, &[(r, 0)]));
        assert_eq!(
            w.st(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
            HvStatus::ACCESS_DENIED,
            "{r:#x}"
        );
    }
    // Reserved fields of an hv_register_assoc, at rep 1.
    let mut b = set_input(0, VTL0, &[(reg::CR3, 1), (reg::CR3, 2)]);
    b[16 + 32 + 6] = 1;
    w.ram.put(IN, &b);
    assert_eq!(
        w.status(0, slow_rep(code::SET_VP_REGISTERS, 2, 0)),
        (HvStatus::INVALID_PARAMETER, 1)
    );
    // The caller's own RIP (its hypercall completion is pending), from VTL1 for VTL1.
    w.ram.put(IN, &set_input(0, 0, &[(reg::RIP, 0x1234)]));
    assert_eq!(
        w.st(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_VP_STATE
    );
    // A value KVM refuses.
    w.ram.put(
        IN,
        &set_input(0, VTL0, &[(reg::PAT, 0x0909_0909_0909_0909)]),
    );
    assert_eq!(
        w.st(0, slow_rep(code::SET_VP_REGISTERS, 1, 0)),
        HvStatus::INVALID_REGISTER_VALUE
    );
}

#[test]
fn fast_get_and_set_vp_registers() {
    let mut w = World::new();
    w.vtl1(false);
    w.vcpu(0, 0).st().sregs.cr3 = 0x3333;
    w.vcpu(0, 0).st().regs.rip = 0x1111;
    w.call(0, vtl_call()).unwrap();
    // Get: header in RDX/R8, names in XMM0 (4 per register); output from XMM1 on.
    let mut xmm = [0u64; 12];
    xmm[0] = u64::from(reg::CR3) | (u64::from(reg::RIP) << 32);
    let c = Control::build(code::GET_VP_REGISTERS, true, 0, 2, 0);
    let e = fast(c, [u64::MAX, u64::from(VTL0) << 32], Some(xmm));
    assert_eq!(w.status(0, e), (HvStatus::SUCCESS, 2));
    let x = w.vcpu(0, 1).st().xsave;
    let xmm_n = |n: usize| u64::from(x[40 + 4 * n]) | (u64::from(x[41 + 4 * n]) << 32);
    assert_eq!((xmm_n(1), xmm_n(2)), (0x3333, 0x1111));
    // Too many for the registers: 5 names fill XMM0-1, outputs need XMM2..6.
    let c = Control::build(code::GET_VP_REGISTERS, true, 0, 5, 0);
    assert_eq!(
        w.st(0, fast(c, [u64::MAX, 0], Some(xmm))),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    // Without XMM input there are no names to read.
    let c = Control::build(code::GET_VP_REGISTERS, true, 0, 1, 0);
    assert_eq!(
        w.st(0, fast(c, [u64::MAX, 0], None)),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    // Set: one hv_register_assoc in XMM0-1.
    let mut xmm = [0u64; 12];
    xmm[0] = u64::from(reg::CR3);
    xmm[2] = 0x5555;
    let c = Control::build(code::SET_VP_REGISTERS, true, 0, 1, 0);
    let e = fast(c, [u64::MAX, u64::from(VTL0) << 32], Some(xmm));
    assert_eq!(w.status(0, e), (HvStatus::SUCCESS, 1));
    assert_eq!(w.vcpu(0, 0).st().sregs.cr3, 0x5555);
}

// ---------------------------------------------------------------------------------------------
// Cross-VTL IPIs

fn ipi_input(vector: u32, ivtl: u8, mask: u64) -> Vec<u8> {
    let mut b = vector.to_le_bytes().to_vec();
    b.extend([ivtl, 0, 0, 0]);
    b.extend(mask.to_le_bytes());
    b
}

fn ipi_ex_input(vector: u32, ivtl: u8, format: u64, mask: u64, banks: &[u64]) -> Vec<u8> {
    let mut b = vector.to_le_bytes().to_vec();
    b.extend([ivtl, 0, 0, 0]);
    b.extend(format.to_le_bytes());
    b.extend(mask.to_le_bytes());
    for q in banks {
        b.extend(q.to_le_bytes());
    }
    b
}

fn ipi_ex(var: u16) -> HcallExit {
    HcallExit {
        control: Control::build(code::SEND_SYNTHETIC_CLUSTER_IPI_EX, false, var, 0, 0),
        params: [IN, OUT],
        xmm: None,
    }
}

#[test]
fn ipi_to_a_higher_vtl_is_denied() {
    let mut w = World::new();
    w.vtl1(true);
    w.ram.put(IN, &ipi_input(0x30, VTL1, 0b11));
    assert_eq!(
        w.st(0, slow(code::SEND_SYNTHETIC_CLUSTER_IPI)),
        HvStatus::ACCESS_DENIED
    );
    w.ram
        .put(IN, &ipi_ex_input(0x30, VTL1, hv::GENERIC_SET_ALL, 0, &[]));
    assert_eq!(w.st(0, ipi_ex(0)), HvStatus::ACCESS_DENIED);
    // Fast form: vector and HV_INPUT_VTL in RDX, mask in R8.
    let c = Control::build(code::SEND_SYNTHETIC_CLUSTER_IPI, true, 0, 0, 0);
    assert_eq!(
        w.st(0, fast(c, [0x30 | (u64::from(VTL1) << 32), 1], None)),
        HvStatus::ACCESS_DENIED
    );
    assert!(w.sent.0.borrow().is_empty());
}

#[test]
fn ipi_to_a_lower_vtl_goes_into_its_group() {
    let mut w = World::new();
    w.vtl1(true);
    w.call(0, vtl_call()).unwrap();
    w.ram.put(IN, &ipi_input(0x30, VTL0, 0b11));
    assert_eq!(
        w.st(0, slow(code::SEND_SYNTHETIC_CLUSTER_IPI)),
        HvStatus::SUCCESS
    );
    // Group 0 (VTL0's), each VP's APIC ID.
    assert_eq!(*w.sent.0.borrow(), vec![(0, 0, 0x30), (0, 2, 0x30)]);
    w.sent.0.borrow_mut().clear();
    // Fast.
    let c = Control::build(code::SEND_SYNTHETIC_CLUSTER_IPI, true, 0, 0, 0);
    assert_eq!(
        w.st(0, fast(c, [0x31 | (u64::from(VTL0) << 32), 0b10], None)),
        HvStatus::SUCCESS
    );
    assert_eq!(*w.sent.0.borrow(), vec![(0, 2, 0x31)]);
    w.sent.0.borrow_mut().clear();
    // To its own VTL (the kernel normally does this itself): VTL1's group.
    w.ram.put(IN, &ipi_input(0x32, VTL1, 0b11));
    assert_eq!(
        w.st(0, slow(code::SEND_SYNTHETIC_CLUSTER_IPI)),
        HvStatus::SUCCESS
    );
    assert_eq!(*w.sent.0.borrow(), vec![(1, 0, 0x32), (1, 2, 0x32)]);
}

#[test_log::test]
fn ipi_to_an_apic_id_the_msi_cannot_carry_is_refused_not_misdelivered() {
    let mut w = World::new();
    // VP 5 has APIC ID 0x104: without 32-bit x2APIC IDs, KVM would deliver to APIC ID 4.
    w.p.add_vp(5, 0x104, MockVcpu::default()).unwrap();
    w.vtl1(false);
    w.call(0, vtl_call()).unwrap();
    w.sent.1.set(true);
    w.ram
        .put(IN, &ipi_ex_input(0x40, VTL0, hv::GENERIC_SET_ALL, 0, &[]));
    // The others still get it; the guest learns that one VP was not reachable.
    assert_eq!(w.st(0, ipi_ex(0)), HvStatus::INVALID_PARAMETER);
    assert_eq!(*w.sent.0.borrow(), vec![(0, 0, 0x40), (0, 2, 0x40)]);
    w.sent.0.borrow_mut().clear();
    // With x2APIC IDs, address_hi carries it.
    w.sent.1.set(false);
    assert_eq!(w.st(0, ipi_ex(0)), HvStatus::SUCCESS);
    assert_eq!(
        *w.sent.0.borrow(),
        vec![(0, 0, 0x40), (0, 2, 0x40), (0, 0x104, 0x40)]
    );
}

#[test_log::test]
fn msi_delivery_checks_the_apic_id_and_tolerates_no_taker() {
    use super::backend::deliver_msi;
    // Above 255 without x2APIC IDs: refused before KVM_SIGNAL_MSI, with a typed error.
    let e = deliver_msi(false, 1, 0x123, 0x30, |_| panic!("must not be sent")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let typed = e
        .get_ref()
        .and_then(|e| e.downcast_ref::<ApicIdOutOfRange>());
    assert_eq!(typed, Some(&ApicIdOutOfRange { apic_id: 0x123 }));
    assert!(e.to_string().contains("APIC ID 35"), "{e}");
    // 255 fits the xAPIC format; with x2APIC IDs anything goes (address_hi carries 31:8).
    for (x2, id) in [(false, 0xff), (true, 0x123), (true, 0xff_ffff)] {
        let mut seen = None;
        deliver_msi(x2, 1, id, 0x30, |m| {
            seen = Some(m);
            Ok(1)
        })
        .unwrap();
        let m = seen.unwrap();
        assert_eq!(m.address_lo, 0xFEE0_0000 | ((id & 0xff) << 12));
        assert_eq!(m.address_hi, id & !0xff);
    }
    // Nobody took it (0): logged, not an error; a host failure stays one.
    deliver_msi(false, 1, 3, 0x30, |_| Ok(0)).unwrap();
    let e = deliver_msi(false, 1, 3, 0x30, |_| {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    })
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn ipi_ex_all_and_sparse_sets() {
    let mut w = World::new();
    w.p.add_vp(65, 130, MockVcpu::default()).unwrap();
    w.v.insert((65, 0), MockVcpu::default());
    w.vtl1(false);
    w.call(0, vtl_call()).unwrap();
    // ALL: every VP running the target VTL.
    w.ram
        .put(IN, &ipi_ex_input(0x40, VTL0, hv::GENERIC_SET_ALL, 0, &[]));
    assert_eq!(w.st(0, ipi_ex(0)), HvStatus::SUCCESS);
    assert_eq!(
        *w.sent.0.borrow(),
        vec![(0, 0, 0x40), (0, 2, 0x40), (0, 130, 0x40)]
    );
    w.sent.0.borrow_mut().clear();
    // ALL of VTL1: only VP 0 has it.
    w.ram
        .put(IN, &ipi_ex_input(0x41, VTL1, hv::GENERIC_SET_ALL, 0, &[]));
    assert_eq!(w.st(0, ipi_ex(0)), HvStatus::SUCCESS);
    assert_eq!(*w.sent.0.borrow(), vec![(1, 0, 0x41)]);
    w.sent.0.borrow_mut().clear();
    // Sparse: bank 0 bit 1 (VP 1), bank 1 bits 1 and 5 (VP 65, and VP 69 which does not exist).
    w.ram.put(
        IN,
        &ipi_ex_input(
            0x42,
            VTL0,
            hv::GENERIC_SET_SPARSE_4K,
            0b11,
            &[0b10, 0b100010],
        ),
    );
    assert_eq!(w.st(0, ipi_ex(2)), HvStatus::SUCCESS);
    assert_eq!(*w.sent.0.borrow(), vec![(0, 2, 0x42), (0, 130, 0x42)]);
    w.sent.0.borrow_mut().clear();
    // Only bank 1 present: its one qword is bank 1.
    w.ram.put(
        IN,
        &ipi_ex_input(0x43, VTL0, hv::GENERIC_SET_SPARSE_4K, 0b10, &[0b10]),
    );
    assert_eq!(w.st(0, ipi_ex(1)), HvStatus::SUCCESS);
    assert_eq!(*w.sent.0.borrow(), vec![(0, 130, 0x43)]);
    w.sent.0.borrow_mut().clear();
    // Fast Ex: format in R8, mask in XMM0 low, banks from XMM0 high.
    let mut xmm = [0u64; 12];
    xmm[0] = 0b1;
    xmm[1] = 0b11;
    let c = Control::build(code::SEND_SYNTHETIC_CLUSTER_IPI_EX, true, 1, 0, 0);
    let e = fast(
        c,
        [0x44 | (u64::from(VTL0) << 32), hv::GENERIC_SET_SPARSE_4K],
        Some(xmm),
    );
    assert_eq!(w.st(0, e), HvStatus::SUCCESS);
    assert_eq!(*w.sent.0.borrow(), vec![(0, 0, 0x44), (0, 2, 0x44)]);
}

#[test]
fn malformed_ipis_get_statuses() {
    let mut w = World::new();
    w.vtl1(false);
    w.call(0, vtl_call()).unwrap();
    let st = |w: &mut World, b: Vec<u8>, e: HcallExit| {
        w.ram.put(IN, &b);
        w.st(0, e)
    };
    let ipi = slow(code::SEND_SYNTHETIC_CLUSTER_IPI);
    assert_eq!(
        st(&mut w, ipi_input(0x0f, VTL0, 1), ipi),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    assert_eq!(
        st(&mut w, ipi_input(0x100, VTL0, 1), ipi),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    assert_eq!(
        st(&mut w, ipi_input(0x30, 0x30, 1), ipi),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    let mut b = ipi_input(0x30, VTL0, 1);
    b[6] = 1;
    assert_eq!(st(&mut w, b, ipi), HvStatus::INVALID_HYPERCALL_INPUT);
    // Fast: RDX bits 63:40 must be zero.
    let c = Control::build(code::SEND_SYNTHETIC_CLUSTER_IPI, true, 0, 0, 0);
    assert_eq!(
        w.st(0, fast(c, [0x30 | (1 << 40), 1], None)),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    // A VTL not enabled in the partition (VTL1 naming VTL1 is fine; config max is 1, so use a
    // bigger partition below).
    // Ex: variable header size must match the bank mask; unknown formats; short input.
    let b = ipi_ex_input(0x30, VTL0, hv::GENERIC_SET_SPARSE_4K, 0b11, &[1, 1]);
    assert_eq!(st(&mut w, b, ipi_ex(1)), HvStatus::INVALID_HYPERCALL_INPUT);
    let b = ipi_ex_input(0x30, VTL0, 7, 0, &[]);
    assert_eq!(st(&mut w, b, ipi_ex(0)), HvStatus::INVALID_PARAMETER);
    let c = Control::build(code::SEND_SYNTHETIC_CLUSTER_IPI_EX, true, 1, 0, 0);
    assert_eq!(
        w.st(0, fast(c, [0x30, 0], None)),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    // A rep count on the IPI calls.
    let e = HcallExit {
        control: Control::build(code::SEND_SYNTHETIC_CLUSTER_IPI_EX, false, 0, 1, 0),
        params: [IN, OUT],
        xmm: None,
    };
    assert_eq!(w.st(0, e), HvStatus::INVALID_HYPERCALL_INPUT);
    assert!(w.sent.0.borrow().is_empty());

    let mut w = World::with(PartitionConfig {
        max_vtl: 2,
        ..Default::default()
    });
    w.vtl1(false);
    w.call(0, vtl_call()).unwrap();
    w.ram.put(IN, &ipi_input(0x30, 0x12, 1));
    assert_eq!(
        w.st(0, slow(code::SEND_SYNTHETIC_CLUSTER_IPI)),
        HvStatus::ACCESS_DENIED
    );
}

// ---------------------------------------------------------------------------------------------
// ModifyVtlProtectionMask

fn prot_input(map_flags: u32, ivtl: u8, gpns: &[u64]) -> Vec<u8> {
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend(map_flags.to_le_bytes());
    b.extend([ivtl, 0, 0, 0]);
    for g in gpns {
        b.extend(g.to_le_bytes());
    }
    b
}

#[test]
fn modify_vtl_protection_mask_reaches_the_hook() {
    let mut w = World::new();
    w.vtl1(false);
    w.ram.put(IN, &prot_input(1, 0, &[0x100, 0x101, 0x102]));
    // VTL0 cannot restrict anybody.
    assert_eq!(
        w.st(0, slow_rep(code::MODIFY_VTL_PROTECTION_MASK, 3, 0)),
        HvStatus::ACCESS_DENIED
    );
    w.call(0, vtl_call()).unwrap();
    assert_eq!(
        w.status(0, slow_rep(code::MODIFY_VTL_PROTECTION_MASK, 3, 0)),
        (HvStatus::SUCCESS, 3)
    );
    let (req, gpns) = w.prot.calls[0].clone();
    assert_eq!(
        req,
        ProtectionRequest {
            vp_index: 0,
            caller_vtl: 1,
            target_vtl: 1,
            map_flags: 1
        }
    );
    assert_eq!(gpns, vec![0x100, 0x101, 0x102]);
    // Rep start 1, and a hook that stops at the second page with its own status.
    w.prot.calls.clear();
    w.prot.fail_after = Some((1, HvStatus::INVALID_PARAMETER));
    assert_eq!(
        w.status(0, slow_rep(code::MODIFY_VTL_PROTECTION_MASK, 3, 1)),
        (HvStatus::INVALID_PARAMETER, 2)
    );
    assert_eq!(w.prot.calls[0].1, vec![0x101, 0x102]);
    // A list that runs off the input page: the readable part is done, then the status.
    w.prot = Prot::default();
    let mut e = slow_rep(code::MODIFY_VTL_PROTECTION_MASK, 3, 0);
    e.params[0] = IN + 4096 - 24;
    w.ram.put(IN + 4096 - 24, &prot_input(1, 0, &[0x200]));
    assert_eq!(w.status(0, e), (HvStatus::INVALID_ALIGNMENT, 1));
    assert_eq!(w.prot.calls[0].1, vec![0x200]);
    // Many pages: handed over in batches, all done.
    w.prot = Prot::default();
    let many: Vec<u64> = (0..200).collect();
    w.ram.put(IN, &prot_input(3, 0, &many));
    assert_eq!(
        w.status(0, slow_rep(code::MODIFY_VTL_PROTECTION_MASK, 200, 0)),
        (HvStatus::SUCCESS, 200)
    );
    assert_eq!(w.prot.calls.iter().map(|c| c.1.len()).sum::<usize>(), 200);
}

#[test]
fn modify_vtl_protection_mask_by_default_is_not_offered() {
    let mut w = World::new();
    w.vtl1(false);
    w.call(0, vtl_call()).unwrap();
    w.use_default_prot = true;
    w.ram.put(IN, &prot_input(1, 0, &[0x100]));
    assert_eq!(
        w.status(0, slow_rep(code::MODIFY_VTL_PROTECTION_MASK, 1, 0)),
        (HvStatus::INVALID_HYPERCALL_CODE, 0)
    );
    // Header mistakes are still reported as such.
    let mut b = prot_input(1, 0, &[0x100]);
    b[14] = 1;
    w.ram.put(IN, &b);
    assert_eq!(
        w.st(0, slow_rep(code::MODIFY_VTL_PROTECTION_MASK, 1, 0)),
        HvStatus::INVALID_PARAMETER
    );
}

// ---------------------------------------------------------------------------------------------
// Exits, layouts, helpers

#[test]
fn hcall_exit_round_trips_through_kvm_run() {
    let mut run = kvm_bindings::kvm_run::default();
    assert_eq!(HcallExit::from_kvm_run(&run), None);
    assert!(!set_hcall_result(&mut run, 0));
    let mut xmm = [0u64; 12];
    xmm[11] = 0xfeed;
    let e = HcallExit {
        control: Control::build(code::SEND_SYNTHETIC_CLUSTER_IPI_EX, true, 1, 0, 0),
        params: [1, 2],
        xmm: Some(xmm),
    };
    e.store(&mut run);
    assert_eq!(run.exit_reason, kvm_bindings::KVM_EXIT_HYPERV);
    assert_eq!(HcallExit::from_kvm_run(&run), Some(e));
    // 6.12's view of the same bytes.
    // SAFETY: reading an integer field of the exit union of a zero-initialized kvm_run.
    let old = unsafe { run.__bindgen_anon_1.hyperv.u.hcall };
    assert_eq!((old.input, old.params), (e.control.0, [1, 2]));
    assert!(set_hcall_result(
        &mut run,
        HvStatus::ACCESS_DENIED.result(3)
    ));
    // SAFETY: as above.
    let result = unsafe { run.__bindgen_anon_1.hyperv.u.hcall.result };
    assert_eq!(result, 6 | (3 << 32));
    // Without the XMM flag there is no XMM input, and the fast block is RDX and R8 only.
    let e2 = HcallExit { xmm: None, ..e };
    e2.store(&mut run);
    let back = HcallExit::from_kvm_run(&run).unwrap();
    assert_eq!(back.xmm, None);
    let (b, len) = back.fast_input();
    assert_eq!(
        (len, &b[0..8], &b[8..16]),
        (16, &1u64.to_le_bytes()[..], &2u64.to_le_bytes()[..])
    );
    let (b, len) = e.fast_input();
    assert_eq!((len, &b[104..112]), (112, &0xfeed_u64.to_le_bytes()[..]));
}

#[test]
fn control_and_status_encoding() {
    let c = Control::build(0x51, true, 3, 0xfff, 0x7ff);
    assert_eq!(
        (
            c.code(),
            c.fast(),
            c.var_header_qwords(),
            c.rep_count(),
            c.rep_start()
        ),
        (0x51, true, 3, 0xfff, 0x7ff)
    );
    assert!(!c.has_reserved_bits());
    for bit in [27, 31, 44, 47, 60, 63] {
        assert!(Control(c.0 | 1 << bit).has_reserved_bits(), "bit {bit}");
    }
    assert_eq!(HvStatus::VTL_ALREADY_ENABLED.0, 134);
    assert_eq!(HvStatus::SUCCESS.result(0xfff), 0xfff << 32);
    assert_eq!(
        HvStatus::INVALID_VTL_STATE.to_string(),
        "HV_STATUS_INVALID_VTL_STATE (0x51)"
    );
    assert_eq!(hv::InputVtl(0x13).resolve(0), 3);
    assert_eq!(hv::InputVtl(0x03).resolve(1), 1);
    assert!(hv::InputVtl(0x80).has_reserved_bits());
}

#[test]
fn initial_context_layout_matches_linux() {
    let ctx = ctx1();
    let b = ctx.to_bytes();
    assert_eq!(b.len(), 224);
    // struct hv_init_vp_context: rip 0, rsp 8, rflags 16, cs 24 .. ldtr 136, idtr 152,
    // gdtr 168, efer 184, cr0 192, cr3 200, cr4 208, msr_cr_pat 216.
    assert_eq!(&b[0..8], &0x7000u64.to_le_bytes());
    assert_eq!(&b[24 + 12..24 + 14], &0x10u16.to_le_bytes(), "cs.selector");
    assert_eq!(
        &b[24 + 14..24 + 16],
        &0xa09bu16.to_le_bytes(),
        "cs.attributes"
    );
    assert_eq!(
        &b[120 + 12..120 + 14],
        &0x28u16.to_le_bytes(),
        "tr.selector"
    );
    assert_eq!(&b[152 + 6..152 + 8], &0xfffu16.to_le_bytes(), "idtr.limit");
    assert_eq!(&b[152 + 8..152 + 16], &0x9000u64.to_le_bytes(), "idtr.base");
    assert_eq!(&b[184..192], &0xd01u64.to_le_bytes());
    assert_eq!(&b[216..224], &ctx.msr_cr_pat.to_le_bytes());
    assert_eq!(InitialVpContext::from_bytes(&b), ctx);
    // Segment attributes survive KVM's view.
    for s in ctx.segments.iter().filter(|s| s.attributes & 0x80 != 0) {
        assert_eq!(SegmentRegister::from_kvm(&s.to_kvm()), *s);
    }
}

#[test]
fn fixed_msi_names_the_group() {
    let m = fixed_msi(1, 0x1234, 0x30);
    assert_eq!(m.address_lo, 0xFEE0_0000 | (0x34 << 12));
    assert_eq!(m.address_hi, 0x1200);
    assert_eq!(m.data, 0x30);
    let raw = crate::msi_to_raw(m);
    assert_ne!(raw.flags & crate::raw::KVM_MSI_VALID_APIC_GROUP, 0);
    assert_eq!(raw.apic_group, 1);
}

#[test]
// The mock vCPU is single-threaded (Rc); this only checks the Arc<Mutex<_>> forwarding.
#[allow(clippy::arc_with_non_send_sync)]
fn arc_mutex_vcpus_work_too() {
    use std::sync::{Arc, Mutex};
    let mut p: Partition<Arc<Mutex<MockVcpu>>> =
        Partition::new(PartitionConfig::default()).unwrap();
    let v0 = MockVcpu::default();
    let v1 = MockVcpu::default();
    p.add_vp(0, 0, Arc::new(Mutex::new(v0.clone()))).unwrap();
    p.add_sibling(0, 1, Arc::new(Mutex::new(v1.clone())))
        .unwrap();
    let ram = Ram::new();
    let sent = Sent::default();
    let mut prot = NoProtections;
    let mut sib = NoSiblings;
    let mut env = Env {
        memory: &ram,
        delivery: &sent,
        protections: &mut prot,
        siblings: &mut sib,
    };
    ram.put(IN, &partition_vtl_input(u64::MAX, 1, 0));
    p.handle_hypercall(&mut env, 0, 0, &slow(code::ENABLE_PARTITION_VTL))
        .unwrap();
    ram.put(IN, &vp_vtl_input(u64::MAX, 0, 1, &ctx1()));
    p.handle_hypercall(&mut env, 0, 0, &slow(code::ENABLE_VP_VTL))
        .unwrap();
    v0.st().regs.rbx = 9;
    let o = p.handle_hypercall(&mut env, 0, 0, &vtl_call()).unwrap();
    assert_eq!(o, Outcome::Switched { from: 0, to: 1 });
    let r = v1.st().regs;
    assert_eq!((r.rbx, r.rip), (9, 0x7000));
}

// ---------------------------------------------------------------------------------------------
// Whatever the guest puts in its registers and pages: a status, a switch or a #UD, never a
// panic or a VMM error.

#[test_log::test]
fn random_hypercalls_never_panic_or_fail_the_vmm() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let codes = [
        code::SEND_SYNTHETIC_CLUSTER_IPI,
        code::MODIFY_VTL_PROTECTION_MASK,
        code::ENABLE_PARTITION_VTL,
        code::ENABLE_VP_VTL,
        code::VTL_CALL,
        code::VTL_RETURN,
        code::SEND_SYNTHETIC_CLUSTER_IPI_EX,
        code::GET_VP_REGISTERS,
        code::SET_VP_REGISTERS,
    ];
    let names = [
        reg::RAX,
        reg::RIP,
        reg::RSP,
        reg::CR0,
        reg::CR3,
        reg::ES + 1,
        reg::GDTR,
        reg::EFER,
        reg::PAT,
        reg::DR7,
        reg::XFEM,
        reg::VSM_VP_STATUS,
        reg::VSM_PARTITION_CONFIG,
        reg::VSM_VP_SECURE_CONFIG_VTL0,
        reg::VSM_VP_SECURE_CONFIG_VTL0 + 1,
        0x1234,
    ];
    let config = PartitionConfig {
        max_vtl: 2,
        ..Default::default()
    };
    let mut w = World::with(config.clone());
    // Switches, #UDs, successes, other statuses.
    let mut seen = [0u32; 4];
    for iter in 0..30_000u32 {
        if iter % 3_000 == 0 {
            w = World::with(config.clone());
        }
        let code = codes[(rnd() % codes.len() as u64) as usize];
        let ivtl = [0, VTL0, VTL1, 0x12, 0x20, 1][(rnd() % 6) as usize];
        let vp_arg = [0, 1, hv::VP_INDEX_SELF, 7][(rnd() % 4) as usize];
        let reps = 1 + rnd() % 4;
        let regs: Vec<u32> = (0..reps).map(|_| names[(rnd() % 16) as usize]).collect();
        // A well-formed input for the call...
        let mut page = match code {
            code::ENABLE_PARTITION_VTL => partition_vtl_input(u64::MAX, 1 + (rnd() % 2) as u8, 0),
            code::ENABLE_VP_VTL => vp_vtl_input(u64::MAX, vp_arg, 1 + (rnd() % 2) as u8, &ctx1()),
            code::GET_VP_REGISTERS => get_input(vp_arg, ivtl, &regs),
            code::SET_VP_REGISTERS => {
                let v: Vec<(u32, u128)> =
                    regs.iter().map(|&n| (n, u128::from(rnd() % 4))).collect();
                set_input(vp_arg, ivtl, &v)
            }
            code::SEND_SYNTHETIC_CLUSTER_IPI => ipi_input(0x30, ivtl, rnd() % 4),
            code::SEND_SYNTHETIC_CLUSTER_IPI_EX => {
                ipi_ex_input(0x30, ivtl, rnd() % 2, 1, &[rnd() % 4])
            }
            code::MODIFY_VTL_PROTECTION_MASK => prot_input(1, ivtl, &[1, 2, 3, 4]),
            _ => Vec::new(),
        };
        page.resize(512, 0);
        // ... mutated half of the time.
        if rnd() % 2 == 0 {
            for _ in 0..1 + rnd() % 3 {
                let i = (rnd() % 48) as usize;
                page[i] = rnd() as u8;
            }
        }
        w.ram.put(IN, &page);
        let var = u16::from(code == code::SEND_SYNTHETIC_CLUSTER_IPI_EX);
        let is_rep = matches!(code, 0x0C | 0x50 | 0x51);
        let mut control = Control::build(code, false, var, if is_rep { reps as u16 } else { 0 }, 0);
        if code == code::VTL_CALL || code == code::VTL_RETURN {
            control = Control(u64::from(code));
        }
        match rnd() % 8 {
            0 => control.0 ^= 1 << (16 + rnd() % 48),
            1 => control.0 = rnd() & !0xffff | u64::from(code),
            _ => {}
        }
        let mut params = [IN, OUT];
        let mut xmm = None;
        if rnd() % 4 == 0 {
            // Fast: the first 112 bytes of the input block in RDX, R8, XMM0-5.
            control.0 |= 1 << 16;
            let q = |i: usize| u64::from_le_bytes(page[8 * i..8 * i + 8].try_into().unwrap());
            params = [q(0), q(1)];
            xmm = (rnd() % 4 != 0).then(|| std::array::from_fn(|i| q(2 + i)));
        } else if rnd() % 4 == 0 {
            params[(rnd() % 2) as usize] =
                [IN + 4, IN + 4096 - 8, 1 << 40, rnd()][(rnd() % 4) as usize];
        }
        let vp = (rnd() % 2) as u32;
        // VtlCall/VtlReturn input (RAX) and VP assist pages.
        let active = w.p.vp(vp).unwrap().active_vtl();
        if let Some(v) = w.v.get(&(vp, active)) {
            v.st().regs.rax = [0, 0, 1, 2][(rnd() % 4) as usize];
            let page = [0, ASSIST1 | 1, rnd()][(rnd() % 3) as usize];
            v.st().msrs.insert(hv::msr::VP_ASSIST_PAGE, page);
        }
        let e = HcallExit {
            control,
            params,
            xmm,
        };
        match w.call(vp, e) {
            Ok(Outcome::Switched { .. }) => seen[0] += 1,
            Ok(Outcome::Exception { .. }) => seen[1] += 1,
            Ok(Outcome::Complete { result }) if result as u16 == 0 => seen[2] += 1,
            Ok(Outcome::Complete { .. }) => seen[3] += 1,
            Ok(Outcome::NotHandled) => {}
            Err(err) => panic!("iteration {iter}: {e:?} failed the VMM: {err}"),
        }
        let vp = w.p.vp(vp).unwrap();
        assert!(vp.is_enabled(vp.active_vtl()));
        assert!(vp.vcpu(vp.active_vtl()).is_some());
    }
    // The walk reached every kind of answer, not just early rejections.
    assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Interrupts for a VTL that is not running (event notification)

/// VTL `vtl` of VP 0 is armed with this target now.
fn armed(w: &World, vtl: u8) -> Option<u32> {
    w.vcpu(0, vtl).st().armed
}

fn notify(w: &mut World, vp: u32) -> Result<NotifyOutcome, VtlError> {
    let vtl = w.p.vp(vp).unwrap().active_vtl();
    let mut none = NoProtections;
    let mut env = Env {
        memory: &w.ram,
        delivery: &w.sent,
        protections: &mut none,
        siblings: &mut w.factory,
    };
    w.p.handle_event_notify(&mut env, vp, vtl)
}

/// VTL1 enabled on VP 0, event notification on, VTL1's assist page at ASSIST1.
fn notify_world() -> World {
    let mut w = World::new();
    w.p.enable_event_notify().unwrap();
    w.vtl1(false);
    w.vcpu(0, 1)
        .st()
        .msrs
        .insert(hv::msr::VP_ASSIST_PAGE, ASSIST1 | 1);
    w
}

#[test]
fn notify_policy_arms_higher_vtls_only() {
    let mut w = World::new();
    // Without enable_event_notify nothing is ever armed.
    w.vtl1(false);
    w.call(0, vtl_call()).unwrap();
    w.call(0, vtl_return()).unwrap();
    assert!(w.vcpu(0, 0).st().notify_log.is_empty());
    assert!(w.vcpu(0, 1).st().notify_log.is_empty());

    let mut w = World::new();
    w.p.enable_event_notify().unwrap();
    assert!(w.p.event_notify_enabled());
    // Nothing above VTL0 yet.
    assert!(w.vcpu(0, 1).st().notify_log.is_empty());
    // EnableVpVtl arms the new VTL for the running VTL0 (vcpu_id 0).
    w.vtl1(false);
    assert_eq!(armed(&w, 1), Some(0));
    assert_eq!(w.p.vp(0).unwrap().armed_vtls(), 0b10);
    // VP 1 has no VTL1 enabled: not armed.
    assert!(w.vcpu(1, 1).st().notify_log.is_empty());
    // A VtlCall makes VTL1 active: disarmed (it must not stop itself); VTL0 never armed.
    w.call(0, vtl_call()).unwrap();
    assert_eq!(armed(&w, 1), None);
    assert_eq!(w.vcpu(0, 1).st().notify_log, [Some(0), None]);
    assert!(w.vcpu(0, 0).st().notify_log.is_empty());
    // An interrupt for VTL0 while VTL1 runs waits: VTL0 stays unarmed.
    w.vcpu(0, 0).st().event = true;
    assert_eq!(notify(&mut w, 0).unwrap(), NotifyOutcome::Resume);
    assert!(w.vcpu(0, 0).st().notify_log.is_empty());
    assert_eq!(w.p.vp(0).unwrap().active_vtl(), 1);
    // VtlReturn: VTL1 armed again for VTL0.
    w.vcpu(0, 1).st().regs.rax = 1;
    w.call(0, vtl_return()).unwrap();
    assert_eq!(armed(&w, 1), Some(0));
    assert!(w.vcpu(0, 0).st().notify_log.is_empty());
}

#[test]
fn notify_enters_the_higher_vtl_with_reason_interrupt_and_returns_where_it_was() {
    let mut w = notify_world();
    let (v0, v1) = (w.vcpu(0, 0), w.vcpu(0, 1));
    // VTL0 runs somewhere in its code (no hypercall: nothing pending), VTL1 parked in VTL1 code.
    paint(&v0, 0x1000);
    paint(&v1, 0x2000);
    v0.st().pending = false;
    v0.st().hcall_result = 0xdead;
    v1.st().event = true;
    assert_eq!(
        notify(&mut w, 0).unwrap(),
        NotifyOutcome::Interrupted { from: 0, to: 1 }
    );
    assert_eq!(w.p.vp(0).unwrap().active_vtl(), 1);
    let (a, b) = (v0.st().clone(), v1.st().clone());
    // Shared state carried as for a VtlCall, private kept.
    assert_eq!(
        (b.regs.rax, b.regs.rcx, b.regs.r15),
        (a.regs.rax, a.regs.rcx, a.regs.r15)
    );
    assert_eq!(b.sregs.cr2, a.sregs.cr2);
    assert_eq!(b.xsave[40], a.xsave[40]);
    assert_eq!((b.regs.rip, b.regs.rsp), (0x2010, 0x2006));
    // Entry reason: Interrupt.
    assert_eq!(w.ram.get(ASSIST1 + 8, 4), 2u32.to_le_bytes());
    // The interrupted VTL0 is left alone: no completion, no result written, RIP unchanged.
    assert_eq!(
        (a.regs.rip, a.completions, a.hcall_result),
        (0x1010, 0, 0xdead)
    );
    // VTL1 active: disarmed; VTL0 not armed.
    assert_eq!(b.armed, None);
    assert!(a.notify_log.is_empty());

    // VTL1 takes its interrupt, saves VTL0's RAX/RCX in its control area, returns (normal).
    v1.st().event = false;
    w.ram.put(ASSIST1 + 16, &a.regs.rax.to_le_bytes());
    w.ram.put(ASSIST1 + 24, &a.regs.rcx.to_le_bytes());
    {
        let mut s = v1.st();
        s.regs.rax = 0;
        s.regs.rcx = u64::from(code::VTL_RETURN);
    }
    assert_eq!(
        w.call(0, vtl_return()).unwrap(),
        Outcome::Switched { from: 1, to: 0 }
    );
    let r = v0.st().clone();
    // Resumed where it was, with its RAX/RCX restored and the other GPRs as VTL1 left them.
    assert_eq!(
        (r.regs.rip, r.regs.rax, r.regs.rcx, r.regs.r15),
        (0x1010, a.regs.rax, a.regs.rcx, a.regs.r15)
    );
    assert_eq!(r.completions, 0);
    // VTL1 re-armed for VTL0; its VtlReturn is pending until it runs again.
    assert_eq!(armed(&w, 1), Some(0));
    assert!(v1.st().pending);
}

#[test]
fn notify_with_nothing_pending_rearms_and_resumes() {
    let mut w = notify_world();
    // Fired, then the event went away (e.g. the MSI was taken back by a LAPIC reset).
    w.vcpu(0, 1).st().armed = None;
    assert_eq!(notify(&mut w, 0).unwrap(), NotifyOutcome::Resume);
    assert_eq!(w.p.vp(0).unwrap().active_vtl(), 0);
    assert_eq!(armed(&w, 1), Some(0));
    // rearm() applies the policy again on demand.
    w.vcpu(0, 1).st().armed = None;
    w.p.rearm(0).unwrap();
    assert_eq!(armed(&w, 1), Some(0));
}

#[test_log::test]
fn notify_highest_pending_vtl_wins_and_returns_to_the_interrupted_vtl() {
    let mut w = World::with(PartitionConfig {
        max_vtl: 2,
        ..Default::default()
    });
    let v2 = MockVcpu::default();
    v2.st().id = Some(0x20);
    w.p.add_sibling(0, 2, v2.clone()).unwrap();
    w.v.insert((0, 2), v2);
    w.p.enable_event_notify().unwrap();
    // VTL1 from VTL0, VTL2 from VTL1.
    w.vtl1(false);
    w.call(0, vtl_call()).unwrap();
    assert_eq!(w.enable_partition(0, 2), HvStatus::SUCCESS);
    assert_eq!(w.enable_vp(0, 0, 2, &ctx1()), HvStatus::SUCCESS);
    // VTL1 runs: VTL2 armed for VTL1 (vcpu_id 0x10).
    assert_eq!(armed(&w, 2), Some(0x10));
    w.vcpu(0, 1).st().regs.rax = 1;
    w.call(0, vtl_return()).unwrap();
    assert_eq!((armed(&w, 1), armed(&w, 2)), (Some(0), Some(0)));
    // Both higher VTLs have an interrupt: VTL2 wins, straight from VTL0.
    w.vcpu(0, 1).st().event = true;
    w.vcpu(0, 2).st().event = true;
    assert_eq!(
        notify(&mut w, 0).unwrap(),
        NotifyOutcome::Interrupted { from: 0, to: 2 }
    );
    // VTL1 is below the active VTL2 now: disarmed, its interrupt waits.
    assert_eq!(armed(&w, 1), None);
    assert_eq!(w.vcpu(0, 1).st().notify_log.last(), Some(&None));
    // VTL2's VtlReturn goes back to VTL0, which it interrupted, not to VTL1.
    w.vcpu(0, 2).st().event = false;
    w.vcpu(0, 2).st().regs.rax = 1;
    assert_eq!(
        w.call(0, vtl_return()).unwrap(),
        Outcome::Switched { from: 2, to: 0 }
    );
    // Back in VTL0, VTL1's pending interrupt fires at once (the arming sees it).
    let log = w.vcpu(0, 1).st().notify_log.clone();
    assert_eq!(log.last(), Some(&Some(0)));
    assert_eq!(
        notify(&mut w, 0).unwrap(),
        NotifyOutcome::Interrupted { from: 0, to: 1 }
    );
    // VTL2 is armed for VTL1 now.
    assert_eq!(armed(&w, 2), Some(0x10));
}

#[test]
fn notify_errors_are_typed() {
    // A sibling without a vcpu_id cannot be a target.
    let mut w = World::new();
    let mut p = Partition::new(PartitionConfig::default()).unwrap();
    let anon = MockVcpu::default();
    p.add_vp(0, 0, anon).unwrap();
    let v1 = MockVcpu::default();
    p.add_sibling(0, 1, v1).unwrap();
    w.p = p;
    w.v.insert((0, 0), MockVcpu::default());
    w.p.enable_event_notify().unwrap();
    assert_eq!(w.enable_partition(0, 1), HvStatus::SUCCESS);
    w.ram.put(IN, &vp_vtl_input(u64::MAX, 0, 1, &ctx1()));
    assert!(matches!(
        w.call(0, slow(code::ENABLE_VP_VTL)),
        Err(VtlError::NoVcpuId {
            vp_index: 0,
            vtl: 0
        })
    ));

    // An ioctl failure names the operation.
    let mut w = notify_world();
    w.vcpu(0, 1).st().refuse_notify = true;
    match w.call(0, vtl_call()) {
        Err(VtlError::Vcpu { op, vtl: 1, .. }) => assert!(op.starts_with("KVM_SET_EVENT_NOTIFY")),
        other => panic!("expected a KVM_SET_EVENT_NOTIFY error, got {other:?}"),
    }
    // The exit of a vCPU that is not active is the VMM's mistake.
    let mut w = notify_world();
    let mut none = NoProtections;
    let mut env = Env {
        memory: &w.ram,
        delivery: &w.sent,
        protections: &mut none,
        siblings: &mut w.factory,
    };
    assert!(matches!(
        w.p.handle_event_notify(&mut env, 0, 1),
        Err(VtlError::NotActive { .. })
    ));
    assert!(matches!(
        w.p.handle_event_notify(&mut env, 9, 0),
        Err(VtlError::UnknownVp(9))
    ));
}

#[test]
fn partition_config_is_validated() {
    let ok = PartitionConfig::default();
    assert!(Partition::<MockVcpu>::new(ok.clone()).is_ok());
    let err = |c: PartitionConfig| Partition::<MockVcpu>::new(c).err();
    // max_vtl above 15 is refused, not clamped.
    assert_eq!(
        err(PartitionConfig {
            max_vtl: 16,
            ..ok.clone()
        }),
        Some(ConfigError::MaxVtl {
            max_vtl: 16,
            limit: 15
        })
    );
    let full = PartitionConfig {
        max_vtl: 15,
        ..ok.clone()
    };
    assert!(Partition::<MockVcpu>::new(full.clone()).is_ok());
    // Two VTLs in one group.
    let mut shared = ok.clone();
    shared.vtl_groups[1] = 0;
    assert_eq!(
        err(shared.clone()),
        Some(ConfigError::SharedGroup {
            low: 0,
            high: 1,
            group: 0
        })
    );
    // ... only among the VTLs in use.
    shared.vtl_groups[1] = 1;
    shared.vtl_groups[5] = 0;
    assert!(Partition::<MockVcpu>::new(shared).is_ok());
    // A group the kernel does not offer.
    let mut far = ok.clone();
    far.vtl_groups[1] = 16;
    assert_eq!(
        err(far.clone()),
        Some(ConfigError::GroupOutOfRange {
            vtl: 1,
            group: 16,
            groups: 16
        })
    );
    far.apic_groups = 17;
    assert!(Partition::<MockVcpu>::new(far).is_ok());
    let few = PartitionConfig {
        apic_groups: 8,
        ..full
    };
    assert!(matches!(
        err(few),
        Some(ConfigError::GroupOutOfRange { vtl: 8, .. })
    ));
    // DR6 is private in the switch: Dr6Shared cannot be advertised.
    assert_eq!(
        err(PartitionConfig {
            vsm_capabilities: hv::VSM_CAPABILITIES_DR6_SHARED | (1 << 2),
            ..ok.clone()
        }),
        Some(ConfigError::Dr6Shared)
    );
    assert!(Partition::<MockVcpu>::new(PartitionConfig {
        vsm_capabilities: 1 << 2,
        ..ok
    })
    .is_ok());
}

// ---------------------------------------------------------------------------------------------
// Secure memory intercepts (handle_memory_fault) and KvmProtections

use super::intercept::{msg, synic, CodeMode, ExecutionState};
use crate::protections::{Access, FaultAccess, MemoryFault, VtlProtection};

const SIMP1: u64 = 0x13000;
const CODE: u64 = 0x14000;
const FAULT_PAGE: u64 = 0x15000;
/// `add [rdx], rax`.
const ADD_INSN: [u8; 3] = [0x48, 0x01, 0x02];

impl World {
    /// VP `vp`'s active vCPU exits with `fault`.
    fn fault(&mut self, vp: u32, fault: MemoryFault) -> Result<InterceptOutcome, VtlError> {
        let vtl = self.p.vp(vp).unwrap().active_vtl();
        let mut env = Env {
            memory: &self.ram,
            delivery: &self.sent,
            protections: &mut self.prot,
            siblings: &mut self.factory,
        };
        self.p.handle_memory_fault(&mut env, vp, vtl, &fault)
    }

    /// VTL1 on VP 0 with its SynIC on (SIMP at [`SIMP1`], SINT0 = `sint0`), VTL0 in 64-bit mode
    /// at [`CODE`] holding [`ADD_INSN`].
    fn intercept_world(sint0: u64) -> World {
        let mut w = World::new();
        w.vtl1(false);
        let v1 = w.vcpu(0, 1);
        v1.st().msrs.insert(hv::msr::VP_ASSIST_PAGE, ASSIST1 | 1);
        v1.st().msrs.insert(synic::SCONTROL, 1);
        v1.st().msrs.insert(synic::SIMP, SIMP1 | 1);
        v1.st().msrs.insert(synic::SINT0, sint0);
        let v0 = w.vcpu(0, 0);
        {
            let mut s = v0.st();
            s.identity_translate = true;
            s.regs.rip = CODE;
            s.regs.rflags = 0x246;
            s.regs.rax = 0x1111;
            s.sregs.cr0 = 0x8005_0033; // PG, AM, WP, NE, ET, MP, PE
            s.sregs.efer = 0xd00;
            s.sregs.cr8 = 3;
            s.sregs.cs = SegmentRegister {
                base: 0,
                limit: 0xffff_ffff,
                selector: 8,
                attributes: 0xa09b,
            }
            .to_kvm();
            s.sregs.ss = seg(0x10, 0xc093).to_kvm();
        }
        w.ram.put(CODE, &ADD_INSN);
        w
    }
}

fn write_fault(gva: Option<u64>) -> MemoryFault {
    MemoryFault {
        gpa: FAULT_PAGE,
        size: 4096,
        access: Some(FaultAccess::Write),
        gva,
        ..Default::default()
    }
}

#[test]
fn intercept_message_layout() {
    let m = MemoryInterceptMessage {
        vp_index: 0x0403_0201,
        instruction_length: 3,
        cr8: 0xa,
        access: FaultAccess::Exec,
        execution_state: ExecutionState {
            cpl: 3,
            cr0_pe: true,
            cr0_am: false,
            efer_lma: true,
            debug_active: false,
            interruption_pending: true,
            vtl: 5,
            interrupt_shadow: true,
        },
        cs: SegmentRegister {
            base: 0x1122_3344_5566_7788,
            limit: 0x99aa_bbcc,
            selector: 0x33,
            attributes: 0xa0fb,
        },
        rip: 0xffff_8000_1234_5678,
        rflags: 0x246,
        cache_type: 6,
        instruction_bytes: *b"0123456789abcdef",
        instruction_byte_count: 5,
        gva: Some(0x7f00_0000_1000),
        gpa: 0x12_3456_7000,
    };
    let b = m.to_slot();
    let le = |off: usize, n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b[off..off + n]);
        u64::from_le_bytes(v)
    };
    // Header: type, payload size 0x50, no flags.
    assert_eq!(le(0, 4), 0x8000_0001);
    assert_eq!(b[4], 0x50);
    assert_eq!(b[5], 0);
    assert_eq!(&b[6..16], &[0; 10]);
    // Payload at 16, absolute offsets.
    assert_eq!(le(16, 4), 0x0403_0201); // vp_index
    assert_eq!(b[20], 0xa3); // cr8 7:4, instruction length 3:0
    assert_eq!(b[21], 2); // execute
                          // cpl 3 | pe 1<<2 | lma 1<<4 | interruption pending 1<<6 | vtl 5<<7 | shadow 1<<12
    assert_eq!(le(22, 2), 3 | 4 | 0x10 | 0x40 | (5 << 7) | 0x1000);
    assert_eq!(le(24, 8), 0x1122_3344_5566_7788); // CS base
    assert_eq!(le(32, 4), 0x99aa_bbcc); // CS limit
    assert_eq!(le(36, 2), 0x33); // CS selector
    assert_eq!(le(38, 2), 0xa0fb); // CS attributes
    assert_eq!(le(40, 8), 0xffff_8000_1234_5678); // RIP
    assert_eq!(le(48, 8), 0x246); // RFLAGS
    assert_eq!(le(56, 4), 6); // cache type
    assert_eq!(b[60], 5); // instruction byte count
    assert_eq!(b[61], 1); // memory access info: GVA valid
    assert_eq!(b[62], 0); // TPR priority
    assert_eq!(b[63], 0); // reserved
    assert_eq!(le(64, 8), 0x7f00_0000_1000); // GVA
    assert_eq!(le(72, 8), 0x12_3456_7000); // GPA
    assert_eq!(&b[80..85], b"01234"); // only the valid instruction bytes
    assert_eq!(&b[85..96], &[0; 11]);
    assert_eq!(&b[96..], &[0; 160]);
    // The named offsets agree.
    assert_eq!(msg::PAYLOAD + msg::GPA, 72);
    assert_eq!(msg::PAYLOAD + msg::INSN_BYTES, 80);
    assert_eq!(msg::SIZE, 0x50);
}

#[test]
fn instruction_lengths() {
    let l = |b: &[u8]| super::intercept::instruction_length(b, CodeMode::Long64);
    assert_eq!(l(&[0x48, 0x01, 0x02]), Some(3)); // add [rdx], rax
    assert_eq!(l(&[0x48, 0x89, 0x02]), Some(3)); // mov [rdx], rax
    assert_eq!(l(&[0x8b, 0x02]), Some(2)); // mov eax, [rdx]
    assert_eq!(l(&[0xf0, 0x48, 0x01, 0x02]), Some(4)); // lock add
    assert_eq!(l(&[0x48, 0x89, 0x44, 0x24, 0x08]), Some(5)); // mov [rsp+8], rax (SIB, disp8)
    assert_eq!(l(&[0x48, 0x89, 0x05, 1, 2, 3, 4]), Some(7)); // RIP-relative
    assert_eq!(l(&[0x48, 0xc7, 0x02, 1, 2, 3, 4]), Some(7)); // mov qword [rdx], imm32
    assert_eq!(l(&[0x66, 0xc7, 0x02, 1, 2]), Some(5)); // mov word [rdx], imm16
    assert_eq!(l(&[0xc6, 0x82, 1, 2, 3, 4, 5]), Some(7)); // mov byte [rdx+disp32], imm8
    assert_eq!(l(&[0x83, 0x04, 0x25, 0, 0x10, 0, 0, 1]), Some(8)); // SIB no base + disp32
    assert_eq!(l(&[0xf7, 0x02, 1, 2, 3, 4]), Some(6)); // test [rdx], imm32
    assert_eq!(l(&[0xf7, 0x1a]), Some(2)); // neg dword [rdx]
    assert_eq!(l(&[0xa3, 1, 2, 3, 4, 5, 6, 7, 8]), Some(9)); // mov moffs64, eax
    assert_eq!(l(&[0x0f, 0xb6, 0x02]), Some(3)); // movzx eax, byte [rdx]
    assert_eq!(l(&[0x0f, 0xba, 0x2a, 3]), Some(4)); // bts dword [rdx], 3
    assert_eq!(l(&[0xf3, 0x48, 0xab]), Some(3)); // rep stosq
    assert_eq!(l(&[0x48, 0x01]), None); // truncated
    assert_eq!(l(&[0xc5, 0xf8, 0x77]), None); // VEX: unknown
    assert_eq!(l(&[0x0f, 0x38, 0x00, 0x02]), None);
    let p = |b: &[u8]| super::intercept::instruction_length(b, CodeMode::Protected32);
    assert_eq!(p(&[0x40]), None); // inc eax: not a memory access we decode
    assert_eq!(p(&[0xa3, 1, 2, 3, 4]), Some(5)); // moffs32
    assert_eq!(
        super::intercept::instruction_length(&ADD_INSN, CodeMode::Bits16),
        None
    );
}

#[test_log::test]
fn intercept_posts_the_message_raises_sint0_and_switches() {
    let mut w = World::intercept_world(0x60);
    let out = w.fault(0, write_fault(None)).unwrap();
    assert_eq!(
        out,
        InterceptOutcome::Switched {
            from: 0,
            to: 1,
            message: MessageDelivery::Raised { vector: 0x60 }
        }
    );
    // SINT0's vector as a fixed interrupt to VTL1's group, APIC ID of VP 0.
    assert_eq!(*w.sent.0.borrow(), vec![(1, 0, 0x60)]);
    assert_eq!(w.p.vp(0).unwrap().active_vtl(), 1);
    // Entry reason Interrupt, shared registers carried.
    assert_eq!(w.ram.get(ASSIST1 + 8, 4), 2u32.to_le_bytes());
    assert_eq!(w.vcpu(0, 1).st().regs.rax, 0x1111);
    let slot = w.ram.get(SIMP1, 256);
    let expect = MemoryInterceptMessage {
        vp_index: 0,
        instruction_length: 3,
        cr8: 3,
        access: FaultAccess::Write,
        execution_state: ExecutionState {
            cpl: 0,
            cr0_pe: true,
            cr0_am: true,
            efer_lma: true,
            vtl: 0,
            ..Default::default()
        },
        cs: SegmentRegister {
            base: 0,
            limit: 0xffff_ffff,
            selector: 8,
            attributes: 0xa09b,
        },
        rip: CODE,
        rflags: 0x246,
        cache_type: 6,
        instruction_bytes: {
            let mut b = [0u8; 16];
            b.copy_from_slice(&w.ram.get(CODE, 16));
            b
        },
        instruction_byte_count: 16,
        gva: None,
        gpa: FAULT_PAGE,
    };
    assert_eq!(slot, expect.to_slot().to_vec());
    // VTL0 stays where it faulted; VTL1's VtlReturn goes back to it, no completion pending.
    assert_eq!(w.vcpu(0, 0).st().regs.rip, CODE);
    w.vcpu(0, 1).st().regs.rax = 0; // a normal VtlReturn
    assert!(matches!(
        w.call(0, vtl_return()).unwrap(),
        Outcome::Switched { from: 1, to: 0 }
    ));
    assert_eq!(w.vcpu(0, 0).st().regs.rip, CODE);
    assert_eq!(w.vcpu(0, 0).st().completions, 0);
}

#[test]
fn intercept_gva_and_no_instruction_bytes() {
    let mut w = World::intercept_world(0x60);
    w.vcpu(0, 0).st().identity_translate = false;
    w.fault(0, write_fault(Some(0xdead_b000))).unwrap();
    let slot = w.ram.get(SIMP1, 256);
    assert_eq!(slot[msg::PAYLOAD + msg::ACCESS_INFO], msg::GVA_VALID);
    assert_eq!(
        w.ram.u64(SIMP1 + (msg::PAYLOAD + msg::GVA) as u64),
        0xdead_b000
    );
    assert_eq!(slot[msg::PAYLOAD + msg::INSN_BYTE_COUNT], 0);
    // Without bytes the length is unknown: 0.
    assert_eq!(slot[msg::PAYLOAD + msg::INSN_LENGTH_CR8] & 0xf, 0);
}

#[test]
fn intercept_with_masked_sint0_posts_without_interrupt() {
    let mut w = World::intercept_world(synic::SINT_MASKED | 0x60);
    let out = w.fault(0, write_fault(None)).unwrap();
    assert!(matches!(
        out,
        InterceptOutcome::Switched {
            to: 1,
            message: MessageDelivery::Masked,
            ..
        }
    ));
    assert!(w.sent.0.borrow().is_empty());
    assert_eq!(w.ram.get(SIMP1, 4), 0x8000_0001u32.to_le_bytes());
    assert_eq!(w.p.vp(0).unwrap().active_vtl(), 1);
}

#[test]
fn intercept_into_a_busy_slot_is_queued_until_the_next_entry() {
    let mut w = World::intercept_world(0x61);
    // An earlier message VTL1 has not consumed.
    w.ram.put(SIMP1, &0x8000_0010u32.to_le_bytes());
    let out = w.fault(0, write_fault(None)).unwrap();
    assert!(matches!(
        out,
        InterceptOutcome::Switched {
            to: 1,
            message: MessageDelivery::Queued,
            ..
        }
    ));
    // Not overwritten; MessagePending set; no interrupt.
    assert_eq!(w.ram.get(SIMP1, 4), 0x8000_0010u32.to_le_bytes());
    assert_eq!(w.ram.get(SIMP1 + 5, 1), [msg::FLAG_PENDING]);
    assert!(w.sent.0.borrow().is_empty());
    assert!(w.p.pending_intercept(0, 1).is_some());
    // VTL1 consumes the old message and returns; the next VtlCall into VTL1 posts the queued
    // one and raises SINT0.
    w.ram.put(SIMP1, &[0; 8]);
    w.vcpu(0, 1).st().regs.rax = 0;
    assert!(matches!(
        w.call(0, vtl_return()).unwrap(),
        Outcome::Switched { from: 1, to: 0 }
    ));
    assert!(matches!(
        w.call(0, vtl_call()).unwrap(),
        Outcome::Switched { from: 0, to: 1 }
    ));
    assert_eq!(w.ram.get(SIMP1, 4), 0x8000_0001u32.to_le_bytes());
    assert_eq!(
        w.ram.u64(SIMP1 + (msg::PAYLOAD + msg::GPA) as u64),
        FAULT_PAGE
    );
    assert_eq!(*w.sent.0.borrow(), vec![(1, 0, 0x61)]);
    assert!(w.p.pending_intercept(0, 1).is_none());
}

#[test]
fn intercept_without_a_synic_is_queued() {
    let mut w = World::intercept_world(0x60);
    w.vcpu(0, 1).st().msrs.remove(&synic::SCONTROL);
    let out = w.fault(0, write_fault(None)).unwrap();
    assert!(matches!(
        out,
        InterceptOutcome::Switched {
            message: MessageDelivery::Queued,
            ..
        }
    ));
    assert_eq!(w.ram.get(SIMP1, 4), [0; 4]);
    assert!(w.p.pending_intercept(0, 1).is_some());
}

#[test]
fn memory_fault_without_higher_vtl_or_access_is_not_an_intercept() {
    let mut w = World::new();
    assert_eq!(
        w.fault(0, write_fault(None)).unwrap(),
        InterceptOutcome::NoHigherVtl
    );
    let mut w = World::intercept_world(0x60);
    let plain = MemoryFault {
        gpa: FAULT_PAGE,
        size: 4096,
        ..Default::default()
    };
    assert_eq!(
        w.fault(0, plain).unwrap(),
        InterceptOutcome::NotProtectionFault
    );
    assert_eq!(w.p.vp(0).unwrap().active_vtl(), 0);
    assert!(w.sent.0.borrow().is_empty());
    // The exit must come from the active sibling.
    let mut env = Env {
        memory: &w.ram,
        delivery: &w.sent,
        protections: &mut w.prot,
        siblings: &mut w.factory,
    };
    assert!(matches!(
        w.p.handle_memory_fault(&mut env, 0, 1, &write_fault(None)),
        Err(VtlError::NotActive { .. })
    ));
}

/// A `KVM_SET_VTL_PROTECTION` recorder that fails with `errno` from call `fail_at` on.
#[derive(Default)]
struct Rec {
    calls: Vec<VtlProtection>,
    fail_at: Option<(usize, i32)>,
}

impl SetVtlProtection for Rec {
    fn set_vtl_protection(&mut self, p: VtlProtection) -> io::Result<()> {
        if let Some((at, errno)) = self.fail_at {
            if self.calls.len() >= at {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        self.calls.push(p);
        Ok(())
    }
}

fn req(target_vtl: u8, map_flags: u32) -> ProtectionRequest {
    ProtectionRequest {
        vp_index: 0,
        caller_vtl: target_vtl,
        target_vtl,
        map_flags,
    }
}

fn prot(gpa: u64, pages: u64, vtl: u8, access: Access) -> VtlProtection {
    VtlProtection {
        gpa,
        size: pages * 4096,
        vtl,
        access,
    }
}

#[test]
fn map_flags_to_access() {
    assert_eq!(map_flags_access(0), Some(Access::NONE));
    assert_eq!(map_flags_access(1), Some(Access::READ));
    assert_eq!(map_flags_access(3), Some(Access::READ_WRITE));
    assert_eq!(map_flags_access(5), Some(Access::READ_EXEC));
    assert_eq!(map_flags_access(9), Some(Access::READ_EXEC)); // user-execute counts as X
    assert_eq!(map_flags_access(0xf), Some(Access::ALL));
    for bad in [2, 4, 6, 8, 0xe, 0x10, 0x8001, 0x1f] {
        assert_eq!(map_flags_access(bad), None, "{bad:#x}");
    }
}

#[test]
fn kvm_protections_coalesce_runs_for_every_lower_vtl() {
    let mut p = KvmProtections::new(Rec::default());
    let r = p
        .modify_vtl_protection_mask(&req(2, 1), &[0x100, 0x101, 0x102, 0x200, 0x1ff])
        .unwrap();
    assert_eq!(
        r,
        RepStatus {
            status: HvStatus::SUCCESS,
            completed: 5
        }
    );
    assert_eq!(
        p.setter().calls,
        vec![
            prot(0x10_0000, 3, 0, Access::READ),
            prot(0x10_0000, 3, 1, Access::READ),
            prot(0x20_0000, 1, 0, Access::READ),
            prot(0x20_0000, 1, 1, Access::READ),
            prot(0x1f_f000, 1, 0, Access::READ),
            prot(0x1f_f000, 1, 1, Access::READ),
        ]
    );
}

#[test]
fn kvm_protections_refuse_illegal_flags_and_report_partial_failure() {
    let mut p = KvmProtections::new(Rec::default());
    for flags in [2, 4, 0x13] {
        assert_eq!(
            p.modify_vtl_protection_mask(&req(1, flags), &[1, 2])
                .unwrap(),
            RepStatus {
                status: HvStatus::INVALID_PARAMETER,
                completed: 0
            }
        );
    }
    assert!(p.setter().calls.is_empty());
    // EINVAL on the third run (beyond the address width): the first two runs completed.
    let mut p = KvmProtections::new(Rec {
        fail_at: Some((2, libc::EINVAL)),
        ..Default::default()
    });
    assert_eq!(
        p.modify_vtl_protection_mask(&req(1, 0), &[1, 2, 4, 9, 10])
            .unwrap(),
        RepStatus {
            status: HvStatus::INVALID_PARAMETER,
            completed: 3
        }
    );
    let mut p = KvmProtections::new(Rec {
        fail_at: Some((0, libc::ENOMEM)),
        ..Default::default()
    });
    assert_eq!(
        p.modify_vtl_protection_mask(&req(1, 0), &[1])
            .unwrap()
            .status,
        HvStatus::INSUFFICIENT_MEMORY
    );
    // A GPN whose address overflows.
    let mut p = KvmProtections::new(Rec::default());
    assert_eq!(
        p.modify_vtl_protection_mask(&req(1, 0), &[5, u64::MAX >> 4])
            .unwrap(),
        RepStatus {
            status: HvStatus::INVALID_PARAMETER,
            completed: 1
        }
    );
    // Another errno is a host failure.
    let mut p = KvmProtections::new(Rec {
        fail_at: Some((0, libc::EBADF)),
        ..Default::default()
    });
    assert!(p.modify_vtl_protection_mask(&req(1, 0), &[1]).is_err());
}

#[test]
fn kvm_protections_through_the_state_machine() {
    let mut w = World::new();
    w.vtl1(false);
    w.call(0, vtl_call()).unwrap();
    w.ram.put(IN, &prot_input(3, 0, &[0x100, 0x101, 0x300]));
    w.vcpu(0, 1).exited();
    let mut kp = KvmProtections::new(Rec {
        fail_at: Some((1, libc::EINVAL)),
        ..Default::default()
    });
    let mut env = Env {
        memory: &w.ram,
        delivery: &w.sent,
        protections: &mut kp,
        siblings: &mut w.factory,
    };
    let out =
        w.p.handle_hypercall(
            &mut env,
            0,
            1,
            &slow_rep(code::MODIFY_VTL_PROTECTION_MASK, 3, 0),
        )
        .unwrap();
    assert_eq!(
        out,
        Outcome::Complete {
            result: HvStatus::INVALID_PARAMETER.result(2)
        }
    );
    assert_eq!(
        kp.setter().calls,
        vec![prot(0x10_0000, 2, 0, Access::READ_WRITE)]
    );
}

#[test]
fn kvm_protections_default_mask() {
    // Full access: nothing to do, RAM not needed.
    let mut p = KvmProtections::new(Rec::default());
    assert_eq!(
        p.partition_config_changed(1, 1 | (0xf << 1)).unwrap(),
        HvStatus::SUCCESS
    );
    assert!(p.setter().calls.is_empty());
    // Read-only default without known RAM: refused.
    let mut p = KvmProtections::new(Rec::default());
    assert_eq!(
        p.partition_config_changed(1, 1 | (1 << 1)).unwrap(),
        HvStatus::INVALID_REGISTER_VALUE
    );
    // Write without read: illegal.
    assert_eq!(
        p.partition_config_changed(1, 1 | (2 << 1)).unwrap(),
        HvStatus::INVALID_REGISTER_VALUE
    );
    // With RAM: applied once, for every lower VTL.
    let mut p = KvmProtections::new(Rec::default()).with_ram(vec![(0, 0x10_0000)]);
    assert_eq!(
        p.partition_config_changed(2, 1 | (0b1001 << 1)).unwrap(),
        HvStatus::SUCCESS
    );
    assert_eq!(
        p.setter().calls,
        vec![
            prot(0, 0x100, 0, Access::READ_EXEC),
            prot(0, 0x100, 1, Access::READ_EXEC)
        ]
    );
    p.partition_config_changed(2, 1 | (0b1001 << 1)).unwrap();
    assert_eq!(p.setter().calls.len(), 2);
    // Without EnableVtlProtection nothing happens.
    let mut p = KvmProtections::new(Rec::default()).with_ram(vec![(0, 0x1000)]);
    assert_eq!(p.partition_config_changed(1, 0).unwrap(), HvStatus::SUCCESS);
    assert!(p.setter().calls.is_empty());
}
