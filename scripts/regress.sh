#!/usr/bin/env bash
# Regression run against the kernel's own KVM selftests: the same statically linked binaries
# (tools/testing/selftests/kvm of the patched tree, built against the patched uAPI headers)
# run under the unpatched and the patched kernel, and the results are compared test by test.
#
# Usage: regress.sh [TEST...]     all tests, or only these (names as in the table, e.g.
#                                 x86_64/xapic_ipi_test)
#   VTLKIT_KST_TIMEOUT   per-test timeout in seconds inside the guest (default 120)
#
# The stock kernel is pristine 6.12 (the `pristine` tag) checked out in build/linux-stock and
# built in build/kobj-stock with the same config procedure as build-kernel.sh; the selftests
# are built out of tree in build/kvm-selftests. Both are incremental on reruns.
# Prints `test | stock | patched` and a summary, saves it to build/run/regress.txt, and exits
# 1 if a test that passes on stock fails, times out, is skipped or has no result on patched,
# or if the patched kernel logged a BUG/WARNING/... report.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

wall_start=$SECONDS
per_test=${VTLKIT_KST_TIMEOUT:-120}
[[ "$per_test" =~ ^[1-9][0-9]*$ ]] || die "regress: VTLKIT_KST_TIMEOUT must be a positive number of seconds"

# Tests not run, with the reason (they still appear in the table, as "excluded"). Only tests
# whose run time under TCG is out of proportion belong here, never tests that fail. None so
# far: the whole list takes about 6-7 minutes per kernel here.
declare -A excluded=()
# Arguments for tests whose default workload is too close to the per-test timeout under TCG
# (the verdict would flip with the machine's load).
declare -A kst_args=(
	# 6 sub-tests x (~5 s slot setup + 5 s measuring): 90-120 s under TCG; measure 1 s each.
	[memslot_perf_test]="-l 1"
	# 3 log modes x 32 iterations: 110-120+ s under TCG (passed at 120 s on one kernel and timed
	# out on the other, same run); 8 iterations each.
	[dirty_log_test]="-i 8"
)

stock_kobj=$VTLKIT_STOCK_KOBJ
kst_src=$VTLKIT_SRC/tools/testing/selftests/kvm
kst_out=$VTLKIT_BUILD_DIR/kvm-selftests
kst_extra=$VTLKIT_BUILD_DIR/kvm-selftests-image
initrd=$VTLKIT_BUILD_DIR/initramfs-kvm-selftests.cpio
logs=$VTLKIT_BUILD_DIR/logs
mkdir -p "$logs" "$VTLKIT_RUN_DIR"

# 1. The patched kernel and its exported headers (build/headers), as the main job builds them,
# and 2. the stock kernel: pristine in its own worktree, same fragments, same build.
build_both_kernels

# 3. The KVM selftests, statically linked (the guest has no libc), out of tree.
step "building the KVM selftests (static, against the patched headers in $VTLKIT_HDR)"
kst_make=(make -C "$kst_src" OUTPUT="$kst_out" EXTRA_CFLAGS=-static
	KHDR_INCLUDES="-isystem $VTLKIT_HDR/include")
start=$SECONDS
run_logged "$logs/kvm-selftests-build.log" "${kst_make[@]}" -j"$VTLKIT_JOBS"
# The list, in the Makefile's order (TEST_GEN_PROGS, with $(OUTPUT)/ prefixed by lib.mk).
mapfile -t all_tests < <("${kst_make[@]}" -s --no-print-directory -f Makefile \
	-f <(printf 'vtlkit-print-tests:\n\t@printf "%%s\\n" $(TEST_GEN_PROGS)\n') vtlkit-print-tests |
	sed "s|^$kst_out/||")
[ ${#all_tests[@]} -gt 0 ] || die "building the KVM selftests: cannot list TEST_GEN_PROGS"
for t in "${all_tests[@]}"; do
	[ -x "$kst_out/$t" ] || die "building the KVM selftests: $kst_out/$t was not built"
done
if [ -n "$(git -C "$VTLKIT_SRC" status --porcelain --untracked-files=no)" ]; then
	die "building the KVM selftests: the build modified files in $VTLKIT_SRC (it must stay clean)"
fi
ok "${#all_tests[@]} tests in $kst_out ($((SECONDS - start))s)"

# The tests to run: all, or those named on the command line.
if [ $# -gt 0 ]; then
	for t in "$@"; do
		printf '%s\n' "${all_tests[@]}" | grep -qxF "$t" || die "regress: no KVM selftest named $t"
	done
	tests=("$@")
else
	tests=("${all_tests[@]}")
fi
run_list=()
for t in "${tests[@]}"; do
	[ -n "${excluded[$t]:-}" ] || run_list+=("$t")
done

# 4. A separate initramfs: the default image plus /kvm-selftests (stripped binaries, the list,
# the per-test timeout).
step "packing the KVM selftests initramfs (${#run_list[@]} tests)"
rm -rf "$kst_extra"
mkdir -p "$kst_extra/kvm-selftests"
for t in "${run_list[@]}"; do
	mkdir -p "$(dirname "$kst_extra/kvm-selftests/$t")"
	strip -o "$kst_extra/kvm-selftests/$t" "$kst_out/$t" || die "packing: cannot strip $kst_out/$t"
done
for t in "${run_list[@]}"; do
	echo "$t ${kst_args[$t]:-}"
done >"$kst_extra/kvm-selftests/list"
echo "per_test=$per_test" >"$kst_extra/kvm-selftests/settings"
# The image also carries the vtlkit binaries (pack-initramfs.sh always adds them).
"$VTLKIT_ROOT/scripts/build-qemu.sh"
"$VTLKIT_ROOT/scripts/build-guest.sh" # incremental: never pack stale binaries
"$VTLKIT_ROOT/scripts/pack-initramfs.sh" --out "$initrd" --extra "$kst_extra"

# 5. Boot each kernel with it. boot.sh's output (the tests' console) goes to a log; progress
# comes from the serial log. Results: build/run/regress-KERNEL.results ("NAME RC SECONDS").
boot_timeout=$((${#run_list[@]} * (per_test + 15) + 300))
declare -A splat=() elapsed=()
run_kernel() {
	local name=$1 kernel=$2 log=$logs/regress-$1.log channel=$VTLKIT_RUN_DIR/results.log
	local pid start last=0 done_n rc
	step "running ${#run_list[@]} KVM selftests under the $name kernel (timeout ${per_test}s each; console: $log)"
	start=$SECONDS
	rm -f "$VTLKIT_RUN_DIR/results.log.txt"
	VTLKIT_KERNEL=$kernel VTLKIT_INITRD=$initrd VTLKIT_GUEST_SCRIPT=kvm-selftests \
		VTLKIT_TIMEOUT=$boot_timeout "$VTLKIT_ROOT/scripts/boot.sh" >"$log" 2>&1 &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if ((SECONDS - last >= 30)); then
			last=$SECONDS
			done_n=$(grep -c '^vtlkit-kst: ' "$channel" 2>/dev/null || true)
			info "... $((SECONDS - start))s: ${done_n:-0}/${#run_list[@]} done, last: $(grep '^vtlkit-kst: ' "$channel" 2>/dev/null | tail -n 1 | cut -d' ' -f2- | tr -d '\r')"
		fi
	done
	rc=0
	wait "$pid" || rc=$?
	elapsed[$name]=$((SECONDS - start))
	tr -d '\r' <"$VTLKIT_RUN_DIR/serial.log" >"$VTLKIT_RUN_DIR/regress-$name-serial.log"
	cp "$VTLKIT_RUN_DIR/dmesg.log" "$VTLKIT_RUN_DIR/regress-$name-dmesg.log" 2>/dev/null || true
	cp "$VTLKIT_RUN_DIR/results.log.txt" "$VTLKIT_RUN_DIR/regress-$name-channel.log" 2>/dev/null ||
		: >"$VTLKIT_RUN_DIR/regress-$name-channel.log"
	sed -n 's/^vtlkit-kst: //p' "$VTLKIT_RUN_DIR/regress-$name-channel.log" >"$VTLKIT_RUN_DIR/regress-$name.results"
	splat[$name]=no
	if grep -q 'error: the kernel log has BUG/WARNING' "$log"; then
		splat[$name]=yes
	fi
	if ! grep -q '^vtlkit-kst-end' "$VTLKIT_RUN_DIR/regress-$name-channel.log"; then
		tail -n 20 "$log" | sed 's/^/    /' >&2
		printf '%svtlkit: error: the %s kernel did not finish the run (boot.sh rc %s); tests without a line count as "lost"%s\n' \
			"$_c_err" "$name" "$rc" "$_c_off" >&2
	fi
	ok "$name: $(wc -l <"$VTLKIT_RUN_DIR/regress-$name.results") results in ${elapsed[$name]}s"
}
run_kernel stock "$stock_kobj/arch/x86/boot/bzImage"
run_kernel patched "$VTLKIT_KOBJ/arch/x86/boot/bzImage"

# 6. The table.
# verdict KERNEL TEST: pass | skip | timeout | fail(RC) | lost | excluded
verdict() {
	local rc
	if [ -n "${excluded[$2]:-}" ]; then
		echo excluded
		return
	fi
	rc=$(awk -v t="$2" '$1 == t { print $2 }' "$VTLKIT_RUN_DIR/regress-$1.results" | tail -n 1)
	case "$rc" in
	"") echo lost ;;
	0) echo pass ;;
	4) echo skip ;;
	124 | 137 | 143) echo timeout ;;
	*) echo "fail($rc)" ;;
	esac
}
# cell KERNEL TEST VERDICT: the verdict, with the test's run time when it ran
cell() {
	local s
	s=$(awk -v t="$2" '$1 == t { print $3 }' "$VTLKIT_RUN_DIR/regress-$1.results" | tail -n 1)
	echo "$3${s:+ ${s}s}"
}

table=$VTLKIT_RUN_DIR/regress.txt
regressions=()
declare -A count=()
# tally KERNEL VERDICT: count it (fail(RC) as fail)
tally() {
	local key="$1 ${2%%(*}"
	count[$key]=$((${count[$key]:-0} + 1))
}
{
	printf '%-48s | %-14s | %-14s\n' test stock patched
	printf '%s\n' "$(printf '%.0s-' {1..48})-+-$(printf '%.0s-' {1..14})-+-$(printf '%.0s-' {1..14})"
	for t in "${tests[@]}"; do
		s=$(verdict stock "$t")
		p=$(verdict patched "$t")
		tally stock "$s"
		tally patched "$p"
		mark=""
		if [ "$s" = pass ] && [ "$p" != pass ]; then
			mark="  <-- REGRESSION"
			regressions+=("$t")
		elif [ "$s" != "$p" ]; then
			mark="  (differs)"
		fi
		printf '%-48s | %-14s | %-14s%s\n' "$t" "$(cell stock "$t" "$s")" "$(cell patched "$t" "$p")" "$mark"
	done
	echo
	for k in stock patched; do
		printf '%-8s pass %d, fail %d, skip %d, timeout %d, lost %d, excluded %d; run %ds; kernel log reports: %s\n' \
			"$k:" "${count[$k pass]:-0}" "${count[$k fail]:-0}" "${count[$k skip]:-0}" "${count[$k timeout]:-0}" \
			"${count[$k lost]:-0}" "${count[$k excluded]:-0}" "${elapsed[$k]}" "${splat[$k]}"
	done
	for t in "${!excluded[@]}"; do
		printf 'excluded: %s: %s\n' "$t" "${excluded[$t]}"
	done
	for t in "${run_list[@]}"; do
		[ -z "${kst_args[$t]:-}" ] || printf 'run with arguments: %s %s\n' "$t" "${kst_args[$t]}"
	done
	printf 'per-test timeout %ss; total wall time %ds (builds included)\n' "$per_test" "$((SECONDS - wall_start))"
} >"$table"
step "KVM selftests: stock vs patched (saved to $table)"
cat "$table"

[ "${splat[patched]}" = no ] ||
	die "regress: the patched kernel's log has BUG/WARNING/KASAN/UBSAN/lockdep reports ($VTLKIT_RUN_DIR/regress-patched-dmesg.log)"
[ ${#regressions[@]} -eq 0 ] ||
	die "regress: ${#regressions[@]} test(s) pass on stock but not on patched: ${regressions[*]}"
ok "no regressions: every test that passes on stock passes on patched"
