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
    /// u64 (VSM, VTL1 vCPU): guest-physical address of the array of
    /// [`super::vsm::block`]s; the n-th entry into VTL1 uses block n.
    pub const VSM_BLOCKS: u64 = 0xc0;
    /// u64 (VSM, VTL1 vCPU): entries into VTL1 so far (the index of the next block).
    pub const VSM_ROUND: u64 = 0xc8;
    /// u64 (VSM, VTL1 vCPU): guest-physical address of the VP assist page the VTL1 guest
    /// enables on its first entry (0 = none).
    pub const VSM_ASSIST: u64 = 0xd0;
    /// u64 (VSM, VTL1 vCPU): set by the guest once its first entry set up its MSRs and APIC.
    pub const VSM_INIT: u64 = 0xd8;
    /// u64 (VSM, VTL1 vCPU): non-zero makes every entry return at once with a fast VtlReturn
    /// (the benchmark), without looking at any block.
    pub const VSM_BENCH: u64 = 0xe0;
    /// u64 (VSM): the block the current VtlCall or VTL1 entry works on (guest scratch).
    pub const VSM_BLOCK_CUR: u64 = 0xe8;
    /// u64 (VSM): VtlCalls left in a [`super::hvprog::VTL_CALL_LOOP`] (guest scratch).
    pub const VSM_LOOP_LEFT: u64 = 0xf0;
    /// u64 (VSM, VTL1 vCPU): entries with `HV_VP_VTL_CONTROL.EntryReason` = 2 (Interrupt):
    /// the VTL1 guest took its pending interrupts and returned (no block used).
    pub const VSM_INT_ENTRIES: u64 = 0xf8;
    /// u32 x 256: interrupts handled, per vector.
    pub const IRQ_COUNTS: u64 = 0x100;
    /// u64: exceptions (vectors 0..31) taken.
    pub const EXC_COUNT: u64 = IRQ_COUNTS + 256 * 4;
    /// [`exc`] record: the first exception taken.
    pub const EXC_FIRST: u64 = EXC_COUNT + 0x40;
    /// [`exc`] record: the last exception taken.
    pub const EXC_LAST: u64 = EXC_FIRST + exc::SIZE;
    /// Bytes used by the fields above (must fit below [`TSS`]). The fuzzer's guest uses
    /// 0x5c0..0x640 (`tests/fuzz.rs`), the VSM code [`VSM_REGS`].
    pub const SIZE: u64 = EXC_LAST + exc::SIZE;
    /// [`super::vsm::regs`] register file (VSM): where the guest saves every register the
    /// moment it comes back from a VTL switch, before it uses any of them (above the fuzzer's
    /// area, below [`TSS`]).
    pub const VSM_REGS: u64 = 0x640;
    /// u64: the TSC when the interrupt handler took the last interrupt, written before its
    /// count moves (`--bench-wake`; after [`VSM_REGS`], below [`TSS`]).
    pub const LAST_IRQ_TSC: u64 = 0x6e0;
    /// u64 (VSM, VTL1 vCPU): GPA of its secure-intercept page ([`super::vsm::icpt`]), 0 =
    /// none. With one, VTL1's first entry sets up its SynIC and its interrupt handler treats
    /// the page's vector as SINT0's intercept messages (after [`VSM_REGS`]).
    pub const VSM_ICPT: u64 = 0x6d0;
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
    /// VSM: HvCallVtlCall with every register loaded from the [`super::vsm::block`] at A0
    /// (its `IN` set: RAX 0 and RCX 0x11 for a well-formed call); what this VTL finds when it
    /// is resumed goes in the block's `V0_*` fields. RESULT and RCX_OUT are not written.
    pub const VTL_CALL: u64 = 6;
    /// VSM: HvCallEnableVpVtl for this VP: the input block (PartitionId self, this VP's index,
    /// TargetVtl A1) is built in the page at A0, with an initial context copied from this
    /// vCPU's own long-mode state except RIP, RSP, GS base, TR base and (if non-zero) CR3,
    /// which come from the entry's `VP_CTX_*` fields. RESULT = the status.
    pub const ENABLE_VP_VTL: u64 = 7;
    /// VSM benchmark: LOOP_COUNT VtlCalls (RAX 0, RCX 0x11) in a row; RESULT = TSC cycles.
    pub const VTL_CALL_LOOP: u64 = 8;
    /// Benchmark: LOOP_COUNT hypercalls with CONTROL, RDX, R8 (each must return
    /// HV_STATUS_SUCCESS, else the guest aborts); RESULT = TSC cycles.
    pub const HCALL_LOOP: u64 = 9;
    /// Spin with interrupts disabled until the u32 at A0 (e.g. another vCPU's interrupt
    /// count) reaches A1, or A2 TSC cycles passed. RAX and RCX are live all along (an
    /// iteration count and its complement) and R8/R15 hold copies: a VTL switch that does not
    /// give them back aborts the guest. RAX_IN bit 0: open an interrupt window (STI; NOP; CLI)
    /// every 256 iterations, so this VTL takes its own interrupts now and then. While
    /// spinning, RCX_OUT = 2; at the end RESULT = iterations, RCX_OUT = 1 (reached) or 0
    /// (timed out). RFLAGS.IF is restored afterwards.
    pub const SPIN_UNTIL: u64 = 10;
    /// `add qword ptr [A0], A1` (the instruction at [`super::hv_add_insn_offset`], 3 bytes);
    /// RESULT = the qword at A0 read back after it. A VTL protection fault leaves RIP there.
    pub const ADD_MEM: u64 = 11;
    /// `mov rax, qword ptr [A0]` (the instruction at [`super::hv_load_insn_offset`], 3 bytes);
    /// RESULT = the value read.
    pub const LOAD_MEM: u64 = 12;
    /// u64 ([`SPIN_UNTIL`]): the TSC budget.
    pub const A2: u64 = 24;

    /// u64 ([`ENABLE_VP_VTL`]): RIP of the new VTL.
    pub const VP_CTX_RIP: u64 = 64;
    /// u64 ([`ENABLE_VP_VTL`]): RSP of the new VTL.
    pub const VP_CTX_RSP: u64 = 72;
    /// u64 ([`ENABLE_VP_VTL`]): GS base of the new VTL (its vCPU's data page).
    pub const VP_CTX_GS_BASE: u64 = 80;
    /// u64 ([`ENABLE_VP_VTL`]): CR3 of the new VTL; 0 = this VTL's own.
    pub const VP_CTX_CR3: u64 = 88;
    /// u64 ([`ENABLE_VP_VTL`]): TR base of the new VTL (its vCPU's TSS).
    pub const VP_CTX_TR_BASE: u64 = 96;
    /// u64 ([`VTL_CALL_LOOP`], [`HCALL_LOOP`]): how many calls.
    pub const LOOP_COUNT: u64 = 64;
}

/// VSM guest code: what VTL0's program steps ([`hvprog::VTL_CALL`], [`hvprog::ENABLE_VP_VTL`])
/// and the VTL1 entry ([`Entry::VsmVtl1`]) read and write. [`crate::vp`] says how the host
/// side runs it.
///
/// One VtlCall/VtlReturn round trip is described by one [`block`]: VTL0 loads its `IN`
/// registers and calls; VTL1, entered, saves what it found (`V1_SEEN`, its CR3, GS base and
/// the entry reason in its VP assist page, which it then clears), optionally issues one fast
/// hypercall (`V1_HC_*`, e.g. an IPI), writes `V1_RET_RAX`/`V1_RET_RCX` into its assist page's
/// `HV_VP_VTL_CONTROL`, loads its `V1_OUT` registers (RAX = 0 normal or 1 fast return,
/// RCX = 0x12) and returns; VTL0, resumed, saves what it found (`V0_SEEN`, CR3, GS base).
/// VTL1 re-enters right after its VtlReturn instruction and takes the next block.
pub mod vsm {
    /// A saved register set: the 16 general-purpose registers in hvdef order (RAX RCX RDX RBX
    /// RSP RBP RSI RDI R8..R15), 8 bytes each, then XMM6 (16 bytes).
    pub mod regs {
        /// Number of general-purpose registers.
        pub const GPRS: usize = 16;
        /// Index of RAX.
        pub const RAX: usize = 0;
        /// Index of RCX.
        pub const RCX: usize = 1;
        /// Index of RSP (private per VTL: not loaded by the guest, only saved).
        pub const RSP: usize = 4;
        /// Offset of XMM6 (low qword, then high qword).
        pub const XMM6: u64 = 128;
        /// Size in bytes.
        pub const SIZE: u64 = 144;
        /// Size in qwords.
        pub const QWORDS: u64 = SIZE / 8;
        /// hvdef names of the GPRs, for reports.
        pub const NAMES: [&str; GPRS] = [
            "RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI", "R8", "R9", "R10", "R11",
            "R12", "R13", "R14", "R15",
        ];
    }

    /// One round trip's block (see the module documentation).
    pub mod block {
        /// Register set VTL0 loads before its VtlCall (RSP not loaded).
        pub const IN: u64 = 0x000;
        /// Register set VTL1 found when entered.
        pub const V1_SEEN: u64 = 0x090;
        /// u64: VTL1's CR3 when entered.
        pub const V1_CR3: u64 = 0x120;
        /// u64: VTL1's GS base (IA32_GS_BASE) when entered.
        pub const V1_GS_BASE: u64 = 0x128;
        /// u64: the u32 `vtl_entry_reason` VTL1 read in its VP assist page (then set to 0).
        pub const V1_ENTRY_REASON: u64 = 0x130;
        /// u64: VTL1's entry count when it took this block (the block's index).
        pub const V1_ROUND: u64 = 0x138;
        /// u64: control word of a fast hypercall VTL1 issues before returning (0 = none).
        pub const V1_HC_CONTROL: u64 = 0x140;
        /// u64: its RDX.
        pub const V1_HC_RDX: u64 = 0x148;
        /// u64: its R8.
        pub const V1_HC_R8: u64 = 0x150;
        /// u64: RAX after it (the status).
        pub const V1_HC_RESULT: u64 = 0x158;
        /// u64: what VTL1 writes to `vtl_ret_x64rax` in its assist page before returning.
        pub const V1_RET_RAX: u64 = 0x160;
        /// u64: what VTL1 writes to `vtl_ret_x64rcx`.
        pub const V1_RET_RCX: u64 = 0x168;
        /// Register set VTL1 loads before its VtlReturn (RSP not loaded).
        pub const V1_OUT: u64 = 0x170;
        /// Register set VTL0 found when resumed.
        pub const V0_SEEN: u64 = 0x200;
        /// u64: VTL0's RSP just before it loaded `IN` (what it must find again).
        pub const V0_RSP_BEFORE: u64 = 0x290;
        /// u64: VTL0's CR3 when resumed.
        pub const V0_CR3: u64 = 0x298;
        /// u64: VTL0's GS base when resumed.
        pub const V0_GS_BASE: u64 = 0x2a0;
        /// u64: bit 63 set: VTL1 writes bits 3:0 to CR8 (its TPR) before returning.
        pub const V1_SET_CR8: u64 = 0x2a8;
        /// Size of a block.
        pub const SIZE: u64 = 0x2c0;
    }

    /// The HvCallEnableVpVtl input block.
    pub mod enable {
        /// u64: PartitionId.
        pub const PARTITION_ID: u64 = 0;
        /// u32: VpIndex.
        pub const VP_INDEX: u64 = 8;
        /// u8: TargetVtl.
        pub const TARGET_VTL: u64 = 12;
        /// HV_INITIAL_VP_CONTEXT.
        pub const CONTEXT: u64 = 16;
        /// Size of the whole input block.
        pub const SIZE: u64 = CONTEXT + super::ctx::SIZE;
    }

    /// HV_INITIAL_VP_CONTEXT (x64, TLFS): offsets.
    pub mod ctx {
        /// u64 RIP.
        pub const RIP: u64 = 0;
        /// u64 RSP.
        pub const RSP: u64 = 8;
        /// u64 RFLAGS.
        pub const RFLAGS: u64 = 16;
        /// 8 hv_x64_segment_registers (base u64, limit u32, selector u16, attributes u16): CS,
        /// DS, ES, FS, GS, SS, TR, LDTR.
        pub const SEGS: u64 = 24;
        /// Size of one segment register.
        pub const SEG_SIZE: u64 = 16;
        /// IDTR (pad 6 bytes, limit u16, base u64).
        pub const IDTR: u64 = 152;
        /// GDTR.
        pub const GDTR: u64 = 168;
        /// u64 EFER.
        pub const EFER: u64 = 184;
        /// u64 CR0.
        pub const CR0: u64 = 192;
        /// u64 CR3.
        pub const CR3: u64 = 200;
        /// u64 CR4.
        pub const CR4: u64 = 208;
        /// u64 IA32_PAT.
        pub const PAT: u64 = 216;
        /// Size.
        pub const SIZE: u64 = 224;
    }

    /// `struct hv_vp_assist_page` offsets of the VTL control area.
    pub mod assist {
        /// u32 `vtl_entry_reason` (1 = VtlCall, 2 = interrupt).
        pub const ENTRY_REASON: u64 = 8;
        /// u64 `vtl_ret_x64rax`.
        pub const RET_RAX: u64 = 16;
        /// u64 `vtl_ret_x64rcx`.
        pub const RET_RCX: u64 = 24;
        /// HV_X64_MSR_VP_ASSIST_PAGE enable bit.
        pub const ENABLE: u64 = 1;
    }

    /// VTL1's secure-intercept page ([`super::pcpu::VSM_ICPT`]): what the host sets up
    /// (first entry: SIMP = `SIMP | 1`, SINT0 = `VECTOR` unmasked, SCONTROL = 1) and what VTL1's
    /// handler of that vector records from the message in slot 0 of its SIMP page, before it
    /// acts (`ACTION`), frees the slot, writes `HV_X64_MSR_EOM` and counts (`COUNT`).
    pub mod icpt {
        /// u64: SINT0's vector (the handler's vector).
        pub const VECTOR: u64 = 0x00;
        /// u64: GPA of the SynIC message page.
        pub const SIMP: u64 = 0x08;
        /// u64: what the handler does: [`ALLOW`], [`DENY`] or 0 (nothing).
        pub const ACTION: u64 = 0x10;
        /// u64: control word of the allow hypercall (HvCallModifyVtlProtectionMask).
        pub const ALLOW_CONTROL: u64 = 0x18;
        /// u64: its input GPA (prepared by the host).
        pub const ALLOW_INPUT: u64 = 0x20;
        /// u64: control word of the deny hypercall (HvCallSetVpRegisters).
        pub const DENY_CONTROL: u64 = 0x28;
        /// u64: its input GPA: the host writes the header and the register name (VTL0's RIP),
        /// the handler the value (u128 at offset [`DENY_VALUE`]) = message RIP + length.
        pub const DENY_INPUT: u64 = 0x30;
        /// Offset of the register value in the deny input.
        pub const DENY_VALUE: u64 = 32;
        /// u64: messages handled.
        pub const COUNT: u64 = 0x40;
        /// u64: message type read.
        pub const MSG_TYPE: u64 = 0x48;
        /// u64: message flags read.
        pub const MSG_FLAGS: u64 = 0x50;
        /// u64: VP index read.
        pub const VP_INDEX: u64 = 0x58;
        /// u64: instruction length read.
        pub const INSN_LEN: u64 = 0x60;
        /// u64: intercept access type read (0 read, 1 write, 2 execute).
        pub const ACCESS: u64 = 0x68;
        /// u64: execution state read.
        pub const EXEC_STATE: u64 = 0x70;
        /// u64: RIP read.
        pub const RIP: u64 = 0x78;
        /// u64: instruction byte count read.
        pub const INSN_COUNT: u64 = 0x80;
        /// u64: GPA read.
        pub const GPA: u64 = 0x88;
        /// u64: the first 8 instruction bytes read.
        pub const INSN_BYTES: u64 = 0x90;
        /// u64: RAX after the allow/deny hypercall (its status).
        pub const HC_STATUS: u64 = 0x98;
        /// u64: memory access info read (bit 0 GvaValid).
        pub const ACCESS_INFO: u64 = 0xa0;
        /// u64: GVA read.
        pub const GVA: u64 = 0xa8;
        /// [`ACTION`]: lift the protection with the allow hypercall.
        pub const ALLOW: u64 = 1;
        /// [`ACTION`]: skip VTL0's instruction (its RIP += the message's length).
        pub const DENY: u64 = 2;
    }

    /// [`block::V1_SET_CR8`]: write CR8.
    pub const SET_CR8: u64 = 1 << 63;
    /// `HV_VP_VTL_CONTROL.EntryReason` of an entry because of an interrupt.
    pub const ENTRY_REASON_INTERRUPT: u64 = 2;
    /// VtlReturn's RAX: fast return (bit 0), leaving RAX/RCX as the returning VTL left them.
    pub const RETURN_FAST: u64 = 1;
    /// RFLAGS of the new VTL (bit 1 is always set; IF clear).
    pub const INITIAL_RFLAGS: u64 = 0x2;
    /// Segment attribute bit 1 of a TSS type: busy (a loaded TR is busy).
    pub const TSS_BUSY: u64 = 0x2;
}

/// Architectural MSRs the guest code reads.
pub mod x86msr {
    /// IA32_EFER.
    pub const EFER: u32 = 0xc000_0080;
    /// IA32_FS_BASE.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// IA32_GS_BASE.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// IA32_PAT.
    pub const PAT: u32 = 0x277;
}

/// The memory-access guest ([`Entry::MemOps`]), for the VTL protection tests: each round it
/// performs the operation in its data page's `ARGS[0]` on the address in `ARGS[1]`, then
/// reports `SYNC(STAGE_MEM_DONE, result, rounds done, operation)`; `ARGS[3]` counts the rounds
/// done. Any access may exit to userspace as a protection fault, which leaves the vCPU at the
/// instruction that made it (see [`memops_insn_offsets`]).
pub mod memops {
    /// u64 in the data page: the operation.
    pub const OP: u64 = super::pcpu::ARGS;
    /// u64 in the data page: the (identity-mapped) address it works on.
    pub const ADDR: u64 = super::pcpu::ARGS + 8;
    /// u64 in the data page: [`TOUCH`]'s length; [`WRITE_LOOP`]'s last value written.
    pub const ARG: u64 = super::pcpu::ARGS + 16;
    /// u64 in the data page: rounds finished (incremented before each SYNC).
    pub const ROUNDS: u64 = super::pcpu::ARGS + 24;

    /// Result = the u64 at the address (one `mov` load).
    pub const READ: u64 = 1;
    /// `inc qword ptr [address]` (one read-modify-write instruction); result = the new value.
    pub const INC: u64 = 2;
    /// `call address`; result = RAX as the callee left it.
    pub const EXEC: u64 = 3;
    /// Store ARG + 1, ARG + 2, ... to the address forever, updating ARG after each store;
    /// never reports.
    pub const WRITE_LOOP: u64 = 4;
    /// Store one u64 (its own address) at the start of every 4 KiB page of
    /// `[address, address + ARG)`; result = the pages written.
    pub const TOUCH: u64 = 5;
    /// Stage of the round's SYNC: (stage, result, rounds done, operation).
    pub const STAGE_MEM_DONE: u64 = 0x40;
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
// Entry: vtlkit_guest_mem_ops: the memory-access rounds of `memops` (VTL protection tests).
// R12 = operation, RBX = address, RSI = result.
    .globl vtlkit_guest_mem_ops
vtlkit_guest_mem_ops:
2:  mov r12, gs:[{MEM_OP}]
    mov rbx, gs:[{MEM_ADDR}]
    xor esi, esi
    cmp r12, {MEM_READ}
    je 3f
    cmp r12, {MEM_INC}
    je 4f
    cmp r12, {MEM_EXEC}
    je 5f
    cmp r12, {MEM_WRITE_LOOP}
    je 6f
    cmp r12, {MEM_TOUCH}
    je 7f
    mov rsi, r12
    lea rdi, [rip + 9f]
    jmp vtlkit_guest_abort
3:
    .globl vtlkit_guest_mem_read_insn
vtlkit_guest_mem_read_insn:
    mov rsi, [rbx]
    jmp 8f
4:
    .globl vtlkit_guest_mem_inc_insn
vtlkit_guest_mem_inc_insn:
    inc qword ptr [rbx]
    mov rsi, [rbx]
    jmp 8f
5:  call rbx
    mov rsi, rax
    jmp 8f
6:  mov rcx, gs:[{MEM_ARG}]
66: inc rcx
    .globl vtlkit_guest_mem_store_insn
vtlkit_guest_mem_store_insn:
    mov [rbx], rcx
    mov gs:[{MEM_ARG}], rcx
    jmp 66b
7:  mov rcx, gs:[{MEM_ARG}]
    add rcx, rbx
77: cmp rbx, rcx
    jae 8f
    mov [rbx], rbx
    add rbx, 4096
    inc rsi
    jmp 77b
8:  inc qword ptr gs:[{MEM_ROUNDS}]
    mov rdi, {STAGE_MEM_DONE}
    mov rcx, gs:[{MEM_ROUNDS}]
    mov r8, r12
    UCALL {UCALL_SYNC}
    jmp 2b
9:  .asciz "mem_ops: unknown operation"

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
5:  cmp rax, {HVPROG_VTL_CALL}
    je vtlkit_guest_vsm_vtl_call
    cmp rax, {HVPROG_ENABLE_VP_VTL}
    je vtlkit_guest_vsm_enable_vp_vtl
    cmp rax, {HVPROG_VTL_CALL_LOOP}
    je vtlkit_guest_vsm_vtl_call_loop
    cmp rax, {HVPROG_HCALL_LOOP}
    je vtlkit_guest_hcall_loop
    cmp rax, {HVPROG_SPIN_UNTIL}
    je vtlkit_guest_spin_until
    cmp rax, {HVPROG_ADD_MEM}
    je vtlkit_guest_hv_add_mem
    cmp rax, {HVPROG_LOAD_MEM}
    je vtlkit_guest_hv_load_mem
    GUEST_ASSERT_EQ rax, {HVPROG_GATE}, "unknown hypercall-program step"
    mov rdi, {STAGE_HV_GATE}
    mov rsi, [rbx + {HVPROG_A0}]
    UCALL {UCALL_SYNC}
6:  cmp gs:[{PCPU_GO}], rsi                 // interrupts are taken meanwhile
    je 7f
    pause
    jmp 6b
7:  ret

// vtlkit_guest_hv_add_mem: program step ADD_MEM, RBX = the entry: `add [A0], A1` at
// vtlkit_guest_hv_add_insn, then RESULT = the qword read back.
vtlkit_guest_hv_add_mem:
    mov rdx, [rbx + {HVPROG_A0}]
    mov rax, [rbx + {HVPROG_A1}]
    .globl vtlkit_guest_hv_add_insn
vtlkit_guest_hv_add_insn:
    add qword ptr [rdx], rax
    mov rax, [rdx]
    mov [rbx + {HVPROG_RESULT}], rax
    ret

// vtlkit_guest_hv_load_mem: program step LOAD_MEM, RBX = the entry: `mov rax, [A0]` at
// vtlkit_guest_hv_load_insn; RESULT = the value.
vtlkit_guest_hv_load_mem:
    mov rdx, [rbx + {HVPROG_A0}]
    xor eax, eax
    .globl vtlkit_guest_hv_load_insn
vtlkit_guest_hv_load_insn:
    mov rax, qword ptr [rdx]
    mov [rbx + {HVPROG_RESULT}], rax
    ret

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
// VSM: VTL0's VtlCall and EnableVpVtl steps, and the VTL1 entry (guest.rs `vsm` module).

// vtlkit_guest_hcall_insn: the hypercall instruction alone, every register as the caller set
// it: `vmmcall` (AMD) or `vmcall` (Intel) as the data page says. Changes only RFLAGS (and what
// the hypervisor changes). After a VtlCall, this VTL resumes here, right after the instruction.
    .globl vtlkit_guest_hcall_insn
vtlkit_guest_hcall_insn:
    cmp qword ptr gs:[{PCPU_HYPERCALL_VMCALL}], 0
    jne 2f
    .globl vtlkit_guest_hcall_vmmcall
vtlkit_guest_hcall_vmmcall:
    vmmcall
    .globl vtlkit_guest_hcall_vmmcall_after
vtlkit_guest_hcall_vmmcall_after:
    ret
    .globl vtlkit_guest_hcall_vmcall
vtlkit_guest_hcall_vmcall:
2:  vmcall
    .globl vtlkit_guest_hcall_vmcall_after
vtlkit_guest_hcall_vmcall_after:
    ret

// VSM_SAVE_REGS: every GPR (RSP too) and XMM6 into the register file gs:[VSM_REGS]. Changes
// nothing.
    .macro VSM_SAVE_REGS
    mov gs:[{PCPU_VSM_REGS} + 0], rax
    mov gs:[{PCPU_VSM_REGS} + 8], rcx
    mov gs:[{PCPU_VSM_REGS} + 16], rdx
    mov gs:[{PCPU_VSM_REGS} + 24], rbx
    mov gs:[{PCPU_VSM_REGS} + 32], rsp
    mov gs:[{PCPU_VSM_REGS} + 40], rbp
    mov gs:[{PCPU_VSM_REGS} + 48], rsi
    mov gs:[{PCPU_VSM_REGS} + 56], rdi
    mov gs:[{PCPU_VSM_REGS} + 64], r8
    mov gs:[{PCPU_VSM_REGS} + 72], r9
    mov gs:[{PCPU_VSM_REGS} + 80], r10
    mov gs:[{PCPU_VSM_REGS} + 88], r11
    mov gs:[{PCPU_VSM_REGS} + 96], r12
    mov gs:[{PCPU_VSM_REGS} + 104], r13
    mov gs:[{PCPU_VSM_REGS} + 112], r14
    mov gs:[{PCPU_VSM_REGS} + 120], r15
    movdqu gs:[{PCPU_VSM_REGS} + {VSM_REGS_XMM6}], xmm6
    .endm

// VSM_LOAD_REGS: every GPR but RSP, and XMM6, from the register set at RAX (RAX last).
    .macro VSM_LOAD_REGS
    movdqu xmm6, [rax + {VSM_REGS_XMM6}]
    mov rcx, [rax + 8]
    mov rdx, [rax + 16]
    mov rbx, [rax + 24]
    mov rbp, [rax + 40]
    mov rsi, [rax + 48]
    mov rdi, [rax + 56]
    mov r8, [rax + 64]
    mov r9, [rax + 72]
    mov r10, [rax + 80]
    mov r11, [rax + 88]
    mov r12, [rax + 96]
    mov r13, [rax + 104]
    mov r14, [rax + 112]
    mov r15, [rax + 120]
    mov rax, [rax]
    .endm

// vtlkit_guest_vsm_copy_regs: copy the register file gs:[VSM_REGS] to RDI. Clobbers RAX, RCX.
vtlkit_guest_vsm_copy_regs:
    xor ecx, ecx
2:  mov rax, gs:[{PCPU_VSM_REGS} + rcx * 8]
    mov [rdi + rcx * 8], rax
    inc ecx
    cmp ecx, {VSM_REGS_QWORDS}
    jb 2b
    ret

// vtlkit_guest_vsm_vtl_call: program step VTL_CALL, RBX = the entry, A0 = the block. Loads the
// block's IN registers, VtlCall, saves what it finds on return into V0_SEEN, V0_CR3, V0_GS_BASE.
// Preserves RBX and R12 (on this VTL's private stack).
vtlkit_guest_vsm_vtl_call:
    push rbx
    push r12
    mov rax, [rbx + {HVPROG_A0}]
    mov gs:[{PCPU_VSM_BLOCK_CUR}], rax
    mov [rax + {BLK_V0_RSP_BEFORE}], rsp
    add rax, {BLK_IN}
    VSM_LOAD_REGS
    call vtlkit_guest_hcall_insn
    VSM_SAVE_REGS
    mov rdi, gs:[{PCPU_VSM_BLOCK_CUR}]
    add rdi, {BLK_V0_SEEN}
    call vtlkit_guest_vsm_copy_regs
    mov rdi, gs:[{PCPU_VSM_BLOCK_CUR}]
    mov rax, cr3
    mov [rdi + {BLK_V0_CR3}], rax
    mov ecx, {MSR_GS_BASE}
    call vtlkit_guest_rdmsr64
    mov [rdi + {BLK_V0_GS_BASE}], rax
    pop r12
    pop rbx
    ret

// vtlkit_guest_vsm_seg: the hv_x64_segment_register of selector AX, from its GDT descriptor,
// at RDI: base 31:0, byte-granular limit, selector, attributes (descriptor bits 55:40 without
// limit 19:16). A null selector gives zeros (not present). Clobbers RAX, RCX, RDX, RSI.
vtlkit_guest_vsm_seg:
    movzx eax, ax
    mov qword ptr [rdi], 0
    mov qword ptr [rdi + 8], 0
    mov word ptr [rdi + 12], ax             // selector
    and eax, 0xfff8
    jz 3f
    sub rsp, 16
    sgdt [rsp]
    mov rsi, [rsp + 2]
    add rsp, 16
    mov rdx, [rsi + rax]                    // the descriptor
    mov rax, rdx
    shr rax, 16
    and eax, 0xffffff                       // base 23:0
    mov rcx, rdx
    shr rcx, 56
    shl rcx, 24
    or rax, rcx                             // base 31:24
    mov [rdi], rax
    mov eax, edx
    and eax, 0xffff                         // limit 15:0
    mov rcx, rdx
    shr rcx, 48
    and ecx, 0xf
    shl ecx, 16
    or eax, ecx                             // limit 19:16
    bt rdx, 55                              // G: 4 KiB granular
    jnc 2f
    shl eax, 12
    or eax, 0xfff
2:  mov [rdi + 8], eax
    mov rax, rdx
    shr rax, 40
    and eax, 0xf0ff
    mov [rdi + 14], ax
3:  ret

// vtlkit_guest_vsm_enable_vp_vtl: program step ENABLE_VP_VTL, RBX = the entry. Builds the
// HvCallEnableVpVtl input in the page at A0 (PartitionId self, this VP's index, TargetVtl A1,
// an initial context copied from this vCPU's state with the entry's RIP, RSP, GS base, TR
// base and CR3), issues it, RESULT = RAX. Preserves RBX and R12.
vtlkit_guest_vsm_enable_vp_vtl:
    push rbx
    push r12
    mov rdi, [rbx + {HVPROG_A0}]
    mov r12, rdi                            // R12 = the input block
    xor eax, eax
    mov ecx, {VSM_ENABLE_SIZE} / 8
    rep stosq
    mov qword ptr [r12 + {EN_PARTITION_ID}], -1    // HV_PARTITION_ID_SELF
    mov ecx, {HV_MSR_VP_INDEX}
    call vtlkit_guest_rdmsr64
    mov [r12 + {EN_VP_INDEX}], eax
    mov al, [rbx + {HVPROG_A1}]
    mov [r12 + {EN_TARGET_VTL}], al
    add r12, {EN_CONTEXT}                   // R12 = HV_INITIAL_VP_CONTEXT
    mov rax, [rbx + {HVPROG_VP_CTX_RIP}]
    mov [r12 + {CTX_RIP}], rax
    mov rax, [rbx + {HVPROG_VP_CTX_RSP}]
    mov [r12 + {CTX_RSP}], rax
    mov qword ptr [r12 + {CTX_RFLAGS}], {VSM_INITIAL_RFLAGS}
    mov ax, cs
    lea rdi, [r12 + {CTX_SEGS} + 0 * {CTX_SEG_SIZE}]
    call vtlkit_guest_vsm_seg
    mov ax, ds
    lea rdi, [r12 + {CTX_SEGS} + 1 * {CTX_SEG_SIZE}]
    call vtlkit_guest_vsm_seg
    mov ax, es
    lea rdi, [r12 + {CTX_SEGS} + 2 * {CTX_SEG_SIZE}]
    call vtlkit_guest_vsm_seg
    mov ax, fs
    lea rdi, [r12 + {CTX_SEGS} + 3 * {CTX_SEG_SIZE}]
    call vtlkit_guest_vsm_seg
    mov ecx, {MSR_FS_BASE}                  // 64-bit FS/GS bases live in MSRs
    call vtlkit_guest_rdmsr64
    mov [r12 + {CTX_SEGS} + 3 * {CTX_SEG_SIZE}], rax
    mov ax, gs
    lea rdi, [r12 + {CTX_SEGS} + 4 * {CTX_SEG_SIZE}]
    call vtlkit_guest_vsm_seg
    mov rax, [rbx + {HVPROG_VP_CTX_GS_BASE}]
    mov [r12 + {CTX_SEGS} + 4 * {CTX_SEG_SIZE}], rax
    mov ax, ss
    lea rdi, [r12 + {CTX_SEGS} + 5 * {CTX_SEG_SIZE}]
    call vtlkit_guest_vsm_seg
    str ax
    lea rdi, [r12 + {CTX_SEGS} + 6 * {CTX_SEG_SIZE}]
    call vtlkit_guest_vsm_seg
    mov rax, [rbx + {HVPROG_VP_CTX_TR_BASE}]
    mov [r12 + {CTX_SEGS} + 6 * {CTX_SEG_SIZE}], rax
    or word ptr [r12 + {CTX_SEGS} + 6 * {CTX_SEG_SIZE} + 14], {VSM_TSS_BUSY}
    sldt ax
    lea rdi, [r12 + {CTX_SEGS} + 7 * {CTX_SEG_SIZE}]
    call vtlkit_guest_vsm_seg
    sidt [r12 + {CTX_IDTR} + 6]
    sgdt [r12 + {CTX_GDTR} + 6]
    mov ecx, {MSR_EFER}
    call vtlkit_guest_rdmsr64
    mov [r12 + {CTX_EFER}], rax
    mov rax, cr0
    mov [r12 + {CTX_CR0}], rax
    mov rax, [rbx + {HVPROG_VP_CTX_CR3}]
    test rax, rax
    jnz 2f
    mov rax, cr3
2:  mov [r12 + {CTX_CR3}], rax
    mov rax, cr4
    mov [r12 + {CTX_CR4}], rax
    mov ecx, {MSR_PAT}
    call vtlkit_guest_rdmsr64
    mov [r12 + {CTX_PAT}], rax
    mov ecx, {HV_CALL_ENABLE_VP_VTL}
    mov rdx, [rbx + {HVPROG_A0}]
    xor r8d, r8d
    xor eax, eax
    call vtlkit_guest_hcall_insn
    mov [rbx + {HVPROG_RESULT}], rax
    mov [rbx + {HVPROG_RCX_OUT}], rcx
    pop r12
    pop rbx
    ret

// vtlkit_guest_vsm_vtl_call_loop: program step VTL_CALL_LOOP, RBX = the entry: LOOP_COUNT
// VtlCalls (RAX 0, RCX 0x11); RESULT = TSC cycles they took. Preserves RBX and R12.
vtlkit_guest_vsm_vtl_call_loop:
    push rbx
    push r12
    rdtsc
    shl rdx, 32
    or rax, rdx
    push rax
    mov rax, [rbx + {HVPROG_LOOP_COUNT}]
    mov gs:[{PCPU_VSM_LOOP_LEFT}], rax
2:  cmp qword ptr gs:[{PCPU_VSM_LOOP_LEFT}], 0
    je 3f
    xor eax, eax
    mov ecx, {HV_CALL_VTL_CALL}
    call vtlkit_guest_hcall_insn
    dec qword ptr gs:[{PCPU_VSM_LOOP_LEFT}]
    jmp 2b
3:  rdtsc
    shl rdx, 32
    or rax, rdx
    pop rcx
    sub rax, rcx
    pop r12
    pop rbx
    mov [rbx + {HVPROG_RESULT}], rax
    ret

// vtlkit_guest_hcall_loop: program step HCALL_LOOP, RBX = the entry: LOOP_COUNT hypercalls
// with CONTROL, RDX, R8, each of which must return status 0; RESULT = TSC cycles.
// Preserves RBX and R12.
vtlkit_guest_hcall_loop:
    push rbx
    push r12
    rdtsc
    shl rdx, 32
    or rax, rdx
    push rax
    mov r12, [rbx + {HVPROG_LOOP_COUNT}]
2:  test r12, r12
    jz 3f
    mov rcx, [rbx + {HVPROG_CONTROL}]
    mov rdx, [rbx + {HVPROG_RDX}]
    mov r8, [rbx + {HVPROG_R8}]
    xor eax, eax
    call vtlkit_guest_hcall_insn
    GUEST_ASSERT_EQ rax, 0, "a hypercall of HCALL_LOOP did not return HV_STATUS_SUCCESS"
    dec r12
    jmp 2b
3:  rdtsc
    shl rdx, 32
    or rax, rdx
    pop rcx
    sub rax, rcx
    pop r12
    pop rbx
    mov [rbx + {HVPROG_RESULT}], rax
    ret

// vtlkit_guest_spin_until: program step SPIN_UNTIL, RBX = the entry (guest.rs hvprog).
// Preserves RBX and R12 (R9, R10, R13..R15 are scratch here).
vtlkit_guest_spin_until:
    push rbx
    push r12
    pushfq
    cli
    rdtsc
    shl rdx, 32
    or rax, rdx
    add rax, [rbx + {HVPROG_A2}]
    mov r12, rax                            // R12 = TSC deadline
    mov r9, [rbx + {HVPROG_A0}]             // R9 = the counter's address
    mov r10, [rbx + {HVPROG_A1}]            // R10 = the value to reach
    mov r13, [rbx + {HVPROG_RAX_IN}]        // R13 = flags
    mov qword ptr [rbx + {HVPROG_RCX_OUT}], 2
    xor eax, eax                            // RAX = iterations
    mov rcx, -1                             // RCX = NOT RAX, always
2:  cmp dword ptr [r9], r10d
    jae 4f
    inc rax
    dec rcx
    test eax, 0xff
    jnz 2b
    test r13, 1
    jz 3f
    sti                                     // an interrupt window for this VTL
    nop
    cli
3:  mov r8, rax
    mov r15, rcx
    rdtsc
    shl rdx, 32
    or rax, rdx
    cmp rax, r12
    mov rax, r8                             // (MOV leaves the flags alone)
    mov rcx, r15
    jb 2b
    xor r14d, r14d                          // timed out
    jmp 5f
4:  mov r14d, 1                             // reached
5:  mov rdx, rax
    not rdx
    GUEST_ASSERT_EQ rcx, rdx, "RCX != NOT RAX after the spin: a VTL switch lost VTL0's RAX/RCX"
    popfq
    pop r12
    pop rbx
    mov [rbx + {HVPROG_RESULT}], rax
    mov [rbx + {HVPROG_RCX_OUT}], r14
    ret

// Entry: vtlkit_guest_vsm_vtl1. Where VTL1 starts (HvCallEnableVpVtl's RIP) and where it comes
// back to after each VtlReturn. Each entry: save every register at once; the first one also
// writes this VTL's GUEST_OS_ID and HYPERCALL MSRs (from the data page), enables its VP assist
// page (VSM_ASSIST) and its x2APIC. In benchmark mode (VSM_BENCH) return at once (fast).
// Otherwise take block VSM_ROUND: record V1_SEEN, CR3, GS base, the entry reason (then clear
// it), issue the block's hypercall if any, write V1_RET_RAX/RCX into the assist page, load
// V1_OUT and VtlReturn.
    .globl vtlkit_guest_vsm_vtl1
vtlkit_guest_vsm_vtl1:
    VSM_SAVE_REGS
    cmp qword ptr gs:[{PCPU_VSM_INIT}], 0
    jne 4f
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
3:  mov rax, gs:[{PCPU_VSM_ASSIST}]
    test rax, rax
    jz 2f
    or rax, {ASSIST_ENABLE}
    mov ecx, {HV_MSR_VP_ASSIST_PAGE}
    call vtlkit_guest_wrmsr64
2:  call vtlkit_guest_apic_enable
    mov rbx, gs:[{PCPU_VSM_ICPT}]           // a secure-intercept page: set up the SynIC
    test rbx, rbx
    jz 5f
    mov rax, [rbx + {ICPT_SIMP}]
    or rax, 1
    mov ecx, {HV_MSR_SIMP}
    call vtlkit_guest_wrmsr64
    mov rax, [rbx + {ICPT_VECTOR}]          // SINT0: the vector, unmasked
    mov ecx, {HV_MSR_SINT0}
    call vtlkit_guest_wrmsr64
    mov eax, 1
    mov ecx, {HV_MSR_SCONTROL}
    call vtlkit_guest_wrmsr64
5:  mov qword ptr gs:[{PCPU_VSM_INIT}], 1
4:  mov rsi, gs:[{PCPU_VSM_ASSIST}]
    test rsi, rsi
    jz 9f
    cmp dword ptr [rsi + {ASSIST_ENTRY_REASON}], {VSM_ENTRY_REASON_INTERRUPT}
    jne 9f
    // Entered because of an interrupt for this VTL: the lower VTL was stopped anywhere, so
    // every shared register is its live state. Keep its RAX/RCX in HV_VP_VTL_CONTROL for the
    // (normal) VtlReturn to restore, take what is pending (RFLAGS.IF is this VTL's own, clear
    // here), give back every other shared register and return. No block is used.
    mov dword ptr [rsi + {ASSIST_ENTRY_REASON}], 0
    lock inc qword ptr gs:[{PCPU_VSM_INT_ENTRIES}]
    mov rax, gs:[{PCPU_VSM_REGS} + 0]
    mov [rsi + {ASSIST_RET_RAX}], rax
    mov rax, gs:[{PCPU_VSM_REGS} + 8]
    mov [rsi + {ASSIST_RET_RCX}], rax
    mov ecx, 16
    sti
2:  nop                                     // interrupts are taken here
    dec ecx
    jnz 2b
    cli
    mov rax, gs:[{PCPU_SELF}]
    add rax, {PCPU_VSM_REGS}
    VSM_LOAD_REGS
    xor eax, eax                            // normal return: RAX/RCX come from the assist page
    mov ecx, {HV_CALL_VTL_RETURN}
    call vtlkit_guest_hcall_insn
    jmp vtlkit_guest_vsm_vtl1
9:  cmp qword ptr gs:[{PCPU_VSM_BENCH}], 0
    jne 8f
    mov rdi, gs:[{PCPU_VSM_ROUND}]
    imul rdi, rdi, {BLK_SIZE}
    add rdi, gs:[{PCPU_VSM_BLOCKS}]
    mov gs:[{PCPU_VSM_BLOCK_CUR}], rdi
    add rdi, {BLK_V1_SEEN}
    call vtlkit_guest_vsm_copy_regs
    mov rdi, gs:[{PCPU_VSM_BLOCK_CUR}]
    mov rax, cr3
    mov [rdi + {BLK_V1_CR3}], rax
    mov ecx, {MSR_GS_BASE}
    call vtlkit_guest_rdmsr64
    mov [rdi + {BLK_V1_GS_BASE}], rax
    mov rax, gs:[{PCPU_VSM_ROUND}]
    mov [rdi + {BLK_V1_ROUND}], rax
    mov rsi, gs:[{PCPU_VSM_ASSIST}]
    test rsi, rsi
    jz 5f
    mov eax, dword ptr [rsi + {ASSIST_ENTRY_REASON}]
    mov [rdi + {BLK_V1_ENTRY_REASON}], rax
    mov dword ptr [rsi + {ASSIST_ENTRY_REASON}], 0
5:  mov rcx, [rdi + {BLK_V1_HC_CONTROL}]
    test rcx, rcx
    jz 6f
    mov rdx, [rdi + {BLK_V1_HC_RDX}]
    mov r8, [rdi + {BLK_V1_HC_R8}]
    xor eax, eax
    call vtlkit_guest_hcall_insn
    mov rdi, gs:[{PCPU_VSM_BLOCK_CUR}]
    mov [rdi + {BLK_V1_HC_RESULT}], rax
6:  mov rsi, gs:[{PCPU_VSM_ASSIST}]
    test rsi, rsi
    jz 7f
    mov rax, [rdi + {BLK_V1_RET_RAX}]
    mov [rsi + {ASSIST_RET_RAX}], rax
    mov rax, [rdi + {BLK_V1_RET_RCX}]
    mov [rsi + {ASSIST_RET_RCX}], rax
7:  mov rax, [rdi + {BLK_V1_SET_CR8}]
    bt rax, 63
    jnc 2f
    and eax, 0xf
    mov cr8, rax
2:  inc qword ptr gs:[{PCPU_VSM_ROUND}]
    lea rax, [rdi + {BLK_V1_OUT}]
    VSM_LOAD_REGS
    call vtlkit_guest_hcall_insn            // VtlReturn; the next VtlCall resumes here
    jmp vtlkit_guest_vsm_vtl1
8:  mov eax, {VSM_RETURN_FAST}              // benchmark: fast VtlReturn, again and again
    mov ecx, {HV_CALL_VTL_RETURN}
    call vtlkit_guest_hcall_insn
    jmp 8b

// vtlkit_guest_vsm_intercept: VTL1's handler of its intercept SINT (called from the interrupt
// entry): record the message in slot 0 of the SIMP page (guest.rs `vsm::icpt`), then act:
// ALLOW issues ALLOW_CONTROL with input ALLOW_INPUT (HvCallModifyVtlProtectionMask lifting the
// protection), DENY writes VTL0's new RIP (message RIP + instruction length) into DENY_INPUT
// and issues DENY_CONTROL (HvCallSetVpRegisters); RAX after it goes to HC_STATUS. Then free the
// slot, write HV_X64_MSR_EOM, count. Preserves every register.
vtlkit_guest_vsm_intercept:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push r8
    mov rbx, gs:[{PCPU_VSM_ICPT}]
    mov rsi, [rbx + {ICPT_SIMP}]
    mov eax, dword ptr [rsi + {MSG_TYPE}]
    mov [rbx + {ICPT_MSG_TYPE}], rax
    movzx eax, byte ptr [rsi + {MSG_FLAGS}]
    mov [rbx + {ICPT_MSG_FLAGS}], rax
    mov eax, dword ptr [rsi + {MSG_VP_INDEX}]
    mov [rbx + {ICPT_VP_INDEX}], rax
    movzx eax, byte ptr [rsi + {MSG_INSN_LENGTH_CR8}]
    and eax, 0xf
    mov [rbx + {ICPT_INSN_LEN}], rax
    movzx eax, byte ptr [rsi + {MSG_ACCESS_TYPE}]
    mov [rbx + {ICPT_ACCESS}], rax
    movzx eax, word ptr [rsi + {MSG_EXEC_STATE}]
    mov [rbx + {ICPT_EXEC_STATE}], rax
    mov rax, [rsi + {MSG_RIP}]
    mov [rbx + {ICPT_RIP}], rax
    movzx eax, byte ptr [rsi + {MSG_INSN_BYTE_COUNT}]
    mov [rbx + {ICPT_INSN_COUNT}], rax
    mov rax, [rsi + {MSG_GPA}]
    mov [rbx + {ICPT_GPA}], rax
    mov rax, [rsi + {MSG_INSN_BYTES}]
    mov [rbx + {ICPT_INSN_BYTES}], rax
    movzx eax, byte ptr [rsi + {MSG_ACCESS_INFO}]
    mov [rbx + {ICPT_ACCESS_INFO}], rax
    mov rax, [rsi + {MSG_GVA}]
    mov [rbx + {ICPT_GVA}], rax
    mov rax, [rbx + {ICPT_ACTION}]
    cmp rax, {ICPT_ALLOW}
    jne 2f
    mov rcx, [rbx + {ICPT_ALLOW_CONTROL}]
    mov rdx, [rbx + {ICPT_ALLOW_INPUT}]
    jmp 3f
2:  cmp rax, {ICPT_DENY}
    jne 4f
    mov rdx, [rbx + {ICPT_DENY_INPUT}]
    mov rax, [rbx + {ICPT_RIP}]
    add rax, [rbx + {ICPT_INSN_LEN}]
    mov [rdx + {ICPT_DENY_VALUE}], rax
    mov qword ptr [rdx + {ICPT_DENY_VALUE} + 8], 0
    mov rcx, [rbx + {ICPT_DENY_CONTROL}]
3:  xor r8d, r8d
    xor eax, eax
    call vtlkit_guest_hcall_insn
    mov [rbx + {ICPT_HC_STATUS}], rax
4:  mov dword ptr [rsi + {MSG_TYPE}], 0     // free the slot
    mov ecx, {HV_MSR_EOM}
    xor eax, eax
    xor edx, edx
    wrmsr
    lock inc qword ptr [rbx + {ICPT_COUNT}]
    pop r8
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    ret

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
    rdtsc                                   // when it was taken, stored before the count moves
    shl rdx, 32
    or rax, rdx
    mov gs:[{PCPU_LAST_IRQ_TSC}], rax
    mov rax, [rsp + 24]                     // vector
    lock inc dword ptr gs:[{PCPU_IRQ_COUNTS} + rax * 4]
    lock inc qword ptr gs:[{PCPU_IRQ_TOTAL}]
    mov gs:[{PCPU_LAST_VECTOR}], rax
    mov rcx, [rsp + 40]                     // the interrupted RIP
    mov gs:[{PCPU_LAST_IRQ_RIP}], rcx
    mov rcx, gs:[{PCPU_VSM_ICPT}]           // VTL1's intercept SINT?
    test rcx, rcx
    jz 6f
    cmp rax, [rcx + {ICPT_VECTOR}]
    jne 6f
    call vtlkit_guest_vsm_intercept
6:  cmp rax, 0xff
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
    MEM_OP = const memops::OP,
    MEM_ADDR = const memops::ADDR,
    MEM_ARG = const memops::ARG,
    MEM_ROUNDS = const memops::ROUNDS,
    MEM_READ = const memops::READ,
    MEM_INC = const memops::INC,
    MEM_EXEC = const memops::EXEC,
    MEM_WRITE_LOOP = const memops::WRITE_LOOP,
    MEM_TOUCH = const memops::TOUCH,
    STAGE_MEM_DONE = const memops::STAGE_MEM_DONE,
    PCPU_APIC_ID_READ = const pcpu::APIC_ID_READ,
    PCPU_LDR_READ = const pcpu::LDR_READ,
    PCPU_IRQ_TOTAL = const pcpu::IRQ_TOTAL,
    PCPU_LAST_VECTOR = const pcpu::LAST_VECTOR,
    PCPU_IRQ_COUNTS = const pcpu::IRQ_COUNTS,
    PCPU_LAST_IRQ_RIP = const pcpu::LAST_IRQ_RIP,
    PCPU_LAST_IRQ_TSC = const pcpu::LAST_IRQ_TSC,
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
    HVPROG_VTL_CALL = const hvprog::VTL_CALL,
    HVPROG_ENABLE_VP_VTL = const hvprog::ENABLE_VP_VTL,
    HVPROG_VTL_CALL_LOOP = const hvprog::VTL_CALL_LOOP,
    HVPROG_HCALL_LOOP = const hvprog::HCALL_LOOP,
    HVPROG_VP_CTX_RIP = const hvprog::VP_CTX_RIP,
    HVPROG_VP_CTX_RSP = const hvprog::VP_CTX_RSP,
    HVPROG_VP_CTX_GS_BASE = const hvprog::VP_CTX_GS_BASE,
    HVPROG_VP_CTX_CR3 = const hvprog::VP_CTX_CR3,
    HVPROG_VP_CTX_TR_BASE = const hvprog::VP_CTX_TR_BASE,
    HVPROG_LOOP_COUNT = const hvprog::LOOP_COUNT,
    PCPU_VSM_BLOCKS = const pcpu::VSM_BLOCKS,
    PCPU_VSM_ROUND = const pcpu::VSM_ROUND,
    PCPU_VSM_ASSIST = const pcpu::VSM_ASSIST,
    PCPU_VSM_INIT = const pcpu::VSM_INIT,
    PCPU_VSM_BENCH = const pcpu::VSM_BENCH,
    PCPU_VSM_BLOCK_CUR = const pcpu::VSM_BLOCK_CUR,
    PCPU_VSM_LOOP_LEFT = const pcpu::VSM_LOOP_LEFT,
    PCPU_VSM_REGS = const pcpu::VSM_REGS,
    PCPU_VSM_INT_ENTRIES = const pcpu::VSM_INT_ENTRIES,
    PCPU_SELF = const pcpu::SELF,
    HVPROG_SPIN_UNTIL = const hvprog::SPIN_UNTIL,
    HVPROG_A2 = const hvprog::A2,
    HVPROG_ADD_MEM = const hvprog::ADD_MEM,
    HVPROG_LOAD_MEM = const hvprog::LOAD_MEM,
    PCPU_VSM_ICPT = const pcpu::VSM_ICPT,
    ICPT_VECTOR = const vsm::icpt::VECTOR,
    ICPT_SIMP = const vsm::icpt::SIMP,
    ICPT_ACTION = const vsm::icpt::ACTION,
    ICPT_ALLOW_CONTROL = const vsm::icpt::ALLOW_CONTROL,
    ICPT_ALLOW_INPUT = const vsm::icpt::ALLOW_INPUT,
    ICPT_DENY_CONTROL = const vsm::icpt::DENY_CONTROL,
    ICPT_DENY_INPUT = const vsm::icpt::DENY_INPUT,
    ICPT_DENY_VALUE = const vsm::icpt::DENY_VALUE,
    ICPT_COUNT = const vsm::icpt::COUNT,
    ICPT_MSG_TYPE = const vsm::icpt::MSG_TYPE,
    ICPT_MSG_FLAGS = const vsm::icpt::MSG_FLAGS,
    ICPT_VP_INDEX = const vsm::icpt::VP_INDEX,
    ICPT_INSN_LEN = const vsm::icpt::INSN_LEN,
    ICPT_ACCESS = const vsm::icpt::ACCESS,
    ICPT_EXEC_STATE = const vsm::icpt::EXEC_STATE,
    ICPT_RIP = const vsm::icpt::RIP,
    ICPT_INSN_COUNT = const vsm::icpt::INSN_COUNT,
    ICPT_GPA = const vsm::icpt::GPA,
    ICPT_INSN_BYTES = const vsm::icpt::INSN_BYTES,
    ICPT_HC_STATUS = const vsm::icpt::HC_STATUS,
    ICPT_ACCESS_INFO = const vsm::icpt::ACCESS_INFO,
    ICPT_GVA = const vsm::icpt::GVA,
    MSG_ACCESS_INFO = const im::PAYLOAD + im::ACCESS_INFO,
    MSG_GVA = const im::PAYLOAD + im::GVA,
    ICPT_ALLOW = const vsm::icpt::ALLOW,
    ICPT_DENY = const vsm::icpt::DENY,
    MSG_TYPE = const im::TYPE,
    MSG_FLAGS = const im::FLAGS,
    MSG_VP_INDEX = const im::PAYLOAD + im::VP_INDEX,
    MSG_INSN_LENGTH_CR8 = const im::PAYLOAD + im::INSN_LENGTH_CR8,
    MSG_ACCESS_TYPE = const im::PAYLOAD + im::ACCESS_TYPE,
    MSG_EXEC_STATE = const im::PAYLOAD + im::EXEC_STATE,
    MSG_RIP = const im::PAYLOAD + im::RIP,
    MSG_INSN_BYTE_COUNT = const im::PAYLOAD + im::INSN_BYTE_COUNT,
    MSG_GPA = const im::PAYLOAD + im::GPA,
    MSG_INSN_BYTES = const im::PAYLOAD + im::INSN_BYTES,
    HV_MSR_SIMP = const vtlkit_uapi::vtl::intercept::synic::SIMP,
    HV_MSR_SINT0 = const vtlkit_uapi::vtl::intercept::synic::SINT0,
    HV_MSR_SCONTROL = const vtlkit_uapi::vtl::intercept::synic::SCONTROL,
    HV_MSR_EOM = const vtlkit_uapi::vtl::intercept::synic::EOM,
    BLK_V1_SET_CR8 = const vsm::block::V1_SET_CR8,
    VSM_ENTRY_REASON_INTERRUPT = const vsm::ENTRY_REASON_INTERRUPT,
    VSM_REGS_XMM6 = const vsm::regs::XMM6,
    VSM_REGS_QWORDS = const vsm::regs::QWORDS,
    BLK_IN = const vsm::block::IN,
    BLK_V1_SEEN = const vsm::block::V1_SEEN,
    BLK_V1_CR3 = const vsm::block::V1_CR3,
    BLK_V1_GS_BASE = const vsm::block::V1_GS_BASE,
    BLK_V1_ENTRY_REASON = const vsm::block::V1_ENTRY_REASON,
    BLK_V1_ROUND = const vsm::block::V1_ROUND,
    BLK_V1_HC_CONTROL = const vsm::block::V1_HC_CONTROL,
    BLK_V1_HC_RDX = const vsm::block::V1_HC_RDX,
    BLK_V1_HC_R8 = const vsm::block::V1_HC_R8,
    BLK_V1_HC_RESULT = const vsm::block::V1_HC_RESULT,
    BLK_V1_RET_RAX = const vsm::block::V1_RET_RAX,
    BLK_V1_RET_RCX = const vsm::block::V1_RET_RCX,
    BLK_V1_OUT = const vsm::block::V1_OUT,
    BLK_V0_SEEN = const vsm::block::V0_SEEN,
    BLK_V0_RSP_BEFORE = const vsm::block::V0_RSP_BEFORE,
    BLK_V0_CR3 = const vsm::block::V0_CR3,
    BLK_V0_GS_BASE = const vsm::block::V0_GS_BASE,
    BLK_SIZE = const vsm::block::SIZE,
    VSM_ENABLE_SIZE = const vsm::enable::SIZE,
    EN_PARTITION_ID = const vsm::enable::PARTITION_ID,
    EN_VP_INDEX = const vsm::enable::VP_INDEX,
    EN_TARGET_VTL = const vsm::enable::TARGET_VTL,
    EN_CONTEXT = const vsm::enable::CONTEXT,
    CTX_RIP = const vsm::ctx::RIP,
    CTX_RSP = const vsm::ctx::RSP,
    CTX_RFLAGS = const vsm::ctx::RFLAGS,
    CTX_SEGS = const vsm::ctx::SEGS,
    CTX_SEG_SIZE = const vsm::ctx::SEG_SIZE,
    CTX_IDTR = const vsm::ctx::IDTR,
    CTX_GDTR = const vsm::ctx::GDTR,
    CTX_EFER = const vsm::ctx::EFER,
    CTX_CR0 = const vsm::ctx::CR0,
    CTX_CR3 = const vsm::ctx::CR3,
    CTX_CR4 = const vsm::ctx::CR4,
    CTX_PAT = const vsm::ctx::PAT,
    ASSIST_ENTRY_REASON = const vsm::assist::ENTRY_REASON,
    ASSIST_RET_RAX = const vsm::assist::RET_RAX,
    ASSIST_RET_RCX = const vsm::assist::RET_RCX,
    ASSIST_ENABLE = const vsm::assist::ENABLE,
    VSM_RETURN_FAST = const vsm::RETURN_FAST,
    VSM_INITIAL_RFLAGS = const vsm::INITIAL_RFLAGS,
    VSM_TSS_BUSY = const vsm::TSS_BUSY,
    MSR_EFER = const x86msr::EFER,
    MSR_FS_BASE = const x86msr::FS_BASE,
    MSR_GS_BASE = const x86msr::GS_BASE,
    MSR_PAT = const x86msr::PAT,
    HV_MSR_VP_ASSIST_PAGE = const crate::hyperv::msr::VP_ASSIST_PAGE,
    HV_CALL_ENABLE_VP_VTL = const crate::hyperv::call::ENABLE_VP_VTL,
    HV_CALL_VTL_CALL = const crate::hyperv::call::VTL_CALL,
    HV_CALL_VTL_RETURN = const crate::hyperv::call::VTL_RETURN,
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
    static vtlkit_guest_vsm_vtl1: u8;
    static vtlkit_guest_hcall_vmmcall: u8;
    static vtlkit_guest_hcall_vmmcall_after: u8;
    static vtlkit_guest_hcall_vmcall: u8;
    static vtlkit_guest_hcall_vmcall_after: u8;
    static vtlkit_guest_mem_ops: u8;
    static vtlkit_guest_mem_read_insn: u8;
    static vtlkit_guest_mem_inc_insn: u8;
    static vtlkit_guest_mem_store_insn: u8;
    static vtlkit_guest_hv_add_insn: u8;
    static vtlkit_guest_hv_load_insn: u8;
}

/// The message offsets the VTL1 intercept handler reads.
use vtlkit_uapi::vtl::intercept::msg as im;

/// Offset of the instruction of [`hvprog::ADD_MEM`] (`add [rdx], rax`, 3 bytes) in the code
/// blob: where a protection fault of that step leaves VTL0's RIP.
pub fn hv_add_insn_offset() -> u64 {
    offset_of_symbol(&raw const vtlkit_guest_hv_add_insn)
}

/// Offset of the instruction of [`hvprog::LOAD_MEM`] (`mov rax, [rdx]`, 3 bytes).
pub fn hv_load_insn_offset() -> u64 {
    offset_of_symbol(&raw const vtlkit_guest_hv_load_insn)
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
    /// The VTL1 side of VSM ([`vsm`]): where HvCallEnableVpVtl starts VTL1 and where it
    /// comes back to after each VtlReturn. Never a vCPU's first RIP (VTL1 vCPUs get theirs
    /// from the initial context VTL0 hands over).
    VsmVtl1,
    /// The memory-access rounds of [`memops`] (VTL protection tests).
    MemOps,
}

/// Offsets of the one hypercall instruction the VSM code uses
/// (`vtlkit_guest_hcall_insn`): (the instruction, the one after it), for `vmmcall` (AMD) or
/// `vmcall` (Intel). A faulting VtlCall reports the first; a VTL resumed after its VtlCall
/// or VtlReturn continues at the second.
pub fn hcall_insn_offsets(intel: bool) -> (u64, u64) {
    if intel {
        (
            offset_of_symbol(&raw const vtlkit_guest_hcall_vmcall),
            offset_of_symbol(&raw const vtlkit_guest_hcall_vmcall_after),
        )
    } else {
        (
            offset_of_symbol(&raw const vtlkit_guest_hcall_vmmcall),
            offset_of_symbol(&raw const vtlkit_guest_hcall_vmmcall_after),
        )
    }
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
        Entry::VsmVtl1 => &raw const vtlkit_guest_vsm_vtl1,
        Entry::MemOps => &raw const vtlkit_guest_mem_ops,
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

/// Offsets from the start of the code blob of [`Entry::MemOps`]' accessing instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemOpsInsns {
    /// [`memops::READ`]'s load.
    pub read: u64,
    /// [`memops::INC`]'s read-modify-write.
    pub inc: u64,
    /// [`memops::WRITE_LOOP`]'s store.
    pub store: u64,
}

/// Where [`Entry::MemOps`] makes its accesses: a protection fault leaves RIP there.
pub fn memops_insn_offsets() -> MemOpsInsns {
    MemOpsInsns {
        read: offset_of_symbol(&raw const vtlkit_guest_mem_read_insn),
        inc: offset_of_symbol(&raw const vtlkit_guest_mem_inc_insn),
        store: offset_of_symbol(&raw const vtlkit_guest_mem_store_insn),
    }
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
        const { assert!(pcpu::SIZE <= pcpu::VSM_REGS) };
        const { assert!(pcpu::VSM_REGS + vsm::regs::SIZE <= pcpu::TSS) };
        const { assert!(pcpu::VSM_REGS + vsm::regs::SIZE <= pcpu::LAST_IRQ_TSC) };
        const { assert!(pcpu::LAST_IRQ_TSC + 8 <= pcpu::TSS) };
        const { assert!(vsm::block::V0_GS_BASE + 8 <= vsm::block::SIZE) };
        const { assert!(vsm::block::V1_SEEN == vsm::block::IN + vsm::regs::SIZE) };
        const { assert!(vsm::block::V0_SEEN + vsm::regs::SIZE <= vsm::block::V0_RSP_BEFORE) };
        const { assert!(vsm::block::V1_OUT + vsm::regs::SIZE <= vsm::block::V0_SEEN) };
        const { assert!(hvprog::VP_CTX_TR_BASE + 8 <= hvprog::ENTRY_SIZE) };
        assert!(entry_offset(Entry::VsmVtl1) < c.len() as u64);
        const { assert!(pcpu::TSS + pcpu::TSS_SIZE + 0x400 <= pcpu::IST_STACK_TOP) };
        const { assert!(pcpu::IST_STACK_TOP <= 4096) };
    }
}
