#!/bin/sh
# Run in the test guest (VTLKIT_GUEST_SCRIPT=record-vcpu-stats scripts/boot.sh): start a
# vtlctl demo VM and print the raw KVM stats file of one of its vCPUs as hex (`xxd -p` style,
# what uapi/tests/fixtures/vcpu-stats-*.hex hold) between markers, then what `vtlctl show`
# makes of the VM.
set -e
vcpu=${1:-1}
ready=${TMPDIR:-/tmp}/vtlkit-record-stats.ready
rm -f "$ready"
vtlctl demo --vps 1 --vtls 2 --ready-file "$ready" >/dev/null &
demo=$!
i=0
while [ ! -s "$ready" ]; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "demo did not come up"; exit 1; }
	sleep 0.1
done
vm=$(cat "$ready")
echo "vtlkit-fixture-begin"
vtlctl dump-vcpu-stats "$vm" "$vcpu"
echo "vtlkit-fixture-end"
vtlctl show "$vm" --stat exits
kill "$demo"
