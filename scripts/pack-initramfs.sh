#!/usr/bin/env bash
# Pack the guest initramfs: busybox-static, /init, and the static Rust binaries.
#
# Usage: pack-initramfs.sh [--out FILE] [--extra DIR]
#   --out FILE   write FILE instead of build/initramfs.cpio (staged in FILE without .cpio)
#   --extra DIR  also copy DIR's contents into the image's root (e.g. more test binaries)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

out=$VTLKIT_BUILD_DIR/initramfs.cpio
extra=""
while [ $# -gt 0 ]; do
	case "$1" in
	--out)
		[ $# -ge 2 ] || die "packing initramfs: --out needs a file"
		out=$2
		shift 2
		;;
	--extra)
		[ $# -ge 2 ] && [ -d "$2" ] || die "packing initramfs: --extra needs a directory"
		extra=$2
		shift 2
		;;
	*) die "packing initramfs: unknown argument '$1' (usage: pack-initramfs.sh [--out FILE] [--extra DIR])" ;;
	esac
done
bins=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release
busybox=/bin/busybox
[ -x "$busybox" ] || die "packing initramfs: $busybox not found (apt-get install busybox-static)"
ldd "$busybox" >/dev/null 2>&1 && die "packing initramfs: $busybox is dynamically linked; install busybox-static"
for b in vtlkit-selftests vtlctl; do
	[ -x "$bins/$b" ] || die "packing initramfs: $bins/$b missing; run scripts/build-guest.sh"
done

step "packing initramfs"
stage=${out%.cpio}
[ "$stage" != "$out" ] || stage=$out.d
rm -rf "$stage"
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,root}
cp "$busybox" "$stage/bin/busybox"
cp "$VTLKIT_ROOT/scripts/guest-init.sh" "$stage/init"
cp "$bins/vtlkit-selftests" "$bins/vtlctl" "$stage/bin/"
# Users for tests that need an unprivileged process (su nobody).
mkdir -p "$stage/etc"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
mkdir -p "$stage/scripts"
cp "$VTLKIT_ROOT"/scripts/guest/*.sh "$stage/scripts/"
chmod 755 "$stage/init" "$stage/bin/"*
[ -z "$extra" ] || cp -a "$extra/." "$stage/"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$out.tmp" ||
	die "packing initramfs: cpio failed"
mv "$out.tmp" "$out"
ok "$out ($(du -h "$out" | cut -f1))"
