#!/usr/bin/env bash
# Host-side test of scripts/boot.sh's verdicts, on the built kernel and initramfs: a guest
# command that fails must fail the run with its status; a kernel WARNING in the guest's log, or
# a kernel BUG seen only on the console, must fail the run even when the command succeeded;
# report-like words in a selftest's own output must not; a selftest that hangs is cut off at
# its time limit and the tests after it still run; a clean success must pass.
# (scripts/tests/kernel-log-scan.sh checks the scan on recorded runs without QEMU.)
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

fail=0
# expect NAME WANT_RC GUEST_CMD REGEX...: boot with VTLKIT_GUEST_CMD=GUEST_CMD (and the
# caller's VTLKIT_KARGS); every REGEX must match boot.sh's output. The report words in the
# injected messages are split with '' so that the kernel command line (which dmesg echoes)
# does not carry them.
expect() {
	local name=$1 want=$2 cmd=$3 out rc=0
	shift 3
	out=$(VTLKIT_GUEST_CMD=$cmd VTLKIT_TIMEOUT=120 "$VTLKIT_ROOT/scripts/boot.sh" 2>&1) || rc=$?
	verdict "$name" "$want" "$rc" "$out" "$@"
}

expect "guest command exit status is returned" 3 "exit 3" "exit status 3"
expect "kernel WARNING in dmesg fails a passing run" 1 \
	"echo WARN''ING: vtlkit injected splat >/dev/kmsg" \
	"^    \[ *[0-9.]+\] WARNING: vtlkit injected splat" "BUG/WARNING/KASAN"
# Level 2 reaches the console despite `quiet`; dmesg -c keeps it out of the collected dmesg.
expect "kernel BUG on the console only fails a passing run" 1 \
	"echo '<2>BU''G: vtlkit console splat' >/dev/kmsg; dmesg -c >/dev/null" \
	"^    \[ *[0-9.]+\] BUG: vtlkit console splat" "BUG/WARNING/KASAN"
expect "a selftest's own WARNING:/BUG: output passes" 0 "vtlkit-selftests harness_ok" \
	"^# harness_ok: .*WARNING: or BUG:" "^ok 1 - harness_ok" "kernel log clean"
VTLKIT_KARGS="${VTLKIT_KARGS:-} vtlkit.test_timeout=3" \
	expect "a hung selftest is cut off at its time limit, the next one runs" 1 \
	"vtlkit-selftests harness_hang harness_ok" \
	"^#   time limit of 3s exceeded" "^not ok 1 - harness_hang" "^ok 2 - harness_ok" \
	"^1 passed, 1 failed, 0 skipped" "kernel log clean"
expect "clean run passes" 0 "true" "kernel log clean"
exit "$fail"
