#!/usr/bin/env bash
# Build the QEMU the guest boots in: the source of Debian 12's qemu-system-x86 (QEMU 7.2.22:
# 7.2 with Debian's patches, all downloaded from Debian's archive and checked against pinned
# SHA-256s) with qemu-patches/ applied on top, into $VTLKIT_QEMU_DIR
# (build/qemu/bin/qemu-system-x86_64, using the firmware of Debian's qemu-system-data and
# seabios packages). Done once, about 6 minutes on 2 cores; later runs find it and return at
# once (a change to qemu-patches/ rebuilds it). scripts/boot.sh boots this QEMU when it exists.
#
# Why not Debian's qemu-system-x86 itself: under TCG it delivers an interrupt that KVM injects
# into a nested guest twice whenever an exit request comes in right after the VMRUN
# (qemu-patches/0001; 10.0.2 too), which made the selftests' exact interrupt counts fail by
# chance (README, issue 12).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

qemu_bin=$VTLKIT_QEMU_DIR/bin/qemu-system-x86_64
patches=("$VTLKIT_ROOT"/qemu-patches/*.patch)
[ -f "${patches[0]}" ] || die "building QEMU: no patches in $VTLKIT_ROOT/qemu-patches"
configure_args=(
	--target-list=x86_64-softmmu --disable-docs --disable-werror
	--disable-gtk --disable-sdl --disable-vnc --disable-opengl --disable-spice --disable-curses
	--disable-gnutls --disable-nettle --disable-gcrypt --disable-capstone --disable-xen
	--disable-virglrenderer --disable-libusb --disable-usb-redir --disable-linux-io-uring
	--disable-fuse --disable-slirp
)
want=$({
	echo "$VTLKIT_QEMU_ORIG_SHA256 $VTLKIT_QEMU_DEBIAN $VTLKIT_QEMU_DEBIAN_SHA256"
	cat "${patches[@]}"
	echo "${configure_args[*]}"
} | sha256sum | cut -c1-16)
if [ -x "$qemu_bin" ] && [ "$(cat "$VTLKIT_QEMU_DIR/.vtlkit-stamp" 2>/dev/null)" = "$want" ]; then
	step "QEMU: $qemu_bin ($(qemu_version "$qemu_bin") + qemu-patches/, cached)"
	exit 0
fi

need_space "$VTLKIT_BUILD_DIR" 2 "building QEMU"

# fetch FILE SHA256: FILE from Debian's pool into the build directory, unless it is there
# with that checksum (an empty SHA256 takes whatever is there or comes). Fails if it cannot.
fetch() {
	local file=$1 sha=$2 have
	local dest=$VTLKIT_BUILD_DIR/$file
	if [ -f "$dest" ]; then
		have=$(sha256sum "$dest" | cut -d' ' -f1)
		if [ -z "$sha" ] || [ "$have" = "$sha" ]; then
			return 0
		fi
	fi
	step "building QEMU: downloading $VTLKIT_QEMU_POOL/$file"
	curl -fsSL --retry 3 -o "$dest.tmp" "$VTLKIT_QEMU_POOL/$file" || return 1
	have=$(sha256sum "$dest.tmp" | cut -d' ' -f1)
	[ -z "$sha" ] || [ "$have" = "$sha" ] ||
		die "building QEMU: $VTLKIT_QEMU_POOL/$file has SHA-256 $have, not the pinned $sha (scripts/lib.sh)"
	mv "$dest.tmp" "$dest"
}
command -v curl >/dev/null || die "building QEMU: curl missing (run scripts/setup-deps.sh)"
fetch "$VTLKIT_QEMU_ORIG" "$VTLKIT_QEMU_ORIG_SHA256" ||
	die "building QEMU: could not download $VTLKIT_QEMU_POOL/$VTLKIT_QEMU_ORIG (Debian's archive; is deb.debian.org reachable?)"
debian=$VTLKIT_QEMU_DEBIAN
if ! fetch "$debian" "$VTLKIT_QEMU_DEBIAN_SHA256"; then
	# Debian's archive keeps only current revisions: take the installed qemu-system-x86's.
	v=$(dpkg-query -W -f='${source:Version}' qemu-system-x86 2>/dev/null || true)
	debian=qemu_${v#*:}.debian.tar.xz
	[ -n "$v" ] && [ "$debian" != "$VTLKIT_QEMU_DEBIAN" ] ||
		die "building QEMU: could not download $VTLKIT_QEMU_POOL/$VTLKIT_QEMU_DEBIAN, and the installed qemu-system-x86 (${v:-none}) names no other revision"
	warn_loud "building QEMU: the pinned $VTLKIT_QEMU_DEBIAN is gone from Debian's archive;" \
		"using $debian, the installed qemu-system-x86's (not checksum-pinned): move the pin in scripts/lib.sh"
	fetch "$debian" "" || die "building QEMU: could not download $VTLKIT_QEMU_POOL/$debian either"
fi

src=$VTLKIT_BUILD_DIR/qemu-src
log=$VTLKIT_BUILD_DIR/logs/qemu-unpack.log
step "building QEMU: unpacking, applying Debian's patches and ${#patches[@]} from qemu-patches/"
rm -rf "$src"
mkdir -p "$src"
run_logged "$log" tar -xJf "$VTLKIT_BUILD_DIR/$VTLKIT_QEMU_ORIG" -C "$src" --strip-components=1
tar -xJf "$VTLKIT_BUILD_DIR/$debian" -C "$src" || die "building QEMU: cannot unpack $debian"
ndeb=0
while IFS= read -r p; do
	case "$p" in '' | '#'*) continue ;; esac
	patch -d "$src" -p1 --batch --forward <"$src/debian/patches/$p" >>"$log" 2>&1 ||
		die "building QEMU: Debian's $p does not apply (log: $log)"
	ndeb=$((ndeb + 1))
done <"$src/debian/patches/series"
for p in "${patches[@]}"; do
	patch -d "$src" -p1 --batch --forward <"$p" >>"$log" 2>&1 ||
		die "building QEMU: $(basename "$p") does not apply to QEMU $(cat "$src/VERSION") from $debian (log: $log)"
done
info "QEMU $(cat "$src/VERSION"): $ndeb patches of Debian's, ${#patches[@]} of ours"

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
ver=$(qemu_version "$qemu_bin")
[ -n "$ver" ] || die "building QEMU: the built $qemu_bin does not run"
echo "$want" >"$VTLKIT_QEMU_DIR/.vtlkit-stamp"
rm -rf "$src"
ok "QEMU: $qemu_bin ($ver, $((SECONDS - start))s)"
