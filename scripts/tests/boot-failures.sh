#!/usr/bin/env bash
# Host-side test of scripts/boot.sh's verdicts, on the built kernel and initramfs: a guest
# command that fails must fail the run with its status, a kernel WARNING in the guest's log
# must fail the run even when the command succeeded, and a clean success must pass.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

fail=0
expect() { # name, want_rc, message regex ('' = none), guest command
	local name=$1 want=$2 re=$3 cmd=$4 out rc=0
	out=$(VTLKIT_GUEST_CMD=$cmd VTLKIT_TIMEOUT=120 "$VTLKIT_ROOT/scripts/boot.sh" 2>&1) || rc=$?
	if [ "$rc" != "$want" ]; then
		echo "not ok - $name: boot.sh exited $rc, expected $want"
		sed 's/^/    /' <<<"$out" | tail -n 15
		fail=1
	elif [ -n "$re" ] && ! grep -qE "$re" <<<"$out"; then
		echo "not ok - $name: output lacks /$re/"
		sed 's/^/    /' <<<"$out" | tail -n 15
		fail=1
	else
		echo "ok - $name (exit $rc)"
	fi
}

expect "guest command exit status is returned" 3 "exit status 3" "exit 3"
expect "kernel WARNING fails a passing run" 1 "BUG/WARNING/KASAN" \
	"echo WARNING: vtlkit injected splat >/dev/kmsg"
expect "clean run passes" 0 "kernel log clean" "true"
exit "$fail"
