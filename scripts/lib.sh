# shellcheck shell=bash
# Common settings and helpers for the vtlkit pipeline. Sourced by every script.
# shellcheck disable=SC2034 # the settings are used by the scripts that source this file
#
# Everything a user may want to move is an environment variable:
#   VTLKIT_BUILD_DIR   where kernel trees, build output and images go (default: <repo>/build)
#   VTLKIT_CARGO_TARGET_DIR  cargo's target dir (default: <repo>/target)
#   VTLKIT_ACCEL       kvm | tcg | auto (default auto: real KVM only when it works)
#   VTLKIT_TIMEOUT     hard limit in seconds for one guest boot (default 900)
#   VTLKIT_SERIES_DIR  directory holding the series file and patches (default: kernel-patches)
#   VTLKIT_JOBS        make -j (default: nproc)

set -o errexit -o nounset -o pipefail

VTLKIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The pinned kernel source: Debian's linux-source-6.12 package, this exact version. It comes
# from Debian's security suite, which drops it when a newer 6.12.y ships: then setup-deps.sh
# takes the 6.12.y that apt offers, with a warning (pick_kernel_pkg_version), and
# apply-series.sh says so if the series does not apply to it.
VTLKIT_KERNEL_PKG=linux-source-6.12
VTLKIT_KERNEL_PKG_VERSION=6.12.117-1~deb12u1
VTLKIT_KERNEL_TARBALL=${VTLKIT_KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}

VTLKIT_BUILD_DIR=${VTLKIT_BUILD_DIR:-$VTLKIT_ROOT/build}
VTLKIT_SERIES_DIR=${VTLKIT_SERIES_DIR:-$VTLKIT_ROOT/kernel-patches}
VTLKIT_CONFIG_DIR=$VTLKIT_ROOT/kernel-patches/config
VTLKIT_SRC=$VTLKIT_BUILD_DIR/linux          # git repo: commit "pristine" + the series
VTLKIT_KOBJ=$VTLKIT_BUILD_DIR/kobj          # O= build directory (default config)
VTLKIT_HDR=$VTLKIT_BUILD_DIR/headers        # make headers_install output
VTLKIT_RUN_DIR=${VTLKIT_RUN_DIR:-$VTLKIT_BUILD_DIR/run} # serial logs, guest results
VTLKIT_JOBS=${VTLKIT_JOBS:-$(nproc)}
# The QEMU the guest boots in (scripts/build-qemu.sh): the source of Debian 12's qemu-system-x86
# (1:7.2+dfsg-7+deb12u18, QEMU 7.2.22), from Debian's archive, with Debian's patches and then
# qemu-patches/ applied. Both files are pinned by SHA-256.
VTLKIT_QEMU_DIR=$VTLKIT_BUILD_DIR/qemu
VTLKIT_QEMU_POOL=${VTLKIT_QEMU_POOL:-http://deb.debian.org/debian/pool/main/q/qemu}
VTLKIT_QEMU_ORIG=${VTLKIT_QEMU_ORIG:-qemu_7.2+dfsg.orig.tar.xz}
VTLKIT_QEMU_ORIG_SHA256=${VTLKIT_QEMU_ORIG_SHA256:-91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f}
VTLKIT_QEMU_DEBIAN=${VTLKIT_QEMU_DEBIAN:-qemu_7.2+dfsg-7+deb12u18.debian.tar.xz}
VTLKIT_QEMU_DEBIAN_SHA256=${VTLKIT_QEMU_DEBIAN_SHA256:-28a1c86310ee53b6bf1854cffe6f6be6ed29a08db7d05759f8ac57b8d6a6cb2f}
CARGO_TARGET_DIR=${VTLKIT_CARGO_TARGET_DIR:-$VTLKIT_ROOT/target}
export CARGO_TARGET_DIR

# uapi/include holds linux/kvm.h and every header it includes, as exported by
# `make headers_install` (Debian 12's own /usr/include is older than 6.12: no linux/bits.h).
# uapi_closure DIR: print that set of headers, relative to DIR.
uapi_closure() {
	(cd "$1" && echo '#include <linux/kvm.h>' | gcc -M -nostdinc -I. -x c - |
		tr ' \\' '\n\n' | grep -v -e '^$' -e ':$' | sed 's|^\./||' | LC_ALL=C sort -u)
}

if [ -t 1 ]; then
	_c_step=$'\e[1;34m' _c_err=$'\e[1;31m' _c_ok=$'\e[1;32m' _c_off=$'\e[0m'
else
	_c_step='' _c_err='' _c_ok='' _c_off=''
fi

# step "what is happening now"
step() { printf '%s==> %s%s\n' "$_c_step" "$*" "$_c_off"; }
info() { printf '    %s\n' "$*"; }
ok() { printf '%s    %s%s\n' "$_c_ok" "$*" "$_c_off"; }
# die "which step failed and why"
die() {
	printf '%svtlkit: error: %s%s\n' "$_c_err" "$*" "$_c_off" >&2
	exit 1
}

# run_logged LOGFILE CMD...: run CMD with output to LOGFILE, printing a progress dot
# line every few seconds; on failure show the log's tail and die.
run_logged() {
	local log=$1 what
	shift
	what="$*"
	mkdir -p "$(dirname "$log")"
	"$@" >"$log" 2>&1 &
	local pid=$! start=$SECONDS last=0
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if ((SECONDS - last >= 15)); then
			last=$SECONDS
			info "... $((SECONDS - start))s ($(tail -n 1 "$log" | cut -c1-90))"
		fi
	done
	if ! wait "$pid"; then
		printf '%s--- last lines of %s ---%s\n' "$_c_err" "$log" "$_c_off" >&2
		tail -n 40 "$log" >&2
		die "command failed: $what (full log: $log)"
	fi
}

# qemu_version BIN -> "10.0.2": the version a QEMU binary reports (empty if it does not run).
qemu_version() {
	"$1" --version 2>/dev/null | sed -n '1s/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p'
}

# need_space DIR GIB WHAT: die unless the filesystem holding DIR has GIB GiB free. Checked
# before the steps that fill the disk, so a full disk is named as such, not as a tar or
# compiler error halfway through.
need_space() {
	local dir=$1 gib=$2 what=$3 avail mnt
	mkdir -p "$dir" || die "$what: cannot create $dir"
	avail=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
	mnt=$(df -Pk "$dir" | awk 'NR == 2 { print $6 }')
	[ -n "$avail" ] || die "$what: df could not read the free space of $dir"
	[ "$avail" -ge $((gib * 1024 * 1024)) ] ||
		die "$what: only $((avail / 1024)) MiB free on $mnt (for $dir); this step needs about $gib GiB: free some space, or set VTLKIT_BUILD_DIR to a larger filesystem"
}

# series_patches: print the patch file names in series order.
series_patches() {
	local series=$VTLKIT_SERIES_DIR/series line
	[ -f "$series" ] || die "no series file at $series"
	while IFS= read -r line || [ -n "$line" ]; do
		line=${line%%#*}
		line=$(echo "$line" | tr -d '[:space:]')
		# The cover letter is part of the series as sent, but has no diff to apply.
		[ "$line" = 0000-cover-letter.patch ] && continue
		[ -n "$line" ] && echo "$line"
	done <"$series"
}

# warn_loud LINE...: a warning that stands out in a long log (stderr, one marked line each).
warn_loud() {
	local line
	printf '%svtlkit: WARNING: %s%s\n' "$_c_err" "************************************************" "$_c_off" >&2
	for line in "$@"; do
		printf '%svtlkit: WARNING: %s%s\n' "$_c_err" "$line" "$_c_off" >&2
	done
}

# version_ge HAVE WANT: true if version HAVE >= WANT (dotted numbers, e.g. 1.85 or 1.85.0).
version_ge() {
	[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# kernel_pkg_installed: the installed version of $VTLKIT_KERNEL_PKG, or nothing.
kernel_pkg_installed() {
	local have
	have=$(dpkg-query -W -f='${Status} ${Version}' "$VTLKIT_KERNEL_PKG" 2>/dev/null || true)
	case "$have" in "install ok installed "*) echo "${have##* }" ;; esac
}

# pick_kernel_pkg_version: print the $VTLKIT_KERNEL_PKG version to use, from apt's current
# lists (run apt-get update first). The pin when it is installed or apt offers it; else a
# 6.12.y that is already installed, else the one apt would install - both with a loud
# warning; no 6.12.y at all is an error that says where the package comes from.
pick_kernel_pkg_version() {
	local have cand pin=$VTLKIT_KERNEL_PKG_VERSION
	have=$(kernel_pkg_installed)
	if [ "$have" = "$pin" ] ||
		apt-cache madison "$VTLKIT_KERNEL_PKG" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF "$pin"; then
		echo "$pin"
		return 0
	fi
	cand=$have
	if [[ "$cand" != 6.12.* ]]; then
		cand=$(apt-cache policy "$VTLKIT_KERNEL_PKG" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | head -n 1)
	fi
	if [[ "$cand" != 6.12.* ]]; then
		die "kernel source: apt offers no $VTLKIT_KERNEL_PKG (wanted $pin, or any 6.12.y): it comes from Debian 12's security suite; add 'deb http://deb.debian.org/debian-security bookworm-security main' to /etc/apt/sources.list and run apt-get update"
	fi
	warn_loud "the pinned $VTLKIT_KERNEL_PKG $pin is no longer offered by apt" \
		"(Debian's security suite keeps only the newest 6.12.y); using $cand instead${have:+ (installed)}." \
		"The series was written against $pin; if a patch does not apply, rebase the series" \
		"and set VTLKIT_KERNEL_PKG_VERSION in scripts/lib.sh to the new version."
	echo "$cand"
}

# pristine_version: the $VTLKIT_KERNEL_PKG version the pristine tree was imported from
# (get-kernel.sh writes it into the commit subject), or nothing.
pristine_version() {
	git -C "$VTLKIT_SRC" log -1 --format=%s pristine 2>/dev/null |
		sed -n "s/^Debian $VTLKIT_KERNEL_PKG \([^ ]*\) (pristine)\$/\1/p"
}

# check_rust_toolchain: cargo and rustc are there and at least the workspace's rust-version.
check_rust_toolchain() {
	local want tool have edition
	want=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$VTLKIT_ROOT/Cargo.toml" | head -n 1)
	edition=$(sed -n 's/^edition *= *"\([0-9]*\)".*/\1/p' "$VTLKIT_ROOT/Cargo.toml" | head -n 1)
	local how="install Rust $want or newer with rustup (https://rustup.rs), or \`rustup update stable\` if you have it; Debian 12's own rustc/cargo packages are too old"
	for tool in cargo rustc; do
		command -v "$tool" >/dev/null || die "Rust toolchain: $tool not found; $how"
		have=$("$tool" --version 2>/dev/null | awk '{print $2}')
		have=${have%%-*}
		[ -n "$have" ] || die "Rust toolchain: \`$tool --version\` does not say its version; $how"
		version_ge "$have" "$want" ||
			die "Rust toolchain: $tool $have is too old: the workspace needs $want or newer (rust-version in Cargo.toml, edition $edition); $how"
	done
}

# Kernel reports that fail a run: BUG, WARNING, KASAN, UBSAN, lockdep, panics, oopses, hung
# tasks, and any stack dump.
VTLKIT_REPORT_RE='BUG:|WARNING:|KASAN:|UBSAN:|Kernel panic|Oops|general protection fault|INFO: (possible|inconsistent|task .* blocked)|circular locking|Call Trace:'

# kernel_log_lines SERIAL DMESG: the kernel's own log lines from a guest run. DMESG is the
# guest's dmesg (collected on ttyS1): all of it. From the SERIAL console, which also carries
# what the tests print, only what the kernel wrote there: the text from a printk timestamp
# ("[    1.234567] ", printk.time=1) to the end of the line; a kernel line can follow a
# test's line that has no newline yet. Missing files count as empty.
kernel_log_lines() {
	local serial=$1 dmesg=$2
	{
		tr -d '\r' <"$serial" 2>/dev/null | grep -oE '\[ *[0-9]+\.[0-9]+\] .*' || true
		tr -d '\r' <"$dmesg" 2>/dev/null | grep -vxE 'vtlkit-dmesg-(begin|end)' || true
	}
}

# kernel_reports SERIAL DMESG: the kernel reports in a guest run's kernel log lines, each
# once. The kernel's echo of its command line is not a report, whatever words it passes on;
# nor is the stack the OOM killer dumps when a test exhausts the guest's memory (its
# "Call Trace:" three lines after "... invoked oom-killer:"): a resource limit, not a bug.
kernel_reports() {
	kernel_log_lines "$1" "$2" | grep -vE '^(\[ *[0-9]+\.[0-9]+\] )?(Kernel )?[Cc]ommand line: ' |
		awk '/ invoked oom-killer: / { oom = NR } /Call Trace:/ && oom && NR - oom <= 3 { next } { print }' |
		grep -E "$VTLKIT_REPORT_RE" | LC_ALL=C sort -u || true
}

need_root_or_sudo() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root to run: $*"
	fi
}

# lock_build: hold an exclusive lock on the build directory for the rest of this script (and
# its children), so that two runs never build into or boot from the same tree at once.
lock_build() {
	[ -n "${VTLKIT_LOCKED:-}" ] && return 0
	mkdir -p "$VTLKIT_BUILD_DIR"
	exec 9>"$VTLKIT_BUILD_DIR/.lock"
	if ! flock -n 9; then
		step "waiting for another vtlkit run to release $VTLKIT_BUILD_DIR/.lock"
		flock 9
	fi
	export VTLKIT_LOCKED=$$
}

# configure_kernel SRC KOBJ NAME FRAGMENT...: make KOBJ/.config = allnoconfig + the fragments
# (merge_config.sh, then olddefconfig) and check that every option they ask for stuck. Only
# when the fragments changed since the last time (or there is no .config yet): a fresh .config
# would otherwise be the same, but regenerating it costs time and can touch include/config.
# NAME labels the step and the log (logs/config-NAME.log).
configure_kernel() {
	local src=$1 kobj=$2 name=$3 want line
	shift 3
	local log=$VTLKIT_BUILD_DIR/logs/config-$name.log missing=()
	mkdir -p "$kobj" "$VTLKIT_BUILD_DIR/logs"
	want=$(cat "$@" | sha256sum | cut -c1-16)
	if [ -f "$kobj/.config" ] && [ "$(cat "$kobj/.vtlkit-fragments" 2>/dev/null)" = "$want" ]; then
		step "configuring ($name): unchanged"
		return 0
	fi
	step "configuring ($name): allnoconfig + $(basename -a "$@" | tr '\n' ' ')"
	run_logged "$log" make -C "$src" O="$kobj" allnoconfig
	run_logged "$log" "$src/scripts/kconfig/merge_config.sh" -m -O "$kobj" "$kobj/.config" "$@"
	run_logged "$log" make -C "$src" O="$kobj" olddefconfig
	while IFS= read -r line; do
		case "$line" in CONFIG_*=*) ;; *) continue ;; esac
		grep -qxF "$line" "$kobj/.config" || missing+=("$line")
	done < <(cat "$@")
	[ ${#missing[@]} -eq 0 ] || die "configuring: these options did not stick (missing dependency?): ${missing[*]}"
	echo "$want" >"$kobj/.vtlkit-fragments"
}

# build_bzimage SRC KOBJ NAME: build bzImage in KOBJ (incremental), log in logs/build-NAME.log.
build_bzimage() {
	local src=$1 kobj=$2 name=$3 start recompiled
	local log=$VTLKIT_BUILD_DIR/logs/build-$name.log
	step "building bzImage ($name, -j$VTLKIT_JOBS; a cold build takes ~4 min on 2 cores)"
	start=$SECONDS
	run_logged "$log" make -C "$src" O="$kobj" -j"$VTLKIT_JOBS" LOCALVERSION= bzImage
	recompiled=$(grep -c '^  CC ' "$log" || true)
	ok "bzImage: $kobj/arch/x86/boot/bzImage ($((SECONDS - start))s, $recompiled files compiled)"
}

# The unpatched kernel for comparisons (regress.sh, bench.sh): pristine 6.12 in its own worktree.
VTLKIT_STOCK_SRC=$VTLKIT_BUILD_DIR/linux-stock
VTLKIT_STOCK_KOBJ=$VTLKIT_BUILD_DIR/kobj-stock

# build_stock_kernel: check out the `pristine` tag in $VTLKIT_STOCK_SRC (a worktree of
# $VTLKIT_SRC) and build its bzImage in $VTLKIT_STOCK_KOBJ with the same fragments and procedure
# as build-kernel.sh (incremental on reruns).
build_stock_kernel() {
	local want
	want=$(git -C "$VTLKIT_SRC" rev-parse 'pristine^{commit}') ||
		die "stock kernel: no pristine tag in $VTLKIT_SRC; run scripts/get-kernel.sh"
	if [ ! -d "$VTLKIT_STOCK_SRC" ]; then
		step "creating worktree $VTLKIT_STOCK_SRC at pristine"
		git -C "$VTLKIT_SRC" worktree add -q --detach "$VTLKIT_STOCK_SRC" pristine ||
			die "stock kernel: cannot create the worktree $VTLKIT_STOCK_SRC"
	fi
	if [ "$(git -C "$VTLKIT_STOCK_SRC" rev-parse HEAD)" != "$want" ]; then
		git -C "$VTLKIT_STOCK_SRC" checkout -q --detach pristine ||
			die "stock kernel: cannot check out pristine in $VTLKIT_STOCK_SRC"
	fi
	configure_kernel "$VTLKIT_STOCK_SRC" "$VTLKIT_STOCK_KOBJ" stock "$VTLKIT_CONFIG_DIR/vtlkit.config"
	build_bzimage "$VTLKIT_STOCK_SRC" "$VTLKIT_STOCK_KOBJ" stock
}

# build_both_kernels: the patched kernel exactly as the main job builds it (with its exported
# headers in build/headers), and the stock one (build_stock_kernel), for regress.sh and bench.sh.
build_both_kernels() {
	"$VTLKIT_ROOT/scripts/setup-deps.sh"
	"$VTLKIT_ROOT/scripts/get-kernel.sh"
	"$VTLKIT_ROOT/scripts/apply-series.sh"
	"$VTLKIT_ROOT/scripts/build-kernel.sh"
	build_stock_kernel
}
