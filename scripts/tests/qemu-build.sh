#!/usr/bin/env bash
# Host-side test of scripts/build-qemu.sh up to the point where it would compile, against a fake
# Debian pool (file:// URLs, nothing downloaded) and stubbed dpkg-query: a checksum that does not
# match the pin is refused naming both; a Debian patch that does not apply is named; when the
# pinned Debian revision is gone from the pool, the installed qemu-system-x86's is used, loudly;
# a tree that qemu-patches/ do not apply to is refused naming our patch and QEMU's version.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
pool=$tmp/pool
mkdir -p "$pool" "$tmp/stubs" "$tmp/src/qemu-7.2/debian/patches"

# A fake upstream tree (no svm_helper.c: qemu-patches/ cannot apply) and a Debian tarball whose
# one patch sets VERSION.
echo 7.2.0 >"$tmp/src/qemu-7.2/VERSION"
tar -cJf "$pool/qemu_7.2+dfsg.orig.tar.xz" -C "$tmp/src" --exclude=debian qemu-7.2
cat >"$tmp/src/qemu-7.2/debian/patches/v7.2.22.diff" <<'EOF'
--- a/VERSION
+++ b/VERSION
@@ -1 +1 @@
-7.2.0
+7.2.22
EOF
printf '# Debian series\nv7.2.22.diff\n' >"$tmp/src/qemu-7.2/debian/patches/series"
tar -cJf "$pool/qemu_7.2+dfsg-7+deb12u99.debian.tar.xz" -C "$tmp/src/qemu-7.2" debian
sed 's/^+7.2.22$/+7.2.23/; s/^-7.2.0$/-7.1.0/' "$tmp/src/qemu-7.2/debian/patches/v7.2.22.diff" \
	>"$tmp/src/qemu-7.2/debian/patches/v7.2.22.diff.bad"
mv "$tmp/src/qemu-7.2/debian/patches/v7.2.22.diff.bad" "$tmp/src/qemu-7.2/debian/patches/v7.2.22.diff"
tar -cJf "$pool/qemu_7.2+dfsg-7+deb12u98.debian.tar.xz" -C "$tmp/src/qemu-7.2" debian
sha() { sha256sum "$pool/$1" | cut -d' ' -f1; }

# dpkg-query -W -f='${source:Version}' qemu-system-x86: $FAKE_QEMU_VERSION.
cat >"$tmp/stubs/dpkg-query" <<'STUB'
#!/usr/bin/env bash
[ -n "${FAKE_QEMU_VERSION:-}" ] || exit 1
printf '%s' "$FAKE_QEMU_VERSION"
STUB
chmod +x "$tmp/stubs/dpkg-query"

# run NAME WANT_RC ENV... -- REGEX...: build-qemu.sh with ENV; each REGEX must match its output
# (a leading ! : must not).
run() {
	local name=$1 want=$2 out rc=0
	shift 2
	local env=()
	while [ "$1" != -- ]; do env+=("$1"); shift; done
	shift
	rm -rf "$tmp/build"
	out=$(env PATH="$tmp/stubs:$PATH" VTLKIT_BUILD_DIR="$tmp/build" VTLKIT_QEMU_POOL="file://$pool" \
		VTLKIT_QEMU_ORIG_SHA256="$(sha qemu_7.2+dfsg.orig.tar.xz)" "${env[@]}" \
		"$VTLKIT_ROOT/scripts/build-qemu.sh" 2>&1) || rc=$?
	verdict "$name" "$want" "$rc" "$out" "$@"
}

good=qemu_7.2+dfsg-7+deb12u99.debian.tar.xz
good_re=${good//+/\\+}
run "a source tarball that does not match its pinned SHA-256 is refused, naming both" 1 \
	VTLKIT_QEMU_ORIG_SHA256=0000 VTLKIT_QEMU_DEBIAN=$good VTLKIT_QEMU_DEBIAN_SHA256="$(sha $good)" -- \
	"error: building QEMU: file://$pool/qemu_7.2\+dfsg.orig.tar.xz has SHA-256 [0-9a-f]{64}, not the pinned 0000"
run "a Debian patch that does not apply is named" 1 \
	VTLKIT_QEMU_DEBIAN=qemu_7.2+dfsg-7+deb12u98.debian.tar.xz \
	VTLKIT_QEMU_DEBIAN_SHA256="$(sha qemu_7.2+dfsg-7+deb12u98.debian.tar.xz)" -- \
	"error: building QEMU: Debian's v7.2.22.diff does not apply"
run "our patch that does not apply is named, with QEMU's version and the Debian revision" 1 \
	VTLKIT_QEMU_DEBIAN=$good VTLKIT_QEMU_DEBIAN_SHA256="$(sha $good)" -- \
	"error: building QEMU: 0001-.*\.patch does not apply to QEMU 7\.2\.22 from $good_re" '!vtlkit: WARNING'
run "the pinned Debian revision gone: the installed qemu-system-x86's, loudly" 1 \
	VTLKIT_QEMU_DEBIAN=qemu_7.2+dfsg-7+deb12u1.debian.tar.xz VTLKIT_QEMU_DEBIAN_SHA256=1111 \
	FAKE_QEMU_VERSION=1:7.2+dfsg-7+deb12u99 -- \
	"WARNING: building QEMU: the pinned qemu_7.2\+dfsg-7\+deb12u1.debian.tar.xz is gone" \
	"using $good_re, the installed qemu-system-x86's" "does not apply to QEMU 7\.2\.22 from $good_re"
run "the pinned Debian revision gone and no other known: a clear error" 1 \
	VTLKIT_QEMU_DEBIAN=qemu_7.2+dfsg-7+deb12u1.debian.tar.xz VTLKIT_QEMU_DEBIAN_SHA256=1111 -- \
	"error: building QEMU: could not download file://$pool/qemu_7.2\+dfsg-7\+deb12u1.debian.tar.xz, and the installed qemu-system-x86 \(none\) names no other revision"
exit "$fail"
