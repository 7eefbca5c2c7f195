#!/usr/bin/env bash
# Build the QEMU the guest boots in: Debian 12's QEMU 7.2 (its source from Debian's archive)
# with qemu-patches/ applied, into $VTLKIT_QEMU_DIR (build/qemu/bin/qemu-system-x86_64; its
# firmware is that of Debian's qemu-system-data and seabios packages). Done once, about 6
# minutes on 2 cores; later runs find it and return at once (a change to qemu-patches/
# rebuilds it). scripts/boot.sh boots this QEMU when it exists.
#
# Why not Debian's qemu-system-x86: under TCG it delivers an interrupt that KVM injects into a
# nested guest twice whenever an exit request comes in right after the VMRUN (qemu-patches/0002;
# 7.2 and 10.0.2 alike), which made the selftests' exact interrupt counts fail by chance.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

qemu_bin=$VTLKIT_QEMU_DIR/bin/qemu-system-x86_64
patches=("$VTLKIT_ROOT"/qemu-patches/*.patch)
[ -f "${patches[0]}" ] || die "building QEMU: no patches in $VTLKIT_ROOT/qemu-patches"
configure_args=(
	--target-list=x86_64-softmmu --disable-docs --disable-werror --disable-install-blobs
	--disable-gtk --disable-sdl --disable-vnc --disable-opengl --disable-spice --disable-curses
	--disable-gnutls --disable-nettle --disable-gcrypt --disable-capstone --disable-xen
	--disable-virglrenderer --disable-libusb --disable-usb-redir --disable-linux-io-uring
	--disable-fuse --disable-slirp
)
want=$({
	echo "$VTLKIT_QEMU_SRC_SHA256"
	cat "${patches[@]}"
	echo "${configure_args[*]}"
} | sha256sum | cut -c1-16)
if [ -x "$qemu_bin" ] && [ "$(cat "$VTLKIT_QEMU_DIR/.vtlkit-stamp" 2>/dev/null)" = "$want" ]; then
	step "QEMU: $qemu_bin (7.2 + ${#patches[@]} patches from qemu-patches/, cached)"
	exit 0
fi

need_space "$VTLKIT_BUILD_DIR" 2 "building QEMU"
tarball=$VTLKIT_BUILD_DIR/$(basename "$VTLKIT_QEMU_SRC_URL")
have_sha=$(sha256sum "$tarball" 2>/dev/null | cut -d' ' -f1 || true)
if [ "$have_sha" != "$VTLKIT_QEMU_SRC_SHA256" ]; then
	step "building QEMU: downloading $VTLKIT_QEMU_SRC_URL"
	command -v curl >/dev/null || die "building QEMU: curl missing (run scripts/setup-deps.sh)"
	curl -fsSL --retry 3 -o "$tarball.tmp" "$VTLKIT_QEMU_SRC_URL" ||
		die "building QEMU: could not download $VTLKIT_QEMU_SRC_URL (Debian's archive; is deb.debian.org reachable?)"
	have_sha=$(sha256sum "$tarball.tmp" | cut -d' ' -f1)
	[ "$have_sha" = "$VTLKIT_QEMU_SRC_SHA256" ] ||
		die "building QEMU: $VTLKIT_QEMU_SRC_URL has SHA-256 $have_sha, not the pinned $VTLKIT_QEMU_SRC_SHA256 (VTLKIT_QEMU_SRC_SHA256 in scripts/lib.sh)"
	mv "$tarball.tmp" "$tarball"
fi

src=$VTLKIT_BUILD_DIR/qemu-src
step "building QEMU: unpacking, applying ${#patches[@]} patches from qemu-patches/"
rm -rf "$src"
mkdir -p "$src"
run_logged "$VTLKIT_BUILD_DIR/logs/qemu-unpack.log" tar -xJf "$tarball" -C "$src" --strip-components=1
for p in "${patches[@]}"; do
	patch -d "$src" -p1 --batch --forward <"$p" >>"$VTLKIT_BUILD_DIR/logs/qemu-unpack.log" 2>&1 ||
		die "building QEMU: $(basename "$p") does not apply to $(basename "$tarball") (log: $VTLKIT_BUILD_DIR/logs/qemu-unpack.log)"
done

step "building QEMU: configure + ninja qemu-system-x86_64 (-j$VTLKIT_JOBS; about 6 min on 2 cores)"
start=$SECONDS
mkdir -p "$src/build"
(cd "$src/build" && run_logged "$VTLKIT_BUILD_DIR/logs/qemu-configure.log" ../configure "${configure_args[@]}")
run_logged "$VTLKIT_BUILD_DIR/logs/qemu-build.log" ninja -C "$src/build" -j"$VTLKIT_JOBS" qemu-system-x86_64

rm -rf "$VTLKIT_QEMU_DIR"
mkdir -p "$VTLKIT_QEMU_DIR/bin" "$VTLKIT_QEMU_DIR/share"
cp "$src/build/qemu-system-x86_64" "$qemu_bin"
# boot.sh passes PREFIX/share/{qemu,seabios} with -L: the firmware of Debian's packages.
ln -s /usr/share/qemu "$VTLKIT_QEMU_DIR/share/qemu"
ln -s /usr/share/seabios "$VTLKIT_QEMU_DIR/share/seabios"
"$qemu_bin" --version >/dev/null || die "building QEMU: the built $qemu_bin does not run"
echo "$want" >"$VTLKIT_QEMU_DIR/.vtlkit-stamp"
rm -rf "$src"
ok "QEMU: $qemu_bin ($("$qemu_bin" --version | head -n 1 | sed 's/QEMU emulator version //'), $((SECONDS - start))s)"
