#!/usr/bin/env bash
# Run the kernel's checkpatch.pl --strict on every patch of the series.
# FILE_PATH_CHANGES ("does MAINTAINERS need updating?") is ignored: it fires for every new
# file, and the one the series adds (a KVM selftest) is covered by the KVM entry already.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -x "$VTLKIT_SRC/scripts/checkpatch.pl" ] || die "checkpatch: no kernel tree at $VTLKIT_SRC; run scripts/get-kernel.sh"
mapfile -t patches < <(series_patches)
[ ${#patches[@]} -gt 0 ] || { info "the series is empty"; exit 0; }
bad=0
for p in "${patches[@]}"; do
	if out=$(cd "$VTLKIT_SRC" && ./scripts/checkpatch.pl --strict --quiet --ignore FILE_PATH_CHANGES "$VTLKIT_SERIES_DIR/$p" 2>&1); then
		info "clean: $p"
	else
		printf '%s\n' "$out" | sed 's/^/    /'
		printf 'vtlkit: error: checkpatch --strict: %s is not clean\n' "$p" >&2
		bad=1
	fi
done
exit "$bad"
