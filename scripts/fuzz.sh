#!/usr/bin/env bash
# Runs every fuzz target of the repository (each `func FuzzXxx` of a
# _test.go file; a new one needs no list to be edited) for the given
# -fuzztime each, one after the other, and fails if any failed:
#
#	scripts/fuzz.sh 20s          # make fuzz
#	scripts/fuzz.sh 3s           # make fuzz-short (CI)
#	scripts/fuzz.sh 10s Verify   # only targets whose name contains Verify
#
# Go 1.26's fuzz coordinator can fail a run that found nothing with a bare
# "context deadline exceeded" as -fuzztime ends, under CPU contention
# (go.dev/issue/75804, fixed in Go 1.27): such a run, which wrote no failing
# input, is retried (twice at most) instead of being reported as a failure.
# A run that wrote a failing input (testdata/fuzz/...) fails at once.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-20s}
only=${2:-}
GO=${GO:-go}

mapfile -t targets < <(grep -rn --include='*_test.go' --exclude-dir=.git --exclude-dir=.tools --exclude-dir=build \
	'^func Fuzz[A-Za-z0-9_]*(' . | sed -E 's#^\./(.*)/[^/]*_test\.go:[0-9]+:func (Fuzz[A-Za-z0-9_]*)\(.*#\1 \2#' | sort -u)

failed=()
ran=0
start=$SECONDS
for t in "${targets[@]}"; do
	dir=${t% *} name=${t#* }
	[[ -n $only && $name != *"$only"* ]] && continue
	ran=$((ran + 1))
	for try in 1 2 3; do
		echo "== $name ./$dir ($fuzztime)"
		out=$("$GO" test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" "./$dir" 2>&1)
		rc=$?
		echo "$out" | tail -n 3
		if ((rc == 0)); then
			break
		fi
		if grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input written' <<<"$out" && ((try < 3)); then
			echo "   (go.dev/issue/75804: the coordinator's deadline, no failing input; again)"
			continue
		fi
		echo "$out" | tail -n 40
		failed+=("$name ./$dir")
		break
	done
done
echo "fuzzed $ran targets for $fuzztime each in $((SECONDS - start))s"
if ((${#failed[@]})); then
	printf 'FAILED: %s\n' "${failed[@]}"
	exit 1
fi
