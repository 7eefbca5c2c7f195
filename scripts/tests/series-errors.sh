#!/usr/bin/env bash
# Host-side test of scripts/apply-series.sh's error paths: a patch that does not apply, and a
# series naming a missing patch, must each fail with a message naming the patch. The real
# series must apply. Uses --check, so the work tree and build are never touched.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
expect_fail() { # name, expected message regex, series dir
	local name=$1 re=$2 dir=$3 out
	if out=$(VTLKIT_SERIES_DIR=$dir "$VTLKIT_ROOT/scripts/apply-series.sh" --check 2>&1); then
		echo "not ok - $name: apply-series.sh succeeded"
		fail=1
	elif ! grep -qE "$re" <<<"$out"; then
		echo "not ok - $name: message does not match /$re/:"
		sed 's/^/    /' <<<"$out"
		fail=1
	else
		echo "ok - $name: $(grep -E "$re" <<<"$out" | head -n 1 | sed 's/\x1b\[[0-9;]*m//g')"
	fi
}

# 1. The real series, plus a broken patch at the end.
mkdir -p "$tmp/broken"
cp "$VTLKIT_SERIES_DIR"/*.patch "$tmp/broken/" 2>/dev/null || true
cp "$VTLKIT_SERIES_DIR/series" "$tmp/broken/series"
cat >"$tmp/broken/9999-broken.patch" <<'PATCH'
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: vtlkit developers <devel@vtlkit.invalid>
Date: Tue, 24 Nov 2026 00:00:00 +0000
Subject: [PATCH] README: a patch whose context does not exist

---
 README | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/README b/README
--- a/README
+++ b/README
@@ -1,3 +1,3 @@
 This context line is not in the kernel README
-so this patch cannot apply
+and apply-series.sh must say so
 anywhere
-- 
2.47.3
PATCH
echo "9999-broken.patch" >>"$tmp/broken/series"
expect_fail "broken patch is named" "9999-broken.patch .* does not apply" "$tmp/broken"

# 2. A series that names a file that is not there.
mkdir -p "$tmp/missing"
printf '0001-not-here.patch\n' >"$tmp/missing/series"
expect_fail "missing patch is named" "series names 0001-not-here.patch" "$tmp/missing"

# 3. The real series applies.
if out=$("$VTLKIT_ROOT/scripts/apply-series.sh" --check 2>&1); then
	echo "ok - the real series applies"
else
	echo "not ok - the real series does not apply:"
	sed 's/^/    /' <<<"$out"
	fail=1
fi
# 4. Local edits in the kernel tree are refused, and survive.
readme=$VTLKIT_SRC/README
cp "$readme" "$tmp/README.orig"
trap 'cp "$tmp/README.orig" "$readme"; rm -rf "$tmp"' EXIT
echo "local edit by series-errors.sh" >>"$readme"
rm -f "$VTLKIT_SRC/.git/vtlkit-series" # force a re-apply attempt
if out=$("$VTLKIT_ROOT/scripts/apply-series.sh" 2>&1); then
	echo "not ok - a dirty kernel tree was re-applied over"
	fail=1
elif ! grep -q "uncommitted changes" <<<"$out" || ! grep -q "local edit by series-errors.sh" "$readme"; then
	echo "not ok - dirty kernel tree: wrong message or the edit was lost:"
	sed 's/^/    /' <<<"$out"
	fail=1
else
	echo "ok - a dirty kernel tree is refused and the edit survives"
fi
cp "$tmp/README.orig" "$readme"
"$VTLKIT_ROOT/scripts/apply-series.sh" >/dev/null 2>&1 || { echo "not ok - re-apply after the dirty test"; fail=1; }
exit "$fail"
