// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The state machine's silent decisions are logged: a process of its own (this integration
//! test) installs a capturing logger, which the unit tests' `test-log` would otherwise own.

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::io;
use std::sync::Mutex;

use kvm_bindings::{
    kvm_debugregs, kvm_regs, kvm_run, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    KVM_MP_STATE_RUNNABLE,
};
use log::{Level, LevelFilter, Log, Metadata, Record};
use vtlkit_uapi::vtl::hv::code;
use vtlkit_uapi::vtl::{
    set_hcall_result, Control, Delivery, Env, GuestMemory, HcallExit, MemoryError, NoProtections,
    NoSiblings, Outcome, Partition, PartitionConfig, VtlVcpu,
};

static LOG: Capture = Capture(Mutex::new(Vec::new()));

struct Capture(Mutex<Vec<(Level, String)>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((r.level(), r.args().to_string()));
    }
    fn flush(&self) {}
}

/// What was logged since the last call, emptied.
fn take() -> Vec<(Level, String)> {
    std::mem::take(&mut *LOG.0.lock().unwrap())
}

fn logged(level: Level, needle: &str) -> bool {
    take()
        .iter()
        .any(|(l, m)| *l == level && m.contains(needle))
}

/// A vCPU that keeps its registers and events, and nothing else.
#[derive(Default)]
struct Vcpu {
    regs: RefCell<kvm_regs>,
    events: RefCell<kvm_vcpu_events>,
}

impl VtlVcpu for Vcpu {
    fn get_regs(&self) -> io::Result<kvm_regs> {
        Ok(*self.regs.borrow())
    }
    fn set_regs(&self, regs: &kvm_regs) -> io::Result<()> {
        *self.regs.borrow_mut() = *regs;
        Ok(())
    }
    fn get_sregs(&self) -> io::Result<kvm_sregs> {
        Ok(kvm_sregs::default())
    }
    fn set_sregs(&self, _: &kvm_sregs) -> io::Result<()> {
        Ok(())
    }
    fn get_xsave(&self) -> io::Result<kvm_xsave> {
        Ok(kvm_xsave::default())
    }
    fn set_xsave(&self, _: &kvm_xsave) -> io::Result<()> {
        Ok(())
    }
    fn get_debugregs(&self) -> io::Result<kvm_debugregs> {
        Ok(kvm_debugregs::default())
    }
    fn set_debugregs(&self, _: &kvm_debugregs) -> io::Result<()> {
        Ok(())
    }
    fn get_xcrs(&self) -> io::Result<kvm_xcrs> {
        Ok(kvm_xcrs::default())
    }
    fn set_xcrs(&self, _: &kvm_xcrs) -> io::Result<()> {
        Ok(())
    }
    fn get_msr(&self, _: u32) -> io::Result<u64> {
        Ok(0)
    }
    fn set_msr(&self, _: u32, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn get_vcpu_events(&self) -> io::Result<kvm_vcpu_events> {
        Ok(*self.events.borrow())
    }
    fn set_vcpu_events(&self, events: &kvm_vcpu_events) -> io::Result<()> {
        *self.events.borrow_mut() = *events;
        Ok(())
    }
    fn get_mp_state(&self) -> io::Result<u32> {
        Ok(KVM_MP_STATE_RUNNABLE)
    }
    fn set_mp_state(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
    fn complete_pending(&mut self) -> io::Result<()> {
        self.regs.borrow_mut().rip += 3;
        Ok(())
    }
    fn set_pending_result(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }
}

struct NoRam;

impl GuestMemory for NoRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        Err(MemoryError {
            gpa,
            len: buf.len(),
        })
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        Err(MemoryError {
            gpa,
            len: buf.len(),
        })
    }
}

struct Sent;

impl Delivery for Sent {
    fn deliver_fixed(&self, _: u32, _: u32, _: u8) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn silent_decisions_are_logged() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(LevelFilter::Trace);

    // set_hcall_result on a kvm_run that holds no HCALL exit.
    let mut run = kvm_run::default();
    assert!(!set_hcall_result(&mut run, 5));
    assert!(logged(Level::Debug, "hypercall result 0x5 not written"));

    let mut p = Partition::new(PartitionConfig::default()).unwrap();
    p.add_vp(0, 0, Vcpu::default()).unwrap();
    let (mut prot, mut sib) = (NoProtections, NoSiblings);
    let mut env = Env {
        memory: &NoRam,
        delivery: &Sent,
        protections: &mut prot,
        siblings: &mut sib,
    };
    // A VtlCall with no higher VTL: #UD.
    let call = HcallExit {
        control: Control(u64::from(code::VTL_CALL)),
        ..Default::default()
    };
    let out = p.handle_hypercall(&mut env, 0, 0, &call).unwrap();
    assert_eq!(out, Outcome::Exception { vector: 6 });
    assert!(logged(
        Level::Debug,
        "#UD at RIP 0x0: VtlCall with no higher VTL"
    ));

    // A fast IPI to VTL0 of VPs 0 and 7: VP 7 does not exist, skipped.
    let ipi = HcallExit {
        control: Control::build(code::SEND_SYNTHETIC_CLUSTER_IPI, true, 0, 0, 0),
        params: [0x30 | (0x10 << 32), (1 << 7) | 1],
        xmm: None,
    };
    let out = p.handle_hypercall(&mut env, 0, 0, &ipi).unwrap();
    assert_eq!(out, Outcome::Complete { result: 0 });
    assert!(logged(Level::Trace, "IPI 0x30 to VP 7 skipped: no such VP"));
}
