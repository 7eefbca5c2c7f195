#!/usr/bin/env bash
# Host-side test of how scripts/boot.sh picks and calls QEMU, without a kernel: stand-in QEMUs
# record their arguments and report a passing guest. The QEMU scripts/build-qemu.sh built is the
# default, with -L for its firmware; without one, the system's qemu-system-x86_64 (PATH), with a
# warning and no -L; VTLKIT_QEMU boots another one, whose firmware directories next to its
# bin/ are passed with -L (or those VTLKIT_QEMU_DATA names); the version booted is printed;
# TCG is single-threaded unless VTLKIT_TCG_THREAD=multi; VTLKIT_ICOUNT=1 single-threaded TCG with -icount,
# never real KVM; bad values are refused with what is wrong.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/build" "$tmp/q10/usr/bin" "$tmp/q10/usr/share/qemu" \
	"$tmp/q10/usr/share/seabios" "$tmp/fw"
: >"$tmp/bzImage"
: >"$tmp/initramfs.cpio"

# stand_in FILE VERSION: a QEMU that answers --version, else records its arguments (one a line)
# and writes a passing guest's results to the ttyS1 file.
stand_in() {
	cat >"$1" <<EOF
#!/usr/bin/env bash
[ "\${1:-}" = --version ] && { echo "QEMU emulator version $2 (stand-in)"; exit 0; }
printf '%s\n' "\$@" >"\$FAKE_DIR/args"
results=""
while [ \$# -gt 0 ]; do
	case "\$1" in -serial) case "\$2" in file:*) results=\${2#file:} ;; esac ;; esac
	shift
done
printf 'vtlkit-dmesg-begin\r\nvtlkit-dmesg-end\r\nvtlkit-exit-status: 0\r\n' >"\$results"
EOF
	chmod +x "$1"
}
stand_in "$tmp/bin/qemu-system-x86_64" 7.2.22
stand_in "$tmp/q10/usr/bin/qemu-system-x86_64" 10.0.2

fail=0
# check NAME WANT_RC ENV... -- REGEX...: run boot.sh with ENV; every REGEX must match its
# output, or, prefixed with args:, the QEMU arguments joined by spaces.
check() {
	local name=$1 want=$2 out rc=0 re
	shift 2
	local env=()
	while [ "$1" != -- ]; do env+=("$1"); shift; done
	shift
	rm -f "$tmp/args"
	out=$(env PATH="$tmp/bin:$PATH" FAKE_DIR=$tmp VTLKIT_BUILD_DIR=$tmp/build VTLKIT_ACCEL=tcg \
		VTLKIT_KERNEL=$tmp/bzImage VTLKIT_INITRD=$tmp/initramfs.cpio VTLKIT_TIMEOUT=60 \
		"${env[@]}" "$VTLKIT_ROOT/scripts/boot.sh" 2>&1) || rc=$?
	local args=""
	[ -f "$tmp/args" ] && args=$(tr "\n" " " <"$tmp/args")
	local res=()
	for re in "$@"; do
		if [[ "$re" == args:* ]]; then
			grep -qE -- "${re#args:}" <<<"$args" || {
				echo "not ok - $name: QEMU arguments lack /${re#args:}/: $args"
				fail=1
				return
			}
		else
			res+=("$re")
		fi
	done
	verdict "$name" "$want" "$rc" "$out" "${res[@]}"
}

check "no QEMU built: qemu-system-x86_64 from PATH, loudly, its version printed, no -L" 0 -- \
	"QEMU 7\.2\.22 \($tmp/bin/qemu-system-x86_64\)$" "args:^-accel tcg,thread=single -cpu max " \
	"WARNING: booting the system's qemu-system-x86_64, not one built by scripts/build-qemu.sh"
grep -q -- '^-L$' "$tmp/args" && { echo "not ok - default QEMU got -L" && fail=1; }
# What scripts/build-qemu.sh leaves: bin/ and share/{qemu,seabios} under build/qemu.
mkdir -p "$tmp/build/qemu/bin" "$tmp/build/qemu/share/qemu" "$tmp/build/qemu/share/seabios"
stand_in "$tmp/build/qemu/bin/qemu-system-x86_64" 7.2.0
check "built QEMU: the default, with -L for its share/qemu and share/seabios, no warning" 0 -- \
	"QEMU 7\.2\.0 \($tmp/build/qemu/bin/qemu-system-x86_64\), firmware from $tmp/build/qemu/share/qemu $tmp/build/qemu/share/seabios" \
	"args:^-L $tmp/build/qemu/share/qemu -L $tmp/build/qemu/share/seabios -accel tcg,thread=single -cpu max " '!vtlkit: WARNING'
check "built QEMU, VTLKIT_QEMU set: VTLKIT_QEMU wins" 0 VTLKIT_QEMU="$tmp/bin/qemu-system-x86_64" -- \
	"QEMU 7\.2\.22 \($tmp/bin/qemu-system-x86_64\)$" '!vtlkit: WARNING'
rm -rf "$tmp/build/qemu"
check "VTLKIT_QEMU: that QEMU, with -L for its share/qemu and share/seabios" 0 \
	VTLKIT_QEMU="$tmp/q10/usr/bin/qemu-system-x86_64" -- \
	"QEMU 10\.0\.2 \($tmp/q10/usr/bin/qemu-system-x86_64\), firmware from $tmp/q10/usr/share/qemu $tmp/q10/usr/share/seabios" \
	"args:^-L $tmp/q10/usr/share/qemu -L $tmp/q10/usr/share/seabios -accel tcg,thread=single -cpu max "
check "VTLKIT_QEMU_DATA replaces the firmware directories" 0 \
	VTLKIT_QEMU="$tmp/q10/usr/bin/qemu-system-x86_64" VTLKIT_QEMU_DATA="$tmp/fw" -- \
	"firmware from $tmp/fw$" "args:^-L $tmp/fw -accel tcg,thread=single -cpu max "
check "TCG threading by default: single-threaded" 0 -- "-accel tcg,thread=single -cpu max" \
	"args:-accel tcg,thread=single -cpu max "
check "VTLKIT_TCG_THREAD=single: -accel tcg,thread=single" 0 VTLKIT_TCG_THREAD=single -- \
	"-accel tcg,thread=single -cpu max" "args:-accel tcg,thread=single -cpu max "
check "VTLKIT_TCG_THREAD=multi: -accel tcg,thread=multi" 0 VTLKIT_TCG_THREAD=multi -- \
	"args:-accel tcg,thread=multi -cpu max "
check "VTLKIT_ICOUNT=1: single-threaded TCG with -icount shift=0,sleep=off" 0 VTLKIT_ICOUNT=1 -- \
	"instruction-counted \(VTLKIT_ICOUNT=1: -accel tcg,thread=single -icount shift=0,sleep=off -cpu max" \
	"args:^-accel tcg,thread=single -icount shift=0,sleep=off -cpu max "
check "VTLKIT_ICOUNT=1 with VTLKIT_ACCEL=auto: TCG, no KVM trial" 0 VTLKIT_ICOUNT=1 VTLKIT_ACCEL=auto -- \
	"args:^-accel tcg,thread=single -icount shift=0,sleep=off -cpu max "
check "VTLKIT_ICOUNT=1 with VTLKIT_TCG_THREAD=single: accepted" 0 VTLKIT_ICOUNT=1 VTLKIT_TCG_THREAD=single -- \
	"args:^-accel tcg,thread=single -icount shift=0,sleep=off -cpu max "
check "VTLKIT_ICOUNT=0: plain (single-threaded) TCG" 0 VTLKIT_ICOUNT=0 -- "args:^-accel tcg,thread=single -cpu max "
grep -q -- '^-icount$' "$tmp/args" && { echo "not ok - VTLKIT_ICOUNT=0 got -icount" && fail=1; }
check "VTLKIT_ICOUNT=1 with VTLKIT_ACCEL=kvm: refused" 1 VTLKIT_ICOUNT=1 VTLKIT_ACCEL=kvm -- \
	"error: booting: VTLKIT_ICOUNT=1 needs TCG .*not VTLKIT_ACCEL=kvm"
check "VTLKIT_ICOUNT=1 with VTLKIT_TCG_THREAD=multi: refused" 1 VTLKIT_ICOUNT=1 VTLKIT_TCG_THREAD=multi -- \
	"error: booting: VTLKIT_ICOUNT=1 needs single-threaded TCG .*not VTLKIT_TCG_THREAD=multi"
check "VTLKIT_ICOUNT with another value: refused" 1 VTLKIT_ICOUNT=yes -- \
	"error: booting: VTLKIT_ICOUNT must be 0 or 1, not 'yes'"
check "VTLKIT_QEMU that does not exist: refused" 1 VTLKIT_QEMU="$tmp/nope" -- \
	"error: booting: VTLKIT_QEMU=$tmp/nope is not an executable file"
check "VTLKIT_QEMU_DATA with a missing directory: refused" 1 \
	VTLKIT_QEMU="$tmp/q10/usr/bin/qemu-system-x86_64" VTLKIT_QEMU_DATA="$tmp/fw:$tmp/nope" -- \
	"error: booting: VTLKIT_QEMU_DATA: no directory $tmp/nope"
check "VTLKIT_TCG_THREAD with another value: refused" 1 VTLKIT_TCG_THREAD=two -- \
	"error: booting: VTLKIT_TCG_THREAD must be single or multi, not 'two'"
printf '#!/bin/sh\necho broken >&2\nexit 1\n' >"$tmp/bin/broken"
chmod +x "$tmp/bin/broken"
check "a QEMU whose --version fails: refused, with its output" 1 VTLKIT_QEMU="$tmp/bin/broken" -- \
	"error: booting: $tmp/bin/broken --version failed: broken"
exit "$fail"
