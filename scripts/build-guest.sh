#!/usr/bin/env bash
# Build the statically linked guest binaries (selftest runner and vtlctl).
# There is no musl target on these machines: glibc with crt-static works for what we use.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

triple=x86_64-unknown-linux-gnu
step "building guest binaries (static): vtlkit-selftests, vtlctl"
# --target keeps these static artefacts (and their RUSTFLAGS) apart from host builds, and
# keeps build scripts (bindgen) dynamically linked.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
	run_logged "$VTLKIT_BUILD_DIR/logs/cargo-guest.log" \
	cargo build --manifest-path "$VTLKIT_ROOT/Cargo.toml" --release --target "$triple" \
	-p vtlkit-selftests -p vtlctl
out=$CARGO_TARGET_DIR/$triple/release
for b in vtlkit-selftests vtlctl; do
	readelf -l "$out/$b" | grep -q INTERP &&
		die "building guest binaries: $out/$b is not statically linked"
done
ok "guest binaries in $out"
