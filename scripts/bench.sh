#!/usr/bin/env bash
# The benchmark command of BENCHMARKS.md: generates its own data and prints
# the tables. `scripts/bench.sh -quick` skips the 2 GB file and shortens the
# latency and idle runs. Needs redis-server on PATH for the Redis rows.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "## Files, reaction, idle (tools/bench)"
go run ./tools/bench "$@"
echo
echo "## Redis trim (tools/redisbench: private redis-server)"
go run ./tools/redisbench
echo
echo "## Hot paths (go test -bench; compare runs with benchstat)"
go test -run '^$' -bench . -benchmem -count 1 ./backends/
