#!/usr/bin/env bash
# Boot the built kernel with the test initramfs in QEMU and return the guest's exit status.
#
# Usage: boot.sh [TEST...]           run the selftests (all, or the named ones / PREFIX*)
#        VTLKIT_GUEST_CMD="..." boot.sh   run a shell command in the guest instead
#        VTLKIT_GUEST_SCRIPT=NAME boot.sh run scripts/guest/NAME.sh in the guest instead
#        VTLKIT_KERNEL=bzImage, VTLKIT_INITRD=cpio: boot these instead of the last build's
#        VTLKIT_KARGS="...": extra kernel command-line words (e.g. vtlkit.fuzz_seconds=300)
#        VTLKIT_TEST_TIMEOUT=SECONDS: each selftest's time limit (vtlkit.test_timeout=;
#          default 60, 0 for none); a test still running then is killed and fails
#
# Acceleration: real KVM only where it works (vmx/svm in the CPU flags *and* a short trial
# boot succeeds), else TCG with -cpu max (AMD with SVM and NPT, so the guest's kvm_amd runs
# nested guests). Force with VTLKIT_ACCEL=kvm|tcg. VTLKIT_TCG_THREAD=single|multi picks TCG's
# threading (-accel tcg,thread=...; default single: under multi-threaded TCG, QEMU 7.2's nested
# SVM makes nested guests, and now and then the guest kernel itself, triple-fault on page walks
# that the page tables and KVM's nested page tables show to be fine; see README, issue 12).
# VTLKIT_ICOUNT=1 boots TCG with -accel tcg,thread=single -icount shift=0,sleep=off: the guest's
# clocks (TSC, HPET, its CLOCK_MONOTONIC) then follow the instructions executed, 1 ns each, and
# never wait for the host's time, so guest-timed figures reproduce whatever the host's load
# (scripts/bench.sh). icount needs single-threaded TCG: refused with VTLKIT_ACCEL=kvm or
# VTLKIT_TCG_THREAD=multi; with VTLKIT_ACCEL=auto it means TCG without a KVM trial.
#
# QEMU: the one scripts/build-qemu.sh built (build/qemu/bin/qemu-system-x86_64: Debian's 7.2
# with qemu-patches/), else qemu-system-x86_64 from PATH with a warning (under TCG, Debian's
# delivers some interrupts injected into nested guests twice), or VTLKIT_QEMU=/path/to/
# qemu-system-x86_64 (e.g. the system's, or one unpacked from a .deb without installing it). Its firmware and option ROMs are looked up in
# VTLKIT_QEMU_DATA (colon-separated directories, each passed as -L); by default, for a QEMU
# outside /usr/bin, in PREFIX/share/qemu and PREFIX/share/seabios next to its bin/ when they
# exist (QEMU falls back to /usr/share/qemu and /usr/share/seabios). The version booted is
# printed.
#
# The serial console is shown live and saved to $VTLKIT_RUN_DIR/serial.log; the guest writes
# its kernel log and exit status to ttyS1 ($VTLKIT_RUN_DIR/results.log). Any BUG, WARNING,
# KASAN, UBSAN, lockdep or panic report in the kernel's log lines fails the run: the guest's
# dmesg, and the kernel's own (timestamped) lines on the console, not what the tests print
# (kernel_reports in lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

kobj=$VTLKIT_KOBJ
[ "${VTLKIT_KCONFIG:-default}" = debug ] && kobj=$VTLKIT_KOBJ-debug
kernel=${VTLKIT_KERNEL:-$kobj/arch/x86/boot/bzImage}
initrd=${VTLKIT_INITRD:-$VTLKIT_BUILD_DIR/initramfs.cpio}
timeout_s=${VTLKIT_TIMEOUT:-900}
[ -f "$kernel" ] || die "booting: no kernel at $kernel; run scripts/build-kernel.sh"
[ -f "$initrd" ] || die "booting: no initramfs at $initrd; run scripts/pack-initramfs.sh"
if [ -n "${VTLKIT_QEMU:-}" ]; then
	qemu=$VTLKIT_QEMU
	[ -x "$qemu" ] || die "booting: VTLKIT_QEMU=$qemu is not an executable file"
elif [ -x "$VTLKIT_QEMU_DIR/bin/qemu-system-x86_64" ]; then
	qemu=$VTLKIT_QEMU_DIR/bin/qemu-system-x86_64
else
	qemu="qemu-system-x86_64"
	command -v "$qemu" >/dev/null || die "booting: qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
	warn_loud "booting the system's $qemu, not one built by scripts/build-qemu.sh: under TCG it delivers" \
		"some interrupts injected into nested guests twice (qemu-patches/0002), so exact counts can fail by chance"
fi
VTLKIT_TCG_THREAD=${VTLKIT_TCG_THREAD:-single}
case "$VTLKIT_TCG_THREAD" in
single | multi) ;;
*) die "booting: VTLKIT_TCG_THREAD must be single or multi, not '${VTLKIT_TCG_THREAD}'" ;;
esac
icount=0
case "${VTLKIT_ICOUNT:-0}" in
0) ;;
1)
	icount=1
	[ "${VTLKIT_ACCEL:-auto}" != kvm ] ||
		die "booting: VTLKIT_ICOUNT=1 needs TCG (-icount is TCG's instruction counter), not VTLKIT_ACCEL=kvm: unset one of them"
	[ "${VTLKIT_TCG_THREAD:-single}" = single ] ||
		die "booting: VTLKIT_ICOUNT=1 needs single-threaded TCG (QEMU refuses -icount with thread=multi), not VTLKIT_TCG_THREAD=$VTLKIT_TCG_THREAD"
	;;
*) die "booting: VTLKIT_ICOUNT must be 0 or 1, not '${VTLKIT_ICOUNT}'" ;;
esac
# Firmware directories for a QEMU outside the system's prefix (-L, searched before QEMU's own).
qemu_data=()
if [ -n "${VTLKIT_QEMU_DATA:-}" ]; then
	IFS=: read -r -a dirs <<<"$VTLKIT_QEMU_DATA"
	for d in "${dirs[@]}"; do
		[ -d "$d" ] || die "booting: VTLKIT_QEMU_DATA: no directory $d"
		qemu_data+=("$d")
	done
else
	qpath=$(command -v "$qemu")
	prefix=$(cd "$(dirname "$qpath")/.." && pwd -P)
	if [ "$prefix" != /usr ]; then
		for d in "$prefix/share/qemu" "$prefix/share/seabios"; do
			[ -d "$d" ] && qemu_data+=("$d")
		done
	fi
fi
qver=$(qemu_version "$qemu" || true)
[ -n "$qver" ] || die "booting: $qemu --version failed: $("$qemu" --version 2>&1 | head -n 3)"
mkdir -p "$VTLKIT_RUN_DIR"

# qemu_cmd ACCEL RESULTS_FILE SERIAL_LOG APPEND -> prints the command line, one word per line
qemu_args() {
	local accel=$1 results=$2 serial=$3 append=$4
	local d
	for d in "${qemu_data[@]}"; do
		printf '%s\n' -L "$d"
	done
	if [ "$accel" = kvm ]; then
		printf '%s\n' -accel kvm -cpu host
	elif [ "$icount" = 1 ]; then
		printf '%s\n' -accel tcg,thread=single -icount shift=0,sleep=off -cpu max
	else
		printf '%s\n' -accel "tcg,thread=$VTLKIT_TCG_THREAD" -cpu max
	fi
	printf '%s\n' -machine q35 -smp 2 -m 2G -nodefaults -display none -no-reboot \
		-chardev "stdio,id=con,signal=off,logfile=$serial" -serial chardev:con \
		-serial "file:$results" \
		-kernel "$kernel" -initrd "$initrd" \
		-append "console=ttyS0 quiet printk.time=1 panic=-1 oops=panic vtlkit.accel=$accel $append ${VTLKIT_KARGS:-}"
}

pick_accel() {
	case "${VTLKIT_ACCEL:-auto}" in
	kvm | tcg)
		echo "${VTLKIT_ACCEL}"
		return
		;;
	auto) ;;
	*) die "booting: VTLKIT_ACCEL must be kvm, tcg or auto, not '${VTLKIT_ACCEL}'" ;;
	esac
	if [ "$icount" = 1 ]; then
		echo tcg # VTLKIT_ICOUNT=1: icount exists only in TCG
		return
	fi
	if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
		echo tcg # no hardware virtualization flags: /dev/kvm (if any) is not real KVM
		return
	fi
	if [ ! -w /dev/kvm ]; then
		echo tcg
		return
	fi
	# Flags alone can lie (paravirtual /dev/kvm backends); prove it with a trial boot.
	local r=$VTLKIT_RUN_DIR/trial
	mkdir -p "$r"
	rm -f "$r/results.log"
	mapfile -t args < <(qemu_args kvm "$r/results.log" "$r/serial.log" vtlkit.trial)
	timeout -k 5 60 "$qemu" "${args[@]}" </dev/null >/dev/null 2>&1 || true
	if tr -d '\r' <"$r/results.log" 2>/dev/null | grep -qx 'vtlkit-exit-status: 0'; then
		echo kvm
	else
		echo tcg
	fi
}

append=""
if [ -n "${VTLKIT_GUEST_SCRIPT:-}" ]; then
	[ -f "$VTLKIT_ROOT/scripts/guest/$VTLKIT_GUEST_SCRIPT.sh" ] ||
		die "booting: no guest script scripts/guest/$VTLKIT_GUEST_SCRIPT.sh"
	append="vtlkit.script=$VTLKIT_GUEST_SCRIPT"
elif [ -n "${VTLKIT_GUEST_CMD:-}" ]; then
	append="vtlkit.cmd=$(echo "$VTLKIT_GUEST_CMD" | tr ' ' ',')"
elif [ $# -gt 0 ]; then
	append="vtlkit.tests=$(
		IFS=,
		echo "$*"
	)"
fi

if [ -n "${VTLKIT_TEST_TIMEOUT:-}" ]; then
	[[ "$VTLKIT_TEST_TIMEOUT" =~ ^[0-9]+$ ]] ||
		die "booting: VTLKIT_TEST_TIMEOUT must be a number of seconds, not '$VTLKIT_TEST_TIMEOUT'"
	append="$append vtlkit.test_timeout=$VTLKIT_TEST_TIMEOUT"
fi

step "booting: choosing the accelerator"
info "QEMU $qver ($(command -v "$qemu"))${qemu_data[*]:+, firmware from ${qemu_data[*]}}"
accel=$(pick_accel)
if [ "$accel" = kvm ]; then
	info "real KVM (-accel kvm -cpu host)"
elif [ "$icount" = 1 ]; then
	info "TCG software emulation, instruction-counted (VTLKIT_ICOUNT=1: -accel tcg,thread=single -icount shift=0,sleep=off -cpu max; guest time follows instructions, 1 ns each)"
else
	info "TCG software emulation (-accel tcg,thread=$VTLKIT_TCG_THREAD -cpu max: AMD, SVM + NPT for the guest's kvm_amd)"
fi

results=$VTLKIT_RUN_DIR/results.log
serial=$VTLKIT_RUN_DIR/serial.log
rm -f "$results" "$serial"
mapfile -t args < <(qemu_args "$accel" "$results" "$serial" "$append")
step "booting $(basename "$kernel") in QEMU, timeout ${timeout_s}s"
info "serial log: $serial"
start=$SECONDS
set +e
timeout -k 10 "$timeout_s" "$qemu" "${args[@]}" </dev/null
qrc=$?
set -e
elapsed=$((SECONDS - start))

tr -d '\r' <"$results" >"$results.txt" 2>/dev/null || : >"$results.txt"
status=$(sed -n 's/^vtlkit-exit-status: \([0-9]*\)$/\1/p' "$results.txt" | tail -n 1)
sed -n '/^vtlkit-dmesg-begin$/,/^vtlkit-dmesg-end$/p' "$results.txt" >"$VTLKIT_RUN_DIR/dmesg.log"

# Kernel reports in the kernel's log lines (not in what the tests print) fail the run.
splats=$(kernel_reports "$serial" "$VTLKIT_RUN_DIR/dmesg.log")

rc=0
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	printf '%s\n' "--- last lines of $serial ---" >&2
	tr -d '\r' <"$serial" | tail -n 30 >&2
	die "booting: the guest did not finish within ${timeout_s}s (VTLKIT_TIMEOUT); serial log: $serial"
elif [ -z "$status" ]; then
	printf '%s\n' "--- last lines of $serial ---" >&2
	tr -d '\r' <"$serial" | tail -n 30 >&2
	die "booting: the guest ended without reporting a status (kernel panic or crash? QEMU rc $qrc); serial log: $serial"
fi
if [ -n "$splats" ]; then
	printf '%s\n' "$splats" | sed 's/^/    /' >&2
	printf 'vtlkit: error: the kernel log has BUG/WARNING/KASAN/UBSAN/lockdep reports (full log: %s)\n' \
		"$VTLKIT_RUN_DIR/dmesg.log" >&2
	rc=1
else
	ok "kernel log clean (no BUG/WARNING/KASAN/UBSAN/lockdep reports)"
fi
case "$status" in
0) ok "guest finished in ${elapsed}s: exit status 0" ;;
4) info "guest finished in ${elapsed}s: exit status 4 (everything skipped)" ;;
*) printf 'vtlkit: error: guest finished in %ss: exit status %s (test failures)\n' "$elapsed" "$status" >&2 ;;
esac
[ "$rc" = 0 ] && rc=$status
exit "$rc"
