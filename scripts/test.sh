#!/usr/bin/env bash
# The whole test suite: host-side checks and tests, then the in-guest selftests on the patched
# kernel. `.ci/run` calls exactly this.
#
#   scripts/test.sh
#
# Host side: shellcheck, rustfmt, clippy (-D warnings), cargo test (unit tests of every crate), the
# pipeline's own tests (scripts/tests/record-debugfs.sh, kernel-source.sh, series-errors.sh,
# kernel-log-scan.sh, qemu-choice.sh and qemu-build.sh before the build, scripts/tests/boot-failures.sh after it), checkpatch
# --strict on every patch, and the uapi/ drift check (inside the kernel build). Guest side: scripts/run.sh,
# then the protect_* and vsm_intercept_* tests once more under shadow paging (kvm_amd.npt=0, logs in build/run-shadow).
# Ends with one line "total: N passed, N failed, N skipped"; exits non-zero on any failure.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

cd "$VTLKIT_ROOT"
passed=0 failed=0 skipped=0 failures=()
record() { # name, rc
	if [ "$2" = 0 ]; then
		passed=$((passed + 1))
		ok "PASS $1"
	else
		failed=$((failed + 1))
		failures+=("$1")
		printf '%s    FAIL %s%s\n' "$_c_err" "$1" "$_c_off"
	fi
}
check() { # name, command...
	local name=$1 rc=0
	shift
	step "host check: $name"
	"$@" || rc=$?
	record "$name" "$rc"
}

"$VTLKIT_ROOT/scripts/setup-deps.sh"
"$VTLKIT_ROOT/scripts/get-kernel.sh"

check "shellcheck scripts" shellcheck -S warning scripts/*.sh scripts/tests/*.sh .ci/run
check "yamllint (CI workflow)" yamllint -s .github/workflows
check "rustfmt" cargo fmt --all -- --check
check "clippy -D warnings" cargo clippy --workspace --all-targets --quiet -- -D warnings

step "host check: cargo test (unit tests)"
log=$VTLKIT_BUILD_DIR/logs/cargo-test.log
mkdir -p "$(dirname "$log")"
rc=0
cargo test --workspace 2>&1 | tee "$log" | grep -E '^(test |running|test result|error|failures)' || rc=${PIPESTATUS[0]}
# Count cargo's own results into the total.
while read -r p f i; do
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + i))
done < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log")
if [ "$rc" != 0 ]; then
	failed=$((failed + 1))
	failures+=("cargo test")
	printf '%s    FAIL cargo test (log: %s)%s\n' "$_c_err" "$log" "$_c_off"
fi

check "record-debugfs (the recorder stores comm, vtlctl reads it back)" scripts/tests/record-debugfs.sh
check "kernel-source (pinned linux-source-6.12 or the offered 6.12.y; Rust version)" scripts/tests/kernel-source.sh
check "series-errors (broken or missing patch is named)" scripts/tests/series-errors.sh
check "kernel-log-scan (reports in kernel lines fail, test output does not)" scripts/tests/kernel-log-scan.sh
check "qemu-choice (the built QEMU or VTLKIT_QEMU, its firmware, its version, VTLKIT_TCG_THREAD, VTLKIT_ICOUNT)" scripts/tests/qemu-choice.sh
check "qemu-build (pinned checksums, Debian's and our patches named when they fail, a dropped revision)" scripts/tests/qemu-build.sh
check "checkpatch --strict on kernel-patches" "$VTLKIT_ROOT/scripts/checkpatch.sh"

step "in-guest suite: scripts/run.sh"
guest_log=$VTLKIT_BUILD_DIR/logs/guest-suite.log
rc=0
"$VTLKIT_ROOT/scripts/run.sh" 2>&1 | tee "$guest_log" || rc=${PIPESTATUS[0]}
summary=$(sed 's/\r$//' "$guest_log" | grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' | tail -n 1 || true)
if [ -n "$summary" ]; then
	read -r gp gf gs < <(sed 's/^\([0-9]*\) passed, \([0-9]*\) failed, *\([0-9]*\).*/\1 \2 \3/' <<<"$summary")
	passed=$((passed + gp)) failed=$((failed + gf)) skipped=$((skipped + ${gs:-0}))
fi
if [ "$rc" != 0 ]; then
	# rc 4 (everything skipped) is a failure here: the suite proved nothing.
	failures+=("in-guest suite (exit status $rc)")
	[ -n "$summary" ] && [ "$gf" != 0 ] || failed=$((failed + 1))
fi

# The VTL protection tests (and the secure-intercept tests built on them) again, under shadow
# paging: the MMU paths differ (guest page tables shadowed, GVAs in the fault exits). Same kernel and initramfs, their own logs (run-shadow/);
# vtlkit.paging=shadow makes the tests fail if the vendor module still uses TDP.
if [ -f "$VTLKIT_BUILD_DIR/initramfs.cpio" ] && [ -n "$summary" ]; then
	step "in-guest suite under shadow paging: boot.sh 'protect_*' 'vsm_intercept_*' (kvm_amd.npt=0 kvm_intel.ept=0)"
	shadow_log=$VTLKIT_BUILD_DIR/logs/guest-suite-shadow.log
	rc=0
	VTLKIT_RUN_DIR=$VTLKIT_BUILD_DIR/run-shadow \
		VTLKIT_KARGS="${VTLKIT_KARGS:+$VTLKIT_KARGS }kvm_amd.npt=0 kvm_intel.ept=0 vtlkit.paging=shadow" \
		"$VTLKIT_ROOT/scripts/boot.sh" 'protect_*' 'vsm_intercept_*' 2>&1 | tee "$shadow_log" || rc=${PIPESTATUS[0]}
	summary=$(sed 's/\r$//' "$shadow_log" | grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' | tail -n 1 || true)
	gf=0
	if [ -n "$summary" ]; then
		read -r gp gf gs < <(sed 's/^\([0-9]*\) passed, \([0-9]*\) failed, *\([0-9]*\).*/\1 \2 \3/' <<<"$summary")
		passed=$((passed + gp)) failed=$((failed + gf)) skipped=$((skipped + ${gs:-0}))
	fi
	if [ "$rc" != 0 ]; then
		failures+=("in-guest suite under shadow paging (exit status $rc)")
		[ -n "$summary" ] && [ "$gf" != 0 ] || failed=$((failed + 1))
	fi
fi

if [ -f "$VTLKIT_BUILD_DIR/initramfs.cpio" ]; then
	check "boot-failures (guest status, kernel-log scan)" scripts/tests/boot-failures.sh
fi

echo
if [ ${#failures[@]} -gt 0 ]; then
	printf '%svtlkit: failed: %s%s\n' "$_c_err" "$(printf '%s; ' "${failures[@]}")" "$_c_off"
fi
echo "total: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ] && [ ${#failures[@]} = 0 ]
