#!/bin/busybox sh
# shellcheck shell=dash
# /init of the vtlkit test initramfs (packed by scripts/pack-initramfs.sh).
# Kernel command line:
#   vtlkit.tests=a,b*   run only these selftests (default: all)
#   vtlkit.cmd=...      run this shell command instead of the selftests (',' for spaces)
#   vtlkit.script=NAME  run /scripts/NAME.sh (from scripts/guest/) instead of the selftests
#   vtlkit.trial        only prove that the guest boots (accelerator trial)
#   vtlkit.test_timeout=SECONDS, vtlkit.fuzz_seconds=, vtlkit.fuzz_seed=: read by
#                       vtlkit-selftests itself from /proc/cmdline
# The exit status and the kernel log go to ttyS1, which the host reads from a file.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp

tests="" cmd="" script="" trial=0
for w in $(cat /proc/cmdline); do
	case "$w" in
	vtlkit.tests=*) tests=$(echo "${w#vtlkit.tests=}" | tr ',' ' ') ;;
	vtlkit.cmd=*) cmd=$(echo "${w#vtlkit.cmd=}" | tr ',' ' ') ;;
	vtlkit.script=*) script=${w#vtlkit.script=} ;;
	vtlkit.trial) trial=1 ;;
	esac
done

if [ "$trial" = 1 ]; then
	rc=0
elif [ -n "$script" ]; then
	echo "vtlkit-guest: $(uname -r): running /scripts/$script.sh"
	sh "/scripts/$script.sh"
	rc=$?
elif [ -n "$cmd" ]; then
	echo "vtlkit-guest: $(uname -r): running: $cmd"
	sh -c "$cmd"
	rc=$?
else
	echo "vtlkit-guest: $(uname -r) on $(grep -c ^processor /proc/cpuinfo) CPUs: running selftests"
	# shellcheck disable=SC2086 # word splitting of the test list is intended
	/bin/vtlkit-selftests $tests
	rc=$?
fi
{
	echo "vtlkit-dmesg-begin"
	dmesg
	echo "vtlkit-dmesg-end"
	echo "vtlkit-exit-status: $rc"
} >/dev/ttyS1
sync
reboot -f
