#!/usr/bin/env bash
# Pack the guest initramfs: busybox-static, /init, and the static Rust binaries.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

out=$VTLKIT_BUILD_DIR/initramfs.cpio
bins=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release
busybox=/bin/busybox
[ -x "$busybox" ] || die "packing initramfs: $busybox not found (apt-get install busybox-static)"
ldd "$busybox" >/dev/null 2>&1 && die "packing initramfs: $busybox is dynamically linked; install busybox-static"
for b in vtlkit-selftests vtlctl; do
	[ -x "$bins/$b" ] || die "packing initramfs: $bins/$b missing; run scripts/build-guest.sh"
done

step "packing initramfs"
stage=$VTLKIT_BUILD_DIR/initramfs
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
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$out.tmp" ||
	die "packing initramfs: cpio failed"
mv "$out.tmp" "$out"
ok "$out ($(du -h "$out" | cut -f1))"
