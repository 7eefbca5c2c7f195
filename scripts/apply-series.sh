#!/usr/bin/env bash
# Apply kernel-patches/series on top of the pristine tree, one commit per patch.
#
# The commits are built in a scratch index (git apply --cached + commit-tree), not in the work
# tree, and the work tree is then moved to the result with one `git reset --hard`. Git rewrites
# only the files that differ from what was checked out before, so their mtimes - and therefore
# make's rebuild - cover only what the edited patch really changed.
#
# Usage: apply-series.sh [--check]   (--check: apply into the scratch index only, touch nothing)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lock_build

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

git -C "$VTLKIT_SRC" rev-parse -q --verify refs/tags/pristine >/dev/null 2>&1 ||
	die "applying patches: no pristine tree at $VTLKIT_SRC; run scripts/get-kernel.sh"

mapfile -t patches < <(series_patches)
for p in "${patches[@]}"; do
	[ -f "$VTLKIT_SERIES_DIR/$p" ] || die "applying patches: series names $p, which is not in $VTLKIT_SERIES_DIR"
done

# The series' identity: the series file plus every patch's bytes.
want=$( (cat "$VTLKIT_SERIES_DIR/series"; for p in "${patches[@]}"; do cat "$VTLKIT_SERIES_DIR/$p"; done) | sha256sum | cut -c1-16)
state=$VTLKIT_SRC/.git/vtlkit-series
if [ "$check_only" = 0 ] && [ -f "$state" ] && [ "$(cat "$state")" = "$want $(git -C "$VTLKIT_SRC" rev-parse HEAD)" ] &&
	git -C "$VTLKIT_SRC" diff --quiet HEAD; then
	step "applying patches: series unchanged (${#patches[@]} patches, $want)"
	exit 0
fi

# Never throw away a developer's work: local edits are refused outright; commits made on top
# of the series are refused unless the series now produces exactly that tree (i.e. they were
# exported to kernel-patches/).
if [ "$check_only" = 0 ] && ! git -C "$VTLKIT_SRC" diff --quiet HEAD; then
	git -C "$VTLKIT_SRC" status --short | grep -v '^??' | head -n 10 | sed 's/^/    /' >&2
	die "applying patches: $VTLKIT_SRC has uncommitted changes; commit them and export the series (see README: Editing a patch), or discard them with git -C $VTLKIT_SRC reset --hard"
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export GIT_INDEX_FILE=$scratch/index
git -C "$VTLKIT_SRC" read-tree pristine
tree=$(git -C "$VTLKIT_SRC" write-tree)
parent=$(git -C "$VTLKIT_SRC" rev-parse pristine)
n=${#patches[@]}
i=0
for p in "${patches[@]}"; do
	i=$((i + 1))
	step "applying patch $i of $n: $p"
	git -C "$VTLKIT_SRC" mailinfo "$scratch/msg" "$scratch/diff" <"$VTLKIT_SERIES_DIR/$p" >"$scratch/info" ||
		die "applying patches: $p is not a git format-patch mail"
	if ! git -C "$VTLKIT_SRC" apply --cached --whitespace=error-all "$scratch/diff" 2>"$scratch/err"; then
		sed 's/^/    /' "$scratch/err" >&2
		base=$(pristine_version)
		[ "$base" = "$VTLKIT_KERNEL_PKG_VERSION" ] ||
			warn_loud "the kernel source is $VTLKIT_KERNEL_PKG ${base:-of unknown version}, not the pinned $VTLKIT_KERNEL_PKG_VERSION" \
				"the series was written against (the pin is gone from apt): rebase the series onto it" \
				"(README: Editing a patch) and set VTLKIT_KERNEL_PKG_VERSION in scripts/lib.sh."
		die "applying patches: $p (patch $i of $n) does not apply${base:+ to $VTLKIT_KERNEL_PKG $base}: $(head -n 1 "$scratch/err")"
	fi
	author=$(sed -n 's/^Author: //p' "$scratch/info")
	email=$(sed -n 's/^Email: //p' "$scratch/info")
	date=$(sed -n 's/^Date: //p' "$scratch/info")
	subject=$(sed -n 's/^Subject: //p' "$scratch/info")
	{ [ -n "$author" ] && [ -n "$subject" ]; } || die "applying patches: $p has no author or subject"
	tree=$(git -C "$VTLKIT_SRC" write-tree)
	parent=$( (printf '%s\n\n' "$subject"; cat "$scratch/msg") |
		GIT_AUTHOR_NAME=$author GIT_AUTHOR_EMAIL=$email GIT_AUTHOR_DATE=$date \
			GIT_COMMITTER_NAME=$author GIT_COMMITTER_EMAIL=$email GIT_COMMITTER_DATE=$date \
			git -C "$VTLKIT_SRC" commit-tree "$tree" -p "$parent")
done
unset GIT_INDEX_FILE

if [ "$check_only" = 1 ]; then
	ok "all $n patches apply"
	exit 0
fi
head=$(git -C "$VTLKIT_SRC" rev-parse HEAD)
applied=$(cut -d' ' -f2 "$state" 2>/dev/null || true)
if [ "$head" != "$applied" ] && [ "$head" != "$(git -C "$VTLKIT_SRC" rev-parse pristine)" ] &&
	[ "$(git -C "$VTLKIT_SRC" rev-parse "HEAD^{tree}")" != "$tree" ]; then
	git -C "$VTLKIT_SRC" log --oneline "${applied:-pristine}..HEAD" | head -n 10 | sed 's/^/    /' >&2
	die "applying patches: $VTLKIT_SRC has commits that are not in kernel-patches/; export them with git -C $VTLKIT_SRC format-patch -o kernel-patches pristine..HEAD (and update the series file), or drop them with git -C $VTLKIT_SRC reset --hard ${applied:-pristine}"
fi
git -C "$VTLKIT_SRC" reset -q --hard "$parent"
echo "$want $(git -C "$VTLKIT_SRC" rev-parse HEAD)" >"$state"
ok "tree at $(git -C "$VTLKIT_SRC" log -1 --format='%h %s')"
