#!/usr/bin/env bash
# Configure (allnoconfig + fragments) and build bzImage out of tree, then export the uAPI headers
# and check them against the committed uapi/include.
#
#   VTLKIT_KCONFIG=default (vtlkit.config) | debug (vtlkit.config + debug.config)
#   VTLKIT_UPDATE_UAPI=1   copy the exported headers into uapi/include instead of failing on drift
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

kconfig=${VTLKIT_KCONFIG:-default}
fragments=("$VTLKIT_CONFIG_DIR/vtlkit.config")
kobj=$VTLKIT_KOBJ
case "$kconfig" in
default) ;;
debug)
	fragments+=("$VTLKIT_CONFIG_DIR/debug.config")
	kobj=$VTLKIT_KOBJ-debug
	;;
*) die "building: VTLKIT_KCONFIG must be 'default' or 'debug', not '$kconfig'" ;;
esac
mkdir -p "$kobj" "$VTLKIT_BUILD_DIR/logs"
log=$VTLKIT_BUILD_DIR/logs

configure_kernel "$VTLKIT_SRC" "$kobj" "$kconfig" "${fragments[@]}"
build_bzimage "$VTLKIT_SRC" "$kobj" "$kconfig"

step "exporting uAPI headers (make headers_install)"
run_logged "$log/headers.log" make -C "$VTLKIT_SRC" O="$kobj" headers_install INSTALL_HDR_PATH="$VTLKIT_HDR"
mapfile -t want_hdrs < <(uapi_closure "$VTLKIT_HDR/include")
[ ${#want_hdrs[@]} -gt 0 ] || die "exporting uAPI headers: cannot resolve linux/kvm.h's includes in $VTLKIT_HDR"
mapfile -t have_hdrs < <(cd "$VTLKIT_ROOT/uapi/include" 2>/dev/null && find . -name '*.h' | sed 's|^\./||' | LC_ALL=C sort)
drift=()
for h in "${want_hdrs[@]}"; do
	cmp -s "$VTLKIT_HDR/include/$h" "$VTLKIT_ROOT/uapi/include/$h" || drift+=("$h")
done
stale=()
for h in "${have_hdrs[@]}"; do
	printf '%s\n' "${want_hdrs[@]}" | grep -qxF "$h" || stale+=("$h")
done
if [ ${#drift[@]} -gt 0 ] || [ ${#stale[@]} -gt 0 ]; then
	if [ "${VTLKIT_UPDATE_UAPI:-0}" = 1 ]; then
		for h in "${drift[@]}"; do
			mkdir -p "$(dirname "$VTLKIT_ROOT/uapi/include/$h")"
			cp "$VTLKIT_HDR/include/$h" "$VTLKIT_ROOT/uapi/include/$h"
		done
		for h in "${stale[@]}"; do rm -f "$VTLKIT_ROOT/uapi/include/$h"; done
		ok "updated uapi/include: ${drift[*]} ${stale[*]} (commit them with the patch that changed them)"
	else
		for h in "${drift[@]}"; do
			diff -u "$VTLKIT_ROOT/uapi/include/$h" "$VTLKIT_HDR/include/$h" 2>&1 | head -n 40 >&2 || true
		done
		die "uAPI drift: uapi/include differs from what the series exports (changed: ${drift[*]:-none}; not exported: ${stale[*]:-none}); run scripts/update-uapi.sh and commit"
	fi
else
	ok "uapi/include matches the series (${#want_hdrs[@]} headers: linux/kvm.h and its includes)"
fi
