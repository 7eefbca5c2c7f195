#!/usr/bin/env bash
# Host-side test of how the pipeline gets its kernel source and toolchain, with apt, dpkg and
# the Rust tools replaced by stubs (nothing is installed, nothing touches the network):
#   setup-deps.sh  installs the pinned linux-source-6.12 while apt offers it; once the
#                  security suite has dropped it, takes the 6.12.y apt offers (or the one
#                  installed) with a loud warning; fails clearly when there is no 6.12.y;
#                  checks cargo/rustc against the workspace's rust-version.
#   get-kernel.sh  imports a non-pinned 6.12.y with a warning and records its version.
#   apply-series.sh  on such a tree: a series that applies is fine; one that does not names
#                  the version it was applied to and the pin.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
pin=$VTLKIT_KERNEL_PKG_VERSION
newer=6.12.130-1~deb12u1
other=6.12.125-1~deb12u1
stubs=$tmp/stubs
mkdir -p "$stubs"

# dpkg-query -W -f=FMT PKG: every package installed, the kernel source only if $FAKE_INSTALLED.
cat >"$stubs/dpkg-query" <<'STUB'
#!/usr/bin/env bash
fmt= pkg=
for a in "$@"; do case "$a" in -f=*) fmt=${a#-f=} ;; -*) ;; *) pkg=$a ;; esac; done
ver=1.0
if [ "$pkg" = linux-source-6.12 ]; then
	[ -n "${FAKE_INSTALLED:-}" ] || exit 1
	ver=$FAKE_INSTALLED
fi
fmt=${fmt//'${Status}'/install ok installed}
printf '%s' "${fmt//'${Version}'/$ver}"
STUB
# apt-cache madison|policy linux-source-6.12: $FAKE_OFFERED, $FAKE_CANDIDATE.
cat >"$stubs/apt-cache" <<'STUB'
#!/usr/bin/env bash
case "$1" in
madison)
	for v in ${FAKE_OFFERED:-}; do
		printf ' %s | %s | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n' "$2" "$v"
	done ;;
policy) printf '%s:\n  Installed: %s\n  Candidate: %s\n' "$2" "${FAKE_INSTALLED:-(none)}" "${FAKE_CANDIDATE:-(none)}" ;;
esac
STUB
cat >"$stubs/apt-get" <<'STUB'
#!/usr/bin/env bash
echo "apt-get $*" >>"$FAKE_LOG"
STUB
printf '#!/bin/sh\necho 0\n' >"$stubs/id"
for t in cargo rustc; do
	printf '#!/bin/sh\necho "%s ${FAKE_RUST:-1.95.0} (stub)"\n' "$t" >"$stubs/$t"
done
chmod +x "$stubs"/*

# run NAME WANT_RC REGEX... -- SCRIPT: run with the stubs; each REGEX must match its output
# (a leading ! : must not match).
run() {
	local name=$1 want=$2 rc=0 out re
	shift 2
	local res=()
	while [ "$1" != -- ]; do res+=("$1"); shift; done
	shift
	: >"$FAKE_LOG"
	out=$(PATH=$stubs:$PATH "$@" 2>&1) || rc=$?
	out+=$'\n'$(cat "$FAKE_LOG")
	if [ "$rc" != "$want" ] && { [ "$want" != nonzero ] || [ "$rc" = 0 ]; }; then
		echo "not ok - $name: exit $rc, expected $want"
		sed 's/^/    /' <<<"$out"
		fail=1
		return
	fi
	for re in "${res[@]}"; do
		if [[ "$re" == '!'* ]]; then
			! grep -qE -- "${re#!}" <<<"$out" && continue
		else
			grep -qE -- "$re" <<<"$out" && continue
		fi
		echo "not ok - $name: output does not satisfy /$re/:"
		sed 's/^/    /' <<<"$out"
		fail=1
		return
	done
	echo "ok - $name"
}
export FAKE_LOG=$tmp/apt.log FAKE_INSTALLED FAKE_OFFERED FAKE_CANDIDATE FAKE_RUST
deps=$VTLKIT_ROOT/scripts/setup-deps.sh
esc() { sed 's/[.~]/\\&/g' <<<"$1"; }

FAKE_INSTALLED=$pin FAKE_OFFERED="$newer" FAKE_CANDIDATE=$newer
run "pin installed: nothing to do, no apt, no warning" 0 "packages present \($VTLKIT_KERNEL_PKG $(esc "$pin")\)" \
	'!apt-get' '!WARNING' -- "$deps"

FAKE_INSTALLED='' FAKE_OFFERED="$newer $pin" FAKE_CANDIDATE=$newer
run "pin offered: the pin is installed, not the newer candidate" 0 \
	"apt-get install .*$VTLKIT_KERNEL_PKG=$(esc "$pin")( |$)" '!WARNING' -- "$deps"

FAKE_INSTALLED=$other FAKE_OFFERED="$pin $newer" FAKE_CANDIDATE=$newer
run "another 6.12.y installed, pin offered: the pin replaces it" 0 \
	"apt-get install .*$VTLKIT_KERNEL_PKG=$(esc "$pin")( |$)" -- "$deps"

FAKE_INSTALLED='' FAKE_OFFERED="$newer" FAKE_CANDIDATE=$newer
run "pin gone: the offered 6.12.y is installed, loudly" 0 \
	"apt-get install .*$VTLKIT_KERNEL_PKG=$(esc "$newer")( |$)" \
	"WARNING: the pinned $VTLKIT_KERNEL_PKG $(esc "$pin") is no longer offered" \
	"WARNING: .*using $(esc "$newer") instead" "VTLKIT_KERNEL_PKG_VERSION" -- "$deps"

FAKE_INSTALLED=$other FAKE_OFFERED="$newer" FAKE_CANDIDATE=$newer
run "pin gone, another 6.12.y installed: that one is used, loudly" 0 \
	"WARNING: .*using $(esc "$other") instead \(installed\)" "!apt-get install" -- "$deps"

FAKE_INSTALLED='' FAKE_OFFERED='' FAKE_CANDIDATE=''
run "no 6.12.y offered at all: a clear error" 1 \
	"vtlkit: error: kernel source: apt offers no $VTLKIT_KERNEL_PKG .*bookworm-security" "!apt-get install" -- "$deps"

FAKE_INSTALLED=$pin FAKE_RUST=1.70.0
run "cargo/rustc too old: named, with what to install" 1 \
	"Rust toolchain: cargo 1\.70\.0 is too old: the workspace needs 1\.[0-9]+ or newer" "rustup" -- "$deps"
FAKE_RUST=1.95.0
nocargo=$tmp/nocargo
mkdir -p "$nocargo"
cp "$stubs"/{dpkg-query,apt-cache,apt-get,id,rustc} "$nocargo/"
path_wo_cargo=$nocargo
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do [ -x "$d/cargo" ] || path_wo_cargo+=":$d"; done
if PATH=$path_wo_cargo command -v bash sed awk sort >/dev/null; then
	run "cargo missing: named, with what to install" 1 "Rust toolchain: cargo not found; install Rust .* rustup" \
		-- env PATH="$path_wo_cargo" "$deps"
else
	echo "ok - cargo missing # SKIP cargo shares a directory with the shell tools"
fi

# get-kernel.sh and apply-series.sh on a fake tarball of a non-pinned 6.12.y.
export VTLKIT_BUILD_DIR=$tmp/build VTLKIT_KERNEL_TARBALL=$tmp/linux-source-6.12.tar.xz
mkdir -p "$tmp/src/linux-source-6.12"
printf 'VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 130\n# fake kernel tree\n' >"$tmp/src/linux-source-6.12/Makefile"
tar -cJf "$VTLKIT_KERNEL_TARBALL" -C "$tmp/src" linux-source-6.12
FAKE_INSTALLED=$newer
run "get-kernel: a non-pinned 6.12.y is imported loudly, its version recorded" 0 \
	"WARNING: unpacking $VTLKIT_KERNEL_PKG $(esc "$newer"), not the pinned $(esc "$pin")" -- \
	"$VTLKIT_ROOT/scripts/get-kernel.sh"
run "get-kernel (cached): says which version it has, loudly" 0 \
	"pristine $VTLKIT_KERNEL_PKG $(esc "$newer"), cached" "WARNING: the kernel source is .*$(esc "$newer"), not the pinned" -- \
	"$VTLKIT_ROOT/scripts/get-kernel.sh"
FAKE_INSTALLED=fake-9
rm -rf "$tmp/build"
run "get-kernel: an installed package that is not 6.12.y is refused" 1 "is 'fake-9', not a 6.12.y" -- \
	"$VTLKIT_ROOT/scripts/get-kernel.sh"
FAKE_INSTALLED=$newer
# A full disk is named before tar runs (CI once failed halfway through tar with ENOSPC).
fulldisk=$tmp/fulldisk
mkdir -p "$fulldisk"
printf '#!/bin/sh\necho "Filesystem 1024-blocks Used Available Capacity Mounted on"\necho "/dev/vda 264000000 263400000 600000 100%% /"\n' >"$fulldisk/df"
chmod +x "$fulldisk/df"
run "get-kernel: a full disk is named before unpacking, with the space it needs" 1 \
	"fetching source: only 585 MiB free on / .*needs about 5 GiB" "!==> fetching source: unpacking" -- \
	env PATH="$fulldisk:$stubs:$PATH" "$VTLKIT_ROOT/scripts/get-kernel.sh"
[ ! -e "$tmp/build/linux.tmp" ] || {
	echo "not ok - get-kernel on a full disk left $tmp/build/linux.tmp behind"
	fail=1
}
PATH=$stubs:$PATH "$VTLKIT_ROOT/scripts/get-kernel.sh" >/dev/null 2>&1

# A series that applies to it, and one that does not.
git clone -q "$tmp/build/linux" "$tmp/work"
sed -i 's/^# fake kernel tree$/# patched fake kernel tree/' "$tmp/work/Makefile"
git -C "$tmp/work" -c user.name=t -c user.email=t@t.invalid commit -q -am "fake: a patch that applies"
mkdir -p "$tmp/good" "$tmp/bad"
git -C "$tmp/work" format-patch -q -o "$tmp/good" -1
basename "$tmp/good"/*.patch >"$tmp/good/series"
sed 's/^-# fake kernel tree$/-# a line that is not there/' "$tmp/good"/*.patch >"$tmp/bad/0001-bad.patch"
echo 0001-bad.patch >"$tmp/bad/series"
run "apply-series: a series that applies to the non-pinned 6.12.y is fine" 0 "all 1 patches apply" -- \
	env VTLKIT_SERIES_DIR="$tmp/good" "$VTLKIT_ROOT/scripts/apply-series.sh" --check
run "apply-series: one that does not names the version and the pin" 1 \
	"does not apply to $VTLKIT_KERNEL_PKG $(esc "$newer")" "not the pinned $(esc "$pin")" -- \
	env VTLKIT_SERIES_DIR="$tmp/bad" "$VTLKIT_ROOT/scripts/apply-series.sh" --check
exit "$fail"
