// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//! Code that runs inside the nested guests, written as commented x86-64 assembly.
//!
//! Everything between `vtlkit_guest_start` and `vtlkit_guest_end` is position-independent (all
//! references are RIP-relative or relative to the GS base), so the host copies those bytes into
//! guest memory at [`crate::vm::layout::CODE`] and starts vCPUs at an [`Entry`] point. The
//! numbers the host and the guest must agree on (the per-vCPU data layout, ucall commands and
//! stages, the send-program format) are Rust constants fed to the assembler as `const`
//! operands, so they are written once.
//!
//! Conventions inside the guest:
//! * identity-mapped memory; GS base = this vCPU's data page ([`pcpu`]); RSP = its own stack;
//! * `vtlkit_guest_ucall`: EAX = command ([`ucall`]), RDI, RSI, RCX, R8, R9 = arguments; it
//!   does `out 0x1000, eax` and preserves every register;
//! * `GUEST_ASSERT_EQ a, b, "message"` aborts (UCALL ABORT) with the message and both values;
//!   it uses R11 as scratch, so `a` and `b` must not be R11;
//! * every IDT vector points at a 16-byte stub in `vtlkit_guest_isr_stubs`; vectors 0..31
//!   (exceptions) are recorded in the vCPU's data page ([`pcpu::EXC_FIRST`], [`pcpu::EXC_LAST`])
//!   and abort with the vector, error code, RIP and CR2; vectors 32..255 are counted per vector
//!   in the data page and EOI'd (except the spurious vector 0xff);
//! * #DF runs on its own stack (IST1 of the vCPU's TSS, in its data page), so that even an
//!   exception raised with a broken stack is recorded and reported instead of triple-faulting.
//!
//! Numeric local labels use digits 2..9 only: `0:`/`1:`-style labels read as binary numbers in
//! Intel syntax.

/// The ucall channel: port, commands and well-known stages.
pub mod ucall {
    /// I/O port the guest writes the command to (as KVM selftests do on x86).
    pub const PORT: u16 = 0x1000;
    /// `SYNC(stage, a, b, c, d)`: a checkpoint the host can wait for; the guest continues.
    pub const SYNC: u32 = 1;
    /// `DONE(a, b, c, d)`: the guest finished; the vCPU is not run again.
    pub const DONE: u32 = 2;
    /// `ABORT(message, a, b, c, d)`: a guest-side assertion failed (RDI points at the text).
    pub const ABORT: u32 = 3;
    /// `PRINT(message, a, b, c, d)`: print a line on the host's stderr; the guest continues.
    pub const PRINT: u32 = 4;

    /// Stage of `vtlkit_guest_long_mode`'s SYNC: (stage, EFER, CR0, CS descriptor).
    pub const STAGE_LONG_MODE: u64 = 0x10;
    /// Stage of the APIC guest's SYNC after it enabled its APIC: (stage, APIC ID, LDR, mode).
    pub const STAGE_APIC_READY: u64 = 0x20;
    /// Stage of the APIC guest's SYNC after it ran its send program: (stage, commands run).
    pub const STAGE_SENT: u64 = 0x21;
    /// Stage of the Hyper-V guest's SYNC once it wrote its Hyper-V MSRs: (stage,
    /// HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL, HV_X64_MSR_VP_INDEX) as it read them back.
    pub const STAGE_HV_READY: u64 = 0x30;
    /// Stage of the Hyper-V guest's SYNC after its hypercall program: (stage, steps run).
    pub const STAGE_HV_DONE: u64 = 0x31;
    /// Stage of a program's gate ([`super::hvprog::GATE`]): (stage, token).
    pub const STAGE_HV_GATE: u64 = 0x32;
}

/// Offsets in a vCPU's data page (the GS base of that vCPU); see [`crate::vm::layout::PCPU`].
pub mod pcpu {
    /// u64: guest-physical address of this page.
    pub const SELF: u64 = 0x00;
    /// u64: vCPU index in the test VM (not the vcpu_id).
    pub const INDEX: u64 = 0x08;
    /// u64: APIC mode the guest enables: [`APIC_MODE_XAPIC`] or [`APIC_MODE_X2APIC`].
    pub const APIC_MODE: u64 = 0x10;
    /// u64: 0 = `vmmcall` (AMD) for KVM hypercalls, 1 = `vmcall` (Intel).
    pub const HYPERCALL_VMCALL: u64 = 0x18;
    /// u64: xAPIC LDR value to program before reporting ready (0 = leave it).
    pub const XAPIC_LDR: u64 = 0x20;
    /// u64: xAPIC DFR value to program before reporting ready (0 = leave it).
    pub const XAPIC_DFR: u64 = 0x28;
    /// u64: guest-physical address of a send program ([`prog`]), 0 = none (only receive).
    pub const PROGRAM: u64 = 0x30;
    /// u64: the host sets it non-zero to let a vCPU with a send program start sending.
    pub const GO: u64 = 0x38;
    /// u64 x 8: inputs from the host.
    pub const ARGS: u64 = 0x40;
    /// u64: the APIC ID as the guest read it (x2APIC MSR 0x802, or xAPIC ID register >> 24).
    pub const APIC_ID_READ: u64 = 0x80;
    /// u64: the LDR as the guest read it back.
    pub const LDR_READ: u64 = 0x88;
    /// u64: interrupts handled, all vectors.
    pub const IRQ_TOTAL: u64 = 0x90;
    /// u64: vector of the last interrupt handled.
    pub const LAST_VECTOR: u64 = 0x98;
    /// u64: RIP the last interrupt interrupted.
    pub const LAST_IRQ_RIP: u64 = 0xa0;
    /// u64: what the Hyper-V guest writes to HV_X64_MSR_GUEST_OS_ID (0 = no write).
    pub const HV_GUEST_OS_ID: u64 = 0xa8;
    /// u64: what the Hyper-V guest writes to HV_X64_MSR_HYPERCALL (0 = no write).
    pub const HV_HYPERCALL: u64 = 0xb0;
    /// u64: steps of its hypercall program the Hyper-V guest has finished.
    pub const HV_STEPS: u64 = 0xb8;
    /// u32 x 256: interrupts handled, per vector.
    pub const IRQ_COUNTS: u64 = 0x100;
    /// u64: exceptions (vectors 0..31) taken.
    pub const EXC_COUNT: u64 = IRQ_COUNTS + 256 * 4;
    /// [`exc`] record: the first exception taken.
    pub const EXC_FIRST: u64 = EXC_COUNT + 0x40;
    /// [`exc`] record: the last exception taken.
    pub const EXC_LAST: u64 = EXC_FIRST + exc::SIZE;
    /// Bytes used by the fields above (must fit below [`TSS`]).
    pub const SIZE: u64 = EXC_LAST + exc::SIZE;
    /// This vCPU's 64-bit TSS (its TR base): only IST1 is used, for #DF.
    pub const TSS: u64 = 0x700;
    /// Size of the TSS (limit + 1).
    pub const TSS_SIZE: u64 = 0x68;
    /// Top of the #DF stack (IST1): the rest of the page above the TSS.
    pub const IST_STACK_TOP: u64 = 0x1000;

    /// An exception record in the data page: what the CPU pushed, and CR2.
    pub mod exc {
        /// u64: vector.
        pub const VECTOR: u64 = 0x00;
        /// u64: error code (0 for vectors without one).
        pub const ERROR: u64 = 0x08;
        /// u64: RIP the exception reported.
        pub const RIP: u64 = 0x10;
        /// u64: CS.
        pub const CS: u64 = 0x18;
        /// u64: RFLAGS.
        pub const RFLAGS: u64 = 0x20;
        /// u64: RSP at the exception.
        pub const RSP: u64 = 0x28;
        /// u64: CR2 when the handler ran.
        pub const CR2: u64 = 0x30;
        /// u64: this exception's number (1 = the first one).
        pub const SEQ: u64 = 0x38;
        /// Size of a record.
        pub const SIZE: u64 = 0x40;
    }

    /// [`APIC_MODE`]: xAPIC (MMIO at 0xfee00000).
    pub const APIC_MODE_XAPIC: u64 = 1;
    /// [`APIC_MODE`]: x2APIC (MSRs 0x800..0x8ff).
    pub const APIC_MODE_X2APIC: u64 = 2;
}

/// The send program a vCPU runs once the host sets its GO flag: an array of [`prog::ENTRY_SIZE`]
/// byte entries `{ kind, a0, a1, a2, a3, _, _, result }` (u64 each), ended by kind [`prog::END`].
/// ICR low-word fields (Intel SDM vol. 3, 11.6.1), for the send programs' ICR values.
pub mod icr {
    /// Delivery mode: fixed.
    pub const DM_FIXED: u32 = 0 << 8;
    /// Delivery mode: lowest priority.
    pub const DM_LOWEST: u32 = 1 << 8;
    /// Delivery mode: NMI (the vector is ignored).
    pub const DM_NMI: u32 = 4 << 8;
    /// Delivery mode: INIT (the vector is ignored).
    pub const DM_INIT: u32 = 5 << 8;
    /// Logical destination mode.
    pub const DEST_LOGICAL: u32 = 1 << 11;
    /// Level: assert.
    pub const LEVEL_ASSERT: u32 = 1 << 14;
    /// Shorthand: self.
    pub const SH_SELF: u32 = 1 << 18;
    /// Shorthand: all including self.
    pub const SH_ALL: u32 = 2 << 18;
    /// Shorthand: all excluding self.
    pub const SH_OTHERS: u32 = 3 << 18;
}

pub mod prog {
    /// Size of one entry.
    pub const ENTRY_SIZE: u64 = 64;
    /// End of the program.
    pub const END: u64 = 0;
    /// Write the ICR: a0 = destination (xAPIC: 8 bits, x2APIC: 32 bits), a1 = ICR low word.
    pub const ICR: u64 = 1;
    /// KVM PV IPI hypercall: a0 = bitmap low, a1 = bitmap high, a2 = min APIC ID, a3 = ICR low;
    /// the hypercall's return value is stored in the entry's result slot.
    pub const PV_IPI: u64 = 2;
    /// Wait until this vCPU has handled a1 interrupts on vector a0 (e.g. its own self-IPI).
    pub const WAIT_IRQS: u64 = 3;
    /// Ping-pong IPIs (the IPI benchmark): a0 = destination, a1 = ICR low word, a2 = how many
    /// IPIs, a3 = guest-physical address of the receiver's u32 interrupt counter for the vector
    /// (its `pcpu::IRQ_COUNTS` slot). Sends one IPI, waits until the receiver's handler has
    /// counted it, sends the next; the TSC cycles the whole run took go in the result slot.
    pub const PING: u64 = 4;
    /// KVM_HC_KICK_CPU, acknowledged: a0 = APIC ID to kick, a1 = how many kicks, a2 =
    /// guest-physical address of the receiver's u64 wake-up counter (the result slot of its
    /// [`HALT_WAKES`] entry). Kicks once, waits until the counter has counted the wake-up, kicks
    /// again; aborts if the hypercall does not return 0.
    pub const KICK: u64 = 5;
    /// Halt with interrupts disabled (CLI; HLT) until woken a0 times, counting the wake-ups in
    /// this entry's result slot; then STI. Only NMI, SMI, INIT or a KVM_HC_KICK_CPU wake it.
    pub const HALT_WAKES: u64 = 6;
    /// Offset of the result slot in an entry.
    pub const RESULT: u64 = 56;
}

/// The Hyper-V guest's hypercall program ([`crate::hyperv::Program`] writes it): an array of
/// [`hvprog::ENTRY_SIZE`]-byte entries, ended by kind [`hvprog::END`]. For a hypercall the
/// guest loads XMM0..5, RCX, RDX, R8 and RAX from the entry, calls, and stores RAX and RCX
/// back; every step sets [`hvprog::DONE`] when finished.
pub mod hvprog {
    /// Size of one entry.
    pub const ENTRY_SIZE: u64 = 160;
    /// u64: the step's kind.
    pub const KIND: u64 = 0;
    /// u64: the control word (RCX) of a hypercall.
    pub const CONTROL: u64 = 8;
    /// u64: RDX of a hypercall.
    pub const RDX: u64 = 16;
    /// u64: R8 of a hypercall.
    pub const R8: u64 = 24;
    /// u64: first argument of the other kinds.
    pub const A0: u64 = 8;
    /// u64: second argument of the other kinds.
    pub const A1: u64 = 16;
    /// u64: RAX before the hypercall.
    pub const RAX_IN: u64 = 32;
    /// u64: RAX after the hypercall (the status), or the RDMSR value.
    pub const RESULT: u64 = 40;
    /// u64: RCX after the hypercall.
    pub const RCX_OUT: u64 = 48;
    /// u64: set to 1 once the step is finished.
    pub const DONE: u64 = 56;
    /// 6 x 16 bytes: XMM0..XMM5 of a hypercall.
    pub const XMM: u64 = 64;

    /// End of the program.
    pub const END: u64 = 0;
    /// A hypercall (CONTROL, RDX, R8, RAX_IN, XMM).
    pub const HCALL: u64 = 1;
    /// RDMSR A0; the value goes in RESULT.
    pub const RDMSR: u64 = 2;
    /// WRMSR A0 = A1.
    pub const WRMSR: u64 = 3;
    /// Wait until this vCPU handled A1 interrupts on vector A0.
    pub const WAIT_IRQS: u64 = 4;
    /// SYNC(STAGE_HV_GATE, A0), then wait until the data page's GO equals A0.
    pub const GATE: u64 = 5;
}

// The guest code. Intel syntax (the Rust default for `global_asm!`).
core::arch::global_asm!(
    r#"
    .pushsection .text.vtlkit_guest, "ax", @progbits
    .balign 4096
    .globl vtlkit_guest_start
vtlkit_guest_start:

// ---------------------------------------------------------------------------------------------
// GUEST_ASSERT_EQ a, b, "message": if a != b, UCALL ABORT(message, a, b). Scratch: R11.
// The message text sits inline after the abort call, which never returns.
    .macro GUEST_ASSERT_EQ a:req, b:req, msg:req
    cmp \a, \b
    je 9998f
    mov r11, \b
    mov rsi, \a
    mov rcx, r11
    lea rdi, [rip + 9997f]
    jmp vtlkit_guest_abort
9997:
    .asciz "\msg"
9998:
    .endm

// UCALL cmd: EAX = cmd, then the ucall (arguments already in RDI, RSI, RCX, R8, R9).
    .macro UCALL cmd:req
    mov eax, \cmd
    call vtlkit_guest_ucall
    .endm

// ---------------------------------------------------------------------------------------------
// vtlkit_guest_ucall: `out {UCALL_PORT}, eax`. The host reads the command from the I/O data and
// the arguments from the registers (KVM_GET_REGS). Preserves every register.
    .globl vtlkit_guest_ucall
vtlkit_guest_ucall:
    push rdx
    mov edx, {UCALL_PORT}
    out dx, eax
    pop rdx
    ret

// vtlkit_guest_abort: UCALL ABORT with RDI = message, RSI/RCX/R8/R9 = values; never returns.
vtlkit_guest_abort:
    UCALL {UCALL_ABORT}
    // The host does not resume an aborted vCPU; if it does anyway, stop here for good.
2:  cli
    hlt
    jmp 2b

// vtlkit_guest_halt_forever: the idle loop. Interrupts are taken (and counted) while halted.
    .globl vtlkit_guest_halt_forever
vtlkit_guest_halt_forever:
    sti
    hlt
    jmp vtlkit_guest_halt_forever

// ---------------------------------------------------------------------------------------------
// Entry: vtlkit_guest_long_mode. Proves the vCPU runs in 64-bit long mode, then computes the
// 64-bit FNV-1a hash of the buffer at ARGS[0] (guest-physical), ARGS[1] bytes long.
//   SYNC(STAGE_LONG_MODE, EFER, CR0, CS descriptor) then DONE(hash, bytes hashed).
    .globl vtlkit_guest_long_mode
vtlkit_guest_long_mode:
    // EFER (MSR 0xc0000080): LME (bit 8) and LMA (bit 10) must both be set.
    mov ecx, 0xc0000080
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov r12, rax
    and rax, 0x500
    GUEST_ASSERT_EQ rax, 0x500, "EFER.LME|LMA (0x500) not both set"
    // CR0: PG (bit 31) and PE (bit 0).
    mov r13, cr0
    mov rax, r13
    and eax, 0x80000001
    mov r10d, 0x80000001
    GUEST_ASSERT_EQ rax, r10, "CR0.PG|PE not both set"
    // CS: the GDT descriptor of our own selector must have L (bit 53) set and D (bit 54)
    // clear; and the CPU must behave that way: PUSH moves RSP by 8, not 4.
    sub rsp, 16
    sgdt [rsp]                              // limit (2 bytes), base (8 bytes)
    mov rax, [rsp + 2]
    add rsp, 16
    mov edx, cs
    and edx, 0xfff8
    mov r14, [rax + rdx]                    // the CS descriptor
    mov rax, r14
    shr rax, 53
    and eax, 3
    GUEST_ASSERT_EQ rax, 1, "CS descriptor is not 64-bit code (L=1, D=0)"
    mov rdx, rsp
    push 0
    sub rdx, rsp
    pop rax
    GUEST_ASSERT_EQ rdx, 8, "PUSH did not move RSP by 8 bytes: not in 64-bit mode"
    mov rdi, {STAGE_LONG_MODE}
    mov rsi, r12
    mov rcx, r13
    mov r8, r14
    UCALL {UCALL_SYNC}

    // FNV-1a 64: h = offset basis; for each byte: h ^= byte; h *= prime (a 64-bit multiply).
    mov rsi, gs:[{PCPU_ARGS}]
    mov rcx, gs:[{PCPU_ARGS} + 8]
    mov r9, rcx
    mov rax, 0xcbf29ce484222325
    mov r8, 0x100000001b3
2:  test rcx, rcx
    jz 3f
    movzx edx, byte ptr [rsi]
    xor rax, rdx
    imul rax, r8
    inc rsi
    dec rcx
    jmp 2b
3:  mov rdi, rax
    mov rsi, r9
    UCALL {UCALL_DONE}
    jmp vtlkit_guest_halt_forever

// ---------------------------------------------------------------------------------------------
// Entries that fault on purpose, for the framework's own test of exception reporting.

// Entry: vtlkit_guest_fault_ud: UD2 at a known address; the #UD handler records and reports it.
    .globl vtlkit_guest_fault_ud
vtlkit_guest_fault_ud:
    .globl vtlkit_guest_fault_ud_insn
vtlkit_guest_fault_ud_insn:
    ud2
    jmp vtlkit_guest_halt_forever

// Entry: vtlkit_guest_fault_bad_stack: UD2 with RSP = ARGS[0] (e.g. non-canonical). Delivering
// the #UD faults on the stack (#SS), delivering that #SS faults again, which makes a #DF; the
// #DF runs on its own stack (IST1), so the guest still records and reports it.
    .globl vtlkit_guest_fault_bad_stack
vtlkit_guest_fault_bad_stack:
    mov rsp, gs:[{PCPU_ARGS}]
    .globl vtlkit_guest_fault_bad_stack_insn
vtlkit_guest_fault_bad_stack_insn:
    ud2
    jmp vtlkit_guest_halt_forever

// ---------------------------------------------------------------------------------------------
// APIC helpers. All of them look at APIC_MODE in the vCPU data page and clobber RAX, RCX, RDX.

// vtlkit_guest_apic_enable: enable the local APIC in the mode the host asked for, TPR = 0,
// spurious vector 0xff; in xAPIC mode program DFR and LDR if the host gave values. Stores the
// APIC ID and LDR as read back into the data page.
    .globl vtlkit_guest_apic_enable
vtlkit_guest_apic_enable:
    mov rax, gs:[{PCPU_APIC_MODE}]
    cmp rax, {APIC_MODE_X2APIC}
    je 4f
    GUEST_ASSERT_EQ rax, {APIC_MODE_XAPIC}, "unknown APIC mode in the vCPU data page"
    // xAPIC: IA32_APIC_BASE (0x1b) global enable (bit 11), x2APIC (bit 10) left clear.
    mov ecx, 0x1b
    rdmsr
    or eax, 1 << 11
    wrmsr
    mov eax, 0xfee00000
    mov dword ptr [rax + 0x80], 0           // TPR
    mov dword ptr [rax + 0xf0], 0x1ff       // SVR: APIC software enable, spurious vector 0xff
    mov rdx, gs:[{PCPU_XAPIC_DFR}]
    test rdx, rdx
    jz 2f
    mov dword ptr [rax + 0xe0], edx         // DFR: 0xffffffff flat, 0x0fffffff cluster
2:  mov rdx, gs:[{PCPU_XAPIC_LDR}]
    test rdx, rdx
    jz 3f
    mov dword ptr [rax + 0xd0], edx         // LDR (logical ID in bits 31:24)
3:  mov edx, dword ptr [rax + 0x20]         // APIC ID register: ID in bits 31:24
    shr edx, 24
    mov gs:[{PCPU_APIC_ID_READ}], rdx
    mov edx, dword ptr [rax + 0xd0]
    mov gs:[{PCPU_LDR_READ}], rdx
    ret
4:  // x2APIC: IA32_APIC_BASE enable (bit 11) + EXTD (bit 10).
    mov ecx, 0x1b
    rdmsr
    or eax, (1 << 11) | (1 << 10)
    wrmsr
    xor edx, edx
    mov ecx, 0x808                          // TPR
    xor eax, eax
    wrmsr
    mov ecx, 0x80f                          // SVR
    mov eax, 0x1ff
    wrmsr
    mov ecx, 0x802                          // x2APIC ID (32 bits)
    rdmsr
    mov gs:[{PCPU_APIC_ID_READ}], rax
    mov ecx, 0x80d                          // LDR (read-only: cluster << 16 | 1 << (id & 15))
    rdmsr
    mov gs:[{PCPU_LDR_READ}], rax
    ret

// vtlkit_guest_apic_eoi: end of interrupt (xAPIC EOI register, or x2APIC MSR 0x80b).
    .globl vtlkit_guest_apic_eoi
vtlkit_guest_apic_eoi:
    cmp qword ptr gs:[{PCPU_APIC_MODE}], {APIC_MODE_X2APIC}
    je 2f
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    ret
2:  mov ecx, 0x80b
    xor eax, eax
    xor edx, edx
    wrmsr
    ret

// vtlkit_guest_apic_send_icr: RDI = destination, ESI = ICR low word (vector, delivery mode,
// destination mode, level, trigger, shorthand). xAPIC: ICR high (0x310) = dest << 24, then ICR
// low (0x300), which sends. x2APIC: one WRMSR to 0x830 with EDX = 32-bit dest, EAX = low word.
    .globl vtlkit_guest_apic_send_icr
vtlkit_guest_apic_send_icr:
    cmp qword ptr gs:[{PCPU_APIC_MODE}], {APIC_MODE_X2APIC}
    je 2f
    mov eax, 0xfee00000
    mov edx, edi
    shl edx, 24
    mov dword ptr [rax + 0x310], edx
    mov dword ptr [rax + 0x300], esi
    ret
2:  mov ecx, 0x830
    mov eax, esi
    mov edx, edi
    wrmsr
    ret

// vtlkit_guest_pv_send_ipi: KVM_HC_SEND_IPI (10). RDI = bitmap low, RSI = bitmap high,
// RDX = lowest APIC ID of the bitmap, RCX = ICR low (vector + delivery mode only).
// KVM hypercall ABI: RAX = nr, RBX/RCX/RDX/RSI = a0..a3; returns RAX = IPIs delivered or -errno.
// Clobbers RAX, RCX, RSI.
    .globl vtlkit_guest_pv_send_ipi
vtlkit_guest_pv_send_ipi:
    push rbx
    mov rbx, rdi                            // a0: bitmap low
    mov rax, rcx
    mov rcx, rsi                            // a1: bitmap high
    mov rsi, rax                            // a3: ICR
    mov eax, {KVM_HC_SEND_IPI}              // a2 (RDX) is already the min APIC ID
    cmp qword ptr gs:[{PCPU_HYPERCALL_VMCALL}], 0
    jne 2f
    vmmcall                                 // AMD
    jmp 3f
2:  vmcall                                  // Intel
3:  pop rbx
    ret

// vtlkit_guest_wait_irqs: RDI = vector, RSI = count. Halt with interrupts enabled until this
// vCPU has handled at least `count` interrupts on `vector`. CLI before the check and STI;HLT
// after it, so an interrupt cannot slip in between the check and the halt.
    .globl vtlkit_guest_wait_irqs
vtlkit_guest_wait_irqs:
2:  cli
    mov eax, dword ptr gs:[{PCPU_IRQ_COUNTS} + rdi * 4]
    cmp rax, rsi
    jae 3f
    sti
    hlt
    jmp 2b
3:  sti
    ret

// vtlkit_guest_ping: RDI = destination, RSI = ICR low word, RDX = number of IPIs, RCX = address
// of the receiver's u32 counter of interrupts on that vector. For each IPI: send it, then spin
// until the receiver's handler has counted it (the counter reaches the value expected after
// this IPI), so exactly one IPI is in flight at a time and each is acknowledged. Returns
// RAX = TSC cycles from before the first send to after the last acknowledgement.
// Clobbers RAX, RCX, RDX, RSI, RDI, R8..R11.
vtlkit_guest_ping:
    mov r8, rdi                             // R8 = destination
    mov r9, rsi                             // R9 = ICR low word
    mov r10, rdx                            // R10 = IPIs left to send
    mov r11, rcx                            // R11 = receiver's counter
    push rbx
    mov ebx, dword ptr [r11]                // EBX = counter value after the last IPI so far
    rdtsc
    shl rdx, 32
    or rax, rdx
    push rax                                // start TSC
2:  test r10, r10
    jz 4f
    inc ebx
    mov rdi, r8
    mov rsi, r9
    call vtlkit_guest_apic_send_icr         // clobbers RAX, RCX, RDX only
3:  pause
    cmp dword ptr [r11], ebx                // acknowledged yet?
    jb 3b
    dec r10
    jmp 2b
4:  rdtsc
    shl rdx, 32
    or rax, rdx
    pop rcx
    sub rax, rcx                            // cycles taken
    pop rbx
    ret

// vtlkit_guest_prog_wake: the send-program commands about halting and waking. RBX = the entry,
// RAX = its kind. Preserves RBX and R12; clobbers RAX, RCX, RDX, RSI, RDI, R8..R11, R13.
vtlkit_guest_prog_wake:
    cmp rax, {PROG_KICK}
    jne 5f
    push rbx
    mov r8, [rbx + 8]                       // R8 = APIC ID to kick
    mov r9, [rbx + 16]                      // R9 = kicks to send
    mov r10, [rbx + 24]                     // R10 = receiver's wake-up counter
    xor r13, r13                            // R13 = kicks sent
2:  cmp r13, r9
    jae 4f
    inc r13
    mov eax, {KVM_HC_KICK_CPU}
    xor ebx, ebx                            // a0: flags
    mov rcx, r8                             // a1: APIC ID
    cmp qword ptr gs:[{PCPU_HYPERCALL_VMCALL}], 0
    jne 6f
    vmmcall                                 // AMD
    jmp 7f
6:  vmcall                                  // Intel
7:  GUEST_ASSERT_EQ rax, 0, "KVM_HC_KICK_CPU did not return 0"
3:  pause
    cmp qword ptr [r10], r13                // woken (and counted) yet?
    jb 3b
    jmp 2b
4:  pop rbx
    ret
5:  GUEST_ASSERT_EQ rax, {PROG_HALT_WAKES}, "unknown send-program command"
    mov rsi, [rbx + 8]
2:  cmp qword ptr [rbx + {PROG_RESULT}], rsi
    jae 3f
    cli
    hlt
    lock inc qword ptr [rbx + {PROG_RESULT}]
    jmp 2b
3:  sti
    ret

// ---------------------------------------------------------------------------------------------
// Entry: vtlkit_guest_apic_main. The common body of the interrupt tests:
//   1. enable the APIC as the data page says, SYNC(STAGE_APIC_READY, APIC ID, LDR, mode);
//   2. STI; with no send program, halt forever (counting interrupts);
//   3. with one, spin until the host sets GO, run it, SYNC(STAGE_SENT, commands), halt forever.
    .globl vtlkit_guest_apic_main
vtlkit_guest_apic_main:
    call vtlkit_guest_apic_enable
    mov rdi, {STAGE_APIC_READY}
    mov rsi, gs:[{PCPU_APIC_ID_READ}]
    mov rcx, gs:[{PCPU_LDR_READ}]
    mov r8, gs:[{PCPU_APIC_MODE}]
    UCALL {UCALL_SYNC}
    sti
    mov rbx, gs:[{PCPU_PROGRAM}]
    test rbx, rbx
    jz vtlkit_guest_halt_forever
2:  cmp qword ptr gs:[{PCPU_GO}], 0         // wait for GO; interrupts are taken meanwhile
    jne 3f
    pause
    jmp 2b
3:  xor r12, r12                            // R12 = commands run
4:  mov rax, [rbx]                          // next entry's kind
    cmp rax, {PROG_END}
    je 8f
    cmp rax, {PROG_ICR}
    jne 5f
    mov rdi, [rbx + 8]
    mov rsi, [rbx + 16]
    call vtlkit_guest_apic_send_icr
    jmp 7f
5:  cmp rax, {PROG_PV_IPI}
    jne 6f
    mov rdi, [rbx + 8]
    mov rsi, [rbx + 16]
    mov rdx, [rbx + 24]
    mov rcx, [rbx + 32]
    call vtlkit_guest_pv_send_ipi
    mov [rbx + {PROG_RESULT}], rax
    jmp 7f
6:  cmp rax, {PROG_PING}
    jne 9f
    mov rdi, [rbx + 8]
    mov rsi, [rbx + 16]
    mov rdx, [rbx + 24]
    mov rcx, [rbx + 32]
    call vtlkit_guest_ping
    mov [rbx + {PROG_RESULT}], rax
    jmp 7f
9:  cmp rax, {PROG_WAIT_IRQS}
    je 2f
    call vtlkit_guest_prog_wake             // KICK, HALT_WAKES (aborts on an unknown kind)
    jmp 7f
2:  mov rdi, [rbx + 8]
    mov rsi, [rbx + 16]
    call vtlkit_guest_wait_irqs
7:  inc r12
    add rbx, {PROG_ENTRY_SIZE}
    jmp 4b
8:  mov rdi, {STAGE_SENT}
    mov rsi, r12
    UCALL {UCALL_SYNC}
    jmp vtlkit_guest_halt_forever

// ---------------------------------------------------------------------------------------------
// The Hyper-V guest.

// vtlkit_guest_rdmsr64: ECX = MSR; returns RAX = its 64-bit value. Clobbers RDX.
vtlkit_guest_rdmsr64:
    rdmsr
    shl rdx, 32
    or rax, rdx
    ret

// vtlkit_guest_wrmsr64: ECX = MSR, RAX = 64-bit value. Clobbers RDX.
vtlkit_guest_wrmsr64:
    mov rdx, rax
    shr rdx, 32
    wrmsr
    ret

// vtlkit_guest_hv_hcall: the hypercall of the program entry at RBX: XMM0..5, RCX (control),
// RDX, R8 and RAX from the entry, then `vmmcall` (`vmcall` on Intel); RAX and RCX after it go
// back into the entry. Clobbers RAX, RCX, RDX, R8, XMM0..5.
vtlkit_guest_hv_hcall:
    movdqu xmm0, [rbx + {HVPROG_XMM}]
    movdqu xmm1, [rbx + {HVPROG_XMM} + 16]
    movdqu xmm2, [rbx + {HVPROG_XMM} + 32]
    movdqu xmm3, [rbx + {HVPROG_XMM} + 48]
    movdqu xmm4, [rbx + {HVPROG_XMM} + 64]
    movdqu xmm5, [rbx + {HVPROG_XMM} + 80]
    mov rcx, [rbx + {HVPROG_CONTROL}]
    mov rdx, [rbx + {HVPROG_RDX}]
    mov r8, [rbx + {HVPROG_R8}]
    mov rax, [rbx + {HVPROG_RAX_IN}]
    cmp qword ptr gs:[{PCPU_HYPERCALL_VMCALL}], 0
    jne 2f
    vmmcall                                 // AMD
    jmp 3f
2:  vmcall                                  // Intel
3:  mov [rbx + {HVPROG_RESULT}], rax
    mov [rbx + {HVPROG_RCX_OUT}], rcx
    ret

// vtlkit_guest_hv_step: run the program entry at RBX (kind in RAX). Preserves RBX and R12.
vtlkit_guest_hv_step:
    cmp rax, {HVPROG_HCALL}
    jne 2f
    jmp vtlkit_guest_hv_hcall
2:  cmp rax, {HVPROG_RDMSR}
    jne 3f
    mov ecx, [rbx + {HVPROG_A0}]
    call vtlkit_guest_rdmsr64
    mov [rbx + {HVPROG_RESULT}], rax
    ret
3:  cmp rax, {HVPROG_WRMSR}
    jne 4f
    mov ecx, [rbx + {HVPROG_A0}]
    mov rax, [rbx + {HVPROG_A1}]
    jmp vtlkit_guest_wrmsr64
4:  cmp rax, {HVPROG_WAIT_IRQS}
    jne 5f
    mov rdi, [rbx + {HVPROG_A0}]
    mov rsi, [rbx + {HVPROG_A1}]
    jmp vtlkit_guest_wait_irqs
5:  GUEST_ASSERT_EQ rax, {HVPROG_GATE}, "unknown hypercall-program step"
    mov rdi, {STAGE_HV_GATE}
    mov rsi, [rbx + {HVPROG_A0}]
    UCALL {UCALL_SYNC}
6:  cmp gs:[{PCPU_GO}], rsi                 // interrupts are taken meanwhile
    je 7f
    pause
    jmp 6b
7:  ret

// Entry: vtlkit_guest_hv_main. The body of the Hyper-V tests:
//   1. enable the APIC as the data page says;
//   2. write HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL with the data page's values
//      (HV_GUEST_OS_ID, HV_HYPERCALL; 0 = leave that MSR alone);
//   3. SYNC(STAGE_HV_READY, GUEST_OS_ID, HYPERCALL, VP_INDEX) as read back with RDMSR;
//   4. STI; with no program, halt forever (counting interrupts); with one, wait for GO, run
//      it (hvprog), SYNC(STAGE_HV_DONE, steps run), halt forever.
    .globl vtlkit_guest_hv_main
vtlkit_guest_hv_main:
    call vtlkit_guest_apic_enable
    mov rax, gs:[{PCPU_HV_GUEST_OS_ID}]
    test rax, rax
    jz 2f
    mov ecx, {HV_MSR_GUEST_OS_ID}
    call vtlkit_guest_wrmsr64
2:  mov rax, gs:[{PCPU_HV_HYPERCALL}]
    test rax, rax
    jz 3f
    mov ecx, {HV_MSR_HYPERCALL}
    call vtlkit_guest_wrmsr64
3:  mov ecx, {HV_MSR_GUEST_OS_ID}
    call vtlkit_guest_rdmsr64
    mov r12, rax
    mov ecx, {HV_MSR_HYPERCALL}
    call vtlkit_guest_rdmsr64
    mov r13, rax
    mov ecx, {HV_MSR_VP_INDEX}
    call vtlkit_guest_rdmsr64
    mov r8, rax
    mov rdi, {STAGE_HV_READY}
    mov rsi, r12
    mov rcx, r13
    UCALL {UCALL_SYNC}
    sti
    mov rbx, gs:[{PCPU_PROGRAM}]
    test rbx, rbx
    jz vtlkit_guest_halt_forever
4:  cmp qword ptr gs:[{PCPU_GO}], 0         // wait for GO; interrupts are taken meanwhile
    jne 5f
    pause
    jmp 4b
5:  xor r12, r12                            // R12 = steps run
6:  mov rax, [rbx + {HVPROG_KIND}]
    cmp rax, {HVPROG_END}
    je 7f
    call vtlkit_guest_hv_step
    mov qword ptr [rbx + {HVPROG_DONE}], 1
    inc r12
    mov gs:[{PCPU_HV_STEPS}], r12
    add rbx, {HVPROG_ENTRY_SIZE}
    jmp 6b
7:  mov rdi, {STAGE_HV_DONE}
    mov rsi, r12
    UCALL {UCALL_SYNC}
    jmp vtlkit_guest_halt_forever

// ---------------------------------------------------------------------------------------------
// Interrupt and exception entry. 256 stubs of 16 bytes each; the IDT entry for vector v points
// at vtlkit_guest_isr_stubs + 16 * v. Each stub makes the frame uniform (a 0 error code for
// vectors where the CPU pushes none), pushes its vector, and jumps to the common code.
    .balign 16
    .globl vtlkit_guest_isr_stubs
vtlkit_guest_isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push 0                                  // no CPU-pushed error code: push a 0
    .endif
    push vec                                // the vector
    jmp vtlkit_guest_isr_common
    .set vec, vec + 1
    .endr

// EXC_RECORD base: copy the exception frame into the record at gs:[base]. Expects the frame
// 16 bytes up ([rsp+16] vector, [rsp+24] error code, [rsp+32] RIP, CS, RFLAGS, RSP) and RAX =
// the exception's sequence number. Scratch: RDX.
    .macro EXC_RECORD base:req
    mov rdx, [rsp + 16]
    mov gs:[\base + {EXC_VECTOR}], rdx
    mov rdx, [rsp + 24]
    mov gs:[\base + {EXC_ERROR}], rdx
    mov rdx, [rsp + 32]
    mov gs:[\base + {EXC_RIP}], rdx
    mov rdx, [rsp + 40]
    mov gs:[\base + {EXC_CS}], rdx
    mov rdx, [rsp + 48]
    mov gs:[\base + {EXC_RFLAGS}], rdx
    mov rdx, [rsp + 56]
    mov gs:[\base + {EXC_RSP}], rdx
    mov rdx, cr2
    mov gs:[\base + {EXC_CR2}], rdx
    mov gs:[\base + {EXC_SEQ}], rax
    .endm

// Frame here: [rsp] vector, [rsp+8] error code, [rsp+16] RIP, CS, RFLAGS, RSP, SS.
vtlkit_guest_isr_common:
    cmp qword ptr [rsp], 32
    jb 3f
    // An interrupt: count it (per vector, and in total), EOI unless spurious, return.
    push rax
    push rcx
    push rdx
    mov rax, [rsp + 24]                     // vector
    lock inc dword ptr gs:[{PCPU_IRQ_COUNTS} + rax * 4]
    lock inc qword ptr gs:[{PCPU_IRQ_TOTAL}]
    mov gs:[{PCPU_LAST_VECTOR}], rax
    mov rcx, [rsp + 40]                     // the interrupted RIP
    mov gs:[{PCPU_LAST_IRQ_RIP}], rcx
    cmp rax, 0xff
    je 2f
    call vtlkit_guest_apic_eoi
2:  pop rdx
    pop rcx
    pop rax
    add rsp, 16                             // drop vector and error code
    iretq
3:  // An exception: nothing in these guests expects one. Record it in the data page (the first
    // and the last one), then abort with what the CPU told us.
    push rax
    push rdx
    mov eax, 1
    lock xadd qword ptr gs:[{PCPU_EXC_COUNT}], rax
    inc rax                                 // this exception's number
    cmp rax, 1
    jne 5f
    EXC_RECORD {PCPU_EXC_FIRST}
5:  EXC_RECORD {PCPU_EXC_LAST}
    pop rdx
    pop rax
    mov rsi, [rsp]                          // vector
    mov rcx, [rsp + 8]                      // error code
    mov r8, [rsp + 16]                      // RIP
    mov r9, cr2                             // faulting address, for #PF
    lea rdi, [rip + 4f]
    jmp vtlkit_guest_abort
4:  .asciz "unexpected exception (vector, error code, RIP, CR2)"

    .globl vtlkit_guest_end
vtlkit_guest_end:
    .popsection
"#,
    UCALL_PORT = const ucall::PORT,
    UCALL_SYNC = const ucall::SYNC,
    UCALL_DONE = const ucall::DONE,
    UCALL_ABORT = const ucall::ABORT,
    STAGE_LONG_MODE = const ucall::STAGE_LONG_MODE,
    STAGE_APIC_READY = const ucall::STAGE_APIC_READY,
    STAGE_SENT = const ucall::STAGE_SENT,
    PCPU_APIC_MODE = const pcpu::APIC_MODE,
    PCPU_HYPERCALL_VMCALL = const pcpu::HYPERCALL_VMCALL,
    PCPU_XAPIC_LDR = const pcpu::XAPIC_LDR,
    PCPU_XAPIC_DFR = const pcpu::XAPIC_DFR,
    PCPU_PROGRAM = const pcpu::PROGRAM,
    PCPU_GO = const pcpu::GO,
    PCPU_ARGS = const pcpu::ARGS,
    PCPU_APIC_ID_READ = const pcpu::APIC_ID_READ,
    PCPU_LDR_READ = const pcpu::LDR_READ,
    PCPU_IRQ_TOTAL = const pcpu::IRQ_TOTAL,
    PCPU_LAST_VECTOR = const pcpu::LAST_VECTOR,
    PCPU_IRQ_COUNTS = const pcpu::IRQ_COUNTS,
    PCPU_LAST_IRQ_RIP = const pcpu::LAST_IRQ_RIP,
    PCPU_EXC_COUNT = const pcpu::EXC_COUNT,
    PCPU_EXC_FIRST = const pcpu::EXC_FIRST,
    PCPU_EXC_LAST = const pcpu::EXC_LAST,
    EXC_VECTOR = const pcpu::exc::VECTOR,
    EXC_ERROR = const pcpu::exc::ERROR,
    EXC_RIP = const pcpu::exc::RIP,
    EXC_CS = const pcpu::exc::CS,
    EXC_RFLAGS = const pcpu::exc::RFLAGS,
    EXC_RSP = const pcpu::exc::RSP,
    EXC_CR2 = const pcpu::exc::CR2,
    EXC_SEQ = const pcpu::exc::SEQ,
    APIC_MODE_XAPIC = const pcpu::APIC_MODE_XAPIC,
    APIC_MODE_X2APIC = const pcpu::APIC_MODE_X2APIC,
    KVM_HC_SEND_IPI = const KVM_HC_SEND_IPI,
    PROG_END = const prog::END,
    PROG_ICR = const prog::ICR,
    PROG_PV_IPI = const prog::PV_IPI,
    PROG_WAIT_IRQS = const prog::WAIT_IRQS,
    PROG_PING = const prog::PING,
    PROG_KICK = const prog::KICK,
    PROG_HALT_WAKES = const prog::HALT_WAKES,
    KVM_HC_KICK_CPU = const KVM_HC_KICK_CPU,
    PROG_RESULT = const prog::RESULT,
    PROG_ENTRY_SIZE = const prog::ENTRY_SIZE,
    STAGE_HV_READY = const ucall::STAGE_HV_READY,
    STAGE_HV_DONE = const ucall::STAGE_HV_DONE,
    STAGE_HV_GATE = const ucall::STAGE_HV_GATE,
    PCPU_HV_GUEST_OS_ID = const pcpu::HV_GUEST_OS_ID,
    PCPU_HV_HYPERCALL = const pcpu::HV_HYPERCALL,
    PCPU_HV_STEPS = const pcpu::HV_STEPS,
    HV_MSR_GUEST_OS_ID = const crate::hyperv::msr::GUEST_OS_ID,
    HV_MSR_HYPERCALL = const crate::hyperv::msr::HYPERCALL,
    HV_MSR_VP_INDEX = const crate::hyperv::msr::VP_INDEX,
    HVPROG_ENTRY_SIZE = const hvprog::ENTRY_SIZE,
    HVPROG_KIND = const hvprog::KIND,
    HVPROG_CONTROL = const hvprog::CONTROL,
    HVPROG_RDX = const hvprog::RDX,
    HVPROG_R8 = const hvprog::R8,
    HVPROG_A0 = const hvprog::A0,
    HVPROG_A1 = const hvprog::A1,
    HVPROG_RAX_IN = const hvprog::RAX_IN,
    HVPROG_RESULT = const hvprog::RESULT,
    HVPROG_RCX_OUT = const hvprog::RCX_OUT,
    HVPROG_DONE = const hvprog::DONE,
    HVPROG_XMM = const hvprog::XMM,
    HVPROG_END = const hvprog::END,
    HVPROG_HCALL = const hvprog::HCALL,
    HVPROG_RDMSR = const hvprog::RDMSR,
    HVPROG_WRMSR = const hvprog::WRMSR,
    HVPROG_WAIT_IRQS = const hvprog::WAIT_IRQS,
    HVPROG_GATE = const hvprog::GATE,
);

/// KVM hypercall number of the PV IPI (`KVM_HC_SEND_IPI` in include/uapi/linux/kvm_para.h).
pub const KVM_HC_SEND_IPI: u64 = 10;

/// KVM hypercall number of the PV kick (`KVM_HC_KICK_CPU` in include/uapi/linux/kvm_para.h).
pub const KVM_HC_KICK_CPU: u64 = 5;

extern "C" {
    static vtlkit_guest_start: u8;
    static vtlkit_guest_end: u8;
    static vtlkit_guest_long_mode: u8;
    static vtlkit_guest_apic_main: u8;
    static vtlkit_guest_hv_main: u8;
    static vtlkit_guest_isr_stubs: u8;
    static vtlkit_guest_fault_ud: u8;
    static vtlkit_guest_fault_ud_insn: u8;
    static vtlkit_guest_fault_bad_stack: u8;
    static vtlkit_guest_fault_bad_stack_insn: u8;
}

/// Size of one interrupt stub; vector v's handler is at `ISR_STUBS + v * ISR_STUB_SIZE`.
pub const ISR_STUB_SIZE: u64 = 16;

/// Guest code a vCPU can start at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Check long mode, hash ARGS[0..ARGS[1]], DONE(hash).
    LongMode,
    /// Enable the APIC, report ready, optionally run a send program, then halt forever.
    ApicMain,
    /// Enable the APIC, write the Hyper-V MSRs, report ready, optionally run a hypercall
    /// program ([`crate::hyperv::Program`]), then halt forever.
    HvMain,
    /// Execute UD2 at [`fault_insn_offset`]`(FaultUd)` (tests the exception report).
    FaultUd,
    /// Load RSP from ARGS[0], then execute UD2: the #UD cannot be delivered, which escalates
    /// to a #DF (tests that a broken stack is reported, not a triple fault).
    FaultBadStack,
}

fn offset_of_symbol(sym: *const u8) -> u64 {
    let start = &raw const vtlkit_guest_start;
    (sym as u64).wrapping_sub(start as u64)
}

/// The guest code blob: the bytes between `vtlkit_guest_start` and `vtlkit_guest_end`.
pub fn code() -> &'static [u8] {
    // SAFETY: both symbols are defined in the same section by the `global_asm!` above, end after
    // start, and the bytes between them are the (immutable) code that is part of this binary.
    unsafe {
        let start = &raw const vtlkit_guest_start;
        let end = &raw const vtlkit_guest_end;
        std::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Offset of an entry point from the start of the code blob.
pub fn entry_offset(e: Entry) -> u64 {
    let sym = match e {
        Entry::LongMode => &raw const vtlkit_guest_long_mode,
        Entry::ApicMain => &raw const vtlkit_guest_apic_main,
        Entry::HvMain => &raw const vtlkit_guest_hv_main,
        Entry::FaultUd => &raw const vtlkit_guest_fault_ud,
        Entry::FaultBadStack => &raw const vtlkit_guest_fault_bad_stack,
    };
    offset_of_symbol(sym)
}

/// Offset of the faulting instruction of a `Fault*` entry from the start of the code blob.
pub fn fault_insn_offset(e: Entry) -> Option<u64> {
    let sym = match e {
        Entry::FaultUd => &raw const vtlkit_guest_fault_ud_insn,
        Entry::FaultBadStack => &raw const vtlkit_guest_fault_bad_stack_insn,
        _ => return None,
    };
    Some(offset_of_symbol(sym))
}

/// Offset of the first interrupt stub from the start of the code blob.
pub fn isr_stubs_offset() -> u64 {
    offset_of_symbol(&raw const vtlkit_guest_isr_stubs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_sane() {
        let c = code();
        assert!(!c.is_empty() && c.len() < 0x10000, "blob size {}", c.len());
        assert!(entry_offset(Entry::LongMode) < c.len() as u64);
        assert!(entry_offset(Entry::ApicMain) < c.len() as u64);
        assert!(entry_offset(Entry::HvMain) < c.len() as u64);
        const { assert!(hvprog::XMM + 96 <= hvprog::ENTRY_SIZE) };
        const { assert!(pcpu::HV_STEPS + 8 <= pcpu::IRQ_COUNTS) };
        let stubs = isr_stubs_offset();
        assert_eq!(stubs % 16, 0);
        assert!(stubs + 256 * ISR_STUB_SIZE <= c.len() as u64);
        const { assert!(pcpu::SIZE <= pcpu::TSS) };
        const { assert!(pcpu::TSS + pcpu::TSS_SIZE + 0x400 <= pcpu::IST_STACK_TOP) };
        const { assert!(pcpu::IST_STACK_TOP <= 4096) };
    }
}
