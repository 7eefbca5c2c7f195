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

# The one pinned kernel source: Debian's linux-source-6.12 package, this exact version.
VTLKIT_KERNEL_PKG=linux-source-6.12
VTLKIT_KERNEL_PKG_VERSION=6.12.117-1~deb12u1
VTLKIT_KERNEL_TARBALL=/usr/src/linux-source-6.12.tar.xz

VTLKIT_BUILD_DIR=${VTLKIT_BUILD_DIR:-$VTLKIT_ROOT/build}
VTLKIT_SERIES_DIR=${VTLKIT_SERIES_DIR:-$VTLKIT_ROOT/kernel-patches}
VTLKIT_CONFIG_DIR=$VTLKIT_ROOT/kernel-patches/config
VTLKIT_SRC=$VTLKIT_BUILD_DIR/linux          # git repo: commit "pristine" + the series
VTLKIT_KOBJ=$VTLKIT_BUILD_DIR/kobj          # O= build directory (default config)
VTLKIT_HDR=$VTLKIT_BUILD_DIR/headers        # make headers_install output
VTLKIT_RUN_DIR=$VTLKIT_BUILD_DIR/run        # serial logs, guest results
VTLKIT_JOBS=${VTLKIT_JOBS:-$(nproc)}
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

# series_patches: print the patch file names in series order.
series_patches() {
	local series=$VTLKIT_SERIES_DIR/series line
	[ -f "$series" ] || die "no series file at $series"
	while IFS= read -r line || [ -n "$line" ]; do
		line=${line%%#*}
		line=$(echo "$line" | tr -d '[:space:]')
		[ -n "$line" ] && echo "$line"
	done <"$series"
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
