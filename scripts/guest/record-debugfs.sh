#!/bin/sh
# Run in the test guest (VTLKIT_GUEST_SCRIPT=record-debugfs scripts/boot.sh): start a vtlctl
# demo VM and print KVM's debugfs tree in the fixture format tool/tests read
# ("<path relative to /sys/kernel/debug/kvm>: <first line of the file>"), between markers.
set -e
vps=${1:-2}
vtls=${2:-2}
vtlctl demo --vps "$vps" --vtls "$vtls" --ready-file /tmp/ready >/dev/null &
demo=$!
i=0
while [ ! -s /tmp/ready ]; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "demo did not come up"; exit 1; }
	sleep 0.1
done
vm=$(cat /tmp/ready)
echo "vtlkit-fixture-begin"
cd /sys/kernel/debug/kvm
find "$vm" -type f | LC_ALL=C sort | while read -r f; do
	printf '%s: %s\n' "$f" "$(head -n 1 "$f" 2>/dev/null || true)"
done
echo "vtlkit-fixture-end"
kill "$demo"
