#!/usr/bin/env bash
# The main job: from nothing to selftest results from the patched kernel.
#
#   scripts/run.sh [TEST | PREFIX* ...]
#
# 1. installs the Debian packages it needs (once), 2. unpacks the pinned kernel source and
# builds QEMU with qemu-patches/ (once each), 3. applies kernel-patches/series, 4. builds
# bzImage (incrementally) and checks uapi/ drift, 5. builds the static guest binaries, 6. packs
# the initramfs, 7. boots QEMU and runs the selftests, printing the TAP stream and a summary. Exit status: the suite's (0 pass, 1 fail,
# 4 all skipped), or 1 with a message naming the step that failed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

start=$SECONDS
"$VTLKIT_ROOT/scripts/setup-deps.sh"
"$VTLKIT_ROOT/scripts/get-kernel.sh"
"$VTLKIT_ROOT/scripts/build-qemu.sh"
"$VTLKIT_ROOT/scripts/apply-series.sh"
"$VTLKIT_ROOT/scripts/build-kernel.sh"
"$VTLKIT_ROOT/scripts/build-guest.sh"
"$VTLKIT_ROOT/scripts/pack-initramfs.sh"
set +e
"$VTLKIT_ROOT/scripts/boot.sh" "$@"
rc=$?
set -e
step "done in $((SECONDS - start))s (exit status $rc)"
exit "$rc"
