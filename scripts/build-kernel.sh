#!/usr/bin/env bash
# Configure (allnoconfig + fragments) and build bzImage out of tree, then export the uAPI headers
# and check them against the committed uapi/include.
#
#   VTLKIT_KCONFIG=default (vtlkit.config) | debug (vtlkit.config + debug.config)
#   VTLKIT_UPDATE_UAPI=1   copy the exported headers into uapi/include instead of failing on drift
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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

# Configure only when the fragments changed (or there is no config yet): a fresh .config would
# otherwise be the same, but regenerating it costs time and can touch include/config.
want=$(cat "${fragments[@]}" | sha256sum | cut -c1-16)
if [ ! -f "$kobj/.config" ] || [ "$(cat "$kobj/.vtlkit-fragments" 2>/dev/null)" != "$want" ]; then
	step "configuring ($kconfig): allnoconfig + $(basename -a "${fragments[@]}" | tr '\n' ' ')"
	run_logged "$log/config-$kconfig.log" make -C "$VTLKIT_SRC" O="$kobj" allnoconfig
	run_logged "$log/config-$kconfig.log" "$VTLKIT_SRC/scripts/kconfig/merge_config.sh" -m -O "$kobj" \
		"$kobj/.config" "${fragments[@]}"
	run_logged "$log/config-$kconfig.log" make -C "$VTLKIT_SRC" O="$kobj" olddefconfig
	# Every option the fragments ask for must have stuck.
	bad=()
	while IFS= read -r line; do
		case "$line" in CONFIG_*=*) ;; *) continue ;; esac
		grep -qxF "$line" "$kobj/.config" || bad+=("$line")
	done < <(cat "${fragments[@]}")
	[ ${#bad[@]} -eq 0 ] || die "configuring: these options did not stick (missing dependency?): ${bad[*]}"
	echo "$want" >"$kobj/.vtlkit-fragments"
else
	step "configuring ($kconfig): unchanged"
fi

step "building bzImage ($kconfig, -j$VTLKIT_JOBS; a cold build takes ~4 min on 2 cores)"
start=$SECONDS
run_logged "$log/build-$kconfig.log" make -C "$VTLKIT_SRC" O="$kobj" -j"$VTLKIT_JOBS" LOCALVERSION= bzImage
recompiled=$(grep -c '^  CC ' "$log/build-$kconfig.log" || true)
ok "bzImage: $kobj/arch/x86/boot/bzImage ($((SECONDS - start))s, $recompiled files compiled)"

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
