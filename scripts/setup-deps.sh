#!/usr/bin/env bash
# Install what the pipeline needs from Debian (apt-get), including the pinned kernel source.
# Does nothing (and needs no network) when everything is already there.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKGS=(
	"$VTLKIT_KERNEL_PKG=$VTLKIT_KERNEL_PKG_VERSION"
	qemu-system-x86 busybox-static cpio xz-utils
	build-essential flex bison bc libelf-dev libssl-dev rsync
	libclang-dev clang shellcheck yamllint
)

missing=()
for p in "${PKGS[@]}"; do
	name=${p%%=*}
	want=${p#*=}
	have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
	case "$have" in
	"install ok installed "*)
		if [ "$want" != "$p" ] && [ "${have##* }" != "$want" ]; then
			missing+=("$p")
		fi
		;;
	*) missing+=("$p") ;;
	esac
done

step "checking host packages"
if [ ${#missing[@]} -eq 0 ]; then
	ok "all ${#PKGS[@]} packages present"
else
	info "installing: ${missing[*]}"
	need_root_or_sudo apt-get update -q >/dev/null || die "apt-get update failed"
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

for tool in cargo rustc; do
	command -v "$tool" >/dev/null || die "$tool not found: install a Rust toolchain (rustup) first"
done
