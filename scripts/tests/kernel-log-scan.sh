#!/usr/bin/env bash
# Host-side test of scripts/boot.sh's kernel-report scan, without QEMU or a kernel: a stand-in
# qemu-system-x86_64 replays a recorded guest run (console on stdout and the serial log, dmesg
# and exit status on the ttyS1 file) and boot.sh's verdict is checked. A kernel report in the
# guest's dmesg, or on the console only, fails the run; what the tests print (a diagnostic
# saying "WARNING:", "BUG:", ...) and the kernel's echo of its command line do not.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/build"
: >"$tmp/bzImage"
: >"$tmp/initramfs.cpio"

# The stand-in QEMU: plays $tmp/console (to stdout and the serial log, CRLF like a serial
# line) and writes $tmp/dmesg and $tmp/status to the ttyS1 file as guest-init.sh does.
cat >"$tmp/bin/qemu-system-x86_64" <<'EOF'
#!/usr/bin/env bash
set -eu
[ "${1:-}" = --version ] && { echo "QEMU emulator version 7.2.22 (stand-in)"; exit 0; }
serial="" results="" append=""
while [ $# -gt 0 ]; do
	case "$1" in
	-chardev) serial=${2##*logfile=} ;;
	-serial) case "$2" in file:*) results=${2#file:} ;; esac ;;
	-append) append=$2 ;;
	esac
	shift
done
echo "$append" >"$FAKE_DIR/append"
sed 's/$/\r/' "$FAKE_DIR/console" | tee "$serial"
{
	echo vtlkit-dmesg-begin
	cat "$FAKE_DIR/dmesg"
	echo vtlkit-dmesg-end
	echo "vtlkit-exit-status: $(cat "$FAKE_DIR/status")"
} | sed 's/$/\r/' >"$results"
EOF
chmod +x "$tmp/bin/qemu-system-x86_64"

# A recorded passing run (TCG, patched kernel), shortened. The tests' own output says
# WARNING:, BUG:, Call Trace: and more: none of it is the kernel's.
base_console() {
	cat <<'EOF'
[    0.675158] kvm_intel: VMX not supported by CPU 0
vtlkit-guest: 6.12.117-vtlkit on 2 CPUs: running selftests
TAP version 13
1..3
# [1/3] harness_ok: harness self-test: passes at once, after printing report-like words
# harness_ok: test output that says WARNING: or BUG: or Call Trace: is not a kernel report
ok 1 - harness_ok # time=9ms
# [2/3] dev_kvm_works: /dev/kvm opens, reports API 12, and creates a VM with an in-kernel irqchip
# guest vCPU 1: BUG: stray vector 0x41 (a test's message, not the kernel's) [0x41, 0x0, 0x0, 0x0]
WARNING: this line, KASAN: UBSAN: Kernel panic Oops general protection fault, comes from a test
#   INFO: possible something, INFO: task x blocked, circular locking: test words as well
ok 2 - dev_kvm_works # time=53ms
# [3/3] nested_long_mode_guest: 2 nested vCPUs run in 64-bit long mode
ok 3 - nested_long_mode_guest # time=107ms
# Totals: pass:3 fail:0 xfail:0 xpass:0 skip:0 error:0
3 passed, 0 failed, 0 skipped
EOF
}
base_dmesg() {
	cat <<'EOF'
[    0.000000] Linux version 6.12.117-vtlkit (root@vm) (gcc (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #2 SMP Sun Nov 29 17:49:34 UTC 2026
[    0.000000] Command line: console=ttyS0 quiet printk.time=1 panic=-1 oops=panic vtlkit.tests=harness_ok,dev_kvm_works,nested_long_mode_guest
[    0.000000] Kernel command line: console=ttyS0 quiet printk.time=1 panic=-1 oops=panic vtlkit.tests=harness_ok,dev_kvm_works,nested_long_mode_guest
[    0.675158] kvm_intel: VMX not supported by CPU 0
[    0.677063] kvm_amd: Nested Virtualization enabled
[    6.418883] kvm: user requested TSC rate below hardware speed
EOF
}
# A real-looking splat: the lines a WARN_ON() in KVM prints.
splat() {
	cat <<'EOF'
[    5.123456] ------------[ cut here ]------------
[    5.123501] WARNING: CPU: 1 PID: 93 at arch/x86/kvm/lapic.c:1234 kvm_apic_set_irq+0x1c/0x30
[    5.124100] Call Trace:
[    5.124133]  <TASK>
[    5.124210]  kvm_irq_delivery_to_apic+0x2a/0x40
[    5.124301]  </TASK>
[    5.124350] ---[ end trace 0000000000000000 ]---
EOF
}

fail=0
# check NAME WANT_RC REGEX...: run boot.sh on the prepared $tmp/{console,dmesg,status}.
check() {
	local name=$1 want=$2 out rc=0
	shift 2
	out=$(PATH="$tmp/bin:$PATH" FAKE_DIR=$tmp VTLKIT_BUILD_DIR=$tmp/build VTLKIT_ACCEL=tcg \
		VTLKIT_KERNEL=$tmp/bzImage VTLKIT_INITRD=$tmp/initramfs.cpio VTLKIT_TIMEOUT=60 \
		"$VTLKIT_ROOT/scripts/boot.sh" 2>&1) || rc=$?
	verdict "$name" "$want" "$rc" "$out" "$@"
}
reset() {
	base_console >"$tmp/console"
	base_dmesg >"$tmp/dmesg"
	echo 0 >"$tmp/status"
}

reset
check "the tests' own WARNING:/BUG: text passes" 0 "kernel log clean" "guest finished .*exit status 0"
grep -qw 'printk.time=1' "$tmp/append" ||
	{ echo "not ok - boot.sh does not ask for printk timestamps (printk.time=1)" && fail=1; }

reset
sed -i 's/vtlkit.tests=[^ ]*/vtlkit.cmd=echo,WARNING:,BUG:,from,the,command,line/' "$tmp/dmesg"
check "the kernel's echo of a command line with report words passes" 0 "kernel log clean"

reset
splat >>"$tmp/dmesg"
check "a kernel WARNING in dmesg fails a passing run" 1 \
	"^    \[    5\.123501\] WARNING: CPU: 1 PID: 93 at arch/x86/kvm/lapic\.c" \
	"error: the kernel log has BUG/WARNING/KASAN/UBSAN/lockdep reports"

reset
{
	head -n 8 "$tmp/console"
	echo "[    5.200000] BUG: kernel NULL pointer dereference, address: 0000000000000008"
	tail -n +9 "$tmp/console"
} >"$tmp/console.new"
mv "$tmp/console.new" "$tmp/console"
check "a kernel BUG on the console only (not in dmesg) fails" 1 \
	"^    \[    5\.200000\] BUG: kernel NULL pointer dereference" \
	"error: the kernel log has BUG/WARNING"

reset
# A kernel line that follows a test's line before its newline.
sed -i 's/^ok 2 - dev_kvm_works # time=53ms$/ok 2 - dev_kvm_wo[    5.300000] UBSAN: shift-out-of-bounds in arch\/x86\/kvm\/lapic.c:200:3/' "$tmp/console"
check "a kernel line glued to a test's unfinished line fails" 1 \
	"^    \[    5\.300000\] UBSAN: shift-out-of-bounds" "error: the kernel log has"

reset
cat >>"$tmp/dmesg" <<'EOF'
[   12.335272] max_guest_memor invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
[   12.336054] CPU: 0 UID: 0 PID: 743 Comm: max_guest_memor Not tainted 6.12.117-vtlkit #6
[   12.336223] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[   12.336355] Call Trace:
[   12.336811]  <TASK>
[   12.336947]  dump_stack_lvl+0x5b/0x70
[   12.337435]  oom_kill_process+0x2ba/0x480
[   12.340000] Out of memory: Killed process 743 (max_guest_memor) total-vm:2100000kB
EOF
check "the OOM killer's stack dump is not a report" 0 "kernel log clean"

reset
cat >>"$tmp/dmesg" <<'EOF'
[   12.335272] max_guest_memor invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
[   12.340000] Out of memory: Killed process 743 (max_guest_memor) total-vm:2100000kB
[   13.000000] kvm: some later message
[   13.100000] other line
[   13.200000] Call Trace:
EOF
check "a stack dump after an OOM kill's report still fails" 1 "error: the kernel log has"

reset
echo 1 >"$tmp/status"
check "a test failure with a clean kernel log keeps the guest's status" 1 \
	"kernel log clean" "exit status 1 \(test failures\)"

# Every kind of report the scan knows, one at a time, in dmesg.
while IFS= read -r line; do
	reset
	echo "[    5.400000] $line" >>"$tmp/dmesg"
	check "report kind fails: ${line:0:60}" 1 "error: the kernel log has"
done <<'EOF'
BUG: KASAN: slab-use-after-free in kvm_irq_delivery_to_apic+0x2a/0x40
BUG: unable to handle page fault for address: ffffc90000a3f000
UBSAN: array-index-out-of-bounds in arch/x86/kvm/lapic.c:321:9
WARNING: possible circular locking dependency detected
INFO: possible recursive locking detected
INFO: inconsistent lock state
INFO: task vtlkit-selftest:93 blocked for more than 120 seconds.
Kernel panic - not syncing: Fatal exception
Oops: general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI
general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1]
Call Trace:
EOF
exit "$fail"
