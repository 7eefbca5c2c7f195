#!/usr/bin/env bash
# Host-side test of scripts/guest/record-debugfs.sh: with a stand-in `vtlctl demo` and a fake
# debugfs and /proc, the recording must list the VM's files and its process's comm, and
# `vtlctl --debugfs` must read that recording back with COMM from it (not from this host).
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
vm=4242-7

# The fake host: one VM of 2 vCPUs in 2 groups, its VMM called "fake-vmm".
mkdir -p "$tmp/kvm/$vm/vcpu0" "$tmp/kvm/$vm/vcpu1" "$tmp/proc/4242" "$tmp/bin"
echo 0 >"$tmp/kvm/$vm/apic_group_irq_dropped"
for i in 0 1; do
	printf '%s\n' "$i" >"$tmp/kvm/$vm/vcpu$i/apic_group"
	printf '0\n' >"$tmp/kvm/$vm/vcpu$i/apic_id"
	printf '%s\n' "$i" >"$tmp/kvm/$vm/vcpu$i/vtl"
	printf '0\n' >"$tmp/kvm/$vm/vcpu$i/hv_vp_index"
done
echo fake-vmm >"$tmp/proc/4242/comm"
cat >"$tmp/bin/vtlctl" <<STUB
#!/bin/sh
# stand-in for \`vtlctl demo ... --ready-file F\`: announce the fake VM and stay up
while [ \$# -gt 0 ]; do [ "\$1" = --ready-file ] && echo $vm >"\$2"; shift; done
exec sleep 30
STUB
chmod +x "$tmp/bin/vtlctl"

out=$(PATH=$tmp/bin:$PATH TMPDIR=$tmp VTLKIT_KVM_DEBUGFS=$tmp/kvm VTLKIT_PROC=$tmp/proc \
	sh "$VTLKIT_ROOT/scripts/guest/record-debugfs.sh" 2 2) || {
	echo "not ok - record-debugfs.sh failed: $out"
	exit 1
}
rec=$(sed -n '/^vtlkit-fixture-begin$/,/^vtlkit-fixture-end$/p' <<<"$out" | sed '1d;$d')
if grep -qx "proc/4242/comm: fake-vmm" <<<"$rec" && grep -qx "$vm/vcpu1/apic_group: 1" <<<"$rec"; then
	echo "ok - the recording has the VM's files and its comm"
else
	echo "not ok - recording lacks the comm or the vCPU files:"
	sed 's/^/    /' <<<"$out"
	fail=1
fi

# Materialise the recording as tool/tests do, and read it back.
mkdir -p "$tmp/rec/kvm"
while IFS= read -r line; do
	path=${line%%: *} content=${line#*: }
	mkdir -p "$tmp/rec/kvm/$(dirname "$path")"
	printf '%s\n' "$content" >"$tmp/rec/kvm/$path"
done <<<"$rec"
cargo build -q --manifest-path "$VTLKIT_ROOT/Cargo.toml" -p vtlctl || exit 1
ps_out=$("$CARGO_TARGET_DIR/debug/vtlctl" --debugfs "$tmp/rec/kvm" ps) || fail=1
if grep -qE "^$vm +4242 +fake-vmm +2 +0,1 +0,1 " <<<"$ps_out"; then
	echo "ok - vtlctl --debugfs reads COMM from the recording"
else
	echo "not ok - vtlctl ps on the recording:"
	sed 's/^/    /' <<<"$ps_out"
	fail=1
fi
exit "$fail"
