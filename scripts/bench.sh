#!/usr/bin/env bash
# IPI delivery benchmark: acknowledged x2APIC IPIs per second between two vCPUs of a nested VM
# (`vtlkit-selftests --bench`, see selftests/src/bench.rs), on
#   the patched kernel with APIC groups unused and with groups in use, and
#   the stock kernel (pristine 6.12, built as regress.sh does; groups unused only),
# in one run. Prints each kernel's figures (median of the repetitions) and the ratios
# patched-unused / stock and patched-groups / stock. Figures only: nothing is asserted about
# speed; the run fails only if the benchmark itself fails (an IPI lost or misdelivered).
#
#   VTLKIT_BENCH_IPIS   IPIs per repetition (default 20000)
#   VTLKIT_BENCH_REPS   repetitions per variant, each in a fresh VM (default 7)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

wall_start=$SECONDS
ipis=${VTLKIT_BENCH_IPIS:-20000}
reps=${VTLKIT_BENCH_REPS:-7}
for v in "$ipis" "$reps"; do
	[[ "$v" =~ ^[1-9][0-9]*$ ]] || die "bench: VTLKIT_BENCH_IPIS and VTLKIT_BENCH_REPS must be positive numbers"
done
logs=$VTLKIT_BUILD_DIR/logs
mkdir -p "$logs" "$VTLKIT_RUN_DIR"

# Both kernels and the default test initramfs (which holds vtlkit-selftests).
build_both_kernels
"$VTLKIT_ROOT/scripts/build-guest.sh"
"$VTLKIT_ROOT/scripts/pack-initramfs.sh"

# bench_kernel NAME BZIMAGE: run the benchmark there; its lines go to build/run/bench-NAME.txt.
bench_kernel() {
	local name=$1 kernel=$2 log=$logs/bench-$1.log
	step "benchmarking the $name kernel ($reps x $ipis IPIs per variant; console: $log)"
	VTLKIT_KERNEL=$kernel VTLKIT_GUEST_CMD="vtlkit-selftests --bench --ipis $ipis --reps $reps" \
		run_logged "$log" "$VTLKIT_ROOT/scripts/boot.sh"
	tr -d '\r' <"$VTLKIT_RUN_DIR/serial.log" | grep -E '^(# )?vtlkit-bench' >"$VTLKIT_RUN_DIR/bench-$name.txt" || true
	sed 's/^/    /' "$VTLKIT_RUN_DIR/bench-$name.txt"
}
bench_kernel stock "$VTLKIT_STOCK_KOBJ/arch/x86/boot/bzImage"
bench_kernel patched "$VTLKIT_KOBJ/arch/x86/boot/bzImage"

# median KERNEL VARIANT: the median rate, or empty.
median() { awk -v v="$2" '$1 == "vtlkit-bench:" && $2 == v && $3 == "median" { print $4 }' "$VTLKIT_RUN_DIR/bench-$1.txt"; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
stock=$(median stock unused)
p_unused=$(median patched unused)
p_groups=$(median patched groups)
[ -n "$stock" ] && [ -n "$p_unused" ] && [ -n "$p_groups" ] ||
	die "bench: missing figures (stock unused: ${stock:-none}, patched unused: ${p_unused:-none}, patched groups: ${p_groups:-none})"

out=$VTLKIT_RUN_DIR/bench.txt
{
	printf 'IPI delivery, nested x2APIC fixed physical IPIs, each acknowledged; median of %s x %s IPIs\n' "$reps" "$ipis"
	printf '%-34s %12s %10s\n' "kernel / variant" "IPIs/s" "vs stock"
	printf '%-34s %12s %10s\n' "stock, groups unused" "$stock" "1.000"
	printf '%-34s %12s %10s\n' "patched, groups unused" "$p_unused" "$(ratio "$p_unused" "$stock")"
	printf '%-34s %12s %10s\n' "patched, groups in use" "$p_groups" "$(ratio "$p_groups" "$stock")"
	printf 'stock, groups in use: %s\n' "$(awk '$1 == "vtlkit-bench:" && $2 == "groups" { $1 = $2 = ""; sub(/^ +/, ""); print }' "$VTLKIT_RUN_DIR/bench-stock.txt")"
	printf 'total wall time %ds (builds included)\n' "$((SECONDS - wall_start))"
} >"$out"
step "IPI benchmark (saved to $out)"
cat "$out"
