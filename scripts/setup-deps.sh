#!/usr/bin/env bash
# Install what the pipeline needs from Debian (apt-get), including the pinned kernel source.
# Does nothing (and needs no network) when everything is already there.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKGS=(
	qemu-system-x86 busybox-static cpio xz-utils
	build-essential flex bison bc libelf-dev libssl-dev rsync
	libclang-dev clang shellcheck yamllint
	curl patch meson ninja-build pkgconf python3 libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev
)

updated=0
apt_update() {
	[ "$updated" = 1 ] && return 0
	need_root_or_sudo apt-get update -q >/dev/null || die "apt-get update failed"
	updated=1
}

missing=()
for p in "${PKGS[@]}"; do
	have=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[ "$have" = "install ok installed" ] || missing+=("$p")
done

step "checking host packages"
# The kernel source: the pin if it is installed or apt still offers it, else the 6.12.y apt
# offers (pick_kernel_pkg_version warns loudly).
kernel=$VTLKIT_KERNEL_PKG_VERSION
if [ "$(kernel_pkg_installed)" != "$kernel" ]; then
	apt_update
	kernel=$(pick_kernel_pkg_version)
	[ "$(kernel_pkg_installed)" = "$kernel" ] || missing+=("$VTLKIT_KERNEL_PKG=$kernel")
fi

if [ ${#missing[@]} -eq 0 ]; then
	ok "all $((${#PKGS[@]} + 1)) packages present ($VTLKIT_KERNEL_PKG $kernel)"
else
	info "installing: ${missing[*]}"
	apt_update
	if ! need_root_or_sudo env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "${missing[@]}" >"${TMPDIR:-/tmp}/vtlkit-apt.log" 2>&1; then
		tail -n 20 "${TMPDIR:-/tmp}/vtlkit-apt.log" >&2
		if printf '%s\n' "${missing[@]}" | grep -q "^$VTLKIT_KERNEL_PKG="; then
			info "available versions of $VTLKIT_KERNEL_PKG:" >&2
			apt-cache policy "$VTLKIT_KERNEL_PKG" >&2 || true
			info "the pin lives in scripts/lib.sh (VTLKIT_KERNEL_PKG_VERSION)" >&2
		fi
		die "apt-get install failed (log: ${TMPDIR:-/tmp}/vtlkit-apt.log)"
	fi
	ok "installed ${#missing[@]} packages"
fi

step "checking the Rust toolchain"
check_rust_toolchain
ok "$(rustc --version), $(cargo --version)"
