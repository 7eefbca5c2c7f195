#!/usr/bin/env bash
# After editing a patch that changes the uAPI: apply the series, rebuild, and copy the headers
# `make headers_install` exports into uapi/include (commit them together with the patch).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build
"$VTLKIT_ROOT/scripts/get-kernel.sh"
"$VTLKIT_ROOT/scripts/apply-series.sh"
VTLKIT_UPDATE_UAPI=1 "$VTLKIT_ROOT/scripts/build-kernel.sh"
