# shellcheck shell=bash
# shellcheck disable=SC2034 # fail is the calling test script's verdict
# Shared by the pipeline's own tests (scripts/tests/*.sh), after scripts/lib.sh.

# verdict NAME WANT_RC RC OUTPUT REGEX...: print "ok - NAME" if RC is WANT_RC and every REGEX
# matches OUTPUT, else "not ok - NAME: why" with the output's tail, and set fail=1.
verdict() {
	local name=$1 want=$2 rc=$3 out=$4 re
	shift 4
	if [ "$rc" != "$want" ]; then
		echo "not ok - $name: boot.sh exited $rc, expected $want"
		sed 's/^/    /' <<<"$out" | tail -n 15
		fail=1
		return
	fi
	for re in "$@"; do
		if [[ "$re" == '!'* ]]; then
			if grep -qE -- "${re#!}" <<<"$out"; then
				echo "not ok - $name: output has /${re#!}/"
				sed 's/^/    /' <<<"$out" | tail -n 15
				fail=1
				return
			fi
		elif ! grep -qE -- "$re" <<<"$out"; then
			echo "not ok - $name: output lacks /$re/"
			sed 's/^/    /' <<<"$out" | tail -n 15
			fail=1
			return
		fi
	done
	echo "ok - $name (exit $rc)"
}
