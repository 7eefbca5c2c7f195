#!/bin/sh
# Run in the test guest (VTLKIT_GUEST_SCRIPT=record-debugfs scripts/boot.sh): start a vtlctl
# demo VM and print KVM's debugfs tree in the fixture format tool/tests read
# ("<path relative to /sys/kernel/debug/kvm>: <first line of the file>") between markers; its
# last line, "proc/<pid>/comm: <comm>", is the VM process's command name (`vtlctl --debugfs
# DIR` takes COMM from DIR/proc/<pid>/comm, never from the reading host's /proc).
# VTLKIT_KVM_DEBUGFS and VTLKIT_PROC move /sys/kernel/debug/kvm and /proc (for the host-side
# test, scripts/tests/record-debugfs.sh).
set -e
vps=${1:-2}
vtls=${2:-2}
kvm=${VTLKIT_KVM_DEBUGFS:-/sys/kernel/debug/kvm}
proc=${VTLKIT_PROC:-/proc}
ready=${TMPDIR:-/tmp}/vtlkit-record.ready
rm -f "$ready"
vtlctl demo --vps "$vps" --vtls "$vtls" --ready-file "$ready" >/dev/null &
demo=$!
i=0
while [ ! -s "$ready" ]; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "demo did not come up"; exit 1; }
	sleep 0.1
done
vm=$(cat "$ready")
echo "vtlkit-fixture-begin"
cd "$kvm"
find "$vm" -type f | LC_ALL=C sort | while read -r f; do
	printf '%s: %s\n' "$f" "$(head -n 1 "$f" 2>/dev/null || true)"
done
pid=${vm%%-*}
printf 'proc/%s/comm: %s\n' "$pid" "$(cat "$proc/$pid/comm" 2>/dev/null || true)"
echo "vtlkit-fixture-end"
kill "$demo"
