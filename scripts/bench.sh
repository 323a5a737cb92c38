#!/usr/bin/env bash
# The benchmark command of BENCHMARKS.md: generates its own data and prints
# the tables. `scripts/bench.sh -quick` skips the 2 GB files and shortens the
# latency and idle runs; `scripts/bench.sh -only inplace` runs only that
# section of tools/bench (files, inplace, rotating, reaction, idle, and estimate, which the full run leaves out; comma-
# separated) and nothing else. The in-place rows need -dir (default
# $TMPDIR/watcher-bench) on ext4 or XFS. Needs redis-server on PATH for the
# Redis rows.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "## Files, in-place compaction, reaction, idle (tools/bench)"
go run ./tools/bench "$@"
for a in "$@"; do
	case "$a" in -only | -only=* | --only | --only=*) exit 0 ;; esac
done
echo
echo "## Redis trim (tools/redisbench: private redis-server)"
go run ./tools/redisbench
echo
echo "## Hot paths (go test -bench; compare runs with benchstat)"
go test -run '^$' -bench . -benchmem -count 1 ./backends/...
