// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! The nested-VM framework itself works: a 64-bit guest runs, talks back through the ucall
//! channel, and computes what the host expects.

use std::time::Duration;

use anyhow::Context;

use crate::guest::{self, pcpu, prog, ucall, Entry};
use crate::harness::{Outcome, Test, TestResult};
use crate::vm::{layout, GuestRecord, TestVm, Ucall, VmOptions, DEFAULT_TIMEOUT};
use crate::{check, check_eq};

pub const TESTS: &[Test] = &[
    Test {
        name: "nested_long_mode_guest",
        about: "2 nested vCPUs run in 64-bit long mode (EFER.LMA, CR0.PG, CS.L checked by the guest) and return the exact FNV-1a hash of host-given input",
        run: nested_long_mode_guest,
    },
    Test {
        name: "nested_interrupt_delivered_once",
        about: "every interrupt KVM injects into a nested guest runs its handler exactly once: 2 vCPUs each send themselves 4,000 acknowledged x2APIC self-IPIs (catches QEMU TCG's SVM replaying an injected interrupt, qemu-patches/)",
        run: nested_interrupt_delivered_once,
    },
    Test {
        name: "nested_guest_reports_exceptions",
        about: "a nested guest that takes an unexpected exception reports its vector, error code and RIP (a #UD), also when its stack is broken (a #DF on its own IST stack instead of a triple fault)",
        run: nested_guest_reports_exceptions,
    },
];

/// 64-bit FNV-1a, the reference for the guest's computation.
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Deterministic pseudo-random bytes (xorshift64*), so inputs differ per vCPU and run.
fn input_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn nested_long_mode_guest() -> TestResult {
    let mut vm = TestVm::new(VmOptions::default())?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed);
    let mut expected = Vec::new();
    for i in 0..2usize {
        let idx = vm.add_vcpu(i as u64, Entry::LongMode)?;
        let len = 3000 + 517 * i;
        let buf = input_bytes(seed.wrapping_add(i as u64), len);
        let gpa = layout::DATA + (i as u64) * 0x10000;
        vm.mem.write(gpa, &buf)?;
        vm.set_pcpu(idx, pcpu::ARGS, gpa)?;
        vm.set_pcpu(idx, pcpu::ARGS + 8, len as u64)?;
        expected.push((fnv1a64(&buf), len as u64));
    }

    // vCPU 0 on this thread, step by step.
    match vm.run_vcpu(0)? {
        Ucall::Sync {
            stage: ucall::STAGE_LONG_MODE,
            args: [efer, cr0, cs_desc, _],
        } => {
            check!(efer & (1 << 10) != 0, "guest EFER {efer:#x}: LMA clear");
            check!(cr0 & (1 << 31) != 0, "guest CR0 {cr0:#x}: PG clear");
            check!(
                cs_desc & (1 << 53) != 0 && cs_desc & (1 << 54) == 0,
                "guest CS descriptor {cs_desc:#x}: not a 64-bit code segment"
            );
        }
        other => anyhow::bail!("vCPU 0: expected the long-mode SYNC, got {other}"),
    }
    match vm.run_vcpu(0)? {
        Ucall::Done {
            args: [hash, n, ..],
        } => {
            check_eq!(n, expected[0].1, "vCPU 0: bytes hashed by the guest");
            check_eq!(hash, expected[0].0, "vCPU 0: FNV-1a from the guest");
        }
        other => anyhow::bail!("vCPU 0: expected DONE, got {other}"),
    }

    // vCPU 1 on its own thread, through the threaded runner.
    let running = vm.start()?;
    running.wait_sync(1, ucall::STAGE_LONG_MODE, DEFAULT_TIMEOUT)?;
    match running.next_ucall(1, Duration::from_secs(30))? {
        Ucall::Done {
            args: [hash, n, ..],
        } => {
            check_eq!(n, expected[1].1, "vCPU 1: bytes hashed by the guest");
            check_eq!(hash, expected[1].0, "vCPU 1: FNV-1a from the guest");
        }
        other => anyhow::bail!("vCPU 1: expected DONE, got {other}"),
    }
    running.stop()?;
    Ok(Outcome::Pass)
}

/// Self-IPIs per vCPU in [`nested_interrupt_delivered_once`].
const SELF_IPIS: u64 = 4000;
/// Their vector.
const SELF_IPI_VECTOR: u8 = 0x51;

/// Each vCPU sends itself [`SELF_IPIS`] IPIs, one at a time: it writes the ICR (a WRMSR that
/// exits to KVM, which sets the IRR and injects the vector on the next VMRUN) and spins until
/// its handler has counted it. The count must come out exact. An emulator that delivers one
/// injected interrupt twice (QEMU's TCG did, when asked to exit right after a VMRUN that
/// injected one) shows up as a handler count above what was sent.
fn nested_interrupt_delivered_once() -> TestResult {
    let mut vm = TestVm::new(VmOptions::default())?;
    let vcpus = 2usize;
    for i in 0..vcpus {
        vm.add_vcpu(i as u64, Entry::ApicMain)?;
        vm.set_pcpu(i, pcpu::APIC_MODE, pcpu::APIC_MODE_X2APIC)?;
        let counter = TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(SELF_IPI_VECTOR);
        // Each vCPU's program in its own 128 bytes of the shared page: PING itself, END.
        let entry = layout::SHARED + 2 * prog::ENTRY_SIZE * i as u64;
        let words = [
            prog::PING,
            i as u64,
            SELF_IPI_VECTOR.into(),
            SELF_IPIS,
            counter,
        ];
        vm.set_one_command(i, entry, &words)?;
    }
    let running = vm.start()?;
    for i in 0..vcpus {
        running
            .wait_sync(i, ucall::STAGE_APIC_READY, DEFAULT_TIMEOUT)
            .with_context(|| format!("vCPU {i} enabling its APIC"))?;
    }
    for i in 0..vcpus {
        vm.set_pcpu(i, pcpu::GO, 1)?;
    }
    // TCG with nested SVM manages a few thousand IPIs per second.
    let timeout = DEFAULT_TIMEOUT + Duration::from_millis(5) * SELF_IPIS as u32;
    for i in 0..vcpus {
        if let Err(e) = running.wait_sync(i, ucall::STAGE_SENT, timeout) {
            let state = running.stop_and_describe();
            anyhow::bail!("vCPU {i} sending {SELF_IPIS} self-IPIs: {e:#}\nvCPU state: {state}");
        }
    }
    running.stop()?;
    for i in 0..vcpus {
        let rec = GuestRecord::read(&vm.mem, i)?;
        check!(
            rec.exceptions == 0,
            "vCPU {i}: the guest took {} exception(s), the last {:?}",
            rec.exceptions,
            rec.last
        );
        let handled = vm
            .mem
            .read_u32(TestVm::pcpu_gpa(i) + pcpu::IRQ_COUNTS + 4 * u64::from(SELF_IPI_VECTOR))?;
        check_eq!(
            u64::from(handled),
            SELF_IPIS,
            "vCPU {i}: handler runs for vector {SELF_IPI_VECTOR:#x} (self-IPIs sent and acknowledged one at a time; more means an injected interrupt was delivered twice)"
        );
        check_eq!(rec.irqs, SELF_IPIS, "vCPU {i}: interrupts handled in all");
    }
    Ok(Outcome::Pass)
}

/// Run a `Fault*` entry on a fresh vCPU and return the ABORT's values and the guest record.
fn run_fault(
    vm: &mut TestVm,
    id: u64,
    entry: Entry,
    rsp: u64,
) -> anyhow::Result<([u64; 4], GuestRecord)> {
    let index = vm.add_vcpu(id, entry)?;
    vm.set_pcpu(index, pcpu::ARGS, rsp)?;
    let args = match vm.run_vcpu(index)? {
        Ucall::Abort { args, .. } => args,
        other => anyhow::bail!("{entry:?}: expected the guest to report an exception, got {other}"),
    };
    Ok((args, GuestRecord::read(&vm.mem, index)?))
}

fn nested_guest_reports_exceptions() -> TestResult {
    let mut vm = TestVm::new(VmOptions::default())?;

    // #UD: vector 6, no error code, RIP of the UD2.
    let ud_rip = layout::CODE + guest::fault_insn_offset(Entry::FaultUd).unwrap_or(0);
    let ([vector, error, rip, _], rec) = run_fault(&mut vm, 0, Entry::FaultUd, 0)?;
    check_eq!(vector, 6, "#UD: vector reported by the guest");
    check_eq!(error, 0, "#UD: error code reported by the guest");
    check_eq!(rip, ud_rip, "#UD: RIP reported by the guest");
    check_eq!(
        rec.exceptions,
        1,
        "#UD: exceptions recorded in the data page"
    );
    let last = rec
        .last
        .ok_or_else(|| anyhow::anyhow!("#UD: no exception record"))?;
    check!(
        last.vector == 6 && last.rip == ud_rip && last.seq == 1,
        "#UD: data page record {last} (expected #UD at {ud_rip:#x})"
    );

    // A non-canonical RSP: #UD -> #SS -> #SS = #DF, which has its own stack. Without it this
    // vCPU would triple-fault (KVM_EXIT_SHUTDOWN) and report nothing.
    let bad_rsp = 0x8000_0000_0000_0000u64;
    let ([vector, ..], rec) = run_fault(&mut vm, 1, Entry::FaultBadStack, bad_rsp)?;
    check_eq!(
        vector,
        8,
        "broken stack: vector reported by the guest (#DF)"
    );
    let last = rec
        .last
        .ok_or_else(|| anyhow::anyhow!("#DF: no exception record"))?;
    check!(
        last.vector == 8 && last.rsp == bad_rsp,
        "broken stack: data page record {last} (expected #DF with RSP {bad_rsp:#x})"
    );
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }
}
