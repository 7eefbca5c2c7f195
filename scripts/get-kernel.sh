#!/usr/bin/env bash
# Unpack the pinned Debian kernel source into $VTLKIT_BUILD_DIR/linux and record it as the git
# commit tagged "pristine". Done once; later runs find the tag and return at once.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

pin=$VTLKIT_KERNEL_PKG_VERSION
if git -C "$VTLKIT_SRC" rev-parse -q --verify refs/tags/pristine >/dev/null 2>&1; then
	have=$(pristine_version)
	step "kernel source: $VTLKIT_SRC (pristine $VTLKIT_KERNEL_PKG ${have:-unknown version}, cached)"
	[ "$have" = "$pin" ] ||
		warn_loud "the kernel source is $VTLKIT_KERNEL_PKG ${have:-of unknown version}, not the pinned $pin"
	exit 0
fi

[ -f "$VTLKIT_KERNEL_TARBALL" ] ||
	die "fetching source: $VTLKIT_KERNEL_TARBALL not found; run scripts/setup-deps.sh (installs $VTLKIT_KERNEL_PKG)"
have=$(kernel_pkg_installed)
[[ "$have" == 6.12.* ]] ||
	die "fetching source: $VTLKIT_KERNEL_PKG is '${have:-not installed}', not a 6.12.y; run scripts/setup-deps.sh (the pin is $pin)"
if [ "$have" != "$pin" ]; then
	warn_loud "unpacking $VTLKIT_KERNEL_PKG $have, not the pinned $pin (no longer offered by apt);" \
		"the series was written against $pin: apply-series.sh will say if it does not apply."
fi

# The tree (1.5 GiB), its git import (0.6 GiB) and the kernel and Rust builds that follow.
need_space "$VTLKIT_BUILD_DIR" 5 "fetching source"
step "fetching source: unpacking $VTLKIT_KERNEL_TARBALL ($have)"
rm -rf "$VTLKIT_SRC" "$VTLKIT_SRC.tmp"
mkdir -p "$VTLKIT_SRC.tmp"
run_logged "$VTLKIT_BUILD_DIR/logs/unpack.log" \
	tar -xJf "$VTLKIT_KERNEL_TARBALL" -C "$VTLKIT_SRC.tmp" --strip-components=1
[ -f "$VTLKIT_SRC.tmp/Makefile" ] || die "fetching source: tarball did not contain a kernel tree"

step "fetching source: recording the pristine tree as a git commit (once, about a minute)"
(
	cd "$VTLKIT_SRC.tmp"
	git init -q -b vtlkit
	git config user.name "vtlkit developers"
	git config user.email "devel@vtlkit.invalid"
	git config core.autocrlf false
	git config gc.auto 0
	# -f: Debian's top-level .gitignore ignores "/*"; we build out of tree, so take it all.
	git add -A -f .
	GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z" \
		git commit -q -m "Debian $VTLKIT_KERNEL_PKG $have (pristine)"
	git tag pristine
) >"$VTLKIT_BUILD_DIR/logs/git-import.log" 2>&1 || die "fetching source: git import failed (see $VTLKIT_BUILD_DIR/logs/git-import.log)"
mv "$VTLKIT_SRC.tmp" "$VTLKIT_SRC"
ok "pristine tree at $VTLKIT_SRC ($(head -n 5 "$VTLKIT_SRC/Makefile" | awk '/^(VERSION|PATCHLEVEL|SUBLEVEL)/{printf "%s ", $3}'))"
