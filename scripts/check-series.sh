#!/usr/bin/env bash
# Prove that every patch of the series builds on its own: check out pristine + patches 1..k
# for each k in a separate worktree (build/linux-bisect) and build bzImage incrementally in
# build/kobj-bisect. The first run is a cold build; later runs recompile only what changes.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

"$VTLKIT_ROOT/scripts/get-kernel.sh"
"$VTLKIT_ROOT/scripts/apply-series.sh"
wt=$VTLKIT_BUILD_DIR/linux-bisect
kobj=$VTLKIT_BUILD_DIR/kobj-bisect
if [ ! -d "$wt" ]; then
	step "creating worktree $wt"
	git -C "$VTLKIT_SRC" worktree add -q --detach "$wt" pristine
fi
mapfile -t commits < <(git -C "$VTLKIT_SRC" rev-list --reverse pristine..HEAD)
n=${#commits[@]}
[ "$n" -gt 0 ] || { info "the series is empty"; exit 0; }
mkdir -p "$kobj"
if [ ! -f "$kobj/.config" ]; then
	cp "$VTLKIT_KOBJ/.config" "$kobj/.config" 2>/dev/null ||
		die "check-series: no $VTLKIT_KOBJ/.config; run scripts/build-kernel.sh first"
fi
i=0
for c in "${commits[@]}"; do
	i=$((i + 1))
	subject=$(git -C "$VTLKIT_SRC" log -1 --format=%s "$c")
	step "building patch $i of $n on its own: $subject"
	git -C "$wt" checkout -q --detach "$c"
	run_logged "$VTLKIT_BUILD_DIR/logs/check-series-$i.log" \
		make -C "$wt" O="$kobj" -j"$VTLKIT_JOBS" LOCALVERSION= KCFLAGS=-Werror olddefconfig bzImage
	ok "patch $i builds"
done
ok "all $n patches build on their own"
