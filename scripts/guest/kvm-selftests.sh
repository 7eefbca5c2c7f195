#!/bin/sh
# Run in the test guest (packed by scripts/regress.sh, booted with
# VTLKIT_GUEST_SCRIPT=kvm-selftests): run the kernel's own KVM selftests from /kvm-selftests,
# in the order of /kvm-selftests/list (lines "NAME [ARGS...]"), each under busybox `timeout`,
# and print one machine-readable line per test, on the console and on the results channel
# (ttyS1, which carries no kernel messages and no test output, so the host parses it there):
#   vtlkit-kst: NAME RC SECONDS
# RC is the test's exit status: 0 pass, 4 skip (KSFT_SKIP), 143 (SIGTERM from `timeout`), 137
# (SIGKILL 10 s later) or 124 a timeout, anything else a failure. The test's own output goes
# to the console before its line, so the serial log holds the details. Always exits 0: the
# host judges the results.
dir=/kvm-selftests
per_test=120
# shellcheck disable=SC1091 # written by scripts/regress.sh at pack time
[ -f "$dir/settings" ] && . "$dir/settings"
cd /tmp || exit 1
# The kernel switches from tsc-early to tsc about 1.5 s after boot (under TCG); tests such as
# hyperv_clock skip on tsc-early, so wait for the switch (bounded) to get the same verdicts
# on every boot.
cs=/sys/devices/system/clocksource/clocksource0/current_clocksource
w=0
while [ "$(cat "$cs" 2>/dev/null)" = tsc-early ] && [ $w -lt 100 ]; do
	sleep 0.1
	w=$((w + 1))
done
echo "clocksource: $(cat "$cs" 2>/dev/null)"
n=$(wc -l <"$dir/list")
echo "vtlkit-kst-begin: $n tests, timeout ${per_test}s each"
i=0
while read -r t args; do
	[ -n "$t" ] || continue
	i=$((i + 1))
	echo "# [$i/$n] $t $args"
	start=$(date +%s)
	# shellcheck disable=SC2086 # ARGS are words
	timeout -k 10 "$per_test" "$dir/$t" $args </dev/null 2>&1
	rc=$?
	line="vtlkit-kst: $t $rc $(($(date +%s) - start))"
	# A leading newline: the test's last output line may lack one.
	printf '\n%s\n' "$line"
	echo "$line" >/dev/ttyS1
done <"$dir/list"
echo "vtlkit-kst-end" | tee /dev/ttyS1
exit 0
