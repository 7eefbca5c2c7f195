#!/usr/bin/env bash
# The benchmarks, in one run, each timed twice: once in wall time (the accelerator boot.sh
# picks: multi-threaded TCG here) and once under VTLKIT_ICOUNT=1 (single-threaded TCG with
# -icount shift=0,sleep=off, where the guest's clocks follow the instructions executed, so cost
# ratios reproduce whatever the machine's load). Benchmarks:
#   ipi   `vtlkit-selftests --bench` (selftests/src/bench.rs): acknowledged x2APIC IPIs per
#         second between two nested vCPUs, on the stock kernel (pristine 6.12, built as
#         regress.sh does; groups unused only) and the patched one (groups unused and in use);
#   vtl   `--bench-vtl` (bench_vtl.rs), patched: VtlCall->VtlReturn round trips through the
#         userspace VTL state machine against a plain forwarded hypercall exit (the floor);
#   wake  `--bench-wake` (bench_wake.rs), patched: latency of an interrupt to a parked VTL1
#         against one to a running vCPU (the floor), median and p99.
# Prints the lines of every guest run, then one table per benchmark with both columns and the
# ratios (patched / stock, round trip / floor, parked / running), saved to build/run/bench.txt.
# Figures only: nothing is asserted about speed; the run fails only if a benchmark itself fails
# (an IPI lost or misdelivered, a VTL switch miscounted, an interrupt not handled).
#
#   VTLKIT_BENCH_IPIS           IPIs per repetition (default 5000)
#   VTLKIT_BENCH_REPS           IPI repetitions per variant, each in a fresh VM (default 5)
#   VTLKIT_BENCH_VTL_OPS        round trips / hypercalls per repetition (default 2000)
#   VTLKIT_BENCH_VTL_REPS       VTL repetitions per variant, each in a fresh VM (default 5)
#   VTLKIT_BENCH_WAKE_SAMPLES   wake-up samples per variant (default 500)
#   VTLKIT_BENCH_MODES          "wall icount" (default), or only one of them
#   VTLKIT_KERNEL_PATCHED, VTLKIT_KERNEL_STOCK
#                               prebuilt bzImages to boot instead of building that kernel
#                               (default: build both, incrementally, as regress.sh does)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

wall_start=$SECONDS
ipis=${VTLKIT_BENCH_IPIS:-5000}
reps=${VTLKIT_BENCH_REPS:-5}
vtl_ops=${VTLKIT_BENCH_VTL_OPS:-2000}
vtl_reps=${VTLKIT_BENCH_VTL_REPS:-5}
wake_samples=${VTLKIT_BENCH_WAKE_SAMPLES:-500}
for v in VTLKIT_BENCH_IPIS:"$ipis" VTLKIT_BENCH_REPS:"$reps" VTLKIT_BENCH_VTL_OPS:"$vtl_ops" \
	VTLKIT_BENCH_VTL_REPS:"$vtl_reps" VTLKIT_BENCH_WAKE_SAMPLES:"$wake_samples"; do
	[[ "${v#*:}" =~ ^[1-9][0-9]*$ ]] || die "bench: ${v%%:*} must be a positive number, not '${v#*:}'"
done
read -r -a modes <<<"${VTLKIT_BENCH_MODES:-wall icount}"
[ ${#modes[@]} -gt 0 ] || die "bench: VTLKIT_BENCH_MODES names no mode (wall, icount)"
for m in "${modes[@]}"; do
	case "$m" in
	wall) ;;
	icount)
		[ "${VTLKIT_ACCEL:-auto}" != kvm ] ||
			die "bench: the icount mode needs TCG, not VTLKIT_ACCEL=kvm: set VTLKIT_BENCH_MODES=wall"
		;;
	*) die "bench: VTLKIT_BENCH_MODES: unknown mode '$m' (wall, icount)" ;;
	esac
done
[ -z "${VTLKIT_ICOUNT:-}" ] || die "bench: VTLKIT_ICOUNT is set per mode here; unset it (VTLKIT_BENCH_MODES=icount runs only that)"
logs=$VTLKIT_BUILD_DIR/logs
mkdir -p "$logs" "$VTLKIT_RUN_DIR"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# Both kernels (or the prebuilt ones) and the default test initramfs (vtlkit-selftests).
k_patched=${VTLKIT_KERNEL_PATCHED:-}
k_stock=${VTLKIT_KERNEL_STOCK:-}
if [ -z "$k_patched" ] && [ -z "$k_stock" ]; then
	build_both_kernels
elif [ -z "$k_patched" ]; then
	"$VTLKIT_ROOT/scripts/setup-deps.sh"
	"$VTLKIT_ROOT/scripts/get-kernel.sh"
	"$VTLKIT_ROOT/scripts/apply-series.sh"
	"$VTLKIT_ROOT/scripts/build-kernel.sh"
elif [ -z "$k_stock" ]; then
	"$VTLKIT_ROOT/scripts/setup-deps.sh"
	"$VTLKIT_ROOT/scripts/get-kernel.sh"
	build_stock_kernel
fi
k_patched=${k_patched:-$VTLKIT_KOBJ/arch/x86/boot/bzImage}
k_stock=${k_stock:-$VTLKIT_STOCK_KOBJ/arch/x86/boot/bzImage}
[ -f "$k_patched" ] || die "bench: no patched kernel at $k_patched (VTLKIT_KERNEL_PATCHED)"
[ -f "$k_stock" ] || die "bench: no stock kernel at $k_stock (VTLKIT_KERNEL_STOCK)"
"$VTLKIT_ROOT/scripts/build-qemu.sh"
"$VTLKIT_ROOT/scripts/build-guest.sh"
"$VTLKIT_ROOT/scripts/pack-initramfs.sh"

# In the guest, first wait (at most 10 s) until the kernel leaves tsc-early, which cannot drive
# high-resolution timers: until then a 20 µs sleep lasts a scheduler tick, and under icount a
# boot reaches the benchmarks within a second of guest time, before the TSC is refined.
cs=/sys/devices/system/clocksource/clocksource0/current_clocksource
prep="for i in 1 2 3 4 5 6 7 8 9 10; do grep -qx tsc-early $cs || break; sleep 1; done;"
prep="$prep echo vtlkit-bench-clock: \$(cat $cs);"
cmd_ipi="vtlkit-selftests --bench --ipis $ipis --reps $reps"
cmd_stock="$prep $cmd_ipi"
cmd_patched="$prep $cmd_ipi && vtlkit-selftests --bench-vtl --ops $vtl_ops --reps $vtl_reps"
cmd_patched="$cmd_patched && vtlkit-selftests --bench-wake --samples $wake_samples"

# bench_boot KERNEL MODE: boot that kernel in that mode with its benchmarks; their lines go to
# build/run/bench-KERNEL-MODE.txt, the boot's time to build/run/bench-KERNEL-MODE.secs.
bench_boot() {
	local name=$1 mode=$2 kernel cmd log=$logs/bench-$1-$2.log start=$SECONDS
	local txt=$VTLKIT_RUN_DIR/bench-$name-$mode.txt icount=0
	[ "$mode" = icount ] && icount=1
	if [ "$name" = stock ]; then kernel=$k_stock cmd=$cmd_stock; else kernel=$k_patched cmd=$cmd_patched; fi
	step "benchmarking the $name kernel, $mode (console: $log)"
	rm -f "$txt"
	VTLKIT_KERNEL=$kernel VTLKIT_ICOUNT=$icount VTLKIT_GUEST_CMD="$cmd" \
		run_logged "$log" "$VTLKIT_ROOT/scripts/boot.sh"
	tr -d '\r' <"$VTLKIT_RUN_DIR/serial.log" | grep -E '^(# )?vtlkit-bench' >"$txt" || true
	echo $((SECONDS - start)) >"$VTLKIT_RUN_DIR/bench-$name-$mode.secs"
	sed 's/^/    /' "$txt"
	info "($((SECONDS - start))s)"
}
rm -f "$VTLKIT_RUN_DIR"/bench-*.txt "$VTLKIT_RUN_DIR"/bench-*.secs
accel_wall=""
for m in "${modes[@]}"; do
	bench_boot stock "$m"
	bench_boot patched "$m"
	if [ "$m" = wall ]; then
		accel_wall=TCG
		grep -q 'real KVM' "$logs/bench-patched-wall.log" && accel_wall=KVM
	fi
done

# val FILE KEY VARIANT FIELD: the word after FIELD on FILE's line "KEY VARIANT ..." (or nothing).
val() {
	[ -f "$1" ] || return 0
	awk -v k="$2" -v v="$3" -v f="$4" \
		'$1 == k && $2 == v { for (i = 3; i < NF; i++) if ($i == f) { print $(i + 1); exit } }' "$1"
}
# spread FILE KEY VARIANT: (max - min) / median of the repetitions' rates (field 6), in %.
spread() {
	[ -f "$1" ] || return 0
	awk -v k="$2" -v v="$3" '$1 == k && $2 == v { print $6 }' "$1" | sort -g |
		awk '{ r[++n] = $1 } END { if (n == 0) exit; m = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
		      printf "%.1f%%", 100 * (r[n] - r[1]) / m }'
}
# ratio A B [FORMAT]: A / B, or "-" when either is missing.
ratio() {
	if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" -v f="${3:-%.3f}" 'BEGIN { printf f, a / b }'; else echo -; fi
}
# per_op RATE: microseconds per operation, or "-".
per_op() { if [ -n "$1" ]; then awk -v r="$1" 'BEGIN { printf "%.1f", 1e6 / r }'; else echo -; fi; }
d() { echo "${1:--}"; }
f() { echo "$VTLKIT_RUN_DIR/bench-$1-$2.txt"; }
has() { [[ " ${modes[*]} " == *" $1 "* ]]; }

# Every benchmark must have left its figures in every mode run.
missing=()
for m in "${modes[@]}"; do
	[ -n "$(val "$(f stock "$m")" vtlkit-bench: unused median)" ] || missing+=("ipi stock $m")
	for v in unused groups; do
		[ -n "$(val "$(f patched "$m")" vtlkit-bench: "$v" median)" ] || missing+=("ipi patched $v $m")
	done
	for v in hcall-exit vtl-round-trip; do
		[ -n "$(val "$(f patched "$m")" vtlkit-bench-vtl: "$v" median)" ] || missing+=("vtl $v $m")
	done
	for v in running-vtl0 parked-vtl1; do
		[ -n "$(val "$(f patched "$m")" vtlkit-bench-wake-tsc: "$v" median_us)" ] || missing+=("wake $v $m")
	done
done
[ ${#missing[@]} -eq 0 ] || die "bench: missing figures: $(printf '%s; ' "${missing[@]}")"

wl="wall (${accel_wall:-not run})"
out=$VTLKIT_RUN_DIR/bench.txt
{
	printf 'vtlkit benchmarks, %s; %s CPUs, load average %s at the start, %s at the end\n' \
		"$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf 'QEMU %s; patched %s, stock %s\n' \
		"$(qemu-system-x86_64 --version 2>/dev/null | sed -n '1s/^QEMU emulator version \([0-9.]*\).*/\1/p')" \
		"$k_patched" "$k_stock"
	printf 'columns: %s = the figures in the time of the machine (noisy with its load); icount =\n' "$wl"
	printf '  VTLKIT_ICOUNT=1, guest time = instructions executed, 1 ns each, all vCPUs together (VMRUN\n'
	printf '  and #VMEXIT count as one instruction: icount weighs the software path, not world switches)\n'
	printf 'guest clocksource (wall / icount): %s / %s\n' \
		"$(d "$(awk '$1 == "vtlkit-bench-clock:" { print $2 }' "$(f patched wall)" 2>/dev/null)")" \
		"$(d "$(awk '$1 == "vtlkit-bench-clock:" { print $2 }' "$(f patched icount)" 2>/dev/null)")"
	echo

	printf 'IPI delivery (--bench): acknowledged nested x2APIC fixed IPIs per second, median of %s x %s\n' "$reps" "$ipis"
	printf '  clock: vtlkit-selftests'"'"' CLOCK_MONOTONIC in the QEMU guest (the nested VMs'"'"' host)\n'
	printf '%-26s %10s %7s %8s | %10s %7s %8s\n' "kernel / variant" "wall" "spread" "vs stock" "icount" "spread" "vs stock"
	for row in "stock unused" "patched unused" "patched groups"; do
		read -r k v <<<"$row"
		line=()
		for m in wall icount; do
			r=$(val "$(f "$k" "$m")" vtlkit-bench: "$v" median)
			s=$(val "$(f stock "$m")" vtlkit-bench: unused median)
			line+=("$(d "$r")" "$(d "$(spread "$(f "$k" "$m")" vtlkit-bench-rep: "$v")")" "$(ratio "$r" "$s")")
		done
		printf '%-26s %10s %7s %8s | %10s %7s %8s\n' "$k, groups ${v/groups/in use}" "${line[@]}"
	done
	printf '(stock, groups in use: %s)\n' "$(awk '$1 == "vtlkit-bench:" && $2 == "groups" { $1 = $2 = ""; sub(/^ +/, ""); print; exit }' \
		"$(f stock "${modes[0]}")")"
	echo

	printf 'VTL switch (--bench-vtl, patched): operations per second, median of %s x %s\n' "$vtl_reps" "$vtl_ops"
	printf '  clock: as above (from releasing the guest'"'"'s gate to its report)\n'
	printf '%-32s %9s %7s %8s | %9s %7s %8s\n' "variant" "wall" "spread" "us/op" "icount" "spread" "us/op"
	for row in "hcall-exit hcall-exit (the floor)" "vtl-round-trip round trip (VtlCall+VtlReturn)"; do
		read -r v label <<<"$row"
		line=()
		for m in wall icount; do
			r=$(val "$(f patched "$m")" vtlkit-bench-vtl: "$v" median)
			line+=("$(d "$r")" "$(d "$(spread "$(f patched "$m")" vtlkit-bench-vtl-rep: "$v")")" "$(per_op "$r")")
		done
		printf '%-32s %9s %7s %8s | %9s %7s %8s\n' "$label" "${line[@]}"
	done
	line=()
	for m in wall icount; do
		line+=("$(ratio "$(val "$(f patched "$m")" vtlkit-bench-vtl: hcall-exit median)" \
			"$(val "$(f patched "$m")" vtlkit-bench-vtl: vtl-round-trip median)" %.2f)")
	done
	printf '%-32s %9s %7s %8s | %9s %7s %8s\n' "round trip / floor (time)" "${line[0]}" "" "" "${line[1]}" "" ""
	echo

	printf 'Wake-up latency (--bench-wake, patched): %s samples per variant, microseconds\n' "$wake_samples"
	printf '  wall: vtlkit-selftests'"'"' CLOCK_MONOTONIC from before KVM_SIGNAL_MSI to the poll (20 us sleeps)\n'
	printf '    that sees the handler'"'"'s count (the nested TSC keeps no fixed offset to it under TCG)\n'
	printf '  icount: the nested guest'"'"'s TSC in the handler minus the host'"'"'s TSC before the ioctl, less\n'
	printf '    the VM'"'"'s TSC offset (sound while handler times stay inside the poll windows: "outside" = 0);\n'
	printf '    the 20 us polls cannot resolve these latencies there (figures below)\n'
	printf '%-26s %10s %10s | %10s %10s\n' "variant" "wall med" "wall p99" "icount med" "icount p99"
	for v in running-vtl0 parked-vtl1; do
		printf '%-26s %10s %10s | %10s %10s\n' "$v$([ "$v" = running-vtl0 ] && echo ' (the floor)')" \
			"$(d "$(val "$(f patched wall)" vtlkit-bench-wake: "$v" median_us)")" \
			"$(d "$(val "$(f patched wall)" vtlkit-bench-wake: "$v" p99_us)")" \
			"$(d "$(val "$(f patched icount)" vtlkit-bench-wake-tsc: "$v" median_us)")" \
			"$(d "$(val "$(f patched icount)" vtlkit-bench-wake-tsc: "$v" p99_us)")"
	done
	line=()
	for q in "wall vtlkit-bench-wake: median_us" "wall vtlkit-bench-wake: p99_us" \
		"icount vtlkit-bench-wake-tsc: median_us" "icount vtlkit-bench-wake-tsc: p99_us"; do
		read -r m key fld <<<"$q"
		line+=("$(ratio "$(val "$(f patched "$m")" "$key" parked-vtl1 "$fld")" \
			"$(val "$(f patched "$m")" "$key" running-vtl0 "$fld")" %.2f)")
	done
	printf '%-26s %10s %10s | %10s %10s\n' "parked / running" "${line[@]}"
	for m in wall icount; do
		has "$m" || continue
		if [ "$m" = wall ]; then key=vtlkit-bench-wake-tsc: what="nested TSC"; else key=vtlkit-bench-wake: what="20 us polls"; fi
		outside=$(($(val "$(f patched "$m")" vtlkit-bench-wake-tsc: running-vtl0 outside) + \
			$(val "$(f patched "$m")" vtlkit-bench-wake-tsc: parked-vtl1 outside)))
		if [ "$m" = wall ] && [ "$outside" != 0 ]; then
			printf '  other clock, wall: nested TSC unsound: %s of %s samples outside their poll windows\n' \
				"$outside" "$((2 * wake_samples))"
		else
			printf '  other clock, %s: %s: running %s/%s, parked %s/%s us (median/p99)\n' "$m" "$what" \
				"$(d "$(val "$(f patched "$m")" "$key" running-vtl0 median_us)")" \
				"$(d "$(val "$(f patched "$m")" "$key" running-vtl0 p99_us)")" \
				"$(d "$(val "$(f patched "$m")" "$key" parked-vtl1 median_us)")" \
				"$(d "$(val "$(f patched "$m")" "$key" parked-vtl1 p99_us)")"
		fi
		if [ "$m" = icount ]; then
			printf '  icount: nested TSC samples outside their poll windows: %s of %s\n' "$outside" "$((2 * wake_samples))"
		fi
	done
	echo
	boots=()
	for m in "${modes[@]}"; do
		for k in stock patched; do boots+=("$k $m $(cat "$VTLKIT_RUN_DIR/bench-$k-$m.secs")s"); done
	done
	printf 'boots: %s; total wall time %ds (builds included)\n' "$(printf '%s, ' "${boots[@]}" | sed 's/, $//')" "$((SECONDS - wall_start))"
} >"$out"
step "benchmarks (saved to $out)"
cat "$out"
